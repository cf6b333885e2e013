//! The pseudo-filesystems PID 1 mounts before anything else.

use nix::mount::{mount, MsFlags};
use std::path::Path;

/// One mount PID 1 performs.
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In order: later targets live inside earlier ones.
pub const PID1_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777,size=25%",
    },
    MountSpec {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755,size=10%",
    },
    MountSpec {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777,size=25%",
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
];

/// Why a bring-up mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mkdir {target}: {source}")]
    Mkdir {
        target: &'static str,
        source: std::io::Error,
    },
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
}

/// Mounts one filesystem, creating its mount point first.
pub fn mount_one(m: &MountSpec) -> Result<(), MountError> {
    std::fs::create_dir_all(m.target).map_err(|source| MountError::Mkdir {
        target: m.target,
        source,
    })?;
    let data = (!m.data.is_empty()).then_some(m.data);
    mount(Some(m.source), Path::new(m.target), Some(m.fstype), m.flags, data).map_err(|source| MountError::Mount {
        fstype: m.fstype,
        target: m.target,
        source,
    })
}
