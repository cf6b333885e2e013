//! auraed: the Aurae node runtime. PID 1 of the appliance (or a daemon on an ordinary host),
//! the mTLS gRPC server, and the `aer` client — one crate, one static binary.
//!
//! Data flows one way: request → validation (once, at the edge, in `server`) → runtime →
//! system calls. See ARCHITECTURE.md.

pub mod bench;
pub mod cli;
pub mod daemon;
pub mod init;
pub mod logging;
pub mod net;
pub mod node;
pub mod pki;
pub mod runtime;
pub mod server;
pub mod spawn;
pub mod vmm;

pub use aurae_proto::v0 as pb;

/// The version reported by `NodeInfo` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The TCP port auraed serves on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8443;
