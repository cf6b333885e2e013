//! auraed's own VMM. It runs as a process of its own (auraed re-executed as `aurae-vmm`),
//! started by the runtime inside the VM's cell, so the guest's memory and the vCPU threads
//! are charged to that cell's cgroup and a VMM fault cannot touch PID 1. It gets every file
//! as a descriptor and runs the guest from a jail (`jail`): no path, uid, capability or
//! system call of the node beyond what running the guest needs.
//!
//! Protocol with the runtime (`protocol`): typed messages on the control socket, fd 3: the
//! configuration comes in, `Ready`, `Exit(reason)` or `Error` go out. The guest's serial
//! console is stdout; stderr is the VMM's log for people. SIGTERM asks the guest to shut
//! down (the Power key on the i8042 keyboard); SIGKILL (cgroup.kill) is the hard stop.
//! SIGUSR1 logs the VMM's memory use on stderr (for `make bench`).

pub mod boot;
mod builder;
pub mod cpu;
pub mod devices;
pub mod i8042;
mod jail;
mod kernel;
mod memory;
pub mod protocol;
pub mod snapshot;
mod vcpu;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net;

use devices::GuestExit;
use serde::{Deserialize, Serialize};

pub const ARGV0: &str = "aurae-vmm";
/// The node's own kernel, which a VM (and every spawned child) gets when none is named.
pub const NODE_KERNEL: &str = "/boot/vmlinuz";
/// The i8042 parameters keep Linux from probing beyond what the VMM's controller offers
/// (it has a keyboard with a Power key, for graceful stops, and nothing else).
pub const DEFAULT_VM_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
pub const MAX_VCPUS: u32 = 32;
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MAX_MEMORY: u64 = boot::MMIO_START;

/// The VMM's exit status: 0 once the guest ended (the reason went out as `Exit`), 1 after
/// an `Error`. The runtime reads the reason from the protocol, not from this.
const EXIT_FAILED: i32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmConfig {
    pub kernel: String,
    pub initramfs: Option<String>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// virtio-net NICs, in order (eth0, eth1, ... in the guest), each backed by a TAP
    /// (made by the runtime, gone with the VMM) on its bridge.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// virtio-blk disks, in order (/dev/vda, vdb, ... in the guest).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// The unprivileged uid (and gid) the VMM runs the guest as (see `jail`).
    pub jail_uid: u32,
    /// A machine taken when its guest asks (a template), or one restored from a snapshot
    /// (`snapshot`); its two files come with it (`protocol::VmFiles::snapshot`).
    #[serde(default)]
    pub snapshot: Option<SnapshotRole>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRole {
    /// Guest memory is the memory file (shared); when the guest writes
    /// `devices::SNAPSHOT` to the power port the machine is paused and its state written
    /// to the state file, and the VMM ends (`ExitReason::Snapshotted`).
    Take,
    /// The machine is the state file's, over a copy-on-write mapping of the memory file;
    /// no kernel is loaded (the kernel file is not read).
    Restore,
}

/// Paths in the configuration only name the files for messages: the files themselves come
/// with it (`protocol::VmFiles`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetConfig {
    /// The TAP's name (the runtime made it and put it on `bridge`).
    pub tap: String,
    pub bridge: String,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
enum VmmError {
    #[error("{0}")]
    Boot(#[from] boot::BootError),
    #[error("KVM {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("{0}")]
    Device(#[from] virtio_mmio::DeviceError),
    #[error("vCPU: {0}")]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("jail: {0}")]
    Jail(#[from] jail::JailError),
}

/// KVM cannot run guests on this node; says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("KVM is not usable here ({0})")]
pub struct KvmUnusable(pub String);

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Entry point (argv[0] == ARGV0). Never returns.
pub fn main(_args: &[String]) -> ! {
    use std::io::Write;
    let control = protocol::control_socket();
    let mut events = match control.try_clone() {
        Ok(w) => w,
        Err(e) => fatal(None, &format!("control socket: {e} (aurae-vmm is started by auraed)")),
    };
    let (cfg, files) = match protocol::recv_config(&control) {
        Ok(c) => c,
        Err(e) => fatal(Some(&mut events), &e.to_string()),
    };
    // SIGTERM is handled on a thread of its own (see below); the vCPU threads inherit the mask.
    use nix::sys::signal::Signal;
    let term = nix::sys::signal::SigSet::from_iter([Signal::SIGTERM, Signal::SIGUSR1]);
    let _ = term.thread_block();
    // A second handle made now: in the jail, duplicating a descriptor is not allowed.
    let mut ready_w = match events.try_clone() {
        Ok(w) => w,
        Err(e) => fatal(Some(&mut events), &format!("control socket: {e}")),
    };
    let ready = |vcpus: u8| {
        let e = protocol::Event::Ready {
            vcpus,
            memory_bytes: cfg.memory_bytes,
            tap: cfg.nets.first().map(|n| n.tap.clone()),
        };
        ready_w.write_all(&protocol::encode(&e))
    };
    match builder::run(&cfg, files, term, ready) {
        Ok(exit) => {
            let reason = match exit {
                GuestExit::PowerOff => protocol::ExitReason::PowerOff,
                GuestExit::Reset => protocol::ExitReason::Reset,
                GuestExit::TripleFault => protocol::ExitReason::TripleFault,
                GuestExit::Snapshot => protocol::ExitReason::Snapshotted,
            };
            eprintln!("aurae-vmm: {}", reason.describe());
            let _ = events.write_all(&protocol::encode(&protocol::Event::Exit { reason }));
            std::process::exit(0)
        }
        Err(e) => fatal(Some(&mut events), &e.to_string()),
    }
}

/// Reports `msg` as an `Error` event (and on stderr) and exits.
fn fatal(events: Option<&mut std::os::unix::net::UnixStream>, msg: &str) -> ! {
    eprintln!("aurae-vmm: error: {msg}");
    if let Some(w) = events {
        let e = protocol::Event::Error {
            message: msg.to_owned(),
        };
        let _ = std::io::Write::write_all(w, &protocol::encode(&e));
    }
    std::process::exit(EXIT_FAILED)
}

/// Whether this node can run VMs (the same test `NodeInfo.kvm_usable` reports).
pub fn kvm_usable() -> Result<(), KvmUnusable> {
    match crate::node::kvm_usable() {
        (true, _) => Ok(()),
        (false, why) => Err(KvmUnusable(why)),
    }
}

pub use kernel::{check_kernel, check_kernel_file};
pub use memory::overhead_of;
