//! auraed: the Aurae node runtime. PID 1 of the appliance (or a daemon on an ordinary host),
//! the mTLS gRPC server, and the `aer` client — one crate, one static binary.
//!
//! Data flows one way: request → validation (once, at the edge, in `server`) → runtime →
//! system calls. See ARCHITECTURE.md.

#[cfg(feature = "bench")]
pub mod bench;
/// Classic-BPF seccomp programs (cells' profiles, the VMM's jail).
pub(crate) mod bpf;
pub mod cli;
pub mod cpio;
/// The Kubernetes CRI (`runtime.v1`) served to a kubelet: a translation onto the runtime.
pub(crate) mod cri;
pub mod daemon;
/// OCI images on the node: the content-addressed store and safe layer unpacking.
pub mod image;
pub mod init;
pub(crate) mod logging;
pub(crate) mod net;
pub(crate) mod node;
/// The few single system calls with no safe wrapper elsewhere (see its doc).
pub(crate) mod os;
pub mod pki;
/// Pods: what one is (spec, sizing, restart rules) and the calls to its instance.
pub(crate) mod runtime;
pub(crate) mod server;
pub mod values;
pub(crate) mod vmm;

pub use aurae_proto::v0 as pb;

/// Renders an error with its sources ("transport error: tls handshake: ..."): clients'
/// and HTTP crates' own messages often leave out why.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The metric families `GET /metrics` serves, with their types (docs/metrics.md).
pub use server::metrics::FAMILIES as METRIC_FAMILIES;

/// The version reported by `NodeInfo` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The TCP port auraed serves on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8443;

/// The roles auraed plays when re-executed under another argv[0] (see `main.rs`).
pub mod roles {
    /// A cell's first process, holder of its namespaces.
    pub use crate::runtime::holder::{main as cell_init, ARGV0 as CELL_INIT};
    /// A VM's VMM, one process per VM.
    pub use crate::vmm::{main as vmm, ARGV0 as VMM};
    /// What the runtime tells a VMM, for tests that run one as a process.
    pub use crate::vmm::{protocol as vmm_protocol, SnapshotRole, VmConfig};
}
