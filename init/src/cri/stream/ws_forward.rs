//! Port-forwarding over WebSocket (`crictl port-forward --transport websocket`), as
//! kubelet's streaming server serves it: the URL's query names the ports (`?port=80&port=
//! 8080`), each one of those the request was issued for; the subprotocol is
//! `v4.channel.k8s.io`; port number i has two channels, data `2i` and error `2i + 1`, and the
//! first message on each is the port (two bytes, little-endian). The node makes one
//! connection per port to the pod's address when the session opens; what the client sends
//! on a data channel goes to its connection, what the connection sends comes back on it,
//! and a failure is said on the error channel. The session ends when the client closes it
//! or after the idle time.

use super::http::Head;
use super::ws::{framed, MAX_MESSAGE};
use super::Refusal;
use futures_util::{SinkExt, StreamExt};
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};

/// The subprotocol served.
pub const SUBPROTOCOL: &str = "v4.channel.k8s.io";
/// Ports one session forwards (two channels each, numbered in one byte).
pub const MAX_PORTS: usize = 64;
/// How long connecting to the pod's port may take.
const DIAL_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes read from the pod's side per message at most.
const CHUNK: usize = 32 * 1024;

/// The ports the query asks for: at least one, each a TCP port, each among `issued` (the
/// request's; any when it named none), at most MAX_PORTS.
pub fn ports(head: &Head, issued: &[u16]) -> Result<Vec<u16>, Refusal> {
    let mut out = Vec::new();
    for (k, v) in head.query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" {
            continue;
        }
        match v.parse::<u16>() {
            Ok(p) if p > 0 && (issued.is_empty() || issued.contains(&p)) => out.push(p),
            Ok(p) if p > 0 => {
                return Err(Refusal::new(
                    400,
                    format!("port={p}: this URL was issued for ports {issued:?}; ask PortForward for that port"),
                ))
            }
            _ => return Err(Refusal::new(400, format!("port={v}: not a TCP port (1..=65535)"))),
        }
    }
    if out.is_empty() {
        return Err(Refusal::new(
            400,
            "name the ports to forward in the query: ?port=80&port=8080",
        ));
    }
    if out.len() > MAX_PORTS {
        return Err(Refusal::new(400, format!("{} ports; at most {MAX_PORTS}", out.len())));
    }
    Ok(out)
}

/// Forwards `ports` of `address` over the upgraded connection `conn`.
pub async fn session(conn: tokio::net::TcpStream, address: IpAddr, ports: Vec<u16>, idle: std::time::Duration) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE + 1))
        .max_frame_size(Some(MAX_MESSAGE + 1));
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(conn, Role::Server, Some(config)).await;
    let (mut sink, mut from_client) = ws.split();
    let (out, mut outgoing) = tokio::sync::mpsc::channel::<Message>(64);
    let mut to_pod: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::with_capacity(ports.len());
    let mut readers = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data, error] {
            if sink.send(framed(ch, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
        let dialed = tokio::time::timeout(DIAL_WITHIN, tokio::net::TcpStream::connect((address, port))).await;
        let conn = match dialed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let why = format!("error forwarding port {port} to pod: {e}");
                let _ = sink.send(framed(error, why.as_bytes())).await;
                to_pod.push(None);
                continue;
            }
            Err(_) => {
                let why = format!("error forwarding port {port} to pod: no answer in {DIAL_WITHIN:?}");
                let _ = sink.send(framed(error, why.as_bytes())).await;
                to_pod.push(None);
                continue;
            }
        };
        let (mut r, w) = conn.into_split();
        to_pod.push(Some(w));
        let out = out.clone();
        readers.spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n @ 1..) = r.read(&mut buf).await {
                if out.send(framed(data, &buf[..n])).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(out);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    loop {
        tokio::select! {
            m = from_client.next() => {
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                let bytes = match m {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let (Some(&ch), body) = (bytes.first(), &bytes[1.min(bytes.len())..]) else {
                    continue;
                };
                // Only a data channel takes bytes; an error channel is the server's to write.
                let Some(slot) = (ch % 2 == 0).then(|| to_pod.get_mut(usize::from(ch / 2))).flatten() else {
                    continue;
                };
                if let Some(w) = slot {
                    if w.write_all(body).await.is_err() {
                        *slot = None;
                        let port = ports[usize::from(ch / 2)];
                        let why = format!("error forwarding port {port} to pod: the connection closed");
                        if sink.send(framed(ch + 1, why.as_bytes())).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Some(m) = outgoing.recv() => {
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            _ = &mut idle_timer => break,
        }
    }
    readers.abort_all();
    let _ = sink.close().await;
}
