//! The edge's checks: each refusal names its field, and what passes is what was asked.

use super::cell::resources;
use super::*;
use crate::runtime::confine::seccomp;
use crate::runtime::spec::{CellSpec, Confinement, ExecutableSpec, ImageRequest, Isolation};

fn exe(name: &str, argv: &[&str]) -> pb::Executable {
    pb::Executable {
        name: name.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn executable_errors_name_the_field() {
    let msg = |e: pb::Executable| ExecutableSpec::try_from(e).unwrap_err().to_string();
    assert!(msg(exe("", &["/bin/true"])).starts_with("name: '' is empty"));
    assert!(msg(exe("a/b", &["/bin/true"])).starts_with("name: 'a/b' may not contain '/'"));
    assert!(msg(exe("ok", &[])).starts_with("argv: is empty"));
    assert!(msg(exe("ok", &["/bin/true", "a\0"])).starts_with("argv[1]: contains a NUL"));
    let mut e = exe("ok", &["/bin/true"]);
    e.cwd = "tmp".into();
    assert!(msg(e).starts_with("cwd: 'tmp' is relative"));
    let mut e = exe("ok", &["/bin/true"]);
    e.cell = "../x".into();
    assert!(msg(e).starts_with("cell: "));
    let mut e = exe("ok", &["/bin/true"]);
    e.uid = Some(1000);
    let s = ExecutableSpec::try_from(e).unwrap();
    assert_eq!((s.uid, s.gid, s.cwd), (Some(1000), Some(1000), None));
}

#[test]
fn limits_are_range_checked() {
    let msg = |r: pb::CellResources| resources(Some(r)).unwrap_err().to_string();
    assert_eq!(
        msg(pb::CellResources {
            cpu_weight: Some(0),
            ..Default::default()
        }),
        "resources.cpu_weight: 0 is out of range 1..=10000"
    );
    assert!(msg(pb::CellResources {
        memory_max_bytes: Some(4096),
        ..Default::default()
    })
    .starts_with("resources.memory_max_bytes: 4096 is out of range"));
    assert!(msg(pb::CellResources {
        pids_max: Some(0),
        ..Default::default()
    })
    .starts_with("resources.pids_max"));
    assert!(msg(pb::CellResources {
        cpu_max: Some(pb::CpuMax {
            quota_micros: 10,
            period_micros: 0
        }),
        ..Default::default()
    })
    .starts_with("resources.cpu_max.quota_micros: 10 is out of range 1000..=102400000"));
    assert!(msg(pb::CellResources {
        memory_max_bytes: Some(1 << 20),
        memory_min_bytes: Some(2 << 20),
        ..Default::default()
    })
    .contains("above memory_max_bytes"));
    assert!(msg(pb::CellResources {
        io_max: vec![pb::IoMax {
            device: "sda".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .starts_with("resources.io_max[0].device"));
    let ok = resources(Some(pb::CellResources {
        cpu_max: Some(pb::CpuMax {
            quota_micros: 50_000,
            period_micros: 0,
        }),
        memory_max_bytes: Some(64 << 20),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(ok.cpu_max, Some((50_000, 100_000)));
}

#[test]
fn isolation_is_deny_by_default() {
    let c = CellSpec::try_from(pb::Cell {
        name: "web".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.isolation, Isolation::default());
    let c = CellSpec::try_from(pb::Cell {
        name: "web".into(),
        isolation: Some(pb::CellIsolation {
            share_host_network: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    assert!(!c.isolation.network && c.isolation.pid);
}

fn confined(c: pb::CellConfinement) -> Result<CellSpec, RuntimeError> {
    CellSpec::try_from(pb::Cell {
        name: "web".into(),
        confinement: Some(c),
        ..Default::default()
    })
}

#[test]
fn confinement_is_oci_default_and_refusals_name_the_field() {
    let c = CellSpec::try_from(pb::Cell {
        name: "web".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.confinement, Confinement::default());
    assert!(c.confinement.seccomp == Some(Default::default()) && !c.confinement.privileged);
    let e = confined(pb::CellConfinement {
        cap_drop: vec!["BOGUS".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("confinement.cap_drop"), "{e}");
    let e = confined(pb::CellConfinement {
        privileged: true,
        cap_add: vec!["NET_ADMIN".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("confinement.privileged"), "{e}");
    let e = confined(pb::CellConfinement {
        seccomp: 7,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("confinement.seccomp"), "{e}");
    let p = pb::Cell {
        name: "w".into(),
        confinement: Some(pb::CellConfinement {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        confined(p.confinement.clone().unwrap()).unwrap().confinement,
        Confinement::PRIVILEGED
    );
    let added = confined(pb::CellConfinement {
        cap_add: vec!["NET_ADMIN".into()],
        ..Default::default()
    })
    .unwrap();
    assert!(added.confinement.caps.has("NET_ADMIN"));
}

#[test]
fn a_stricter_profile_needs_no_admin_and_bad_call_names_are_refused() {
    let strict = pb::CellConfinement {
        seccomp: pb::SeccompProfile::Strict as i32,
        seccomp_deny: vec!["mkdir".into(), "ptrace".into()],
        ..Default::default()
    };
    let c = confined(strict.clone()).unwrap().confinement.seccomp.unwrap();
    assert_eq!(c.level, seccomp::Level::Strict);
    assert_eq!(c.deny.names(), ["mkdir", "ptrace"]);
    for (bad, field) in [
        (
            pb::CellConfinement {
                seccomp_deny: vec!["nosuch".into()],
                ..Default::default()
            },
            "confinement.seccomp_deny",
        ),
        (
            pb::CellConfinement {
                seccomp: pb::SeccompProfile::Unconfined as i32,
                seccomp_deny: vec!["mkdir".into()],
                ..Default::default()
            },
            "confinement.seccomp_deny",
        ),
        (
            pb::CellConfinement {
                privileged: true,
                seccomp_deny: vec!["mkdir".into()],
                ..Default::default()
            },
            "confinement.privileged",
        ),
    ] {
        let e = confined(bad).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
}

fn image(f: impl FnOnce(&mut pb::OciImage)) -> Result<ImageRequest, RuntimeError> {
    let mut i = pb::OciImage {
        reference: "10.0.2.100:5000/test/busybox:1".into(),
        ..Default::default()
    };
    f(&mut i);
    ImageRequest::try_from(i)
}

#[test]
fn an_image_request_is_checked_before_anything_is_pulled() {
    fn p(h: u32, c: u32, proto: &str) -> pb::PortMapping {
        pb::PortMapping {
            host_port: h,
            container_port: c,
            protocol: proto.into(),
        }
    }
    let ok = image(|i| i.ports = vec![p(8080, 80, ""), p(8081, 80, "TCP")]).unwrap();
    assert_eq!(ok.ports, [(8080, 80), (8081, 80)]);
    type Change = Box<dyn FnOnce(&mut pb::OciImage)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|i| i.reference = " ".into()), "image.reference: empty"),
        (Box::new(|i| i.reference = "UPPER/Case:1".into()), "image.reference"),
        (
            Box::new(|i| i.pull_policy = 9),
            "image.pull_policy: 9 is not a PullPolicy",
        ),
        (
            Box::new(|i| i.ports = vec![p(0, 80, "")]),
            "image.ports[0].host_port: 0 is not a port",
        ),
        (
            Box::new(|i| i.ports = vec![p(80, 70000, "")]),
            "image.ports[0].container_port: 70000",
        ),
        (
            Box::new(|i| i.ports = vec![p(80, 80, ""), p(80, 81, "")]),
            "image.ports[1].host_port: node port 80 is published twice",
        ),
        (
            Box::new(|i| i.ports = vec![p(80, 80, "sctp")]),
            "image.ports[0].protocol: 'sctp'",
        ),
        (
            Box::new(|i| i.ports = vec![p(53, 53, "udp")]),
            "UDP ports are not published",
        ),
        (
            Box::new(|i| i.working_dir = "srv".into()),
            "image.working_dir: 'srv' is relative",
        ),
        (Box::new(|i| i.user = "a:b:c".into()), "image.user: 'a:b:c' is not"),
        (Box::new(|i| i.user = ":5".into()), "image.user"),
        (
            Box::new(|i| {
                i.env.insert("A=B".into(), "x".into());
            }),
            "image.env[\"A=B\"]",
        ),
        (
            Box::new(|i| i.args = vec!["a\0b".into()]),
            "image.args[0]: contains a NUL byte",
        ),
    ];
    for (f, want) in cases {
        let e = image(f).err().unwrap().to_string();
        assert!(e.contains(want), "{e} (wanted {want})");
    }
}
