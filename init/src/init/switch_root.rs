//! PID 1 leaves the initramfs before anything else. The kernel unpacks the initramfs into
//! `rootfs`, the root of the whole mount tree, and `pivot_root(2)` refuses to move a root
//! that has no parent mount: without this, no cell could have a root of its own. So, as
//! `switch_root` does, PID 1 copies the initramfs onto a tmpfs, frees the original,
//! makes the tmpfs `/` (MS_MOVE + chroot) and re-executes itself from there, so that the
//! old copy of its own binary is freed as well.

use nix::mount::{mount, umount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Where the tmpfs is filled; it becomes `/`.
const NEW_ROOT: &str = "/.root";

/// Whether `/` is the kernel's rootfs: its line in mountinfo says so.
fn root_is_rootfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split(' ').nth(4) == Some("/") && right.split(' ').next() == Some("rootfs")
    })
}

/// Which step of leaving the initramfs failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct SwitchError {
    what: String,
    why: String,
}

fn failed<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> SwitchError {
    let what = what.into();
    move |e| SwitchError {
        what,
        why: e.to_string(),
    }
}

/// Moves `/` from the initramfs onto a tmpfs. Ok(true): moved (re-execute now); Ok(false):
/// not on an initramfs, nothing done. Runs before logging exists: errors are returned.
pub fn leave_initramfs() -> Result<bool, SwitchError> {
    std::fs::create_dir_all("/proc").map_err(failed("mkdir /proc"))?;
    mount(Some("proc"), "/proc", Some("proc"), MsFlags::empty(), None::<&str>).map_err(failed("mount /proc"))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo");
    let _ = umount("/proc");
    if !root_is_rootfs(&info.map_err(failed("read mountinfo"))?) {
        return Ok(false);
    }
    std::fs::create_dir_all(NEW_ROOT).map_err(failed(format!("mkdir {NEW_ROOT}")))?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(failed(format!("mount tmpfs on {NEW_ROOT}")))?;
    let dev = std::fs::symlink_metadata("/").map_err(failed("stat /"))?.dev();
    let mut links = HashMap::new();
    copy_dir(Path::new("/"), Path::new(NEW_ROOT), dev, &mut links)?;
    // Free the initramfs: everything on it but the new root (a mount, left alone).
    for entry in std::fs::read_dir("/").map_err(failed("read /"))?.flatten() {
        let p = entry.path();
        if p != Path::new(NEW_ROOT) {
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
    }
    nix::unistd::chdir(NEW_ROOT).map_err(failed(format!("chdir {NEW_ROOT}")))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(failed(format!("move {NEW_ROOT} to /")))?;
    nix::unistd::chroot(".").map_err(failed("chroot"))?;
    nix::unistd::chdir("/").map_err(failed("chdir /"))?;
    Ok(true)
}

/// Copies the tree at `from` (only what lives on device `dev`) into the directory `to`,
/// keeping modes, owners, symlinks, device nodes and hard links.
fn copy_dir(from: &Path, to: &Path, dev: u64, links: &mut HashMap<u64, std::path::PathBuf>) -> Result<(), SwitchError> {
    let read = std::fs::read_dir(from).map_err(failed(format!("read {}", from.display())))?;
    for entry in read.flatten() {
        let src = entry.path();
        if src == Path::new(NEW_ROOT) {
            continue;
        }
        let m = std::fs::symlink_metadata(&src).map_err(failed(format!("stat {}", src.display())))?;
        let dst = to.join(entry.file_name());
        let fail = |what: &str, e: &dyn std::fmt::Display| SwitchError {
            what: format!("{what} {}", dst.display()),
            why: e.to_string(),
        };
        let t = m.file_type();
        if t.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| fail("mkdir", &e))?;
            if m.dev() == dev {
                copy_dir(&src, &dst, dev, links)?;
            }
        } else if t.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| fail("readlink", &e))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|e| fail("symlink", &e))?;
        } else if t.is_file() {
            if let Some(first) = (m.nlink() > 1).then(|| links.get(&m.ino())).flatten() {
                std::fs::hard_link(first, &dst).map_err(|e| fail("link", &e))?;
                continue;
            }
            std::fs::copy(&src, &dst).map_err(|e| fail("copy to", &e))?;
            if m.nlink() > 1 {
                links.insert(m.ino(), dst.clone());
            }
        } else {
            let kind = SFlag::from_bits_truncate(m.mode() & SFlag::S_IFMT.bits());
            mknod(&dst, kind, Mode::from_bits_truncate(m.mode()), m.rdev()).map_err(|e| fail("mknod", &e))?;
        }
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &dst,
            Some(m.uid().into()),
            Some(m.gid().into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail("chown", &e))?;
        if !t.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(|e| fail("chmod", &e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_initramfs_root() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=100k\n22 1 0:5 / /proc rw - proc proc rw\n";
        assert!(root_is_rootfs(initramfs));
        // After the move and chroot, mountinfo lists only mounts under the new root.
        let moved = "25 1 0:20 / / rw - tmpfs rootfs rw\n26 25 0:5 / /proc rw - proc proc rw\n";
        assert!(!root_is_rootfs(moved));
        let disk = "20 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert!(!root_is_rootfs(disk));
    }
}
