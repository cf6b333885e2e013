//! Every step of a lifecycle can fail, and a failure leaves nothing (issue #27). For each
//! call below, a run without faults records the steps the fakes see, in order: processes
//! started, /dev/kvm opened, TAPs and veths made, addresses added, waits for a child,
//! calls to a pod's instance. The list is checked against the one written here (and in
//! docs/faults.md). Then, for each step, a fresh rig fails exactly that step; the call
//! must fail with the injected cause in its error, and the node must be as it was before:
//! the table, the cgroups, the processes, TAPs, veths, bridge addresses, host numbers and
//! the instances' files.
//!
//! Free's steps (removing cgroups and veths) are failed for good instead, as a cgroup
//! that stays busy or a device that will not go does (the runtime retries a removal, so a
//! one-time failure mends itself): Free must fail naming the step, keep the workload
//! listed, and a second Free once the fault is gone must leave the node as it was before
//! the workload was made.

use super::instance::{instance, rig, Rig};
use crate::runtime::error::RuntimeError;
use crate::runtime::launcher::testing::Faults;
use crate::runtime::spec::CellSpec;
use crate::runtime::Kind;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type Made<'a> = Pin<Box<dyn Future<Output = Result<(), RuntimeError>> + 'a>>;
/// A fresh node for one run.
type Rigged = Pin<Box<dyn Future<Output = Rig>>>;

/// What a failed call must not leave behind.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    table: Vec<(Kind, String)>,
    cgroups: Vec<String>,
    processes: usize,
    taps_open: Vec<String>,
    veths: Vec<String>,
    addresses: Vec<(String, String)>,
    host_numbers: Vec<u8>,
    files: Vec<String>,
    /// What the image store holds in `tmp/` (a node without one: nothing).
    store_tmp: Vec<String>,
}

fn node(r: &Rig) -> Node {
    let table = r.rt.host.table();
    let mut cgroups = Vec::new();
    let mut todo = vec![r.root.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                cgroups.push(e.path().strip_prefix(&r.root).unwrap().to_string_lossy().into_owned());
                todo.push(e.path());
            }
        }
    }
    cgroups.sort();
    Node {
        table: (table.list(None).iter()).map(|w| (w.kind(), w.name())).collect(),
        cgroups,
        processes: r.fake.running(),
        taps_open: (r.devices.taps().into_iter())
            .filter(|t| r.devices.tap_alive(t))
            .collect(),
        veths: r.devices.veths.lock().unwrap().keys().cloned().collect(),
        addresses: r.devices.addresses.lock().unwrap().clone(),
        host_numbers: table.hosts.iter().copied().collect(),
        files: (std::fs::read_dir(&r.instances).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        store_tmp: (r.rt.host.images.as_ref().ok().into_iter())
            .flat_map(|i| {
                std::fs::read_dir(i.store_usage().0.join("tmp"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

/// The node once it is `want` again, or as it is after 5 s: processes end as their exits
/// are delivered, so the reaping gets a moment.
async fn settled(r: &Rig, want: &Node) -> Node {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while node(r) != *want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node(r)
}

fn wire(r: &Rig) -> Arc<Faults> {
    let f = Arc::new(Faults::default());
    *r.fake.faults.lock().unwrap() = Some(f.clone());
    *r.devices.faults.lock().unwrap() = Some(f.clone());
    *r.children.faults.lock().unwrap() = Some(f.clone());
    *r.children.pods.faults.lock().unwrap() = Some(f.clone());
    f
}

/// Runs `call` once to record its steps (they must be `steps`), then fails each in turn.
async fn each_step_fails_and_leaves_nothing(
    what: &str,
    node_for: fn() -> Rigged,
    call: for<'a> fn(&'a Rig) -> Made<'a>,
    steps: &[&str],
) {
    let r = node_for().await;
    let faults = wire(&r);
    call(&r).await.unwrap_or_else(|e| panic!("{what} without faults: {e}"));
    assert_eq!(
        faults.seen(),
        steps,
        "the steps of {what} (list them here and in docs/faults.md)"
    );
    for (n, step) in steps.iter().enumerate() {
        let r = node_for().await;
        let faults = wire(&r);
        let before = node(&r);
        faults.arm(n);
        let e = match call(&r).await {
            Err(e) => e,
            Ok(()) => panic!("{what}: step {n} ({step}) failed, yet the call succeeded"),
        };
        assert!(
            e.to_string().contains("injected"),
            "{what}: step {n} ({step}): the error says what failed: {e}"
        );
        assert_eq!(
            settled(&r, &before).await,
            before,
            "{what}: step {n} ({step}) left something (error: {e})"
        );
    }
}

/// A cell's steps: its init (the holder of its namespaces), then the starter of its
/// executables.
const CELL: &[&str] = &["start the cell's init", "prepare the cell's starter"];
/// A VM's: /dev/kvm, its TAP, its VMM's cell, the VMM.
const VM: &[&str] = &[
    "open /dev/kvm",
    "make the TAP",
    "start the cell's init",
    "prepare the cell's starter",
    "start the VMM",
];
const SERVES: &str = "wait for the child to serve";
/// RunPod's for `run_pod`'s two containers: Spawn's, the image given, then each
/// container's cell and entrypoint.
const RUN_POD: [&str; 11] = [
    VM[0],
    VM[1],
    VM[2],
    VM[3],
    VM[4],
    SERVES,
    "give the instance an image",
    "make a container's cell",
    "start a container's entrypoint",
    "make a container's cell",
    "start a container's entrypoint",
];

fn plain() -> Rigged {
    Box::pin(async { rig() })
}

fn no_kvm() -> Rigged {
    Box::pin(async {
        let r = rig();
        *r.devices.kvm_missing.lock().unwrap() = Some("/dev/kvm: no such device".into());
        r
    })
}

/// The image `with_an_image` holds.
const IMAGE: &str = "registry.test/app:1";

/// A node with an image store holding `IMAGE` (one small layer, `/bin/app` its command),
/// loaded as a parent gives a child one: no registry.
fn with_an_image() -> Rigged {
    Box::pin(async {
        use crate::image::load::{Offer, OfferedLayer};
        use crate::image::unpack::testing::{tar_of, E};
        use crate::image::Digest;
        let mut images = None;
        let r = super::instance::rig_with(|rt| {
            let dir = rt.host.root.path().parent().unwrap().to_owned();
            let i = crate::image::catalog::Images::open(
                &dir.join("images"),
                64 << 20,
                &dir.join("registries.toml"),
                &[],
                &[],
            );
            let i = Arc::new(i.unwrap());
            rt.host_mut().images = Ok(i.clone());
            images = Some(i);
        });
        let layer = tar_of(&[E::Dir("bin/"), E::File("bin/app", b"#!/bin/sh\n", 0o755)]);
        let diff = Digest::of(&layer);
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/app"]},
            "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]},
        });
        let config = config.to_string().into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": diff.to_string(), "size": layer.len()}],
        });
        let manifest = manifest.to_string().into_bytes();
        let offer = Offer {
            reference: IMAGE.into(),
            digest: Digest::of(&manifest),
            manifest_json: manifest,
            config_json: config,
            layers: vec![OfferedLayer {
                digest: diff,
                size: layer.len() as u64,
                sent: true,
            }],
        };
        let mut data = futures_util::stream::iter(vec![Ok(layer)]);
        images.unwrap().load(offer, &mut data).await.unwrap();
        r
    })
}

fn run_executable(r: &Rig) -> Made<'_> {
    Box::pin(async move { r.rt.run_executable(super::exe("job", None)).await.map(drop) })
}

fn run_executable_in_a_cell(r: &Rig) -> Made<'_> {
    Box::pin(async move {
        r.rt.run_cell(CellSpec::named("web"), None, "owner").await?;
        match r.rt.run_executable(super::exe("job", Some("web"))).await {
            Ok(_) => Ok(()),
            // The cell was there before the executable: only the executable must go.
            Err(e) => {
                r.rt.stop(Kind::Cell, "web", libc::SIGKILL, Duration::ZERO).await?;
                r.rt.free(Kind::Cell, "web").await?;
                Err(e)
            }
        }
    })
}

fn run_cell(r: &Rig) -> Made<'_> {
    Box::pin(async move { r.rt.run_cell(CellSpec::named("web"), None, "owner").await.map(drop) })
}

fn run_cell_from_an_image(r: &Rig) -> Made<'_> {
    Box::pin(async move {
        let image = crate::runtime::spec::ImageRequest {
            reference: IMAGE.into(),
            policy: crate::image::catalog::PullPolicy::Never,
            credentials: None,
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            user: None,
            no_entrypoint: false,
            io: Default::default(),
            ports: Vec::new(),
            volumes: Vec::new(),
            mounts: Vec::new(),
        };
        r.rt.run_cell(CellSpec::named("web"), Some(image), "owner")
            .await
            .map(drop)
    })
}

fn run_vm(r: &Rig) -> Made<'_> {
    Box::pin(async move {
        let spec = super::vm::vm_spec(&r.rt.host.node_kernel, "v1", Duration::from_secs(10));
        r.rt.run_vm(spec).await.map(drop)
    })
}

fn spawn(r: &Rig) -> Made<'_> {
    Box::pin(async move { r.rt.spawn(instance("c1", Duration::from_secs(10))).await.map(drop) })
}

fn spawn_cell(r: &Rig) -> Made<'_> {
    Box::pin(async move {
        let mut spec = instance("c1", Duration::from_secs(10));
        spec.isolation = None;
        r.rt.spawn(spec).await.map(drop)
    })
}

fn run_pod(r: &Rig) -> Made<'_> {
    Box::pin(async move {
        use crate::runtime::pod::spec::RestartPolicy;
        let spec = super::pod::pod("web", RestartPolicy::Always, &["app", "side"]);
        crate::runtime::pod::run(&r.rt.host, spec, super::pod::images(2))
            .await
            .map(drop)
    })
}

#[tokio::test]
async fn run_executable_each_step() {
    each_step_fails_and_leaves_nothing(
        "RunExecutable",
        plain,
        run_executable,
        &[CELL[0], CELL[1], "start an executable"],
    )
    .await;
}

#[tokio::test]
async fn run_executable_in_a_cell_each_step() {
    each_step_fails_and_leaves_nothing(
        "RunExecutable in a cell",
        plain,
        run_executable_in_a_cell,
        &[CELL[0], CELL[1], "start an executable"],
    )
    .await;
}

#[tokio::test]
async fn run_cell_each_step() {
    each_step_fails_and_leaves_nothing("RunCell", plain, run_cell, CELL).await;
}

/// The image's root and entrypoint: the cell's steps, then its entrypoint's start. The
/// pull (here: none, the image is there) and the unpack are the store's, failed in
/// `image/`'s own tests.
#[tokio::test]
async fn run_cell_from_an_image_each_step() {
    each_step_fails_and_leaves_nothing(
        "RunCell (image)",
        with_an_image,
        run_cell_from_an_image,
        &[CELL[0], CELL[1], "start an executable"],
    )
    .await;
}

#[tokio::test]
async fn run_virtual_machine_each_step() {
    each_step_fails_and_leaves_nothing("RunVirtualMachine", plain, run_vm, VM).await;
}

#[tokio::test]
async fn spawn_vm_each_step() {
    each_step_fails_and_leaves_nothing("Spawn (VM)", plain, spawn, &[VM[0], VM[1], VM[2], VM[3], VM[4], SERVES]).await;
}

#[tokio::test]
async fn spawn_cell_each_step() {
    each_step_fails_and_leaves_nothing(
        "Spawn (cell)",
        no_kvm,
        spawn_cell,
        &[CELL[0], CELL[1], "start an executable", "make the veth", SERVES],
    )
    .await;
}

#[tokio::test]
async fn run_pod_each_step() {
    each_step_fails_and_leaves_nothing("RunPod", plain, run_pod, &RUN_POD).await;
}

/// A pod whose instance died is given a new one (`pod/replace.rs`): the dead one taken
/// apart (its cgroups), then RunPod's steps but the ports. Each of the new instance's
/// steps fails in turn: nothing of the attempt stays (the node is as before the pod was
/// made, the pod listed), the pod says why, and after its back-off it gets one.
#[tokio::test]
async fn a_pods_new_instance_each_step() {
    const RELEASE: [&str; 2] = [REMOVE, REMOVE];
    let steps = RUN_POD;
    use crate::runtime::pod::spec::BACKOFF_BASE;
    use crate::runtime::tests::pod::{kill_instance, until};
    for armed in std::iter::once(None).chain((0..steps.len()).map(Some)) {
        let r = rig();
        let empty = node(&r);
        run_pod(&r).await.unwrap();
        let faults = wire(&r);
        faults.arm(armed.map_or(usize::MAX, |n| n + RELEASE.len()));
        kill_instance(&r, "web");
        if let Some(n) = armed {
            let step = steps[n];
            let v = until(&r, "web", "told why", |v| v.reason.contains("injected")).await;
            assert!(
                v.reason.contains("the new one could not be made"),
                "step {n} ({step}): {v:?}"
            );
            let want = Node {
                table: vec![(Kind::Pod, "web".into())],
                ..empty
            };
            assert_eq!(
                settled(&r, &want).await,
                want,
                "a new instance, step {n} ({step}) failed: something was left"
            );
            // The failed instance was killed: what it ran went with it.
            r.children.pods.lose_runs();
            tokio::time::pause();
            tokio::time::advance(BACKOFF_BASE).await;
            tokio::time::resume();
        }
        let v = until(&r, "web", "in a new instance", |v| {
            v.instance_restarts == 1 && v.reason.is_empty()
        })
        .await;
        assert!(v.containers.iter().all(|c| c.restarts == 1), "{armed:?}: {v:?}");
        if armed.is_none() {
            let seen = faults.seen();
            assert_eq!(seen[..2], RELEASE, "the dead instance taken apart first");
            assert_eq!(
                seen[2..],
                steps,
                "the steps of a pod's new instance (and in docs/faults.md)"
            );
        }
    }
}

/// Makes `kind` `name` with `make` (no faults), stops it, then frees it: once without
/// faults to record Free's steps (they must be `steps`), then with each step failing for
/// good in turn, and again once the fault is gone.
async fn each_free_step_fails_and_a_retry_frees(
    what: &str,
    node_for: fn() -> Rigged,
    make: for<'a> fn(&'a Rig) -> Made<'a>,
    (kind, name): (Kind, &str),
    steps: &[&str],
) {
    for armed in std::iter::once(None).chain((0..steps.len()).map(Some)) {
        let r = node_for().await;
        super::instance::powers_off_when_asked(&r, name);
        let empty = node(&r);
        make(&r).await.unwrap_or_else(|e| panic!("{what}: making it: {e}"));
        (r.rt.stop(kind, name, libc::SIGTERM, Duration::from_secs(1)).await)
            .unwrap_or_else(|e| panic!("{what}: stopping it: {e}"));
        let faults = wire(&r);
        if let Some(n) = armed {
            faults.arm_sticky(n);
            let step = steps[n];
            let e = match r.rt.free(kind, name).await {
                Err(e) => e,
                Ok(()) => panic!("{what}: step {n} ({step}) failed for good, yet Free succeeded"),
            };
            assert!(
                e.to_string().contains("injected"),
                "{what}: step {n} ({step}): the error says what failed: {e}"
            );
            assert!(
                r.rt.status(kind, name).is_ok(),
                "{what}: step {n} ({step}): a Free that failed keeps it listed, to be tried again"
            );
            faults.disarm();
        }
        r.rt.free(kind, name)
            .await
            .unwrap_or_else(|e| panic!("{what}: Free ({armed:?} failed before): {e}"));
        if armed.is_none() {
            assert_eq!(
                faults.seen(),
                steps,
                "the steps of {what} (list them here and in docs/faults.md)"
            );
        }
        assert_eq!(
            settled(&r, &empty).await,
            empty,
            "{what}: after Free ({armed:?} failed before)"
        );
    }
}

const REMOVE: &str = "remove a cgroup";

#[tokio::test]
async fn free_each_step() {
    let free = each_free_step_fails_and_a_retry_frees;
    free(
        "Free executable",
        plain,
        run_executable,
        (Kind::Executable, "job"),
        &[REMOVE, REMOVE],
    )
    .await;
    free("Free cell", plain, run_cell, (Kind::Cell, "web"), &[REMOVE]).await;
    free(
        "Free cell (image)",
        with_an_image,
        run_cell_from_an_image,
        (Kind::Cell, "web"),
        &[REMOVE],
    )
    .await;
    free(
        "Free virtual machine",
        plain,
        run_vm,
        (Kind::VirtualMachine, "v1"),
        &[REMOVE, REMOVE],
    )
    .await;
    free(
        "Free instance (VM)",
        plain,
        spawn,
        (Kind::Instance, "c1"),
        &[REMOVE, REMOVE],
    )
    .await;
    free(
        "Free instance (cell)",
        no_kvm,
        spawn_cell,
        (Kind::Instance, "c1"),
        &[REMOVE, REMOVE, "remove the veth"],
    )
    .await;
    free("Free pod", plain, run_pod, (Kind::Pod, "web"), &[REMOVE, REMOVE]).await;
}
