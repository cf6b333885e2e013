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

/// "rss R KiB, guest RAM resident G KiB, VMM overhead O KiB (its own A KiB, shared S KiB)":
/// VmRSS; the guest RAM resident (mincore over its mapping); and every other mapping's
/// resident memory (`smaps`, opened before the jail), split into what is this VMM's own
/// (anonymous: heap, stacks, pages of auraed's data it wrote), which is what one more
/// VMM costs the node, and auraed's file pages it maps (its text and read-only data, on
/// the appliance's in-memory root, mapped by PID 1 and every VMM alike), which cost
/// nothing more per VMM but count in its RSS, fault-around mapping up to 64 KiB around
/// each page touched.
pub(super) fn report(mem: &GuestMemoryMmap, status: Option<&std::fs::File>, smaps: Option<&std::fs::File>) -> String {
    let read = |f: Option<&std::fs::File>| {
        f.and_then(|f| {
            use std::io::{Read, Seek};
            let mut f = f;
            let mut s = String::new();
            f.rewind().and_then(|_| f.read_to_string(&mut s)).ok().map(|_| s)
        })
        .unwrap_or_default()
    };
    let rss_kib: u64 = read(status)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let mut resident_pages = 0u64;
    let mut guest_bytes = 0u64;
    for r in mem.iter() {
        guest_bytes += r.len();
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
    let beyond = beyond_guest(&read(smaps), guest_bytes);
    format!(
        "memory: rss {rss_kib} KiB, guest RAM resident {} KiB, VMM overhead {} KiB (its own {} KiB, shared {} KiB)",
        resident_pages * 4,
        beyond.rss_kib,
        beyond.anon_kib,
        beyond.rss_kib.saturating_sub(beyond.anon_kib)
    )
}

/// The VMM's own memory, seen from outside (auraed, for `/metrics`): the resident memory of
/// every mapping of process `pid` but its guest RAM (the one mapping of `guest_bytes`, or
/// else the largest). None when its `smaps` cannot be read (the VMM has ended).
pub fn overhead_of(pid: u32, guest_bytes: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(beyond_guest(&smaps, guest_bytes).rss_kib * 1024)
}

/// What the mappings other than guest RAM hold resident, in KiB.
#[derive(Debug, PartialEq, Eq)]
struct Beyond {
    rss_kib: u64,
    /// Of which anonymous (this process's own).
    anon_kib: u64,
}

/// Over the text of an `smaps` file: every mapping but the guest's (the one of
/// `guest_bytes`, or else the largest).
fn beyond_guest(smaps: &str, guest_bytes: u64) -> Beyond {
    let kib = |l: &str, key: &str| {
        l.strip_prefix(key)
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    // (size, rss, anonymous) of each mapping, in KiB.
    let mut maps: Vec<(u64, u64, u64)> = Vec::new();
    for l in smaps.lines() {
        if let Some(size) = kib(l, "Size:") {
            maps.push((size, 0, 0));
        } else if let (Some(rss), Some(last)) = (kib(l, "Rss:"), maps.last_mut()) {
            last.1 = rss;
        } else if let (Some(anon), Some(last)) = (kib(l, "Anonymous:"), maps.last_mut()) {
            last.2 = anon;
        }
    }
    let guest =
        (maps.iter().position(|m| m.0 * 1024 == guest_bytes)).or_else(|| (0..maps.len()).max_by_key(|&i| maps[i].0));
    let others = maps.iter().enumerate().filter(|(i, _)| Some(*i) != guest);
    let (rss_kib, anon_kib) = others.fold((0, 0), |(r, a), (_, m)| (r + m.1, a + m.2));
    Beyond { rss_kib, anon_kib }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_overhead_is_every_mapping_but_the_guests() {
        let smaps = "55d0-55d8 r-xp 0 08:01 1 /aurae-vmm\nSize:  2048 kB\nRss:  900 kB\n\
                     7f00-7f40 rw-p 0 00:00 0\nSize:  262144 kB\nRss:  50000 kB\n\
                     7ffc-7ffd rw-p 0 00:00 0 [stack]\nSize:  132 kB\nRss:  20 kB\nAnonymous:  12 kB\n";
        let b = |rss_kib, anon_kib| super::Beyond { rss_kib, anon_kib };
        assert_eq!(super::beyond_guest(smaps, 256 << 20), b(920, 12));
        // No mapping of the guest's size: the largest is taken for it.
        assert_eq!(super::beyond_guest(smaps, 1 << 30), b(920, 12));
        assert_eq!(super::beyond_guest("", 1 << 20), b(0, 0));
    }
}
