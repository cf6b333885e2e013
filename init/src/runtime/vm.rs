//! Virtual machines: the VMM process (`aurae-vmm`, see `crate::vmm`) run as an unlisted
//! executable in a private cell named after the VM. The cell shares the node's network
//! namespace (the VM's TAP lives on the node's bridge) and has every other namespace new; its
//! cgroup accounts the guest's memory and the vCPU threads and takes the VM's limits.
//!
//! ```text
//! aurae/<vm>/_init        the cell's holder
//! aurae/<vm>/_x.<vm>      the VMM process: guest memory, vCPU threads, devices
//! ```

use super::error::{Result, RuntimeError};
use super::host::Host;
use super::launcher::Devices;
use super::logs::{self, LogBuffer};
use super::names::ExecName;
use super::process;
use super::process::Process;
use super::spec::{Confinement, Isolation, VmSpec};
use super::Phase;
use crate::runtime::error::Lack;
use crate::vmm::protocol::{self, Event, ExitReason, VmFiles};
use crate::vmm::{self, VmConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// What the VMM has said on its control socket (`vmm::protocol`).
#[derive(Debug, Clone, Default)]
struct Reported {
    ready: bool,
    exit: Option<ExitReason>,
    error: Option<String>,
    /// The socket reached EOF: the VMM has said all it will.
    closed: bool,
}

pub struct VirtualMachine {
    pub name: ExecName,
    pub spec: VmSpec,
    /// The TAP on the node's bridge, when the VM has a NIC.
    pub tap: Option<String>,
    vmm: Arc<Process>,
    stop_requested: AtomicBool,
    reported: watch::Sender<Reported>,
}

#[derive(Debug, Clone, Default)]
pub struct VmView {
    pub name: String,
    pub phase: Option<Phase>,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub tap: String,
    pub exit_reason: String,
    pub error: String,
    pub pid: u32,
    pub cpu_usage_micros: u64,
    pub memory_peak_bytes: u64,
}

impl VirtualMachine {
    pub fn logs(&self) -> Arc<LogBuffer> {
        self.vmm.logs.clone()
    }

    pub fn view(&self) -> VmView {
        let e = self.vmm.view();
        let mut v = VmView {
            name: self.name.to_string(),
            vcpus: u32::from(self.spec.vcpus),
            memory_bytes: self.spec.memory_bytes,
            tap: self.tap.clone().unwrap_or_default(),
            pid: e.pid,
            cpu_usage_micros: e.cpu_usage_micros,
            memory_peak_bytes: e.memory_peak_bytes,
            ..Default::default()
        };
        let phase = e.phase.unwrap_or(Phase::Starting);
        let stopped = self.stop_requested.load(Ordering::Relaxed);
        let said = self.reported.borrow().clone();
        v.phase = Some(match phase {
            Phase::Exited | Phase::Killed if stopped && said.error.is_none() => Phase::Stopped,
            Phase::Exited if said.exit.is_some() => Phase::Exited,
            Phase::Exited => {
                v.error = said
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("the VMM exited with {:?} without saying why", e.exit_code));
                Phase::Failed
            }
            Phase::Failed => {
                v.error = e.error.clone();
                Phase::Failed
            }
            p => p,
        });
        let exit_reason = match (phase, said.exit, e.signal) {
            (Phase::Exited, Some(r), _) => r.describe().to_owned(),
            (Phase::Exited, None, _) => "the VMM failed (see error)".into(),
            (Phase::Killed, _, _) if stopped => "stopped (the VMM was killed after the grace period)".into(),
            (Phase::Killed, _, Some(s)) if e.oom_killed => format!("the VMM was OOM-killed (signal {s})"),
            (Phase::Killed, _, Some(s)) => format!("the VMM was killed by signal {s}"),
            _ => String::new(),
        };
        // A VMM killed unasked (the OOM killer, an operator's kill -9) is a failure.
        if v.phase == Some(Phase::Killed) {
            v.phase = Some(Phase::Failed);
            v.error = exit_reason.clone();
        }
        v.exit_reason = exit_reason;
        v
    }

    /// Waits until the VMM has ended and said all it will (so `view` has the exit reason).
    pub async fn wait(&self) {
        self.vmm.wait().await;
        let mut said = self.reported.subscribe();
        let _ = tokio::time::timeout(super::KILL_WAIT, said.wait_for(|r| r.closed)).await;
    }

    pub fn ended(&self) -> bool {
        self.vmm.phase().ended()
    }
}

/// What a VM's cell may hold beyond its guest RAM when no `memory.max` is given: the
/// VMM (about 2.3 MiB measured, see docs/figures.md), KVM's page tables and the virtio buffers,
/// with room to spare.
pub const VMM_MEMORY_OVERHEAD: u64 = 64 << 20;

/// Each VMM runs as a uid (and gid) of its own from this range (see `vmm::jail`): no file
/// of the node belongs to it, and VMMs cannot signal or trace one another.
const VMM_UID_BASE: u32 = 200_000;
const VMM_UIDS: u32 = 100_000;

/// Where files a client names for a VM may live: the VM directory (made by PID 1 at boot)
/// and the node's kernel directory. Nothing else of the node (its keys under /etc/aurae and
/// /run/aurae, its disks under /dev) can be handed to a guest.
pub const VM_FILE_DIRS: [&str; 2] = ["/var/lib/aurae/vm", "/boot"];

/// What a VM file is used as, for its checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VmFile {
    Kernel,
    Initramfs,
    Disk { read_only: bool },
}

/// Resolves and checks a client-named VM file, off the runtime thread: it must resolve
/// (symlinks followed) inside `VM_FILE_DIRS`, open `O_NOFOLLOW|O_NONBLOCK` (so a FIFO or a
/// device cannot block), and be a regular file (a disk may also be a block device there);
/// a kernel must be a bzImage or PVH ELF, a disk whole 512-byte sectors. Returns the
/// resolved path and the file as opened: that file is what the VMM gets. Refusals are
/// INVALID_ARGUMENT naming `field`.
async fn checked_vm_file(
    field: String,
    path: PathBuf,
    kind: VmFile,
    dirs: Vec<PathBuf>,
) -> Result<(PathBuf, std::fs::File)> {
    let f = field.clone();
    tokio::task::spawn_blocking(move || check_vm_file(&field, &path, kind, &dirs))
        .await
        .map_err(|e| RuntimeError::invalid(f, format!("the check did not finish: {e}")))?
}

fn check_vm_file(
    field: &str,
    path: &std::path::Path,
    kind: VmFile,
    dirs: &[PathBuf],
) -> Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let refuse = |reason: String| RuntimeError::invalid(field, reason);
    let real = std::fs::canonicalize(path).map_err(|e| refuse(format!("cannot resolve {}: {e}", path.display())))?;
    if !dirs.iter().any(|d| real.starts_with(d)) {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(refuse(format!(
            "{} resolves to {}, outside {}: put VM files in {}",
            path.display(),
            real.display(),
            names.join(" and "),
            names.first().map_or("", String::as_str)
        )));
    }
    let write = matches!(kind, VmFile::Disk { read_only: false });
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&real)
        .map_err(|e| {
            let how = match kind {
                VmFile::Disk { read_only: false } => " read-write (or set read_only)",
                VmFile::Disk { read_only: true } => " read-only",
                _ => "",
            };
            refuse(format!("cannot open {}{how}: {e}", real.display()))
        })?;
    let m = f.metadata().map_err(|e| refuse(format!("{}: {e}", real.display())))?;
    let t = m.file_type();
    let block_ok = matches!(kind, VmFile::Disk { .. });
    if !(t.is_file() || (block_ok && t.is_block_device())) {
        let what = if block_ok {
            "a regular file or block device"
        } else {
            "a regular file"
        };
        return Err(refuse(format!("{} is not {what}", real.display())));
    }
    match kind {
        VmFile::Kernel => vmm::check_kernel_file(&mut f, &real).map_err(|e| refuse(e.to_string()))?,
        VmFile::Disk { .. } if t.is_file() && (m.len() == 0 || m.len() % 512 != 0) => {
            return Err(refuse(format!(
                "{} is {} bytes; a raw image is a non-zero number of 512-byte sectors",
                real.display(),
                m.len()
            )))
        }
        _ => {}
    }
    Ok((real, f))
}

/// The files a VM's VMM gets besides the TAP: opened here, off the runtime thread.
struct Opened {
    kernel: std::fs::File,
    initramfs: Option<std::fs::File>,
    disks: Vec<std::fs::File>,
}

/// Opens /dev/kvm and an instance's own kernel and image (auraed's files, not a client's).
async fn open_plain(
    devices: Arc<dyn Devices>,
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
) -> Result<(std::fs::File, Opened)> {
    let work = move || -> Result<(std::fs::File, Opened)> {
        let open = |p: &std::path::Path| {
            std::fs::File::open(p).map_err(|source| RuntimeError::Io {
                what: "open",
                path: p.to_owned(),
                source,
            })
        };
        let opened = Opened {
            kernel: open(&kernel)?,
            initramfs: initramfs.as_deref().map(open).transpose()?,
            disks: Vec::new(),
        };
        Ok((devices.open_kvm()?, opened))
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::StartFailed(format!("opening the VM's files did not finish: {e}")))?
}

impl VirtualMachine {
    async fn await_ready(&self) -> Result<()> {
        let mut said = self.reported.subscribe();
        let deadline = tokio::time::Instant::now() + self.spec.ready_within;
        loop {
            let now = said.borrow_and_update().clone();
            if now.ready {
                return Ok(());
            }
            if let Some(e) = now.error {
                return Err(RuntimeError::StartFailed(format!(
                    "the VMM could not start the guest: {e}"
                )));
            }
            if self.vmm.phase().ended() || now.closed {
                // What the VMM said last (a refusal by its jail, a panic) is the why.
                let mut at = self.vmm.logs.start_cursor(Some(4));
                let said: Vec<String> = self
                    .vmm
                    .logs
                    .read(&mut at, 4)
                    .lines
                    .iter()
                    .filter(|l| l.stream == logs::Stream::Stderr)
                    .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
                    .collect();
                return Err(RuntimeError::StartFailed(format!(
                    "the VMM ended before the guest ran: {}",
                    if said.is_empty() {
                        format!("{:?}", self.vmm.view())
                    } else {
                        said.join("; ")
                    }
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(RuntimeError::DeadlineExceeded(format!(
                        "the VMM did not start the guest within {:.1} s (the caller's deadline, or ready_timeout_millis)",
                        self.spec.ready_within.as_secs_f64()
                    )));
                }
                _ = said.changed() => {}
                _ = self.vmm.wait() => {}
            }
        }
    }

    /// Graceful: SIGTERM to the VMM, which asks the guest to end; after `grace`, cgroup.kill.
    pub(crate) async fn stop(&self, grace: Duration) {
        if !self.vmm.phase().ended() {
            self.stop_requested.store(true, Ordering::Relaxed);
        }
        self.vmm.stop(libc::SIGTERM, grace).await;
    }

    pub(super) async fn free(self: &Arc<Self>, host: &Host) -> Result<()> {
        let name = &self.name;
        if !self.vmm.phase().ended() {
            return Err(RuntimeError::WrongPhase(format!(
                "virtual machine '{name}' is running; stop it first (aer vm stop {name})"
            )));
        }
        self.discard(host).await?;
        host.table().remove::<VirtualMachine>(name.as_str());
        Ok(())
    }

    /// Removes an ended VM's cell and cgroup.
    pub(super) async fn discard(&self, host: &Host) -> Result<()> {
        self.vmm.discard(host, self.name.as_str()).await
    }
}

/// A new TAP (or veth) number, and the MAC of a NIC on it: locally administered,
/// unicast, 02:41 ("A") then the number.
pub(super) fn next_tap(host: &Host) -> (u32, [u8; 6]) {
    let n = host.alloc.next_tap_number();
    let b = n.to_be_bytes();
    (n, [0x02, 0x41, b[0], b[1], b[2], b[3]])
}

/// Boots a VM; returns once its vCPUs run, or with why they do not. On failure nothing
/// is left behind.
pub(crate) async fn run(host: &Host, spec: VmSpec) -> Result<VmView> {
    Ok(boot(host, spec, true).await?.view())
}

/// Boots a VM; `listed` VMs are in the table (instances keep theirs themselves).
pub(super) async fn boot(host: &Host, spec: VmSpec, listed: bool) -> Result<Arc<VirtualMachine>> {
    host.usable()?;
    host.devices
        .kvm_usable()
        .map_err(|why| RuntimeError::from(Lack::Kvm(why.to_string())))?;
    // Client-named files (a listed VM's) are resolved and checked off this thread;
    // an instance's own kernel and image are auraed's.
    let mut spec = spec;
    let (kvm, opened) = if listed {
        let (kernel, kernel_file) = checked_vm_file(
            "kernel_path".into(),
            spec.kernel.clone(),
            VmFile::Kernel,
            host.vm_file_dirs.clone(),
        )
        .await?;
        spec.kernel = kernel;
        let mut initramfs = None;
        if let Some(i) = spec.initramfs.take() {
            let (path, file) =
                checked_vm_file("initramfs_path".into(), i, VmFile::Initramfs, host.vm_file_dirs.clone()).await?;
            spec.initramfs = Some(path);
            initramfs = Some(file);
        }
        let mut disks = Vec::new();
        for (i, d) in spec.disks.iter_mut().enumerate() {
            let kind = VmFile::Disk { read_only: d.read_only };
            let (path, file) = checked_vm_file(
                format!("disks[{i}].path"),
                d.path.clone(),
                kind,
                host.vm_file_dirs.clone(),
            )
            .await?;
            d.path = path;
            disks.push(file);
        }
        let devices = host.devices.clone();
        let kvm = tokio::task::spawn_blocking(move || devices.open_kvm())
            .await
            .map_err(|e| RuntimeError::from(Lack::Kvm(format!("open /dev/kvm did not finish: {e}"))))??;
        (
            kvm,
            Opened {
                kernel: kernel_file,
                initramfs,
                disks,
            },
        )
    } else {
        vmm::check_kernel(&spec.kernel).map_err(|e| RuntimeError::invalid("kernel_path", e.to_string()))?;
        open_plain(host.devices.clone(), spec.kernel.clone(), spec.initramfs.clone()).await?
    };
    if listed {
        host.table().vacant::<VirtualMachine>(spec.name.as_str())?;
    }
    let mut nets = Vec::new();
    match (&host.bridge, spec.network) {
        (_, false) => {}
        (None, true) => {
            return Err(Lack::Bridge {
                field: "network: ",
                what: "VM TAPs",
            }
            .into())
        }
        (Some((bridge, _)), true) => {
            let (n, mac) = next_tap(host);
            nets.push(vmm::NetConfig {
                tap: format!("atap{n}"),
                bridge: bridge.clone(),
                mac,
            });
        }
    };
    for (bridge, mac) in &spec.extra_nics {
        let (n, _) = next_tap(host);
        nets.push(vmm::NetConfig {
            tap: format!("atap{n}"),
            bridge: bridge.clone(),
            mac: *mac,
        });
    }
    let tap = spec.network.then(|| nets.first().map(|n| n.tap.clone())).flatten();
    // Each TAP lives as long as its descriptor: one not made drops those made before.
    let tap_fds = nets
        .iter()
        .map(|n| host.devices.make_tap(n))
        .collect::<Result<Vec<_>>>()?;
    let uid = VMM_UID_BASE + host.alloc.next_vmm_uid_number() % VMM_UIDS;
    let config = VmConfig {
        jail_uid: uid,
        nets,
        disks: spec
            .disks
            .iter()
            .map(|d| vmm::DiskConfig {
                path: d.path.to_string_lossy().into_owned(),
                read_only: d.read_only,
            })
            .collect(),
        kernel: spec.kernel.to_string_lossy().into_owned(),
        initramfs: spec.initramfs.as_ref().map(|p| p.to_string_lossy().into_owned()),
        cmdline: spec.cmdline.clone(),
        vcpus: spec.vcpus,
        memory_bytes: spec.memory_bytes,
        snapshot: None,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|source| RuntimeError::Io {
        what: "socketpair",
        path: "(the VMM's control socket)".into(),
        source,
    })?;
    // Every namespace new, the network's too: the VMM reaches the network only
    // through its TAP, which it gets as a descriptor.
    let isolation = Isolation::default();
    // A VM's cell holds its guest RAM and its VMM: bounded by default, so one guest
    // cannot take the node's memory.
    let mut resources = spec.resources.clone();
    if resources.memory_max.is_none() {
        resources.memory_max = Some(spec.memory_bytes + VMM_MEMORY_OVERHEAD);
    }
    let launched = process::launch_self(
        host,
        &spec.name,
        vec![vmm::ARGV0.to_owned()],
        isolation,
        resources,
        logs::Stream::Console,
        Some(theirs.into()), // The VMM needs the node until it jails itself (`vmm::jail`).
        Confinement::PRIVILEGED,
        Default::default(),
    )
    .await;
    let vmm = launched.map_err(|e| match e {
        RuntimeError::AlreadyExists(_) => RuntimeError::AlreadyExists(format!(
            "a cell named '{0}' exists, and a VM runs in a cell named after it; choose another name",
            spec.name
        )),
        other => other,
    })?;
    let vm = Arc::new(VirtualMachine {
        name: spec.name.clone(),
        spec,
        tap,
        vmm,
        stop_requested: AtomicBool::new(false),
        reported: watch::channel(Reported::default()).0,
    });
    let files = VmFiles {
        kvm: kvm.into(),
        kernel: opened.kernel.into(),
        initramfs: opened.initramfs.map(Into::into),
        disks: opened.disks.into_iter().map(Into::into).collect(),
        taps: tap_fds,
        snapshot: None,
    };
    if let Err(e) = vmm::protocol::send_config(&ours, &config, files) {
        vm.vmm.stop(libc::SIGKILL, Duration::ZERO).await;
        let _ = vm.vmm.discard(host, vm.name.as_str()).await;
        return Err(RuntimeError::StartFailed(format!(
            "could not hand the VMM its configuration: {e}"
        )));
    }
    tokio::spawn(converse(ours, vm.clone()));
    let ready = vm.await_ready().await;
    if let Err(e) = ready {
        vm.vmm.stop(libc::SIGKILL, Duration::ZERO).await;
        let _ = vm.vmm.discard(host, vm.name.as_str()).await;
        return Err(e);
    }
    if listed {
        let inserted = host.table().insert(vm.clone());
        if let Err(taken) = inserted {
            vm.vmm.stop(libc::SIGKILL, Duration::ZERO).await;
            let _ = vm.vmm.discard(host, vm.name.as_str()).await;
            return Err(taken);
        }
        host.table().follow(&vm);
    }
    tracing::info!("vm {} running", vm.name);
    Ok(vm)
}

/// The most one control message may hold. The VMM is auraed's own code, but it runs beside
/// a guest: a compromised one must not grow PID 1's memory with one endless line.
const MAX_CONTROL_MESSAGE: u64 = 64 << 10;

/// The runtime's side of the control socket, once the configuration is sent: records each
/// event until the VMM closes the socket (it exits, however it ends).
async fn converse(sock: std::os::unix::net::UnixStream, vm: Arc<VirtualMachine>) {
    let sock = match sock
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(sock))
    {
        Ok(s) => s,
        Err(e) => {
            vm.reported.send_modify(|r| {
                r.error = Some(format!("control socket: {e}"));
                r.closed = true;
            });
            return;
        }
    };
    read_events(tokio::io::BufReader::new(sock), |event| match event {
        Ok(Event::Ready { .. }) => vm.reported.send_modify(|r| r.ready = true),
        Ok(Event::Exit { reason }) => vm.reported.send_modify(|r| r.exit = Some(reason)),
        Ok(Event::Error { message }) => vm.reported.send_modify(|r| r.error = Some(message)),
        Err(e) => {
            tracing::warn!("vm {}: {e}", vm.name);
            vm.reported.send_modify(|r| r.error = Some(e.to_string()));
        }
    })
    .await;
    vm.reported.send_modify(|r| r.closed = true);
}

/// Why a line from the VMM is not an event.
#[derive(Debug, thiserror::Error)]
enum EventError {
    #[error("a control message longer than {MAX_CONTROL_MESSAGE} bytes; the VMM is not trusted further")]
    TooLong,
    #[error("{0}")]
    Malformed(protocol::Malformed),
}

/// Hands each event (or why a line is not one) to `on` until EOF. A line longer than
/// MAX_CONTROL_MESSAGE ends the conversation with an error instead of being buffered.
async fn read_events<R: tokio::io::AsyncBufRead + Unpin>(mut r: R, mut on: impl FnMut(Result<Event, EventError>)) {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_CONTROL_MESSAGE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n as u64 == MAX_CONTROL_MESSAGE && !line.ends_with(b"\n") => {
                on(Err(EventError::TooLong));
                return;
            }
            Ok(_) => on(protocol::decode::<Event>(line.trim_ascii_end()).map_err(EventError::Malformed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events(input: &[u8]) -> Vec<Result<Event, String>> {
        let mut got = Vec::new();
        read_events(input, |e| got.push(e.map_err(|e| e.to_string()))).await;
        got
    }

    #[tokio::test]
    async fn events_are_read_line_by_line_and_junk_is_reported() {
        let mut input = protocol::encode(&Event::Ready {
            vcpus: 1,
            memory_bytes: 64 << 20,
            tap: None,
        });
        input.extend_from_slice(b"not json\n");
        input.extend(protocol::encode(&Event::Exit {
            reason: ExitReason::Reset,
        }));
        let got = events(&input).await;
        assert_eq!(got.len(), 3);
        assert!(matches!(got[0], Ok(Event::Ready { vcpus: 1, .. })));
        assert!(got[1].as_ref().unwrap_err().contains("malformed"));
        assert_eq!(
            got[2].as_ref().unwrap(),
            &Event::Exit {
                reason: ExitReason::Reset
            }
        );
    }

    #[tokio::test]
    async fn an_endless_line_ends_the_conversation_without_buffering_it() {
        // 1 MiB without a newline, then a well-formed event that must not be believed.
        let mut input = vec![b'x'; 1 << 20];
        input.extend(protocol::encode(&Event::Ready {
            vcpus: 1,
            memory_bytes: 64 << 20,
            tap: None,
        }));
        let got = events(&input).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].as_ref().unwrap_err().contains("longer than 65536 bytes"));
    }
}
