//! The store's files: `blobs/sha256/<hex>` (verified blobs), `layers/<chain hex>/fs`
//! (unpacked layers) and `tmp/` (writes in progress, emptied when the store opens).

use super::{Digest, ImageError};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// What the store may hold, in bytes (blobs and unpacked layers).
    limit: u64,
}

impl Store {
    /// Opens (making it if needed) the store at `root`, holding at most `limit` bytes.
    /// What an interrupted write or unpack left in `tmp/` goes.
    pub fn open(root: &Path, limit: u64) -> Result<Store, ImageError> {
        let s = Store {
            root: root.to_owned(),
            limit,
        };
        for d in [s.root.join("blobs/sha256"), s.root.join("layers"), s.tmp_dir()] {
            std::fs::create_dir_all(&d).map_err(ImageError::io("make the image store's directory", &d))?;
        }
        s.empty_tmp();
        Ok(s)
    }

    /// Moves what is left in `tmp/` into `trash/` (a rename each, whatever the tree) and
    /// removes the trash on a thread of its own: a leftover can be a hostile layer's tree
    /// thousands of levels deep, which must delay neither the node's start nor its runtime
    /// thread. Until it is gone it counts as used.
    fn empty_tmp(&self) {
        let trash = self.root.join("trash");
        if std::fs::create_dir_all(&trash).is_err() {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                let p = e.path();
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
        let spawned = std::thread::Builder::new().name("aurae-trash".into()).spawn(move || {
            if let Ok(rd) = std::fs::read_dir(&trash) {
                for e in rd.flatten() {
                    if let Err(err) = super::tree::remove_tree(&e.path()) {
                        tracing::warn!("image store: remove {}: {err}", e.path().display());
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("image store: no thread to empty the trash: {e}");
        }
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

    /// Bytes the store's files take (blocks, so sparse or small files count as they cost).
    /// Iterative, so no tree's depth reaches the thread's stack.
    pub fn used(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        let mut todo = vec![self.root.clone()];
        while let Some(p) = todo.pop() {
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    todo.extend(rd.flatten().map(|e| e.path()));
                }
            }
        }
        total
    }

    /// Bytes the store may still take.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// Refuses (`Full`) when `needed` more bytes would take the store past its limit.
    pub fn reserve(&self, needed: u64) -> Result<(), ImageError> {
        let used = self.used();
        if used.saturating_add(needed) > self.limit {
            return Err(self.full(needed));
        }
        Ok(())
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
        self.reserve(size)?;
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
    /// None when the source checks the digest itself (`digest_checked_by_source`).
    hash: Option<Sha256>,
    committed: bool,
    store: Store,
}

impl BlobWriter {
    /// The bytes come from a source that checks them against this digest itself and fails
    /// before their end when they differ (oci-client's blob stream does): hashing them a
    /// second time here would double the CPU a pull costs. The size is still checked.
    pub fn digest_checked_by_source(mut self) -> BlobWriter {
        self.hash = None;
        self
    }

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
