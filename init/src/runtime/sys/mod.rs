//! The unsafe edge of the runtime: `clone3`, what a new child does before `exec`, and the
//! throw-away threads that join a cell's namespaces to start processes inside it.

pub mod child;
pub mod start;

/// The pid a pidfd refers to (the `Pid:` line of its fdinfo).
pub fn pidfd_pid(fd: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
        .filter(|p: &i32| *p > 0)
}

/// Where the cgroup v2 tree is mounted; `/proc/PID/cgroup` names paths below it.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Sends `sig` to process `pid` only while it is a member of `cgroup` (a directory of the
/// cgroup tree, or one below it): the process is pinned by a pidfd first, its membership
/// read while the pidfd holds it, and the signal sent through the pidfd. A pid that was
/// reaped and reused by another process (in another cell) since it was read from
/// `cgroup.procs` is never signalled: either it is not a member, or the pinned process is
/// gone and the kernel answers ESRCH. Ok(false) when nothing was sent for those reasons.
pub fn signal_member(pid: i32, sig: nix::sys::signal::Signal, cgroup: &std::path::Path) -> nix::Result<bool> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Ok(rel) = cgroup.strip_prefix(CGROUP_MOUNT) else {
        // Not the kernel's tree (a test fixture): nothing can be verified, nothing sent.
        return Ok(false);
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return match nix::errno::Errno::last() {
            nix::errno::Errno::ESRCH => Ok(false),
            e => Err(e),
        };
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let want = std::path::Path::new("/").join(rel);
    let member = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
        .is_some_and(|at| std::path::Path::new(&at).starts_with(&want));
    if !member {
        return Ok(false);
    }
    // SAFETY: pidfd_send_signal with a live pidfd, a valid signal number, no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return match nix::errno::Errno::last() {
            nix::errno::Errno::ESRCH => Ok(false),
            e => Err(e),
        };
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process is a member of its own cgroup, not of another: the signal goes
    /// only where the cgroup says. A pid that does not exist is no error, nothing is sent.
    #[test]
    fn only_a_member_of_the_cgroup_is_signalled() {
        let Some(own) = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
        else {
            eprintln!("SKIP only_a_member_of_the_cgroup_is_signalled: no cgroup v2 here");
            return;
        };
        let mine = std::path::Path::new(CGROUP_MOUNT).join(own.trim_start_matches('/'));
        let me = std::process::id() as i32;
        // Signal 0 is not a Signal; SIGCONT is harmless to a running process.
        let cont = nix::sys::signal::Signal::SIGCONT;
        assert_eq!(signal_member(me, cont, &mine), Ok(true));
        let elsewhere = std::path::Path::new(CGROUP_MOUNT).join("aurae-no-such-cell");
        assert_eq!(signal_member(me, cont, &elsewhere), Ok(false));
        assert_eq!(signal_member(i32::MAX - 1, cont, &mine), Ok(false));
        assert_eq!(signal_member(me, cont, std::path::Path::new("/tmp/fixture")), Ok(false));
    }
}
