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
use super::executable::Executable;
use super::logs::{self, LogBuffer};
use super::names::ExecName;
use super::spec::{Isolation, VmSpec};
use super::table::Workload;
use super::{Kind, Phase, Runtime};
use crate::vmm::{self, VmConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ERROR_PREFIX: &str = "aurae-vmm: error: ";

pub struct VirtualMachine {
    pub name: ExecName,
    pub spec: VmSpec,
    /// The TAP on the node's bridge, when the VM has a NIC.
    pub tap: Option<String>,
    vmm: Arc<Executable>,
    stop_requested: AtomicBool,
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
        v.phase = Some(match phase {
            Phase::Exited | Phase::Killed if stopped && e.exit_code != Some(vmm::ExitCode::Error as i32) => {
                Phase::Stopped
            }
            Phase::Exited => match e.exit_code {
                Some(0 | 3 | 4) => Phase::Exited,
                code => {
                    v.error = self
                        .vmm
                        .logs
                        .last_with(logs::Stream::Stderr, ERROR_PREFIX)
                        .unwrap_or_else(|| format!("the VMM exited with {code:?}"));
                    Phase::Failed
                }
            },
            Phase::Failed => {
                v.error = e.error.clone();
                Phase::Failed
            }
            p => p,
        });
        v.exit_reason = match (phase, e.exit_code, e.signal) {
            (Phase::Exited, Some(c), _) => vmm::ExitCode::reason(c).to_owned(),
            (Phase::Killed, _, _) if stopped => "stopped (the VMM was killed after the grace period)".into(),
            (Phase::Killed, _, Some(s)) if e.oom_killed => format!("the VMM was OOM-killed (signal {s})"),
            (Phase::Killed, _, Some(s)) => format!("the VMM was killed by signal {s}"),
            _ => String::new(),
        };
        v
    }

    pub async fn wait(&self) {
        self.vmm.wait().await;
    }

    pub fn ended(&self) -> bool {
        self.vmm.phase().ended()
    }
}

/// A disk must be a regular file or block device of whole 512-byte sectors that auraed can
/// open as asked (read-write unless read-only).
fn check_disk(d: &super::spec::DiskSpec) -> std::result::Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .open(&d.path)
        .map_err(|e| {
            format!(
                "cannot open {} {}: {e}",
                d.path.display(),
                if d.read_only {
                    "read-only"
                } else {
                    "read-write (or set read_only)"
                }
            )
        })?;
    let m = f.metadata().map_err(|e| format!("{}: {e}", d.path.display()))?;
    if !(m.file_type().is_file() || m.file_type().is_block_device()) {
        return Err(format!("{} is not a regular file or block device", d.path.display()));
    }
    if m.file_type().is_file() && (m.len() == 0 || m.len() % 512 != 0) {
        return Err(format!(
            "{} is {} bytes; a raw image is a non-zero number of 512-byte sectors",
            d.path.display(),
            m.len()
        ));
    }
    Ok(())
}

impl Runtime {
    /// Boots a VM; returns once its vCPUs run, or with why they do not. On failure nothing
    /// is left behind.
    pub async fn run_vm(&self, spec: VmSpec) -> Result<VmView> {
        Ok(self.boot_vm(spec, true).await?.view())
    }

    /// Boots a VM; `listed` VMs are in the table (instances keep theirs themselves).
    pub(super) async fn boot_vm(&self, spec: VmSpec, listed: bool) -> Result<Arc<VirtualMachine>> {
        self.usable()?;
        vmm::kvm_usable()
            .map_err(|why| RuntimeError::Precondition(format!("{why}; this node cannot run virtual machines")))?;
        vmm::check_kernel(&spec.kernel).map_err(|e| RuntimeError::Invalid {
            field: "kernel_path".into(),
            reason: e,
        })?;
        if let Some(i) = &spec.initramfs {
            std::fs::File::open(i).map_err(|e| RuntimeError::Invalid {
                field: "initramfs_path".into(),
                reason: format!("cannot open {}: {e}", i.display()),
            })?;
        }
        if listed {
            self.table().vacant(Kind::VirtualMachine, spec.name.as_str())?;
        }
        let net = match (&self.bridge, spec.network) {
            (_, false) => None,
            (None, true) => {
                return Err(RuntimeError::Precondition(
                    "network: this node has no bridge for VM TAPs (auraed makes one only as PID 1)".into(),
                ))
            }
            (Some((bridge, _)), true) => {
                let n = self.taps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let b = n.to_be_bytes();
                Some(vmm::NetConfig {
                    tap: format!("atap{n}"),
                    bridge: bridge.clone(),
                    // Locally administered, unicast: 02:41 ("A") then the TAP number.
                    mac: [0x02, 0x41, b[0], b[1], b[2], b[3]],
                })
            }
        };
        let tap = net.as_ref().map(|n| n.tap.clone());
        for (i, d) in spec.disks.iter().enumerate() {
            check_disk(d).map_err(|reason| RuntimeError::Invalid {
                field: format!("disks[{i}].path"),
                reason,
            })?;
        }
        let config = VmConfig {
            net,
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
        };
        let json = serde_json::to_string(&config)
            .map_err(|e| RuntimeError::Precondition(format!("VMM configuration: {e}")))?;
        let isolation = Isolation {
            network: false,
            ..Isolation::default()
        };
        let argv = vec![vmm::ARGV0.to_owned(), json];
        let launched = self
            .launch_self(
                &spec.name,
                argv,
                isolation,
                spec.resources.clone(),
                logs::Stream::Console,
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
        });
        let ready = self.await_ready(&vm).await;
        if let Err(e) = ready {
            vm.vmm.stop(libc::SIGKILL, Duration::ZERO).await;
            let _ = self.discard_exec(&vm.vmm, vm.name.as_str()).await;
            return Err(e);
        }
        if listed {
            let inserted = self.table().insert_unique(Workload::VirtualMachine(vm.clone()));
            if let Err(taken) = inserted {
                vm.vmm.stop(libc::SIGKILL, Duration::ZERO).await;
                let _ = self.discard_exec(&vm.vmm, vm.name.as_str()).await;
                return Err(taken);
            }
        }
        tracing::info!("vm {} running", vm.name);
        Ok(vm)
    }

    async fn await_ready(&self, vm: &VirtualMachine) -> Result<()> {
        let logs = vm.vmm.logs.clone();
        let mut changed = logs.subscribe();
        let deadline = tokio::time::Instant::now() + vm.spec.ready_within;
        loop {
            if logs.last_with(logs::Stream::Stderr, vmm::READY).is_some() {
                return Ok(());
            }
            if let Some(e) = logs.last_with(logs::Stream::Stderr, ERROR_PREFIX) {
                return Err(RuntimeError::Precondition(format!(
                    "the VMM could not start the guest: {e}"
                )));
            }
            if vm.vmm.phase().ended() {
                return Err(RuntimeError::Precondition(format!(
                    "the VMM ended before the guest ran: {:?}",
                    vm.vmm.view()
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(RuntimeError::DeadlineExceeded(format!(
                        "the VMM did not start the guest within {:.1} s (the caller's deadline, or ready_timeout_millis)",
                        vm.spec.ready_within.as_secs_f64()
                    )));
                }
                _ = changed.changed() => {}
                _ = vm.vmm.wait() => {}
            }
        }
    }

    /// Graceful: SIGTERM to the VMM, which asks the guest to end; after `grace`, cgroup.kill.
    pub async fn stop_vm(&self, vm: &VirtualMachine, grace: Duration) {
        if !vm.vmm.phase().ended() {
            vm.stop_requested.store(true, Ordering::Relaxed);
        }
        vm.vmm.stop(libc::SIGTERM, grace).await;
    }

    pub(super) async fn free_vm(&self, vm: &Arc<VirtualMachine>) -> Result<()> {
        let name = &vm.name;
        if !vm.vmm.phase().ended() {
            return Err(RuntimeError::Precondition(format!(
                "virtual machine '{name}' is running; stop it first (aer vm stop {name})"
            )));
        }
        self.discard_vm(vm).await?;
        self.table().remove(Kind::VirtualMachine, name.as_str());
        Ok(())
    }

    /// Removes an ended VM's cell and cgroup.
    pub(super) async fn discard_vm(&self, vm: &VirtualMachine) -> Result<()> {
        self.discard_exec(&vm.vmm, vm.name.as_str()).await
    }
}
