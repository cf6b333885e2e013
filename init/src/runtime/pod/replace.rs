//! A pod outlives its instance. When the instance ends on its own (its VMM killed, as the
//! OOM killer would; its child found unresponsive by the health checks and killed), the
//! pod's restart policy decides, as kubelet's does when a pod's sandbox dies:
//!
//! - every run the instance took with it is recorded as lost (`ContainerStatusUnknown`,
//!   kubelet's word for a container gone with its sandbox), ended when the pod found out;
//! - NEVER, or no container left to run (each completed, under ON_FAILURE): the pod has
//!   ended, FAILED with how its instance ended;
//! - else the pod gets a new instance: the old one's files, TAP, address and identity go
//!   first, then the new one boots, is given the images again and runs each container that
//!   had not ended for good (its restart count goes up). The pod's node ports stay bound
//!   and lead to the new address (`proxy::Target`): connections between two instances
//!   are closed at once.
//!
//! The first new instance is made at once; each further one in a row after Kubernetes'
//! back-off (10 s, doubling, at most 5 min), the count reset by an instance that lived
//! 10 min. One that cannot be made is taken apart (nothing of it stays) and counts as a
//! loss: the pod says why and tries again after the next back-off, until it is stopped.

use super::spec::{self, ContainerState, Termination, BACKOFF_RESET};
use super::{how_it_ended, make, supervise, Pod};
use crate::runtime::host::Host;
use crate::runtime::logs::now_unix_nanos;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Keeps `p` (made, not a sandbox) in an instance for as long as its policy says.
pub(super) fn keep(p: &Arc<Pod>, host: &Arc<Host>) {
    tokio::spawn(keeper(p.clone(), host.clone()));
}

async fn keeper(p: Arc<Pod>, host: Arc<Host>) {
    // Instances lost (or not made) in a row: the back-off's count.
    let mut lost = 0u32;
    loop {
        let Some(old) = p.instance() else { return };
        let since = tokio::time::Instant::now();
        old.body.wait().await;
        let how = how_it_ended(&old.view());
        drop(old);
        if !lose_runs(&p, &how) {
            return;
        }
        if since.elapsed() >= BACKOFF_RESET {
            lost = 0;
        }
        tracing::warn!("pod {}: its instance ended ({how}); making it a new one", p.name);
        loop {
            let wait = match lost {
                0 => Duration::ZERO,
                n => spec::backoff(n - 1, Duration::ZERO),
            };
            lost += 1;
            if !back_off(&p, wait).await {
                return;
            }
            match renew(&host, &p).await {
                Ok(true) => {
                    watch_all(&p, &host);
                    break;
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!("pod {}: a new instance: {e}", p.name);
                    p.update(|s| {
                        s.reason = format!("its instance ended: {how}; the new one could not be made: {e}");
                    });
                }
            }
        }
    }
}

/// Records each run the instance took with it as lost; then each container yet to run
/// again waits for a new instance (a policy other than NEVER) or has ended. Whether a new
/// instance is made. A pod stopped, or ended already, loses nothing.
fn lose_runs(p: &Pod, how: &str) -> bool {
    if p.stopping.load(Ordering::Relaxed) {
        return false;
    }
    let now = now_unix_nanos();
    let again = p.spec.restart != spec::RestartPolicy::Never;
    let mut replace = false;
    p.update(|s| {
        if s.containers.iter().all(|c| c.state == ContainerState::Terminated) {
            return;
        }
        for c in s.containers.iter_mut() {
            if let ContainerState::Running { since_unix_nanos } = c.state {
                c.last = Some(Termination {
                    lost: true,
                    started_unix_nanos: since_unix_nanos,
                    finished_unix_nanos: now,
                    ..Default::default()
                });
            }
            if c.state != ContainerState::Terminated && !again {
                c.state = ContainerState::Terminated;
            }
        }
        replace = p.replaces(s);
        s.lost = false;
        s.instance_end = how.to_owned();
        if replace {
            s.reason = format!("its instance ended: {how}; making a new one");
        }
    });
    // Nothing leads to the old address from now on.
    *p.target.write().unwrap_or_else(|x| x.into_inner()) = None;
    replace
}

/// Every container yet to end for good waits to run again (`reason`, until when).
fn wait_again(p: &Pod, reason: &str, until_unix_nanos: i64) {
    p.update(|s| {
        for c in s
            .containers
            .iter_mut()
            .filter(|c| c.state != ContainerState::Terminated)
        {
            c.state = ContainerState::Waiting {
                reason: reason.into(),
                until_unix_nanos,
            };
        }
    });
}

/// Waits `wait` with the containers waiting to run again (as Kubernetes shows a back-off);
/// false when the pod is stopped meanwhile.
async fn back_off(p: &Pod, wait: Duration) -> bool {
    let until = now_unix_nanos() + i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX);
    let reason = match wait.is_zero() {
        true => "ContainerCreating",
        false => "CrashLoopBackOff",
    };
    wait_again(p, reason, until);
    let mut stop = p.changed.subscribe();
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    loop {
        if p.stopping.load(Ordering::Relaxed) {
            return false;
        }
        tokio::select! {
            _ = &mut sleep => return !p.stopping.load(Ordering::Relaxed),
            r = stop.changed() => if r.is_err() { return false },
        }
    }
}

/// Gives `p` a new instance and runs its waiting containers there. Ok(false): the pod
/// was stopped meanwhile (what was made is gone again). On an error nothing of the new
/// instance stays.
async fn renew(host: &Host, p: &Pod) -> crate::runtime::error::Result<bool> {
    let _swap = p.swap.lock().await;
    if p.stopping.load(Ordering::Relaxed) {
        return Ok(false);
    }
    // The ended instance's name, files, TAP, address and identity are the new one's to
    // take (or a new one's whose taking apart failed before).
    if let Some(dead) = p.instance() {
        dead.kill().await;
        dead.release(host).await?;
        p.set_instance(None);
    }
    let names: Vec<String> = (p.state().containers.iter())
        .filter(|c| c.state != ContainerState::Terminated)
        .map(|c| c.spec.name.to_string())
        .collect();
    p.update(|s| {
        s.given.clear();
        s.blobs.clear();
        s.reason = format!("its instance ended: {}; making a new one", s.instance_end);
    });
    let deadline = tokio::time::Instant::now() + p.spec.ready_within;
    let made = async {
        let i = make::boot(host, p, deadline).await?;
        p.set_instance(Some(i.clone()));
        make::fill(host, p, &i, &names, deadline).await.map(|()| i)
    }
    .await;
    let undo = |why: String| async move {
        if let Some(i) = p.instance() {
            i.kill().await;
            match i.release(host).await {
                Ok(()) => p.set_instance(None),
                // Kept: the next try (or Free) takes it apart.
                Err(e) => tracing::warn!("pod {}: {why}: its new instance: {e}", p.name),
            }
        }
        wait_again(p, "ContainerCreating", 0);
    };
    match made {
        Err(e) => {
            undo(e.to_string()).await;
            Err(e)
        }
        Ok(_) if p.stopping.load(Ordering::Relaxed) => {
            undo("stopped".into()).await;
            Ok(false)
        }
        Ok(i) => {
            p.update(|s| {
                s.replaced += 1;
                s.reason.clear();
                for c in s.containers.iter_mut() {
                    if names.iter().any(|n| n.as_str() == c.spec.name.as_str()) {
                        c.restarts += 1;
                    }
                }
            });
            tracing::info!(
                "pod {}: running in a new instance at {} (its restart {})",
                p.name,
                i.address,
                p.state().replaced
            );
            Ok(true)
        }
    }
}

/// Watches the containers `renew` started.
fn watch_all(p: &Arc<Pod>, host: &Host) {
    let running: Vec<String> = (p.state().containers.iter())
        .filter(|c| matches!(c.state, ContainerState::Running { .. }))
        .map(|c| c.spec.name.to_string())
        .collect();
    for name in running {
        supervise::watch(p, name, host);
    }
}
