//! Builds and runs a machine from its configuration: guest memory, the in-kernel irqchip
//! and PIT, the devices, the kernel image, the vCPU threads and the signal thread; returns
//! how the guest ended.

use super::devices::{self, ConsoleOut, GuestExit, IrqTrigger, PortBus};
use super::protocol::VmFiles;
use super::snapshot::{kvm, take, VmSnapshot};
use super::vcpu::{self, Machine};
use super::{
    boot, cpu, i8042, io, jail, kvm_err, memory, virtio_blk, virtio_mmio, virtio_net, SnapshotRole, VmConfig, VmmError,
};
use kvm_ioctls::{Kvm, VmFd};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// A VMM thread to start once the jail is complete: its name, its kind (its filter) and
/// what it runs.
type Thread = (String, jail::Kind, Box<dyn FnOnce() + Send>);

pub(super) fn run(
    cfg: &VmConfig,
    files: VmFiles,
    term: nix::sys::signal::SigSet,
    ready: impl FnOnce(u8) -> std::io::Result<()>,
) -> Result<GuestExit, VmmError> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the runtime opened /dev/kvm for this VMM and passed it; this is its only owner.
    let kvm = unsafe { Kvm::from_raw_fd(files.kvm.into_raw_fd()) };
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    let (memory_file, state_file) = match files.snapshot {
        Some((m, s)) => (Some(std::fs::File::from(m)), Some(std::fs::File::from(s))),
        None => (None, None),
    };
    // A restored machine's state, read and checked before anything is made of it.
    let restored = match (cfg.snapshot, &state_file) {
        (Some(SnapshotRole::Restore), Some(f)) => Some(snapshot_in(f, cfg)?),
        _ => None,
    };
    let mem = Arc::new(guest_memory(cfg, memory_file)?);
    memory::register(&vm, &mem)?;
    vm.set_tss_address(0xfffb_d000).map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    vm.create_pit2(kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("create PIT"))?;
    pit_discard_lost_ticks(&vm)?;

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
    // Threads start only once the jail is complete (see below).
    let mut threads: Vec<Thread> = Vec::new();
    // NICs first, in order, so the guest names them eth0, eth1, ... as `cfg.nets` lists them.
    for (i, (n, tap)) in cfg.nets.iter().zip(files.taps).enumerate() {
        let irq = irq_for(&vm, mmio.len())?;
        let dev = virtio_net::VirtioNet::new(mem.clone(), tap, n.mac, irq)?;
        let rx = dev.clone();
        threads.push((format!("net-rx{i}"), jail::Kind::NetRx, Box::new(move || rx.rx_loop())));
        mmio.push(dev);
    }
    for (i, (d, file)) in cfg.disks.iter().zip(files.disks).enumerate() {
        let irq = irq_for(&vm, mmio.len())?;
        let serial = format!("aurae-disk{i}");
        let dev = virtio_blk::VirtioBlk::new(mem.clone(), file.into(), d.read_only, &serial, irq)?;
        mmio.push(dev);
    }
    if let Some(s) = &restored {
        for (d, t) in mmio.iter().zip(&s.devices.mmio) {
            d.transport().lock().unwrap_or_else(|p| p.into_inner()).restore(t)?;
        }
    }
    let initramfs = match (files.initramfs, &cfg.initramfs) {
        (Some(f), Some(name)) => Some((std::fs::File::from(f), name.as_str())),
        _ => None,
    };
    // A restored guest is past its boot: its kernel is in memory already.
    let entry = match &restored {
        Some(_) => None,
        None => Some(boot::load(
            &mem,
            (std::fs::File::from(files.kernel), &cfg.kernel),
            initramfs,
            &cmdline,
            cfg.vcpus,
        )?),
    };

    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
    vm.register_irqfd(&irq, devices::COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    // SAFETY: fd 1 is the stdout pipe the runtime gave this process; nothing else owns it.
    let stdout = unsafe { OwnedFd::from_raw_fd(1) };
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
    vm.register_irqfd(&kbd_irq, devices::KBD_IRQ)
        .map_err(kvm_err("register keyboard irqfd"))?;
    let (serial, kbd) = match &restored {
        Some(s) => (
            vm_superio::Serial::from_state(
                &s.devices.serial,
                IrqTrigger(irq),
                vm_superio::serial::NoEvents,
                ConsoleOut::new(stdout),
            )
            .map_err(|e| VmmError::Io {
                what: "restore the serial port",
                source: std::io::Error::other(format!("{e:?}")),
            })?,
            i8042::I8042::from_state(&s.devices.kbd),
        ),
        None => (
            vm_superio::Serial::new(IrqTrigger(irq), ConsoleOut::new(stdout)),
            i8042::I8042::default(),
        ),
    };
    let bus = Arc::new(Mutex::new(PortBus { serial, kbd, kbd_irq }));
    let taker = match (cfg.snapshot, state_file) {
        (Some(SnapshotRole::Take), Some(f)) => {
            on_kick()?;
            let msrs = kvm::msr_list(&kvm).map_err(snap_err)?;
            Some(take::Taker::new(usize::from(cfg.vcpus), msrs, f, cfg.memory_bytes))
        }
        _ => None,
    };
    let taking = taker.is_some();

    let (end_tx, end_rx) = mpsc::channel();
    let machine = Arc::new(Machine {
        vm,
        bus: bus.clone(),
        mmio,
        end: end_tx,
        taker,
    });
    let cpuid = cpu::supported_cpuid(&kvm).map_err(kvm_err("get supported CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        let fd = machine.vm.create_vcpu(u64::from(id)).map_err(kvm_err("create vCPU"))?;
        match (&restored, &entry) {
            (Some(s), _) => kvm::restore_vcpu(&fd, &s.vcpus[usize::from(id)]).map_err(snap_err)?,
            (None, Some(e)) => cpu::setup(&fd, &cpuid, id, cfg.vcpus, e.rip).map_err(kvm_err("set up vCPU"))?,
            (None, None) => {}
        }
        vcpus.push(fd);
    }
    if let Some(s) = &restored {
        kvm::restore_vm(&machine.vm, &s.vm).map_err(snap_err)?;
    }
    for (id, fd) in vcpus.into_iter().enumerate() {
        let m = machine.clone();
        threads.push((
            format!("vcpu{id}"),
            jail::Kind::Vcpu,
            Box::new(move || vcpu::run(fd, &m, id)),
        ));
    }
    // SIGTERM: the graceful stop. The VMM presses Power on the guest's keyboard and lets the
    // guest decide; the runtime kills the VMM after the grace period. SIGUSR1: it reports
    // its memory (for `make bench`), read from a status file opened before the jail.
    let guest = mem.clone();
    let keys = bus.clone();
    let status = std::fs::File::open("/proc/self/status").ok();
    let smaps = std::fs::File::open("/proc/self/smaps").ok();
    threads.push((
        "signals".into(),
        jail::Kind::Signals,
        Box::new(move || loop {
            match term.wait() {
                Ok(nix::sys::signal::Signal::SIGUSR1) => {
                    eprintln!("aurae-vmm: {}", memory::report(&guest, status.as_ref(), smaps.as_ref()))
                }
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
        }),
    ));
    // The jail: the node's filesystem gone, an unprivileged uid without capabilities, then
    // the threads, held at a gate until the seccomp filter covers every one of them, so no
    // guest instruction runs before the jail is whole.
    jail::enter(cfg.jail_uid)?;
    jail::on_refusal()?;
    let gate = Arc::new(std::sync::Barrier::new(threads.len() + 1));
    for (name, kind, body) in threads {
        let g = gate.clone();
        let own = jail::thread_filter(kind, taking);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                g.wait();
                // Each thread narrows its own calls to its kind's before it does anything.
                if let Err(e) = jail::install_thread(&own) {
                    eprintln!("aurae-vmm: {e}");
                    std::process::exit(1);
                }
                body()
            })
            .map_err(io("start a VMM thread"))?;
    }
    // On failure the threads stay at the gate and end with the process.
    jail::install(&jail::filter(taking))?;
    let main_filter = jail::thread_filter(jail::Kind::Main, taking);
    gate.wait();
    jail::install_thread(&main_filter)?;
    ready(cfg.vcpus).map_err(io("report ready on the control socket"))?;
    eprintln!(
        "aurae-vmm: guest running: {} vCPUs, {} MiB{}",
        cfg.vcpus,
        cfg.memory_bytes >> 20,
        cfg.nets
            .iter()
            .map(|n| format!(", virtio-net on TAP {} (bridge {})", n.tap, n.bridge))
            .collect::<String>()
    );
    let end = end_rx.recv().unwrap_or(Err(vcpu::VcpuError::AllGone));
    if let Ok(mut b) = bus.lock() {
        b.serial.writer_mut().drain();
    }
    Ok(end?)
}

vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// By default KVM's PIT replays every tick the guest missed, back to back. A guest that
/// runs slowly (nested under an emulated CPU, or on a busy host) then spends its time
/// taking stale timer interrupts and falls further behind: a third-level guest under TCG
/// reached PCI init after 119 s instead of 1 s. Linux keeps time with kvm-clock, not by
/// counting ticks, so missed ticks are dropped instead.
fn pit_discard_lost_ticks(vm: &VmFd) -> Result<(), VmmError> {
    let ctrl = kvm_bindings::kvm_reinject_control::default();
    // SAFETY: KVM_REINJECT_CONTROL reads one kvm_reinject_control (all zero: no reinjection)
    // from the pointer, which is valid for the call; the VM fd is live.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_REINJECT_CONTROL(), &ctrl) };
    if rc < 0 {
        return Err(VmmError::Io {
            what: "KVM_REINJECT_CONTROL",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Guest memory: anonymous; a template's memory file, shared (it is the snapshot's memory);
/// or a restored machine's, a copy-on-write mapping of the snapshot's memory file.
fn guest_memory(cfg: &VmConfig, file: Option<std::fs::File>) -> Result<vm_memory::GuestMemoryMmap, VmmError> {
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
    let size = cfg.memory_bytes as usize;
    let memory = |e: String| VmmError::Io {
        what: "guest memory",
        source: std::io::Error::other(e),
    };
    let Some(f) = file.filter(|_| cfg.snapshot.is_some()) else {
        return Ok(boot::memory(cfg.memory_bytes)?);
    };
    // Beyond a file's end a mapping faults: the file must hold all of the guest's memory.
    let len = f.metadata().map_err(io("the memory file"))?.len();
    if len < cfg.memory_bytes {
        return Err(memory(format!(
            "the memory file has {len} bytes, and the guest has {}",
            cfg.memory_bytes
        )));
    }
    let file = FileOffset::new(f, 0);
    match cfg.snapshot {
        Some(SnapshotRole::Restore) => {
            let region = MmapRegion::build(
                Some(file),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_NORESERVE | libc::MAP_PRIVATE,
            )
            .map_err(|e| memory(e.to_string()))?;
            let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| memory("no region".into()))?;
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| memory(e.to_string()))
        }
        _ => GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size, Some(file))])
            .map_err(|e| memory(e.to_string())),
    }
}

/// The snapshot in state file `f`, checked, and fit for `cfg` (its vCPUs and memory).
fn snapshot_in(mut f: &std::fs::File, cfg: &VmConfig) -> Result<VmSnapshot, VmmError> {
    let mut bytes = Vec::new();
    std::io::Seek::rewind(&mut f).map_err(io("read the state file"))?;
    std::io::Read::read_to_end(&mut f, &mut bytes).map_err(io("read the state file"))?;
    let s = super::snapshot::decode(&bytes, env!("CARGO_PKG_VERSION")).map_err(|e| VmmError::Io {
        what: "the state file",
        source: std::io::Error::other(e.to_string()),
    })?;
    if s.vcpus.len() != usize::from(cfg.vcpus) || s.memory_bytes != cfg.memory_bytes {
        return Err(VmmError::Io {
            what: "the state file",
            source: std::io::Error::other(format!(
                "a machine of {} vCPUs and {} bytes, not {} and {}",
                s.vcpus.len(),
                s.memory_bytes,
                cfg.vcpus,
                cfg.memory_bytes
            )),
        });
    }
    if s.devices.mmio.len() != cfg.nets.len() + cfg.disks.len() {
        return Err(VmmError::Io {
            what: "the state file",
            source: std::io::Error::other(format!(
                "{} virtio devices, and the configuration has {}",
                s.devices.mmio.len(),
                cfg.nets.len() + cfg.disks.len()
            )),
        });
    }
    Ok(s)
}

fn snap_err(e: kvm::StateError) -> VmmError {
    VmmError::Io {
        what: "snapshot",
        source: std::io::Error::other(e.to_string()),
    }
}

extern "C" fn kicked(_: libc::c_int) {}

/// The signal that kicks a vCPU out of KVM_RUN for a pause does nothing else (its default
/// would end the VMM).
fn on_kick() -> Result<(), VmmError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let sa = SigAction::new(SigHandler::Handler(kicked), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing, which is async-signal-safe; no SA_RESTART, so a
    // KVM_RUN it interrupts returns EINTR.
    unsafe { sigaction(take::KICK, &sa) }
        .map(drop)
        .map_err(|e| io("the kick signal's handler")(std::io::Error::from(e)))
}
