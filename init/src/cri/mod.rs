//! The Kubernetes Container Runtime Interface (CRI v1, `runtime.v1`): what a kubelet on
//! the node (over a root-only unix socket) or remote tooling (over the mTLS API port,
//! admin only) drives the node with. It is a translation onto the same runtime and image
//! store the Aurae API uses, never a second runtime: images are the node's store seen the
//! way kubelet expects (`images.rs`), and the runtime's state answers `Status`
//! (`runtime_service.rs`).
//!
//! What kubelet relies on, and why each answer has the shape it has, is in
//! `docs/cri.md` (and the facts behind it in the project's notes on the CRI).

pub mod container;
pub mod copy;
pub mod exec;
pub mod images;
pub mod logfile;
pub mod mounts;
pub mod sandbox;
pub mod state;
pub mod stats;
pub mod status;
pub mod stream;

use crate::image::ImageError;
use crate::runtime::error::RuntimeError;
use std::sync::{Arc, Mutex};

/// The CRI API version kubelet insists on (`kubeRuntimeAPIVersion`).
pub const KUBELET_API_VERSION: &str = "0.1.0";
/// What `Version.runtime_api_version` says: the CRI's own version.
pub const RUNTIME_API_VERSION: &str = "v1";
/// Where a kubelet on the appliance finds the CRI when `aurae.cri` names no other path.
pub const DEFAULT_SOCKET: &str = "/run/aurae/cri.sock";

/// Where the streaming server listens unless told: the node's loopback, any free port (as
/// containerd and CRI-O do; kubelet on the node reaches it).
pub const DEFAULT_STREAM: &str = "127.0.0.1:0";

/// Where a kubelet on the node keeps pods' volumes, and their logs (kubelet's defaults),
/// and their directories on a data disk: made at boot when the CRI is served on its
/// socket (bound from the data disk when there is one).
pub const KUBELET_DIRS: [(&str, &str); 2] = [("/var/lib/kubelet", "kubelet"), ("/var/log/pods", "pod-logs")];

/// The runtime handlers a pod may name (Kubernetes' RuntimeClass `handler`): `""` is the
/// node's default (`vm`), `vm` a spawned microVM, `cell` a spawned instance in a cell.
pub const HANDLERS: &[&str] = &["", "vm", "cell"];

/// Why a CRI call failed; `server/errors.rs` gives each cause its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// A request field is wrong; the message names it and says what to send.
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    /// The node cannot do this now (no image store, no spawn identity, ...).
    #[error("{0}")]
    NodeLacks(String),
    /// No such sandbox or container (kubelet tolerates this between a list and a status).
    #[error("{0}")]
    NotFound(String),
    /// The sandbox or container is not in a state that allows this.
    #[error("{0}")]
    WrongState(String),
    /// A limit of the node's is reached (streaming URLs waiting for their clients).
    #[error("{0}")]
    Exhausted(String),
    /// A method this auraed does not serve (yet), and what to use instead.
    #[error("{method}: {why}")]
    Unimplemented { method: &'static str, why: &'static str },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What the node is, as far as the CRI's `Status` is concerned; fixed at boot.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Why pods cannot run here (no spawn identity, ...); None: they can.
    pub runtime_not_ready: Option<String>,
    /// The bridge pods get their addresses on (auraed makes one only as PID 1).
    pub pod_bridge: Option<crate::net::Ipv4Cidr>,
}

/// The CRI's state: the node's runtime and images, and what kubelet told it.
pub struct Cri {
    pub(crate) rt: Arc<crate::runtime::Runtime>,
    pub(crate) images: crate::image::Catalog,
    pub(crate) facts: NodeFacts,
    /// The pod CIDR kubelet gave with `UpdateRuntimeConfig` (node.spec.podCIDR).
    pod_cidr: Mutex<Option<crate::net::Ipv4Cidr>>,
    /// kubelet's sandboxes and containers (held for moments, never across an await).
    table: Mutex<state::Table>,
    /// Wakes the refresher of read-only copies when a container has some (it sleeps
    /// otherwise).
    pub(crate) copies: tokio::sync::Notify,
    /// The streaming server `Exec` URLs point to, once it listens.
    streams: std::sync::OnceLock<Arc<stream::Streams>>,
}

impl Cri {
    pub fn new(rt: Arc<crate::runtime::Runtime>, images: crate::image::Catalog, facts: NodeFacts) -> Cri {
        Cri {
            rt,
            images,
            facts,
            pod_cidr: Mutex::new(None),
            table: Mutex::new(state::Table::default()),
            copies: tokio::sync::Notify::new(),
            streams: std::sync::OnceLock::new(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, state::Table> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pod CIDR kubelet last gave, if any.
    pub fn pod_cidr(&self) -> Option<crate::net::Ipv4Cidr> {
        *self.pod_cidr.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_pod_cidr(&self, c: crate::net::Ipv4Cidr) {
        *self.pod_cidr.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
    }

    fn images(&self) -> Result<&Arc<crate::image::catalog::Images>, CriError> {
        self.images
            .as_ref()
            .map_err(|why| CriError::NodeLacks(format!("this node has no image store: {why}")))
    }
}

/// `path` has no `..` and is absolute (`absolute`) or relative (not): kubelet's log
/// directory and log paths, checked before anything is written there.
pub fn plain_path(path: &str, absolute: bool) -> bool {
    path.starts_with('/') == absolute
        && !path.contains('\0')
        && std::path::Path::new(path)
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir))
}

/// `b` in lowercase hex (ids, names made from digests).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Nanoseconds since the Unix epoch, as the CRI's timestamps are.
pub fn unix_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
