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
}

pub(super) fn run(mut fd: VcpuFd, m: &Machine) {
    let end = loop {
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if let Ok(mut b) = m.bus.lock() {
                    b.read(port, data);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let exit = m.bus.lock().ok().and_then(|mut b| b.write(port, data));
                if let Some(e) = exit {
                    break Ok(e);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => match m.device_at(addr) {
                Some((d, off)) => d.read(off, data),
                None => data.fill(0xff),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((d, off)) = m.device_at(addr) {
                    d.write(off, data);
                }
            }
            Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::Shutdown) => break Ok(GuestExit::TripleFault),
            Ok(VcpuExit::FailEntry(reason, cpu)) => break Err(VcpuError::FailEntry { reason, cpu }),
            Ok(VcpuExit::InternalError) => break Err(VcpuError::Internal),
            Ok(other) => break Err(VcpuError::Unexpected(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break Err(VcpuError::Run(e)),
        }
    };
    let _ = m.end.send(end);
}
