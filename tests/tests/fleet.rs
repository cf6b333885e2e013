//! Appliance tier, issue #13: a fleet boots over the network. `rootfs/pxe.sh` lays out a
//! boot directory (one kernel, the shared layers, one pki layer per known MAC) and
//! `qemu/fleet` serves it from dnsmasq (DHCP with fixed leases, TFTP) in a network
//! namespace of its own, to four QEMU machines that boot from their NICs (no `-kernel`):
//! three BIOS PCs whose NIC ROM is iPXE, and one UEFI machine (OVMF) whose firmware's own
//! PXE client loads Debian's `ipxe.efi`, which boots the `metal` kernel through its EFI
//! stub. Traffic stays in that namespace: the test reaches the nodes with
//! `ip netns exec NS aer ...`.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{appliance_or_skip, eventually, project_root as root, rt, stop_runner, Appliance};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Three known machines (fixed leases, identities fleet-1..3) and one unknown.
/// fleet-3 is the UEFI machine.
const KNOWN: [(&str, &str, &str); 3] = [
    ("52:54:00:a0:00:01", "10.44.0.11", "fleet-1"),
    ("52:54:00:a0:00:02", "10.44.0.12", "fleet-2"),
    ("52:54:00:a0:00:03", "10.44.0.13", "fleet-3"),
];
const UNKNOWN: &str = "52:54:00:a0:00:09";
/// Four machines booting at once under TCG on two cores, each fetching ~9 MiB by TFTP:
/// about 30 s on the reference machine; scaled by the measured boot, as other budgets are.
const FLEET_BUDGET: Duration = Duration::from_secs(240);

/// `aer` inside the fleet's namespace, with the build's client identity.
fn aer(build: &Path, netns: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(build.join("bin/aer"))
        .args(["--config", build.join("aer.toml").to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SHA-256 fingerprint of the certificate a node serves (openssl in the namespace).
fn served_fingerprint(build: &Path, netns: &str, ip: &str) -> String {
    let pki = build.join("pki");
    let script = format!(
        "openssl s_client -connect {ip}:8443 -cert {c} -key {k} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        c = pki.join("client.crt").display(),
        k = pki.join("client.key").display()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn file_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Fleet {
    child: std::process::Child,
    out: PathBuf,
}

impl Fleet {
    fn console(&self, n: usize) -> String {
        std::fs::read_to_string(self.out.join(format!("console-{n}.log"))).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        stop_runner(&mut self.child);
        if std::thread::panicking() {
            for n in 1..=4 {
                let c = self.console(n);
                let lines: Vec<&str> = c.lines().collect();
                eprintln!(
                    "--- machine {n}, last 40 console lines ---\n{}",
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            let log = std::fs::read_to_string(self.out.join("dnsmasq.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().collect();
            eprintln!("--- dnsmasq ---\n{}", tail[tail.len().saturating_sub(40)..].join("\n"));
        }
    }
}

#[test]
fn a_fleet_boots_over_the_network_each_node_with_its_own_identity() {
    let build = appliance_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    let mut pxe = Command::new(root().join("rootfs/pxe.sh"));
    pxe.arg(&build).arg(&boot);
    for (mac, _, name) in KNOWN {
        pxe.arg(format!("{mac}={name}"));
    }
    let st = pxe.status().unwrap();
    assert!(st.success(), "rootfs/pxe.sh: {st}");
    // The boot server hands out no identity for a MAC it does not know.
    assert!(!boot.join("nodes/52-54-00-a0-00-09.cpio.zst").exists());

    // Budgets scaled to this machine: one plain boot, timed, as every appliance test does.
    let budget = Appliance::boot_with(&build, Duration::from_secs(120), &[]).budget(FLEET_BUDGET);
    let netns = format!("aurae-fleet-{}", std::process::id());
    let out = dir.path().join("out");
    let mut args: Vec<String> = KNOWN.iter().map(|(m, ip, n)| format!("{m}={ip},{n}")).collect();
    args[2].push_str("/uefi");
    args.push(UNKNOWN.into());
    let began = Instant::now();
    let child = Command::new(root().join("qemu/fleet"))
        .env("BOOT_DIR", &boot)
        .env("OUT", &out)
        .env("NETNS", &netns)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let fleet = Fleet {
        child,
        out: out.clone(),
    };
    rt().block_on(async {
        for (_, ip, name) in KNOWN {
            let addr = format!("{ip}:8443");
            let up = eventually(budget, || async {
                aer(&build, &netns, &["--addr", &addr, "--timeout", "2", "health"]).0 == Some(0)
            })
            .await;
            assert!(up, "{name} ({ip}) never served");
        }
    });
    eprintln!(
        "fleet: three nodes serving {:.1} s after power-on",
        began.elapsed().as_secs_f64()
    );

    // One command, every node: each its own identity, its address and name by DHCP.
    let nodes = KNOWN.map(|(_, ip, _)| ip).join(",");
    let (code, json, err) = aer(&build, &netns, &["--nodes", &nodes, "--json", "node", "info"]);
    assert_eq!(code, Some(0), "{json}\n{err}");
    let all: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut ids = Vec::new();
    for ((mac, ip, name), n) in KNOWN.iter().zip(all.as_array().unwrap()) {
        assert_eq!(n["node"], format!("{ip}:8443"));
        assert_eq!(n["exit"], 0, "{n}");
        let i = &n["output"];
        assert_eq!(i["spiffe_id"], format!("spiffe://aurae.local/node/{name}"), "{i}");
        assert_eq!(i["hostname"], *name, "the lease's hostname: {i}");
        assert_eq!(i["uplink_address"], format!("{ip}/24"), "{i}");
        assert_eq!(i["dhcp_lease"]["server"], "10.44.0.1", "{i}");
        assert_eq!(i["dhcp_lease"]["router"], "10.44.0.1", "{i}");
        ids.push(i["spiffe_id"].as_str().unwrap().to_owned());
        // The key it serves with is its own: the certificate made for it, no other's.
        let served = served_fingerprint(&build, &netns, ip);
        let own = file_fingerprint(&build.join(format!("pki/nodes/{name}/server.crt")));
        assert!(
            !served.is_empty() && served == own,
            "{name} ({mac}) serves {served}, its own is {own}"
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "three identities: {ids:?}");
    // The same fleet named once in a config file: `aer --all-nodes`.
    let conf = dir.path().join("fleet.toml");
    let pki = build.join("pki");
    std::fs::write(
        &conf,
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"\nnodes = [{}]\n",
            pki.join("ca.crt").display(),
            pki.join("client.crt").display(),
            pki.join("client.key").display(),
            KNOWN.map(|(_, ip, _)| format!("\"{ip}\"")).join(", ")
        ),
    )
    .unwrap();
    let all = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(build.join("bin/aer"))
        .arg("--config")
        .arg(&conf)
        .args(["--all-nodes", "health"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success(), "{text}{}", String::from_utf8_lossy(&all.stderr));
    for (_, ip, _) in KNOWN {
        assert!(text.contains(&format!("== {ip}:8443")), "{text}");
    }
    // fleet-3 came up through its UEFI firmware's PXE, ipxe.efi and the EFI stub.
    let uefi = fleet.console(3);
    for step in [
        "Start PXE over IPv4",
        "NBP filename is ipxe.efi",
        "boot.ipxe",
        "bzImage-metal",
    ] {
        assert!(uefi.contains(step), "fleet-3's console shows '{step}':\n{uefi}");
    }

    // The unknown machine booted, says why it does not serve, and does not.
    let unknown = fleet.console(4);
    assert!(
        unknown.contains("this machine has no identity") && unknown.contains("52:54:00:a0:00:09"),
        "{unknown}"
    );
    let leases = std::fs::read_to_string(out.join("leases")).unwrap();
    let its_ip = leases
        .lines()
        .find(|l| l.contains(UNKNOWN))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no lease for the unknown machine: {leases}"))
        .to_owned();
    let (code, _, err) = aer(
        &build,
        &netns,
        &["--addr", &format!("{its_ip}:8443"), "--timeout", "2", "health"],
    );
    assert_eq!(code, Some(3), "the unknown machine does not serve: {err}");
    // A fan-out with it in names it as the one that failed, and fails.
    let (code, _, err) = aer(
        &build,
        &netns,
        &[
            "--nodes",
            &format!("{},{its_ip}", KNOWN[0].1),
            "--timeout",
            "2",
            "health",
        ],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("failed on 1 of 2 nodes: {its_ip}:8443 (exit 3)")),
        "{err}"
    );

    // Past T1 of a 2-minute lease (60 s), the node renewed it in place and still serves.
    std::thread::sleep(Duration::from_secs(70).saturating_sub(began.elapsed()));
    let renewed = rt().block_on(eventually(budget, || async {
        let (code, json, _) = aer(&build, &netns, &["--addr", "10.44.0.11:8443", "--json", "node", "info"]);
        code == Some(0)
            && serde_json::from_str::<serde_json::Value>(&json).is_ok_and(|i| {
                i["dhcp_lease"]["renewals"].as_u64() >= Some(1) && i["uplink_address"] == "10.44.0.11/24"
            })
    }));
    assert!(renewed, "fleet-1 renewed its lease:\n{}", fleet.console(1));

    dhcp_server_goes_away_and_returns(&build, &netns, &fleet, budget);

    drop(fleet);
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&netns),
        "the fleet's namespace is removed"
    );
}

/// The uplink's DHCP server goes away (docs/faults.md). fleet-1's 2-minute lease runs
/// out: the node says so and its uplink address goes. auraed serves on all along: a cell
/// on the node (in its network) reaches the API on the bridge's address every second. Once
/// the server is back the node has its address again, in the same boot, and the
/// workload started before the outage still runs.
fn dhcp_server_goes_away_and_returns(build: &Path, netns: &str, fleet: &Fleet, budget: Duration) {
    let node = ["--addr", "10.44.0.11:8443"];
    let on_node = |args: &[&str]| aer(build, netns, &[&node[..], args].concat());
    let info = || -> Option<serde_json::Value> {
        let (code, json, _) = on_node(&["--timeout", "5", "--json", "node", "info"]);
        (code == Some(0)).then(|| serde_json::from_str(&json).ok()).flatten()
    };
    let before = info().expect("fleet-1 answers before the outage");
    let (code, _, err) = on_node(&["cell", "create", "dprobe", "--share", "net"]);
    assert_eq!(code, Some(0), "{err}");
    // busybox nc ends when the server closes; a TLS server closes on a plain request.
    let probe = "while :; do if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 10.254.0.1 8443 >/dev/null 2>&1; \
                 then echo up; else echo down; fi; sleep 1; done";
    let (code, _, err) = on_node(&["exec", "dprobe", "--cell", "dprobe", "--", "/bin/sh", "-c", probe]);
    assert_eq!(code, Some(0), "{err}");
    let probe_log = || on_node(&["logs", "dprobe"]).1;
    let ups = |log: &str| log.lines().filter(|l| l.trim() == "up").count();
    let downs = |log: &str| log.lines().filter(|l| l.trim() == "down").count();
    let probing = rt().block_on(eventually(budget, || async { ups(&probe_log()) > 0 }));
    assert!(probing, "the probe reaches the API on the bridge: {}", probe_log());

    // The server goes away.
    std::fs::write(fleet.out.join("dhcp-off"), "").unwrap();
    let pid = std::fs::read_to_string(fleet.out.join("dnsmasq.pid")).unwrap();
    let killed = Command::new("kill").arg(pid.trim()).status().unwrap();
    assert!(killed.success(), "dnsmasq ended");
    let off = Instant::now();
    // The lease runs out (at most its 2 minutes after the last renewal, then the budget).
    let lost = rt().block_on(eventually(budget + Duration::from_secs(120), || async {
        fleet.console(1).contains("lost its lease on 10.44.0.11")
    }));
    assert!(lost, "fleet-1's lease ran out:\n{}", fleet.console(1));
    let (code, _, _) = on_node(&["--timeout", "2", "health"]);
    assert_ne!(code, Some(0), "with no lease, fleet-1 has no address on the uplink");

    // The server returns: the node asks anew and gets its address back.
    std::fs::remove_file(fleet.out.join("dhcp-off")).unwrap();
    let mut after = None;
    let back = rt().block_on(eventually(budget, || {
        let i = info();
        let ok = i
            .as_ref()
            .is_some_and(|i| i["uplink_address"] == "10.44.0.11/24" && i["dhcp_lease"]["renewals"].as_u64() == Some(0));
        if ok {
            after = i;
        }
        async move { ok }
    }));
    assert!(back, "fleet-1 has its lease again:\n{}", fleet.console(1));
    let after = after.unwrap();
    let (b, a) = (
        before["uptime_millis"].as_u64().unwrap(),
        after["uptime_millis"].as_u64().unwrap(),
    );
    assert!(
        a >= b + off.elapsed().as_millis() as u64 - 2000,
        "the same boot: uptime {b} ms before, {a} ms after an outage of {:?}",
        off.elapsed()
    );
    let log = probe_log();
    assert_eq!(downs(&log), 0, "the API answered on the bridge all along:\n{log}");
    assert!(
        ups(&log) as u64 >= off.elapsed().as_secs() / 4,
        "the probe kept probing through the outage ({} answers in {:?}):\n{log}",
        ups(&log),
        off.elapsed()
    );
    let (code, _, err) = on_node(&["cell", "stop", "dprobe"]);
    assert_eq!(code, Some(0), "{err}");
}
