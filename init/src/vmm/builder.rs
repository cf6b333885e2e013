//! Builds and runs a machine from its configuration: guest memory, the in-kernel irqchip
//! and PIT, the devices, the kernel image, the vCPU threads and the signal thread; returns
//! how the guest ended.

use super::devices::{self, ConsoleOut, GuestExit, IrqTrigger, PortBus};
use super::protocol::VmFiles;
use super::vcpu::{self, Machine};
use super::{boot, cpu, i8042, io, jail, kvm_err, memory, virtio_blk, virtio_mmio, virtio_net, VmConfig, VmmError};
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
    let mem = Arc::new(boot::memory(cfg.memory_bytes)?);
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
    let initramfs = match (files.initramfs, &cfg.initramfs) {
        (Some(f), Some(name)) => Some((std::fs::File::from(f), name.as_str())),
        _ => None,
    };
    let entry = boot::load(
        &mem,
        (std::fs::File::from(files.kernel), &cfg.kernel),
        initramfs,
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
        threads.push((
            format!("vcpu{id}"),
            jail::Kind::Vcpu,
            Box::new(move || vcpu::run(fd, &m)),
        ));
    }
    // SIGTERM: the graceful stop. The VMM presses Power on the guest's keyboard and lets the
    // guest decide; the runtime kills the VMM after the grace period. SIGUSR1: it reports
    // its memory (for `make bench`), read from a status file opened before the jail.
    let guest = mem.clone();
    let keys = bus.clone();
    let status = std::fs::File::open("/proc/self/status").ok();
    threads.push((
        "signals".into(),
        jail::Kind::Signals,
        Box::new(move || loop {
            match term.wait() {
                Ok(nix::sys::signal::Signal::SIGUSR1) => {
                    eprintln!("aurae-vmm: {}", memory::report(&guest, status.as_ref()))
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
        let own = jail::thread_filter(kind);
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
    jail::install(&jail::filter())?;
    let main_filter = jail::thread_filter(jail::Kind::Main);
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
