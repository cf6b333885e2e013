//! `GET /metrics`: what PID 1 is doing, in the OpenMetrics text format a Prometheus server
//! scrapes, on the API port over the same mTLS (HTTP/1.1 as Prometheus sends it, or
//! HTTP/2), for the reader role. And the rpc figures behind it: a layer in front of every
//! service counts each call by method and status code and times it until its status.
//!
//! Everything but the rpc figures is read at the scrape from what `Node.Info` and `List`
//! answer from; nothing is sampled in the background.

use super::authz::{self, METHODS};
use super::NodeContext;
use crate::runtime::View;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::body::Body;
use tower_service::Service;

pub const PATH: &str = "/metrics";

/// Every metric family a scrape shows, as named in it (docs/metrics.md lists each); a test
/// checks a scrape holds these and no others.
pub const FAMILIES: &[(&str, &str)] = &[
    ("aurae_auraed_resident_memory_bytes", "gauge"),
    ("aurae_auraed_open_fds", "gauge"),
    ("aurae_auraed_threads", "gauge"),
    ("aurae_auraed_uptime_seconds", "gauge"),
    ("aurae_node_memory_total_bytes", "gauge"),
    ("aurae_node_memory_available_bytes", "gauge"),
    ("aurae_workloads_oom_kills", "counter"),
    ("aurae_api_connections", "gauge"),
    ("aurae_api_connections_limit", "gauge"),
    ("aurae_rpc_calls", "counter"),
    ("aurae_rpc_duration_seconds", "histogram"),
    ("aurae_workloads", "gauge"),
    ("aurae_cell_cpu_seconds", "counter"),
    ("aurae_cell_memory_bytes", "gauge"),
    ("aurae_cell_memory_peak_bytes", "gauge"),
    ("aurae_cell_pids", "gauge"),
    ("aurae_cell_oom_kills", "counter"),
    ("aurae_log_held_bytes", "gauge"),
    ("aurae_log_budget_bytes", "gauge"),
    ("aurae_log_dropped_bytes", "counter"),
    ("aurae_image_store_used_bytes", "gauge"),
    ("aurae_image_store_limit_bytes", "gauge"),
    ("aurae_images", "gauge"),
    ("aurae_vm_vcpus", "gauge"),
    ("aurae_vm_guest_memory_bytes", "gauge"),
    ("aurae_vm_vmm_cpu_seconds", "counter"),
    ("aurae_vm_vmm_overhead_bytes", "gauge"),
];
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Seconds: a quick read takes well under a millisecond; Wait, Logs and Events last as
/// long as the workload they follow.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Calls since the node started, by method and code, and how long each took until its
/// status. A path no service serves is counted as method "other", so a client cannot grow
/// the node's memory by calling made-up methods.
pub struct Rpcs {
    calls: Family<Labels, Counter>,
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Rpcs {
    fn default() -> Rpcs {
        Rpcs {
            calls: Family::default(),
            seconds: Family::new_with_constructor(histogram),
        }
    }
}

impl Rpcs {
    fn done(&self, method: &'static str, code: tonic::Code, since: Instant) {
        self.calls
            .get_or_create(&vec![("method", method.to_owned()), ("code", code_name(code))])
            .inc();
        self.seconds
            .get_or_create(&vec![("method", method.to_owned())])
            .observe(since.elapsed().as_secs_f64());
    }
}

/// The method label of `path`: itself when the node serves it, else "other".
fn method_label(path: &str) -> &'static str {
    METHODS.iter().find(|(m, _)| *m == path).map_or("other", |(m, _)| m)
}

/// "PERMISSION_DENIED", as gRPC names its codes.
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn code_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

#[derive(Clone)]
pub struct MetricsLayer {
    pub ctx: Arc<NodeContext>,
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            ctx: self.ctx.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    ctx: Arc<NodeContext>,
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S> Service<Request<Body>> for Metrics<S>
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let since = Instant::now();
        if req.uri().path() == PATH {
            let ctx = self.ctx.clone();
            let refused = refused(&ctx, &req);
            return Box::pin(async move {
                let (answer, code) = match refused {
                    Some(r) => r,
                    // The text reads every cell's cgroup files (about 2 ms a cell under
                    // TCG): on a blocking thread, so a node of 1,000 cells serves on while
                    // it is scraped.
                    None => match tokio::task::spawn_blocking({
                        let ctx = ctx.clone();
                        move || render(&ctx)
                    })
                    .await
                    {
                        Ok(text) => {
                            let mut r = Response::new(Body::new(text));
                            r.headers_mut()
                                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
                            (r, tonic::Code::Ok)
                        }
                        Err(e) => (
                            plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{PATH}: {e}\n")),
                            tonic::Code::Internal,
                        ),
                    },
                };
                ctx.rpcs.done(method_label(PATH), code, since);
                Ok(answer)
            });
        }
        if req.version() != Version::HTTP_2 {
            let answer = plain(
                StatusCode::NOT_FOUND,
                format!(
                    "{} {}: over HTTP/1 this port serves only GET {PATH}; the API is gRPC over HTTP/2\n",
                    req.method(),
                    req.uri().path()
                ),
            );
            return Box::pin(async move { Ok(answer) });
        }
        let method = method_label(req.uri().path());
        let rpcs = self.ctx.rpcs.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let answer = call.await?;
            // A status in the headers: the call ended there (an error, mostly). Else it
            // comes in the trailers, at the body's end.
            if let Some(code) = code_in(answer.headers()) {
                rpcs.done(method, code, since);
                return Ok(answer);
            }
            let (parts, body) = answer.into_parts();
            let told = Told {
                inner: body,
                pending: Some((rpcs, method, since)),
            };
            Ok(Response::from_parts(parts, Body::new(told)))
        })
    }
}

/// A call's body that counts the call when its trailers pass (or, if the client goes
/// first, as CANCELLED when dropped).
struct Told {
    inner: Body,
    pending: Option<(Arc<Rpcs>, &'static str, Instant)>,
}

impl Told {
    fn finish(&mut self, code: tonic::Code) {
        if let Some((rpcs, method, since)) = self.pending.take() {
            rpcs.done(method, code, since);
        }
    }
}

impl http_body::Body for Told {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(code) = f.trailers_ref().map(|t| code_in(t).unwrap_or(tonic::Code::Unknown)) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(s))) => self.finish(s.code()),
            Poll::Ready(None) => self.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Told {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Body::new(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why a `/metrics` request is refused, if it is: the reader role, checked as the API
/// checks it (a forwarded caller only from the node's parent), and GET only.
fn refused(ctx: &NodeContext, req: &Request<Body>) -> Option<(Response<Body>, tonic::Code)> {
    let decided = authz::peer_id(&ctx.auth, req).and_then(|peer| {
        ctx.auth
            .decide(PATH, peer.as_deref(), req.headers().get(authz::CALLER_HEADER))
    });
    match decided {
        Err(s) => {
            tracing::info!("denied {PATH}: {}", s.message());
            Some((plain(StatusCode::FORBIDDEN, format!("{}\n", s.message())), s.code()))
        }
        Ok(_) if req.method() != http::Method::GET => {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {PATH}: only GET is served\n", req.method()),
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
            Some((r, tonic::Code::InvalidArgument))
        }
        Ok(_) => None,
    }
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    r.register(name, help, g);
}

fn gauges(r: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    r.register(name, help, f);
}

/// Counters the kernel keeps (CPU time, OOM kills): shown as they are now.
fn counters(r: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
    let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    r.register(name, help, f);
}

fn phase_name(p: impl std::fmt::Debug) -> String {
    format!("{p:?}").to_lowercase()
}

/// A VM of the node's: what runs it (a VM, an instance, a pod), its name, its view.
type VmRow = (&'static str, String, crate::runtime::vm::VmView);

/// The scrape's text: every metric the docs list (docs/metrics.md).
pub fn render(ctx: &NodeContext) -> String {
    let mut r = Registry::with_prefix("aurae");
    let rt = &ctx.runtime;

    gauge(
        &mut r,
        "auraed_resident_memory_bytes",
        "auraed's resident set size (VmRSS)",
        crate::node::rss_bytes(),
    );
    gauge(
        &mut r,
        "auraed_open_fds",
        "File descriptors auraed holds open",
        crate::node::open_fds(),
    );
    gauge(&mut r, "auraed_threads", "auraed's threads", crate::node::threads());
    gauge(
        &mut r,
        "auraed_uptime_seconds",
        "Seconds since the kernel started",
        crate::logging::boot_clock().as_secs(),
    );
    gauge(
        &mut r,
        "node_memory_total_bytes",
        "The node's RAM (MemTotal)",
        crate::node::mem_total_bytes(),
    );
    gauge(
        &mut r,
        "node_memory_available_bytes",
        "What the node could give a new workload now (MemAvailable)",
        crate::node::mem_available_bytes(),
    );
    let limit = super::listen::CONNECTIONS;
    let open = limit.saturating_sub(ctx.slots.available_permits());
    gauge(
        &mut r,
        "api_connections",
        "Established API connections (TLS done)",
        open as u64,
    );
    gauge(
        &mut r,
        "api_connections_limit",
        "API connections the node accepts at once",
        limit as u64,
    );
    r.register(
        "rpc_calls",
        "Calls answered, by method and gRPC status code",
        ctx.rpcs.calls.clone(),
    );
    r.register(
        "rpc_duration_seconds",
        "Time from a call's arrival to its status (a stream's whole life), by method",
        ctx.rpcs.seconds.clone(),
    );

    let views = rt.list(None);
    let mut by_phase: std::collections::BTreeMap<(&'static str, String), u64> = Default::default();
    let mut vms: Vec<VmRow> = Vec::new();
    let mut cells = Vec::new();
    for v in &views {
        let (kind, phase) = match v {
            View::Executable(e) => ("executable", e.phase.map(phase_name)),
            View::Cell(c) => {
                cells.push((c.name.clone(), c.usage));
                ("cell", Some(phase_name(c.phase)))
            }
            View::VirtualMachine(m) => {
                vms.push(("vm", m.name.clone(), m.clone()));
                ("vm", m.phase.map(phase_name))
            }
            View::Instance(i) => {
                if let Some(m) = &i.vm {
                    vms.push(("instance", i.name.clone(), m.clone()));
                }
                ("instance", i.phase.map(phase_name))
            }
            View::Pod(p) => {
                if let Some(m) = p.instance.as_ref().and_then(|i| i.vm.as_ref()) {
                    vms.push(("pod", p.name.clone(), m.clone()));
                }
                ("pod", Some(phase_name(p.phase)))
            }
        };
        *by_phase
            .entry((kind, phase.unwrap_or_else(|| "starting".into())))
            .or_default() += 1;
    }
    gauges(
        &mut r,
        "workloads",
        "Workloads in the table, by kind and phase",
        by_phase
            .into_iter()
            .map(|((kind, phase), n)| (vec![("kind", kind.to_owned()), ("phase", phase)], n)),
    );
    let cell = |n: &String| vec![("cell", n.clone())];
    counters(
        &mut r,
        "cell_cpu_seconds",
        "CPU time of each cell's processes (cpu.stat usage_usec)",
        cells.iter().map(|(n, u)| (cell(n), u.cpu_usage_micros as f64 / 1e6)),
    );
    gauges(
        &mut r,
        "cell_memory_bytes",
        "Memory each cell uses now (memory.current)",
        cells.iter().map(|(n, u)| (cell(n), u.memory_current_bytes)),
    );
    gauges(
        &mut r,
        "cell_memory_peak_bytes",
        "The most memory each cell has used (memory.peak)",
        cells.iter().map(|(n, u)| (cell(n), u.memory_peak_bytes)),
    );
    gauges(
        &mut r,
        "cell_pids",
        "Tasks in each cell (pids.current)",
        cells.iter().map(|(n, u)| (cell(n), u.pids_current)),
    );
    counters(
        &mut r,
        "cell_oom_kills",
        "Processes the kernel's OOM killer ended in each cell (memory.events oom_kill)",
        cells.iter().map(|(n, u)| (cell(n), u.memory_oom_kill_events as f64)),
    );

    let usage = rt.usage();
    let ooms: Counter = Counter::default();
    ooms.inc_by(usage.workloads.memory_oom_kill_events);
    r.register(
        "workloads_oom_kills",
        "Workload processes the OOM killer ended since boot, in any cell",
        ooms,
    );
    gauge(
        &mut r,
        "log_held_bytes",
        "Bytes all workload logs hold now",
        usage.log_held as u64,
    );
    gauge(
        &mut r,
        "log_budget_bytes",
        "The node-wide ceiling on log bytes",
        usage.log_budget as u64,
    );
    let dropped: Counter = Counter::default();
    dropped.inc_by(usage.log_dropped);
    r.register(
        "log_dropped_bytes",
        "Log bytes lost: evicted for newer lines, or with no room at all",
        dropped,
    );

    let (used, limit, images) = match &ctx.images {
        Ok(c) => {
            let (_, used, limit) = c.store_usage();
            (used, limit, c.list().len() as u64)
        }
        Err(_) => (0, 0, 0),
    };
    gauge(&mut r, "image_store_used_bytes", "Bytes the image store holds", used);
    gauge(&mut r, "image_store_limit_bytes", "The image store's ceiling", limit);
    gauge(&mut r, "images", "Images in the store", images);

    let vm = |(kind, name, _): &VmRow| vec![("kind", (*kind).to_owned()), ("vm", name.clone())];
    gauges(
        &mut r,
        "vm_vcpus",
        "vCPUs of each VM (VMs, Spawn VMs, pod VMs)",
        vms.iter().map(|row| (vm(row), u64::from(row.2.vcpus))),
    );
    gauges(
        &mut r,
        "vm_guest_memory_bytes",
        "Guest RAM each VM was given",
        vms.iter().map(|row| (vm(row), row.2.memory_bytes)),
    );
    counters(
        &mut r,
        "vm_vmm_cpu_seconds",
        "CPU time of each VM's VMM cell: its vCPUs and devices",
        vms.iter().map(|row| (vm(row), row.2.cpu_usage_micros as f64 / 1e6)),
    );
    gauges(
        &mut r,
        "vm_vmm_overhead_bytes",
        "Each running VMM's own resident memory: all of it but the guest's RAM",
        vms.iter().filter_map(|row| {
            let running = row.2.phase.is_some_and(|p| !p.ended()) && row.2.pid != 0;
            running
                .then(|| crate::vmm::overhead_of(row.2.pid, row.2.memory_bytes))
                .flatten()
                .map(|b| (vm(row), b))
        }),
    );

    let mut text = String::new();
    if let Err(e) = encode(&mut text, &r) {
        tracing::warn!("{PATH}: encoding failed: {e}");
    }
    text
}

#[cfg(test)]
mod tests;
