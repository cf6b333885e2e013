//! Appliance tier, issue #12: pods. One boot (TCG with emulated SVM, so the node's KVM
//! runs microVMs) with a real registry behind a guestfwd rule that only the node reaches:
//! a pod's instance gets its images from the node, never from the registry. The tests run
//! one at a time on the shared boot and each leaves the node as it found it.

#![allow(clippy::unwrap_used)]

#[path = "../../init/tests/common/registry.rs"]
mod registry;

use aurae_appliance_tests::{eventually, rt, Appliance, Client, BOOT_DEADLINE};
use auraed::pb;
use std::time::Duration;
use tonic::Code;

/// Plain HTTP, listed insecure on the kernel command line; its access log is kept.
const REGISTRY: &str = "10.0.2.100:5000";
/// The named node bridge pods attach eth1 to (`aurae.bridges=`).
const LAB: &str = "lab0";
/// The node port the pods publish, forwarded from the host's loopback by QEMU.
const NODE_PORT: u32 = 8080;
/// RunPod → every container running, on the reference machine: an instance's boot (a VM
/// under nested KVM in TCG, ~10 s) and its images. Scaled by `Appliance::budget`.
const POD_BUDGET: Duration = Duration::from_secs(180);

struct Shared {
    a: Appliance,
    registry: registry::Registry,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// The host's loopback port QEMU forwards to the node's port 8080.
    web: u16,
    /// The host's loopback port QEMU forwards to the node's CRI streaming server.
    stream: u16,
}

/// Where the node's CRI streaming server listens (`aurae.cri_stream`).
const STREAM_PORT: u32 = 10010;

fn shared() -> Option<&'static Shared> {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let build = aurae_appliance_tests::build_dir()?;
    Some(SHARED.get_or_init(|| {
        let f = registry::fixture();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("registry.log");
        let r = registry::Registry::start(
            &f.storage,
            registry::Options {
                access_log: Some(log.clone()),
                ..Default::default()
            },
        );
        let port = r.addr.rsplit(':').next().unwrap().to_owned();
        let fwd = format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}");
        // lab0: a node bridge for pods' eth1, with no address of the node on it; the CRI
        // on its socket for a kubelet on the node (aurae.cri=1); instances checked every
        // 5 s (10 by default), so a hung one is found in at most 30 s.
        let cmdline = format!(
            "aurae.insecure_registries={REGISTRY} aurae.bridges={LAB} aurae.cri=1 aurae.cri_stream=0.0.0.0:{STREAM_PORT} aurae.child_check=5"
        );
        let web = aurae_appliance_tests::free_port();
        let stream = aurae_appliance_tests::free_port();
        let hostfwd = format!("{web}:{NODE_PORT},{stream}:{STREAM_PORT}");
        let a = Appliance::boot_with(
            &build,
            BOOT_DEADLINE,
            &[
                ("GUESTFWD", fwd.as_str()),
                ("EXTRA_CMDLINE", cmdline.as_str()),
                ("HOSTFWD", hostfwd.as_str()),
            ],
        );
        Shared {
            a,
            registry: r,
            log,
            _dir: dir,
            web,
            stream,
        }
    }))
}

macro_rules! shared_or_skip {
    () => {
        match shared() {
            Some(s) => s,
            None => {
                eprintln!(
                    "SKIP {}: AURAE_APPLIANCE is not set (run `make test-appliance`)",
                    module_path!()
                );
                return;
            }
        }
    };
}

fn busybox() -> String {
    format!("{REGISTRY}/test/busybox:1")
}

/// The busybox image under a name only the two-container test uses: the registry's log
/// shows its manifest asked for by the node.
fn site_image() -> String {
    format!("{REGISTRY}/test/podsite:1")
}

fn pod_ref(name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::Pod as i32,
        name: name.into(),
    }
}

fn container(name: &str, script: &str) -> pb::Container {
    pb::Container {
        name: name.into(),
        image: busybox(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// RunPod with the test's budget as its deadline.
async fn run_pod(a: &Appliance, c: &Client, pod: pb::Pod) -> Result<pb::PodStatus, tonic::Status> {
    let budget = a.budget(POD_BUDGET);
    let mut req = tonic::Request::new(pod);
    req.set_timeout(budget);
    tokio::time::timeout(budget + Duration::from_secs(10), c.runtime.clone().run_pod(req))
        .await
        .expect("RunPod answered within its deadline")
        .map(|r| r.into_inner())
}

async fn pod_status(c: &Client, name: &str) -> pb::PodStatus {
    let w = c.workloads.clone().status(pod_ref(name)).await.unwrap().into_inner();
    match w.status {
        Some(pb::workload_status::Status::Pod(p)) => p,
        other => panic!("{other:?}"),
    }
}

async fn stop_and_free(c: &Client, name: &str) -> pb::PodStatus {
    match c.stop_and_free(pod_ref(name), 2000).await.status {
        Some(pb::workload_status::Status::Pod(p)) => p,
        other => panic!("{other:?}"),
    }
}

/// A container's output so far.
async fn logs(c: &Client, pod: &str, container: &str) -> String {
    let mut s = c
        .workloads
        .clone()
        .logs(pb::LogsRequest {
            workload: Some(pod_ref(&format!("{pod}/{container}"))),
            follow: false,
            tail_lines: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = String::new();
    while let Some(e) = s.message().await.unwrap() {
        out += &String::from_utf8_lossy(&e.line);
        out.push('\n');
    }
    out
}

/// GET `path` from the host's side of the node's published port.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())?;
    head.contains(" 200 ").then(|| body.to_owned())
}

/// The two-container pod: `web` serves /www (a volume) on port 80, published as the
/// node's 8080; `side` writes the page, fetches it back from `web` over localhost, and
/// tries the registry.
fn site(isolation: pb::IsolationKind) -> pb::Pod {
    let mut web = container("web", "hostname > /www/web-host; exec httpd -f -p 80 -h /www");
    web.image = site_image();
    web.ports = vec![pb::ContainerPort {
        container_port: 80,
        host_port: NODE_PORT,
        protocol: String::new(),
    }];
    web.volume_mounts = vec![pb::VolumeMount {
        name: "www".into(),
        mount_path: "/www".into(),
        read_only: false,
        ..Default::default()
    }];
    let mut side = container(
        "side",
        &format!(
            "echo \"hello from $(hostname)\" > /www/index.html
             until wget -q -O /tmp/got http://localhost:80/index.html; do sleep 0.2; done
             cp /tmp/got /www/via-localhost
             if nc -w 3 {} 5000 </dev/null; then echo REGISTRY-REACHED; else echo REGISTRY-UNREACHABLE; fi
             grep CapEff /proc/self/status
             busybox arping -c 1 -w 1 -U -I eth0 10.254.0.1 2>&1 | head -1 | sed 's/^/SPOOF: /'
             echo side-ready
             exec sleep 100000",
            REGISTRY.split(':').next().unwrap()
        ),
    );
    side.image = site_image();
    side.volume_mounts = vec![pb::VolumeMount {
        name: "www".into(),
        mount_path: "/www".into(),
        read_only: false,
        ..Default::default()
    }];
    pb::Pod {
        name: "site".into(),
        containers: vec![web, side],
        volumes: vec![pb::Volume {
            name: "www".into(),
            empty_dir: Some(pb::EmptyDirVolume {
                memory: true,
                size_limit_bytes: 8 << 20,
            }),
            ..Default::default()
        }],
        isolation: isolation as i32,
        ..Default::default()
    }
}

#[test]
fn a_two_container_pod_shares_network_hostname_and_a_volume_and_is_reached_through_a_node_port() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        for isolation in [pb::IsolationKind::Vm, pb::IsolationKind::Cell] {
            let began = std::time::Instant::now();
            let p = run_pod(a, &c, site(isolation))
                .await
                .unwrap_or_else(|e| panic!("RunPod ({isolation:?}): {e:?}\n{}", a.console_log()));
            eprintln!(
                "pod ({isolation:?}) running after {:.1} s",
                began.elapsed().as_secs_f64()
            );
            assert_eq!(p.phase, pb::PodPhase::Running as i32, "{p:?}");
            assert_eq!(p.isolation, isolation as i32, "{p:?}");
            assert!(!p.pod_ip.is_empty(), "{p:?}");
            assert_eq!(p.containers.len(), 2);
            assert!(
                p.containers
                    .iter()
                    .all(|c| c.state == pb::ContainerState::Running as i32),
                "{p:?}"
            );
            assert_eq!(
                (p.ports[0].host_port, p.ports[0].container_port),
                (NODE_PORT, 80),
                "{p:?}"
            );
            let budget = a.budget(Duration::from_secs(60));
            assert!(
                eventually(budget, || async {
                    logs(&c, "site", "side").await.contains("side-ready")
                })
                .await,
                "the sidecar never got ready: {}",
                logs(&c, "site", "side").await
            );
            let side = logs(&c, "site", "side").await;
            assert!(
                side.contains("REGISTRY-UNREACHABLE"),
                "the pod reached the registry: {side}"
            );
            // No NET_RAW (bit 13): the default set less it, and an ARP announcement of the
            // bridge's own address (a spoof of another host on it) cannot even open its socket.
            assert!(side.contains("CapEff:\t00000000a00405fb"), "{side}");
            assert!(
                side.contains("SPOOF: arping: socket: Operation not permitted"),
                "a container forged ARP: {side}"
            );
            // From the host test process, through the node's port.
            let page = tokio::task::spawn_blocking({
                let port = s.web;
                move || http_get(port, "/index.html")
            })
            .await
            .unwrap();
            assert_eq!(page.as_deref(), Some("hello from site\n"), "through the node port");
            let via = tokio::task::spawn_blocking({
                let port = s.web;
                move || (http_get(port, "/via-localhost"), http_get(port, "/web-host"))
            })
            .await
            .unwrap();
            assert_eq!(
                via.0.as_deref(),
                Some("hello from site\n"),
                "the sidecar over localhost"
            );
            assert_eq!(via.1.as_deref(), Some("site\n"), "web's hostname is the pod's");

            let st = stop_and_free(&c, "site").await;
            assert!(
                st.containers
                    .iter()
                    .all(|c| c.state == pb::ContainerState::Terminated as i32),
                "{st:?}"
            );
            let gone = c.workloads.clone().status(pod_ref("site")).await.unwrap_err();
            assert_eq!(gone.code(), Code::NotFound);
            // No TAP, veth or volume left on the node.
            let left = c
                .on_node("ls /sys/class/net | grep -E '^(atap|aveth)' ; ls /run/aurae/volumes 2>/dev/null; true")
                .await;
            assert_eq!(left.trim(), "", "left on the node: {left}");
            // The node port is free again (the next round publishes it anew).
            c.assert_left_nothing("pod").await;
        }
        // The node fetched each blob once in this boot, whichever image and test asked
        // first (the store is content-addressed): both pods' instances, both containers
        // each, got it from the node.
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        assert!(
            log.contains("GET /v2/test/podsite/manifests/"),
            "the node resolved the image:\n{log}"
        );
        let blob_gets: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .collect();
        let mut distinct: Vec<&str> = blob_gets
            .iter()
            .filter_map(|l| l.split("/blobs/").nth(1))
            .filter_map(|r| r.split([' ', '"']).next())
            .collect();
        let all = distinct.len();
        distinct.sort();
        distinct.dedup();
        assert_eq!(all, distinct.len(), "a blob was fetched twice: {blob_gets:#?}");
        assert!(!distinct.is_empty(), "the registry's log shows no blob fetch:\n{log}");
        // Freed pods hold their image no longer: it stays on the node until removed, and
        // removing it is not refused. (While a pod holds it, it is: the restarts test.)
        c.remove_image(&site_image())
            .await
            .unwrap_or_else(|e| panic!("a freed pod still holds its image: {e:?}"));
    });
}

#[test]
fn bad_pods_are_refused_with_the_field_named_and_nothing_made() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        let one = |f: &dyn Fn(&mut pb::Pod)| {
            let mut p = pb::Pod {
                name: "bad".into(),
                containers: vec![container("a", "sleep 100")],
                isolation: pb::IsolationKind::Cell as i32,
                ..Default::default()
            };
            f(&mut p);
            p
        };
        let cases: Vec<(pb::Pod, Code, &str)> = vec![
            (
                one(&|p| p.containers.push(container("a", "true"))),
                Code::InvalidArgument,
                "containers[1].name: 'a' is the name of containers[0] too",
            ),
            (
                // auraed's own API port.
                one(&|p| {
                    p.containers[0].ports = vec![pb::ContainerPort {
                        container_port: 80,
                        host_port: 8443,
                        protocol: String::new(),
                    }]
                }),
                Code::AlreadyExists,
                "containers[0].ports[0].host_port: port 8443 of the node is taken",
            ),
            (
                one(&|p| p.containers[0].image = format!("{REGISTRY}/test/nope:1")),
                Code::NotFound,
                "containers[0].image: ",
            ),
            (
                one(&|p| {
                    p.containers[0].resources = Some(pb::ContainerResources {
                        requests: None,
                        limits: Some(pb::ResourceList {
                            cpu_millis: 0,
                            memory_bytes: 2 << 30,
                        }),
                    })
                }),
                Code::ResourceExhausted,
                "containers[].resources.limits.memory_bytes: the pod's instance needs",
            ),
        ];
        for (pod, code, want) in cases {
            let e = run_pod(a, &c, pod).await.unwrap_err();
            assert_eq!(e.code(), code, "{e:?}");
            assert!(
                e.message().starts_with(want),
                "{}\n  should start with: {want}",
                e.message()
            );
            let gone = c.workloads.clone().status(pod_ref("bad")).await.unwrap_err();
            assert_eq!(gone.code(), Code::NotFound);
            c.assert_left_nothing("a refused pod").await;
        }
    });
}

fn lab(address: &str) -> pb::NetworkAttachment {
    pb::NetworkAttachment {
        bridge: LAB.into(),
        address: address.into(),
        interface: String::new(),
    }
}

/// Extra interfaces: pods with eth1 on the node bridge lab0, which has no address of the
/// node, so nothing but lab0 joins them. A server pod in a VM (eth1 a virtio-net NIC on a
/// TAP) and a client pod in a cell (eth1 a veth): the client reaches the server over
/// eth1; a pod without eth1 does not. Bad attachments are refused naming the field, an
/// address is one pod's until that pod is freed, and nothing is left.
#[test]
fn a_pod_with_eth1_on_a_node_bridge_reaches_a_server_on_that_bridge() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.bridges, [LAB], "{info:?}");
        let server = pb::Pod {
            name: "lab-srv".into(),
            containers: vec![container(
                "srv",
                "mkdir -p /tmp/www && echo \"served on lab0 by $(hostname)\" > /tmp/www/index.html
                 grep -q 'eth1:' /proc/net/dev && echo HAS-ETH1; exec httpd -f -p 80 -h /tmp/www",
            )],
            isolation: pb::IsolationKind::Vm as i32,
            networks: vec![lab("192.168.50.2/24")],
            ..Default::default()
        };
        let p = run_pod(a, &c, server)
            .await
            .unwrap_or_else(|e| panic!("RunPod lab-srv: {e:?}\n{}", a.console_log()));
        assert_eq!(p.networks.len(), 1, "{p:?}");
        assert_eq!(
            (p.networks[0].interface.as_str(), p.networks[0].address.as_str()),
            ("eth1", "192.168.50.2/24"),
            "{p:?}"
        );
        // A few tries while ARP settles; without eth1 one try (3 s) shows there is no way.
        // (nc, as this busybox's `wget -T` crashes.)
        let fetch = |tries: u32| {
            format!(
                "i=0; while [ $i -lt {tries} ]; do i=$((i + 1))
                     printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 192.168.50.2 80 > /tmp/got
                     if grep -q served /tmp/got; then cat /tmp/got; break; fi
                     sleep 0.5
                 done; echo fetched; exec sleep 100000"
            )
        };
        let client = |name: &str, networks| pb::Pod {
            name: name.into(),
            containers: vec![container("cli", &fetch(if name == "lab-none" { 1 } else { 20 }))],
            isolation: pb::IsolationKind::Cell as i32,
            networks,
            ..Default::default()
        };

        // The server's address is its pod's: refused, and nothing made.
        let e = run_pod(a, &c, client("lab-dup", vec![lab("192.168.50.2/24")]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(
            e.message()
                .starts_with("networks[0].address: 192.168.50.2 on bridge lab0 is taken by 'lab-srv'"),
            "{e:?}"
        );
        for (networks, want) in [
            (
                vec![pb::NetworkAttachment {
                    bridge: "aurae0".into(),
                    address: "192.168.50.9/24".into(),
                    interface: String::new(),
                }],
                "networks[0].bridge: this node has no bridge 'aurae0' to attach to; its bridges for pods are lab0",
            ),
            (
                vec![lab("192.168.50.9")],
                "networks[0].address: '192.168.50.9' is not A.B.C.D/N",
            ),
            (
                vec![lab("192.168.50.9/24"), lab("192.168.50.10/24")],
                "networks[1].bridge: networks[0] is on bridge 'lab0' already",
            ),
        ] {
            let e = run_pod(a, &c, client("lab-bad", networks)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().starts_with(want),
                "{}\n  should start with: {want}",
                e.message()
            );
        }
        for name in ["lab-dup", "lab-bad"] {
            let gone = c.workloads.clone().status(pod_ref(name)).await.unwrap_err();
            assert_eq!(gone.code(), Code::NotFound, "{name}");
        }

        // Over eth1 (a veth in the cell instance) to the server's eth1 (a TAP of its VM).
        run_pod(a, &c, client("lab-cli", vec![lab("192.168.50.3/24")]))
            .await
            .unwrap_or_else(|e| panic!("RunPod lab-cli: {e:?}\n{}", a.console_log()));
        // The same fetch without eth1 finds no way there.
        run_pod(a, &c, client("lab-none", Vec::new()))
            .await
            .unwrap_or_else(|e| panic!("RunPod lab-none: {e:?}"));
        let budget = a.budget(Duration::from_secs(90));
        for name in ["lab-cli", "lab-none"] {
            assert!(
                eventually(budget, || async { logs(&c, name, "cli").await.contains("fetched") }).await,
                "{name}: {}",
                logs(&c, name, "cli").await
            );
        }
        let got = logs(&c, "lab-cli", "cli").await;
        assert!(got.contains("served on lab0 by lab-srv"), "lab-cli over eth1: {got}");
        let none = logs(&c, "lab-none", "cli").await;
        assert!(
            !none.contains("served on lab0"),
            "a pod without eth1 reached lab0: {none}"
        );
        let srv = logs(&c, "lab-srv", "srv").await;
        assert!(srv.contains("HAS-ETH1"), "the server's container sees eth1: {srv}");

        for name in ["lab-cli", "lab-none", "lab-srv"] {
            stop_and_free(&c, name).await;
        }
        // Freed, the address is free again.
        let again = run_pod(a, &c, client("lab-again", vec![lab("192.168.50.2/24")]))
            .await
            .unwrap_or_else(|e| panic!("RunPod lab-again after lab-srv was freed: {e:?}"));
        assert_eq!(again.networks[0].address, "192.168.50.2/24");
        stop_and_free(&c, "lab-again").await;
        let left = c
            .on_node("ls /sys/class/net | grep -E '^(atap|aveth)'; ls /sys/class/net/lab0/brif; true")
            .await;
        assert_eq!(left.trim(), "", "left on the node: {left}");
        c.assert_left_nothing("pods on lab0").await;
    });
}

/// Waits until pod `name`'s status satisfies `f`, and returns it.
async fn until_status(
    a: &Appliance,
    c: &Client,
    name: &str,
    what: &str,
    f: impl Fn(&pb::PodStatus) -> bool,
) -> pb::PodStatus {
    let budget = a.budget(Duration::from_secs(150));
    let began = std::time::Instant::now();
    loop {
        let p = pod_status(c, name).await;
        if f(&p) {
            return p;
        }
        assert!(began.elapsed() < budget, "pod {name}: never {what}: {p:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn containers_restart_as_the_policy_says_after_their_back_off_and_oom_kills_are_named() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        let pod = |name: &str, policy: pb::RestartPolicy, containers: Vec<pb::Container>| pb::Pod {
            name: name.into(),
            containers,
            restart_policy: policy as i32,
            isolation: pb::IsolationKind::Cell as i32,
            ..Default::default()
        };

        // OnFailure: exit 1 restarts after the back-off (10 s; that it doubles each time,
        // and what a refused restart does, are runtime/tests/pod.rs's to show on a fake
        // child with a paused clock).
        run_pod(
            a,
            &c,
            pod("crash", pb::RestartPolicy::OnFailure, vec![container("c", "exit 1")]),
        )
        .await
        .unwrap();
        let p = until_status(a, &c, "crash", "waiting after a failure", |p| {
            p.containers[0].state == pb::ContainerState::Waiting as i32 && p.containers[0].last_termination.is_some()
        })
        .await;
        let cs = &p.containers[0];
        assert_eq!(cs.reason, "CrashLoopBackOff", "{cs:?}");
        let t = cs.last_termination.clone().unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (Some(1), "Error"), "{t:?}");
        let first_wait = cs.next_restart_unix_nanos - t.finished_at_unix_nanos;
        assert!(
            (9_000_000_000..=11_000_000_000).contains(&first_wait),
            "the first back-off is 10 s: {first_wait} ns"
        );
        let p = until_status(a, &c, "crash", "restarted", |p| p.containers[0].restart_count >= 1).await;
        assert_eq!(p.phase, pb::PodPhase::Running as i32, "{p:?}");
        stop_and_free(&c, "crash").await;

        // Always: over its memory limit, the container ends OOMKilled and restarts.
        let mut hog = container("hog", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done");
        hog.resources = Some(pb::ContainerResources {
            requests: None,
            limits: Some(pb::ResourceList {
                cpu_millis: 0,
                memory_bytes: 16 << 20,
            }),
        });
        run_pod(a, &c, pod("hog", pb::RestartPolicy::Always, vec![hog]))
            .await
            .unwrap();
        // A pod's image cannot be removed from under it; the message names the pod.
        let e = c.remove_image(&busybox()).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("pod 'hog'"), "{e:?}");
        let p = until_status(a, &c, "hog", "OOMKilled and restarted", |p| {
            p.containers[0].restart_count >= 1
                && p.containers[0]
                    .last_termination
                    .as_ref()
                    .is_some_and(|t| t.reason == "OOMKilled")
        })
        .await;
        assert_eq!(p.phase, pb::PodPhase::Running as i32, "{p:?}");
        stop_and_free(&c, "hog").await;

        // Never: all exit 0 is Succeeded; one that does not is Failed. Neither restarts.
        run_pod(
            a,
            &c,
            pod(
                "done",
                pb::RestartPolicy::Never,
                vec![container("a", "exit 0"), container("b", "sleep 1")],
            ),
        )
        .await
        .unwrap();
        let mut w = tonic::Request::new(pod_ref("done"));
        w.set_timeout(a.budget(Duration::from_secs(60)));
        c.workloads.clone().wait(w).await.unwrap();
        let p = pod_status(&c, "done").await;
        assert_eq!(p.phase, pb::PodPhase::Succeeded as i32, "{p:?}");
        assert!(p.containers.iter().all(|c| c.restart_count == 0), "{p:?}");
        c.workloads.clone().free(pod_ref("done")).await.unwrap();

        run_pod(
            a,
            &c,
            pod(
                "fail",
                pb::RestartPolicy::Never,
                vec![container("a", "exit 0"), container("b", "exit 3")],
            ),
        )
        .await
        .unwrap();
        let p = until_status(a, &c, "fail", "Failed", |p| p.phase == pb::PodPhase::Failed as i32).await;
        let b = &p.containers[1];
        assert_eq!(b.last_termination.as_ref().and_then(|t| t.exit_code), Some(3), "{p:?}");
        assert_eq!(b.restart_count, 0);
        c.workloads.clone().free(pod_ref("fail")).await.unwrap();
        c.assert_left_nothing("restarts").await;
    });
}

/// A pod whose child stops answering (its VMM SIGSTOPped: the process is there, its guest
/// answers nothing) is found by the node's health checks and killed; the pod (ALWAYS)
/// runs again in a new instance at once: its container restarted, the lost run said, its
/// node port leading to the new instance.
#[test]
fn a_pod_whose_instance_hangs_is_found_and_runs_again_in_a_new_instance() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        // Each instance's kernel has its own boot id: the page says which one serves.
        let mut web = container(
            "web",
            "mkdir -p /srv; cat /proc/sys/kernel/random/boot_id > /srv/boot; exec httpd -f -p 80 -h /srv",
        );
        web.ports = vec![pb::ContainerPort {
            container_port: 80,
            host_port: NODE_PORT,
            protocol: String::new(),
        }];
        let p = run_pod(
            a,
            &c,
            pb::Pod {
                name: "phoenix".into(),
                containers: vec![web],
                restart_policy: pb::RestartPolicy::Always as i32,
                isolation: pb::IsolationKind::Vm as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        let budget = a.budget(Duration::from_secs(30));
        let served = |port: u16| async move {
            tokio::task::spawn_blocking(move || eventually_some(budget, || http_get(port, "/boot")))
                .await
                .unwrap()
        };
        let first = served(s.web).await.expect("the first instance serves");
        let old = p.instance.clone().unwrap();
        let old_tap = old.vm.clone().unwrap().tap_device;
        c.on_node(&format!("kill -STOP {}", old.pid)).await;
        let began = std::time::Instant::now();
        let p = until_status(a, &c, "phoenix", "in a new instance", |p| {
            p.instance_restarts == 1 && p.containers[0].state == pb::ContainerState::Running as i32
        })
        .await;
        let took = began.elapsed();
        eprintln!("phoenix: hang found and a new instance serving in {took:?}");
        assert_eq!(p.phase, pb::PodPhase::Running as i32, "{p:?}");
        assert!(
            p.last_instance_end
                .starts_with("the child stopped answering: 3 health checks in a row, 5 s apart"),
            "{p:?}"
        );
        let w = &p.containers[0];
        assert_eq!(w.restart_count, 1, "{p:?}");
        let last = w.last_termination.clone().unwrap();
        assert_eq!(last.reason, "ContainerStatusUnknown", "{p:?}");
        let new = p.instance.clone().unwrap();
        assert_ne!(new.pid, old.pid, "{p:?}");
        assert_eq!(new.spiffe_id, old.spiffe_id, "{p:?}");
        let gone = c
            .on_node(&format!("kill -0 {} 2>/dev/null || echo gone", old.pid))
            .await;
        assert_eq!(gone.trim(), "gone", "the hung VMM was killed");
        let links = c.on_node("ip -o link | cut -d: -f2").await;
        let new_tap = new.vm.clone().unwrap().tap_device;
        assert!(
            old_tap == new_tap || !links.contains(&old_tap),
            "its TAP went with it: {links}"
        );
        let second = served(s.web).await.expect("the node port leads to the new instance");
        assert_ne!(second, first, "another kernel serves the page");
        stop_and_free(&c, "phoenix").await;
        c.assert_left_nothing("a pod given a new instance").await;
    });
}

/// NEVER: a pod whose VMM is killed (as the OOM killer would) fails, saying why.
#[test]
fn a_pod_whose_vm_is_killed_fails_with_the_reason_and_frees_cleanly() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        let p = run_pod(
            a,
            &c,
            pb::Pod {
                name: "victim".into(),
                // A small instance (32 MiB + the overhead: 128 MiB), which once left its
                // containers no task to start with.
                containers: vec![pb::Container {
                    resources: Some(pb::ContainerResources {
                        requests: None,
                        limits: Some(pb::ResourceList {
                            cpu_millis: 0,
                            memory_bytes: 32 << 20,
                        }),
                    }),
                    ..container("c", "exec sleep 100000")
                }],
                isolation: pb::IsolationKind::Vm as i32,
                restart_policy: pb::RestartPolicy::Never as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        assert_eq!(
            p.instance.as_ref().unwrap().vm.as_ref().unwrap().memory_bytes,
            128 << 20,
            "{p:?}"
        );
        let vmm = p.instance.as_ref().unwrap().pid;
        assert!(vmm > 0, "{p:?}");
        c.on_node(&format!("kill -9 {vmm}")).await;
        let p = until_status(a, &c, "victim", "Failed", |p| p.phase == pb::PodPhase::Failed as i32).await;
        assert!(p.reason.starts_with("its instance ended"), "{p:?}");
        assert!(p.reason.contains("the VMM was killed by signal 9"), "said once: {p:?}");
        assert_eq!(p.reason.matches("killed").count(), 1, "said once: {p:?}");
        let p = until_status(a, &c, "victim", "its run lost", |p| {
            p.containers[0].state == pb::ContainerState::Terminated as i32
        })
        .await;
        let last = p.containers[0].last_termination.clone();
        assert_eq!(
            last.map(|t| t.reason).as_deref(),
            Some("ContainerStatusUnknown"),
            "{p:?}"
        );
        assert_eq!(p.instance_restarts, 0, "NEVER: no new instance: {p:?}");
        c.workloads.clone().free(pod_ref("victim")).await.unwrap();
        c.assert_left_nothing("a killed pod").await;
    });
}

/// The image's `/lib` is a symlink to `/usr/lib`: a volume mounted at `/lib/evil` would be
/// bound wherever the link points while the root is assembled (the node's `/usr/lib`, in
/// the holder's view). Refused; the node has no such directory, and the volume is gone.
#[test]
fn a_volume_mount_through_a_symlink_of_the_image_is_refused_and_touches_nothing() {
    let s = shared_or_skip!();
    let a = &s.a;
    rt().block_on(async {
        let c = Client::connect(a).await;
        let e = c
            .cell(pb::Cell {
                name: "sneaky".into(),
                image: Some(pb::OciImage {
                    reference: busybox(),
                    volumes: vec![pb::Volume {
                        name: "v".into(),
                        empty_dir: None,
                        ..Default::default()
                    }],
                    volume_mounts: vec![pb::VolumeMount {
                        name: "v".into(),
                        mount_path: "/lib/evil".into(),
                        read_only: false,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message().contains("Not a directory"), "{e:?}");
        let seen = c
            .on_node("ls -d /usr/lib/evil /lib/evil /run/aurae/volumes/v 2>/dev/null; true")
            .await;
        assert_eq!(seen.trim(), "", "{seen}");
        c.assert_left_nothing("a refused volume").await;
    });
}

/// `aer` as the appliance's admin client, with `args`.
fn aer_cmd(a: &Appliance, args: &[&str]) -> std::process::Command {
    let mut cmd = a.aer(None, None);
    cmd.args(args);
    cmd
}

/// `aer` with `args` run to its end: (exit code, stdout + stderr).
fn aer(a: &Appliance, args: &[&str]) -> (Option<i32>, String) {
    let o = aer_cmd(a, args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

/// `aer` with `args` left running, its stdin and stdout piped.
fn aer_child(a: &Appliance, args: &[&str]) -> std::process::Child {
    use std::process::Stdio;
    aer_cmd(a, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls `f` every 100 ms until it gives something or `deadline` passes.
fn eventually_some<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What an operator types: a manifest with Kubernetes' names, `aer pod run -f`, `ls`,
/// `logs`, `status`, `exec`, `port-forward`, `attach`, `stop`, `free`; and the
/// one-container form with flags.
#[test]
fn aer_pod_runs_a_manifest_and_a_one_container_pod() {
    let s = shared_or_skip!();
    let a = &s.a;
    let dir = tempfile::tempdir().unwrap();
    // As a Kubernetes user writes it (TOML and flat forms: the CLI's unit tests).
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  restartPolicy: Never
  isolation: cell
  containers:
    - name: greeter
      image: {}
      command: ["/bin/sh", "-c"]
      args: ["echo hello from $(hostname) with $GREETING; mkdir -p /tmp/w; echo forwarded-by-aer > /tmp/w/index.html; httpd -p 8088 -h /tmp/w; while read l; do echo heard $l; done; echo stdin-ended"]
      stdin: true
      stdinOnce: true
      env:
        - name: GREETING
          value: yaml
      resources:
        limits: {{ memory: 64Mi, cpu: 500m }}
"#,
            busybox()
        ),
    )
    .unwrap();
    let budget = a.budget(POD_BUDGET).as_secs().to_string();
    let (code, out) = aer(
        a,
        &["--timeout", &budget, "pod", "run", "-f", manifest.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("phase       Running") && out.contains("greeter"), "{out}");
    let (_, ls) = aer(a, &["pod", "ls"]);
    assert!(
        ls.contains("hello") && ls.contains("Running") && ls.contains("1/1"),
        "{ls}"
    );
    rt().block_on(async {
        let c = Client::connect(a).await;
        assert!(
            eventually(a.budget(Duration::from_secs(30)), || async {
                logs(&c, "hello", "greeter")
                    .await
                    .contains("hello from hello with yaml")
            })
            .await
        );
    });
    // One container: its name is implied.
    let (code, out) = aer(a, &["pod", "logs", "hello"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("hello from hello with yaml"), "{out}");
    let (_, out) = aer(a, &["--json", "pod", "status", "hello"]);
    assert!(out.contains(r#""isolation":"ISOLATION_KIND_CELL""#), "{out}");
    assert!(out.contains(r#""state":"Running""#), "{out}");
    // A command in the container (its only one implied), with its exit code.
    let (code, out) = aer(
        a,
        &["pod", "exec", "hello", "--", "sh", "-c", "echo in $(hostname); exit 4"],
    );
    assert_eq!((code, out.as_str()), (Some(4), "in hello\n"));
    // Port-forward: this machine's loopback port to the pod's 8088, until interrupted.
    let mut fwd = aer_child(a, &["pod", "port-forward", "hello", ":8088"]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(fwd.stdout.as_mut().unwrap()), &mut line).unwrap();
    let local: u16 = line
        .split_whitespace()
        .nth(2)
        .and_then(|at| at.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("Forwarding from ADDR -> PORT: {line:?}"));
    let page = eventually_some(a.budget(Duration::from_secs(20)), || http_get(local, "/index.html"));
    assert_eq!(page.as_deref(), Some("forwarded-by-aer\n"), "{line}");
    fwd.kill().unwrap();
    fwd.wait().unwrap();
    // Attach with stdin (the container keeps it, once): what is typed reaches the
    // entrypoint; its end (stdin closed) ends aer with its code.
    let mut att = aer_child(a, &["pod", "attach", "-i", "hello"]);
    std::io::Write::write_all(att.stdin.as_mut().unwrap(), b"ping\n").unwrap();
    drop(att.stdin.take());
    let o = att.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text, "heard ping\nstdin-ended\n");
    let (code, out) = aer(a, &["pod", "stop", "hello", "--grace-ms", "1000"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = aer(a, &["pod", "free", "hello"]);
    assert_eq!(code, Some(0), "{out}");

    // A bad manifest (TOML this time) says what is wrong.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[[containers]]\nname = \"a\"\nimage = \"i\"\nport = 1\n",
    )
    .unwrap();
    let (code, out) = aer(a, &["pod", "run", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unknown field `port`"), "{out}");

    // The one-container form.
    let (code, out) = aer(
        a,
        &[
            "--timeout",
            &budget,
            "pod",
            "run",
            "solo",
            "--image",
            &busybox(),
            "--isolation",
            "cell",
            "-e",
            "X=1",
            "--",
            "echo solo $X; sleep 100000",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    rt().block_on(async {
        let c = Client::connect(a).await;
        assert!(
            eventually(a.budget(Duration::from_secs(30)), || async {
                logs(&c, "solo", "solo").await.contains("solo 1")
            })
            .await
        );
        stop_and_free(&c, "solo").await;
        c.assert_left_nothing("aer pod").await;
    });
}

/// On a node whose CPU has no virtualization (`CPU=qemu64,-svm`), a pod that does not say
/// how to isolate runs in a cell, and says so.
#[test]
fn without_kvm_a_pod_falls_back_to_a_cell_and_says_so() {
    let s = shared_or_skip!();
    let build = aurae_appliance_tests::build_dir().unwrap();
    let port = s.registry.addr.rsplit(':').next().unwrap().to_owned();
    let fwd = format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}");
    let cmdline = format!("aurae.insecure_registries={REGISTRY}");
    let a = Appliance::boot_with(
        &build,
        BOOT_DEADLINE,
        &[
            ("CPU", "qemu64,-svm"),
            ("GUESTFWD", fwd.as_str()),
            ("EXTRA_CMDLINE", cmdline.as_str()),
        ],
    );
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let p = run_pod(
            &a,
            &c,
            pb::Pod {
                name: "auto".into(),
                containers: vec![container("c", "echo up in $(hostname); exec sleep 100000")],
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        assert_eq!(p.isolation, pb::IsolationKind::Cell as i32, "{p:?}");
        assert_eq!(p.phase, pb::PodPhase::Running as i32, "{p:?}");
        assert!(
            eventually(a.budget(Duration::from_secs(30)), || async {
                logs(&c, "auto", "c").await.contains("up in auto")
            })
            .await
        );
        // Asked for a VM here: refused, saying why, and nothing made.
        let e = run_pod(
            &a,
            &c,
            pb::Pod {
                name: "vm".into(),
                containers: vec![container("c", "sleep 1")],
                isolation: pb::IsolationKind::Vm as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("KVM"), "{e:?}");
        stop_and_free(&c, "auto").await;
        c.assert_left_nothing("a pod without KVM").await;
    });
}

mod cri_replay {
    //! Issue #25: the Kubernetes CRI, driven the way kubelet drives a runtime (its order of
    //! calls, its labels, annotations and log directory, its relist while the pod runs, its
    //! way of restarting a container), over the API port as the admin, with the `vm`
    //! handler: the sandbox is a microVM spawned by the node.

    use super::*;
    use aurae_proto::cri;
    use cri::image_service_client::ImageServiceClient;
    use cri::runtime_service_client::RuntimeServiceClient;
    use std::collections::HashMap;

    pub(super) type Run = RuntimeServiceClient<auraed::cli::Conn>;

    /// The channel a kubelet would hold: each call bounded as kubelet bounds it (its
    /// runtime-request-timeout), here the pod budget. The harness's usual 10 s cap
    /// would cut a VM sandbox's RunPodSandbox short on a slow machine, whatever
    /// deadline the request itself carries (the channel keeps the smaller one).
    pub(super) async fn kubelet_channel(a: &Appliance) -> auraed::cli::Conn {
        let mut t = a.target();
        t.timeout = a.budget(POD_BUDGET);
        t.connect().await.unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    /// What kubelet sends for pod default/web (uid u-web-1), as `kuberuntime_sandbox.go` does.
    fn sandbox_config() -> cri::PodSandboxConfig {
        let labels = map(&[
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "default"),
            ("io.kubernetes.pod.uid", "u-web-1"),
            ("app", "web"),
        ]);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u-web-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/default_web_u-web-1".into(),
            // hostPort 8080 (forwarded from the host by QEMU) to the pod's port 80, and a
            // containerPort without a host port, which kubelet sends as documentation.
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: NODE_PORT as i32,
                    host_ip: String::new(),
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 9090,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            labels,
            annotations: map(&[("kubernetes.io/config.source", "api"), ("note", "byte for byte: é ✓")]),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/besteffort/podu-web-1".into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Container `app` of the pod, attempt `attempt`, running `script`.
    fn container_config(image: &str, attempt: u32, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                user_specified_image: busybox(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            envs: vec![cri::KeyValue {
                key: "GREETING".into(),
                value: "from kubelet".into(),
            }],
            labels: map(&[
                ("io.kubernetes.container.name", "app"),
                ("io.kubernetes.pod.name", "web"),
                ("io.kubernetes.pod.namespace", "default"),
                ("io.kubernetes.pod.uid", "u-web-1"),
            ]),
            annotations: map(&[
                ("io.kubernetes.container.hash", "1a2b3c"),
                ("io.kubernetes.container.restartCount", &attempt.to_string()),
                ("io.kubernetes.container.terminationMessagePath", "/dev/termination-log"),
            ]),
            log_path: format!("app/{attempt}.log"),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 32 << 20,
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    cpu_shares: 512,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What kubelet makes on the node for pod `uid` before it creates its containers: its
    /// /etc/hosts, a termination log per container, a configmap written the atomic-writer
    /// way (`..data` → a timestamped directory, a symlink per key), an emptyDir; and,
    /// for the attack, a "configmap" whose key is a symlink to the node's keys.
    pub(super) const KUBELET_FILES: &str = "P=/var/lib/kubelet/pods/$UID_; \
        mkdir -p $P/containers/app $P/volumes/kubernetes.io~empty-dir/cache \
          $P/volumes/kubernetes.io~configmap/conf/..2026_1 $P/volumes/kubernetes.io~configmap/evil && \
        printf '127.0.0.1 localhost\n10.254.0.9 web\n' > $P/etc-hosts && : > $P/containers/app/t0 && \
        echo colour=blue > $P/volumes/kubernetes.io~configmap/conf/..2026_1/app.conf && \
        ln -s ..2026_1 $P/volumes/kubernetes.io~configmap/conf/..data && \
        ln -s ..data/app.conf $P/volumes/kubernetes.io~configmap/conf/app.conf && \
        echo old > $P/volumes/kubernetes.io~configmap/conf/..2026_1/extra && \
        ln -s ..data/extra $P/volumes/kubernetes.io~configmap/conf/extra && \
        ln -s /etc/aurae/pki $P/volumes/kubernetes.io~configmap/evil/keys && echo made";

    /// kubelet's mounts for a container of pod `uid`: /etc/hosts and the termination log
    /// (writable files), the configmap (read-only), the emptyDir (writable).
    pub(super) fn kubelet_mounts(uid: &str) -> Vec<cri::Mount> {
        let p = format!("/var/lib/kubelet/pods/{uid}");
        let m = |at: &str, host: String, readonly: bool| cri::Mount {
            container_path: at.into(),
            host_path: host,
            readonly,
            ..Default::default()
        };
        vec![
            m("/etc/hosts", format!("{p}/etc-hosts"), false),
            m("/dev/termination-log", format!("{p}/containers/app/t0"), false),
            m("/etc/conf", format!("{p}/volumes/kubernetes.io~configmap/conf"), true),
            m("/cache", format!("{p}/volumes/kubernetes.io~empty-dir/cache"), false),
        ]
    }

    /// The pod CIDR the CRI tests give the node (kubelet's node.spec.podCIDR).
    pub(super) const POD_CIDR: &str = "10.244.7.0/24";

    pub(super) fn pod_cidr(cidr: &str) -> cri::UpdateRuntimeConfigRequest {
        cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: cidr.into() }),
            }),
        }
    }

    /// RunPodSandbox with the test's budget as its deadline, then its verbose status,
    /// READY: (id, the runtime pod behind it, its status).
    pub(super) async fn run_sandbox(
        a: &Appliance,
        run: &mut Run,
        config: cri::PodSandboxConfig,
        handler: &str,
    ) -> (String, String, cri::PodSandboxStatus) {
        let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        });
        req.set_timeout(a.budget(POD_BUDGET));
        let sid = run.run_pod_sandbox(req).await.unwrap().into_inner().pod_sandbox_id;
        let st = run
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sid.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let pod = st.info["pod"].clone();
        let st = st.status.unwrap();
        assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32, "{st:?}");
        (sid, pod, st)
    }

    pub(super) async fn status(run: &mut Run, id: &str) -> cri::ContainerStatus {
        run.container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
    }

    /// ExecSync of `/bin/sh -c script` in container `id` (10 s), as a probe runs it.
    pub(super) async fn sh(run: &mut Run, id: &str, script: &str) -> cri::ExecSyncResponse {
        run.exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
    }

    /// kubelet's relist (generic PLEG, every second): all sandboxes and containers, then
    /// the pod's by its uid label, each one's status. Returns the container states.
    async fn relist(run: &mut Run) -> Vec<(String, i32)> {
        run.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap();
        run.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap();
        let by_uid = map(&[("io.kubernetes.pod.uid", "u-web-1")]);
        let sandboxes = run
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: by_uid.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        for s in &sandboxes {
            let st = run
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: s.id.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(st.status.is_some());
        }
        let containers = run
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: by_uid,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        let mut states = Vec::new();
        for c in containers {
            let s = status(run, &c.id).await;
            states.push((c.id, s.state));
        }
        states
    }

    /// Relists every second until container `id` has exited; its status then.
    async fn until_exited(a: &Appliance, run: &mut Run, id: &str) -> cri::ContainerStatus {
        let deadline = tokio::time::Instant::now() + a.budget(Duration::from_secs(60));
        loop {
            let states = relist(run).await;
            if states
                .iter()
                .any(|(c, s)| c == id && *s == cri::ContainerState::ContainerExited as i32)
            {
                return status(run, id).await;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} never exited: {states:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The CRI log file at `path` on the node, once it has `n` lines: (stream, tag, text)
    /// each, its timestamp checked.
    pub(super) async fn log_lines(a: &Appliance, c: &Client, path: &str, n: usize) -> Vec<(String, String, String)> {
        let deadline = std::time::Instant::now() + a.budget(Duration::from_secs(20));
        let text = loop {
            let text = c.on_node(&format!("cat {path} 2>/dev/null; true")).await;
            if text.lines().count() >= n {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never had {n} lines: {text}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        text.lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let mut next = || {
                    f.next()
                        .unwrap_or_else(|| panic!("not a CRI log line: {l:?} in\n{text}"))
                };
                let (ts, stream, tag) = (next(), next(), next());
                assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{l}");
                (stream.to_owned(), tag.to_owned(), f.next().unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn kubelets_pod_lifecycle_through_the_cri_on_a_vm_sandbox() {
        let s = shared_or_skip!();
        let a = &s.a;
        rt().block_on(async {
            let ch = kubelet_channel(a).await;
            let mut run: Run = RuntimeServiceClient::new(ch.clone());
            let mut img = ImageServiceClient::new(ch);
            let c = Client::connect(a).await;

            // `aurae.cri=1`: the socket for a kubelet on the node, root's alone, and no
            // failure at boot.
            let mode = c.on_node("stat -c %a /run/aurae/cri.sock").await;
            assert_eq!(mode.trim(), "600", "{mode}");
            let dirs = c
                .on_node("test -d /var/lib/kubelet && test -d /var/log/pods && echo ready")
                .await;
            assert_eq!(dirs.trim(), "ready", "kubelet's directories are made at boot");
            let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
            assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);
            // Connect, then the node's readiness: this node spawns and has its bridge.
            let v = run
                .version(cri::VersionRequest {
                    version: "0.1.0".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(v.version, "0.1.0");
            img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap();
            let st = run
                .status(cri::StatusRequest { verbose: false })
                .await
                .unwrap()
                .into_inner();
            let conds = st.status.unwrap().conditions;
            assert!(conds.iter().all(|c| c.status), "the node is Ready: {conds:?}");
            // The node's pod CIDR, as kubelet passes it once the node has one (dual
            // stack: the IPv4 one is used); one instances cannot use is refused by field.
            let e = run.update_runtime_config(pod_cidr("192.168.7.0/24")).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().starts_with("runtime_config.network_config.pod_cidr:"), "{e:?}");
            run.update_runtime_config(pod_cidr(&format!("{POD_CIDR},fd00:10:244:7::/64")))
                .await
                .unwrap();
            let bridge = c.on_node("ip -4 addr show aurae0").await;
            assert!(bridge.contains("10.244.7.1/24") && !bridge.contains("192.168."), "{bridge}");
            // A pull aimed at a pod's address (a registry a pod could serve) is refused
            // like one at the bridge's own subnet, before any connection.
            let e = img
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: "10.244.7.50:5000/test/busybox:1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert!(e.message().contains("one of this node's instance bridges"), "{e:?}");

            // A handler the node does not have is refused by name, and nothing is made.
            let e = run
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(sandbox_config()),
                    runtime_handler: "kata".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains("'kata'"), "{e:?}");

            // RunPodSandbox → PodSandboxStatus, as SyncPod does.
            let (sid, pod, sst) = run_sandbox(a, &mut run, sandbox_config(), "").await;
            let ip = sst.network.as_ref().unwrap().ip.clone();
            assert!(ip.starts_with("10.244.7."), "the pod's IP from the pod CIDR, on the node's bridge: {ip}");
            let want = sandbox_config();
            assert_eq!(sst.metadata, want.metadata);
            assert_eq!(sst.labels, want.labels, "labels echoed byte for byte");
            assert_eq!(sst.annotations, want.annotations);
            let ns = sst.linux.unwrap().namespaces.unwrap().options.unwrap();
            assert_eq!(ns.network, cri::NamespaceMode::Pod as i32, "the pod's network mode");
            // The sandbox is a pod of the node's own runtime, in a microVM.
            let ps = pod_status(&c, &pod).await;
            assert_eq!(ps.isolation, pb::IsolationKind::Vm as i32, "{ps:?}");
            assert!(ps.containers.is_empty());

            // The image, as EnsureImageExists does: status, a pull when absent, by id after.
            let have = img
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: busybox(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .image;
            let image_id = match have {
                Some(i) => i.id,
                None => {
                    img.pull_image(cri::PullImageRequest {
                        image: Some(cri::ImageSpec {
                            image: busybox(),
                            ..Default::default()
                        }),
                        auth: None,
                        sandbox_config: Some(sandbox_config()),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .image_ref
                }
            };

            // CreateContainer → StartContainer; the container runs, then exits with 3.
            // A greeting, a 20 000-byte line (split at 16 KiB in the log), its hostname (the
            // pod's, from the sandbox config), kubelet's files as it sees them, a line on
            // stderr; it leaves a note in the emptyDir and a termination message.
            let made = c.on_node(&KUBELET_FILES.replace("$UID_", "u-web-1")).await;
            assert_eq!(made.trim(), "made", "{made}");
            let script = "echo \"$GREETING\"; head -c 20000 /dev/zero | tr '\\0' x; echo; \
                          echo \"host $(hostname)\"; grep web /etc/hosts; cat /etc/conf/app.conf; \
                          head -1 /etc/resolv.conf; echo shared > /cache/note; \
                          echo 'bye: 3' > /dev/termination-log; echo oops >&2; sleep 2; exit 3";
            let mut first = container_config(&image_id, 0, script);
            first.mounts = kubelet_mounts("u-web-1");
            let cid = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(first),
                    sandbox_config: Some(sandbox_config()),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            let created = status(&mut run, &cid).await;
            assert_eq!(created.state, cri::ContainerState::ContainerCreated as i32);
            run.start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            })
            .await
            .unwrap();
            let ended = until_exited(a, &mut run, &cid).await;
            assert_eq!((ended.exit_code, ended.reason.as_str()), (3, "Error"), "{ended:?}");
            assert!(
                ended.created_at > 0 && ended.started_at > 0 && ended.finished_at >= ended.started_at,
                "{ended:?}"
            );
            assert_eq!(ended.image_ref, image_id);
            assert_eq!(ended.log_path, "/var/log/pods/default_web_u-web-1/app/0.log");
            assert_eq!(ended.labels["io.kubernetes.container.name"], "app");
            assert_eq!(ended.annotations["io.kubernetes.container.restartCount"], "0");
            assert_eq!(ended.mounts, kubelet_mounts("u-web-1"), "its mounts, as asked");
            // Its termination message, copied back to the file kubelet made for it.
            let message = c.on_node("cat /var/lib/kubelet/pods/u-web-1/containers/app/t0").await;
            assert_eq!(message.trim_end(), "bye: 3");
            // Its log file on the node, in the CRI's format, as kubelet and crictl read it.
            let lines = log_lines(a, &c, &ended.log_path, 8).await;
            let out: Vec<&(String, String, String)> = lines.iter().filter(|l| l.0 == "stdout").collect();
            assert_eq!(
                (out[0].1.as_str(), out[0].2.as_str()),
                ("F", "from kubelet"),
                "{lines:?}"
            );
            assert_eq!((out[1].1.as_str(), out[1].2.len()), ("P", 16384), "a piece, continued");
            assert_eq!((out[2].1.as_str(), out[2].2.len()), ("F", 20000 - 16384), "its end");
            assert_eq!(out[3].2, "host web", "the sandbox's hostname");
            assert_eq!(out[4].2, "10.254.0.9 web", "kubelet's /etc/hosts");
            assert_eq!(out[5].2, "colour=blue", "the configmap, through its symlinks");
            assert_eq!(out[6].2, "nameserver 10.96.0.10", "the sandbox's DNS config");
            assert!(out[1].2.bytes().chain(out[2].2.bytes()).all(|b| b == b'x'));
            assert!(
                lines.iter().any(|l| l == &("stderr".into(), "F".into(), "oops".into())),
                "{lines:?}"
            );

            // kubelet restarts it: a new container, attempt 1, beside the exited one.
            let cid1 = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(container_config(&image_id, 1, "exit 0")),
                    sandbox_config: Some(sandbox_config()),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            run.start_container(cri::StartContainerRequest {
                container_id: cid1.clone(),
            })
            .await
            .unwrap();
            let ended1 = until_exited(a, &mut run, &cid1).await;
            assert_eq!((ended1.exit_code, ended1.reason.as_str()), (0, "Completed"));
            assert_eq!(ended1.metadata.unwrap().attempt, 1);
            let listed = run
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: sid.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .containers;
            assert_eq!(listed.len(), 2, "the exited one stays listed: {listed:?}");
            assert_eq!(listed[0].id, cid1, "newest first");

            // A long-running container, stopped with a grace period (SIGTERM ends it).
            let mut long = container_config(
                &image_id,
                2,
                "mkdir -p /tmp/www; echo cri-web > /tmp/www/index.html; httpd -p 80 -h /tmp/www; \
                 echo before; while sleep 0.2; do test -f /tmp/go && echo after && rm /tmp/go; done",
            );
            long.mounts = kubelet_mounts("u-web-1")[2..].to_vec();
            let cid2 = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(long),
                    sandbox_config: None,
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            run.start_container(cri::StartContainerRequest {
                container_id: cid2.clone(),
            })
            .await
            .unwrap();
            assert_eq!(
                status(&mut run, &cid2).await.state,
                cri::ContainerState::ContainerRunning as i32
            );
            // The sandbox's host port reaches the container's server through the node.
            let port = s.web;
            let served = eventually(a.budget(Duration::from_secs(20)), move || async move {
                http_get(port, "/index.html").is_some_and(|b| b.contains("cri-web"))
            })
            .await;
            assert!(served, "hostPort {NODE_PORT} → the pod's port 80");
            // Stats, as kubelet's summary API reads them: CPU (a rate from the second
            // reading on), memory and its working set, the sandbox's sum and processes.
            let read = |run: &mut Run| {
                let (mut run, id) = (run.clone(), cid2.clone());
                async move {
                    run.container_stats(cri::ContainerStatsRequest { container_id: id })
                        .await
                        .unwrap()
                        .into_inner()
                        .stats
                        .unwrap()
                }
            };
            let first = read(&mut run).await;
            assert_eq!(first.attributes.as_ref().unwrap().id, cid2);
            let mem = first.memory.unwrap();
            let (set, used) = (mem.working_set_bytes.unwrap().value, mem.usage_bytes.unwrap().value);
            assert!(set > 0 && set <= used && used < 32 << 20, "{set} of {used}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = read(&mut run).await.cpu.unwrap();
            assert!(second.usage_core_nano_seconds.unwrap().value > 0);
            assert!(second.usage_nano_cores.is_some(), "a rate from the second reading");
            let pods = run
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                    filter: Some(cri::PodSandboxStatsFilter {
                        id: sid.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .stats;
            let linux = pods[0].linux.as_ref().unwrap();
            assert_eq!(linux.containers.len(), 3, "every container of the sandbox");
            assert!(linux.process.as_ref().unwrap().process_count.as_ref().unwrap().value >= 1);
            assert!(linux.memory.as_ref().unwrap().working_set_bytes.as_ref().unwrap().value >= set);
            // ExecSync, as an exec probe: output apart, the exit code.
            let sync = |cmd: &str, timeout: i64| cri::ExecSyncRequest {
                container_id: cid2.clone(),
                cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                timeout,
            };
            let o = run
                .exec_sync(sync("echo hi; echo err >&2; exit 7", 10))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (o.stdout.as_slice(), o.stderr.as_slice(), o.exit_code),
                (&b"hi\n"[..], &b"err\n"[..], 7)
            );
            // The emptyDir is the pod's: the first container's note is here. The
            // configmap is read-only, and follows kubelet's update (a new timestamped
            // directory, `..data` swapped to it).
            let o = run.exec_sync(sync("cat /cache/note", 10)).await.unwrap().into_inner();
            assert_eq!(o.stdout, b"shared\n");
            let o = run
                .exec_sync(sync("echo x > /etc/conf/app.conf", 10))
                .await
                .unwrap()
                .into_inner();
            assert_ne!(o.exit_code, 0, "a read-only mount");
            let conf = "/var/lib/kubelet/pods/u-web-1/volumes/kubernetes.io~configmap/conf";
            c.on_node(&format!(
                "mkdir {conf}/..2026_2 && echo colour=green > {conf}/..2026_2/app.conf && ln -sfn ..2026_2 {conf}/..data && rm {conf}/extra"
            ))
            .await;
            let refreshed = eventually(a.budget(Duration::from_secs(30)), || {
                let (mut run, req) = (run.clone(), sync("cat /etc/conf/app.conf; test -e /etc/conf/extra && echo extra", 10));
                async move { run.exec_sync(req).await.unwrap().into_inner().stdout == b"colour=green\n" }
            })
            .await;
            assert!(refreshed, "the configmap's update reached the container, its removed key gone");
            // Past its timeout: DEADLINE_EXCEEDED, and the command is killed.
            let e = run.exec_sync(sync("sleep 27", 1)).await.unwrap_err();
            assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
            let cmdlines = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done";
            let gone = eventually(a.budget(Duration::from_secs(10)), || {
                let (mut run, req) = (run.clone(), sync(cmdlines, 10));
                async move {
                    let o = run.exec_sync(req).await.unwrap().into_inner();
                    !String::from_utf8_lossy(&o.stdout).contains("sleep 27")
                }
            })
            .await;
            assert!(gone, "the timed-out command was killed");
            // kubelet rotates the log: renames it, then ReopenContainerLog; what comes after
            // goes to a new file.
            let log = status(&mut run, &cid2).await.log_path;
            log_lines(a, &c, &log, 1).await;
            c.on_node(&format!("mv {log} {log}.1")).await;
            run.reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: cid2.clone(),
            })
            .await
            .unwrap();
            run.exec_sync(sync("touch /tmp/go", 10)).await.unwrap();
            let fresh = log_lines(a, &c, &log, 1).await;
            assert_eq!(fresh[0].2, "after", "{fresh:?}");
            let old = c.on_node(&format!("cat {log}.1")).await;
            assert!(old.contains(" stdout F before") && !old.contains("after"), "{old}");
            let e = run
                .reopen_container_log(cri::ReopenContainerLogRequest {
                    container_id: cid.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "an exited container: {e:?}");
            let running = run
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        state: Some(cri::ContainerStateValue {
                            state: cri::ContainerState::ContainerRunning as i32,
                        }),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .containers;
            assert_eq!(
                running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
                [cid2.as_str()]
            );
            run.stop_container(cri::StopContainerRequest {
                container_id: cid2.clone(),
                timeout: 10,
            })
            .await
            .unwrap();
            let stopped = status(&mut run, &cid2).await;
            assert_eq!(
                (stopped.state, stopped.exit_code),
                (cri::ContainerState::ContainerExited as i32, 143),
                "SIGTERM: {stopped:?}"
            );

            // Unknown ids: NOT_FOUND for statuses, OK for stops and removals.
            let e = run
                .container_status(cri::ContainerStatusRequest {
                    container_id: "nope".into(),
                    verbose: false,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound);
            let e = run
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: "nope".into(),
                    verbose: false,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound);
            run.stop_container(cri::StopContainerRequest {
                container_id: "nope".into(),
                timeout: 0,
            })
            .await
            .unwrap();
            run.remove_container(cri::RemoveContainerRequest {
                container_id: "nope".into(),
            })
            .await
            .unwrap();
            run.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: "nope".into(),
            })
            .await
            .unwrap();
            // Bad input makes nothing: an unknown sandbox, an image the node lacks.
            let e = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: "nope".into(),
                    config: Some(container_config(&image_id, 9, "true")),
                    sandbox_config: None,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            let e = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(container_config(&format!("{REGISTRY}/test/absent:1"), 9, "true")),
                    sandbox_config: None,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            assert!(e.message().contains("pull it first"), "{e:?}");
            // Attacks through kubelet's own fields: a log path out of the pod's log
            // directory (to write a file of the node's choosing), a privileged container,
            // a host path mounted in (the node's keys), directly or through a symlink in a
            // volume kubelet made: each refused by field, nothing written, no container
            // made.
            type Tweak = Box<dyn Fn(&mut cri::ContainerConfig)>;
            let attacks: Vec<(Tweak, Code, &str)> = vec![
                (
                    Box::new(|c| c.log_path = "../../../../etc/aurae/evil".into()),
                    Code::InvalidArgument,
                    "config.log_path:",
                ),
                (
                    Box::new(|c| {
                        c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
                            privileged: true,
                            ..Default::default()
                        })
                    }),
                    Code::InvalidArgument,
                    "config.linux.security_context.privileged:",
                ),
                (
                    Box::new(|c| {
                        c.mounts.push(cri::Mount {
                            container_path: "/keys".into(),
                            host_path: "/etc/aurae/pki".into(),
                            ..Default::default()
                        })
                    }),
                    Code::InvalidArgument,
                    "config.mounts: [0]: host_path '/etc/aurae/pki' is not a file or directory kubelet made",
                ),
                (
                    Box::new(|c| {
                        c.mounts.push(cri::Mount {
                            container_path: "/keys".into(),
                            host_path: "/var/lib/kubelet/pods/u-web-1/volumes/kubernetes.io~configmap/evil".into(),
                            readonly: true,
                            ..Default::default()
                        })
                    }),
                    Code::InvalidArgument,
                    "'keys' leads out of the volume",
                ),
            ];
            for (tweak, code, words) in attacks {
                let mut config = container_config(&image_id, 9, "true");
                tweak(&mut config);
                let e = run
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: sid.clone(),
                        config: Some(config),
                        sandbox_config: None,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), code, "{e:?}");
                assert!(e.message().contains(words), "{e:?}");
            }
            let evil = c.on_node("test -e /etc/aurae/evil && echo THERE; true").await;
            assert!(!evil.contains("THERE"), "nothing written outside the log directory");
            assert_eq!(relist(&mut run).await.len(), 3, "nothing made by the refusals");

            // Teardown as kubelet does: stop the sandbox (NOTREADY, idempotent; no new
            // container), then the GC removes containers and the sandbox.
            for _ in 0..2 {
                run.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sid.clone(),
                })
                .await
                .unwrap();
            }
            let sst = run
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: sid.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            assert_eq!(sst.state, cri::PodSandboxState::SandboxNotready as i32);
            assert!(
                http_get(s.web, "/index.html").is_none(),
                "a stopped sandbox's host port is closed"
            );
            let e = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(container_config(&image_id, 3, "true")),
                    sandbox_config: None,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            for id in [&cid, &cid1, &cid2] {
                run.remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap();
            }
            for _ in 0..2 {
                run.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sid.clone(),
                })
                .await
                .unwrap();
            }
            let left = run
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
                .unwrap()
                .into_inner()
                .items;
            assert!(left.is_empty(), "{left:?}");
            let e = c.workloads.clone().status(pod_ref(&pod)).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "the runtime pod is freed: {e:?}");
            c.on_node("rm -rf /var/lib/kubelet/pods/u-web-1").await;
        });
    }
}

mod cri_cell {
    //! Issue #25: the `cell` runtime handler (a RuntimeClass whose pods need no KVM): the
    //! sandbox is an instance in a cell of the node, its containers cells in it. Driven in
    //! crictl's order: `runp`, `create --with-pull` (PullImage, then CreateContainer),
    //! `start`, `logs` (ContainerStatus, then the file), `exec -s`, `stopp`, `rmp`.

    use super::cri_replay::{kubelet_channel, kubelet_mounts, log_lines, run_sandbox, sh, status, KUBELET_FILES};

    /// kubelet's directory for the pod with the `cell` handler.
    const CELLED: &str = "/var/lib/kubelet/pods/u-celled-1";
    use super::*;
    use aurae_proto::cri;
    use cri::runtime_service_client::RuntimeServiceClient;

    #[test]
    fn a_sandbox_with_the_cell_handler_runs_its_container_in_an_instance_in_a_cell() {
        let s = shared_or_skip!();
        let a = &s.a;
        rt().block_on(async {
            let ch = kubelet_channel(a).await;
            let mut run = RuntimeServiceClient::new(ch.clone());
            let mut img = cri::image_service_client::ImageServiceClient::new(ch);
            let c = Client::connect(a).await;
            let meta = cri::PodSandboxMetadata {
                name: "celled".into(),
                uid: "u-celled-1".into(),
                namespace: "default".into(),
                attempt: 0,
            };
            let config = cri::PodSandboxConfig {
                metadata: Some(meta.clone()),
                log_directory: "/var/log/pods/default_celled_u-celled-1".into(),
                hostname: "celled-0".into(),
                labels: [("io.kubernetes.pod.uid".to_owned(), "u-celled-1".to_owned())].into(),
                ..Default::default()
            };
            let made = c.on_node(&KUBELET_FILES.replace("$UID_", "u-celled-1")).await;
            assert_eq!(made.trim(), "made", "{made}");
            run.update_runtime_config(super::cri_replay::pod_cidr(super::cri_replay::POD_CIDR))
                .await
                .unwrap();
            let (sid, pod, st) = run_sandbox(a, &mut run, config.clone(), "cell").await;
            assert_eq!(st.runtime_handler, "cell");
            let ip = st.network.unwrap().ip;
            assert!(ip.starts_with("10.244.7."), "from the pod CIDR: {ip}");
            let ps = pod_status(&c, &pod).await;
            assert_eq!(ps.isolation, pb::IsolationKind::Cell as i32, "{ps:?}");

            let image = img
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: busybox(),
                        ..Default::default()
                    }),
                    auth: None,
                    sandbox_config: None,
                })
                .await
                .unwrap()
                .into_inner()
                .image_ref;
            // What kubelet mounts in the pod's directory after the sandbox started (a
            // container's subPath, bound when the container is made) reaches the
            // instance too.
            let made = c
                .on_node(&format!(
                    "P={CELLED}; mkdir -p $P/volume-subpaths/conf/app && echo from-a-subpath > $P/sub-src && \
                     : > $P/volume-subpaths/conf/app/0 && mount -o bind $P/sub-src $P/volume-subpaths/conf/app/0 && echo made"
                ))
                .await;
            assert_eq!(made.trim(), "made", "{made}");
            let mut mounts = kubelet_mounts("u-celled-1");
            mounts.push(cri::Mount {
                container_path: "/etc/sub.conf".into(),
                host_path: format!("{CELLED}/volume-subpaths/conf/app/0"),
                readonly: true,
                ..Default::default()
            });
            let cid = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata {
                            name: "hello".into(),
                            attempt: 0,
                        }),
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                        command: vec![
                            "/bin/sh".into(),
                            "-c".into(),
                            "echo hello from a cell named $(hostname); exec sleep 600".into(),
                        ],
                        log_path: "hello/0.log".into(),
                        mounts: mounts.clone(),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            run.start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            })
            .await
            .unwrap();
            let running = status(&mut run, &cid).await;
            assert_eq!(running.state, cri::ContainerState::ContainerRunning as i32);
            let log = log_lines(a, &c, &running.log_path, 1).await;
            assert_eq!(
                log[0],
                ("stdout".into(), "F".into(), "hello from a cell named celled-0".into())
            );
            let o = sh(&mut run, &cid, "echo probe from $(hostname)").await;
            assert_eq!((o.stdout.as_slice(), o.exit_code), (&b"probe from celled-0\n"[..], 0));
            // kubelet's files, bound from its pod directory (which is bound into the
            // instance): the subPath too; the container's writes reach the node (its
            // /etc/hosts, the termination log at once, the emptyDir kubelet measures);
            // kubelet's update of a configmap is seen at once.
            let o = sh(&mut run, &cid, "cat /etc/conf/app.conf /etc/sub.conf; grep web /etc/hosts").await;
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                "colour=blue\nfrom-a-subpath\n10.254.0.9 web\n"
            );
            let o = sh(
                &mut run,
                &cid,
                "echo '10.254.0.10 extra' >> /etc/hosts && echo bye > /dev/termination-log && echo kept > /cache/x && ln -s / /cache/root && echo ok",
            )
            .await;
            assert_eq!(o.stdout, b"ok\n", "{:?}", String::from_utf8_lossy(&o.stderr));
            let node = c
                .on_node(&format!(
                    "P={CELLED}; tail -n 1 $P/etc-hosts; cat $P/containers/app/t0 $P/volumes/kubernetes.io~empty-dir/cache/x"
                ))
                .await;
            assert_eq!(node.trim_end(), "10.254.0.10 extra\nbye\nkept");
            let conf = format!("{CELLED}/volumes/kubernetes.io~configmap/conf");
            c.on_node(&format!(
                "mkdir {conf}/..2026_2 && echo colour=red > {conf}/..2026_2/app.conf && ln -sfn ..2026_2 {conf}/..data"
            ))
            .await;
            let o = sh(&mut run, &cid, "cat /etc/conf/app.conf").await;
            assert_eq!(o.stdout, b"colour=red\n", "no copy to wait for");
            // The attack: the symlink the container planted in its emptyDir, sent as a
            // mount (as a kubelet would send a subPath it did not check): it leads to the
            // node's /etc, so it is refused, and nothing is made.
            let mut evil = kubelet_mounts("u-celled-1");
            evil.push(cri::Mount {
                container_path: "/host-etc".into(),
                host_path: format!("{CELLED}/volumes/kubernetes.io~empty-dir/cache/root/etc"),
                ..Default::default()
            });
            let e = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sid.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata {
                            name: "evil".into(),
                            attempt: 0,
                        }),
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                        mounts: evil,
                        ..Default::default()
                    }),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().contains("is not a file or directory kubelet made for this pod"),
                "{e:?}"
            );
            let listed = run
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: sid.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .containers;
            assert_eq!(listed.len(), 1, "nothing made: {listed:?}");
            // stopp: the running container is killed with its sandbox; rmp takes both.
            run.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sid.clone(),
            })
            .await
            .unwrap();
            let stopped = status(&mut run, &cid).await;
            assert_eq!(
                stopped.state,
                cri::ContainerState::ContainerExited as i32,
                "{stopped:?}"
            );
            run.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sid })
                .await
                .unwrap();
            let e = run
                .container_status(cri::ContainerStatusRequest {
                    container_id: cid,
                    verbose: false,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "rmp removed its container too");
            let e = c.workloads.clone().status(pod_ref(&pod)).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound);

            // A hostNetwork pod (kube-proxy's kind): refused by the `vm` handler, by name;
            // with the node's default, an instance in a cell of the node in the node's
            // network namespace: its container sees the node's bridge, and the sandbox
            // has no address of its own (kubelet gives it the node's).
            let hconfig = cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "hostnet".into(),
                    uid: "u-hostnet-1".into(),
                    namespace: "kube-system".into(),
                    attempt: 0,
                }),
                log_directory: "/var/log/pods/kube-system_hostnet_u-hostnet-1".into(),
                linux: Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            network: cri::NamespaceMode::Node as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let e = run
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(hconfig.clone()),
                    runtime_handler: "vm".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains("'vm' cannot run a hostNetwork pod"), "{e:?}");
            let (hsid, hpod, hst) = run_sandbox(a, &mut run, hconfig.clone(), "").await;
            assert_eq!(
                hst.network.unwrap_or_default().ip,
                "",
                "the node's addresses, given by kubelet"
            );
            let ns = hst.linux.unwrap().namespaces.unwrap().options.unwrap();
            assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
            let ps = pod_status(&c, &hpod).await;
            assert_eq!(ps.isolation, pb::IsolationKind::Cell as i32, "{ps:?}");
            assert_eq!(ps.pod_ip, "", "the node's addresses, none of its own");
            let hcid = run
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: hsid.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata {
                            name: "agent".into(),
                            attempt: 0,
                        }),
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                        command: vec!["/bin/sleep".into(), "600".into()],
                        ..Default::default()
                    }),
                    sandbox_config: Some(hconfig),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            run.start_container(cri::StartContainerRequest {
                container_id: hcid.clone(),
            })
            .await
            .unwrap();
            let o = sh(&mut run, &hcid, "ls /sys/class/net").await;
            let nets = String::from_utf8_lossy(&o.stdout);
            assert!(
                nets.split_whitespace().any(|n| n == "aurae0"),
                "the node's bridge: {nets}"
            );
            // The attack: in the node's network, change it (a link, an address on the
            // node's bridge). Each refused (no NET_ADMIN), and the node unchanged.
            let o = sh(
                &mut run,
                &hcid,
                "ip link add evil0 type dummy; echo $?; ip addr add 10.254.0.250/24 dev aurae0; echo $?",
            )
            .await;
            let codes: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect();
            assert!(
                codes.len() == 2 && codes.iter().all(|c| c != "0"),
                "{codes:?} {:?}",
                o.stderr
            );
            let node = c.on_node("ls /sys/class/net; ip addr show aurae0").await;
            assert!(!node.contains("evil0") && !node.contains("10.254.0.250"), "{node}");
            run.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: hsid.clone(),
            })
            .await
            .unwrap();
            run.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: hsid })
                .await
                .unwrap();
            let (workloads, cgroups) = c.leftovers().await;
            assert!(workloads.is_empty() && cgroups.is_empty(), "{workloads:?} {cgroups:?}");
            c.on_node(&format!(
                "umount {CELLED}/volume-subpaths/conf/app/0; rm -rf {CELLED}"
            ))
            .await;
        });
    }
}

/// The CRI's streaming `Exec` as kubelet and crictl use it (`kubectl exec`, `kubectl cp`,
/// `crictl exec -it`): the URL `Exec` answers, reached through QEMU's forward of the
/// node's streaming port (the URL's path alone names the session), spoken with the test
/// tier's WebSocket client (`src/ws.rs`), for a container in a microVM sandbox (`vm`) and
/// in a cell sandbox (`cell`).
mod cri_stream {
    use super::cri_replay::{kubelet_channel, run_sandbox, status, Run};
    use super::*;
    use aurae_appliance_tests::spdy::SpdyClient;
    use aurae_appliance_tests::ws::{split_url, WsClient, STDIN};
    use aurae_proto::cri;
    use cri::runtime_service_client::RuntimeServiceClient;

    const V5: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
    const V4: &[&str] = &["v4.channel.k8s.io"];

    /// The CRI's runtime service, and busybox pulled through its image service (its id).
    async fn connect(a: &Appliance) -> (Run, String) {
        let ch = kubelet_channel(a).await;
        let mut img = cri::image_service_client::ImageServiceClient::new(ch.clone());
        let image = img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: busybox(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .image_ref;
        (RuntimeServiceClient::new(ch), image)
    }

    /// `Exec` for `cmd` in container `id`: the URL's path.
    async fn exec_url(run: &mut Run, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
        let url = run
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let (host, path) = split_url(&url);
        assert_eq!(host, format!("0.0.0.0:{STREAM_PORT}"), "the address it listens on");
        path
    }

    /// A sandbox with `handler` and one busybox container sleeping, its httpd serving
    /// "forwarded" on port 80: (sandbox, container).
    async fn sleeper(a: &Appliance, run: &mut Run, img: &str, handler: &str) -> (String, String) {
        let uid = format!("u-stream-{handler}");
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("stream-{handler}"),
                uid: uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: format!("stream-{handler}"),
            ..Default::default()
        };
        let (sid, _, _) = run_sandbox(a, run, config, handler).await;
        // A page for port-forward to fetch (httpd leaves for the background).
        let script =
            "mkdir -p /tmp/www && echo forwarded > /tmp/www/index.html && httpd -p 80 -h /tmp/www; exec sleep 600";
        let cid = start_new(run, &sid, "main", img, script, (false, false)).await;
        assert_eq!(
            status(run, &cid).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
        (sid, cid)
    }

    /// A second container of sandbox `sid` that keeps stdin (once): it answers each line
    /// with "heard LINE" (and "err LINE" on stderr), and says "stdin-ended" at its EOF.
    async fn talker(run: &mut Run, sid: &str, img: &str) -> String {
        let script = "while read l; do echo heard $l; echo err $l >&2; done; echo stdin-ended";
        start_new(run, sid, "talker", img, script, (true, false)).await
    }

    /// Creates and starts container `name` of sandbox `sid`: `img` running `script` with
    /// `sh -c`, keeping stdin (once) and on a terminal as `(stdin, tty)` say.
    async fn start_new(
        run: &mut Run,
        sid: &str,
        name: &str,
        img: &str,
        script: &str,
        (stdin, tty): (bool, bool),
    ) -> String {
        let cid = run
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sid.into(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: img.into(),
                        ..Default::default()
                    }),
                    command: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    stdin,
                    stdin_once: stdin,
                    tty,
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        run.start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .unwrap();
        cid
    }

    /// `Attach` to container `id`: the URL's path.
    async fn attach_url(run: &mut Run, id: &str, stdin: bool) -> Result<String, tonic::Status> {
        let url = run
            .attach(cri::AttachRequest {
                container_id: id.into(),
                stdin,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await?
            .into_inner()
            .url;
        Ok(split_url(&url).1)
    }

    /// A directory of files (one of random bytes, one empty, one nested), as `tar` packs it.
    fn tree() -> (tempfile::TempDir, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("src");
        std::fs::create_dir_all(d.join("nested/deeper")).unwrap();
        let mut noise = vec![0u8; 300_000];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
        std::fs::write(d.join("noise.bin"), &noise).unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        std::fs::write(d.join("nested/deeper/note.txt"), b"copied with kubectl cp\n").unwrap();
        let out = std::process::Command::new("tar")
            .args(["cf", "-", "-C"])
            .arg(&d)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success());
        (t, out.stdout)
    }

    #[test]
    fn exec_with_and_without_a_terminal_kubectl_cp_and_port_forward_in_both_handlers() {
        let s = shared_or_skip!();
        let a = &s.a;
        let addr = format!("127.0.0.1:{}", s.stream);
        rt().block_on(async {
            let (mut run, image) = connect(a).await;
            let c = Client::connect(a).await;
            let (t, tarball) = tree();
            for handler in ["vm", "cell"] {
                let (sid, cid) = sleeper(a, &mut run, &image, handler).await;
                // No terminal: each stream on its channel, the exit code as kubelet reads it.
                let path = exec_url(
                    &mut run,
                    &cid,
                    &["sh", "-c", "echo out; echo err >&2; exit 3"],
                    false,
                    false,
                )
                .await;
                let mut ws = WsClient::connect(&addr, &path, V4).await.unwrap();
                let o = ws.outcome().await;
                assert_eq!(
                    (o.stdout.as_slice(), o.stderr.as_slice(), o.exit_code()),
                    (&b"out\n"[..], &b"err\n"[..], Some(3)),
                    "{handler}: {:?}",
                    o.status
                );
                // A terminal: the size a resize set, Ctrl-C reaching the foreground
                // process (the shell's `sleep` ends with SIGINT, 130), the exit code.
                let path = exec_url(&mut run, &cid, &["sh"], true, true).await;
                let mut ws = WsClient::connect(&addr, &path, V5).await.unwrap();
                ws.resize(100, 33).await.unwrap();
                ws.send(STDIN, b"stty size\n").await.unwrap();
                let seen = ws.stdout_until("33 100").await;
                assert!(seen.contains("33 100"), "{handler}: {seen:?}");
                // Ctrl-C once `sleep` is the terminal's foreground process group (before
                // that the shell's line editor, or the shell itself, would take it).
                ws.send(STDIN, b"sleep 100\n").await.unwrap();
                let foreground = "for s in /proc/[0-9]*/stat; do set -- $(cat $s); \
                    [ \"$2\" = \"(sleep)\" ] && [ \"$5\" = \"$8\" ] && echo fg; done; true";
                let in_front = eventually(a.budget(Duration::from_secs(30)), || {
                    let (mut run, cid) = (run.clone(), cid.clone());
                    async move { super::cri_replay::sh(&mut run, &cid, foreground).await.stdout == b"fg\n" }
                })
                .await;
                assert!(in_front, "{handler}: sleep is in the foreground");
                ws.send(STDIN, b"\x03").await.unwrap();
                ws.send(STDIN, b"echo back $?\n").await.unwrap();
                let seen = ws.stdout_until("back 130").await;
                assert!(seen.contains("back 130"), "{handler}: {seen:?}");
                ws.send(STDIN, b"exit 7\n").await.unwrap();
                assert_eq!(ws.outcome().await.exit_code(), Some(7), "{handler}");
                // The same over SPDY/3.1, what kubelet speaks to the runtime.
                let path = exec_url(
                    &mut run,
                    &cid,
                    &["sh", "-c", "echo out; echo err >&2; exit 3"],
                    false,
                    false,
                )
                .await;
                let mut sp = SpdyClient::connect(&addr, &path, &["v4.channel.k8s.io"]).await.unwrap();
                sp.open_exec(false, false).await;
                let o = sp.outcome().await;
                assert_eq!(
                    (o.stdout.as_slice(), o.stderr.as_slice(), o.exit_code()),
                    (&b"out\n"[..], &b"err\n"[..], Some(3)),
                    "{handler} over SPDY: {:?}",
                    o.status
                );
                let path = exec_url(&mut run, &cid, &["sh"], true, true).await;
                let mut sp = SpdyClient::connect(&addr, &path, &["v4.channel.k8s.io"]).await.unwrap();
                sp.open_exec(true, true).await;
                sp.resize(90, 21).await;
                sp.send("stdin", b"stty size\n", false).await;
                let seen = sp.stdout_until("21 90").await;
                assert!(seen.contains("21 90"), "{handler} over SPDY: {seen:?}");
                sp.send("stdin", b"exit 5\n", false).await;
                assert_eq!(sp.outcome().await.exit_code(), Some(5), "{handler} over SPDY");
                // kubectl cp: tar over exec, in and back out, byte for byte (through
                // `sh`: the test's busybox has the applet but no /bin/tar link).
                let path = exec_url(
                    &mut run,
                    &cid,
                    &["sh", "-c", "mkdir -p /tmp/cp && tar xf - -C /tmp/cp"],
                    false,
                    true,
                )
                .await;
                // In over SPDY (stdin's FIN ends tar's input), back out over WebSocket.
                let mut sp = SpdyClient::connect(&addr, &path, &["v4.channel.k8s.io"]).await.unwrap();
                sp.open_exec(true, false).await;
                for piece in tarball.chunks(64 * 1024) {
                    sp.send("stdin", piece, false).await;
                }
                sp.send("stdin", b"", true).await;
                let o = sp.outcome().await;
                assert_eq!(
                    o.exit_code(),
                    Some(0),
                    "{handler}: {:?}",
                    String::from_utf8_lossy(&o.stderr)
                );
                let path = exec_url(&mut run, &cid, &["sh", "-c", "tar cf - -C /tmp/cp ."], false, false).await;
                let mut ws = WsClient::connect(&addr, &path, V5).await.unwrap();
                let since = std::time::Instant::now();
                let o = ws.outcome().await;
                assert_eq!(
                    o.exit_code(),
                    Some(0),
                    "{handler}: {} bytes of stdout in {:?}, closed {}, stderr {:?}, status {:?}",
                    o.stdout.len(),
                    since.elapsed(),
                    o.closed,
                    String::from_utf8_lossy(&o.stderr),
                    o.status
                );
                let back = t.path().join(format!("back-{handler}"));
                std::fs::create_dir_all(&back).unwrap();
                let mut untar = std::process::Command::new("tar")
                    .args(["xf", "-", "-C"])
                    .arg(&back)
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &o.stdout).unwrap();
                drop(untar.stdin.take());
                assert!(untar.wait().unwrap().success());
                for f in ["noise.bin", "empty", "nested/deeper/note.txt"] {
                    assert_eq!(
                        std::fs::read(back.join(f)).unwrap(),
                        std::fs::read(t.path().join("src").join(f)).unwrap(),
                        "{handler}: {f}"
                    );
                }
                // kubectl attach: to the entrypoint of a container that keeps stdin
                // (once), over SPDY (kubelet's) with stdin and over WebSocket without;
                // both see the output from when they joined; the end of the one stdin
                // ends the entrypoint, and both sessions with Success.
                let talk = talker(&mut run, &sid, &image).await;
                let path = attach_url(&mut run, &talk, false).await.unwrap();
                assert!(path.starts_with("/attach/"), "{path}");
                let mut watcher = WsClient::connect(&addr, &path, V5).await.unwrap();
                let path = attach_url(&mut run, &talk, true).await.unwrap();
                let mut sp = SpdyClient::connect(&addr, &path, &["v4.channel.k8s.io"]).await.unwrap();
                sp.open_exec(true, false).await;
                sp.send("stdin", b"one\n", true).await;
                let o = sp.outcome().await;
                assert_eq!(o.stdout, b"heard one\nstdin-ended\n", "{handler}");
                assert_eq!(o.stderr, b"err one\n", "{handler}");
                assert_eq!(o.exit_code(), Some(0), "{handler}: {:?}", o.status);
                // (When the watcher's join reached the instance is not known here: it sees
                // at least the end. The Aurae API's Attach, which says when it joined,
                // shows every client getting all output in cells.rs.)
                let o = watcher.outcome().await;
                assert!(o.stdout.ends_with(b"stdin-ended\n"), "{handler}: {:?}", o.stdout);
                assert_eq!(o.exit_code(), Some(0), "{handler}: {:?}", o.status);
                let ended = eventually(a.budget(Duration::from_secs(20)), || {
                    let (mut run, talk) = (run.clone(), talk.clone());
                    async move { status(&mut run, &talk).await.state == cri::ContainerState::ContainerExited as i32 }
                })
                .await;
                assert!(ended, "{handler}: its stdin closed once, it ended");
                // Refused: stdin of a container without it; a container that ended.
                let e = attach_url(&mut run, &cid, true).await.unwrap_err();
                assert_eq!(e.code(), Code::FailedPrecondition, "{handler}: {e:?}");
                assert!(e.message().starts_with("stdin:"), "{}", e.message());
                let e = attach_url(&mut run, &talk, false).await.unwrap_err();
                assert_eq!(e.code(), Code::FailedPrecondition, "{handler}: {e:?}");
                // kubectl attach -it to a container on a terminal (kubectl run -it): the
                // client's size, the shell's answers, its end.
                let term = start_new(&mut run, &sid, "term", &image, "exec sh", (true, true)).await;
                let url = run
                    .attach(cri::AttachRequest {
                        container_id: term.clone(),
                        stdin: true,
                        tty: true,
                        stdout: true,
                        stderr: false,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .url;
                let mut sp = SpdyClient::connect(&addr, &split_url(&url).1, &["v4.channel.k8s.io"])
                    .await
                    .unwrap();
                sp.open_exec(true, true).await;
                sp.resize(90, 21).await;
                sp.send("stdin", b"stty size\n", false).await;
                let seen = sp.stdout_until("21 90").await;
                assert!(seen.contains("21 90"), "{handler}: {seen:?}");
                sp.send("stdin", b"exit 5\n", false).await;
                assert_eq!(
                    sp.outcome().await.exit_code(),
                    Some(0),
                    "{handler}: an attach ends as a success"
                );
                let ended = eventually(a.budget(Duration::from_secs(20)), || {
                    let (mut run, term) = (run.clone(), term.clone());
                    async move { status(&mut run, &term).await.exit_code == 5 }
                })
                .await;
                assert!(ended, "{handler}: the shell's code is the container's");
                // kubelet's sandboxes are the CRI's: the Aurae API does not reach into them.
                let sandbox_pod = format!("cri-{}", &sid[..12]);
                let e = c
                    .runtime
                    .clone()
                    .port_forward(tokio_stream::iter(vec![pb::PortForwardRequest {
                        request: Some(pb::port_forward_request::Request::Start(pb::PortForwardStart {
                            pod: sandbox_pod.clone(),
                            port: 80,
                            ..Default::default()
                        })),
                    }]))
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{handler}: {e:?}");
                let e = c
                    .runtime
                    .clone()
                    .attach(tokio_stream::iter(vec![pb::AttachRequest {
                        request: Some(pb::attach_request::Request::Start(pb::AttachStart {
                            executable: "main".into(),
                            pod: sandbox_pod,
                            stdin: false,
                        })),
                    }]))
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{handler}: {e:?}");
                // kubectl port-forward: HTTP through the pod's port 80, over SPDY.
                let url = run
                    .port_forward(cri::PortForwardRequest {
                        pod_sandbox_id: sid.clone(),
                        port: vec![80],
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .url;
                let (_, path) = split_url(&url);
                let mut sp = SpdyClient::connect(&addr, &path, &["portforward.k8s.io"])
                    .await
                    .unwrap();
                let (e, d) = sp.forward(80, 0).await.unwrap();
                sp.send_on(d, b"GET /index.html HTTP/1.0\r\n\r\n", true).await;
                let got = sp.until_fin(&[d, e]).await;
                let page = String::from_utf8_lossy(&got[&d]).into_owned();
                assert!(
                    page.starts_with("HTTP/1.") && page.contains("forwarded"),
                    "{handler}: {page:?}"
                );
                // The same over WebSocket (crictl --transport websocket): the port in the
                // query, announced on its two channels, the page on the data channel.
                let url = run
                    .port_forward(cri::PortForwardRequest {
                        pod_sandbox_id: sid.clone(),
                        port: vec![80],
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .url;
                let path = format!("{}?port=80", split_url(&url).1);
                let mut ws = WsClient::connect(&addr, &path, &["v4.channel.k8s.io"]).await.unwrap();
                ws.send(0, b"GET /index.html HTTP/1.0\r\n\r\n").await.unwrap();
                let mut page = Vec::new();
                let mut announced = 0;
                while !String::from_utf8_lossy(&page).contains("forwarded") {
                    match ws.recv().await.unwrap() {
                        Some(aurae_appliance_tests::ws::Msg::Binary(b))
                            if b.len() == 3 && b[1..] == [80, 0] && announced < 2 =>
                        {
                            announced += 1
                        }
                        Some(aurae_appliance_tests::ws::Msg::Binary(b)) if b[0] == 0 => page.extend_from_slice(&b[1..]),
                        other => panic!("{handler}: {other:?} after {:?}", String::from_utf8_lossy(&page)),
                    }
                }
                assert_eq!(announced, 2, "{handler}: the port on its data and error channels");
                assert!(page.starts_with(b"HTTP/1."), "{handler}");
                run.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sid.clone(),
                })
                .await
                .unwrap();
                run.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sid })
                    .await
                    .unwrap();
            }
            let (workloads, cgroups) = c.leftovers().await;
            assert!(workloads.is_empty() && cgroups.is_empty(), "{workloads:?} {cgroups:?}");
        });
    }

    /// The attacks on the streaming server: a URL used twice, a token altered, a URL
    /// re-aimed at another kind of session, a request for a container that is not
    /// running; 1000 connections that send nothing. Each refused with nothing run; PID 1's
    /// API serves throughout, and the streaming server serves again after the flood.
    #[test]
    fn streaming_urls_are_single_use_and_a_flood_leaves_pid1_serving() {
        let s = shared_or_skip!();
        let a = &s.a;
        let addr = format!("127.0.0.1:{}", s.stream);
        rt().block_on(async {
            let (mut run, image) = connect(a).await;
            let c = Client::connect(a).await;
            let (sid, cid) = sleeper(a, &mut run, &image, "cell").await;
            let marker = "/tmp/ran";
            let path = exec_url(&mut run, &cid, &["sh", "-c", "echo once >> /tmp/ran"], false, false).await;
            let mut ws = WsClient::connect(&addr, &path, V5).await.unwrap();
            assert_eq!(ws.outcome().await.exit_code(), Some(0));
            let again = WsClient::connect(&addr, &path, V5).await.err().expect("refused");
            assert_eq!(again.status, 404, "{}", again.body);
            let path = exec_url(&mut run, &cid, &["sh", "-c", "echo twice >> /tmp/ran"], false, false).await;
            let flipped = match path.chars().last() {
                Some('a') => 'b',
                _ => 'a',
            };
            let altered = format!("{}{flipped}", &path[..path.len() - 1]);
            assert_eq!(WsClient::connect(&addr, &altered, V5).await.err().unwrap().status, 404);
            let as_attach = path.replacen("/exec/", "/attach/", 1);
            assert_eq!(
                WsClient::connect(&addr, &as_attach, V5).await.err().unwrap().status,
                404
            );
            assert_eq!(WsClient::connect(&addr, &path, V5).await.err().unwrap().status, 404);
            let o = super::cri_replay::sh(&mut run, &cid, &format!("cat {marker}")).await;
            assert_eq!(o.stdout, b"once\n", "nothing ran but the first");
            // A container that does not run: no URL.
            let e = run
                .exec(cri::ExecRequest {
                    container_id: "no-such".into(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            // 1000 connections that never send a request, from the node itself (through
            // QEMU's forward each would take half a second to open): `nc` reading from a
            // pipe no one writes. PID 1's API serves throughout; the streaming server
            // holds at most 64 and closes each within its head's time, so every `nc` ends.
            c.on_node("rm -f /tmp/flood.fifo; mkfifo /tmp/flood.fifo").await;
            let flood = format!(
                "exec 3<>/tmp/flood.fifo; i=0; while [ $i -lt 1000 ]; do \
                 nc 127.0.0.1 {STREAM_PORT} <&3 >/dev/null 2>&1 & i=$((i+1)); done; wait; echo all-closed"
            );
            c.exec(aurae_appliance_tests::sh("flood", "probe", &flood))
                .await
                .unwrap();
            let info = c.node.clone().info(pb::NodeInfoRequest::default()).await;
            assert!(info.is_ok(), "PID 1's API serves during the flood: {info:?}");
            let ended = tokio::time::timeout(a.budget(Duration::from_secs(120)), c.wait("flood")).await;
            assert!(ended.is_ok(), "the server closed every idle connection");
            assert_eq!(c.stdout("flood").await.trim_end(), "all-closed");
            c.free("flood").await;
            let path = exec_url(&mut run, &cid, &["echo", "after"], false, false).await;
            let mut ws = WsClient::connect(&addr, &path, V5).await.unwrap();
            assert_eq!(ws.outcome().await.stdout, b"after\n", "served again after the flood");
            run.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sid.clone(),
            })
            .await
            .unwrap();
            run.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sid })
                .await
                .unwrap();
        });
    }
}
