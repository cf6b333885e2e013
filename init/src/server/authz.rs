//! Authorization: one tower layer in front of every service (health and reflection
//! included, and before forwarding), so no handler runs and no call leaves for a child
//! before the caller's role is checked against the method's.
//!
//! The caller is the SPIFFE ID in the peer certificate that mTLS verified, except on a
//! call the node's own parent forwards: the parent names the original caller in the
//! `aurae-caller` header and this node authorizes *that* ID with its own policy. The header
//! is honoured from the parent's certificate alone; from anyone else it is refused.

use crate::pki::chain::ChainError;
use crate::pki::policy::{Policy, PolicyError, Role};
use http::{HeaderValue, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::Status;
use tower_service::Service;

pub const CALLER_HEADER: &str = aurae_proto::CALLER_HEADER;

/// The role each rpc needs. A test checks that this covers every method of every service
/// the server registers, so an rpc added without a role fails the build's tests.
pub const METHODS: &[(&str, Role)] = &[
    ("/aurae.v0.Node/Info", Role::Reader),
    ("/aurae.v0.Node/Shutdown", Role::Admin),
    ("/aurae.v0.Node/Reboot", Role::Admin),
    // And only from the node's own parent, directly (see `node_api`).
    ("/aurae.v0.Node/RenewIdentity", Role::Admin),
    ("/aurae.v0.Runtime/RunExecutable", Role::Operator),
    ("/aurae.v0.Runtime/RunCell", Role::Operator),
    // Admin when the VM names files on the node (see `runtime_api`).
    ("/aurae.v0.Runtime/RunVirtualMachine", Role::Operator),
    ("/aurae.v0.Runtime/Spawn", Role::Operator),
    ("/aurae.v0.Runtime/RunPod", Role::Operator),
    ("/aurae.v0.Runtime/Exec", Role::Operator),
    ("/aurae.v0.Runtime/Attach", Role::Operator),
    ("/aurae.v0.Runtime/PortForward", Role::Operator),
    ("/aurae.v0.Workloads/Status", Role::Reader),
    ("/aurae.v0.Workloads/List", Role::Reader),
    ("/aurae.v0.Workloads/Stop", Role::Operator),
    ("/aurae.v0.Workloads/Wait", Role::Reader),
    ("/aurae.v0.Workloads/Free", Role::Operator),
    ("/aurae.v0.Workloads/Logs", Role::Reader),
    ("/aurae.v0.Workloads/Events", Role::Reader),
    ("/aurae.v0.Workloads/Freeze", Role::Operator),
    ("/aurae.v0.Workloads/Thaw", Role::Operator),
    // And only from the node's own parent, directly (see `workloads_api`).
    ("/aurae.v0.Workloads/VolumeFiles", Role::Admin),
    ("/aurae.v0.Images/Pull", Role::Operator),
    ("/aurae.v0.Images/List", Role::Reader),
    ("/aurae.v0.Images/Status", Role::Reader),
    ("/aurae.v0.Images/Remove", Role::Operator),
    // A loaded image could claim any reference: a parent giving its child a pod's images.
    ("/aurae.v0.Images/Load", Role::Admin),
    // The Kubernetes CRI: a kubelet's whole power over the node (host paths, any image,
    // any pod), so admin only on the API port, however harmless a method looks.
    ("/runtime.v1.RuntimeService/Version", Role::Admin),
    ("/runtime.v1.RuntimeService/RunPodSandbox", Role::Admin),
    ("/runtime.v1.RuntimeService/StopPodSandbox", Role::Admin),
    ("/runtime.v1.RuntimeService/RemovePodSandbox", Role::Admin),
    ("/runtime.v1.RuntimeService/PodSandboxStatus", Role::Admin),
    ("/runtime.v1.RuntimeService/ListPodSandbox", Role::Admin),
    ("/runtime.v1.RuntimeService/CreateContainer", Role::Admin),
    ("/runtime.v1.RuntimeService/StartContainer", Role::Admin),
    ("/runtime.v1.RuntimeService/StopContainer", Role::Admin),
    ("/runtime.v1.RuntimeService/RemoveContainer", Role::Admin),
    ("/runtime.v1.RuntimeService/ListContainers", Role::Admin),
    ("/runtime.v1.RuntimeService/ContainerStatus", Role::Admin),
    ("/runtime.v1.RuntimeService/UpdateContainerResources", Role::Admin),
    ("/runtime.v1.RuntimeService/ReopenContainerLog", Role::Admin),
    ("/runtime.v1.RuntimeService/ExecSync", Role::Admin),
    ("/runtime.v1.RuntimeService/Exec", Role::Admin),
    ("/runtime.v1.RuntimeService/Attach", Role::Admin),
    ("/runtime.v1.RuntimeService/PortForward", Role::Admin),
    ("/runtime.v1.RuntimeService/ContainerStats", Role::Admin),
    ("/runtime.v1.RuntimeService/ListContainerStats", Role::Admin),
    ("/runtime.v1.RuntimeService/PodSandboxStats", Role::Admin),
    ("/runtime.v1.RuntimeService/ListPodSandboxStats", Role::Admin),
    ("/runtime.v1.RuntimeService/UpdateRuntimeConfig", Role::Admin),
    ("/runtime.v1.RuntimeService/Status", Role::Admin),
    ("/runtime.v1.RuntimeService/CheckpointContainer", Role::Admin),
    ("/runtime.v1.RuntimeService/GetContainerEvents", Role::Admin),
    ("/runtime.v1.RuntimeService/ListMetricDescriptors", Role::Admin),
    ("/runtime.v1.RuntimeService/ListPodSandboxMetrics", Role::Admin),
    ("/runtime.v1.RuntimeService/RuntimeConfig", Role::Admin),
    ("/runtime.v1.ImageService/ListImages", Role::Admin),
    ("/runtime.v1.ImageService/ImageStatus", Role::Admin),
    ("/runtime.v1.ImageService/PullImage", Role::Admin),
    ("/runtime.v1.ImageService/RemoveImage", Role::Admin),
    ("/runtime.v1.ImageService/ImageFsInfo", Role::Admin),
    // Not an rpc: the Prometheus scrape (HTTP/1.1 GET, see `metrics`).
    ("/metrics", Role::Reader),
    ("/grpc.health.v1.Health/Check", Role::Reader),
    ("/grpc.health.v1.Health/Watch", Role::Reader),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Role::Reader,
    ),
];

/// Request fields that need more than their method's role: an operator gets no more than a
/// default cell's powers, so host namespaces, capabilities beyond the default set, a
/// privileged or unconfined cell and files of the node's choosing are the admin's. Dropping
/// capabilities, a stricter profile or a user namespace are anyone's. `Caller::authorize`
/// is the one place this table is evaluated; a field a request reports ([`Asks`]) that is
/// not listed needs admin, and a test checks every reported field is listed.
pub const FIELDS: &[(&str, &str, Role)] = &[
    ("/aurae.v0.Runtime/RunCell", "isolation.share_host_pid", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "isolation.share_host_mount", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "isolation.share_host_network", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "isolation.share_host_ipc", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "isolation.share_host_uts", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "isolation.share_host_cgroup", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "confinement.privileged", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "confinement.seccomp", Role::Admin),
    ("/aurae.v0.Runtime/RunCell", "confinement.cap_add", Role::Admin),
    ("/aurae.v0.Runtime/RunVirtualMachine", "kernel_path", Role::Admin),
    ("/aurae.v0.Runtime/RunVirtualMachine", "initramfs_path", Role::Admin),
    ("/aurae.v0.Runtime/RunVirtualMachine", "disks", Role::Admin),
];

/// A request that may ask for more than its method's role allows: the `FIELDS` it sets, each
/// with what it asks for in words ("confinement.cap_add SYS_ADMIN").
pub trait Asks {
    const METHOD: &'static str;
    fn asks(&self) -> Vec<(&'static str, String)>;
}

impl Asks for crate::pb::Cell {
    const METHOD: &'static str = "/aurae.v0.Runtime/RunCell";
    fn asks(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(i) = &self.isolation {
            for (set, field) in [
                (i.share_host_pid, "isolation.share_host_pid"),
                (i.share_host_mount, "isolation.share_host_mount"),
                (i.share_host_network, "isolation.share_host_network"),
                (i.share_host_ipc, "isolation.share_host_ipc"),
                (i.share_host_uts, "isolation.share_host_uts"),
                (i.share_host_cgroup, "isolation.share_host_cgroup"),
            ] {
                if set {
                    v.push((field, format!("{field} (a namespace of the node's)")));
                }
            }
        }
        if let Some(c) = &self.confinement {
            if c.privileged {
                v.push(("confinement.privileged", "confinement.privileged".to_owned()));
            }
            if c.seccomp == crate::pb::SeccompProfile::Unconfined as i32 {
                v.push(("confinement.seccomp", "confinement.seccomp UNCONFINED".to_owned()));
            }
            let beyond = crate::runtime::confine::caps::beyond_default(&c.cap_add);
            if !beyond.is_empty() {
                v.push((
                    "confinement.cap_add",
                    format!(
                        "confinement.cap_add {} (beyond the default set: {})",
                        beyond.join(","),
                        crate::runtime::confine::caps::DEFAULT.join(",")
                    ),
                ));
            }
        }
        v
    }
}

impl Asks for crate::pb::VirtualMachine {
    const METHOD: &'static str = "/aurae.v0.Runtime/RunVirtualMachine";
    fn asks(&self) -> Vec<(&'static str, String)> {
        // An operator boots the node's own kernel; files of the node's choosing are the
        // admin's (a disk can be any block device or file auraed can open).
        [
            ("kernel_path", !self.kernel_path.is_empty()),
            ("initramfs_path", !self.initramfs_path.is_empty()),
            ("disks", !self.disks.is_empty()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| (f, format!("{f}, a file on the node,")))
        .collect()
    }
}

/// The role `path` needs; a method nobody listed needs admin (and is then UNIMPLEMENTED).
pub fn required_role(path: &str) -> Role {
    METHODS
        .iter()
        .find(|(m, _)| *m == path)
        .map_or(Role::Admin, |(_, r)| *r)
}

/// Who a call is authorized as. Handlers read it from the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The ID authorized: the original caller of a forwarded call, else the peer.
    pub id: String,
    pub role: Role,
    /// The parent that delivered a forwarded call (the mTLS peer), if forwarded.
    pub via: Option<String>,
}

/// The refusal of `who`, whose role here is `has`, for `what`, which needs `need`.
fn lacks(who: &str, has: Role, what: &str, need: Role) -> Status {
    Status::permission_denied(format!("{who} has role {has} on this node; {what} needs {need}"))
}

impl Caller {
    /// The caller of `req`, when it reached a handler through the layer.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Caller> {
        req.extensions().get::<Caller>()
    }

    /// OK when `req` comes from this node's own parent, directly (not a call it forwards
    /// for someone else); else PERMISSION_DENIED saying who may not `what`, and who may.
    pub fn parent_only<T>(req: &tonic::Request<T>, auth: &Authorizer, what: &str) -> Result<(), Status> {
        let parent = auth.policy().and_then(|p| p.parent.as_deref());
        let caller = Caller::of(req);
        match (caller, parent) {
            (Some(c), Some(p)) if c.via.is_none() && c.id == p => Ok(()),
            _ => {
                let who = caller.map_or("the caller", |c| c.id.as_str());
                Err(Status::permission_denied(match parent {
                    Some(p) => format!("{who} may not {what}: only its parent {p} may, directly"),
                    None => format!("{who} may not {what}: no node spawned it"),
                }))
            }
        }
    }

    /// Refuses unless the caller has the role every field the request asks for needs
    /// (`FIELDS`): the one evaluation of that table.
    pub fn authorize<T: Asks>(req: &tonic::Request<T>) -> Result<(), Status> {
        for (field, what) in req.get_ref().asks() {
            let need = FIELDS
                .iter()
                .find(|(m, f, _)| *m == T::METHOD && *f == field)
                .map_or(Role::Admin, |(_, _, r)| *r);
            Caller::require(req, need, &what)?;
        }
        Ok(())
    }

    /// Refuses unless the caller has `role`; `why` says what about the request needs it.
    pub fn require<T>(req: &tonic::Request<T>, role: Role, why: &str) -> Result<(), Status> {
        match Caller::of(req) {
            Some(c) if c.role >= role => Ok(()),
            Some(c) => Err(lacks(&c.id, c.role, why, role)),
            None => Err(Status::permission_denied(format!("{why} needs {role}"))),
        }
    }
}

/// The node's policy (or why it has none), its trust domain and root CA.
pub struct Authorizer {
    policy: Result<Policy, PolicyError>,
    /// `spiffe://<domain>/`: callers from another trust domain have no role.
    domain_root: String,
    /// The root CA (DER): peer chains must reach it through CAs that sign only inside their
    /// own subtree (`pki::chain`). None: no peer is accepted.
    root: Option<Vec<u8>>,
    /// Chains already checked (a connection presents the same one on every call), with the
    /// SPIFFE ID or the refusal. Bounded: cleared when full.
    checked: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Result<String, ChainError>>>,
    /// Certificates of instances this node freed (shared with the runtime, which adds them).
    revoked: Arc<crate::pki::revoked::Revoked>,
}

const CHECKED_CAP: usize = 256;

impl Authorizer {
    /// `policy` is the loaded policy or the reason there is none; without one every call is
    /// refused with that reason (deny by default: a node never serves without a policy).
    pub fn new(
        policy: Result<Policy, PolicyError>,
        node_id: &str,
        root: Option<Vec<u8>>,
        revoked: Arc<crate::pki::revoked::Revoked>,
    ) -> Authorizer {
        Authorizer {
            policy,
            domain_root: crate::pki::domain_root(node_id),
            root,
            checked: Default::default(),
            revoked,
        }
    }

    /// Whether `chain` reaches this node's root through entitled CAs and holds no revoked
    /// certificate.
    pub fn check_chain(&self, chain: &[&[u8]]) -> Result<(), ChainError> {
        if self.revoked.any(chain) {
            return Err(ChainError::Revoked);
        }
        self.rooted(chain)
    }

    /// The subtree rule (`pki::chain`) against this node's root CA.
    fn rooted(&self, chain: &[&[u8]]) -> Result<(), ChainError> {
        match &self.root {
            None => Err(ChainError::NoRoot),
            Some(root) => crate::pki::chain::check(chain, root),
        }
    }

    /// The SPIFFE ID of a peer that presented `chain` (leaf first, as verified by mTLS), if
    /// a CA entitled to sign that ID issued it; else PERMISSION_DENIED saying why.
    pub fn identify(&self, chain: &[&[u8]]) -> Result<String, Status> {
        // Before the cache: a chain accepted a moment ago is refused once revoked.
        if self.revoked.any(chain) {
            return Err(Status::permission_denied(
                "the client certificate is refused: it was revoked (issued to an instance this node has freed)",
            ));
        }
        let key = chain.concat();
        let cached = match self.checked.lock() {
            Ok(m) => m.get(&key).cloned(),
            Err(_) => None,
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let v = self.rooted(chain).and_then(|()| {
                    chain
                        .first()
                        .and_then(|leaf| crate::pki::spiffe_id_of_der(leaf))
                        .ok_or(ChainError::NoLeafId)
                });
                if let Ok(mut m) = self.checked.lock() {
                    if m.len() >= CHECKED_CAP {
                        m.clear();
                    }
                    m.insert(key, v.clone());
                }
                v
            }
        };
        verdict.map_err(|why| Status::permission_denied(format!("the client certificate is refused: {why}")))
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref().ok()
    }

    /// Decides a call to `method` from `peer` (the verified certificate's SPIFFE ID), which
    /// may carry `forwarded_for` (the `aurae-caller` header).
    pub fn decide(
        &self,
        method: &str,
        peer: Option<&str>,
        forwarded_for: Option<&HeaderValue>,
    ) -> Result<Caller, Status> {
        let method_name = method.trim_start_matches('/');
        let need = required_role(method);
        let policy = self.policy.as_ref().map_err(|why| {
            Status::permission_denied(format!("this node has no usable policy ({why}); every call is refused"))
        })?;
        let Some(peer) = peer.filter(|p| p.starts_with(&self.domain_root)) else {
            return Err(Status::permission_denied(format!(
                "the client certificate carries no SPIFFE ID of this trust domain ({}…); {method_name} needs {need}",
                self.domain_root
            )));
        };
        let (id, via) = match forwarded_for {
            None => (peer.to_owned(), None),
            Some(v) => {
                if policy.parent.as_deref() != Some(peer) {
                    return Err(Status::permission_denied(format!(
                        "{peer} sent {CALLER_HEADER}, which this node accepts only from the node that spawned it"
                    )));
                }
                let original = v
                    .to_str()
                    .ok()
                    .filter(|o| o.starts_with(&self.domain_root) && crate::pki::policy::check_spiffe_id(o).is_ok())
                    .ok_or_else(|| {
                        Status::invalid_argument(format!("{CALLER_HEADER}: not a SPIFFE ID of this trust domain"))
                    })?;
                (original.to_owned(), Some(peer.to_owned()))
            }
        };
        let shown = match &via {
            Some(v) => format!("{id} (forwarded by {v})"),
            None => id.clone(),
        };
        match policy.role_of(&id) {
            Some(role) if role >= need => Ok(Caller { id, role, via }),
            Some(role) => Err(lacks(&shown, role, method_name, need)),
            None => Err(Status::permission_denied(format!(
                "{shown} has no role on this node (its policy names no such ID); {method_name} needs {need}"
            ))),
        }
    }
}

/// The SPIFFE ID of the peer of an http request served over mTLS, once its chain passed
/// the subtree rule; Ok(None) when it presented no certificate.
pub(super) fn peer_id(auth: &Authorizer, req: &Request<Body>) -> Result<Option<String>, Status> {
    let Some(certs) = req
        .extensions()
        .get::<super::listen::PeerInfo>()
        .and_then(|i| i.certs.clone())
    else {
        return Ok(None);
    };
    let chain: Vec<&[u8]> = certs.iter().map(|c| c.as_ref()).collect();
    auth.identify(&chain).map(Some)
}

/// Reads that answer from memory at once: a connection runs `QUICK_PER_CONNECTION` of
/// them at a time (listen.rs), so a flood of them on one connection cannot fill PID 1's
/// run queue ahead of everyone else's calls. Calls that may rightly last (Wait, Logs,
/// Exec, Pull, Run*, Stop) are bounded otherwise and take no turn.
pub const QUICK: &[&str] = &[
    "/aurae.v0.Node/Info",
    "/aurae.v0.Workloads/Status",
    "/aurae.v0.Workloads/List",
    "/aurae.v0.Images/List",
    "/aurae.v0.Images/Status",
    "/grpc.health.v1.Health/Check",
];

#[derive(Clone)]
pub struct AuthzLayer {
    pub auth: Arc<Authorizer>,
}

impl<S> tower_layer::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    auth: Arc<Authorizer>,
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S> Service<Request<Body>> for Authz<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let decision = peer_id(&self.auth, &req).and_then(|peer| {
            self.auth
                .decide(req.uri().path(), peer.as_deref(), req.headers().get(CALLER_HEADER))
        });
        match decision {
            Ok(caller) => {
                req.headers_mut().remove(CALLER_HEADER);
                req.extensions_mut().insert(caller);
                let turns = QUICK
                    .contains(&req.uri().path())
                    .then(|| {
                        req.extensions()
                            .get::<super::listen::PeerInfo>()
                            .map(|p| p.quick.clone())
                    })
                    .flatten();
                let call = self.inner.call(req);
                match turns {
                    // The call waits for one of its connection's turns, parked (not in the
                    // run queue), and holds it until its answer is made.
                    Some(turns) => Box::pin(async move {
                        let _turn = turns.acquire_owned().await;
                        call.await
                    }),
                    None => Box::pin(call),
                }
            }
            Err(status) => {
                let from = req
                    .extensions()
                    .get::<super::listen::PeerInfo>()
                    .and_then(|p| p.remote)
                    .map_or_else(String::new, |a| format!(" from {a}"));
                tracing::info!("denied {}{from}: {}", req.uri().path(), status.message());
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "spiffe://t.test/client/admin";
    const READER: &str = "spiffe://t.test/client/rita";
    const PARENT: &str = "spiffe://t.test/node/n";
    const SELF: &str = "spiffe://t.test/node/n/instance/c1";

    fn child() -> Authorizer {
        let top = Policy::parse(
            &format!(
                "[[allow]]\nid = \"{ADMIN}\"\nrole = \"admin\"\n[[allow]]\nid = \"{READER}\"\nrole = \"reader\"\n"
            ),
            "p",
        )
        .unwrap();
        Authorizer::new(Ok(top.for_child(PARENT)), SELF, None, Default::default())
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn as_role<T>(msg: T, role: Role) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(Caller {
            id: "spiffe://t.test/client/o".into(),
            role,
            via: None,
        });
        r
    }

    fn cell_with(i: pb::CellIsolation, c: pb::CellConfinement) -> pb::Cell {
        pb::Cell {
            name: "c".into(),
            isolation: Some(i),
            confinement: Some(c),
            ..Default::default()
        }
    }

    use crate::pb;

    /// Every field a request can report is in `FIELDS` under its method, and every method
    /// there is a served one: a new power cannot slip past the table.
    #[test]
    fn every_field_a_request_asks_for_is_in_the_table() {
        let all = cell_with(
            pb::CellIsolation {
                share_host_pid: true,
                share_host_mount: true,
                share_host_network: true,
                share_host_ipc: true,
                share_host_uts: true,
                share_host_cgroup: true,
            },
            pb::CellConfinement {
                privileged: true,
                seccomp: pb::SeccompProfile::Unconfined as i32,
                cap_add: vec!["ALL".into()],
                ..Default::default()
            },
        );
        let vm = pb::VirtualMachine {
            kernel_path: "k".into(),
            initramfs_path: "i".into(),
            disks: vec![Default::default()],
            ..Default::default()
        };
        let mut reported: Vec<(&str, &str)> = all.asks().iter().map(|(f, _)| (pb::Cell::METHOD, *f)).collect();
        reported.extend(vm.asks().iter().map(|(f, _)| (pb::VirtualMachine::METHOD, *f)));
        assert_eq!(reported.len(), FIELDS.len());
        for (m, f) in &reported {
            assert!(
                FIELDS.iter().any(|(tm, tf, _)| tm == m && tf == f),
                "{m} {f} is reported but not in FIELDS"
            );
        }
        for (m, _, _) in FIELDS {
            assert!(
                METHODS.iter().any(|(p, _)| p == m),
                "FIELDS names {m}, which METHODS lacks"
            );
        }
    }

    /// Every quick read is a method the node serves (a misspelt path would silently take
    /// no turn), and none of the calls that may rightly last is among them.
    #[test]
    fn quick_reads_are_real_methods_that_answer_at_once() {
        for m in QUICK {
            assert!(
                METHODS.iter().any(|(p, _)| p == m),
                "QUICK names {m}, which METHODS lacks"
            );
        }
        for lasting in [
            "Wait",
            "Logs",
            "Events",
            "Exec",
            "Attach",
            "PortForward",
            "Pull",
            "Load",
            "Stop",
            "Watch",
        ] {
            assert!(!QUICK.iter().any(|m| m.ends_with(&format!("/{lasting}"))), "{lasting}");
        }
    }

    /// The operator's envelope: a default cell's powers and nothing more. Each power beyond
    /// it is refused by name; dropping and stricter settings pass; an admin may ask for all.
    #[test]
    fn an_operator_gets_no_more_than_a_default_cells_powers() {
        let none = pb::CellIsolation::default();
        let plain = pb::CellConfinement::default();
        let caps = |c: &[&str]| pb::CellConfinement {
            cap_add: c.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let refused = [
            (
                cell_with(
                    pb::CellIsolation {
                        share_host_mount: true,
                        ..none
                    },
                    plain.clone(),
                ),
                "isolation.share_host_mount",
            ),
            (
                cell_with(
                    pb::CellIsolation {
                        share_host_pid: true,
                        ..none
                    },
                    plain.clone(),
                ),
                "isolation.share_host_pid",
            ),
            (
                cell_with(
                    pb::CellIsolation {
                        share_host_network: true,
                        ..none
                    },
                    plain.clone(),
                ),
                "isolation.share_host_network",
            ),
            (
                cell_with(
                    pb::CellIsolation {
                        share_host_ipc: true,
                        ..none
                    },
                    plain.clone(),
                ),
                "isolation.share_host_ipc",
            ),
            (
                cell_with(
                    pb::CellIsolation {
                        share_host_uts: true,
                        ..none
                    },
                    plain.clone(),
                ),
                "isolation.share_host_uts",
            ),
            (
                cell_with(
                    pb::CellIsolation {
                        share_host_cgroup: true,
                        ..none
                    },
                    plain.clone(),
                ),
                "isolation.share_host_cgroup",
            ),
            (cell_with(none, caps(&["ALL"])), "confinement.cap_add ALL"),
            (cell_with(none, caps(&["SYS_ADMIN"])), "confinement.cap_add SYS_ADMIN"),
            (
                cell_with(none, caps(&["DAC_READ_SEARCH"])),
                "confinement.cap_add DAC_READ_SEARCH",
            ),
            (
                cell_with(none, caps(&["cap_sys_ptrace"])),
                "confinement.cap_add cap_sys_ptrace",
            ),
            (cell_with(none, caps(&["NET_ADMIN"])), "confinement.cap_add NET_ADMIN"),
            (cell_with(none, caps(&["SYS_MODULE"])), "confinement.cap_add SYS_MODULE"),
            (cell_with(none, caps(&["MKNOD"])), "confinement.cap_add MKNOD"),
            (
                cell_with(
                    none,
                    pb::CellConfinement {
                        privileged: true,
                        ..Default::default()
                    },
                ),
                "confinement.privileged",
            ),
            (
                cell_with(
                    none,
                    pb::CellConfinement {
                        seccomp: pb::SeccompProfile::Unconfined as i32,
                        ..Default::default()
                    },
                ),
                "confinement.seccomp UNCONFINED",
            ),
        ];
        for (c, field) in refused {
            let e = Caller::authorize(&as_role(c.clone(), Role::Operator)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{field}");
            assert!(e.message().contains(field), "{field}: {}", e.message());
            assert!(e.message().contains("needs admin"), "{}", e.message());
            Caller::authorize(&as_role(c, Role::Admin)).expect("an admin may");
        }
        let allowed = [
            cell_with(none, plain.clone()),
            cell_with(none, caps(&["NET_BIND_SERVICE", "CHOWN"])),
            cell_with(
                none,
                pb::CellConfinement {
                    cap_drop: vec!["ALL".into()],
                    cap_add: vec!["NET_BIND_SERVICE".into()],
                    seccomp: pb::SeccompProfile::Strict as i32,
                    seccomp_deny: vec!["mkdir".into()],
                    user_namespace: true,
                    ..Default::default()
                },
            ),
        ];
        for c in allowed {
            Caller::authorize(&as_role(c.clone(), Role::Operator)).unwrap_or_else(|e| panic!("{c:?}: {e:?}"));
        }
        let vm = pb::VirtualMachine {
            disks: vec![Default::default()],
            ..Default::default()
        };
        let e = Caller::authorize(&as_role(vm, Role::Operator)).unwrap_err();
        assert!(e.message().contains("disks, a file on the node"), "{}", e.message());
        Caller::authorize(&as_role(pb::VirtualMachine::default(), Role::Operator)).unwrap();
    }

    #[test]
    fn every_rpc_the_server_registers_has_a_role_and_no_role_names_a_missing_rpc() {
        use prost::Message;
        let mut served = Vec::new();
        for set in [
            aurae_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for f in set.file {
                for s in &f.service {
                    for m in &s.method {
                        served.push(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                    }
                }
            }
        }
        // The scrape is served beside the services (`metrics`).
        served.push("/metrics".to_owned());
        for m in &served {
            assert!(
                METHODS.iter().any(|(p, _)| p == m),
                "{m} has no role in server/authz.rs METHODS: add one"
            );
        }
        for (p, _) in METHODS {
            assert!(
                served.contains(&p.to_string()),
                "METHODS names {p}, which no service has"
            );
        }
    }

    #[test]
    fn roles_gate_methods_and_the_denial_names_caller_method_and_role() {
        let a = child();
        assert_eq!(
            a.decide("/aurae.v0.Workloads/List", Some(READER), None).unwrap().role,
            Role::Reader
        );
        let e = a
            .decide("/aurae.v0.Runtime/RunExecutable", Some(READER), None)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "spiffe://t.test/client/rita has role reader on this node; aurae.v0.Runtime/RunExecutable needs operator"
        );
        assert!(a.decide("/aurae.v0.Node/Shutdown", Some(ADMIN), None).is_ok());
        assert_eq!(required_role("/x.Y/Z"), Role::Admin);
    }

    #[test]
    fn an_instance_has_no_right_on_its_siblings_or_children_and_unknown_ids_none() {
        let a = child();
        for who in [
            "spiffe://t.test/node/n/instance/c2",
            "spiffe://t.test/node/n/instance/c1/instance/g1",
            SELF,
            "spiffe://other.test/client/admin",
        ] {
            let e = a.decide("/grpc.health.v1.Health/Check", Some(who), None).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}");
        }
        let e = a.decide("/aurae.v0.Node/Info", None, None).unwrap_err();
        assert!(e.message().contains("no SPIFFE ID"), "{}", e.message());
    }

    #[test]
    fn the_parent_is_admin_and_a_forwarded_call_is_authorized_as_the_original_caller() {
        let a = child();
        assert_eq!(
            a.decide("/aurae.v0.Node/Shutdown", Some(PARENT), None).unwrap().role,
            Role::Admin
        );
        let c = a
            .decide("/aurae.v0.Workloads/List", Some(PARENT), Some(&hv(READER)))
            .unwrap();
        assert_eq!(
            c,
            Caller {
                id: READER.into(),
                role: Role::Reader,
                via: Some(PARENT.into())
            }
        );
        let e = a
            .decide("/aurae.v0.Node/Shutdown", Some(PARENT), Some(&hv(READER)))
            .unwrap_err();
        assert!(
            e.message()
                .contains("(forwarded by spiffe://t.test/node/n) has role reader"),
            "{}",
            e.message()
        );
        // Only the parent may speak for someone else.
        let e = a
            .decide("/aurae.v0.Workloads/List", Some(READER), Some(&hv(ADMIN)))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = a
            .decide(
                "/aurae.v0.Workloads/List",
                Some(PARENT),
                Some(&hv("spiffe://other.test/client/admin")),
            )
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_node_without_a_policy_refuses_everyone_and_says_why() {
        let missing = PolicyError::Io {
            path: "policy.toml".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        let a = Authorizer::new(Err(missing), SELF, None, Default::default());
        let e = a.decide("/aurae.v0.Node/Info", Some(ADMIN), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("policy.toml: no such file"), "{}", e.message());
    }
}
