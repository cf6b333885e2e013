//! Starting processes. A cell's init starts on a fresh OS thread that joins the enclosing
//! cell's namespaces (if any), `clone3`s the child straight into its cgroup, reads its
//! report pipe and ends. Executables start on their cell's `Starter`: one long-lived thread
//! per cell that joined the cell's namespaces once and lives as long as the cell. No auraed
//! thread but those stays inside a cell's namespaces, and the tokio thread never blocks.

use super::child::{self, ExecPlan, HolderPlan, Stage};
use super::clone::{clone3_vm, ChildFn};
use crate::init::reaper::{Exit, Reaper};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Every namespace a holder owns; joining all of them puts a thread exactly where the
/// cell's processes live (shared ones are the enclosing cell's or the host's). The cgroup
/// namespace is not among them: with `nsdelegate`, a process may only be cloned into a
/// cgroup inside its cgroup namespace, so each executable makes its own after the clone.
const ALL_NS: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: Errno },
    /// The child reported a failure before it was running.
    #[error("could not {}: {}", stage.describe(), Errno::from_raw(*errno))]
    Child { stage: Stage, errno: i32 },
    #[error("the child exited before it reported ready")]
    Vanished,
}

pub struct Started {
    pub pid: Pid,
    pub pidfd: Option<OwnedFd>,
    pub exit: oneshot::Receiver<Exit>,
}

/// What an executable's child needs; plain data so it can cross to the start thread.
pub struct ExecInput {
    pub path: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Give the process a cgroup namespace rooted at its own cgroup.
    pub new_cgroup_ns: bool,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// stdin is a terminal the process takes as its controlling terminal.
    pub tty: bool,
    /// Handed to the program as fd 3 (a VMM's control socket).
    pub control: Option<OwnedFd>,
    /// The cell's user namespace, joined by the child (a thread of auraed cannot).
    pub userns: Option<Arc<OwnedFd>>,
    /// Capabilities, no_new_privs and seccomp, applied just before exec.
    pub limits: crate::runtime::confine::ExecLimits,
}

/// A thread that joins one cell's namespaces once and then starts each executable of that
/// cell: no thread creation, `unshare` or `setns` per start. Starts in one cell take turns;
/// the thread ends (and lets go of the cell's namespaces) when the `Starter` is dropped.
pub struct Starter {
    jobs: std::sync::mpsc::Sender<Job>,
}

struct Job {
    cgroup: OwnedFd,
    input: ExecInput,
    reply: oneshot::Sender<Result<Started, StartError>>,
}

impl Starter {
    pub fn new(join: Arc<OwnedFd>) -> Result<Starter, StartError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("aurae-starter".into())
            .spawn(move || {
                // A failure to join is every job's answer: the cell cannot start anything.
                let entered = enter(Some(&join), ALL_NS);
                drop(join);
                for job in rx {
                    let r = match &entered {
                        Ok(()) => exec_here(&job.cgroup, job.input),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| StartError::Sys {
                what: "start a thread",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
            })?;
        Ok(Starter { jobs })
    }

    /// Queues a start; the answer comes on the receiver once the child has exec'd or failed.
    pub fn submit(
        &self,
        cgroup: OwnedFd,
        input: ExecInput,
    ) -> Result<oneshot::Receiver<Result<Started, StartError>>, StartError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { cgroup, input, reply })
            .map_err(|_| StartError::Vanished)?;
        Ok(rx)
    }
}

/// Starts an executable from the calling thread, which is already in the cell's namespaces.
fn exec_here(cgroup: &OwnedFd, input: ExecInput) -> Result<Started, StartError> {
    let mut plan = ExecPlan::new(&input.path, &input.argv, &input.env, &input.cwd).ok_or(StartError::Child {
        stage: Stage::Exec,
        errno: libc::EINVAL,
    })?;
    plan.uid = input.uid;
    plan.gid = input.gid;
    plan.new_cgroup_ns = input.new_cgroup_ns;
    plan.stdin = input.stdin.as_raw_fd();
    plan.stdout = input.stdout.as_raw_fd();
    plan.stderr = input.stderr.as_raw_fd();
    plan.tty = input.tty;
    plan.control = input.control.as_ref().map_or(-1, |f| f.as_raw_fd());
    plan.confine(&input.limits);
    plan.userns = input.userns.as_ref().map_or(-1, |f| f.as_raw_fd());
    launch(0, cgroup, false, None, |report| {
        plan.report = report;
        child::exec_child(&plan)
    })
}

/// Starts a cell's holder (auraed's executable `exe` as `aurae-cell-init ARGS`) in
/// `cgroup` with new namespaces `flags`, nested in the holder `join`'s namespaces (or
/// auraed's own).
pub async fn start_holder(
    join: Option<Arc<OwnedFd>>,
    cgroup: OwnedFd,
    flags: libc::c_int,
    exe: Arc<OwnedFd>,
    config: crate::runtime::holder::Config,
    userns: Option<u32>,
) -> Result<Started, StartError> {
    let flags = if userns.is_some() {
        flags | libc::CLONE_NEWUSER
    } else {
        flags
    };
    // The kernel creates a pid namespace only as a child of the caller's active one, which
    // setns cannot change: a nested cell's new pid namespace is therefore a sibling of its
    // parent's, not inside it. Every other namespace nests.
    let join_flags = if flags & libc::CLONE_NEWPID != 0 {
        ALL_NS & !libc::CLONE_NEWPID
    } else {
        ALL_NS
    };
    on_fresh_thread(move || {
        enter(join.as_deref(), join_flags)?;
        let config = config_file(&config)?;
        let mut plan = HolderPlan::new(exe.as_raw_fd(), config.as_raw_fd());
        // With a user namespace the child waits on `go` until its id maps are written.
        let go = match userns {
            Some(_) => Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|errno| StartError::Sys { what: "pipe2", errno })?,
            ),
            None => None,
        };
        let (go_r, go_w) = match go {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };
        // The read end stays open here until the child has it (its fd table is a copy
        // made at the clone).
        plan.go = go_r.as_ref().map_or(-1, |r| r.as_raw_fd());
        let release = go_w.map(|w| (w, userns.unwrap_or_default()));
        let started = launch(flags, &cgroup, true, release, |report| {
            plan.report = report;
            child::holder_child(&plan)
        });
        drop(go_r);
        started
    })
    .await
}

/// The init's configuration in a sealed memory file at fd 10 or above (see `HolderPlan`).
fn config_file(config: &crate::runtime::holder::Config) -> Result<OwnedFd, StartError> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let sys = |what: &'static str| move |errno| StartError::Sys { what, errno };
    let fd = memfd_create(c"aurae-cell-config", MFdFlags::MFD_CLOEXEC).map_err(sys("memfd_create"))?;
    let bytes = config.encode();
    let mut done = 0;
    while done < bytes.len() {
        done += nix::unistd::write(&fd, &bytes[done..]).map_err(sys("write the cell's configuration"))?;
    }
    nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekSet).map_err(sys("lseek"))?;
    let high = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(sys("fcntl"))?;
    drop(fd);
    // SAFETY: fcntl just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

async fn on_fresh_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StartError> + Send + 'static,
) -> Result<T, StartError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("aurae-start".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| StartError::Sys {
            what: "start a thread",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
        })?;
    rx.await.unwrap_or(Err(StartError::Vanished))
}

/// Blocks every signal on this thread (they go to the tokio thread, and the child starts
/// with them blocked until it resets its mask), then joins the holder's namespaces.
fn enter(join: Option<&OwnedFd>, flags: libc::c_int) -> Result<(), StartError> {
    // SAFETY: pthread_sigmask on a filled local set for the calling thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let Some(pidfd) = join else { return Ok(()) };
    // A thread may only switch mount namespace with a filesystem context of its own.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|errno| StartError::Sys {
        what: "unshare(CLONE_FS)",
        errno,
    })?;
    // SAFETY: setns with a live pidfd and namespace flags; affects this thread only.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } < 0 {
        return Err(StartError::Sys {
            what: "join the cell's namespaces (setns)",
            errno: Errno::last(),
        });
    }
    Ok(())
}

/// Writes a new user namespace's id maps (its root is node id `base`, 65536 ids), then
/// lets its first process go on (one byte on `go`).
fn map_ids(pid: Pid, base: u32, go: OwnedFd) -> Result<(), StartError> {
    let map = format!("0 {base} 65536\n");
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{file}"), &map).map_err(|e| StartError::Sys {
            what: "write the cell's user namespace id map",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    }
    nix::unistd::write(&go, &[1]).map_err(|errno| StartError::Sys {
        what: "release the cell's init",
        errno,
    })?;
    Ok(())
}

/// Clones `body` into `cgroup`, registered with the reaper, and waits for its report:
/// EOF (exec succeeded) for an executable, a Ready message for a holder. `release` (a
/// holder in a new user namespace): the pipe its child waits on and the namespace's base
/// id, for `map_ids` once the child exists.
fn launch(
    flags: libc::c_int,
    cgroup: &OwnedFd,
    holder: bool,
    release: Option<(OwnedFd, u32)>,
    mut body: impl FnMut(libc::c_int) -> std::convert::Infallible,
) -> Result<Started, StartError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| StartError::Sys { what: "pipe2", errno })?;
    let mut pidfd = None;
    let report = w.as_raw_fd();
    let mut body = move || body(report);
    let mut child: ChildFn<'_> = &mut body;
    let mut stack = None;
    let (pid, exit) = Reaper::global().spawn_with(|| {
        // SAFETY: the child runs only `body`, which makes system calls on data prepared
        // before the clone and ends in execve or _exit. `child`, `plan` and the stack live
        // in this frame until the report pipe says the child has exec'd, or it has exited.
        match unsafe { clone3_vm(flags, cgroup.as_fd(), holder, &mut child) } {
            Ok(c) => {
                pidfd = c.pidfd;
                stack = Some(c.stack);
                Ok(c.pid)
            }
            Err(errno) => Err(StartError::Sys { what: "clone3", errno }),
        }
    })?;
    drop(w);
    // A failure here closes `go` unwritten: the child reports and exits.
    let mapped = match release {
        Some((go, base)) => map_ids(pid, base, go),
        None => Ok(()),
    };
    let mut msg = [0u8; 8];
    let mut got = 0;
    let mut file = std::fs::File::from(r);
    while got < msg.len() {
        match file.read(&mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let outcome = match (got, child::decode(&msg)) {
        _ if mapped.is_err() => mapped,
        (0, _) if !holder => Ok(()),
        (8, (Some(Stage::Ready), _)) if holder => Ok(()),
        (8, (Some(stage), errno)) => Err(StartError::Child { stage, errno }),
        _ => Err(StartError::Vanished),
    };
    match outcome {
        Ok(()) => {
            // EOF on a close-on-exec pipe: the child runs its new program, off our memory.
            drop(stack);
            Ok(Started { pid, pidfd, exit })
        }
        Err(e) => {
            // The child exits right after reporting; wait until it is reaped (so it is off
            // its stack, and its cgroup is empty when the caller cleans up).
            let _ = exit.blocking_recv();
            drop(stack);
            Err(e)
        }
    }
}
