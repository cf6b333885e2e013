//! virtio-net over virtio-mmio (`virtio_mmio`), backed by a TAP. Queues are split
//! virtqueues handled by the `virtio-queue` crate. Features: VERSION_1 and MAC only, so every
//! frame carries the 12-byte `virtio_net_hdr_v1`, all zero on receive.
//!
//! TX runs on the vCPU thread that writes QueueNotify; RX runs on a thread of its own that
//! blocks on the TAP and waits (condvar) for the guest to post buffers when none are left.
//! Interrupts are edge-triggered through an irqfd.

use super::virtio_mmio::{Event, MmioDevice, Transport};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const RXQ: usize = 0;
const TXQ: usize = 1;
const HDR_LEN: usize = 12;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const MAX_FRAME: usize = 65562;

pub struct VirtioNet {
    mem: Arc<GuestMemoryMmap>,
    tap: std::fs::File,
    /// Config space: the MAC.
    config: [u8; 6],
    irq: EventFd,
    state: Mutex<Transport>,
    /// Signalled when the guest posts RX buffers.
    rx_posted: Condvar,
}

impl VirtioNet {
    pub fn new(mem: Arc<GuestMemoryMmap>, tap: OwnedFd, mac: [u8; 6], irq: EventFd) -> Result<Arc<VirtioNet>, String> {
        Ok(Arc::new(VirtioNet {
            mem,
            tap: tap.into(),
            config: mac,
            irq,
            state: Mutex::new(Transport::new(1, VIRTIO_NET_F_MAC, 2)?),
            rx_posted: Condvar::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
            s.signal(&self.irq);
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
                    s.signal(&self.irq);
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

impl MmioDevice for VirtioNet {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.lock().read(offset, data, &self.config);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let event = self.lock().write(offset, data);
        match event {
            Event::Notify(TXQ) => self.transmit(),
            Event::Notify(RXQ) | Event::Ready(RXQ) => self.rx_posted.notify_all(),
            _ => {}
        }
    }
}
