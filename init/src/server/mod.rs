//! The gRPC server: mTLS on every listener, the Aurae services, `grpc.health.v1` and server
//! reflection. Handlers are thin; nothing here touches /sys or /proc directly.

pub mod authz;
pub mod convert;
pub mod deadline;
pub mod errors;
pub mod forward;
pub mod node_api;
pub mod runtime_api;
pub mod workloads_api;

use crate::init::{power::PowerSender, InitReport};
use crate::pb;
use std::net::SocketAddr;
use std::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Arc,
};
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS material: {0}")]
    Tls(#[from] crate::pki::tls::TlsFileError),
    #[error("listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Shared, read-mostly state the handlers answer from.
pub struct NodeContext {
    pub pid1: bool,
    pub report: InitReport,
    pub spiffe_id: String,
    pub power: PowerSender,
    pub runtime: Arc<crate::runtime::Runtime>,
    pub auth: Arc<authz::Authorizer>,
    serving_since_boot_micros: AtomicU64,
    grace_ms: AtomicU32,
}

pub use crate::runtime::DEFAULT_GRACE_MS;

impl NodeContext {
    /// The server's view of a node whose runtime `daemon.rs` assembled.
    pub fn new(
        pid1: bool,
        report: InitReport,
        spiffe_id: String,
        power: PowerSender,
        runtime: Arc<crate::runtime::Runtime>,
        auth: authz::Authorizer,
    ) -> NodeContext {
        NodeContext {
            runtime,
            auth: Arc::new(auth),
            pid1,
            report,
            spiffe_id,
            power,
            serving_since_boot_micros: AtomicU64::new(0),
            grace_ms: AtomicU32::new(DEFAULT_GRACE_MS),
        }
    }

    /// Grace period for stopping workloads at shutdown (0 keeps the default).
    pub fn set_grace(&self, ms: u32) {
        if ms > 0 {
            self.grace_ms.store(ms, Ordering::Relaxed);
        }
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(u64::from(self.grace_ms.load(Ordering::Relaxed)))
    }

    /// What `Node.Info` answers to `caller`, delivered by `peer_spiffe_id`.
    pub fn node_info(&self, peer_spiffe_id: String, caller: Option<&authz::Caller>) -> pb::NodeInfo {
        let policy = self.auth.policy();
        let (kernel_release, kernel_version) = crate::node::kernel();
        let (kvm_usable, kvm_detail) = crate::node::kvm_usable();
        pb::NodeInfo {
            auraed_version: crate::VERSION.into(),
            mode: if self.pid1 { pb::Mode::Pid1 } else { pb::Mode::Daemon } as i32,
            pid: std::process::id(),
            kernel_release,
            kernel_version,
            hostname: crate::node::hostname(),
            uptime_millis: crate::logging::boot_clock().as_millis() as u64,
            cgroup_controllers: self.report.controllers.clone(),
            kvm_usable,
            kvm_detail,
            spiffe_id: self.spiffe_id.clone(),
            peer_spiffe_id,
            init_failures: self
                .report
                .failures
                .iter()
                .map(|f| pb::InitFailure {
                    step: f.step.clone(),
                    error: f.error.clone(),
                })
                .collect(),
            serving_since_boot_micros: self.serving_since_boot_micros.load(Ordering::Relaxed),
            auraed_rss_bytes: crate::node::rss_bytes(),
            isolation: self.report.spawned_as.unwrap_or(pb::IsolationKind::Unspecified) as i32,
            caller_spiffe_id: caller.map(|c| c.id.clone()).unwrap_or_default(),
            caller_role: caller.map(|c| c.role.to_string()).unwrap_or_default(),
            forwarded: caller.is_some_and(|c| c.via.is_some()),
            policy: policy
                .map(|p| {
                    p.rules
                        .iter()
                        .map(|r| pb::PolicyRule {
                            id: if r.is_prefix() {
                                String::new()
                            } else {
                                r.pattern().to_owned()
                            },
                            prefix: if r.is_prefix() {
                                r.pattern().to_owned()
                            } else {
                                String::new()
                            },
                            role: r.role.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            parent_spiffe_id: policy.and_then(|p| p.parent.clone()).unwrap_or_default(),
        }
    }
}

/// Accepted connections with Nagle's algorithm off: a response's headers, body and
/// trailers go out as separate small writes, and waiting to coalesce them costs a round trip.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        Ok(s)
    })
}

/// Binds `listen` and serves until `shutdown` resolves; in-flight calls are finished first.
pub async fn serve(
    listen: SocketAddr,
    tls: &crate::pki::tls::TlsFiles,
    ctx: Arc<NodeContext>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let material = tls.load()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::runtime_server::RuntimeServer<runtime_api::RuntimeApi>>()
        .await;
    health_reporter
        .set_serving::<pb::workloads_server::WorkloadsServer<workloads_api::WorkloadsApi>>()
        .await;
    health_reporter
        .set_serving::<pb::node_server::NodeServer<node_api::NodeApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aurae_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind { addr: listen, source })?;
    let local = listener.local_addr().unwrap_or(listen);
    let since_boot = crate::logging::boot_clock();
    ctx.serving_since_boot_micros
        .store(since_boot.as_micros() as u64, Ordering::Relaxed);
    tracing::info!(
        "serving mTLS gRPC on {local} as {} ({:.3} s after kernel start)",
        ctx.spiffe_id,
        since_boot.as_secs_f64()
    );

    Server::builder()
        .tls_config(material.server_config())?
        // Outermost: nothing runs, here or in a child, before the caller is authorized.
        .layer(authz::AuthzLayer { auth: ctx.auth.clone() })
        .layer(forward::ForwardLayer {
            rt: ctx.runtime.clone(),
        })
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::node_server::NodeServer::new(node_api::NodeApi { ctx: ctx.clone() }))
        .add_service(pb::runtime_server::RuntimeServer::new(runtime_api::RuntimeApi {
            rt: ctx.runtime.clone(),
        }))
        .add_service(pb::workloads_server::WorkloadsServer::new(
            workloads_api::WorkloadsApi {
                rt: ctx.runtime.clone(),
            },
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    Ok(())
}
