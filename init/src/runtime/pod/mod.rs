//! The pod workload: an instance of its own (spawned, not listed among instances) with one
//! image cell per container in it, the pod's ports published on this node, and a
//! supervisor per container that waits for each run of its entrypoint to end and starts
//! the next as the restart policy says (Kubernetes' back-off, `supervise.rs`). What a pod
//! is and the rules it follows are in `spec.rs`, a manifest a user writes is read in
//! `manifest.rs`; the calls to the instance go through the `ChildLink` seam to
//! `crate::runtime::spawn::child`.
//!
//! A pod made as a **sandbox** (the CRI's) starts with no containers: they are made,
//! started, stopped and removed one at a time (`containers.rs`), none is restarted by
//! auraed (kubelet does that, as a new container), and the pod lasts until it is stopped.

pub(crate) mod container;
mod containers;
mod images;
pub mod manifest;
pub(crate) mod spec;
mod supervise;

pub(crate) use containers::{
    container_usage, create_container, dialer, exec_in_container, remove_container, running_container, start_container,
    stop_container,
};

pub use images::PodImage;
pub(crate) use images::{prepare_container_image, prepare_images};

use crate::image::load::Offer;
use crate::net::proxy;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use crate::runtime::names::ExecName;
use crate::runtime::spawn::instance;
use crate::runtime::spawn::instance::{Instance, InstanceSpec, InstanceView, IsolationKind};
use spec::{ContainerSpec, ContainerState, PodPhase, PodSpec, Termination};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long a call to the instance may take when nobody's deadline says otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped pod's instance gets to power off once its containers have ended.
const INSTANCE_GRACE: Duration = Duration::from_secs(2);

/// One container of a pod: what it is, its image, and where its runs are.
struct Slot {
    spec: ContainerSpec,
    /// The image it runs: (reference, manifest digest, chain IDs).
    image: (String, String, Vec<String>),
    state: ContainerState,
    restarts: u32,
    last: Option<Termination>,
    /// What each run executes: the image's entrypoint with the container's changes.
    argv: Vec<String>,
}

struct PodState {
    making: bool,
    /// Why the making failed, or why contact with the instance was lost.
    reason: String,
    lost: bool,
    /// In the order they were asked for.
    containers: Vec<Slot>,
    /// Images the instance has been given (references), and the blobs sent with them.
    given: Vec<String>,
    blobs: std::collections::HashSet<String>,
}

impl Slot {
    /// A container about to be made in the instance, from `image`.
    fn new(spec: ContainerSpec, image: &PodImage) -> Slot {
        Slot {
            spec,
            image: (image.reference.clone(), image.digest.clone(), image.chains.clone()),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                until_unix_nanos: 0,
            },
            restarts: 0,
            last: None,
            argv: Vec::new(),
        }
    }
}

impl PodState {
    fn slot(&mut self, name: &str) -> Option<&mut Slot> {
        self.containers.iter_mut().find(|c| c.spec.name.as_str() == name)
    }
}

pub struct Pod {
    pub name: ExecName,
    /// The pod as asked for; its containers are in `state` (a sandbox's come and go).
    spec: PodSpec,
    instance: OnceLock<Arc<Instance>>,
    state: Mutex<PodState>,
    changed: watch::Sender<()>,
    ports: Mutex<Vec<proxy::Published>>,
    stopping: AtomicBool,
    created_unix_nanos: i64,
}

#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub state: ContainerState,
    pub restarts: u32,
    pub last: Option<Termination>,
}

#[derive(Debug, Clone)]
pub struct PodView {
    pub name: String,
    pub phase: PodPhase,
    pub reason: String,
    pub pod_ip: String,
    pub isolation: Option<IsolationKind>,
    /// (container, node port, container port).
    pub ports: Vec<(String, u16, u16)>,
    pub containers: Vec<ContainerView>,
    pub instance: Option<InstanceView>,
    pub restart: spec::RestartPolicy,
    pub created_unix_nanos: i64,
    /// Its extra interfaces: eth1, ... in order.
    pub networks: Vec<super::NetAttachment>,
}

fn refused(what: &str, s: tonic::Status) -> RuntimeError {
    RuntimeError::Spawn(crate::runtime::spawn::SpawnError::Refused(tonic::Status::new(
        s.code(),
        format!("{what}: {}", s.message()),
    )))
}

impl Pod {
    fn state(&self) -> std::sync::MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut PodState)) {
        f(&mut self.state());
        self.changed.send_replace(());
    }

    pub fn instance(&self) -> Option<&Arc<Instance>> {
        self.instance.get()
    }

    /// Whether it has ended for good: its instance has, or every container has (a
    /// sandbox: once stopped).
    pub fn ended(&self) -> bool {
        if self.instance().is_some_and(|i| i.body.ended()) {
            return true;
        }
        if self.spec.sandbox {
            return self.stopping.load(Ordering::Relaxed);
        }
        let s = self.state();
        !s.making && !s.containers.is_empty() && s.containers.iter().all(|r| r.state == ContainerState::Terminated)
    }

    pub async fn wait(&self) {
        let mut rx = self.changed.subscribe();
        loop {
            if self.ended() {
                return;
            }
            let body = async {
                match self.instance() {
                    Some(i) => i.body.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = body => {}
            }
        }
    }

    /// How it ended (once `wait` has returned).
    pub fn end(&self) -> crate::runtime::events::What {
        spec::end(&self.view(), self.stopping.load(Ordering::Relaxed))
    }

    pub fn view(&self) -> PodView {
        let instance = self.instance().map(|i| i.view());
        let s = self.state();
        let containers: Vec<ContainerView> = (s.containers.iter())
            .map(|c| ContainerView {
                name: c.spec.name.to_string(),
                image: c.image.0.clone(),
                image_digest: c.image.1.clone(),
                state: c.state.clone(),
                restarts: c.restarts,
                last: c.last.clone(),
            })
            .collect();
        let body_ended = self.instance().is_some_and(|i| i.body.ended());
        let stopping = self.stopping.load(Ordering::Relaxed);
        let (phase, reason) = if s.making {
            (PodPhase::Pending, s.reason.clone())
        } else if self.spec.sandbox && stopping {
            (PodPhase::Succeeded, "stopped".into())
        } else if body_ended && !stopping {
            let how = instance
                .as_ref()
                .and_then(|i| match (i.error.as_str(), &i.vm) {
                    ("", v) => v.as_ref().map(|v| v.exit_reason.clone()),
                    (e, _) => Some(e.to_owned()),
                })
                .unwrap_or_else(|| "its auraed exited".into());
            (PodPhase::Failed, format!("its instance ended: {}", how.trim()))
        } else if s.lost && !body_ended {
            (PodPhase::Unknown, s.reason.clone())
        } else if self.spec.sandbox {
            (PodPhase::Running, s.reason.clone())
        } else {
            let states: Vec<(ContainerState, Option<Termination>)> =
                containers.iter().map(|c| (c.state.clone(), c.last.clone())).collect();
            match spec::phase(&states) {
                PodPhase::Running if body_ended => (PodPhase::Failed, "stopped before its containers ended".into()),
                p => (p, s.reason.clone()),
            }
        };
        let ports = (self.spec.ports.iter().map(|(h, p)| (String::new(), *h, *p)))
            .chain(
                (s.containers.iter()).flat_map(|c| c.spec.ports.iter().map(|(h, p)| (c.spec.name.to_string(), *h, *p))),
            )
            .collect();
        PodView {
            name: self.name.to_string(),
            phase,
            reason,
            // A pod in the node's network has the node's addresses, none of its own (its
            // instance's loopback API address is not one to reach it at).
            pod_ip: (self.instance())
                .filter(|_| !self.spec.host_network)
                .map(|i| i.address.ip().to_string())
                .unwrap_or_default(),
            isolation: instance.as_ref().and_then(|i| i.isolation),
            ports,
            containers,
            instance,
            restart: self.spec.restart,
            created_unix_nanos: self.created_unix_nanos,
            networks: self.spec.networks.clone(),
        }
    }
}

impl Pod {
    /// Graceful: each container's run gets `signal` and `grace`, then the instance powers off.
    pub(crate) async fn stop(&self, host: &Host, signal: i32, grace: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        self.changed.send_replace(());
        let Some(i) = self.instance() else { return };
        if !i.body.ended() {
            let running: Vec<String> = (self.state().containers.iter())
                .filter(|c| matches!(c.state, ContainerState::Running { .. }))
                .map(|c| c.spec.name.to_string())
                .collect();
            let stops = running.iter().map(|c| async move {
                if let Err(e) = host.children.pod_calls().stop_run(&i.channel, c, signal, grace).await {
                    tracing::warn!("pod {}: stop container {c}: {}", self.name, e.message());
                }
            });
            crate::runtime::futures_join_all(stops).await;
            self.settled(None).await;
        }
        self.ports.lock().unwrap_or_else(|x| x.into_inner()).clear();
        i.stop(host, INSTANCE_GRACE).await;
        // A CRI sandbox's network is reclaimed at its stop (StopPodSandbox), not its free.
        if self.spec.sandbox {
            i.release_network(host);
        }
        self.changed.send_replace(());
    }

    /// Waits (at most 5 s) until the supervisors have recorded the end of the runs just
    /// stopped: of container `only`, or of every container.
    async fn settled(&self, only: Option<&str>) {
        let settle = tokio::time::Instant::now() + Duration::from_secs(5);
        super::poll_until(settle, || {
            (self.state().containers.iter())
                .filter(|c| only.is_none_or(|n| c.spec.name.as_str() == n))
                .all(|c| !matches!(c.state, ContainerState::Running { .. }))
        })
        .await;
    }

    pub(super) async fn free(self: &Arc<Self>, host: &Host) -> Result<()> {
        if !self.ended() {
            return Err(RuntimeError::WrongPhase(format!(
                "pod '{}' is running; stop it first (aer pod stop {})",
                self.name, self.name
            )));
        }
        if let Some(i) = self.instance() {
            if !i.body.ended() {
                i.stop(host, INSTANCE_GRACE).await;
            }
            // A failure keeps the pod listed: what its instance left is found, and freed
            // by another try.
            i.release(host).await?;
        }
        self.ports.lock().unwrap_or_else(|x| x.into_inner()).clear();
        host.table().remove::<Pod>(self.name.as_str());
        tracing::info!("pod {} freed", self.name);
        Ok(())
    }
}

/// Makes pod `spec`: binds its node ports, spawns its instance, gives it `images` (one
/// per container, in order), makes each container's cell there and starts its
/// entrypoint, then publishes the ports. Returns once every container runs; on any
/// failure nothing is left (instance, cells, ports, name).
pub(crate) async fn run(host: &Host, mut spec: PodSpec, images: Vec<Arc<PodImage>>) -> Result<PodView> {
    host.usable()?;
    let (vcpus, memory) = spec::size(&spec);
    let field = if spec.memory_bytes.is_some() {
        "resources.memory_bytes"
    } else {
        "containers[].resources.limits.memory_bytes"
    };
    if !(spec::MEMORY_MIN..=spec::MEMORY_MAX).contains(&memory) {
        return Err(RuntimeError::invalid(
            field,
            format!(
                "the pod's instance would have {} MiB; it must have 64..=3072 MiB",
                memory / spec::MIB
            ),
        ));
    }
    let avail = crate::node::mem_available_bytes();
    if avail > 0 && memory > avail {
        return Err(RuntimeError::Exhausted(format!(
            "{field}: the pod's instance needs {} MiB and this node has {} MiB available; ask for less or free workloads",
            memory / spec::MIB,
            avail / spec::MIB
        )));
    }
    if vcpus > 32 {
        return Err(RuntimeError::NotYet(format!(
            "resources.vcpus: the pod asks for {vcpus} vCPUs and an instance has at most 32"
        )));
    }
    host.table().vacant::<Pod>(spec.name.as_str())?;
    host.table().vacant::<Instance>(spec.name.as_str())?;
    // The node's ports first: one taken is refused before anything is made.
    let mut bound = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, (node_port, inside)) in c.ports.iter().enumerate() {
            let field = format!("containers[{i}].ports[{j}].host_port");
            let b = proxy::bind(*node_port, *inside).map_err(|e| super::cell::port_error(&field, *node_port, e))?;
            bound.push((c.name.to_string(), b));
        }
    }
    for (j, (node_port, inside)) in spec.ports.iter().enumerate() {
        let field = format!("config.port_mappings[{j}].host_port");
        let b = proxy::bind(*node_port, *inside).map_err(|e| super::cell::port_error(&field, *node_port, e))?;
        bound.push((String::new(), b));
    }
    let deadline = tokio::time::Instant::now() + spec.ready_within;
    let (tx, _) = watch::channel(());
    let containers = std::mem::take(&mut spec.containers)
        .into_iter()
        .zip(&images)
        .map(|(c, i)| Slot::new(c, i))
        .collect();
    let p = Arc::new(Pod {
        name: spec.name.clone(),
        spec,
        instance: OnceLock::new(),
        state: Mutex::new(PodState {
            making: true,
            reason: "ContainerCreating".into(),
            lost: false,
            containers,
            given: Vec::new(),
            blobs: Default::default(),
        }),
        changed: tx,
        ports: Mutex::new(Vec::new()),
        stopping: AtomicBool::new(false),
        created_unix_nanos: super::logs::now_unix_nanos(),
    });
    host.table().insert(p.clone())?;
    match make(host, &p, vcpus, memory, images, bound, deadline).await {
        Ok(()) => {
            p.update(|s| {
                s.making = false;
                s.reason.clear();
            });
            let names: Vec<String> = (p.state().containers.iter()).map(|c| c.spec.name.to_string()).collect();
            for name in names {
                supervise::watch(&p, name, host);
            }
            tracing::info!("pod {} running", p.name);
            host.table().follow(&p);
            Ok(p.view())
        }
        Err(e) => {
            tracing::info!("pod {}: {e}; removing what was made", p.name);
            p.stopping.store(true, Ordering::Relaxed);
            p.ports.lock().unwrap_or_else(|x| x.into_inner()).clear();
            if let Some(i) = p.instance() {
                i.kill().await;
                if let Err(e) = i.release(host).await {
                    tracing::warn!("pod {}: its instance: {e}", p.name);
                }
            }
            host.table().remove::<Pod>(p.name.as_str());
            Err(e)
        }
    }
}

async fn make(
    host: &Host,
    p: &Arc<Pod>,
    vcpus: u8,
    memory: u64,
    images: Vec<Arc<PodImage>>,
    bound: Vec<(String, proxy::Bound)>,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let ispec = InstanceSpec {
        name: p.name.clone(),
        isolation: p.spec.isolation,
        vcpus,
        memory_bytes: memory,
        svid_ttl: Duration::from_secs(3600),
        serving_within: left(),
        attachments: p.spec.networks.clone(),
        hostname: p.spec.hostname.clone(),
        host_network: p.spec.host_network,
        pod_subnet: p.spec.sandbox,
        pod_dir: p.spec.pod_dir.clone(),
    };
    let i = instance::boot(host, &ispec).await?;
    let _ = p.instance.set(i.clone());
    let ch = i.channel.clone();
    for img in &images {
        give_image(host, p, &ch, img, left().min(CALL_TIMEOUT * 5)).await?;
    }
    let names: Vec<(String, String)> = (p.state().containers.iter())
        .map(|c| (c.spec.name.to_string(), c.spec.image.clone()))
        .collect();
    for (n, (name, image)) in names.iter().enumerate() {
        let field = format!("containers[{n}]");
        make_cell(host, p, &ch, name, image, &field, left()).await?;
        let (argv, io) = p
            .state()
            .slot(name)
            .map(|c| (c.argv.clone(), c.spec.io))
            .unwrap_or_default();
        let run = host
            .children
            .pod_calls()
            .start_run(&ch, name, argv, io, left())
            .await
            .map_err(|s| refused(&format!("{field} ({name})"), s))?;
        p.update(|s| {
            if let Some(c) = s.slot(name) {
                c.state = ContainerState::Running {
                    since_unix_nanos: run.started_at_unix_nanos,
                };
            }
        });
    }
    let ip = match i.address.ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => return Err(RuntimeError::Network("the pod's instance has no IPv4 address".into())),
    };
    let mut ports = p.ports.lock().unwrap_or_else(|x| x.into_inner());
    for (container, b) in bound {
        let who = match container.as_str() {
            "" => format!("pod {}", p.name),
            c => format!("pod {}/{c}", p.name),
        };
        let published = proxy::publish(b, proxy::Dialer::Address(ip), who)
            .map_err(|e| RuntimeError::Network(format!("pod '{}': publish a port: {e}", p.name)))?;
        ports.push(published);
    }
    Ok(())
}

/// Gives `img` to the pod's instance unless it has it: each image once, each blob once.
async fn give_image(
    host: &Host,
    p: &Pod,
    ch: &tonic::transport::Channel,
    img: &PodImage,
    timeout: Duration,
) -> Result<()> {
    let offer = {
        let s = p.state();
        if s.given.contains(&img.reference) {
            return Ok(());
        }
        let mut offer = img.offer.clone();
        for l in &mut offer.layers {
            l.sent = !s.blobs.contains(&l.digest.to_string());
        }
        offer
    };
    let began = std::time::Instant::now();
    host.children
        .pod_calls()
        .load_image(ch, &offer, &img.paths, timeout)
        .await
        .map_err(|s| refused(&format!("giving image {} to the pod's instance", img.reference), s))?;
    let mut s = p.state();
    s.given.push(img.reference.clone());
    s.blobs.extend(offer.layers.iter().map(|l| l.digest.to_string()));
    tracing::info!(
        "pod {}: image {} given to its instance in {} ms",
        p.name,
        img.reference,
        began.elapsed().as_millis()
    );
    Ok(())
}

/// Makes container `name`'s cell in the instance and keeps the argv its runs execute.
async fn make_cell(
    host: &Host,
    p: &Pod,
    ch: &tonic::transport::Channel,
    name: &str,
    image: &str,
    field: &str,
    timeout: Duration,
) -> Result<()> {
    let cell = {
        let s = p.state();
        let Some(c) = s.containers.iter().find(|c| c.spec.name.as_str() == name) else {
            return Err(RuntimeError::NotFound(format!(
                "pod '{}' has no container '{name}'",
                p.name
            )));
        };
        container::container_cell(&p.spec, &c.spec)
    };
    let status = host
        .children
        .pod_calls()
        .run_cell(ch, cell, timeout)
        .await
        .map_err(|s| refused(&format!("{field} ({name})"), s))?;
    let argv = status.image.map(|i| i.entrypoint).unwrap_or_default();
    if argv.is_empty() {
        return Err(RuntimeError::invalid(
            format!("{field}.command"),
            format!("image '{image}' names no entrypoint or cmd; give command or args"),
        ));
    }
    p.update(|s| {
        if let Some(c) = s.slot(name) {
            c.argv = argv;
        }
    });
    Ok(())
}

/// The channel to a pod's instance (for its containers' logs), and a future that ends
/// when the instance does.
pub(crate) fn channel(host: &Host, name: &str) -> Result<crate::runtime::ChildChannel> {
    let p = host.table().get::<Pod>(name)?;
    match p.instance() {
        Some(i) if !i.body.ended() => Ok(Instance::child_channel(i.clone())),
        _ => Err(RuntimeError::WrongPhase(format!(
            "pod '{name}' has no running instance; its containers' logs went with it"
        ))),
    }
}

/// Every pod's images: (who, reference, chain IDs), so they are not removed under it.
pub(super) fn images(host: &Host) -> Vec<(String, String, Vec<String>)> {
    host.table()
        .all::<Pod>()
        .flat_map(|p| {
            (p.state().containers.iter())
                .map(|c| (format!("pod '{}'", p.name), c.image.0.clone(), c.image.2.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}
