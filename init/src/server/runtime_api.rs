//! The `Runtime` service: thin handlers over `runtime::Runtime` for executables, cells, VMs,
//! instances and pods.

use super::authz::Caller;
use super::convert::{self, Timed};
use crate::pb::{self, runtime_server::Runtime as RuntimeRpc};
use crate::runtime::pod::spec::PodSpec;
use crate::runtime::spec::{CellSpec, ExecutableSpec, ImageRequest, VmSpec};
use crate::runtime::InstanceSpec;
use crate::runtime::{Kind, Runtime};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Response header: microseconds auraed spent on a Run* call, from the handler's start to
/// its response (TLS, HTTP/2 and protobuf decoding excluded). `make bench` puts it beside a
/// bare fork+exec+wait to separate auraed's own cost from the transport's.
pub const SERVER_MICROS: &str = "aurae-server-micros";

fn timed<T>(since: Instant, msg: T) -> Response<T> {
    let mut r = Response::new(msg);
    let micros = since.elapsed().as_micros().to_string();
    if let Ok(v) = micros.parse() {
        r.metadata_mut().insert(SERVER_MICROS, v);
    }
    r
}

/// Runs `work` (a start: a VM boot or a Spawn take seconds and create a cell, a VMM, an
/// address, an image; a cell or an executable, milliseconds) on a task of its own, so a
/// caller that goes away mid-way (its deadline passed, it disconnected: tonic then drops
/// this handler) cannot leave it half done.
///
/// The answer is delivered only if it is ready by `answer_by` (the caller's deadline less a
/// margin, [`super::deadline::answer_by`]); otherwise this handler answers
/// DEADLINE_EXCEEDED itself. The task undoes (stops and frees) whatever started unless
/// this handler took the result *and* confirmed it was still in time, so a workload either
/// reached its caller or is gone, never both nor neither, on any machine.
async fn detached<T: Send + 'static>(
    rt: Arc<Runtime>,
    work: impl std::future::Future<Output = Result<T, crate::runtime::error::RuntimeError>> + Send + 'static,
    kind: Kind,
    name: String,
    (since, caller): (Instant, Option<std::time::Duration>),
) -> Result<T, Status> {
    let answer_by = super::deadline::answer_by(since, caller);
    let kept_back = caller.map_or(0, |c| super::deadline::margin(c).as_millis());
    let late = || {
        Status::deadline_exceeded(format!(
            "{kind:?} '{name}' was not ready within the caller's deadline (less {kept_back} ms kept back for the answer to travel); it is being removed and its name will be free; give the call a longer timeout"
        ))
    };
    if answer_by.is_some_and(|t| Instant::now() >= t) {
        // Nothing is started that could not be answered.
        return Err(late());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (confirm, confirmed) = tokio::sync::oneshot::channel::<()>();
    let undo_name = name.clone();
    tokio::spawn(async move {
        let name = undo_name;
        let r = work.await;
        let ok = r.is_ok();
        let delivered = match tx.send(r) {
            Ok(()) => ok && confirmed.await.is_ok(),
            Err(Ok(_)) => false,
            // It failed, and cleaned up after itself as every failed start does.
            Err(Err(e)) => {
                tracing::info!("{kind:?} {name}: the caller went away; it failed ({e}); the name is free");
                return;
            }
        };
        if ok && !delivered {
            tracing::info!("{kind:?} {name}: ready after its caller's deadline; removing it");
            if let Err(e) = rt.stop(kind, &name, libc::SIGTERM, UNDO_GRACE).await {
                tracing::warn!("{kind:?} {name}: stop after the caller left: {e}");
            }
            if let Err(e) = rt.free(kind, &name).await {
                tracing::warn!("{kind:?} {name}: free after the caller left: {e}");
            }
            tracing::info!("{kind:?} {name}: removed; the name is free");
        }
    });
    let answer = match answer_by {
        None => rx.await,
        Some(t) => match tokio::time::timeout_at(t.into(), rx).await {
            Ok(a) => a,
            Err(_) => return Err(late()),
        },
    };
    match answer {
        Ok(Ok(v)) => {
            if answer_by.is_some_and(|t| Instant::now() >= t) || confirm.send(()).is_err() {
                return Err(late());
            }
            Ok(v)
        }
        Ok(Err(e)) => Err(Status::from(e)),
        Err(_) => Err(Status::internal("the task running this call ended without an answer")),
    }
}

/// How long a VM or child nobody waited for is given to power off before it is killed.
const UNDO_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct RuntimeApi {
    pub rt: Arc<Runtime>,
    pub auth: Arc<super::authz::Authorizer>,
}

#[tonic::async_trait]
impl RuntimeRpc for RuntimeApi {
    type ExecStream = super::attach::ExecStream;

    async fn exec(&self, r: Request<tonic::Streaming<pb::ExecRequest>>) -> Result<Response<Self::ExecStream>, Status> {
        Ok(Response::new(
            super::attach::exec(self.rt.clone(), r.into_inner()).await?,
        ))
    }

    type AttachStream = super::attach::ExecStream;

    async fn attach(
        &self,
        r: Request<tonic::Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Ok(Response::new(
            super::tap::attach(self.rt.clone(), r.into_inner()).await?,
        ))
    }

    type PortForwardStream = super::port_forward::ForwardStream;

    async fn port_forward(
        &self,
        r: Request<tonic::Streaming<pb::PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        Ok(Response::new(
            super::port_forward::port_forward(self.rt.clone(), r.into_inner()).await?,
        ))
    }

    async fn run_executable(&self, r: Request<pb::Executable>) -> Result<Response<pb::ExecutableStatus>, Status> {
        let since = Instant::now();
        let caller = super::deadline::caller_timeout(r.metadata());
        let spec = ExecutableSpec::try_from(r.into_inner())?;
        let (rt, name) = (self.rt.clone(), spec.name.to_string());
        let work = async move { rt.run_executable(spec).await };
        let view = detached(self.rt.clone(), work, Kind::Executable, name, (since, caller)).await?;
        Ok(timed(since, convert::exec_status(view)))
    }

    async fn run_cell(&self, r: Request<pb::Cell>) -> Result<Response<pb::CellStatus>, Status> {
        let since = Instant::now();
        Caller::authorize(&r)?;
        let owner = Caller::of(&r).map(|c| c.id.clone()).unwrap_or_default();
        let caller = super::deadline::caller_timeout(r.metadata());
        // The node's pod directory bound into this instance is its parent's to hand out
        // (the CRI's kubelet files), not any client's.
        let from_parent = Caller::parent_only(
            &r,
            &self.auth,
            "mount the pod directory its node bound in (image.volumes[].pod_path)",
        );
        let mut c = r.into_inner();
        let image = c.image.take().map(ImageRequest::try_from).transpose()?;
        if image
            .as_ref()
            .is_some_and(|i| i.volumes.iter().any(|v| v.pod_path.is_some()))
        {
            from_parent?;
        }
        let mut spec = CellSpec::try_from(c)?;
        spec.ready_within = super::deadline::wait_budget(None, caller, crate::runtime::spec::READY_MAX);
        // The image is pulled (as its policy says) only once the whole request is known to
        // be good.
        let (rt, name) = (self.rt.clone(), spec.name.to_string());
        let work = async move { rt.run_cell(spec, image, &owner).await };
        let view = detached(self.rt.clone(), work, Kind::Cell, name, (since, caller)).await?;
        Ok(timed(since, convert::cell_status(view)))
    }

    async fn run_virtual_machine(
        &self,
        r: Request<pb::VirtualMachine>,
    ) -> Result<Response<pb::VirtualMachineStatus>, Status> {
        let since = Instant::now();
        Caller::authorize(&r)?;
        let caller = super::deadline::caller_timeout(r.metadata());
        let spec = VmSpec::try_from(Timed(r.into_inner(), caller))?;
        let rt = self.rt.clone();
        let name = spec.name.to_string();
        let work = async move { rt.run_vm(spec).await };
        let view = detached(self.rt.clone(), work, Kind::VirtualMachine, name, (since, caller)).await?;
        Ok(Response::new(convert::vm_status(view)))
    }

    async fn spawn(&self, r: Request<pb::Instance>) -> Result<Response<pb::InstanceStatus>, Status> {
        let since = Instant::now();
        let caller = super::deadline::caller_timeout(r.metadata());
        let spec = InstanceSpec::try_from(Timed(r.into_inner(), caller))?;
        let rt = self.rt.clone();
        let name = spec.name.to_string();
        let work = async move { rt.spawn(spec).await };
        let view = detached(self.rt.clone(), work, Kind::Instance, name, (since, caller)).await?;
        Ok(Response::new(convert::instance_status(view)))
    }

    async fn run_pod(&self, r: Request<pb::Pod>) -> Result<Response<pb::PodStatus>, Status> {
        let since = Instant::now();
        let caller = super::deadline::caller_timeout(r.metadata());
        let spec = PodSpec::try_from(Timed(r.into_inner(), caller))?;
        let (rt, name) = (self.rt.clone(), spec.name.to_string());
        let work = async move { rt.run_pod(spec).await };
        let view = detached(self.rt.clone(), work, Kind::Pod, name, (since, caller)).await?;
        Ok(Response::new(convert::pod_status(view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::launcher::testing::FakeLauncher;
    use crate::runtime::spec::CellSpec;
    use std::time::Duration;
    use tonic::Code;

    fn runtime() -> (tempfile::TempDir, Arc<Runtime>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("aurae");
        std::fs::create_dir(&root).unwrap();
        let rt = Arc::new(Runtime::with_launcher(root.clone(), FakeLauncher::new(&root)));
        (dir, rt)
    }

    fn spec(name: &str) -> CellSpec {
        CellSpec::named(name)
    }

    /// A cell's pod-path volume (the node's pod directory its parent bound into this
    /// instance) is its parent's to ask for, directly: an admin of the instance, a call
    /// the parent forwards for someone else and any caller of a node no one spawned are
    /// refused before anything is made; the parent's own call goes on to the usual checks.
    #[tokio::test]
    async fn pod_path_volumes_are_the_parents_alone() {
        use crate::pki::policy::Policy;
        use crate::pki::policy::Role;
        use crate::server::authz::{Authorizer, Caller};
        const PARENT: &str = "spiffe://t.test/node/n";
        const ADMIN: &str = "spiffe://t.test/client/admin";
        let (_dir, rt) = runtime();
        let top = Policy::parse(&format!("[[allow]]\nid = \"{ADMIN}\"\nrole = \"admin\"\n"), "p").unwrap();
        let api = |policy: Policy| RuntimeApi {
            rt: rt.clone(),
            auth: Arc::new(Authorizer::new(
                Ok(policy),
                "spiffe://t.test/node/n/instance/c1",
                None,
                Default::default(),
            )),
        };
        let call = |id: &str, via: Option<&str>, path: &str| {
            let mut r = Request::new(pb::Cell {
                name: "c-1".into(),
                image: Some(pb::OciImage {
                    reference: "registry.test/busybox:1".into(),
                    pull_policy: pb::PullPolicy::Never as i32,
                    volumes: vec![pb::Volume {
                        name: "p-1".into(),
                        pod_path: path.into(),
                        ..Default::default()
                    }],
                    volume_mounts: vec![pb::VolumeMount {
                        name: "p-1".into(),
                        mount_path: "/etc/hosts".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            });
            r.extensions_mut().insert(Caller {
                id: id.into(),
                role: Role::Admin,
                via: via.map(Into::into),
            });
            r
        };
        let child = api(top.for_child(PARENT));
        for (who, via) in [(ADMIN, None), (ADMIN, Some(PARENT)), (PARENT, Some(PARENT))] {
            let e = child.run_cell(call(who, via, "etc-hosts")).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{who} via {via:?}");
            assert!(
                e.message().contains("only its parent") && e.message().contains("pod_path"),
                "{e:?}"
            );
        }
        let e = api(top.clone())
            .run_cell(call(PARENT, None, "etc-hosts"))
            .await
            .unwrap_err();
        assert!(e.message().contains("no node spawned it"), "{e:?}");
        let e = child
            .run_cell(call(PARENT, None, "../../etc/passwd"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("image.volumes[0].pod_path:"), "{e:?}");
        let e = child.run_cell(call(PARENT, None, "etc-hosts")).await.unwrap_err();
        assert_ne!(e.code(), Code::PermissionDenied, "past the gate: {e:?}");
        assert!(rt.status(Kind::Cell, "c-1").is_err(), "nothing made");
    }

    /// A start that is ready only after the caller's deadline (less the margin) is not
    /// answered as a success: the caller hears DEADLINE_EXCEEDED from auraed itself, and
    /// the cell that did start is removed, so its name is free again.
    #[tokio::test]
    async fn a_start_ready_after_the_answer_by_is_refused_and_undone() {
        let (_d, rt) = runtime();
        let r2 = rt.clone();
        let work = async move {
            let v = r2.run_cell(spec("slow"), None, "").await;
            tokio::time::sleep(Duration::from_millis(120)).await;
            v
        };
        let caller = Some(Duration::from_millis(100));
        let e = detached(rt.clone(), work, Kind::Cell, "slow".into(), (Instant::now(), caller))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("50 ms kept back"), "{}", e.message());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rt.list(None).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(rt.list(None).is_empty(), "the late cell was removed");
        rt.run_cell(spec("slow"), None, "")
            .await
            .expect("the name is free again");
    }

    /// A caller that leaves mid-Spawn (its deadline passes while the child boots) hears
    /// DEADLINE_EXCEEDED; the child that serves afterwards is stopped and freed, and
    /// nothing of it is left (image, cgroup, TAP, table entry, address).
    #[tokio::test]
    async fn a_caller_that_leaves_mid_spawn_leaves_no_instance() {
        use crate::runtime::tests::instance::{instance, nothing_left, powers_off_when_asked, rig};
        let r = rig();
        *r.children.serves.lock().unwrap() = false;
        powers_off_when_asked(&r, "late");
        let rt = r.rt.clone();
        let work = async move { rt.spawn(instance("late", Duration::from_secs(30))).await };
        let caller = Some(Duration::from_millis(300));
        let e = detached(
            r.rt.clone(),
            work,
            Kind::Instance,
            "late".into(),
            (Instant::now(), caller),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        // The child serves only now, after its caller left.
        *r.children.serves.lock().unwrap() = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.children.shutdowns.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while !r.rt.list(None).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            r.children.shutdowns.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the child nobody waited for was asked to power off"
        );
        nothing_left(&r, "late");
    }

    /// A start ready in time is answered and stays: nothing undoes a delivered answer.
    #[tokio::test]
    async fn a_start_ready_in_time_is_answered_and_kept() {
        let (_d, rt) = runtime();
        let r2 = rt.clone();
        let work = async move { r2.run_cell(spec("quick"), None, "").await };
        let caller = Some(Duration::from_secs(30));
        detached(rt.clone(), work, Kind::Cell, "quick".into(), (Instant::now(), caller))
            .await
            .expect("answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(rt.list(None).len(), 1, "the answered cell stays");
    }
}
