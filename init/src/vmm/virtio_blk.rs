//! virtio-blk over virtio-mmio for raw disk images, read-only or read-write. One request
//! queue, served on the vCPU thread that notifies: read/write with pread/pwrite on the
//! image, flush with fdatasync, and the device ID. A read-only disk is offered with
//! VIRTIO_BLK_F_RO and refuses writes with an I/O error.

use super::virtio_mmio::{Event, MmioDevice, Transport};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
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

pub struct VirtioBlk {
    mem: Arc<GuestMemoryMmap>,
    file: std::fs::File,
    read_only: bool,
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
    ) -> Result<Arc<VirtioBlk>, String> {
        let size = file.metadata().map_err(|e| format!("disk size: {e}"))?.len();
        let mut id = [0u8; 20];
        for (d, s) in id.iter_mut().zip(serial.bytes()) {
            *d = s;
        }
        let features = VIRTIO_BLK_F_FLUSH | if read_only { VIRTIO_BLK_F_RO } else { 0 };
        Ok(Arc::new(VirtioBlk {
            mem,
            file,
            read_only,
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
        let mut written = 0u32;
        let result: Result<(), u8> = (|| match kind {
            T_IN => {
                for d in data {
                    let mut buf = vec![0u8; d.len as usize];
                    self.file.read_exact_at(&mut buf, offset).map_err(|_| S_IOERR)?;
                    mem.write_slice(&buf, d.addr).map_err(|_| S_IOERR)?;
                    offset += u64::from(d.len);
                    written += d.len;
                }
                Ok(())
            }
            T_OUT if self.read_only => Err(S_IOERR),
            T_OUT => {
                for d in data {
                    let mut buf = vec![0u8; d.len as usize];
                    mem.read_slice(&mut buf, d.addr).map_err(|_| S_IOERR)?;
                    self.file.write_all_at(&buf, offset).map_err(|_| S_IOERR)?;
                    offset += u64::from(d.len);
                }
                Ok(())
            }
            T_FLUSH => self.file.sync_data().map_err(|_| S_IOERR),
            T_GET_ID => {
                if let Some(d) = data.first() {
                    let n = (d.len as usize).min(self.id.len());
                    mem.write_slice(&self.id[..n], d.addr).map_err(|_| S_IOERR)?;
                    written += n as u32;
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
            written += 1;
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
