//! virtio-net over virtio-mmio (`virtio_mmio`), backed by a TAP. Queues are split
//! virtqueues handled by the `virtio-queue` crate. Features: VERSION_1 and MAC only, so every
//! frame carries the 12-byte `virtio_net_hdr_v1`, all zero on receive.
//!
//! TX runs on the vCPU thread that writes QueueNotify; RX runs on a thread of its own that
//! blocks on the TAP and waits (condvar) for the guest to post buffers when none are left.
//! Interrupts are edge-triggered through an irqfd.

use super::virtio_mmio::{DeviceError, Event, MmioDevice, Transport};
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
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        tap: OwnedFd,
        mac: [u8; 6],
        irq: EventFd,
    ) -> Result<Arc<VirtioNet>, DeviceError> {
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
            // A frame larger than any Ethernet frame, or reaching outside guest memory, is
            // dropped whole; the guest's lengths never size an allocation beyond MAX_FRAME.
            let mut whole = true;
            for d in chain {
                if d.is_write_only() {
                    continue;
                }
                let start = frame.len();
                let end = start.saturating_add(d.len() as usize);
                if end > HDR_LEN + MAX_FRAME {
                    whole = false;
                    break;
                }
                frame.resize(end, 0);
                if mem.read_slice(&mut frame[start..], d.addr()).is_err() {
                    whole = false;
                    break;
                }
            }
            if whole && frame.len() > HDR_LEN {
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
    fn transport(&self) -> &Mutex<Transport> {
        &self.state
    }

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

#[cfg(test)]
mod tests {
    use super::super::virtio_mmio::testing::{r32, setup_queue, w32};
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress as GA};

    const WO: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const BUF: u64 = 0x10_0000;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// A 4 MiB guest and the device on one end of a datagram socket pair standing in for
    /// the TAP (packet boundaries kept, like a TAP's); the other end is the "network".
    fn rig() -> (Arc<GuestMemoryMmap>, Arc<VirtioNet>, UnixDatagram, EventFd) {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GA(0), 4 << 20)]).unwrap());
        let (dev_end, net) = UnixDatagram::pair().unwrap();
        net.set_nonblocking(true).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mac = [2, 0x41, 0, 0, 0, 7];
        let dev = VirtioNet::new(mem.clone(), dev_end.into(), mac, irq.try_clone().unwrap()).unwrap();
        (mem, dev, net, irq)
    }

    #[test]
    fn the_mac_is_in_config_space() {
        let (_, dev, _, _) = rig();
        assert_eq!(r32(&*dev, 0x08), 1, "device id: net");
        let mut mac = [0u8; 6];
        dev.read(0x100, &mut mac);
        assert_eq!(mac, [2, 0x41, 0, 0, 0, 7]);
    }

    #[test]
    fn transmit_sends_the_frame_without_its_header_and_drops_hostile_ones() {
        let (mem, dev, net, irq) = rig();
        // Queue 1's rings live at 0x20_0000, away from the frame data.
        let q = MockSplitQueue::create(&*mem, GA(0x20_0000), 16);
        setup_queue(&*dev, 1, &q, 16);
        let send = |chain: &[RawDescriptor]| {
            q.build_desc_chain(chain).unwrap();
            w32(&*dev, 0x50, 1);
        };
        let mut frame = vec![0u8; HDR_LEN];
        frame.extend_from_slice(b"hello, bridge");
        mem.write_slice(&frame, GA(BUF)).unwrap();
        send(&[desc(BUF, HDR_LEN as u32, 0), desc(BUF + HDR_LEN as u64, 13, 0)]);
        let mut got = [0u8; 64];
        assert_eq!(net.recv(&mut got).unwrap(), 13);
        assert_eq!(&got[..13], b"hello, bridge");
        assert_eq!(irq.read().unwrap(), 1);
        // Longer than any frame (a 3 GiB claim), or outside guest memory: dropped whole,
        // the chain is still returned, and the device keeps working.
        send(&[desc(BUF, 3 << 30, 0)]);
        send(&[desc(BUF, HDR_LEN as u32, 0), desc((4 << 20) - 4, 64, 0)]);
        assert!(net.recv(&mut got).is_err(), "nothing sent for hostile frames");
        let used_idx = mem.read_obj::<u16>(q.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 3, "every chain returned to the guest");
        send(&[desc(BUF, HDR_LEN as u32 + 13, 0)]);
        assert_eq!(net.recv(&mut got).unwrap(), 13, "still transmitting");
    }

    #[test]
    fn receive_prepends_a_zero_header_and_fills_the_posted_buffer() {
        let (mem, dev, _net, irq) = rig();
        let q = MockSplitQueue::create(&*mem, GA(0x20_0000), 16);
        mem.write_slice(&[0xffu8; 64], GA(BUF)).unwrap();
        q.build_desc_chain(&[desc(BUF, 64, WO)]).unwrap();
        setup_queue(&*dev, 0, &q, 16);
        dev.deliver(b"a frame");
        let mut got = [0u8; 19];
        mem.read_slice(&mut got, GA(BUF)).unwrap();
        assert_eq!(&got[..HDR_LEN], &[0u8; HDR_LEN]);
        assert_eq!(&got[HDR_LEN..], b"a frame");
        let len = mem.read_obj::<u32>(q.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(len, 19);
        assert_eq!(irq.read().unwrap(), 1);
    }

    mod prop {
        use super::*;
        use crate::vmm::virtio_mmio::testing::{any_desc, any_mmio_ops, apply_mmio};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any TX chain: no panic, nothing larger than an Ethernet frame ever reaches
            /// the TAP, every chain comes back to the guest, and a good frame still goes out.
            #[test]
            fn random_tx_chains_never_panic_or_send_oversized_frames(
                chains in proptest::collection::vec(proptest::collection::vec(any_desc(), 1..6), 1..8),
            ) {
                let (mem, dev, net, _irq) = rig();
                let q = MockSplitQueue::create(&*mem, GA(0x38_0000), 16);
                setup_queue(&*dev, 1, &q, 16);
                for chain in &chains {
                    q.build_desc_chain(chain).unwrap();
                    w32(&*dev, 0x50, 1);
                }
                let mut got = vec![0u8; 1 << 17];
                while let Ok(n) = net.recv(&mut got) {
                    prop_assert!(n <= MAX_FRAME, "{} bytes sent", n);
                }
                let used_idx = mem.read_obj::<u16>(q.used_addr().unchecked_add(2)).unwrap();
                prop_assert_eq!(used_idx as usize, chains.len());
                mem.write_slice(&[0u8; HDR_LEN + 4], GA(BUF)).unwrap();
                q.build_desc_chain(&[desc(BUF, HDR_LEN as u32 + 4, 0)]).unwrap();
                w32(&*dev, 0x50, 1);
                prop_assert_eq!(net.recv(&mut got).unwrap(), 4);
            }

            /// Any register access of any width at any offset: no panic (the transport and
            /// config space check every offset and length).
            #[test]
            fn random_mmio_accesses_never_panic(
                ops in any_mmio_ops(),
            ) {
                let (_mem, dev, _net, _irq) = rig();
                apply_mmio(&*dev, ops);
            }
        }
    }
}
