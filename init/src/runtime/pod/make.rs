//! Making a pod: its node ports bound, its instance booted, its images given, a cell per
//! container made there and each entrypoint started, then its ports published. The same
//! steps, less the ports (they stay bound and follow the pod's address), give a pod a new
//! instance (`replace.rs`).

use super::spec::{self, ContainerState, PodSpec};
use super::{container, refused, supervise, Pod, PodImage, PodState, Slot, CALL_TIMEOUT};
use crate::net::proxy;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use crate::runtime::spawn::instance;
use crate::runtime::spawn::instance::{Instance, InstanceSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Makes pod `spec`: binds its node ports, spawns its instance, gives it `images` (one
/// per container, in order), makes each container's cell there and starts its
/// entrypoint, then publishes the ports. Returns once every container runs; on any
/// failure nothing is left (instance, cells, ports, name).
pub(super) async fn run(host: &Host, mut spec: PodSpec, images: Vec<Arc<PodImage>>) -> Result<Arc<Pod>> {
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
            let b = proxy::bind(*node_port, *inside)
                .map_err(|e| crate::runtime::cell::port_error(&field, *node_port, e))?;
            bound.push((c.name.to_string(), b));
        }
    }
    for (j, (node_port, inside)) in spec.ports.iter().enumerate() {
        let field = format!("config.port_mappings[{j}].host_port");
        let b =
            proxy::bind(*node_port, *inside).map_err(|e| crate::runtime::cell::port_error(&field, *node_port, e))?;
        bound.push((String::new(), b));
    }
    let deadline = tokio::time::Instant::now() + spec.ready_within;
    let (tx, _) = watch::channel(());
    let containers = std::mem::take(&mut spec.containers)
        .into_iter()
        .zip(&images)
        .map(|(c, i)| Slot::new(c, i.clone()))
        .collect();
    let p = Arc::new(Pod {
        name: spec.name.clone(),
        spec,
        instance: Mutex::new(None),
        swap: tokio::sync::Mutex::new(()),
        state: Mutex::new(PodState {
            making: true,
            reason: "ContainerCreating".into(),
            lost: false,
            containers,
            given: Vec::new(),
            blobs: Default::default(),
            replaced: 0,
            instance_end: String::new(),
        }),
        changed: tx,
        ports: Mutex::new(Vec::new()),
        target: Default::default(),
        size: (vcpus, memory),
        stopping: AtomicBool::new(false),
        created_unix_nanos: crate::runtime::logs::now_unix_nanos(),
    });
    host.table().insert(p.clone())?;
    match make(host, &p, bound, deadline).await {
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
            Ok(p)
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
    bound: Vec<(String, proxy::Bound)>,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let i = boot(host, p, deadline).await?;
    p.set_instance(Some(i.clone()));
    let names: Vec<String> = (p.state().containers.iter()).map(|c| c.spec.name.to_string()).collect();
    fill(host, p, &i, &names, deadline).await?;
    if p.instance().is_some_and(|i| i.address.ip().is_ipv6()) {
        return Err(RuntimeError::Network("the pod's instance has no IPv4 address".into()));
    }
    let mut ports = p.ports.lock().unwrap_or_else(|x| x.into_inner());
    for (container, b) in bound {
        let who = match container.as_str() {
            "" => format!("pod {}", p.name),
            c => format!("pod {}/{c}", p.name),
        };
        let published = proxy::publish(b, proxy::Dialer::Follow(p.target.clone()), who)
            .map_err(|e| RuntimeError::Network(format!("pod '{}': publish a port: {e}", p.name)))?;
        ports.push(published);
    }
    Ok(())
}

/// Boots pod `p` an instance of its size, serving by `deadline`.
pub(super) async fn boot(host: &Host, p: &Pod, deadline: tokio::time::Instant) -> Result<Arc<Instance>> {
    let (vcpus, memory) = p.size;
    let ispec = InstanceSpec {
        name: p.name.clone(),
        isolation: p.spec.isolation,
        vcpus,
        memory_bytes: memory,
        svid_ttl: Duration::from_secs(3600),
        serving_within: deadline.saturating_duration_since(tokio::time::Instant::now()),
        attachments: p.spec.networks.clone(),
        hostname: p.spec.hostname.clone(),
        host_network: p.spec.host_network,
        pod_subnet: p.spec.sandbox,
        pod_dir: p.spec.pod_dir.clone(),
    };
    instance::boot(host, &ispec).await
}

/// Gives instance `i` the images of containers `names` (each image once), then makes each
/// one's cell there and starts its entrypoint, in order, by `deadline`.
pub(super) async fn fill(
    host: &Host,
    p: &Pod,
    i: &Instance,
    names: &[String],
    deadline: tokio::time::Instant,
) -> Result<()> {
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let ch = i.channel.clone();
    // (index in the pod, for errors; name; image reference; image).
    let todo: Vec<(usize, String, String, Arc<PodImage>)> = (p.state().containers.iter().enumerate())
        .filter(|(_, c)| names.iter().any(|n| n.as_str() == c.spec.name.as_str()))
        .map(|(n, c)| (n, c.spec.name.to_string(), c.spec.image.clone(), c.image.clone()))
        .collect();
    for (_, _, _, img) in &todo {
        give_image(host, p, &ch, img, left().min(CALL_TIMEOUT * 5)).await?;
    }
    for (n, name, image, _) in &todo {
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
    Ok(())
}

/// Gives `img` to the pod's instance unless it has it: each image once, each blob once.
pub(super) async fn give_image(
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
pub(super) async fn make_cell(
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
