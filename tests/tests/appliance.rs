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
