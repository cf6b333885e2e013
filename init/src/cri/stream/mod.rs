//! The CRI's streaming server: `Exec`, `Attach` and `PortForward` answer a URL
//! on it; kubelet (or crictl) then connects there and upgrades the connection to the
//! protocol it speaks, and the session runs over that connection.
//!
//! - A URL is `http://ADDR/KIND/TOKEN` (`exec`, `attach`, `portforward`): the token (32
//!   random bytes) alone names the session, so a client that reaches the port through a
//!   forward is served the same. A token is good once, for [`TOKEN_TTL`], for the one
//!   request it was issued for (the container, the command, which streams; or the
//!   sandbox and its ports); taken the moment its request line is read, whatever happens
//!   next.
//! - The server serves at most [`MAX_CONNECTIONS`] connections at once (one that has not
//!   sent its request within [`HEAD_WITHIN`] is closed), at most [`MAX_PER_CONTAINER`]
//!   sessions per container, and closes a session idle for [`IDLE`].
//! - Protocols: SPDY/3.1 with `v4.channel.k8s.io` and `portforward.k8s.io` (`spdy/`:
//!   what kubelet speaks to a runtime, so `kubectl exec`, `attach` and `port-forward`),
//!   and WebSocket (crictl `--transport websocket`): for exec and attach with the
//!   `v5.channel.k8s.io` and `v4.channel.k8s.io` subprotocols (`ws.rs`), for port-forward
//!   with `v4.channel.k8s.io` and the ports in the query (`ws_forward.rs`); what both
//!   protocols carry for an exec or attach is `channel.rs`'s.

pub mod channel;
mod http;
pub mod spdy;
pub mod ws;
pub mod ws_forward;

use super::CriError;
use crate::pb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a URL an `Exec` answered may wait for its client (kubelet's own streaming
/// server keeps a request for a minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// URLs issued and not yet used, at most (a caller asking faster than it connects is
/// refused, RESOURCE_EXHAUSTED).
pub const MAX_PENDING: usize = 1024;
/// Connections served at once, in their request or in a session.
pub const MAX_CONNECTIONS: usize = 64;
/// Sessions one container has at once.
pub const MAX_PER_CONTAINER: usize = 8;
/// How long a connection may take to send its request line and headers.
pub const HEAD_WITHIN: Duration = Duration::from_secs(10);
/// A session with no traffic either way for this long is closed (kubelet's default
/// `streamingConnectionIdleTimeout`).
pub const IDLE: Duration = Duration::from_secs(4 * 3600);

/// The server's limits (the constants above, unless a test picks smaller ones).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ttl: Duration,
    pub max_pending: usize,
    pub max_connections: usize,
    pub max_per_container: usize,
    pub head_within: Duration,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ttl: TOKEN_TTL,
            max_pending: MAX_PENDING,
            max_connections: MAX_CONNECTIONS,
            max_per_container: MAX_PER_CONTAINER,
            head_within: HEAD_WITHIN,
            idle: IDLE,
        }
    }
}

/// A container of a sandbox, as a session reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    /// The runtime pod (the sandbox) and the container's cell in its instance.
    pub pod: String,
    pub name: String,
}

/// A command to run attached in a container, or (`attach`) its running entrypoint to
/// join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub target: Target,
    /// Empty with `attach`.
    pub cmd: Vec<String>,
    pub attach: bool,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What a URL was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Exec(Exec),
    /// TCP to `ports` (any, when empty) at the pod's `address`; `target` names the
    /// sandbox (its id in `container_id`).
    PortForward {
        target: Target,
        address: std::net::IpAddr,
        ports: Vec<u16>,
    },
}

impl What {
    fn kind(&self) -> &'static str {
        match self {
            What::Exec(e) if e.attach => "attach",
            What::Exec(_) => "exec",
            What::PortForward { .. } => "portforward",
        }
    }

    fn target(&self) -> &Target {
        match self {
            What::Exec(Exec { target, .. }) | What::PortForward { target, .. } => target,
        }
    }
}

/// A process a session runs: what it is sent (the Aurae API's Exec requests) and what it
/// answers.
pub struct ExecIo {
    pub input: tokio::sync::mpsc::Sender<pb::ExecRequest>,
    pub output: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::ExecResponse, tonic::Status>> + Send>>,
    /// Joined, not started (Attach): its end is the session's success, whatever its code,
    /// as kubelet reports an attach.
    pub attached: bool,
}

/// Opens the process of session `e`: its command started, or its entrypoint joined.
async fn open(backend: &dyn Backend, e: &Exec) -> Result<ExecIo, tonic::Status> {
    if e.attach {
        return backend.attach(&e.target, e.stdin).await;
    }
    let start = pb::ExecStart {
        cell: e.target.name.clone(),
        argv: e.cmd.clone(),
        tty: e.tty,
        ..Default::default()
    };
    backend.exec(&e.target, start).await
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where sessions' processes run: the sandbox's instance (`Cri`), or a test's fake.
pub trait Backend: Send + Sync + 'static {
    /// Starts `start` in `target`'s container, attached.
    fn exec<'a>(&'a self, target: &'a Target, start: pb::ExecStart) -> BoxFuture<'a, Result<ExecIo, tonic::Status>>;
    /// Joins the running entrypoint of `target`'s container (its stdin too with `stdin`).
    fn attach<'a>(&'a self, target: &'a Target, stdin: bool) -> BoxFuture<'a, Result<ExecIo, tonic::Status>>;
}

/// The URLs issued and the sessions open.
pub struct Streams {
    /// `http://ADDR` the URLs start with.
    base: String,
    limits: Limits,
    pending: Mutex<HashMap<String, (What, Instant)>>,
    /// Sessions open per container id.
    open: Mutex<HashMap<String, usize>>,
    connections: AtomicUsize,
}

/// Why a request was not served: its HTTP status and words.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: String,
}

impl Refusal {
    fn new(status: u16, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
        }
    }
}

fn token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(super::hex(&b))
}

impl Streams {
    /// URLs at `addr` (where the server listens: what a client connects to).
    pub fn new(addr: SocketAddr, limits: Limits) -> Streams {
        Streams {
            base: format!("http://{addr}"),
            limits,
            pending: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (What, Instant)>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new URL for `what`, good once for the TTL.
    pub fn issue(&self, what: What) -> Result<String, CriError> {
        let t = token().map_err(|e| CriError::NodeLacks(format!("no randomness for a streaming token: {e}")))?;
        let kind = what.kind();
        let now = Instant::now();
        let mut p = self.pending();
        let ttl = self.limits.ttl;
        p.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        if p.len() >= self.limits.max_pending {
            return Err(CriError::Exhausted(format!(
                "{} streaming URLs are waiting for their clients; connect to those first (each lasts {} s)",
                self.limits.max_pending,
                ttl.as_secs()
            )));
        }
        p.insert(t.clone(), (what, now));
        Ok(format!("{}/{kind}/{t}", self.base))
    }

    /// Takes the request `path` names (`/KIND/TOKEN`): gone from the table whatever the
    /// answer, so a URL is never served twice.
    pub fn take(&self, path: &str) -> Result<What, Refusal> {
        let unknown = || {
            Refusal::new(
                404,
                "no such streaming session: the URL is unknown, used or expired; ask for a new one",
            )
        };
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
            return Err(unknown());
        };
        let Some((what, at)) = self.pending().remove(token) else {
            return Err(unknown());
        };
        if at.elapsed() >= self.limits.ttl || what.kind() != kind {
            return Err(unknown());
        }
        Ok(what)
    }

    /// Counts a session of `target`'s container; None when it has its most.
    fn enter(self: &Arc<Self>, target: &Target) -> Option<SessionSlot> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(target.container_id.clone()).or_default();
        if *n >= self.limits.max_per_container {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            streams: self.clone(),
            id: target.container_id.clone(),
        })
    }
}

/// A session counted against its container, until dropped.
struct SessionSlot {
    streams: Arc<Streams>,
    id: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// A connection counted against `MAX_CONNECTIONS`, until dropped.
struct ConnectionSlot(Arc<Streams>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `listener` until the node stops: each connection on a task of its own.
pub async fn serve(listener: tokio::net::TcpListener, streams: Arc<Streams>, backend: Arc<dyn Backend>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: a moment later there may be some.
                tracing::warn!("CRI streaming: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let most = streams.limits.max_connections;
        if streams.connections.fetch_add(1, Ordering::Relaxed) >= most {
            streams.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!("CRI streaming: {peer} refused, {most} connections open");
            drop(conn);
            continue;
        }
        let slot = ConnectionSlot(streams.clone());
        let (streams, backend) = (streams.clone(), backend.clone());
        tokio::spawn(async move {
            let _slot = slot;
            connection(conn, peer, streams, backend).await;
        });
    }
}

async fn connection(
    mut conn: tokio::net::TcpStream,
    peer: SocketAddr,
    streams: Arc<Streams>,
    backend: Arc<dyn Backend>,
) {
    let head = match tokio::time::timeout(streams.limits.head_within, http::read_head(&mut conn)).await {
        Ok(Ok(h)) => h,
        Ok(Err(r)) => return http::refuse(&mut conn, &r).await,
        Err(_) => return,
    };
    let what = match streams.take(&head.path) {
        Ok(w) => w,
        Err(r) => {
            tracing::info!("CRI streaming: {peer} {}: {}", r.status, r.why);
            return http::refuse(&mut conn, &r).await;
        }
    };
    let Some(slot) = streams.enter(what.target()) else {
        let r = Refusal::new(
            429,
            format!(
                "the container has {} streaming sessions open; end one first",
                streams.limits.max_per_container
            ),
        );
        return http::refuse(&mut conn, &r).await;
    };
    let spdy = head.lists("upgrade", "SPDY/3.1");
    let forward = matches!(what, What::PortForward { .. });
    let wanted = if forward {
        spdy::forward::PROTOCOL
    } else {
        spdy::PROTOCOL
    };
    // Over WebSocket, the ports a port-forward asks for are in the query.
    let mut ws_ports = Vec::new();
    let accepted = match (spdy, &what) {
        (true, _) => spdy::accept(&head, wanted).map(|r| (r, wanted)),
        (false, What::Exec(_)) => ws::accept(&head).map(|a| (a.response, a.subprotocol)),
        (false, What::PortForward { ports, .. }) => ws_forward::ports(&head, ports).and_then(|p| {
            ws_ports = p;
            ws::accept_from(&head, &[ws_forward::SUBPROTOCOL]).map(|a| (a.response, a.subprotocol))
        }),
    };
    let (response, protocol) = match accepted {
        Ok(a) => a,
        Err(r) => return http::refuse(&mut conn, &r).await,
    };
    if let Err(e) = http::write_all(&mut conn, response.as_bytes()).await {
        tracing::debug!("CRI streaming: {peer}: {e}");
        return;
    }
    let over = if spdy { "SPDY/3.1" } else { "WebSocket" };
    tracing::info!(
        "CRI streaming: {peer} {} in container {} ({over}, {protocol})",
        what.kind(),
        what.target().container_id,
    );
    let idle = streams.limits.idle;
    match (what, spdy) {
        (What::Exec(e), true) => spdy::session(conn, e, backend, idle).await,
        (What::Exec(e), false) => ws::session(conn, protocol, e, backend, idle).await,
        (What::PortForward { address, ports, .. }, true) => spdy::forward::session(conn, address, ports, idle).await,
        (What::PortForward { address, .. }, false) => ws_forward::session(conn, address, ws_ports, idle).await,
    }
    drop(slot);
}

#[cfg(test)]
mod tests;
