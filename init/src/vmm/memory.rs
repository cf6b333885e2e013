//! Guest memory as KVM sees it, and how much of the VMM's memory is guest RAM.

use super::{kvm_err, VmmError};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub(super) fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, r) in mem.iter().enumerate() {
        let host = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Io {
                what: "guest memory",
                source: std::io::Error::other(e.to_string()),
            })?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.start_addr().raw_value(),
            memory_size: r.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives every vCPU: run()
        // keeps it until the process exits.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

/// "rss R KiB, guest RAM resident G KiB, VMM overhead R-G KiB": VmRSS, and how much of it is
/// guest RAM (mincore over the guest mapping).
pub(super) fn report(mem: &GuestMemoryMmap, status: Option<&std::fs::File>) -> String {
    let rss_kib: u64 = status
        .and_then(|f| {
            use std::io::{Read, Seek};
            let mut f = f;
            let mut s = String::new();
            f.rewind().and_then(|_| f.read_to_string(&mut s)).ok().map(|_| s)
        })
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let mut resident_pages = 0u64;
    for r in mem.iter() {
        let Ok(host) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = r.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: [host, host+len) is the region's live mapping; vec has one byte per page.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            resident_pages += vec.iter().filter(|b| *b & 1 == 1).count() as u64;
        }
    }
    let guest_kib = resident_pages * 4;
    format!(
        "memory: rss {rss_kib} KiB, guest RAM resident {guest_kib} KiB, VMM overhead {} KiB",
        rss_kib.saturating_sub(guest_kib)
    )
}
