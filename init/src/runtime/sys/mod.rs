//! The unsafe edge of the runtime: `clone3`, what a new child does before `exec`, and the
//! throw-away threads that join a cell's namespaces to start processes inside it.

pub mod child;
pub mod clone;
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
