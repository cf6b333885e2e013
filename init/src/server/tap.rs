//! The Runtime service's `Attach`: a client joined to a running executable (`aer attach`,
//! the CRI's streaming Attach). Its output goes to the client from the moment it attaches,
//! the client's stdin to the executable's kept pipe, and `exit` follows once the
//! executable ended and its output drained. The client leaving changes nothing for the
//! executable. A pod's container is attached to in the pod's instance, relayed.

use super::attach::{container_channel, out, relay, start_of, ExecStream, DRAIN, MAX_STDIN};
use crate::pb::{self, attach_request::Request as In, exec_response::Response as Out};
use crate::runtime::logs::Stream;
use crate::runtime::tap::{self, Next, Piece};
use crate::runtime::{Process, Runtime};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tonic::{Status, Streaming};

type Tx = mpsc::Sender<Result<pb::ExecResponse, Status>>;

/// Attaches as the stream's first message asks; the rest runs in a task.
pub async fn attach(rt: Arc<Runtime>, mut input: Streaming<pb::AttachRequest>) -> Result<ExecStream, Status> {
    let pick = |m: pb::AttachRequest| match m.request {
        Some(In::Start(s)) => Some(s),
        _ => None,
    };
    let start = start_of(
        &mut input,
        pick,
        "(the executable, and whether to send stdin); stdin comes after it",
    )
    .await?;
    if start.executable.is_empty() {
        return Err(Status::invalid_argument(
            "start.executable: empty; name the executable (or with start.pod, the container) to attach to",
        ));
    }
    if !start.pod.is_empty() {
        let ch = container_channel(&rt, &start.pod, &start.executable, "start.executable")?;
        let start = pb::AttachStart {
            pod: String::new(),
            ..start
        };
        let (tx, out) = crate::runtime::spawn::child::attach_session(&ch, start).await?;
        tokio::spawn(relay(input, tx));
        return Ok(Box::pin(out));
    }
    let (p, rx) = rt.attach_to(&start.executable, start.stdin)?;
    let (tx, orx) = mpsc::channel(32);
    tokio::spawn(session(p, rx, input, start.stdin, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(orx)))
}

/// A piece of output as the client gets it; a gap it fell behind by, said on stderr.
fn piece_out(n: Next) -> Option<Out> {
    match n {
        Next::Piece((Stream::Stderr, b)) => Some(Out::Stderr(b.to_vec())),
        Next::Piece((_, b)) => Some(Out::Stdout(b.to_vec())),
        Next::Missed(k) => Some(Out::Stderr(
            format!("\r\n[aurae: {k} pieces of output skipped: this client read slower than the process wrote; the logs have them]\r\n")
                .into_bytes(),
        )),
        Next::Closed => None,
    }
}

async fn session(
    p: Arc<Process>,
    mut rx: broadcast::Receiver<Piece>,
    mut input: Streaming<pb::AttachRequest>,
    stdin: bool,
    tx: Tx,
) {
    if tx.send(out(Out::StartedPid(p.view().pid))).await.is_err() {
        return;
    }
    let mut reading = true;
    loop {
        tokio::select! {
            m = input.message(), if reading => match m {
                Ok(Some(pb::AttachRequest { request: Some(In::Stdin(b)) })) if stdin && b.len() <= MAX_STDIN => {
                    // false: its stdin is closed; what the client sends next goes nowhere.
                    let _ = p.tap.write(&b).await;
                }
                Ok(Some(pb::AttachRequest { request: Some(In::Stdin(b)) })) => {
                    let why = match stdin {
                        true => format!("stdin: {} bytes in one message; send at most {MAX_STDIN}", b.len()),
                        false => "stdin: this client attached without start.stdin; attach again with it to send stdin".into(),
                    };
                    let _ = tx.send(Err(Status::invalid_argument(why))).await;
                    return;
                }
                Ok(Some(pb::AttachRequest { request: Some(In::CloseStdin(true)) })) | Ok(None) => {
                    if stdin {
                        p.tap.client_closed().await;
                    }
                    reading = false;
                }
                Ok(Some(pb::AttachRequest { request: Some(In::Resize(size)) })) => {
                    let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
                    p.tap.resize(clamp(size.rows), clamp(size.columns));
                }
                Ok(Some(pb::AttachRequest { request: Some(In::Start(_)) })) => {
                    let _ = tx
                        .send(Err(Status::invalid_argument("start: sent twice; it comes first and once")))
                        .await;
                    return;
                }
                Ok(Some(_)) => {}
                // The client is gone.
                Err(_) => return,
            },
            n = tap::next(&mut rx) => match piece_out(n) {
                Some(o) => {
                    if tx.send(out(o)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            _ = p.wait() => break,
            _ = tx.closed() => return,
        }
    }
    drain(&p, &mut rx, &tx).await;
    let v = p.view();
    let _ = tx
        .send(out(Out::Exit(pb::ExecExit {
            exit_code: v.exit_code,
            signal: v.signal,
            oom_killed: v.oom_killed,
        })))
        .await;
}

/// Sends what is left of the output once the executable ended: until its pipes' readers
/// are done (what it left running may hold them open: then for at most DRAIN).
async fn drain(p: &Process, rx: &mut broadcast::Receiver<Piece>, tx: &Tx) {
    let until = tokio::time::Instant::now() + DRAIN;
    let mut changed = p.logs.subscribe();
    loop {
        changed.borrow_and_update();
        let done = p.logs.writers_closed();
        while let Some(o) = tap::ready(rx).and_then(piece_out) {
            if tx.send(out(o)).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}
