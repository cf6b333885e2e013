//! The CRI streaming figures of `make bench` (its `cri` part), inside the appliance on the
//! same boot, each beside what the Aurae API does for the same:
//!
//! - an exec's round trip: `true` run in a container, its exit status back. Through the
//!   CRI: `Exec`, then a SPDY/3.1 session on the URL (kubelet's protocol: the upgrade, the
//!   error, stdout and stderr streams, the status). Through the Aurae API: one `Exec`
//!   stream to a pod's container on the connection the client has.
//! - port-forward throughput: a 32 MiB page fetched from the container's httpd over
//!   `PortForward`'s SPDY/3.1 session, over the Aurae API's `PortForward`, through the
//!   pod's port published on the node, and straight from the pod's address (the floor).
//!
//! The SPDY client is the few frames a client sends, written with the server's own codec.

use super::{ms, report};
use crate::cli::CliError;
use crate::cri::stream::spdy::frame::{data, read_frame, Deflater, Frame, Inflater};
use crate::pb;
use aurae_proto::cri;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CRI's runtime service as a client of the node.
pub type Run = cri::runtime_service_client::RuntimeServiceClient<crate::cli::Conn>;

/// The page port-forward fetches, and what serves it in each container.
pub const PAGE_MIB: usize = 32;
pub fn server_script() -> String {
    format!(
        "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count={PAGE_MIB} 2>/dev/null \
         && httpd -p 80 -h /tmp/www; exec sleep 100000"
    )
}

fn fail(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Workload(format!("bench: {what}: {e}"))
}

/// A SPDY/3.1 session on a streaming URL, upgraded with `protocol`.
struct Spdy {
    r: tokio::net::tcp::OwnedReadHalf,
    w: tokio::net::tcp::OwnedWriteHalf,
    inflater: Inflater,
    deflater: Deflater,
}

impl Spdy {
    async fn connect(url: &str, protocol: &str) -> Result<Spdy, CliError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| fail("a URL", url))?;
        let (host, path) = rest.split_at(rest.find('/').ok_or_else(|| fail("a URL", url))?);
        let mut conn = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| fail("connect", e))?;
        conn.set_nodelay(true).map_err(|e| fail("nodelay", e))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.map_err(|e| fail("upgrade", e))?;
        // The answer's head, a byte at a time: the frames follow it at once.
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let b = conn.read_u8().await.map_err(|e| fail("upgrade answer", e))?;
            got.push(b);
        }
        if !got.starts_with(b"HTTP/1.1 101") {
            return Err(fail("upgrade", String::from_utf8_lossy(&got)));
        }
        let (r, w) = conn.into_split();
        Ok(Spdy {
            r,
            w,
            inflater: Inflater::default(),
            deflater: Deflater::default(),
        })
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), CliError> {
        self.w.write_all(frame).await.map_err(|e| fail("send", e))
    }

    async fn open(&mut self, stream: u32, headers: &[(&str, &str)]) -> Result<(), CliError> {
        let f = self.deflater.syn_stream(stream, headers);
        self.send(&f).await
    }

    /// Reads until `stream` is finished or the session ends: the bytes it carried.
    async fn until_fin(&mut self, stream: u32) -> Result<u64, CliError> {
        let mut n = 0u64;
        loop {
            match read_frame(&mut self.r, &mut self.inflater)
                .await
                .map_err(|e| fail("a frame", e.0))?
            {
                Some(Frame::Data { stream: s, fin, data }) if s == stream => {
                    n += data.len() as u64;
                    if fin {
                        return Ok(n);
                    }
                }
                Some(Frame::GoAway) | None => return Ok(n),
                Some(_) => {}
            }
        }
    }
}

/// One exec of `true` through the CRI: the call, the session, the status. Ok once the
/// status says Success.
async fn cri_exec(run: &mut Run, container: &str) -> Result<(), CliError> {
    let url = run
        .exec(cri::ExecRequest {
            container_id: container.into(),
            cmd: vec!["true".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner()
        .url;
    let mut s = Spdy::connect(&url, "v4.channel.k8s.io").await?;
    for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
        s.open(id, &[("streamtype", kind)]).await?;
    }
    let mut status = Vec::new();
    while let Some(f) = read_frame(&mut s.r, &mut s.inflater)
        .await
        .map_err(|e| fail("a frame", e.0))?
    {
        match f {
            Frame::Data { stream: 1, data, .. } => status.extend_from_slice(&data),
            Frame::GoAway => break,
            _ => {}
        }
    }
    if !String::from_utf8_lossy(&status).contains("\"Success\"") {
        return Err(fail("the exec's status", String::from_utf8_lossy(&status)));
    }
    Ok(())
}

/// One exec of `true` through the Aurae API's Exec in pod `pod`'s container `container`.
async fn aurae_exec(
    rt: &mut pb::runtime_client::RuntimeClient<crate::cli::Conn>,
    pod: &str,
    container: &str,
) -> Result<(), CliError> {
    use pb::exec_request::Request as In;
    let msgs = vec![
        pb::ExecRequest {
            request: Some(In::Start(pb::ExecStart {
                cell: container.into(),
                pod: pod.into(),
                argv: vec!["true".into()],
                ..Default::default()
            })),
        },
        pb::ExecRequest {
            request: Some(In::CloseStdin(true)),
        },
    ];
    // The request stream stays open until the exit arrives (a closed one is a caller gone).
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    for m in msgs {
        let _ = tx.send(m).await;
    }
    let mut out = rt
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    while let Some(m) = out.message().await.map_err(CliError::Remote)? {
        if let Some(pb::exec_response::Response::Exit(e)) = m.response {
            drop(tx);
            return match e.exit_code {
                Some(0) => Ok(()),
                other => Err(fail("the exec's exit", format!("{other:?}"))),
            };
        }
    }
    Err(fail("the exec", "ended without its exit"))
}

const GET: &[u8] = b"GET /big HTTP/1.0\r\n\r\n";

/// The page over the CRI's PortForward (SPDY/3.1): bytes received.
async fn cri_forward(run: &mut Run, sandbox: &str) -> Result<u64, CliError> {
    let url = run
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox.into(),
            port: vec![80],
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner()
        .url;
    let mut s = Spdy::connect(&url, "portforward.k8s.io").await?;
    s.open(1, &[("streamtype", "error"), ("port", "80"), ("requestid", "0")])
        .await?;
    s.open(3, &[("streamtype", "data"), ("port", "80"), ("requestid", "0")])
        .await?;
    s.send(&data(3, true, GET)).await?;
    s.until_fin(3).await
}

/// The page over the Aurae API's PortForward to pod `pod`: bytes received.
async fn aurae_forward(
    rt: &mut pb::runtime_client::RuntimeClient<crate::cli::Conn>,
    pod: &str,
) -> Result<u64, CliError> {
    use pb::port_forward_request::Request as In;
    let msgs = vec![
        pb::PortForwardRequest {
            request: Some(In::Start(pb::PortForwardStart {
                pod: pod.into(),
                port: 80,
                ..Default::default()
            })),
        },
        pb::PortForwardRequest {
            request: Some(In::Data(GET.to_vec())),
        },
    ];
    let mut s = rt
        .port_forward(tokio_stream::iter(msgs))
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    let mut n = 0u64;
    while let Some(m) = s.message().await.map_err(CliError::Remote)? {
        n += m.data.len() as u64;
    }
    Ok(n)
}

/// The page straight over TCP from `addr`: bytes received.
async fn tcp_get(addr: std::net::SocketAddr) -> Result<u64, CliError> {
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail("connect", e))?;
    c.write_all(GET).await.map_err(|e| fail("send", e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match c.read(&mut buf).await.map_err(|e| fail("read", e))? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

/// What the figures run against: a CRI sandbox's container and a pod's, both serving the
/// page, the pod's port 80 published on the node as `published`.
pub struct Targets<'a> {
    pub sandbox: &'a str,
    pub container: &'a str,
    pub pod: &'a str,
    pub pod_container: &'a str,
    pub pod_address: std::net::Ipv4Addr,
    pub published: u16,
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Times each way `n` times (alternated, so each sees the same machine) and prints them.
pub async fn figures(
    run: &mut Run,
    rt: &mut pb::runtime_client::RuntimeClient<crate::cli::Conn>,
    t: &Targets<'_>,
    n: usize,
) -> Result<(), CliError> {
    let (mut cri_t, mut aurae_t) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let s = Instant::now();
        cri_exec(run, t.container).await?;
        cri_t.push(s.elapsed());
        let s = Instant::now();
        aurae_exec(rt, t.pod, t.pod_container).await?;
        aurae_t.push(s.elapsed());
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[(v.len() - 1) / 2]
    };
    let ratio = ms(p50(&mut cri_t)) / ms(p50(&mut aurae_t));
    report("exec `true`, CRI Exec + SPDY session (cell handler)", cri_t);
    report("exec `true`, Aurae API Exec into a pod (cell)", aurae_t);
    println!("{:<58} {ratio:8.2}", "CRI / Aurae API, p50");

    let expect = (PAGE_MIB << 20) as u64;
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("port-forward, CRI SPDY session (MiB/s)", Vec::new()),
        ("port-forward, Aurae API PortForward (MiB/s)", Vec::new()),
        ("the pod's port published on the node (MiB/s)", Vec::new()),
        ("straight to the pod's address (MiB/s)", Vec::new()),
    ];
    let rounds = n.clamp(1, 5);
    for _ in 0..rounds {
        for (i, row) in rows.iter_mut().enumerate() {
            let s = Instant::now();
            let got = match i {
                0 => cri_forward(run, t.sandbox).await?,
                1 => aurae_forward(rt, t.pod).await?,
                2 => tcp_get((std::net::Ipv4Addr::LOCALHOST, t.published).into()).await?,
                _ => tcp_get((t.pod_address, 80).into()).await?,
            };
            let took = s.elapsed();
            if got < expect {
                return Err(fail(row.0, format!("{got} bytes of a {expect}-byte page")));
            }
            row.1.push(rate(got, took));
        }
    }
    for (what, mut v) in rows {
        v.sort_by(f64::total_cmp);
        println!(
            "{what:<58} p50 {:8.1}  min {:8.1}  max {:8.1} (n={})",
            v[(v.len() - 1) / 2],
            v[0],
            v[v.len() - 1],
            v.len()
        );
    }
    Ok(())
}
