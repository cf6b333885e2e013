//! The operator's data disk (`aurae.data=/dev/vdb`): PID 1 mounts the filesystem on it (any
//! the kernel knows that is not `nodev`: ext4 on the appliance) at `DATA_DIR`, and the image
//! store lives there instead of in RAM, so images survive a reboot. At power-off it is
//! synced and made read-only before the kernel stops.

use nix::mount::{mount, MsFlags};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where the data disk is mounted (under /var/lib/aurae, which no cell sees).
pub const DATA_DIR: &str = "/var/lib/aurae/data";

/// A mounted data disk.
#[derive(Debug, Clone)]
pub struct DataDisk {
    pub device: PathBuf,
    pub fstype: String,
    /// The filesystem's size.
    pub capacity_bytes: u64,
}

/// Filesystem types in `/proc/filesystems` that live on a device.
fn disk_types(proc_filesystems: &str) -> Vec<String> {
    proc_filesystems
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Why the data disk was not mounted.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("aurae.data: {} is not a block device", .0.display())]
    NotBlock(PathBuf),
    #[error("aurae.data: {}: {source} (is the disk attached?)", device.display())]
    Missing { device: PathBuf, source: std::io::Error },
    #[error("{what} {DATA_DIR}: {why}")]
    Dir { what: &'static str, why: String },
    #[error(
        "aurae.data: no filesystem this kernel knows on {dev} ({tried}); make one (mkfs.ext4 {dev}) or drop aurae.data",
        dev = .device.display()
    )]
    NoFilesystem { device: PathBuf, tried: String },
}

/// Mounts `device` at `DATA_DIR` with the first filesystem type that takes it.
pub fn mount_data(device: &Path) -> Result<DataDisk, DataError> {
    let dev = device.display();
    match std::fs::metadata(device) {
        Ok(m) if m.file_type().is_block_device() => {}
        Ok(_) => return Err(DataError::NotBlock(device.to_owned())),
        Err(source) => {
            return Err(DataError::Missing {
                device: device.to_owned(),
                source,
            })
        }
    }
    std::fs::create_dir_all(DATA_DIR).map_err(|e| DataError::Dir {
        what: "mkdir",
        why: e.to_string(),
    })?;
    let types = disk_types(&std::fs::read_to_string("/proc/filesystems").unwrap_or_default());
    // Cells exec from the layers kept here (through their overlay): no noexec. nodev still
    // holds, and whiteout device nodes need no opening.
    // nodev,nosuid: the image store lives here, with what layers carry.
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOATIME;
    let mut tried = Vec::new();
    for t in &types {
        match mount(Some(device), DATA_DIR, Some(t.as_str()), flags, None::<&str>) {
            Ok(()) => {
                let st = nix::sys::statvfs::statvfs(DATA_DIR).map_err(|e| DataError::Dir {
                    what: "statvfs",
                    why: e.to_string(),
                })?;
                let capacity_bytes = (st.blocks() as u64).saturating_mul(st.fragment_size() as u64);
                tracing::info!("data disk {dev} ({t}, {} MiB) on {DATA_DIR}", capacity_bytes >> 20);
                return Ok(DataDisk {
                    device: device.to_owned(),
                    fstype: t.clone(),
                    capacity_bytes,
                });
            }
            Err(e) => tried.push(format!("{t}: {e}")),
        }
    }
    Err(DataError::NoFilesystem {
        device: device.to_owned(),
        tried: tried.join(", "),
    })
}

/// Binds `DATA_DIR/name` (made when missing) onto `dir` (nodev, nosuid), so what is kept
/// there survives a reboot: a kubelet's pods and their logs.
pub fn bind_from_data(dir: &Path, name: &str) -> Result<(), DataError> {
    let from = Path::new(DATA_DIR).join(name);
    let fail = |what: &'static str| {
        move |e: std::io::Error| DataError::Dir {
            what,
            why: e.to_string(),
        }
    };
    std::fs::create_dir_all(&from).map_err(fail("mkdir"))?;
    std::fs::create_dir_all(dir).map_err(fail("mkdir the target of"))?;
    let sys = |what: &'static str| {
        move |e: nix::Error| DataError::Dir {
            what,
            why: format!("{}: {e}", dir.display()),
        }
    };
    mount(Some(&from), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys("bind"))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(sys("remount"))
}

/// Makes `dir` a mount of its own (bound onto itself unless it is on another filesystem
/// than its parent already) with shared propagation: what is mounted beneath it later
/// reaches the copies a cell took of it (kubelet's pod directory in a `cell` sandbox's
/// instance), as kubelet itself expects of its root directory.
pub fn share(dir: &Path) -> Result<(), DataError> {
    use std::os::unix::fs::MetadataExt;
    let sys = |what: &'static str| {
        move |e: nix::Error| DataError::Dir {
            what,
            why: format!("{}: {e}", dir.display()),
        }
    };
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(dir).is_none() || dev(dir) == dev(&dir.join("..")) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys("bind onto itself"))?;
    }
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>).map_err(sys("share"))
}

/// Makes the data disk read-only after the last sync (power-off), so its filesystem is
/// clean on the next boot. Nothing is mounted there: nothing to do.
pub fn quiesce() {
    let _ = mount(
        None::<&str>,
        DATA_DIR,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_filesystems_on_devices_are_tried() {
        let pf = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n\tsquashfs\n\terofs\n";
        assert_eq!(disk_types(pf), ["ext4", "squashfs", "erofs"]);
    }

    #[test]
    fn a_missing_or_wrong_device_says_so() {
        let e = mount_data(Path::new("/dev/nonexistent-disk")).unwrap_err().to_string();
        assert!(e.contains("is the disk attached"), "{e}");
        let e = mount_data(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("not a block device"), "{e}");
    }
}
