//! virtio-blk over virtio-mmio for raw disk images, read-only or read-write. One request
//! queue, served on the vCPU thread that notifies: read/write with pread/pwrite on the
//! image, flush with fdatasync, and the device ID. A read-only disk is offered with
//! VIRTIO_BLK_F_RO and refuses writes with an I/O error.

use super::virtio_mmio::{DeviceError, Event, MmioDevice, Transport};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const SECTOR: u64 = 512;
/// The most a request copies at once, whatever length the guest's descriptor claims.
const CHUNK: usize = 64 << 10;

/// Runs `f` over `d` in pieces of at most CHUNK bytes: (guest address, file offset, buffer),
/// advancing `offset` past the descriptor.
fn each_chunk(
    d: &Desc,
    offset: &mut u64,
    mut f: impl FnMut(GuestAddress, u64, &mut [u8]) -> Result<(), u8>,
) -> Result<(), u8> {
    let len = d.len as usize;
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK);
        let at = d.addr.checked_add(done as u64).ok_or(S_IOERR)?;
        f(at, *offset, &mut buf[..n])?;
        *offset = offset.checked_add(n as u64).ok_or(S_IOERR)?;
        done += n;
    }
    Ok(())
}

pub struct VirtioBlk {
    mem: Arc<GuestMemoryMmap>,
    file: std::fs::File,
    read_only: bool,
    /// The image's size in bytes when the VM started: no request reaches beyond it, so
    /// the file never grows.
    capacity: u64,
    /// Config space: capacity in 512-byte sectors.
    config: [u8; 8],
    id: [u8; 20],
    irq: EventFd,
    state: Mutex<Transport>,
}

struct Desc {
    addr: GuestAddress,
    len: u32,
    write_only: bool,
}

impl VirtioBlk {
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        file: std::fs::File,
        read_only: bool,
        serial: &str,
        irq: EventFd,
    ) -> Result<Arc<VirtioBlk>, DeviceError> {
        let size = file
            .metadata()
            .map_err(|source| DeviceError::Io {
                what: "disk size",
                source,
            })?
            .len();
        let mut id = [0u8; 20];
        for (d, s) in id.iter_mut().zip(serial.bytes()) {
            *d = s;
        }
        let features = VIRTIO_BLK_F_FLUSH | if read_only { VIRTIO_BLK_F_RO } else { 0 };
        Ok(Arc::new(VirtioBlk {
            mem,
            file,
            read_only,
            capacity: size / SECTOR * SECTOR,
            config: (size / SECTOR).to_le_bytes(),
            id,
            irq,
            state: Mutex::new(Transport::new(2, features, 1)?),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one request: header, data buffers, status byte. Returns the bytes written
    /// into guest memory.
    fn serve(&self, descs: &[Desc]) -> u32 {
        let mem: &GuestMemoryMmap = &self.mem;
        let (Some(head), Some(status)) = (descs.first(), descs.last()) else {
            return 0;
        };
        if descs.len() < 2 || !status.write_only || head.len < 16 {
            return 0;
        }
        let mut hdr = [0u8; 16];
        if mem.read_slice(&mut hdr, head.addr).is_err() {
            return 0;
        }
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&hdr[8..16]);
        let mut offset = u64::from_le_bytes(sector).saturating_mul(SECTOR);
        let data = &descs[1..descs.len() - 1];
        // Every byte a read or write touches lies inside the image: checked before any I/O.
        if matches!(kind, T_IN | T_OUT) {
            let total = data.iter().fold(0u64, |t, d| t.saturating_add(u64::from(d.len)));
            if offset.checked_add(total).is_none_or(|end| end > self.capacity) {
                let _ = mem.write_slice(&[S_IOERR], status.addr);
                return 1;
            }
        }
        let mut written = 0u32;
        let result: Result<(), u8> = (|| match kind {
            T_IN => {
                for d in data {
                    // The guest says where and how much: checked against its memory before
                    // anything is read, and copied in bounded chunks.
                    if !d.write_only || !mem.check_range(d.addr, d.len as usize) {
                        return Err(S_IOERR);
                    }
                    each_chunk(d, &mut offset, |at, file_off, buf| {
                        self.file.read_exact_at(buf, file_off).map_err(|_| S_IOERR)?;
                        mem.write_slice(buf, at).map_err(|_| S_IOERR)
                    })?;
                    written = written.saturating_add(d.len);
                }
                Ok(())
            }
            T_OUT if self.read_only => Err(S_IOERR),
            T_OUT => {
                for d in data {
                    if d.write_only || !mem.check_range(d.addr, d.len as usize) {
                        return Err(S_IOERR);
                    }
                    each_chunk(d, &mut offset, |at, file_off, buf| {
                        mem.read_slice(buf, at).map_err(|_| S_IOERR)?;
                        self.file.write_all_at(buf, file_off).map_err(|_| S_IOERR)
                    })?;
                }
                Ok(())
            }
            T_FLUSH => self.file.sync_data().map_err(|_| S_IOERR),
            T_GET_ID => {
                if let Some(d) = data.first() {
                    let n = (d.len as usize).min(self.id.len());
                    mem.write_slice(&self.id[..n], d.addr).map_err(|_| S_IOERR)?;
                    written = written.saturating_add(n as u32);
                }
                Ok(())
            }
            _ => Err(S_UNSUPP),
        })();
        let code = match result {
            Ok(()) => S_OK,
            Err(c) => c,
        };
        if mem.write_slice(&[code], status.addr).is_ok() {
            written = written.saturating_add(1);
        }
        written
    }

    fn process(&self) {
        let mut s = self.lock();
        let mem: &GuestMemoryMmap = &self.mem;
        let mut served = false;
        while let Some(chain) = s.queues[0].pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<Desc> = chain
                .map(|d| Desc {
                    addr: d.addr(),
                    len: d.len(),
                    write_only: d.is_write_only(),
                })
                .collect();
            let written = self.serve(&descs);
            let _ = s.queues[0].add_used(mem, head, written);
            served = true;
        }
        if served {
            s.signal(&self.irq);
        }
    }
}

impl MmioDevice for VirtioBlk {
    fn transport(&self) -> &Mutex<Transport> {
        &self.state
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        self.lock().read(offset, data, &self.config);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let event = self.lock().write(offset, data);
        if event == Event::Notify(0) {
            self.process();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::virtio_mmio::testing::{r32, setup_queue, w32};
    use super::*;
    use std::io::Write;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress as GA;

    const WO: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    struct Rig {
        mem: Arc<GuestMemoryMmap>,
        disk: tempfile::NamedTempFile,
        dev: Arc<VirtioBlk>,
        irq: EventFd,
    }

    /// A 4 MiB guest, an 8-sector disk whose sector i is filled with byte i, and the device.
    fn rig(read_only: bool) -> Rig {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GA(0), 4 << 20)]).unwrap());
        let mut disk = tempfile::NamedTempFile::new().unwrap();
        for i in 0..8u8 {
            disk.write_all(&[i; 512]).unwrap();
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())
            .unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = VirtioBlk::new(mem.clone(), file, read_only, "aurae-disk0", irq.try_clone().unwrap()).unwrap();
        Rig { mem, disk, dev, irq }
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GA(HDR)).unwrap();
    }

    /// Posts `chain` on queue 0 (the rings of `q`, one per test: they keep their indices),
    /// notifies, and returns (status byte, used length).
    fn submit(r: &Rig, q: &MockSplitQueue<GuestMemoryMmap>, chain: &[RawDescriptor]) -> (u8, u32) {
        q.build_desc_chain(chain).unwrap();
        setup_queue(&*r.dev, 0, q, 16);
        r.mem.write_obj(0xeeu8, GA(STATUS)).unwrap();
        w32(&*r.dev, 0x50, 0);
        // The newest used element: ring[idx - 1] is (id: u32, len: u32) after flags and idx.
        let idx = r.mem.read_obj::<u16>(q.used_addr().unchecked_add(2)).unwrap();
        let elem = q.used_addr().unchecked_add(4 + 8 * u64::from(idx.wrapping_sub(1) % 16));
        let used_len = r.mem.read_obj::<u32>(elem.unchecked_add(4)).unwrap();
        (r.mem.read_obj::<u8>(GA(STATUS)).unwrap(), used_len)
    }

    #[test]
    fn reads_a_sector_into_the_guest_and_raises_the_interrupt() {
        let r = rig(false);
        let q = MockSplitQueue::new(&*r.mem, 16);
        header(&r.mem, T_IN, 3);
        let (status, used) = submit(&r, &q, &[desc(HDR, 16, 0), desc(DATA, 512, WO), desc(STATUS, 1, WO)]);
        assert_eq!((status, used), (S_OK, 513));
        let mut got = [0u8; 512];
        r.mem.read_slice(&mut got, GA(DATA)).unwrap();
        assert_eq!(got, [3u8; 512]);
        assert_eq!(r.irq.read().unwrap(), 1, "one interrupt");
        assert_eq!(r32(&*r.dev, 0x60), 1, "interrupt status says used buffers");
        assert_eq!(r32(&*r.dev, 0x100), 8, "capacity: 8 sectors");
    }

    #[test]
    fn writes_reach_the_image_unless_the_disk_is_read_only() {
        let r = rig(false);
        let q = MockSplitQueue::new(&*r.mem, 16);
        r.mem.write_slice(&[0xab; 512], GA(DATA)).unwrap();
        header(&r.mem, T_OUT, 5);
        let (status, _) = submit(&r, &q, &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WO)]);
        assert_eq!(status, S_OK);
        let img = std::fs::read(r.disk.path()).unwrap();
        assert_eq!(&img[5 * 512..6 * 512], &[0xab; 512][..]);

        let ro = rig(true);

        let qo = MockSplitQueue::new(&*ro.mem, 16);
        ro.mem.write_slice(&[0xab; 512], GA(DATA)).unwrap();
        header(&ro.mem, T_OUT, 5);
        let (status, _) = submit(&ro, &qo, &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WO)]);
        assert_eq!(status, S_IOERR, "a read-only disk refuses writes");
        let img = std::fs::read(ro.disk.path()).unwrap();
        assert_eq!(&img[5 * 512..6 * 512], &[5u8; 512][..], "and the image is unchanged");
    }

    #[test]
    fn get_id_returns_the_serial() {
        let r = rig(true);
        let q = MockSplitQueue::new(&*r.mem, 16);
        header(&r.mem, T_GET_ID, 0);
        let (status, _) = submit(&r, &q, &[desc(HDR, 16, 0), desc(DATA, 20, WO), desc(STATUS, 1, WO)]);
        assert_eq!(status, S_OK);
        let mut id = [0u8; 11];
        r.mem.read_slice(&mut id, GA(DATA)).unwrap();
        assert_eq!(&id, b"aurae-disk0");
    }

    #[test]
    fn hostile_chains_fail_the_request_and_leave_the_image_alone() {
        let r = rig(false);
        let q = MockSplitQueue::new(&*r.mem, 16);
        let before = std::fs::read(r.disk.path()).unwrap();
        // A 64 MiB buffer in a 4 MiB guest: refused before anything is allocated or copied.
        header(&r.mem, T_IN, 0);
        let (status, _) = submit(
            &r,
            &q,
            &[desc(HDR, 16, 0), desc(DATA, 64 << 20, WO), desc(STATUS, 1, WO)],
        );
        assert_eq!(status, S_IOERR);
        header(&r.mem, T_OUT, 0);
        let (status, _) = submit(
            &r,
            &q,
            &[desc(HDR, 16, 0), desc(DATA, 64 << 20, 0), desc(STATUS, 1, WO)],
        );
        assert_eq!(status, S_IOERR);
        // A chain longer than 4 GiB in all is cut short by the queue: no status, nothing done.
        header(&r.mem, T_OUT, 0);
        let cut = submit(
            &r,
            &q,
            &[desc(HDR, 16, 0), desc(DATA, u32::MAX - 15, 0), desc(STATUS, 1, WO)],
        );
        assert_eq!(cut, (0xee, 0));
        // Data beyond the end of guest memory; a sector beyond the image; a sector number
        // whose byte offset overflows; a read into a buffer the device may not write.
        header(&r.mem, T_IN, 0);
        let (status, _) = submit(
            &r,
            &q,
            &[desc(HDR, 16, 0), desc((4 << 20) - 8, 512, WO), desc(STATUS, 1, WO)],
        );
        assert_eq!(status, S_IOERR);
        for sector in [8, u64::MAX / 2] {
            header(&r.mem, T_IN, sector);
            let (status, _) = submit(&r, &q, &[desc(HDR, 16, 0), desc(DATA, 512, WO), desc(STATUS, 1, WO)]);
            assert_eq!(status, S_IOERR, "sector {sector}");
        }
        header(&r.mem, T_IN, 0);
        let (status, _) = submit(&r, &q, &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WO)]);
        assert_eq!(status, S_IOERR, "IN into a read-only buffer");
        // Malformed requests: no status descriptor, a short header, an unknown type.
        header(&r.mem, T_IN, 0);
        assert_eq!(
            submit(&r, &q, &[desc(HDR, 16, 0)]),
            (0xee, 0),
            "no status: nothing written"
        );
        assert_eq!(
            submit(&r, &q, &[desc(HDR, 8, 0), desc(STATUS, 1, WO)]).1,
            0,
            "short header"
        );
        header(&r.mem, 77, 0);
        assert_eq!(submit(&r, &q, &[desc(HDR, 16, 0), desc(STATUS, 1, WO)]).0, S_UNSUPP);
        // A write that starts inside the image and runs past its end: refused whole.
        header(&r.mem, T_OUT, 7);
        let (status, _) = submit(&r, &q, &[desc(HDR, 16, 0), desc(DATA, 1024, 0), desc(STATUS, 1, WO)]);
        assert_eq!(status, S_IOERR, "a write past the end");
        assert_eq!(std::fs::read(r.disk.path()).unwrap(), before, "the image is unchanged");
    }

    mod prop {
        use super::*;
        use crate::vmm::virtio_mmio::testing::{any_desc, any_mmio_ops, apply_mmio};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any request on any chain: no panic, the image never changes size, and the
            /// device still serves a good read afterwards.
            #[test]
            fn random_chains_never_panic_or_grow_the_image(
                kind in prop_oneof![Just(T_IN), Just(T_OUT), Just(T_FLUSH), Just(T_GET_ID), any::<u32>()],
                sector in prop_oneof![0u64..16, any::<u64>()],
                chain in proptest::collection::vec(any_desc(), 1..6),
            ) {
                let r = rig(false);
                let q = MockSplitQueue::create(&*r.mem, GA(0x38_0000), 16);
                header(&r.mem, kind, sector);
                q.build_desc_chain(&chain).unwrap();
                setup_queue(&*r.dev, 0, &q, 16);
                w32(&*r.dev, 0x50, 0);
                prop_assert_eq!(std::fs::metadata(r.disk.path()).unwrap().len(), 8 * 512);
                // A chain whose writable buffer covers the queue's own rings (a guest breaking
                // its own queue) leaves the driver's side of the queue undefined: the
                // follow-up read below is only a fair question when it does not.
                let ring = 0x38_0000u64..0x38_1000;
                let wrote_over_ring = chain.iter().map(|d| virtio_queue::desc::split::Descriptor::from(*d)).any(|d| {
                    let (start, len) = (d.addr().0, u64::from(d.len()));
                    d.flags() & WO != 0 && start < ring.end && start.saturating_add(len) > ring.start
                });
                if wrote_over_ring {
                    return Ok(());
                }
                header(&r.mem, T_IN, 2);
                q.build_desc_chain(&[desc(HDR, 16, 0), desc(DATA, 512, WO), desc(STATUS, 1, WO)]).unwrap();
                w32(&*r.dev, 0x50, 0);
                let mut got = [0u8; 512];
                r.mem.read_slice(&mut got, GA(DATA)).unwrap();
                prop_assert_eq!(r.mem.read_obj::<u8>(GA(STATUS)).unwrap(), S_OK);
            }

            /// Any register or config-space access of any width at any offset: no panic.
            #[test]
            fn random_mmio_accesses_never_panic(
                ops in any_mmio_ops(),
            ) {
                let r = rig(false);
                apply_mmio(&*r.dev, ops);
                prop_assert_eq!(std::fs::metadata(r.disk.path()).unwrap().len(), 8 * 512);
            }
        }
    }
}
