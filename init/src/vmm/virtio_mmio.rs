//! The virtio-mmio transport (virtio 1.x, register layout version 2) shared by the VMM's
//! virtio devices: feature negotiation, queue setup, status and interrupt registers. The
//! device-specific parts (config space, what a queue notification does) stay in each device.

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// Each device gets a 4 KiB window from here on, and IRQ `FIRST_IRQ + slot`.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
pub const FIRST_IRQ: u32 = 5;
/// IO-APIC pins 5..=23 minus nothing else in use: 19 device slots.
pub const MAX_DEVICES: usize = 19;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const QUEUE_MAX: u16 = 256;

pub fn slot_base(slot: usize) -> u64 {
    MMIO_BASE + slot as u64 * MMIO_SIZE
}

pub fn slot_irq(slot: usize) -> u32 {
    FIRST_IRQ + slot as u32
}

/// The kernel parameter that tells the guest where a device is.
pub fn cmdline_param(slot: usize) -> String {
    format!("virtio_mmio.device=4K@{:#x}:{}", slot_base(slot), slot_irq(slot))
}

/// Why a virtio device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("the snapshot has {0}")]
    Restore(String),
}

/// A device behind an MMIO window (offsets are relative to its base).
pub trait MmioDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
    /// Its transport (what a snapshot keeps of it).
    fn transport(&self) -> &std::sync::Mutex<Transport>;
}

/// A virtio-mmio transport: what the driver negotiated and set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_id: u32,
    pub features: u64,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub status: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueState>,
}

/// A split virtqueue (virtio-queue's `QueueState`, which has no serde of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// What a register write asks the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    /// The driver put buffers on this queue.
    Notify(usize),
    /// The driver made this queue ready.
    Ready(usize),
}

pub struct Transport {
    pub queues: Vec<Queue>,
    device_id: u32,
    features: u64,
    queue_sel: usize,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

fn put(data: &mut [u8], bytes: &[u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(i).copied().unwrap_or(0);
    }
}

impl Transport {
    pub fn new(device_id: u32, features: u64, queues: usize) -> Result<Transport, DeviceError> {
        let queues = (0..queues)
            .map(|_| Queue::new(QUEUE_MAX))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Transport {
            queues,
            device_id,
            features: features | VIRTIO_F_VERSION_1,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        })
    }

    /// A register read; `config` is the device's configuration space (offset 0x100 on).
    pub fn read(&self, offset: u64, data: &mut [u8], config: &[u8]) {
        if offset >= 0x100 {
            let at = (offset - 0x100) as usize;
            put(data, config.get(at..).unwrap_or(&[]));
            return;
        }
        let q = self.queues.get(self.queue_sel);
        let v: u32 = match offset {
            0x00 => 0x7472_6976, // "virt"
            0x04 => 2,
            0x08 => self.device_id,
            0x0c => 0x4155_5241, // "AURA"
            0x10 => match self.device_features_sel {
                0 => self.features as u32,
                1 => (self.features >> 32) as u32,
                _ => 0,
            },
            0x34 => q.map_or(0, |q| u32::from(q.max_size())),
            0x44 => q.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt_status,
            0x70 => self.status,
            _ => 0, // includes ConfigGeneration: the config never changes
        };
        put(data, &v.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Event {
        if offset >= 0x100 {
            return Event::None;
        }
        let mut b = [0u8; 4];
        put(&mut b, data);
        let v = u32::from_le_bytes(b);
        let sel = self.queue_sel;
        let q = self.queues.get_mut(sel);
        match (offset, q) {
            (0x14, _) => self.device_features_sel = v,
            (0x20, _) if self.driver_features_sel <= 1 => {
                let shift = 32 * self.driver_features_sel;
                self.driver_features |= (u64::from(v) << shift) & self.features;
            }
            (0x24, _) => self.driver_features_sel = v,
            (0x30, _) => self.queue_sel = v as usize,
            (0x38, Some(q)) => q.set_size(v as u16),
            (0x44, Some(q)) => {
                q.set_ready(v == 1);
                if v == 1 {
                    return Event::Ready(sel);
                }
            }
            (0x50, _) => return Event::Notify(v as usize),
            (0x64, _) => self.interrupt_status &= !v,
            (0x70, _) => {
                if v == 0 {
                    self.queues.iter_mut().for_each(QueueT::reset);
                    self.driver_features = 0;
                    self.interrupt_status = 0;
                }
                self.status = v;
            }
            (0x80, Some(q)) => q.set_desc_table_address(Some(v), None),
            (0x84, Some(q)) => q.set_desc_table_address(None, Some(v)),
            (0x90, Some(q)) => q.set_avail_ring_address(Some(v), None),
            (0x94, Some(q)) => q.set_avail_ring_address(None, Some(v)),
            (0xa0, Some(q)) => q.set_used_ring_address(Some(v), None),
            (0xa4, Some(q)) => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
        Event::None
    }

    /// What a snapshot keeps of it.
    pub fn state(&self) -> TransportState {
        TransportState {
            device_id: self.device_id,
            features: self.features,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel as u32,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            status: self.status,
            interrupt_status: self.interrupt_status,
            queues: (self.queues.iter())
                .map(|q| {
                    let s = q.state();
                    QueueState {
                        max_size: s.max_size,
                        size: s.size,
                        ready: s.ready,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                        event_idx: s.event_idx_enabled,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                    }
                })
                .collect(),
        }
    }

    /// Takes the state `s` (checked: `VmSnapshot::check`) of the same kind of device.
    pub fn restore(&mut self, s: &TransportState) -> Result<(), DeviceError> {
        if s.device_id != self.device_id || s.features != self.features || s.queues.len() != self.queues.len() {
            return Err(DeviceError::Restore(format!(
                "a device of kind {} with features {:#x} and {} queues, not kind {} with {:#x} and {}",
                s.device_id,
                s.features,
                s.queues.len(),
                self.device_id,
                self.features,
                self.queues.len()
            )));
        }
        let queues = (s.queues.iter())
            .map(|q| {
                Queue::try_from(virtio_queue::QueueState {
                    max_size: q.max_size,
                    next_avail: q.next_avail,
                    next_used: q.next_used,
                    event_idx_enabled: q.event_idx,
                    size: q.size,
                    ready: q.ready,
                    desc_table: q.desc_table,
                    avail_ring: q.avail_ring,
                    used_ring: q.used_ring,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.queues = queues;
        self.driver_features = s.driver_features & self.features;
        self.queue_sel = s.queue_sel as usize;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.status = s.status;
        self.interrupt_status = s.interrupt_status;
        Ok(())
    }

    /// Marks used buffers and raises the device's (edge) interrupt.
    pub fn signal(&mut self, irq: &EventFd) {
        self.interrupt_status |= 1;
        if let Err(e) = irq.write(1) {
            eprintln!("aurae-vmm: virtio irq: {e}");
        }
    }
}

/// Driving a device through its registers the way a guest driver does, for the device tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::MmioDevice;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    pub fn w32(dev: &dyn MmioDevice, offset: u64, v: u32) {
        dev.write(offset, &v.to_le_bytes());
    }

    pub fn r32(dev: &dyn MmioDevice, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A descriptor a hostile guest might post: anywhere (often inside a 4 MiB guest,
    /// sometimes beyond it), any length (often small), any flags.
    pub fn any_desc() -> impl proptest::strategy::Strategy<Value = virtio_queue::desc::RawDescriptor> {
        use proptest::prelude::*;
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        let wo = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        let addr = prop_oneof![3 => 0u64..(4 << 20), 1 => any::<u64>()];
        let len = prop_oneof![3 => 0u32..4096, 1 => any::<u32>()];
        (addr, len, prop_oneof![Just(0u16), Just(wo)])
            .prop_map(|(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)))
    }

    /// Register accesses (offset, width, value, write?) anywhere in a device's window.
    pub fn any_mmio_ops() -> impl proptest::strategy::Strategy<Value = Vec<(u64, usize, u64, bool)>> {
        use proptest::prelude::*;
        proptest::collection::vec((0u64..0x1100, 0usize..9, any::<u64>(), any::<bool>()), 1..64)
    }

    /// Makes the accesses `any_mmio_ops` drew.
    pub fn apply_mmio(dev: &dyn MmioDevice, ops: Vec<(u64, usize, u64, bool)>) {
        for (offset, width, value, write) in ops {
            let bytes = value.to_le_bytes();
            if write {
                dev.write(offset, &bytes[..width]);
            } else {
                let mut b = vec![0u8; width];
                dev.read(offset, &mut b);
            }
        }
    }

    /// Points queue `q` at the mock's rings and makes it ready.
    pub fn setup_queue(dev: &dyn MmioDevice, q: u32, mock: &MockSplitQueue<GuestMemoryMmap>, size: u16) {
        let lo_hi = |a: u64| (a as u32, (a >> 32) as u32);
        w32(dev, 0x30, q);
        w32(dev, 0x38, u32::from(size));
        for (reg, addr) in [
            (0x80, mock.desc_table_addr().0),
            (0x90, mock.avail_addr().0),
            (0xa0, mock.used_addr().0),
        ] {
            let (lo, hi) = lo_hi(addr);
            w32(dev, reg, lo);
            w32(dev, reg + 4, hi);
        }
        w32(dev, 0x44, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(t: &Transport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b, &[1, 2, 3]);
        u32::from_le_bytes(b)
    }

    fn set(t: &mut Transport, offset: u64, v: u32) -> Event {
        t.write(offset, &v.to_le_bytes())
    }

    #[test]
    fn identifies_itself_as_a_virtio_1_mmio_device() {
        let t = Transport::new(2, 1 << 5, 1).unwrap();
        assert_eq!(reg(&t, 0x00), 0x7472_6976, "magic 'virt'");
        assert_eq!(reg(&t, 0x04), 2, "register layout version 2");
        assert_eq!(reg(&t, 0x08), 2, "device id");
        assert_eq!(reg(&t, 0x34), 256, "queue size max");
    }

    #[test]
    fn the_driver_gets_only_features_the_device_offers() {
        let mut t = Transport::new(1, 1 << 5, 1).unwrap();
        set(&mut t, 0x14, 1);
        assert_eq!(reg(&t, 0x10), 1, "VERSION_1 in the high word");
        set(&mut t, 0x24, 0);
        set(&mut t, 0x20, u32::MAX);
        set(&mut t, 0x24, 1);
        set(&mut t, 0x20, u32::MAX);
        assert_eq!(t.driver_features, (1 << 5) | VIRTIO_F_VERSION_1, "unknown bits dropped");
        set(&mut t, 0x24, 7);
        set(&mut t, 0x20, u32::MAX);
        assert_eq!(
            t.driver_features,
            (1 << 5) | VIRTIO_F_VERSION_1,
            "a bogus select is ignored"
        );
    }

    #[test]
    fn a_hostile_queue_select_or_offset_is_harmless() {
        let mut t = Transport::new(1, 0, 2).unwrap();
        set(&mut t, 0x30, 999);
        assert_eq!(reg(&t, 0x34), 0, "no such queue: size 0");
        assert_eq!(set(&mut t, 0x44, 1), Event::None, "no such queue: cannot be made ready");
        set(&mut t, 0x38, 4096);
        set(&mut t, 0x80, 0xdead_beef);
        assert!(t.queues.iter().all(|q| !q.ready()));
        // Config space reads past its end are zeros; writes to it are ignored.
        let mut b = [0xffu8; 8];
        t.read(0x100 + 2, &mut b, &[1, 2, 3]);
        assert_eq!(b, [3, 0, 0, 0, 0, 0, 0, 0]);
        let mut far = [0xffu8; 4];
        t.read(u64::MAX, &mut far, &[1, 2, 3]);
        assert_eq!(far, [0; 4]);
        assert_eq!(set(&mut t, 0x100, 1), Event::None);
        assert_eq!(
            set(&mut t, 0x50, 7),
            Event::Notify(7),
            "the device ignores unknown queues"
        );
    }

    #[test]
    fn writing_status_zero_resets_queues_and_interrupts() {
        let mut t = Transport::new(1, 0, 1).unwrap();
        set(&mut t, 0x30, 0);
        assert_eq!(set(&mut t, 0x44, 1), Event::Ready(0));
        assert!(t.queues[0].ready());
        t.interrupt_status = 1;
        set(&mut t, 0x70, 0xf);
        assert_eq!(reg(&t, 0x70), 0xf);
        set(&mut t, 0x70, 0);
        assert!(!t.queues[0].ready());
        assert_eq!((reg(&t, 0x60), reg(&t, 0x70)), (0, 0));
    }
}
