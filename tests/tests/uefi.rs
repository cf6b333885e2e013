//! Appliance tier, issue #13: the UEFI media. `make uefi` makes a Unified Kernel Image
//! (systemd's EFI stub, the `metal` kernel, command line, initramfs) on an ESP inside a
//! raw GPT disk image. Here that image is a USB stick of a q35 machine with OVMF (a copy
//! of its vars), an e1000e NIC, an NVMe disk and a VGA display — no `-kernel`: the
//! firmware finds \EFI\BOOT\BOOTX64.EFI and starts it. The node takes its address by DHCP
//! (QEMU's, `restrict=on`), serves, and shows what it is on the screen too.

#![allow(clippy::unwrap_used)]

use aurae_appliance_tests::{appliance_or_skip, project_root as root, rt, sh, stop_runner, Appliance, Client};
use auraed::pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Firmware, the stub and a larger kernel under TCG: ~20 s on the reference machine.
/// A bound for waiting, not a timed claim (`make bench` times it).
const UEFI_BOOT_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn the_usb_stick_boots_under_uefi_takes_dhcp_serves_and_shows_itself_on_screen() {
    let build = appliance_or_skip!();
    let usb = build.join("uefi/usb.img");
    assert!(usb.exists(), "{} missing: make uefi", usb.display());
    let a = Appliance::boot_with(&build, UEFI_BOOT_DEADLINE, &[("BOOT", "uefi"), ("MACHINE", "q35")]);
    rt().block_on(async {
        let c = Client::connect(&a).await;
        // The uplink came from the DHCP server, not from a command line address.
        let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.uplink_address, "10.0.2.15/24", "{info:?}");
        let lease = info.dhcp_lease.as_ref().expect("a DHCP lease");
        assert_eq!(lease.server, "10.0.2.2", "{lease:?}");

        let facts = c
            .on_node(
                "test -d /sys/firmware/efi && echo firmware=efi; \
                 echo nic=$(basename $(readlink /sys/class/net/eth0/device/driver)); \
                 ls /sys/block | sed 's/^/disk=/'; \
                 sed 's/^/fb=/' /proc/fb; \
                 echo cmdline=$(cat /proc/cmdline); \
                 echo kernel=$(uname -r)",
            )
            .await;
        assert!(facts.contains("firmware=efi"), "booted through UEFI: {facts}");
        assert!(facts.contains("nic=e1000e"), "the e1000e NIC is eth0: {facts}");
        assert!(facts.contains("disk=nvme0n1"), "the NVMe disk is there: {facts}");
        assert!(
            facts.contains("EFI VGA"),
            "the firmware's framebuffer is the console: {facts}"
        );
        assert!(facts.contains("aurae.ip=dhcp"), "the UKI's own command line: {facts}");

        // On a machine without a serial console the screen says who the node is, where it
        // is and whether it serves: auraed mirrors its log to tty1 (read back from vcs1).
        assert!(!info.spiffe_id.is_empty(), "the node has an identity: {info:?}");
        let screen = c.on_node("tr -s ' ' < /dev/vcs1").await;
        for what in [
            "starting as PID 1",
            "dhcp: eth0 10.0.2.15/24 from 10.0.2.2",
            "serving mTLS gRPC",
            &format!("as {}", info.spiffe_id),
        ] {
            assert!(screen.contains(what), "the screen shows '{what}':\n{screen}");
        }

        // The new devices (framebuffer, terminals, NVMe) are the node's, not a cell's: a
        // default cell sees none of them and cannot make them.
        c.cell(pb::Cell {
            name: "plain".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let (st, out) = c
            .run(sh(
                "peek",
                "plain",
                "for d in /dev/fb0 /dev/tty1 /dev/vcs1 /dev/nvme0n1 /dev/tty0; do \
                   [ -e $d ] && echo visible $d; done; \
                 mknod /tmp/vcs c 7 1 2>/dev/null && cat /tmp/vcs && echo made vcs; \
                 mknod /tmp/fb c 29 0 2>/dev/null && echo made fb; \
                 mknod /tmp/nvme b 259 0 2>/dev/null && echo made nvme; \
                 echo done",
            ))
            .await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        assert!(out.contains("done"), "{out}");
        assert!(
            !out.contains("visible") && !out.contains("made"),
            "a cell reached a console device: {out}"
        );
        c.remove_cell("plain").await;
        c.assert_left_nothing("uefi").await;
    });
}

/// Debian's OVMF test keys: the certificate its snakeoil variables enroll in PK, KEK and
/// db, and its key (shipped with the passphrase "snakeoil"; sbsign needs it without).
fn snakeoil_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("snakeoil.key");
    let st = Command::new("openssl")
        .args([
            "pkey",
            "-in",
            "/usr/share/ovmf/PkKek-1-snakeoil.key",
            "-passin",
            "pass:snakeoil",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "openssl pkey: {st}");
    (key, PathBuf::from("/usr/share/ovmf/PkKek-1-snakeoil.pem"))
}

#[test]
fn under_secure_boot_the_signed_uki_boots_and_an_unsigned_one_is_refused() {
    let build = appliance_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = snakeoil_key(dir.path());
    let signed = dir.path().join("signed");
    let st = Command::new(root().join("rootfs/uefi.sh"))
        .arg(&build)
        .arg(&signed)
        .env("SB_KEY", &key)
        .env("SB_CERT", &cert)
        .status()
        .unwrap();
    assert!(st.success(), "rootfs/uefi.sh with SB_KEY: {st}");

    // The signed stick boots with Secure Boot on, and the kernel says it is on.
    {
        let usb = signed.join("usb.img");
        let a = Appliance::boot_with(
            &build,
            UEFI_BOOT_DEADLINE,
            &[
                ("BOOT", "uefi"),
                ("MACHINE", "q35"),
                ("SECURE_BOOT", "snakeoil"),
                ("USB_IMAGE", usb.to_str().unwrap()),
            ],
        );
        rt().block_on(async {
            let c = Client::connect(&a).await;
            let log = c.on_node("dmesg | grep -i 'secure boot' || true").await;
            assert!(log.contains("Secure boot enabled"), "{log}");
        });
    }

    // The attack: the firmware is handed an image nobody signed (the unsigned build, as an
    // attacker's replaced UKI would be). It refuses it, and no kernel ever starts.
    let console = dir.path().join("unsigned.log");
    let mut child = Command::new(root().join("qemu/run"))
        .env("BUILD", &build)
        .env("BOOT", "uefi")
        .env("MACHINE", "q35")
        .env("SECURE_BOOT", "snakeoil")
        .env("NET", "none")
        .env("ACCEL", "tcg")
        .env("NO_REBOOT", "1")
        .env("WATCH_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let text = loop {
        let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        // OVMF tries the stick, then its own shell (also refused), then gives up.
        if text.contains("No bootable option") || start.elapsed() > UEFI_BOOT_DEADLINE {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop_runner(&mut child);
    assert!(
        text.contains("Access Denied"),
        "the firmware refused the unsigned UKI:\n{text}"
    );
    assert!(
        !text.contains("Linux version") && !text.contains("starting as PID 1"),
        "no kernel ran:\n{text}"
    );
}
