//! Unpacking a layer into a directory of its own that overlayfs can stack.
//!
//! A layer's tar is applied to the view of its parents, as containerd's overlay snapshotter
//! does: the parents' directories are mounted as an overlay's lower layers with the new
//! layer's (empty) directory as the upper one, and the tar is written into that mount.
//! So every path resolves against the whole image below it (an absolute symlink
//! `lib -> /usr/lib` from a lower layer takes a later `lib/x` to `usr/lib/x`), and the
//! kernel records deletions the overlay way (a whiteout device, an opaque directory) in
//! the upper directory, which is then exactly the layer as an overlay lower directory.
//!
//! Safety, per entry:
//! - names with `..` are refused (the whole layer is); absolute names are taken as
//!   relative to the root;
//! - every directory a name goes through is opened with `openat2(RESOLVE_IN_ROOT)`, so a
//!   symlink, absolute or `../../..`, resolves inside the image's root and never outside;
//! - the entry itself is made with `*at` calls relative to that directory, never following
//!   a symlink in its last component (a file replaces a symlink, it is not written through
//!   it); hard links are resolved the same way, inside the root;
//! - OCI whiteouts: `.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` hides
//!   everything the layers below have in its directory (what this layer wrote stays);
//! - ownership and mode bits (setuid included) as in the tar, as containerd does as root;
//!   device nodes are made (a cell's image root is mounted `nodev`, so they do not open);
//! - the uncompressed stream's SHA-256 must be the config's diff ID, or the layer is
//!   refused; the store's limit holds while writing;
//! - before the tar crate reads a header, `tar_guard` has checked it: extension headers
//!   (PAX, GNU long names) are capped, the declared data must fit the store, GNU sparse
//!   entries and floods of entries are refused, and what follows the archive is bounded,
//!   so no header can make PID 1 allocate or read what it declares;
//! - an entry may lie at most [`MAX_DEPTH`] directories deep where it really lands (its
//!   directory's symlinks resolved), so no walk of the store meets an unbounded tree; the
//!   store's deletes are iterative anyway (`tree.rs`);
//! - a whiteout of `.`, `..` or nothing is refused by name; an opaque whiteout at a
//!   layer's root is legal and hides everything below.

use super::overlay::mount_overlay;
pub use super::overlay::Layer;
use super::paths::EntryError;
use super::paths::{children, clamp, clean, in_root};
use super::store::Store;
pub use super::streams::Compression;
use super::streams::{decompressor, Hashing};
use super::tar_guard::{Breach, Limits, TarGuard};
use super::tree::{is_dir_at, remove_all_at};
use super::{Digest, ImageError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

impl Store {
    /// The layer with chain ID `chain`, if it is unpacked.
    pub fn layer(&self, chain: &Digest) -> Option<Layer> {
        let dir = self.layer_dir(chain).join("fs");
        dir.is_dir().then(|| Layer {
            chain_id: chain.clone(),
            dir,
        })
    }

    /// Unpacks blob `blob` (compressed as `compression`, diff ID `diff_id`) on top of
    /// `parents` (bottom first), once: a layer with the same chain ID is shared. Blocking;
    /// run it off the async runtime. On failure nothing of the layer stays.
    pub fn unpack(
        &self,
        parents: &[Layer],
        blob: &Digest,
        compression: Compression,
        diff_id: &Digest,
    ) -> Result<Layer, ImageError> {
        let chain = Digest::chain(parents.last().map(|l| &l.chain_id), diff_id);
        if let Some(l) = self.layer(&chain) {
            return Ok(l);
        }
        let work = Work(self.tmp_name("layer"));
        let (fs, scratch, mnt) = (work.0.join("fs"), work.0.join("work"), work.0.join("mnt"));
        for d in [&fs, &scratch, &mnt] {
            std::fs::create_dir_all(d).map_err(ImageError::io("make a layer's directory", d))?;
        }
        let root = if parents.is_empty() {
            fs.clone()
        } else {
            mount_overlay(parents, Some((&fs, &scratch)), &mnt)?;
            mnt.clone()
        };
        let file =
            std::fs::File::open(self.blob_path(blob)).map_err(ImageError::io("open a layer", self.blob_path(blob)))?;
        let mut stream = Hashing {
            inner: decompressor(file, compression).map_err(|e| refused(blob, "", e))?,
            hash: Sha256::new(),
        };
        let root_fd = open_root(&root)?;
        // A layer's data is bounded by the store's free space and, on a store larger than
        // that, by LAYER_DATA_MAX.
        let budget = self.free().min(LAYER_DATA_MAX);
        let mut u = Unpacker {
            store: self,
            layer: blob,
            root_path: std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&root_fd)))
                .map_err(ImageError::io("find a layer's root", &root))?,
            root: root_fd,
            overlay: !parents.is_empty(),
            written: HashSet::new(),
            reservation: self.reserve(0)?,
            harden: !nodev_nosuid(self.root()),
        };
        {
            let (mut guarded, verdict) = TarGuard::new(&mut stream, Limits::for_budget(budget));
            // The guard's typed refusal, where the tar crate or a read only saw an I/O error.
            let breach = |e: ImageError| {
                match verdict.borrow_mut().take() {
                Some(Breach::DataOverBudget { declared, budget }) if budget == LAYER_DATA_MAX => refused(
                    blob,
                    "",
                    format!(
                        "its entries declare at least {declared} bytes of data, more than the {} GiB one layer may unpack to",
                        LAYER_DATA_MAX >> 30
                    ),
                ),
                Some(Breach::DataOverBudget { declared, budget }) => self.full(declared - budget),
                Some(b) => refused(blob, "", b),
                None => e,
            }
            };
            let mut archive = tar::Archive::new(&mut guarded);
            let entries = archive
                .entries()
                .map_err(|e| breach(refused(blob, "", e.to_string())))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| breach(refused(blob, "", format!("not a tar archive: {e}"))))?;
                u.apply(&mut entry).map_err(breach)?;
            }
            // The hash covers the whole stream, padding after the archive included.
            std::io::copy(&mut guarded, &mut std::io::sink()).map_err(|e| breach(refused(blob, "", e.to_string())))?;
        }
        let got = Digest::from_hasher(stream.hash);
        if &got != diff_id {
            return Err(ImageError::Mismatch {
                what: format!("layer {blob}: its uncompressed content (diff ID)"),
                expected: diff_id.to_string(),
                got: got.to_string(),
            });
        }
        // The unpacker goes (its descriptors hold the overlay); its reservation stays
        // until the layer is counted in.
        let held = u.reservation.take();
        drop(u);
        if !parents.is_empty() {
            nix::mount::umount2(&mnt, nix::mount::MntFlags::empty())
                .map_err(|e| ImageError::io("unmount a layer's overlay", &mnt)(e.into()))?;
        }
        let _ = super::tree::remove_tree(&scratch);
        let _ = std::fs::remove_dir(&mnt);
        // Its files on the disk before its name (a blob's are, too): after a power cut a
        // committed layer is whole. One syncfs: nothing on a RAM store.
        std::fs::File::open(&work.0)
            .and_then(|d| nix::unistd::syncfs(&d).map_err(std::io::Error::from))
            .map_err(ImageError::io("sync an unpacked layer", &work.0))?;
        let dest = self.layer_dir(&chain);
        match std::fs::rename(&work.0, &dest) {
            // Counted in as it now is, its reservation given back in the same step.
            Ok(()) => held.settle(super::store::measure(&dest)),
            // Unpacked by someone else meanwhile: theirs is the same.
            Err(_) if self.layer(&chain).is_some() => {}
            Err(e) => return Err(ImageError::io("commit a layer", &dest)(e)),
        }
        super::store::sync_dir(dest.parent().unwrap_or(self.root()));
        Ok(Layer {
            chain_id: chain,
            dir: dest.join("fs"),
        })
    }
}

/// A layer being unpacked in `tmp/`; removed (unmounted first) unless committed.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        if self.0.exists() {
            super::store::discard(&self.0);
        }
    }
}

fn refused(layer: &Digest, entry: &str, why: impl std::fmt::Display) -> ImageError {
    ImageError::Refused {
        layer: layer.to_string(),
        entry: entry.to_owned(),
        why: why.to_string(),
    }
}

fn open_root(p: &Path) -> Result<OwnedFd, ImageError> {
    nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ImageError::io("open a layer's root", p)(e.into()))
}

struct Unpacker<'a> {
    store: &'a Store,
    layer: &'a Digest,
    root: OwnedFd,
    /// Where `root` is, as `/proc/self/fd` names it.
    root_path: PathBuf,
    /// Parents are mounted below: whiteouts have something to delete.
    overlay: bool,
    /// Paths this layer wrote (an opaque directory keeps them).
    written: HashSet<PathBuf>,
    /// What this layer has written so far (data, an inode per entry, copy-ups), held
    /// against the store's limit while it unpacks.
    reservation: super::store::Reservation,
    /// The store's filesystem is not mounted nodev and nosuid: device nodes (but a 0:0
    /// whiteout) are not made and setuid/setgid bits are dropped, so nothing on the node
    /// can open a layer's disk device or run its setuid binary from the store. (Cells run
    /// with no_new_privs on a nodev overlay: neither ever worked inside one.)
    harden: bool,
}

/// Whether the filesystem at `p` is mounted both nodev and nosuid.
fn nodev_nosuid(p: &Path) -> bool {
    use nix::sys::statvfs::FsFlags;
    nix::sys::statvfs::statvfs(p).is_ok_and(|v| v.flags().contains(FsFlags::ST_NODEV | FsFlags::ST_NOSUID))
}

/// How deep an entry may lie in a layer's root, its directories' symlinks resolved. Real
/// images stay far below (deep `node_modules` trees reach ~100); a deeper tree is an attack
/// on every walk of the store.
pub const MAX_DEPTH: usize = 512;

/// The most data one layer may unpack to, whatever the store's free space: 16 GiB (the
/// largest layers of real images, model weights, hold a few GiB).
pub const LAYER_DATA_MAX: u64 = 16 << 30;

impl Unpacker<'_> {
    fn refuse(&self, entry: &Path, why: impl std::fmt::Display) -> ImageError {
        refused(self.layer, &entry.to_string_lossy(), why)
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry
            .path()
            .map_err(|e| refused(self.layer, "", format!("unreadable name: {e}")))?
            .into_owned();
        let rel = clean(&raw).map_err(|why| self.refuse(&raw, why))?;
        if rel.components().count() > MAX_DEPTH {
            return Err(self.refuse(&raw, format!("it lies more than {MAX_DEPTH} directories deep")));
        }
        let (Some(name), parent) = (
            rel.file_name().map(OsStr::to_owned),
            rel.parent().unwrap_or(Path::new("")),
        ) else {
            return Ok(()); // the root itself ("./")
        };
        let layer = self.layer;
        let sys = |e: Errno| refused(layer, &raw.to_string_lossy(), e.desc());
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(self.refuse(
                    &raw,
                    "a whiteout of '.' or '..' (or of nothing) hides nothing a layer can name",
                ));
            }
            if !self.overlay {
                return Ok(()); // nothing below to hide
            }
            let dir = match in_root(self.root.as_fd(), parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                Ok(d) => d,
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(sys(e)),
            };
            return if hidden == b".wh..opq" {
                self.hide_lower(&dir, parent).map_err(sys)
            } else {
                remove_all_at(dir.as_fd(), OsStr::from_bytes(hidden)).map_err(sys)
            };
        }
        // Every entry costs an inode at least, whatever its size (empty files, symlinks).
        self.charge(super::store::INODE_COST)?;
        let dir = self.make_dirs(parent).map_err(|e| self.refuse(&raw, e))?;
        // Symlinks inside the root can take a short name deep: where it really lands counts.
        let depth = self
            .in_root_path(&dir)
            .map_err(|e| self.refuse(&raw, e))?
            .components()
            .count()
            + 1;
        if depth > MAX_DEPTH {
            return Err(self.refuse(
                &raw,
                format!("through its directory's symlinks it lands {depth} directories deep; at most {MAX_DEPTH}"),
            ));
        }
        let h = entry.header();
        let mode = Mode::from_bits_truncate((h.mode().unwrap_or(0o644) & 0o7777) as libc::mode_t);
        let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok()).map(Uid::from_raw);
        let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok()).map(Gid::from_raw);
        let kind = h.entry_type();
        let d = dir.as_fd();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match is_dir_at(d, &name).map_err(sys)? {
                    Some(true) => {}
                    Some(false) => {
                        remove_all_at(d, &name).map_err(sys)?;
                        nix::sys::stat::mkdirat(d, name.as_os_str(), mode).map_err(sys)?;
                    }
                    None => nix::sys::stat::mkdirat(d, name.as_os_str(), mode).map_err(sys)?,
                }
                let fd = nix::fcntl::openat(
                    d,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys)?;
                nix::unistd::fchown(&fd, uid, gid).map_err(sys)?;
                nix::sys::stat::fchmod(&fd, mode).map_err(sys)?;
            }
            T::Regular | T::Continuous => {
                remove_all_at(d, &name).map_err(sys)?;
                let fd = nix::fcntl::openat(
                    d,
                    name.as_os_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(sys)?;
                let mut f = std::fs::File::from(fd);
                self.copy(entry, &mut f, &raw)?;
                nix::unistd::fchown(&f, uid, gid).map_err(sys)?;
                // After chown, which clears setuid and setgid.
                let mode = match self.harden {
                    true => mode & !(Mode::S_ISUID | Mode::S_ISGID),
                    false => mode,
                };
                nix::sys::stat::fchmod(&f, mode).map_err(sys)?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = nix::sys::time::TimeSpec::from(std::time::Duration::from_secs(mtime));
                    let _ = nix::sys::stat::futimens(&f, &t, &t);
                }
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.refuse(&raw, e))?
                    .ok_or_else(|| self.refuse(&raw, "a symlink without a target"))?
                    .into_owned();
                remove_all_at(d, &name).map_err(sys)?;
                nix::unistd::symlinkat(target.as_os_str(), d, name.as_os_str()).map_err(sys)?;
                nix::unistd::fchownat(d, name.as_os_str(), uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(sys)?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.refuse(&raw, e))?
                    .ok_or_else(|| self.refuse(&raw, "a hard link without a target"))?
                    .into_owned();
                let target = clean(&target).map_err(|why| self.refuse(&raw, format!("its link target: {why}")))?;
                let (Some(tname), tparent) = (target.file_name(), target.parent().unwrap_or(Path::new(""))) else {
                    return Err(self.refuse(&raw, "a hard link to the root"));
                };
                let tdir = in_root(self.root.as_fd(), tparent, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(sys)?;
                if self.overlay {
                    // A link to a lower layer's file copies it up into this one whole.
                    let st = nix::sys::stat::fstatat(tdir.as_fd(), tname, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(sys)?;
                    self.charge(u64::try_from(st.st_blocks).unwrap_or(0) * 512)?;
                }
                remove_all_at(d, &name).map_err(sys)?;
                nix::unistd::linkat(tdir.as_fd(), tname, d, name.as_os_str(), nix::fcntl::AtFlags::empty())
                    .map_err(|e| self.refuse(&raw, format!("hard link to '{}': {}", target.display(), e.desc())))?;
            }
            T::Char | T::Block | T::Fifo => {
                let special = matches!(kind, T::Char | T::Block)
                    && (
                        h.device_major().ok().flatten().unwrap_or(0),
                        h.device_minor().ok().flatten().unwrap_or(0),
                    ) != (0, 0);
                if special && self.harden {
                    tracing::info!(
                        "layer {}: device node '{}' not made (the store is not mounted nodev,nosuid)",
                        self.layer,
                        raw.display()
                    );
                    self.written.insert(rel);
                    return Ok(());
                }
                let (sflag, dev) = match kind {
                    T::Char | T::Block => {
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
                        let f = if kind == T::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (f, nix::sys::stat::makedev(u64::from(major), u64::from(minor)))
                    }
                    _ => (SFlag::S_IFIFO, 0),
                };
                remove_all_at(d, &name).map_err(sys)?;
                nix::sys::stat::mknodat(d, name.as_os_str(), sflag, mode, dev).map_err(sys)?;
                nix::unistd::fchownat(d, name.as_os_str(), uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(sys)?;
            }
            other => return Err(self.refuse(&raw, format!("entries of type {other:?} are not supported"))),
        }
        self.written.insert(rel);
        Ok(())
    }

    /// Opens directory `rel` in the root (resolving in the root), making what is missing
    /// as `mkdir -p` would in the image: a symlink to nowhere (`lib -> /usr/lib` before
    /// `/usr/lib` exists) gets the directory it points to, inside the root.
    fn make_dirs(&self, rel: &Path) -> Result<OwnedFd, EntryError> {
        self.make_dirs_within(rel, 0)
    }

    fn make_dirs_within(&self, rel: &Path, links: u32) -> Result<OwnedFd, EntryError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match in_root(self.root.as_fd(), rel, flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(EntryError::Dir(rel.to_owned(), e)),
        }
        let parts: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        let mut at = PathBuf::new();
        let mut fd = in_root(self.root.as_fd(), &at, flags).map_err(EntryError::Open)?;
        for (i, name) in parts.iter().enumerate() {
            at.push(name);
            fd = match in_root(self.root.as_fd(), &at, flags) {
                Ok(next) => next,
                Err(Errno::ENOENT) => match nix::fcntl::readlinkat(fd.as_fd(), *name) {
                    Ok(target) => {
                        if links >= 40 {
                            return Err(EntryError::TooManyLinks(at));
                        }
                        let base = match Path::new(&target).is_absolute() {
                            true => PathBuf::new(),
                            false => self.in_root_path(&fd)?,
                        };
                        let mut next = clamp(&base.join(&target));
                        next.extend(&parts[i + 1..]);
                        return self.make_dirs_within(&next, links + 1);
                    }
                    Err(_) => {
                        nix::sys::stat::mkdirat(fd.as_fd(), *name, Mode::from_bits_truncate(0o755))
                            .map_err(|e| EntryError::Mkdir(at.clone(), e))?;
                        in_root(self.root.as_fd(), &at, flags).map_err(EntryError::Open)?
                    }
                },
                Err(e) => return Err(EntryError::Dir(at, e)),
            };
        }
        Ok(fd)
    }

    /// Where directory `fd` is, as a path inside the root (no symlinks in it). A path
    /// longer than PATH_MAX is refused with it: deeper than any layer may go.
    fn in_root_path(&self, fd: &OwnedFd) -> Result<PathBuf, EntryError> {
        use std::os::fd::AsRawFd;
        match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(d) => d
                .strip_prefix(&self.root_path)
                .map(Path::to_owned)
                .map_err(|_| EntryError::OutsideRoot),
            Err(e) => Err(EntryError::WhereIs(e)),
        }
    }

    /// An opaque directory: what the layers below have in `dir` goes (through the
    /// overlay: whiteouts); what this layer wrote there stays.
    fn hide_lower(&self, dir: &OwnedFd, rel: &Path) -> nix::Result<()> {
        for child in children(dir)? {
            let path = rel.join(&child);
            if !self.written.contains(&path) {
                remove_all_at(dir.as_fd(), &child)?;
            } else if is_dir_at(dir.as_fd(), &child)? == Some(true) {
                let sub = nix::fcntl::openat(
                    dir.as_fd(),
                    child.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                self.hide_lower(&sub, &path)?;
            }
        }
        Ok(())
    }

    /// `n` more bytes against the store's limit, or Full.
    fn charge(&mut self, n: u64) -> Result<(), ImageError> {
        self.reservation.grow(n).map_err(|_| self.store.full(n))
    }

    fn copy(&mut self, from: &mut dyn Read, to: &mut std::fs::File, entry: &Path) -> Result<(), ImageError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.refuse(entry, format!("reading it: {e}"))),
            };
            self.charge(n as u64)?;
            to.write_all(&buf[..n])
                .map_err(|e| self.store.write_error(e, n as u64, entry))?;
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Layers made in memory for tests: tar archives with any entry, even the malicious
    //! ones `tar::Builder` refuses to write.

    use super::Compression;
    use std::io::Write;

    /// `tar` compressed as `c`.
    pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
        match c {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => {
                let mut out = Vec::new();
                ruzstd::encoding::compress(tar, &mut out, ruzstd::encoding::CompressionLevel::Fastest);
                out
            }
        }
    }

    /// A raw ustar header block: any name, type byte, size (base-256 past octal's reach)
    /// and link target, its checksum right or wrong.
    pub fn raw_header(name: &[u8], kind: u8, size: u64, link: &[u8], good_sum: bool) -> [u8; 512] {
        let mut h = [0u8; 512];
        let n = name.len().min(100);
        h[..n].copy_from_slice(&name[..n]);
        h[100..107].copy_from_slice(b"0000755");
        let s = format!("{size:011o}");
        if s.len() == 11 {
            h[124..135].copy_from_slice(s.as_bytes());
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        h[156] = kind;
        let l = link.len().min(100);
        h[157..157 + l].copy_from_slice(&link[..l]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let sum = if good_sum { sum } else { sum ^ 0x55 };
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    pub enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8], u32),
        Owned(&'a str, &'a [u8], u32, u64, u64),
        Symlink(&'a str, &'a str),
        Link(&'a str, &'a str),
        Fifo(&'a str),
        Char(&'a str, u32, u32),
    }

    /// A tar of `entries` (names written byte for byte, `..` included).
    pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_ustar();
            let (name, data, kind, mode): (&str, &[u8], tar::EntryType, u32) = match e {
                E::Dir(n) => (n, b"", tar::EntryType::Directory, 0o755),
                E::File(n, d, m) => (n, d, tar::EntryType::Regular, *m),
                E::Owned(n, d, m, uid, gid) => {
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    (n, d, tar::EntryType::Regular, *m)
                }
                E::Symlink(n, t) | E::Link(n, t) => {
                    h.set_link_name_literal(t.as_bytes()).unwrap();
                    let kind = if matches!(e, E::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    (n, b"", kind, 0o777)
                }
                E::Fifo(n) => (n, b"", tar::EntryType::Fifo, 0o644),
                E::Char(n, major, minor) => {
                    h.set_device_major(*major).unwrap();
                    h.set_device_minor(*minor).unwrap();
                    (n, b"", tar::EntryType::Char, 0o600)
                }
            };
            let raw = &mut h.as_ustar_mut().unwrap().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{tar_of, E};
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
    }

    fn rig(limit: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("images"), limit).unwrap();
        Rig { _dir: dir, store }
    }

    impl Rig {
        /// Puts `tar` in the store compressed as `c`; returns the blob and the diff ID.
        fn put(&self, tar: &[u8], c: Compression) -> (Digest, Digest) {
            let blob = super::testing::compress(tar, c);
            let d = Digest::of(&blob);
            self.store.put_blob(&d, blob.len() as u64, &mut &blob[..]).unwrap();
            (d, Digest::of(tar))
        }

        fn layer(&self, parents: &[Layer], entries: &[E<'_>]) -> Result<Layer, ImageError> {
            let (blob, diff) = self.put(&tar_of(entries), Compression::None);
            self.store.unpack(parents, &blob, Compression::None, &diff)
        }

        fn tmp_is_empty(&self) -> bool {
            std::fs::read_dir(self.store.tmp_dir()).unwrap().count() == 0
        }
    }

    /// The layers stacked as a cell would see them (read-only overlay); unmounted on drop.
    struct Merged(tempfile::TempDir);

    impl Merged {
        fn of(layers: &[Layer]) -> Merged {
            let at = tempfile::tempdir().unwrap();
            mount_overlay(layers, None, at.path()).unwrap();
            Merged(at)
        }

        fn path(&self, p: &str) -> PathBuf {
            self.0.path().join(p)
        }
    }

    impl Drop for Merged {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn media_types_name_their_compression() {
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Compression::Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Compression::Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression::Gzip),
        ] {
            assert_eq!(Compression::of_media_type(mt).unwrap(), c, "{mt}");
        }
        let e = Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+bzip2").unwrap_err();
        assert!(e.to_string().contains("tar+bzip2"), "{e}");
    }

    /// On a store that is not mounted nodev,nosuid (this test's /tmp), a layer's device
    /// nodes are not made and its setuid/setgid bits are dropped; on one that is (a tmpfs
    /// mounted so), they are kept as the tar says.
    #[test]
    fn device_nodes_and_setuid_bits_follow_the_stores_mount() {
        for hardened_store in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            if hardened_store {
                use nix::mount::MsFlags;
                nix::mount::mount(
                    Some("tmpfs"),
                    dir.path(),
                    Some("tmpfs"),
                    MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                    Some("size=64m"),
                )
                .unwrap();
            }
            let store = Store::open(&dir.path().join("images"), 1 << 30).unwrap();
            let r = Rig {
                _dir: tempfile::tempdir().unwrap(),
                store,
            };
            let l = r
                .layer(
                    &[],
                    &[
                        E::File("bin/su", b"suid", 0o4755),
                        E::File("bin/wall", b"sgid", 0o2755),
                        E::Char("dev/sda", 8, 0),
                        E::Char("dev/zero-zero", 0, 0),
                    ],
                )
                .unwrap();
            let mode = |f: &str| std::fs::metadata(l.dir.join(f)).unwrap().permissions().mode() & 0o7777;
            let sda = std::fs::symlink_metadata(l.dir.join("dev/sda"));
            if hardened_store {
                assert_eq!((mode("bin/su"), mode("bin/wall")), (0o4755, 0o2755));
                assert!(sda.unwrap().file_type().is_char_device());
            } else {
                assert_eq!((mode("bin/su"), mode("bin/wall")), (0o755, 0o755), "no setuid, setgid");
                assert!(sda.is_err(), "no device node");
            }
            assert!(std::fs::symlink_metadata(l.dir.join("dev/zero-zero"))
                .unwrap()
                .file_type()
                .is_char_device());
            drop(r);
            if hardened_store {
                nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
            }
        }
    }

    #[test]
    fn a_layer_keeps_files_modes_owners_links_and_special_files() {
        let r = rig(1 << 30);
        let hardened = !nodev_nosuid(r.store.root());
        let l = r
            .layer(
                &[],
                &[
                    E::Dir("bin/"),
                    E::File("bin/tool", b"#!/bin/sh\n", 0o755),
                    E::File("bin/su", b"suid", 0o4755),
                    E::Owned("home/app/data", b"mine", 0o640, 1000, 1001),
                    E::Symlink("bin/sh", "busybox"),
                    E::Link("bin/tool2", "bin/tool"),
                    E::Fifo("run/pipe"),
                    E::Char("dev/null", 1, 3),
                    E::File("./etc/hostname", b"image\n", 0o644),
                ],
            )
            .unwrap();
        let p = |s: &str| l.dir.join(s);
        assert_eq!(std::fs::read(p("bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            std::fs::metadata(p("bin/tool")).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            std::fs::metadata(p("bin/su")).unwrap().permissions().mode() & 0o7777,
            if hardened { 0o755 } else { 0o4755 }
        );
        let m = std::fs::metadata(p("home/app/data")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1001, 0o640));
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(std::fs::read_link(p("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(
            std::fs::metadata(p("bin/tool2")).unwrap().ino(),
            std::fs::metadata(p("bin/tool")).unwrap().ino(),
            "a hard link"
        );
        assert!(std::fs::symlink_metadata(p("run/pipe")).unwrap().file_type().is_fifo());
        match hardened {
            true => assert!(std::fs::symlink_metadata(p("dev/null")).is_err()),
            false => {
                let dev = std::fs::symlink_metadata(p("dev/null")).unwrap();
                assert!(dev.file_type().is_char_device() && dev.rdev() == nix::sys::stat::makedev(1, 3));
            }
        }
        assert_eq!(std::fs::read(p("etc/hostname")).unwrap(), b"image\n");
        assert!(r.tmp_is_empty());
    }

    #[test]
    fn the_same_layer_on_the_same_parents_is_unpacked_once() {
        let r = rig(1 << 30);
        let entries = [E::File("a", b"1", 0o644)];
        let first = r.layer(&[], &entries).unwrap();
        std::fs::remove_file(r.store.blob_path(&Digest::of(&tar_of(&entries)))).unwrap();
        let again = r.layer(&[], &entries).unwrap();
        assert_eq!(first, again, "shared, and the blob was not read again");
    }

    #[test]
    fn gzip_and_zstd_layers_unpack_and_their_diff_id_is_checked() {
        let r = rig(1 << 30);
        let tar = tar_of(&[E::File("hello", b"world", 0o644)]);
        for c in [Compression::Gzip, Compression::Zstd] {
            let (blob, diff) = r.put(&tar, c);
            let l = r.store.unpack(&[], &blob, c, &diff).unwrap();
            assert_eq!(std::fs::read(l.dir.join("hello")).unwrap(), b"world", "{c:?}");
        }
        // A diff ID that does not match: refused, nothing kept.
        let tar = tar_of(&[E::File("other", b"x", 0o644)]);
        let (blob, _) = r.put(&tar, Compression::Gzip);
        let wrong = Digest::of(b"not this");
        let e = r.store.unpack(&[], &blob, Compression::Gzip, &wrong).unwrap_err();
        assert!(matches!(e, ImageError::Mismatch { .. }), "{e}");
        assert!(r.store.layer(&wrong).is_none());
        assert!(r.tmp_is_empty());
        // Not gzip at all.
        let (blob, diff) = r.put(b"plain bytes", Compression::None);
        assert!(r.store.unpack(&[], &blob, Compression::Gzip, &diff).is_err());
        assert!(r.tmp_is_empty());
    }

    #[test]
    fn names_that_climb_out_are_refused_and_symlinks_resolve_inside_the_root() {
        let r = rig(1 << 30);
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        for bad in [
            vec![E::File("../escaped", b"x", 0o644)],
            vec![E::File("a/../../escaped", b"x", 0o644)],
            vec![E::File("ok", b"x", 0o644), E::Link("l", "../../etc/passwd")],
        ] {
            let e = r.layer(&[], &bad).unwrap_err();
            assert!(matches!(e, ImageError::Refused { .. }), "{e}");
            assert!(e.to_string().contains(".."), "{e}");
            assert!(r.tmp_is_empty(), "nothing of a refused layer stays");
        }
        // A symlink out of the root, relative or absolute, then a write through it: it
        // lands inside the image, never on the node.
        let up = format!("../../../../../../../..{}", outside.path().display());
        let abs = outside.path().display().to_string();
        let l = r
            .layer(
                &[],
                &[
                    E::Symlink("up", &up),
                    E::File("up/victim", b"owned", 0o644),
                    E::Symlink("abs", &abs),
                    E::File("abs/victim2", b"owned", 0o644),
                    E::Symlink("slash", "/"),
                    E::File("slash/rootfile", b"in the image", 0o644),
                ],
            )
            .unwrap();
        assert!(!victim.exists() && !outside.path().join("victim2").exists());
        let inside = l.dir.join(outside.path().strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(inside.join("victim")).unwrap(), b"owned");
        assert_eq!(std::fs::read(inside.join("victim2")).unwrap(), b"owned");
        assert_eq!(std::fs::read(l.dir.join("rootfile")).unwrap(), b"in the image");
        // Through a symlink to a directory not there yet: made where it points, inside.
        let l = r
            .layer(
                &[],
                &[
                    E::Symlink("lib64", "/usr/lib64"),
                    E::File("lib64/ld.so", b"ld", 0o755),
                    E::Symlink("rel", "../../opt/x"),
                    E::File("rel/y", b"y", 0o644),
                ],
            )
            .unwrap();
        assert_eq!(std::fs::read(l.dir.join("usr/lib64/ld.so")).unwrap(), b"ld");
        assert!(std::fs::symlink_metadata(l.dir.join("lib64")).unwrap().is_symlink());
        assert_eq!(std::fs::read(l.dir.join("opt/x/y")).unwrap(), b"y");
        let e = r
            .layer(
                &[],
                &[E::Symlink("a", "b"), E::Symlink("b", "a"), E::File("a/x", b"", 0o644)],
            )
            .unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
        // A file does not write through a symlink of the same name: it replaces it.
        let target = outside.path().join("target");
        std::fs::write(&target, b"node file").unwrap();
        let l = r
            .layer(
                &[],
                &[
                    E::Symlink("f", target.to_str().unwrap()),
                    E::File("f", b"replaced", 0o644),
                ],
            )
            .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"node file");
        assert_eq!(std::fs::read(l.dir.join("f")).unwrap(), b"replaced");
    }

    /// The OCI image spec's whiteouts and opaque directories, an absolute symlink a later
    /// layer writes through, and the stack read back as a cell would see it.
    #[test]
    fn upper_layers_delete_hide_and_write_through_lower_symlinks() {
        let r = rig(1 << 30);
        let l1 = r
            .layer(
                &[],
                &[
                    E::Symlink("lib", "/usr/lib"),
                    E::File("usr/lib/a.so", b"a", 0o644),
                    E::File("etc/old.conf", b"old", 0o644),
                    E::File("etc/kept.conf", b"kept", 0o644),
                    E::File("var/cache/x", b"x", 0o644),
                    E::File("var/cache/sub/y", b"y", 0o644),
                    E::File("tree/deep/z", b"z", 0o644),
                ],
            )
            .unwrap();
        let l2 = r
            .layer(
                std::slice::from_ref(&l1),
                &[
                    E::File("lib/b.so", b"b", 0o644),
                    E::File("etc/.wh.old.conf", b"", 0o644),
                    E::File("var/cache/new", b"new", 0o644),
                    E::File("var/cache/.wh..wh..opq", b"", 0o644),
                    E::File(".wh.tree", b"", 0o644),
                ],
            )
            .unwrap();
        assert_ne!(l2.chain_id, Digest::of(&tar_of(&[E::File("lib/b.so", b"b", 0o644)])));
        let m = Merged::of(&[l1.clone(), l2.clone()]);
        assert_eq!(
            std::fs::read_link(m.path("lib")).unwrap(),
            Path::new("/usr/lib"),
            "still a symlink"
        );
        assert_eq!(
            std::fs::read(m.path("usr/lib/b.so")).unwrap(),
            b"b",
            "written through it"
        );
        assert_eq!(std::fs::read(m.path("usr/lib/a.so")).unwrap(), b"a");
        assert!(!m.path("etc/old.conf").exists(), "whited out");
        assert_eq!(std::fs::read(m.path("etc/kept.conf")).unwrap(), b"kept");
        let cache: HashSet<String> = std::fs::read_dir(m.path("var/cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(cache, HashSet::from(["new".to_owned()]), "opaque: only this layer's");
        assert!(!m.path("tree").exists(), "a whole directory whited out");
        // The lower layer itself is untouched; the upper one is an overlay layer.
        assert!(l1.dir.join("etc/old.conf").exists());
        let wh = std::fs::symlink_metadata(l2.dir.join("etc/old.conf")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "an overlay whiteout");
        assert!(r.tmp_is_empty());
    }

    /// A tar with GNU long names and links, as `tar::Builder` writes them.
    fn gnu_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &b"x"[..]).unwrap();
    }

    /// Chained symlinks take short names ever deeper: each link points 300 directories
    /// below the last one's target. The first file lands 301 deep (allowed); the second,
    /// through both links, 601 deep: refused by name, and the partial layer (600 levels)
    /// removed with nothing left in tmp/.
    #[test]
    fn a_symlink_chain_that_digs_past_the_depth_bound_is_refused() {
        let r = rig(1 << 30);
        let before = r.store.used();
        let hops = "d/".repeat(300);
        let tar = gnu_tar(|b| {
            symlink(b, "s1", hops.trim_end_matches('/'));
            file(b, "s1/f");
            symlink(b, "s2", &format!("s1/{}", hops.trim_end_matches('/')));
            file(b, "s2/f");
        });
        let (blob, diff) = r.put(&tar, Compression::None);
        let blob_bytes = r.store.used() - before;
        let e = r.store.unpack(&[], &blob, Compression::None, &diff).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImageError::Refused { .. }), "{e}");
        assert!(
            msg.contains("s2/f") && msg.contains("601 directories deep; at most 512"),
            "{msg}"
        );
        assert!(r.tmp_is_empty());
        assert_eq!(r.store.used(), before + blob_bytes, "only the blob stays");
    }

    /// An opaque whiteout at a layer's root is legal OCI (the layer replaces everything
    /// below); whiteouts of `.` and `..` hide nothing a layer can name and are refused by
    /// entry, with the store unchanged.
    #[test]
    fn an_opaque_root_is_accepted_and_dot_whiteouts_are_refused_by_name() {
        let r = rig(1 << 30);
        let base = r
            .layer(
                &[],
                &[E::File("a", b"a", 0o644), E::Dir("etc"), E::File("etc/x", b"x", 0o644)],
            )
            .unwrap();
        let top = r
            .layer(
                std::slice::from_ref(&base),
                &[E::File(".wh..wh..opq", b"", 0o644), E::File("b", b"b", 0o644)],
            )
            .unwrap();
        let m = Merged::of(&[base.clone(), top]);
        assert!(m.path("b").exists());
        assert!(
            !m.path("a").exists() && !m.path("etc").exists(),
            "everything below is hidden"
        );
        drop(m);
        for name in [".wh..", ".wh...", "etc/.wh..", "etc/.wh..."] {
            let before = r.store.used();
            let (blob, diff) = r.put(&tar_of(&[E::File(name, b"", 0o644)]), Compression::None);
            let blob_bytes = r.store.used() - before;
            let e = r
                .store
                .unpack(std::slice::from_ref(&base), &blob, Compression::None, &diff)
                .unwrap_err();
            assert!(matches!(e, ImageError::Refused { .. }), "{name}: {e}");
            assert!(e.to_string().contains(&format!("entry '{name}'")), "{e}");
            assert!(e.to_string().contains("a whiteout of '.' or '..'"), "{e}");
            assert!(r.tmp_is_empty());
            assert_eq!(r.store.used(), before + blob_bytes, "{name}");
        }
    }

    /// A 4 KiB layer whose extension headers declare 16 GiB (PAX) or 4 GiB (a GNU long
    /// name) is refused at the header, before a byte of it is read; nothing is kept.
    #[test]
    fn huge_extension_headers_are_refused_before_their_data_is_read() {
        let r = rig(1 << 30);
        for (kind, size) in [(b'x', 16u64 << 30), (b'L', 4 << 30), (b'K', 1 << 30), (b'g', 1 << 40)] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::new(kind));
            h.set_size(size);
            h.set_mode(0o644);
            h.set_path("././@LongLink").unwrap();
            h.set_cksum();
            let mut tar = h.as_bytes().to_vec();
            tar.extend_from_slice(&[b'a'; 4096]);
            let (blob, diff) = r.put(&tar, Compression::Gzip);
            let e = r.store.unpack(&[], &blob, Compression::Gzip, &diff).unwrap_err();
            assert!(matches!(e, ImageError::Refused { .. }), "{e}");
            assert!(
                e.to_string().contains(&format!(
                    "'{}' extension header declares {size} bytes",
                    char::from(kind)
                )),
                "{e}"
            );
            assert!(r.tmp_is_empty());
        }
    }

    #[test]
    fn a_layer_that_does_not_fit_is_refused_and_leaves_nothing() {
        let r = rig(1 << 30);
        let big = vec![0u8; 256 * 1024];
        let (blob, diff) = r.put(&tar_of(&[E::File("big", &big, 0o644)]), Compression::Gzip);
        let small = Store::open(r.store.root(), r.store.used() + 64 * 1024).unwrap();
        let e = small.unpack(&[], &blob, Compression::Gzip, &diff).unwrap_err();
        assert!(matches!(e, ImageError::Full { .. }), "{e}");
        assert!(small.layer(&diff).is_none());
        assert!(r.tmp_is_empty());
    }

    /// On a store with room for more, a layer whose file declares more than
    /// `LAYER_DATA_MAX` is refused at its header by that ceiling, naming it.
    #[test]
    fn a_layer_over_the_per_layer_ceiling_is_refused_on_any_store() {
        let r = rig(1 << 50);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(LAYER_DATA_MAX + 1);
        h.set_mode(0o644);
        h.set_path("weights").unwrap();
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[0; 4096]);
        let (blob, diff) = r.put(&tar, Compression::Gzip);
        let e = r.store.unpack(&[], &blob, Compression::Gzip, &diff).unwrap_err();
        assert!(matches!(e, ImageError::Refused { .. }), "{e}");
        assert!(
            e.to_string().contains("more than the 16 GiB one layer may unpack to"),
            "{e}"
        );
        assert!(r.store.layer(&diff).is_none());
        assert!(r.tmp_is_empty());
    }
}
