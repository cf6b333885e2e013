//! The gRPC server: mTLS on every listener, the Aurae services, `grpc.health.v1` and server
//! reflection. Handlers are thin; nothing here touches /sys or /proc directly.

pub mod attach;
pub mod authz;
pub mod convert;
pub mod cri_api;
pub mod cri_socket;
pub mod deadline;
pub mod errors;
pub mod forward;
pub mod images_api;
pub mod listen;
pub mod metrics;
pub mod node_api;
pub mod port_forward;
pub mod runtime_api;
pub mod tap;
pub mod workloads_api;

use crate::init::{power::PowerSender, InitReport};
use crate::pb;
use std::net::SocketAddr;
use std::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Arc,
};
use std::time::Duration;
use tonic::transport::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS material: {0}")]
    Tls(#[from] crate::pki::tls::TlsFileError),
    #[error("TLS setup: {0}")]
    TlsSetup(#[from] crate::pki::tls::TlsSetupError),
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
    /// The node's certificate, renewed in place by its parent (None: loaded at serve).
    pub identity: Option<Arc<crate::pki::tls::LiveIdentity>>,
    /// Where the node's certificates live (renewal rewrites them there).
    pub pki_dir: Option<std::path::PathBuf>,
    /// The node's images, or why there are none (the store could not be opened).
    pub images: crate::image::Catalog,
    /// The Kubernetes CRI, served on the API port (admin only) beside its own socket.
    pub cri: Option<Arc<crate::cri::Cri>>,
    /// Calls by method and code, and their durations (`/metrics`).
    pub rpcs: Arc<metrics::Rpcs>,
    /// The listener's `listen::CONNECTIONS` slots (what is taken is what is open).
    pub slots: Arc<tokio::sync::Semaphore>,
    serving_since_boot_micros: AtomicU64,
    grace_ms: AtomicU32,
}

pub use crate::runtime::DEFAULT_GRACE_MS;

/// Concurrent HTTP/2 streams (calls) per connection.
pub const MAX_STREAMS: u32 = 256;

impl NodeContext {
    /// The server's view of a node whose runtime `daemon.rs` assembled.
    pub fn new(
        pid1: bool,
        report: InitReport,
        spiffe_id: String,
        power: PowerSender,
        runtime: Arc<crate::runtime::Runtime>,
        auth: authz::Authorizer,
        identity: Option<Arc<crate::pki::tls::LiveIdentity>>,
    ) -> NodeContext {
        NodeContext {
            runtime,
            auth: Arc::new(auth),
            identity,
            pki_dir: None,
            images: Err(Arc::new(crate::image::ImageError::NoStore)),
            cri: None,
            pid1,
            report,
            spiffe_id,
            power,
            rpcs: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(listen::CONNECTIONS)),
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
        let identity = self.identity.as_ref().and_then(|i| i.state());
        let lease = crate::net::dhcp::current();
        let (kernel_release, kernel_version) = crate::node::kernel();
        let (kvm_usable, kvm_detail) = crate::node::kvm_usable();
        let usage = self.runtime.usage();
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
            auraed_open_fds: crate::node::open_fds(),
            memory_total_bytes: crate::node::mem_total_bytes(),
            memory_available_bytes: crate::node::mem_available_bytes(),
            oom_kills: usage.workloads.memory_oom_kill_events,
            log_budget_bytes: usage.log_budget as u64,
            log_held_bytes: usage.log_held as u64,
            isolation: self.report.spawned_as.unwrap_or(pb::IsolationKind::Unspecified) as i32,
            caller_spiffe_id: caller.map(|c| c.id.clone()).unwrap_or_default(),
            caller_role: caller.map(|c| c.role.to_string()).unwrap_or_default(),
            forwarded: caller.is_some_and(|c| c.via.is_some()),
            // Who may do what is the admin's to read (a reader learns no other identity).
            policy: policy
                .filter(|_| caller.is_some_and(|c| c.role >= crate::pki::policy::Role::Admin))
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
            identity_not_after_unix_seconds: identity.map_or(0, |s| unix(s.not_after)),
            identity_renewed_unix_seconds: identity.and_then(|s| s.renewed).map_or(0, unix),
            identity_note: identity
                .map(|s| {
                    identity_note(
                        s,
                        policy.is_some_and(|p| p.parent.is_some()),
                        std::time::SystemTime::now(),
                    )
                })
                .unwrap_or_default(),
            uplink: self.report.uplink.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
            uplink_address: match (&self.report.uplink, &lease) {
                (Some((_, _, true)), Some(l)) => l.address.to_string(),
                (Some((_, Some(ip), false)), _) => ip.to_string(),
                _ => String::new(),
            },
            dhcp_lease: lease.map(|l| pb::DhcpLease {
                address: l.address.to_string(),
                router: l.router.map(|r| r.to_string()).unwrap_or_default(),
                server: l.server.to_string(),
                dns: l.dns.iter().map(|d| d.to_string()).collect(),
                hostname: l.hostname.unwrap_or_default(),
                lease_seconds: l.lease.as_secs() as u32,
                renew_seconds: l.renew.as_secs() as u32,
                rebind_seconds: l.rebind.as_secs() as u32,
                granted_unix_seconds: l.granted_unix_seconds,
                renewals: l.renewals,
            }),
            bridges: (self.report.named_bridges.iter())
                .map(|b| match b.address {
                    Some(a) => format!("{}={a}", b.name),
                    None => b.name.clone(),
                })
                .collect(),
        }
    }
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How the node's certificate stands, in a sentence. A spawned node's parent renews it at
/// half its life; one not renewed well past that says its parent may be gone.
pub fn identity_note(s: crate::pki::tls::IdentityState, spawned: bool, now: std::time::SystemTime) -> String {
    let secs = |a: std::time::SystemTime, b: std::time::SystemTime| a.duration_since(b).map_or(0, |d| d.as_secs());
    let left = secs(s.not_after, now);
    if left == 0 {
        return "expired: callers and the parent refuse it".into();
    }
    let issued = s.renewed.unwrap_or(s.not_before + crate::pki::BACKDATE);
    let life = secs(s.not_after, issued);
    let age = secs(now, issued);
    let since = match s.renewed {
        Some(_) => format!("renewed {age} s ago"),
        None => format!("issued {age} s ago"),
    };
    if spawned && age > life * 3 / 4 {
        format!(
            "{since} and not renewed past half its life: the parent may be gone; serving until it expires in {left} s"
        )
    } else {
        format!("{since}, expires in {left} s")
    }
}

/// Binds `listen` and serves until `shutdown` resolves; in-flight calls are finished first.
pub async fn serve(
    listen: SocketAddr,
    tls: &crate::pki::tls::TlsFiles,
    ctx: Arc<NodeContext>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let material = tls.load()?;
    let identity = match &ctx.identity {
        Some(i) => i.clone(),
        None => Arc::new(crate::pki::tls::LiveIdentity::from_pem(
            &material.cert_pem,
            &material.key_pem,
        )?),
    };
    let config = crate::pki::tls::server_config(&material.ca_pem, identity, &ctx.spiffe_id)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
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
    health_reporter
        .set_serving::<pb::images_server::ImagesServer<images_api::ImagesApi>>()
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
        // A client gets this many calls in flight per connection, and a peer that stops
        // answering HTTP/2 pings is dropped.
        .max_concurrent_streams(Some(MAX_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // HTTP/1.1 for `GET /metrics` alone (a Prometheus scrape); every other HTTP/1
        // request is answered 404 by the metrics layer.
        .accept_http1(true)
        // Outermost: `/metrics`, and each call counted by method, code and time.
        .layer(metrics::MetricsLayer { ctx: ctx.clone() })
        // Then: nothing runs, here or in a child, before the caller is authorized.
        .layer(authz::AuthzLayer { auth: ctx.auth.clone() })
        .layer(forward::ForwardLayer {
            rt: ctx.runtime.clone(),
        })
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::node_server::NodeServer::new(node_api::NodeApi { ctx: ctx.clone() }))
        .add_service(pb::runtime_server::RuntimeServer::new(runtime_api::RuntimeApi {
            rt: ctx.runtime.clone(),
            auth: ctx.auth.clone(),
        }))
        .add_service(pb::workloads_server::WorkloadsServer::new(
            workloads_api::WorkloadsApi {
                rt: ctx.runtime.clone(),
                auth: ctx.auth.clone(),
                watches: Default::default(),
            },
        ))
        .add_service(pb::images_server::ImagesServer::new(images_api::ImagesApi {
            images: ctx.images.clone(),
            rt: ctx.runtime.clone(),
        }))
        .add_optional_service(ctx.cri.clone().map(cri_api::runtime_service))
        .add_optional_service(ctx.cri.clone().map(cri_api::image_service))
        .serve_with_incoming_shutdown(listen::incoming(listener, acceptor, ctx.slots.clone()), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::identity_note;
    use crate::pki::tls::IdentityState;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_certificate_note_says_when_a_parent_stopped_renewing() {
        let now = SystemTime::now();
        let issued = now - Duration::from_secs(10);
        let s = IdentityState {
            not_before: issued - crate::pki::BACKDATE,
            not_after: issued + Duration::from_secs(60),
            renewed: Some(issued),
        };
        assert_eq!(identity_note(s, true, now), "renewed 10 s ago, expires in 50 s");
        let late = now + Duration::from_secs(40);
        assert!(identity_note(s, true, late).contains("the parent may be gone; serving until it expires in 10 s"));
        // A node nobody spawned has no parent to miss.
        assert!(!identity_note(s, false, late).contains("parent"));
        assert!(identity_note(s, true, now + Duration::from_secs(61)).starts_with("expired"));
    }
}
