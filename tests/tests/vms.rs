//! Appliance tier: virtual machines run by auraed's own VMM, inside the appliance
//! booted under TCG with emulated SVM (`-cpu qemu64,+svm,+npt`), so the appliance's
//! /dev/kvm works. The guests are the node's own kernel (/boot/vmlinuz) with a tiny busybox
//! initramfs the test builds on the node. One appliance serves every test of this file;
//! each test cleans up and asserts it left nothing.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{eventually, rt, shared_or_skip, Appliance, Client, Fields};
use auraed::pb;
use std::time::Duration;
use tonic::Code;

/// A nested guest under TCG needs seconds to reach its /init; scaled by `Appliance::budget`.
const GUEST_DEADLINE: Duration = Duration::from_secs(120);

fn vm_ref(name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::VirtualMachine as i32,
        name: name.into(),
    }
}

/// Builds /var/lib/aurae/vm/<name>.cpio on the node (the directory VM files must be in):
/// busybox plus an /init running `script`.
async fn guest_initramfs(c: &Client, name: &str, script: &str) -> String {
    let path = format!("/var/lib/aurae/vm/{name}.cpio");
    let init = format!("#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc p /proc\n{script}\n");
    c.on_node(&format!(
        "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/proc $d/dev /var/lib/aurae/vm; cp /bin/busybox $d/bin/; \
         cat > $d/init <<'INIT'\n{init}INIT\nchmod +x $d/init; cd $d && find . | cpio -o -H newc > {path} 2>/dev/null; rm -rf $d"
    ))
    .await;
    path
}

fn vm(name: &str, initramfs: &str, vcpus: u32) -> pb::VirtualMachine {
    pb::VirtualMachine {
        name: name.into(),
        initramfs_path: initramfs.into(),
        vcpus,
        memory_bytes: 128 << 20,
        ..Default::default()
    }
}

/// Stops VM `name` (0.5 s grace) and frees it.
async fn remove_vm(c: &Client, name: &str) {
    c.stop_and_free(vm_ref(name), 500).await;
}

async fn vm_status(c: &Client, name: &str) -> Result<pb::VirtualMachineStatus, tonic::Status> {
    let w = c.workloads.clone().status(vm_ref(name)).await?.into_inner();
    match w.status {
        Some(pb::workload_status::Status::VirtualMachine(v)) => Ok(v),
        other => panic!("Status returned {other:?}"),
    }
}

async fn console(c: &Client, name: &str) -> String {
    stream(c, name, pb::LogStream::Console).await
}

async fn stream(c: &Client, name: &str, which: pb::LogStream) -> String {
    let mut s = c
        .workloads
        .clone()
        .logs(pb::LogsRequest {
            workload: Some(vm_ref(name)),
            follow: false,
            tail_lines: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = String::new();
    while let Some(e) = s.message().await.unwrap() {
        if e.stream == which as i32 {
            out.push_str(&String::from_utf8_lossy(&e.line));
            out.push('\n');
        }
    }
    out
}

/// VM `name`'s status once it has ended (within the guest deadline); anything else fails
/// with the appliance's console, which says what happened to the node meanwhile.
async fn wait_vm(a: &Appliance, c: &Client, name: &str) -> pb::VirtualMachineStatus {
    let mut w = c.workloads.clone();
    let ended = tokio::time::timeout(a.budget(GUEST_DEADLINE), w.wait(vm_ref(name))).await;
    match ended.map(|r| r.map(|w| w.into_inner().status)) {
        Ok(Ok(Some(pb::workload_status::Status::VirtualMachine(v)))) => v,
        other => panic!("Wait for {name} returned {other:?}\n{}", a.console_log()),
    }
}

#[test]
fn a_guest_prints_from_both_vcpus_and_its_reboot_ends_the_vm() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // A guest that prints and reboots: the reboot ends the VM.
        let img = guest_initramfs(
            &c,
            "hello",
            "echo hello from the guest, cpus: $(grep -c ^processor /proc/cpuinfo); reboot -f",
        )
        .await;
        let st = c
            .runtime
            .clone()
            .run_virtual_machine(vm("hello", &img, 2))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.state, pb::WorkloadState::Running as i32, "{st:?}");
        assert!(st.vmm_pid > 0 && st.vcpus == 2 && st.memory_bytes == 128 << 20);
        let st = wait_vm(a, &c, "hello").await;
        let log = console(&c, "hello").await;
        assert_eq!(st.state, pb::WorkloadState::Exited as i32, "{st:?}\n{log}");
        assert!(st.exit_reason.contains("reset"), "{st:?}");
        assert!(log.contains("Linux version"), "the kernel's console: {log}");
        assert!(log.contains("hello from the guest, cpus: 2"), "both vCPUs up: {log}");
        c.workloads.clone().free(vm_ref("hello")).await.unwrap();
        assert_eq!(vm_status(&c, "hello").await.unwrap_err().code(), Code::NotFound);

        c.on_node("rm -f /var/lib/aurae/vm/hello.cpio").await;
        c.assert_left_nothing("a_guest_prints_from_both_vcpus_and_its_reboot_ends_the_vm")
            .await;
    });
}

/// Issue #27: a pod's VM once died 2 s into its kernel with "guest triple fault" (one run
/// in three of three pods in a row). Many short VMs, one after another and three side by
/// side, with one and two vCPUs: each must boot its kernel, run its init and end by its
/// own reboot (the i8042 reset), never by a triple fault.
#[test]
fn many_vms_in_a_row_and_side_by_side_each_boot_and_end_by_their_own_reboot() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let img = guest_initramfs(&c, "many", "echo booted-ok; reboot -f").await;
        let run = |name: String, vcpus: u32| {
            let (c, img) = (&c, img.clone());
            async move {
                (c.runtime.clone().run_virtual_machine(vm(&name, &img, vcpus)).await)
                    .unwrap_or_else(|e| panic!("{name}: {e:?}\n{}", a.console_log()));
                let st = wait_vm(a, c, &name).await;
                let log = console(c, &name).await;
                assert!(
                    st.exit_reason.contains("reset") && log.contains("booted-ok"),
                    "{name} ({vcpus} vCPU): {st:?}\n{log}"
                );
                c.workloads.clone().free(vm_ref(&name)).await.unwrap();
            }
        };
        for i in 0..6 {
            run(format!("row{i}"), 1 + i % 2).await;
        }
        tokio::join!(run("side0".into(), 1), run("side1".into(), 2), run("side2".into(), 1));
        c.on_node("rm -f /var/lib/aurae/vm/many.cpio").await;
        c.assert_left_nothing("many_vms_in_a_row_and_side_by_side_…").await;
    });
}

#[test]
fn a_guest_on_the_bridge_is_reachable_accounted_and_stopped_gracefully() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // A long-lived guest on the node's bridge: reachable over its TAP, accounted in its
        // own cell, stopped on request, freed with its TAP.
        let img = guest_initramfs(
            &c,
            "idle",
            "mount -t devtmpfs dev /dev; ip addr add 10.254.0.9/24 dev eth0; ip link set eth0 up; \
             (until [ -e /dev/input/event0 ]; do sleep 0.1; done; \
              dd if=/dev/input/event0 bs=24 count=1 >/dev/null 2>&1 && echo guest got the power key; reboot -f) & \
             echo idle guest up; while true; do echo hi from the guest | nc -l -p 7000; done",
        )
        .await;
        let req = pb::VirtualMachine {
            network: true,
            ..vm("idle", &img, 1)
        };
        let st = c.runtime.clone().run_virtual_machine(req).await.unwrap().into_inner();
        assert!(!st.tap_device.is_empty(), "{st:?}");
        assert!(
            eventually(a.budget(GUEST_DEADLINE), || async {
                console(&c, "idle").await.contains("idle guest up")
            })
            .await,
            "{}",
            console(&c, "idle").await
        );
        let procs = c.on_node("cat /sys/fs/cgroup/aurae/idle/_x.idle/cgroup.procs").await;
        // (KVM's own worker kthreads join the creating process's cgroup too.)
        assert!(
            procs.lines().any(|p| p == st.vmm_pid.to_string()),
            "the VMM lives in the VM's cell: {procs}"
        );
        let max = c.on_node("cat /sys/fs/cgroup/aurae/idle/memory.max").await;
        assert_eq!(
            max.trim(),
            ((128u64 << 20) + (64 << 20)).to_string(), // guest RAM + runtime::vm::VMM_MEMORY_OVERHEAD
            "a VM's cell is bounded by default: guest RAM + the VMM's overhead"
        );
        let charged: u64 = c
            .on_node("cat /sys/fs/cgroup/aurae/idle/memory.current")
            .await
            .trim()
            .parse()
            .unwrap();
        assert!(
            charged > 8 << 20,
            "guest memory is charged to the VM's cell: {charged} B"
        );
        let reply = c
            .on_node("ping -c 1 -W 5 10.254.0.9 >/dev/null; nc 10.254.0.9 7000 </dev/null; true")
            .await;
        assert!(
            reply.contains("hi from the guest"),
            "TCP over virtio-net and the bridge: {reply}\n{}\n{}",
            stream(&c, "idle", pb::LogStream::Stderr).await,
            console(&c, "idle").await
        );
        let links = c.on_node("ip -o link").await;
        assert!(
            links.contains(&format!("{}: ", st.tap_device)) && links.contains("master aurae0"),
            "{links}"
        );
        let comms = c.on_node(&format!("cat /proc/{}/task/*/comm", st.vmm_pid)).await;
        assert!(comms.contains("vcpu0"), "named vCPU threads: {comms}");
        // The VMM is jailed: an unprivileged uid of its own, no capability, no_new_privs, a
        // seccomp filter on every thread, an empty root, its own network namespace.
        let jail = c
            .on_node(&format!(
                "p={}; grep -E '^(Uid|Gid|CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/$p/status | tr -s '\t:' '  '; \
                 echo threads $(grep -h Seccomp: /proc/$p/task/*/status | grep -vc 2); \
                 echo filters $(grep -h Seccomp_filters: /proc/$p/task/*/status | tr -d '\t' | cut -d: -f2 | sort -u); \
                 echo root [$(ls -A /proc/$p/root/)]; \
                 [ \"$(readlink /proc/$p/ns/net)\" = \"$(readlink /proc/1/ns/net)\" ] && echo net node || echo net own",
                st.vmm_pid
            ))
            .await;
        let f = Fields::parse(&jail);
        let uid: Vec<u32> = f.get("Uid").split_whitespace().map(|u| u.parse().unwrap()).collect();
        assert!(uid.iter().all(|u| *u == uid[0] && *u >= 200_000), "{jail}");
        assert!(f.get("Gid").split_whitespace().all(|g| g == uid[0].to_string()), "{jail}");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(f.get(set), "0000000000000000", "{set}: {jail}");
        }
        assert_eq!(f.get("NoNewPrivs"), "1");
        assert_eq!(f.get("Seccomp"), "2");
        assert_eq!(f.get("threads"), "0", "every thread filtered: {jail}");
        // Each thread adds the filter of its kind (vCPU, net-rx, signals, main) to the
        // process's: two on every thread.
        assert_eq!(f.get("filters"), "2", "a filter of its own on every thread: {jail}");
        assert_eq!(f.get("root"), "[]", "nothing of the node in its root: {jail}");
        assert_eq!(f.get("net"), "own");
        let stopped = c
            .workloads
            .clone()
            .stop(pb::StopRequest {
                workload: Some(vm_ref("idle")),
                signal: 0,
                grace_period_millis: 5000,
            })
            .await
            .unwrap()
            .into_inner();
        // A graceful stop: the VMM presses Power on the guest's i8042 keyboard; this guest
        // answers by rebooting, which ends the VM well within the grace period.
        match stopped.status {
            Some(pb::workload_status::Status::VirtualMachine(v)) => {
                assert_eq!(v.state, pb::WorkloadState::Stopped as i32, "{v:?}");
                assert!(v.exit_reason.contains("guest reset"), "the guest ended itself: {v:?}");
            }
            other => panic!("{other:?}"),
        }
        let log = console(&c, "idle").await;
        assert!(log.contains("guest got the power key"), "{log}");
        let e = c.workloads.clone().free(vm_ref("nope")).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        c.workloads.clone().free(vm_ref("idle")).await.unwrap();
        assert!(
            !c.workload_cgroups().await.contains(&"idle".to_owned()),
            "free removes the VM's cell"
        );
        let left = c.on_node("ps -o pid,comm | grep -c aurae-vmm || true").await;
        assert_eq!(left.trim(), "0", "no VMM left");
        let links = c.on_node("ip -o link").await;
        assert!(!links.contains(&st.tap_device), "the TAP went with the VM: {links}");

        c.on_node("rm -f /var/lib/aurae/vm/idle.cpio").await;
        c.assert_left_nothing("a_guest_on_the_bridge_is_reachable_accounted_and_stopped_gracefully")
            .await;
    });
}

#[test]
fn a_guest_writes_its_read_write_disk_and_cannot_write_a_read_only_one() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // Disks: a read-write image the guest writes (seen on the node afterwards) and a
        // read-only one it reads but cannot write.
        c.on_node(
            "dd if=/dev/zero of=/var/lib/aurae/vm/rw.img bs=1M count=4 2>/dev/null; \
             dd if=/dev/zero of=/var/lib/aurae/vm/ro.img bs=1M count=4 2>/dev/null; \
             printf node-data | dd of=/var/lib/aurae/vm/ro.img conv=notrunc 2>/dev/null",
        )
        .await;
        let img = guest_initramfs(
            &c,
            "disks",
            "mount -t devtmpfs dev /dev; printf written-by-guest | dd of=/dev/vda conv=notrunc 2>/dev/null; sync; \
             echo ro: $(head -c 9 /dev/vdb); \
             if printf x | dd of=/dev/vdb conv=notrunc,fsync 2>/dev/null; then echo ro write ok; else echo ro write refused; fi; \
             reboot -f",
        )
        .await;
        let req = pb::VirtualMachine {
            disks: vec![
                pb::Disk {
                    path: "/var/lib/aurae/vm/rw.img".into(),
                    read_only: false,
                },
                pb::Disk {
                    path: "/var/lib/aurae/vm/ro.img".into(),
                    read_only: true,
                },
            ],
            ..vm("disks", &img, 1)
        };
        c.runtime.clone().run_virtual_machine(req).await.unwrap();
        let st = wait_vm(a, &c, "disks").await;
        let log = console(&c, "disks").await;
        assert_eq!(st.state, pb::WorkloadState::Exited as i32, "{st:?}\n{log}");
        assert!(log.contains("ro: node-data"), "the guest reads the read-only disk: {log}");
        assert!(log.contains("ro write refused"), "and cannot write it: {log}");
        let head = c.on_node("head -c 16 /var/lib/aurae/vm/rw.img; echo; head -c 9 /var/lib/aurae/vm/ro.img").await;
        assert_eq!(head, "written-by-guest\nnode-data", "what the guest wrote is on the node's image");
        c.workloads.clone().free(vm_ref("disks")).await.unwrap();

        c.on_node("rm -f /var/lib/aurae/vm/rw.img /var/lib/aurae/vm/ro.img /var/lib/aurae/vm/disks.cpio").await;
        c.assert_left_nothing("a_guest_writes_its_read_write_disk_and_cannot_write_a_read_only_one").await;
    });
}

#[test]
fn refusals_name_the_field_and_create_nothing() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let before = c.workload_cgroups().await;
        let img = guest_initramfs(&c, "refused", "reboot -f").await;
        // Refusals name the field and create nothing.
        let bad: Vec<(pb::VirtualMachine, Code, &str)> = vec![
            (
                pb::VirtualMachine {
                    memory_bytes: 1 << 20,
                    ..vm("b1", &img, 1)
                },
                Code::InvalidArgument,
                "memory_bytes",
            ),
            (
                pb::VirtualMachine {
                    vcpus: 99,
                    ..vm("b2", &img, 1)
                },
                Code::InvalidArgument,
                "vcpus",
            ),
            (
                pb::VirtualMachine {
                    kernel_path: "/nope".into(),
                    ..vm("b3", &img, 1)
                },
                Code::InvalidArgument,
                "kernel_path",
            ),
            (
                pb::VirtualMachine {
                    kernel_path: "/bin/busybox".into(),
                    ..vm("b4", &img, 1)
                },
                Code::InvalidArgument,
                "kernel_path",
            ),
            (
                vm("b5", "/var/lib/aurae/vm/missing.cpio", 1),
                Code::InvalidArgument,
                "initramfs_path",
            ),
            (vm("Bad Name", &img, 1), Code::InvalidArgument, "name"),
            (
                pb::VirtualMachine {
                    disks: vec![pb::Disk {
                        path: "/var/lib/aurae/vm/missing.img".into(),
                        read_only: true,
                    }],
                    ..vm("b6", &img, 1)
                },
                Code::InvalidArgument,
                "disks[0].path",
            ),
            (
                pb::VirtualMachine {
                    disks: vec![pb::Disk {
                        path: "/var/lib/aurae/vm/odd.img".into(),
                        read_only: false,
                    }],
                    ..vm("b7", &img, 1)
                },
                Code::InvalidArgument,
                "512-byte sectors",
            ),
            // Attacks: the node's keys and devices, a FIFO (which would block whoever opens
            // it), a symlink out of the VM directory. Each is refused by field, and the
            // node keeps serving (checked below).
            (
                vm("k1", "/etc/aurae/pki/spawn-ca.key", 1),
                Code::InvalidArgument,
                "initramfs_path: /etc/aurae/pki/spawn-ca.key resolves to /etc/aurae/pki/spawn-ca.key, outside /var/lib/aurae/vm and /boot",
            ),
            (
                pb::VirtualMachine {
                    disks: vec![pb::Disk {
                        path: "/dev/console".into(),
                        read_only: false,
                    }],
                    ..vm("k2", &img, 1)
                },
                Code::InvalidArgument,
                "disks[0].path: /dev/console resolves to /dev/console, outside",
            ),
            (
                pb::VirtualMachine {
                    kernel_path: "/var/lib/aurae/vm/fifo".into(),
                    ..vm("k3", &img, 1)
                },
                Code::InvalidArgument,
                "kernel_path: /var/lib/aurae/vm/fifo is not a regular file",
            ),
            (
                vm("k4", "/var/lib/aurae/vm/fifo", 1),
                Code::InvalidArgument,
                "initramfs_path: /var/lib/aurae/vm/fifo is not a regular file",
            ),
            (
                vm("k5", "/var/lib/aurae/vm/key", 1),
                Code::InvalidArgument,
                "initramfs_path: /var/lib/aurae/vm/key resolves to /etc/aurae/pki/server.key, outside",
            ),
        ];
        c.on_node(
            "head -c 1000 /dev/zero > /var/lib/aurae/vm/odd.img; mkfifo /var/lib/aurae/vm/fifo; \
             ln -s /etc/aurae/pki/server.key /var/lib/aurae/vm/key",
        )
        .await;
        for (req, code, field) in bad {
            let e = c.runtime.clone().run_virtual_machine(req).await.unwrap_err();
            assert_eq!(e.code(), code, "{e:?}");
            assert!(e.message().contains(field), "names {field}: {}", e.message());
        }
        assert_eq!(c.workload_cgroups().await, before, "refusals leave no cgroup");
        assert!(c.list(pb::WorkloadKind::VirtualMachine).await.is_empty());
        let h = c
            .node
            .clone()
            .info(pb::NodeInfoRequest {})
            .await
            .expect("the node still serves after the attacks");
        assert_eq!(h.into_inner().pid, 1);
        c.on_node("cd /var/lib/aurae/vm && rm -f odd.img refused.cpio fifo key").await;
        c.assert_left_nothing("refusals_name_the_field_and_create_nothing")
            .await;
    });
}

/// A caller that gives up (`aer --timeout 1 vm run v9 ...`, here a third of a second and
/// less): the start finishes or fails in a task of its own, nothing of v9 stays (VM, cell,
/// VMM, TAP), and the name works again at once. Whatever the machine's speed, the answer
/// and the effect agree: an answered start is running, a refused one is gone. Shorter
/// deadlines are tried until one is refused, so a fast machine tests the give-up too.
#[test]
fn a_caller_that_gives_up_leaves_no_vm_and_the_name_works_again() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let img = guest_initramfs(&c, "v9", "sleep 1000").await;
        let links_before = c.on_node("ip -o link | grep -c atap || true").await;
        let v9 = || pb::VirtualMachine {
            network: true,
            ..vm("v9", &img, 1)
        };
        let mut refused = None;
        for millis in [300, 100, 20, 1] {
            let mut req = tonic::Request::new(v9());
            req.set_timeout(Duration::from_millis(millis));
            match c.runtime.clone().run_virtual_machine(req).await {
                Ok(st) => {
                    let st = st.into_inner();
                    assert_eq!(
                        st.state,
                        pb::WorkloadState::Running as i32,
                        "answered, so running: {st:?}"
                    );
                    remove_vm(&c, "v9").await;
                }
                Err(e) => {
                    assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");
                    refused = Some(millis);
                    break;
                }
            }
        }
        assert!(refused.is_some(), "even a 1 ms deadline was answered with a running VM");
        let gone = eventually(a.budget(GUEST_DEADLINE), || async {
            let st = vm_status(&c, "v9").await;
            let cells = c.workload_cgroups().await;
            let vmms = c.on_node("ps -o comm | grep -c aurae-vmm || true").await;
            let links = c.on_node("ip -o link | grep -c atap || true").await;
            st.is_err() && !cells.contains(&"v9".to_owned()) && vmms.trim() == "0" && links == links_before
        })
        .await;
        assert!(gone, "nothing of v9 is left:\n{}", a.console_log());
        let st = c.runtime.clone().run_virtual_machine(v9()).await.unwrap().into_inner();
        assert_eq!(
            st.state,
            pb::WorkloadState::Running as i32,
            "the name works again: {st:?}"
        );
        remove_vm(&c, "v9").await;
        c.on_node("rm -f /var/lib/aurae/vm/v9.cpio").await;
        c.assert_left_nothing("a_caller_that_gives_up_leaves_no_vm_and_the_name_works_again")
            .await;
    });
}

/// The operator's envelope, attacked as an operator would (a client certificate with role
/// operator): a VM's VMM cell (privileged, the node's whole filesystem) takes no executable
/// and no exec; host namespaces, capabilities beyond the default set and privileged or
/// unconfined cells are refused by name; and the operator's own default cell has the
/// default capability set, no view of /etc/aurae/pki and no way to signal the node's PID 1.
/// Each refusal changes nothing.
#[test]
fn an_operator_cannot_become_root_on_the_node() {
    let a = shared_or_skip!();
    let roles = aurae_appliance_tests::shared_roles().unwrap();
    rt().block_on(async {
        let admin = Client::connect(a).await;
        let op = Client::connect_with(a.target_as(roles.tls("test-operator")), None).await;
        let img = guest_initramfs(&admin, "t3-vm", "sleep 1000").await;
        admin
            .runtime
            .clone()
            .run_virtual_machine(vm("t3-vm", &img, 1))
            .await
            .unwrap();
        let cgroups_before = admin.workload_cgroups().await;
        let vmm_procs =
            "cat /sys/fs/cgroup/aurae/t3-vm/cgroup.procs /sys/fs/cgroup/aurae/t3-vm/*/cgroup.procs 2>/dev/null | wc -l";
        let procs_before = admin.on_node(vmm_procs).await;

        // Into the VMM's private cell: an executable, then an exec with a terminal.
        let e = op
            .exec(pb::Executable {
                name: "steal".into(),
                argv: vec!["/bin/cat".into(), "/etc/aurae/pki/spawn-ca.key".into()],
                cell: "t3-vm".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message()
                .contains("cell: cell 't3-vm' is the private cell of virtual machine 't3-vm'"),
            "{e:?}"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::ExecRequest {
            request: Some(pb::exec_request::Request::Start(pb::ExecStart {
                cell: "t3-vm".into(),
                argv: vec!["/bin/sh".into()],
                tty: true,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let refused = match op
            .runtime
            .clone()
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Err(e) => e,
            Ok(s) => {
                let mut s = s.into_inner();
                match s.message().await {
                    Err(e) => e,
                    Ok(m) => panic!("an exec in the VMM's cell was answered: {m:?}"),
                }
            }
        };
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("start.cell: cell 't3-vm' is the private cell"),
            "{refused:?}"
        );
        assert_eq!(
            admin.on_node(vmm_procs).await,
            procs_before,
            "nothing joined the VMM's cell"
        );

        // Powers beyond a default cell's.
        let ask = |i: pb::CellIsolation, c: pb::CellConfinement| pb::Cell {
            name: "op-root".into(),
            isolation: Some(i),
            confinement: Some(c),
            ..Default::default()
        };
        let caps = |c: &str| pb::CellConfinement {
            cap_add: vec![c.into()],
            ..Default::default()
        };
        let none = pb::CellIsolation::default();
        let asks = [
            (
                ask(
                    pb::CellIsolation {
                        share_host_mount: true,
                        ..none
                    },
                    Default::default(),
                ),
                "isolation.share_host_mount",
            ),
            (
                ask(
                    pb::CellIsolation {
                        share_host_pid: true,
                        ..none
                    },
                    Default::default(),
                ),
                "isolation.share_host_pid",
            ),
            (
                ask(
                    pb::CellIsolation {
                        share_host_network: true,
                        ..none
                    },
                    Default::default(),
                ),
                "isolation.share_host_network",
            ),
            (ask(none, caps("SYS_ADMIN")), "confinement.cap_add SYS_ADMIN"),
            (ask(none, caps("ALL")), "confinement.cap_add ALL"),
            (
                ask(none, caps("DAC_READ_SEARCH")),
                "confinement.cap_add DAC_READ_SEARCH",
            ),
            (
                ask(
                    none,
                    pb::CellConfinement {
                        privileged: true,
                        ..Default::default()
                    },
                ),
                "confinement.privileged",
            ),
        ];
        for (req, field) in asks {
            let e = op.cell(req).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{field}: {e:?}");
            assert!(
                e.message().contains(field) && e.message().contains("needs admin"),
                "{e:?}"
            );
        }
        assert_eq!(admin.workload_cgroups().await, cgroups_before, "no cell was made");

        // What an operator may have: a default cell, with NET_BIND_SERVICE re-added.
        op.cell(ask(none, caps("NET_BIND_SERVICE"))).await.unwrap();
        let (st, out) = op
            .run_sh(
                "op-look",
                "op-root",
                "grep CapEff /proc/self/status; ls /etc/aurae/pki 2>&1 | head -1; readlink /proc/1/ns/pid",
            )
            .await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        // Docker's default set less MKNOD: 0xa80425fb & !(1 << 27).
        assert_eq!(lines[0].split_whitespace().nth(1), Some("00000000a00425fb"), "{out}");
        assert!(
            lines[1].contains("No such file or directory"),
            "the node's keys are not there: {out}"
        );
        let node_pid_ns = admin.on_node("readlink /proc/1/ns/pid").await;
        assert_ne!(
            lines[2].trim(),
            node_pid_ns.trim(),
            "the node's PID 1 is out of reach: {out}"
        );
        op.remove_cell("op-root").await;

        remove_vm(&admin, "t3-vm").await;
        admin.on_node("rm -f /var/lib/aurae/vm/t3-vm.cpio").await;
        admin
            .assert_left_nothing("an_operator_cannot_become_root_on_the_node")
            .await;
    });
}

/// `aer metrics` with client files `tls`: (exit code, stdout, stderr).
fn aer_metrics(a: &Appliance, tls: &auraed::pki::tls::TlsFiles) -> (Option<i32>, String, String) {
    let o = a.aer(None, Some(tls)).arg("metrics").output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.code(), text(&o.stdout), text(&o.stderr))
}

/// The Prometheus project's own OpenMetrics parser (Python's prometheus_client, strict):
/// each family as "name type samples".
fn parsed(scrape: &str) -> Vec<(String, String, usize)> {
    use std::io::Write;
    let mut p = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as f\n\
             for m in f(sys.stdin.read()): print(m.name, m.type, len(m.samples))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (make deps installs python3-prometheus-client)");
    p.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{scrape}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

/// `GET /metrics` as Prometheus scrapes it (HTTP/1.1, mTLS), on a node with a VM, a cell
/// and an executable: a real parser finds every listed family with samples; a reader may
/// scrape, an identity with no role may not and learns nothing.
#[test]
fn a_reader_scrapes_every_listed_metric_with_a_vm_a_cell_and_an_executable_running() {
    let a = shared_or_skip!();
    let roles = aurae_appliance_tests::shared_roles().unwrap();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let img = guest_initramfs(&c, "scraped", "sleep 1000").await;
        c.runtime
            .clone()
            .run_virtual_machine(vm("scraped", &img, 1))
            .await
            .unwrap();
        c.cell(pb::Cell {
            name: "scraped-cell".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        c.exec(aurae_appliance_tests::sh("scraped-exe", "scraped-cell", "sleep 1000"))
            .await
            .unwrap();
        let (code, scrape, err) = aer_metrics(a, &roles.tls("test-reader"));
        assert_eq!(code, Some(0), "{err}");
        let families = parsed(&scrape);
        for (name, kind) in auraed::METRIC_FAMILIES {
            assert!(
                families
                    .iter()
                    .any(|(n, t, samples)| n == name && t == kind && *samples > 0),
                "{name} ({kind}) with samples in:\n{scrape}"
            );
        }
        for line in [
            "aurae_workloads{kind=\"vm\",phase=\"running\"} 1",
            "aurae_workloads{kind=\"executable\",phase=\"running\"} 1",
            "aurae_vm_guest_memory_bytes{kind=\"vm\",vm=\"scraped\"} 134217728",
            "aurae_vm_vcpus{kind=\"vm\",vm=\"scraped\"} 1",
            "aurae_cell_pids{cell=\"scraped-cell\"}",
        ] {
            assert!(scrape.contains(line), "{line} in:\n{scrape}");
        }
        let overhead: f64 = (scrape.lines())
            .find_map(|l| l.strip_prefix("aurae_vm_vmm_overhead_bytes{kind=\"vm\",vm=\"scraped\"} "))
            .expect("the VMM's overhead")
            .parse()
            .unwrap();
        assert!(
            overhead > 100e3 && overhead < 64e6,
            "the VMM's own memory, guest RAM left out: {overhead}"
        );

        // An identity of the node's trust domain that the policy gives no role.
        let dir = tempfile::tempdir().unwrap();
        let ca = auraed::pki::read_pair(&a.build.join("pki"), "ca").unwrap();
        let id = auraed::pki::spiffe_id(auraed::pki::DEFAULT_TRUST_DOMAIN, "client/nobody");
        let m = auraed::pki::mint_leaf(&ca, &id, "nobody", auraed::pki::LeafKind::Client, 1).unwrap();
        auraed::pki::write_pair(dir.path(), "nobody", &m).unwrap();
        std::fs::copy(a.build.join("pki/ca.crt"), dir.path().join("ca.crt")).unwrap();
        let (code, out, err) = aer_metrics(a, &auraed::pki::tls::TlsFiles::in_dir(dir.path(), "nobody"));
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(
            err.contains("permission denied") && err.contains("client/nobody"),
            "{err}"
        );
        assert!(!out.contains("aurae_"), "nothing measured reaches it: {out}");

        remove_vm(&c, "scraped").await;
        c.stop_and_free(aurae_appliance_tests::exe_ref("scraped-exe"), 500)
            .await;
        c.remove_cell("scraped-cell").await;
        c.on_node("rm -f /var/lib/aurae/vm/scraped.cpio").await;
        c.assert_left_nothing("a_reader_scrapes_every_listed_metric_with_a_vm_a_cell_and_an_executable_running")
            .await;
    });
}
