//! auraed's VMM as a process, jail and all, on this machine's own /dev/kvm (the CI machines
//! have one; it runs a small guest at a usable speed, not a kernel): a template taken when
//! its guest asks, then restored in a second VMM that goes on where the first stopped.
//!
//! The guest (64-bit, loaded as an ELF "kernel", hand-assembled below) prints "A", counts
//! to 50 in %rbx and in memory, writes SNAPSHOT to the power port, then prints "Y" if both
//! counts are still 50 (else "N") and powers off. It has two vCPUs: the second waits for a
//! SIPI inside KVM_RUN, so the pause must kick it out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use auraed::roles::{vmm_protocol as protocol, SnapshotRole, VmConfig};
use std::io::{BufRead, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;

/// The guest, as `as --64` assembled it (source in the comment of each line group).
const GUEST: [u8; 88] = [
    0x66, 0xba, 0xf8, 0x03, // mov $0x3f8, %dx
    0xb0, 0x41, 0xee, // mov $'A', %al; out %al, %dx
    0xb0, 0x0a, 0xee, // mov $10, %al; out %al, %dx
    0xb9, 0x32, 0x00, 0x00, 0x00, // mov $50, %ecx
    0x48, 0xff, 0xc3, // 1: inc %rbx
    0x48, 0xff, 0x05, 0x37, 0x00, 0x00, 0x00, // incq counter(%rip)
    0xe2, 0xf4, // loop 1b
    0x66, 0xba, 0x00, 0x06, 0xb0, 0x03, 0xee, // mov $0x600, %dx; mov $3, %al; out: take me
    0x66, 0xba, 0xf8, 0x03, // mov $0x3f8, %dx
    0x48, 0x83, 0xfb, 0x32, 0x75, 0x0e, // cmp $50, %rbx; jne 2f
    0x48, 0x83, 0x3d, 0x1c, 0x00, 0x00, 0x00, 0x32, 0x75, 0x04, // cmpq $50, counter(%rip); jne 2f
    0xb0, 0x59, 0xeb, 0x02, // mov $'Y', %al; jmp 3f
    0xb0, 0x4e, // 2: mov $'N', %al
    0xee, 0xb0, 0x0a, 0xee, // 3: out; mov $10, %al; out
    0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, // mov $0x600, %dx; mov $1, %al; out: power off
    0xf4, 0xeb, 0xfd, // 4: hlt; jmp 4b
    0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, // padding to 8
    0, 0, 0, 0, 0, 0, 0, 0, // counter: .quad 0
];
const LOAD: u64 = 0x10_0000;
const MEMORY: u64 = 64 << 20;

/// A one-segment ELF64 executable of `code` at `LOAD`, entered at its start.
fn elf(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..16].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let put = |f: &mut Vec<u8>, at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &0x3eu16.to_le_bytes()); // x86-64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &LOAD.to_le_bytes()); // entry
    put(&mut f, 32, &64u64.to_le_bytes()); // program headers right after this one
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &1u16.to_le_bytes());
    put(&mut f, 58, &64u16.to_le_bytes());
    let ph = 64;
    put(&mut f, ph, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut f, ph + 4, &7u32.to_le_bytes()); // RWX: the counter is in it
    put(&mut f, ph + 8, &0x1000u64.to_le_bytes());
    put(&mut f, ph + 16, &LOAD.to_le_bytes());
    put(&mut f, ph + 24, &LOAD.to_le_bytes());
    put(&mut f, ph + 32, &(code.len() as u64).to_le_bytes());
    put(&mut f, ph + 40, &(code.len() as u64).to_le_bytes());
    put(&mut f, ph + 48, &0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

fn file_with(bytes: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    f
}

struct Ran {
    events: Vec<protocol::Event>,
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

/// Runs auraed as `aurae-vmm` with `cfg` and `files` to its end.
fn vmm(cfg: &VmConfig, files: protocol::VmFiles) -> Ran {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_auraed"));
    cmd.arg0("aurae-vmm")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: between fork and exec only dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || match libc::dup2(fd, protocol::CONTROL_FD) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    protocol::send_config(&ours, cfg, files).unwrap();
    let mut events = Vec::new();
    for line in std::io::BufReader::new(&ours).lines() {
        let Ok(line) = line else { break };
        events.push(protocol::decode::<protocol::Event>(line.as_bytes()).unwrap());
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let code = child.wait().unwrap().code();
    Ran {
        events,
        stdout,
        stderr,
        code,
    }
}

fn config(role: SnapshotRole) -> VmConfig {
    VmConfig {
        kernel: "guest.elf".into(),
        initramfs: None,
        cmdline: "console=ttyS0".into(),
        vcpus: 2,
        memory_bytes: MEMORY,
        nets: Vec::new(),
        disks: Vec::new(),
        jail_uid: 200_123,
        snapshot: Some(role),
    }
}

fn files(kernel: &std::fs::File, memory: &OwnedFd, state: std::fs::File) -> protocol::VmFiles {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("/dev/kvm (the CI machines have one; the host tier runs as root)");
    protocol::VmFiles {
        kvm: kvm.into(),
        kernel: kernel.try_clone().unwrap().into(),
        initramfs: None,
        disks: Vec::new(),
        taps: Vec::new(),
        snapshot: Some((memory.try_clone().unwrap(), state.into())),
    }
}

fn memfd() -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&fd, MEMORY as i64).unwrap();
    fd
}

#[test]
fn a_template_is_taken_when_its_guest_asks_and_a_restored_copy_goes_on_from_there() {
    let kernel = file_with(&elf(&GUEST));
    let memory = memfd();
    let state = tempfile::NamedTempFile::new().unwrap();

    let took = vmm(
        &config(SnapshotRole::Take),
        files(&kernel, &memory, state.reopen().unwrap()),
    );
    assert_eq!(
        took.events,
        [
            protocol::Event::Ready {
                vcpus: 2,
                memory_bytes: MEMORY,
                tap: None
            },
            protocol::Event::Exit {
                reason: protocol::ExitReason::Snapshotted
            }
        ],
        "stderr: {}",
        took.stderr
    );
    assert_eq!((took.stdout.as_str(), took.code), ("A\n", Some(0)), "{}", took.stderr);
    let written = std::fs::read(state.path()).unwrap();
    assert_eq!(&written[..8], b"AURAESNP", "the state file was written");

    // Restored twice from the same files: each goes on from the request, with its count
    // intact, and powers off; neither changes the template's memory.
    for n in 0..2 {
        let began = std::time::Instant::now();
        let copy = vmm(
            &config(SnapshotRole::Restore),
            files(&kernel, &memory, state.reopen().unwrap()),
        );
        eprintln!(
            "copy {n}: exec → restored → powered off in {:?} (a debug build; state file {} bytes)",
            began.elapsed(),
            written.len()
        );
        assert_eq!(
            copy.events.last(),
            Some(&protocol::Event::Exit {
                reason: protocol::ExitReason::PowerOff
            }),
            "copy {n}: {:?}\n{}",
            copy.events,
            copy.stderr
        );
        assert_eq!(
            copy.stdout, "Y\n",
            "copy {n} went on where the template stopped: {}",
            copy.stderr
        );
    }

    // A state file for another machine shape, or damaged, is refused before anything runs.
    let mut other = config(SnapshotRole::Restore);
    other.vcpus = 1;
    let refused = vmm(&other, files(&kernel, &memory, state.reopen().unwrap()));
    match refused.events.as_slice() {
        [protocol::Event::Error { message }] => {
            assert!(message.contains("a machine of 2 vCPUs"), "{message}")
        }
        other => panic!("{other:?}\n{}", refused.stderr),
    }
    let mut damaged = written.clone();
    let last = damaged.len() - 2;
    damaged[last] ^= 0x20;
    let refused = vmm(
        &config(SnapshotRole::Restore),
        files(&kernel, &memory, file_with(&damaged)),
    );
    match refused.events.as_slice() {
        [protocol::Event::Error { message }] => assert!(message.contains("checksum"), "{message}"),
        other => panic!("{other:?}\n{}", refused.stderr),
    }
}
