//! Removing a directory tree without recursion: one directory descriptor open at a time,
//! the way back up through `..`, and the names still to visit on a heap-allocated stack.
//!
//! A layer can build a tree tens of thousands of directories deep (chained symlinks inside
//! the root); a recursive delete of it (`std::fs::remove_dir_all`, a recursive
//! `unlinkat` walk) overflows the thread's stack, and in PID 1 that is a kernel panic, at
//! every boot when the tree is a leftover on a data disk. This walk uses constant stack and
//! one descriptor, whatever the depth. It never follows a symlink: each step down is
//! `openat(O_NOFOLLOW | O_DIRECTORY)` and a symlink is unlinked like a file. The trees it
//! removes are auraed's own (the store's `tmp/`, layers, unpack work); nothing else renames
//! in them meanwhile, so `..` leads back the way it came.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens directory `name` in `at` without following a symlink.
pub fn open_dir(at: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Whether `name` in `dir` is a directory (not following a symlink); None if it is gone.
pub fn is_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<bool>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
        )),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Unlinks every non-directory in `fd`; returns the names of its subdirectories.
fn clear_files(fd: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let dup = fd
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let name = OsStr::from_bytes(n).to_owned();
        let is_dir = match e.file_type() {
            Some(t) => t == nix::dir::Type::Directory,
            None => is_dir_at(fd.as_fd(), &name)? == Some(true),
        };
        if is_dir {
            dirs.push(name);
        } else {
            files.push(name);
        }
    }
    for f in files {
        match nix::unistd::unlinkat(fd.as_fd(), f.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(dirs)
}

/// Removes `name` in `dir` with everything in it (a file or symlink is unlinked).
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    match is_dir_at(dir, name)? {
        None => return Ok(()),
        Some(false) => return nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
        Some(true) => {}
    }
    let mut cur = open_dir(dir, name)?;
    // Per level below `name`: the directory's own name and its subdirectories still to
    // visit. The top entry is `name` itself.
    let mut stack: Vec<(OsString, Vec<OsString>)> = vec![(name.to_owned(), clear_files(&cur)?)];
    while let Some((_, todo)) = stack.last_mut() {
        match todo.pop() {
            Some(sub) => {
                let next = match open_dir(cur.as_fd(), &sub) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                cur = next;
                let subdirs = clear_files(&cur)?;
                stack.push((sub, subdirs));
            }
            None => {
                let Some((done, _)) = stack.pop() else { break };
                if stack.is_empty() {
                    drop(cur);
                    return match nix::unistd::unlinkat(dir, done.as_os_str(), UnlinkatFlags::RemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
                let up = open_dir(cur.as_fd(), OsStr::new(".."))?;
                cur = up;
                match nix::unistd::unlinkat(cur.as_fd(), done.as_os_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Removes `path` with everything in it; Ok if it is not there.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{}: not a removable path",
            path.display()
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_all_at(dir.as_fd(), name).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain `depth` directories deep below `top`, made with relative steps (the full
    /// path is far beyond PATH_MAX), with a file and a symlink at every level.
    fn deep(top: &Path, depth: usize) {
        std::fs::create_dir(top).unwrap();
        let mut fd = nix::fcntl::open(top, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        for i in 0..depth {
            let name = OsString::from(format!("d{}", i % 7));
            nix::sys::stat::mkdirat(fd.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o755)).unwrap();
            let f = nix::fcntl::openat(
                fd.as_fd(),
                "f",
                OFlag::O_CREAT | OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
            drop(f);
            nix::unistd::symlinkat("/", fd.as_fd(), "up").unwrap();
            fd = open_dir(fd.as_fd(), &name).unwrap();
        }
    }

    #[test]
    fn a_tree_deeper_than_the_stack_and_the_fd_limit_allow_goes_with_one_descriptor() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("top");
        deep(&top, 3_000);
        std::fs::write(t.path().join("keep"), b"k").unwrap();
        // A 64 KiB stack and a tree of 3,000 levels: a recursive delete needs a frame and a
        // descriptor per level (std's remove_dir_all ends in EMFILE or a stack overflow).
        let p = top.clone();
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove_tree(&p))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!top.exists());
        assert!(t.path().join("keep").exists(), "its siblings stay");
        assert!(std::path::Path::new("/").exists());
    }

    #[test]
    fn symlinks_are_unlinked_never_followed_and_missing_paths_are_fine() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"p").unwrap();
        let top = t.path().join("top");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/b/link")).unwrap();
        std::os::unix::fs::symlink(&outside, t.path().join("toplink")).unwrap();
        remove_tree(&top).unwrap();
        remove_tree(&t.path().join("toplink")).unwrap();
        assert!(outside.join("precious").exists());
        assert!(!top.exists() && !t.path().join("toplink").exists());
        remove_tree(&t.path().join("never/was")).unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        remove_tree(&t.path().join("file")).unwrap();
        assert!(!t.path().join("file").exists());
    }
}
