//! Speaking the API to a child, the one client of it: the mTLS channel (this node's own
//! certificate, the child's SVID verified), the wait until it serves, the request to
//! power off, the renewal of its identity, and a pod's calls to its instance (give it an
//! image, make a container's cell, start, wait for, free and stop a run of its
//! entrypoint). Clients' forwarded calls (`server/forward.rs`) go over the same channel.
//! The runtime reaches all of it through its `ChildLink` seam.

use super::SpawnError;
use crate::image::load::Offer;
use crate::pb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A lazily connecting mTLS channel to the child `name` (SPIFFE ID `child_id`) at
/// `address`: this node presents its own certificate (the renewed one, once renewed) and
/// accepts only the child's exact ID, issued by a CA entitled to (`pki::chain`). Made
/// before the child boots, so bad TLS material fails before anything is created.
pub fn channel(
    id: &super::identity::SpawnIdentity,
    name: &str,
    child_id: &str,
    address: SocketAddr,
) -> Result<tonic::transport::Channel, SpawnError> {
    let config = crate::pki::tls::child_client_config(&id.root_pem, id.identity.clone(), child_id)
        .map_err(|e| SpawnError::Tls(e.to_string()))?;
    let connector = crate::pki::tls::TlsConnector::new(&address.to_string(), name, config)
        .map_err(|e| SpawnError::Tls(e.to_string()))?;
    // Plain "http": the connector does TLS itself (tonic's own TLS cannot pin an ID).
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| SpawnError::Tls(format!("endpoint for {address}: {e}")))?
        .connect_timeout(Duration::from_secs(2));
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// What the wait needs to know about the child's body (its VM or its cell), which the
/// runtime owns.
pub trait Watched {
    /// How it ended, once it has.
    fn outcome(&self) -> Option<String>;
    /// Its console so far: a VM's serial port, a cell child's output.
    fn console(&self) -> Vec<String>;
}

/// Probes the child's health every 100 ms until it is SERVING; fails when the body ends
/// or `deadline` passes, saying how far the child got.
pub async fn wait_serving(
    channel: &tonic::transport::Channel,
    address: SocketAddr,
    body: &(dyn Watched + Sync),
    deadline: Instant,
) -> Result<(), SpawnError> {
    let started = Instant::now();
    loop {
        if let Some(how) = body.outcome() {
            return Err(SpawnError::Ended(format!(
                "{how}; its console ended with: {}",
                tail(&body.console(), 8)
            )));
        }
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
        let probe = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(2))
            .max(Duration::from_millis(100));
        let last = match tokio::time::timeout(probe, h.check(req)).await {
            Ok(Ok(r)) if r.get_ref().status == 1 => return Ok(()),
            Ok(Ok(r)) => format!("health status {}", r.get_ref().status),
            Ok(Err(e)) => e.message().to_owned(),
            Err(_) => format!("no answer within {probe:?}"),
        };
        if Instant::now() >= deadline {
            let console = body.console();
            return Err(SpawnError::NotServing(format!(
                "the child did not serve at {address} within {:.1} s (the caller's deadline, or serving_timeout_millis): {}; last probe: {last}; its console ended with: {}",
                started.elapsed().as_secs_f64(),
                progress(&console),
                tail(&console, 8)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a health check of a served child failed.
#[derive(Debug, thiserror::Error)]
pub enum Missed {
    #[error("it answered health status {0}, not SERVING")]
    NotServing(i32),
    #[error("the call failed: {0}")]
    Call(String),
    #[error("no answer within {0} s")]
    Silent(u64),
}

/// One health check: Ok when the child answers SERVING within `answer`.
pub async fn probe(channel: &tonic::transport::Channel, answer: Duration) -> Result<(), Missed> {
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
    match tokio::time::timeout(answer, h.check(req)).await {
        Ok(Ok(r)) if r.get_ref().status == 1 => Ok(()),
        Ok(Ok(r)) => Err(Missed::NotServing(r.get_ref().status)),
        Ok(Err(e)) => Err(Missed::Call(e.message().to_owned())),
        Err(_) => Err(Missed::Silent(answer.as_secs())),
    }
}

/// Asks the child to power off; its workloads get `grace`. The answer comes at once (the
/// child powers off after replying); a child that does not answer is ended by the caller.
pub async fn request_shutdown(channel: &tonic::transport::Channel, grace: Duration) -> Result<(), SpawnError> {
    let mut n = pb::node_client::NodeClient::new(channel.clone());
    let req = pb::ShutdownRequest {
        grace_period_millis: grace.as_millis().min(u128::from(u32::MAX)) as u32,
    };
    match tokio::time::timeout(Duration::from_secs(5), n.shutdown(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SpawnError::Refused(e)),
        Err(_) => Err(SpawnError::NotServing("no answer to Shutdown within 5 s".into())),
    }
}

/// How far a child that does not serve yet got, read from its console: auraed logs
/// "starting as PID 1" (or "as a daemon") first thing.
pub fn progress(console: &[String]) -> String {
    let auraed = console.iter().any(|l| l.contains("starting as"));
    match (console.len(), auraed) {
        (0, _) => "it has printed nothing yet (its kernel is still booting)".into(),
        (n, false) => format!("its kernel printed {n} line(s) but auraed has not started yet"),
        (n, true) => format!("auraed started ({n} console line(s)) but does not serve yet"),
    }
}

/// The last `n` lines, joined with " | ".
pub fn tail(console: &[String], n: usize) -> String {
    console[console.len().saturating_sub(n)..].join(" | ")
}

/// Why a child did not take its renewed identity.
#[derive(Debug, thiserror::Error)]
pub enum RenewRefused {
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(Status),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// Hands the child a new SVID and spawn CA (RenewIdentity), within `bound`.
pub async fn renew_identity(
    channel: &Channel,
    req: pb::RenewIdentityRequest,
    bound: Duration,
) -> Result<(), RenewRefused> {
    let mut client = pb::node_client::NodeClient::new(channel.clone());
    match tokio::time::timeout(bound, client.renew_identity(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(RenewRefused::Refused(s)),
        Err(_) => Err(RenewRefused::NoAnswer(bound)),
    }
}

// --- a pod's calls to its instance, as the instance's parent (admin there). Nothing here
// reaches a registry or holds a credential.

/// Bytes per `data` message of a load.
const CHUNK: usize = 1 << 20;

fn with_timeout<T>(msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = timeout {
        r.set_timeout(t.max(Duration::from_millis(1)));
    }
    r
}

/// Gives the instance image `offer`, the layers in `paths` (bottom first) streamed from
/// this node's store. Layers marked not `sent` are ones it has already.
pub async fn load_image(ch: &Channel, offer: &Offer, paths: &[PathBuf], timeout: Duration) -> Result<(), Status> {
    let first = pb::LoadRequest {
        request: Some(pb::load_request::Request::Image(pb::LoadImage {
            reference: offer.reference.clone(),
            digest: offer.digest.to_string(),
            manifest: offer.manifest_json.clone(),
            config: offer.config_json.clone(),
            layers: offer
                .layers
                .iter()
                .map(|l| pb::LoadLayer {
                    digest: l.digest.to_string(),
                    size_bytes: l.size,
                    sent: l.sent,
                })
                .collect(),
        })),
    };
    let files: Vec<PathBuf> = offer
        .layers
        .iter()
        .zip(paths)
        .filter(|(l, _)| l.sent)
        .map(|(_, p)| p.clone())
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::LoadRequest>(4);
    let _ = tx.send(first).await;
    // The files are read on a blocking thread, a chunk at a time, as the stream drains.
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Read;
        for f in files {
            let mut file = std::fs::File::open(&f)?;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                let msg = pb::LoadRequest {
                    request: Some(pb::load_request::Request::Data(buf)),
                };
                if tx.blocking_send(msg).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    let mut client = pb::images_client::ImagesClient::new(ch.clone());
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let answer = client.load(with_timeout(stream, Some(timeout))).await;
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Status::internal(format!("reading the image's blobs on this node: {e}"))),
        Err(e) => return Err(Status::internal(format!("the blob reader ended: {e}"))),
    }
    answer.map(|_| ())
}

pub async fn run_cell(ch: &Channel, cell: pb::Cell, timeout: Duration) -> Result<pb::CellStatus, Status> {
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    Ok(client.run_cell(with_timeout(cell, Some(timeout))).await?.into_inner())
}

/// Starts a run of the container's entrypoint: the executable named after it, in its cell.
pub async fn start_run(
    ch: &Channel,
    container: &str,
    argv: Vec<String>,
    io: crate::runtime::spec::Io,
    timeout: Duration,
) -> Result<pb::ExecutableStatus, Status> {
    use crate::runtime::spec::Stdin;
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    let e = pb::Executable {
        name: container.to_owned(),
        argv,
        cell: container.to_owned(),
        stdin: io.stdin != Stdin::Null,
        stdin_once: io.stdin == Stdin::Once,
        tty: io.tty,
        ..Default::default()
    };
    Ok(client
        .run_executable(with_timeout(e, Some(timeout)))
        .await?
        .into_inner())
}

fn exec_ref(container: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::Executable as i32,
        name: container.to_owned(),
    }
}

fn exec_status(s: pb::WorkloadStatus) -> Result<pb::ExecutableStatus, Status> {
    match s.status {
        Some(pb::workload_status::Status::Executable(e)) => Ok(e),
        _ => Err(Status::internal("the instance answered with another kind of workload")),
    }
}

/// Waits (as long as it takes) until the current run of `container` has ended.
pub async fn wait_run(ch: &Channel, container: &str) -> Result<pb::ExecutableStatus, Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    exec_status(client.wait(exec_ref(container)).await?.into_inner())
}

/// Frees an ended run, so the next one can take its name.
pub async fn free_run(ch: &Channel, container: &str, timeout: Duration) -> Result<(), Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    client.free(with_timeout(exec_ref(container), Some(timeout))).await?;
    Ok(())
}

/// Stops the current run: `signal`, `grace`, then its cell's processes are killed.
pub async fn stop_run(ch: &Channel, container: &str, signal: i32, grace: Duration) -> Result<(), Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    let req = pb::StopRequest {
        workload: Some(exec_ref(container)),
        signal: u32::try_from(signal).unwrap_or(15),
        grace_period_millis: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
    };
    client
        .stop(with_timeout(req, Some(grace + Duration::from_secs(10))))
        .await?;
    Ok(())
}

/// The output of the current run of `container` (its last `tail_lines`, else from its
/// first line), and with `follow` what comes until the run ends.
pub async fn logs(
    ch: &Channel,
    container: &str,
    follow: bool,
    tail_lines: Option<u64>,
) -> Result<tonic::Streaming<pb::LogEntry>, Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    let req = pb::LogsRequest {
        workload: Some(exec_ref(container)),
        follow,
        tail_lines,
    };
    Ok(client.logs(req).await?.into_inner())
}

/// What a command run to its end in a container printed, and how it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Output past the cap was discarded (the command still ran to its end).
    pub truncated: bool,
}

/// Runs `argv` in `container`'s cell without input and waits for its end, keeping at most
/// `cap` bytes of each stream. Dropped (a deadline passed), the call ends the stream and
/// the instance kills the process, as it does for any caller that goes away.
pub async fn exec_in(ch: &Channel, container: &str, argv: Vec<String>, cap: usize) -> Result<ExecOutput, Status> {
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    let start = pb::ExecRequest {
        request: Some(pb::exec_request::Request::Start(pb::ExecStart {
            cell: container.to_owned(),
            argv,
            ..Default::default()
        })),
    };
    let close = pb::ExecRequest {
        request: Some(pb::exec_request::Request::CloseStdin(true)),
    };
    // The request stream stays open (a closed one would end the session) until this ends.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let _ = tx.send(start).await;
    let _ = tx.send(close).await;
    let mut out = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut o = ExecOutput::default();
    let keep = |to: &mut Vec<u8>, bytes: Vec<u8>, truncated: &mut bool| {
        let room = cap.saturating_sub(to.len());
        *truncated |= bytes.len() > room;
        to.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    while let Some(m) = out.message().await? {
        use pb::exec_response::Response as R;
        match m.response {
            Some(R::Stdout(b)) => keep(&mut o.stdout, b, &mut o.truncated),
            Some(R::Stderr(b)) => keep(&mut o.stderr, b, &mut o.truncated),
            Some(R::Exit(e)) => {
                o.exit_code = e.exit_code;
                o.signal = e.signal;
                drop(tx);
                return Ok(o);
            }
            Some(R::StartedPid(_)) | None => {}
        }
    }
    Err(Status::unavailable(format!(
        "the instance ended the command in '{container}' without saying how it ended"
    )))
}

/// Starts `start` in the instance attached (its Exec): what to send it, and its output. The
/// process is killed when the sender is dropped or the output is.
pub async fn exec_session(
    ch: &Channel,
    start: pb::ExecStart,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::ExecRequest>,
        tonic::Streaming<pb::ExecResponse>,
    ),
    Status,
> {
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let first = pb::ExecRequest {
        request: Some(pb::exec_request::Request::Start(start)),
    };
    tx.send(first)
        .await
        .map_err(|_| Status::internal("the exec request stream closed at once"))?;
    let out = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, out))
}

/// Attaches to `start.executable` in the instance (its Attach): what to send it, and its
/// output. Dropping either detaches; the executable runs on.
pub async fn attach_session(
    ch: &Channel,
    start: pb::AttachStart,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AttachRequest>,
        tonic::Streaming<pb::ExecResponse>,
    ),
    Status,
> {
    let mut client = pb::runtime_client::RuntimeClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let first = pb::AttachRequest {
        request: Some(pb::attach_request::Request::Start(start)),
    };
    tx.send(first)
        .await
        .map_err(|_| Status::internal("the attach request stream closed at once"))?;
    let out = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, out))
}

/// What a container's cell uses now (its cgroup in the instance).
pub async fn cell_usage(ch: &Channel, container: &str, timeout: Duration) -> Result<pb::CellUsage, Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    let cell = pb::WorkloadRef {
        kind: pb::WorkloadKind::Cell as i32,
        name: container.to_owned(),
    };
    match client
        .status(with_timeout(cell, Some(timeout)))
        .await?
        .into_inner()
        .status
    {
        Some(pb::workload_status::Status::Cell(c)) => Ok(c.usage.unwrap_or_default()),
        _ => Err(Status::internal("the instance answered with another kind of workload")),
    }
}

/// Removes a container's cell: its processes killed at once, then the cell freed with its
/// runs. A cell the instance no longer has is removed already.
/// Replaces files of the instance's files volume and reads files back (the CRI's copies
/// of kubelet's files: a refreshed token, a termination log).
pub async fn volume_files(
    ch: &Channel,
    req: pb::VolumeFilesRequest,
    timeout: Duration,
) -> Result<pb::VolumeFilesResponse, Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    Ok(client
        .volume_files(with_timeout(req, Some(timeout)))
        .await?
        .into_inner())
}

pub async fn remove_cell(ch: &Channel, container: &str, timeout: Duration) -> Result<(), Status> {
    let mut client = pb::workloads_client::WorkloadsClient::new(ch.clone());
    let cell = pb::WorkloadRef {
        kind: pb::WorkloadKind::Cell as i32,
        name: container.to_owned(),
    };
    let stop = pb::StopRequest {
        workload: Some(cell.clone()),
        signal: 9,
        grace_period_millis: 0,
    };
    match client.stop(with_timeout(stop, Some(timeout))).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(s),
    }
    match client.free(with_timeout(cell, Some(timeout))).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn progress_says_how_far_the_child_got() {
        assert!(progress(&[]).contains("printed nothing yet"));
        assert!(progress(&lines(&["Linux version 6.1", "x"])).contains("kernel printed 2 line(s)"));
        let up = lines(&["k", "INFO auraed 0.1.0 starting as PID 1", "cgroup v2 ..."]);
        assert!(
            progress(&up).contains("auraed started (3 console line(s))"),
            "{}",
            progress(&up)
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(&lines(&["a", "b", "c"]), 2), "b | c");
        assert_eq!(tail(&lines(&["a"]), 8), "a");
        assert_eq!(tail(&[], 8), "");
    }

    struct Booting {
        ended: Option<String>,
    }

    impl Watched for Booting {
        fn outcome(&self) -> Option<String> {
            self.ended.clone()
        }
        fn console(&self) -> Vec<String> {
            lines(&["Linux version 6.1"])
        }
    }

    #[tokio::test]
    async fn a_child_that_never_serves_fails_at_the_deadline_with_its_progress() {
        // Nothing listens on this loopback port: every probe fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let deadline = Instant::now() + Duration::from_millis(300);
        let e = wait_serving(&ch, address, &Booting { ended: None }, deadline)
            .await
            .unwrap_err();
        assert!(matches!(e, SpawnError::NotServing(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("kernel printed 1 line(s)") && msg.contains("Linux version 6.1"),
            "{msg}"
        );
        let e = wait_serving(
            &ch,
            address,
            &Booting {
                ended: Some("the VMM exited".into()),
            },
            deadline,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, SpawnError::Ended(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("the child ended before it served: the VMM exited"),
            "{e}"
        );
    }
}
