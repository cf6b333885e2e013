//! Just enough of an i8042 keyboard controller for Linux's i8042 + atkbd drivers (booted with
//! `i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd`, so atkbd never talks to the keyboard
//! itself): the controller self-test, the command byte, the reset line, and an output buffer
//! through which the VMM presses keys. Its one use: pressing Power asks the guest to shut
//! down (a graceful stop without ACPI).

use std::collections::VecDeque;

pub const DATA: u16 = 0x60;
pub const CMD: u16 = 0x64;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const CTR_SYS: u8 = 0x04;
const CTR_KBDINT: u8 = 0x01;
const CTR_XLATE: u8 = 0x40;

/// What a register access asks of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// Raise IRQ 1: a byte waits in the output buffer.
    Interrupt,
    /// The guest pulsed the reset line.
    Reset,
}

/// Bytes the output buffer holds at most. A guest that writes commands and never reads
/// their answers (or a VMM pressing keys nobody reads) cannot grow it: further bytes are
/// dropped, as a real controller's one-byte buffer would.
pub const OUT_CAP: usize = 16;

pub struct I8042 {
    ctr: u8,
    status: u8,
    out: VecDeque<u8>,
    /// The command whose parameter the next data write is.
    pending: Option<u8>,
    last: u8,
}

impl Default for I8042 {
    fn default() -> I8042 {
        I8042 {
            ctr: CTR_KBDINT | CTR_SYS | CTR_XLATE,
            status: STATUS_SYS,
            out: VecDeque::new(),
            pending: None,
            last: 0,
        }
    }
}

/// The controller's registers and output buffer, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub ctr: u8,
    pub status: u8,
    pub out: Vec<u8>,
    pub pending: Option<u8>,
    pub last: u8,
}

impl Default for State {
    fn default() -> State {
        I8042::default().state()
    }
}

/// Whether controller command `cmd` takes a parameter (the next data write).
pub fn takes_parameter(cmd: u8) -> bool {
    matches!(cmd, 0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4)
}

impl State {
    #[cfg(test)]
    pub fn hostile_for_tests() -> State {
        State {
            out: vec![0; 4096],
            ..State::default()
        }
    }
}

impl I8042 {
    /// The controller as `s` says (a snapshot's, checked: `VmSnapshot::check`).
    pub fn from_state(s: &State) -> I8042 {
        I8042 {
            ctr: s.ctr,
            status: s.status,
            out: s.out.iter().copied().take(OUT_CAP).collect(),
            pending: s.pending,
            last: s.last,
        }
    }

    pub fn state(&self) -> State {
        State {
            ctr: self.ctr,
            status: self.status,
            out: self.out.iter().copied().collect(),
            pending: self.pending,
            last: self.last,
        }
    }

    fn push(&mut self, b: u8) -> Action {
        if self.out.len() >= OUT_CAP {
            return Action::None;
        }
        self.out.push_back(b);
        self.status |= STATUS_OBF;
        if self.ctr & CTR_KBDINT != 0 {
            Action::Interrupt
        } else {
            Action::None
        }
    }

    pub fn read(&mut self, port: u16) -> (u8, Action) {
        match port {
            CMD => (self.status, Action::None),
            _ => {
                if let Some(b) = self.out.pop_front() {
                    self.last = b;
                }
                if self.out.is_empty() {
                    self.status &= !STATUS_OBF;
                    (self.last, Action::None)
                } else {
                    // More keys wait: the guest gets another (edge) interrupt.
                    let more = if self.ctr & CTR_KBDINT != 0 {
                        Action::Interrupt
                    } else {
                        Action::None
                    };
                    (self.last, more)
                }
            }
        }
    }

    pub fn write(&mut self, port: u16, v: u8) -> Action {
        if port == CMD {
            self.status |= STATUS_CMD;
            self.pending = None;
            return match v {
                0x20 => {
                    let c = self.ctr;
                    self.push(c)
                }
                c if takes_parameter(c) => {
                    self.pending = Some(v);
                    Action::None
                }
                0xaa => {
                    self.status |= STATUS_SYS;
                    self.push(0x55)
                }
                0xab => self.push(0x00), // keyboard interface test: OK
                0xa9 => self.push(0xff), // no aux port
                0xd0 => self.push(0x01), // output port: A20 on, no reset pending
                0xfe => Action::Reset,
                _ => Action::None, // enable/disable ports and the rest: nothing to do
            };
        }
        self.status &= !STATUS_CMD;
        match self.pending.take() {
            Some(0x60) => {
                self.ctr = v;
                Action::None
            }
            Some(0xd1) if v & 0x01 == 0 => Action::Reset,
            Some(0xd2) => self.push(v),
            // To the keyboard itself (not used with dumbkbd): acknowledge.
            None => self.push(0xfa),
            _ => Action::None,
        }
    }

    /// Presses and releases the Power key (scan code set 1 when the controller translates,
    /// which is how Linux sets it up; set 2 otherwise).
    pub fn press_power(&mut self) -> Action {
        let keys: [u8; 5] = if self.ctr & CTR_XLATE != 0 {
            [0xe0, 0x5e, 0xe0, 0xde, 0]
        } else {
            [0xe0, 0x37, 0xe0, 0xf0, 0x37]
        };
        let n = if self.ctr & CTR_XLATE != 0 { 4 } else { 5 };
        let mut a = Action::None;
        for k in &keys[..n] {
            a = self.push(*k);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_output_buffer() {
        let mut k = I8042::default();
        for _ in 0..100_000 {
            // Controller self-test: each answers 0x55 into the output buffer.
            k.write(CMD, 0xaa);
        }
        assert!(k.out.len() <= OUT_CAP, "{}", k.out.len());
        assert_eq!(k.read(DATA).0, 0x55);
    }

    #[test]
    fn linux_probe_sequence_and_a_power_key() {
        let mut k = I8042::default();
        assert_eq!(k.read(CMD).0 & STATUS_OBF, 0);
        assert_eq!(k.write(CMD, 0xaa), Action::Interrupt);
        assert_eq!(k.read(CMD).0 & STATUS_OBF, STATUS_OBF);
        assert_eq!(k.read(DATA).0, 0x55);
        k.write(CMD, 0x20);
        let ctr = k.read(DATA).0;
        k.write(CMD, 0x60);
        assert_eq!(k.write(DATA, ctr & !CTR_KBDINT), Action::None);
        assert_eq!(k.press_power(), Action::None, "no interrupt while disabled");
        k.write(CMD, 0x60);
        k.write(DATA, ctr);
        let mut got = Vec::new();
        while k.read(CMD).0 & STATUS_OBF != 0 {
            got.push(k.read(DATA).0);
        }
        assert_eq!(got, [0xe0, 0x5e, 0xe0, 0xde]);
        assert_eq!(k.write(CMD, 0xfe), Action::Reset);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any sequence of port reads and writes: no panic, the output buffer bounded.
            #[test]
            fn random_port_traffic_keeps_the_buffer_bounded(
                ops in proptest::collection::vec((prop_oneof![Just(DATA), Just(CMD), any::<u16>()], any::<u8>(), any::<bool>()), 1..512),
            ) {
                let mut k = I8042::default();
                for (port, value, write) in ops {
                    if write {
                        k.write(port, value);
                    } else {
                        k.read(port);
                    }
                    prop_assert!(k.out.len() <= OUT_CAP);
                }
            }
        }
    }
}
