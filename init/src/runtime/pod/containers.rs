//! A sandbox's containers, one at a time (the CRI's `CreateContainer`, `StartContainer`,
//! `StopContainer`, `RemoveContainer`): made in the running pod's instance from an image
//! this node gives it, started when asked, never restarted by auraed (kubelet makes a new
//! container instead), stopped with a grace period, removed with their cell.
//!
//! Each step changes the pod only when it succeeds: a refused step leaves the container
//! where it was (a container whose making fails is not kept).

use super::spec::{ContainerSpec, ContainerState};
use super::{give_image, make_cell, refused, supervise, ContainerView, Pod, PodImage, Slot, CALL_TIMEOUT};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::host::Host;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Containers a sandbox keeps at once, exited ones included (kubelet removes those).
pub const MAX_SANDBOX_CONTAINERS: usize = 64;

/// The sandbox `pod`, running, and the channel to its instance: where a container can be
/// made, started, run a command or be measured.
fn running_sandbox(host: &Host, pod: &str) -> Result<(Arc<Pod>, Channel)> {
    let (p, ch) = running_pod(host, pod)?;
    if !p.spec.sandbox {
        return Err(RuntimeError::WrongPhase(format!(
            "pod '{pod}' was made with its containers; only a sandbox takes containers one at a time"
        )));
    }
    Ok((p, ch))
}

/// A client of the Aurae API reaching into a CRI sandbox: refused, kubelet's pods are
/// the CRI's (admin) to reach.
fn kubelets_pod(pod: &str) -> RuntimeError {
    RuntimeError::invalid(
        "start.pod",
        format!("pod '{pod}' is a Kubernetes sandbox; reach it through the CRI (kubectl exec, crictl exec)"),
    )
}

/// Pod `pod`, its instance running, and the channel to it.
fn running_pod(host: &Host, pod: &str) -> Result<(Arc<Pod>, Channel)> {
    let p = host.table().get::<Pod>(pod)?;
    match p.instance().filter(|i| !i.body.ended()) {
        Some(i) if !p.stopping.load(Ordering::Relaxed) => {
            let ch = i.channel.clone();
            Ok((p, ch))
        }
        _ => Err(RuntimeError::WrongPhase(format!(
            "pod '{pod}' is stopped; its containers cannot be made, started or reached"
        ))),
    }
}

/// Connections to pod `pod`'s ports: to its address. A pod in the node's network has
/// none: its ports are the node's, and the node's loopback is not a client's to reach.
pub(crate) fn dialer(host: &Host, pod: &str) -> Result<crate::net::proxy::Dialer> {
    let (p, _) = running_pod(host, pod)?;
    if p.spec.sandbox {
        return Err(kubelets_pod(pod));
    }
    if p.spec.host_network {
        return Err(RuntimeError::invalid(
            "start.pod",
            format!("pod '{pod}' is in the node's network; connect to the node's port itself"),
        ));
    }
    match p.instance().map(|i| i.address.ip()) {
        Some(std::net::IpAddr::V4(a)) => Ok(crate::net::proxy::Dialer::Address(a)),
        _ => Err(RuntimeError::Network(format!("pod '{pod}' has no IPv4 address"))),
    }
}

fn no_container(pod: &str, name: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("pod '{pod}' has no container '{name}'"))
}

fn view_of(p: &Pod, name: &str) -> Result<ContainerView> {
    (p.view().containers.into_iter())
        .find(|c| c.name == name)
        .ok_or_else(|| no_container(p.name.as_str(), name))
}

/// Makes container `spec` in sandbox `pod`: gives its instance `image` (once per image)
/// and makes the container's cell there. Its entrypoint is not started.
pub(crate) async fn create_container(
    host: &Host,
    pod: &str,
    spec: ContainerSpec,
    image: Arc<PodImage>,
    timeout: Duration,
) -> Result<ContainerView> {
    let (p, ch) = running_sandbox(host, pod)?;
    let name = spec.name.to_string();
    let image_name = spec.image.clone();
    {
        let mut s = p.state();
        if s.slot(&name).is_some() {
            return Err(RuntimeError::AlreadyExists(format!(
                "pod '{pod}' has a container '{name}' already"
            )));
        }
        if s.containers.len() >= MAX_SANDBOX_CONTAINERS {
            return Err(RuntimeError::Exhausted(format!(
                "pod '{pod}' has {MAX_SANDBOX_CONTAINERS} containers, the most a sandbox keeps; remove exited ones first"
            )));
        }
        s.containers.push(Slot::new(spec, image.clone()));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let made = async {
        give_image(host, &p, &ch, &image, left()).await?;
        make_cell(host, &p, &ch, &name, &image_name, "container", left()).await
    };
    match made.await {
        Ok(()) => {
            p.update(|s| {
                if let Some(c) = s.slot(&name) {
                    c.state = ContainerState::Created;
                }
            });
            tracing::info!("pod {pod}: container {name} created");
            view_of(&p, &name)
        }
        Err(e) => {
            // Nothing of it stays: not its cell in the instance, not its name here.
            let calls = host.children.pod_calls();
            if let Err(s) = calls.remove_cell(&ch, &name, CALL_TIMEOUT).await {
                tracing::warn!("pod {pod}: remove the cell of container {name}: {}", s.message());
            }
            p.update(|s| s.containers.retain(|c| c.spec.name.as_str() != name));
            Err(e)
        }
    }
}

/// Starts container `name`'s entrypoint (once: a created container only).
pub(crate) async fn start_container(host: &Host, pod: &str, name: &str, timeout: Duration) -> Result<ContainerView> {
    let (p, ch) = running_sandbox(host, pod)?;
    let (argv, io) = {
        let mut s = p.state();
        let c = s.slot(name).ok_or_else(|| no_container(pod, name))?;
        if c.state != ContainerState::Created {
            return Err(RuntimeError::WrongPhase(format!(
                "container '{name}' of pod '{pod}' is {}; only a created container starts (make a new one to run it again)",
                describe(&c.state)
            )));
        }
        (c.argv.clone(), c.spec.io)
    };
    let run = host
        .children
        .pod_calls()
        .start_run(&ch, name, argv, io, timeout)
        .await
        .map_err(|s| refused(&format!("container '{name}'"), s))?;
    p.update(|s| {
        if let Some(c) = s.slot(name) {
            c.state = ContainerState::Running {
                since_unix_nanos: run.started_at_unix_nanos,
            };
        }
    });
    supervise::watch(&p, name.to_owned(), host);
    tracing::info!("pod {pod}: container {name} started");
    view_of(&p, name)
}

fn describe(s: &ContainerState) -> &'static str {
    match s {
        ContainerState::Waiting { .. } => "being made",
        ContainerState::Created => "created",
        ContainerState::Running { .. } => "running",
        ContainerState::Terminated => "exited",
    }
}

/// Stops container `name`: SIGTERM, `grace`, then its processes are killed. A container
/// that has exited already (or never started) is stopped: OK.
pub(crate) async fn stop_container(host: &Host, pod: &str, name: &str, grace: Duration) -> Result<ContainerView> {
    let p = host.table().get::<Pod>(pod)?;
    let state = {
        let mut s = p.state();
        let c = s.slot(name).ok_or_else(|| no_container(pod, name))?;
        if c.state == ContainerState::Created {
            c.state = ContainerState::Terminated;
        }
        c.state.clone()
    };
    if let (ContainerState::Running { .. }, Some(i)) = (state, p.instance()) {
        if !i.body.ended() {
            let calls = host.children.pod_calls();
            if let Err(s) = calls.stop_run(&i.channel, name, libc::SIGTERM, grace).await {
                tracing::warn!("pod {pod}: stop container {name}: {}", s.message());
            }
            p.settled(Some(name)).await;
        }
    }
    view_of(&p, name)
}

/// Removes container `name`: killed if it runs, its cell gone from the instance, its name
/// free. One the pod does not have is removed already (OK).
pub(crate) async fn remove_container(host: &Host, pod: &str, name: &str) -> Result<()> {
    let p = host.table().get::<Pod>(pod)?;
    if p.state().slot(name).is_none() {
        return Ok(());
    }
    if let Some(i) = p.instance().filter(|i| !i.body.ended()) {
        host.children
            .pod_calls()
            .remove_cell(&i.channel, name, CALL_TIMEOUT)
            .await
            .map_err(|s| refused(&format!("removing container '{name}'"), s))?;
    }
    p.update(|s| s.containers.retain(|c| c.spec.name.as_str() != name));
    tracing::info!("pod {pod}: container {name} removed");
    Ok(())
}

/// The channel to pod `pod`'s instance, when its container `name` runs (a command runs
/// only in a running container).
pub(crate) fn running_container(host: &Host, pod: &str, name: &str, kubelets: bool) -> Result<Channel> {
    let (p, ch) = running_pod(host, pod)?;
    if p.spec.sandbox && !kubelets {
        return Err(kubelets_pod(pod));
    }
    let state = p.state().slot(name).map(|c| c.state.clone());
    match state {
        None => Err(no_container(pod, name)),
        Some(ContainerState::Running { .. }) => Ok(ch),
        Some(other) => Err(RuntimeError::WrongPhase(format!(
            "container '{name}' of pod '{pod}' is {}; a command runs only in a running container",
            describe(&other)
        ))),
    }
}

/// Runs `argv` in running container `name` to its end, within `timeout` (then it is
/// killed and the answer is DEADLINE_EXCEEDED), keeping `cap` bytes of each stream.
pub(crate) async fn exec_in_container(
    host: &Host,
    pod: &str,
    name: &str,
    argv: Vec<String>,
    timeout: Duration,
    cap: usize,
) -> Result<crate::runtime::spawn::child::ExecOutput> {
    let ch = running_container(host, pod, name, true)?;
    if argv.is_empty() {
        return Err(RuntimeError::invalid(
            "cmd",
            "empty; give the command to run".to_owned(),
        ));
    }
    let what = argv.join(" ");
    match tokio::time::timeout(timeout, host.children.pod_calls().exec_in(&ch, name, argv, cap)).await {
        Ok(r) => r.map_err(|s| refused(&format!("running '{what}' in container '{name}'"), s)),
        Err(_) => Err(RuntimeError::DeadlineExceeded(format!(
            "'{what}' in container '{name}' did not end within {} s; it was killed",
            timeout.as_secs_f64()
        ))),
    }
}

/// What container `name` of sandbox `pod` uses now (its cell in the instance).
pub(crate) async fn container_usage(host: &Host, pod: &str, name: &str) -> Result<crate::runtime::cgroup::Usage> {
    let (p, ch) = running_sandbox(host, pod)?;
    if p.state().slot(name).is_none() {
        return Err(no_container(pod, name));
    }
    let u = host
        .children
        .pod_calls()
        .cell_usage(&ch, name, CALL_TIMEOUT)
        .await
        .map_err(|s| refused(&format!("the usage of container '{name}'"), s))?;
    Ok(crate::runtime::cgroup::Usage {
        cpu_usage_micros: u.cpu_usage_micros,
        cpu_throttled_micros: u.cpu_throttled_micros,
        cpu_nr_throttled: u.cpu_nr_throttled,
        memory_current_bytes: u.memory_current_bytes,
        memory_peak_bytes: u.memory_peak_bytes,
        memory_oom_events: u.memory_oom_events,
        memory_oom_kill_events: u.memory_oom_kill_events,
        pids_current: u.pids_current,
        memory_inactive_file_bytes: u.memory_inactive_file_bytes,
    })
}
