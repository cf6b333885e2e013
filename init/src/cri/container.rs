//! Containers: `CreateContainer`, `StartContainer`, `StopContainer`, `RemoveContainer`,
//! `ContainerStatus`, `ListContainers`. A container is an image cell in its sandbox's
//! instance, made from an image this node has (the instance never reaches a registry),
//! started when kubelet says, never restarted by auraed: kubelet restarts a container by
//! making a new one (attempt + 1) beside the exited one.

use super::sandbox::{no_sandbox, view};
use super::state::{new_id, Container};
use super::{unix_nanos, Cri, CriError};
use crate::image::catalog::PullPolicy;
use crate::runtime::pod::spec::{ContainerSpec, ContainerState, PodPhase, ResourceList};
use crate::runtime::pod::{ContainerView, PodView};
use crate::runtime::{ContainerStep, Kind};
use crate::values::names::ExecName;
use aurae_proto::cri;
use std::time::Duration;

/// What `ExecSync` keeps of each stream (the CRI's cap; the rest is discarded).
const EXEC_OUTPUT_CAP: usize = 16 << 20;
/// How long a container's making or start may take when kubelet states no deadline.
const CALL_DEFAULT: Duration = Duration::from_secs(120);

/// Limits from the CRI's resources: CPU from quota/period, memory from its limit; the
/// CPU shares as a request (kubelet's shares are 1024 per CPU).
fn limits(r: Option<&cri::LinuxContainerResources>) -> (ResourceList, ResourceList) {
    let Some(r) = r else {
        return Default::default();
    };
    let limits = ResourceList {
        cpu_millis: super::sandbox::cpu_millis(r),
        memory_bytes: (r.memory_limit_in_bytes > 0).then_some(r.memory_limit_in_bytes as u64),
    };
    let requests = ResourceList {
        cpu_millis: (r.cpu_shares > 2).then(|| r.cpu_shares as u64 * 1000 / 1024),
        memory_bytes: None,
    };
    (requests, limits)
}

/// The user a container runs as: a uid (and group) or a name, from its security context.
fn user(sc: Option<&cri::LinuxContainerSecurityContext>) -> Option<String> {
    let sc = sc?;
    let group = sc
        .run_as_group
        .as_ref()
        .map(|g| format!(":{}", g.value))
        .unwrap_or_default();
    match (&sc.run_as_user, sc.run_as_username.as_str()) {
        (Some(u), _) => Some(format!("{}{group}", u.value)),
        (None, "") => None,
        (None, name) => Some(format!("{name}{group}")),
    }
}

/// The runtime's container a CRI config asks for, checked field by field. `image` is the
/// reference of the node's image the config's image resolved to.
pub fn container_spec(config: &cri::ContainerConfig, name: &str, image: &str) -> Result<ContainerSpec, CriError> {
    if config.metadata.as_ref().is_none_or(|m| m.name.is_empty()) {
        return Err(CriError::Invalid {
            field: "config.metadata.name",
            why: "missing or empty; send the container's name".into(),
        });
    }
    if !config.log_path.is_empty() && !super::plain_path(&config.log_path, false) {
        return Err(CriError::Invalid {
            field: "config.log_path",
            why: format!(
                "'{}' is not a path inside the sandbox's log directory (relative, without '..')",
                config.log_path
            ),
        });
    }
    if !config.devices.is_empty() || !config.cdi_devices.is_empty() {
        return Err(CriError::Invalid {
            field: "config.devices",
            why: "devices are not given to containers on this node".into(),
        });
    }
    let linux = config.linux.as_ref();
    if linux
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged)
    {
        return Err(CriError::Invalid {
            field: "config.linux.security_context.privileged",
            why: "privileged containers are not run in sandboxes; drop it".into(),
        });
    }
    let (requests, limits) = limits(linux.and_then(|l| l.resources.as_ref()));
    let working_dir = Some(config.working_dir.clone()).filter(|w| !w.is_empty());
    if let Some(w) = &working_dir {
        if !w.starts_with('/') {
            return Err(CriError::Invalid {
                field: "config.working_dir",
                why: format!("'{w}' is relative; give an absolute path"),
            });
        }
    }
    let mut env = Vec::with_capacity(config.envs.len());
    for (n, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') {
            return Err(CriError::Invalid {
                field: "config.envs",
                why: format!("[{n}]: '{}' is not a variable name", kv.key),
            });
        }
        env.push((kv.key.clone(), kv.value.clone()));
    }
    let name = ExecName::parse(name).map_err(|e| CriError::Invalid {
        field: "config.metadata.name",
        why: e.to_string(),
    })?;
    Ok(ContainerSpec {
        name,
        image: image.to_owned(),
        // kubelet pulled it before; the instance never pulls.
        pull_policy: PullPolicy::Never,
        credentials: None,
        command: config.command.clone(),
        args: config.args.clone(),
        env,
        working_dir,
        ports: Vec::new(),
        requests,
        limits,
        mounts: Vec::new(),
        volumes: Vec::new(),
        user: user(linux.and_then(|l| l.security_context.as_ref())),
        // kubelet sends stdin_once only with stdin.
        io: crate::runtime::spec::Io {
            stdin: match (config.stdin, config.stdin_once) {
                (false, _) => crate::runtime::spec::Stdin::Null,
                (true, false) => crate::runtime::spec::Stdin::Open,
                (true, true) => crate::runtime::spec::Stdin::Once,
            },
            tty: config.tty,
        },
    })
}

/// The CRI's state and times of a container from the runtime's view of it. A container
/// still running in a sandbox whose instance ended has exited with it.
fn state_of(c: Option<&ContainerView>, pod_alive: bool) -> (cri::ContainerState, i64, i64, i32, &'static str) {
    use cri::ContainerState as S;
    let Some(c) = c else {
        return (S::ContainerUnknown, 0, 0, 0, "");
    };
    let last = c.last.as_ref();
    match &c.state {
        ContainerState::Running { since_unix_nanos } if pod_alive => (S::ContainerRunning, *since_unix_nanos, 0, 0, ""),
        ContainerState::Running { since_unix_nanos } => (S::ContainerExited, *since_unix_nanos, 0, 255, "Error"),
        ContainerState::Terminated => match last {
            Some(t) => {
                let code = t.exit_code.unwrap_or_else(|| 128 + t.signal.unwrap_or(0));
                let code = if t.oom_killed { 137 } else { code };
                (
                    S::ContainerExited,
                    t.started_unix_nanos,
                    t.finished_unix_nanos,
                    code,
                    t.reason(),
                )
            }
            // Stopped before it was started.
            None => (S::ContainerExited, 0, 0, 0, "Completed"),
        },
        ContainerState::Created | ContainerState::Waiting { .. } => (S::ContainerCreated, 0, 0, 0, ""),
    }
}

impl Cri {
    /// Makes the container in its sandbox's instance (not started) and answers its id.
    pub async fn create_container(
        &self,
        r: cri::CreateContainerRequest,
        caller: Option<Duration>,
    ) -> Result<cri::CreateContainerResponse, CriError> {
        let config = r.config.ok_or_else(|| CriError::Invalid {
            field: "config",
            why: "missing; send the ContainerConfig".into(),
        })?;
        let (sandbox_id, pod, log_directory, resolv, (uid, bound)) = {
            let t = self.table();
            let s = t
                .sandbox(&r.pod_sandbox_id)
                .ok_or_else(|| no_sandbox(&r.pod_sandbox_id))?;
            if s.stopped {
                return Err(CriError::WrongState(format!(
                    "pod_sandbox_id: sandbox '{}' is stopped; a container needs a ready sandbox",
                    r.pod_sandbox_id
                )));
            }
            (
                s.id.clone(),
                s.pod.clone(),
                s.log_directory.clone(),
                s.resolv.clone(),
                (s.metadata.uid.clone(), s.pod_dir_bound),
            )
        };
        let asked = config.image.clone().unwrap_or_default();
        let images = self.images()?;
        let record = super::images::find(images, &asked.image)?.ok_or_else(|| {
            CriError::NotFound(format!(
                "config.image: image '{}' is not on this node; pull it first (PullImage)",
                asked.image
            ))
        })?;
        let id = new_id().map_err(|e| CriError::NodeLacks(format!("no randomness for an id: {e}")))?;
        let name = format!("c-{}", &id[..12]);
        let mut spec = container_spec(&config, &name, &record.reference)?;
        let pod_dir = super::mounts::pod_dir_of(&uid);
        let at = super::mounts::PodDir { path: &pod_dir, bound };
        let planned = super::mounts::plan(&name, &config.mounts, resolv.as_deref(), at)?;
        spec.volumes = planned.volumes;
        spec.mounts = planned.mounts;
        let rt = self.rt.clone();
        let timeout = caller.unwrap_or(CALL_DEFAULT);
        let (p, n) = (pod.clone(), name.clone());
        // Not the caller's to cancel half way: a container made after kubelet gave up is
        // listed with its labels, and kubelet removes it.
        let made = tokio::spawn(async move { rt.create_container(&p, spec, timeout).await });
        let view = made
            .await
            .map_err(|e| CriError::NodeLacks(format!("the container's making ended: {e}")))??;
        let log_file = (!log_directory.is_empty() && !config.log_path.is_empty())
            .then(|| std::path::Path::new(&log_directory).join(&config.log_path));
        let metadata = config.metadata.unwrap_or_default();
        tracing::info!(
            "CRI: container {} ({}) is {} in pod {pod}",
            &id[..12],
            metadata.name,
            view.name
        );
        self.table().containers.push(Container {
            id: id.clone(),
            sandbox_id,
            name: n,
            metadata,
            image: asked,
            image_ref: record.config,
            labels: config.labels,
            annotations: config.annotations,
            created_at: unix_nanos(std::time::SystemTime::now()),
            log_file,
            reopen: None,
            last_cpu: None,
            mounts: config.mounts,
            refresh: planned.refresh,
            read_back: planned.read_back,
            stdin: config.stdin,
            tty: config.tty,
        });
        self.copies.notify_one();
        Ok(cri::CreateContainerResponse { container_id: id })
    }

    /// (runtime pod, name in it) of container `id`.
    fn placed(&self, id: &str) -> Option<(String, String)> {
        self.placed_by_id(id).map(|(_, pod, name)| (pod, name))
    }

    /// (its full id, runtime pod, name in it) of container `id` (or a prefix of it).
    pub(super) fn placed_by_id(&self, id: &str) -> Option<(String, String, String)> {
        let t = self.table();
        let c = t.container(id)?;
        let pod = t.sandbox(&c.sandbox_id)?.pod.clone();
        Some((c.id.clone(), pod, c.name.clone()))
    }

    /// Starts the entrypoint, and the writer of its log file (from its first line).
    pub async fn start_container(
        &self,
        r: cri::StartContainerRequest,
        caller: Option<Duration>,
    ) -> Result<(), CriError> {
        let (pod, name) = self
            .placed(&r.container_id)
            .ok_or_else(|| no_container(&r.container_id))?;
        let step = ContainerStep::Start(caller.unwrap_or(CALL_DEFAULT));
        self.rt.container(&pod, &name, step).await?;
        let file = self.table().container(&r.container_id).and_then(|c| c.log_file.clone());
        if let Some(path) = file {
            let followed = match self.rt.channel(Kind::Pod, &pod) {
                Ok(ch) => crate::runtime::spawn::child::logs(&ch.channel, &name, true, None).await,
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match followed {
                Ok(entries) => {
                    let (tx, rx) = tokio::sync::watch::channel(0);
                    tokio::spawn(super::logfile::follow(entries, path, rx));
                    let mut t = self.table();
                    if let Some(c) = t.container_mut(&r.container_id) {
                        c.reopen = Some(tx);
                    }
                }
                // The container runs; only its file is missing, and kubelet says so.
                Err(s) => tracing::warn!(
                    "CRI: container {}: its log {} cannot follow its output: {}",
                    r.container_id,
                    path.display(),
                    s.message()
                ),
            }
        }
        Ok(())
    }

    /// kubelet rotated the log file (renamed it): the next line goes to a new one.
    pub fn reopen_container_log(&self, r: cri::ReopenContainerLogRequest) -> Result<(), CriError> {
        let (pod, name, reopen) = {
            let t = self.table();
            let c = t
                .container(&r.container_id)
                .ok_or_else(|| no_container(&r.container_id))?;
            let pod = t.sandbox(&c.sandbox_id).map(|s| s.pod.clone()).unwrap_or_default();
            (pod, c.name.clone(), c.reopen.clone())
        };
        match reopen.filter(|_| running(self, &pod, &name)) {
            Some(tx) => {
                tx.send_modify(|n| *n += 1);
                Ok(())
            }
            None => Err(CriError::WrongState(format!(
                "container_id: container '{}' is not running with a log file; nothing to reopen",
                r.container_id
            ))),
        }
    }

    /// Runs `cmd` in the container to its end (kubelet's exec probes and hooks): killed
    /// after `timeout` seconds (`DEADLINE_EXCEEDED`), at most 16 MiB of each stream kept.
    pub async fn exec_sync(
        &self,
        r: cri::ExecSyncRequest,
        caller: Option<Duration>,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        let (pod, name) = self
            .placed(&r.container_id)
            .ok_or_else(|| no_container(&r.container_id))?;
        if r.cmd.is_empty() {
            return Err(CriError::Invalid {
                field: "cmd",
                why: "empty; give the command to run".into(),
            });
        }
        let timeout = match u64::try_from(r.timeout) {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => caller.unwrap_or(crate::runtime::spec::READY_MAX),
        };
        let o = self
            .rt
            .exec_in_container(&pod, &name, r.cmd, timeout, EXEC_OUTPUT_CAP)
            .await?;
        Ok(cri::ExecSyncResponse {
            stdout: o.stdout,
            stderr: o.stderr,
            exit_code: o.exit_code.unwrap_or_else(|| 128 + o.signal.unwrap_or(0)),
        })
    }

    /// SIGTERM, `timeout` seconds, then a kill. Idempotent; an unknown container is stopped.
    pub async fn stop_container(&self, r: cri::StopContainerRequest) -> Result<(), CriError> {
        let Some((pod, name)) = self.placed(&r.container_id) else {
            return Ok(());
        };
        let grace = Duration::from_secs(u64::try_from(r.timeout).unwrap_or(0));
        match self.rt.container(&pod, &name, ContainerStep::Stop(grace)).await {
            Ok(_) => {
                self.read_back(&r.container_id).await;
                Ok(())
            }
            Err(crate::runtime::error::RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the container (killed if it runs). An unknown container is removed already.
    pub async fn remove_container(&self, r: cri::RemoveContainerRequest) -> Result<(), CriError> {
        let Some((pod, name)) = self.placed(&r.container_id) else {
            return Ok(());
        };
        match self.rt.container(&pod, &name, ContainerStep::Remove).await {
            Ok(_) | Err(crate::runtime::error::RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let id = self.table().container(&r.container_id).map(|c| c.id.clone());
        if let Some(id) = id {
            self.table().containers.retain(|c| c.id != id);
        }
        Ok(())
    }

    /// `c`'s status from `v`, the view of its sandbox's runtime pod (None: gone).
    fn container_status_of(c: &Container, v: Option<&PodView>) -> cri::ContainerStatus {
        let alive = v.is_some_and(|v| v.phase == PodPhase::Running);
        let cv = v.and_then(|v| v.containers.iter().find(|x| x.name == c.name));
        let (state, started, finished, exit_code, reason) = state_of(cv, alive);
        cri::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(c.metadata.clone()),
            state: state as i32,
            created_at: c.created_at,
            started_at: started,
            finished_at: finished,
            exit_code,
            image: Some(c.image.clone()),
            image_ref: c.image_ref.clone(),
            reason: reason.into(),
            message: String::new(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            mounts: c.mounts.clone(),
            log_path: c
                .log_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            resources: None,
            image_id: c.image_ref.clone(),
            user: None,
        }
    }

    /// The container's status; an exited one's termination log is copied back to the node
    /// first (kubelet reads it when it sees the container exited).
    pub async fn container_status(
        &self,
        r: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, CriError> {
        let (status, read_back) = {
            let t = self.table();
            let c = t
                .container(&r.container_id)
                .ok_or_else(|| no_container(&r.container_id))?;
            let v = t.sandbox(&c.sandbox_id).and_then(|s| view(self, &s.pod));
            (Self::container_status_of(c, v.as_ref()), !c.read_back.is_empty())
        };
        if read_back && status.state == cri::ContainerState::ContainerExited as i32 {
            self.read_back(&status.id).await;
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info: Default::default(),
        })
    }

    pub fn list_containers(&self, r: cri::ListContainersRequest) -> cri::ListContainersResponse {
        let t = self.table();
        let want = r.filter.as_ref().and_then(|f| f.state).map(|s| s.state);
        // One view per sandbox, however many of its containers are listed (kubelet lists
        // every second).
        let mut views: std::collections::HashMap<&str, Option<PodView>> = Default::default();
        let containers = (t.containers(r.filter.as_ref()).into_iter())
            .map(|c| {
                let v = views.entry(&c.sandbox_id).or_insert_with(|| {
                    let pod = t.sandbox(&c.sandbox_id).map(|s| s.pod.clone());
                    pod.and_then(|p| view(self, &p))
                });
                (c, Self::container_status_of(c, v.as_ref()))
            })
            .filter(|(_, s)| want.is_none_or(|w| s.state == w))
            .map(|(c, s)| cri::Container {
                id: s.id,
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: s.metadata,
                image: s.image,
                image_ref: s.image_ref,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                image_id: s.image_id,
            })
            .collect();
        cri::ListContainersResponse { containers }
    }
}

/// Whether container `name` of runtime pod `pod` runs now.
pub(super) fn running(cri: &Cri, pod: &str, name: &str) -> bool {
    view(cri, pod)
        .and_then(|v| v.containers.into_iter().find(|c| c.name == name))
        .is_some_and(|c| matches!(c.state, ContainerState::Running { .. }))
}

pub(super) fn no_container(id: &str) -> CriError {
    CriError::NotFound(format!("container_id: no container '{id}' on this node"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::pod::spec::Termination;

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "sha256:abc".into(),
                ..Default::default()
            }),
            args: vec!["-c".into(), "echo hi".into()],
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "b=c".into(),
            }],
            working_dir: "/srv".into(),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_quota: 50_000,
                    cpu_period: 100_000,
                    cpu_shares: 512,
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    run_as_group: Some(cri::Int64Value { value: 100 }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_takes_args_env_dir_user_and_limits_from_the_request() {
        let s = container_spec(&config(), "c-1", "reg/app:1").unwrap();
        assert_eq!(s.image, "reg/app:1");
        assert_eq!(s.pull_policy, PullPolicy::Never, "the instance never pulls");
        assert_eq!(s.args, ["-c", "echo hi"]);
        assert_eq!(s.env, [("A".to_owned(), "b=c".to_owned())]);
        assert_eq!(s.working_dir.as_deref(), Some("/srv"));
        assert_eq!(s.user.as_deref(), Some("1000:100"));
        assert_eq!(s.limits.cpu_millis, Some(500));
        assert_eq!(s.limits.memory_bytes, Some(64 << 20));
        assert_eq!(s.requests.cpu_millis, Some(500));
    }

    #[test]
    fn bad_containers_name_the_field() {
        type Change = Box<dyn Fn(&mut cri::ContainerConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.metadata = None), "config.metadata.name:"),
            (
                Box::new(|c| c.working_dir = "srv".into()),
                "config.working_dir: 'srv' is relative",
            ),
            (
                Box::new(|c| c.envs[0].key = "A=B".into()),
                "config.envs: [0]: 'A=B' is not a variable name",
            ),
            (
                Box::new(|c| {
                    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
                }),
                "config.linux.security_context.privileged:",
            ),
        ];
        for (change, words) in cases {
            let mut c = config();
            change(&mut c);
            let e = container_spec(&c, "c-1", "reg/app:1").unwrap_err();
            assert!(e.to_string().starts_with(words), "{e} / {words}");
        }
    }

    #[test]
    fn states_exit_codes_and_reasons_are_kubelets() {
        use cri::ContainerState as S;
        let view = |state: ContainerState, last: Option<Termination>| ContainerView {
            name: "c".into(),
            image: String::new(),
            image_digest: String::new(),
            state,
            restarts: 0,
            last,
        };
        let ended = |code: Option<i32>, signal: Option<i32>, oom: bool| Termination {
            exit_code: code,
            signal,
            oom_killed: oom,
            lost: false,
            started_unix_nanos: 5,
            finished_unix_nanos: 9,
        };
        assert_eq!(
            state_of(Some(&view(ContainerState::Created, None)), true).0,
            S::ContainerCreated
        );
        let run = view(ContainerState::Running { since_unix_nanos: 3 }, None);
        assert_eq!(state_of(Some(&run), true).0, S::ContainerRunning);
        assert_eq!(state_of(Some(&run), true).1, 3);
        assert_eq!(state_of(Some(&run), false).0, S::ContainerExited, "its instance ended");
        let t = |l| state_of(Some(&view(ContainerState::Terminated, Some(l))), true);
        assert_eq!(
            t(ended(Some(0), None, false)),
            (S::ContainerExited, 5, 9, 0, "Completed")
        );
        assert_eq!(t(ended(Some(2), None, false)), (S::ContainerExited, 5, 9, 2, "Error"));
        assert_eq!(
            t(ended(None, Some(15), false)),
            (S::ContainerExited, 5, 9, 143, "Error")
        );
        assert_eq!(
            t(ended(None, Some(9), true)),
            (S::ContainerExited, 5, 9, 137, "OOMKilled")
        );
        assert_eq!(state_of(None, true).0, S::ContainerUnknown);
    }
}
