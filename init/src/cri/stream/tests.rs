//! The streaming server over real loopback connections, with a fake backend standing for
//! the sandbox's instance, driven by the test tier's WebSocket client (written from the
//! RFC, `tests/src/ws.rs`): sessions with and without a terminal, exit codes, resizes,
//! and the attacks (a reused, altered, expired or re-aimed URL; floods of connections and
//! sessions) refused with nothing run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The test tier's clients, as the appliance tier uses them (`spdy_client` reaches
// `ws_client` as `super::ws`, as it does in the test crate).
#[path = "../../../../tests/src/spdy.rs"]
mod spdy_client;
#[path = "../../../../tests/src/ws.rs"]
mod ws_client;
use spdy_client::SpdyClient;
use ws_client as ws;

use super::*;
use crate::pb::{exec_request::Request as In, exec_response::Response as Out};
use std::sync::atomic::AtomicBool;
use tokio::sync::mpsc;
use ws_client::{Msg, WsClient, STDIN};

/// Runs what it is asked in a few words: `echo WORDS`, `cat` (stdin back until it ends),
/// `exit N`, `size` (each resize as "ROWS COLS"), `sleep` (until killed). It records
/// every start and whether a process was killed by its client going.
#[derive(Default)]
struct Fake {
    started: Mutex<Vec<(Target, pb::ExecStart)>>,
    killed: Arc<AtomicBool>,
}

fn out(r: Out) -> Result<pb::ExecResponse, tonic::Status> {
    Ok(pb::ExecResponse { response: Some(r) })
}

fn exit(code: i32) -> Out {
    Out::Exit(pb::ExecExit {
        exit_code: Some(code),
        ..Default::default()
    })
}

impl Backend for Fake {
    fn exec<'a>(&'a self, target: &'a Target, start: pb::ExecStart) -> BoxFuture<'a, Result<ExecIo, tonic::Status>> {
        Box::pin(async move {
            self.started.lock().unwrap().push((target.clone(), start.clone()));
            let (input, mut rx) = mpsc::channel::<pb::ExecRequest>(16);
            let (tx, orx) = mpsc::channel(16);
            let killed = self.killed.clone();
            let argv = start.argv.clone();
            tokio::spawn(async move {
                let _ = tx.send(out(Out::StartedPid(7))).await;
                match argv.first().map(String::as_str) {
                    Some("echo") => {
                        let _ = tx
                            .send(out(Out::Stdout(format!("{}\n", argv[1..].join(" ")).into())))
                            .await;
                        let _ = tx.send(out(Out::Stderr(b"to stderr\n".to_vec()))).await;
                        let _ = tx.send(out(exit(0))).await;
                    }
                    Some("exit") => {
                        let _ = tx.send(out(exit(argv[1].parse().unwrap()))).await;
                    }
                    Some("cat") => loop {
                        match rx.recv().await.and_then(|r| r.request) {
                            Some(In::Stdin(b)) => {
                                let _ = tx.send(out(Out::Stdout(b))).await;
                            }
                            Some(In::CloseStdin(_)) => {
                                let _ = tx.send(out(exit(0))).await;
                                break;
                            }
                            Some(_) => {}
                            None => {
                                killed.store(true, Ordering::SeqCst);
                                break;
                            }
                        }
                    },
                    Some("size") => {
                        while let Some(r) = rx.recv().await.and_then(|r| r.request) {
                            if let In::Resize(s) = r {
                                let _ = tx
                                    .send(out(Out::Stdout(format!("{} {}\n", s.rows, s.columns).into())))
                                    .await;
                                let _ = tx.send(out(exit(0))).await;
                                return;
                            }
                        }
                        killed.store(true, Ordering::SeqCst);
                    }
                    _ => {
                        // sleep: until the client's side is gone.
                        while rx.recv().await.is_some() {}
                        killed.store(true, Ordering::SeqCst);
                    }
                }
            });
            Ok(ExecIo {
                input,
                output: Box::pin(tokio_stream::wrappers::ReceiverStream::new(orx)),
                attached: false,
            })
        })
    }

    /// An entrypoint that says "attached" on stdout and stderr, echoes stdin, and exits 3
    /// when its stdin ends.
    fn attach<'a>(&'a self, target: &'a Target, stdin: bool) -> BoxFuture<'a, Result<ExecIo, tonic::Status>> {
        Box::pin(async move {
            let start = pb::ExecStart {
                cell: target.name.clone(),
                argv: vec![format!("(attach, stdin {stdin})")],
                ..Default::default()
            };
            self.started.lock().unwrap().push((target.clone(), start));
            let (input, mut rx) = mpsc::channel::<pb::ExecRequest>(16);
            let (tx, orx) = mpsc::channel(16);
            tokio::spawn(async move {
                let _ = tx.send(out(Out::Stdout(b"attached\n".to_vec()))).await;
                let _ = tx.send(out(Out::Stderr(b"on stderr\n".to_vec()))).await;
                while let Some(r) = rx.recv().await.and_then(|r| r.request) {
                    match r {
                        In::Stdin(b) => {
                            let _ = tx.send(out(Out::Stdout(b))).await;
                        }
                        In::CloseStdin(_) if stdin => break,
                        _ => {}
                    }
                }
                let _ = tx.send(out(exit(3))).await;
            });
            Ok(ExecIo {
                input,
                output: Box::pin(tokio_stream::wrappers::ReceiverStream::new(orx)),
                attached: true,
            })
        })
    }
}

/// A server on a loopback port with `limits`, serving `fake`.
async fn server(limits: Limits) -> (Arc<Streams>, Arc<Fake>, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let streams = Arc::new(Streams::new(addr, limits));
    let fake = Arc::new(Fake::default());
    tokio::spawn(serve(l, streams.clone(), fake.clone()));
    (streams, fake, addr.to_string())
}

fn target(id: &str) -> Target {
    Target {
        container_id: id.into(),
        pod: "cri-1".into(),
        name: "c-1".into(),
    }
}

fn exec(id: &str, cmd: &[&str], tty: bool, stdin: bool) -> What {
    What::Exec(Exec {
        target: target(id),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        attach: false,
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
}

const V5: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const V4: &[&str] = &["v4.channel.k8s.io"];

async fn open(streams: &Streams, addr: &str, what: What, protocols: &[&str]) -> WsClient {
    let url = streams.issue(what).unwrap();
    let (host, path) = ws_client::split_url(&url);
    assert_eq!(host, addr, "the URL names the server's own address");
    WsClient::connect(addr, &path, protocols).await.unwrap()
}

/// Without a terminal: stdout and stderr on their channels, the exit status on the error
/// channel (v5 chosen when offered), then a close; v4 gets the same and says a non-zero
/// exit code the way kubelet reads it.
#[tokio::test]
async fn an_exec_session_carries_each_stream_and_the_exit_status() {
    let (streams, fake, addr) = server(Limits::default()).await;
    let mut c = open(&streams, &addr, exec("abc", &["echo", "hello"], false, false), V5).await;
    assert_eq!(c.subprotocol, "v5.channel.k8s.io");
    let o = c.outcome().await;
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice()),
        (&b"hello\n"[..], &b"to stderr\n"[..])
    );
    assert_eq!(o.exit_code(), Some(0));
    assert!(o.closed);
    let (t, start) = fake.started.lock().unwrap()[0].clone();
    assert_eq!(
        (t.pod.as_str(), start.cell.as_str(), start.tty),
        ("cri-1", "c-1", false)
    );

    let mut c = open(&streams, &addr, exec("abc", &["exit", "3"], false, false), V4).await;
    assert_eq!(c.subprotocol, "v4.channel.k8s.io");
    let o = c.outcome().await;
    assert_eq!(o.exit_code(), Some(3), "{:?}", o.status);
    let s = o.status.unwrap();
    assert_eq!(
        (s["status"].as_str(), s["reason"].as_str()),
        (Some("Failure"), Some("NonZeroExitCode"))
    );
}

/// stdin reaches the process and its end (v5's close of channel 0) ends it; a resize
/// reaches a terminal's process as rows and columns.
#[tokio::test]
async fn stdin_and_resizes_reach_the_process() {
    let (streams, _fake, addr) = server(Limits::default()).await;
    let mut c = open(&streams, &addr, exec("abc", &["cat"], false, true), V5).await;
    c.send(STDIN, b"line one\n").await.unwrap();
    assert_eq!(c.stdout_until("line one\n").await, "line one\n");
    c.send(STDIN, b"two").await.unwrap();
    c.close_stdin().await.unwrap();
    let o = c.outcome().await;
    assert_eq!((o.stdout.as_slice(), o.exit_code()), (&b"two"[..], Some(0)));

    let mut c = open(&streams, &addr, exec("abc", &["size"], true, true), V5).await;
    c.resize(100, 33).await.unwrap();
    let o = c.outcome().await;
    assert_eq!(o.stdout, b"33 100\n");
}

fn attach(id: &str, tty: bool) -> What {
    What::Exec(Exec {
        target: target(id),
        cmd: Vec::new(),
        attach: true,
        tty,
        stdin: true,
        stdout: true,
        stderr: !tty,
    })
}

/// Attach joins the entrypoint (not a command): its output on its channels, stdin to it,
/// and its end reported as a success whatever its code, as kubelet reports an attach.
/// With a terminal there is no stderr channel, and an entrypoint without one has its
/// stderr shown on stdout. An attach URL is served only as an attach.
#[tokio::test]
async fn attach_joins_the_entrypoint_and_ends_as_a_success() {
    let (streams, fake, addr) = server(Limits::default()).await;
    let url = streams.issue(attach("abc", false)).unwrap();
    let (_, path) = ws_client::split_url(&url);
    assert!(path.starts_with("/attach/"), "{path}");
    let mut c = WsClient::connect(&addr, &path, V5).await.unwrap();
    c.send(STDIN, b"typed\n").await.unwrap();
    c.close_stdin().await.unwrap();
    let o = c.outcome().await;
    assert_eq!(o.stdout, b"attached\ntyped\n");
    assert_eq!(o.stderr, b"on stderr\n");
    assert_eq!(o.exit_code(), Some(0), "{:?}", o.status);
    let (_, start) = fake.started.lock().unwrap()[0].clone();
    assert_eq!(start.argv, ["(attach, stdin true)"], "joined, nothing started");

    let mut c = open(&streams, &addr, attach("abc", true), V5).await;
    c.close_stdin().await.unwrap();
    let o = c.outcome().await;
    assert_eq!(o.stdout, b"attached\non stderr\n");

    let url = streams.issue(attach("abc", false)).unwrap();
    let (_, path) = ws_client::split_url(&url);
    let as_exec = path.replacen("/attach/", "/exec/", 1);
    assert_eq!(WsClient::connect(&addr, &as_exec, V5).await.err().unwrap().status, 404);
    assert_eq!(fake.started.lock().unwrap().len(), 2, "nothing more joined");
}

/// A client that goes away mid-session: the process is killed (its input ends), and the
/// container's session count falls back so it can open more.
#[tokio::test]
async fn a_client_that_goes_kills_its_process() {
    let (streams, fake, addr) = server(Limits::default()).await;
    let c = open(&streams, &addr, exec("abc", &["sleep"], false, true), V5).await;
    drop(c);
    for _ in 0..200 {
        if fake.killed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fake.killed.load(Ordering::SeqCst), "the process was killed");
    for _ in 0..200 {
        if streams.open.lock().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the session was not counted off");
}

/// The attacks on a URL: used twice, a token altered by one character, expired, or aimed
/// at another kind of session; the wrong protocols. Each refused (404 for every URL that
/// is not a pending one, whatever the reason, so nothing is learnt), with nothing run.
#[tokio::test]
async fn a_url_is_served_once_for_what_it_was_issued_and_nothing_else() {
    let limits = Limits {
        ttl: Duration::from_millis(300),
        ..Limits::default()
    };
    let (streams, fake, addr) = server(limits).await;
    let url = streams.issue(exec("abc", &["echo", "once"], false, false)).unwrap();
    let (_, path) = ws_client::split_url(&url);
    let mut c = WsClient::connect(&addr, &path, V5).await.unwrap();
    assert_eq!(c.outcome().await.exit_code(), Some(0));
    let again = WsClient::connect(&addr, &path, V5).await.err().expect("refused");
    assert_eq!(again.status, 404, "{}", again.body);

    let url = streams.issue(exec("abc", &["echo", "x"], false, false)).unwrap();
    let (_, path) = ws_client::split_url(&url);
    let last = path.chars().last().unwrap();
    let altered = format!("{}{}", &path[..path.len() - 1], if last == '0' { '1' } else { '0' });
    assert_eq!(WsClient::connect(&addr, &altered, V5).await.err().unwrap().status, 404);
    let as_attach = path.replacen("/exec/", "/attach/", 1);
    assert_eq!(
        WsClient::connect(&addr, &as_attach, V5).await.err().unwrap().status,
        404
    );
    assert_eq!(
        WsClient::connect(&addr, &path, V5).await.err().unwrap().status,
        404,
        "the re-aimed try used it up"
    );

    let url = streams.issue(exec("abc", &["echo", "late"], false, false)).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, path) = ws_client::split_url(&url);
    assert_eq!(WsClient::connect(&addr, &path, V5).await.err().unwrap().status, 404);

    for (protocols, status) in [(&["channel.k8s.io"][..], 400), (&["base64.channel.k8s.io"][..], 400)] {
        let url = streams.issue(exec("abc", &["echo", "p"], false, false)).unwrap();
        let (_, path) = ws_client::split_url(&url);
        let e = WsClient::connect(&addr, &path, protocols).await.err().unwrap();
        assert_eq!(e.status, status);
        assert!(e.body.contains("v5.channel.k8s.io"), "{}", e.body);
    }
    assert_eq!(fake.started.lock().unwrap().len(), 1, "only the first URL ran anything");
}

/// Floods: connections that never send their request are closed after the head's time,
/// those past the most at once are closed at accept; a container's sessions past its most
/// are refused (429); URLs past the most pending are refused. The server serves again
/// once the flood is gone.
#[tokio::test]
async fn floods_of_connections_sessions_and_urls_are_bounded() {
    let limits = Limits {
        max_connections: 16,
        max_per_container: 2,
        max_pending: 8,
        head_within: Duration::from_millis(300),
        ..Limits::default()
    };
    let (streams, _fake, addr) = server(limits).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        streams.connections.load(Ordering::Relaxed) <= 16,
        "at most 16 held: {}",
        streams.connections.load(Ordering::Relaxed)
    );
    // Past the head's time the idle ones are closed, and a session is served again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(idle);
    let mut c = open(&streams, &addr, exec("abc", &["echo", "after"], false, false), V5).await;
    assert_eq!(c.outcome().await.stdout, b"after\n");

    let _a = open(&streams, &addr, exec("abc", &["sleep"], false, true), V5).await;
    let _b = open(&streams, &addr, exec("abc", &["sleep"], false, true), V5).await;
    let url = streams.issue(exec("abc", &["echo", "third"], false, false)).unwrap();
    let (_, path) = ws_client::split_url(&url);
    let e = WsClient::connect(&addr, &path, V5).await.err().unwrap();
    assert_eq!(e.status, 429, "{}", e.body);
    let mut other = open(&streams, &addr, exec("def", &["echo", "other"], false, false), V5).await;
    assert_eq!(
        other.outcome().await.stdout,
        b"other\n",
        "another container is not held up"
    );

    for _ in 0..8 {
        streams.issue(exec("abc", &["echo"], false, false)).unwrap();
    }
    let e = streams.issue(exec("abc", &["echo"], false, false)).unwrap_err();
    assert!(matches!(e, CriError::Exhausted(_)), "{e:?}");
}

/// The error channel's words: kubelet reads the exit code from `details.causes`.
#[test]
fn the_exit_status_is_what_kubelet_reads() {
    let ok = super::channel::exit_status(&pb::ExecExit {
        exit_code: Some(0),
        ..Default::default()
    });
    assert_eq!(ok, r#"{"metadata":{},"status":"Success"}"#);
    let killed: serde_json::Value = serde_json::from_str(&super::channel::exit_status(&pb::ExecExit {
        signal: Some(9),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(killed["details"]["causes"][0]["message"], "137");
    assert_eq!(
        super::channel::resize(br#"{"Width":80,"Height":24}"#).map(|s| (s.rows, s.columns)),
        Some((24, 80))
    );
    assert_eq!(super::channel::resize(b"{}"), None);
    // RFC 6455's own example.
    assert_eq!(
        super::ws::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let _ = Msg::Close(None);
}

/// SPDY/3's dictionary as the draft gives it (1423 bytes; zlib names it by its Adler-32),
/// built the same way by the server and the test's client.
#[test]
fn the_spdy_dictionary_is_the_drafts() {
    let d = spdy::dictionary();
    assert_eq!((d.len(), spdy::adler32(d)), (1423, 0xe3c6_a7c2));
    assert_eq!(spdy_client::dictionary(), d);
    assert_eq!(spdy_client::adler32(d), 0xe3c6_a7c2);
}

/// The client's header blocks, compressed with the dictionary (matches reaching back into
/// it) and across blocks, come out whole; a block for another dictionary, or not zlib at
/// all, is refused.
#[test]
fn header_blocks_inflate_with_the_dictionary_across_a_connection() {
    let mut c = spdy_client::Deflater::default();
    let mut s = spdy::Inflater::default();
    for kind in ["error", "stdin", "stdout", "stderr", "resize", "stdout"] {
        let plain = spdy_client::header_block(&[("streamtype", kind), ("version", "HTTP/1.1")]);
        let got = s.inflate(&c.compress(&plain)).unwrap();
        assert_eq!(got, plain);
        assert_eq!(
            spdy::parse_headers(&got).unwrap(),
            [
                ("streamtype".to_owned(), kind.to_owned()),
                ("version".into(), "HTTP/1.1".into())
            ]
        );
    }
    assert!(c.dictionary_matches > 0, "the dictionary was used");
    let mut other = spdy::Inflater::default();
    let mut block = spdy_client::Deflater::default().compress(b"\0\0\0\0");
    block[2] ^= 1;
    assert!(other
        .inflate(&block)
        .unwrap_err()
        .0
        .contains("dictionary other than SPDY/3's"));
    assert!(spdy::Inflater::default().inflate(b"\x1f\x8b\x08\0").is_err());
    assert!(spdy::parse_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'x']).is_err());
}

/// Over SPDY/3.1 (what kubelet speaks): each stream answered, stdout and stderr on theirs,
/// the status on the error stream, then GOAWAY; stdin's FIN ends the process's stdin; a
/// resize stream's JSON sizes reach a terminal; a non-zero exit code as kubelet reads it.
#[tokio::test]
async fn an_exec_session_over_spdy() {
    let (streams, _fake, addr) = server(Limits::default()).await;
    let path = |what| ws_client::split_url(&streams.issue(what).unwrap()).1;
    let p = path(exec("abc", &["echo", "over", "spdy"], false, false));
    let mut c = SpdyClient::connect(&addr, &p, &["v4.channel.k8s.io"]).await.unwrap();
    c.open_exec(false, false).await;
    let o = c.outcome().await;
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice()),
        (&b"over spdy\n"[..], &b"to stderr\n"[..])
    );
    assert_eq!((o.exit_code(), o.closed), (Some(0), true));

    let p = path(exec("abc", &["exit", "4"], false, false));
    let mut c = SpdyClient::connect(&addr, &p, &["v4.channel.k8s.io"]).await.unwrap();
    c.open_exec(false, false).await;
    assert_eq!(c.outcome().await.exit_code(), Some(4));

    let p = path(exec("abc", &["cat"], false, true));
    let mut c = SpdyClient::connect(&addr, &p, &["v4.channel.k8s.io"]).await.unwrap();
    c.open_exec(true, false).await;
    c.send("stdin", b"piped", false).await;
    assert_eq!(c.stdout_until("piped").await, "piped");
    c.send("stdin", b" and closed", true).await;
    let o = c.outcome().await;
    assert_eq!((o.stdout.as_slice(), o.exit_code()), (&b" and closed"[..], Some(0)));

    let p = path(exec("abc", &["size"], true, true));
    let mut c = SpdyClient::connect(&addr, &p, &["v4.channel.k8s.io"]).await.unwrap();
    c.open_exec(true, true).await;
    c.resize(120, 40).await;
    assert_eq!(c.outcome().await.stdout, b"40 120\n");

    // Only v4 over SPDY: an older protocol alone is refused, naming it.
    let p = path(exec("abc", &["echo"], false, false));
    let e = SpdyClient::connect(&addr, &p, &["v3.channel.k8s.io"])
        .await
        .err()
        .unwrap();
    assert_eq!(e.status, 400);
    assert!(e.body.contains("v4.channel.k8s.io"), "{}", e.body);
}

/// Output arriving while a frame is half read does not lose the rest of it: 2 MiB of stdin
/// in 64 KiB frames, each echoed back as it comes, all arrive in order.
#[tokio::test]
async fn spdy_frames_survive_output_arriving_mid_frame() {
    let (streams, _fake, addr) = server(Limits::default()).await;
    let url = streams.issue(exec("abc", &["cat"], false, true)).unwrap();
    let (_, p) = ws_client::split_url(&url);
    let mut c = SpdyClient::connect(&addr, &p, &["v4.channel.k8s.io"]).await.unwrap();
    c.open_exec(true, false).await;
    let sent: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    for piece in sent.chunks(64 * 1024) {
        c.send("stdin", piece, false).await;
    }
    c.send("stdin", b"", true).await;
    let o = c.outcome().await;
    assert_eq!(o.exit_code(), Some(0));
    assert!(o.stdout == sent, "{} of {} bytes back", o.stdout.len(), sent.len());
}

/// port-forward over SPDY/3.1: two connections at once on one session, each to its port
/// on the pod's address, bytes both ways and a FIN each way; a port nothing listens on
/// said on its error stream; a port the request did not name, refused; an exec URL's
/// session does not forward.
#[tokio::test]
async fn port_forward_carries_concurrent_connections_to_the_pods_ports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (streams, _fake, addr) = server(Limits::default()).await;
    // An echo server that shouts, standing for the pod's.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = c.read_to_end(&mut all).await;
                let _ = c.write_all(&all.to_ascii_uppercase()).await;
            });
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = streams
        .issue(What::PortForward {
            target: target("sandbox-1"),
            address: [127, 0, 0, 1].into(),
            ports: vec![port, closed],
        })
        .unwrap();
    let (_, p) = ws_client::split_url(&url);
    assert!(p.starts_with("/portforward/"), "{p}");
    let mut c = SpdyClient::connect(&addr, &p, &["portforward.k8s.io"]).await.unwrap();
    let (e1, d1) = c.forward(port, 0).await.unwrap();
    let (e2, d2) = c.forward(port, 1).await.unwrap();
    c.send_on(d1, b"first ", false).await;
    c.send_on(d2, b"second", true).await;
    c.send_on(d1, b"one", true).await;
    let got = c.until_fin(&[d1, d2, e1, e2]).await;
    assert_eq!(
        (got[&d1].as_slice(), got[&d2].as_slice()),
        (&b"FIRST ONE"[..], &b"SECOND"[..])
    );
    assert!(got[&e1].is_empty() && got[&e2].is_empty());

    let (e3, d3) = c.forward(closed, 2).await.unwrap();
    let got = c.until_fin(&[e3, d3]).await;
    let said = String::from_utf8_lossy(&got[&e3]).into_owned();
    assert!(
        said.contains(&format!("error forwarding port {closed} to pod")),
        "{said}"
    );
    assert_eq!(
        c.forward(22, 3).await.unwrap_err(),
        3,
        "a port not asked for: REFUSED_STREAM"
    );

    // An exec's URL speaks exec, and a port-forward's is refused over WebSocket.
    let url = streams.issue(exec("abc", &["echo"], false, false)).unwrap();
    let (_, p) = ws_client::split_url(&url);
    let e = SpdyClient::connect(&addr, &p, &["portforward.k8s.io"])
        .await
        .err()
        .unwrap();
    assert_eq!(e.status, 400, "{}", e.body);
    let url = streams
        .issue(What::PortForward {
            target: target("sandbox-1"),
            address: [127, 0, 0, 1].into(),
            ports: vec![],
        })
        .unwrap();
    let (_, p) = ws_client::split_url(&url);
    let e = WsClient::connect(&addr, &p, V5).await.err().unwrap();
    assert!(e.status == 400 && e.body.contains("?port="), "{}", e.body);
}

/// port-forward over WebSocket (crictl `--transport websocket`): the ports in the query,
/// each announced on its two channels, bytes both ways on the data channel; a port nothing
/// listens on said on its error channel; a port the request did not name, and none at all,
/// refused before the upgrade.
#[tokio::test]
async fn port_forward_over_websocket_names_its_ports_in_the_query() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (streams, _fake, addr) = server(Limits::default()).await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while let Ok(n @ 1..) = c.read(&mut b).await {
                    let _ = c.write_all(&b[..n].to_ascii_uppercase()).await;
                }
            });
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issue = |ports: Vec<u16>| {
        let url = streams
            .issue(What::PortForward {
                target: target("sandbox-1"),
                address: [127, 0, 0, 1].into(),
                ports,
            })
            .unwrap();
        ws_client::split_url(&url).1
    };
    const V4PF: &[&str] = &["v4.channel.k8s.io"];
    let p = issue(vec![port, closed]);
    let mut c = WsClient::connect(&addr, &format!("{p}?port={port}&port={closed}"), V4PF)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match c.recv().await.unwrap() {
            Some(Msg::Binary(b)) => seen.push(b),
            other => panic!("{other:?}"),
        }
    }
    let (lo, hi) = (port.to_le_bytes(), closed.to_le_bytes());
    assert_eq!(
        &seen[..4],
        &[
            vec![0, lo[0], lo[1]],
            vec![1, lo[0], lo[1]],
            vec![2, hi[0], hi[1]],
            vec![3, hi[0], hi[1]]
        ]
    );
    let said = String::from_utf8_lossy(&seen[4][1..]).into_owned();
    assert!(
        seen[4][0] == 3 && said.contains(&format!("error forwarding port {closed} to pod")),
        "{said}"
    );
    c.send(0, b"shout").await.unwrap();
    match c.recv().await.unwrap() {
        Some(Msg::Binary(b)) => assert_eq!(b, b"\0SHOUT"),
        other => panic!("{other:?}"),
    }
    for (query, why) in [
        (format!("?port={}", port + 1), "issued for ports"),
        (String::new(), "?port="),
    ] {
        let p = issue(vec![port]);
        let e = WsClient::connect(&addr, &format!("{p}{query}"), V4PF)
            .await
            .err()
            .unwrap();
        assert!(e.status == 400 && e.body.contains(why), "{}", e.body);
    }
}
