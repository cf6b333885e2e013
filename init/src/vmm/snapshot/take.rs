//! A running machine paused and written down (`SnapshotRole::Take`), and the devices of a
//! restored one given their state back (`SnapshotRole::Restore`).
//!
//! The pause: the vCPU thread that sees the guest's request (`devices::SNAPSHOT` on the
//! power port) sets `requested`, takes its own vCPU, then kicks every other vCPU thread
//! out of KVM_RUN (a no-op SIGUSR2, sent every millisecond until each has parked: one that
//! was between two runs when kicked sees `requested` before its next). Each parks by
//! completing its last I/O and depositing its state; the first then takes the VM and the
//! devices (no vCPU runs, so none changes them) and writes the state file. Guest memory
//! needs no copy: a template's is its memory file, mapped shared.

use super::kvm::{capture_vcpu, capture_vm, complete_io, StateError};
use super::{DevicesState, VcpuState, VmSnapshot};
use crate::vmm::devices::PortBus;
use crate::vmm::virtio_mmio::MmioDevice;
use kvm_ioctls::{VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the other vCPUs get to park once kicked.
const PARK_WITHIN: Duration = Duration::from_secs(10);
/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing).
pub const KICK: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("{0}")]
    State(#[from] StateError),
    #[error("vCPU {0} did not stop within {PARK_WITHIN:?}")]
    NotParked(usize),
    #[error("write the state file: {0}")]
    Write(std::io::Error),
}

pub struct Taker {
    requested: AtomicBool,
    /// Each vCPU's thread, once it runs (by id), as a number: musl's pthread_t is a
    /// pointer, which is not Send.
    threads: Mutex<Vec<Option<usize>>>,
    parked: Mutex<Vec<Option<VcpuState>>>,
    cv: Condvar,
    msrs: Vec<u32>,
    state_file: Mutex<std::fs::File>,
    memory_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Taker {
    pub fn new(vcpus: usize, msrs: Vec<u32>, state_file: std::fs::File, memory_bytes: u64) -> Taker {
        Taker {
            requested: AtomicBool::new(false),
            threads: Mutex::new(vec![None; vcpus]),
            parked: Mutex::new((0..vcpus).map(|_| None).collect()),
            cv: Condvar::new(),
            msrs,
            state_file: Mutex::new(state_file),
            memory_bytes,
        }
    }

    /// Called by vCPU thread `id` before its first run.
    pub fn register(&self, id: usize) {
        if let Some(t) = lock(&self.threads).get_mut(id) {
            *t = Some(nix::sys::pthread::pthread_self() as usize);
        }
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// vCPU `id`'s part once a pause is asked: its I/O completed, its state deposited.
    pub fn park(&self, fd: &mut VcpuFd, id: usize) -> Result<(), StateError> {
        complete_io(fd)?;
        let s = capture_vcpu(fd, &self.msrs)?;
        if let Some(slot) = lock(&self.parked).get_mut(id) {
            *slot = Some(s);
        }
        self.cv.notify_all();
        Ok(())
    }

    /// What the vCPU that saw the guest's request does: pauses the machine, takes it and
    /// writes the state file.
    pub fn take(
        &self,
        fd: &mut VcpuFd,
        id: usize,
        vm: &VmFd,
        bus: &Mutex<PortBus>,
        mmio: &[Arc<dyn MmioDevice>],
    ) -> Result<(), TakeError> {
        self.requested.store(true, Ordering::SeqCst);
        self.park(fd, id)?;
        let deadline = Instant::now() + PARK_WITHIN;
        let mut parked = lock(&self.parked);
        while let Some(missing) = parked.iter().position(Option::is_none) {
            if Instant::now() > deadline {
                return Err(TakeError::NotParked(missing));
            }
            drop(parked);
            for (n, t) in lock(&self.threads).iter().enumerate() {
                if let (Some(t), true) = (t, n != id) {
                    // ESRCH: it has parked and ended already.
                    let _ = nix::sys::pthread::pthread_kill(*t as nix::sys::pthread::Pthread, KICK);
                }
            }
            parked = lock(&self.parked);
            parked = self
                .cv
                .wait_timeout(parked, Duration::from_millis(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let vcpus: Vec<VcpuState> = parked.iter_mut().filter_map(Option::take).collect();
        drop(parked);
        let snapshot = VmSnapshot {
            made_by: env!("CARGO_PKG_VERSION").to_owned(),
            memory_bytes: self.memory_bytes,
            vcpus,
            vm: capture_vm(vm)?,
            devices: devices_state(&lock(bus), mmio),
        };
        let bytes = super::encode(&snapshot);
        let mut f = lock(&self.state_file);
        std::io::Write::write_all(&mut *f, &bytes).map_err(TakeError::Write)?;
        Ok(())
    }
}

/// The port devices' and virtio transports' state.
fn devices_state(bus: &PortBus, mmio: &[Arc<dyn MmioDevice>]) -> DevicesState {
    DevicesState {
        serial: bus.serial.state(),
        kbd: bus.kbd.state(),
        mmio: (mmio.iter()).map(|d| lock(d.transport()).state()).collect(),
    }
}
