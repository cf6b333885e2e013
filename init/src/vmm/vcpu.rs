//! A vCPU thread's loop: run the vCPU, hand each exit to the port bus or the virtio device
//! it addresses, and report how the guest ended.

use super::builder::Machine;
use super::devices::GuestExit;
use kvm_ioctls::{VcpuExit, VcpuFd};

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
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                break Err(format!("KVM entry failed: reason {reason:#x} on CPU {cpu}"))
            }
            Ok(VcpuExit::InternalError) => break Err("KVM internal error".into()),
            Ok(other) => break Err(format!("unexpected vCPU exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break Err(format!("KVM_RUN: {e}")),
        }
    };
    let _ = m.end.send(end);
}
