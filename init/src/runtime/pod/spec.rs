//! What a pod *is*, apart from running it (`super`, the workload): its validated spec, the
//! instance size its containers need, the restart rules and the phase they lead to. Pods
//! are containers (image cells) that share one network, IPC, hostname and scratch
//! volumes, inside an instance of their own.
//!
//! The instance is the pod's sandbox: every container is a cell of the instance's own
//! auraed that shares the instance's network (so the pod has one address, the instance's,
//! and `localhost` between its containers), IPC and UTS (the hostname is the pod's name),
//! with a mount and pid namespace of its own over its image.

use crate::image::catalog::PullPolicy;
use crate::image::pull::Credentials;
use crate::values::names::ExecName;
use crate::values::volume::{VolumeMount, VolumeSpec};
use crate::values::IsolationKind;
use std::time::Duration;

pub const MIB: u64 = 1 << 20;
/// What the instance needs beyond its containers: its kernel, auraed, the image store.
pub const MEMORY_OVERHEAD: u64 = 96 * MIB;
/// A container without a memory limit counts this much towards the instance's size.
pub const MEMORY_PER_UNLIMITED: u64 = 128 * MIB;
/// The instance's memory bounds (the VMM's).
pub const MEMORY_MIN: u64 = 64 * MIB;
pub const MEMORY_MAX: u64 = 3 << 30;
pub const MAX_CONTAINERS: usize = 16;

/// Kubernetes' container restart back-off: 10 s, doubled per restart, at most 5 min, back
/// to 10 s after a run of 10 min.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// CPU and memory, as Kubernetes counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceList {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: ExecName,
    pub image: String,
    pub pull_policy: PullPolicy,
    /// For this node's pull only; never sent to the instance.
    pub credentials: Option<Credentials>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// (node port, container port).
    pub ports: Vec<(u16, u16)>,
    pub requests: ResourceList,
    pub limits: ResourceList,
    pub mounts: Vec<VolumeMount>,
    /// Volumes of its own, beside the pod's (a CRI container's files: kubelet's mounts,
    /// resolv.conf; its emptyDirs, which containers of the sandbox join by name).
    pub volumes: Vec<VolumeSpec>,
    /// Who its processes run as (`uid[:gid]` or a name in the image); None: the image's.
    pub user: Option<String>,
    /// Every run's stdin and terminal.
    pub io: crate::runtime::spec::Io,
}

#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: ExecName,
    pub containers: Vec<ContainerSpec>,
    pub volumes: Vec<VolumeSpec>,
    pub restart: RestartPolicy,
    /// Asked for explicitly (else derived, see `size`).
    pub vcpus: Option<u8>,
    pub memory_bytes: Option<u64>,
    pub isolation: Option<IsolationKind>,
    /// A CRI sandbox: made with no containers, which come and go one at a time and are
    /// never restarted by auraed; it lasts until stopped.
    pub sandbox: bool,
    /// How long RunPod may take, the instance's boot included.
    pub ready_within: Duration,
    /// Extra interfaces on named node bridges (eth1, ...).
    pub networks: Vec<crate::net::NetAttachment>,
    /// Its instance's hostname, which its containers share; None: the pod's name.
    pub hostname: Option<String>,
    /// (node port, port in the pod) published for the whole pod (a sandbox's, as the
    /// CRI's port mappings give them); containers' own are in `containers`.
    pub ports: Vec<(u16, u16)>,
    /// Its instance in the node's network namespace (a CRI `hostNetwork` sandbox, with the
    /// `cell` handler): its containers use the node's network, addresses and ports.
    pub host_network: bool,
    /// A directory of the node bound into its instance (a cell), for its containers'
    /// pod-path volumes: a CRI sandbox's kubelet pod directory, with the `cell` handler.
    pub pod_dir: Option<std::path::PathBuf>,
}

/// The instance a pod needs: (vCPUs, memory bytes in whole MiB).
pub fn size(spec: &PodSpec) -> (u8, u64) {
    let millis: u64 = spec.containers.iter().filter_map(|c| c.limits.cpu_millis).sum();
    let vcpus = spec
        .vcpus
        .unwrap_or_else(|| u8::try_from(millis.div_ceil(1000).max(1)).unwrap_or(u8::MAX));
    let memory = spec.memory_bytes.unwrap_or_else(|| {
        let containers: u64 = spec
            .containers
            .iter()
            .map(|c| c.limits.memory_bytes.unwrap_or(MEMORY_PER_UNLIMITED))
            .sum();
        (containers + MEMORY_OVERHEAD).div_ceil(MIB) * MIB
    });
    (vcpus, memory)
}

/// How one run of a container ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Termination {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// The run went with its instance (killed, or found unresponsive): how it ended is
    /// not known, only when the pod lost it.
    pub lost: bool,
    pub started_unix_nanos: i64,
    pub finished_unix_nanos: i64,
}

impl Termination {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.oom_killed && !self.lost
    }

    /// Kubernetes' words for it (kubelet's for a container lost with its sandbox).
    pub fn reason(&self) -> &'static str {
        if self.lost {
            "ContainerStatusUnknown"
        } else if self.oom_killed {
            "OOMKilled"
        } else if self.succeeded() {
            "Completed"
        } else {
            "Error"
        }
    }
}

impl RestartPolicy {
    pub fn restarts(self, t: &Termination) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !t.succeeded(),
            RestartPolicy::Never => false,
        }
    }
}

/// The wait before restart number `restarts + 1`, after a run that lasted `ran`.
pub fn backoff(restarts: u32, ran: Duration) -> Duration {
    if ran >= BACKOFF_RESET {
        return BACKOFF_BASE;
    }
    BACKOFF_BASE
        .checked_mul(1u32 << restarts.min(16))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX)
}

/// Where a container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running yet, or waiting to restart (with the reason and, for a back-off, when).
    Waiting {
        reason: String,
        until_unix_nanos: i64,
    },
    /// Made (a sandbox's container: its cell exists), its entrypoint not started yet.
    Created,
    Running {
        since_unix_nanos: i64,
    },
    /// Ended and will not be restarted.
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// How an ended pod ended: stopped as asked, completed, or failed (with why).
pub fn end(v: &super::PodView, stopping: bool) -> crate::runtime::events::What {
    use crate::runtime::events::What;
    let reason = v.reason.trim().to_owned();
    match v.phase {
        _ if stopping => What::Stopped,
        PodPhase::Succeeded if reason.is_empty() => What::Ended("every container completed".into()),
        PodPhase::Succeeded => What::Ended(reason),
        _ if reason.is_empty() => What::Failed(format!("it ended {:?}", v.phase)),
        _ => What::Failed(reason),
    }
}

/// The phase of a made pod from its containers' states and last terminations (the
/// instance's own end and a lost contact are decided by the caller).
pub fn phase(containers: &[(ContainerState, Option<Termination>)]) -> PodPhase {
    let all_ended = containers.iter().all(|(s, _)| *s == ContainerState::Terminated);
    if !all_ended {
        return PodPhase::Running;
    }
    match containers
        .iter()
        .all(|(_, t)| t.as_ref().is_some_and(Termination::succeeded))
    {
        true => PodPhase::Succeeded,
        false => PodPhase::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: i32) -> Termination {
        Termination {
            exit_code: Some(code),
            ..Default::default()
        }
    }

    #[test]
    fn restart_policies_decide_as_kubernetes_does() {
        let oom = Termination {
            signal: Some(9),
            oom_killed: true,
            ..Default::default()
        };
        assert!(RestartPolicy::Always.restarts(&ended(0)));
        assert!(RestartPolicy::Always.restarts(&oom));
        assert!(!RestartPolicy::OnFailure.restarts(&ended(0)));
        assert!(RestartPolicy::OnFailure.restarts(&ended(1)));
        assert!(RestartPolicy::OnFailure.restarts(&oom));
        assert!(!RestartPolicy::Never.restarts(&ended(1)));
        assert_eq!(oom.reason(), "OOMKilled");
        assert_eq!(ended(0).reason(), "Completed");
        assert_eq!(ended(3).reason(), "Error");
        let lost = Termination {
            lost: true,
            ..Default::default()
        };
        assert!(RestartPolicy::OnFailure.restarts(&lost));
        assert_eq!(lost.reason(), "ContainerStatusUnknown");
    }

    #[test]
    fn backoff_doubles_to_five_minutes_and_resets_after_a_long_run() {
        let short = Duration::from_secs(1);
        let waits: Vec<u64> = (0..7).map(|n| backoff(n, short).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(40, short), BACKOFF_MAX);
        assert_eq!(backoff(5, BACKOFF_RESET), BACKOFF_BASE);
    }

    #[test]
    fn the_phase_follows_the_containers() {
        use ContainerState::*;
        let run = Running { since_unix_nanos: 1 };
        assert_eq!(
            phase(&[(run.clone(), None), (Terminated, Some(ended(0)))]),
            PodPhase::Running
        );
        assert_eq!(
            phase(&[(Terminated, Some(ended(0))), (Terminated, Some(ended(0)))]),
            PodPhase::Succeeded
        );
        assert_eq!(
            phase(&[(Terminated, Some(ended(0))), (Terminated, Some(ended(2)))]),
            PodPhase::Failed
        );
        let waiting = Waiting {
            reason: "CrashLoopBackOff".into(),
            until_unix_nanos: 5,
        };
        assert_eq!(phase(&[(waiting, Some(ended(1)))]), PodPhase::Running);
    }

    #[test]
    fn the_instance_is_sized_from_the_limits() {
        let c = |cpu: Option<u64>, mem: Option<u64>| ContainerSpec {
            name: ExecName::parse("c").unwrap(),
            image: "r/i:1".into(),
            pull_policy: PullPolicy::IfNotPresent,
            credentials: None,
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            ports: vec![],
            requests: ResourceList::default(),
            limits: ResourceList {
                cpu_millis: cpu,
                memory_bytes: mem,
            },
            mounts: vec![],
            volumes: vec![],
            user: None,
            io: Default::default(),
        };
        let mut spec = PodSpec {
            name: ExecName::parse("p").unwrap(),
            containers: vec![c(Some(500), Some(64 * MIB)), c(Some(700), None)],
            volumes: vec![],
            restart: RestartPolicy::Always,
            vcpus: None,
            memory_bytes: None,
            isolation: None,
            sandbox: false,
            ready_within: Duration::from_secs(1),
            networks: vec![],
            hostname: None,
            ports: vec![],
            host_network: false,
            pod_dir: None,
        };
        assert_eq!(size(&spec), (2, (64 + 128 + 96) * MIB));
        spec.containers = vec![c(None, Some(MIB + 1))];
        assert_eq!(size(&spec), (1, 98 * MIB), "whole MiB, rounded up");
        spec.vcpus = Some(3);
        spec.memory_bytes = Some(512 * MIB);
        assert_eq!(size(&spec), (3, 512 * MIB));
    }
}
