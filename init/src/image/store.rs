//! The store's files: `blobs/sha256/<hex>` (verified blobs), `layers/<chain hex>/fs`
//! (unpacked layers), `refs/` (records), `tmp/` (writes in progress, emptied when the store
//! opens) and `trash/` (what is being removed off the caller's thread).
//!
//! What it holds is a running count (`Ledger`), not a walk: walking every file on each
//! `Images.List`, blob or removal would block PID 1's thread as the store grows. The store
//! is walked once when it opens; after that each change is counted where it happens (a
//! committed blob, a committed layer measured on the unpack's own thread, a removal
//! measured before it on a blocking thread). Writes in progress hold a reservation, taken
//! against the limit before a byte is written, so concurrent pulls together never take
//! the store past it: `used ≤ limit` after any sequence.

use super::{Digest, ImageError};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// What the store may hold, in bytes (blobs and unpacked layers).
    limit: u64,
    ledger: Arc<Ledger>,
}

/// The store's running count, shared by every clone of the store.
#[derive(Debug, Default)]
struct Ledger {
    /// What is in place (blobs, layers, records, trash), per [`cost`].
    used: AtomicU64,
    /// What writes in progress were promised (`Reservation`s).
    reserved: Mutex<u64>,
}

impl Ledger {
    fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n)));
    }
}

/// What an inode costs besides its blocks: so a flood of empty files, directories or
/// symlinks (no blocks on tmpfs, fast symlinks) counts against the limit too.
pub const INODE_COST: u64 = 256;

/// What one file, directory or symlink costs the store.
pub fn cost(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512 + INODE_COST
}

/// What `p` and everything below it cost (iterative; a blocking walk: never on the
/// runtime thread).
pub fn measure(p: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![p.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        total += cost(&m);
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Bytes promised to a write in progress, against the store's limit; given back when
/// dropped (what was written is counted as `used` when it is committed).
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<Ledger>,
    limit: u64,
    bytes: u64,
}

impl Reservation {
    /// `n` more bytes, or Err(bytes free) when they would take the store past its limit.
    pub fn grow(&mut self, n: u64) -> Result<(), u64> {
        let mut r = self.ledger.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.ledger.used.load(Ordering::Relaxed);
        if used.saturating_add(*r).saturating_add(n) > self.limit {
            return Err(self.limit.saturating_sub(used.saturating_add(*r)));
        }
        *r += n;
        self.bytes += n;
        Ok(())
    }
}

impl Reservation {
    /// The write is in place and costs `counted`: counted in as used and this reservation
    /// given back in one step, under the lock `grow` and `Store::used` read under, so no
    /// moment counts the write twice (which made a full store refuse a write that fit, and
    /// `used` read past the limit).
    pub fn settle(mut self, counted: u64) {
        let mut r = self.ledger.reserved.lock().unwrap_or_else(|p| p.into_inner());
        self.ledger.add(counted);
        *r = r.saturating_sub(std::mem::take(&mut self.bytes));
    }

    /// What this holds, moved into a new reservation; this one then holds nothing.
    pub fn take(&mut self) -> Reservation {
        Reservation {
            ledger: self.ledger.clone(),
            limit: self.limit,
            bytes: std::mem::take(&mut self.bytes),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.ledger.reserved.lock().unwrap_or_else(|p| p.into_inner());
        *r = r.saturating_sub(self.bytes);
    }
}

impl Store {
    /// Opens (making it if needed) the store at `root`, holding at most `limit` bytes.
    /// What an interrupted write or unpack left in `tmp/` goes.
    pub fn open(root: &Path, limit: u64) -> Result<Store, ImageError> {
        let s = Store {
            root: root.to_owned(),
            limit,
            ledger: Arc::default(),
        };
        for d in [s.root.join("blobs/sha256"), s.root.join("layers"), s.tmp_dir()] {
            std::fs::create_dir_all(&d).map_err(ImageError::io("make the image store's directory", &d))?;
        }
        let trash = s.empty_tmp();
        // The one walk: what is there now, the trash included until it is gone.
        s.ledger.add(measure(&s.root));
        s.take_out(trash);
        Ok(s)
    }

    /// Moves what is left in `tmp/` into `trash/` (a rename each, whatever the tree): a
    /// leftover can be a hostile layer's tree thousands of levels deep, which must delay
    /// neither the node's start nor its runtime thread. Returns the trash directory.
    fn empty_tmp(&self) -> PathBuf {
        let trash = self.root.join("trash");
        if std::fs::create_dir_all(&trash).is_err() {
            return trash;
        }
        if let Ok(rd) = std::fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                let p = e.path();
                // What a crash or power cut cut short: a blob's download (`blob-…`) or a
                // layer's unpack (`layer-…`).
                tracing::info!(
                    "image store: {} in tmp/ was left by a write cut short; removing it",
                    e.file_name().to_string_lossy()
                );
                let _ = nix::mount::umount2(&p.join("mnt"), nix::mount::MntFlags::MNT_DETACH);
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let to = trash.join(format!(
                    "{}.{stamp}.{}",
                    e.file_name().to_string_lossy(),
                    TRASH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                if std::fs::rename(&p, &to).is_err() {
                    discard(&p);
                }
            }
        }
        trash
    }

    /// Removes what is in `trash` on a thread of its own, counting it out as it goes.
    fn take_out(&self, trash: PathBuf) {
        let store = self.clone();
        let spawned = std::thread::Builder::new().name("aurae-trash".into()).spawn(move || {
            if let Ok(rd) = std::fs::read_dir(&trash) {
                for e in rd.flatten() {
                    if let Err(err) = store.remove_counted(&e.path()) {
                        tracing::warn!("image store: remove {}: {err}", e.path().display());
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("image store: no thread to empty the trash: {e}");
        }
    }

    /// Counts `p` (just put in place, whole) as used. Blocking for a directory.
    pub(crate) fn count_in(&self, p: &Path) {
        self.ledger.add(measure(p));
    }

    /// Counts out `n` bytes of what was in place (replaced, say).
    pub(crate) fn count_out(&self, n: u64) {
        self.ledger.sub(n);
    }

    /// Removes `p` (a file or a tree) and counts it out. Blocking: never on the runtime
    /// thread.
    pub(crate) fn remove_counted(&self, p: &Path) -> std::io::Result<()> {
        let c = measure(p);
        // A file or symlink is unlinked, a tree removed iteratively; gone already is fine.
        super::tree::remove_tree(p)?;
        self.ledger.sub(c);
        Ok(())
    }

    /// A reservation of `n` bytes (Full when they do not fit).
    pub fn reserve(&self, n: u64) -> Result<Reservation, ImageError> {
        let mut r = Reservation {
            ledger: self.ledger.clone(),
            limit: self.limit,
            bytes: 0,
        };
        r.grow(n).map_err(|_| self.full(n))?;
        Ok(r)
    }

    /// The most the store may hold, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub(crate) fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// Whether blob `d` is in the store with `size` bytes (its digest was checked when it
    /// was committed).
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Bytes the store holds and has promised to writes in progress, per [`cost`]: a
    /// running count, no walk.
    pub fn used(&self) -> u64 {
        // Under the reservations' lock: a write settling moves its bytes from one to the
        // other under it, so the sum never counts one twice.
        let r = self.ledger.reserved.lock().unwrap_or_else(|p| p.into_inner());
        self.ledger.used.load(Ordering::Relaxed) + *r
    }

    /// Bytes the store may still take.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    pub(crate) fn full(&self, needed: u64) -> ImageError {
        ImageError::Full {
            store: self.root.clone(),
            needed,
            free: self.free(),
            limit: self.limit,
        }
    }

    /// A name in `tmp/` no other write uses.
    pub(crate) fn tmp_name(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.tmp_dir().join(format!(
            "{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Writes blob `d` of `size` bytes from `from`: to a temporary file while hashing,
    /// then, only if the digest and the size match, synced and renamed into place. A blob
    /// already there is not fetched again. On any failure nothing of it stays.
    pub fn put_blob(&self, d: &Digest, size: u64, from: &mut dyn Read) -> Result<PathBuf, ImageError> {
        if self.has_blob(d, size) {
            return Ok(self.blob_path(d));
        }
        let mut w = self.blob_writer(d, size)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => w.write(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::io("read the blob", self.blob_path(d))(e)),
            }
        }
        w.commit()
    }

    /// A writer for blob `d` of `size` bytes, for data that arrives in pieces: nothing is
    /// in the store until `commit` has checked it; dropped uncommitted, it leaves nothing.
    pub fn blob_writer(&self, d: &Digest, size: u64) -> Result<BlobWriter, ImageError> {
        // A blob file costs its blocks, rounded up, and an inode.
        let reservation = self
            .reserve(size.div_ceil(4096) * 4096 + INODE_COST)
            .map_err(|_| self.full(size))?;
        let tmp = self.tmp_name("blob");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(ImageError::io("write a blob", &tmp))?;
        Ok(BlobWriter {
            file,
            tmp,
            digest: d.clone(),
            size,
            got: 0,
            hash: Some(Sha256::new()),
            committed: false,
            store: self.clone(),
            _reservation: reservation,
        })
    }

    /// ENOSPC/EDQUOT while writing is the store being full, said as such.
    pub(crate) fn write_error(&self, e: std::io::Error, needed: u64, path: &Path) -> ImageError {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => self.full(needed),
            _ => ImageError::io("write to the image store", path)(e),
        }
    }
}

/// A blob being written (see `Store::blob_writer`).
pub struct BlobWriter {
    file: std::fs::File,
    tmp: PathBuf,
    digest: Digest,
    size: u64,
    got: u64,
    hash: Option<Sha256>,
    committed: bool,
    store: Store,
    _reservation: Reservation,
}

impl BlobWriter {
    /// Appends `bytes`; more than the stated size is refused at once.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.got += bytes.len() as u64;
        if self.got > self.size {
            return Err(ImageError::Mismatch {
                what: format!("blob {}: size", self.digest),
                expected: format!("{} bytes", self.size),
                got: "more".into(),
            });
        }
        if let Some(h) = &mut self.hash {
            h.update(bytes);
        }
        self.file
            .write_all(bytes)
            .map_err(|e| self.store.write_error(e, self.size, &self.tmp))
    }

    /// Checks the size and digest, syncs, and renames the blob into place.
    pub fn commit(mut self) -> Result<PathBuf, ImageError> {
        let store = self.store.clone();
        if self.got != self.size {
            return Err(ImageError::Mismatch {
                what: format!("blob {}: size", self.digest),
                expected: format!("{} bytes", self.size),
                got: format!("{} bytes", self.got),
            });
        }
        if let Some(h) = self.hash.take() {
            let actual = Digest::from_hasher(h);
            if actual != self.digest {
                return Err(ImageError::Mismatch {
                    what: "blob digest".into(),
                    expected: self.digest.to_string(),
                    got: actual.to_string(),
                });
            }
        }
        self.file
            .sync_all()
            .map_err(|e| store.write_error(e, self.size, &self.tmp))?;
        let dest = store.blob_path(&self.digest);
        std::fs::rename(&self.tmp, &dest).map_err(ImageError::io("commit the blob", &dest))?;
        self.committed = true;
        self._reservation.take().settle(measure(&dest));
        sync_dir(dest.parent().unwrap_or(store.root()));
        Ok(dest)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

static TRASH_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes an entry of `tmp/`: a partial blob, or an unpack with its overlay unmounted first.
pub(crate) fn discard(p: &Path) {
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        let _ = nix::mount::umount2(&p.join("mnt"), nix::mount::MntFlags::MNT_DETACH);
        // Iterative: a leftover can be a hostile layer's tree of any depth.
        let _ = super::tree::remove_tree(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// fsync of a directory, so a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limit: u64) -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("images"), limit).unwrap();
        (d, s)
    }

    #[test]
    fn a_blob_is_committed_only_when_its_digest_and_size_match() {
        let (_d, s) = store(1 << 20);
        let data = b"hello layer".to_vec();
        let d = Digest::of(&data);
        let p = s.put_blob(&d, data.len() as u64, &mut &data[..]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert!(s.has_blob(&d, data.len() as u64));

        let other = Digest::of(b"something else");
        let e = s.put_blob(&other, data.len() as u64, &mut &data[..]).unwrap_err();
        assert!(matches!(e, ImageError::Mismatch { .. }), "{e}");
        assert!(!s.blob_path(&other).exists(), "a wrong blob is not kept");
        for (size, what) in [(5, "short"), (50, "long")] {
            let e = s.put_blob(&Digest::of(b"x"), size, &mut &data[..]).unwrap_err();
            assert!(e.to_string().contains("size"), "{what}: {e}");
        }
        assert_eq!(
            std::fs::read_dir(s.tmp_dir()).unwrap().count(),
            0,
            "no half-written file"
        );
    }

    /// A reader that fails half way, as a connection that drops.
    struct Dropping<'a>(&'a [u8]);
    impl Read for Dropping<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone"));
            }
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Concurrent writers together never take the store past its limit: each reserves
    /// before writing, and the one that does not fit is refused (Full) before a byte.
    #[test]
    fn concurrent_writers_stay_within_the_limit_and_the_count_matches_a_walk() {
        let (d, s) = store(1 << 20);
        let base = s.used();
        let blobs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 150 * 1024]).collect();
        let results: Vec<bool> = std::thread::scope(|t| {
            let handles: Vec<_> = blobs
                .iter()
                .map(|b| {
                    let s = s.clone();
                    t.spawn(move || {
                        let d = Digest::of(b);
                        let mut w = match s.blob_writer(&d, b.len() as u64) {
                            Ok(w) => w,
                            Err(e) => {
                                assert!(matches!(e, ImageError::Full { .. }), "{e}");
                                return false;
                            }
                        };
                        assert!(s.used() <= 1 << 20, "reservations past the limit");
                        for chunk in b.chunks(4096) {
                            w.write(chunk).unwrap();
                        }
                        w.commit().unwrap();
                        true
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let stored = results.iter().filter(|r| **r).count();
        assert!((1..12).contains(&stored), "{stored} of 12 fit in 1 MiB");
        assert!(s.used() <= 1 << 20, "{} > limit", s.used());
        assert_eq!(s.used(), measure(s.root()), "the running count is what a walk finds");
        assert!(s.used() > base);
        // Opened again, the walk finds the same.
        let again = Store::open(&d.path().join("images"), 1 << 20).unwrap();
        assert_eq!(again.used(), s.used());
        // Removing counts out exactly what a walk would.
        let some = s.blob_path(&Digest::of(&blobs[results.iter().position(|r| *r).unwrap()]));
        s.remove_counted(&some).unwrap();
        assert_eq!(s.used(), measure(s.root()));
    }

    /// A leftover unpack thousands of levels deep (a hostile layer's, from before a crash)
    /// leaves tmp/ at once when the store opens, and the trash empties on its own thread.
    #[test]
    fn a_deep_leftover_is_moved_out_at_once_and_removed_off_the_caller() {
        use std::os::fd::AsFd;
        let (d, s) = store(1 << 30);
        let mut p = s.tmp_dir().join("layer-9-9");
        std::fs::create_dir(&p).unwrap();
        let mut fd = nix::fcntl::open(&p, nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
        for _ in 0..2000 {
            nix::sys::stat::mkdirat(fd.as_fd(), "d", nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
            fd = nix::fcntl::openat(
                fd.as_fd(),
                "d",
                nix::fcntl::OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
        }
        drop(fd);
        p.push("d");
        let s = Store::open(&d.path().join("images"), 1 << 30).unwrap();
        assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        let trash = s.root().join("trash");
        let mut waited = 0;
        while std::fs::read_dir(&trash).unwrap().count() > 0 && waited < 60_000 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 10;
        }
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "the trash was emptied");
    }

    #[test]
    fn an_interrupted_write_leaves_nothing_and_a_retry_completes() {
        let (_d, s) = store(1 << 20);
        let data = b"0123456789".to_vec();
        let d = Digest::of(&data);
        assert!(s.put_blob(&d, 10, &mut Dropping(&data[..6])).is_err());
        assert!(!s.blob_path(&d).exists());
        assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        s.put_blob(&d, 10, &mut &data[..]).unwrap();
        // Present: a second put reads nothing.
        s.put_blob(&d, 10, &mut Dropping(b"")).unwrap();
        // What a crash left in tmp/ goes when the store opens.
        std::fs::write(s.tmp_dir().join("blob-1-1"), b"partial").unwrap();
        let s = Store::open(s.root(), 1 << 20).unwrap();
        assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        assert!(s.has_blob(&d, 10));
    }

    #[test]
    fn a_full_store_says_so_and_keeps_nothing() {
        let (_d, s) = store(64 * 1024);
        let data = vec![7u8; 100 * 1024];
        let d = Digest::of(&data);
        let e = s.put_blob(&d, data.len() as u64, &mut &data[..]).unwrap_err();
        match &e {
            ImageError::Full { needed, limit, .. } => {
                assert_eq!((*needed, *limit), (100 * 1024, 64 * 1024));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("is full"), "{e}");
        assert!(!s.blob_path(&d).exists());
    }
}
