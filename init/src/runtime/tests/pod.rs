//! Pods without KVM, QEMU or a child: Spawn's rig (`instance.rs`: the fake VMM, fake
//! devices, `FakeChildren`) with the fake child's pod side (`FakePodChild`), which makes a
//! container's cell at once and keeps each run of its entrypoint until the test ends it.
//! The back-off is the real one (10 s, doubling): the tests pause tokio's clock once the
//! pod runs, so it passes at once and in order.

use super::instance::{nothing_left, powers_off_when_asked, rig, Rig};
use crate::runtime::error::RuntimeError;
use crate::runtime::names::ExecName;
use crate::runtime::pod::spec::{
    ContainerSpec, ContainerState, PodPhase, PodSpec, ResourceList, RestartPolicy, BACKOFF_BASE,
};
use crate::runtime::pod::{PodImage, PodView};
use crate::runtime::spawn::instance::IsolationKind;
use crate::runtime::{Kind, View};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn container(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: ExecName::parse(name).unwrap(),
        image: "registry.test/app:1".into(),
        pull_policy: crate::image::catalog::PullPolicy::IfNotPresent,
        credentials: None,
        command: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        ports: Vec::new(),
        requests: ResourceList::default(),
        limits: ResourceList::default(),
        mounts: Vec::new(),
        volumes: Vec::new(),
        user: None,
        io: Default::default(),
    }
}

pub(super) fn pod(name: &str, restart: RestartPolicy, containers: &[&str]) -> PodSpec {
    PodSpec {
        name: ExecName::parse_instance(name).unwrap(),
        containers: containers.iter().map(|c| container(c)).collect(),
        volumes: Vec::new(),
        restart,
        vcpus: None,
        memory_bytes: Some(128 << 20),
        isolation: Some(IsolationKind::Vm),
        sandbox: false,
        hostname: None,
        ports: Vec::new(),
        ready_within: Duration::from_secs(30),
        networks: Vec::new(),
        host_network: false,
        pod_dir: None,
    }
}

/// The pod's image as this node's store would hand it over: one layer, one entry per
/// container (containers sharing an image share the entry).
pub(super) fn images(n: usize) -> Vec<Arc<PodImage>> {
    let layer = crate::image::Digest::of(b"layer");
    let img = Arc::new(PodImage {
        reference: "registry.test/app:1".into(),
        digest: crate::image::Digest::of(b"manifest").to_string(),
        chains: vec![layer.to_string()],
        offer: crate::image::load::Offer {
            reference: "registry.test/app:1".into(),
            digest: crate::image::Digest::of(b"manifest"),
            manifest_json: b"{}".to_vec(),
            config_json: b"{}".to_vec(),
            layers: vec![crate::image::load::OfferedLayer {
                digest: layer,
                size: 5,
                sent: true,
            }],
        },
        paths: vec![std::path::PathBuf::from("/nonexistent/layer")],
    });
    vec![img; n]
}

/// Makes pod `spec` as `RunPod` does once its images are on this node.
pub(super) async fn run(r: &Rig, spec: PodSpec) -> crate::runtime::error::Result<PodView> {
    let n = spec.containers.len();
    crate::runtime::pod::run(&r.rt.host, spec, images(n)).await
}

pub(super) fn view(r: &Rig, name: &str) -> PodView {
    match r.rt.status(Kind::Pod, name).unwrap() {
        View::Pod(p) => *p,
        other => panic!("{other:?}"),
    }
}

/// Yields (without moving the paused clock) until `cond` holds of the pod's view.
pub(super) async fn until(r: &Rig, name: &str, what: &str, cond: impl Fn(&PodView) -> bool) -> PodView {
    for _ in 0..10_000 {
        let v = view(r, name);
        if cond(&v) {
            return v;
        }
        tokio::task::yield_now().await;
    }
    panic!("pod {name}: never {what}: {:?}", view(r, name));
}

pub(super) fn waiting_until(v: &PodView, n: usize) -> Option<i64> {
    match &v.containers[n].state {
        ContainerState::Waiting {
            reason,
            until_unix_nanos,
        } if reason == "CrashLoopBackOff" => Some(*until_unix_nanos),
        _ => None,
    }
}

#[tokio::test]
async fn a_pod_runs_stops_and_frees_and_leaves_nothing() {
    let r = rig();
    powers_off_when_asked(&r, "web");
    let v = run(&r, pod("web", RestartPolicy::Always, &["app", "side"]))
        .await
        .unwrap();
    assert_eq!(v.phase, PodPhase::Running, "{v:?}");
    assert!(v
        .containers
        .iter()
        .all(|c| matches!(c.state, ContainerState::Running { .. })));
    let pods = &r.children.pods;
    assert_eq!(
        *pods.cells.lock().unwrap(),
        ["app", "side"],
        "a cell per container, in order"
    );
    assert_eq!(
        pods.loads.load(Ordering::Relaxed),
        1,
        "the image they share was given once"
    );
    assert_eq!(pods.starts.load(Ordering::Relaxed), 2);
    let stopped =
        r.rt.stop(Kind::Pod, "web", libc::SIGTERM, Duration::from_secs(1))
            .await
            .unwrap();
    let View::Pod(s) = stopped else { panic!("{stopped:?}") };
    assert_eq!(
        pods.stops.load(Ordering::Relaxed),
        2,
        "each running container was stopped"
    );
    assert!(!pods.running("app") && !pods.running("side"));
    assert!(
        s.containers.iter().all(|c| c.state == ContainerState::Terminated),
        "{s:?}"
    );
    assert_eq!(
        r.children.shutdowns.load(Ordering::Relaxed),
        1,
        "then its instance powered off"
    );
    assert_eq!(pods.starts.load(Ordering::Relaxed), 2, "a stopped pod restarts nothing");
    r.rt.free(Kind::Pod, "web").await.unwrap();
    assert!(matches!(r.rt.status(Kind::Pod, "web"), Err(RuntimeError::NotFound(_))));
    nothing_left(&r, "web");
    use crate::runtime::events::What;
    assert_eq!(
        super::vm::told_by(&r.rt, Kind::Pod, "web"),
        [What::Created, What::Started, What::Stopped, What::Freed]
    );
    assert!(
        super::vm::told_by(&r.rt, Kind::Instance, "web").is_empty(),
        "a pod's instance is its own, not listed"
    );
}

#[tokio::test]
async fn a_container_that_fails_waits_its_back_off_then_restarts_and_the_next_wait_doubles() {
    let r = rig();
    powers_off_when_asked(&r, "crash");
    run(&r, pod("crash", RestartPolicy::OnFailure, &["app"])).await.unwrap();
    let pods = &r.children.pods;
    tokio::time::pause();
    pods.end_run("app", Some(1), None);
    let v = until(&r, "crash", "waiting in its back-off", |v| {
        waiting_until(v, 0).is_some()
    })
    .await;
    let last = v.containers[0].last.clone().unwrap();
    assert_eq!(last.exit_code, Some(1));
    assert_eq!(v.containers[0].restarts, 0);
    // Not before the back-off...
    tokio::time::sleep(BACKOFF_BASE - Duration::from_millis(100)).await;
    assert!(waiting_until(&view(&r, "crash"), 0).is_some(), "still waiting");
    assert_eq!(pods.starts.load(Ordering::Relaxed), 1);
    // ...and at once after it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v = until(&r, "crash", "running again", |v| {
        matches!(v.containers[0].state, ContainerState::Running { .. })
    })
    .await;
    assert_eq!(v.containers[0].restarts, 1);
    assert_eq!(pods.starts.load(Ordering::Relaxed), 2);
    assert_eq!(pods.frees.load(Ordering::Relaxed), 1, "the ended run was freed first");
    // The second failure waits twice as long.
    pods.end_run("app", Some(2), None);
    until(&r, "crash", "waiting again", |v| waiting_until(v, 0).is_some()).await;
    tokio::time::sleep(BACKOFF_BASE * 2 - Duration::from_millis(100)).await;
    assert!(waiting_until(&view(&r, "crash"), 0).is_some(), "a doubled back-off");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v = until(&r, "crash", "running a third time", |v| v.containers[0].restarts == 2).await;
    assert!(matches!(v.containers[0].state, ContainerState::Running { .. }), "{v:?}");
    // A clean exit under OnFailure is the end.
    pods.end_run("app", Some(0), None);
    let v = until(&r, "crash", "succeeded", |v| v.phase == PodPhase::Succeeded).await;
    assert_eq!(v.containers[0].state, ContainerState::Terminated);
    tokio::time::sleep(BACKOFF_BASE * 10).await;
    assert_eq!(pods.starts.load(Ordering::Relaxed), 3, "no restart after a success");
}

#[tokio::test]
async fn a_restart_the_instance_refuses_counts_as_a_failure_and_backs_off_again() {
    let r = rig();
    powers_off_when_asked(&r, "stuck");
    run(&r, pod("stuck", RestartPolicy::Always, &["app"])).await.unwrap();
    let pods = &r.children.pods;
    tokio::time::pause();
    *pods.refuse_starts.lock().unwrap() = true;
    pods.end_run("app", Some(0), None);
    until(&r, "stuck", "waiting", |v| waiting_until(v, 0).is_some()).await;
    tokio::time::sleep(BACKOFF_BASE + Duration::from_millis(100)).await;
    // The refused start counted: it waits again, twice as long, with one restart recorded.
    let v = until(&r, "stuck", "counting the refused restart", |v| {
        v.containers[0].restarts == 1
    })
    .await;
    assert!(waiting_until(&v, 0).is_some(), "{v:?}");
    *pods.refuse_starts.lock().unwrap() = false;
    tokio::time::sleep(BACKOFF_BASE * 2 + Duration::from_millis(100)).await;
    let v = until(&r, "stuck", "running", |v| {
        matches!(v.containers[0].state, ContainerState::Running { .. })
    })
    .await;
    assert_eq!(v.containers[0].restarts, 2);
}

/// Pod `name`'s instance dies: its VMM is killed, and the runs in it go with it.
pub(super) fn kill_instance(r: &Rig, name: &str) {
    for pid in r.fake.pids_in(&r.root.join(name).join(format!("_x.{name}"))) {
        r.fake.exit(pid, 9);
    }
    r.children.pods.lose_runs();
}

/// NEVER: a pod whose instance dies fails (its run lost); a new instance is `pod_renew.rs`'s.
#[tokio::test]
async fn a_never_pod_whose_instance_dies_fails_with_the_reason_restarts_nothing_and_frees() {
    let r = rig();
    let v = run(&r, pod("lost", RestartPolicy::Never, &["app"])).await.unwrap();
    assert_eq!(v.phase, PodPhase::Running);
    kill_instance(&r, "lost");
    let v = until(&r, "lost", "failed, its run lost", |v| {
        v.phase == PodPhase::Failed && v.containers[0].state == ContainerState::Terminated
    })
    .await;
    assert!(v.reason.starts_with("its instance ended"), "{v:?}");
    assert_eq!(v.containers[0].state, ContainerState::Terminated, "{v:?}");
    let last = v.containers[0].last.clone().unwrap();
    assert_eq!(
        last.reason(),
        "ContainerStatusUnknown",
        "the run went with it: {last:?}"
    );
    assert_eq!((v.instance_restarts, v.pod_ip.as_str()), (0, ""), "{v:?}");
    tokio::time::pause();
    tokio::time::sleep(BACKOFF_BASE * 4).await;
    assert_eq!(
        r.children.pods.starts.load(Ordering::Relaxed),
        1,
        "nothing restarts without an instance"
    );
    let e = r.rt.channel(Kind::Pod, "lost").err().unwrap();
    assert!(e.to_string().contains("has no running instance"), "{e}");
    r.rt.free(Kind::Pod, "lost").await.unwrap();
    nothing_left(&r, "lost");
    let told = super::vm::told_by(&r.rt, Kind::Pod, "lost");
    assert!(
        matches!(&told[..], [_, _, crate::runtime::events::What::Failed(why), _] if why.starts_with("its instance ended")),
        "the failure is told with its reason: {told:?}"
    );
}

#[tokio::test]
async fn a_container_whose_cell_is_refused_undoes_the_pod() {
    let r = rig();
    *r.children.pods.refuse_starts.lock().unwrap() = true;
    let e = run(&r, pod("nostart", RestartPolicy::Always, &["app"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("containers[0] (app)"), "{e}");
    assert!(matches!(
        r.rt.status(Kind::Pod, "nostart"),
        Err(RuntimeError::NotFound(_))
    ));
    nothing_left(&r, "nostart");
}

fn sandbox(name: &str) -> PodSpec {
    PodSpec {
        sandbox: true,
        ..pod(name, RestartPolicy::Never, &[])
    }
}

/// The CRI's sandbox: a pod with no containers that runs until stopped; containers are
/// made, started, stopped and removed one at a time, and one that exits is not restarted
/// (kubelet makes a new one) but stays listed until removed.
#[tokio::test]
async fn a_sandbox_takes_containers_one_at_a_time_and_restarts_none() {
    use crate::runtime::pod::{create_container, remove_container, start_container, stop_container};
    let r = rig();
    powers_off_when_asked(&r, "sb");
    let host = &r.rt.host;
    let t = Duration::from_secs(10);
    let v = run(&r, sandbox("sb")).await.unwrap();
    assert_eq!(v.phase, PodPhase::Running, "an empty sandbox runs: {v:?}");
    assert!(v.containers.is_empty());
    let pods = &r.children.pods;
    assert_eq!(pods.loads.load(Ordering::Relaxed), 0);

    let img = images(1).remove(0);
    let c = create_container(host, "sb", container("c1"), img.clone(), t)
        .await
        .unwrap();
    assert_eq!(c.state, ContainerState::Created);
    assert_eq!(*pods.cells.lock().unwrap(), ["c1"]);
    assert_eq!(pods.starts.load(Ordering::Relaxed), 0, "made, not started");
    // The same name again: refused, and the first is untouched.
    let e = create_container(host, "sb", container("c1"), img.clone(), t)
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::AlreadyExists(_)), "{e}");
    let c = start_container(host, "sb", "c1", t).await.unwrap();
    assert!(matches!(c.state, ContainerState::Running { .. }), "{c:?}");
    let e = start_container(host, "sb", "c1", t).await.unwrap_err();
    assert!(e.to_string().contains("only a created container starts"), "{e}");

    // A second container from the same image: the image is given once.
    create_container(host, "sb", container("c2"), img.clone(), t)
        .await
        .unwrap();
    start_container(host, "sb", "c2", t).await.unwrap();
    assert_eq!(pods.loads.load(Ordering::Relaxed), 1, "one image, given once");

    // c1 exits with 3: recorded, not restarted, the sandbox still runs.
    pods.end_run("c1", Some(3), None);
    let v = until(&r, "sb", "c1 exited", |v| {
        v.containers[0].state == ContainerState::Terminated
    })
    .await;
    assert_eq!(v.containers[0].last.as_ref().unwrap().exit_code, Some(3));
    assert_eq!(v.phase, PodPhase::Running, "{v:?}");
    tokio::time::pause();
    tokio::time::sleep(BACKOFF_BASE * 2).await;
    assert_eq!(pods.starts.load(Ordering::Relaxed), 2, "no restart");
    tokio::time::resume();

    // Stop with a grace: SIGTERM reaches c2's run; stopping again is OK.
    let c = stop_container(host, "sb", "c2", Duration::from_secs(1)).await.unwrap();
    assert_eq!(c.state, ContainerState::Terminated);
    assert_eq!(c.last.as_ref().unwrap().signal, Some(libc::SIGTERM));
    stop_container(host, "sb", "c2", Duration::from_secs(1)).await.unwrap();

    // Removed: gone from the instance and the pod; removing again is OK.
    remove_container(host, "sb", "c1").await.unwrap();
    remove_container(host, "sb", "c1").await.unwrap();
    assert_eq!(*pods.cells.lock().unwrap(), ["c2"]);
    assert_eq!(view(&r, "sb").containers.len(), 1);

    // A stopped sandbox takes no container; its address is free for the next one at once
    // (the CRI's StopPodSandbox reclaims the network); then it frees and leaves nothing.
    let ip = view(&r, "sb").pod_ip;
    r.rt.stop(Kind::Pod, "sb", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    powers_off_when_asked(&r, "sb-next");
    let next = run(&r, sandbox("sb-next")).await.unwrap();
    assert_eq!(next.pod_ip, ip, "the stopped sandbox's address, taken again");
    r.rt.stop(Kind::Pod, "sb-next", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    r.rt.free(Kind::Pod, "sb-next").await.unwrap();
    let e = create_container(host, "sb", container("c3"), img, t).await.unwrap_err();
    assert!(e.to_string().contains("is stopped"), "{e}");
    assert_eq!(view(&r, "sb").phase, PodPhase::Succeeded);
    r.rt.free(Kind::Pod, "sb").await.unwrap();
    nothing_left(&r, "sb");
}

/// A sandbox in the node's network: its instance a cell with no address of its own, so
/// the pod shows none (not its loopback API address).
#[tokio::test]
async fn a_host_network_sandbox_has_no_address_of_its_own() {
    let r = rig();
    powers_off_when_asked(&r, "hn");
    let spec = PodSpec {
        host_network: true,
        pod_dir: None,
        isolation: Some(IsolationKind::Cell),
        ..sandbox("hn")
    };
    let v = run(&r, spec).await.unwrap();
    assert_eq!(v.phase, PodPhase::Running, "{v:?}");
    assert_eq!(v.pod_ip, "", "{v:?}");
    assert_eq!(v.isolation, Some(IsolationKind::Cell));
    r.rt.stop(Kind::Pod, "hn", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    r.rt.free(Kind::Pod, "hn").await.unwrap();
    nothing_left(&r, "hn");
}

/// A container whose cell the instance refuses is not kept (not its name, not its cell);
/// a refused start leaves a created container created; a pod made with its containers
/// takes none one at a time.
#[tokio::test]
async fn a_container_the_instance_refuses_is_not_kept() {
    use crate::runtime::pod::{create_container, start_container};
    let r = rig();
    powers_off_when_asked(&r, "sb2");
    let host = &r.rt.host;
    let t = Duration::from_secs(10);
    run(&r, sandbox("sb2")).await.unwrap();
    let pods = &r.children.pods;
    *pods.refuse_cells.lock().unwrap() = true;
    let e = create_container(host, "sb2", container("c1"), images(1).remove(0), t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("image.user: no such user"), "{e}");
    assert!(view(&r, "sb2").containers.is_empty(), "not kept");
    assert!(pods.cells.lock().unwrap().is_empty());
    *pods.refuse_cells.lock().unwrap() = false;
    // Its name is free again.
    create_container(host, "sb2", container("c1"), images(1).remove(0), t)
        .await
        .unwrap();
    *pods.refuse_starts.lock().unwrap() = true;
    let e = start_container(host, "sb2", "c1", t).await.unwrap_err();
    assert!(e.to_string().contains("is not running (fake)"), "{e}");
    assert_eq!(view(&r, "sb2").containers[0].state, ContainerState::Created);
    *pods.refuse_starts.lock().unwrap() = false;
    start_container(host, "sb2", "c1", t).await.unwrap();

    powers_off_when_asked(&r, "whole");
    run(&r, pod("whole", RestartPolicy::Never, &["app"])).await.unwrap();
    let e = create_container(host, "whole", container("more"), images(1).remove(0), t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("only a sandbox"), "{e}");
    assert_eq!(view(&r, "whole").containers.len(), 1);
}

/// A command in a sandbox's container (the CRI's ExecSync): its output and code; past
/// its timeout it is abandoned (the real instance then kills it) with DEADLINE_EXCEEDED;
/// a container that is not running takes none.
#[tokio::test]
async fn a_command_runs_to_its_end_in_a_running_container_or_times_out() {
    use crate::runtime::pod::{create_container, exec_in_container, start_container};
    let r = rig();
    powers_off_when_asked(&r, "sb3");
    let host = &r.rt.host;
    let t = Duration::from_secs(10);
    run(&r, sandbox("sb3")).await.unwrap();
    create_container(host, "sb3", container("c1"), images(1).remove(0), t)
        .await
        .unwrap();
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let e = exec_in_container(host, "sb3", "c1", argv(&["echo", "hi"]), t, 1024)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("only in a running container"), "{e}");
    start_container(host, "sb3", "c1", t).await.unwrap();
    let o = exec_in_container(host, "sb3", "c1", argv(&["echo", "hi", "there"]), t, 1024)
        .await
        .unwrap();
    assert_eq!((o.stdout.as_slice(), o.exit_code), (&b"hi there\n"[..], Some(0)));
    let o = exec_in_container(host, "sb3", "c1", argv(&["echo", "0123456789"]), t, 4)
        .await
        .unwrap();
    assert_eq!((o.stdout.as_slice(), o.truncated), (&b"0123"[..], true), "capped");
    let o = exec_in_container(host, "sb3", "c1", argv(&["false", "a", "b"]), t, 4)
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(2));
    tokio::time::pause();
    let e = exec_in_container(host, "sb3", "c1", argv(&["sleep", "9"]), Duration::from_secs(1), 4)
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::DeadlineExceeded(_)), "{e}");
    assert!(e.to_string().contains("did not end within 1 s"), "{e}");
    let e = exec_in_container(host, "sb3", "nope", argv(&["true"]), t, 4)
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::NotFound(_)), "{e}");
}
