//! A pod whose instance dies gets a new one as its restart policy says (`pod/replace.rs`):
//! on `pod.rs`'s rig, the instance's VMM killed with its runs (`kill_instance`). What
//! fails at each step of the making of a new instance is `steps.rs`'s.

use super::instance::{nothing_left, powers_off_when_asked, rig};
use super::pod::{kill_instance, pod, run, until, view, waiting_until};
use crate::runtime::pod::spec::{ContainerState, PodPhase, RestartPolicy, BACKOFF_BASE};
use crate::runtime::Kind;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn all_running(v: &crate::runtime::pod::PodView) -> bool {
    v.containers
        .iter()
        .all(|c| matches!(c.state, ContainerState::Running { .. }))
}

#[tokio::test]
async fn a_pod_whose_instance_dies_gets_a_new_one_at_once_then_after_its_back_off() {
    let r = rig();
    let v = run(&r, pod("keep", RestartPolicy::Always, &["app", "side"]))
        .await
        .unwrap();
    let first = v.instance.clone().unwrap();
    let pods = &r.children.pods;
    kill_instance(&r, "keep");
    let v = until(&r, "keep", "in a new instance", |v| {
        v.instance_restarts == 1 && all_running(v)
    })
    .await;
    assert_eq!((v.phase, v.reason.as_str()), (PodPhase::Running, ""), "{v:?}");
    assert!(
        v.last_instance_end.contains("the VMM exited with Some(9)"),
        "how the lost one ended: {v:?}"
    );
    for c in &v.containers {
        assert_eq!(c.restarts, 1, "{c:?}");
        let last = c.last.clone().unwrap();
        assert_eq!(last.reason(), "ContainerStatusUnknown", "{c:?}");
        assert!(last.finished_unix_nanos >= last.started_unix_nanos, "{last:?}");
    }
    let second = v.instance.clone().unwrap();
    assert_ne!(second.pid, first.pid, "a new VMM");
    assert_eq!(second.spiffe_id, first.spiffe_id, "the pod's identity, minted again");
    assert_eq!(
        pods.loads.load(Ordering::Relaxed),
        2,
        "the new instance was given the image"
    );
    assert_eq!(*pods.cells.lock().unwrap(), ["app", "side", "app", "side"]);
    assert_eq!(pods.starts.load(Ordering::Relaxed), 4);
    let alive: Vec<_> = (r.devices.taps().into_iter())
        .filter(|t| r.devices.tap_alive(t))
        .collect();
    assert_eq!(alive.len(), 1, "the lost instance's TAP was closed: {alive:?}");
    assert_eq!(r.rt.host.table().hosts.len(), 1, "one host number, the new one's");

    // Lost again soon after: the next waits Kubernetes' back-off.
    kill_instance(&r, "keep");
    let v = until(&r, "keep", "backing off", |v| waiting_until(v, 0).is_some()).await;
    assert!(v.reason.contains("making a new one"), "{v:?}");
    assert_eq!(v.pod_ip, "", "no address between instances: {v:?}");
    tokio::time::pause();
    tokio::time::advance(BACKOFF_BASE - Duration::from_millis(100)).await;
    assert!(waiting_until(&view(&r, "keep"), 0).is_some(), "still waiting");
    assert_eq!(pods.starts.load(Ordering::Relaxed), 4);
    tokio::time::advance(Duration::from_millis(200)).await;
    tokio::time::resume();
    let v = until(&r, "keep", "in a third instance", |v| {
        v.instance_restarts == 2 && all_running(v)
    })
    .await;
    assert!(v.containers.iter().all(|c| c.restarts == 2), "{v:?}");

    powers_off_when_asked(&r, "keep");
    r.rt.stop(Kind::Pod, "keep", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    r.rt.free(Kind::Pod, "keep").await.unwrap();
    nothing_left(&r, "keep");
    use crate::runtime::events::What;
    assert_eq!(
        super::vm::told_by(&r.rt, Kind::Pod, "keep"),
        [What::Created, What::Started, What::Stopped, What::Freed],
        "a new instance is no end of the pod"
    );
}

/// ON_FAILURE: a container that completed stays completed; only the others run in the
/// new instance.
#[tokio::test]
async fn on_failure_the_new_instance_runs_only_what_had_not_completed() {
    let r = rig();
    run(&r, pod("half", RestartPolicy::OnFailure, &["app", "side"]))
        .await
        .unwrap();
    let pods = &r.children.pods;
    pods.end_run("app", Some(0), None);
    until(&r, "half", "app completed", |v| {
        v.containers[0].state == ContainerState::Terminated
    })
    .await;
    kill_instance(&r, "half");
    let v = until(&r, "half", "side in a new instance", |v| v.instance_restarts == 1).await;
    assert_eq!(v.containers[0].state, ContainerState::Terminated, "{v:?}");
    assert_eq!(v.containers[0].last.as_ref().unwrap().reason(), "Completed");
    assert_eq!(v.containers[0].restarts, 0);
    assert!(matches!(v.containers[1].state, ContainerState::Running { .. }), "{v:?}");
    assert_eq!(v.containers[1].restarts, 1);
    assert_eq!(*pods.cells.lock().unwrap(), ["app", "side", "side"]);
    // Once side completes too, the pod has succeeded, and a lost instance then is no loss.
    pods.end_run("side", Some(0), None);
    let v = until(&r, "half", "succeeded", |v| v.phase == PodPhase::Succeeded).await;
    assert_eq!(v.instance_restarts, 1);
    powers_off_when_asked(&r, "half");
    r.rt.free(Kind::Pod, "half").await.unwrap();
    nothing_left(&r, "half");
}

/// A stop while the new instance waits for its back-off: nothing more is made, and the
/// pod frees leaving nothing.
#[tokio::test]
async fn a_pod_stopped_while_it_waits_for_a_new_instance_makes_none() {
    let r = rig();
    run(&r, pod("gone", RestartPolicy::Always, &["app"])).await.unwrap();
    kill_instance(&r, "gone");
    until(&r, "gone", "in a new instance", |v| v.instance_restarts == 1).await;
    kill_instance(&r, "gone");
    until(&r, "gone", "backing off", |v| waiting_until(v, 0).is_some()).await;
    let e = r.rt.free(Kind::Pod, "gone").await.unwrap_err();
    assert!(e.to_string().contains("stop it first"), "{e}");
    r.rt.stop(Kind::Pod, "gone", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    let v = view(&r, "gone");
    assert_eq!(v.containers[0].state, ContainerState::Terminated, "{v:?}");
    tokio::time::pause();
    tokio::time::advance(BACKOFF_BASE * 4).await;
    tokio::time::resume();
    assert_eq!(r.children.pods.starts.load(Ordering::Relaxed), 2, "no third run");
    assert_eq!(view(&r, "gone").instance_restarts, 1);
    r.rt.free(Kind::Pod, "gone").await.unwrap();
    nothing_left(&r, "gone");
}
