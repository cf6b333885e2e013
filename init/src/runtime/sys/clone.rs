//! `clone3(2)` with `CLONE_INTO_CGROUP`, so a process is born inside its cgroup and is never
//! outside one, even for an instant. libc has no `clone_args` on musl, so it is defined here.

use nix::errno::Errno;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct clone_args` (include/uapi/linux/sched.h), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const SYS_CLONE3: libc::c_long = 435;

pub enum Forked {
    /// In the new process. Only async-signal-safe code may run; it must end in exec or _exit.
    Child,
    Parent {
        pid: Pid,
        pidfd: Option<OwnedFd>,
    },
}

/// Creates a process in the cgroup `cgroup` with the namespace `flags` (CLONE_NEW*) and,
/// when `want_pidfd`, a pidfd for it.
///
/// # Safety
/// Like `fork`: the child is a copy of a multi-threaded process and may only run
/// async-signal-safe code (no allocation, no locks) until it execs or calls `_exit`.
pub unsafe fn clone3(flags: libc::c_int, cgroup: BorrowedFd<'_>, want_pidfd: bool) -> Result<Forked, Errno> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (flags as u32 as u64) | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    if want_pidfd {
        args.flags |= libc::CLONE_PIDFD as u64;
        args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    }
    // SAFETY: `args` is a valid, initialised clone_args of the size passed; the pidfd
    // pointer (if set) outlives the call. stack = 0 means the child continues on a copy of
    // this stack, as with fork; the caller upholds the async-signal-safety contract.
    let r = unsafe {
        libc::syscall(
            SYS_CLONE3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: Pid::from_raw(pid as i32),
            // SAFETY: the kernel stored a new, owned pidfd when CLONE_PIDFD succeeded.
            pidfd: (want_pidfd && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        }),
    }
}
