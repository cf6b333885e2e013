//! A pod container's supervisor: it waits for each run of the entrypoint to end, records
//! how, and starts the next after Kubernetes' back-off as the pod's restart policy says.

use super::spec::{self, ContainerState, Termination};
use super::Pod;
use crate::runtime::host::Host;
use crate::runtime::launcher::ChildLink;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::CALL_TIMEOUT;

/// Watches container `container` of `p` from now on (its first run has started).
pub(super) fn watch(p: &Arc<Pod>, container: String, host: &Host) {
    let Some(ch) = p.instance().map(|i| i.channel.clone()) else {
        return;
    };
    tokio::spawn(supervise(p.clone(), container, ch, host.children.clone()));
}

/// Runs `container` of `p` for as long as its restart policy says: waits for each run to
/// end, records how, and starts the next after the back-off. Ends with the container's
/// removal too.
async fn supervise(p: Arc<Pod>, container: String, ch: tonic::transport::Channel, children: Arc<dyn ChildLink>) {
    let calls = children.pod_calls();
    let Some(instance) = p.instance() else { return };
    let mut stop = p.changed.subscribe();
    loop {
        let ended = tokio::select! {
            r = calls.wait_run(&ch, &container) => r,
            _ = instance.body.wait() => return,
        };
        if p.state().slot(&container).is_none() || !current(&p, &instance) {
            return;
        }
        let st = match ended {
            Ok(st) => st,
            Err(e) => {
                // Stopped, gone with its instance, or removed (a sandbox's container).
                if p.stopping.load(Ordering::Relaxed) || instance.body.ended() || p.state().slot(&container).is_none() {
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
            lost: false,
            started_unix_nanos: st.started_at_unix_nanos,
            finished_unix_nanos: st.ended_at_unix_nanos,
        };
        let ran = Duration::from_nanos(u64::try_from(t.finished_unix_nanos - t.started_unix_nanos).unwrap_or(0));
        let restart = !p.stopping.load(Ordering::Relaxed) && p.spec.restart.restarts(&t);
        let mut restarts: u32 = 0;
        let mut argv = Vec::new();
        let mut io = crate::runtime::spec::Io::default();
        p.update(|s| {
            s.lost = false;
            if let Some(r) = s.slot(&container) {
                r.last = Some(t.clone());
                r.state = ContainerState::Terminated;
                restarts = r.restarts;
                argv = r.argv.clone();
                io = r.spec.io;
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
            let until = crate::runtime::logs::now_unix_nanos() + i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX);
            p.update(|s| {
                if let Some(r) = s.slot(&container) {
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
                        if let Some(r) = s.slot(&container) {
                            r.state = ContainerState::Terminated;
                        }
                    });
                    return;
                }
            }
            restarts += 1;
            let _ = calls.free_run(&ch, &container, CALL_TIMEOUT).await;
            let started = calls.start_run(&ch, &container, argv.clone(), io, CALL_TIMEOUT).await;
            // Its instance was lost meanwhile: the pod's keeper runs it in the next.
            if !current(&p, &instance) {
                return;
            }
            match started {
                Ok(run) => {
                    p.update(|s| {
                        if let Some(r) = s.slot(&container) {
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
                        if let Some(r) = s.slot(&container) {
                            r.restarts = restarts;
                        }
                    });
                }
            }
        }
    }
}

/// Whether `instance` is still `p`'s (a lost one's supervisors change nothing).
fn current(p: &Pod, instance: &Arc<crate::runtime::spawn::instance::Instance>) -> bool {
    p.instance().is_some_and(|i| Arc::ptr_eq(&i, instance))
}
