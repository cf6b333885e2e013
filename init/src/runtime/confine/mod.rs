//! What confines a cell beyond its namespaces and cgroup: a root of its own (`root`), a
//! reduced capability set (`caps`), `no_new_privs` and a seccomp profile (`seccomp`). The
//! defaults are an OCI runtime's; a cell may add or drop capabilities and make its seccomp
//! profile stricter, and an admin may ask for no seccomp profile or for a privileged cell.

pub mod caps;
pub mod root;
pub mod seccomp;

use caps::CapSet;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// A cell's confinement, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Capabilities its processes keep, in every set (bounding, permitted, effective,
    /// inheritable; ambient is cleared).
    pub caps: CapSet,
    /// Docker's default seccomp profile for `caps`, at a level and with refusals of the
    /// cell's own (None: no seccomp profile).
    pub seccomp: Option<seccomp::Spec>,
    /// The node's own filesystem (with a private /proc, /sys and /tmp), every capability,
    /// no seccomp, no `no_new_privs`: auraed's own helpers (a VM's VMM, a spawned instance
    /// in a cell) and cells an admin asks for.
    pub privileged: bool,
    /// A user namespace of its own: root in the cell is an unprivileged uid on the node.
    pub userns: bool,
}

impl Default for Confinement {
    fn default() -> Confinement {
        Confinement {
            caps: CapSet::default_set(),
            seccomp: Some(seccomp::Spec::default()),
            privileged: false,
            userns: false,
        }
    }
}

impl Confinement {
    pub const PRIVILEGED: Confinement = Confinement {
        caps: CapSet::ALL,
        seccomp: None,
        privileged: true,
        userns: false,
    };

    /// A spawned instance in a cell (Spawn's fallback without KVM): a child auraed that
    /// makes cells, cgroups, namespaces and mounts of its own, so it keeps every capability
    /// and has no seccomp profile; but it gets a root of its own, without the node's keys,
    /// `/boot` or VM files, so a child cannot read the keys its parent acts with.
    pub const INSTANCE: Confinement = Confinement {
        caps: CapSet::ALL,
        seccomp: None,
        privileged: false,
        userns: false,
    };

    /// What the processes of a cell get at exec, compiled once per capability set.
    pub fn exec_limits(&self) -> ExecLimits {
        if self.privileged {
            return ExecLimits::default();
        }
        ExecLimits {
            caps: Some(self.caps),
            no_new_privs: true,
            seccomp: self.seccomp.map(|s| profile_for(self.caps, s)),
        }
    }
}

/// What an executable's child applies just before `execve` (see `sys::child`).
#[derive(Debug, Clone, Default)]
pub struct ExecLimits {
    /// None: keep every capability.
    pub caps: Option<CapSet>,
    pub no_new_privs: bool,
    pub seccomp: Option<Arc<seccomp::Profile>>,
}

/// Compiled once per capability set and seccomp choice; the cache holds at most
/// `PROFILES` (a cell may name its own refusals, so the choices are many).
fn profile_for(caps: CapSet, spec: seccomp::Spec) -> Arc<seccomp::Profile> {
    const PROFILES: usize = 64;
    type Cache = HashMap<(CapSet, seccomp::Spec), Arc<seccomp::Profile>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&(caps, spec)) {
        return p.clone();
    }
    let p = Arc::new(seccomp::compile(caps, spec.level, spec.deny));
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= PROFILES {
        c.clear();
    }
    c.insert((caps, spec), p.clone());
    p
}

/// Directories of the node a cell's root never shows: its keys and VM files.
pub fn hidden_paths(pki_dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["/etc/aurae", "/boot", "/var/lib/aurae"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if !v.iter().any(|h| pki_dir.starts_with(h)) {
        v.push(pki_dir.to_path_buf());
    }
    v
}
