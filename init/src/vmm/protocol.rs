//! The control protocol between the runtime and a VMM process: typed messages, one JSON
//! object per line, on a socket the runtime hands the VMM as fd [`CONTROL_FD`]. The runtime
//! sends the [`VmConfig`](super::VmConfig) first; the VMM answers with [`Event`]s: `Ready`
//! once every vCPU runs, then `Exit` when the guest ends, or `Error` when the VMM cannot go
//! on. Both sides use these types, so neither parses the other's log lines; stderr stays a
//! log for people.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The VMM's end of the control socket (set up by the runtime before `execve`).
pub const CONTROL_FD: i32 = 3;

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    PowerOff,
    Reset,
    TripleFault,
}

impl ExitReason {
    pub fn describe(self) -> &'static str {
        match self {
            ExitReason::PowerOff => "guest powered off",
            ExitReason::Reset => "guest reset (reboot ends the VM)",
            ExitReason::TripleFault => "guest triple fault",
        }
    }
}

/// What the VMM tells the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every vCPU runs.
    Ready {
        vcpus: u8,
        memory_bytes: u64,
        tap: Option<String>,
    },
    /// The guest ended; the VMM exits next.
    Exit { reason: ExitReason },
    /// The VMM could not start or run the guest; it exits next.
    Error { message: String },
}

/// One message as a line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; an empty object keeps the line framing
    // intact if it ever did.
    let mut line = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// A line that is not a message of the protocol.
#[derive(Debug, thiserror::Error)]
#[error("malformed control message: {0}")]
pub struct Malformed(#[from] serde_json::Error);

/// One line as a message.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, Malformed> {
    Ok(serde_json::from_slice(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_single_lines() {
        for e in [
            Event::Ready {
                vcpus: 2,
                memory_bytes: 128 << 20,
                tap: Some("atap0".into()),
            },
            Event::Exit {
                reason: ExitReason::Reset,
            },
            Event::Error {
                message: "KVM create VM: \"x\"\nsecond line".into(),
            },
        ] {
            let line = encode(&e);
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line: {line:?}");
            assert_eq!(decode::<Event>(&line[..line.len() - 1]).unwrap(), e);
        }
        assert!(decode::<Event>(b"{\"event\":\"nonsense\"}")
            .unwrap_err()
            .to_string()
            .contains("malformed"));
    }

    #[test]
    fn the_config_round_trips() {
        let c = super::super::VmConfig {
            kernel: "/boot/vmlinuz".into(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            net: None,
            disks: vec![super::super::DiskConfig {
                path: "/var/a.img".into(),
                read_only: true,
            }],
        };
        let back: super::super::VmConfig = decode(encode(&c).trim_ascii_end()).unwrap();
        assert_eq!(back.disks[0].path, "/var/a.img");
        assert_eq!(back.memory_bytes, 64 << 20);
    }
}
