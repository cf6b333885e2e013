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

/// The VMM's own memory, seen from outside (auraed, for `/metrics`): the resident memory of
/// every mapping of process `pid` but its guest RAM (the one mapping of `guest_bytes`, or
/// else the largest). None when its `smaps` cannot be read (the VMM has ended).
pub fn overhead_of(pid: u32, guest_bytes: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(overhead_in(&smaps, guest_bytes))
}

/// `overhead_of` over the text of an `smaps` file.
fn overhead_in(smaps: &str, guest_bytes: u64) -> u64 {
    let kib = |l: &str, key: &str| {
        l.strip_prefix(key)
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    // (size, rss) of each mapping, in KiB.
    let mut maps: Vec<(u64, u64)> = Vec::new();
    for l in smaps.lines() {
        if let Some(size) = kib(l, "Size:") {
            maps.push((size, 0));
        } else if let (Some(rss), Some(last)) = (kib(l, "Rss:"), maps.last_mut()) {
            last.1 = rss;
        }
    }
    let total: u64 = maps.iter().map(|m| m.1).sum();
    let guest = maps
        .iter()
        .find(|m| m.0 * 1024 == guest_bytes)
        .or_else(|| maps.iter().max_by_key(|m| m.0))
        .map_or(0, |m| m.1);
    total.saturating_sub(guest) * 1024
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_overhead_is_every_mapping_but_the_guests() {
        let smaps = "55d0-55d8 r-xp 0 08:01 1 /aurae-vmm\nSize:  2048 kB\nRss:  900 kB\n\
                     7f00-7f40 rw-p 0 00:00 0\nSize:  262144 kB\nRss:  50000 kB\n\
                     7ffc-7ffd rw-p 0 00:00 0 [stack]\nSize:  132 kB\nRss:  20 kB\n";
        assert_eq!(super::overhead_in(smaps, 256 << 20), 920 * 1024);
        // No mapping of the guest's size: the largest is taken for it.
        assert_eq!(super::overhead_in(smaps, 1 << 30), 920 * 1024);
        assert_eq!(super::overhead_in("", 1 << 20), 0);
    }
}
