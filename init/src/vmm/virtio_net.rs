//! virtio-net over virtio-mmio (virtio 1.x, "modern" transport, version 2), backed by a TAP.
//! Queues are split virtqueues handled by the `virtio-queue` crate. Features: VERSION_1 and
//! MAC only, so every frame carries the 12-byte `virtio_net_hdr_v1`, all zero on receive.
//!
//! TX runs on the vCPU thread that writes QueueNotify; RX runs on a thread of its own that
//! blocks on the TAP and waits (condvar) for the guest to post buffers when none are left.
//! Interrupts are edge-triggered through an irqfd.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// MMIO window of the device and its IRQ (see the `virtio_mmio.device=` parameter).
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
pub const IRQ: u32 = 5;
const QUEUE_MAX: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const HDR_LEN: usize = 12;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC;
const MAX_FRAME: usize = 65562;

/// The kernel parameter that tells the guest where the device is.
pub fn cmdline_param() -> String {
    format!("virtio_mmio.device=4K@{MMIO_BASE:#x}:{IRQ}")
}

struct State {
    queues: [Queue; 2],
    queue_sel: usize,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

pub struct VirtioNet {
    mem: Arc<GuestMemoryMmap>,
    tap: std::fs::File,
    mac: [u8; 6],
    irq: EventFd,
    state: Mutex<State>,
    /// Signalled when the guest posts RX buffers.
    rx_posted: Condvar,
}

fn new_queue() -> Result<Queue, String> {
    Queue::new(QUEUE_MAX).map_err(|e| format!("virtqueue: {e:?}"))
}

impl VirtioNet {
    pub fn new(mem: Arc<GuestMemoryMmap>, tap: OwnedFd, mac: [u8; 6], irq: EventFd) -> Result<Arc<VirtioNet>, String> {
        Ok(Arc::new(VirtioNet {
            mem,
            tap: tap.into(),
            mac,
            irq,
            state: Mutex::new(State {
                queues: [new_queue()?, new_queue()?],
                queue_sel: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                status: 0,
                interrupt_status: 0,
                config_generation: 0,
            }),
            rx_posted: Condvar::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn interrupt(&self, s: &mut State) {
        s.interrupt_status |= 1;
        if let Err(e) = self.irq.write(1) {
            eprintln!("aurae-vmm: virtio-net irq: {e}");
        }
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let s = self.lock();
        if offset >= 0x100 {
            // Config space: the MAC, then status (link up) which we do not offer.
            let mut cfg = [0u8; 8];
            cfg[..6].copy_from_slice(&self.mac);
            let at = (offset - 0x100) as usize;
            for (i, d) in data.iter_mut().enumerate() {
                *d = cfg.get(at + i).copied().unwrap_or(0);
            }
            return;
        }
        let q = &s.queues[s.queue_sel.min(1)];
        let v: u32 = match offset {
            0x00 => 0x7472_6976, // "virt"
            0x04 => 2,
            0x08 => 1,           // network card
            0x0c => 0x4155_5241, // "AURA"
            0x10 => match s.device_features_sel {
                0 => FEATURES as u32,
                1 => (FEATURES >> 32) as u32,
                _ => 0,
            },
            0x34 => u32::from(q.max_size()),
            0x44 => u32::from(q.ready()),
            0x60 => s.interrupt_status,
            0x70 => s.status,
            0xfc => s.config_generation,
            _ => 0,
        };
        let b = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0);
        }
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            return;
        }
        let mut b = [0u8; 4];
        for (i, d) in data.iter().take(4).enumerate() {
            b[i] = *d;
        }
        let v = u32::from_le_bytes(b);
        let mut s = self.lock();
        let sel = s.queue_sel.min(1);
        match offset {
            0x14 => s.device_features_sel = v,
            0x20 => {
                let shift = if s.driver_features_sel == 1 { 32 } else { 0 };
                if s.driver_features_sel <= 1 {
                    s.driver_features |= (u64::from(v) << shift) & FEATURES;
                }
            }
            0x24 => s.driver_features_sel = v,
            0x30 => s.queue_sel = v as usize,
            0x38 => s.queues[sel].set_size(v as u16),
            0x44 => {
                s.queues[sel].set_ready(v == 1);
                if sel == RXQ && v == 1 {
                    self.rx_posted.notify_all();
                }
            }
            0x50 => {
                drop(s);
                match v as usize {
                    TXQ => self.transmit(),
                    RXQ => self.rx_posted.notify_all(),
                    _ => {}
                }
            }
            0x64 => s.interrupt_status &= !v,
            0x70 => {
                if v == 0 {
                    // Device reset.
                    s.queues.iter_mut().for_each(QueueT::reset);
                    s.driver_features = 0;
                    s.interrupt_status = 0;
                }
                s.status = v;
            }
            0x80 => s.queues[sel].set_desc_table_address(Some(v), None),
            0x84 => s.queues[sel].set_desc_table_address(None, Some(v)),
            0x90 => s.queues[sel].set_avail_ring_address(Some(v), None),
            0x94 => s.queues[sel].set_avail_ring_address(None, Some(v)),
            0xa0 => s.queues[sel].set_used_ring_address(Some(v), None),
            0xa4 => s.queues[sel].set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    /// Sends every frame the guest queued on TX to the TAP.
    fn transmit(&self) {
        let mut s = self.lock();
        let mem: &GuestMemoryMmap = &self.mem;
        let mut sent = false;
        let mut frame = Vec::with_capacity(2048);
        while let Some(chain) = s.queues[TXQ].pop_descriptor_chain(mem) {
            let head = chain.head_index();
            frame.clear();
            for d in chain {
                if d.is_write_only() {
                    continue;
                }
                let start = frame.len();
                frame.resize(start + d.len() as usize, 0);
                if mem.read_slice(&mut frame[start..], d.addr()).is_err() {
                    frame.truncate(start);
                }
            }
            if frame.len() > HDR_LEN {
                let _ = (&self.tap).write(&frame[HDR_LEN..]);
            }
            let _ = s.queues[TXQ].add_used(mem, head, 0);
            sent = true;
        }
        if sent {
            self.interrupt(&mut s);
        }
    }

    /// Delivers one received frame; waits for the guest to post a buffer if none is free.
    fn deliver(&self, frame: &[u8]) {
        let mem: &GuestMemoryMmap = &self.mem;
        let mut s = self.lock();
        loop {
            if s.queues[RXQ].ready() {
                if let Some(chain) = s.queues[RXQ].pop_descriptor_chain(mem) {
                    let head = chain.head_index();
                    let hdr = [0u8; HDR_LEN];
                    let mut src = hdr.iter().chain(frame.iter()).copied();
                    let mut written = 0u32;
                    for d in chain {
                        if !d.is_write_only() {
                            continue;
                        }
                        let buf: Vec<u8> = src.by_ref().take(d.len() as usize).collect();
                        if buf.is_empty() || mem.write_slice(&buf, d.addr()).is_err() {
                            break;
                        }
                        written += buf.len() as u32;
                    }
                    let _ = s.queues[RXQ].add_used(mem, head, written);
                    self.interrupt(&mut s);
                    return;
                }
            }
            s = self.rx_posted.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The RX thread: TAP → guest, forever (the process ends with the VM).
    pub fn rx_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            match (&self.tap).read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.deliver(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("aurae-vmm: TAP {} read: {e}", self.tap.as_raw_fd());
                    return;
                }
            }
        }
    }
}
