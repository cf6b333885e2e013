//! vCPU state at the kernel's 64-bit entry: CPUID with per-CPU APIC IDs, long mode with the
//! identity page tables and GDT from `boot`, boot_params in %rsi, an x87/SSE reset state, and
//! the local APIC's LINT0/LINT1 as ExtINT/NMI (virtual-wire mode).

use super::boot;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// CPUID as KVM supports it, with this vCPU's APIC ID and the vCPU count filled in.
fn cpuid_for(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut c = base.clone();
    for e in c.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.edx |= 1 << 28; // HTT: the count above is valid
                                  // "Running under a hypervisor": without it the guest ignores the KVM leaves,
                                  // so no kvm-clock (and no wall clock from the host: a child would think
                                  // it is 1999 and refuse every certificate).
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    c
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

pub fn setup(vcpu: &VcpuFd, base_cpuid: &CpuId, id: u8, count: u8, rip: u64) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_cpuid2(&cpuid_for(base_cpuid, id, count))?;

    let mut sregs = vcpu.get_sregs()?;
    let code = segment(boot::BOOT_CS, 0xb, true);
    let data = segment(boot::BOOT_DS, 0x3, false);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        s: 0,
        type_: 0xb,
        g: 0,
        db: 0,
        limit: 0xfffff,
        ..segment(boot::BOOT_TSS, 0xb, false)
    };
    sregs.gdt.base = boot::GDT_ADDR;
    sregs.gdt.limit = (boot::GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = boot::PML4;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)?;

    vcpu.set_regs(&kvm_regs {
        rip,
        rsi: boot::ZERO_PAGE,
        rsp: boot::BOOT_STACK,
        rbp: boot::BOOT_STACK,
        rflags: 0x2,
        ..Default::default()
    })?;
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })?;

    let mut lapic = vcpu.get_lapic()?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut b = [0u8; 4];
        for (i, v) in lapic.regs[reg..reg + 4].iter().enumerate() {
            b[i] = *v as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, byte) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *byte as _;
        }
    }
    vcpu.set_lapic(&lapic)
}
