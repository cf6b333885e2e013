//! The VMM's jail, entered once the machine is built and before any guest code runs, as
//! Firecracker's jailer does: a mount namespace of its own whose root is an empty,
//! read-only tmpfs (`pivot_root`, the node's filesystem detached); an unprivileged uid and
//! gid of its own with no capability in any set and `no_new_privs`; and a seccomp filter
//! (installed on every thread at once) that allows only the calls a running VMM makes:
//! reads and writes on the descriptors it already has, `KVM_RUN` and no other ioctl,
//! memory and thread housekeeping. Anything else ends the VMM: the call traps (SIGSYS),
//! the handler writes which call it was to the VMM's log and exits. Every file it uses was
//! opened by the runtime and passed in (`protocol::VmFiles`), so it needs no path.

use crate::bpf::{self, Verdict};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what}: {errno}")]
    Sys {
        what: &'static str,
        errno: nix::errno::Errno,
    },
}

fn sys(what: &'static str) -> impl Fn(nix::errno::Errno) -> JailError {
    move |errno| JailError::Sys { what, errno }
}

vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);

/// The only ioctl a running VMM makes.
static IOCTLS: std::sync::OnceLock<[u32; 1]> = std::sync::OnceLock::new();

// What a template's VMM reads of its vCPUs and VM when its guest asks to be taken
// (`snapshot::take`): state out of KVM, nothing into it.
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);

static TAKE_IOCTLS: std::sync::OnceLock<[u32; 14]> = std::sync::OnceLock::new();

/// fcntl(F_GETFD) only: reading a descriptor's flags, which std does when a debug build
/// closes one (a VMM thread that ends drops its vCPU).
fn fd_flags() -> (u32, Verdict) {
    (libc::SYS_fcntl as u32, Verdict::ArgOneOf(1, &[libc::F_GETFD as u32]))
}

/// KVM_RUN, and for a template (`take`) the reads that take its state.
fn kvm_ioctls(take: bool) -> Verdict {
    if !take {
        return kvm_run_only();
    }
    Verdict::ArgOneOf(
        1,
        TAKE_IOCTLS.get_or_init(|| {
            [
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_GET_SREGS(),
                KVM_GET_MSRS(),
                KVM_GET_CPUID2(),
                KVM_GET_LAPIC(),
                KVM_GET_MP_STATE(),
                KVM_GET_VCPU_EVENTS(),
                KVM_GET_DEBUGREGS(),
                KVM_GET_XSAVE(),
                KVM_GET_XCRS(),
                KVM_GET_IRQCHIP(),
                KVM_GET_PIT2(),
                KVM_GET_CLOCK(),
            ]
            .map(|n| n as u32)
        }),
    )
}

/// Enters the mount namespace, root and credentials of the jail. Call on the only thread.
pub fn enter(uid: u32) -> Result<(), JailError> {
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare(CLONE_NEWNS)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make mounts private"))?;
    let nothing = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("aurae-vmm"),
        "/tmp",
        Some("tmpfs"),
        nothing,
        Some("size=4k,mode=0555"),
    )
    .map_err(sys("mount the jail's tmpfs"))?;
    nix::unistd::chdir("/tmp").map_err(sys("chdir into the jail"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into the jail"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the node's filesystem"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nothing,
        None::<&str>,
    )
    .map_err(sys("make the jail read-only"))?;
    // Capabilities: the bounding set first (that needs CAP_SETPCAP), then the ids; leaving
    // uid 0 clears the permitted and effective sets.
    // Every capability number there can be: the kernel refuses those it lacks (EINVAL).
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; affects this process only.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    let u = nix::unistd::Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(sys("setresuid"))?;
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc < 0 {
        return Err(JailError::Sys {
            what: "no_new_privs",
            errno: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

macro_rules! sys {
    ($($name:ident),* $(,)?) => { &[$(libc::$name),*] };
}

/// What every thread of a running VMM may call: logging to stderr, memory, futexes,
/// signal masks, time, and its own end; also what std may call on any thread on its own
/// (hash keys from getrandom, the CPU count).
const COMMON: &[libc::c_long] = sys!(
    SYS_getrandom,
    SYS_sched_getaffinity,
    SYS_write,
    SYS_writev,
    SYS_close,
    SYS_futex,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_madvise,
    SYS_mprotect,
    SYS_brk,
    SYS_exit,
    SYS_exit_group,
    SYS_rt_sigprocmask,
    SYS_rt_sigaction,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_sched_yield,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettid,
    SYS_getpid,
    SYS_tgkill,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_restart_syscall,
);

/// The kinds of threads a VMM runs, each with a filter of its own on top of the
/// process's (seccomp filters stack: a call must pass both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Waits for the guest to end and reports on the control socket.
    Main,
    /// Runs a vCPU and the devices its exits reach (disk I/O, TX to the TAP).
    Vcpu,
    /// Reads frames from the TAP into the guest.
    NetRx,
    /// Waits for SIGTERM (press Power) and SIGUSR1 (report memory).
    Signals,
}

impl Kind {
    /// What this kind adds to `COMMON`.
    fn extra(self) -> &'static [libc::c_long] {
        match self {
            // std writes to sockets with send(MSG_NOSIGNAL): the control socket.
            Kind::Main => sys!(SYS_sendto),
            Kind::Vcpu => sys!(SYS_read, SYS_pread64, SYS_pwrite64, SYS_fdatasync, SYS_fsync),
            Kind::NetRx => sys!(SYS_read),
            // The memory report reads a status file opened before the jail.
            Kind::Signals => sys!(
                SYS_rt_sigtimedwait,
                SYS_mincore,
                SYS_read,
                SYS_lseek,
                SYS_fstat,
                SYS_statx
            ),
        }
    }

    const ALL: [Kind; 4] = [Kind::Main, Kind::Vcpu, Kind::NetRx, Kind::Signals];
}

fn kvm_run_only() -> Verdict {
    Verdict::ArgOneOf(1, IOCTLS.get_or_init(|| [KVM_RUN() as u32]))
}

/// The filter for the whole process: the union of every kind's calls, plus thread names
/// (std sets them with prctl) and seccomp itself (each thread then narrows its own).
/// `take`: a template's, whose vCPU threads also read its state out of KVM.
pub fn filter(take: bool) -> Vec<bpf::Insn> {
    let mut rules: Vec<(u32, Verdict)> = COMMON
        .iter()
        .chain(Kind::ALL.iter().flat_map(|k| k.extra().iter()))
        .chain(sys!(SYS_seccomp))
        .map(|n| (*n as u32, Verdict::Allow))
        .collect();
    rules.push((libc::SYS_ioctl as u32, kvm_ioctls(take)));
    rules.push(fd_flags());
    rules.push((
        libc::SYS_prctl as u32,
        Verdict::AllowIfOneOf(&[libc::PR_SET_NAME as u32]),
    ));
    bpf::compile(rules, bpf::RET_TRAP)
}

/// The filter a thread of `kind` adds once it runs in the jail.
pub fn thread_filter(kind: Kind, take: bool) -> Vec<bpf::Insn> {
    let mut rules: Vec<(u32, Verdict)> = COMMON
        .iter()
        .chain(kind.extra())
        .map(|n| (*n as u32, Verdict::Allow))
        .collect();
    if kind == Kind::Vcpu {
        rules.push((libc::SYS_ioctl as u32, kvm_ioctls(take)));
    }
    rules.push(fd_flags());
    bpf::compile(rules, bpf::RET_TRAP)
}

/// Exit status of a VMM the jail stopped (128 + SIGSYS, as a shell reports a signal).
pub const REFUSED_EXIT: i32 = 128 + libc::SIGSYS;

/// SIGSYS from the filter: says which call was refused, on stderr, and exits. Only
/// async-signal-safe calls (write, _exit), both allowed by the filter.
extern "C" fn refused(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `struct siginfo` for SIGSYS: after signo, errno, code (and padding to 16), the
    // faulting address, then the call's number (include/uapi/asm-generic/siginfo.h).
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let nr = unsafe { *(info.cast::<u8>().add(24).cast::<libc::c_int>()) };
    let prefix = b"aurae-vmm: the jail refused system call ";
    let mut digits = [b'\n'; 12];
    let mut at = digits.len() - 1;
    let mut n = nr.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    // SAFETY: write(2) of static and stack buffers to stderr, then _exit; all
    // async-signal-safe.
    unsafe {
        libc::write(2, prefix.as_ptr().cast(), prefix.len());
        libc::write(2, digits[at..].as_ptr().cast(), digits.len() - at);
        libc::_exit(REFUSED_EXIT);
    }
}

/// Routes SIGSYS to `refused`.
pub fn on_refusal() -> Result<(), JailError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn with the
    // SA_SIGINFO signature, and sigaction only reads the struct.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = refused;
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(JailError::Sys {
            what: "SIGSYS handler",
            errno: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

/// Installs `prog` on the calling thread only.
pub fn install_thread(prog: &[bpf::Insn]) -> Result<(), JailError> {
    seccomp(prog, 0)
}

/// Installs `filter()` on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC).
pub fn install(prog: &[bpf::Insn]) -> Result<(), JailError> {
    seccomp(prog, libc::SECCOMP_FILTER_FLAG_TSYNC)
}

fn seccomp(prog: &[bpf::Insn], flags: libc::c_ulong) -> Result<(), JailError> {
    let fprog = bpf::fprog(prog);
    // SAFETY: seccomp(2) reads the program through the pointer, valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(JailError::Sys {
            what: "install the seccomp filter",
            errno: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_filter_allows_kvm_run_and_traps_everything_else() {
        let f = filter(false);
        let x86 = 0xc000_003e;
        let run = |nr: libc::c_long, a0: u64, a1: u64| bpf::run_args(&f, nr as u32, x86, [a0, a1]).0;
        assert_eq!(run(libc::SYS_ioctl, 9, u64::from(KVM_RUN() as u32)), bpf::RET_ALLOW);
        assert_eq!(run(libc::SYS_write, 1, 0), bpf::RET_ALLOW);
        for (nr, a1) in [
            (libc::SYS_ioctl, 0x8004_ae46u64), // another KVM ioctl
            (libc::SYS_open, 0),
            (libc::SYS_openat, 0),
            (libc::SYS_execve, 0),
            (libc::SYS_socket, 0),
            (libc::SYS_clone, 0),
            (libc::SYS_mount, 0),
            (libc::SYS_ptrace, 0),
        ] {
            assert_eq!(run(nr, 0, a1), bpf::RET_TRAP, "{nr}");
        }
        assert_eq!(run(libc::SYS_prctl, libc::PR_SET_NAME as u64, 0), bpf::RET_ALLOW);
        assert_eq!(run(libc::SYS_fcntl, 3, libc::F_GETFD as u64), bpf::RET_ALLOW);
        for cmd in [libc::F_SETFD, libc::F_DUPFD, libc::F_DUPFD_CLOEXEC, libc::F_SETFL] {
            assert_eq!(run(libc::SYS_fcntl, 3, cmd as u64), bpf::RET_TRAP, "fcntl {cmd}");
        }
        assert_eq!(run(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS as u64, 0), bpf::RET_TRAP);
        // Each kind of thread is narrower: only a vCPU may KVM_RUN or touch a disk, only
        // the signal thread may wait for signals.
        let on =
            |k: Kind, nr: libc::c_long, a1: u64| bpf::run_args(&thread_filter(k, false), nr as u32, x86, [0, a1]).0;
        let kvm_run = u64::from(KVM_RUN() as u32);
        assert_eq!(on(Kind::Vcpu, libc::SYS_ioctl, kvm_run), bpf::RET_ALLOW);
        assert_eq!(on(Kind::NetRx, libc::SYS_ioctl, kvm_run), bpf::RET_TRAP);
        assert_eq!(on(Kind::NetRx, libc::SYS_pwrite64, 0), bpf::RET_TRAP);
        assert_eq!(on(Kind::Main, libc::SYS_rt_sigtimedwait, 0), bpf::RET_TRAP);
        assert_eq!(on(Kind::Signals, libc::SYS_rt_sigtimedwait, 0), bpf::RET_ALLOW);
        for k in Kind::ALL {
            assert_eq!(on(k, libc::SYS_seccomp, 0), bpf::RET_TRAP, "{k:?} cannot install more");
        }
        // Only a template's vCPUs read their state out of KVM; none may write it, or
        // reach the VM's memory map, anywhere.
        let get_regs = u64::from(KVM_GET_REGS() as u32);
        assert_eq!(on(Kind::Vcpu, libc::SYS_ioctl, get_regs), bpf::RET_TRAP);
        assert_eq!(run(libc::SYS_ioctl, 9, get_regs), bpf::RET_TRAP);
        let take = filter(true);
        let vcpu = thread_filter(Kind::Vcpu, true);
        for (what, nr) in [("get regs", KVM_GET_REGS()), ("get clock", KVM_GET_CLOCK())] {
            let a1 = u64::from(nr as u32);
            assert_eq!(
                bpf::run_args(&take, libc::SYS_ioctl as u32, x86, [9, a1]).0,
                bpf::RET_ALLOW,
                "{what}"
            );
            assert_eq!(
                bpf::run_args(&vcpu, libc::SYS_ioctl as u32, x86, [9, a1]).0,
                bpf::RET_ALLOW,
                "{what}"
            );
        }
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
        vmm_sys_util::ioctl_iow_nr!(
            KVM_SET_USER_MEMORY_REGION,
            KVMIO,
            0x46,
            kvm_bindings::kvm_userspace_memory_region
        );
        for nr in [KVM_SET_REGS(), KVM_SET_USER_MEMORY_REGION()] {
            let a1 = u64::from(nr as u32);
            assert_eq!(
                bpf::run_args(&take, libc::SYS_ioctl as u32, x86, [9, a1]).0,
                bpf::RET_TRAP
            );
            assert_eq!(
                bpf::run_args(&vcpu, libc::SYS_ioctl as u32, x86, [9, a1]).0,
                bpf::RET_TRAP
            );
        }
    }
}
