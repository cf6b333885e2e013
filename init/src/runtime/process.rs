//! The process primitive every process-backed workload shares: a process (and whatever it
//! forks) in a leaf cgroup of a cell, its pid, its exit watched, stdout/stderr pumped into a
//! log, stopped by signal then cgroup.kill, and discarded with its cgroup. Executables are
//! listed processes (`executable.rs`); a VM's VMM and a cell-fallback child are unlisted
//! ones their workloads own. A process that names no cell gets a private cell named after
//! it, which ends when the process does.

use super::cell;
use super::cell::Cell;
use super::cgroup::CgroupDir;
use super::error::{Result, RuntimeError};
use super::host::Host;
use super::launcher::Launcher;
use super::launcher::{ExecInput, StartError};
use super::logs::{self, LogBuffer};
use super::names::{CellName, ExecName};
use super::spec::{overlay_env, CellSpec, Confinement, ExecutableSpec, Isolation, Resources, DEFAULT_PATH};
use super::sys::child::Stage;
use super::{kill_and_wait, terminate, Phase, KILL_WAIT};
use crate::init::reaper::Exit;
use nix::errno::Errno;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// An executable's status.
#[derive(Debug, Clone, Default)]
pub struct ExecView {
    pub name: String,
    pub cell: String,
    pub phase: Option<Phase>,
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub started_unix_nanos: i64,
    pub ended_unix_nanos: i64,
    pub cpu_usage_micros: u64,
    pub memory_peak_bytes: u64,
    pub error: String,
}

pub struct Process {
    pub name: ExecName,
    pub cell: CellName,
    /// The private cell, when the request named none.
    own_cell: Option<Arc<Cell>>,
    pub dir: CgroupDir,
    sys: Arc<dyn Launcher>,
    pub logs: Arc<LogBuffer>,
    /// What stdout is in the logs: Stdout, or Console for a VMM.
    stdout_as: logs::Stream,
    state: watch::Sender<ExecView>,
    op: tokio::sync::Mutex<()>,
    /// Its live output and kept stdin, for attached clients.
    pub tap: super::tap::Tap,
    /// Where its start and end are told (a listed one's: the table's).
    events: Option<Arc<super::events::Events<super::Kind>>>,
}

/// How to start an executable (see [`Runtime::launch`]).
pub(super) struct Launch {
    /// The program to exec; None: argv[0] looked up in PATH inside the cell.
    pub program: Option<String>,
    /// Namespaces of the private cell, when the spec names no cell.
    pub isolation: Isolation,
    /// Limits of the private cell.
    pub resources: Resources,
    /// Confinement of the private cell.
    pub confinement: Confinement,
    pub stdout_as: logs::Stream,
    pub listed: bool,
    /// Handed to the program as fd 3 (a VMM's control socket).
    pub control: Option<std::os::fd::OwnedFd>,
    /// Node directories bound into the private cell's root (see `CellSpec::binds`).
    pub binds: super::spec::NodeBinds,
    /// stdin, stdout and stderr given by the caller (Exec) instead of /dev/null and the
    /// logs; its leaf cgroup is `_a.NAME` (unlisted, never a listed executable's).
    pub attach: Option<Attach>,
}

impl Launch {
    /// A process of the client's (argv[0] looked up in PATH inside its cell, stdout as
    /// stdout), in the cell its spec names or a private default one; `listed` in the
    /// table, or `attach`ed to its caller.
    pub fn new(listed: bool, attach: Option<Attach>) -> Launch {
        Launch {
            program: None,
            isolation: Isolation::default(),
            resources: Resources::default(),
            confinement: Confinement::default(),
            stdout_as: logs::Stream::Stdout,
            listed,
            control: None,
            binds: Default::default(),
            attach,
        }
    }
}

/// A process's standard fds, held by whoever attached to it (see `attach.rs`).
pub(super) struct Attach {
    pub stdin: std::os::fd::OwnedFd,
    pub stdout: std::os::fd::OwnedFd,
    pub stderr: std::os::fd::OwnedFd,
    /// They are a terminal: the process gets it as its controlling terminal.
    pub tty: bool,
}

impl Process {
    /// The pid of the private cell's holder (whose namespaces the executable shares).
    pub fn own_cell_holder_pid(&self, sys: &dyn Launcher) -> Option<i32> {
        let fd = self.own_cell.as_ref()?.pidfd()?;
        sys.pid_of(&fd)
    }

    pub fn phase(&self) -> Phase {
        self.state.borrow().phase.unwrap_or(Phase::Starting)
    }

    /// Status; usage is live while running and final once ended.
    pub fn view(&self) -> ExecView {
        let mut v = self.state.borrow().clone();
        if v.phase == Some(Phase::Running) {
            let u = self.dir.usage();
            v.cpu_usage_micros = u.cpu_usage_micros;
            v.memory_peak_bytes = u.memory_peak_bytes;
        }
        v
    }

    pub async fn wait(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.phase.is_some_and(Phase::ended)).await;
    }

    /// Records how the main process ended, with final usage from its cgroup. A private
    /// cell ends first, so whoever waits on the executable finds its cell ended too.
    async fn finish(&self, exit: Option<Exit>) {
        self.tap.end().await;
        let u = self.dir.usage();
        if let Some(c) = &self.own_cell {
            c.end_with_owner();
            if tokio::time::timeout(KILL_WAIT, c.wait()).await.is_err() {
                tracing::error!("executable {}: its private cell did not end", self.name);
            }
        }
        self.state.send_modify(|s| {
            s.ended_unix_nanos = logs::now_unix_nanos();
            s.cpu_usage_micros = u.cpu_usage_micros;
            s.memory_peak_bytes = u.memory_peak_bytes;
            s.oom_killed = u.memory_oom_kill_events > 0;
            match exit {
                Some(Exit::Code(c)) => {
                    s.phase = Some(Phase::Exited);
                    s.exit_code = Some(c);
                }
                Some(Exit::Signal(sig)) => {
                    s.phase = Some(Phase::Killed);
                    s.signal = Some(sig);
                }
                None => {
                    s.phase = Some(Phase::Failed);
                    s.error = "auraed lost track of the process".into();
                }
            }
        });
        let v = self.state.borrow().clone();
        self.tell(match (v.exit_code, v.signal) {
            (Some(code), _) => super::events::What::Exited {
                code,
                oom: v.oom_killed,
            },
            (None, Some(signal)) => super::events::What::Killed {
                signal,
                oom: v.oom_killed,
            },
            (None, None) => super::events::What::Failed(v.error),
        });
        tracing::info!("executable {} ended: {exit:?}", self.name);
    }

    /// Tells what happened to it, if it is listed.
    fn tell(&self, what: super::events::What) {
        if let Some(e) = &self.events {
            e.emit(super::Kind::Executable, self.name.as_str(), what);
        }
    }

    /// Sends `signal` (1..=64) to the main process while it runs.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| RuntimeError::invalid("signal", format!("{signal} is not a signal number (1..=64)")))?;
        let pid = self.state.borrow().pid;
        if self.phase() != Phase::Running || pid == 0 {
            return Err(RuntimeError::WrongPhase(format!("'{}' is not running", self.name)));
        }
        match super::sys::signal_member(pid as i32, sig, self.dir.path()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(RuntimeError::WrongPhase(format!("'{}' is not running", self.name))),
            Err(errno) => Err(RuntimeError::sys(format!("signal {signal} to '{}'", self.name), errno)),
        }
    }

    /// `signal` to every process of the executable, `grace`, then `cgroup.kill`.
    pub async fn stop(&self, signal: i32, grace: Duration) {
        let _op = self.op.lock().await;
        if self.phase().ended() {
            // The main process is gone; daemonized children left in the leaf die here.
            kill_and_wait(&*self.sys, &self.dir).await;
        } else {
            terminate(&*self.sys, &self.dir, || self.dir.procs(), signal, grace).await;
        }
        let _ = tokio::time::timeout(KILL_WAIT, self.wait()).await;
    }
}

/// What a process gets in its cell: the request's settings over the cell image's.
struct Prepared {
    program: String,
    env: Vec<(String, String)>,
    cwd: String,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// Applies the cell's image defaults (env, working dir, user) under `spec`'s own and finds
/// the program: in the image's root for a cell from an image, else on the node's.
fn prepare(cell: &Cell, spec: &ExecutableSpec, program: Option<String>) -> Result<Prepared> {
    let image = cell.image.as_ref();
    let mut env = overlay_env(image.map(|i| i.env.clone()).unwrap_or_default(), &spec.env);
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let root = match image {
        Some(_) => Some(cell.root()?),
        None => None,
    };
    let program = match (program, &root) {
        (Some(p), _) => p,
        (None, Some(root)) => root.resolve_program(&spec.argv[0], path_var)?,
        (None, None) => super::rootfs::resolve_on_node(&spec.argv[0], path_var)?,
    };
    let cwd = spec
        .cwd
        .as_ref()
        .map(|c| c.to_string_lossy().into_owned())
        .or_else(|| image.and_then(|i| i.working_dir.clone()))
        .unwrap_or_else(|| "/".into());
    let (uid, gid) = match (spec.uid, image.and_then(|i| i.user.as_deref()), &root) {
        (None, Some(user), Some(root)) => {
            let (u, g) = root.resolve_user(user, "image.user")?;
            (Some(u), Some(spec.gid.unwrap_or(g)))
        }
        _ => (spec.uid, spec.gid),
    };
    Ok(Prepared {
        program,
        env,
        cwd,
        uid,
        gid,
    })
}

fn exec_start_error(e: StartError, spec: &ExecutableSpec, p: &Prepared) -> RuntimeError {
    let program = &p.program;
    let StartError::Child { stage, errno } = e else {
        return e.into_error(
            &format!("'{}'", spec.name),
            "the cell's pids.max, or the node, is out of processes or memory",
        );
    };
    let err = Errno::from_raw(errno);
    match (stage, err) {
        (Stage::Exec, Errno::ENOENT) => RuntimeError::NotFound(format!("argv[0]: '{program}' does not exist")),
        (Stage::Exec, Errno::EACCES) => RuntimeError::StartFailed(format!(
            "argv[0]: '{program}' is not executable (EACCES); chmod +x it, or run it through its interpreter"
        )),
        (Stage::Exec, Errno::ENOEXEC) => RuntimeError::invalid(
            "argv[0]",
            format!("'{program}' is not a program this kernel can run (ENOEXEC)"),
        ),
        (Stage::Cwd, _) => {
            RuntimeError::invalid("cwd", format!("'{}' cannot be entered inside the cell: {err}", p.cwd))
        }
        (Stage::Uid, _) => RuntimeError::invalid("uid", format!("cannot switch to uid {:?}: {err}", p.uid)),
        (Stage::Gid | Stage::Groups, _) => {
            RuntimeError::invalid("gid", format!("cannot switch to gid {:?}: {err}", p.gid))
        }
        (stage, _) => RuntimeError::StartFailed(format!("cannot {} for '{}': {err}", stage.describe(), spec.name)),
    }
}

impl Process {
    /// Removes an ended executable's cgroup and private cell.
    pub(super) async fn discard(&self, host: &Host, name: &str) -> Result<()> {
        if !self.phase().ended() {
            return Err(RuntimeError::WrongPhase(format!(
                "executable '{name}' is {:?}; stop it first (aer stop {name}) or wait for it (aer wait {name})",
                self.phase()
            )));
        }
        let _op = self.op.lock().await;
        super::remove_for_good(&*host.sys, &self.dir).await?;
        if let Some(c) = &self.own_cell {
            c.discard(host).await?;
        }
        Ok(())
    }
}

/// Runs auraed itself again as `argv` (argv[0] picks the role: `aurae-vmm`, `auraed
/// daemon ...`) as an unlisted executable in a private cell of its own named `name`,
/// with `control` (if any) as its fd 3, confined as `confinement` with `binds` (see
/// `Launch`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn launch_self(
    host: &Host,
    name: &ExecName,
    argv: Vec<String>,
    isolation: Isolation,
    resources: Resources,
    stdout_as: logs::Stream,
    control: Option<std::os::fd::OwnedFd>,
    confinement: Confinement,
    binds: super::spec::NodeBinds,
) -> Result<Arc<Process>> {
    let spec = ExecutableSpec {
        name: name.clone(),
        argv,
        env: Default::default(),
        cwd: None,
        uid: None,
        gid: None,
        cell: None,
        io: Default::default(),
    };
    let how = Launch {
        program: Some(host.own_exe.to_string_lossy().into_owned()),
        isolation,
        resources,
        confinement,
        stdout_as,
        listed: false,
        control,
        binds,
        attach: None,
    };
    launch(host, spec, how).await
}

/// Starts `spec` as `how` says. Unlisted executables (a VM's VMM) are not in the table;
/// their owner keeps them.
pub(super) async fn launch(host: &Host, spec: ExecutableSpec, how: Launch) -> Result<Arc<Process>> {
    let Launch {
        program,
        isolation,
        resources,
        confinement,
        stdout_as,
        listed,
        control,
        binds,
        attach,
    } = how;
    if listed {
        host.table().vacant::<Process>(spec.name.as_str())?;
    }
    let (cell, own) = match &spec.cell {
        Some(name) => {
            let c = cell::target(host, name.as_str(), "cell")?;
            match c.phase() {
                Phase::Running => {}
                Phase::Frozen => {
                    return Err(RuntimeError::WrongPhase(format!(
                        "cell '{name}' is frozen; thaw it first (aer cell thaw {name})"
                    )))
                }
                p => {
                    return Err(RuntimeError::WrongPhase(format!(
                        "cell '{name}' is {p:?}; start executables only in running cells"
                    )))
                }
            }
            (c, false)
        }
        None => {
            let own = CellSpec {
                name: CellName::of_executable(&spec.name),
                resources,
                isolation,
                confinement,
                binds,
                ready_within: super::spec::READY_MAX,
                image: None,
                ports: Vec::new(),
            };
            let c = cell::create(host, own, true).await.map_err(|e| match e {
                RuntimeError::AlreadyExists(_) => RuntimeError::AlreadyExists(format!(
                    "a cell named '{0}' exists, and an executable without `cell` gets a private cell named after it; pass cell: '{0}' to run inside it, or choose another name",
                    spec.name
                )),
                other => other,
            })?;
            (c, true)
        }
    };
    let e = Arc::new(Process {
        name: spec.name.clone(),
        cell: cell.name.clone(),
        own_cell: own.then(|| cell.clone()),
        dir: cell.dir.child(&match attach {
            Some(_) => format!("_a.{}", spec.name),
            None => format!("_x.{}", spec.name),
        }),
        sys: host.sys.clone(),
        logs: LogBuffer::new(logs::DEFAULT_CAPACITY, 2, &host.logs),
        stdout_as,
        state: watch::channel(ExecView {
            name: spec.name.to_string(),
            cell: cell.name.to_string(),
            phase: Some(Phase::Starting),
            ..Default::default()
        })
        .0,
        op: tokio::sync::Mutex::new(()),
        tap: super::tap::Tap::new(spec.io.stdin),
        events: listed.then(|| host.table().events.clone()),
    });
    if listed {
        // Checked again: another request may have taken the name while the cell was made.
        let inserted = host.table().insert(e.clone());
        if let Err(taken) = inserted {
            if own {
                cell.discard_now(host).await;
            }
            return Err(taken);
        }
    }
    match start_exec(&e, &cell, &spec, program, control, attach).await {
        Ok(()) => Ok(e),
        Err(err) => {
            if let Err(rm) = super::remove_for_good(&*host.sys, &e.dir).await {
                tracing::error!("executable {}: {rm}", e.name);
            }
            if listed {
                host.table().remove::<Process>(e.name.as_str());
            }
            if own {
                cell.discard_now(host).await;
            }
            Err(err)
        }
    }
}

/// Where a listed process's output is read from.
enum Logged {
    Pipes(std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    Tty(Arc<crate::os::tty::AsyncTty>),
}

async fn start_exec(
    e: &Arc<Process>,
    cell: &Arc<Cell>,
    spec: &ExecutableSpec,
    program: Option<String>,
    control: Option<std::os::fd::OwnedFd>,
    attach: Option<Attach>,
) -> Result<()> {
    let p = prepare(cell, spec, program)?;
    e.dir.create()?;
    let (stdin, stdout, stderr, tty, logged) = match attach {
        Some(a) => (a.stdin, a.stdout, a.stderr, a.tty, None),
        None if spec.io.tty => {
            let (master, peer) = super::tap::cell_pty(cell)?;
            let io_err = |what: &'static str| {
                move |source: std::io::Error| RuntimeError::Io {
                    what,
                    path: "its terminal".into(),
                    source,
                }
            };
            // A terminal's usual size until a client says its own.
            crate::os::tty::set_window_size(std::os::fd::AsFd::as_fd(&master), 24, 80)
                .map_err(|errno| RuntimeError::sys("set its terminal's size", errno))?;
            let m = Arc::new(crate::os::tty::AsyncTty::new(master).map_err(io_err("register"))?);
            e.tap.keep_terminal(m.clone()).map_err(io_err("keep"))?;
            let (a, b) = (
                peer.try_clone().map_err(io_err("dup"))?,
                peer.try_clone().map_err(io_err("dup"))?,
            );
            (a, b, peer, true, Some(Logged::Tty(m)))
        }
        None => {
            let pipe =
                || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| RuntimeError::sys("pipe2", errno));
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let stdin = match spec.io.stdin {
                super::spec::Stdin::Null => std::fs::File::open("/dev/null")
                    .map_err(|source| RuntimeError::Io {
                        what: "open",
                        path: "/dev/null".into(),
                        source,
                    })?
                    .into(),
                super::spec::Stdin::Open | super::spec::Stdin::Once => {
                    let (r, w) = pipe()?;
                    e.tap.keep(w).map_err(|source| RuntimeError::Io {
                        what: "keep",
                        path: "its stdin pipe".into(),
                        source,
                    })?;
                    r
                }
            };
            (stdin, out_w, err_w, false, Some(Logged::Pipes(out_r, err_r)))
        }
    };
    let input = ExecInput {
        path: p.program.clone(),
        argv: spec.argv.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        uid: p.uid,
        gid: p.gid,
        new_cgroup_ns: cell.isolation.cgroup,
        stdin,
        stdout,
        stderr,
        tty,
        control,
        userns: cell.userns(),
        limits: cell.limits.clone(),
    };
    let starter = cell.starter().ok_or_else(|| {
        RuntimeError::WrongPhase(format!(
            "cell '{}' has ended; start executables only in running cells",
            cell.name
        ))
    })?;
    let started = starter
        .start_exec(e.dir.open_fd()?, input)
        .await
        .map_err(|err| exec_start_error(err, spec, &p))?;
    let started_at = logs::now_unix_nanos();
    e.state.send_modify(|s| {
        s.phase = Some(Phase::Running);
        s.pid = started.pid.as_raw() as u32;
        s.started_unix_nanos = started_at;
    });
    e.tell(super::events::What::Started);
    let Some(logged) = logged else {
        // Attached: its output goes to whoever holds the other ends, not to the logs.
        e.logs.close_writer();
        e.logs.close_writer();
        let watcher = e.clone();
        let exit = started.exit;
        tokio::spawn(async move { watcher.finish(exit.await.ok()).await });
        return Ok(());
    };
    match logged {
        Logged::Pipes(out_r, err_r) => {
            for (fd, stream) in [(out_r, e.stdout_as), (err_r, logs::Stream::Stderr)] {
                match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                    Ok(rx) => {
                        tokio::spawn(logs::pump(rx, e.logs.clone(), stream, Some(e.tap.output())));
                    }
                    Err(err) => {
                        tracing::error!("executable {}: cannot read its {stream:?}: {err}", e.name);
                        e.logs.close_writer();
                    }
                }
            }
        }
        // One stream, read from the terminal's master: one writer of the two.
        Logged::Tty(m) => {
            e.logs.close_writer();
            let source = logs::Source::Tty(m);
            tokio::spawn(logs::pump(source, e.logs.clone(), e.stdout_as, Some(e.tap.output())));
        }
    }
    let watcher = e.clone();
    let exit = started.exit;
    tokio::spawn(async move { watcher.finish(exit.await.ok()).await });
    tracing::info!(
        "executable {} running in cell {} (pid {})",
        e.name,
        cell.name,
        started.pid
    );
    Ok(())
}
