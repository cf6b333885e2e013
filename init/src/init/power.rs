//! Shutdown and reboot: signals, the ACPI power button, and the final sequence
//! (stop everything, sync, power off) that PID 1 runs instead of exiting.

use std::time::Duration;
use tokio::sync::mpsc;

/// What the node does once the server has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
    /// Daemon mode: stop serving and exit the process.
    Exit,
}

pub type PowerSender = mpsc::UnboundedSender<PowerAction>;

/// Forwards SIGTERM, SIGPWR (poweroff) and SIGINT (Ctrl-Alt-Del as PID 1: reboot) to `tx`.
pub fn watch_signals(tx: PowerSender, pid1: bool) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut pwr = signal(SignalKind::from_raw(libc::SIGPWR))?;
    let (off, cad) = if pid1 {
        (PowerAction::PowerOff, PowerAction::Reboot)
    } else {
        (PowerAction::Exit, PowerAction::Exit)
    };
    tokio::spawn(async move {
        loop {
            let action = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); off }
                _ = pwr.recv() => { tracing::info!("SIGPWR: shutting down"); off }
                _ = int.recv() => { tracing::info!("SIGINT: {}", if pid1 { "rebooting" } else { "shutting down" }); cad }
            };
            if tx.send(action).is_err() {
                return;
            }
        }
    });
    Ok(())
}

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const INPUT_EVENT_SIZE: usize = 24;

/// Watches every /dev/input/event* for KEY_POWER (the ACPI power button, or the Power key
/// of a keyboard: auraed's VMM presses it to ask a guest to stop), one thread per device.
/// Input devices can register just after PID 1 starts (serio probes asynchronously), so the
/// directory is scanned again every second for ten seconds. Returns how many devices were
/// watched at the first scan.
pub fn watch_power_button(tx: PowerSender) -> usize {
    let watched = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let first = scan_input_devices(&tx, &watched);
    let rescan = std::thread::Builder::new().name("input-scan".into()).spawn(move || {
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_secs(1));
            scan_input_devices(&tx, &watched);
        }
    });
    if let Err(e) = rescan {
        tracing::warn!("cannot rescan input devices: {e}");
    }
    first
}

/// Starts a watcher for each event device not yet in `watched`; returns how many it started.
fn scan_input_devices(
    tx: &PowerSender,
    watched: &std::sync::Mutex<std::collections::BTreeSet<std::path::PathBuf>>,
) -> usize {
    let Ok(entries) = std::fs::read_dir("/dev/input") else {
        return 0;
    };
    let mut started = 0;
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let mut seen = watched.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&path) {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        seen.insert(path);
        drop(seen);
        let tx = tx.clone();
        let spawned = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; INPUT_EVENT_SIZE];
            while f.read_exact(&mut buf).is_ok() {
                let ty = u16::from_ne_bytes([buf[16], buf[17]]);
                let code = u16::from_ne_bytes([buf[18], buf[19]]);
                let value = i32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]);
                if ty == EV_KEY && code == KEY_POWER && value == 1 {
                    tracing::info!("power button pressed: shutting down");
                    if tx.send(PowerAction::PowerOff).is_err() {
                        return;
                    }
                }
            }
        });
        if spawned.is_ok() {
            started += 1;
        }
    }
    started
}

/// Whether any process other than PID 1 and kernel threads is left (kernel threads have an
/// empty cmdline). `kill(-1, 0)` cannot tell: it counts kernel threads too.
fn other_user_processes() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        pid != 1 && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
    })
}

/// PID 1's last act: terminate every other process (grace, then SIGKILL), sync, and power
/// off or reboot. Never returns; if the reboot syscall fails it parks forever (PID 1 may
/// not exit, or the kernel panics).
pub fn finish_pid1(action: PowerAction, grace: Duration) -> ! {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    tracing::info!("stopping all processes (grace {} ms)", grace.as_millis());
    let all = Pid::from_raw(-1);
    let _ = kill(all, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        super::reaper::Reaper::global().reap_all();
        if !other_user_processes() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(all, Signal::SIGKILL);
    super::reaper::Reaper::global().reap_all();
    nix::unistd::sync();
    super::data::quiesce();
    let how = match action {
        PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        PowerAction::PowerOff | PowerAction::Exit => nix::sys::reboot::RebootMode::RB_POWER_OFF,
    };
    tracing::info!("{how:?}");
    if under_aurae_vmm() {
        tell_aurae_vmm(action);
    }
    // reboot() returns only on failure (Infallible on success).
    let Err(e) = nix::sys::reboot::reboot(how);
    tracing::error!("reboot({how:?}) failed: {e}; halting here");
    loop {
        std::thread::park();
    }
}

/// Whether this kernel was booted by auraed's VMM, which sets `aurae.vmm=1`.
fn under_aurae_vmm() -> bool {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    super::cmdline::BootConfig::parse(&cmdline).0.vmm
}

/// Without ACPI a guest kernel can reboot (i8042) but not power off: it would halt its CPUs
/// and the VM would linger. auraed's VMM offers a port for this; writing it ends the VM at
/// once, so the disks were synced before.
fn tell_aurae_vmm(action: PowerAction) {
    let port = crate::vmm::devices::POWER_PORT;
    let value = match action {
        PowerAction::Reboot => crate::vmm::devices::REBOOT,
        PowerAction::PowerOff | PowerAction::Exit => crate::vmm::devices::POWER_OFF,
    };
    if let Err(e) = crate::os::port_write(port, value) {
        tracing::warn!("ioperm({port:#x}): {e}");
    }
}
