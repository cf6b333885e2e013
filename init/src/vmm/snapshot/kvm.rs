//! A vCPU's and a VM's state as KVM holds it, taken and given back (`VcpuState`,
//! `VmState`). A vCPU is taken once its thread has left KVM_RUN with any I/O it exited on
//! completed (KVM finishes an I/O or MMIO instruction only on the next KVM_RUN, so the
//! caller re-enters once with `immediate_exit` set first: `complete_io`).
//!
//! Given back in the order Firecracker found KVM needs: CPUID first (it decides which MSRs
//! and XSAVE features exist), the run state, the registers, the extended state, the debug
//! registers, the local APIC, the MSRs, then the pending events.

use super::{VcpuState, VmState};
use kvm_bindings::{kvm_irqchip, kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// The in-kernel irqchip's three parts, by KVM's chip ids.
const PIC_MASTER: u32 = 0;
const PIC_SLAVE: u32 = 1;
const IOAPIC: u32 = 2;
/// MSRs read or written in one call at most (KVM's own bound).
const MSR_BATCH: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("KVM {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {set} of the snapshot's {of} MSRs; MSR {index:#x} was refused (another CPU or kernel?)")]
    Msr { set: usize, of: usize, index: u32 },
    #[error("the snapshot's {what} does not fit KVM's list: {why}")]
    List { what: &'static str, why: String },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

/// The MSRs this host's KVM saves and restores (taken before the jail: the call is on
/// /dev/kvm).
pub fn msr_list(kvm_fd: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm_fd.get_msr_index_list().map_err(kvm("get the MSR index list"))?;
    Ok(list.as_slice().to_vec())
}

/// Lets KVM finish the I/O or MMIO instruction the vCPU last exited on, without running
/// the guest: KVM_RUN with `immediate_exit` set returns EINTR at once.
pub fn complete_io(fd: &mut VcpuFd) -> Result<(), StateError> {
    fd.set_kvm_immediate_exit(1);
    let r = fd.run().map(|_| ());
    fd.set_kvm_immediate_exit(0);
    match r {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Ok(()) => Ok(()),
        Err(e) => Err(StateError::Kvm {
            what: "complete the last I/O",
            source: e,
        }),
    }
}

/// vCPU `fd`'s state, out of KVM_RUN with its I/O completed (`complete_io`). `msrs`: the
/// host's list (`msr_list`); an MSR KVM will not read on this vCPU is left out.
pub fn capture_vcpu(fd: &VcpuFd, msrs: &[u32]) -> Result<VcpuState, StateError> {
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("get CPUID"))?
        .as_slice()
        .to_vec();
    Ok(VcpuState {
        cpuid,
        regs: fd.get_regs().map_err(kvm("get registers"))?,
        sregs: fd.get_sregs().map_err(kvm("get special registers"))?,
        xsave: fd.get_xsave().map_err(kvm("get XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(kvm("get XCRs"))?,
        msrs: read_msrs(fd, msrs)?,
        lapic: fd.get_lapic().map_err(kvm("get the local APIC"))?,
        mp_state: fd.get_mp_state().map_err(kvm("get the MP state"))?,
        events: fd.get_vcpu_events().map_err(kvm("get pending events"))?,
        debugregs: fd.get_debug_regs().map_err(kvm("get debug registers"))?,
    })
}

/// KVM reads MSRs in order and stops at the first it refuses: that one is skipped and the
/// read goes on after it.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut at = 0;
    while at < indices.len() {
        let batch = &indices[at..(at + MSR_BATCH).min(indices.len())];
        let entries: Vec<kvm_msr_entry> = (batch.iter())
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| StateError::List {
            what: "MSR list",
            why: format!("{e:?}"),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm("get MSRs"))?.min(batch.len());
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // All read, or KVM stopped at entry `read`, which it refused.
        at += if read == batch.len() { read } else { read + 1 };
    }
    Ok(out)
}

/// Gives vCPU `fd` (made, never run) the state `s`.
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), StateError> {
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|e| StateError::List {
        what: "CPUID",
        why: format!("{e:?}"),
    })?;
    fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
    fd.set_mp_state(s.mp_state).map_err(kvm("set the MP state"))?;
    fd.set_regs(&s.regs).map_err(kvm("set registers"))?;
    fd.set_sregs(&s.sregs).map_err(kvm("set special registers"))?;
    // SAFETY: `s.xsave` is a whole kvm_xsave as KVM_GET_XSAVE gave it (4 KiB, no data
    // beyond the fixed region: the snapshot keeps none), which is what KVM_SET_XSAVE reads.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(kvm("set XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(kvm("set XCRs"))?;
    fd.set_debug_regs(&s.debugregs).map_err(kvm("set debug registers"))?;
    fd.set_lapic(&s.lapic).map_err(kvm("set the local APIC"))?;
    for (n, batch) in s.msrs.chunks(MSR_BATCH).enumerate() {
        let msrs = Msrs::from_entries(batch).map_err(|e| StateError::List {
            what: "MSR list",
            why: format!("{e:?}"),
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if set < batch.len() {
            return Err(StateError::Msr {
                set: n * MSR_BATCH + set,
                of: s.msrs.len(),
                index: batch[set].index,
            });
        }
    }
    fd.set_vcpu_events(&s.events).map_err(kvm("set pending events"))?;
    Ok(())
}

/// The VM's PICs, IOAPIC, PIT and clock.
pub fn capture_vm(vm: &VmFd) -> Result<VmState, StateError> {
    let chip = |id: u32| -> Result<kvm_irqchip, StateError> {
        let mut c = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm("get the irqchip"))?;
        Ok(c)
    };
    Ok(VmState {
        pic_master: chip(PIC_MASTER)?,
        pic_slave: chip(PIC_SLAVE)?,
        ioapic: chip(IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("get the PIT"))?,
        clock: vm.get_clock().map_err(kvm("get the clock"))?,
    })
}

/// Gives VM `vm` (its irqchip and PIT made) the state `s`.
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), StateError> {
    vm.set_pit2(&s.pit).map_err(kvm("set the PIT"))?;
    // KVM_SET_CLOCK takes no flags but its own; the clock goes on from the snapshot's.
    let mut clock = s.clock;
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm("set the clock"))?;
    for (c, id) in [
        (&s.pic_master, PIC_MASTER),
        (&s.pic_slave, PIC_SLAVE),
        (&s.ioapic, IOAPIC),
    ] {
        let mut c = *c;
        c.chip_id = id;
        vm.set_irqchip(&c).map_err(kvm("set the irqchip"))?;
    }
    Ok(())
}

/// On this machine's own /dev/kvm (the CI machines have one; it runs real-mode code, if
/// slowly): a 16-bit guest counting in a register and in memory, stopped on its port
/// write, taken, written to a state file and read back, restored into a second VM over a
/// copy-on-write mapping of the first one's memory, where it goes on counting from where
/// it was while the first VM's memory stays as it was.
#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::VcpuExit;

    const MEM: usize = 64 << 20;
    const CODE: u64 = 0x1000;
    const COUNTER: usize = 0x2000;
    const PORT: u16 = 0x10;
    // inc bx; inc word [0x2000]; out 0x10, al; jmp back to the start.
    const PROGRAM: [u8; 9] = [0x43, 0xff, 0x06, 0x00, 0x20, 0xe6, 0x10, 0xeb, 0xf7];

    struct Guest {
        vm: VmFd,
        vcpu: VcpuFd,
        mem: *mut u8,
    }

    fn memfd() -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a static name; the descriptor is new and owned here.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: just made, owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        nix::unistd::ftruncate(&fd, MEM as i64).unwrap();
        fd
    }

    /// A VM with its irqchip and PIT over `mem` mapped `flags` (MAP_SHARED or MAP_PRIVATE).
    fn machine(kvm_fd: &Kvm, mem: &std::os::fd::OwnedFd, flags: i32) -> Guest {
        use std::os::fd::AsRawFd;
        let vm = kvm_fd.create_vm().unwrap();
        // SAFETY: a new mapping of the whole memfd; it lives until the test process ends.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                mem.as_raw_fd(),
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping above outlives the VM.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(Default::default()).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        Guest {
            vm,
            vcpu,
            mem: host.cast(),
        }
    }

    impl Guest {
        fn counter(&self) -> u16 {
            // SAFETY: COUNTER is inside the mapping; the vCPU is not running.
            unsafe { self.mem.add(COUNTER).cast::<u16>().read_unaligned() }
        }

        /// Runs until the guest's `n`th port write from now.
        fn run_to_out(&mut self, n: u32) {
            let mut seen = 0;
            while seen < n {
                match self.vcpu.run().unwrap() {
                    VcpuExit::IoOut(PORT, _) => seen += 1,
                    other => panic!("unexpected exit {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_real_guest_is_taken_written_read_and_goes_on_in_a_copy() {
        let kvm_fd = Kvm::new().expect("/dev/kvm (the CI machines have one; run the host tier as root)");
        let file = memfd();
        let mut a = machine(&kvm_fd, &file, libc::MAP_SHARED);
        // SAFETY: inside the mapping, nothing runs yet.
        unsafe { std::ptr::copy_nonoverlapping(PROGRAM.as_ptr(), a.mem.add(CODE as usize), PROGRAM.len()) };
        let cpuid = kvm_fd.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        a.vcpu.set_cpuid2(&cpuid).unwrap();
        let mut sregs = a.vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        a.vcpu.set_sregs(&sregs).unwrap();
        a.vcpu
            .set_regs(&kvm_bindings::kvm_regs {
                rip: CODE,
                rflags: 2,
                ..Default::default()
            })
            .unwrap();
        a.run_to_out(100);
        complete_io(&mut a.vcpu).unwrap();
        let msrs = msr_list(&kvm_fd).unwrap();
        let vcpu = capture_vcpu(&a.vcpu, &msrs).unwrap();
        assert_eq!((vcpu.regs.rbx, a.counter()), (100, 100));
        assert_eq!(vcpu.regs.rip, CODE + 7, "past the completed out, at the jmp");
        assert!(!vcpu.msrs.is_empty() && !vcpu.cpuid.is_empty());
        let snap = super::super::VmSnapshot {
            made_by: "test".into(),
            memory_bytes: MEM as u64,
            vcpus: vec![vcpu],
            vm: capture_vm(&a.vm).unwrap(),
            devices: super::super::tests::sample().devices,
        };
        let file_bytes = super::super::encode(&snap);
        eprintln!(
            "state file: {} bytes for one vCPU ({} MSRs)",
            file_bytes.len(),
            snap.vcpus[0].msrs.len()
        );
        let back = super::super::decode(&file_bytes, "test").unwrap();

        let mut b = machine(&kvm_fd, &file, libc::MAP_PRIVATE);
        restore_vm(&b.vm, &back.vm).unwrap();
        restore_vcpu(&b.vcpu, &back.vcpus[0]).unwrap();
        assert_eq!(b.counter(), 100, "the copy starts from the memory file");
        b.run_to_out(5);
        assert_eq!(
            b.vcpu.get_regs().unwrap().rbx,
            105,
            "it goes on counting from where it was"
        );
        assert_eq!(b.counter(), 105);
        assert_eq!(a.counter(), 100, "copy on write: the file's memory is untouched");
        a.run_to_out(1);
        assert_eq!(
            (a.vcpu.get_regs().unwrap().rbx, a.counter(), b.counter()),
            (101, 101, 105)
        );
    }
}
