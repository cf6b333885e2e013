//! Guest memory layout and the x86-64 Linux boot protocol: the kernel (bzImage or ELF
//! vmlinux), the initramfs, the command line, the zero page with its e820 map, identity page
//! tables, a GDT, and an MP table so the kernel finds every vCPU and the IO-APIC without ACPI.
//!
//! ```text
//! 0x0500  GDT                0x9000  PML4   0xa000 PDPT   0xb000 PD (1 GiB identity, 2 MiB pages)
//! 0x7000  zero page          0x8ff0  boot stack
//! 0x9fc00 MP floating pointer + MP table (the kernel scans the last KiB below 640 KiB)
//! 0x20000 command line       1 MiB   kernel (bzImage protected-mode part, or vmlinux)
//! top of RAM, page aligned: initramfs
//! ```

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, KernelLoader};
use std::fs::File;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub const GDT_ADDR: u64 = 0x500;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const MPTABLE: u64 = 0x9fc00;
const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
const HIMEM: u64 = 0x10_0000;
/// The 32-bit hole for device MMIO, the IO-APIC and the local APICs starts here; RAM stays
/// below it.
pub const MMIO_START: u64 = 0xc000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IRQ lines routed through the IO-APIC.
pub const IOAPIC_PINS: u8 = 24;

/// GDT: null, null, code64 at selector 0x10, data at 0x18 (the 64-bit boot protocol's
/// __BOOT_CS and __BOOT_DS), TSS at 0x20.
pub const GDT: [u64; 5] = [
    0,
    0,
    0x00af_9b00_0000_ffff, // code: present, DPL 0, exec/read, accessed, L=1, G=1
    0x00cf_9300_0000_ffff, // data: present, read/write, accessed, D/B=1, G=1
    0x008f_8b00_0000_ffff, // TSS (busy), as KVM wants a valid TR
];
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("kernel {path}: neither a bzImage nor a 64-bit ELF vmlinux ({bz}; {elf})")]
    Kernel { path: String, bz: String, elf: String },
    #[error("initramfs {path} ({size} B) does not fit below {limit:#x} beside the kernel; give the VM more memory")]
    InitrdTooBig { path: String, size: u64, limit: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

/// Where the kernel starts, and in which mode it expects to be entered.
pub struct Entry {
    pub rip: u64,
}

pub fn memory(bytes: u64) -> Result<GuestMemoryMmap, BootError> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).map_err(|e| BootError::Memory(e.to_string()))
}

fn write<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, val: T, at: u64) -> Result<(), BootError> {
    mem.write_obj(val, GuestAddress(at))
        .map_err(|e| BootError::Memory(format!("write at {at:#x}: {e}")))
}

/// Loads everything and returns the kernel's 64-bit entry point.
/// `kernel` and `initramfs` are open files (the runtime opened them) with their names for
/// messages.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: (File, &str),
    initramfs: Option<(File, &str)>,
    cmdline: &str,
    vcpus: u8,
) -> Result<Entry, BootError> {
    let (mut k, kernel) = kernel;
    std::io::Seek::rewind(&mut k).map_err(|source| BootError::Open {
        what: "kernel",
        path: kernel.to_owned(),
        source,
    })?;
    let (rip, kernel_end, mut params) =
        match loader::bzimage::BzImage::load(mem, None, &mut k, Some(GuestAddress(HIMEM))) {
            Ok(r) => {
                let mut p = boot_params::default();
                if let Some(h) = r.setup_header {
                    p.hdr = h;
                }
                // The 64-bit entry point sits 0x200 past the protected-mode code.
                (r.kernel_load.raw_value() + 0x200, r.kernel_end, p)
            }
            Err(bz) => {
                let r = loader::elf::Elf::load(mem, None, &mut k, Some(GuestAddress(HIMEM))).map_err(|elf| {
                    BootError::Kernel {
                        path: kernel.to_owned(),
                        bz: bz.to_string(),
                        elf: elf.to_string(),
                    }
                })?;
                let mut p = boot_params::default();
                p.hdr.boot_flag = 0xaa55;
                p.hdr.header = 0x5372_6448;
                p.hdr.kernel_alignment = 0x0100_0000;
                (r.kernel_load.raw_value(), r.kernel_end, p)
            }
        };
    let mem_end = mem.last_addr().raw_value() + 1;

    // Command line.
    let mut bytes = cmdline.as_bytes().to_vec();
    if bytes.len() >= CMDLINE_MAX || bytes.contains(&0) {
        return Err(BootError::Cmdline(format!(
            "{} bytes or a NUL byte; at most {} bytes without NUL",
            bytes.len(),
            CMDLINE_MAX - 1
        )));
    }
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))
        .map_err(|e| BootError::Memory(e.to_string()))?;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = (bytes.len() - 1) as u32;

    // Initramfs, at the top of RAM below what the kernel says it can reach.
    if let Some((mut f, path)) = initramfs {
        let size = f
            .metadata()
            .map_err(|source| BootError::Open {
                what: "initramfs",
                path: path.to_owned(),
                source,
            })?
            .len();
        let max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            m => u64::from(m),
        };
        let limit = mem_end.min(max + 1);
        // Keep clear of the kernel and of its decompression area (init_size past the
        // 16 MiB where a relocatable bzImage decompresses itself).
        let floor = kernel_end.max(0x0100_0000 + u64::from(params.hdr.init_size));
        let at = limit.checked_sub(size).map(|a| a & !0xfff).filter(|a| *a >= floor);
        let Some(at) = at else {
            return Err(BootError::InitrdTooBig {
                path: path.to_owned(),
                size,
                limit,
            });
        };
        // From its start, whoever read it before (the runtime checks what it passes).
        std::io::Seek::rewind(&mut f).map_err(|source| BootError::Open {
            what: "initramfs",
            path: path.to_owned(),
            source,
        })?;
        mem.read_exact_volatile_from(GuestAddress(at), &mut f, size as usize)
            .map_err(|e| BootError::Memory(format!("reading {path}: {e}")))?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    params.hdr.type_of_loader = 0xff;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.loadflags |= 0x80; // CAN_USE_HEAP
    let e820 = [
        (0, MPTABLE, 1),
        (MPTABLE, 0xa0000 - MPTABLE, 2),
        (HIMEM, mem_end - HIMEM, 1),
    ];
    for (i, (addr, size, type_)) in e820.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = e820.len() as u8;
    write(mem, params, ZERO_PAGE)?;

    for (i, d) in GDT.iter().enumerate() {
        write(mem, *d, GDT_ADDR + 8 * i as u64)?;
    }
    // Identity-map the first GiB with 2 MiB pages; the kernel builds its own tables at once.
    write(mem, PDPT | 0x3, PML4)?;
    write(mem, PD | 0x3, PDPT)?;
    for i in 0..512u64 {
        write(mem, (i << 21) | 0x83, PD + 8 * i)?;
    }
    mptable(mem, vcpus)?;
    Ok(Entry { rip })
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Intel MultiProcessor Specification 1.4 tables: one processor entry per vCPU, an ISA bus,
/// the IO-APIC with its 24 pins identity-routed, and LINT0/LINT1 as ExtINT/NMI.
fn mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), BootError> {
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = if id == 0 { 0x3 } else { 0x1 }; // enabled, BSP
        entries.extend([0, id, 0x14, flags]);
        entries.extend(0x600u32.to_le_bytes()); // signature: family 6
        entries.extend(0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([1, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([2, ioapic_id, 0x11, 1]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // type 3 (I/O interrupt), INT, default polarity/trigger, ISA bus irq -> IO-APIC pin.
        entries.extend([3, 0, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // type 4 (local interrupt): ExtINT on LINT0 of the BSP, NMI on LINT1 of every CPU.
    entries.extend([4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend([4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE + 16;
    let mut table: Vec<u8> = Vec::with_capacity(44 + entries.len());
    table.extend(*b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.extend([4, 0]); // spec rev, checksum (filled below)
    table.extend(*b"AURAE   ");
    table.extend(*b"AURAE-VMM   ");
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDR.to_le_bytes());
    table.extend([0u8; 4]); // extended table length, checksum, reserved
    table.extend(entries);
    table[7] = checksum(&table);

    let mut mpf: Vec<u8> = Vec::with_capacity(16);
    mpf.extend(*b"_MP_");
    mpf.extend((table_addr as u32).to_le_bytes());
    mpf.extend([1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (x16), rev 1.4, checksum, features
    mpf[10] = checksum(&mpf);

    let end = table_addr + table.len() as u64;
    if end > 0xa0000 {
        return Err(BootError::Memory(format!(
            "MP table for {vcpus} vCPUs does not fit below 640 KiB"
        )));
    }
    mem.write_slice(&mpf, GuestAddress(MPTABLE))
        .and_then(|()| mem.write_slice(&table, GuestAddress(table_addr)))
        .map_err(|e| BootError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp_tables_checksum_to_zero_and_list_every_cpu() {
        let mem = memory(16 << 20).unwrap();
        mptable(&mem, 4).unwrap();
        let mut mpf = [0u8; 16];
        mem.read_slice(&mut mpf, GuestAddress(MPTABLE)).unwrap();
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(mpf.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(MPTABLE + 16)).unwrap();
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(MPTABLE + 16)).unwrap();
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        assert_eq!(table[44], 0, "first entry is a processor");
        assert_eq!(table[44 + 3], 3, "CPU 0 is the enabled BSP");
    }

    #[test]
    fn refuses_a_kernel_that_is_neither_format() {
        let mem = memory(64 << 20).unwrap();
        let mut k = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut k, &[0u8; 8192]).unwrap();
        let e = load(&mem, (k, "k"), None, "console=ttyS0", 1).err().unwrap();
        assert!(e.to_string().contains("neither a bzImage nor"), "{e}");
    }
}
