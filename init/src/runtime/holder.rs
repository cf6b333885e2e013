//! `aurae-cell-init`: the first process of every cell. auraed clones it into the cell's new
//! namespaces and cgroup and re-executes itself under this name. It makes the cell's mounts:
//! a root of its own (`confine::root`: the node's base read-only without its secrets, its
//! own /proc, /sys, /dev, /tmp and /run, OCI's masked paths), or for a privileged cell only
//! a private /proc, /tmp and /sys over the node's filesystem. It sets the hostname, brings
//! up loopback, gives up every capability of its own, reports ready on fd 3, then lives as
//! the cell's init: it reaps the cell's orphans until the cell is killed. Every other
//! process of the cell joins its namespaces. What to do it reads from fd 4, a [`Config`].

use super::confine::{caps, root};
use super::sys::child::{fail, report, Stage};
use nix::mount::{mount, MsFlags};
use std::os::fd::RawFd;
use std::path::PathBuf;

pub use super::sys::child::HOLDER_ARGV0 as ARGV0;
const REPORT: RawFd = 3;

/// Which namespaces are new and what the init mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Setup {
    pub new_mount: bool,
    pub new_pid: bool,
    pub new_net: bool,
    pub new_uts: bool,
    /// A root of its own (`confine::root`); needs `new_mount`.
    pub own_root: bool,
    /// In a user namespace of its own (devices are bound, not made).
    pub userns: bool,
}

/// Everything the cell's init is told, as one JSON document on fd [`CONFIG_FD`](super::sys::child::CONFIG_FD) (as the
/// VMM gets its configuration on its control socket): no argument to parse, nothing a
/// path could be mistaken for.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub setup: Setup,
    /// The cell's hostname (the leaf of its name).
    pub hostname: String,
    /// A root from the node's: node directories its own root covers (keys, VM files).
    pub hidden: Vec<PathBuf>,
    /// Node directories bound into its own root.
    pub binds: super::spec::NodeBinds,
    /// A root from an image: its layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Volumes bound into an image root.
    pub volumes: Vec<root::VolumeBind>,
}

/// The most a `Config` may be (a cell of 128 layers and 64 volumes needs a few KiB).
const CONFIG_MAX: u64 = 1 << 20;

impl Config {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads and parses the document `r` holds (at most `CONFIG_MAX` bytes).
    pub fn read(r: impl std::io::Read) -> Option<Config> {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        r.take(CONFIG_MAX + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > CONFIG_MAX {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }
}

fn check<T>(r: nix::Result<T>, stage: Stage) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            report(REPORT, stage, e as i32);
            std::process::exit(127)
        }
    }
}

/// Entry point (argv[0] == ARGV0). Never returns.
pub fn main(_args: &[String]) -> ! {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    // Every signal stays pending; only SIGCHLD is ever waited for.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let Some(config) = Config::read(super::sys::child::take_config()) else {
        fail(REPORT, Stage::Args)
    };
    let (setup, hostname) = (config.setup, config.hostname.as_str());
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // The node's pod directory is taken first, while it is still a peer of the node's mount
    // (a private copy would never see what the node mounts in it later).
    let pod_tree = match &config.binds.pod {
        Some(dir) if setup.new_mount && setup.own_root => Some(check(root::clone_tree(dir), Stage::MountVolumes)),
        _ => None,
    };
    if setup.new_mount {
        check(
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            ),
            Stage::MountPrivate,
        );
    }
    if setup.new_mount && setup.own_root {
        let Config {
            hidden,
            binds,
            layers,
            volumes,
            ..
        } = &config;
        let source = if layers.is_empty() {
            root::Source::Node(std::path::Path::new("/"))
        } else {
            root::Source::Image(layers, volumes)
        };
        if let Err((step, errno)) = root::enter(source, hidden, &binds.run, pod_tree, setup.userns) {
            let stage = match step {
                root::Step::Image => Stage::MountImage,
                root::Step::Volumes => Stage::MountVolumes,
                root::Step::Root => Stage::MountRoot,
                root::Step::Dev => Stage::MountDev,
                root::Step::Pivot => Stage::PivotRoot,
                root::Step::Mask => Stage::MaskPaths,
            };
            report(REPORT, stage, errno as i32);
            std::process::exit(127)
        }
    } else if setup.new_mount {
        if setup.new_pid {
            check(
                mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    nodev | MsFlags::MS_NOEXEC,
                    None::<&str>,
                ),
                Stage::MountProc,
            );
        }
        check(
            mount(
                Some("tmpfs"),
                "/tmp",
                Some("tmpfs"),
                nodev,
                Some(format!("mode=1777,size={}", super::confine::root::TMP_SIZE).as_str()),
            ),
            Stage::MountTmp,
        );
        if setup.new_net {
            check(
                mount(
                    Some("sysfs"),
                    "/sys",
                    Some("sysfs"),
                    nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                    None::<&str>,
                ),
                Stage::MountSys,
            );
        }
    }
    if setup.new_uts {
        check(nix::unistd::sethostname(hostname), Stage::Hostname);
    }
    if setup.new_net {
        if let Err(e) = crate::net::ioctl::link_up("lo") {
            report(REPORT, Stage::Loopback, e.raw_os_error().unwrap_or(0));
            std::process::exit(127)
        }
    }
    // The cell's init needs no privilege to reap: a workload that reaches it finds nothing.
    drop_privileges();
    report(REPORT, Stage::Ready, 0);
    let _ = nix::unistd::close(REPORT);
    let chld = SigSet::from(Signal::SIGCHLD);
    loop {
        let _ = chld.wait();
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// Clears every capability set of this process and sets `no_new_privs`.
fn drop_privileges() {
    super::sys::child::bound_caps(caps::CapSet::NONE);
    super::sys::child::set_caps(caps::CapSet::NONE);
    let _ = nix::sys::prctl::set_no_new_privs();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_round_trips_and_an_oversized_one_is_refused() {
        let c = Config {
            setup: Setup {
                new_mount: true,
                own_root: true,
                userns: true,
                ..Setup::default()
            },
            hostname: "web".into(),
            hidden: vec![],
            binds: crate::runtime::spec::NodeBinds {
                run: vec!["/run/aurae/x".into()],
                pod: Some("/var/lib/kubelet/pods/u 1".into()),
            },
            layers: vec!["/var/lib/aurae/data/images/layers/a b".into(), "/l/+^%:".into()],
            volumes: vec![("/run/aurae/volumes/www".into(), "/srv/www".into(), true)],
        };
        assert_eq!(Config::read(&c.encode()[..]), Some(c));
        let huge = vec![b' '; (CONFIG_MAX + 1) as usize];
        assert_eq!(Config::read(&huge[..]), None);
        assert_eq!(Config::read(&b"not json"[..]), None);
    }
}
