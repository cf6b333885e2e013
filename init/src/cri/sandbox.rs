//! Pod sandboxes: `RunPodSandbox`, `PodSandboxStatus`, `ListPodSandbox`,
//! `StopPodSandbox`, `RemovePodSandbox`. A sandbox is a runtime pod made as a sandbox: a
//! spawned instance (a microVM with the `vm` handler, a cell with `cell`) with no
//! containers yet, sized from what kubelet says the pod will need
//! (`linux.resources` + `linux.overhead`), its address on the node's pod bridge.

use super::state::{new_id, Sandbox};
use super::{unix_nanos, Cri, CriError, HANDLERS};
use crate::runtime::pod::spec::{
    PodPhase, PodSpec, RestartPolicy, MEMORY_MAX, MEMORY_OVERHEAD, MEMORY_PER_UNLIMITED, MIB,
};
use crate::runtime::pod::PodView;
use crate::runtime::{Kind, View};
use crate::values::names::ExecName;
use crate::values::IsolationKind;
use aurae_proto::cri;
use std::time::Duration;

/// How long a sandbox may take to be ready when kubelet states no deadline (its own
/// default runtime request timeout is 2 minutes; a nested Spawn under emulation ~10 s).
const READY_DEFAULT: Duration = Duration::from_secs(240);
/// `NamespaceMode::NODE`: the pod shares the node's namespace (hostNetwork, hostPID).
const NODE: i32 = cri::NamespaceMode::Node as i32;

/// Thousandths of a CPU the CFS quota and period allow; None without a quota.
pub(super) fn cpu_millis(r: &cri::LinuxContainerResources) -> Option<u64> {
    (r.cpu_quota > 0 && r.cpu_period > 0).then(|| (r.cpu_quota as u64 * 1000).div_ceil(r.cpu_period as u64))
}

/// (vCPUs, memory bytes) for a pod whose containers together ask for `resources`, plus
/// the RuntimeClass's `overhead`: what kubelet schedules, with at least auraed's own
/// overhead for the instance and 128 MiB when no memory limit is given.
pub fn size(
    resources: Option<&cri::LinuxContainerResources>,
    overhead: Option<&cri::LinuxContainerResources>,
) -> Result<(u8, u64), CriError> {
    let millis = |r: Option<&cri::LinuxContainerResources>| r.and_then(cpu_millis).unwrap_or(0);
    let bytes = |r: Option<&cri::LinuxContainerResources>| r.map_or(0, |r| r.memory_limit_in_bytes.max(0) as u64);
    let cpus = (millis(resources) + millis(overhead)).div_ceil(1000).max(1);
    let vcpus = u8::try_from(cpus)
        .ok()
        .filter(|v| *v <= 32)
        .ok_or_else(|| CriError::Invalid {
            field: "config.linux.resources.cpu_quota",
            why: format!("the pod asks for {cpus} CPUs and its instance has at most 32"),
        })?;
    let asked = match bytes(resources) {
        0 => MEMORY_PER_UNLIMITED,
        b => b,
    };
    let memory = (asked + bytes(overhead).max(MEMORY_OVERHEAD)).div_ceil(MIB) * MIB;
    if memory > MEMORY_MAX {
        return Err(CriError::Invalid {
            field: "config.linux.resources.memory_limit_in_bytes",
            why: format!(
                "the pod's instance would need {} MiB with its overhead; it may have at most {} MiB",
                memory / MIB,
                MEMORY_MAX / MIB
            ),
        });
    }
    Ok((vcpus, memory))
}

/// The host ports of `mappings` (hostPort): (node port, port in the pod), published through
/// the node's port proxy to the pod's address. A mapping without a host port only
/// documents the container's port (kubelet sends every containerPort): nothing to do.
pub fn host_ports(mappings: &[cri::PortMapping]) -> Result<Vec<(u16, u16)>, CriError> {
    let mut ports = Vec::new();
    for (n, m) in mappings.iter().enumerate().filter(|(_, m)| m.host_port != 0) {
        let bad = |why: String| CriError::Invalid {
            field: "config.port_mappings",
            why: format!("[{n}]: {why}"),
        };
        if m.protocol != cri::Protocol::Tcp as i32 {
            return Err(bad("only TCP host ports are served on this node".into()));
        }
        let port = |p: i32, what: &str| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("{what} {p} is not a port (1..=65535)")))
        };
        let (host, inside) = (
            port(m.host_port, "host_port")?,
            port(m.container_port, "container_port")?,
        );
        if !matches!(m.host_ip.as_str(), "" | "0.0.0.0") {
            return Err(bad(format!(
                "host_ip {} is not served: host ports listen on every address of the node",
                m.host_ip
            )));
        }
        ports.push((host, inside));
    }
    Ok(ports)
}

/// The runtime pod a sandbox request asks for, checked: every refusal names its field.
pub fn sandbox_spec(
    config: &cri::PodSandboxConfig,
    handler: &str,
    pod: &str,
    ready_within: Duration,
) -> Result<PodSpec, CriError> {
    let Some(m) = &config.metadata else {
        return Err(CriError::Invalid {
            field: "config.metadata",
            why: "missing; send the pod's name, namespace, uid and attempt".into(),
        });
    };
    for (field, value) in [
        ("config.metadata.name", &m.name),
        ("config.metadata.namespace", &m.namespace),
        ("config.metadata.uid", &m.uid),
    ] {
        if value.is_empty() {
            return Err(CriError::Invalid {
                field,
                why: "empty; kubelet sends the pod's".into(),
            });
        }
    }
    // It names the pod's directory under /var/lib/kubelet/pods: one component.
    if m.uid.contains('/') || m.uid.contains('\0') || m.uid == "." || m.uid == ".." || m.uid.len() > 255 {
        return Err(CriError::Invalid {
            field: "config.metadata.uid",
            why: format!("'{}' is not a pod UID (kubelet sends a UUID)", m.uid.escape_debug()),
        });
    }
    if !config.log_directory.is_empty() && !super::plain_path(&config.log_directory, true) {
        return Err(CriError::Invalid {
            field: "config.log_directory",
            why: format!("'{}' is not an absolute path without '..'", config.log_directory),
        });
    }
    let linux = config.linux.as_ref();
    let ns = linux
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    if ns.is_some_and(|n| n.pid == NODE || n.ipc == NODE) {
        return Err(CriError::Unimplemented {
            method: "RunPodSandbox",
            why: "pods in the node's PID or IPC namespace (hostPID, hostIPC) are not served",
        });
    }
    // hostNetwork: an instance in a cell of the node, in the node's network namespace.
    let host_network = ns.is_some_and(|n| n.network == NODE);
    let isolation = match handler {
        "" if host_network => IsolationKind::Cell,
        "" | "vm" if !host_network => IsolationKind::Vm,
        "vm" => {
            return Err(CriError::Invalid {
                field: "runtime_handler",
                why: "'vm' cannot run a hostNetwork pod (a microVM has a network of its own); use the 'cell' handler or the node's default ''".into(),
            })
        }
        "cell" => IsolationKind::Cell,
        other => {
            return Err(CriError::Invalid {
                field: "runtime_handler",
                why: format!(
                    "'{other}' is not a runtime handler of this node; use one of {:?} (a RuntimeClass's handler)",
                    HANDLERS
                ),
            })
        }
    };
    // In the node's network namespace a container binds the node's ports itself (kubelet
    // sends them as mappings port to same port): nothing to publish.
    let ports = match host_network {
        true => Vec::new(),
        false => host_ports(&config.port_mappings)?,
    };
    let (vcpus, memory) = size(
        linux.and_then(|l| l.resources.as_ref()),
        linux.and_then(|l| l.overhead.as_ref()),
    )?;
    let hostname = match config.hostname.as_str() {
        "" => None,
        h if crate::net::valid_hostname(h) => Some(h.to_owned()),
        h => {
            return Err(CriError::Invalid {
                field: "config.hostname",
                why: format!("'{h}' is not a hostname (letters, digits, '-' and '.', at most 64)"),
            })
        }
    };
    let name = ExecName::parse_instance(pod).map_err(|e| CriError::Invalid {
        field: "config.metadata",
        why: e.to_string(),
    })?;
    Ok(PodSpec {
        name,
        containers: Vec::new(),
        volumes: Vec::new(),
        restart: RestartPolicy::Never,
        vcpus: Some(vcpus),
        memory_bytes: Some(memory),
        isolation: Some(isolation),
        sandbox: true,
        ready_within,
        networks: Vec::new(),
        hostname,
        ports,
        host_network,
        pod_dir: None,
    })
}

/// The runtime pod's view, if it is still there.
pub(super) fn view(cri: &Cri, pod: &str) -> Option<PodView> {
    match cri.rt.status(Kind::Pod, pod) {
        Ok(View::Pod(v)) => Some(*v),
        _ => None,
    }
}

fn state_of(s: &Sandbox, v: Option<&PodView>) -> cri::PodSandboxState {
    match v {
        Some(v) if !s.stopped && v.phase == PodPhase::Running => cri::PodSandboxState::SandboxReady,
        _ => cri::PodSandboxState::SandboxNotready,
    }
}

impl Cri {
    /// Makes the sandbox and answers its id. The making is not the caller's to cancel: a
    /// sandbox made after kubelet gave up is listed with kubelet's labels, and kubelet
    /// removes it as it does any sandbox it no longer wants.
    pub async fn run_pod_sandbox(
        &self,
        r: cri::RunPodSandboxRequest,
        caller: Option<Duration>,
    ) -> Result<cri::RunPodSandboxResponse, CriError> {
        let config = r.config.ok_or_else(|| CriError::Invalid {
            field: "config",
            why: "missing; send the PodSandboxConfig".into(),
        })?;
        let id = new_id().map_err(|e| CriError::NodeLacks(format!("no randomness for an id: {e}")))?;
        let pod = format!("cri-{}", &id[..12]);
        let mut spec = sandbox_spec(&config, &r.runtime_handler, &pod, caller.unwrap_or(READY_DEFAULT))?;
        // With the `cell` handler the instance is given kubelet's directory for the pod
        // (made before the sandbox, volumes mounted in it), and its containers bind from
        // it. A microVM cannot be given a directory: its containers get copies.
        if spec.isolation == Some(IsolationKind::Cell) {
            let uid = config.metadata.as_ref().map(|m| m.uid.as_str()).unwrap_or_default();
            let dir = super::mounts::pod_dir_of(uid);
            spec.pod_dir = std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()).then_some(dir);
        }
        let resolv = super::mounts::resolv_conf(config.dns_config.as_ref())?;
        // What Status says (RuntimeReady false) is the answer here too.
        if let Some(why) = &self.facts.runtime_not_ready {
            return Err(CriError::NodeLacks(why.clone()));
        }
        let spec_pod_dir = spec.pod_dir.is_some();
        let rt = self.rt.clone();
        let made = tokio::spawn(async move { rt.run_pod(spec).await });
        let view = made
            .await
            .map_err(|e| CriError::NodeLacks(format!("the sandbox's making ended: {e}")))??;
        let linux = config.linux.unwrap_or_default();
        let sandbox = Sandbox {
            id: id.clone(),
            pod,
            metadata: config.metadata.unwrap_or_default(),
            labels: config.labels,
            annotations: config.annotations,
            handler: r.runtime_handler,
            created_at: view.created_unix_nanos,
            log_directory: config.log_directory,
            namespaces: linux.security_context.and_then(|s| s.namespace_options),
            // None for a hostNetwork pod: kubelet gives it the node's addresses itself.
            ip: view.pod_ip.clone(),
            stopped: false,
            last_cpu: None,
            resolv,
            pod_dir_bound: spec_pod_dir,
        };
        tracing::info!(
            "CRI: sandbox {} ({}/{}) is pod {} at {}",
            &id[..12],
            sandbox.metadata.namespace,
            sandbox.metadata.name,
            sandbox.pod,
            sandbox.ip
        );
        self.table().sandboxes.push(sandbox);
        Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    fn sandbox_status(&self, s: &Sandbox) -> cri::PodSandboxStatus {
        let v = view(self, &s.pod);
        cri::PodSandboxStatus {
            id: s.id.clone(),
            metadata: Some(s.metadata.clone()),
            state: state_of(s, v.as_ref()) as i32,
            created_at: s.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: s.ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(s.namespaces.clone().unwrap_or_default()),
                }),
            }),
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            runtime_handler: s.handler.clone(),
        }
    }

    pub fn pod_sandbox_status(
        &self,
        r: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, CriError> {
        let t = self.table();
        let s = t
            .sandbox(&r.pod_sandbox_id)
            .ok_or_else(|| no_sandbox(&r.pod_sandbox_id))?;
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            info.insert("pod".to_owned(), s.pod.clone());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.sandbox_status(s)),
            info,
            containers_statuses: Vec::new(),
            timestamp: unix_nanos(std::time::SystemTime::now()),
        })
    }

    pub fn list_pod_sandbox(&self, r: cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse {
        let t = self.table();
        let want = r.filter.as_ref().and_then(|f| f.state).map(|s| s.state);
        let items = (t.sandboxes(r.filter.as_ref()).into_iter())
            .map(|s| self.sandbox_status(s))
            .filter(|s| want.is_none_or(|w| s.state == w))
            .map(|s| cri::PodSandbox {
                id: s.id,
                metadata: s.metadata,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                runtime_handler: s.runtime_handler,
            })
            .collect();
        cri::ListPodSandboxResponse { items }
    }

    /// Stops every container of the sandbox (at once: kubelet stopped them with their grace
    /// before) and powers its instance off. Idempotent; an unknown sandbox is stopped.
    pub async fn stop_pod_sandbox(&self, r: cri::StopPodSandboxRequest) -> Result<(), CriError> {
        let pod = {
            let mut t = self.table();
            let Some(s) = t.sandbox_mut(&r.pod_sandbox_id) else {
                return Ok(());
            };
            s.stopped = true;
            s.pod.clone()
        };
        match self.rt.stop(Kind::Pod, &pod, libc::SIGKILL, Duration::ZERO).await {
            Ok(_) | Err(crate::runtime::error::RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the sandbox with its containers; its instance, address and cells are freed.
    /// An unknown sandbox is removed already.
    pub async fn remove_pod_sandbox(&self, r: cri::RemovePodSandboxRequest) -> Result<(), CriError> {
        let Some((id, pod)) = self
            .table()
            .sandbox(&r.pod_sandbox_id)
            .map(|s| (s.id.clone(), s.pod.clone()))
        else {
            return Ok(());
        };
        self.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        match self.rt.free(Kind::Pod, &pod).await {
            Ok(()) | Err(crate::runtime::error::RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut t = self.table();
        t.containers.retain(|c| c.sandbox_id != id);
        t.sandboxes.retain(|s| s.id != id);
        tracing::info!("CRI: sandbox {} removed", &id[..12.min(id.len())]);
        Ok(())
    }
}

pub(super) fn no_sandbox(id: &str) -> CriError {
    CriError::NotFound(format!("pod_sandbox_id: no sandbox '{id}' on this node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(quota: i64, period: i64, memory: i64) -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn the_instance_is_sized_from_resources_and_overhead() {
        assert_eq!(size(None, None).unwrap(), (1, (128 + 96) * MIB), "no limits");
        let r = res(150_000, 100_000, 256 << 20);
        assert_eq!(size(Some(&r), None).unwrap(), (2, (256 + 96) * MIB));
        // A RuntimeClass overhead larger than auraed's own counts instead of it.
        let o = res(50_000, 100_000, 160 << 20);
        assert_eq!(size(Some(&r), Some(&o)).unwrap(), (2, (256 + 160) * MIB));
        let e = size(Some(&res(0, 0, 4 << 30)), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config.linux.resources.memory_limit_in_bytes:"),
            "{e}"
        );
        let e = size(Some(&res(3_300_000, 100_000, 0)), None).unwrap_err();
        assert!(e.to_string().contains("33 CPUs"), "{e}");
    }

    fn config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_sandbox_request_is_checked_field_by_field() {
        let t = Duration::from_secs(60);
        let s = sandbox_spec(&config(), "", "cri-1", t).unwrap();
        assert!(s.sandbox && s.containers.is_empty());
        assert_eq!(s.restart, RestartPolicy::Never, "kubelet restarts, not auraed");
        assert_eq!(s.isolation, Some(IsolationKind::Vm));
        assert_eq!(
            sandbox_spec(&config(), "cell", "cri-1", t).unwrap().isolation,
            Some(IsolationKind::Cell)
        );
        let e = sandbox_spec(&config(), "kata", "cri-1", t).unwrap_err();
        assert!(e.to_string().starts_with("runtime_handler: 'kata' is not"), "{e}");
        let mut c = config();
        c.metadata.as_mut().unwrap().uid.clear();
        let e = sandbox_spec(&c, "", "cri-1", t).unwrap_err();
        assert!(e.to_string().starts_with("config.metadata.uid: empty"), "{e}");
        let mut c = config();
        c.metadata = None;
        assert!(sandbox_spec(&c, "", "cri-1", t).is_err());
        let mut c = config();
        c.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: NODE,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c.port_mappings = vec![cri::PortMapping {
            container_port: 9100,
            host_port: 9100,
            ..Default::default()
        }];
        // hostNetwork: a cell instance in the node's network, its ports the node's own.
        let s = sandbox_spec(&c, "", "cri-1", t).unwrap();
        assert!(s.host_network && s.ports.is_empty());
        assert_eq!(s.isolation, Some(IsolationKind::Cell));
        assert!(sandbox_spec(&c, "cell", "cri-1", t).unwrap().host_network);
        let e = sandbox_spec(&c, "vm", "cri-1", t).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("runtime_handler: 'vm' cannot run a hostNetwork pod"),
            "{e}"
        );
        let ns = &mut c
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options;
        ns.as_mut().unwrap().pid = NODE;
        let e = sandbox_spec(&c, "", "cri-1", t).unwrap_err();
        assert!(e.to_string().contains("hostPID"), "{e}");
        let pm = |container_port, host_port, protocol: cri::Protocol, host_ip: &str| cri::PortMapping {
            container_port,
            host_port,
            protocol: protocol as i32,
            host_ip: host_ip.into(),
        };
        let ok = [pm(80, 8080, cri::Protocol::Tcp, ""), pm(53, 0, cri::Protocol::Udp, "")];
        assert_eq!(
            host_ports(&ok).unwrap(),
            [(8080, 80)],
            "a containerPort alone is only documentation"
        );
        for (bad, words) in [
            (pm(53, 5353, cri::Protocol::Udp, ""), "[0]: only TCP"),
            (
                pm(80, 70000, cri::Protocol::Tcp, ""),
                "[0]: host_port 70000 is not a port",
            ),
            (pm(0, 8080, cri::Protocol::Tcp, ""), "[0]: container_port 0"),
            (pm(80, 8080, cri::Protocol::Tcp, "127.0.0.1"), "[0]: host_ip 127.0.0.1"),
        ] {
            let e = host_ports(&[bad]).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("config.port_mappings: {words}")),
                "{e}"
            );
        }
        let mut c = config();
        c.hostname = "web-0".into();
        assert_eq!(
            sandbox_spec(&c, "", "cri-1", t).unwrap().hostname.as_deref(),
            Some("web-0")
        );
        c.hostname = "bad host".into();
        let e = sandbox_spec(&c, "", "cri-1", t).unwrap_err();
        assert!(e.to_string().starts_with("config.hostname: 'bad host'"), "{e}");
    }
}
