//! The control protocol between the runtime and a VMM process: typed messages, one JSON
//! object per line, on a socket the runtime hands the VMM as fd [`CONTROL_FD`]. The runtime
//! sends the [`VmConfig`](super::VmConfig) first, with every file the VMM will use attached
//! ([`VmFiles`], SCM_RIGHTS): the VMM opens no path of the node. The VMM answers with [`Event`]s: `Ready`
//! once every vCPU runs, then `Exit` when the guest ends, or `Error` when the VMM cannot go
//! on. Both sides use these types, so neither parses the other's log lines; stderr stays a
//! log for people.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// The VMM's end of the control socket (set up by the runtime before `execve`).
pub const CONTROL_FD: i32 = 3;

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    PowerOff,
    Reset,
    TripleFault,
    /// The guest asked to be taken (a template): paused, its state written.
    Snapshotted,
}

impl ExitReason {
    pub fn describe(self) -> &'static str {
        match self {
            ExitReason::PowerOff => "guest powered off",
            ExitReason::Reset => "guest reset (reboot ends the VM)",
            ExitReason::TripleFault => "guest triple fault",
            ExitReason::Snapshotted => "guest paused and taken (its snapshot is written)",
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

/// The files a VMM works with, opened by the runtime.
#[derive(Debug)]
pub struct VmFiles {
    /// /dev/kvm.
    pub kvm: OwnedFd,
    pub kernel: OwnedFd,
    pub initramfs: Option<OwnedFd>,
    /// In the order of `VmConfig::disks`.
    pub disks: Vec<OwnedFd>,
    /// The TAPs, already on their bridges and up, in the order of `VmConfig::nets`.
    pub taps: Vec<OwnedFd>,
    /// With `VmConfig::snapshot`: guest memory's file (as big as the guest's memory) and
    /// the state file (written by a Take, read by a Restore).
    pub snapshot: Option<(OwnedFd, OwnedFd)>,
}

/// The most files one configuration carries: /dev/kvm, kernel, initramfs, the TAPs (at
/// most 5: eth0 and 4 attachments) and the disks (the runtime allows at most 16).
const MAX_FILES: usize = 32;

impl VmFiles {
    fn into_vec(self) -> Vec<OwnedFd> {
        let mut v = vec![self.kvm, self.kernel];
        v.extend(self.initramfs);
        v.extend(self.disks);
        v.extend(self.taps);
        if let Some((memory, state)) = self.snapshot {
            v.extend([memory, state]);
        }
        v
    }

    /// The files in the order `into_vec` put them, as `cfg` says which are there.
    fn from_vec(cfg: &super::VmConfig, fds: Vec<OwnedFd>) -> Result<VmFiles, ConfigError> {
        let want = 2
            + usize::from(cfg.initramfs.is_some())
            + cfg.disks.len()
            + cfg.nets.len()
            + 2 * usize::from(cfg.snapshot.is_some());
        if fds.len() != want {
            return Err(ConfigError::Files { got: fds.len(), want });
        }
        let mut it = fds.into_iter();
        let mut next = || it.next().ok_or(ConfigError::Missing);
        Ok(VmFiles {
            kvm: next()?,
            kernel: next()?,
            initramfs: cfg.initramfs.as_ref().map(|_| next()).transpose()?,
            disks: cfg.disks.iter().map(|_| next()).collect::<Result<_, _>>()?,
            taps: cfg.nets.iter().map(|_| next()).collect::<Result<_, _>>()?,
            snapshot: match cfg.snapshot {
                Some(_) => Some((next()?, next()?)),
                None => None,
            },
        })
    }
}

/// Sends the configuration with its files (blocking; the socket is fresh and the line
/// small). The files are closed here once sent: the VMM holds the only copies, so a TAP
/// goes away with it.
pub fn send_config(sock: &UnixStream, cfg: &super::VmConfig, files: VmFiles) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let line = encode(cfg);
    let fds = files.into_vec();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < line.len() {
        let iov = [std::io::IoSlice::new(&line[sent..])];
        let cmsgs = if sent == 0 {
            vec![ControlMessage::ScmRights(&raw)]
        } else {
            Vec::new()
        };
        sent += sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The control socket (fd `CONTROL_FD`), taken once by the VMM's `main`.
pub fn control_socket() -> UnixStream {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 3 is the control socket the runtime set up for this process before execve;
    // nothing else in this process owns it, and main takes it once.
    unsafe { UnixStream::from_raw_fd(CONTROL_FD) }
}

/// Why the VMM has no configuration to run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{got} files came with the configuration, {want} expected")]
    Files { got: usize, want: usize },
    #[error("a file is missing")]
    Missing,
    #[error("the configuration is longer than 64 KiB")]
    TooLong,
    #[error("control socket: {0}")]
    Socket(nix::errno::Errno),
    #[error("no configuration on the control socket")]
    Empty,
    #[error("bad configuration: {0}")]
    Bad(Malformed),
}

/// Receives the configuration and its files (the VMM's side).
pub fn recv_config(sock: &UnixStream) -> Result<(super::VmConfig, VmFiles), ConfigError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut line = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') {
        if line.len() > 64 << 10 {
            return Err(ConfigError::TooLong);
        }
        let mut space = nix::cmsg_space!([RawFd; MAX_FILES]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(ConfigError::Socket)?;
        for c in msg.cmsgs().map_err(ConfigError::Socket)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors in this process for us.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(ConfigError::Empty);
        }
        line.extend_from_slice(&buf[..n]);
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    let cfg: super::VmConfig = decode(&line[..end]).map_err(ConfigError::Bad)?;
    let files = VmFiles::from_vec(&cfg, fds)?;
    Ok((cfg, files))
}

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
            nets: Vec::new(),
            disks: vec![super::super::DiskConfig {
                path: "/var/a.img".into(),
                read_only: true,
            }],
            jail_uid: 200_000,
            snapshot: None,
        };
        let back: super::super::VmConfig = decode(encode(&c).trim_ascii_end()).unwrap();
        assert_eq!(back.disks[0].path, "/var/a.img");
        assert_eq!(back.memory_bytes, 64 << 20);
    }

    #[test]
    fn files_travel_with_the_configuration_in_order() {
        let c = super::super::VmConfig {
            kernel: "k".into(),
            initramfs: Some("i".into()),
            cmdline: "x".repeat(6000),
            vcpus: 1,
            memory_bytes: 64 << 20,
            nets: Vec::new(),
            disks: vec![super::super::DiskConfig {
                path: "d".into(),
                read_only: false,
            }],
            jail_uid: 200_001,
            snapshot: None,
        };
        let file = |text: &str| {
            let mut f = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
            OwnedFd::from(f)
        };
        let files = VmFiles {
            kvm: file("kvm"),
            kernel: file("kernel"),
            initramfs: Some(file("initramfs")),
            disks: vec![file("disk")],
            taps: Vec::new(),
            snapshot: None,
        };
        let (a, b) = UnixStream::pair().unwrap();
        send_config(&a, &c, files).unwrap();
        let (back, got) = recv_config(&b).unwrap();
        assert_eq!(back.cmdline.len(), 6000, "a line longer than one read");
        let read = |fd: OwnedFd| {
            let mut f = std::fs::File::from(fd);
            let mut s = String::new();
            std::io::Seek::rewind(&mut f).unwrap();
            std::io::Read::read_to_string(&mut f, &mut s).unwrap();
            s
        };
        assert_eq!(read(got.kvm), "kvm");
        assert_eq!(read(got.kernel), "kernel");
        assert_eq!(read(got.initramfs.unwrap()), "initramfs");
        assert_eq!(read(got.disks.into_iter().next().unwrap()), "disk");
        // A configuration whose files do not match is refused.
        let (a, b) = UnixStream::pair().unwrap();
        let one = VmFiles {
            kvm: file("kvm"),
            kernel: file("kernel"),
            initramfs: None,
            disks: Vec::new(),
            taps: Vec::new(),
            snapshot: None,
        };
        send_config(&a, &c, one).unwrap();
        assert!(recv_config(&b).unwrap_err().to_string().contains("2 files came"));
    }
}
