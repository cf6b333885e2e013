//! A check of a layer's tar stream, block by block, before the `tar` crate reads it.
//!
//! The tar crate reads a PAX extension header (`x`, `g`) or a GNU long name or long link
//! (`L`, `K`) whole into memory, whatever size its header declares, and skips an entry's
//! unread data by reading it: a 4 MB gzip layer whose PAX header declares 4 GiB took PID 1
//! from 7 MiB to 968 MiB and the kernel panicked. This reader sits between the decompressor
//! and the crate, parses every header itself (only the size and type fields, in place, no
//! allocation beyond one PAX header's bounded copy) and ends the stream with an error as
//! soon as a header declares more than the limits allow, before a byte of its data is read:
//!
//! - an extension header holds at most [`Limits::ext_max`] bytes, and all of a layer's at
//!   most [`Limits::ext_total`];
//! - the entries' data (after a PAX `size=` override) adds up to at most
//!   [`Limits::data_budget`] (the store's free space): a gzip bomb is refused at its header;
//! - a layer has at most [`Limits::entries`] entries (PID 1 keeps a little per entry);
//! - GNU sparse entries (`S`, whose extension blocks chain without a size) are refused;
//! - after the end-of-archive block at most [`TRAILER_MAX`] bytes may follow (the diff ID
//!   hashes them, so they are read, but never unboundedly).
//!
//! A refusal is kept in [`Verdict`], typed, for the unpacker to report instead of the
//! crate's generic I/O error.

use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

const BLOCK: usize = 512;

/// Bytes that may follow the end-of-archive block (tar pads to 10 KiB records; compressors
/// may add a little).
pub const TRAILER_MAX: u64 = 1 << 20;

/// What one layer may declare.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One PAX or GNU extension header's bytes.
    pub ext_max: u64,
    /// All extension headers' bytes in the layer.
    pub ext_total: u64,
    /// The entries' data, all together: the store's free space.
    pub data_budget: u64,
    /// Entries in the layer.
    pub entries: u64,
}

impl Limits {
    /// 256 KiB per extension header (a PAX header of a real image holds a few names and
    /// times), 64 MiB of them per layer, 250,000 entries (the largest real layers hold
    /// ~100,000 files), and the data within `data_budget`.
    pub fn for_budget(data_budget: u64) -> Limits {
        Limits {
            ext_max: 256 << 10,
            ext_total: 64 << 20,
            data_budget,
            entries: 250_000,
        }
    }
}

/// Why the guard ended a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// Entry number `entry` (from 0) is an extension header of `size` bytes.
    ExtensionTooLarge {
        entry: u64,
        kind: char,
        size: u64,
        max: u64,
    },
    /// The layer's extension headers add up to more than `max`.
    ExtensionsTooMany { max: u64 },
    /// The data declared so far (`declared`) exceeds the budget.
    DataOverBudget { declared: u64, budget: u64 },
    /// More than `max` entries.
    TooManyEntries { max: u64 },
    /// A header that is not a tar header (bad size field or checksum).
    BadHeader { entry: u64, why: &'static str },
    /// A GNU sparse entry.
    Sparse { entry: u64 },
    /// More than [`TRAILER_MAX`] bytes after the archive's end.
    Trailer,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::ExtensionTooLarge { entry, kind, size, max } => write!(
                f,
                "entry {entry}: a '{kind}' extension header declares {size} bytes; at most {max} are read"
            ),
            Breach::ExtensionsTooMany { max } => {
                write!(f, "its extension headers add up to more than {max} bytes")
            }
            Breach::DataOverBudget { declared, budget } => write!(
                f,
                "its entries declare {declared} bytes of content, more than the store's {budget} free bytes"
            ),
            Breach::TooManyEntries { max } => write!(f, "it has more than {max} entries"),
            Breach::BadHeader { entry, why } => write!(f, "entry {entry}: not a tar header ({why})"),
            Breach::Sparse { entry } => write!(f, "entry {entry}: GNU sparse files are not supported"),
            Breach::Trailer => write!(f, "more than {TRAILER_MAX} bytes follow the archive's end"),
        }
    }
}

/// Where the guard's refusal is kept for the unpacker (one thread: the unpack's).
pub type Verdict = Rc<RefCell<Option<Breach>>>;

enum State {
    /// Collecting a header block.
    Header,
    /// Skipping `left` bytes of an entry's data and padding; `pax` collects a PAX `x`
    /// header's data (its first `keep` bytes, no padding) to read a `size=` record from.
    Data { left: u64, pax: Option<Vec<u8>>, keep: u64 },
    /// After the end-of-archive block: `seen` bytes so far.
    Trailer { seen: u64 },
}

pub struct TarGuard<R> {
    inner: R,
    limits: Limits,
    state: State,
    block: [u8; BLOCK],
    filled: usize,
    entries: u64,
    ext_total: u64,
    declared: u64,
    /// The size a PAX header set for the next entry.
    next_size: Option<u64>,
    verdict: Verdict,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R, limits: Limits) -> (TarGuard<R>, Verdict) {
        let verdict: Verdict = Rc::default();
        let g = TarGuard {
            inner,
            limits,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            entries: 0,
            ext_total: 0,
            declared: 0,
            next_size: None,
            verdict: verdict.clone(),
        };
        (g, verdict)
    }

    /// Feeds `bytes` (just read) through the state machine.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Breach> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Trailer { seen } => {
                    *seen += bytes.len() as u64;
                    if *seen > TRAILER_MAX {
                        return Err(Breach::Trailer);
                    }
                    return Ok(());
                }
                State::Data { left, pax, keep } => {
                    let n = (bytes.len() as u64).min(*left) as usize;
                    if let Some(p) = pax {
                        let k = (n as u64).min(*keep) as usize;
                        p.extend_from_slice(&bytes[..k]);
                        *keep -= k as u64;
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if let State::Data { pax: Some(p), .. } = std::mem::replace(&mut self.state, State::Header) {
                            self.next_size = pax_size(&p);
                        }
                    }
                }
                State::Header => {
                    let n = (BLOCK - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.header()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header block is in `self.block`.
    fn header(&mut self) -> Result<(), Breach> {
        let h = &self.block;
        if h.iter().all(|b| *b == 0) {
            // The tar crate stops at the first zero block; what follows is only hashed.
            self.state = State::Trailer { seen: 0 };
            return Ok(());
        }
        let entry = self.entries;
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(Breach::TooManyEntries {
                max: self.limits.entries,
            });
        }
        if !checksum_ok(h) {
            return Err(Breach::BadHeader {
                entry,
                why: "its checksum is wrong",
            });
        }
        let stated = size_field(&h[124..136]).ok_or(Breach::BadHeader {
            entry,
            why: "its size field is not a number",
        })?;
        let kind = h[156];
        let ext = matches!(kind, b'x' | b'g' | b'L' | b'K');
        // A PAX size applies to the next entry that is not itself an extension header.
        let size = if ext {
            stated
        } else {
            self.next_size.take().unwrap_or(stated)
        };
        if kind == b'S' {
            return Err(Breach::Sparse { entry });
        }
        let mut pax = None;
        if ext {
            if size > self.limits.ext_max {
                return Err(Breach::ExtensionTooLarge {
                    entry,
                    kind: char::from(kind),
                    size,
                    max: self.limits.ext_max,
                });
            }
            self.ext_total += size;
            if self.ext_total > self.limits.ext_total {
                return Err(Breach::ExtensionsTooMany {
                    max: self.limits.ext_total,
                });
            }
            if kind == b'x' {
                pax = Some(Vec::with_capacity(size as usize));
            }
        } else {
            self.declared = self.declared.saturating_add(size);
            if self.declared > self.limits.data_budget {
                return Err(Breach::DataOverBudget {
                    declared: self.declared,
                    budget: self.limits.data_budget,
                });
            }
        }
        let left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if left > 0 {
            self.state = State::Data { left, pax, keep: size };
        } else if pax.is_some() {
            self.next_size = None;
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(b) = self.verdict.borrow().as_ref() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, b.to_string()));
        }
        let n = self.inner.read(buf)?;
        if let Err(b) = self.feed(&buf[..n]) {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, b.to_string());
            *self.verdict.borrow_mut() = Some(b);
            return Err(e);
        }
        Ok(n)
    }
}

/// The ustar checksum: the header's bytes summed with the checksum field as spaces.
fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Some(stated) = octal(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) })
        .sum();
    sum == stated
}

/// A size field: octal (NUL or space terminated), or GNU base-256 (high bit set).
fn size_field(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256, big-endian, the marker bit cleared; more than 8 bytes of value is no
        // size any layer could have.
        let body = &f[1..];
        let (high, low) = body.split_at(body.len().saturating_sub(8));
        if f[0] & 0x7f != 0 || high.iter().any(|b| *b != 0) {
            return None;
        }
        return Some(low.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)));
    }
    octal(f)
}

fn octal(f: &[u8]) -> Option<u64> {
    let f = &f[f.iter().position(|b| *b != b' ').unwrap_or(f.len())..];
    let (digits, rest) = f.split_at(f.iter().position(|b| !(b'0'..=b'7').contains(b)).unwrap_or(f.len()));
    if !rest.iter().all(|b| *b == 0 || *b == b' ') {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| n.checked_mul(8)?.checked_add(u64::from(d - b'0')))
}

/// The `size` record of a PAX header ("LEN size=N\n" records), if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut size = None;
    // A malformed record ends the reading; the tar crate then refuses the header itself.
    while let Some(sp) = rest.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp || len > rest.len() {
            break;
        }
        let record = &rest[sp + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
        }
        rest = &rest[len..];
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block of `kind` declaring `size`, checksummed.
    fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        crate::image::unpack::testing::raw_header(name.as_bytes(), kind, size, b"", true)
    }

    fn run(stream: &[u8], limits: Limits) -> Result<u64, Breach> {
        let (mut g, verdict) = TarGuard::new(stream, limits);
        let mut sink = Vec::new();
        match g.read_to_end(&mut sink) {
            Ok(n) => Ok(n as u64),
            Err(_) => Err(verdict.borrow().clone().unwrap()),
        }
    }

    const BIG: Limits = Limits {
        ext_max: 256 << 10,
        ext_total: 64 << 20,
        data_budget: 1 << 30,
        entries: 1000,
    };

    #[test]
    fn a_real_archive_passes_whole() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(200));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_dir("dir", ".").unwrap();
        let tar = b.into_inner().unwrap();
        assert_eq!(run(&tar, BIG), Ok(tar.len() as u64));
    }

    #[test]
    fn huge_extension_headers_are_refused_at_their_header() {
        for kind in [b'x', b'g', b'L', b'K'] {
            // 16 GiB declared; not one byte of it follows, and none is needed to refuse.
            let stream = header("././@LongLink", kind, 16 << 30);
            let e = run(&stream, BIG).unwrap_err();
            assert_eq!(
                e,
                Breach::ExtensionTooLarge {
                    entry: 0,
                    kind: char::from(kind),
                    size: 16 << 30,
                    max: 256 << 10
                }
            );
        }
    }

    #[test]
    fn a_pax_size_counts_against_the_budget_and_a_bomb_is_refused_at_its_header() {
        let mut stream = header("pax", b'x', 19).to_vec();
        let mut rec = b"19 size=2000000000\n".to_vec();
        rec.resize(BLOCK, 0);
        stream.extend_from_slice(&rec);
        stream.extend_from_slice(&header("f", b'0', 1));
        let e = run(&stream, BIG).unwrap_err();
        assert_eq!(
            e,
            Breach::DataOverBudget {
                declared: 2_000_000_000,
                budget: 1 << 30
            }
        );
        let bomb = header("zeros", b'0', 64 << 30);
        assert!(matches!(run(&bomb, BIG), Err(Breach::DataOverBudget { .. })));
    }

    #[test]
    fn sparse_entries_bad_headers_and_entry_floods_are_refused() {
        assert_eq!(run(&header("s", b'S', 0), BIG), Err(Breach::Sparse { entry: 0 }));
        let mut bad = header("b", b'0', 0);
        bad[0] ^= 1;
        assert!(matches!(run(&bad, BIG), Err(Breach::BadHeader { .. })));
        let flood: Vec<u8> = (0..3).flat_map(|_| header("e", b'5', 0)).collect();
        let few = Limits { entries: 2, ..BIG };
        assert_eq!(run(&flood, few), Err(Breach::TooManyEntries { max: 2 }));
        let mut exts = Vec::new();
        for _ in 0..3 {
            exts.extend_from_slice(&header("L", b'L', 400));
            exts.extend_from_slice(&[b'n'; BLOCK]);
        }
        let tight = Limits { ext_total: 1000, ..BIG };
        assert_eq!(run(&exts, tight), Err(Breach::ExtensionsTooMany { max: 1000 }));
    }

    #[test]
    fn what_follows_the_end_is_bounded() {
        let mut s = header("f", b'0', 0).to_vec();
        // The end-of-archive block, then exactly TRAILER_MAX bytes.
        s.extend(std::iter::repeat_n(0u8, BLOCK + TRAILER_MAX as usize));
        assert!(run(&s, BIG).is_ok(), "a megabyte of padding is fine");
        s.push(0);
        assert_eq!(run(&s, BIG), Err(Breach::Trailer));
    }

    #[test]
    fn size_fields_in_octal_and_base_256() {
        assert_eq!(size_field(b"00000000012\0"), Some(10));
        assert_eq!(size_field(b"         12 "), Some(10));
        assert_eq!(size_field(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(size_field(&b), Some(1 << 40));
        b[1] = 1;
        assert_eq!(size_field(&b), None, "more than 64 bits");
        assert_eq!(size_field(b"0000000001x\0"), None);
        assert_eq!(pax_size(b"19 size=2000000000\n11 path=ab\n"), Some(2_000_000_000));
        assert_eq!(pax_size(b"9 path=a\n"), None);
    }
}
