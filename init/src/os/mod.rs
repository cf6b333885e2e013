//! Single system calls that neither nix nor the standard library offers safely, each behind
//! a safe function. With `runtime/sys/` (clone3 and what a child does before exec), the
//! VMM's KVM files and `net/`'s ioctl and netlink wrappers, this is where auraed's `unsafe`
//! lives; `make lint` refuses it anywhere else (tests/lint/structure.py names the homes).

pub mod tty;

/// Restores SIGPIPE's default action (Rust ignores it, so a closed pipe becomes EPIPE):
/// `aer ... | head` then ends quietly as other command-line tools do.
pub fn default_sigpipe() {
    // SAFETY: restoring a default signal disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A copy of the mount tree at `dir` (every mount beneath it too), detached: in no
/// namespace until `move_mount_to` attaches it (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`).
pub fn open_tree_clone(dir: &std::path::Path) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attaches the detached mount tree `tree` (from `open_tree_clone`) at `target`.
pub fn move_mount_to(tree: &std::os::fd::OwnedFd, target: &std::path::Path) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let to = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: NUL-terminated paths that outlive the call; `tree` stays open across it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(nix::errno::Errno::last()),
    }
}

/// Writes `value` to I/O port `port` (x86), after asking the kernel for that one port.
pub fn port_write(port: u16, value: u8) -> std::io::Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(u64::from(port), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the caller names a port of a device it means to drive (auraed's VMM's power
    // port); the write has no effect on this process's memory.
    unsafe { std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
    Ok(())
}
