//! auraed's own VMM. It runs as a process of its own (auraed re-executed as `aurae-vmm`),
//! started by the runtime inside the VM's cell, so the guest's memory and the vCPU threads
//! are charged to that cell's cgroup and a VMM fault cannot touch PID 1.
//!
//! Protocol with the runtime (`protocol`): typed messages on the control socket, fd 3: the
//! configuration comes in, `Ready`, `Exit(reason)` or `Error` go out. The guest's serial
//! console is stdout; stderr is the VMM's log for people. SIGTERM asks the guest to shut
//! down (the Power key on the i8042 keyboard); SIGKILL (cgroup.kill) is the hard stop.
//! SIGUSR1 logs the VMM's memory use on stderr (for `make bench`).

pub mod boot;
pub mod cpu;
pub mod devices;
pub mod i8042;
pub mod protocol;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net;

use devices::{ConsoleOut, GuestExit, IrqTrigger, PortBus};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

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
    /// virtio-net backed by this TAP (created by the VMM, gone with it), on `bridge`.
    pub net: Option<NetConfig>,
    /// virtio-blk disks, in order (/dev/vda, vdb, ... in the guest).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetConfig {
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
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Entry point (argv[0] == ARGV0). Never returns.
pub fn main(_args: &[String]) -> ! {
    use std::io::{BufRead, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: fd 3 is the control socket the runtime set up for this process before execve;
    // nothing else in this process owns it.
    let control = unsafe { std::os::unix::net::UnixStream::from_raw_fd(protocol::CONTROL_FD) };
    let mut events = match control.try_clone() {
        Ok(w) => w,
        Err(e) => fatal(None, &format!("control socket: {e} (aurae-vmm is started by auraed)")),
    };
    let mut line = Vec::new();
    let cfg = match std::io::BufReader::new(control).read_until(b'\n', &mut line) {
        Ok(n) if n > 0 => match protocol::decode::<VmConfig>(line.trim_ascii_end()) {
            Ok(c) => c,
            Err(e) => fatal(Some(&mut events), &format!("bad configuration: {e}")),
        },
        Ok(_) => fatal(Some(&mut events), "no configuration on the control socket"),
        Err(e) => fatal(Some(&mut events), &format!("control socket: {e}")),
    };
    // SIGTERM is handled on a thread of its own (see below); the vCPU threads inherit the mask.
    use nix::sys::signal::Signal;
    let term = nix::sys::signal::SigSet::from_iter([Signal::SIGTERM, Signal::SIGUSR1]);
    let _ = term.thread_block();
    let ready = |vcpus: u8| {
        let e = protocol::Event::Ready {
            vcpus,
            memory_bytes: cfg.memory_bytes,
            tap: cfg.net.as_ref().map(|n| n.tap.clone()),
        };
        events.try_clone().and_then(|mut w| w.write_all(&protocol::encode(&e)))
    };
    match run(&cfg, term, ready) {
        Ok(exit) => {
            let reason = match exit {
                GuestExit::PowerOff => protocol::ExitReason::PowerOff,
                GuestExit::Reset => protocol::ExitReason::Reset,
                GuestExit::TripleFault => protocol::ExitReason::TripleFault,
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

struct Machine {
    vm: VmFd,
    bus: Arc<Mutex<PortBus>>,
    /// virtio-mmio devices by slot (see `virtio_mmio::slot_base`).
    mmio: Vec<Arc<dyn virtio_mmio::MmioDevice>>,
    end: mpsc::Sender<Result<GuestExit, String>>,
}

fn run(
    cfg: &VmConfig,
    term: nix::sys::signal::SigSet,
    ready: impl FnOnce(u8) -> std::io::Result<()>,
) -> Result<GuestExit, VmmError> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    let mem = Arc::new(boot::memory(cfg.memory_bytes)?);
    register_memory(&vm, &mem)?;
    vm.set_tss_address(0xfffb_d000).map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    vm.create_pit2(kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("create PIT"))?;

    let mut cmdline = cfg.cmdline.clone();
    let mut mmio: Vec<Arc<dyn virtio_mmio::MmioDevice>> = Vec::new();
    let mut irq_for = |vm: &VmFd, slot: usize| -> Result<EventFd, VmmError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        vm.register_irqfd(&irq, virtio_mmio::slot_irq(slot))
            .map_err(kvm_err("register virtio irqfd"))?;
        cmdline.push(' ');
        cmdline.push_str(&virtio_mmio::cmdline_param(slot));
        Ok(irq)
    };
    let other = |what: &'static str| {
        move |e: String| VmmError::Io {
            what,
            source: std::io::Error::other(e),
        }
    };
    if let Some(n) = &cfg.net {
        let tap = crate::net::ioctl::open_tap(&n.tap).map_err(io("TAP"))?;
        crate::net::ioctl::bridge_add(&n.bridge, &n.tap).map_err(io("bridge"))?;
        crate::net::ioctl::link_up(&n.tap).map_err(io("TAP up"))?;
        let irq = irq_for(&vm, mmio.len())?;
        let dev = virtio_net::VirtioNet::new(mem.clone(), tap, n.mac, irq).map_err(other("virtio-net"))?;
        let rx = dev.clone();
        std::thread::Builder::new()
            .name("net-rx".into())
            .spawn(move || rx.rx_loop())
            .map_err(io("start virtio-net thread"))?;
        mmio.push(dev);
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .open(&d.path)
            .map_err(|e| VmmError::Io {
                what: "disk",
                source: std::io::Error::new(e.kind(), format!("{}: {e}", d.path)),
            })?;
        let irq = irq_for(&vm, mmio.len())?;
        let serial = format!("aurae-disk{i}");
        let dev =
            virtio_blk::VirtioBlk::new(mem.clone(), file, d.read_only, &serial, irq).map_err(other("virtio-blk"))?;
        mmio.push(dev);
    }
    let entry = boot::load(
        &mem,
        std::path::Path::new(&cfg.kernel),
        cfg.initramfs.as_deref().map(std::path::Path::new),
        &cmdline,
        cfg.vcpus,
    )?;

    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
    vm.register_irqfd(&irq, devices::COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    // SAFETY: fd 1 is the stdout pipe the runtime gave this process; nothing else owns it.
    let stdout = unsafe { OwnedFd::from_raw_fd(1) };
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
    vm.register_irqfd(&kbd_irq, devices::KBD_IRQ)
        .map_err(kvm_err("register keyboard irqfd"))?;
    let bus = Arc::new(Mutex::new(PortBus {
        serial: vm_superio::Serial::new(IrqTrigger(irq), ConsoleOut::new(stdout)),
        kbd: i8042::I8042::default(),
        kbd_irq,
    }));

    let (end_tx, end_rx) = mpsc::channel();
    let machine = Arc::new(Machine {
        vm,
        bus: bus.clone(),
        mmio,
        end: end_tx,
    });
    let cpuid = cpu::supported_cpuid(&kvm).map_err(kvm_err("get supported CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        let fd = machine.vm.create_vcpu(u64::from(id)).map_err(kvm_err("create vCPU"))?;
        cpu::setup(&fd, &cpuid, id, cfg.vcpus, entry.rip).map_err(kvm_err("set up vCPU"))?;
        vcpus.push(fd);
    }
    for (id, fd) in vcpus.into_iter().enumerate() {
        let m = machine.clone();
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu_loop(fd, &m))
            .map_err(io("start vCPU thread"))?;
    }
    // SIGTERM: the graceful stop. The VMM presses Power on the guest's keyboard and lets the
    // guest decide; the runtime kills the VMM after the grace period. SIGUSR1: it reports
    // its memory (for `make bench`).
    let guest = mem.clone();
    let keys = bus.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match term.wait() {
                Ok(nix::sys::signal::Signal::SIGUSR1) => eprintln!("aurae-vmm: {}", memory_report(&guest)),
                Ok(_) => {
                    eprintln!("aurae-vmm: asked to stop: pressing the guest's Power key");
                    if let Ok(mut b) = keys.lock() {
                        b.press_power();
                    }
                }
                Err(e) => {
                    // Stops then fall back to cgroup.kill after the grace period.
                    eprintln!("aurae-vmm: cannot wait for signals any more: {e}");
                    return;
                }
            }
        })
        .map_err(io("start signal thread"))?;
    ready(cfg.vcpus).map_err(io("report ready on the control socket"))?;
    eprintln!(
        "aurae-vmm: guest running: {} vCPUs, {} MiB{}",
        cfg.vcpus,
        cfg.memory_bytes >> 20,
        cfg.net
            .as_ref()
            .map(|n| format!(", virtio-net on TAP {} (bridge {})", n.tap, n.bridge))
            .unwrap_or_default()
    );
    let end = end_rx.recv().unwrap_or(Err("every vCPU thread ended".into()));
    if let Ok(mut b) = bus.lock() {
        b.serial.writer_mut().drain();
    }
    end.map_err(|e| VmmError::Io {
        what: "vCPU",
        source: std::io::Error::other(e),
    })
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, r) in mem.iter().enumerate() {
        let host = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Io {
                what: "guest memory",
                source: std::io::Error::other(e.to_string()),
            })?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.start_addr().raw_value(),
            memory_size: r.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives every vCPU: run()
        // keeps it until the process exits.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

fn vcpu_loop(mut fd: VcpuFd, m: &Machine) {
    let end = loop {
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if let Ok(mut b) = m.bus.lock() {
                    b.read(port, data);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let exit = m.bus.lock().ok().and_then(|mut b| b.write(port, data));
                if let Some(e) = exit {
                    break Ok(e);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => match m.device_at(addr) {
                Some((d, off)) => d.read(off, data),
                None => data.fill(0xff),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((d, off)) = m.device_at(addr) {
                    d.write(off, data);
                }
            }
            Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::Shutdown) => break Ok(GuestExit::TripleFault),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                break Err(format!("KVM entry failed: reason {reason:#x} on CPU {cpu}"))
            }
            Ok(VcpuExit::InternalError) => break Err("KVM internal error".into()),
            Ok(other) => break Err(format!("unexpected vCPU exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break Err(format!("KVM_RUN: {e}")),
        }
    };
    let _ = m.end.send(end);
}

/// "rss R KiB, guest RAM resident G KiB, VMM overhead R-G KiB": VmRSS, and how much of it is
/// guest RAM (mincore over the guest mapping).
fn memory_report(mem: &GuestMemoryMmap) -> String {
    let rss_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let mut resident_pages = 0u64;
    for r in mem.iter() {
        let Ok(host) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = r.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: [host, host+len) is the region's live mapping; vec has one byte per page.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            resident_pages += vec.iter().filter(|b| *b & 1 == 1).count() as u64;
        }
    }
    let guest_kib = resident_pages * 4;
    format!(
        "memory: rss {rss_kib} KiB, guest RAM resident {guest_kib} KiB, VMM overhead {} KiB",
        rss_kib.saturating_sub(guest_kib)
    )
}

impl Machine {
    /// The virtio device whose window holds `addr`, and the offset into it.
    fn device_at(&self, addr: u64) -> Option<(&Arc<dyn virtio_mmio::MmioDevice>, u64)> {
        let off = addr.checked_sub(virtio_mmio::MMIO_BASE)?;
        let slot = (off / virtio_mmio::MMIO_SIZE) as usize;
        self.mmio.get(slot).map(|d| (d, off % virtio_mmio::MMIO_SIZE))
    }
}

/// Whether this node can run VMs (the same test `NodeInfo.kvm_usable` reports).
pub fn kvm_usable() -> Result<(), String> {
    match crate::node::kvm_usable() {
        (true, _) => Ok(()),
        (false, why) => Err(format!("KVM is not usable here ({why})")),
    }
}

/// Checks a kernel image's format without loading it: a bzImage ("HdrS" at 0x202), or an
/// x86-64 ELF that carries the kernel's own "Linux" or "Xen" ELF notes (so an ordinary
/// program is not mistaken for a vmlinux).
pub fn check_kernel(path: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let ctx = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut head = vec![0u8; 0x206];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(ctx)? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(());
    }
    let not = || format!("{} is neither a bzImage nor an x86-64 vmlinux", path.display());
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    if n < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || u16_at(&head, 18) != 62 {
        return Err(not());
    }
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56));
    for i in 0..u64::from(phnum.min(64)) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * u64::from(phentsize))).map_err(ctx)?;
        f.read_exact(&mut ph).map_err(ctx)?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(64 << 10));
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).map_err(ctx)?;
        f.read_exact(&mut notes).map_err(ctx)?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let word = |o: usize| u32::from_le_bytes([notes[o], notes[o + 1], notes[o + 2], notes[o + 3]]) as usize;
            let (namesz, descsz) = (word(at), word(at + 4));
            let name = notes.get(at + 12..at + 12 + namesz).unwrap_or(&[]);
            if name == b"Linux\0" || name == b"Xen\0" {
                return Ok(());
            }
            at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Err(not())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kernels_and_refuses_programs() {
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("bz");
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&bz, &img).unwrap();
        assert!(check_kernel(&bz).is_ok());
        let e = check_kernel(std::path::Path::new("/proc/self/exe")).unwrap_err();
        assert!(e.contains("neither a bzImage nor"), "{e}");
        let zeros = dir.path().join("z");
        std::fs::write(&zeros, [0u8; 10]).unwrap();
        assert!(check_kernel(&zeros).is_err());
        assert!(check_kernel(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot open"));
        if let Ok(v) = std::env::var("AURAE_VMLINUX") {
            check_kernel(std::path::Path::new(&v)).unwrap();
        }
    }
}
