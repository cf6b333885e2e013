//! A paused machine's state, as a file (issue #28): its vCPUs and in-kernel devices as
//! KVM gives them, its port and virtio devices as the VMM models them. Guest memory is a
//! file of its own, which a restoring VMM maps copy-on-write. This is the state file:
//!
//! ```text
//!  0  magic "AURAESNP"
//!  8  format version, u32 LE (`VERSION`)
//! 12  reserved, zero
//! 16  body length, u64 LE (at most `MAX_BODY`)
//! 24  SHA-256 of the body
//! 56  body: the `VmSnapshot` as JSON
//! ```
//!
//! The checksum finds a file damaged or changed after it was written. It cannot stop a
//! hostile file (anyone who can write it can hash it), so a file whose checksum holds is
//! still checked field by field (`VmSnapshot::check`) before a VMM acts on it: sizes and
//! counts within what the VMM makes, every virtqueue inside guest memory. KVM checks the
//! register state it is given itself. Every refusal says why; none panics (the property
//! tests below feed it truncations, flipped bits and hostile bodies with good checksums).

pub mod kvm;
pub mod take;

use super::{i8042, virtio_mmio};
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
pub use virtio_mmio::{QueueState, TransportState};

pub const MAGIC: &[u8; 8] = b"AURAESNP";
pub const VERSION: u32 = 1;
const HEADER: usize = 56;
/// Far above a 32-vCPU machine's state (about 40 KiB of JSON a vCPU).
pub const MAX_BODY: u64 = 8 << 20;
/// KVM's own bounds on what one vCPU's MSR and CPUID lists hold.
const MAX_MSRS: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;
const MAX_CPUID: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// The 16550's receive FIFO, and the i8042's output buffer as the model bounds it.
const MAX_SERIAL_IN: usize = 64;
const MAX_KBD_OUT: usize = 16;
/// A virtio device here has at most two queues (virtio-net's rx and tx).
const MAX_QUEUES: usize = 2;

/// Why a snapshot is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not an Aurae VM snapshot: it does not begin with \"AURAESNP\"")]
    NotASnapshot,
    #[error("snapshot format version {got}; this auraed reads version {want}: take the snapshot again")]
    Version { got: u32, want: u32 },
    #[error("truncated: {have} bytes, and its header says {need}")]
    Truncated { have: u64, need: u64 },
    #[error("its body is {0} bytes, more than a snapshot holds ({MAX_BODY})")]
    TooLarge(u64),
    #[error("its checksum does not match: the file was changed or damaged after it was written")]
    Checksum,
    #[error("its state does not parse: {0}")]
    Malformed(String),
    #[error("made by auraed {got}, and this is auraed {want}: the device models may differ; take it again")]
    MadeBy { got: String, want: String },
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// The whole machine but its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The auraed (and so VMM) version that took it: only the same one restores it.
    pub made_by: String,
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DevicesState,
}

/// One vCPU as KVM holds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
}

impl Clone for VcpuState {
    fn clone(&self) -> VcpuState {
        VcpuState {
            cpuid: self.cpuid.clone(),
            regs: self.regs,
            sregs: self.sregs,
            // kvm_xsave has no Clone (a flexible array member): its fixed region is all
            // KVM_GET_XSAVE gives.
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            xcrs: self.xcrs,
            msrs: self.msrs.clone(),
            lapic: self.lapic,
            mp_state: self.mp_state,
            events: self.events,
            debugregs: self.debugregs,
        }
    }
}

/// The VM-wide in-kernel devices and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The devices the VMM models.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesState {
    #[serde(with = "SerialDef")]
    pub serial: vm_superio::serial::SerialState,
    pub kbd: i8042::State,
    /// By slot: the NICs first, then the disks, as the configuration lists them.
    pub mmio: Vec<TransportState>,
}

/// vm-superio's 16550 state, kept as its own fields (serde's remote derive: the crate
/// has no serde of its own).
#[derive(Serialize, Deserialize)]
#[serde(remote = "vm_superio::serial::SerialState")]
struct SerialDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

impl QueueState {
    /// The three parts of a ready split queue of `size` entries: (field, address, bytes).
    fn parts(&self) -> [(&'static str, u64, u64); 3] {
        let n = u64::from(self.size);
        [
            ("desc_table", self.desc_table, 16 * n),
            ("avail_ring", self.avail_ring, 6 + 2 * n),
            ("used_ring", self.used_ring, 6 + 8 * n),
        ]
    }
}

impl VmSnapshot {
    /// Whether a VMM may act on it: every size and count within what the VMM makes, every
    /// queue inside guest memory. `made_by` is checked by `decode`.
    pub fn check(&self) -> Result<(), SnapshotError> {
        let m = self.memory_bytes;
        if !(super::MIN_MEMORY..=super::MAX_MEMORY).contains(&m) || !m.is_multiple_of(4096) {
            return Err(invalid(
                "memory_bytes",
                format!(
                    "{m}: a machine has {}..={} bytes, whole pages",
                    super::MIN_MEMORY,
                    super::MAX_MEMORY
                ),
            ));
        }
        let n = self.vcpus.len();
        if n == 0 || n > super::MAX_VCPUS as usize {
            return Err(invalid("vcpus", format!("{n}: a machine has 1..={}", super::MAX_VCPUS)));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.msrs.len() > MAX_MSRS {
                return Err(invalid(
                    format!("vcpus[{i}].msrs"),
                    format!("{} entries, at most {MAX_MSRS}", v.msrs.len()),
                ));
            }
            if v.cpuid.is_empty() || v.cpuid.len() > MAX_CPUID {
                return Err(invalid(
                    format!("vcpus[{i}].cpuid"),
                    format!("{} entries, 1..={MAX_CPUID}", v.cpuid.len()),
                ));
            }
        }
        let d = &self.devices;
        if d.serial.in_buffer.len() > MAX_SERIAL_IN {
            return Err(invalid(
                "devices.serial.in_buffer",
                format!("{} bytes, a FIFO holds {MAX_SERIAL_IN}", d.serial.in_buffer.len()),
            ));
        }
        if d.kbd.out.len() > MAX_KBD_OUT {
            return Err(invalid(
                "devices.kbd.out",
                format!("{} bytes wait to be read, at most {MAX_KBD_OUT}", d.kbd.out.len()),
            ));
        }
        if let Some(c) = d.kbd.pending.filter(|c| !i8042::takes_parameter(*c)) {
            return Err(invalid(
                "devices.kbd.pending",
                format!("command {c:#x} takes no parameter"),
            ));
        }
        if d.mmio.len() > virtio_mmio::MAX_DEVICES {
            return Err(invalid(
                "devices.mmio",
                format!("{} devices, at most {}", d.mmio.len(), virtio_mmio::MAX_DEVICES),
            ));
        }
        for (s, t) in d.mmio.iter().enumerate() {
            if t.queues.len() > MAX_QUEUES {
                return Err(invalid(
                    format!("devices.mmio[{s}].queues"),
                    format!("{}, at most {MAX_QUEUES}", t.queues.len()),
                ));
            }
            for (k, q) in t.queues.iter().enumerate() {
                check_queue(q, m, &format!("devices.mmio[{s}].queues[{k}]"))?;
            }
        }
        Ok(())
    }
}

/// A queue the transport could have made (its maximum, a size the driver may pick), and
/// when ready, each of its parts inside guest memory; errors name `field`.
fn check_queue(q: &QueueState, memory: u64, field: &str) -> Result<(), SnapshotError> {
    if q.max_size != virtio_mmio::QUEUE_MAX {
        return Err(invalid(
            field,
            format!(
                "max_size {}; the VMM's queues have {}",
                q.max_size,
                virtio_mmio::QUEUE_MAX
            ),
        ));
    }
    if q.size > q.max_size || (q.size != 0 && !q.size.is_power_of_two()) {
        return Err(invalid(
            field,
            format!("size {}: a power of two up to {}", q.size, q.max_size),
        ));
    }
    if q.ready {
        if q.size == 0 {
            return Err(invalid(field, "ready with no size"));
        }
        for (part, at, len) in q.parts() {
            if at.checked_add(len).is_none_or(|end| end > memory) {
                return Err(invalid(
                    field,
                    format!("{part} at {at:#x} ({len} bytes) is outside guest memory ({memory} bytes)"),
                ));
            }
        }
    }
    Ok(())
}

/// The state file for `s`.
pub fn encode(s: &VmSnapshot) -> Vec<u8> {
    // Plain data: serializing it cannot fail; an empty body would be refused on restore.
    let body = serde_json::to_vec(s).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha2::Sha256::digest(&body));
    out.extend_from_slice(&body);
    out
}

/// The machine in state file `bytes`, made by auraed `version`, once it has been checked.
pub fn decode(bytes: &[u8], version: &str) -> Result<VmSnapshot, SnapshotError> {
    let have = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let Some(head) = bytes.get(..HEADER) else {
        return Err(SnapshotError::Truncated {
            have,
            need: HEADER as u64,
        });
    };
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let got = word(8);
    if got != VERSION {
        return Err(SnapshotError::Version { got, want: VERSION });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[16..24]);
    let len = u64::from_le_bytes(len);
    if len > MAX_BODY {
        return Err(SnapshotError::TooLarge(len));
    }
    let need = HEADER as u64 + len;
    if have != need {
        return Err(SnapshotError::Truncated { have, need });
    }
    let body = &bytes[HEADER..];
    if sha2::Sha256::digest(body).as_slice() != &head[24..HEADER] {
        return Err(SnapshotError::Checksum);
    }
    let s: VmSnapshot = serde_json::from_slice(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if s.made_by != version {
        return Err(SnapshotError::MadeBy {
            got: s.made_by,
            want: version.to_owned(),
        });
    }
    s.check()?;
    Ok(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A plausible two-vCPU machine of 128 MiB with a NIC whose queues are set up.
    pub(crate) fn sample() -> VmSnapshot {
        let vcpu = VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 0x806f8,
                ..Default::default()
            }],
            regs: kvm_regs {
                rip: 0x1000_0000,
                rsp: 0x8000,
                rflags: 2,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x4b56_4d01,
                data: 0x1234,
                ..Default::default()
            }],
            lapic: Default::default(),
            mp_state: Default::default(),
            events: Default::default(),
            debugregs: Default::default(),
        };
        let queue = |at: u64| QueueState {
            max_size: virtio_mmio::QUEUE_MAX,
            size: 256,
            ready: true,
            next_avail: 7,
            next_used: 7,
            event_idx: false,
            desc_table: at,
            avail_ring: at + 0x1000,
            used_ring: at + 0x2000,
        };
        VmSnapshot {
            made_by: "0.1.0".into(),
            memory_bytes: 128 << 20,
            vcpus: vec![vcpu.clone(), vcpu],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: kvm_clock_data {
                    clock: 123_456_789,
                    ..Default::default()
                },
            },
            devices: DevicesState {
                serial: vm_superio::serial::SerialState {
                    line_status: 0x60,
                    in_buffer: b"ok".to_vec(),
                    ..Default::default()
                },
                kbd: i8042::State::default(),
                mmio: vec![TransportState {
                    device_id: 1,
                    features: virtio_mmio::VIRTIO_F_VERSION_1 | 0x20,
                    driver_features: virtio_mmio::VIRTIO_F_VERSION_1,
                    status: 0xf,
                    queues: vec![queue(0x10_0000), queue(0x20_0000)],
                    ..Default::default()
                }],
            },
        }
    }

    #[test]
    fn a_snapshot_round_trips_every_field_kvm_gave() {
        let s = sample();
        let file = encode(&s);
        assert_eq!(&file[..8], MAGIC);
        let back = decode(&file, "0.1.0").unwrap();
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.vcpus[1].regs.rip, 0x1000_0000);
        assert_eq!(back.vcpus[0].msrs[0].data, 0x1234);
        assert_eq!(back.vcpus[0].cpuid[0].eax, 0x806f8);
        assert_eq!(back.vm.clock.clock, 123_456_789);
        assert_eq!(back.devices.mmio, s.devices.mmio);
        assert_eq!(back.devices.serial, s.devices.serial);
        assert_eq!(encode(&back), file, "nothing lost or added");
    }

    /// `file` with its body replaced by `body` and the checksum made to match: what an
    /// attacker who can write the file makes.
    fn resealed(body: &[u8]) -> Vec<u8> {
        let mut out = encode(&sample())[..HEADER].to_vec();
        out[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        out[24..HEADER].copy_from_slice(&sha2::Sha256::digest(body));
        out.extend_from_slice(body);
        out
    }

    fn with(f: impl FnOnce(&mut VmSnapshot)) -> Result<VmSnapshot, SnapshotError> {
        let mut s = sample();
        f(&mut s);
        decode(&resealed(&serde_json::to_vec(&s).unwrap()), "0.1.0")
    }

    #[test]
    fn each_refusal_says_why() {
        let file = encode(&sample());
        assert_eq!(decode(b"", "0.1.0").unwrap_err(), SnapshotError::NotASnapshot);
        assert_eq!(
            decode(b"\x7fELF....", "0.1.0").unwrap_err(),
            SnapshotError::NotASnapshot
        );
        let mut v2 = file.clone();
        v2[8] = 2;
        let e = decode(&v2, "0.1.0").unwrap_err();
        assert_eq!(e, SnapshotError::Version { got: 2, want: 1 });
        assert!(e.to_string().contains("take the snapshot again"), "{e}");
        let e = decode(&file[..file.len() - 1], "0.1.0").unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        let e = decode(&file[..20], "0.1.0").unwrap_err();
        assert_eq!(e, SnapshotError::Truncated { have: 20, need: 56 });
        let mut big = file.clone();
        big[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&big, "0.1.0").unwrap_err(), SnapshotError::TooLarge(u64::MAX));
        let mut flipped = file.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped, "0.1.0").unwrap_err(), SnapshotError::Checksum);
        let e = decode(&file, "0.2.0").unwrap_err();
        assert!(
            e.to_string().contains("made by auraed 0.1.0, and this is auraed 0.2.0"),
            "{e}"
        );
        assert!(matches!(
            decode(&resealed(b"{\"made_by\": 1}"), "0.1.0").unwrap_err(),
            SnapshotError::Malformed(_)
        ));
    }

    /// A body with a good checksum is still checked: what would make the VMM reach outside
    /// guest memory, or hold more than it makes, is refused naming the field.
    #[test]
    fn a_hostile_body_with_a_good_checksum_is_refused_naming_the_field() {
        let field = |r: Result<VmSnapshot, SnapshotError>| match r {
            Err(SnapshotError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(with(|s| s.memory_bytes = 1 << 40)), "memory_bytes");
        assert_eq!(field(with(|s| s.memory_bytes += 1)), "memory_bytes");
        assert_eq!(field(with(|s| s.vcpus.clear())), "vcpus");
        assert_eq!(field(with(|s| s.vcpus = vec![s.vcpus[0].clone(); 33])), "vcpus");
        assert_eq!(
            field(with(|s| s.vcpus[1].msrs = vec![Default::default(); MAX_MSRS + 1])),
            "vcpus[1].msrs"
        );
        assert_eq!(field(with(|s| s.vcpus[0].cpuid.clear())), "vcpus[0].cpuid");
        assert_eq!(
            field(with(|s| s.devices.serial.in_buffer = vec![0; 65])),
            "devices.serial.in_buffer"
        );
        assert_eq!(
            field(with(|s| s.devices.mmio = vec![Default::default(); 20])),
            "devices.mmio"
        );
        let q = "devices.mmio[0].queues[1]";
        assert_eq!(
            field(with(|s| s.devices.mmio[0].queues[1].used_ring = (128 << 20) - 8)),
            q
        );
        assert_eq!(
            field(with(|s| s.devices.mmio[0].queues[1].desc_table = u64::MAX - 4)),
            q
        );
        assert_eq!(field(with(|s| s.devices.mmio[0].queues[1].size = 100)), q);
        assert_eq!(field(with(|s| s.devices.mmio[0].queues[1].max_size = 4096)), q);
        assert_eq!(
            field(with(|s| s.devices.mmio[0].queues.push(Default::default()))),
            "devices.mmio[0].queues"
        );
        assert_eq!(
            field(with(|s| s.devices.kbd = i8042::State::hostile_for_tests())),
            "devices.kbd.out"
        );
        assert_eq!(
            field(with(|s| s.devices.kbd.pending = Some(0xaa))),
            "devices.kbd.pending"
        );
        // A queue not yet ready may point anywhere: the driver has not given it memory.
        assert!(with(|s| {
            let q = &mut s.devices.mmio[0].queues[0];
            q.ready = false;
            q.desc_table = u64::MAX;
        })
        .is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any damage to the file: refused, never a panic.
        #[test]
        fn a_damaged_file_is_refused(cut in 0usize..4096, at in 0usize..1 << 16, bit in 0u8..8) {
            let file = encode(&sample());
            let cut = cut.min(file.len() - 1);
            prop_assert!(decode(&file[..file.len() - 1 - cut], "0.1.0").is_err());
            let mut flipped = file.clone();
            let at = at % file.len();
            flipped[at] ^= 1 << bit;
            prop_assert!(decode(&flipped, "0.1.0").is_err());
        }

        /// A hostile body that hashes right: it parses and passes the checks, or it is
        /// refused; never a panic.
        #[test]
        fn a_resealed_hostile_body_never_panics(
            at in 0usize..1 << 16,
            bytes in proptest::collection::vec(any::<u8>(), 1..16),
            junk in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut body = serde_json::to_vec(&sample()).unwrap();
            let at = at % body.len();
            let end = (at + bytes.len()).min(body.len());
            body[at..end].copy_from_slice(&bytes[..end - at]);
            if let Ok(s) = decode(&resealed(&body), "0.1.0") {
                prop_assert!(s.check().is_ok());
            }
            prop_assert!(decode(&resealed(&junk), "0.1.0").is_err());
        }

        /// Numbers a hostile file may hold in the queue fields: accepted only inside memory.
        #[test]
        fn queues_are_accepted_only_inside_guest_memory(
            size in prop_oneof![Just(0u16), Just(1), Just(64), Just(256), Just(257), any::<u16>()],
            desc in any::<u64>(), avail in any::<u64>(), used in any::<u64>(),
        ) {
            let r = with(|s| {
                let q = &mut s.devices.mmio[0].queues[0];
                (q.size, q.desc_table, q.avail_ring, q.used_ring) = (size, desc, avail, used);
            });
            if let Ok(s) = r {
                let q = &s.devices.mmio[0].queues[0];
                for (_, at, len) in q.parts() {
                    prop_assert!(at.checked_add(len).is_some_and(|e| e <= s.memory_bytes));
                }
                prop_assert!(q.size.is_power_of_two() && q.size <= 256);
            }
        }
    }
}
