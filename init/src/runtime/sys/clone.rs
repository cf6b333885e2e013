//! `clone3(2)` with `CLONE_INTO_CGROUP`, so a process is born inside its cgroup and is never
//! outside one, even for an instant, and with `CLONE_VM` on a stack of its own, like
//! `posix_spawn`: nothing of auraed's memory is copied for a process that is about to exec.
//! libc has no `clone_args` on musl, so it is defined here.

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

/// What a child started by [`clone3_vm`] runs; it must end in `execve` or `_exit`.
pub type ChildFn<'a> = &'a mut dyn FnMut() -> std::convert::Infallible;

extern "C" fn trampoline(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `&mut ChildFn` that `clone3_vm` passed, kept alive by the
    // caller until the child has exec'd or exited; only the child calls it.
    let f = unsafe { &mut *(arg as *mut ChildFn<'_>) };
    match f() {}
}

/// The child's stack. The caller drops it only once the child no longer runs on it: after
/// its exec (the close-on-exec report pipe reached EOF) or its exit.
pub struct ChildStack(*mut libc::c_void);

const STACK: usize = 256 << 10;

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: a mapping of STACK bytes made by `clone3_vm`, no longer in use.
        unsafe { libc::munmap(self.0, STACK) };
    }
}

/// A started child: its pid, its pidfd when asked for, and the stack it may still be on.
pub struct Cloned {
    pub pid: Pid,
    pub pidfd: Option<OwnedFd>,
    pub stack: ChildStack,
}

/// Starts `child` as a new process in the cgroup `cgroup`, with the namespace `flags`
/// (CLONE_NEW*), sharing auraed's memory (CLONE_VM) on a stack of its own. Returns at once;
/// the child runs concurrently until it execs.
///
/// # Safety
/// `child` runs in auraed's address space, concurrently with auraed: it may only make
/// system calls on data prepared before the call (no heap, no locks) and must end in exec
/// or `_exit`. `child` and everything it reads must outlive that, as must the returned
/// stack (see [`ChildStack`]).
pub unsafe fn clone3_vm(
    flags: libc::c_int,
    cgroup: BorrowedFd<'_>,
    want_pidfd: bool,
    child: &mut ChildFn<'_>,
) -> Result<Cloned, Errno> {
    // SAFETY: an anonymous private mapping, checked for failure below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let stack = ChildStack(stack);
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (flags as u32 as u64) | CLONE_INTO_CGROUP | libc::CLONE_VM as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        stack: stack.0 as u64,
        stack_size: STACK as u64,
        ..Default::default()
    };
    if want_pidfd {
        args.flags |= libc::CLONE_PIDFD as u64;
        args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    }
    let arg = child as *mut ChildFn<'_> as *mut libc::c_void;
    let ret: isize;
    // SAFETY: raw clone3. In the parent it returns like any system call (the kernel has
    // read `args` by then). The child starts at the top of its stack (16-byte aligned: a
    // fresh mapping) with the parent's registers except rax = 0; it calls
    // `trampoline(arg)` from r12/r13, which the syscall instruction preserves, and never
    // returns.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") SYS_CLONE3 as isize => ret,
            in("rdi") &mut args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") trampoline as extern "C" fn(*mut libc::c_void) -> !,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    if ret < 0 {
        return Err(Errno::from_raw(-ret as i32));
    }
    Ok(Cloned {
        pid: Pid::from_raw(ret as i32),
        // SAFETY: the kernel stored a new, owned pidfd when CLONE_PIDFD succeeded.
        pidfd: (want_pidfd && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        stack,
    })
}
