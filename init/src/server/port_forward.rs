//! The Runtime service's `PortForward`: one stream is one TCP connection the node makes to
//! a port of a pod (its address) or of a cell (inside its network namespace), its bytes
//! carried both ways (`aer port-forward`). The client half-closing its stream half-closes
//! the connection; the far side closing ends the answer stream; either side going away
//! closes the connection.

use crate::pb::{self, port_forward_request::Request as In};
use crate::runtime::Runtime;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

pub type ForwardStream = Pin<Box<dyn Stream<Item = Result<pb::PortForwardResponse, Status>> + Send>>;

/// The most one message may carry, either way.
const MAX_DATA: usize = 1 << 20;
/// What is read from the connection at once.
const CHUNK: usize = 64 * 1024;

/// Connects as the stream's first message asks; the bytes then flow in a task.
pub async fn port_forward(
    rt: Arc<Runtime>,
    mut input: Streaming<pb::PortForwardRequest>,
) -> Result<ForwardStream, Status> {
    let pick = |m: pb::PortForwardRequest| match m.request {
        Some(In::Start(s)) => Some(s),
        _ => None,
    };
    let start =
        super::attach::start_of(&mut input, pick, "(the pod or cell, and the port); data comes after it").await?;
    let port = match u16::try_from(start.port) {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(Status::invalid_argument(format!(
                "start.port: {} is not a TCP port (1..=65535)",
                start.port
            )))
        }
    };
    let target = match (start.pod.as_str(), start.cell.as_str()) {
        ("", "") => {
            return Err(Status::invalid_argument(
                "start.pod: empty, and so is start.cell; name the pod (or the cell) to forward to",
            ))
        }
        (p, c) if !p.is_empty() && !c.is_empty() => {
            return Err(Status::invalid_argument(
                "start.cell: set with start.pod; name one of the two",
            ))
        }
        ("", c) => {
            crate::values::names::CellName::parse(c)
                .map_err(|e| Status::invalid_argument(format!("start.cell: {e}")))?;
            (None, Some(c))
        }
        (p, _) => {
            crate::values::names::ExecName::parse(p)
                .map_err(|e| Status::invalid_argument(format!("start.pod: {e}")))?;
            (Some(p), None)
        }
    };
    let dialer = rt.dialer(target.0, target.1)?;
    let who = target.0.or(target.1).unwrap_or_default().to_owned();
    let conn = dialer
        .dial(port)
        .await
        .map_err(|e| Status::unavailable(format!("start.port: connecting to port {port} of '{who}': {e}")))?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(carry(conn, input, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Carries bytes both ways until the far side closes (or fails) or the client goes.
async fn carry(
    conn: tokio::net::TcpStream,
    mut input: Streaming<pb::PortForwardRequest>,
    tx: mpsc::Sender<Result<pb::PortForwardResponse, Status>>,
) {
    let (mut r, mut w) = conn.into_split();
    let mut writing = true;
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            m = input.message(), if writing => match m {
                Ok(Some(pb::PortForwardRequest { request: Some(In::Data(b)) })) if b.len() <= MAX_DATA => {
                    if let Err(e) = w.write_all(&b).await {
                        let _ = tx.send(Err(Status::unavailable(format!("the connection broke: {e}")))).await;
                        return;
                    }
                }
                Ok(Some(pb::PortForwardRequest { request: Some(In::Data(b)) })) => {
                    let why = format!("data: {} bytes in one message; send at most {MAX_DATA}", b.len());
                    let _ = tx.send(Err(Status::invalid_argument(why))).await;
                    return;
                }
                Ok(Some(pb::PortForwardRequest { request: Some(In::Start(_)) })) => {
                    let _ = tx
                        .send(Err(Status::invalid_argument("start: sent twice; it comes first and once")))
                        .await;
                    return;
                }
                Ok(Some(_)) => {}
                // Half-closed: no more to send; the far side may still answer.
                Ok(None) => {
                    let _ = w.shutdown().await;
                    writing = false;
                }
                Err(_) => return,
            },
            n = r.read(&mut buf) => match n {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(Ok(pb::PortForwardResponse { data: buf[..n].to_vec() })).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(format!("the connection broke: {e}")))).await;
                    return;
                }
            },
            _ = tx.closed() => return,
        }
    }
}
