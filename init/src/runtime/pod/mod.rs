//! The pod workload: an instance of its own (spawned, not listed among instances) with one
//! image cell per container in it, the pod's ports published on this node, and a
//! supervisor per container that waits for each run of its entrypoint to end and starts
//! the next as the restart policy says (Kubernetes' back-off). What a pod is and the rules
//! it follows are in `spec.rs`, a manifest a user writes is read in `manifest.rs`; the calls to the instance go through the `ChildLink` seam to `crate::runtime::spawn::child`.

pub(crate) mod container;
mod images;
pub mod manifest;
pub(crate) mod spec;

pub(crate) use images::prepare_images;
pub use images::PodImage;

use crate::image::load::Offer;
use crate::net::proxy;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use crate::runtime::launcher::ChildLink;
use crate::runtime::names::ExecName;
use crate::runtime::spawn::instance;
use crate::runtime::spawn::instance::{Instance, InstanceSpec, InstanceView, IsolationKind};
use spec::{ContainerState, PodPhase, PodSpec, Termination};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long a call to the instance may take when nobody's deadline says otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped pod's instance gets to power off once its containers have ended.
const INSTANCE_GRACE: Duration = Duration::from_secs(2);

struct Run {
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
    runs: Vec<Run>,
}

pub struct Pod {
    pub name: ExecName,
    spec: PodSpec,
    /// Per container, the image it runs: (reference, manifest digest, chain IDs).
    images: Vec<(String, String, Vec<String>)>,
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

    /// Whether it has ended for good: its instance has, or every container has.
    pub fn ended(&self) -> bool {
        if self.instance().is_some_and(|i| i.body.ended()) {
            return true;
        }
        let s = self.state();
        !s.making && !s.runs.is_empty() && s.runs.iter().all(|r| r.state == ContainerState::Terminated)
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

    pub fn view(&self) -> PodView {
        let instance = self.instance().map(|i| i.view());
        let s = self.state();
        let containers: Vec<ContainerView> = self
            .spec
            .containers
            .iter()
            .zip(&self.images)
            .enumerate()
            .map(|(n, (c, (reference, digest, _)))| {
                let run = s.runs.get(n);
                ContainerView {
                    name: c.name.to_string(),
                    image: reference.clone(),
                    image_digest: digest.clone(),
                    state: run.map_or(
                        ContainerState::Waiting {
                            reason: "ContainerCreating".into(),
                            until_unix_nanos: 0,
                        },
                        |r| r.state.clone(),
                    ),
                    restarts: run.map_or(0, |r| r.restarts),
                    last: run.and_then(|r| r.last.clone()),
                }
            })
            .collect();
        let body_ended = self.instance().is_some_and(|i| i.body.ended());
        let (phase, reason) = if s.making {
            (PodPhase::Pending, s.reason.clone())
        } else if body_ended && !self.stopping.load(Ordering::Relaxed) {
            let how = instance
                .as_ref()
                .and_then(|i| i.vm.as_ref().map(|v| format!("{} {}", v.exit_reason, v.error)))
                .unwrap_or_else(|| "its auraed exited".into());
            (PodPhase::Failed, format!("its instance ended: {}", how.trim()))
        } else if s.lost && !body_ended {
            (PodPhase::Unknown, s.reason.clone())
        } else {
            let states: Vec<(ContainerState, Option<Termination>)> =
                containers.iter().map(|c| (c.state.clone(), c.last.clone())).collect();
            match spec::phase(&states) {
                PodPhase::Running if body_ended => (PodPhase::Failed, "stopped before its containers ended".into()),
                p => (p, s.reason.clone()),
            }
        };
        let ports = self
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().map(|(h, p)| (c.name.to_string(), *h, *p)))
            .collect();
        PodView {
            name: self.name.to_string(),
            phase,
            reason,
            pod_ip: self.instance().map(|i| i.address.ip().to_string()).unwrap_or_default(),
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
            let running: Vec<String> = {
                let s = self.state();
                self.spec
                    .containers
                    .iter()
                    .zip(&s.runs)
                    .filter(|(_, r)| matches!(r.state, ContainerState::Running { .. }))
                    .map(|(c, _)| c.name.to_string())
                    .collect()
            };
            let stops = running.iter().map(|c| async move {
                if let Err(e) = host.children.pod_calls().stop_run(&i.channel, c, signal, grace).await {
                    tracing::warn!("pod {}: stop container {c}: {}", self.name, e.message());
                }
            });
            crate::runtime::futures_join_all(stops).await;
            // The supervisors see the runs end and record how.
            let settle = tokio::time::Instant::now() + Duration::from_secs(5);
            super::poll_until(settle, || {
                self.state()
                    .runs
                    .iter()
                    .all(|r| !matches!(r.state, ContainerState::Running { .. }))
            })
            .await;
        }
        self.ports.lock().unwrap_or_else(|x| x.into_inner()).clear();
        i.stop(host, INSTANCE_GRACE).await;
        self.changed.send_replace(());
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
            i.release(host).await;
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
pub(crate) async fn run(host: &Host, spec: PodSpec, images: Vec<Arc<PodImage>>) -> Result<PodView> {
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
    let deadline = tokio::time::Instant::now() + spec.ready_within;
    let (tx, _) = watch::channel(());
    let p = Arc::new(Pod {
        name: spec.name.clone(),
        images: images
            .iter()
            .map(|i| (i.reference.clone(), i.digest.clone(), i.chains.clone()))
            .collect(),
        spec,
        instance: OnceLock::new(),
        state: Mutex::new(PodState {
            making: true,
            reason: "ContainerCreating".into(),
            lost: false,
            runs: Vec::new(),
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
            let ch = p.instance().map(|i| i.channel.clone());
            if let Some(ch) = ch {
                for n in 0..p.spec.containers.len() {
                    tokio::spawn(supervise(p.clone(), n, ch.clone(), host.children.clone()));
                }
            }
            tracing::info!("pod {} running", p.name);
            Ok(p.view())
        }
        Err(e) => {
            tracing::info!("pod {}: {e}; removing what was made", p.name);
            p.stopping.store(true, Ordering::Relaxed);
            p.ports.lock().unwrap_or_else(|x| x.into_inner()).clear();
            if let Some(i) = p.instance() {
                i.kill().await;
                i.release(host).await;
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
    };
    let i = instance::boot(host, &ispec).await?;
    let _ = p.instance.set(i.clone());
    let calls = host.children.pod_calls();
    let ch = i.channel.clone();
    // Each image once, each blob once.
    let mut given: Vec<&str> = Vec::new();
    let mut blobs: std::collections::HashSet<String> = Default::default();
    for img in &images {
        if given.contains(&img.reference.as_str()) {
            continue;
        }
        given.push(&img.reference);
        let mut offer = img.offer.clone();
        for l in &mut offer.layers {
            l.sent = blobs.insert(l.digest.to_string());
        }
        let began = std::time::Instant::now();
        calls
            .load_image(&ch, &offer, &img.paths, left().min(CALL_TIMEOUT * 5))
            .await
            .map_err(|s| refused(&format!("giving image {} to the pod's instance", img.reference), s))?;
        tracing::info!(
            "pod {}: image {} given to its instance in {} ms",
            p.name,
            img.reference,
            began.elapsed().as_millis()
        );
    }
    let mut runs = Vec::with_capacity(p.spec.containers.len());
    for (n, c) in p.spec.containers.iter().enumerate() {
        let cell = container::container_cell(&p.spec, c);
        let status = calls
            .run_cell(&ch, cell, left())
            .await
            .map_err(|s| refused(&format!("containers[{n}] ({})", c.name), s))?;
        let argv = status.image.map(|i| i.entrypoint).unwrap_or_default();
        if argv.is_empty() {
            return Err(RuntimeError::invalid(
                format!("containers[{n}].command"),
                format!("image '{}' names no entrypoint or cmd; give command or args", c.image),
            ));
        }
        let run = calls
            .start_run(&ch, c.name.as_str(), argv.clone(), left())
            .await
            .map_err(|s| refused(&format!("containers[{n}] ({})", c.name), s))?;
        runs.push(Run {
            state: ContainerState::Running {
                since_unix_nanos: run.started_at_unix_nanos,
            },
            restarts: 0,
            last: None,
            argv,
        });
    }
    p.update(|s| s.runs = runs);
    let ip = match i.address.ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => return Err(RuntimeError::Network("the pod's instance has no IPv4 address".into())),
    };
    let mut ports = p.ports.lock().unwrap_or_else(|x| x.into_inner());
    for (container, b) in bound {
        let published = proxy::publish(b, proxy::Dialer::Address(ip), format!("pod {}/{container}", p.name))
            .map_err(|e| RuntimeError::Network(format!("pod '{}': publish a port: {e}", p.name)))?;
        ports.push(published);
    }
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
            p.images
                .iter()
                .map(|(r, _, c)| (format!("pod '{}'", p.name), r.clone(), c.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs container `n` of `p` for as long as its restart policy says: waits for each run
/// to end, records how, and starts the next after the back-off.
async fn supervise(p: Arc<Pod>, n: usize, ch: tonic::transport::Channel, children: Arc<dyn ChildLink>) {
    let calls = children.pod_calls();
    let Some(container) = p.spec.containers.get(n).map(|c| c.name.to_string()) else {
        return;
    };
    let Some(instance) = p.instance().cloned() else { return };
    let mut stop = p.changed.subscribe();
    loop {
        let ended = tokio::select! {
            r = calls.wait_run(&ch, &container) => r,
            _ = instance.body.wait() => return,
        };
        let st = match ended {
            Ok(st) => st,
            Err(e) => {
                if p.stopping.load(Ordering::Relaxed) || instance.body.ended() {
                    return;
                }
                p.update(|s| {
                    s.lost = true;
                    s.reason = format!("its instance does not answer: {}", e.message());
                });
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let t = Termination {
            exit_code: st.exit_code,
            signal: st.signal,
            oom_killed: st.oom_killed,
            started_unix_nanos: st.started_at_unix_nanos,
            finished_unix_nanos: st.ended_at_unix_nanos,
        };
        let ran = Duration::from_nanos(u64::try_from(t.finished_unix_nanos - t.started_unix_nanos).unwrap_or(0));
        let restart = !p.stopping.load(Ordering::Relaxed) && p.spec.restart.restarts(&t);
        let mut restarts: u32 = 0;
        let mut argv = Vec::new();
        p.update(|s| {
            s.lost = false;
            if let Some(r) = s.runs.get_mut(n) {
                r.last = Some(t.clone());
                r.state = ContainerState::Terminated;
                restarts = r.restarts;
                argv = r.argv.clone();
            }
        });
        tracing::info!(
            "pod {}: container {container} ended ({}, code {:?}, signal {:?}){}",
            p.name,
            t.reason(),
            t.exit_code,
            t.signal,
            if restart { "; restarting after its back-off" } else { "" }
        );
        if !restart {
            return;
        }
        // Back-off, then the next run; a run that cannot start counts as one that failed.
        loop {
            let wait = spec::backoff(restarts, ran);
            let until = super::logs::now_unix_nanos() + i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX);
            p.update(|s| {
                if let Some(r) = s.runs.get_mut(n) {
                    r.state = ContainerState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        until_unix_nanos: until,
                    };
                }
            });
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    r = stop.changed() => if r.is_err() { return },
                    _ = instance.body.wait() => return,
                }
                if p.stopping.load(Ordering::Relaxed) {
                    p.update(|s| {
                        if let Some(r) = s.runs.get_mut(n) {
                            r.state = ContainerState::Terminated;
                        }
                    });
                    return;
                }
            }
            restarts += 1;
            let _ = calls.free_run(&ch, &container, CALL_TIMEOUT).await;
            match calls.start_run(&ch, &container, argv.clone(), CALL_TIMEOUT).await {
                Ok(run) => {
                    p.update(|s| {
                        if let Some(r) = s.runs.get_mut(n) {
                            r.restarts = restarts;
                            r.state = ContainerState::Running {
                                since_unix_nanos: run.started_at_unix_nanos,
                            };
                        }
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!("pod {}: restart container {container}: {}", p.name, e.message());
                    p.update(|s| {
                        if let Some(r) = s.runs.get_mut(n) {
                            r.restarts = restarts;
                        }
                    });
                }
            }
        }
    }
}
