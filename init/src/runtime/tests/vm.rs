//! Virtual machines without KVM or QEMU: `FakeDevices` stands in for /dev/kvm and the TAPs
//! (a TAP is there while a descriptor of it is open, as a real one), and the fake launcher
//! plays the VMM on its control socket (`FakeVmm`): it takes the configuration and the
//! files, then says Ready, fails, or stays silent. Each test checks what is left on the
//! fixture: cgroups, processes, TAPs and the table.

use crate::runtime::launcher::testing::{FakeDevices, FakeLauncher, FakeVmm};
use crate::runtime::names::ExecName;
use crate::runtime::spec::{Resources, VmSpec};
use crate::runtime::{error::RuntimeError, Kind, Phase, Runtime, View};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Rig {
    pub(super) dir: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) kernel: PathBuf,
    pub(super) fake: Arc<FakeLauncher>,
    pub(super) devices: Arc<FakeDevices>,
    pub(super) rt: Runtime,
}

/// A fixture workloads root offering the controllers a VM's cell uses, a directory of
/// clients' VM files with a kernel `check_kernel` takes, and the fakes.
pub(super) fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("aurae");
    let files = dir.path().join("vm");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&files).unwrap();
    // A VM's cell bounds its memory: the root offers the controller, as on the appliance.
    for f in ["cgroup.controllers", "cgroup.subtree_control"] {
        std::fs::write(root.join(f), "cpu memory pids\n").unwrap();
    }
    // What check_kernel takes for a bzImage: the setup header's magic at 0x202.
    let mut image = vec![0u8; 0x400];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    let kernel = files.join("bzImage");
    std::fs::write(&kernel, image).unwrap();
    let fake = FakeLauncher::new(&root);
    let devices = Arc::new(FakeDevices::default());
    let rt = Runtime::with_fakes(root.clone(), fake.clone(), devices.clone(), files);
    Rig {
        dir,
        root,
        kernel,
        fake,
        devices,
        rt,
    }
}

fn vm(r: &Rig, name: &str, ready_within: Duration) -> VmSpec {
    vm_spec(&r.kernel, name, ready_within)
}

/// A one-vCPU, 64 MiB VM on the bridge booting `kernel`.
pub(super) fn vm_spec(kernel: &std::path::Path, name: &str, ready_within: Duration) -> VmSpec {
    VmSpec {
        name: ExecName::parse_vm(name).unwrap(),
        kernel: kernel.to_owned(),
        initramfs: None,
        cmdline: "console=ttyS0".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        network: true,
        extra_nics: Vec::new(),
        disks: Vec::new(),
        resources: Resources::default(),
        ready_within,
    }
}

/// Nothing of VM `name` is left: no table entry, no cgroup, no process, no open TAP.
fn nothing_left(r: &Rig, name: &str) {
    assert!(matches!(
        r.rt.status(Kind::VirtualMachine, name),
        Err(RuntimeError::NotFound(_))
    ));
    assert!(!r.root.join(name).exists(), "its cell's cgroup is gone");
    assert_eq!(r.fake.running(), 0, "no process is left");
    for tap in r.devices.taps() {
        assert!(!r.devices.tap_alive(&tap), "TAP {tap} was closed with its VMM");
    }
}

#[tokio::test]
async fn a_vm_runs_stops_and_frees_and_its_tap_goes_with_its_vmm() {
    let r = rig();
    let v = r.rt.run_vm(vm(&r, "web", Duration::from_secs(10))).await.unwrap();
    assert_eq!(v.phase, Some(Phase::Running), "{v:?}");
    assert_eq!(v.tap, "atap0");
    assert!(r.devices.tap_alive("atap0"), "the VMM holds its TAP");
    assert!(r.root.join("web").is_dir(), "the VM's cell");
    let stopped =
        r.rt.stop(Kind::VirtualMachine, "web", libc::SIGTERM, Duration::from_millis(20))
            .await
            .unwrap();
    let View::VirtualMachine(s) = stopped else {
        panic!("{stopped:?}")
    };
    assert!(s.phase.is_some_and(Phase::ended), "{s:?}");
    // The fake VMM closes its files once its process is gone, as an exiting one does.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while r.devices.tap_alive("atap0") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.rt.free(Kind::VirtualMachine, "web").await.unwrap();
    nothing_left(&r, "web");
    use crate::runtime::events::What;
    assert_eq!(
        told(&r, Kind::VirtualMachine, "web"),
        [What::Created, What::Started, What::Stopped, What::Freed]
    );
}

/// What the events said of workload `kind`/`name`, in order.
pub(super) fn told(r: &Rig, kind: Kind, name: &str) -> Vec<crate::runtime::events::What> {
    told_by(&r.rt, kind, name)
}

pub(super) fn told_by(rt: &crate::runtime::Runtime, kind: Kind, name: &str) -> Vec<crate::runtime::events::What> {
    (rt.events().read(0, 4096).events.into_iter())
        .filter(|e| e.kind == kind && e.name == name)
        .map(|e| e.what)
        .collect()
}

#[tokio::test]
async fn a_vmm_that_fails_to_boot_says_why_and_leaves_nothing() {
    let r = rig();
    *r.fake.vmm.lock().unwrap() = FakeVmm::FailsToBoot(1);
    let e = r.rt.run_vm(vm(&r, "bad", Duration::from_secs(10))).await.unwrap_err();
    assert!(matches!(e, RuntimeError::StartFailed(_)), "{e:?}");
    assert!(e.to_string().contains("not a bzImage (fake)"), "{e}");
    nothing_left(&r, "bad");
    // The name is free again.
    *r.fake.vmm.lock().unwrap() = FakeVmm::Ready;
    r.rt.run_vm(vm(&r, "bad", Duration::from_secs(10))).await.unwrap();
}

#[tokio::test]
async fn a_vm_that_never_gets_ready_is_undone_at_its_deadline() {
    let r = rig();
    *r.fake.vmm.lock().unwrap() = FakeVmm::Silent;
    let e =
        r.rt.run_vm(vm(&r, "slow", Duration::from_millis(100)))
            .await
            .unwrap_err();
    assert!(matches!(e, RuntimeError::DeadlineExceeded(_)), "{e:?}");
    nothing_left(&r, "slow");
}

#[tokio::test]
async fn a_vmm_that_dies_while_running_ends_the_vm_with_the_reason() {
    let r = rig();
    r.rt.run_vm(vm(&r, "crash", Duration::from_secs(10))).await.unwrap();
    let pid = r.fake.pids_in(&r.root.join("crash").join("_x.crash"));
    assert_eq!(pid.len(), 1, "the VMM runs in its leaf: {pid:?}");
    r.fake.exit(pid[0], 101);
    let v = r.rt.wait(Kind::VirtualMachine, "crash").await.unwrap();
    let View::VirtualMachine(s) = v else { panic!("{v:?}") };
    assert_eq!(s.phase, Some(Phase::Failed), "{s:?}");
    assert!(s.error.contains("exited with Some(101)"), "{s:?}");
    r.rt.free(Kind::VirtualMachine, "crash").await.unwrap();
    nothing_left(&r, "crash");
    let told = told(&r, Kind::VirtualMachine, "crash");
    assert!(
        matches!(&told[..], [_, crate::runtime::events::What::Started, crate::runtime::events::What::Failed(why), _] if why.contains("exited with Some(101)")),
        "the end is told with its reason: {told:?}"
    );
}

/// The fault of a VMM SIGKILLed as the OOM killer would: the VM fails, saying so, and it
/// is told; its TAP closes with the VMM; Free leaves nothing.
#[tokio::test]
async fn a_vmm_killed_by_a_signal_fails_the_vm_with_the_reason_and_is_told() {
    let r = rig();
    r.rt.run_vm(vm(&r, "oom", Duration::from_secs(10))).await.unwrap();
    let pid = r.fake.pids_in(&r.root.join("oom").join("_x.oom"));
    r.fake.kill_pid(pid[0], libc::SIGKILL);
    let v = r.rt.wait(Kind::VirtualMachine, "oom").await.unwrap();
    let View::VirtualMachine(s) = v else { panic!("{v:?}") };
    assert_eq!(s.phase, Some(Phase::Failed), "{s:?}");
    assert_eq!(s.error, "the VMM was killed by signal 9", "{s:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while r.devices.tap_alive("atap0") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.rt.free(Kind::VirtualMachine, "oom").await.unwrap();
    nothing_left(&r, "oom");
    use crate::runtime::events::What;
    assert_eq!(
        told(&r, Kind::VirtualMachine, "oom"),
        [
            What::Created,
            What::Started,
            What::Failed("the VMM was killed by signal 9".into()),
            What::Freed
        ]
    );
}

#[tokio::test]
async fn without_kvm_a_vm_is_refused_and_nothing_is_made() {
    let r = rig();
    *r.devices.kvm_missing.lock().unwrap() = Some("/dev/kvm: no such device".into());
    let e = r.rt.run_vm(vm(&r, "nokvm", Duration::from_secs(10))).await.unwrap_err();
    assert!(
        matches!(e, RuntimeError::NodeLacks(crate::runtime::error::Lack::Kvm(_))),
        "{e:?}"
    );
    assert!(e.to_string().contains("this node cannot run virtual machines"), "{e}");
    assert!(r.devices.taps().is_empty(), "no TAP was made");
    nothing_left(&r, "nokvm");
}
