//! Streaming sessions over WebSocket (RFC 6455), as kubelet's and crictl's clients speak it
//! with the `v5.channel.k8s.io` or `v4.channel.k8s.io` subprotocol: every binary message
//! starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; with v5, 255
//! closes the channel its second byte names), the rest is the channel's bytes. The
//! process's end is a Kubernetes `Status` (JSON) on the error channel, then a close.
//! tungstenite frames the messages; the handshake is ours (`accept`).

use super::channel::{failure, idle_status, req, resize, said, Said};
use super::http::Head;
use super::{Backend, Exec, ExecIo, Refusal};
use crate::pb::exec_request::Request as In;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The subprotocols served, most preferred first.
pub const SUBPROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The most one message may carry (stdin arrives in pieces of at most this).
pub(super) const MAX_MESSAGE: usize = 1 << 20;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: "no more on the channel the next byte names".
pub const CLOSE: u8 = 255;

/// A WebSocket upgrade accepted: the answer to send and the subprotocol it names.
#[derive(Debug)]
pub struct Accepted {
    pub response: String,
    pub subprotocol: &'static str,
}

/// The key a server answers a `Sec-WebSocket-Key` with (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Checks the upgrade `head` asks for and picks its subprotocol (an exec's or attach's).
pub fn accept(head: &Head) -> Result<Accepted, Refusal> {
    accept_from(head, &SUBPROTOCOLS)
}

/// The same, picking from `served` (most preferred first).
pub fn accept_from(head: &Head, served: &[&'static str]) -> Result<Accepted, Refusal> {
    if !head.lists("upgrade", "websocket") || !head.lists("connection", "upgrade") {
        return Err(Refusal::new(
            426,
            format!(
                "upgrade the connection to WebSocket (Upgrade: websocket) with one of the subprotocols {}",
                served.join(", ")
            ),
        ));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(Refusal::new(400, "Sec-WebSocket-Version: only 13 is served"));
    }
    let key = head.header("sec-websocket-key").unwrap_or_default();
    let decoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(key)
    };
    if decoded.map(|k| k.len()) != Ok(16) {
        return Err(Refusal::new(400, "Sec-WebSocket-Key: not 16 bytes in base64"));
    }
    let Some(subprotocol) = served.iter().copied().find(|p| head.lists("sec-websocket-protocol", p)) else {
        return Err(Refusal::new(
            400,
            format!("Sec-WebSocket-Protocol: offer one of {}", served.join(", ")),
        ));
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n",
        accept_key(key)
    );
    Ok(Accepted { response, subprotocol })
}

pub(super) fn framed(channel: u8, bytes: &[u8]) -> Message {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(channel);
    v.extend_from_slice(bytes);
    Message::binary(v)
}

/// Runs `exec` over the upgraded connection `conn`.
pub async fn session(
    conn: tokio::net::TcpStream,
    subprotocol: &str,
    exec: Exec,
    backend: Arc<dyn Backend>,
    idle: std::time::Duration,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE + 1))
        .max_frame_size(Some(MAX_MESSAGE + 1));
    let mut ws = WebSocketStream::from_raw_socket(conn, Role::Server, Some(config)).await;
    let v5 = subprotocol == SUBPROTOCOLS[0];
    let io = match super::open(&*backend, &exec).await {
        Ok(io) => io,
        Err(s) => {
            let _ = ws.send(framed(ERROR, failure(s.message()).as_bytes())).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    // With a terminal there is no stderr channel: what a process without one (an attached
    // entrypoint) writes there shares stdout.
    let streams = (exec.stdin, exec.stdout, exec.stderr, exec.tty && !exec.stderr);
    relay(&mut ws, io, v5, streams, idle).await;
    let _ = ws.close(None).await;
}

/// Feeds the client's messages to the process and its output to the client, until the
/// process ends (its status sent), the client goes (the process is then killed: its
/// input stream ends), or neither says anything for `idle_for`.
async fn relay(
    ws: &mut WebSocketStream<tokio::net::TcpStream>,
    io: ExecIo,
    v5: bool,
    (stdin, stdout, stderr, merged): (bool, bool, bool, bool),
    idle_for: std::time::Duration,
) {
    let ExecIo {
        input,
        mut output,
        attached,
    } = io;
    if !stdin {
        let _ = input.send(req(In::CloseStdin(true))).await;
    }
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            m = ws.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_for);
                let bytes = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    // Pings are answered by tungstenite; text is not a channel message.
                    Some(Ok(_)) => continue,
                };
                let sent = match (bytes.first().copied(), &bytes[1.min(bytes.len())..]) {
                    (Some(STDIN), data) if stdin && !data.is_empty() => input.send(req(In::Stdin(data.to_vec()))).await,
                    (Some(RESIZE), data) => match resize(data) {
                        Some(size) => input.send(req(In::Resize(size))).await,
                        None => Ok(()),
                    },
                    (Some(CLOSE), [STDIN, ..]) if v5 => input.send(req(In::CloseStdin(true))).await,
                    _ => Ok(()),
                };
                if sent.is_err() {
                    // The process's side is gone; its end (or why) comes on the output.
                    continue;
                }
            }
            r = output.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_for);
                let msg = match said(r, attached) {
                    Said::Stdout(b) if stdout => framed(STDOUT, &b),
                    Said::Stderr(b) if stderr => framed(STDERR, &b),
                    Said::Stderr(b) if merged && stdout => framed(STDOUT, &b),
                    Said::End(status) => {
                        let _ = ws.send(framed(ERROR, status.as_bytes())).await;
                        return;
                    }
                    Said::Stdout(_) | Said::Stderr(_) | Said::Nothing => continue,
                };
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            _ = &mut idle => {
                let _ = ws.send(framed(ERROR, idle_status().as_bytes())).await;
                return;
            }
        }
    }
}
