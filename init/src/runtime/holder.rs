//! `aurae-cell-init`: the first process of every cell. auraed clones it into the cell's new
//! namespaces and cgroup and re-executes itself under this name. It makes the cell's mounts:
//! a root of its own (`confine::root`: the node's base read-only without its secrets, its
//! own /proc, /sys, /dev, /tmp and /run, OCI's masked paths), or for a privileged cell only
//! a private /proc, /tmp and /sys over the node's filesystem. It sets the hostname, brings
//! up loopback, gives up every capability of its own, reports ready on fd 3, then lives as
//! the cell's init: it reaps the cell's orphans until the cell is killed. Every other
//! process of the cell joins its namespaces.

use super::confine::{caps, root};
use super::sys::child::{fail, report, Stage};
use nix::mount::{mount, MsFlags};
use std::os::fd::RawFd;

pub use super::sys::child::HOLDER_ARGV0 as ARGV0;
const REPORT: RawFd = 3;

/// What to set up, as passed on the command line (`aurae-cell-init FLAGS HOSTNAME
/// [ARG...]`, each ARG a node directory its own root covers, `+DIR` a bind into its
/// `/run`, or `^DIR` an image layer, bottom first: see `confine::root`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl Setup {
    pub fn encode(&self) -> String {
        let bit = |b: bool, v: u8| if b { v } else { 0 };
        (bit(self.new_mount, 1)
            | bit(self.new_pid, 2)
            | bit(self.new_net, 4)
            | bit(self.new_uts, 8)
            | bit(self.own_root, 16)
            | bit(self.userns, 32))
        .to_string()
    }

    pub fn decode(s: &str) -> Option<Setup> {
        let v: u8 = s.parse().ok()?;
        Some(Setup {
            new_mount: v & 1 != 0,
            new_pid: v & 2 != 0,
            new_net: v & 4 != 0,
            new_uts: v & 8 != 0,
            own_root: v & 16 != 0,
            userns: v & 32 != 0,
        })
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
pub fn main(args: &[String]) -> ! {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    // Every signal stays pending; only SIGCHLD is ever waited for.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let (Some(setup), Some(hostname)) = (args.get(1).and_then(|s| Setup::decode(s)), args.get(2)) else {
        fail(REPORT, Stage::Args)
    };
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
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
        let (mut binds, mut layers, mut hidden, mut volumes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for a in args.iter().skip(3) {
            if let Some(b) = a.strip_prefix(root::BIND_ARG) {
                binds.push(std::path::PathBuf::from(b));
            } else if let Some(v) = a.strip_prefix(root::VOLUME_ARG) {
                match super::volume::parse_holder_arg(v) {
                    Some(v) => volumes.push(v),
                    None => fail(REPORT, Stage::Args),
                }
            } else if let Some(l) = a.strip_prefix(root::LAYER_ARG) {
                layers.push(std::path::PathBuf::from(l));
            } else {
                hidden.push(std::path::PathBuf::from(a));
            }
        }
        let source = if layers.is_empty() {
            root::Source::Node(std::path::Path::new("/"))
        } else {
            root::Source::Image(&layers, &volumes)
        };
        if let Err((step, errno)) = root::enter(source, &hidden, &binds, setup.userns) {
            let stage = match step {
                root::Step::Image => Stage::MountImage,
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
    fn setup_round_trips() {
        for v in 0..64u8 {
            let s = Setup::decode(&v.to_string()).unwrap();
            assert_eq!(s.encode(), v.to_string());
        }
        assert_eq!(Setup::decode("x"), None);
    }
}
