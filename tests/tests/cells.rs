//! Appliance tier: cells on the appliance's real cgroup v2 — each limit asserted by its
//! effect (OOM kill, throttling, failed fork), each namespace by what a process in the cell
//! sees, the sidecar pattern, nesting, freeze/thaw, and refusals that leave nothing. One
//! appliance serves every test of this file; each test cleans up and asserts it left nothing.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{cell_ref, eventually, rt, sh, shared_or_skip, Client, Fields};
use auraed::pb;
use std::time::Duration;
use tonic::Code;

fn cell(name: &str, r: pb::CellResources) -> pb::Cell {
    pb::Cell {
        name: name.into(),
        resources: Some(r),
        ..Default::default()
    }
}

/// Node memory pressure: workloads without limits together allocate half again the node's
/// RAM. The kernel's OOM killer ends some of them inside their cell (never PID 1 or a
/// cell's init), PID 1 and its API keep serving, and `Node.Info` says what happened.
#[test]
fn under_node_memory_pressure_workloads_are_oom_killed_and_pid1_serves_on() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let info = || async { c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner() };
        let before = info().await;
        assert!(
            before.memory_total_bytes > 0 && before.memory_available_bytes > 0,
            "{before:?}"
        );
        c.cell(pb::Cell {
            name: "press".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let chunk = before.memory_total_bytes / 2;
        c.exec(sh(
            "hogs",
            "press",
            &format!("for i in 1 2 3; do dd if=/dev/zero of=/dev/null bs={chunk} count=1 2>/dev/null & done; wait"),
        ))
        .await
        .unwrap();
        tokio::time::timeout(a.budget(Duration::from_secs(60)), c.wait("hogs"))
            .await
            .expect("the hogs ended");
        let after = info().await;
        assert!(
            after.oom_kills > before.oom_kills,
            "Node.Info counts the kills: {} then {}",
            before.oom_kills,
            after.oom_kills
        );
        assert_eq!(
            (after.pid, after.mode),
            (1, pb::Mode::Pid1 as i32),
            "PID 1 is still PID 1"
        );
        assert!(after.uptime_millis > before.uptime_millis, "the same boot");
        let u = c.cell_status("press").await.usage.unwrap();
        assert!(u.memory_oom_kill_events >= 1, "the victims were the cell's: {u:?}");
        assert_eq!(
            c.cell_status("press").await.state,
            pb::WorkloadState::Running as i32,
            "its init lives"
        );
        c.free("hogs").await;
        c.remove_cell("press").await;
        c.assert_left_nothing("under_node_memory_pressure_workloads_are_oom_killed_and_pid1_serves_on")
            .await;
    });
}

#[test]
fn memory_max_oom_kills_the_hog_and_the_cell_counts_it() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // memory.max: the hog is OOM-killed and the cell counts the kill.
        c.cell(cell(
            "mem",
            pb::CellResources {
                memory_max_bytes: Some(16 << 20),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
        c.exec(sh("hog", "mem", "x=aaaaaaaa; while :; do x=$x$x; done"))
            .await
            .unwrap();
        let st = c.wait("hog").await;
        assert!(st.oom_killed, "{st:?}");
        assert_eq!((st.state, st.signal), (pb::WorkloadState::Killed as i32, Some(9)));
        assert!(st.memory_peak_bytes > 8 << 20, "{st:?}");
        let cs = c.cell_status("mem").await;
        let u = cs.usage.unwrap();
        assert!(u.memory_oom_kill_events >= 1, "{u:?}");
        assert_eq!(
            cs.resources.unwrap().memory_max_bytes,
            Some(16 << 20),
            "read back from memory.max"
        );
        assert_eq!(
            cs.state,
            pb::WorkloadState::Running as i32,
            "the cell survives its member's OOM"
        );
        c.remove_cell("mem").await;
        c.assert_left_nothing("memory_max_oom_kills_the_hog_and_the_cell_counts_it")
            .await;
    });
}

#[test]
fn cpu_max_throttles_a_spinner_and_cpu_stat_says_so() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // cpu.max: a spinner is throttled, and cpu.stat says so.
        c.cell(cell(
            "cpu",
            pb::CellResources {
                cpu_max: Some(pb::CpuMax {
                    quota_micros: 10_000,
                    period_micros: 100_000,
                }),
                cpu_weight: Some(50),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
        c.exec(sh("spin", "cpu", "while :; do :; done")).await.unwrap();
        assert!(
            eventually(a.budget(Duration::from_secs(30)), || async {
                c.cell_status("cpu").await.usage.unwrap().cpu_nr_throttled >= 3
            })
            .await
        );
        let cs = c.cell_status("cpu").await;
        let r = cs.resources.unwrap();
        assert_eq!(
            r.cpu_max,
            Some(pb::CpuMax {
                quota_micros: 10_000,
                period_micros: 100_000
            })
        );
        assert_eq!(r.cpu_weight, Some(50));
        assert!(cs.usage.unwrap().cpu_throttled_micros > 0);
        c.stop_cell("cpu").await;
        c.workloads.clone().free(cell_ref("cpu")).await.unwrap();
        c.assert_left_nothing("cpu_max_throttles_a_spinner_and_cpu_stat_says_so")
            .await;
    });
}

#[test]
fn pids_max_makes_forks_fail_inside_the_cell() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // pids.max: forks beyond the limit fail inside the cell (the cell's init is one pid).
        c.cell(cell(
            "pids",
            pb::CellResources {
                pids_max: Some(4),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
        c.exec(sh(
            "forker",
            "pids",
            "for i in 1 2 3 4 5 6; do sleep 1000 & done 2>&1; echo forked",
        ))
        .await
        .unwrap();
        let st = c.wait("forker").await;
        let err: String = c
            .log_entries("forker", false)
            .await
            .iter()
            .map(|e| String::from_utf8_lossy(&e.line).into_owned() + "\n")
            .collect();
        assert!(
            err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
            "{st:?}\n{err}"
        );
        let u = c.cell_status("pids").await.usage.unwrap();
        assert!(u.pids_current <= 4, "{u:?}");
        c.stop_cell("pids").await;
        c.workloads.clone().free(cell_ref("pids")).await.unwrap();
        c.assert_left_nothing("pids_max_makes_forks_fail_inside_the_cell").await;
    });
}

#[test]
fn refusals_name_the_field_and_create_nothing() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // Refusals: bad names and out-of-range limits; nothing is created for any of them.
        c.cell(cell("taken", Default::default())).await.unwrap();
        let before = c.on_node("ls /sys/fs/cgroup/aurae").await;
        let refuse = |name: &str, r: pb::CellResources| cell(name, r);
        let cases = [
            (refuse("..", Default::default()), Code::InvalidArgument, "name: '..'"),
            (
                refuse("a//b", Default::default()),
                Code::InvalidArgument,
                "name: 'a//b'",
            ),
            (refuse("", Default::default()), Code::InvalidArgument, "name: ''"),
            (
                refuse(&"y".repeat(64), Default::default()),
                Code::InvalidArgument,
                "name: ",
            ),
            (
                refuse("Bad!", Default::default()),
                Code::InvalidArgument,
                "name: 'Bad!'",
            ),
            (
                refuse("orphan/child", Default::default()),
                Code::NotFound,
                "cell 'orphan/child' needs its parent",
            ),
            (
                refuse(
                    "w",
                    pb::CellResources {
                        cpu_weight: Some(0),
                        ..Default::default()
                    },
                ),
                Code::InvalidArgument,
                "resources.cpu_weight: 0 is out of range",
            ),
            (
                refuse(
                    "m",
                    pb::CellResources {
                        memory_max_bytes: Some(4096),
                        ..Default::default()
                    },
                ),
                Code::InvalidArgument,
                "resources.memory_max_bytes: 4096 is out of range",
            ),
            (
                refuse(
                    "p",
                    pb::CellResources {
                        pids_max: Some(0),
                        ..Default::default()
                    },
                ),
                Code::InvalidArgument,
                "resources.pids_max",
            ),
            (
                refuse(
                    "s",
                    pb::CellResources {
                        cpuset_cpus: "7".into(),
                        ..Default::default()
                    },
                ),
                Code::InvalidArgument,
                "resources.cpuset_cpus: 7 not available here",
            ),
            (
                refuse(
                    "d",
                    pb::CellResources {
                        io_max: vec![pb::IoMax {
                            device: "250:7".into(),
                            read_iops: Some(10),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                Code::InvalidArgument,
                "resources.io_max[0].device: no block device 250:7",
            ),
            (
                refuse("taken", Default::default()),
                Code::AlreadyExists,
                "a cell named 'taken' already exists; free it (aer cell free taken)",
            ),
        ];
        for (req, code, msg) in cases {
            let name = req.name.clone();
            let e = c.cell(req).await.unwrap_err();
            assert_eq!(e.code(), code, "{name:?}: {}", e.message());
            assert!(e.message().starts_with(msg), "{name:?}: {}", e.message());
        }
        assert_eq!(
            c.on_node("ls /sys/fs/cgroup/aurae").await,
            before,
            "refusals created nothing"
        );
        c.remove_cell("taken").await;
        c.assert_left_nothing("refusals_name_the_field_and_create_nothing")
            .await;
    });
}

#[test]
fn accepted_limits_are_read_back_from_the_kernel() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // Limits that are accepted are read back from the kernel's files.
        let cs = c
            .cell(cell(
                "tuned",
                pb::CellResources {
                    cpuset_cpus: "0".into(),
                    memory_high_bytes: Some(64 << 20),
                    memory_low_bytes: Some(1 << 20),
                    io_weight: Some(200),
                    swap_max_bytes: Some(0),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        let r = cs.resources.unwrap();
        assert_eq!(r.cpuset_cpus, "0");
        assert_eq!(r.memory_high_bytes, Some(64 << 20));
        assert_eq!(r.memory_low_bytes, Some(1 << 20));
        assert_eq!(r.io_weight, Some(200));
        assert_eq!(r.swap_max_bytes, Some(0));
        c.remove_cell("tuned").await;
        c.assert_left_nothing("accepted_limits_are_read_back_from_the_kernel")
            .await;
    });
}

#[test]
fn sidecars_in_one_cell_share_loopback_and_tmp() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        c.cell(cell("iso", Default::default())).await.unwrap();
        // Sidecars: a server and a client in one cell talk over 127.0.0.1 and share /tmp.
        c.exec(sh("server", "iso", "echo from-server > /tmp/shared; nc -l -p 8080"))
            .await
            .unwrap();
        let (st, out) = c
            .run_sh(
                "client",
                "iso",
                "until [ -f /tmp/shared ]; do sleep 0.1; done; cat /tmp/shared; \
                 until echo ping | nc 127.0.0.1 8080; do sleep 0.2; done",
            )
            .await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        assert_eq!(out.lines().next(), Some("from-server"), "shared /tmp: {out}");
        assert_eq!(c.wait("server").await.exit_code, Some(0));
        assert_eq!(c.stdout("server").await, "ping", "received over the cell's loopback");
        c.remove_cell("iso").await;
        c.assert_left_nothing("sidecars_in_one_cell_share_loopback_and_tmp")
            .await;
    });
}

#[test]
fn a_process_in_a_cell_sees_only_the_cells_namespaces() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        c.cell(cell("iso", Default::default())).await.unwrap();
        c.run_sh("mark", "iso", "echo x > /tmp/shared").await;
        // What a process in the cell sees: its own pid namespace (the cell init is pid 1),
        // hostname, network (loopback only) and cgroup root; the node's /tmp is not its /tmp.
        c.exec(sh("sleeper", "iso", "sleep 1000")).await.unwrap();
        let (_, out) = c
            .run_sh(
                "look",
                "iso",
                "cd /proc && echo pids [0-9]*; echo init $(tr '\\0' ' ' < /proc/1/cmdline); \
                 echo host $(hostname); echo links $(ls /sys/class/net); \
                 echo devs $(tail -n +3 /proc/net/dev | cut -d: -f1); echo cg $(cat /proc/self/cgroup); \
                 echo tmp $(ls /tmp); echo comms $(cat /proc/[0-9]*/comm)",
            )
            .await;
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k} ")))
                .unwrap_or_else(|| panic!("{k} missing in {out}"))
                .trim()
                .to_owned()
        };
        let pids: Vec<u32> = field("pids").split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert!(pids.contains(&1) && pids.len() <= 4, "only the cell's processes: {out}");
        assert!(field("init").starts_with("aurae-cell-init"), "{out}");
        assert!(
            field("comms").split(' ').any(|c| c == "sleep"),
            "sees its sidecar: {out}"
        );
        assert_eq!(field("host"), "iso");
        assert_eq!(field("links"), "lo");
        assert_eq!(field("devs"), "lo", "no eth0 in the cell");
        assert_eq!(field("cg"), "0::/");
        assert_eq!(field("tmp"), "shared", "the cell's own tmpfs");
        let node = c
            .on_node("hostname; echo $(ls /sys/class/net); ls -d /proc/[0-9]* | wc -l")
            .await;
        let mut node = node.lines();
        assert_eq!(node.next(), Some("aurae"));
        assert!(node.next().unwrap().contains("eth0"));
        assert!(node.next().unwrap().trim().parse::<u32>().unwrap() > pids.len() as u32);
        c.remove_cell("iso").await;
        c.assert_left_nothing("a_process_in_a_cell_sees_only_the_cells_namespaces")
            .await;
    });
}

#[test]
fn the_host_network_is_shared_only_when_asked() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // Sharing the host network namespace when asked.
        c.cell(pb::Cell {
            name: "hostnet".into(),
            isolation: Some(pb::CellIsolation {
                share_host_network: true,
                share_host_uts: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let (_, out) = c.run_sh("net", "hostnet", "cat /proc/net/dev; hostname").await;
        assert!(out.contains("eth0") && out.ends_with("aurae"), "{out}");
        c.remove_cell("hostnet").await;
        c.assert_left_nothing("the_host_network_is_shared_only_when_asked")
            .await;
    });
}

#[test]
fn nested_cells_freeze_thaw_and_stop_and_free_as_a_subtree() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        c.cell(cell("iso", Default::default())).await.unwrap();
        c.exec(sh("sleeper", "iso", "sleep 1000")).await.unwrap();
        // Nested cells: own cgroup below the parent's (no process in the parent itself),
        // own hostname, limits of their own.
        let cs = c
            .cell(cell(
                "iso/inner",
                pb::CellResources {
                    pids_max: Some(50),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        assert_eq!(cs.resources.unwrap().pids_max, Some(50));
        let (st, out) = c.run_sh("innerlook", "iso/inner", "hostname").await;
        assert_eq!((st.exit_code, out.as_str()), (Some(0), "inner"));
        let tree = c
            .on_node("cd /sys/fs/cgroup/aurae/iso && ls -d */ && cat cgroup.procs inner/cgroup.procs | wc -l")
            .await;
        assert!(
            tree.contains("inner/") && tree.contains("_init/") && tree.contains("_x.sleeper/"),
            "{tree}"
        );
        assert_eq!(tree.lines().last(), Some("0"), "no process in an inner node: {tree}");

        // Freeze and thaw.
        c.exec(sh("ticker", "iso/inner", "while :; do sleep 0.05; done"))
            .await
            .unwrap();
        let frz = c
            .workloads
            .clone()
            .freeze(cell_ref("iso/inner"))
            .await
            .unwrap()
            .into_inner();
        let Some(pb::workload_status::Status::Cell(s)) = frz.status else {
            panic!()
        };
        assert_eq!(s.state, pb::WorkloadState::Frozen as i32);
        assert_eq!(
            c.on_node("grep frozen /sys/fs/cgroup/aurae/iso/inner/cgroup.events")
                .await,
            "frozen 1"
        );
        let e = c.exec(sh("late", "iso/inner", "true")).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        c.workloads.clone().thaw(cell_ref("iso/inner")).await.unwrap();
        assert_eq!(
            c.cell_status("iso/inner").await.state,
            pb::WorkloadState::Running as i32
        );
        assert_eq!(
            c.on_node("grep frozen /sys/fs/cgroup/aurae/iso/inner/cgroup.events")
                .await,
            "frozen 0"
        );

        // Free refuses a running cell; stop kills every member, nested ones too; free
        // removes the whole subtree.
        let e = c.workloads.clone().free(cell_ref("iso")).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("stop it first"), "{}", e.message());
        let s = c.stop_cell("iso").await;
        assert_eq!(s.state, pb::WorkloadState::Stopped as i32, "{s:?}");
        for name in ["sleeper", "ticker"] {
            assert_eq!(c.wait(name).await.state, pb::WorkloadState::Killed as i32, "{name}");
        }
        assert_eq!(
            c.cell_status("iso/inner").await.state,
            pb::WorkloadState::Stopped as i32
        );
        c.workloads.clone().free(cell_ref("iso")).await.unwrap();
        assert!(c.cell_status_opt("iso/inner").await.is_none());
        assert_eq!(
            c.on_node("[ -e /sys/fs/cgroup/aurae/iso ] && echo left; true").await,
            ""
        );
        c.assert_left_nothing("nested_cells_freeze_thaw_and_stop_and_free_as_a_subtree")
            .await;
    });
}

/// PID 1 bounds the whole workloads root below the node's memory and task ceiling, so no
/// workload can take what PID 1 needs to keep serving.
#[test]
fn the_workloads_root_leaves_pid1_a_reserve() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let v = c
            .on_node(
                "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2; cat /proc/sys/kernel/pid_max; \
                 cat /proc/sys/kernel/threads-max /sys/fs/cgroup/aurae/memory.max /sys/fs/cgroup/aurae/pids.max",
            )
            .await;
        let n: Vec<u64> = v.lines().map(|l| l.trim().parse().unwrap()).collect();
        let [mem_kib, pid_max, threads_max, memory_max, pids_max] = n[..] else {
            panic!("{v}")
        };
        assert_eq!(
            auraed::init::cgroup::workload_ceilings(mem_kib * 1024, pid_max, threads_max),
            [("memory.max", memory_max), ("pids.max", pids_max)],
            "{v}"
        );
        // The node's own tmpfs mounts have sizes (unsized, each could take half the RAM).
        let sizes = c
            .on_node(
                "for m in /run /tmp /dev/shm; do echo \"$m $(df -k $m | tail -1 | tr -s ' ' | cut -d' ' -f2)\"; done",
            )
            .await;
        for (line, fraction) in sizes.lines().zip([10, 4, 4]) {
            let kib: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(
                kib > 0 && kib <= mem_kib / fraction + 4,
                "{line}: at most 1/{fraction} of {mem_kib} KiB"
            );
        }
    });
}

/// The attacks of issue #10, from a default cell: each must fail and change nothing.
const ATTACKS: &str = r#"
echo "id $(id -u)"
grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t' | tr ':' ' '
echo "pid1caps $(grep CapEff /proc/1/status | tr -d '\t')"
echo "etc-aurae [$(ls -A /etc/aurae)]"
echo "boot [$(ls -A /boot)]"
echo "vmfiles [$(ls -A /var/lib/aurae 2>&1)]"
[ -e /run/aurae ] && echo "run-aurae visible"
[ -e /etc/aurae/pki/spawn-ca.key ] && echo "key visible"
echo "dev $(ls /dev | tr '\n' ' ')"
umount /proc 2>/dev/null; echo "umount $?"
echo 0 > /proc/sys/kernel/sysrq 2>/dev/null; echo "sysctl $?"
mknod /tmp/disk b 254 0 2>/dev/null; echo "mknod $?"
mount -t tmpfs x /tmp 2>/dev/null; echo "mount $?"
unshare -U true 2>/dev/null; echo "unshare $?"
touch /bin/planted 2>/dev/null; echo "write-base $?"
echo "interrupts $(wc -c < /proc/interrupts)"
echo "firmware [$(ls -A /sys/firmware)]"
echo x > /dev/shm/s && echo x > /tmp/t && echo x > /run/r && echo "scratch ok"
echo "tmpsize $(df -k /tmp | tail -1 | awk '{print $2}')"
"#;

#[test]
fn a_default_cell_is_confined_like_an_oci_container_and_attacks_fail() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let node_before = c
            .on_node("cat /proc/sys/kernel/sysrq; ls /etc/aurae/pki | wc -l; ls /bin | wc -l")
            .await;
        // An executable without a cell gets a private, default cell.
        let (st, out) = c.run_sh("attacker", "", ATTACKS).await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        let f = Fields::parse(&out);
        assert_eq!(f.get("id"), "0", "root in the cell, but without the node's powers");
        // Docker's default set without MKNOD; inheritable and ambient empty, as runc has
        // done since CVE-2022-24769.
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(f.get(set), "00000000a00425fb", "{set}: {out}");
        }
        assert_eq!(f.get("CapInh"), "0000000000000000");
        assert_eq!(f.get("CapAmb"), "0000000000000000");
        assert_eq!(f.get("NoNewPrivs"), "1");
        assert_eq!(f.get("Seccomp"), "2", "a seccomp filter is in force");
        assert_eq!(
            f.get("pid1caps"),
            "CapEff:0000000000000000",
            "the cell's init holds nothing"
        );
        assert_eq!(f.get("etc-aurae"), "[]", "the node's keys are not there");
        assert_eq!(f.get("boot"), "[]");
        assert_eq!(f.get("vmfiles"), "[]");
        assert!(
            !out.contains("run-aurae visible") && !out.contains("key visible"),
            "{out}"
        );
        assert_eq!(
            f.get("dev"),
            "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
        );
        for attack in ["umount", "sysctl", "mknod", "mount", "unshare", "write-base"] {
            assert_ne!(f.get(attack), "0", "{attack} must fail: {out}");
        }
        assert_eq!(f.get("interrupts"), "0", "masked");
        assert_eq!(f.get("firmware"), "[]", "masked");
        assert!(
            out.contains("scratch ok"),
            "its own /tmp, /run and /dev/shm are writable: {out}"
        );
        assert_eq!(f.get("tmpsize"), "262144", "/tmp is size-limited (256 MiB)");
        // Nothing changed on the node.
        let node_after = c
            .on_node("cat /proc/sys/kernel/sysrq; ls /etc/aurae/pki | wc -l; ls /bin | wc -l")
            .await;
        assert_eq!(node_before, node_after);
        c.assert_left_nothing("a_default_cell_is_confined_like_an_oci_container_and_attacks_fail")
            .await;
    });
}

#[test]
fn cap_add_gives_exactly_that_capability_and_privileged_cells_say_so() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let st = c
            .cell(pb::Cell {
                name: "netadm".into(),
                confinement: Some(pb::CellConfinement {
                    cap_add: vec!["NET_ADMIN".into()],
                    cap_drop: vec!["cap_kill".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let conf = st.confinement.clone().unwrap();
        assert!(conf.own_root && !conf.privileged);
        assert!(conf.capabilities.contains(&"NET_ADMIN".to_owned()));
        assert!(!conf.capabilities.contains(&"KILL".to_owned()));
        let (_, out) = c
            .run_sh("caps", "netadm", "grep CapEff /proc/self/status | tr -d '\\t'")
            .await;
        // Default 0xa00425fb, plus NET_ADMIN (bit 12), minus KILL (bit 5).
        assert_eq!(
            out.trim(),
            format!("CapEff:{:016x}", (0xa004_25fbu64 | 1 << 12) & !(1 << 5))
        );
        c.remove_cell("netadm").await;

        let bad = c
            .cell(pb::Cell {
                name: "badcap".into(),
                confinement: Some(pb::CellConfinement {
                    cap_add: vec!["NET_ADMINN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("confinement.cap_add"), "{}", bad.message());

        // An admin may ask for a privileged cell; its status says what it is.
        let st = c
            .cell(pb::Cell {
                name: "wide".into(),
                confinement: Some(pb::CellConfinement {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let conf = st.confinement.unwrap();
        assert!(conf.privileged && !conf.own_root);
        assert_eq!(conf.seccomp, pb::SeccompProfile::Unconfined as i32);
        let (_, out) = c
            .run_sh(
                "wide-look",
                "wide",
                "grep -E 'CapEff|Seccomp:' /proc/self/status | tr -d '\\t'; ls /etc/aurae/pki | wc -l",
            )
            .await;
        let mut l = out.lines();
        assert_eq!(l.next(), Some("CapEff:000001ffffffffff"), "{out}");
        assert_eq!(l.next(), Some("Seccomp:0"), "{out}");
        assert!(
            l.next().unwrap().trim().parse::<u32>().unwrap() > 0,
            "sees the node's files: {out}"
        );
        c.remove_cell("wide").await;
        c.assert_left_nothing("cap_add_gives_exactly_that_capability_and_privileged_cells_say_so")
            .await;
    });
}

/// A stricter seccomp profile, chosen per cell by an operator: the `STRICT` level takes out
/// calls ordinary work does without (here: `personality(PER_LINUX32)`, which `linux32`
/// makes and a default cell allows), and `seccomp_deny` refuses calls of the cell's own
/// choosing on top. What the cell still does works; the status says what is in force.
#[test]
fn a_cell_can_be_made_stricter_than_the_default() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let probe = "linux32 true 2>/dev/null; echo linux32 $?; mkdir /tmp/d 2>/dev/null; echo mkdir $?; \
                     echo x > /tmp/f && echo write $?; ls / > /dev/null; echo ls $?";
        let (_, out) = c.run_sh("lenient", "", probe).await;
        let f = Fields::parse(&out);
        assert_eq!(f.get("linux32"), "0", "the default allows it: {out}");
        assert_eq!(f.get("mkdir"), "0", "{out}");

        let st = c
            .cell(pb::Cell {
                name: "strict".into(),
                confinement: Some(pb::CellConfinement {
                    seccomp: pb::SeccompProfile::Strict as i32,
                    seccomp_deny: vec!["mkdirat".into(), "mkdir".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let conf = st.confinement.unwrap();
        assert_eq!(conf.seccomp, pb::SeccompProfile::Strict as i32);
        assert_eq!(conf.seccomp_deny, ["mkdir", "mkdirat"], "in number order");
        let (st, out) = c.run_sh("strict-probe", "strict", probe).await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        let f = Fields::parse(&out);
        assert_ne!(f.get("linux32"), "0", "STRICT refuses 32-bit personalities: {out}");
        assert_ne!(f.get("mkdir"), "0", "the cell's own refusal: {out}");
        assert_eq!(f.get("write"), "0", "{out}");
        assert_eq!(f.get("ls"), "0", "{out}");
        c.remove_cell("strict").await;

        // A call no profile allows is a mistake, said as such, and nothing is made.
        let e = c
            .cell(pb::Cell {
                name: "typo".into(),
                confinement: Some(pb::CellConfinement {
                    seccomp_deny: vec!["mkdri".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("confinement.seccomp_deny") && e.message().contains("'mkdri'"),
            "{}",
            e.message()
        );
        c.assert_left_nothing("a_cell_can_be_made_stricter_than_the_default")
            .await;
    });
}

/// `user_namespace`: root in the cell is an unprivileged uid on the node, as the node sees
/// it in /proc; inside, it is root with the default set in its own namespace only.
#[test]
fn a_cell_with_a_user_namespace_is_root_only_inside() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let st = c
            .cell(pb::Cell {
                name: "userns".into(),
                confinement: Some(pb::CellConfinement {
                    user_namespace: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let base = st.confinement.unwrap().user_namespace_root_uid;
        assert!(base >= 1_000_000, "{base}");
        let (st, out) = c
            .run_sh(
                "inside",
                "userns",
                "echo id $(id -u) $(id -g); echo map $(cat /proc/self/uid_map); \
                 grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -s '\\t:' '  '; \
                 echo x > /tmp/mine && echo tmp ok; ls /etc/aurae | wc -l; \
                 cat /dev/null && echo devnull ok",
            )
            .await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        let f = Fields::parse(&out);
        assert_eq!(f.get("id"), "0 0", "root inside");
        assert_eq!(
            f.get("map").split_whitespace().collect::<Vec<_>>(),
            ["0", &base.to_string(), "65536"]
        );
        assert_eq!(f.get("CapEff"), "00000000a00425fb");
        assert_eq!(f.get("Seccomp"), "2");
        assert!(out.contains("tmp ok") && out.contains("devnull ok"), "{out}");
        // From the node, the same process is the unprivileged uid.
        c.exec(sh("sleeper", "userns", "sleep 1000")).await.unwrap();
        let pid = c
            .workloads
            .clone()
            .status(aurae_appliance_tests::exe_ref("sleeper"))
            .await
            .unwrap()
            .into_inner();
        let pid = match pid.status {
            Some(pb::workload_status::Status::Executable(e)) => e.pid,
            other => panic!("{other:?}"),
        };
        let node = c
            .on_node(&format!(
                "grep -E '^(Uid|Gid):' /proc/{pid}/status | tr -s '\\t:' '  '; cat /proc/{pid}/uid_map"
            ))
            .await;
        let uid_line = node.lines().find(|l| l.starts_with("Uid")).unwrap();
        assert!(
            uid_line.split_whitespace().skip(1).all(|u| u == base.to_string()),
            "root in the cell is uid {base} on the node: {node}"
        );
        c.remove_cell("userns").await;
        // Nested cells and shared namespaces do not mix with it: refused, nothing made.
        let e = c
            .cell(pb::Cell {
                name: "userns2".into(),
                isolation: Some(pb::CellIsolation {
                    share_host_network: true,
                    ..Default::default()
                }),
                confinement: Some(pb::CellConfinement {
                    user_namespace: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("confinement.user_namespace"), "{}", e.message());
        c.assert_left_nothing("a_cell_with_a_user_namespace_is_root_only_inside")
            .await;
    });
}

/// Everything an attached process sent, until its `exit`: (stdout, stderr, exit).
async fn collect(mut s: tonic::Streaming<pb::ExecResponse>) -> (String, String, Option<pb::ExecExit>) {
    use pb::exec_response::Response as Out;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(m) = s.message().await.unwrap() {
        match m.response {
            Some(Out::Stdout(b)) => out.extend(b),
            Some(Out::Stderr(b)) => err.extend(b),
            Some(Out::Exit(x)) => {
                let s = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
                return (s(out), s(err), Some(x));
            }
            _ => {}
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        None,
    )
}

fn start(cell: &str, argv: &[&str], tty: bool) -> pb::ExecRequest {
    pb::ExecRequest {
        request: Some(pb::exec_request::Request::Start(pb::ExecStart {
            cell: cell.into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            tty,
            size: tty.then_some(pb::TerminalSize { rows: 24, columns: 80 }),
            ..Default::default()
        })),
    }
}

/// An Exec stream begun with `first`: the sender for later messages, and the answers.
async fn attach(
    c: &Client,
    first: pb::ExecRequest,
) -> (
    tokio::sync::mpsc::Sender<pb::ExecRequest>,
    tonic::Streaming<pb::ExecResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first).await.unwrap();
    let s = c
        .runtime
        .clone()
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, s)
}

#[test]
fn exec_attaches_stdin_output_a_terminal_and_ends_with_its_caller() {
    let a = shared_or_skip!();
    rt().block_on(async {
        use pb::exec_request::Request as In;
        let c = Client::connect(a).await;
        c.cell(cell("att", Default::default())).await.unwrap();

        // Pipes: stdin in, stdout and stderr apart, the exit code last.
        let input = tokio_stream::iter(vec![
            start(
                "att",
                &["sh", "-c", "read l; echo got:$l; echo oops >&2; exit 7"],
                false,
            ),
            pb::ExecRequest {
                request: Some(In::Stdin(b"hello\n".to_vec())),
            },
        ]);
        let s = c.runtime.clone().exec(input).await.unwrap().into_inner();
        let (out, err, exit) = collect(s).await;
        assert_eq!((out.as_str(), err.as_str()), ("got:hello\n", "oops\n"));
        assert_eq!(exit.unwrap().exit_code, Some(7));

        // A terminal of the cell's own devpts: its size as the caller said, then resized.
        let (tx, mut s) = attach(
            &c,
            start("att", &["sh", "-c", "tty; stty size; read l; stty size"], true),
        )
        .await;
        // Until the size's whole line: the pty may hand "24 80" and its "\r\n" over apart.
        let (first, _) = stdout_until(&mut s, "24 80\r\n").await;
        assert_eq!(first, "/dev/pts/0\r\n24 80\r\n");
        tx.send(pb::ExecRequest {
            request: Some(In::Resize(pb::TerminalSize { rows: 40, columns: 120 })),
        })
        .await
        .unwrap();
        tx.send(pb::ExecRequest {
            request: Some(In::Stdin(b"go\r".to_vec())),
        })
        .await
        .unwrap();
        let (out, _, exit) = collect(s).await;
        assert_eq!(out, "go\r\n40 120\r\n", "the terminal echoes input; the new size");
        assert_eq!(exit.unwrap().exit_code, Some(0));

        // A caller that goes away ends the process and what it started.
        let (tx, mut s) = attach(&c, start("att", &["sh", "-c", "sleep 600 & sleep 600"], false)).await;
        let first = s.message().await.unwrap().unwrap();
        assert!(matches!(first.response, Some(pb::exec_response::Response::StartedPid(p)) if p > 0));
        let running = eventually(a.budget(Duration::from_secs(10)), || async {
            let n = c
                .on_node("cat /sys/fs/cgroup/aurae/att/_a.*/cgroup.procs 2>/dev/null | wc -l")
                .await;
            n.trim().parse::<u32>().unwrap_or(0) >= 2
        })
        .await;
        assert!(running, "sh and its sleeps run in the attached process's leaf");
        // The session is a workload: listed (and counted) while it lasts.
        let listed = c.list(pb::WorkloadKind::Executable).await;
        assert!(
            listed.iter().any(|w| matches!(&w.status,
                Some(pb::workload_status::Status::Executable(e)) if e.cell == "att" && e.name.starts_with("exec-"))),
            "the session is listed: {listed:?}"
        );
        drop(tx);
        drop(s);
        assert!(
            eventually(a.budget(Duration::from_secs(10)), || async {
                c.on_node("ls -d /sys/fs/cgroup/aurae/att/_a.* 2>/dev/null | wc -l")
                    .await
                    .trim()
                    == "0"
            })
            .await,
            "the attached process's cgroup is gone with its caller"
        );

        // Refusals: a missing cell, a stream that does not start with `start`.
        let e = c
            .runtime
            .clone()
            .exec(tokio_stream::iter(vec![start("nope", &["true"], false)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = c
            .runtime
            .clone()
            .exec(tokio_stream::iter(vec![pb::ExecRequest {
                request: Some(In::Stdin(b"x".to_vec())),
            }]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("start:"), "{}", e.message());

        c.remove_cell("att").await;
        c.assert_left_nothing("exec").await;
    });
}

/// An Attach stream to `name` (with stdin when `stdin`): the sender for later
/// messages, and the answers.
async fn attach_to(
    c: &Client,
    name: &str,
    stdin: bool,
) -> (
    tokio::sync::mpsc::Sender<pb::AttachRequest>,
    Result<tonic::Streaming<pb::ExecResponse>, tonic::Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AttachRequest {
        request: Some(pb::attach_request::Request::Start(pb::AttachStart {
            executable: name.into(),
            stdin,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let s = c
        .runtime
        .clone()
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, s)
}

fn stdin_msg(b: &[u8]) -> pb::AttachRequest {
    pb::AttachRequest {
        request: Some(pb::attach_request::Request::Stdin(b.to_vec())),
    }
}

/// Reads `s`'s stdout until it holds `needle` (stderr kept apart).
async fn stdout_until(s: &mut tonic::Streaming<pb::ExecResponse>, needle: &str) -> (String, String) {
    use pb::exec_response::Response as Out;
    let (mut out, mut err) = (String::new(), String::new());
    while !out.contains(needle) {
        match s.message().await.unwrap().and_then(|m| m.response) {
            Some(Out::Stdout(b)) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(Out::Stderr(b)) => err.push_str(&String::from_utf8_lossy(&b)),
            Some(_) => {}
            None => panic!("ended before {needle:?}: {out:?} {err:?}"),
        }
    }
    (out, err)
}

/// Attach joins a running executable started with stdin: every client sees its output
/// from when it joined, a client's stdin reaches it, a client closing its stdin leaves
/// it open for the next (without stdin_once), and its end reaches every client. A client
/// without stdin that sends some, a client asking stdin of an executable that has none,
/// and an ended executable are refused. PortForward carries a TCP connection both ways
/// into a cell's own network; a private cell and a bad port are refused.
#[test]
fn attach_joins_a_running_executable_and_port_forward_reaches_into_a_cell() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        c.cell(cell("tap", Default::default())).await.unwrap();
        let talk = pb::Executable {
            stdin: true,
            ..sh(
                "talk",
                "tap",
                "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo bye",
            )
        };
        c.exec(talk).await.unwrap();
        let (a_tx, a_s) = attach_to(&c, "talk", true).await;
        let mut a_s = a_s.unwrap();
        let (b_tx, b_s) = attach_to(&c, "talk", false).await;
        let mut b_s = b_s.unwrap();
        for s in [&mut a_s, &mut b_s] {
            let first = s.message().await.unwrap().unwrap();
            assert!(matches!(first.response, Some(pb::exec_response::Response::StartedPid(p)) if p > 0));
        }
        a_tx.send(stdin_msg(b"one\n")).await.unwrap();
        let (out, _) = stdout_until(&mut a_s, "got one").await;
        assert_eq!(out, "got one\n");
        let (out, _) = stdout_until(&mut b_s, "got one").await;
        assert_eq!(out, "got one\n", "every client sees the output");
        // A closes its stdin: without stdin_once the pipe stays open for the next.
        a_tx.send(pb::AttachRequest {
            request: Some(pb::attach_request::Request::CloseStdin(true)),
        })
        .await
        .unwrap();
        let (c_tx, c_s) = attach_to(&c, "talk", true).await;
        let mut c_s = c_s.unwrap();
        c_tx.send(stdin_msg(b"two\n")).await.unwrap();
        let (out, err) = stdout_until(&mut c_s, "got two").await;
        assert!(out.ends_with("got two\n"), "{out:?} {err:?}");
        stdout_until(&mut a_s, "got two").await;
        // B attached without stdin and sends some: refused, its stream ends.
        b_tx.send(stdin_msg(b"sneak\n")).await.unwrap();
        let e = loop {
            match b_s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without the refusal"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("stdin:"), "{}", e.message());
        // Its end reaches the clients still attached, with how it ended.
        c.workloads
            .clone()
            .stop(pb::StopRequest {
                workload: Some(pb::WorkloadRef {
                    kind: pb::WorkloadKind::Executable as i32,
                    name: "talk".into(),
                }),
                signal: 15,
                grace_period_millis: 5000,
            })
            .await
            .unwrap();
        let (_, _, exit) = collect(a_s).await;
        assert_eq!(exit.unwrap().signal, Some(15));
        drop((a_tx, b_tx, c_tx, c_s));
        let (_, s) = attach_to(&c, "talk", false).await;
        let e = s.expect_err("an ended executable is not attached to");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        c.free("talk").await;
        // On a terminal of the cell's own: what a client types is echoed, its size is the
        // client's, the output is one stream, and it ends with its code.
        let term = pb::Executable {
            stdin: true,
            tty: true,
            ..sh("term", "tap", "read l; stty size; echo got $l; tty; exit 3")
        };
        c.exec(term).await.unwrap();
        let (t_tx, t_s) = attach_to(&c, "term", true).await;
        let t_s = t_s.unwrap();
        t_tx.send(pb::AttachRequest {
            request: Some(pb::attach_request::Request::Resize(pb::TerminalSize {
                rows: 40,
                columns: 100,
            })),
        })
        .await
        .unwrap();
        t_tx.send(stdin_msg(b"go\r")).await.unwrap();
        let (out, _, exit) = collect(t_s).await;
        assert!(out.starts_with("go\r\n40 100\r\ngot go\r\n/dev/pts/"), "{out:?}");
        assert_eq!(exit.unwrap().exit_code, Some(3));
        assert!(
            c.stdout("term").await.contains("40 100"),
            "the logs have its terminal's output"
        );
        drop(t_tx);
        c.free("term").await;
        // stdin of one started without: refused, naming the field.
        c.exec(sh("plain", "tap", "sleep 600")).await.unwrap();
        let (_, s) = attach_to(&c, "plain", true).await;
        let e = s.expect_err("refused");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().starts_with("start.stdin:"), "{}", e.message());

        // PortForward into the cell's own network: bytes both ways, the half-close
        // reaching the server, the server's close ending the stream.
        c.exec(sh("srv", "tap", "echo through | nc -l -p 8080")).await.unwrap();
        let forward = |cell: &str, port: u32, data: &[u8]| {
            let msgs = vec![
                pb::PortForwardRequest {
                    request: Some(pb::port_forward_request::Request::Start(pb::PortForwardStart {
                        cell: cell.into(),
                        port,
                        ..Default::default()
                    })),
                },
                pb::PortForwardRequest {
                    request: Some(pb::port_forward_request::Request::Data(data.to_vec())),
                },
            ];
            let mut rt = c.runtime.clone();
            async move {
                let mut s = rt.port_forward(tokio_stream::iter(msgs)).await?.into_inner();
                let mut got = Vec::new();
                while let Some(m) = s.message().await? {
                    got.extend(m.data);
                }
                Ok::<Vec<u8>, tonic::Status>(got)
            }
        };
        // nc listens a moment after it starts: until then the connection is refused.
        let mut got = forward("tap", 8080, b"hello\n").await;
        let until = std::time::Instant::now() + a.budget(Duration::from_secs(20));
        while got.as_ref().is_err_and(|e| e.code() == Code::Unavailable) && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            got = forward("tap", 8080, b"hello\n").await;
        }
        assert_eq!(got.unwrap(), b"through\n");
        assert_eq!(c.wait("srv").await.exit_code, Some(0));
        assert_eq!(c.stdout("srv").await, "hello", "the server read what the client sent");
        c.free("srv").await;
        for (cell, port, code, field) in [
            ("tap", 0, Code::InvalidArgument, "start.port"),
            ("nope", 80, Code::NotFound, ""),
            // A process's private cell is auraed's, not a client's to reach into.
            ("solo", 80, Code::FailedPrecondition, ""),
        ] {
            if cell == "solo" {
                c.exec(sh("solo", "", "sleep 600")).await.unwrap();
            }
            let e = forward(cell, port, b"").await.unwrap_err();
            assert_eq!(e.code(), code, "{cell}: {e:?}");
            assert!(e.message().starts_with(field), "{}", e.message());
        }
        for name in ["plain", "solo"] {
            let r = pb::WorkloadRef {
                kind: pb::WorkloadKind::Executable as i32,
                name: name.into(),
            };
            c.stop_and_free(r, 0).await;
        }
        c.remove_cell("tap").await;
        c.assert_left_nothing("attach").await;
    });
}

/// Give-ups at every point of a cell's start: 200 `RunCell`s whose deadlines sweep from 0
/// to three times a measured start, one after another. Each answer agrees with the node:
/// an answered cell is running (then freed), a refused one leaves nothing. Afterwards no
/// cgroup, no cell init and no mount of any of them is left on the node.
#[test]
fn hundreds_of_give_ups_at_every_point_of_a_start_leave_nothing() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let mounts = "wc -l < /proc/1/mountinfo";
        let inits = "grep -l '/aurae/soak' /proc/[0-9]*/cgroup 2>/dev/null | wc -l";
        let (mounts_before, inits_before) = (c.on_node(mounts).await, c.on_node(inits).await);
        let t = std::time::Instant::now();
        c.cell(cell("soak-m", Default::default())).await.unwrap();
        let start = t.elapsed();
        c.remove_cell("soak-m").await;
        const N: u32 = 200;
        let (mut answered, mut refused) = (0, 0);
        for i in 0..N {
            let name = format!("soak-g{i}");
            let mut req = tonic::Request::new(cell(&name, Default::default()));
            // Up to 3× the start: auraed keeps back up to half of a short deadline.
            req.set_timeout(start * 3 * i / N);
            match c.runtime.clone().run_cell(req).await {
                Ok(st) => {
                    assert_eq!(st.into_inner().state, pb::WorkloadState::Running as i32, "{name}");
                    c.remove_cell(&name).await;
                    answered += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
                        "{name}: {e:?}"
                    );
                    refused += 1;
                }
            }
        }
        eprintln!("give-ups: a start takes {start:?}; {answered} answered, {refused} refused");
        assert!(refused > 0, "no deadline was short enough to refuse");
        let clean = eventually(a.budget(Duration::from_secs(30)), || async {
            let cgroups = c.workload_cgroups().await;
            !cgroups.iter().any(|g| g.starts_with("soak"))
                && c.on_node(inits).await == inits_before
                && c.on_node(mounts).await == mounts_before
        })
        .await;
        assert!(
            clean,
            "left: cgroups {:?}, inits {} (before {inits_before}), mounts {} (before {mounts_before})\n{}",
            c.workload_cgroups().await,
            c.on_node(inits).await,
            c.on_node(mounts).await,
            a.console_log()
        );
        c.assert_left_nothing("hundreds_of_give_ups_at_every_point_of_a_start_leave_nothing")
            .await;
    });
}
