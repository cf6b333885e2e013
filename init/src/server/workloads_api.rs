//! The `Workloads` lifecycle service: status, list, stop, wait, free, logs, freeze, thaw.

use super::convert;
use crate::pb::{self, workloads_server::Workloads};
use crate::runtime::logs::{Batch, Stream};
use crate::runtime::{Kind, Runtime, View};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream as TokioStream;
use tonic::{Request, Response, Status};

pub struct WorkloadsApi {
    pub rt: Arc<Runtime>,
    /// Who this node's parent is (VolumeFiles answers it alone).
    pub auth: Arc<super::authz::Authorizer>,
    /// Open `Wait`s and followed `Logs` per peer address.
    pub watches: super::listen::PeerCounts,
}

impl WorkloadsApi {
    /// A slot for a call that may stay open as long as a workload runs, held until it ends;
    /// RESOURCE_EXHAUSTED when the caller's address holds `WATCHES_PER_PEER` already. (A
    /// call made in-process has no address and no limit.)
    fn watch_slot<T>(&self, r: &Request<T>, what: &str) -> Result<Option<super::listen::PeerSlot>, Status> {
        use super::listen::{PeerInfo, WATCHES_PER_PEER};
        let Some(ip) = r.extensions().get::<PeerInfo>().and_then(|p| p.remote).map(|a| a.ip()) else {
            return Ok(None);
        };
        match self.watches.take(ip, WATCHES_PER_PEER) {
            Some(slot) => Ok(Some(slot)),
            None => Err(Status::resource_exhausted(format!(
                "{what}: {ip} has {WATCHES_PER_PEER} Wait, followed Logs and Events calls open on this node, the most one address may; end some (they end with their workload, or when the client closes them)"
            ))),
        }
    }
}

type LogStream = Pin<Box<dyn TokioStream<Item = Result<pb::LogEntry, Status>> + Send>>;
type EventStream = Pin<Box<dyn TokioStream<Item = Result<pb::Event, Status>> + Send>>;

/// Lines per message batch read from a log buffer.
const LOG_BATCH: usize = 256;

fn entries(batch: Batch) -> impl Iterator<Item = pb::LogEntry> {
    let dropped = batch.dropped;
    batch.lines.into_iter().enumerate().map(move |(i, l)| pb::LogEntry {
        timestamp_unix_nanos: l.unix_nanos,
        stream: match l.stream {
            Stream::Stdout => pb::LogStream::Stdout,
            Stream::Stderr => pb::LogStream::Stderr,
            Stream::Console => pb::LogStream::Console,
        } as i32,
        line: l.bytes,
        dropped_before: if i == 0 { dropped } else { 0 },
        partial: l.partial,
    })
}

/// Any workload's status, by its kind (`convert::*_status`).
pub fn workload_status(v: View) -> pb::WorkloadStatus {
    use pb::workload_status::Status;
    pb::WorkloadStatus {
        status: Some(match v {
            View::Executable(e) => Status::Executable(convert::exec_status(e)),
            View::Cell(c) => Status::Cell(convert::cell_status(*c)),
            View::VirtualMachine(v) => Status::VirtualMachine(convert::vm_status(v)),
            View::Instance(i) => Status::Instance(convert::instance_status(*i)),
            View::Pod(p) => Status::Pod(convert::pod_status(*p)),
        }),
    }
}

/// What a caller below operator is not shown: the values of environment variables (a
/// cell's image env may carry passwords and tokens), each replaced by this; names stay.
pub const REDACTED: &str = "<redacted>";

/// `w` as `caller` may see it.
fn for_caller(mut w: pb::WorkloadStatus, caller: Option<&super::authz::Caller>) -> pb::WorkloadStatus {
    if caller.is_some_and(|c| c.role >= crate::pki::policy::Role::Operator) {
        return w;
    }
    if let Some(pb::workload_status::Status::Cell(c)) = &mut w.status {
        if let Some(i) = &mut c.image {
            for e in &mut i.env {
                let name = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
                *e = format!("{name}={REDACTED}");
            }
        }
    }
    w
}

#[tonic::async_trait]
impl Workloads for WorkloadsApi {
    async fn status(&self, r: Request<pb::WorkloadRef>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let caller = super::authz::Caller::of(&r).cloned();
        let (kind, name) = convert::workload_ref(Some(r.into_inner()), "workload")?;
        Ok(Response::new(for_caller(
            workload_status(self.rt.status(kind, &name)?),
            caller.as_ref(),
        )))
    }

    async fn list(&self, r: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let caller = super::authz::Caller::of(&r).cloned();
        let kind = convert::kind(r.into_inner().kind, "kind")?;
        // A view reads each cell's cgroup files (a dozen a cell, about 2 ms under TCG), so
        // listing 1,000 cells here would hold the node's one runtime thread, and every
        // other call, for 2 s (make soak's load): it is read on a blocking thread.
        let rt = self.rt.clone();
        let views = tokio::task::spawn_blocking(move || rt.list(kind))
            .await
            .map_err(|e| Status::internal(format!("listing the workloads: {e}")))?;
        let workloads = views
            .into_iter()
            .map(|v| for_caller(workload_status(v), caller.as_ref()))
            .collect();
        Ok(Response::new(pb::ListResponse { workloads }))
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let r = r.into_inner();
        let (kind, name) = convert::workload_ref(r.workload, "workload")?;
        let signal = match r.signal {
            0 => libc::SIGTERM,
            s if (1..=64).contains(&s) => s as i32,
            s => {
                return Err(Status::invalid_argument(format!(
                    "signal: {s} is not a signal number (1..=64)"
                )))
            }
        };
        let grace = Duration::from_millis(match r.grace_period_millis {
            0 => u64::from(crate::runtime::DEFAULT_GRACE_MS),
            ms => u64::from(ms),
        });
        Ok(Response::new(workload_status(
            self.rt.stop(kind, &name, signal, grace).await?,
        )))
    }

    async fn wait(&self, r: Request<pb::WorkloadRef>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let _slot = self.watch_slot(&r, "wait")?;
        let caller = super::authz::Caller::of(&r).cloned();
        let (kind, name) = convert::workload_ref(Some(r.into_inner()), "workload")?;
        Ok(Response::new(for_caller(
            workload_status(self.rt.wait(kind, &name).await?),
            caller.as_ref(),
        )))
    }

    async fn free(&self, r: Request<pb::WorkloadRef>) -> Result<Response<pb::FreeResponse>, Status> {
        let (kind, name) = convert::workload_ref(Some(r.into_inner()), "workload")?;
        self.rt.free(kind, &name).await?;
        Ok(Response::new(pb::FreeResponse {}))
    }

    type LogsStream = LogStream;
    async fn logs(&self, r: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let slot = match r.get_ref().follow {
            true => self.watch_slot(&r, "logs --follow")?,
            false => None,
        };
        let r = r.into_inner();
        let (kind, name) = convert::workload_ref(r.workload, "workload")?;
        if kind == Kind::Pod && name.contains('/') {
            return self.pod_logs(&name, r.follow, r.tail_lines, slot).await;
        }
        let buf = self.rt.logs_of(kind, &name)?;
        let mut cursor = buf.start_cursor(r.tail_lines);
        let end = buf.end_cursor();
        let follow = r.follow;
        let mut changed = buf.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                changed.borrow_and_update();
                let batch = buf.read(&mut cursor, LOG_BATCH);
                let (empty, closed) = (batch.lines.is_empty(), batch.closed);
                for e in entries(batch) {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                if !follow && cursor >= end {
                    return;
                }
                if empty {
                    if closed {
                        return;
                    }
                    tokio::select! {
                        r = changed.changed() => if r.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type EventsStream = EventStream;
    async fn events(&self, r: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let slot = self.watch_slot(&r, "events")?;
        let r = r.into_inner();
        let events = self.rt.events();
        let mut after = if r.from_now { events.last() } else { r.after };
        let mut changed = events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut first = true;
            loop {
                changed.borrow_and_update();
                let read = events.read(after, 64);
                let empty = read.events.is_empty();
                for (i, e) in read.events.into_iter().enumerate() {
                    after = e.seq;
                    let missed = if first && i == 0 { read.missed } else { 0 };
                    if tx.send(Ok(convert::event(e, missed))).await.is_err() {
                        return;
                    }
                }
                if !empty {
                    first = false;
                }
                if empty {
                    tokio::select! {
                        r = changed.changed() => if r.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn freeze(&self, r: Request<pb::WorkloadRef>) -> Result<Response<pb::WorkloadStatus>, Status> {
        self.freeze_or_thaw(r.into_inner(), true).await
    }

    async fn thaw(&self, r: Request<pb::WorkloadRef>) -> Result<Response<pb::WorkloadStatus>, Status> {
        self.freeze_or_thaw(r.into_inner(), false).await
    }

    async fn volume_files(
        &self,
        req: Request<pb::VolumeFilesRequest>,
    ) -> Result<Response<pb::VolumeFilesResponse>, Status> {
        super::authz::Caller::parent_only(&req, &self.auth, "reach this node's files volumes")?;
        let r = req.into_inner();
        let write = convert::volume_files("write", &r.write)?;
        for (n, p) in r.read.iter().enumerate() {
            if !crate::values::volume::relative_normal(p) {
                return Err(Status::invalid_argument(format!(
                    "read[{n}]: '{p}' must be relative, without '.' or '..'"
                )));
            }
        }
        let max = match r.read_max_bytes as usize {
            0 => 4096,
            m if m > crate::runtime::volume::MAX_READ_BYTES => {
                return Err(Status::invalid_argument(format!(
                    "read_max_bytes: {m} is over {}",
                    crate::runtime::volume::MAX_READ_BYTES
                )))
            }
            m => m,
        };
        let read = self.rt.volume_files(&r.volume, &write, r.replace, &r.read, max)?;
        Ok(Response::new(pb::VolumeFilesResponse {
            read: read.iter().map(crate::runtime::pod::container::file_pb).collect(),
        }))
    }
}

impl WorkloadsApi {
    /// A pod container's logs (`POD/CONTAINER`): the logs of its current run, read from the
    /// pod's instance, where they are kept.
    async fn pod_logs(
        &self,
        name: &str,
        follow: bool,
        tail_lines: Option<u64>,
        slot: Option<super::listen::PeerSlot>,
    ) -> Result<Response<LogStream>, Status> {
        let Some((pod, container)) = name.split_once('/') else {
            return Err(Status::invalid_argument(
                "workload.name: name a container as POD/CONTAINER",
            ));
        };
        let channel = self.rt.channel(crate::runtime::Kind::Pod, pod)?.channel;
        let stream = crate::runtime::spawn::child::logs(&channel, container, follow, tail_lines)
            .await
            .map_err(|s| {
                Status::new(
                    s.code(),
                    format!("pod '{pod}', container '{container}': {}", s.message()),
                )
            })?;
        // The slot is held for as long as the stream is.
        let stream = tokio_stream::StreamExt::map(stream, move |e| {
            let _held = &slot;
            e
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn freeze_or_thaw(&self, r: pb::WorkloadRef, frozen: bool) -> Result<Response<pb::WorkloadStatus>, Status> {
        let (kind, name) = convert::workload_ref(Some(r), "workload")?;
        if kind != Kind::Cell {
            return Err(Status::failed_precondition(
                "workload.kind: only cells can be frozen; freeze the executable's cell",
            ));
        }
        let v = self.rt.freeze(&name, frozen).await?;
        Ok(Response::new(workload_status(crate::runtime::View::Cell(Box::new(v)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::policy::Role;

    fn cell_with_env() -> pb::WorkloadStatus {
        pb::WorkloadStatus {
            status: Some(pb::workload_status::Status::Cell(pb::CellStatus {
                name: "db".into(),
                image: Some(pb::CellImageStatus {
                    env: vec!["PATH=/bin".into(), "DB_PASSWORD=hunter2".into(), "EMPTY".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    fn env_of(w: &pb::WorkloadStatus) -> Vec<String> {
        match &w.status {
            Some(pb::workload_status::Status::Cell(c)) => c.image.as_ref().unwrap().env.clone(),
            _ => panic!(),
        }
    }

    /// A reader sees the names of a cell's variables, never their values; an operator
    /// (who could start the cell) and an admin see them whole.
    #[test]
    fn readers_see_variable_names_and_no_values() {
        let as_role = |role| super::super::authz::Caller {
            id: "spiffe://t.test/client/x".into(),
            role,
            via: None,
        };
        let r = for_caller(cell_with_env(), Some(&as_role(Role::Reader)));
        assert_eq!(
            env_of(&r),
            ["PATH=<redacted>", "DB_PASSWORD=<redacted>", "EMPTY=<redacted>"]
        );
        assert!(!format!("{r:?}").contains("hunter2"));
        let none = for_caller(cell_with_env(), None);
        assert!(
            !format!("{none:?}").contains("hunter2"),
            "no caller: as little as a reader"
        );
        for role in [Role::Operator, Role::Admin] {
            let w = for_caller(cell_with_env(), Some(&as_role(role)));
            assert_eq!(env_of(&w)[1], "DB_PASSWORD=hunter2", "{role}");
        }
    }

    /// VolumeFiles is the node's parent's alone, directly: an admin of the node, a call
    /// the parent forwards for someone else, and any caller of a node no one spawned are
    /// refused before anything is read or written; the parent's own call is still checked
    /// (a path out of the volume, a volume that is not a files volume).
    #[tokio::test]
    async fn volume_files_answers_the_parent_alone() {
        use crate::pki::policy::Policy;
        use crate::server::authz::{Authorizer, Caller};
        const PARENT: &str = "spiffe://t.test/node/n";
        const ADMIN: &str = "spiffe://t.test/client/admin";
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("aurae");
        std::fs::create_dir(&root).unwrap();
        let fake = crate::runtime::launcher::testing::FakeLauncher::new(&root);
        let rt = Arc::new(Runtime::with_launcher(root, fake));
        let top = Policy::parse(&format!("[[allow]]\nid = \"{ADMIN}\"\nrole = \"admin\"\n"), "p").unwrap();
        let api = |policy: Option<Policy>| WorkloadsApi {
            rt: rt.clone(),
            auth: Arc::new(Authorizer::new(
                policy.ok_or(crate::pki::policy::PolicyError::UnknownRole("none".into())),
                "spiffe://t.test/node/n/instance/c1",
                None,
                Default::default(),
            )),
            watches: Default::default(),
        };
        let call = |id: &str, via: Option<&str>, path: &str| {
            let mut r = Request::new(pb::VolumeFilesRequest {
                volume: "c-1-m0".into(),
                write: vec![pb::VolumeFile {
                    path: path.into(),
                    content: b"owned".to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            r.extensions_mut().insert(Caller {
                id: id.into(),
                role: Role::Admin,
                via: via.map(Into::into),
            });
            r
        };
        let child = api(Some(top.for_child(PARENT)));
        for (who, via) in [(ADMIN, None), (ADMIN, Some(PARENT)), (PARENT, Some(PARENT))] {
            let e = child.volume_files(call(who, via, "token")).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who} via {via:?}");
            assert!(e.message().contains("only its parent"), "{e:?}");
        }
        let e = api(Some(top.clone()))
            .volume_files(call(PARENT, None, "token"))
            .await
            .unwrap_err();
        assert!(e.message().contains("no node spawned it"), "{e:?}");
        let e = child
            .volume_files(call(PARENT, None, "../../etc/passwd"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("write[0].path:"), "{e:?}");
        let e = child.volume_files(call(PARENT, None, "token")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "no such files volume: {e:?}");
    }

    /// One address holds at most `WATCHES_PER_PEER` open waits and followed logs: the next
    /// is refused, naming the address and the limit, while other addresses, plain reads of
    /// a log and the workload itself are untouched; each slot comes back when its call
    /// ends (the caller closes it, or the workload ends).
    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_waits_and_followed_logs() {
        use super::super::listen::{PeerInfo, WATCHES_PER_PEER};
        use crate::runtime::launcher::testing::FakeLauncher;
        use crate::runtime::names::ExecName;
        use crate::runtime::spec::ExecutableSpec;
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("aurae");
        std::fs::create_dir(&root).unwrap();
        let fake = FakeLauncher::new(&root);
        let rt = Arc::new(Runtime::with_launcher(root.clone(), fake.clone()));
        let v = rt
            .run_executable(ExecutableSpec {
                name: ExecName::parse("long").unwrap(),
                argv: vec!["/bin/sleep".into(), "1000".into()],
                env: Default::default(),
                cwd: None,
                uid: None,
                gid: None,
                cell: None,
                io: Default::default(),
            })
            .await
            .unwrap();
        let api = Arc::new(WorkloadsApi {
            rt: rt.clone(),
            auth: Arc::new(crate::server::authz::Authorizer::new(
                Err(crate::pki::policy::PolicyError::UnknownRole("test".into())),
                "spiffe://t.test/node",
                None,
                Default::default(),
            )),
            watches: Default::default(),
        });
        fn from<T>(ip: &str, msg: T) -> Request<T> {
            let mut r = Request::new(msg);
            let remote = Some(format!("{ip}:40000").parse().unwrap());
            r.extensions_mut().insert(PeerInfo {
                remote,
                certs: None,
                quick: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            });
            r
        }
        let workload = || {
            Some(pb::WorkloadRef {
                kind: pb::WorkloadKind::Executable as i32,
                name: "long".into(),
            })
        };
        let logs = |follow| pb::LogsRequest {
            workload: workload(),
            follow,
            tail_lines: None,
        };
        let attacker = "10.0.2.2".parse().unwrap();
        let settle = || async {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        };

        let mut waits = Vec::new();
        for _ in 0..WATCHES_PER_PEER {
            let (api, r) = (api.clone(), from("10.0.2.2", workload().unwrap()));
            waits.push(tokio::spawn(async move { api.wait(r).await }));
        }
        settle().await;
        assert_eq!(api.watches.held(attacker), WATCHES_PER_PEER);

        let e = api.wait(from("10.0.2.2", workload().unwrap())).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with(&format!(
                "wait: 10.0.2.2 has {WATCHES_PER_PEER} Wait, followed Logs and Events calls open"
            )),
            "{}",
            e.message()
        );
        let e = api.logs(from("10.0.2.2", logs(true))).await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().starts_with("logs --follow: 10.0.2.2"), "{}", e.message());
        // A log read that ends by itself, another address, and the workload: untouched.
        let mut plain = api.logs(from("10.0.2.2", logs(false))).await.unwrap().into_inner();
        while plain.next().await.is_some() {}
        let other = "10.0.2.3".parse().unwrap();
        let (api2, r) = (api.clone(), from("10.0.2.3", workload().unwrap()));
        let elsewhere = tokio::spawn(async move { api2.wait(r).await });
        settle().await;
        assert_eq!(api.watches.held(other), 1);
        let View::Executable(now) = rt.status(Kind::Executable, "long").unwrap() else {
            panic!("not an executable")
        };
        assert_eq!(now.phase, Some(crate::runtime::Phase::Running));

        // A slot comes back when its caller closes the call, and when a followed log ends
        // (this fake's pipes are closed from the start, so its log ends at once).
        waits.pop().unwrap().abort();
        settle().await;
        assert_eq!(api.watches.held(attacker), WATCHES_PER_PEER - 1);
        let mut followed = api.logs(from("10.0.2.2", logs(true))).await.unwrap().into_inner();
        while followed.next().await.is_some() {}
        settle().await;
        assert_eq!(api.watches.held(attacker), WATCHES_PER_PEER - 1);

        // And every slot when the workload ends.
        fake.exit(v.pid as i32, 0);
        for w in waits {
            w.await.unwrap().unwrap();
        }
        elsewhere.await.unwrap().unwrap();
        assert_eq!((api.watches.held(attacker), api.watches.held(other)), (0, 0));
    }
}
