//! Appliance tier: the real kernel + initramfs under QEMU (TCG), the real API over mTLS.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{appliance_or_skip, rt, Appliance};
use auraed::pb;
use std::time::Duration;

const BOOT_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn auraed_binary_is_static() {
    let build = appliance_or_skip!();
    let elf = std::fs::read(build.join("bin/auraed")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let types: Vec<u32> = (0..phnum)
        .map(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap()))
        .collect();
    const PT_INTERP: u32 = 3;
    assert!(
        !types.contains(&PT_INTERP),
        "auraed asks for a dynamic loader (PT_INTERP): it must be static"
    );
    let libc = std::fs::read_to_string(build.join("bin/auraed.libc")).unwrap();
    eprintln!("auraed: static, {} bytes, libc {}", elf.len(), libc.trim());
}

/// (name, mode, data) of every entry of a newc cpio archive.
fn cpio_entries(a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap() as usize;
    let pad4 = |n: usize| (n + 3) & !3;
    let (mut at, mut out) = (0, Vec::new());
    while at + 110 <= a.len() {
        assert_eq!(&a[at..at + 6], b"070701", "newc magic at {at}");
        let field = |i: usize| hex(&a[at + 6 + 8 * i..at + 14 + 8 * i]);
        let (mode, size, namesize) = (field(1) as u32, field(6), field(11));
        let name_end = at + 110 + namesize - 1;
        let name = String::from_utf8_lossy(&a[at + 110..name_end]).into_owned();
        let data_at = pad4(at + 110 + namesize);
        if name == "TRAILER!!!" {
            break;
        }
        out.push((name, mode, a[data_at..data_at + size].to_vec()));
        at = pad4(data_at + size);
    }
    out
}

/// Every private key in every built layer is readable by root only, so is every layer file
/// that holds one, and no layer carries the root CA's key (it stays on the build host).
#[test]
fn layers_keep_private_keys_private_and_never_carry_the_root_key() {
    use std::os::unix::fs::PermissionsExt;
    let build = appliance_or_skip!();
    let root_key = std::fs::read_to_string(build.join("pki/ca.key")).unwrap();
    let root_body: String = root_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut keys = 0;
    for layer in std::fs::read_dir(build.join("initramfs")).unwrap().flatten() {
        let path = layer.path();
        if !path.to_string_lossy().ends_with(".cpio.zst") {
            continue;
        }
        let out = std::process::Command::new("zstd")
            .arg("-dc")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "zstd -dc {}", path.display());
        let entries = cpio_entries(&out.stdout);
        let mut holds_key = false;
        for (name, mode, data) in &entries {
            let text = String::from_utf8_lossy(data);
            let flat: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(
                root_body.is_empty() || !flat.contains(&root_body),
                "{} carries the root CA key as {name}",
                path.display()
            );
            if text.contains("PRIVATE KEY-----") {
                holds_key = true;
                keys += 1;
                assert_eq!(
                    mode & 0o777,
                    0o600,
                    "{name} in {} is {:o}",
                    path.display(),
                    mode & 0o777
                );
            }
        }
        if holds_key {
            let mode = layer.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} holds private keys but is {mode:o}", path.display());
        }
    }
    assert!(keys >= 2, "the node's key and its spawn CA's key were found ({keys})");
}

#[test]
fn boots_serves_as_pid1_and_powers_off_on_the_rpc() {
    let build = appliance_or_skip!();
    let mut a = Appliance::boot(&build, BOOT_DEADLINE);
    let t = a.target();
    rt().block_on(async {
        let ch = t.connect().await.unwrap();
        let info = pb::node_client::NodeClient::new(ch.clone())
            .info(pb::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        let log = a.console_log();
        assert_eq!(info.mode, pb::Mode::Pid1 as i32, "{log}");
        assert_eq!(info.pid, 1);
        assert_eq!(info.hostname, "aurae");
        assert!(
            info.kernel_release.starts_with("6.1."),
            "kernel {}",
            info.kernel_release
        );
        for c in ["cpu", "cpuset", "memory", "io", "pids"] {
            assert!(
                info.cgroup_controllers.iter().any(|x| x == c),
                "controller {c} missing: {:?}",
                info.cgroup_controllers
            );
        }
        assert!(
            info.init_failures.is_empty(),
            "init failures: {:?}\n{log}",
            info.init_failures
        );
        assert_eq!(info.spiffe_id, "spiffe://aurae.local/node/aurae");
        assert_eq!(info.peer_spiffe_id, "spiffe://aurae.local/client/admin");
        // Under TCG with emulated SVM (-cpu qemu64,+svm,+npt) the guest's own KVM works.
        assert!(info.kvm_usable, "guest KVM not usable: {}", info.kvm_detail);
        assert!(info.serving_since_boot_micros > 0);
        eprintln!(
            "appliance: kernel start → serving {:.3} s (guest clock), auraed RSS {:.1} MiB",
            info.serving_since_boot_micros as f64 / 1e6,
            info.auraed_rss_bytes as f64 / 1048576.0
        );

        // Plaintext is refused by the appliance too.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", a.port))
            .unwrap()
            .connect()
            .await;
        let refused = match plain {
            Err(_) => true,
            Ok(ch) => pb::node_client::NodeClient::new(ch)
                .info(pb::NodeInfoRequest {})
                .await
                .is_err(),
        };
        assert!(refused, "plaintext client got an answer from the appliance");

        pb::node_client::NodeClient::new(ch)
            .shutdown(pb::ShutdownRequest {
                grace_period_millis: 2000,
            })
            .await
            .unwrap();
    });
    let st = a.wait_exit(Duration::from_secs(60));
    let log = a.console_log();
    assert!(
        st.success(),
        "QEMU exit {st}: the guest did not power off cleanly\n{log}"
    );
    assert!(
        log.contains("reboot: Power down"),
        "no ACPI power-down in the console\n{log}"
    );
}

#[test]
fn power_button_powers_off_cleanly() {
    let build = appliance_or_skip!();
    let mut a = Appliance::boot(&build, BOOT_DEADLINE);
    let reply = a.qmp("system_powerdown");
    assert!(reply.contains("return"), "QMP: {reply}");
    let st = a.wait_exit(Duration::from_secs(60));
    let log = a.console_log();
    assert!(st.success(), "QEMU exit {st}\n{log}");
    assert!(
        log.contains("power button pressed"),
        "auraed did not see the power button\n{log}"
    );
    assert!(log.contains("reboot: Power down"), "{log}");
}

#[test]
fn boots_on_microvm_too() {
    let build = appliance_or_skip!();
    let mut a = Appliance::boot_with(&build, BOOT_DEADLINE, &[("MACHINE", "microvm")]);
    let t = a.target();
    rt().block_on(async {
        let mut c = pb::node_client::NodeClient::new(t.connect().await.unwrap());
        let info = c.info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.mode, pb::Mode::Pid1 as i32);
        assert!(
            info.init_failures.is_empty(),
            "init failures on microvm: {:?}",
            info.init_failures
        );
        c.shutdown(pb::ShutdownRequest {
            grace_period_millis: 1000,
        })
        .await
        .unwrap();
    });
    let st = a.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "QEMU (microvm) exit {st}\n{}", a.console_log());
}

/// `aurae.ip=dhcp`: the uplink's address and hostname come from a DHCP lease (QEMU's own
/// DHCP server, naming the node); the API serves on the leased address (the host's forward
/// reaches 10.0.2.15 only once it is set) and `NodeInfo` shows the lease. (A router in the
/// lease, and renewal under a short lease: fleet.rs, with dnsmasq.)
#[test]
fn the_uplink_takes_its_address_and_hostname_from_dhcp() {
    let build = appliance_or_skip!();
    let a = Appliance::boot_with(
        &build,
        BOOT_DEADLINE,
        &[("UPLINK", "aurae.ip=dhcp"), ("DHCP_HOSTNAME", "leased-node")],
    );
    rt().block_on(async {
        let c = aurae_appliance_tests::Client::connect(&a).await;
        let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);
        assert_eq!(
            (info.uplink.as_str(), info.uplink_address.as_str()),
            ("eth0", "10.0.2.15/24"),
            "{info:?}"
        );
        let l = info
            .dhcp_lease
            .clone()
            .unwrap_or_else(|| panic!("no lease shown: {info:?}"));
        // QEMU's server under restrict=on names no router (nor DNS): the node adds no route.
        assert_eq!((l.server.as_str(), l.router.as_str()), ("10.0.2.2", ""), "{l:?}");
        assert!(l.lease_seconds > 0 && l.renew_seconds < l.lease_seconds, "{l:?}");
        assert_eq!(l.hostname, "leased-node");
        assert_eq!(info.hostname, "leased-node", "no aurae.hostname: the lease's");
        let routes = c.on_node("cat /proc/net/route").await;
        assert!(
            routes.lines().any(|r| r.starts_with("eth0\t0002000A\t00000000")),
            "the leased subnet is on eth0: {routes}"
        );
        assert!(
            !routes.lines().any(|r| r.split('\t').nth(1) == Some("00000000")),
            "no default route without a router in the lease: {routes}"
        );
    });
}

/// A DHCP server that hands out a subnet the node already uses (here QEMU's 10.0.2.0/24,
/// which the node's named bridge `lab0` holds): the node refuses the lease, says why, and
/// asks again with back-off, never taking the address or a route from it.
#[test]
fn a_lease_inside_the_nodes_own_subnet_is_refused() {
    let build = appliance_or_skip!();
    let mut a = Appliance::start_with(
        &build,
        &[
            ("UPLINK", "aurae.ip=dhcp"),
            ("EXTRA_CMDLINE", "aurae.bridges=lab0=10.0.2.1/24"),
        ],
    );
    let refusal = "dhcp: the ACK's subnet 10.0.2.15/24 overlaps this node's own 10.0.2.1/24";
    let seen = a.wait_console(refusal, 2, BOOT_DEADLINE);
    let log = a.console_log();
    assert!(seen, "the lease was not refused twice:\n{log}");
    assert!(log.contains("starting over"), "{log}");
    assert!(
        !log.contains("dhcp: eth0 10.0.2.15/24 from"),
        "the node took the lease:\n{log}"
    );
}

/// `NET=tap`: the runner makes a network namespace with a bridge and a TAP, runs QEMU in it,
/// and removes it afterwards. The node is reachable there (and only there) over mTLS.
#[test]
fn boots_on_a_tap_inside_its_own_network_namespace() {
    use std::process::{Command, Stdio};
    let build = appliance_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let log = std::fs::File::create(&console).unwrap();
    let root = aurae_appliance_tests::project_root();
    struct Runner(std::process::Child);
    impl Drop for Runner {
        fn drop(&mut self) {
            aurae_appliance_tests::stop_runner(&mut self.0);
        }
    }
    let qemu = Command::new(root.join("qemu/run"))
        .env("BUILD", &build)
        .env("NET", "tap")
        .env("NO_REBOOT", "1")
        .env("ACCEL", "tcg")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut qemu = Runner(qemu);
    let netns = format!("aurae-run-{}", qemu.0.id());
    let pki = build.join("pki");
    let aer = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(build.join("bin/auraed"))
            .args([
                "aer",
                "--addr",
                "10.0.2.15:8443",
                "--server-name",
                "localhost",
                "--timeout",
                "3",
            ])
            .arg("--ca")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("client.crt"))
            .arg("--key")
            .arg(pki.join("client.key"))
            .args(args)
            .output()
            .unwrap()
    };
    let start = std::time::Instant::now();
    loop {
        if aer(&["health"]).status.success() {
            break;
        }
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if let Ok(Some(st)) = qemu.0.try_wait() {
            panic!("QEMU exited ({st}) before serving on the TAP\n{log}");
        }
        if start.elapsed() > BOOT_DEADLINE {
            panic!("not serving on the TAP within {BOOT_DEADLINE:?}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("TAP: serving after {:.1} s in {netns}", start.elapsed().as_secs_f64());
    let info = aer(&["--json", "node", "info"]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("\"mode\":\"pid1\""), "{text}");
    let host_view = Command::new("ip").args(["link", "show", "tap0"]).output().unwrap();
    assert!(
        !host_view.status.success(),
        "the TAP must not exist outside the namespace"
    );
    assert!(aer(&["node", "shutdown", "--grace-ms", "1000"]).status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = qemu.0.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "QEMU did not exit after Shutdown");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        st.success(),
        "QEMU exit {st}\n{}",
        std::fs::read_to_string(&console).unwrap_or_default()
    );
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "the runner removed its network namespace"
    );
}

/// Ceilings, on a node booted with `aurae.max_workloads=6`: a fork bomb in a cell without
/// limits runs into the workloads root's default pids/memory ceiling while PID 1 keeps
/// answering, and stopping the cell ends all of it; the seventh workload is refused with
/// RESOURCE_EXHAUSTED, and nothing is created for it.
#[test]
fn a_fork_bomb_and_the_workload_beyond_the_maximum_leave_pid1_serving() {
    use aurae_appliance_tests::{eventually, sh, Client};
    let build = appliance_or_skip!();
    // 512 MiB: the bomb meets the memory ceiling after a few thousand processes.
    let mut a = Appliance::boot_with(
        &build,
        BOOT_DEADLINE,
        &[("EXTRA_CMDLINE", "aurae.max_workloads=6"), ("MEM", "512M")],
    );
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let ceiling: u64 = c
            .on_node("cat /sys/fs/cgroup/aurae/pids.max")
            .await
            .trim()
            .parse()
            .unwrap();
        // The probe cell goes: the node is to hold only what this test counts.
        c.workloads
            .clone()
            .stop(pb::StopRequest {
                workload: Some(aurae_appliance_tests::cell_ref("probe")),
                signal: 0,
                grace_period_millis: 0,
            })
            .await
            .unwrap();
        c.workloads
            .clone()
            .free(aurae_appliance_tests::cell_ref("probe"))
            .await
            .unwrap();
        c.cell(pb::Cell {
            name: "bomb".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        c.exec(sh("fuse", "bomb", "f() { f | f & }; f; sleep 1000"))
            .await
            .unwrap();
        // Until it meets a ceiling of the workloads root: its pids.max (then every fork in
        // it fails) or its memory.max (then the OOM killer acts inside it).
        let t = std::time::Instant::now();
        let full = eventually(a.budget(Duration::from_secs(120)), || async {
            let u = c.cell_status("bomb").await.usage.unwrap();
            u.pids_current + 2 >= ceiling || u.memory_oom_events > 0
        })
        .await;
        let u = c.cell_status("bomb").await.usage.unwrap();
        eprintln!(
            "fork bomb: {} pids (ceiling {ceiling}), {} OOM kills, {:.0} MiB after {:.1} s",
            u.pids_current,
            u.memory_oom_kill_events,
            u.memory_current_bytes as f64 / 1048576.0,
            t.elapsed().as_secs_f64()
        );
        assert!(full, "the bomb never reached a ceiling: {u:?}");
        // PID 1 still answers while the bomb runs, and stopping the cell ends it all.
        let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.pid, 1);
        let stopped = tokio::time::timeout(
            a.budget(Duration::from_secs(60)),
            c.workloads.clone().stop(pb::StopRequest {
                workload: Some(aurae_appliance_tests::cell_ref("bomb")),
                signal: 0,
                grace_period_millis: 0,
            }),
        )
        .await;
        assert!(matches!(stopped, Ok(Ok(_))), "{stopped:?}");
        c.workloads
            .clone()
            .free(aurae_appliance_tests::cell_ref("bomb"))
            .await
            .unwrap();

        for i in 0..6 {
            c.cell(pb::Cell {
                name: format!("w{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let e = c
            .cell(pb::Cell {
                name: "w6".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("aurae.max_workloads"), "{}", e.message());
        let e = c
            .runtime
            .clone()
            .run_executable(pb::Executable {
                name: "one-more".into(),
                argv: vec!["/bin/true".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        let all = c
            .workloads
            .clone()
            .list(pb::ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .workloads;
        assert_eq!(all.len(), 6, "nothing kept for the refused ones: {all:?}");
        c.node
            .clone()
            .shutdown(pb::ShutdownRequest {
                grace_period_millis: 1000,
            })
            .await
            .unwrap();
    });
    assert!(a.wait_exit(BOOT_DEADLINE).success());
}
