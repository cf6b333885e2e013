//! Validated requests: what the server hands the runtime after checking every field once.
//! Nothing here knows about protobuf; `server::convert` builds these.

pub use super::confine::Confinement;
use super::error::RuntimeError;
use super::names::{CellName, ExecName};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// PATH used to find argv[0] and given to the process when the request sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `base` with `over` applied: a name in both takes `over`'s value in `base`'s place; new
/// names follow in `over`'s order. How a request's env goes over an image's.
pub fn overlay_env<'a>(
    mut base: Vec<(String, String)>,
    over: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    for (k, v) in over {
        match base.iter_mut().find(|(bk, _)| bk == k) {
            Some(e) => e.1 = v.clone(),
            None => base.push((k.clone(), v.clone())),
        }
    }
    base
}

#[derive(Debug, Clone)]
pub struct ExecutableSpec {
    pub name: ExecName,
    /// Non-empty; argv[0] is resolved against PATH by the runtime.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// None: the cell's image's working directory, else `/`.
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// None: a fresh cell of its own, named after the executable, with default isolation.
    pub cell: Option<CellName>,
    /// Its stdin, and whether a terminal carries all three fds.
    pub io: Io,
}

/// An executable's standard fds: its stdin, and whether they are a terminal of its cell's
/// own (kept by auraed: its output read from it, clients type into it and resize it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Io {
    pub stdin: Stdin,
    pub tty: bool,
}

/// An executable's stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stdin {
    /// /dev/null.
    #[default]
    Null,
    /// A pipe auraed keeps open, written by attached clients (`Attach`).
    Open,
    /// The same, closed for good when the first attached client closes its stdin.
    Once,
}

impl Stdin {
    /// From the API's two flags; `stdin_once` needs `stdin`.
    pub fn of(stdin: bool, once: bool) -> Option<Stdin> {
        match (stdin, once) {
            (false, false) => Some(Stdin::Null),
            (true, false) => Some(Stdin::Open),
            (true, true) => Some(Stdin::Once),
            (false, true) => None,
        }
    }
}

/// cgroup v2 limits; `None` leaves the kernel default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_weight: Option<u64>,
    /// (quota, period) in microseconds.
    pub cpu_max: Option<(u64, u64)>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory_min: Option<u64>,
    pub memory_low: Option<u64>,
    pub memory_high: Option<u64>,
    pub memory_max: Option<u64>,
    pub swap_max: Option<u64>,
    pub pids_max: Option<u64>,
    pub io_weight: Option<u64>,
    pub io_max: Vec<IoMax>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoMax {
    pub major: u32,
    pub minor: u32,
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

/// Which namespaces a cell gets new (true) or shares with its enclosing cell or the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    pub pid: bool,
    pub mount: bool,
    pub network: bool,
    pub ipc: bool,
    pub uts: bool,
    pub cgroup: bool,
}

impl Default for Isolation {
    /// Deny by default: every namespace new.
    fn default() -> Isolation {
        Isolation {
            pid: true,
            mount: true,
            network: true,
            ipc: true,
            uts: true,
            cgroup: true,
        }
    }
}

/// Directories of the node bound into a cell's own root, for auraed's own use only.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeBinds {
    /// Bound read-write at the same path in the cell's own `/run` (a cell child's PKI
    /// directory).
    pub run: Vec<PathBuf>,
    /// Bound with what is mounted beneath it, read-write, at
    /// [`POD_DIR`](crate::values::volume::POD_DIR), and a slave of the node's mount, so what the
    /// node mounts beneath it later appears too (a CRI sandbox's kubelet pod directory,
    /// with the `cell` handler: kubelet mounts a container's subPaths when it makes it).
    pub pod: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CellSpec {
    pub name: CellName,
    pub resources: Resources,
    pub isolation: Isolation,
    pub confinement: Confinement,
    /// Directories of the node bound into the cell's own root, for auraed's own use (a
    /// cell child's PKI directory, a CRI sandbox's pod directory). None for API cells.
    pub binds: NodeBinds,
    /// How long its init may take to report ready (from the caller's deadline; `READY_MAX`
    /// without one). One that does not is killed and the cell discarded.
    pub ready_within: std::time::Duration,
    /// An image as the cell's root, and what its processes get by default.
    pub image: Option<ImageRoot>,
    /// TCP ports of the cell published on the node: (node port, cell port).
    pub ports: Vec<(u16, u16)>,
}

#[cfg(test)]
impl CellSpec {
    /// A default cell named `name` (tests).
    pub(crate) fn named(name: &str) -> CellSpec {
        CellSpec {
            name: super::names::CellName::parse(name).unwrap(),
            resources: Default::default(),
            isolation: Default::default(),
            confinement: Default::default(),
            binds: NodeBinds::default(),
            ready_within: READY_MAX,
            image: None,
            ports: Vec::new(),
        }
    }
}

/// A cell's image request, checked before anything is pulled.
pub struct ImageRequest {
    pub reference: String,
    pub policy: crate::image::catalog::PullPolicy,
    pub credentials: Option<crate::image::pull::Credentials>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub no_entrypoint: bool,
    /// The entrypoint's stdin and terminal.
    pub io: Io,
    pub ports: Vec<(u16, u16)>,
    pub volumes: Vec<crate::values::volume::VolumeSpec>,
    pub mounts: Vec<crate::values::volume::VolumeMount>,
}

/// An image as a cell's root: its layers from the node's store and the defaults of the
/// processes that run on it (the image's config with the request's overrides applied).
#[derive(Debug, Clone, Default)]
pub struct ImageRoot {
    /// The reference as the node records it.
    pub reference: String,
    pub digest: String,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The layers' chain IDs: what the store keeps while the cell lives.
    pub chains: Vec<String>,
    /// Every process's environment, before its own.
    pub env: Vec<(String, String)>,
    /// Working directory of processes that name none.
    pub working_dir: Option<String>,
    /// User of processes that name none, as the image writes it (`uid[:gid]`, `name[:group]`).
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
    /// The image's entrypoint + cmd with the request's changes (may be empty): what the
    /// cell's executable of the cell's name runs, and what Exec runs when given no argv.
    pub argv: Vec<String>,
    /// Start `argv` when the cell is made (false: processes come with RunExecutable or Exec).
    pub start: bool,
    /// The entrypoint's stdin and terminal.
    pub io: Io,
    /// Scratch volumes the cell makes or joins, and where they appear in its root.
    pub volumes: Vec<super::volume::VolumeSpec>,
    pub mounts: Vec<super::volume::VolumeMount>,
}

/// The longest any start waits for a workload to get ready: a caller's deadline of years
/// must not hold a task, a cell or a name that long.
pub const READY_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A virtual machine run by auraed's VMM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: ExecName,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// The complete kernel command line.
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// A virtio-net NIC on a TAP on the node's bridge (the guest's eth0).
    pub network: bool,
    /// More NICs, after eth0: each on a TAP on a named node bridge, with this MAC.
    pub extra_nics: Vec<(String, [u8; 6])>,
    /// Raw disk images, as virtio-blk devices in this order.
    pub disks: Vec<DiskSpec>,
    /// Limits for the VM's own cell.
    pub resources: Resources,
    /// How long to wait for the VMM to run the vCPUs (the caller's deadline, see
    /// `server::deadline`).
    pub ready_within: std::time::Duration,
}

pub use crate::net::NetAttachment;

/// The most attachments one instance has (eth1..=eth4).
pub const MAX_ATTACHMENTS: usize = 4;

impl ImageRoot {
    /// The image as the cell's root: its layers, and the request's settings over its config.
    pub fn from_prepared(p: &crate::image::catalog::Prepared, r: ImageRequest) -> Result<ImageRoot, RuntimeError> {
        let argv = p.config.argv(&r.command, &r.args);
        if !r.no_entrypoint && argv.first().is_none_or(|a| a.is_empty()) {
            return Err(RuntimeError::invalid(
                "image.command",
                format!(
                    "image '{}' names no entrypoint or cmd; give the program to run (command or args)",
                    p.record.reference
                ),
            ));
        }
        Ok(ImageRoot {
            reference: p.record.reference.clone(),
            digest: p.record.digest.clone(),
            layers: p.layers.clone(),
            chains: p.record.layers.iter().map(|(_, _, c)| c.clone()).collect(),
            env: overlay_env(p.config.env.clone(), r.env.iter().map(|(k, v)| (k, v))),
            working_dir: r.working_dir.or_else(|| p.config.working_dir.clone()),
            user: r.user.or_else(|| p.config.user.clone()),
            exposed_ports: p.config.exposed_ports.clone(),
            argv,
            start: !r.no_entrypoint,
            io: r.io,
            volumes: r.volumes,
            mounts: r.mounts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_over_another_replaces_in_place_and_appends_the_new() {
        let base = vec![("PATH".into(), "/bin".into()), ("A".into(), "1".into())];
        let over: Vec<(String, String)> = vec![("A".into(), "2".into()), ("B".into(), "3".into())];
        let got = overlay_env(base, over.iter().map(|(k, v)| (k, v)));
        assert_eq!(
            got,
            [
                ("PATH".into(), "/bin".into()),
                ("A".into(), "2".into()),
                ("B".into(), "3".into())
            ]
        );
    }
}
