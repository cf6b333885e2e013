//! A WebSocket client (RFC 6455) for the CRI's streaming server, written from the RFC and
//! the Kubernetes channel protocol (`v4.channel.k8s.io`, `v5.channel.k8s.io`): the
//! opening handshake, masked frames out, frames in (fragmented ones joined, pings
//! answered), and the channel byte that starts each binary message. Test code: shared by
//! the appliance tier and auraed's own unit tests (`cri/stream/tests.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Read;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// How long a reader waits for the server's next message before it gives up and returns
/// what came (a test then fails on what it shows, rather than hanging).
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(60);

pub struct WsClient {
    conn: TcpStream,
    /// The subprotocol the server chose.
    pub subprotocol: String,
    /// Read past a frame, not yet taken.
    buf: Vec<u8>,
}

/// A message from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    Binary(Vec<u8>),
    Text(String),
    Close(Option<u16>),
}

/// Why the server refused the upgrade: its status line's code and its body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The accept key RFC 6455 §1.3 has a server answer `key` with.
pub fn expected_accept(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    b64(&h.finalize())
}

/// Reads an HTTP response's status line and headers, byte by byte (nothing past them):
/// its status and its text.
pub async fn read_head(conn: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// `http://HOST:PORT/PATH` → (HOST:PORT, /PATH).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host.to_owned(), path.to_owned())
}

impl WsClient {
    /// Connects to `addr`, asks for `path` with `protocols` offered, and checks the answer.
    pub async fn connect(addr: &str, path: &str, protocols: &[&str]) -> Result<WsClient, Refused> {
        let mut conn = TcpStream::connect(addr).await.expect("connect to the streaming server");
        let key = b64(&random::<16>());
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            protocols.join(", ")
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let (status, text) = read_head(&mut conn).await;
        let header = |name: &str| {
            text.lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        if status != 101 {
            let mut body = String::new();
            let _ = conn.read_to_string(&mut body).await;
            return Err(Refused { status, body });
        }
        assert_eq!(header("Sec-WebSocket-Accept"), expected_accept(&key), "{text}");
        assert!(header("Upgrade").eq_ignore_ascii_case("websocket"), "{text}");
        Ok(WsClient {
            conn,
            subprotocol: header("Sec-WebSocket-Protocol"),
            buf: Vec::new(),
        })
    }

    async fn frame_out(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = random::<4>();
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.conn.write_all(&f).await
    }

    /// Sends `data` on `channel` (one binary message).
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        self.frame_out(0x2, &m).await
    }

    /// A terminal's new size on the resize channel.
    pub async fn resize(&mut self, width: u16, height: u16) -> std::io::Result<()> {
        let json = format!("{{\"Width\":{width},\"Height\":{height}}}");
        self.send(RESIZE, json.as_bytes()).await
    }

    /// v5: no more stdin.
    pub async fn close_stdin(&mut self) -> std::io::Result<()> {
        self.send(CLOSE, &[STDIN]).await
    }

    pub async fn send_close(&mut self) -> std::io::Result<()> {
        self.frame_out(0x8, &1000u16.to_be_bytes()).await
    }

    async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            let got = self.conn.read(&mut chunk).await?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    /// One frame: (fin, opcode, payload); None at the end of the connection.
    async fn frame_in(&mut self) -> std::io::Result<Option<(bool, u8, Vec<u8>)>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "a server's frames are not masked");
        let (len, at) = match b1 & 0x7f {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if !self.fill(at + len).await? {
            return Ok(None);
        }
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Ok(Some((b0 & 0x80 != 0, b0 & 0x0f, payload)))
    }

    /// The next message (fragments joined, pings answered); None once the connection ends.
    pub async fn recv(&mut self) -> std::io::Result<Option<Msg>> {
        let mut message: Option<(u8, Vec<u8>)> = None;
        loop {
            let Some((fin, opcode, payload)) = self.frame_in().await? else {
                return Ok(None);
            };
            match opcode {
                0x9 => self.frame_out(0xA, &payload).await?,
                0xA => {}
                0x8 => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Msg::Close(code)));
                }
                0x0 => message
                    .as_mut()
                    .expect("a continuation after a first frame")
                    .1
                    .extend(payload),
                op => message = Some((op, payload)),
            }
            if fin && opcode <= 0x2 {
                let (op, data) = message.take().unwrap();
                return Ok(Some(match op {
                    0x1 => Msg::Text(String::from_utf8(data).unwrap()),
                    _ => Msg::Binary(data),
                }));
            }
        }
    }
}

/// What an exec session said until it ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The `Status` on the error channel (JSON), if one came.
    pub status: Option<serde_json::Value>,
    /// The close frame came (the connection was not just cut).
    pub closed: bool,
}

impl Outcome {
    /// The exit code the status says (0 for Success).
    pub fn exit_code(&self) -> Option<i32> {
        let s = self.status.as_ref()?;
        if s["status"] == "Success" {
            return Some(0);
        }
        let causes = s["details"]["causes"].as_array()?;
        causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    }
}

impl WsClient {
    /// The next message within `QUIET`; None at the end of the connection or on silence.
    pub async fn recv_quiet(&mut self) -> Option<Msg> {
        tokio::time::timeout(QUIET, self.recv()).await.ok()?.ok()?
    }

    /// Reads every message until the server closes, sorting them by channel.
    pub async fn outcome(&mut self) -> Outcome {
        let mut o = Outcome::default();
        while let Some(m) = self.recv_quiet().await {
            match m {
                Msg::Binary(b) if !b.is_empty() => match b[0] {
                    STDOUT => o.stdout.extend_from_slice(&b[1..]),
                    STDERR => o.stderr.extend_from_slice(&b[1..]),
                    ERROR => o.status = Some(serde_json::from_slice(&b[1..]).expect("a JSON Status")),
                    _ => {}
                },
                Msg::Close(_) => {
                    o.closed = true;
                    break;
                }
                _ => {}
            }
        }
        o
    }

    /// Reads stdout until it holds `needle` (or the session ends): what came.
    pub async fn stdout_until(&mut self, needle: &str) -> String {
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(needle) {
            match self.recv_quiet().await {
                Some(Msg::Binary(b)) if b.first() == Some(&STDOUT) => out.extend_from_slice(&b[1..]),
                Some(Msg::Binary(b)) => {
                    eprintln!("ws: channel {:?}: {:?}", b.first(), String::from_utf8_lossy(&b[1..]))
                }
                Some(Msg::Text(_)) => {}
                _ => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
