//! The seam between the runtime's bookkeeping and the system calls that start and kill
//! processes, and the vocabulary both sides speak. `sys::start::SysLauncher` is the real one (clone3 straight into the
//! cgroup, the reaper's exit channel, a starter thread per cell) and `cgroup.kill`. Tests use `testing::FakeLauncher`,
//! which hands out pids and exits on demand and keeps `cgroup.procs`/`cgroup.events` in a
//! fixture directory, so creation, refusals, collisions, stop, free and phase changes are
//! unit tests that need neither root nor QEMU.

use super::cgroup::CgroupDir;
use super::error::{Result, RuntimeError};
use super::sys::child::Stage;
use crate::runtime::spawn::child::{self, RenewRefused};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Status;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StartError {
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: Errno },
    /// The child reported a failure before it was running.
    #[error("could not {}: {}", stage.describe(), Errno::from_raw(*errno))]
    Child { stage: Stage, errno: i32 },
    #[error("the child exited before it reported ready")]
    Vanished,
}

impl StartError {
    /// The one mapping of a start that failed before the child ran: out of pids or memory
    /// is RESOURCE_EXHAUSTED (with `exhausted` saying where to look), another system call
    /// INTERNAL with its errno, anything else FAILED_PRECONDITION. `what` names the thing
    /// started.
    pub(crate) fn into_error(self, what: &str, exhausted: &str) -> RuntimeError {
        match self {
            StartError::Sys {
                errno: Errno::EAGAIN | Errno::ENOMEM,
                ..
            } => RuntimeError::Exhausted(format!("cannot start {what}: {self} ({exhausted})")),
            StartError::Sys { what: w, errno } => RuntimeError::sys(format!("start {what}: {w}"), errno),
            other => RuntimeError::StartFailed(format!("cannot start {what}: {other}")),
        }
    }
}

pub(crate) struct Started {
    pub pid: Pid,
    pub pidfd: Option<OwnedFd>,
    pub exit: oneshot::Receiver<crate::init::reaper::Exit>,
}

/// What an executable's child needs; plain data so it can cross to the start thread.
pub(crate) struct ExecInput {
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

pub(crate) type Starting = Pin<Box<dyn Future<Output = std::result::Result<Started, StartError>> + Send>>;

/// Starts the executables of one cell (see `sys::start::Starter`).
pub(crate) trait ExecStarter: Send + Sync {
    /// Starts an executable in the cgroup `cgroup`, inside the cell's namespaces.
    fn start_exec(&self, cgroup: OwnedFd, input: ExecInput) -> Starting;
    /// The root the cell's processes see (its init's), from the node; None once the init
    /// has ended.
    fn root(&self) -> Option<Result<crate::runtime::rootfs::CellRoot>>;
}

pub(crate) trait Launcher: Send + Sync {
    /// The starter for executables of the cell whose init is `join`, made once the init runs.
    fn starter(&self, join: Arc<OwnedFd>) -> std::result::Result<Arc<dyn ExecStarter>, StartError>;
    /// Starts a cell's init (`exe` re-executed, told `config`) in `cgroup` with new namespaces
    /// `flags`, nested in holder `join`'s; with `userns`, in a user namespace of its own
    /// whose root is that node uid (and 65535 more ids).
    fn start_holder(
        &self,
        join: Option<Arc<OwnedFd>>,
        cgroup: OwnedFd,
        flags: libc::c_int,
        exe: Arc<OwnedFd>,
        config: super::holder::Config,
        userns: Option<u32>,
    ) -> Starting;
    /// SIGKILLs every process in `dir` and below, atomically.
    fn kill(&self, dir: &CgroupDir) -> Result<()>;
    /// The pid of the process `pidfd` (a `Started::pidfd`) refers to, while it lives.
    fn pid_of(&self, pidfd: &OwnedFd) -> Option<i32>;
    /// Removes cgroup `dir` and those below it (rmdir: its interface files go with it);
    /// fails while a process is in one.
    fn remove(&self, dir: &CgroupDir) -> Result<()>;
}

/// The node's devices a VM needs: KVM and TAPs on a bridge. [`NodeDevices`] is the real
/// one; tests use `testing::FakeDevices`, whose TAPs live as long as their descriptor, as
/// real ones do, so a test can see one go with its VMM.
pub(crate) trait Devices: Send + Sync {
    /// Whether KVM can run guests on this node; why not.
    fn kvm_usable(&self) -> std::result::Result<(), crate::vmm::KvmUnusable>;
    /// /dev/kvm opened for one VMM.
    fn open_kvm(&self) -> Result<std::fs::File>;
    /// TAP `n.tap` on bridge `n.bridge`, up; it lives as long as the descriptor.
    fn make_tap(&self, n: &crate::vmm::NetConfig) -> Result<OwnedFd>;
    /// A veth pair: `host_end` on `bridge`, up; its peer `inside.name` in the network
    /// namespace of process `holder`, addressed and up (a cell child's eth0, eth1, ...).
    fn make_veth<'a>(
        &'a self,
        host_end: &'a str,
        holder: i32,
        bridge: &'a str,
        inside: crate::runtime::spawn::veth::Inside<'a>,
    ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>>;
    /// Removes the veth pair whose host end is `host_end` (both ends go).
    fn remove_veth(&self, host_end: &str) -> std::result::Result<(), crate::runtime::spawn::SpawnError>;
    /// Adds `address` to `bridge` beside its own (a pod CIDR's gateway).
    fn add_address(&self, bridge: &str, address: crate::net::Ipv4Cidr) -> std::io::Result<()>;
}

/// /dev/kvm and TAPs made with ioctls.
pub(crate) struct NodeDevices;

impl Devices for NodeDevices {
    fn kvm_usable(&self) -> std::result::Result<(), crate::vmm::KvmUnusable> {
        crate::vmm::kvm_usable()
    }

    fn open_kvm(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| RuntimeError::from(super::error::Lack::Kvm(format!("open /dev/kvm: {e}"))))
    }

    fn make_tap(&self, n: &crate::vmm::NetConfig) -> Result<OwnedFd> {
        let fail = |e: std::io::Error| super::error::RuntimeError::Network(format!("network: TAP {}: {e}", n.tap));
        let tap = crate::net::ioctl::open_tap(&n.tap).map_err(fail)?;
        crate::net::ioctl::bridge_add(&n.bridge, &n.tap).map_err(fail)?;
        crate::net::ioctl::link_up(&n.tap).map_err(fail)?;
        Ok(tap)
    }

    fn make_veth<'a>(
        &'a self,
        host_end: &'a str,
        holder: i32,
        bridge: &'a str,
        inside: crate::runtime::spawn::veth::Inside<'a>,
    ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>> {
        Box::pin(crate::runtime::spawn::veth::plumb(host_end, holder, bridge, inside))
    }

    fn remove_veth(&self, host_end: &str) -> std::result::Result<(), crate::runtime::spawn::SpawnError> {
        crate::runtime::spawn::veth::remove(host_end)
    }

    fn add_address(&self, bridge: &str, address: crate::net::Ipv4Cidr) -> std::io::Result<()> {
        // A subnet the node is on already (its uplink, a named bridge) would take its
        // routes away: refused. The bridge having this very address is done already.
        let taken = (crate::net::interface_subnets().into_iter())
            .find(|(n, on)| on.overlaps(address) && !(n == bridge && on.addr == address.addr))
            .map(|(n, on)| format!("{} on {n}", on.addr));
        if let Some(t) = taken {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("this node is on that subnet already ({t})"),
            ));
        }
        crate::net::netlink::add_ipv4(bridge, address.addr, address.prefix)
    }
}

/// A call to a child auraed that answers later.
pub(crate) type Call<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the runtime speaks to a spawned child over its channel: the wait until it serves
/// and the request to power off. [`ChildApi`] is the real one (`spawn::child`, gRPC over
/// mTLS); tests use `testing::FakeChildren`.
pub(crate) trait ChildLink: Send + Sync {
    /// Until the child's health is SERVING; fails when `body` ends or `deadline` passes.
    fn wait_serving<'a>(
        &'a self,
        channel: &'a tonic::transport::Channel,
        address: std::net::SocketAddr,
        body: &'a (dyn child::Watched + Sync),
        deadline: tokio::time::Instant,
    ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>>;
    /// One health check of a served child: Ok when it answers SERVING within `answer`.
    fn probe<'a>(&'a self, channel: &'a Channel, answer: Duration) -> Call<'a, std::result::Result<(), child::Missed>>;
    /// Asks the child to power off, its workloads given `grace`.
    fn request_shutdown<'a>(
        &'a self,
        channel: &'a tonic::transport::Channel,
        grace: std::time::Duration,
    ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>>;
    /// Hands the child a new SVID and spawn CA (RenewIdentity), within `bound`.
    fn renew_identity<'a>(
        &'a self,
        channel: &'a Channel,
        req: crate::pb::RenewIdentityRequest,
        bound: Duration,
    ) -> Call<'a, std::result::Result<(), RenewRefused>>;
    /// What a pod asks of its instance (`spawn::child`): its images, its containers' cells
    /// and the runs of their entrypoints.
    fn pod_calls(&self) -> &dyn PodCalls;
}

/// A pod's calls to its instance, each over the instance's channel (see `spawn::child`).
pub(crate) trait PodCalls: Send + Sync {
    /// Gives the instance image `offer`, the layers in `paths` read from this node's store.
    fn load_image<'a>(
        &'a self,
        ch: &'a Channel,
        offer: &'a crate::image::load::Offer,
        paths: &'a [std::path::PathBuf],
        timeout: Duration,
    ) -> Call<'a, std::result::Result<(), Status>>;
    /// Makes a container's cell there.
    fn run_cell<'a>(
        &'a self,
        ch: &'a Channel,
        cell: crate::pb::Cell,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<crate::pb::CellStatus, Status>>;
    /// Starts a run of a container's entrypoint.
    fn start_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        argv: Vec<String>,
        io: super::spec::Io,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<crate::pb::ExecutableStatus, Status>>;
    /// Until the current run of `container` has ended.
    fn wait_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
    ) -> Call<'a, std::result::Result<crate::pb::ExecutableStatus, Status>>;
    /// Frees an ended run so the next can take its name.
    fn free_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<(), Status>>;
    /// Stops the current run: `signal`, `grace`, then a kill.
    fn stop_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        signal: i32,
        grace: Duration,
    ) -> Call<'a, std::result::Result<(), Status>>;
    /// Removes a container's cell and its runs (a sandbox's container, removed).
    fn remove_cell<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<(), Status>>;
    /// What a container's cell uses now.
    fn cell_usage<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<crate::pb::CellUsage, Status>>;
    /// Runs a command in a container's cell to its end, keeping `cap` bytes per stream.
    fn exec_in<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        argv: Vec<String>,
        cap: usize,
    ) -> Call<'a, std::result::Result<child::ExecOutput, Status>>;
}

/// The child's API, over the mTLS channel.
pub(crate) struct ChildApi;

impl ChildLink for ChildApi {
    fn wait_serving<'a>(
        &'a self,
        channel: &'a tonic::transport::Channel,
        address: std::net::SocketAddr,
        body: &'a (dyn child::Watched + Sync),
        deadline: tokio::time::Instant,
    ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>> {
        Box::pin(child::wait_serving(channel, address, body, deadline))
    }

    fn probe<'a>(&'a self, channel: &'a Channel, answer: Duration) -> Call<'a, std::result::Result<(), child::Missed>> {
        Box::pin(child::probe(channel, answer))
    }

    fn request_shutdown<'a>(
        &'a self,
        channel: &'a tonic::transport::Channel,
        grace: std::time::Duration,
    ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>> {
        Box::pin(child::request_shutdown(channel, grace))
    }

    fn renew_identity<'a>(
        &'a self,
        channel: &'a Channel,
        req: crate::pb::RenewIdentityRequest,
        bound: Duration,
    ) -> Call<'a, std::result::Result<(), RenewRefused>> {
        Box::pin(child::renew_identity(channel, req, bound))
    }

    fn pod_calls(&self) -> &dyn PodCalls {
        self
    }
}

impl PodCalls for ChildApi {
    fn load_image<'a>(
        &'a self,
        ch: &'a Channel,
        offer: &'a crate::image::load::Offer,
        paths: &'a [std::path::PathBuf],
        timeout: Duration,
    ) -> Call<'a, std::result::Result<(), Status>> {
        Box::pin(child::load_image(ch, offer, paths, timeout))
    }

    fn run_cell<'a>(
        &'a self,
        ch: &'a Channel,
        cell: crate::pb::Cell,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<crate::pb::CellStatus, Status>> {
        Box::pin(child::run_cell(ch, cell, timeout))
    }

    fn start_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        argv: Vec<String>,
        io: super::spec::Io,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<crate::pb::ExecutableStatus, Status>> {
        Box::pin(child::start_run(ch, container, argv, io, timeout))
    }

    fn wait_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
    ) -> Call<'a, std::result::Result<crate::pb::ExecutableStatus, Status>> {
        Box::pin(child::wait_run(ch, container))
    }

    fn free_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<(), Status>> {
        Box::pin(child::free_run(ch, container, timeout))
    }

    fn stop_run<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        signal: i32,
        grace: Duration,
    ) -> Call<'a, std::result::Result<(), Status>> {
        Box::pin(child::stop_run(ch, container, signal, grace))
    }

    fn remove_cell<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<(), Status>> {
        Box::pin(child::remove_cell(ch, container, timeout))
    }

    fn exec_in<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        argv: Vec<String>,
        cap: usize,
    ) -> Call<'a, std::result::Result<child::ExecOutput, Status>> {
        Box::pin(child::exec_in(ch, container, argv, cap))
    }

    fn cell_usage<'a>(
        &'a self,
        ch: &'a Channel,
        container: &'a str,
        timeout: Duration,
    ) -> Call<'a, std::result::Result<crate::pb::CellUsage, Status>> {
        Box::pin(child::cell_usage(ch, container, timeout))
    }
}

/// A launcher for tests: no process is ever created.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::init::reaper::Exit;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    struct Proc {
        pid: i32,
        cgroup: PathBuf,
        exit: oneshot::Sender<Exit>,
    }

    type LateStart = oneshot::Sender<std::result::Result<Started, StartError>>;

    /// Failures injected at the fakes' steps (`runtime/tests/steps.rs`): every step that
    /// makes something (a process, a TAP, a veth, an address, a wait for a child, a call
    /// to a pod's instance) or removes something (a cgroup, a veth) is recorded in order,
    /// and the one armed fails.
    #[derive(Default)]
    pub(crate) struct Faults {
        seen: Mutex<Vec<&'static str>>,
        armed: Mutex<Option<usize>>,
        /// Fails every time from its armed step on (a cgroup that stays busy, a device
        /// that will not go), until `disarm`: what a retry inside the runtime cannot mend.
        sticky: Mutex<Option<Option<&'static str>>>,
    }

    impl Faults {
        /// The `n`th step from now on (counted from 0 since the last `arm`) fails.
        pub fn arm(&self, n: usize) {
            self.seen.lock().unwrap().clear();
            *self.armed.lock().unwrap() = Some(n);
            *self.sticky.lock().unwrap() = None;
        }

        /// As `arm`, and that step keeps failing each time it is taken again.
        pub fn arm_sticky(&self, n: usize) {
            self.arm(n);
            *self.sticky.lock().unwrap() = Some(None);
        }

        /// Nothing fails any more (the fault went away).
        pub fn disarm(&self) {
            *self.armed.lock().unwrap() = None;
            *self.sticky.lock().unwrap() = None;
        }

        /// The steps seen since the last `arm` (or since the start).
        pub fn seen(&self) -> Vec<&'static str> {
            self.seen.lock().unwrap().clone()
        }

        fn hit(&self, step: &'static str) -> Option<String> {
            let mut seen = self.seen.lock().unwrap();
            seen.push(step);
            let n = seen.len() - 1;
            let mut sticky = self.sticky.lock().unwrap();
            if *self.armed.lock().unwrap() == Some(n) {
                if let Some(s) = sticky.as_mut() {
                    *s = Some(step);
                }
                return Some(format!("injected failure of step {n}, {step}"));
            }
            (*sticky == Some(Some(step))).then(|| format!("injected failure of step {step}, again"))
        }
    }

    /// Where a fake keeps the faults a test gave it (none: nothing is injected).
    pub(crate) type FaultSlot = Mutex<Option<Arc<Faults>>>;

    /// Records `step` in `slot`'s faults; the injected failure's words when it is armed.
    fn injected(slot: &FaultSlot, step: &'static str) -> Option<String> {
        slot.lock().unwrap().as_ref()?.hit(step)
    }

    /// Pids start far above any kernel's pid_max, so a signal the runtime sends to one
    /// (ESRCH) can never reach a real process.
    const FIRST_PID: i32 = 1 << 28;

    pub(crate) struct FakeLauncher {
        me: std::sync::Weak<FakeLauncher>,
        root: PathBuf,
        procs: Mutex<Vec<Proc>>,
        next: Mutex<i32>,
        /// The next start of an executable fails with this.
        pub fail_next_exec: Mutex<Option<StartError>>,
        /// The next holder start never reports ready (its init hangs until killed).
        pub hang_next_holder: Mutex<bool>,
        /// The next holder lands in its cgroup only right after the first `cgroup.kill`
        /// there: clone3 runs on a thread of its own and goes on even if the start is
        /// dropped, and this is its worst interleaving with a rollback.
        pub late_next_holder: Mutex<bool>,
        late: Mutex<Vec<(OwnedFd, LateStart)>>,
        /// What the next VMM (`aurae-vmm` with a control socket) does once it has its
        /// configuration.
        pub vmm: Mutex<FakeVmm>,
        /// Each running fake VMM's files and control socket, closed the moment its process
        /// ends (as the kernel closes an exiting process's descriptors).
        #[allow(clippy::type_complexity)]
        vmm_held:
            Mutex<std::collections::HashMap<i32, (crate::vmm::protocol::VmFiles, std::os::unix::net::UnixStream)>>,
        /// The stand-in pidfds handed out: descriptor number -> fake pid.
        pidfds: Mutex<std::collections::HashMap<std::os::fd::RawFd, i32>>,
        /// The root a cell's init was started with, by its fake pid (an image's top layer).
        roots: Mutex<std::collections::HashMap<i32, std::path::PathBuf>>,
        pub faults: FaultSlot,
    }

    /// A fake VMM: it takes its configuration and files (TAPs included) from the control
    /// socket as the real one does, then says Ready, or fails, or says nothing. It holds
    /// the files until its process ends (killed, or `exit`ed), then closes them and the
    /// socket, as an exiting VMM does.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub(crate) enum FakeVmm {
        #[default]
        Ready,
        /// Says Error and exits with this code before any vCPU runs.
        FailsToBoot(i32),
        /// Never says Ready (a guest that hangs before its vCPUs start).
        Silent,
    }

    impl FakeLauncher {
        pub fn new(root: &Path) -> Arc<FakeLauncher> {
            Arc::new_cyclic(|me| FakeLauncher {
                me: me.clone(),
                root: root.to_owned(),
                procs: Mutex::new(Vec::new()),
                next: Mutex::new(FIRST_PID),
                fail_next_exec: Mutex::new(None),
                hang_next_holder: Mutex::new(false),
                late_next_holder: Mutex::new(false),
                late: Mutex::new(Vec::new()),
                vmm: Mutex::new(FakeVmm::Ready),
                vmm_held: Mutex::new(Default::default()),
                pidfds: Mutex::new(Default::default()),
                roots: Mutex::new(Default::default()),
                faults: Default::default(),
            })
        }

        /// Whether fake process `pid` still runs.
        pub fn alive(&self, pid: i32) -> bool {
            self.procs.lock().unwrap().iter().any(|p| p.pid == pid)
        }

        /// Plays the VMM of process `pid` on `control` (its fd 3), on a thread.
        fn play_vmm(self: &Arc<Self>, pid: i32, control: OwnedFd) {
            use crate::vmm::protocol::{self, Event};
            use std::io::Write;
            let script = *self.vmm.lock().unwrap();
            let me = self.clone();
            std::thread::spawn(move || {
                let mut sock = std::os::unix::net::UnixStream::from(control);
                let Ok((cfg, files)) = protocol::recv_config(&sock) else {
                    return;
                };
                match script {
                    FakeVmm::Ready => {
                        let tap = cfg.nets.first().map(|n| n.tap.clone());
                        let ready = Event::Ready {
                            vcpus: cfg.vcpus,
                            memory_bytes: cfg.memory_bytes,
                            tap,
                        };
                        let _ = sock.write_all(&protocol::encode(&ready));
                    }
                    FakeVmm::FailsToBoot(code) => {
                        let error = Event::Error {
                            message: "load the kernel: not a bzImage (fake)".into(),
                        };
                        let _ = sock.write_all(&protocol::encode(&error));
                        drop(files);
                        drop(sock);
                        me.exit(pid, code);
                        return;
                    }
                    FakeVmm::Silent => {}
                }
                me.vmm_held.lock().unwrap().insert(pid, (files, sock));
                if !me.alive(pid) {
                    // It ended meanwhile: its descriptors go now.
                    me.vmm_held.lock().unwrap().remove(&pid);
                }
            });
        }

        fn start(&self, cgroup: OwnedFd) -> std::result::Result<Started, StartError> {
            use std::os::fd::AsRawFd;
            let path =
                std::fs::read_link(format!("/proc/self/fd/{}", cgroup.as_raw_fd())).map_err(|_| StartError::Sys {
                    what: "readlink",
                    errno: nix::errno::Errno::EBADF,
                })?;
            if !path.is_dir() {
                // CLONE_INTO_CGROUP into a removed cgroup fails, as the kernel's does.
                return Err(StartError::Sys {
                    what: "clone3",
                    errno: nix::errno::Errno::ENODEV,
                });
            }
            let pid = {
                let mut n = self.next.lock().unwrap();
                *n += 1;
                *n
            };
            let (tx, rx) = oneshot::channel();
            self.procs.lock().unwrap().push(Proc {
                pid,
                cgroup: path,
                exit: tx,
            });
            self.sync_files();
            // A pidfd stands in as an fd of no importance, which `pid_of` knows.
            let pidfd = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
            if let Some(fd) = &pidfd {
                use std::os::fd::AsRawFd;
                self.pidfds.lock().unwrap().insert(fd.as_raw_fd(), pid);
            }
            Ok(Started {
                pid: nix::unistd::Pid::from_raw(pid),
                pidfd,
                exit: rx,
            })
        }

        /// Pids of the fake processes in `dir` exactly.
        pub fn pids_in(&self, dir: &Path) -> Vec<i32> {
            let procs = self.procs.lock().unwrap();
            procs.iter().filter(|p| p.cgroup == dir).map(|p| p.pid).collect()
        }

        /// Fake process `pid` exits by itself with `code`.
        pub fn exit(&self, pid: i32, code: i32) {
            self.end(|p| p.pid == pid, Exit::Code(code));
        }

        /// Fake process `pid` is killed by `signal` (the OOM killer, someone's kill -9).
        pub fn kill_pid(&self, pid: i32, signal: i32) {
            self.end(|p| p.pid == pid, Exit::Signal(signal));
        }

        /// Ends every fake process `which` picks, as the kernel would: gone from the
        /// fixture's files, then its exit delivered.
        fn end(&self, which: impl Fn(&Proc) -> bool, how: Exit) {
            let gone: Vec<Proc> = {
                let mut procs = self.procs.lock().unwrap();
                let (gone, kept) = std::mem::take(&mut *procs).into_iter().partition(|p| which(p));
                *procs = kept;
                gone
            };
            self.sync_files();
            {
                let mut held = self.vmm_held.lock().unwrap();
                for p in &gone {
                    held.remove(&p.pid);
                }
            }
            for p in gone {
                let _ = p.exit.send(how);
            }
        }

        pub fn running(&self) -> usize {
            self.procs.lock().unwrap().len()
        }

        /// Writes each fixture cgroup's `cgroup.procs` and `cgroup.events` as the kernel
        /// would, and removes them where nothing runs (so the runtime can rmdir).
        fn sync_files(&self) {
            let procs = self.procs.lock().unwrap();
            let mut dirs = vec![self.root.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                    dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
                }
                i += 1;
            }
            for d in dirs {
                let here: Vec<String> = procs
                    .iter()
                    .filter(|p| p.cgroup == d)
                    .map(|p| p.pid.to_string())
                    .collect();
                let below = procs.iter().any(|p| p.cgroup.starts_with(&d));
                let (procs_file, events) = (d.join("cgroup.procs"), d.join("cgroup.events"));
                if here.is_empty() {
                    let _ = std::fs::remove_file(procs_file);
                } else {
                    let _ = std::fs::write(procs_file, here.join("\n") + "\n");
                }
                if below {
                    let _ = std::fs::write(events, "populated 1\nfrozen 0\n");
                } else {
                    let _ = std::fs::remove_file(events);
                }
            }
        }
    }

    /// A cell's starter, and the root its processes see: the node's, or the top layer of
    /// the cell's image (a one-layer image's whole root; enough for the fakes).
    struct FakeStarter(Arc<FakeLauncher>, Option<std::path::PathBuf>);

    impl ExecStarter for FakeStarter {
        fn root(&self) -> Option<Result<crate::runtime::rootfs::CellRoot>> {
            self.1.as_deref().map(crate::runtime::rootfs::CellRoot::at)
        }

        fn start_exec(&self, cgroup: OwnedFd, mut input: ExecInput) -> Starting {
            // execve of a program that is not there fails as the real one does.
            let root = self.1.clone().unwrap_or_else(|| "/".into());
            let missing = input.path.starts_with('/') && !root.join(input.path.trim_start_matches('/')).exists();
            let vmm = (input.argv.first().map(String::as_str) == Some(crate::vmm::ARGV0))
                .then(|| input.control.take())
                .flatten();
            // The pipes' write ends go now: the log readers see EOF, as after a quiet exit.
            drop(input);
            let step = if vmm.is_some() {
                "start the VMM"
            } else {
                "start an executable"
            };
            let fault = injected(&self.0.faults, step).map(|_| StartError::Sys {
                what: "clone3 (injected)",
                errno: Errno::EIO,
            });
            let r = match fault.or_else(|| self.0.fail_next_exec.lock().unwrap().take()) {
                Some(e) => Err(e),
                None if missing => Err(StartError::Child {
                    stage: crate::runtime::sys::child::Stage::Exec,
                    errno: libc::ENOENT,
                }),
                None => self.0.start(cgroup),
            };
            if let (Ok(started), Some(control)) = (&r, vmm) {
                self.0.play_vmm(started.pid.as_raw(), control);
            }
            Box::pin(async move { r })
        }
    }

    impl Launcher for FakeLauncher {
        fn starter(&self, join: Arc<OwnedFd>) -> std::result::Result<Arc<dyn ExecStarter>, StartError> {
            if injected(&self.faults, "prepare the cell's starter").is_some() {
                return Err(StartError::Sys {
                    what: "pidfd_open (injected)",
                    errno: Errno::EIO,
                });
            }
            let me = self.me.upgrade().ok_or(StartError::Vanished)?;
            let root = (self.pid_of(&join)).and_then(|pid| self.roots.lock().unwrap().get(&pid).cloned());
            Ok(Arc::new(FakeStarter(me, root)))
        }

        fn start_holder(
            &self,
            _join: Option<Arc<OwnedFd>>,
            cgroup: OwnedFd,
            _flags: libc::c_int,
            _exe: Arc<OwnedFd>,
            config: crate::runtime::holder::Config,
            _userns: Option<u32>,
        ) -> Starting {
            if injected(&self.faults, "start the cell's init").is_some() {
                return Box::pin(async {
                    Err(StartError::Sys {
                        what: "clone3 (injected)",
                        errno: Errno::EIO,
                    })
                });
            }
            if std::mem::take(&mut *self.hang_next_holder.lock().unwrap()) {
                // An init that is there but never reports ready: its report pipe closes
                // only when it dies.
                let started = self.start(cgroup);
                return Box::pin(async move {
                    let _ = started?.exit.await;
                    Err(StartError::Vanished)
                });
            }
            if std::mem::take(&mut *self.late_next_holder.lock().unwrap()) {
                let (tx, rx) = oneshot::channel();
                self.late.lock().unwrap().push((cgroup, tx));
                return Box::pin(async move { rx.await.unwrap_or(Err(StartError::Vanished)) });
            }
            let r = self.start(cgroup);
            if let (Ok(started), Some(top)) = (&r, config.layers.last()) {
                self.roots.lock().unwrap().insert(started.pid.as_raw(), top.clone());
            }
            Box::pin(async move { r })
        }

        fn pid_of(&self, pidfd: &OwnedFd) -> Option<i32> {
            use std::os::fd::AsRawFd;
            let pid = *self.pidfds.lock().unwrap().get(&pidfd.as_raw_fd())?;
            self.procs.lock().unwrap().iter().any(|p| p.pid == pid).then_some(pid)
        }

        fn kill(&self, dir: &CgroupDir) -> Result<()> {
            self.end(|p| p.cgroup.starts_with(dir.path()), Exit::Signal(libc::SIGKILL));
            for (cgroup, tx) in std::mem::take(&mut *self.late.lock().unwrap()) {
                let _ = tx.send(self.start(cgroup));
            }
            Ok(())
        }

        /// As rmdir on cgroupfs: EBUSY while a fake process is in the tree; otherwise the
        /// directories go with the interface files the runtime wrote into them.
        fn remove(&self, dir: &CgroupDir) -> Result<()> {
            if let Some(why) = injected(&self.faults, "remove a cgroup") {
                return Err(crate::runtime::error::RuntimeError::Sys {
                    what: format!("rmdir {} ({why})", dir.path().display()),
                    errno: nix::errno::Errno::EBUSY,
                });
            }
            if self
                .procs
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.cgroup.starts_with(dir.path()))
            {
                return Err(crate::runtime::error::RuntimeError::Sys {
                    what: format!("rmdir {}", dir.path().display()),
                    errno: nix::errno::Errno::EBUSY,
                });
            }
            match std::fs::remove_dir_all(dir.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::runtime::error::RuntimeError::Io {
                    what: "rmdir",
                    path: dir.path().to_owned(),
                    source: e,
                }),
                _ => Ok(()),
            }
        }
    }

    /// KVM that is usable (or not, as set) and TAPs that are one end of a socket pair: a
    /// TAP is there while a descriptor of it is open, as a real one is.
    #[derive(Default)]
    pub(crate) struct FakeDevices {
        pub kvm_missing: Mutex<Option<String>>,
        taps: Mutex<std::collections::BTreeMap<String, std::os::unix::net::UnixStream>>,
        /// Veth pairs there now: host end -> (bridge, holder pid, inside name, address).
        pub veths: Mutex<std::collections::BTreeMap<String, (String, i32, String, String)>>,
        /// The veth made after this many succeed fails (a bridge gone, say).
        pub veths_fail_after: Mutex<Option<usize>>,
        veths_made: std::sync::atomic::AtomicUsize,
        /// Addresses added to bridges: (bridge, address).
        pub addresses: Mutex<Vec<(String, String)>>,
        pub faults: FaultSlot,
    }

    impl FakeDevices {
        /// Whether TAP `name` was made and a descriptor of it is still open.
        pub fn tap_alive(&self, name: &str) -> bool {
            let taps = self.taps.lock().unwrap();
            let Some(peer) = taps.get(name) else { return false };
            let _ = peer.set_nonblocking(true);
            let mut b = [0u8; 1];
            matches!(std::io::Read::read(&mut &*peer, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }

        /// The TAPs made so far, by name.
        pub fn taps(&self) -> Vec<String> {
            self.taps.lock().unwrap().keys().cloned().collect()
        }
    }

    impl Devices for FakeDevices {
        fn kvm_usable(&self) -> std::result::Result<(), crate::vmm::KvmUnusable> {
            match &*self.kvm_missing.lock().unwrap() {
                Some(why) => Err(crate::vmm::KvmUnusable(why.clone())),
                None => Ok(()),
            }
        }

        fn open_kvm(&self) -> Result<std::fs::File> {
            if let Some(why) = injected(&self.faults, "open /dev/kvm") {
                return Err(crate::runtime::error::RuntimeError::from(
                    crate::runtime::error::Lack::Kvm(why),
                ));
            }
            std::fs::File::open("/dev/null").map_err(|source| crate::runtime::error::RuntimeError::Io {
                what: "open",
                path: "/dev/null".into(),
                source,
            })
        }

        fn make_tap(&self, n: &crate::vmm::NetConfig) -> Result<OwnedFd> {
            if let Some(why) = injected(&self.faults, "make the TAP") {
                return Err(crate::runtime::error::RuntimeError::Network(format!(
                    "network: TAP {}: {why}",
                    n.tap
                )));
            }
            let (ours, peer) =
                std::os::unix::net::UnixStream::pair().map_err(|source| crate::runtime::error::RuntimeError::Io {
                    what: "socketpair",
                    path: n.tap.clone().into(),
                    source,
                })?;
            self.taps.lock().unwrap().insert(n.tap.clone(), peer);
            Ok(ours.into())
        }

        fn make_veth<'a>(
            &'a self,
            host_end: &'a str,
            holder: i32,
            bridge: &'a str,
            inside: crate::runtime::spawn::veth::Inside<'a>,
        ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>> {
            let made = self.veths_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = if let Some(why) = injected(&self.faults, "make the veth") {
                Err(crate::runtime::spawn::SpawnError::Veth(std::io::Error::other(why)))
            } else if self.veths_fail_after.lock().unwrap().is_some_and(|n| made >= n) {
                Err(crate::runtime::spawn::SpawnError::Veth(
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                ))
            } else if self.veths.lock().unwrap().contains_key(host_end) {
                Err(crate::runtime::spawn::SpawnError::Veth(
                    std::io::Error::from_raw_os_error(libc::EEXIST),
                ))
            } else {
                let what = (
                    bridge.to_owned(),
                    holder,
                    inside.name.to_owned(),
                    inside.address.to_string(),
                );
                self.veths.lock().unwrap().insert(host_end.to_owned(), what);
                Ok(())
            };
            Box::pin(async move { r })
        }

        fn remove_veth(&self, host_end: &str) -> std::result::Result<(), crate::runtime::spawn::SpawnError> {
            if let Some(why) = injected(&self.faults, "remove the veth") {
                return Err(crate::runtime::spawn::SpawnError::Veth(std::io::Error::other(why)));
            }
            match self.veths.lock().unwrap().remove(host_end) {
                Some(_) => Ok(()),
                None => Err(crate::runtime::spawn::SpawnError::Veth(
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )),
            }
        }

        fn add_address(&self, bridge: &str, address: crate::net::Ipv4Cidr) -> std::io::Result<()> {
            if let Some(why) = injected(&self.faults, "add an address to the bridge") {
                return Err(std::io::Error::other(why));
            }
            self.addresses
                .lock()
                .unwrap()
                .push((bridge.into(), address.to_string()));
            Ok(())
        }
    }

    /// Children that serve at once (or not while `serves` is false: the wait then ends at
    /// its deadline as the real one does), and that count the Shutdown requests they get.
    pub(crate) struct FakeChildren {
        pub serves: Mutex<bool>,
        /// How many waits for a child to serve have begun.
        pub waits: std::sync::atomic::AtomicU32,
        pub shutdowns: std::sync::atomic::AtomicU32,
        /// What a Shutdown does to the child's body (a test ends its VMM, as a child that
        /// powers off does); nothing when unset.
        #[allow(clippy::type_complexity)]
        pub on_shutdown: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
        /// What the child does with a pod's calls.
        pub pods: FakePodChild,
        /// The SVIDs (PEM) handed over by each renewal the child took, in order.
        pub renewals: Mutex<Vec<String>>,
        /// Renewals are refused with this while set.
        pub refuse_renewals: Mutex<Option<Status>>,
        pub faults: FaultSlot,
        /// Whether a served child answers its health checks (a hung one does not).
        pub answers: Mutex<bool>,
    }

    impl Default for FakeChildren {
        fn default() -> Self {
            FakeChildren {
                serves: Mutex::new(true),
                waits: Default::default(),
                shutdowns: Default::default(),
                on_shutdown: Mutex::new(None),
                pods: FakePodChild::default(),
                renewals: Mutex::new(Vec::new()),
                refuse_renewals: Mutex::new(None),
                faults: Default::default(),
                answers: Mutex::new(true),
            }
        }
    }

    impl ChildLink for FakeChildren {
        fn wait_serving<'a>(
            &'a self,
            _channel: &'a tonic::transport::Channel,
            address: std::net::SocketAddr,
            body: &'a (dyn child::Watched + Sync),
            deadline: tokio::time::Instant,
        ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>> {
            self.waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(why) = injected(&self.faults, "wait for the child to serve") {
                return Box::pin(async move { Err(crate::runtime::spawn::SpawnError::NotServing(why)) });
            }
            Box::pin(async move {
                loop {
                    if let Some(how) = body.outcome() {
                        return Err(crate::runtime::spawn::SpawnError::Ended(how));
                    }
                    // Read each time: a test may let a child serve late.
                    if *self.serves.lock().unwrap() {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(crate::runtime::spawn::SpawnError::NotServing(format!(
                            "the child did not serve at {address} (fake)"
                        )));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
        }

        fn probe<'a>(
            &'a self,
            _channel: &'a Channel,
            _answer: Duration,
        ) -> Call<'a, std::result::Result<(), child::Missed>> {
            let r = match *self.answers.lock().unwrap() {
                true => Ok(()),
                false => Err(child::Missed::Silent(0)),
            };
            Box::pin(async move { r })
        }

        fn request_shutdown<'a>(
            &'a self,
            _channel: &'a tonic::transport::Channel,
            _grace: std::time::Duration,
        ) -> Call<'a, std::result::Result<(), crate::runtime::spawn::SpawnError>> {
            self.shutdowns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(power_off) = &*self.on_shutdown.lock().unwrap() {
                power_off();
            }
            Box::pin(async { Ok(()) })
        }

        fn renew_identity<'a>(
            &'a self,
            _channel: &'a Channel,
            req: crate::pb::RenewIdentityRequest,
            _bound: Duration,
        ) -> Call<'a, std::result::Result<(), RenewRefused>> {
            let refuse = self.refuse_renewals.lock().unwrap().clone();
            let r = match refuse {
                Some(s) => Err(RenewRefused::Refused(s)),
                None => {
                    self.renewals.lock().unwrap().push(req.svid_pem);
                    Ok(())
                }
            };
            Box::pin(async move { r })
        }

        fn pod_calls(&self) -> &dyn PodCalls {
            &self.pods
        }
    }

    /// One run of a container's entrypoint in the fake child: (exit code, signal, when it
    /// ended) once it has.
    struct FakeRun {
        started: i64,
        ended: Option<(Option<i32>, Option<i32>, i64)>,
    }

    /// The fake child's side of a pod: a container's cell is made at once with entrypoint
    /// `/app`; a run lasts until the test ends it (`end_run`) or the pod stops it (SIGTERM
    /// ends it with that signal); what the pod asked is counted.
    pub(crate) struct FakePodChild {
        runs: Mutex<std::collections::HashMap<String, FakeRun>>,
        changed: tokio::sync::watch::Sender<u64>,
        pub cells: Mutex<Vec<String>>,
        pub loads: std::sync::atomic::AtomicU32,
        pub starts: std::sync::atomic::AtomicU32,
        pub frees: std::sync::atomic::AtomicU32,
        pub stops: std::sync::atomic::AtomicU32,
        /// Starts are refused (the instance's cell is gone, say) while set.
        pub refuse_starts: Mutex<bool>,
        /// Cells are refused (a bad image in the instance, say) while set.
        pub refuse_cells: Mutex<bool>,
        pub faults: FaultSlot,
    }

    impl Default for FakePodChild {
        fn default() -> Self {
            FakePodChild {
                runs: Default::default(),
                changed: tokio::sync::watch::channel(0).0,
                cells: Default::default(),
                loads: Default::default(),
                starts: Default::default(),
                frees: Default::default(),
                stops: Default::default(),
                refuse_starts: Mutex::new(false),
                refuse_cells: Mutex::new(false),
                faults: Default::default(),
            }
        }
    }

    impl FakePodChild {
        /// The current run of `container` ends with `code` (or `signal`).
        pub fn end_run(&self, container: &str, code: Option<i32>, signal: Option<i32>) {
            if let Some(r) = self.runs.lock().unwrap().get_mut(container) {
                if r.ended.is_none() {
                    r.ended = Some((code, signal, crate::runtime::logs::now_unix_nanos()));
                }
            }
            self.changed.send_modify(|n| *n += 1);
        }

        /// The instance died: its runs went with it (a wait for one fails).
        pub fn lose_runs(&self) {
            self.runs.lock().unwrap().clear();
            self.changed.send_modify(|n| *n += 1);
        }

        /// Whether `container` has a run that has not ended.
        pub fn running(&self, container: &str) -> bool {
            self.runs
                .lock()
                .unwrap()
                .get(container)
                .is_some_and(|r| r.ended.is_none())
        }

        fn status(container: &str, r: &FakeRun) -> crate::pb::ExecutableStatus {
            let (exit_code, signal, ended) = r.ended.unwrap_or((None, None, 0));
            crate::pb::ExecutableStatus {
                name: container.to_owned(),
                cell: container.to_owned(),
                exit_code,
                signal,
                started_at_unix_nanos: r.started,
                ended_at_unix_nanos: ended,
                ..Default::default()
            }
        }
    }

    impl PodCalls for FakePodChild {
        fn load_image<'a>(
            &'a self,
            _ch: &'a Channel,
            _offer: &'a crate::image::load::Offer,
            _paths: &'a [std::path::PathBuf],
            _timeout: Duration,
        ) -> Call<'a, std::result::Result<(), Status>> {
            if let Some(why) = injected(&self.faults, "give the instance an image") {
                return Box::pin(async move { Err(Status::unavailable(why)) });
            }
            self.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        }

        fn run_cell<'a>(
            &'a self,
            _ch: &'a Channel,
            cell: crate::pb::Cell,
            _timeout: Duration,
        ) -> Call<'a, std::result::Result<crate::pb::CellStatus, Status>> {
            if let Some(why) = injected(&self.faults, "make a container's cell") {
                return Box::pin(async move { Err(Status::unavailable(why)) });
            }
            if *self.refuse_cells.lock().unwrap() {
                let e = Status::invalid_argument(format!(
                    "image.user: no such user in the image (fake, cell {})",
                    cell.name
                ));
                return Box::pin(async move { Err(e) });
            }
            self.cells.lock().unwrap().push(cell.name.clone());
            Box::pin(async move {
                Ok(crate::pb::CellStatus {
                    name: cell.name,
                    image: Some(crate::pb::CellImageStatus {
                        entrypoint: vec!["/app".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
        }

        fn start_run<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
            _argv: Vec<String>,
            _io: crate::runtime::spec::Io,
            _timeout: Duration,
        ) -> Call<'a, std::result::Result<crate::pb::ExecutableStatus, Status>> {
            let fault = injected(&self.faults, "start a container's entrypoint");
            let started = if let Some(why) = fault {
                Err(Status::unavailable(why))
            } else if *self.refuse_starts.lock().unwrap() {
                Err(Status::failed_precondition(format!(
                    "cell '{container}' is not running (fake)"
                )))
            } else {
                let mut runs = self.runs.lock().unwrap();
                match runs.get(container) {
                    Some(r) if r.ended.is_none() => Err(Status::already_exists(format!(
                        "an executable named '{container}' exists (fake)"
                    ))),
                    _ => {
                        let r = FakeRun {
                            started: crate::runtime::logs::now_unix_nanos(),
                            ended: None,
                        };
                        let st = Self::status(container, &r);
                        runs.insert(container.to_owned(), r);
                        self.starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(st)
                    }
                }
            };
            self.changed.send_modify(|n| *n += 1);
            Box::pin(async move { started })
        }

        fn wait_run<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
        ) -> Call<'a, std::result::Result<crate::pb::ExecutableStatus, Status>> {
            let mut changed = self.changed.subscribe();
            Box::pin(async move {
                loop {
                    match self.runs.lock().unwrap().get(container) {
                        None => return Err(Status::not_found(format!("no executable '{container}' (fake)"))),
                        Some(r) if r.ended.is_some() => return Ok(Self::status(container, r)),
                        Some(_) => {}
                    }
                    if changed.changed().await.is_err() {
                        return Err(Status::unavailable("the fake child went away"));
                    }
                }
            })
        }

        fn free_run<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
            _timeout: Duration,
        ) -> Call<'a, std::result::Result<(), Status>> {
            self.frees.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut runs = self.runs.lock().unwrap();
            let freed = match runs.get(container) {
                Some(r) if r.ended.is_none() => Err(Status::failed_precondition(format!(
                    "executable '{container}' is Running; stop it first (fake)"
                ))),
                Some(_) => {
                    runs.remove(container);
                    Ok(())
                }
                None => Err(Status::not_found(format!("no executable '{container}' (fake)"))),
            };
            Box::pin(async move { freed })
        }

        fn stop_run<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
            signal: i32,
            _grace: Duration,
        ) -> Call<'a, std::result::Result<(), Status>> {
            self.stops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.end_run(container, None, Some(signal));
            Box::pin(async { Ok(()) })
        }

        fn remove_cell<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
            _timeout: Duration,
        ) -> Call<'a, std::result::Result<(), Status>> {
            self.end_run(container, None, Some(9));
            self.runs.lock().unwrap().remove(container);
            self.cells.lock().unwrap().retain(|c| c != container);
            self.changed.send_modify(|n| *n += 1);
            Box::pin(async { Ok(()) })
        }

        /// A cell uses 1 ms of CPU per start so far, 1 MiB (256 KiB of it droppable cache)
        /// and one process.
        fn cell_usage<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
            _timeout: Duration,
        ) -> Call<'a, std::result::Result<crate::pb::CellUsage, Status>> {
            let has = self.cells.lock().unwrap().iter().any(|c| c == container);
            let starts = u64::from(self.starts.load(std::sync::atomic::Ordering::Relaxed));
            Box::pin(async move {
                match has {
                    true => Ok(crate::pb::CellUsage {
                        cpu_usage_micros: 1000 * starts,
                        memory_current_bytes: 1 << 20,
                        memory_inactive_file_bytes: 256 << 10,
                        pids_current: 1,
                        ..Default::default()
                    }),
                    false => Err(Status::not_found(format!("no cell '{container}' (fake)"))),
                }
            })
        }

        /// `echo WORDS` prints them, `sleep` never ends, anything else exits with the number
        /// of its arguments; output is capped as the real call caps it.
        fn exec_in<'a>(
            &'a self,
            _ch: &'a Channel,
            container: &'a str,
            argv: Vec<String>,
            cap: usize,
        ) -> Call<'a, std::result::Result<child::ExecOutput, Status>> {
            let has = self.cells.lock().unwrap().iter().any(|c| c == container);
            Box::pin(async move {
                if !has {
                    return Err(Status::not_found(format!("no cell '{container}' (fake)")));
                }
                match argv.first().map(String::as_str) {
                    Some("sleep") => std::future::pending().await,
                    Some("echo") => {
                        let mut line = argv[1..].join(" ").into_bytes();
                        line.push(b'\n');
                        let truncated = line.len() > cap;
                        line.truncate(cap);
                        Ok(child::ExecOutput {
                            stdout: line,
                            exit_code: Some(0),
                            truncated,
                            ..Default::default()
                        })
                    }
                    _ => Ok(child::ExecOutput {
                        exit_code: Some(argv.len().saturating_sub(1) as i32),
                        ..Default::default()
                    }),
                }
            })
        }
    }
}
