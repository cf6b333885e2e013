//! Spawn, all of it: the Instance workload (`instance`: a child auraed booted in a microVM,
//! or in a cell where KVM is unusable, its place in the table, stop, free, renewal) and
//! what it is built from: where a child lives on the network (`addressing`), who it is
//! (`identity`), what it boots (`image`, packed by `crate::cpio`), how a cell child is
//! wired to the bridge (`veth`), and `child`, the one client of a child's API.

pub(crate) mod addressing;
pub(crate) mod child;
pub(crate) mod identity;
pub(crate) mod image;
pub(crate) mod instance;
pub(crate) mod veth;

use std::path::PathBuf;

/// Why a child could not be made, by cause. `server/errors.rs` maps each to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The node cannot give the child an address (FAILED_PRECONDITION).
    #[error(transparent)]
    Address(#[from] addressing::AddressError),
    /// The node has no spawn CA, or minting failed (FAILED_PRECONDITION / INTERNAL).
    #[error("minting the child's identity: {0}")]
    Identity(#[from] crate::pki::PkiError),
    /// This node's own certificate or key cannot be used to reach the child (INTERNAL).
    #[error("this node's TLS material: {0}")]
    Tls(String),
    /// Writing the child's image or keys failed; the errno decides the code (ENOSPC is
    /// RESOURCE_EXHAUSTED).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The compiled-in base skeleton does not parse: a build defect (INTERNAL).
    #[error("the child's base skeleton: {0}")]
    Skeleton(String),
    /// Wiring the cell child's network failed (INTERNAL, or by errno).
    #[error("veth for the child: {0}")]
    Veth(std::io::Error),
    /// The child's VM or cell ended before it served (FAILED_PRECONDITION).
    #[error("the child ended before it served: {0}")]
    Ended(String),
    /// The child did not serve (or answer) within the time allowed (DEADLINE_EXCEEDED).
    #[error("{0}")]
    NotServing(String),
    /// The child answered a request of its parent with an error (its code is kept).
    #[error("the child refused: {}", .0.message())]
    Refused(tonic::Status),
}

impl SpawnError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SpawnError {
        let path = path.into();
        move |source| SpawnError::Io { what, path, source }
    }
}
