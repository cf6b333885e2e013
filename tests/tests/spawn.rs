//! Appliance tier, issue #4: Spawn. The appliance (TCG, emulated SVM) boots a copy of auraed
//! in a microVM with its own VMM; the test reaches the child, and the child's own child,
//! through the appliance's forwarding, checks who is who over mTLS, runs an executable in
//! the child, and stops and frees everything.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{appliance_or_skip, rt, Appliance, Client};
use auraed::pb;
use std::time::Duration;
use tonic::Code;

const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// Spawn → serving, on the reference machine: 4 s for a child, ~17 s for a VM grandchild;
/// 37 s was seen on a busy machine 1.7× slower. Scaled by `Appliance::budget`.
const SPAWN_BUDGET: Duration = Duration::from_secs(180);

fn instance_ref(name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::Instance as i32,
        name: name.into(),
    }
}

/// Spawns `name` with the test's budget as the call's gRPC deadline, which auraed follows
/// (and passes down when the call is forwarded), so a slow machine only makes it wait longer.
async fn spawn(a: &Appliance, c: &Client, name: &str) -> pb::InstanceStatus {
    let budget = a.budget(SPAWN_BUDGET);
    let mut req = tonic::Request::new(pb::Instance {
        name: name.into(),
        ..Default::default()
    });
    req.set_timeout(budget);
    tokio::time::timeout(budget + Duration::from_secs(10), c.runtime.clone().spawn(req))
        .await
        .expect("Spawn answered within its deadline")
        .unwrap_or_else(|e| panic!("Spawn {name}: {e:?}"))
        .into_inner()
}

async fn stop_and_free(c: &Client, name: &str) -> pb::InstanceStatus {
    let w = c
        .workloads
        .clone()
        .stop(pb::StopRequest {
            workload: Some(instance_ref(name)),
            signal: 0,
            grace_period_millis: 2000,
        })
        .await
        .unwrap()
        .into_inner();
    c.workloads.clone().free(instance_ref(name)).await.unwrap();
    match w.status {
        Some(pb::workload_status::Status::Instance(i)) => i,
        other => panic!("{other:?}"),
    }
}

async fn node_view(c: &Client) -> String {
    c.on_node("ls /sys/fs/cgroup/aurae; ip -o link | cut -d: -f2; cat /sys/fs/cgroup/aurae/memory.current")
        .await
}

#[test]
fn spawn_a_child_and_a_grandchild_and_reach_them_through_the_appliance() {
    let build = appliance_or_skip!();
    let a = Appliance::boot(&build, BOOT_DEADLINE);
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let me = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        let before = c.on_node("ls /sys/fs/cgroup/aurae; ip -o link | cut -d: -f2").await;

        let child = spawn(&a, &c, "c1").await;
        assert_eq!(child.state, pb::WorkloadState::Running as i32, "{child:?}");
        assert_eq!(child.isolation, pb::IsolationKind::Vm as i32);
        assert_eq!(child.spiffe_id, format!("{}/instance/c1", me.spiffe_id));
        assert!(
            child.address.starts_with("10.254.0.") && child.address.ends_with(":8443"),
            "{child:?}"
        );
        let tap = child.vm.clone().unwrap().tap_device;
        assert!(!tap.is_empty());

        // The child, reached through the appliance: its own pid 1, kernel and identity; it
        // sees the appliance (not the test's client certificate) as its caller.
        let cc = Client::connect_to(&a, Some("c1")).await;
        let info = cc.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!((info.pid, info.mode), (1, pb::Mode::Pid1 as i32), "{info:?}");
        assert_eq!(info.hostname, "c1");
        assert_eq!(info.kernel_release, me.kernel_release, "the parent's own kernel");
        assert_eq!(info.spiffe_id, child.spiffe_id);
        assert_eq!(info.peer_spiffe_id, me.spiffe_id, "mTLS hop: the parent is the caller");
        assert!(info.kvm_usable, "{info:?}");

        // An executable in the child.
        cc.exec(pb::Executable {
            name: "v".into(),
            argv: vec!["/bin/auraed".into(), "--version".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(cc.wait("v").await.exit_code, Some(0));
        assert_eq!(cc.stdout("v").await.trim(), format!("auraed {}", me.auraed_version));

        // Depth two: the child spawns a grandchild; the test reaches it through both.
        let g = spawn(&a, &cc, "g1").await;
        assert_eq!(g.spiffe_id, format!("{}/instance/g1", child.spiffe_id));
        let gc = Client::connect_to(&a, Some("c1/g1")).await;
        let ginfo = gc.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!((ginfo.pid, ginfo.hostname.as_str()), (1, "g1"));
        assert_eq!(ginfo.spiffe_id, g.spiffe_id);
        assert_eq!(ginfo.peer_spiffe_id, child.spiffe_id);

        // A child that cannot serve within the time allowed: DEADLINE_EXCEEDED, saying how
        // far it got, and nothing left behind (no instance, cell, TAP or image).
        let e = c
            .runtime
            .clone()
            .spawn(pb::Instance {
                name: "late".into(),
                serving_timeout_millis: 300,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("within"), "{e:?}");
        let st = c.workloads.clone().status(instance_ref("late")).await.unwrap_err();
        assert_eq!(st.code(), Code::NotFound, "{st:?}");

        // Unknown instances and bad requests: clear errors, nothing created.
        let e = Client::connect_to(&a, Some("nope"))
            .await
            .node
            .clone()
            .info(pb::NodeInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(
            e.message().contains("aurae-instance") && e.message().contains("nope"),
            "{e:?}"
        );
        for (req, code, field) in [
            (
                pb::Instance {
                    name: "Bad".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
                "name",
            ),
            (
                pb::Instance {
                    name: "x1".into(),
                    memory_bytes: 1 << 20,
                    ..Default::default()
                },
                Code::InvalidArgument,
                "memory_bytes",
            ),
            (
                pb::Instance {
                    name: "x2".into(),
                    svid_ttl_seconds: 5,
                    ..Default::default()
                },
                Code::InvalidArgument,
                "svid_ttl_seconds",
            ),
            (
                pb::Instance {
                    name: "c1".into(),
                    ..Default::default()
                },
                Code::AlreadyExists,
                "c1",
            ),
        ] {
            let e = c.runtime.clone().spawn(req).await.unwrap_err();
            assert_eq!(e.code(), code, "{e:?}");
            assert!(e.message().contains(field), "names {field}: {e:?}");
        }

        // Stop and free, innermost first; the child's VM, TAP and cell go.
        let gs = stop_and_free(&cc, "g1").await;
        assert_eq!(gs.state, pb::WorkloadState::Stopped as i32, "{gs:?}");
        let cs = stop_and_free(&c, "c1").await;
        assert_eq!(cs.state, pb::WorkloadState::Stopped as i32, "{cs:?}");
        let after = c.on_node("ls /sys/fs/cgroup/aurae; ip -o link | cut -d: -f2").await;
        assert_eq!(after, before, "no cell, cgroup or TAP ({tap}) left");
        let images = c.on_node("ls /run/aurae/instances | wc -l").await;
        assert_eq!(images.trim(), "0", "the child's image (and its keys) are gone");
        let view = node_view(&c).await;
        let mem: u64 = view.lines().last().unwrap().trim().parse().unwrap();
        assert!(
            mem < 64 << 20,
            "the guest memory was given back: {mem} B charged to workloads\n{view}"
        );
        let l = c
            .workloads
            .clone()
            .list(pb::ListRequest {
                kind: pb::WorkloadKind::Instance as i32,
            })
            .await;
        assert!(l.unwrap().into_inner().workloads.is_empty());
    });
}

/// Where KVM is unusable (the appliance booted without SVM), Spawn falls back to a cell: the
/// child auraed runs as a daemon in a cell of its own with a veth onto the bridge, says so in
/// its node info, runs workloads, and spawns a grandchild (a cell again) in turn.
#[test]
fn without_kvm_spawn_falls_back_to_a_cell() {
    let build = appliance_or_skip!();
    let a = Appliance::boot_with(&build, BOOT_DEADLINE, &[("CPU", "qemu64,-svm")]);
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let me = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert!(!me.kvm_usable, "booted without SVM: {me:?}");
        let before = c
            .on_node("ls -d /sys/fs/cgroup/aurae/*/; ip -o link | cut -d: -f2")
            .await;

        let e = c
            .runtime
            .clone()
            .spawn(pb::Instance {
                name: "v1".into(),
                isolation: pb::IsolationKind::Vm as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with("isolation"), "{e:?}");

        let child = spawn(&a, &c, "c1").await;
        assert_eq!(child.isolation, pb::IsolationKind::Cell as i32, "{child:?}");
        assert!(child.vm.is_none() && child.pid > 0);
        let cc = Client::connect_to(&a, Some("c1")).await;
        let info = cc.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(
            info.isolation,
            pb::IsolationKind::Cell as i32,
            "node info says cell: {info:?}"
        );
        assert_eq!(info.mode, pb::Mode::Daemon as i32);
        assert_eq!(info.hostname, "c1");
        assert_eq!(info.spiffe_id, child.spiffe_id);
        assert_eq!(info.peer_spiffe_id, me.spiffe_id);
        assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);
        assert!(info.cgroup_controllers.contains(&"memory".to_owned()), "{info:?}");

        let (st, out) = cc.run_argv("v", &["/bin/auraed", "--version"]).await;
        assert_eq!(st.exit_code, Some(0));
        assert_eq!(out.trim(), format!("auraed {}", me.auraed_version));

        let g = spawn(&a, &cc, "g1").await;
        assert_eq!(g.isolation, pb::IsolationKind::Cell as i32);
        let gc = Client::connect_to(&a, Some("c1/g1")).await;
        let ginfo = gc.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(
            (ginfo.hostname.as_str(), ginfo.isolation),
            ("g1", pb::IsolationKind::Cell as i32)
        );
        assert_eq!(ginfo.peer_spiffe_id, child.spiffe_id);

        assert_eq!(stop_and_free(&cc, "g1").await.state, pb::WorkloadState::Stopped as i32);
        assert_eq!(stop_and_free(&c, "c1").await.state, pb::WorkloadState::Stopped as i32);
        let after = c
            .on_node("ls -d /sys/fs/cgroup/aurae/*/; ip -o link | cut -d: -f2")
            .await;
        assert_eq!(after, before, "no cell, cgroup or veth left");
        let files = c.on_node("ls /run/aurae/instances | wc -l").await;
        assert_eq!(files.trim(), "0", "the child's keys are gone");
    });
}
