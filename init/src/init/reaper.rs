//! Reaps every child of auraed. As PID 1 every orphan on the machine is reparented to us;
//! as a daemon auraed makes itself a child subreaper so workloads' orphans come to it too.
//!
//! One reaper owns `waitpid(-1)`. Code that starts a process and wants its exit status
//! registers the pid while holding the reaper's lock (see [`Reaper::spawn_with`]), so the
//! status can never be collected before someone is waiting for it. Never use
//! `std::process::Command` inside auraed: the reaper would steal its child's status.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, OnceLock,
};
use tokio::sync::oneshot;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
    orphans: AtomicU64,
}

impl Reaper {
    pub fn global() -> &'static Reaper {
        static R: OnceLock<Reaper> = OnceLock::new();
        R.get_or_init(Reaper::default)
    }

    /// Runs `start` (which creates a child and returns its pid) with the reaper locked, and
    /// registers the pid before the lock is released.
    pub fn spawn_with<E>(&self, start: impl FnOnce() -> Result<Pid, E>) -> Result<(Pid, oneshot::Receiver<Exit>), E> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let pid = start()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid.as_raw(), tx);
        Ok((pid, rx))
    }

    /// Collects every exited child; returns how many were reaped.
    pub fn reap_all(&self) -> usize {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return n,
                Ok(_) => continue, // stopped/continued: not an exit
            };
            n += 1;
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    self.orphans.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("reaped orphan pid {pid} ({exit:?})");
                }
            }
        }
    }

    /// Processes reaped that nobody was waiting for (orphans).
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans.load(Ordering::Relaxed)
    }
}

/// Runs the reaper on SIGCHLD for the life of the runtime.
pub fn spawn_reaper_task() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            Reaper::global().reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}

/// Makes auraed the reaper of its descendants' orphans when it is not PID 1.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}
