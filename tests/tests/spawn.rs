//! Appliance tier, issue #4: Spawn. The appliance (TCG, emulated SVM) boots a copy of auraed
//! in a microVM with its own VMM; the test reaches the child, and the child's own child,
//! through the appliance's forwarding, checks who is who over mTLS, runs an executable in
//! the child, and stops and frees everything.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{appliance_or_skip, eventually, rt, Appliance, Client, Fields, TestRoles};
use auraed::pb;
use auraed::pki::policy::Role;
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
    spawn_with(a, c, name, 0).await
}

/// `spawn` with an SVID lifetime (0: the default hour).
async fn spawn_with(a: &Appliance, c: &Client, name: &str, svid_ttl_seconds: u32) -> pb::InstanceStatus {
    let budget = a.budget(SPAWN_BUDGET);
    let mut req = tonic::Request::new(pb::Instance {
        name: name.into(),
        svid_ttl_seconds,
        ..Default::default()
    });
    req.set_timeout(budget);
    let began = std::time::Instant::now();
    let i = tokio::time::timeout(budget + Duration::from_secs(10), c.runtime.clone().spawn(req))
        .await
        .expect("Spawn answered within its deadline")
        .unwrap_or_else(|e| panic!("Spawn {name}: {e:?}"))
        .into_inner();
    eprintln!("spawn {name}: serving after {:.1} s", began.elapsed().as_secs_f64());
    i
}

async fn stop_and_free(c: &Client, name: &str) -> pb::InstanceStatus {
    match c.stop_and_free(instance_ref(name), 2000).await.status {
        Some(pb::workload_status::Status::Instance(i)) => i,
        other => panic!("{other:?}"),
    }
}

/// Instance `name`'s status, as `Workloads.Status` gives it.
async fn instance_status(c: &Client, name: &str) -> pb::InstanceStatus {
    match (c.workloads.clone().status(instance_ref(name)).await)
        .unwrap()
        .into_inner()
        .status
    {
        Some(pb::workload_status::Status::Instance(st)) => st,
        other => panic!("{other:?}"),
    }
}

/// Stops instance `i`'s VMM (SIGSTOP: the process is there, its guest answers nothing);
/// the node's events from then on, for `found_hung`.
async fn hang(c: &Client, i: &pb::InstanceStatus) -> tonic::Streaming<pb::Event> {
    let vm = i.vm.clone().expect("a VM instance");
    let events = c
        .workloads
        .clone()
        .events(pb::EventsRequest {
            after: 0,
            from_now: true,
        })
        .await
        .unwrap()
        .into_inner();
    c.on_node(&format!("kill -STOP {}", vm.vmm_pid)).await;
    events
}

/// What the issue promises of a child that stopped answering (`hang`): found, killed,
/// FAILED saying why, told, its TAP gone, forwarding to it UNAVAILABLE at once.
async fn found_hung(
    a: &Appliance,
    c: &Client,
    through: &Client,
    i: &pb::InstanceStatus,
    mut events: tonic::Streaming<pb::Event>,
) {
    let vm = i.vm.clone().expect("a VM instance");
    let status = || instance_status(c, &i.name);
    // Found within 3 × (5 s apart + 5 s to answer) of its last answer.
    let failed = eventually(a.budget(Duration::from_secs(45)), || async {
        status().await.state == pb::WorkloadState::Failed as i32
    })
    .await;
    let st = status().await;
    assert!(failed, "reported FAILED: {st:?}");
    assert!(
        st.error
            .starts_with("the child stopped answering: 3 health checks in a row, 5 s apart"),
        "the reason: {st:?}"
    );
    let told = tokio::time::timeout(a.budget(Duration::from_secs(45)), async {
        while let Some(e) = events.message().await.unwrap() {
            if e.name == i.name && e.kind == pb::WorkloadKind::Instance as i32 {
                return e;
            }
        }
        panic!("the events stream ended")
    })
    .await
    .expect("the failure is told");
    assert_eq!(told.r#type, pb::EventType::Failed as i32, "{told:?}");
    assert!(told.reason.starts_with("the child stopped answering"), "{told:?}");
    let links = c.on_node("ip -o link | cut -d: -f2").await;
    assert!(!links.contains(&vm.tap_device), "its TAP went with its VMM: {links}");
    let e = tokio::time::timeout(
        a.budget(Duration::from_secs(5)),
        through.node.clone().info(pb::NodeInfoRequest {}),
    )
    .await
    .expect("answered at once, not at a timeout")
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("has ended"), "{e:?}");
}

/// Runs `argv` inside instance `cc` in a privileged cell sharing the instance's network and
/// mounts (where a compromised workload would find the instance's keys). Returns the exit code and
/// everything it printed.
async fn run_inside(cc: &Client, argv: Vec<String>) -> (Option<i32>, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if cc.cell_status_opt("attack").await.is_none() {
        cc.cell(pb::Cell {
            name: "attack".into(),
            isolation: Some(pb::CellIsolation {
                share_host_network: true,
                share_host_mount: true,
                ..Default::default()
            }),
            // The worst case: a workload that already has everything the instance has.
            confinement: Some(pb::CellConfinement {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let name = format!("attack-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    cc.exec(pb::Executable {
        name: name.clone(),
        argv,
        cell: "attack".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = cc.wait(&name).await;
    let out = cc
        .log_entries(&name, false)
        .await
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.line).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    cc.free(&name).await;
    (st.exit_code, out)
}

/// A node an attacker inside a child dials: name on its certificate, address, and the
/// SPIFFE ID aer must see (None: a node the root certified, as aer requires by default).
#[derive(Clone, Copy)]
struct Dial<'a> {
    name: &'a str,
    addr: &'a str,
    id: Option<&'a str>,
}

/// The appliance, from its children.
const PARENT: Dial<'static> = Dial {
    name: "auraed",
    addr: "10.254.0.1:8443",
    id: None,
};

/// `aer ARGS` from inside instance `cc` with the certificate `{pki}/{stem}.crt` against
/// `to`.
async fn aer_inside(cc: &Client, pki: &str, stem: &str, to: Dial<'_>, args: &[&str]) -> (Option<i32>, String) {
    let mut argv: Vec<String> = vec![
        "/bin/aer".into(),
        "--addr".into(),
        to.addr.into(),
        "--server-name".into(),
        to.name.into(),
        "--timeout".into(),
        "30".into(),
        "--ca".into(),
        format!("{pki}/ca.crt"),
        "--cert".into(),
        format!("{pki}/{stem}.crt"),
        "--key".into(),
        format!("{pki}/{stem}.key"),
    ];
    if let Some(id) = to.id {
        argv.extend(["--server-id".into(), id.into()]);
    }
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    run_inside(cc, argv).await
}

/// A compromised instance signs itself `client/admin` with its own spawn CA: every node it
/// tries (`targets`: a client of it, and how the attacker dials it) refuses the certificate.
async fn assert_forged_admin_refused(cc: &Client, pki: &str, targets: &[(&Client, Dial<'_>)]) {
    let (code, out) = run_inside(
        cc,
        [
            "/bin/auraed",
            "pki",
            "client",
            pki,
            "admin",
            "--issuer",
            "spawn-ca",
            "--role",
            "admin",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, Some(0), "the child can sign with its own CA: {out}");
    for (target, to) in targets {
        let (before, addr) = (workloads(target).await, to.addr);
        for args in [&["node", "info"][..], &["node", "shutdown"]] {
            let (code, out) = aer_inside(cc, pki, "admin", *to, args).await;
            assert_eq!(code, Some(1), "forged client/admin, aer {args:?} against {addr}: {out}");
            assert!(
                out.contains("permission denied: the client certificate is refused: spiffe://aurae.local/client/admin is not signed by the root CA"),
                "forged client/admin against {addr}: {out}"
            );
        }
        assert_eq!(before, workloads(target).await);
    }
}

/// Kind, name and state of every workload on the node behind `c`.
async fn workloads(c: &Client) -> Vec<String> {
    let l = c
        .workloads
        .clone()
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    l.workloads
        .iter()
        .map(|w| match &w.status {
            Some(pb::workload_status::Status::Executable(e)) => format!("executable {} {}", e.name, e.state),
            Some(pb::workload_status::Status::Cell(e)) => format!("cell {} {}", e.name, e.state),
            Some(pb::workload_status::Status::VirtualMachine(e)) => format!("vm {} {}", e.name, e.state),
            Some(pb::workload_status::Status::Instance(e)) => format!("instance {} {}", e.name, e.state),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Every attack of a spawned instance's SVID on another node (its parent, a sibling) is
/// PERMISSION_DENIED, and the attacked node's workloads are what they were.
async fn assert_instance_has_no_rights(cc: &Client, pki: &str, me: &str, target: &Client, to: Dial<'_>) {
    let (before, addr) = (workloads(target).await, to.addr);
    for args in [
        &["health"][..],
        &["node", "info"],
        &["exec", "pwned", "--", "/bin/true"],
        &["vm", "run", "pwned"],
        &["node", "shutdown"],
    ] {
        let (code, out) = aer_inside(cc, pki, "server", to, args).await;
        assert_eq!(code, Some(1), "aer {args:?} against {addr}: {out}");
        assert!(
            out.contains(&format!("permission denied: {me} has no role on this node")),
            "aer {args:?} against {addr}: {out}"
        );
    }
    assert_eq!(
        before,
        workloads(target).await,
        "the attacked node's workloads are unchanged"
    );
}

/// A reader reads and an operator operates, at `instance` (reached through forwarding) as
/// on the appliance: each node authorizes the original caller with its own policy.
async fn assert_roles_hold(a: &Appliance, roles: &TestRoles, instance: Option<&str>, peer: &str) {
    let at = instance.unwrap_or("the appliance");
    let r = Client::connect_with(a.target_as(roles.tls("test-reader")), instance).await;
    r.workloads.clone().list(pb::ListRequest::default()).await.unwrap();
    let info = r.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            info.caller_spiffe_id.as_str(),
            info.caller_role.as_str(),
            info.forwarded,
            info.peer_spiffe_id.as_str()
        ),
        (
            "spiffe://aurae.local/client/test-reader",
            "reader",
            instance.is_some(),
            peer
        ),
        "at {at}"
    );
    let e = r
        .runtime
        .clone()
        .run_executable(pb::Executable {
            name: "denied".into(),
            argv: vec!["/bin/true".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "at {at}: {e:?}");
    assert!(e.message().contains("RunExecutable needs operator"), "at {at}: {e:?}");
    let e = r
        .node
        .clone()
        .shutdown(pb::ShutdownRequest::default())
        .await
        .unwrap_err();
    assert!(e.message().contains("Shutdown needs admin"), "at {at}: {e:?}");
    let o = Client::connect_with(a.target_as(roles.tls("test-operator")), instance).await;
    let info = o.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.caller_role, "operator", "at {at}");
    let e = o
        .node
        .clone()
        .shutdown(pb::ShutdownRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "at {at}: {e:?}");
    let (st, _) = o.run_argv("op", &["/bin/auraed", "--version"]).await;
    assert_eq!(st.exit_code, Some(0), "an operator runs executables at {at}");
}

/// A child's keys as an attacker who copied them would hold them: its SVID ("server") and
/// a certificate ("forged", for `forged_id`) signed with its spawn CA.
struct Stolen {
    dir: tempfile::TempDir,
}

impl Stolen {
    async fn take(c: &Client, pki: &str, forged_id: &str) -> Stolen {
        let dir = tempfile::tempdir().unwrap();
        let get = |f: &str| format!("cat {pki}/{f}");
        let mut files = std::collections::HashMap::new();
        for f in ["server.crt", "server.key", "spawn-ca.crt", "spawn-ca.key", "ca.crt"] {
            let text = c.on_node(&get(f)).await;
            std::fs::write(dir.path().join(f), &text).unwrap();
            files.insert(f, text);
        }
        let ca = auraed::pki::Minted {
            cert_pem: files["spawn-ca.crt"].clone(),
            key_pem: files["spawn-ca.key"].clone(),
        };
        let mut m = auraed::pki::mint_svid(&ca, forged_id, "x9", &[], &[], Duration::from_secs(600)).unwrap();
        m.cert_pem.push_str(&ca.cert_pem);
        auraed::pki::write_pair(dir.path(), "forged", &m).unwrap();
        Stolen { dir }
    }

    async fn node_info(&self, a: &Appliance, stem: &str) -> Result<pb::NodeInfo, tonic::Status> {
        let t = a.target_as(auraed::pki::tls::TlsFiles::in_dir(self.dir.path(), stem));
        let c = Client::connect_with(t, None).await;
        c.node
            .clone()
            .info(pb::NodeInfoRequest {})
            .await
            .map(|r| r.into_inner())
    }
}

async fn node_view(c: &Client) -> String {
    c.on_node("ls /sys/fs/cgroup/aurae; ip -o link | cut -d: -f2; cat /sys/fs/cgroup/aurae/memory.current")
        .await
}

/// The link between this node and `child` goes down (its TAP, on the node's bridge) and
/// comes back. Meanwhile a call forwarded to the child ends at the caller's deadline,
/// saying so, and the child stays Running: an outage shorter than the health checks'
/// three misses is not a death. Once the link is up, calls reach the child again.
async fn link_down_and_up(a: &Appliance, c: &Client, child: &pb::InstanceStatus) {
    let tap = &child.vm.as_ref().unwrap().tap_device;
    let cc = Client::connect_to(a, Some(&child.name)).await;
    let info = |deadline: Duration| {
        let mut req = tonic::Request::new(pb::NodeInfoRequest {});
        req.set_timeout(deadline);
        let mut node = cc.node.clone();
        async move { node.info(req).await }
    };
    info(a.budget(Duration::from_secs(10))).await.unwrap();
    c.on_node(&format!("ip link set {tap} down")).await;
    // The call ends at its deadline (the node's DEADLINE_EXCEEDED, or this client's own
    // timer, which fires at the same moment): nothing hangs.
    let began = std::time::Instant::now();
    let e = info(Duration::from_secs(2)).await.unwrap_err();
    let took = began.elapsed();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled),
        "a call while the link is down: {e:?}"
    );
    assert!(
        took < Duration::from_secs(2) + a.budget(Duration::from_secs(1)),
        "{took:?}"
    );
    // The node itself serves on.
    c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap();
    let state = || async { instance_status(c, &child.name).await.state };
    let running = pb::WorkloadState::Running as i32;
    assert_eq!(state().await, running, "the child is not taken for dead");
    c.on_node(&format!("ip link set {tap} up")).await;
    let back = eventually(a.budget(Duration::from_secs(30)), || async {
        info(Duration::from_secs(2)).await.is_ok()
    })
    .await;
    assert!(
        back,
        "calls reach the child again once the link is up:\n{}",
        a.console_log()
    );
    assert_eq!(state().await, running);
}

#[test]
fn spawn_a_child_and_a_grandchild_and_reach_them_through_the_appliance() {
    let build = appliance_or_skip!();
    let roles = TestRoles::new(
        &build,
        &[("test-reader", Role::Reader), ("test-operator", Role::Operator)],
    );
    // Served children checked every 5 s (10 by default), so c2's hang below is found in
    // at most 30 s.
    let a = Appliance::boot_with(
        &build,
        BOOT_DEADLINE,
        &[
            ("EXTRA_LAYER", roles.layer.to_str().unwrap()),
            ("EXTRA_CMDLINE", "aurae.child_check=5"),
        ],
    );
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let me = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_roles_hold(&a, &roles, None, "spiffe://aurae.local/client/test-reader").await;
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
        assert_eq!(info.peer_spiffe_id, me.spiffe_id, "mTLS hop: the parent delivered it");
        assert_eq!(
            (
                info.caller_spiffe_id.as_str(),
                info.caller_role.as_str(),
                info.forwarded
            ),
            (me.peer_spiffe_id.as_str(), "admin", true),
            "authorized as the original caller, with the child's own policy"
        );
        assert_eq!(info.parent_spiffe_id, me.spiffe_id);
        assert!(info.kvm_usable, "{info:?}");

        // A sibling, then the attacks: c1's own SVID, used from inside c1, against the
        // parent and against c2. Both refuse everything and change nothing.
        let sibling = spawn(&a, &c, "c2").await;
        let sc = Client::connect_to(&a, Some("c2")).await;
        let pki = "/etc/aurae/pki";
        let c2 = Dial {
            name: "c2",
            addr: &sibling.address,
            id: Some(&sibling.spiffe_id),
        };
        assert_instance_has_no_rights(&cc, pki, &child.spiffe_id, &c, PARENT).await;
        assert_instance_has_no_rights(&cc, pki, &child.spiffe_id, &sc, c2).await;
        assert_forged_admin_refused(&cc, pki, &[(&c, PARENT), (&sc, c2)]).await;
        // c2 hangs: its VMM is SIGSTOPped (a guest that stops answering while its VMM
        // runs). While the parent's health checks find it, the test goes on with c1; then
        // c2 must have been killed, FAILED saying why, told as an event, its TAP gone, and
        // a call forwarded to it UNAVAILABLE at once. (A VMM SIGKILLed: pods.rs; c1 stops
        // gracefully below.)
        let c2_events = hang(&c, &sibling).await;

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
        assert_eq!(
            (ginfo.caller_spiffe_id.as_str(), ginfo.caller_role.as_str()),
            (me.peer_spiffe_id.as_str(), "admin"),
            "still the original caller two hops down"
        );
        assert_roles_hold(&a, &roles, Some("c1"), &me.spiffe_id).await;
        assert_roles_hold(&a, &roles, Some("c1/g1"), &child.spiffe_id).await;
        found_hung(&a, &c, &sc, &sibling, c2_events).await;
        c.workloads.clone().free(instance_ref("c2")).await.unwrap();

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

        // A caller that gives up after a second (`aer --timeout 1 spawn c9`): the Spawn
        // finishes or fails in a task of its own, whatever it made for c9 is removed, and
        // the name works again at once.
        let mut req = tonic::Request::new(pb::Instance {
            name: "c9".into(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(1));
        let e = c.runtime.clone().spawn(req).await.unwrap_err();
        assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");
        let settled = aurae_appliance_tests::eventually(a.budget(SPAWN_BUDGET), || async {
            a.console_log().contains("Instance c9: ") && a.console_log().contains("the name is free")
        })
        .await;
        assert!(settled, "the abandoned Spawn of c9 ended:\n{}", a.console_log());
        let st = c.workloads.clone().status(instance_ref("c9")).await.unwrap_err();
        assert_eq!(st.code(), Code::NotFound, "{st:?}");
        let left = c.on_node("ls /sys/fs/cgroup/aurae /run/aurae/instances").await;
        assert!(
            !left.lines().any(|l| l.starts_with("c9")),
            "nothing of c9 is left: {left}"
        );
        let again = spawn(&a, &c, "c9").await;
        assert_eq!(again.state, pb::WorkloadState::Running as i32, "{again:?}");
        link_down_and_up(&a, &c, &again).await;
        assert_eq!(stop_and_free(&c, "c9").await.state, pb::WorkloadState::Stopped as i32);

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
        assert!(c.list(pb::WorkloadKind::Instance).await.is_empty());
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

        // A 60 s SVID: the parent renews it (and the child its own child's) at half-life.
        let child = spawn_with(&a, &c, "c1", 60).await;
        assert_eq!(child.isolation, pb::IsolationKind::Cell as i32, "{child:?}");
        assert!(child.vm.is_none() && child.pid > 0);
        let cc = Client::connect_to(&a, Some("c1")).await;
        let info = cc.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        let born = info.clone();
        assert_eq!(
            info.isolation,
            pb::IsolationKind::Cell as i32,
            "node info says cell: {info:?}"
        );
        assert_eq!(info.mode, pb::Mode::Daemon as i32);
        assert_eq!(info.hostname, "c1");
        assert_eq!(info.spiffe_id, child.spiffe_id);
        assert_eq!(info.peer_spiffe_id, me.spiffe_id);
        assert_eq!(info.caller_spiffe_id, me.peer_spiffe_id);
        assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);
        // The cell child's SVID, from inside it, against the parent: refused.
        let pki = "/run/aurae/instances/c1";
        assert_instance_has_no_rights(&cc, pki, &child.spiffe_id, &c, PARENT).await;
        assert_forged_admin_refused(&cc, pki, &[(&c, PARENT)]).await;
        // The cell child has a root of its own: its own PKI directory, none of the node's
        // keys (with which it could act as its parent towards its siblings), no /boot.
        let (code, out) = run_inside(
            &cc,
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo etc-aurae [$(ls -A /etc/aurae)]; echo boot [$(ls -A /boot)]; \
                     echo own [$(ls {pki} | grep -c key)]; \
                     [ -e /etc/aurae/pki/spawn-ca.key ] && echo node key visible; true"
                ),
            ],
        )
        .await;
        assert_eq!(code, Some(0), "{out}");
        let f = Fields::parse(&out);
        assert_eq!(f.get("etc-aurae"), "[]", "{out}");
        assert_eq!(f.get("boot"), "[]", "{out}");
        assert_ne!(f.get("own"), "[0]", "its own keys are there: {out}");
        assert!(!out.contains("node key visible"), "{out}");
        assert!(info.cgroup_controllers.contains(&"memory".to_owned()), "{info:?}");

        let (st, out) = cc.run_argv("v", &["/bin/auraed", "--version"]).await;
        assert_eq!(st.exit_code, Some(0));
        assert_eq!(out.trim(), format!("auraed {}", me.auraed_version));

        let g = spawn(&a, &cc, "g1").await;
        assert_eq!(g.isolation, pb::IsolationKind::Cell as i32);
        let gc = Client::connect_to(&a, Some("c1/g1")).await;
        let ginfo = gc.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        let gborn = ginfo.clone();
        assert_eq!(
            (ginfo.hostname.as_str(), ginfo.isolation),
            ("g1", pb::IsolationKind::Cell as i32)
        );
        assert_eq!(ginfo.peer_spiffe_id, child.spiffe_id);

        // Each parent renews its child in place at half-life (c1's SVID lives 60 s; g1's
        // cannot outlive c1's spawn CA): both come to serve an SVID that ends later than
        // the one they were born with, over the connections the test already holds. (When
        // renewal happens and what a refusal does: runtime/tests/instance.rs.)
        let info_of = |c: &Client| {
            let mut n = c.node.clone();
            async move { n.info(pb::NodeInfoRequest {}).await.unwrap().into_inner() }
        };
        let renewed = aurae_appliance_tests::eventually(a.budget(Duration::from_secs(120)), || async {
            info_of(&cc).await.identity_renewed_unix_seconds > 0 && info_of(&gc).await.identity_renewed_unix_seconds > 0
        })
        .await;
        let info = info_of(&cc).await;
        let ginfo = info_of(&gc).await;
        assert!(renewed, "c1: {}; g1: {}", info.identity_note, ginfo.identity_note);
        assert!(
            info.identity_not_after_unix_seconds > born.identity_not_after_unix_seconds,
            "c1 serves its renewed SVID: {}",
            info.identity_note
        );
        assert!(
            ginfo.identity_not_after_unix_seconds > gborn.identity_not_after_unix_seconds,
            "g1 serves its renewed SVID: {}",
            ginfo.identity_note
        );

        // Revocation at Free: c1's own SVID, and a certificate its spawn CA signs inside its
        // subtree, are refused by the parent from the moment c1 is freed.
        let stolen = Stolen::take(
            &c,
            "/run/aurae/instances/c1",
            &format!("{}/instance/x9", child.spiffe_id),
        )
        .await;
        for stem in ["server", "forged"] {
            let e = stolen.node_info(&a, stem).await.unwrap_err();
            assert!(e.message().contains("has no role"), "before Free, {stem}: {e:?}");
        }
        assert_eq!(stop_and_free(&cc, "g1").await.state, pb::WorkloadState::Stopped as i32);
        assert_eq!(stop_and_free(&c, "c1").await.state, pb::WorkloadState::Stopped as i32);
        for stem in ["server", "forged"] {
            let e = stolen.node_info(&a, stem).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{stem}: {e:?}");
            assert!(e.message().contains("revoked"), "after Free, {stem}: {e:?}");
        }
        let after = c
            .on_node("ls -d /sys/fs/cgroup/aurae/*/; ip -o link | cut -d: -f2")
            .await;
        assert_eq!(after, before, "no cell, cgroup or veth left");
        let files = c.on_node("ls /run/aurae/instances | wc -l").await;
        assert_eq!(files.trim(), "0", "the child's keys are gone");
    });
}
