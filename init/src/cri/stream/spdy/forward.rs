//! Port-forwarding over SPDY/3.1 with `portforward.k8s.io` (`kubectl port-forward`
//! through kubelet): for each connection the client forwards, it opens a pair of streams
//! with the same `requestid` and `port`, `streamtype: error` then `streamtype: data`. The
//! node connects to that port at the pod's address (its IP on the node's bridge; the
//! node's loopback for a hostNetwork pod) and copies bytes both ways on the data stream;
//! a FIN either way half-closes the other side; a failure to connect is said on the error
//! stream. Many pairs may run at once on one connection.

use super::{data, ping, read_frames, rst_stream, Deflater, Frame, Inflater};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The protocol served (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// Connections forwarded at once on one session.
pub const MAX_PAIRS: usize = 64;
/// How long connecting to the pod's port may take.
const DIAL_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes read from the pod's side per DATA frame at most.
const CHUNK: usize = 32 * 1024;
const REFUSED_STREAM: u32 = 3;

#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

/// Forwards connections to `address` (only to `ports`, unless it is empty) over `conn`.
pub async fn session(conn: tokio::net::TcpStream, address: IpAddr, ports: Vec<u16>, idle: std::time::Duration) {
    let (r, mut w) = conn.into_split();
    // Every frame goes out through one writer; frames come in on a task of their own.
    let (out, mut outgoing) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = outgoing.recv().await {
            if w.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let (mut frames, reader) = read_frames(r, Inflater::default());
    let mut deflater = Deflater::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data stream → what its connection is to write (None: the client's FIN).
    let mut to_pod: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut copies = tokio::task::JoinSet::new();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    loop {
        let frame = tokio::select! {
            f = frames.recv() => f.unwrap_or(Ok(None)),
            _ = &mut idle_timer => break,
            Some(done) = copies.join_next(), if !copies.is_empty() => {
                if let Ok((id, data_id)) = done {
                    pairs.remove(&id);
                    to_pod.remove(&data_id);
                }
                continue;
            }
        };
        idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        match frame {
            Frame::SynStream { stream, headers, .. } => {
                let h = |n: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let (kind, port, id) = (h("streamtype"), h("port"), h("requestid"));
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0 && (ports.is_empty() || ports.contains(p)));
                let known = pairs.contains_key(&id);
                let (Some(port), "error" | "data", true) = (port, kind.as_str(), known || pairs.len() < MAX_PAIRS)
                else {
                    let _ = out.send(rst_stream(stream, REFUSED_STREAM)).await;
                    continue;
                };
                let _ = out.send(deflater.syn_reply(stream)).await;
                let pair = pairs.entry(id.clone()).or_default();
                pair.port = port;
                match kind.as_str() {
                    "error" => pair.error = Some(stream),
                    _ => pair.data = Some(stream),
                }
                if let Some(data_id) = pair.data.filter(|_| kind == "data") {
                    let (feed, fed) = mpsc::channel(16);
                    to_pod.insert(data_id, feed);
                    let target = SocketAddr::new(address, port);
                    let (id, error_id, out) = (id.clone(), pair.error, out.clone());
                    copies.spawn(async move {
                        copy(target, data_id, error_id, fed, out).await;
                        (id, data_id)
                    });
                }
            }
            Frame::Data { stream, fin, data } => {
                if let Some(feed) = to_pod.get(&stream) {
                    if !data.is_empty() {
                        let _ = feed.send(Some(data)).await;
                    }
                    if fin {
                        let _ = feed.send(None).await;
                    }
                }
            }
            Frame::RstStream { stream } => {
                to_pod.remove(&stream);
            }
            Frame::Ping(id) => {
                let _ = out.send(ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    reader.abort();
    copies.abort_all();
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: dials `target`, then copies both ways until both are done.
async fn copy(
    target: SocketAddr,
    data_id: u32,
    error_id: Option<u32>,
    mut fed: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let conn = match tokio::time::timeout(DIAL_WITHIN, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail(&out, data_id, error_id, &format!("{e}"), target).await,
        Err(_) => return fail(&out, data_id, error_id, "no answer", target).await,
    };
    let (mut pr, mut pw) = conn.into_split();
    let mut buf = vec![0u8; CHUNK];
    let (mut from_pod_done, mut to_pod_done) = (false, false);
    while !(from_pod_done && to_pod_done) {
        tokio::select! {
            n = pr.read(&mut buf), if !from_pod_done => match n {
                Ok(0) | Err(_) => {
                    from_pod_done = true;
                    let _ = out.send(data(data_id, true, &[])).await;
                }
                Ok(n) => {
                    if out.send(data(data_id, false, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            },
            m = fed.recv(), if !to_pod_done => match m {
                Some(Some(bytes)) => {
                    if pw.write_all(&bytes).await.is_err() {
                        to_pod_done = true;
                    }
                }
                Some(None) | None => {
                    to_pod_done = true;
                    let _ = pw.shutdown().await;
                }
            },
        }
    }
    if let Some(e) = error_id {
        let _ = out.send(data(e, true, &[])).await;
    }
}

async fn fail(out: &mpsc::Sender<Vec<u8>>, data_id: u32, error_id: Option<u32>, why: &str, target: SocketAddr) {
    let msg = format!("error forwarding port {} to pod: {why}", target.port());
    if let Some(e) = error_id {
        let _ = out.send(data(e, true, msg.as_bytes())).await;
    }
    let _ = out.send(data(data_id, true, &[])).await;
}
