//! Port I/O devices: the 8250 console (COM1, vm-superio) whose output goes to the VMM's
//! stdout (auraed reads it into the VM's log buffer), the i8042 controller (`i8042.rs`:
//! reset line and a keyboard with a Power key), and Aurae's power port through which an
//! auraed guest says "power off" or "reboot".

use std::io::Write;
use std::os::fd::OwnedFd;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const KBD_IRQ: u32 = 1;
/// Aurae's power port: an auraed guest writes POWER_OFF or REBOOT here as its last act.
pub const POWER_PORT: u16 = 0x600;
pub const POWER_OFF: u8 = 1;
pub const REBOOT: u8 = 2;
/// A template guest's request to be paused and taken (`SnapshotRole::Take`); elsewhere
/// ignored.
pub const SNAPSHOT: u8 = 3;
const PCI_CONFIG: std::ops::RangeInclusive<u16> = 0xcf8..=0xcff;

/// Why the guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    PowerOff,
    Reset,
    TripleFault,
    /// The guest asked to be taken (`SNAPSHOT`); once it has been, how it ended.
    Snapshot,
}

pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Collects console bytes and writes whole lines (or 4 KiB) at a time: vm-superio flushes
/// after every byte, and one write(2) per byte would cost a system call per character.
pub struct ConsoleOut {
    out: std::fs::File,
    buf: Vec<u8>,
}

impl ConsoleOut {
    pub fn new(fd: OwnedFd) -> ConsoleOut {
        ConsoleOut {
            out: fd.into(),
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn drain(&mut self) {
        let _ = self.out.write_all(&self.buf);
        self.buf.clear();
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.last() == Some(&b'\n') || self.buf.len() >= 4096 {
            self.drain();
        }
        Ok(())
    }
}

pub struct PortBus {
    pub serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
    pub kbd: super::i8042::I8042,
    pub kbd_irq: EventFd,
}

impl PortBus {
    fn kbd_action(&self, a: super::i8042::Action) -> Option<GuestExit> {
        match a {
            super::i8042::Action::None => None,
            super::i8042::Action::Reset => Some(GuestExit::Reset),
            super::i8042::Action::Interrupt => {
                if let Err(e) = self.kbd_irq.write(1) {
                    eprintln!("aurae-vmm: keyboard irq: {e}");
                }
                None
            }
        }
    }

    /// Asks the guest to shut down: the Power key on the i8042 keyboard.
    pub fn press_power(&mut self) {
        let a = self.kbd.press_power();
        let _ = self.kbd_action(a);
    }

    /// A port read; unclaimed ports read as zero, the PCI config window as "no device".
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0);
        match port {
            p if (COM1..COM1 + 8).contains(&p) => {
                if let Some(d) = data.first_mut() {
                    *d = self.serial.read((p - COM1) as u8);
                }
            }
            p @ (super::i8042::DATA | super::i8042::CMD) => {
                let (v, action) = self.kbd.read(p);
                if let Some(d) = data.first_mut() {
                    *d = v;
                }
                self.kbd_action(action);
            }
            p if PCI_CONFIG.contains(&p) => data.fill(0xff),
            _ => {}
        }
    }

    /// A port write; returns how the guest asked to end, if it did.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<GuestExit> {
        let v = data.first().copied().unwrap_or(0);
        match port {
            p if (COM1..COM1 + 8).contains(&p) => {
                if let Err(e) = self.serial.write((p - COM1) as u8, v) {
                    eprintln!("aurae-vmm: serial: {e}");
                }
                None
            }
            p @ (super::i8042::DATA | super::i8042::CMD) => {
                let action = self.kbd.write(p, v);
                self.kbd_action(action)
            }
            POWER_PORT if v == POWER_OFF => Some(GuestExit::PowerOff),
            POWER_PORT if v == REBOOT => Some(GuestExit::Reset),
            POWER_PORT if v == SNAPSHOT => Some(GuestExit::Snapshot),
            _ => None,
        }
    }
}
