//! A vCPU thread's loop: run the vCPU, hand each exit to the port bus or the virtio device
//! it addresses, and report how the guest ended.

use super::devices::{GuestExit, PortBus};
use super::virtio_mmio;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::{mpsc, Arc, Mutex};

/// What the vCPU threads share: the VM, the port bus, the virtio devices and the channel on
/// which the first vCPU to stop says how the guest ended.
pub(super) struct Machine {
    pub vm: VmFd,
    pub bus: Arc<Mutex<PortBus>>,
    /// virtio-mmio devices by slot (see `virtio_mmio::slot_base`).
    pub mmio: Vec<Arc<dyn virtio_mmio::MmioDevice>>,
    pub end: mpsc::Sender<Result<GuestExit, VcpuError>>,
    /// A template's: how it is paused and taken when its guest asks.
    pub taker: Option<super::snapshot::take::Taker>,
}

impl Machine {
    /// The virtio device whose window holds `addr`, and the offset into it.
    pub(super) fn device_at(&self, addr: u64) -> Option<(&Arc<dyn virtio_mmio::MmioDevice>, u64)> {
        let off = addr.checked_sub(virtio_mmio::MMIO_BASE)?;
        let slot = (off / virtio_mmio::MMIO_SIZE) as usize;
        self.mmio.get(slot).map(|d| (d, off % virtio_mmio::MMIO_SIZE))
    }
}

/// Why a vCPU stopped running the guest.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM entry failed: reason {reason:#x} on CPU {cpu}")]
    FailEntry { reason: u64, cpu: u32 },
    #[error("KVM internal error")]
    Internal,
    #[error("unexpected vCPU exit {0}")]
    Unexpected(String),
    #[error("KVM_RUN: {0}")]
    Run(kvm_ioctls::Error),
    #[error("every vCPU thread ended")]
    AllGone,
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// What a vCPU does after an exit.
enum Next {
    Go,
    End(Result<GuestExit, VcpuError>),
    /// The guest asked to be taken.
    Take,
}

pub(super) fn run(mut fd: VcpuFd, m: &Machine, id: usize) {
    if let Some(t) = &m.taker {
        t.register(id);
    }
    let end = loop {
        // A pause was asked (by another vCPU): this one parks for good (the VMM ends once
        // the state is written; its vCPU is not closed meanwhile).
        if let Some(t) = m.taker.as_ref().filter(|t| t.requested()) {
            if let Err(e) = t.park(&mut fd, id) {
                let _ = m.end.send(Err(VcpuError::Snapshot(e.to_string())));
            }
            loop {
                std::thread::park();
            }
        }
        let next = match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if let Ok(mut b) = m.bus.lock() {
                    b.read(port, data);
                }
                Next::Go
            }
            Ok(VcpuExit::IoOut(port, data)) => match m.bus.lock().ok().and_then(|mut b| b.write(port, data)) {
                Some(GuestExit::Snapshot) => Next::Take,
                Some(e) => Next::End(Ok(e)),
                None => Next::Go,
            },
            Ok(VcpuExit::MmioRead(addr, data)) => {
                match m.device_at(addr) {
                    Some((d, off)) => d.read(off, data),
                    None => data.fill(0xff),
                }
                Next::Go
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((d, off)) = m.device_at(addr) {
                    d.write(off, data);
                }
                Next::Go
            }
            Ok(VcpuExit::Hlt) => Next::Go,
            Ok(VcpuExit::Shutdown) => Next::End(Ok(GuestExit::TripleFault)),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::End(Err(VcpuError::FailEntry { reason, cpu })),
            Ok(VcpuExit::InternalError) => Next::End(Err(VcpuError::Internal)),
            Ok(other) => Next::End(Err(VcpuError::Unexpected(format!("{other:?}")))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Go,
            Err(e) => Next::End(Err(VcpuError::Run(e))),
        };
        match (next, &m.taker) {
            (Next::Go, _) => {}
            (Next::End(e), _) => break e,
            // Only a template is taken; elsewhere the request is ignored.
            (Next::Take, None) => {}
            (Next::Take, Some(t)) => match t.take(&mut fd, id, &m.vm, &m.bus, &m.mmio) {
                Ok(()) => break Ok(GuestExit::Snapshot),
                Err(e) => break Err(VcpuError::Snapshot(e.to_string())),
            },
        }
    };
    let _ = m.end.send(end);
}
