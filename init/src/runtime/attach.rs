//! Processes a client is attached to (`docker exec -it`, `kubectl exec -it`): started in a
//! running cell with stdin, stdout and stderr handed back to the caller instead of the
//! logs; with a terminal, a pseudo-terminal of the cell's own devpts. Unlisted: their
//! attacher owns them and ends them (`detach`) when it goes, so nothing stays behind.

use super::cell;
use super::cell::Cell;
use super::error::{Result, RuntimeError};
use super::host::Host;
use super::names::{CellName, ExecName};
use super::process;
use super::process::{Attach, Launch, Process};
use super::spec::ExecutableSpec;
use super::Phase;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What to start, validated.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    pub cell: CellName,
    /// Empty: the cell's image's entrypoint and cmd.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A terminal of its own, `size` (rows, columns) when given.
    pub tty: bool,
    pub size: Option<(u16, u16)>,
}

/// The caller's ends of an attached process's fds.
pub enum AttachedIo {
    /// The terminal's master: the process's input is written to it, its output read.
    Tty(OwnedFd),
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

pub struct Attached {
    pub process: Arc<Process>,
    pub io: AttachedIo,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| RuntimeError::sys("pipe2", errno))
}

/// Starts `spec` in its (running) cell, attached; returns once it runs.
pub(crate) async fn start(host: &Host, spec: AttachSpec) -> Result<Attached> {
    host.usable()?;
    let cell: Arc<Cell> = cell::target(host, spec.cell.as_str(), "start.cell")?;
    if cell.phase() != Phase::Running {
        return Err(RuntimeError::WrongPhase(format!(
            "cell '{}' is {:?}; attach only to running cells",
            spec.cell,
            cell.phase()
        )));
    }
    let argv = match (spec.argv.is_empty(), &cell.image) {
        (false, _) => spec.argv.clone(),
        (true, Some(i)) if !i.argv.is_empty() => i.argv.clone(),
        (true, _) => {
            return Err(RuntimeError::invalid(
                "start.argv",
                format!(
                    "is empty and cell '{}' has no image entrypoint to run; give the program and its arguments",
                    spec.cell
                ),
            ))
        }
    };
    let (io, attach) = if spec.tty {
        let (master, peer) = super::tap::cell_pty(&cell)?;
        if let Some((rows, columns)) = spec.size {
            crate::os::tty::set_window_size(master.as_fd(), rows, columns)
                .map_err(|errno| RuntimeError::sys("set the terminal's size", errno))?;
        }
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| RuntimeError::Io {
                what: "dup",
                path: "a pseudo-terminal".into(),
                source: e,
            })
        };
        let attach = Attach {
            stdin: dup(&peer)?,
            stdout: dup(&peer)?,
            stderr: peer,
            tty: true,
        };
        (AttachedIo::Tty(master), attach)
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let io = AttachedIo::Pipes {
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
        };
        (
            io,
            Attach {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
                tty: false,
            },
        )
    };
    // A session is a listed executable (`exec-N`): `List` shows it and it counts
    // against the node's maximum of workloads, like any process a client starts. It
    // leaves the table when the session ends (`detach`).
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let name = loop {
        let name = ExecName::parse(&format!("exec-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
            .map_err(|e| RuntimeError::invalid("name", e.to_string()))?;
        // A client's own executable may have taken the number: take the next.
        if host.table().vacant::<Process>(name.as_str()).is_ok() {
            break name;
        }
    };
    let exec = ExecutableSpec {
        name,
        argv,
        env: spec.env,
        cwd: spec.cwd,
        uid: spec.uid,
        gid: spec.gid,
        cell: Some(spec.cell),
        io: Default::default(),
    };
    let process = process::launch(host, exec, Launch::new(true, Some(attach))).await?;
    Ok(Attached { process, io })
}

/// Ends an attached process (what is left of it: its whole leaf cgroup) and removes it.
pub(crate) async fn end(host: &Host, p: &Process) {
    p.stop(libc::SIGKILL, std::time::Duration::ZERO).await;
    if let Err(e) = p.discard(host, p.name.as_str()).await {
        tracing::warn!("attached process {} in cell {}: {e}", p.name, p.cell);
    }
    // Unless a client freed it meanwhile (and a new one took the name).
    let mut t = host.table();
    if t.get::<Process>(p.name.as_str())
        .is_ok_and(|x| std::ptr::eq(Arc::as_ptr(&x), p))
    {
        t.remove::<Process>(p.name.as_str());
    }
}

/// A running executable a client attaches to (`Attach`): the executable itself, and its
/// output from now on. Subscribed before its phase is read, so nothing written after a
/// client is told it runs is missed.
pub(crate) fn to_running(
    host: &Host,
    name: &str,
    stdin: bool,
) -> Result<(Arc<Process>, tokio::sync::broadcast::Receiver<super::tap::Piece>)> {
    let p = host.table().get::<Process>(name)?;
    let rx = p.tap.subscribe();
    if p.phase() != Phase::Running {
        return Err(RuntimeError::WrongPhase(format!(
            "executable '{name}' is {:?}; attach only to a running one (its output so far: aer logs {name})",
            p.phase()
        )));
    }
    if stdin && p.tap.mode() == super::spec::Stdin::Null {
        return Err(RuntimeError::WrongPhase(format!(
            "start.stdin: executable '{name}' was started without stdin (its stdin is /dev/null); attach without stdin, or start it with stdin"
        )));
    }
    Ok((p, rx))
}
