//! Pods between protobuf and the domain: `Pod` checked into a `pod::PodSpec` (every field
//! named as the request names it), and a `PodView` back into `PodStatus`.

use super::{self as convert, instance_status};
use super::{invalid, Timed};
use crate::pb;
use crate::runtime::error::RuntimeError;
use crate::runtime::names::ExecName;
use crate::runtime::pod::spec::{
    self as pod, ContainerSpec, ContainerState, PodPhase, PodSpec, ResourceList, RestartPolicy,
};
use crate::runtime::pod::PodView;
use crate::runtime::spawn::instance::IsolationKind;
use std::time::Duration;

/// The longest RunPod waits without a deadline of the caller's or the request's.
const READY_DEFAULT: Duration = Duration::from_secs(300);

/// A container's field as the image request names it ("image.args"), as the pod names
/// it ("containers[1].args").
fn container_field(n: usize, image_field: &str) -> String {
    let rest = image_field.strip_prefix("image.").unwrap_or(image_field);
    let rest = match rest {
        "reference" => "image",
        "pull_policy" => "image_pull_policy",
        r => r,
    };
    format!("containers[{n}].{rest}")
}

fn renamed(n: usize, e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::Invalid { field, reason } => invalid(container_field(n, &field), reason),
        other => other.map_message(|m| match m.split_once(':') {
            Some((f, rest)) if f.starts_with("image.") => format!("{}:{rest}", container_field(n, f)),
            _ => m,
        }),
    }
}

fn resource_list(field: &str, r: Option<pb::ResourceList>) -> Result<ResourceList, RuntimeError> {
    let Some(r) = r else { return Ok(ResourceList::default()) };
    let cpu = match r.cpu_millis {
        0 => None,
        m if m > 32_000 => {
            return Err(invalid(
                format!("{field}.cpu_millis"),
                format!("{m} is more than 32 CPUs"),
            ))
        }
        m => Some(m),
    };
    let memory = match r.memory_bytes {
        0 => None,
        m if m < pod::MIB => {
            return Err(invalid(
                format!("{field}.memory_bytes"),
                format!("{m} is below 1 MiB; give at least 1048576"),
            ))
        }
        m => Some(m),
    };
    Ok(ResourceList {
        cpu_millis: cpu,
        memory_bytes: memory,
    })
}

fn container(n: usize, c: pb::Container, volumes: &[pb::Volume]) -> Result<ContainerSpec, RuntimeError> {
    let f = |x: &str| format!("containers[{n}].{x}");
    let name = ExecName::parse(&c.name).map_err(|e| invalid(f("name"), e.to_string()))?;
    let ports: Vec<pb::PortMapping> = c
        .ports
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| pb::PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol.clone(),
        })
        .collect();
    for (j, p) in c.ports.iter().enumerate() {
        if p.container_port == 0 || p.container_port > 65535 {
            return Err(invalid(
                f(&format!("ports[{j}].container_port")),
                format!("{} is not a port (1..=65535)", p.container_port),
            ));
        }
    }
    let image = crate::runtime::spec::ImageRequest::try_from(pb::OciImage {
        reference: c.image,
        args: c.args,
        command: c.command,
        env: c.env,
        pull_policy: c.image_pull_policy,
        working_dir: c.working_dir,
        credentials: c.image_pull_credentials,
        ports,
        ..Default::default()
    })
    .map_err(|e| renamed(n, e))?;
    let (_, mounts) = convert::volumes("volumes", volumes, &f("volume_mounts"), &c.volume_mounts)?;
    let r = c.resources.unwrap_or_default();
    let requests = resource_list(&f("resources.requests"), r.requests)?;
    let limits = resource_list(&f("resources.limits"), r.limits)?;
    if let (Some(req), Some(lim)) = (requests.memory_bytes, limits.memory_bytes) {
        if req > lim {
            return Err(invalid(
                f("resources.requests.memory_bytes"),
                format!("{req} is above the limit {lim}"),
            ));
        }
    }
    Ok(ContainerSpec {
        name,
        image: image.reference,
        pull_policy: image.policy,
        credentials: image.credentials,
        command: image.command,
        args: image.args,
        env: image.env,
        working_dir: image.working_dir,
        ports: image.ports,
        requests,
        limits,
        mounts,
        volumes: Vec::new(),
        user: None,
        io: crate::runtime::spec::Io {
            stdin: crate::runtime::spec::Stdin::of(c.stdin, c.stdin_once)
                .ok_or_else(|| invalid(f("stdin_once"), "needs stdin; set it too, or leave stdin_once out"))?,
            tty: c.tty,
        },
    })
}

/// A RunPod request, checked before anything is pulled or made.
impl TryFrom<Timed<pb::Pod>> for PodSpec {
    type Error = RuntimeError;

    fn try_from(Timed(p, caller): Timed<pb::Pod>) -> Result<PodSpec, RuntimeError> {
        let name = ExecName::parse_instance(&p.name).map_err(|n| invalid("name", n.to_string()))?;
        if p.containers.is_empty() {
            return Err(invalid("containers", "is empty; a pod runs at least one container"));
        }
        if p.containers.len() > pod::MAX_CONTAINERS {
            return Err(invalid(
                "containers",
                format!("has {}; a pod has at most {}", p.containers.len(), pod::MAX_CONTAINERS),
            ));
        }
        let (volumes, _) = convert::volumes("volumes", &p.volumes, "volume_mounts", &[])?;
        if let Some(n) = volumes.iter().position(|v| v.pod_path.is_some()) {
            return Err(invalid(
                format!("volumes[{n}].pod_path"),
                "a pod's volumes are empty_dirs or files volumes; pod_path is the node's CRI's, for the cells of a sandbox it made",
            ));
        }
        let mut containers: Vec<ContainerSpec> = Vec::with_capacity(p.containers.len());
        for (n, c) in p.containers.into_iter().enumerate() {
            let c = container(n, c, &p.volumes)?;
            if let Some(m) = containers.iter().position(|o| o.name == c.name) {
                return Err(invalid(
                    format!("containers[{n}].name"),
                    format!(
                        "'{}' is the name of containers[{m}] too; names are unique in a pod",
                        c.name
                    ),
                ));
            }
            for (j, (host, _)) in c.ports.iter().enumerate() {
                let before = containers.iter().flat_map(|o| o.ports.iter()).any(|(h, _)| h == host);
                if before {
                    return Err(invalid(
                        format!("containers[{n}].ports[{j}].host_port"),
                        format!("node port {host} is published twice in this pod"),
                    ));
                }
            }
            containers.push(c);
        }
        let restart = match pb::RestartPolicy::try_from(p.restart_policy) {
            Ok(pb::RestartPolicy::Unspecified | pb::RestartPolicy::Always) => RestartPolicy::Always,
            Ok(pb::RestartPolicy::OnFailure) => RestartPolicy::OnFailure,
            Ok(pb::RestartPolicy::Never) => RestartPolicy::Never,
            Err(_) => {
                return Err(invalid(
                    "restart_policy",
                    format!(
                        "{} is not a RestartPolicy (ALWAYS, ON_FAILURE or NEVER)",
                        p.restart_policy
                    ),
                ))
            }
        };
        let isolation = convert::isolation_kind(p.isolation)?;
        let r = p.resources.unwrap_or_default();
        let vcpus = match r.vcpus {
            0 => None,
            v @ 1..=32 => Some(v as u8),
            v => return Err(invalid("resources.vcpus", format!("{v} is out of range (1..=32)"))),
        };
        let memory = match r.memory_bytes {
            0 => None,
            m if m % pod::MIB != 0 || !(pod::MEMORY_MIN..=pod::MEMORY_MAX).contains(&m) => {
                return Err(invalid(
                    "resources.memory_bytes",
                    format!("{m} must be whole MiB in 64 MiB..=3 GiB"),
                ))
            }
            m => Some(m),
        };
        let stated = (p.ready_timeout_millis > 0).then(|| Duration::from_millis(u64::from(p.ready_timeout_millis)));
        Ok(PodSpec {
            name,
            containers,
            volumes,
            restart,
            vcpus,
            memory_bytes: memory,
            isolation,
            sandbox: false,
            ready_within: crate::server::deadline::wait_budget(stated, caller, READY_DEFAULT),
            networks: super::attachments(&p.networks)?,
            hostname: None,
            ports: Vec::new(),
            host_network: false,
            pod_dir: None,
        })
    }
}

pub fn pod_status(v: PodView) -> pb::PodStatus {
    pb::PodStatus {
        name: v.name,
        phase: match v.phase {
            PodPhase::Pending => pb::PodPhase::Pending,
            PodPhase::Running => pb::PodPhase::Running,
            PodPhase::Succeeded => pb::PodPhase::Succeeded,
            PodPhase::Failed => pb::PodPhase::Failed,
            PodPhase::Unknown => pb::PodPhase::Unknown,
        } as i32,
        reason: v.reason,
        pod_ip: v.pod_ip,
        isolation: match v.isolation {
            Some(IsolationKind::Vm) => pb::IsolationKind::Vm,
            Some(IsolationKind::Cell) => pb::IsolationKind::Cell,
            None => pb::IsolationKind::Unspecified,
        } as i32,
        ports: v
            .ports
            .into_iter()
            .map(|(container, host, inside)| pb::PodPort {
                container,
                container_port: u32::from(inside),
                host_port: u32::from(host),
                protocol: "tcp".into(),
            })
            .collect(),
        containers: v
            .containers
            .into_iter()
            .map(|c| {
                let (state, reason, started, next) = match c.state {
                    ContainerState::Waiting {
                        reason,
                        until_unix_nanos,
                    } => (pb::ContainerState::Waiting, reason, 0, until_unix_nanos),
                    ContainerState::Running { since_unix_nanos } => {
                        (pb::ContainerState::Running, String::new(), since_unix_nanos, 0)
                    }
                    ContainerState::Created => (pb::ContainerState::Waiting, "Created".into(), 0, 0),
                    ContainerState::Terminated => (pb::ContainerState::Terminated, String::new(), 0, 0),
                };
                pb::ContainerStatus {
                    name: c.name,
                    image: c.image,
                    image_digest: c.image_digest,
                    state: state as i32,
                    reason,
                    restart_count: c.restarts,
                    started_at_unix_nanos: started,
                    last_termination: c.last.map(|t| pb::ContainerTermination {
                        exit_code: t.exit_code,
                        signal: t.signal,
                        reason: t.reason().into(),
                        started_at_unix_nanos: t.started_unix_nanos,
                        finished_at_unix_nanos: t.finished_unix_nanos,
                    }),
                    next_restart_unix_nanos: next,
                }
            })
            .collect(),
        instance: v.instance.map(instance_status),
        restart_policy: match v.restart {
            RestartPolicy::Always => pb::RestartPolicy::Always,
            RestartPolicy::OnFailure => pb::RestartPolicy::OnFailure,
            RestartPolicy::Never => pb::RestartPolicy::Never,
        } as i32,
        created_at_unix_nanos: v.created_unix_nanos,
        networks: super::network_status(&v.networks),
        instance_restarts: v.instance_restarts,
        last_instance_end: v.last_instance_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> pb::Container {
        pb::Container {
            name: "web".into(),
            image: "10.0.2.100:5000/busybox:1".into(),
            ports: vec![pb::ContainerPort {
                container_port: 80,
                host_port: 8080,
                protocol: String::new(),
            }],
            volume_mounts: vec![pb::VolumeMount {
                name: "www".into(),
                mount_path: "/www".into(),
                read_only: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn two() -> pb::Pod {
        let mut side = web();
        side.name = "side".into();
        side.ports.clear();
        pb::Pod {
            name: "site".into(),
            containers: vec![web(), side],
            volumes: vec![pb::Volume {
                name: "www".into(),
                empty_dir: None,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn refused(f: impl FnOnce(&mut pb::Pod)) -> String {
        let mut p = two();
        f(&mut p);
        PodSpec::try_from(Timed(p, None)).unwrap_err().to_string()
    }

    #[test]
    fn a_pod_is_checked_with_fields_named_as_the_request_names_them() {
        let ok = PodSpec::try_from(Timed(two(), None)).unwrap();
        assert_eq!(ok.containers[0].ports, vec![(8080, 80)]);
        assert_eq!(ok.containers[1].mounts[0].path, "/www");
        assert_eq!(ok.restart, RestartPolicy::Always);
        type Case = (Box<dyn FnOnce(&mut pb::Pod)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                Box::new(|p| p.containers[1].name = "web".into()),
                "containers[1].name: 'web' is the name of containers[0] too",
            ),
            (
                Box::new(|p| p.containers[1].ports = web().ports),
                "containers[1].ports[0].host_port: node port 8080 is published twice",
            ),
            (
                Box::new(|p| p.containers[0].image = "UPPER/x".into()),
                "containers[0].image:",
            ),
            (
                Box::new(|p| p.containers[0].image.clear()),
                "containers[0].image: empty",
            ),
            (
                Box::new(|p| p.containers[1].volume_mounts[0].name = "nope".into()),
                "containers[1].volume_mounts[0].name: 'nope' is not one of the volumes",
            ),
            (
                Box::new(|p| p.containers[0].working_dir = "rel".into()),
                "containers[0].working_dir:",
            ),
            (Box::new(|p| p.containers.clear()), "containers: is empty"),
            (Box::new(|p| p.name = "a/b".into()), "name:"),
            (
                Box::new(|p| p.restart_policy = 9),
                "restart_policy: 9 is not a RestartPolicy",
            ),
            (
                Box::new(|p| {
                    p.resources = Some(pb::PodResources {
                        vcpus: 0,
                        memory_bytes: 100,
                    })
                }),
                "resources.memory_bytes: 100 must be whole MiB",
            ),
            (
                Box::new(|p| {
                    p.containers[0].resources = Some(pb::ContainerResources {
                        requests: None,
                        limits: Some(pb::ResourceList {
                            cpu_millis: 0,
                            memory_bytes: 5,
                        }),
                    })
                }),
                "containers[0].resources.limits.memory_bytes: 5 is below 1 MiB",
            ),
        ];
        for (f, want) in cases {
            let got = refused(f);
            assert!(got.starts_with(want), "{got}\n  should start with: {want}");
        }
        let udp = refused(|p| p.containers[0].ports[0].protocol = "udp".into());
        assert!(udp.starts_with("containers[0].ports[0].protocol: UDP"), "{udp}");
    }
}
