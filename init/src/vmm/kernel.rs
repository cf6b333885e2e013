//! Recognising a kernel image before anything is created for it.

use std::path::{Path, PathBuf};

/// Why a file cannot be a VM's kernel; the messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is neither a bzImage nor an x86-64 vmlinux", path.display())]
    NotAKernel { path: PathBuf },
}

/// Checks a kernel image's format without loading it: a bzImage ("HdrS" at 0x202), or an
/// x86-64 ELF that carries the kernel's own "Linux" or "Xen" ELF notes (so an ordinary
/// program is not mistaken for a vmlinux).
pub fn check_kernel(path: &Path) -> Result<(), KernelImageError> {
    let mut f = std::fs::File::open(path).map_err(|source| KernelImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    check_kernel_file(&mut f, path)
}

/// `check_kernel` on a file already open (`path` names it in errors): a caller that opened
/// it with its own flags checks what it opened, not whatever the path names by then.
pub fn check_kernel_file(f: &mut std::fs::File, path: &Path) -> Result<(), KernelImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let ctx = |source| KernelImageError::Read {
        path: path.to_owned(),
        source,
    };
    let mut head = vec![0u8; 0x206];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(ctx)? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(());
    }
    let not = || KernelImageError::NotAKernel { path: path.to_owned() };
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    if n < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || u16_at(&head, 18) != 62 {
        return Err(not());
    }
    let (phoff, phentsize, phnum) = (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56));
    for i in 0..u64::from(phnum.min(64)) {
        let mut ph = [0u8; 56];
        // A hostile header may point anywhere: an offset past u64 is simply not a note.
        let Some(at) = phoff.checked_add(i * u64::from(phentsize)) else {
            break;
        };
        f.seek(SeekFrom::Start(at)).map_err(ctx)?;
        f.read_exact(&mut ph).map_err(ctx)?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(64 << 10));
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).map_err(ctx)?;
        f.read_exact(&mut notes).map_err(ctx)?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let word = |o: usize| u32::from_le_bytes([notes[o], notes[o + 1], notes[o + 2], notes[o + 3]]) as usize;
            let (namesz, descsz) = (word(at), word(at + 4));
            let name = notes.get(at + 12..at + 12 + namesz).unwrap_or(&[]);
            if name == b"Linux\0" || name == b"Xen\0" {
                return Ok(());
            }
            at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Err(not())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kernels_and_refuses_programs() {
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("bz");
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&bz, &img).unwrap();
        assert!(check_kernel(&bz).is_ok());
        let e = check_kernel(std::path::Path::new("/proc/self/exe"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a bzImage nor"), "{e}");
        let zeros = dir.path().join("z");
        std::fs::write(&zeros, [0u8; 10]).unwrap();
        assert!(check_kernel(&zeros).is_err());
        assert!(check_kernel(&dir.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("cannot open"));
        if let Ok(v) = std::env::var("AURAE_VMLINUX") {
            check_kernel(std::path::Path::new(&v)).unwrap();
        }
    }
}
