//! The HTTP/1.1 request a streaming connection opens with (its request line and headers,
//! read whole before anything else), and the plain answers that refuse one.

use super::Refusal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most a request line and its headers may be.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;

/// A request's path, query and headers (names lower-cased).
#[derive(Debug, Default)]
pub struct Head {
    pub path: String,
    /// What follows `?`, if anything.
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The value of header `name` (lower-case), the first if there are several.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether comma-separated header `name` lists `token` (case-insensitive).
    pub fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Parses a request head (through the blank line); None while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            if req.method != Some("GET") && req.method != Some("POST") {
                return Err(Refusal::new(
                    405,
                    "a streaming session opens with GET (or POST) and an Upgrade",
                ));
            }
            let (path, query) = match req.path.unwrap_or_default().split_once('?') {
                Some((p, q)) => (p.to_owned(), q.to_owned()),
                None => (req.path.unwrap_or_default().to_owned(), String::new()),
            };
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).trim().to_owned(),
                    )
                })
                .collect();
            Ok(Some(Head { path, query, headers }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::new(431, format!("more than {MAX_HEADERS} headers"))),
        Err(e) => Err(Refusal::new(400, format!("not an HTTP/1.1 request: {e}"))),
    }
}

/// Reads the request head; nothing after it is read (the client waits for the answer).
pub async fn read_head(conn: &mut tokio::net::TcpStream) -> Result<Head, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        // Byte by byte past what was read would be slow; a client sends nothing after the
        // head before the answer, so reading in chunks takes no more than the head.
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| Refusal::new(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Refusal::new(400, "the connection closed before the request ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = parse(&buf)? {
            return Ok(h);
        }
        if buf.len() > MAX_HEAD {
            return Err(Refusal::new(431, format!("the request head is over {MAX_HEAD} bytes")));
        }
    }
}

pub async fn write_all(conn: &mut tokio::net::TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    conn.write_all(bytes).await?;
    conn.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Error",
    }
}

/// The answer refusing a request: its status and the words, as plain text, then close.
pub fn refusal(r: &Refusal) -> String {
    let body = format!("{}\n", r.why);
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        r.status,
        reason(r.status),
        body.len()
    )
}

pub async fn refuse(conn: &mut tokio::net::TcpStream, r: &Refusal) {
    let _ = write_all(conn, refusal(r).as_bytes()).await;
    let _ = conn.shutdown().await;
}
