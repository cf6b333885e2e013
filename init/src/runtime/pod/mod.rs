//! The pod workload: an instance of its own (spawned, not listed among instances) with one
//! image cell per container in it, the pod's ports published on this node, and a
//! supervisor per container that waits for each run of its entrypoint to end and starts
//! the next as the restart policy says (Kubernetes' back-off, `supervise.rs`). What a pod
//! is and the rules it follows are in `spec.rs`, a manifest a user writes is read in
//! `manifest.rs`; the calls to the instance go through the `ChildLink` seam to
//! `crate::runtime::spawn::child`. A pod is made in `make.rs`; when its instance ends on
//! its own, `replace.rs` gives it a new one as its restart policy says.
//!
//! A pod made as a **sandbox** (the CRI's) starts with no containers: they are made,
//! started, stopped and removed one at a time (`containers.rs`), none is restarted by
//! auraed (kubelet does that, as a new container), and the pod lasts until it is stopped.

pub(crate) mod container;
mod containers;
mod images;
mod make;
pub mod manifest;
mod replace;
pub(crate) mod spec;
mod supervise;

pub(crate) use containers::{
    container_usage, create_container, dialer, exec_in_container, remove_container, running_container, start_container,
    stop_container,
};

pub use images::PodImage;
pub(crate) use images::{prepare_container_image, prepare_images};
use make::{give_image, make_cell};

use crate::image::load::Offer;
use crate::net::proxy;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use crate::runtime::names::ExecName;
use crate::runtime::spawn::instance::{Instance, InstanceView, IsolationKind};
use spec::{ContainerSpec, ContainerState, PodPhase, PodSpec, RestartPolicy, Termination};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a call to the instance may take when nobody's deadline says otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped pod's instance gets to power off once its containers have ended.
const INSTANCE_GRACE: Duration = Duration::from_secs(2);

/// One container of a pod: what it is, its image, and where its runs are.
struct Slot {
    spec: ContainerSpec,
    /// The image it runs, kept to give a new instance.
    image: Arc<PodImage>,
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
    /// How many times it was given a new instance, and how the last one it lost ended.
    replaced: u32,
    instance_end: String,
}

impl Slot {
    /// A container about to be made in the instance, from `image`.
    fn new(spec: ContainerSpec, image: Arc<PodImage>) -> Slot {
        Slot {
            spec,
            image,
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
    /// Set once made; replaced (`replace.rs`) when it ends on its own and the restart
    /// policy says so; none while a new one is being made.
    instance: Mutex<Option<Arc<Instance>>>,
    /// Held while a new instance is made: a stop waits for it, then finds it.
    swap: tokio::sync::Mutex<()>,
    state: Mutex<PodState>,
    changed: watch::Sender<()>,
    ports: Mutex<Vec<proxy::Published>>,
    /// Where its published ports lead: its instance's address, none between instances.
    target: proxy::Target,
    /// Its instance's (vCPUs, memory bytes).
    size: (u8, u64),
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
    /// How many times it was given a new instance, and how the last one it lost ended.
    pub instance_restarts: u32,
    pub last_instance_end: String,
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

    pub fn instance(&self) -> Option<Arc<Instance>> {
        self.instance.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_instance(&self, i: Option<Arc<Instance>>) {
        let ip = i.as_ref().and_then(|i| match i.address.ip() {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        });
        *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = i;
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = ip;
    }

    /// Whether it is given a new instance when the present one ends: unless it is
    /// stopping or a sandbox (kubelet makes a new one), while a container is yet to end
    /// for good and the restart policy restarts (a lost run is a failed one).
    fn replaces(&self, s: &PodState) -> bool {
        !self.spec.sandbox
            && !self.stopping.load(Ordering::Relaxed)
            && self.spec.restart != RestartPolicy::Never
            && s.containers.iter().any(|c| c.state != ContainerState::Terminated)
    }

    /// Whether it has ended for good: its instance has and is not replaced, or every
    /// container has (a sandbox: once stopped).
    pub fn ended(&self) -> bool {
        let body_ended = self.instance().is_some_and(|i| i.body.ended());
        if self.spec.sandbox {
            return body_ended || self.stopping.load(Ordering::Relaxed);
        }
        let s = self.state();
        if body_ended {
            return !self.replaces(&s);
        }
        !s.making && !s.containers.is_empty() && s.containers.iter().all(|r| r.state == ContainerState::Terminated)
    }

    pub async fn wait(&self) {
        let mut rx = self.changed.subscribe();
        loop {
            // Its instance first: one that ends after this wakes the wait below; one
            // replaced is told by `changed`.
            let alive = self.instance().filter(|i| !i.body.ended());
            if self.ended() {
                return;
            }
            let body = async {
                match &alive {
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
                image: c.image.reference.clone(),
                image_digest: c.image.digest.clone(),
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
        } else if body_ended && !stopping && !self.replaces(&s) {
            let how = instance.as_ref().map(how_it_ended).unwrap_or_default();
            (PodPhase::Failed, format!("its instance ended: {how}"))
        } else if s.lost && !body_ended {
            (PodPhase::Unknown, s.reason.clone())
        } else if self.spec.sandbox {
            (PodPhase::Running, s.reason.clone())
        } else {
            let states: Vec<(ContainerState, Option<Termination>)> =
                containers.iter().map(|c| (c.state.clone(), c.last.clone())).collect();
            match spec::phase(&states) {
                PodPhase::Running if body_ended && !self.replaces(&s) => {
                    (PodPhase::Failed, "stopped before its containers ended".into())
                }
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
                .filter(|i| !self.spec.host_network && !i.body.ended())
                .map(|i| i.address.ip().to_string())
                .unwrap_or_default(),
            isolation: instance.as_ref().and_then(|i| i.isolation),
            ports,
            containers,
            instance,
            restart: self.spec.restart,
            created_unix_nanos: self.created_unix_nanos,
            networks: self.spec.networks.clone(),
            instance_restarts: s.replaced,
            last_instance_end: s.instance_end.clone(),
        }
    }
}

/// How an ended instance ended, in a few words: why it failed, or its VM's exit.
fn how_it_ended(i: &InstanceView) -> String {
    let how = match (i.error.as_str(), &i.vm) {
        ("", Some(v)) => v.exit_reason.clone(),
        ("", None) => "its auraed exited".into(),
        (e, _) => e.to_owned(),
    };
    how.trim().to_owned()
}

impl Pod {
    /// Graceful: each container's run gets `signal` and `grace`, then the instance powers off.
    pub(crate) async fn stop(&self, host: &Host, signal: i32, grace: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        self.changed.send_replace(());
        // A new instance being made is waited for: then it is found here, or was let go.
        let _swap = self.swap.lock().await;
        self.rest();
        let Some(i) = self.instance() else {
            self.ports.lock().unwrap_or_else(|x| x.into_inner()).clear();
            return;
        };
        if !i.body.ended() {
            let running: Vec<String> = (self.state().containers.iter())
                .filter(|c| matches!(c.state, ContainerState::Running { .. }))
                .map(|c| c.spec.name.to_string())
                .collect();
            let i = &i;
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
        self.rest();
        // A CRI sandbox's network is reclaimed at its stop (StopPodSandbox), not its free.
        if self.spec.sandbox {
            i.release_network(host);
        }
        self.changed.send_replace(());
    }

    /// A stopped pod's containers that wait (for a back-off, or a new instance) will not
    /// run again: they have ended (a sandbox's are the CRI's to say).
    fn rest(&self) {
        if !self.spec.sandbox {
            self.update(|s| {
                for c in s.containers.iter_mut() {
                    if matches!(c.state, ContainerState::Waiting { .. }) {
                        c.state = ContainerState::Terminated;
                    }
                }
            });
        }
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

/// Makes pod `spec` (`make.rs`) and, unless it is a sandbox, keeps it in an instance for
/// as long as its restart policy says (`replace.rs`).
pub(crate) async fn run(host: &Arc<Host>, spec: PodSpec, images: Vec<Arc<PodImage>>) -> Result<PodView> {
    let p = make::run(host, spec, images).await?;
    if !p.spec.sandbox {
        replace::keep(&p, host);
    }
    Ok(p.view())
}

/// The channel to a pod's instance (for its containers' logs), and a future that ends
/// when the instance does.
pub(crate) fn channel(host: &Host, name: &str) -> Result<crate::runtime::ChildChannel> {
    let p = host.table().get::<Pod>(name)?;
    match p.instance() {
        Some(i) if !i.body.ended() => Ok(Instance::child_channel(i)),
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
                .map(|c| {
                    (
                        format!("pod '{}'", p.name),
                        c.image.reference.clone(),
                        c.image.chains.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
