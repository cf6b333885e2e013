//! OCI images on the node: a content-addressed store of blobs (`store`) and their layers
//! unpacked safely into directories an overlay can stack (`unpack`).
//!
//! - A blob is written to a temporary name while its SHA-256 and size are checked, synced,
//!   then renamed into `blobs/sha256/<hex>`: a blob is there whole and verified, or not at
//!   all. A pull that stops half way keeps the blobs it finished; a retry fetches the rest.
//! - A layer is unpacked once per *chain ID* (the OCI image spec's: its diff ID on top of
//!   its parents' chain), not per blob digest: what a layer's paths mean depends on the
//!   layers below it (an absolute symlink `lib -> /usr/lib` in one layer decides where a
//!   later `lib/x` lands). Every image with the same layers shares the directories.

pub mod catalog;
pub mod config;
pub mod load;
pub mod overlay;
pub(crate) mod paths;
pub mod pins;
pub mod pull;
pub mod registry;
pub mod store;
pub(crate) mod streams;
pub(crate) mod tar_guard;
pub(crate) mod tree;
pub mod unpack;
#[cfg(test)]
mod unpack_fuzz;

use sha2::{Digest as _, Sha256};
use std::path::PathBuf;

/// A `sha256:<64 lowercase hex>` digest, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, ImageError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::BadDigest(format!("'{s}' is not a sha256 digest (sha256:<64 hex digits>)")))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ImageError::BadDigest(format!(
                "'{s}': a sha256 digest has 64 lowercase hex digits"
            )));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Digest {
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Digest(format!("sha256:{hex}"))
    }

    /// The hex part: a file name in the store.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The chain ID of a layer with diff ID `diff_id` on top of the chain `parent`.
    pub fn chain(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
        match parent {
            None => diff_id.clone(),
            Some(p) => Digest::of(format!("{} {}", p.as_str(), diff_id.as_str()).as_bytes()),
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    BadDigest(String),
    /// What arrived is not what the manifest or config promised.
    #[error("{what}: expected {expected}, got {got}; nothing of it was kept")]
    Mismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// The store cannot hold what is asked (RESOURCE_EXHAUSTED).
    #[error("the image store {store} is full: {needed} more bytes needed, {free} free of {limit}; remove images (aer image rm) or give the store more room")]
    Full {
        store: PathBuf,
        needed: u64,
        free: u64,
        limit: u64,
    },
    /// A layer tries to write outside its root or holds what cannot be unpacked.
    #[error("layer {layer}: entry '{entry}': {why}; the layer was refused and nothing of it was kept")]
    Refused { layer: String, entry: String, why: String },
    /// Not a reference (INVALID_ARGUMENT).
    #[error("{0}")]
    BadReference(String),
    /// No such image, tag or blob at the registry (NOT_FOUND), in the registry's words.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials or the caller's access (PERMISSION_DENIED).
    #[error("{0}")]
    Denied(String),
    /// The registry cannot be reached (UNAVAILABLE).
    #[error("{0}")]
    Unreachable(String),
    /// The registry answered something else that went wrong.
    #[error("{0}")]
    Registry(String),
    /// A workload uses the image (FAILED_PRECONDITION).
    #[error("{0}")]
    InUse(String),
    /// This auraed was started without an image store.
    #[error("no image store configured")]
    NoStore,
    /// The registries file is not what the manual describes.
    #[error("{}: {why}", path.display())]
    RegistriesFile { path: PathBuf, why: String },
    #[error("{what} ({}): {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A node's image catalog, or why it has none (shared by the APIs that use it).
pub type Catalog = Result<std::sync::Arc<catalog::Images>, std::sync::Arc<ImageError>>;

impl ImageError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { what, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_and_chains_follow_the_image_spec() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        for bad in [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:../../../../etc/passwd/../../../../../../../../../../../../../..",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        // ChainID(L0|L1) = SHA256(ChainID(L0) + " " + DiffID(L1)).
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(Digest::chain(None, &a), a);
        assert_eq!(Digest::chain(Some(&a), &b), Digest::of(format!("{a} {b}").as_bytes()));
    }
}
