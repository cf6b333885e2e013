//! Streaming sessions over SPDY/3.1, as kubelet speaks to a runtime's streaming server
//! (`kubectl exec` arrives this way) and crictl by default, with the `v4.channel.k8s.io`
//! protocol: the client opens one SPDY stream per channel (a SYN_STREAM whose
//! `streamtype` header says `error`, `stdin`, `stdout`, `stderr` or `resize`), each
//! answered with a SYN_REPLY; stdin's DATA frames feed the process and its FIN ends its
//! stdin; the resize stream carries JSON sizes one after another; the process's output
//! goes out as DATA on stdout and stderr, its end as a Kubernetes `Status` on the error
//! stream, then every stream is finished and the session goes away (GOAWAY).
//!
//! Header blocks are compressed with zlib primed with SPDY/3's dictionary: what a client
//! sends is inflated here with it (miniz_oxide, its window primed with the dictionary);
//! what is sent is zlib stored blocks, which a client reads with or without it. Flow
//! control (WINDOW_UPDATE) is not enforced either way, as kubelet's own server does not.

use super::channel::{failure, idle_status, req, said, size_of, Said};
use super::http::Head;
use super::{Backend, Exec, ExecIo, Refusal};
use crate::pb::exec_request::Request as In;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

pub mod forward;
pub mod frame;
#[cfg(test)]
pub use frame::{adler32, dictionary, parse_headers};
pub use frame::{data, goaway, ping, read_frame, read_frames, rst_stream, Deflater, Frame, Frames, Inflater};

/// The channel protocols served over SPDY (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long a client has to open the streams its request needs (kubelet's
/// `streamCreationTimeout`).
const STREAMS_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// RST_STREAM's PROTOCOL_ERROR and REFUSED_STREAM.
const PROTOCOL_ERROR: u32 = 1;
const REFUSED_STREAM: u32 = 3;

/// Checks the upgrade `head` asks for, offering `protocol` (the session's kind's).
pub fn accept(head: &Head, protocol: &str) -> Result<String, Refusal> {
    if !head.lists("connection", "upgrade") {
        return Err(Refusal::new(426, "Connection: Upgrade is missing"));
    }
    if !head.lists("x-stream-protocol-version", protocol) {
        return Err(Refusal::new(
            400,
            format!("X-Stream-Protocol-Version: offer {protocol} (the one served for this session over SPDY/3.1)"),
        ));
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
    ))
}

/// The streams of an exec session, by what they carry.
#[derive(Default, Debug)]
struct Streams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Streams {
    fn complete(&self, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> bool {
        self.error.is_some()
            && (!stdin || self.stdin.is_some())
            && (!stdout || self.stdout.is_some())
            && (!stderr || self.stderr.is_some())
            && (!tty || self.resize.is_some())
    }
}

async fn send(w: &mut OwnedWriteHalf, frame: &[u8]) -> bool {
    w.write_all(frame).await.is_ok()
}

/// Runs `exec` over the upgraded connection `conn`.
pub async fn session(conn: tokio::net::TcpStream, exec: Exec, backend: Arc<dyn Backend>, idle: std::time::Duration) {
    let (stdin, stdout, stderr, tty) = (exec.stdin, exec.stdout, exec.stderr, exec.tty);
    let (mut r, mut w) = conn.into_split();
    let mut inflater = Inflater::default();
    let mut deflater = Deflater::default();
    // The streams first: each answered as it opens, the process started once all are.
    let mut s = Streams::default();
    let mut early: Vec<Frame> = Vec::new();
    let opened = tokio::time::timeout(STREAMS_WITHIN, async {
        while !s.complete(stdin, stdout, stderr, tty) {
            let f = match read_frame(&mut r, &mut inflater).await {
                Ok(Some(f)) => f,
                _ => return false,
            };
            match f {
                Frame::SynStream { stream, headers, .. } => {
                    let kind = headers.iter().find(|(n, _)| n == "streamtype").map(|(_, v)| v.as_str());
                    let slot = match kind {
                        Some("error") => &mut s.error,
                        Some("stdin") => &mut s.stdin,
                        Some("stdout") => &mut s.stdout,
                        Some("stderr") => &mut s.stderr,
                        Some("resize") => &mut s.resize,
                        _ => {
                            if !send(&mut w, &rst_stream(stream, PROTOCOL_ERROR)).await {
                                return false;
                            }
                            continue;
                        }
                    };
                    if slot.is_some() {
                        let _ = send(&mut w, &rst_stream(stream, REFUSED_STREAM)).await;
                        continue;
                    }
                    *slot = Some(stream);
                    if !send(&mut w, &deflater.syn_reply(stream)).await {
                        return false;
                    }
                }
                Frame::Ping(id) => {
                    if !send(&mut w, &ping(id)).await {
                        return false;
                    }
                }
                Frame::GoAway => return false,
                other => early.push(other),
            }
        }
        true
    })
    .await;
    if opened != Ok(true) {
        let _ = send(&mut w, &goaway(0)).await;
        return;
    }
    let io = match super::open(&*backend, &exec).await {
        Ok(io) => io,
        Err(e) => {
            finish(&mut w, &s, failure(e.message()).as_bytes()).await;
            return;
        }
    };
    let (frames, reader) = read_frames(r, inflater);
    let status = relay(frames, &mut w, &s, io, early, idle).await;
    reader.abort();
    if let Some(status) = status {
        finish(&mut w, &s, status.as_bytes()).await;
    }
}

/// The end of a session: the status on the error stream, every stream of the server's
/// finished, GOAWAY.
async fn finish(w: &mut OwnedWriteHalf, s: &Streams, status: &[u8]) {
    if let Some(e) = s.error {
        let _ = send(w, &data(e, false, status)).await;
    }
    for id in [s.stdout, s.stderr, s.error].into_iter().flatten() {
        let _ = send(w, &data(id, true, &[])).await;
    }
    let last = [s.error, s.stdin, s.stdout, s.stderr, s.resize]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
    let _ = send(w, &goaway(last)).await;
    let _ = w.shutdown().await;
}

/// Feeds the client's frames to the process and its output to the client, until the
/// process ends (its status returned), the client goes (None: the process is killed as
/// its input ends) or nothing moves either way for `idle_for`.
async fn relay(
    mut frames: Frames,
    w: &mut OwnedWriteHalf,
    s: &Streams,
    io: ExecIo,
    early: Vec<Frame>,
    idle_for: std::time::Duration,
) -> Option<String> {
    use futures_util::StreamExt;
    let ExecIo {
        input,
        mut output,
        attached,
    } = io;
    if s.stdin.is_none() {
        let _ = input.send(req(In::CloseStdin(true))).await;
    }
    let mut sizes: Vec<u8> = Vec::new();
    let mut queue: std::collections::VecDeque<Frame> = early.into();
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    loop {
        let frame = match queue.pop_front().map(|f| Ok(Some(f))) {
            Some(f) => f,
            None => tokio::select! {
                f = frames.recv() => f.unwrap_or(Ok(None)),
                o = output.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_for);
                    let (stream, bytes) = match said(o, attached) {
                        Said::Stdout(b) => (s.stdout, b),
                        // With a terminal there is no stderr stream: what a process
                        // without one (an attached entrypoint) writes there shares stdout.
                        Said::Stderr(b) => (s.stderr.or(s.resize.and(s.stdout)), b),
                        Said::End(status) => return Some(status),
                        Said::Nothing => continue,
                    };
                    if let Some(id) = stream {
                        if !send(w, &data(id, false, &bytes)).await {
                            return None;
                        }
                    }
                    continue;
                }
                _ = &mut idle => return Some(idle_status()),
            },
        };
        idle.as_mut().reset(tokio::time::Instant::now() + idle_for);
        let frame = match frame {
            Ok(Some(f)) => f,
            // The client is gone, or broke the protocol: the process is killed.
            Ok(None) | Err(_) => return None,
        };
        match frame {
            Frame::Data { stream, fin, data } if Some(stream) == s.stdin => {
                if !data.is_empty() {
                    let _ = input.send(req(In::Stdin(data))).await;
                }
                if fin {
                    let _ = input.send(req(In::CloseStdin(true))).await;
                }
            }
            Frame::Data { stream, data, .. } if Some(stream) == s.resize => {
                sizes.extend_from_slice(&data);
                // One JSON size after another: each complete one applies.
                let mut it = serde_json::Deserializer::from_slice(&sizes).into_iter::<serde_json::Value>();
                let mut used = 0;
                while let Some(Ok(v)) = it.next() {
                    used = it.byte_offset();
                    if let Some(size) = size_of(v) {
                        let _ = input.send(req(In::Resize(size))).await;
                    }
                }
                sizes.drain(..used);
                if sizes.len() > 4096 {
                    sizes.clear();
                }
            }
            Frame::RstStream { stream } if Some(stream) == s.stdin => {
                let _ = input.send(req(In::CloseStdin(true))).await;
            }
            Frame::Ping(id) if !send(w, &ping(id)).await => return None,
            Frame::GoAway => return None,
            Frame::SynStream { stream, .. } => {
                // No more streams once the session runs.
                let _ = send(w, &rst_stream(stream, REFUSED_STREAM)).await;
            }
            _ => {}
        }
    }
}
