//! The cells' seccomp profile: Docker's default allow-list for x86_64 (moby
//! `profiles/seccomp/default.json`), compiled to BPF as a search tree (`crate::bpf`). As in
//! Docker, the list depends on the cell's capabilities: `mount`, `unshare`, `setns` and
//! namespace flags to `clone` are allowed only with SYS_ADMIN, `ptrace`-like calls with
//! SYS_PTRACE, and so on; `clone3` answers ENOSYS without SYS_ADMIN (its flags are in
//! memory a filter cannot read; libcs then fall back to `clone`). Anything else fails with
//! EPERM; another architecture's calls kill the process, x32 calls get EPERM.
//!
//! Two ways to be stricter, per cell: the `Strict` level (the default without the calls
//! kernel exploits favour and ordinary services do not make, see `STRICT_DENY`) and a list of
//! calls of the cell's own to refuse on top (`Calls`).

use super::caps::CapSet;
use crate::bpf::{self, Verdict};

/// A system call by name (libc's, `SYS_` and the kernel's name) and number.
type Call = (&'static str, libc::c_long);

macro_rules! sys {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name)),*] };
}

/// The kernel's name of a call.
fn name(c: &Call) -> &'static str {
    c.0.strip_prefix("SYS_").unwrap_or(c.0)
}

/// Allowed whatever the capabilities.
const ALWAYS: &[Call] = sys!(
    SYS_accept,
    SYS_accept4,
    SYS_access,
    SYS_adjtimex,
    SYS_alarm,
    SYS_arch_prctl,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_chmod,
    SYS_chown,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_creat,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_ctl_old,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fork,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_futimesat,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpgrp,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_get_robust_list,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_get_thread_area,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_ioctl,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_io_setup,
    SYS_io_submit,
    // No io_uring_setup/enter/register: Docker refuses them since 25.0 (most of the kernel
    // exploits in Google's kCTF of 2022 went through io_uring; off in ChromeOS, Android).
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lchown,
    SYS_lgetxattr,
    SYS_link,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_lstat,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_mknod,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_modify_ldt,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_name_to_handle_at,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_open,
    SYS_openat,
    SYS_openat2,
    SYS_pause,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_poll,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_pselect6,
    SYS_ptrace,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlink,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rmdir,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_select,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_set_robust_list,
    SYS_setsid,
    SYS_setsockopt,
    SYS_set_thread_area,
    SYS_set_tid_address,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_stat,
    SYS_statfs,
    SYS_statx,
    SYS_symlink,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_time,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlink,
    SYS_unlinkat,
    SYS_utime,
    SYS_utimensat,
    SYS_utimes,
    SYS_vfork,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
);

/// Allowed whatever the capabilities, by number: calls the libc crate names for no x86_64
/// target (io_pgetevents).
const ALWAYS_BY_NUMBER: &[Call] = &[("SYS_io_pgetevents", 333)];

/// Allowed only to a cell that holds the capability.
const BY_CAP: &[(&str, &[Call])] = &[
    ("DAC_READ_SEARCH", sys!(SYS_open_by_handle_at)),
    (
        "SYS_ADMIN",
        sys!(
            SYS_bpf,
            SYS_clone,
            SYS_clone3,
            SYS_fanotify_init,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fsopen,
            SYS_fspick,
            SYS_lookup_dcookie,
            SYS_mount,
            SYS_mount_setattr,
            SYS_move_mount,
            SYS_open_tree,
            SYS_perf_event_open,
            SYS_quotactl,
            SYS_quotactl_fd,
            SYS_setdomainname,
            SYS_sethostname,
            SYS_setns,
            SYS_syslog,
            SYS_umount2,
            SYS_unshare
        ),
    ),
    ("SYS_BOOT", sys!(SYS_reboot)),
    ("SYS_CHROOT", sys!(SYS_chroot)),
    ("SYS_MODULE", sys!(SYS_delete_module, SYS_init_module, SYS_finit_module)),
    ("SYS_PACCT", sys!(SYS_acct)),
    ("SYS_PTRACE", sys!(SYS_kcmp, SYS_pidfd_getfd, SYS_process_madvise)),
    ("SYS_RAWIO", sys!(SYS_iopl, SYS_ioperm)),
    ("SYS_TIME", sys!(SYS_settimeofday, SYS_clock_settime)),
    ("SYS_TTY_CONFIG", sys!(SYS_vhangup)),
    (
        "SYS_NICE",
        sys!(
            SYS_get_mempolicy,
            SYS_mbind,
            SYS_set_mempolicy,
            SYS_set_mempolicy_home_node
        ),
    ),
    ("SYSLOG", sys!(SYS_syslog)),
    ("BPF", sys!(SYS_bpf)),
    ("PERFMON", sys!(SYS_perf_event_open)),
];

/// Namespace flags `clone` may not carry without SYS_ADMIN (CLONE_NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET): Docker's 2114060288.
const CLONE_NS_FLAGS: u32 = 0x7E02_0000;

/// `personality` values Docker allows: PER_LINUX, UNAME26, PER_LINUX32, their mix, and a query.
const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const AF_VSOCK: u32 = 40;

/// What `Strict` takes out of the default: the interfaces most kernel exploits of recent
/// years went through and that ordinary services do without. ptrace and reading or
/// writing other processes' memory, vmsplice, and System V message queues (the usual
/// kernel heap-spray primitive). io_uring and userfaultfd, which stretches race windows,
/// are out of the default already.
const STRICT_DENY: &[Call] = sys!(
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_vmsplice,
    SYS_msgget,
    SYS_msgsnd,
    SYS_msgrcv,
    SYS_msgctl,
);

/// The socket families `Strict` allows: unix, inet, inet6, netlink (no packet, alg, key,
/// rds, … whose code is rarely used and often buggy).
const STRICT_FAMILIES: &[u32] = &[1, 2, 10, 16];

/// `personality` under `Strict`: PER_LINUX and the query only.
const STRICT_PERSONALITIES: &[u32] = &[0x0, 0xffff_ffff];

/// How far a cell's profile goes beyond Docker's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Level {
    #[default]
    Default,
    Strict,
}

/// A set of x86_64 system calls (all numbers are below 512).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Calls([u64; 8]);

impl Calls {
    pub fn insert(&mut self, nr: libc::c_long) {
        let n = nr as usize;
        if n < 512 {
            self.0[n / 64] |= 1 << (n % 64);
        }
    }

    pub fn contains(&self, nr: libc::c_long) -> bool {
        let n = nr as usize;
        n < 512 && self.0[n / 64] & (1 << (n % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The names of the calls in the set, in order of number.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<Call> = known().filter(|(_, nr)| self.contains(*nr)).collect();
        v.sort_by_key(|(_, nr)| *nr);
        v.dedup_by_key(|(_, nr)| *nr);
        v.iter().map(name).collect()
    }

    /// Parses call names ("mkdir", "io_uring_setup") into a set. Only calls some profile
    /// allows are known: refusing one no profile allows would change nothing.
    pub fn parse(names: &[String]) -> Result<Calls, UnknownCall> {
        let mut set = Calls::default();
        for given in names {
            let n = given.trim().strip_prefix("SYS_").unwrap_or(given.trim());
            match known().find(|c| name(c) == n) {
                Some((_, nr)) => set.insert(nr),
                None => return Err(UnknownCall(given.clone())),
            }
        }
        Ok(set)
    }
}

/// A name that is no system call a profile allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "'{0}' is not a system call that a cell's profile allows; name x86_64 calls as in `man 2 syscalls` (e.g. mkdir, ptrace, msgget)"
)]
pub struct UnknownCall(pub String);

/// A cell's seccomp choice: the level and its own refusals on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Spec {
    pub level: Level,
    pub deny: Calls,
}

/// Every call a profile can allow, by name.
fn known() -> impl Iterator<Item = Call> {
    let special: &[Call] = sys!(SYS_clone, SYS_clone3, SYS_socket, SYS_personality);
    ALWAYS
        .iter()
        .chain(ALWAYS_BY_NUMBER)
        .chain(BY_CAP.iter().flat_map(|(_, calls)| calls.iter()))
        .chain(special)
        .copied()
}

/// The compiled profile for one capability set, level and list of refused calls.
#[derive(Debug)]
pub struct Profile {
    pub prog: Vec<bpf::Insn>,
}

/// Compiles the profile for a cell holding `caps` at `level`, refusing `deny` on top.
pub fn compile(caps: CapSet, level: Level, deny: Calls) -> Profile {
    let strict = level == Level::Strict;
    let nr = |n: libc::c_long| n as u32;
    let mut rules: Vec<(u32, Verdict)> = ALWAYS
        .iter()
        .chain(ALWAYS_BY_NUMBER)
        .filter(|(_, n)| !(strict && STRICT_DENY.iter().any(|(_, d)| d == n)))
        .map(|(_, n)| (nr(*n), Verdict::Allow))
        .collect();
    for (cap, calls) in BY_CAP {
        if caps.has(cap) {
            rules.extend(calls.iter().map(|(_, n)| (nr(*n), Verdict::Allow)));
        }
    }
    if !caps.has("SYS_ADMIN") {
        rules.push((nr(libc::SYS_clone), Verdict::AllowIfClear(CLONE_NS_FLAGS)));
        rules.push((nr(libc::SYS_clone3), Verdict::Errno(libc::ENOSYS as u16)));
    }
    if strict {
        rules.push((nr(libc::SYS_socket), Verdict::AllowIfOneOf(STRICT_FAMILIES)));
        rules.push((nr(libc::SYS_personality), Verdict::AllowIfOneOf(STRICT_PERSONALITIES)));
    } else {
        rules.push((nr(libc::SYS_socket), Verdict::AllowIfNot(AF_VSOCK)));
        rules.push((nr(libc::SYS_personality), Verdict::AllowIfOneOf(PERSONALITIES)));
    }
    // The cell's own refusals fall through to EPERM.
    rules.retain(|(n, _)| !deny.contains(libc::c_long::from(*n)));
    Profile {
        prog: bpf::compile(rules, bpf::ret_errno(libc::EPERM as u16)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_64: u32 = 0xc000_003e;

    fn verdict(p: &Profile, call: libc::c_long, arg0: u64) -> u32 {
        bpf::run(&p.prog, call as u32, X86_64, arg0).0
    }

    #[test]
    fn the_default_profile_allows_dockers_list_and_refuses_the_rest() {
        let p = compile(CapSet::default_set(), Level::Default, Calls::default());
        assert!(p.prog.len() < 1000, "{} instructions", p.prog.len());
        let eperm = bpf::ret_errno(libc::EPERM as u16);
        for call in [libc::SYS_read, libc::SYS_execve, libc::SYS_chroot] {
            assert_eq!(verdict(&p, call, 0), bpf::RET_ALLOW, "{call}");
        }
        for call in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_bpf,
            libc::SYS_reboot,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_open_by_handle_at,
        ] {
            assert_eq!(verdict(&p, call, 0), eperm, "{call}");
        }
        assert_eq!(verdict(&p, libc::SYS_clone, libc::SIGCHLD as u64), bpf::RET_ALLOW);
        assert_eq!(verdict(&p, libc::SYS_clone, libc::CLONE_NEWUSER as u64), eperm);
        assert_eq!(verdict(&p, libc::SYS_clone3, 0), bpf::ret_errno(libc::ENOSYS as u16));
        assert_eq!(verdict(&p, libc::SYS_socket, libc::AF_INET as u64), bpf::RET_ALLOW);
        assert_eq!(verdict(&p, libc::SYS_socket, 40), eperm, "AF_VSOCK");
        assert_eq!(verdict(&p, libc::SYS_personality, 0xffff_ffff), bpf::RET_ALLOW);
        assert_eq!(
            verdict(&p, libc::SYS_personality, 0x0040_0000),
            eperm,
            "READ_IMPLIES_EXEC"
        );
    }

    #[test]
    fn calls_gated_on_a_capability_follow_the_cells_set() {
        let admin = compile(
            CapSet::adjusted(&["SYS_ADMIN".into()], &[]).unwrap(),
            Level::Default,
            Calls::default(),
        );
        for call in [libc::SYS_mount, libc::SYS_unshare, libc::SYS_setns, libc::SYS_clone3] {
            assert_eq!(verdict(&admin, call, 0), bpf::RET_ALLOW, "{call}");
        }
        assert_eq!(
            verdict(&admin, libc::SYS_clone, libc::CLONE_NEWUSER as u64),
            bpf::RET_ALLOW
        );
        let no_chroot = compile(
            CapSet::adjusted(&[], &["SYS_CHROOT".into()]).unwrap(),
            Level::Default,
            Calls::default(),
        );
        assert_ne!(verdict(&no_chroot, libc::SYS_chroot, 0), bpf::RET_ALLOW);
    }

    #[test]
    fn no_call_is_both_always_allowed_and_gated() {
        for (cap, calls) in BY_CAP {
            for call in *calls {
                assert!(!ALWAYS.contains(call), "{call:?} is gated by {cap} and allowed always");
            }
        }
        for call in STRICT_DENY {
            assert!(
                ALWAYS.contains(call),
                "{call:?}: Strict takes out only what the default allows"
            );
        }
    }

    #[test]
    fn names_are_the_kernels() {
        assert!(ALWAYS.contains(&("SYS_read", libc::SYS_read)));
        assert_eq!(
            known().find(|c| c.1 == libc::SYS_vmsplice).map(|c| name(&c)),
            Some("vmsplice")
        );
        assert_eq!(known().find(|c| c.1 == 333).map(|c| name(&c)), Some("io_pgetevents"));
        let set = Calls::parse(&["mkdir".into(), "SYS_ptrace".into(), " mount ".into()]).unwrap();
        assert_eq!(set.names(), ["mkdir", "ptrace", "mount"]);
        for bad in ["keyctl", "nosuchcall", "MKDIR", ""] {
            let e = Calls::parse(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")) && e.contains("man 2 syscalls"), "{e}");
        }
    }

    #[test]
    fn strict_takes_out_what_exploits_use_and_keeps_what_services_use() {
        let eperm = bpf::ret_errno(libc::EPERM as u16);
        let p = compile(CapSet::default_set(), Level::Strict, Calls::default());
        for call in [
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
            libc::SYS_ptrace,
            libc::SYS_process_vm_writev,
            libc::SYS_msgget,
            libc::SYS_keyctl,
            libc::SYS_mount,
        ] {
            assert_eq!(verdict(&p, call, 0), eperm, "{call}");
        }
        for call in [libc::SYS_read, libc::SYS_execve, libc::SYS_mmap, libc::SYS_epoll_wait] {
            assert_eq!(verdict(&p, call, 0), bpf::RET_ALLOW, "{call}");
        }
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK] {
            assert_eq!(verdict(&p, libc::SYS_socket, family as u64), bpf::RET_ALLOW, "{family}");
        }
        for family in [libc::AF_PACKET, libc::AF_ALG, libc::AF_KEY, libc::AF_VSOCK] {
            assert_eq!(verdict(&p, libc::SYS_socket, family as u64), eperm, "{family}");
        }
        assert_eq!(verdict(&p, libc::SYS_personality, 0xffff_ffff), bpf::RET_ALLOW);
        assert_eq!(
            verdict(&p, libc::SYS_personality, 0x0008_0000 | 0x20000),
            eperm,
            "linux32"
        );
        assert_eq!(verdict(&p, libc::SYS_personality, 0x20000), eperm, "PER_LINUX32");
    }

    #[test]
    fn a_cells_own_refusals_come_on_top_of_its_level() {
        let eperm = bpf::ret_errno(libc::EPERM as u16);
        let deny = Calls::parse(&["mkdir".into(), "mkdirat".into(), "socket".into()]).unwrap();
        for level in [Level::Default, Level::Strict] {
            let p = compile(CapSet::default_set(), level, deny);
            assert_eq!(verdict(&p, libc::SYS_mkdir, 0), eperm);
            assert_eq!(verdict(&p, libc::SYS_mkdirat, 0), eperm);
            assert_eq!(verdict(&p, libc::SYS_socket, libc::AF_UNIX as u64), eperm);
            assert_eq!(verdict(&p, libc::SYS_rmdir, 0), bpf::RET_ALLOW);
        }
    }

    /// The kernel accepts the program and enforces it: a forked child installs it, then
    /// an allowed call works and `unshare` fails with EPERM.
    #[test]
    fn the_kernel_accepts_and_enforces_the_profile() {
        let p = compile(CapSet::default_set(), Level::Default, Calls::default());
        let fprog = bpf::fprog(&p.prog);
        // SAFETY: the child makes only system calls on data prepared before the fork and
        // ends in _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain system calls in the forked child.
            unsafe {
                let ok = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                    && libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &fprog) == 0
                    && libc::getpid() > 0
                    && libc::unshare(libc::CLONE_NEWUTS) < 0
                    && *libc::__errno_location() == libc::EPERM;
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }
}
