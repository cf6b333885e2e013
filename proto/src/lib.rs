//! The Aurae API contract. Everything here is generated from `proto/aurae/v0/*.proto`;
//! the rest of the workspace reaches it through `aurae_proto::v0`. Beside it, the Kubernetes
//! Container Runtime Interface (`proto/cri/runtime/v1/api.proto`, vendored) as
//! `aurae_proto::cri`, which auraed serves to a kubelet.

#[allow(clippy::all, missing_docs, clippy::unwrap_used, clippy::expect_used)]
pub mod v0 {
    tonic::include_proto!("aurae.v0");
}

/// The Kubernetes CRI v1 (`runtime.v1`): `RuntimeService` and `ImageService`.
#[allow(
    clippy::all,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls
)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// Encoded `FileDescriptorSet` of the Aurae API and the CRI, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/aurae_descriptor.bin"));

/// Metadata header naming the spawned descendant a call is for (`child/grandchild`): the
/// node forwards such a call hop by hop instead of serving it (see auraed's
/// `server/forward.rs`). Part of the contract, so clients and servers share one spelling.
pub const INSTANCE_HEADER: &str = "aurae-instance";

/// Metadata header a parent sets on a call it forwards to its child: the SPIFFE ID of the
/// original caller, whom the child then authorizes with its own policy. A node honours it
/// only from the certificate of the node that spawned it (see auraed's `server/authz.rs`).
pub const CALLER_HEADER: &str = "aurae-caller";
