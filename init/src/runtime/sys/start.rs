//! Starting processes. A cell's init starts on a fresh OS thread that joins the enclosing
//! cell's namespaces (if any), `clone3`s the child straight into its cgroup, reads its
//! report pipe and ends. Executables start on their cell's `Starter`: one long-lived thread
//! per cell that joined the cell's namespaces once and lives as long as the cell. No auraed
//! thread but those stays inside a cell's namespaces, and the tokio thread never blocks.
//!
//! The start itself is `clone3(2)` with `CLONE_INTO_CGROUP`, so a process is born inside its cgroup and is never
//! outside one, even for an instant, and with `CLONE_VM` on a stack of its own, like
//! `posix_spawn`: nothing of auraed's memory is copied for a process that is about to exec.
//! libc has no `clone_args` on musl, so it is defined here.

use super::child::{self, ExecPlan, HolderPlan, Stage};
use crate::init::reaper::Reaper;
use crate::runtime::cgroup::CgroupDir;
use crate::runtime::launcher::{ExecInput, ExecStarter, Launcher, StartError, Started, Starting};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Every namespace a holder owns; joining all of them puts a thread exactly where the
/// cell's processes live (shared ones are the enclosing cell's or the host's). The cgroup
/// namespace is not among them: with `nsdelegate`, a process may only be cloned into a
/// cgroup inside its cgroup namespace, so each executable makes its own after the clone.
const ALL_NS: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// A thread that joins one cell's namespaces once and then starts each executable of that
/// cell: no thread creation, `unshare` or `setns` per start. Starts in one cell take turns;
/// the thread ends (and lets go of the cell's namespaces) when the `Starter` is dropped.
pub struct Starter {
    jobs: std::sync::mpsc::Sender<Job>,
    /// The cell's init, whose root is the cell's.
    init: Arc<OwnedFd>,
}

struct Job {
    cgroup: OwnedFd,
    input: ExecInput,
    reply: oneshot::Sender<Result<Started, StartError>>,
}

impl Starter {
    pub fn new(join: Arc<OwnedFd>) -> Result<Starter, StartError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let init = join.clone();
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
        Ok(Starter { jobs, init })
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

/// The real system calls.
pub(crate) struct SysLauncher;

impl ExecStarter for Starter {
    fn root(&self) -> Option<crate::runtime::error::Result<crate::runtime::rootfs::CellRoot>> {
        super::pidfd_pid(&self.init).map(crate::runtime::rootfs::CellRoot::of_pid)
    }

    fn start_exec(&self, cgroup: OwnedFd, input: ExecInput) -> Starting {
        let queued: std::result::Result<oneshot::Receiver<_>, StartError> = self.submit(cgroup, input);
        Box::pin(async move {
            match queued {
                Ok(rx) => rx.await.unwrap_or(Err(StartError::Vanished)),
                Err(e) => Err(e),
            }
        })
    }
}

impl Launcher for SysLauncher {
    fn starter(&self, join: Arc<OwnedFd>) -> std::result::Result<Arc<dyn ExecStarter>, StartError> {
        Ok(Arc::new(Starter::new(join)?))
    }

    fn start_holder(
        &self,
        join: Option<Arc<OwnedFd>>,
        cgroup: OwnedFd,
        flags: libc::c_int,
        exe: Arc<OwnedFd>,
        config: crate::runtime::holder::Config,
        userns: Option<u32>,
    ) -> Starting {
        Box::pin(start_holder(join, cgroup, flags, exe, config, userns))
    }

    fn pid_of(&self, pidfd: &OwnedFd) -> Option<i32> {
        super::pidfd_pid(pidfd)
    }

    fn kill(&self, dir: &CgroupDir) -> crate::runtime::error::Result<()> {
        dir.kill()
    }

    fn remove(&self, dir: &CgroupDir) -> crate::runtime::error::Result<()> {
        dir.remove_tree()
    }
}

// --- clone3

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
