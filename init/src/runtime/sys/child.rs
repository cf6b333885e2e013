//! What a freshly cloned child runs. Everything is prepared by the parent (C strings,
//! pointer arrays, fds) so the child only makes system calls: no allocation, no locks, no
//! panics. A failure is reported over a close-on-exec pipe as (stage, errno) and the child
//! exits 127; for an executable, EOF on that pipe means `execve` succeeded.

use crate::runtime::confine::caps::{self, CapSet};
use crate::runtime::confine::{seccomp, ExecLimits};
use std::ffi::{c_char, CString};
use std::os::fd::RawFd;

/// Where a cell's init finds its `holder::Config` (the child moves it there before exec).
pub const CONFIG_FD: RawFd = 4;

/// Where a child failed, reported to the parent.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Ready = 0,
    Stdio = 1,
    Cwd = 2,
    Groups = 3,
    Gid = 4,
    Uid = 5,
    Exec = 6,
    MountPrivate = 7,
    MountProc = 8,
    MountTmp = 9,
    MountSys = 10,
    Hostname = 11,
    Loopback = 12,
    Args = 13,
    CgroupNs = 14,
    MountRoot = 15,
    MountDev = 16,
    PivotRoot = 17,
    MaskPaths = 18,
    Capabilities = 19,
    Seccomp = 20,
    UserNs = 21,
    MountImage = 22,
    MountVolumes = 23,
}

impl Stage {
    pub fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        [
            Ready,
            Stdio,
            Cwd,
            Groups,
            Gid,
            Uid,
            Exec,
            MountPrivate,
            MountProc,
            MountTmp,
            MountSys,
            Hostname,
            Loopback,
            Args,
            CgroupNs,
            MountRoot,
            MountDev,
            PivotRoot,
            MaskPaths,
            Capabilities,
            Seccomp,
            UserNs,
            MountImage,
            MountVolumes,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Stage::Ready => "ready",
            Stage::Stdio => "set up stdin/stdout/stderr",
            Stage::Cwd => "change to the working directory",
            Stage::Groups => "drop supplementary groups",
            Stage::Gid => "set the group id",
            Stage::Uid => "set the user id",
            Stage::Exec => "execute the program",
            Stage::MountPrivate => "make the cell's mounts private",
            Stage::MountProc => "mount the cell's /proc",
            Stage::MountTmp => "mount the cell's /tmp",
            Stage::MountSys => "mount the cell's /sys",
            Stage::Hostname => "set the cell's hostname",
            Stage::Loopback => "bring up the cell's loopback",
            Stage::Args => "parse the cell init's arguments",
            Stage::CgroupNs => "make its cgroup namespace",
            Stage::MountRoot => "build the cell's root (read-only base, /proc, /sys, /tmp, /run)",
            Stage::MountDev => "build the cell's /dev",
            Stage::PivotRoot => "enter the cell's root (pivot_root; is PID 1 still on the initramfs?)",
            Stage::MaskPaths => "mask the cell's /proc and /sys paths",
            Stage::Capabilities => "reduce its capabilities",
            Stage::Seccomp => "install the seccomp profile",
            Stage::UserNs => "enter the cell's user namespace as its root",
            Stage::MountImage => "mount the image's root (its layers under a writable layer of the cell's own)",
            Stage::MountVolumes => {
                "bind its volumes into its root (is a mount path a symlink, or a file where a directory goes?)"
            }
        }
    }
}

/// Writes (stage, errno) to the report pipe. Async-signal-safe.
pub fn report(fd: RawFd, stage: Stage, errno: i32) {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes from a live stack buffer to an fd we own.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn fail(fd: RawFd, stage: Stage) -> ! {
    report(fd, stage, errno());
    // SAFETY: _exit ends the child without running the parent's atexit handlers.
    unsafe { libc::_exit(127) }
}

/// Decodes a report message.
pub fn decode(msg: &[u8; 8]) -> (Option<Stage>, i32) {
    let mut s = [0u8; 4];
    let mut e = [0u8; 4];
    s.copy_from_slice(&msg[..4]);
    e.copy_from_slice(&msg[4..]);
    (Stage::from_u32(u32::from_ne_bytes(s)), i32::from_ne_bytes(e))
}

/// Everything an executable's child needs, prepared before the clone.
pub struct ExecPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    cwd: CString,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub new_cgroup_ns: bool,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// stdin is a terminal: it becomes the process's controlling terminal.
    pub tty: bool,
    /// Handed to the program as fd 3 (a VMM's control socket), or -1.
    pub control: RawFd,
    pub report: RawFd,
    /// Capabilities kept in every set; None keeps all.
    pub caps: Option<CapSet>,
    pub no_new_privs: bool,
    /// The cell's user namespace to join (its root becomes the process's ids), or -1.
    pub userns: RawFd,
    /// The seccomp program to install (its instructions live in `_profile`).
    seccomp: Option<libc::sock_fprog>,
    _profile: Option<std::sync::Arc<seccomp::Profile>>,
}

/// argv[0] of a cell's holder: auraed re-executed as a cell's init (`runtime::holder`).
pub const HOLDER_ARGV0: &str = "aurae-cell-init";

/// Where a process finds the control socket it was given (see `vmm::protocol`).
pub const CONTROL_FD: RawFd = 3;

impl ExecPlan {
    /// None when a string contains a NUL byte (the server refuses those earlier).
    pub fn new(path: &str, argv: &[String], env: &[(String, String)], cwd: &str) -> Option<ExecPlan> {
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()).ok())
            .collect::<Option<_>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).ok())
            .collect::<Option<_>>()?;
        let ptrs = |v: &[CString]| v.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect();
        Some(ExecPlan {
            path: CString::new(path).ok()?,
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            _argv: argv,
            _envp: envp,
            cwd: CString::new(cwd).ok()?,
            uid: None,
            gid: None,
            new_cgroup_ns: false,
            stdin: -1,
            stdout: -1,
            stderr: -1,
            tty: false,
            control: -1,
            report: -1,
            caps: None,
            no_new_privs: false,
            userns: -1,
            seccomp: None,
            _profile: None,
        })
    }

    /// What the child applies just before exec (see `confine::ExecLimits`).
    pub fn confine(&mut self, limits: &ExecLimits) {
        self.caps = limits.caps;
        self.no_new_privs = limits.no_new_privs;
        if let Some(p) = &limits.seccomp {
            self.seccomp = Some(crate::bpf::fprog(&p.prog));
            self._profile = Some(p.clone());
        }
    }
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Narrows this process's effective, permitted and inheritable sets to `keep` (they can
/// only shrink). Raw system calls; returns false on failure.
pub fn set_caps(keep: CapSet) -> bool {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a live header and the two-element array version 3 expects.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) < 0 {
            return false;
        }
        for (i, d) in data.iter_mut().enumerate() {
            let k = (keep.0 >> (32 * i)) as u32;
            d.effective &= k;
            d.permitted &= k;
            d.inheritable &= k;
        }
        libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) == 0
    }
}

/// Drops from the bounding set every capability not in `keep` (needs CAP_SETPCAP, so
/// before any uid change) and clears the ambient set.
pub(crate) fn bound_caps(keep: CapSet) -> bool {
    // SAFETY: prctl with integer arguments; affects this process only.
    unsafe {
        for cap in 0..=caps::LAST {
            if keep.0 & (1 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return false;
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) == 0
    }
}

/// The kernel's `struct sigaction` on x86_64 (what `rt_sigaction` takes).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Resets signals the process inherits from auraed (mask, and dispositions such as the
/// SIGPIPE that Rust ignores), which `execve` would otherwise keep. Raw system calls: the
/// child shares auraed's memory, and libc's wrappers may take locks.
fn reset_signals() {
    let dfl = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask and rt_sigaction with pointers to live locals and the kernel's
    // 8-byte sigset size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            0usize,
            8usize,
        );
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    0usize,
                    8usize,
                );
            }
        }
    }
}

/// Workloads start with the conventional soft limit of 1024 descriptors (what a service
/// gets from systemd), not PID 1's raised one: programs that walk every possible
/// descriptor stay fast. The hard limit stays, so a workload may raise its own.
const WORKLOAD_NOFILE_SOFT: u64 = 1024;

/// Resource limits a workload starts with. RLIMIT_NOFILE: see above. RLIMIT_NPROC:
/// unlimited, as container engines start containers. It counts processes per uid
/// node-wide, and every cell's root is the node's uid 0, so a fork bomb in one cell would
/// otherwise stop every other cell from forking; each cell's pids.max (and the workloads
/// root's) is the bound instead. Raising it needs CAP_SYS_RESOURCE, which the child still
/// has here.
fn reset_limits() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit/setrlimit system calls with pointers to live locals.
    unsafe {
        if libc::syscall(libc::SYS_getrlimit, libc::RLIMIT_NOFILE, &mut lim as *mut libc::rlimit) == 0
            && lim.rlim_cur > WORKLOAD_NOFILE_SOFT
        {
            lim.rlim_cur = WORKLOAD_NOFILE_SOFT;
            libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_NOFILE, &lim as *const libc::rlimit);
        }
        libc::syscall(
            libc::SYS_setrlimit,
            libc::RLIMIT_NPROC,
            &unlimited as *const libc::rlimit,
        );
    }
}

/// The executable's child: stdio, cwd, credentials, exec. Never returns.
pub fn exec_child(p: &ExecPlan) -> ! {
    reset_signals();
    reset_limits();
    // SAFETY: each call is a plain system call on fds and C strings prepared by the parent
    // and alive for the child's whole life (the child's copy of the parent's memory).
    unsafe {
        libc::setsid();
        // The report pipe moves out of the way if it sits where the control socket goes.
        let mut report = p.report;
        if p.control >= 0 && report == CONTROL_FD {
            report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, CONTROL_FD + 1);
            if report < 0 {
                fail(p.report, Stage::Stdio);
            }
        }
        if libc::dup2(p.stdin, 0) < 0 || libc::dup2(p.stdout, 1) < 0 || libc::dup2(p.stderr, 2) < 0 {
            fail(report, Stage::Stdio);
        }
        // The new session's controlling terminal: Ctrl-C on it signals the process's
        // foreground group, as on any terminal.
        if p.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(report, Stage::Stdio);
        }
        // dup2 onto fd 3 clears close-on-exec there; a control fd already at 3 has it
        // cleared in place.
        let first_closed = if p.control < 0 {
            CONTROL_FD
        } else {
            let ok = if p.control == CONTROL_FD {
                libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(p.control, CONTROL_FD) >= 0
            };
            if !ok {
                fail(report, Stage::Stdio);
            }
            CONTROL_FD + 1
        };
        // Every other inherited fd closes at exec (belt and braces: auraed opens everything
        // close-on-exec already). 4 = CLOSE_RANGE_CLOEXEC.
        libc::syscall(libc::SYS_close_range, first_closed as u32, u32::MAX, 4u32);
        if libc::chdir(p.cwd.as_ptr()) < 0 {
            fail(report, Stage::Cwd);
        }
        if p.new_cgroup_ns && libc::unshare(libc::CLONE_NEWCGROUP) < 0 {
            fail(report, Stage::CgroupNs);
        }
        // Into the cell's user namespace: ids outside its map mean nothing there, so the
        // process becomes its root (or the uid/gid asked for, inside the map) below.
        if p.userns >= 0 && libc::setns(p.userns, libc::CLONE_NEWUSER) < 0 {
            fail(report, Stage::UserNs);
        }
        let in_userns = p.userns >= 0;
        let (gid, uid) = match in_userns {
            true => (p.gid.or(Some(0)), p.uid.or(Some(0))),
            false => (p.gid, p.uid),
        };
        if let Some(keep) = p.caps {
            if !bound_caps(keep) {
                fail(report, Stage::Capabilities);
            }
        }
        // Raw system calls, never libc's setuid/setgid/setgroups: POSIX makes those apply
        // to every thread, so musl (and glibc) signal each thread of the process and run
        // the change there. In this child, which shares auraed's memory, "every thread"
        // is auraed's: its threads were signalled into changing their own ids, with
        // libc's bookkeeping raced by every child doing the same. Three VMMs started at
        // once crashed PID 1 that way (vms.rs: many_vms_…).
        if let Some(gid) = gid {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0 {
                fail(report, Stage::Groups);
            }
            if libc::syscall(libc::SYS_setgid, gid as libc::c_long) < 0 {
                fail(report, Stage::Gid);
            }
        }
        if let Some(uid) = uid {
            if libc::syscall(libc::SYS_setuid, uid as libc::c_long) < 0 {
                fail(report, Stage::Uid);
            }
        }
        if let Some(keep) = p.caps {
            if !set_caps(keep) {
                fail(report, Stage::Capabilities);
            }
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(report, Stage::Seccomp);
        }
        // Last: after this only what the profile allows (execve, write, exit) is left.
        if let Some(prog) = &p.seccomp {
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                prog as *const libc::sock_fprog,
            ) < 0
            {
                fail(report, Stage::Seccomp);
            }
        }
        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
        fail(report, Stage::Exec)
    }
}

/// How a cell's holder is started: auraed's own executable, re-executed as
/// `aurae-cell-init` (see `runtime::holder`). A fresh image keeps the holder small: a
/// forked copy would pin a snapshot of auraed's heap for the life of the cell.
pub struct HolderPlan {
    exe: RawFd,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    pub report: RawFd,
    /// The init's `holder::Config`, moved to fd 4 (`CONFIG_FD`) before exec; at 10
    /// or above, so moving the report pipe to 3 cannot close it.
    pub config: RawFd,
    /// In a new user namespace: the pipe to wait on until its id maps are written, or -1.
    pub go: RawFd,
}

impl HolderPlan {
    /// `exe` is an fd on auraed's executable, `config` one on the init's configuration.
    pub fn new(exe: RawFd, config: RawFd) -> HolderPlan {
        let argv = vec![CString::new(HOLDER_ARGV0).unwrap_or_default()];
        HolderPlan {
            exe,
            argv_ptrs: argv.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect(),
            _argv: argv,
            report: -1,
            config,
            go: -1,
        }
    }
}

/// In a new user namespace: waits for the id maps, then becomes the namespace's root, so
/// that the exec that follows gives it the namespace's capabilities.
fn become_userns_root(p: &HolderPlan) {
    let mut b = 0u8;
    // SAFETY: read of one byte into a live local; then id system calls with integers.
    unsafe {
        if libc::read(p.go, (&mut b as *mut u8).cast(), 1) != 1 {
            fail(p.report, Stage::UserNs);
        }
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) < 0
            || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
            || libc::syscall(libc::SYS_setresuid, 0, 0, 0) < 0
        {
            fail(p.report, Stage::UserNs);
        }
    }
}

/// The holder's child: report pipe on fd 3, its configuration on fd 4, then exec auraed as
/// `aurae-cell-init`.
pub fn holder_child(p: &HolderPlan) -> ! {
    reset_limits();
    if p.go >= 0 {
        become_userns_root(p);
    }
    let env: [*const c_char; 1] = [std::ptr::null()];
    // SAFETY: system calls on fds and C strings prepared by the parent. dup2 onto 3 clears
    // close-on-exec for the report pipe only; when it already is 3, clear it by hand.
    unsafe {
        libc::setsid();
        if p.report == 3 {
            libc::fcntl(3, libc::F_SETFD, 0);
        } else if libc::dup2(p.report, 3) < 0 {
            fail(p.report, Stage::Stdio);
        }
        if libc::dup2(p.config, CONFIG_FD) < 0 {
            fail(3, Stage::Args);
        }
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if devnull >= 0 {
            libc::dup2(devnull, 0);
            libc::dup2(devnull, 1);
            libc::dup2(devnull, 2);
        }
        libc::syscall(libc::SYS_close_range, CONFIG_FD as u32 + 1, u32::MAX, 4u32);
        libc::syscall(
            libc::SYS_execveat,
            p.exe,
            c"".as_ptr(),
            p.argv_ptrs.as_ptr(),
            env.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    fail(3, Stage::Exec)
}

/// The cell's init takes its configuration: fd 4, put there by `holder_child`.
pub fn take_config() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 4 is the configuration holder_child placed before exec; the init's main
    // takes it once and nothing else in the process owns it.
    unsafe { std::fs::File::from_raw_fd(CONFIG_FD) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let mut fds = [0; 2];
        // SAFETY: pipe with a valid 2-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        report(fds[1], Stage::Cwd, libc::ENOENT);
        let mut buf = [0u8; 8];
        // SAFETY: reads into a live 8-byte buffer.
        assert_eq!(unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 8) }, 8);
        assert_eq!(decode(&buf), (Some(Stage::Cwd), libc::ENOENT));
        // SAFETY: closing fds this test owns.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn plans_refuse_nul_bytes() {
        assert!(ExecPlan::new("/bin/true", &["a\0b".into()], &[], "/").is_none());
        assert!(ExecPlan::new("/bin/true", &["true".into()], &[], "/").is_some());
    }
}
