//! The Runtime service's `Exec`: a process attached to the caller's bidirectional stream.
//! One task feeds the caller's messages to the process (stdin, resizes, signals), one
//! pumps its output back, and the session ends when the process exits (its leaf cgroup is
//! then killed so every fd of its terminal or pipes closes, the output drains, and `exit`
//! goes last) or when the caller goes away (the process and all it started are killed).

use crate::os::tty::AsyncTty;
use crate::pb::{self, exec_request::Request as In, exec_response::Response as Out};
use crate::runtime::attach::{AttachSpec, Attached, AttachedIo};
use crate::runtime::{Process, Runtime};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

pub type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecResponse, Status>> + Send>>;

/// The most stdin one message may carry.
pub(super) const MAX_STDIN: usize = 1 << 20;
/// Output is sent in pieces of at most this much.
const CHUNK: usize = 32 * 1024;
/// How long output may take to drain once the process is gone.
pub(super) const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn out(r: Out) -> Result<pb::ExecResponse, Status> {
    Ok(pb::ExecResponse { response: Some(r) })
}

/// Starts the process the stream's first message asks for; the rest runs in a task.
pub async fn exec(rt: Arc<Runtime>, mut input: Streaming<pb::ExecRequest>) -> Result<ExecStream, Status> {
    let pick = |m: pb::ExecRequest| match m.request {
        Some(In::Start(s)) => Some(s),
        _ => None,
    };
    let start = start_of(
        &mut input,
        pick,
        "(the cell, argv, tty); stdin, resize and signal come after it",
    )
    .await?;
    if !start.pod.is_empty() {
        // A pod's container: the session runs in the pod's instance, relayed.
        let ch = container_channel(&rt, &start.pod, &start.cell, "start.cell")?;
        let start = pb::ExecStart {
            pod: String::new(),
            ..start
        };
        let (tx, out) = crate::runtime::spawn::child::exec_session(&ch, start).await?;
        tokio::spawn(relay(input, tx));
        return Ok(Box::pin(out));
    }
    let spec = AttachSpec::try_from(start)?;
    let attached = rt.attach(spec).await?;
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(session(rt, attached, input, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The stream's first message, which must be its `start` (`pick` takes it out; `what`
/// says what it holds and what comes after, for the error).
pub(super) async fn start_of<T, S>(
    input: &mut Streaming<T>,
    pick: impl FnOnce(T) -> Option<S>,
    what: &str,
) -> Result<S, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("start: the stream ended before its first message, `start`"))?;
    pick(first).ok_or_else(|| Status::invalid_argument(format!("start: the first message must be `start` {what}")))
}

/// The channel to the instance of `pod`, whose running container `container` names
/// (`field` in the request).
pub(super) fn container_channel(
    rt: &Runtime,
    pod: &str,
    container: &str,
    field: &str,
) -> Result<tonic::transport::Channel, Status> {
    use crate::values::names::ExecName;
    ExecName::parse(pod).map_err(|e| Status::invalid_argument(format!("start.pod: {e}")))?;
    ExecName::parse(container).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    Ok(rt.container_channel(pod, container, false)?)
}

/// Passes the caller's messages on to `tx` (a session in a pod's instance) until either
/// side ends; dropping `tx` ends that session's input, as the caller's going would.
pub(super) async fn relay<T>(mut input: Streaming<T>, tx: mpsc::Sender<T>) {
    loop {
        tokio::select! {
            m = input.message() => match m {
                Ok(Some(m)) => {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => return,
            },
            _ = tx.closed() => return,
        }
    }
}

/// A terminal's master, read by the output pump and written by the feeder.
type Master = Arc<AsyncTty>;

enum Writer {
    Tty(Master),
    Pipe(Option<tokio::net::unix::pipe::Sender>),
}

/// Why the feeder stopped.
enum Fed {
    /// The caller half-closed its side: no more input, the process runs on.
    Done,
    /// The caller is gone or broke the protocol: end the process.
    Gone,
}

async fn session(
    rt: Arc<Runtime>,
    a: Attached,
    input: Streaming<pb::ExecRequest>,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
) {
    let p = a.process;
    let _ = tx.send(out(Out::StartedPid(p.view().pid))).await;
    let (writer, pump) = match wire(a.io, tx.clone()) {
        Ok(w) => w,
        Err(e) => {
            let _ = tx
                .send(Err(Status::internal(format!("attach to the process's fds: {e}"))))
                .await;
            rt.detach(&p).await;
            return;
        }
    };
    let mut feeder = tokio::spawn(feed(input, writer, p.clone()));
    let mut fed = false;
    let gone = loop {
        tokio::select! {
            r = &mut feeder, if !fed => match r {
                Ok(Fed::Done) => fed = true,
                _ => break true,
            },
            _ = p.wait() => break false,
            _ = tx.closed() => break true,
        }
    };
    feeder.abort();
    if gone {
        pump.abort();
        rt.detach(&p).await;
        return;
    }
    let v = p.view();
    // Whatever it left running in its leaf holds the terminal or pipes open: killed, so
    // the output reaches its end.
    p.stop(libc::SIGKILL, std::time::Duration::ZERO).await;
    let _ = tokio::time::timeout(DRAIN, pump).await;
    let _ = tx
        .send(out(Out::Exit(pb::ExecExit {
            exit_code: v.exit_code,
            signal: v.signal,
            oom_killed: v.oom_killed,
        })))
        .await;
    rt.detach(&p).await;
}

/// The writer of the process's input and the task pumping its output to `tx`.
fn wire(
    io: AttachedIo,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
) -> std::io::Result<(Writer, tokio::task::JoinHandle<()>)> {
    match io {
        AttachedIo::Tty(master) => {
            let m: Master = Arc::new(AsyncTty::new(master)?);
            let pump = tokio::spawn(pump_tty(m.clone(), tx));
            Ok((Writer::Tty(m), pump))
        }
        AttachedIo::Pipes { stdin, stdout, stderr } => {
            let w = tokio::net::unix::pipe::Sender::from_owned_fd(stdin)?;
            let o = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)?;
            let e = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr)?;
            let pump = tokio::spawn(async move {
                let a = pump_pipe(o, tx.clone(), Out::Stdout);
                let b = pump_pipe(e, tx, Out::Stderr);
                tokio::join!(a, b);
            });
            Ok((Writer::Pipe(Some(w)), pump))
        }
    }
}

async fn pump_pipe(
    mut r: tokio::net::unix::pipe::Receiver,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
    wrap: fn(Vec<u8>) -> Out,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(out(wrap(buf[..n].to_vec()))).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn pump_tty(m: Master, tx: mpsc::Sender<Result<pb::ExecResponse, Status>>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match m.read(&mut buf).await {
            // EIO: every holder of the terminal's other end has gone.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(out(Out::Stdout(buf[..n].to_vec()))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Feeds the caller's messages to the process until the caller half-closes (Done) or is
/// gone or breaks the protocol (Gone).
async fn feed(mut input: Streaming<pb::ExecRequest>, mut w: Writer, p: Arc<Process>) -> Fed {
    loop {
        let msg = match input.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                close(&mut w).await;
                return Fed::Done;
            }
            Err(_) => return Fed::Gone,
        };
        match msg.request {
            Some(In::Stdin(bytes)) if bytes.len() <= MAX_STDIN => {
                let r = match &mut w {
                    Writer::Tty(m) => m.write_all(&bytes).await,
                    Writer::Pipe(Some(pipe)) => pipe.write_all(&bytes).await,
                    // Closed already: later stdin has nowhere to go.
                    Writer::Pipe(None) => Ok(()),
                };
                // The process stopped reading (it closed stdin or is exiting): drop it.
                if r.is_err() {
                    if let Writer::Pipe(pipe) = &mut w {
                        pipe.take();
                    }
                }
            }
            Some(In::CloseStdin(true)) => close(&mut w).await,
            Some(In::Resize(s)) => {
                if let Writer::Tty(m) = &w {
                    let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
                    let _ = crate::os::tty::set_window_size(m.fd(), clamp(s.rows), clamp(s.columns));
                }
            }
            Some(In::Signal(sig)) => {
                let _ = p.signal(sig);
            }
            Some(In::CloseStdin(false)) | None => {}
            // A second start, or stdin over the limit: the protocol is broken.
            Some(In::Start(_)) | Some(In::Stdin(_)) => return Fed::Gone,
        }
    }
}

async fn close(w: &mut Writer) {
    match w {
        // The terminal's end-of-file character (^D), as a person would type it.
        Writer::Tty(m) => {
            let _ = m.write_all(b"\x04").await;
        }
        Writer::Pipe(pipe) => {
            pipe.take();
        }
    }
}
