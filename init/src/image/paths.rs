//! Paths inside an image's root: names cleaned of `..`, symlink targets clamped to the
//! root, and directories opened with `openat2(RESOLVE_IN_ROOT)` so nothing resolves
//! outside it.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why one entry (or the layer's stream) cannot be unpacked; said in `ImageError::Refused`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EntryError {
    #[error("not zstd: {0}")]
    NotZstd(String),
    #[error("its name climbs out of the root with '..'")]
    Climbs,
    #[error("not a Unix path")]
    NotUnix,
    #[error("its directory '{}': {}", .0.display(), .1.desc())]
    Dir(PathBuf, Errno),
    #[error("its directory '{}': too many levels of symlinks", .0.display())]
    TooManyLinks(PathBuf),
    #[error("make directory '{}': {}", .0.display(), .1.desc())]
    Mkdir(PathBuf, Errno),
    #[error("{}", .0.desc())]
    Open(Errno),
    #[error("a directory outside the root")]
    OutsideRoot,
    #[error("where is a directory: {0}")]
    WhereIs(std::io::Error),
}

/// `p` with `..` taken lexically and never above the root (for a symlink's target from a
/// directory without symlinks in its path), without `/` and `.`.
pub(super) fn clamp(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `rel` without `/`, `.` and with `..` refused.
pub(super) fn clean(p: &Path) -> Result<PathBuf, EntryError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(EntryError::Climbs),
            Component::Prefix(_) => return Err(EntryError::NotUnix),
        }
    }
    Ok(out)
}

pub(super) fn in_root(dirfd: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    nix::fcntl::openat2(dirfd, rel, how)
}

/// The names in directory `fd` (not `.` and `..`).
pub(crate) fn children(fd: &OwnedFd) -> nix::Result<Vec<std::ffi::OsString>> {
    let dup = fd
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut v = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            v.push(OsStr::from_bytes(n).to_owned());
        }
    }
    Ok(v)
}
