//! Spawn without KVM, QEMU or a child: the VM isolation on `FakeDevices` and the fake VMM
//! (as in `vm.rs`), and `FakeChildren` for the child's API (it serves at once, or never).
//! Each test checks what is left: the instance's initramfs image, its VM's cgroup and
//! TAP, the table, and its address on the bridge (taken again by the next Spawn).

use crate::runtime::error::RuntimeError;
use crate::runtime::launcher::testing::{FakeChildren, FakeDevices, FakeLauncher, FakeVmm};
use crate::runtime::names::ExecName;
use crate::runtime::spawn::instance::{InstanceSpec, IsolationKind};
use crate::runtime::spawn::SpawnError;
use crate::runtime::{Kind, Phase, Runtime, View};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Rig {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) instances: PathBuf,
    pub(crate) fake: Arc<FakeLauncher>,
    pub(crate) devices: Arc<FakeDevices>,
    pub(crate) children: Arc<FakeChildren>,
    pub(crate) rt: Arc<Runtime>,
}

/// `vm.rs`'s rig, with a spawn identity, a directory for the instances' files, a small
/// stand-in for auraed as the child's /init, and children that serve.
pub(crate) fn rig() -> Rig {
    rig_with(|_| {})
}

/// `rig`, with `edit` given the runtime before it is shared (an image store, say).
pub(crate) fn rig_with(edit: impl FnOnce(&mut Runtime)) -> Rig {
    let super::vm::Rig {
        dir,
        root,
        kernel,
        fake,
        devices,
        mut rt,
    } = super::vm::rig();
    let instances = dir.path().join("instances");
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let exe = dir.path().join("auraed");
    std::fs::write(&exe, b"\x7fELF stand-in").unwrap();
    let (id, _, _) = crate::runtime::spawn::identity::test_spawn_identity(&pki, Default::default());
    let children = Arc::new(FakeChildren::default());
    let host = rt.host_mut();
    host.children = children.clone();
    host.instance_dir = instances.clone();
    host.node_kernel = kernel;
    host.own_exe = exe;
    host.spawn_identity = Some(id);
    edit(&mut rt);
    Rig {
        _dir: dir,
        root,
        instances,
        fake,
        devices,
        children,
        rt: Arc::new(rt),
    }
}

/// The child of instance `name` powers off when asked (its VMM or auraed process exits),
/// as a real one does.
pub(crate) fn powers_off_when_asked(r: &Rig, name: &str) {
    let (fake, leaf) = (r.fake.clone(), r.root.join(name).join(format!("_x.{name}")));
    *r.children.on_shutdown.lock().unwrap() = Some(Box::new(move || {
        for pid in fake.pids_in(&leaf) {
            fake.exit(pid, 0);
        }
    }));
}

pub(crate) fn instance(name: &str, serving_within: Duration) -> InstanceSpec {
    InstanceSpec {
        name: ExecName::parse_instance(name).unwrap(),
        isolation: Some(IsolationKind::Vm),
        vcpus: 1,
        memory_bytes: 256 << 20,
        svid_ttl: Duration::from_secs(3600),
        serving_within,
        attachments: Vec::new(),
        hostname: None,
        host_network: false,
        pod_subnet: false,
        pod_dir: None,
    }
}

/// Nothing of instance `name` is left: no table entry, no cgroup, no process, no open TAP,
/// no initramfs image.
pub(crate) fn nothing_left(r: &Rig, name: &str) {
    assert!(matches!(
        r.rt.status(Kind::Instance, name),
        Err(RuntimeError::NotFound(_))
    ));
    assert!(!r.root.join(name).exists(), "its VM's cgroup is gone");
    assert_eq!(r.fake.running(), 0, "no process is left");
    for tap in r.devices.taps() {
        assert!(!r.devices.tap_alive(&tap), "TAP {tap} was closed");
    }
    let left: Vec<_> = std::fs::read_dir(&r.instances)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the instance's files are gone: {left:?}");
}

#[tokio::test]
async fn an_instance_spawns_stops_and_frees_and_gives_its_address_back() {
    let r = rig();
    let v = r.rt.spawn(instance("c1", Duration::from_secs(10))).await.unwrap();
    assert_eq!(v.phase, Some(Phase::Running), "{v:?}");
    assert_eq!(v.spiffe_id, "spiffe://t.test/node/n/instance/c1");
    let first = v.address.clone();
    assert!(r.instances.join("c1.cpio").is_file(), "its initramfs with its PKI");
    assert!(r.devices.tap_alive("atap0"), "its VM holds its TAP");
    // The child powers off when asked: its VMM exits.
    powers_off_when_asked(&r, "c1");
    let stopped =
        r.rt.stop(Kind::Instance, "c1", libc::SIGTERM, Duration::ZERO)
            .await
            .unwrap();
    let View::Instance(s) = stopped else {
        panic!("{stopped:?}")
    };
    assert!(s.phase.is_some_and(Phase::ended), "{s:?}");
    assert_eq!(
        r.children.shutdowns.load(Ordering::Relaxed),
        1,
        "the child was asked to power off"
    );
    r.rt.free(Kind::Instance, "c1").await.unwrap();
    nothing_left(&r, "c1");
    use crate::runtime::events::What;
    assert_eq!(
        super::vm::told_by(&r.rt, Kind::Instance, "c1"),
        [What::Created, What::Started, What::Stopped, What::Freed]
    );
    // The next instance gets the address back.
    let again = r.rt.spawn(instance("c2", Duration::from_secs(10))).await.unwrap();
    assert_eq!(again.address, first);
}

#[tokio::test]
async fn a_child_that_never_serves_is_undone_at_its_deadline() {
    let r = rig();
    *r.children.serves.lock().unwrap() = false;
    let e =
        r.rt.spawn(instance("mute", Duration::from_millis(200)))
            .await
            .unwrap_err();
    assert!(matches!(e, RuntimeError::Spawn(SpawnError::NotServing(_))), "{e:?}");
    nothing_left(&r, "mute");
    // The name and the address are free again.
    *r.children.serves.lock().unwrap() = true;
    let v = r.rt.spawn(instance("mute", Duration::from_secs(10))).await.unwrap();
    assert_eq!(v.phase, Some(Phase::Running));
}

#[tokio::test]
async fn a_vmm_that_fails_while_spawning_leaves_nothing() {
    let r = rig();
    *r.fake.vmm.lock().unwrap() = FakeVmm::FailsToBoot(1);
    let e = r.rt.spawn(instance("bad", Duration::from_secs(10))).await.unwrap_err();
    assert!(e.to_string().contains("not a bzImage (fake)"), "{e}");
    nothing_left(&r, "bad");
}

#[tokio::test]
async fn a_child_whose_vm_dies_before_serving_says_so_and_leaves_nothing() {
    let r = rig();
    *r.children.serves.lock().unwrap() = false;
    let spawning = r.rt.spawn(instance("dies", Duration::from_secs(30)));
    let killer = async {
        // Once its guest runs and the wait for the child has begun, the VMM dies.
        while r.children.waits.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for pid in r.fake.pids_in(&r.root.join("dies").join("_x.dies")) {
            r.fake.exit(pid, 9);
        }
    };
    let (e, ()) = tokio::join!(spawning, killer);
    let e = e.unwrap_err();
    assert!(matches!(e, RuntimeError::Spawn(SpawnError::Ended(_))), "{e:?}");
    nothing_left(&r, "dies");
}

#[tokio::test]
async fn without_kvm_a_vm_instance_is_refused_and_nothing_is_made() {
    let r = rig();
    *r.devices.kvm_missing.lock().unwrap() = Some("/dev/kvm: no such device".into());
    let e =
        r.rt.spawn(instance("nokvm", Duration::from_secs(10)))
            .await
            .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::NodeLacks(crate::runtime::error::Lack::KvmForInstance(_))
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("a VM instance needs KVM"), "{e}");
    nothing_left(&r, "nokvm");
}

/// The cell fallback (no KVM): the child auraed in a private cell, wired to the bridge by
/// a veth pair whose peer is its eth0 in the cell's network namespace.
fn fallback(r: &Rig, name: &str) -> InstanceSpec {
    *r.devices.kvm_missing.lock().unwrap() = Some("/dev/kvm: no such device".into());
    let mut spec = instance(name, Duration::from_secs(10));
    spec.isolation = None;
    spec
}

#[tokio::test]
async fn without_kvm_an_instance_falls_back_to_a_cell_on_a_veth_and_leaves_nothing_when_freed() {
    let r = rig();
    let v = r.rt.spawn(fallback(&r, "fb")).await.unwrap();
    assert_eq!(v.phase, Some(Phase::Running), "{v:?}");
    assert_eq!(v.isolation, Some(IsolationKind::Cell));
    assert!(v.vm.is_none(), "no VM: {v:?}");
    let veths = r.devices.veths.lock().unwrap().clone();
    assert_eq!(veths.len(), 1, "one veth pair: {veths:?}");
    let (host_end, (bridge, holder, inside, address)) = veths.iter().next().unwrap();
    assert!(host_end.starts_with("aveth"), "{host_end}");
    assert_eq!(bridge, "aurae0");
    assert_eq!(inside, "eth0");
    assert_eq!(
        format!("{address}"),
        format!("{}/24", v.address.split(':').next().unwrap())
    );
    let leaf = r.root.join("fb").join("_x.fb");
    assert_eq!(r.fake.pids_in(&leaf).len(), 1, "the child auraed runs in its cell");
    assert!(*holder > 0, "the peer went into the cell holder's namespace");
    assert!(r.instances.join("fb").is_dir(), "its PKI directory");
    powers_off_when_asked(&r, "fb");
    r.rt.stop(Kind::Instance, "fb", libc::SIGTERM, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(r.children.shutdowns.load(Ordering::Relaxed), 1);
    r.rt.free(Kind::Instance, "fb").await.unwrap();
    assert!(r.devices.veths.lock().unwrap().is_empty(), "the veth pair went with it");
    nothing_left(&r, "fb");
    let again = r.rt.spawn(fallback(&r, "fb2")).await.unwrap();
    assert_eq!(again.address, v.address, "its address was given back");
}

/// A hostNetwork pod's instance: a cell in the node's network namespace, so no veth, and
/// its API on a loopback port of the node rather than an address on the bridge; only a
/// cell can be one.
#[tokio::test]
async fn an_instance_in_the_nodes_network_has_no_veth_and_serves_on_loopback() {
    let r = rig();
    let mut spec = fallback(&r, "hostnet");
    spec.host_network = true;
    let e = r.rt.spawn(spec.clone()).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("isolation: an instance in the node's network"),
        "{e}"
    );
    spec.isolation = Some(IsolationKind::Cell);
    let v = r.rt.spawn(spec).await.unwrap();
    assert_eq!(v.isolation, Some(IsolationKind::Cell));
    assert!(v.address.starts_with("127.0.0.1:"), "{}", v.address);
    assert!(r.devices.veths.lock().unwrap().is_empty(), "no veth pair");
    powers_off_when_asked(&r, "hostnet");
    r.rt.stop(Kind::Instance, "hostnet", libc::SIGTERM, Duration::ZERO)
        .await
        .unwrap();
    r.rt.free(Kind::Instance, "hostnet").await.unwrap();
    nothing_left(&r, "hostnet");
}

/// kubelet's pod CIDR: its first address joins the bridge and CRI sandboxes' instances
/// take their addresses from it, other instances from the bridge's own subnet; a CIDR
/// instances cannot use, or where this node's children put their bridges, is refused by
/// field and nothing is added.
#[tokio::test]
async fn sandboxes_take_their_addresses_from_the_pod_cidr() {
    let r = rig();
    let cidr = |s: &str| s.parse::<crate::net::Ipv4Cidr>().unwrap();
    for bad in [
        "10.244.7.0/16",
        "192.168.7.0/24",
        "10.244.7.5/24",
        "10.253.7.0/24",
        "10.9.7.0/24",
    ] {
        let e = r.rt.use_pod_subnet(cidr(bad)).unwrap_err();
        assert!(
            e.to_string().starts_with("runtime_config.network_config.pod_cidr:"),
            "{bad}: {e}"
        );
    }
    assert!(r.devices.addresses.lock().unwrap().is_empty(), "nothing added");
    assert_eq!(
        r.rt.use_pod_subnet(cidr("10.244.7.0/24")).unwrap().to_string(),
        "10.244.7.1/24"
    );
    assert_eq!(
        *r.devices.addresses.lock().unwrap(),
        [("aurae0".to_owned(), "10.244.7.1/24".to_owned())]
    );
    let mut spec = instance("sbx", Duration::from_secs(10));
    spec.pod_subnet = true;
    let v = r.rt.spawn(spec).await.unwrap();
    assert!(v.address.starts_with("10.244.7."), "{}", v.address);
    let plain = r.rt.spawn(instance("plain", Duration::from_secs(10))).await.unwrap();
    assert!(plain.address.starts_with("10.254.0."), "{}", plain.address);
    for name in ["sbx", "plain"] {
        powers_off_when_asked(&r, name);
        r.rt.stop(Kind::Instance, name, libc::SIGTERM, Duration::ZERO)
            .await
            .unwrap();
        r.rt.free(Kind::Instance, name).await.unwrap();
    }
}

#[tokio::test]
async fn a_veth_that_cannot_be_made_undoes_the_cell_fallback() {
    let r = rig();
    *r.devices.veths_fail_after.lock().unwrap() = Some(0);
    let e = r.rt.spawn(fallback(&r, "noveth")).await.unwrap_err();
    assert!(matches!(e, RuntimeError::Spawn(SpawnError::Veth(_))), "{e:?}");
    assert!(r.devices.veths.lock().unwrap().is_empty());
    nothing_left(&r, "noveth");
}

#[tokio::test]
async fn a_cell_child_that_never_serves_is_undone_at_its_deadline_with_its_veth() {
    let r = rig();
    *r.children.serves.lock().unwrap() = false;
    let mut spec = fallback(&r, "mutecell");
    spec.serving_within = Duration::from_millis(200);
    let e = r.rt.spawn(spec).await.unwrap_err();
    assert!(matches!(e, RuntimeError::Spawn(SpawnError::NotServing(_))), "{e:?}");
    assert!(r.devices.veths.lock().unwrap().is_empty(), "its veth is gone");
    nothing_left(&r, "mutecell");
}

/// The DER of the first certificate in `pem`.
fn der(pem: &str) -> Vec<u8> {
    crate::pki::first_der(pem).unwrap()
}

#[tokio::test]
async fn an_identity_is_renewed_at_half_life_again_and_again_and_all_of_it_is_revoked_at_free() {
    let r = rig();
    let mut spec = instance("renewed", Duration::from_secs(10));
    spec.svid_ttl = Duration::from_secs(60);
    r.rt.spawn(spec).await.unwrap();
    tokio::time::pause();
    // Not before half its life...
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(r.children.renewals.lock().unwrap().is_empty());
    // ...then at it, and at half the new one's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.children.renewals.lock().unwrap().len(), 1, "renewed at 30 s");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let renewals = r.children.renewals.lock().unwrap().clone();
    assert_eq!(renewals.len(), 2, "and again 30 s later");
    assert_ne!(renewals[0], renewals[1], "a new SVID each time");
    let id = r.rt.host.spawn_identity.clone().unwrap();
    for pem in &renewals {
        let cert = der(pem);
        assert!(!id.revoked.any(&[&cert]), "a live instance's SVID is good");
    }
    tokio::time::resume();
    powers_off_when_asked(&r, "renewed");
    r.rt.stop(Kind::Instance, "renewed", libc::SIGTERM, Duration::ZERO)
        .await
        .unwrap();
    r.rt.free(Kind::Instance, "renewed").await.unwrap();
    for pem in &renewals {
        let cert = der(pem);
        assert!(id.revoked.any(&[&cert]), "every SVID issued to it is revoked at Free");
    }
    nothing_left(&r, "renewed");
}

#[tokio::test]
async fn a_renewal_the_child_refuses_is_retried_after_a_tenth_of_its_lifetime() {
    let r = rig();
    let mut spec = instance("stubborn", Duration::from_secs(10));
    spec.svid_ttl = Duration::from_secs(60);
    r.rt.spawn(spec).await.unwrap();
    *r.children.refuse_renewals.lock().unwrap() = Some(tonic::Status::unavailable("busy (fake)"));
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(r.children.renewals.lock().unwrap().is_empty(), "refused at 30 s");
    *r.children.refuse_renewals.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(r.children.renewals.lock().unwrap().is_empty(), "the retry waits 6 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.children.renewals.lock().unwrap().len(), 1, "and takes");
}

/// A child that stops answering while its VMM runs (a kernel panic, a stopped VMM, a hung
/// auraed): after `MISSES` health checks without an answer it is killed, and the instance
/// fails saying so; the event tells it. A child that answers again in time is left alone.
#[tokio::test]
async fn a_child_that_stops_answering_is_killed_and_the_instance_fails_saying_why() {
    use crate::runtime::spawn::instance::health::{DEFAULT_EVERY as EVERY, MISSES};
    let r = rig();
    r.rt.spawn(instance("hung", Duration::from_secs(10))).await.unwrap();
    tokio::time::pause();
    // Two missed checks, then an answer: the count starts again.
    *r.children.answers.lock().unwrap() = false;
    tokio::time::sleep(EVERY * (MISSES - 1) + Duration::from_millis(1)).await;
    *r.children.answers.lock().unwrap() = true;
    tokio::time::sleep(EVERY * 2).await;
    let Ok(View::Instance(v)) = r.rt.status(Kind::Instance, "hung") else {
        panic!()
    };
    assert_eq!(v.phase, Some(Phase::Running), "{v:?}");
    // Now it stops answering for good.
    *r.children.answers.lock().unwrap() = false;
    tokio::time::sleep(EVERY * 2 * MISSES).await;
    tokio::time::resume();
    let v = r.rt.wait(Kind::Instance, "hung").await.unwrap();
    let View::Instance(v) = v else { panic!("{v:?}") };
    assert_eq!(v.phase, Some(Phase::Failed), "{v:?}");
    assert!(
        v.error
            .starts_with("the child stopped answering: 3 health checks in a row"),
        "{v:?}"
    );
    assert_eq!(r.fake.running(), 0, "its VMM was killed");
    r.rt.free(Kind::Instance, "hung").await.unwrap();
    nothing_left(&r, "hung");
    let told = super::vm::told_by(&r.rt, Kind::Instance, "hung");
    assert!(
        matches!(&told[..], [_, _, crate::runtime::events::What::Failed(why), _] if why.starts_with("the child stopped answering")),
        "{told:?}"
    );
}
