//! A SPDY/3.1 client for the CRI's streaming server, written from the SPDY/3 draft, RFC
//! 1950/1951 (zlib, deflate) and the Kubernetes channel protocol (`v4.channel.k8s.io`):
//! the upgrade, one stream per channel (SYN_STREAM with a `streamtype` header, waiting
//! for its SYN_REPLY), DATA frames, and header blocks compressed as a SPDY client does,
//! with the SPDY/3 dictionary: its own LZ77 over the dictionary and what it sent before,
//! in fixed-Huffman deflate blocks, each ended by a sync flush. The server's header
//! blocks are inflated with the dictionary too (miniz_oxide). Test code: shared by the
//! appliance tier and auraed's unit tests (`cri/stream/tests.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// SPDY/3's header dictionary, as the draft gives it: length-prefixed words, then text.
pub fn dictionary() -> Vec<u8> {
    let words = "options head post put delete trace accept accept-charset accept-encoding \
        accept-language accept-ranges age allow authorization cache-control connection \
        content-base content-encoding content-language content-length content-location \
        content-md5 content-range content-type date etag expect expires from host if-match \
        if-modified-since if-none-match if-range if-unmodified-since last-modified location \
        max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after \
        server te trailer transfer-encoding upgrade user-agent vary via warning \
        www-authenticate method get status";
    let mut d = Vec::new();
    let mut word = |w: &str| {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    };
    for w in words.split_whitespace() {
        word(w);
    }
    for w in [
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ] {
        word(w);
    }
    d.extend_from_slice(
        b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    d
}

pub fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u64, 0u64);
    for &x in bytes {
        a = (a + u64::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    ((b << 16) | a) as u32
}

/// Bits out, least significant first (RFC 1951 §3.1.1).
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.acc |= ((value >> i) & 1) << self.n;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                self.acc = 0;
                self.n = 0;
            }
        }
    }

    /// A Huffman code: its bits most significant first.
    fn code(&mut self, code: u32, len: u32) {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn align(&mut self) {
        if self.n > 0 {
            self.out.push(self.acc as u8);
            self.acc = 0;
            self.n = 0;
        }
    }
}

const LEN_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258,
];
const LEN_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u32; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];

/// A literal/length symbol in the fixed Huffman code (RFC 1951 §3.2.6).
fn fixed(bits: &mut Bits, sym: u32) {
    match sym {
        0..=143 => bits.code(0x30 + sym, 8),
        144..=255 => bits.code(0x190 + sym - 144, 9),
        256..=279 => bits.code(sym - 256, 7),
        _ => bits.code(0xC0 + sym - 280, 8),
    }
}

/// The client's header compressor: one zlib stream for the connection, primed with the
/// dictionary (FDICT), each block a fixed-Huffman block then a sync flush.
pub struct Deflater {
    window: Vec<u8>,
    started: bool,
    /// How many matches reached back into the dictionary (the test checks some did).
    pub dictionary_matches: usize,
}

impl Default for Deflater {
    fn default() -> Deflater {
        Deflater {
            window: dictionary(),
            started: false,
            dictionary_matches: 0,
        }
    }
}

impl Deflater {
    pub fn compress(&mut self, plain: &[u8]) -> Vec<u8> {
        let dict_len = dictionary().len();
        let mut out = Vec::new();
        if !self.started {
            out.extend_from_slice(&[0x78, 0xbb]);
            out.extend_from_slice(&adler32(&dictionary()).to_be_bytes());
            self.started = true;
        }
        let mut bits = Bits::default();
        bits.put(0, 1); // not the last block
        bits.put(1, 2); // fixed Huffman codes
        let base = self.window.len();
        self.window.extend_from_slice(plain);
        let mut i = 0;
        while i < plain.len() {
            let at = base + i;
            let (mut best_len, mut best_dist) = (0usize, 0usize);
            let from = at.saturating_sub(32768);
            for start in from..at {
                let mut l = 0;
                while l < 258 && at + l < self.window.len() && self.window[start + l] == self.window[at + l] {
                    l += 1;
                }
                if l > best_len {
                    best_len = l;
                    best_dist = at - start;
                }
            }
            if best_len >= 3 {
                if at - best_dist < dict_len {
                    self.dictionary_matches += 1;
                }
                let li = LEN_BASE.iter().rposition(|&b| b as usize <= best_len).unwrap();
                fixed(&mut bits, 257 + li as u32);
                bits.put(best_len as u32 - LEN_BASE[li], LEN_EXTRA[li]);
                let di = DIST_BASE.iter().rposition(|&b| b as usize <= best_dist).unwrap();
                bits.code(di as u32, 5);
                bits.put(best_dist as u32 - DIST_BASE[di], DIST_EXTRA[di]);
                i += best_len;
            } else {
                fixed(&mut bits, u32::from(plain[i]));
                i += 1;
            }
        }
        fixed(&mut bits, 256);
        // Sync flush: an empty stored block, byte-aligned.
        bits.put(0, 1);
        bits.put(0, 2);
        bits.align();
        out.extend_from_slice(&bits.out);
        out.extend_from_slice(&[0, 0, 0xff, 0xff]);
        out
    }
}

/// The server's header blocks, inflated with the dictionary in the window.
pub struct Inflater {
    d: Box<miniz_oxide::inflate::core::DecompressorOxide>,
    out: Vec<u8>,
    pos: usize,
    started: bool,
}

impl Default for Inflater {
    fn default() -> Inflater {
        let d = dictionary();
        Inflater {
            d: Box::default(),
            pos: d.len(),
            out: d,
            started: false,
        }
    }
}

impl Inflater {
    pub fn inflate(&mut self, mut block: &[u8]) -> Vec<u8> {
        use miniz_oxide::inflate::core::{decompress, inflate_flags as f};
        use miniz_oxide::inflate::TINFLStatus;
        if !self.started {
            assert_eq!(block[0] & 0x0f, 8, "deflate");
            assert_eq!((u16::from(block[0]) << 8 | u16::from(block[1])) % 31, 0, "FCHECK");
            let dict = block[1] & 0x20 != 0;
            block = &block[if dict { 6 } else { 2 }..];
            self.started = true;
        }
        let start = self.pos;
        loop {
            self.out.resize(self.pos + 8192, 0);
            let flags = f::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | f::TINFL_FLAG_HAS_MORE_INPUT;
            let (status, used, made) = decompress(&mut self.d, block, &mut self.out, self.pos, flags);
            block = &block[used..];
            self.pos += made;
            match status {
                TINFLStatus::NeedsMoreInput if block.is_empty() => break,
                TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => {}
                other => panic!("the server's header block does not inflate: {other:?}"),
            }
        }
        self.out[start..self.pos].to_vec()
    }
}

/// A SPDY/3 header block's plain form.
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = (headers.len() as u32).to_be_bytes().to_vec();
    for (n, v) in headers {
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x03];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// What arrived on the connection.
#[derive(Debug)]
pub enum Event {
    Data { stream: u32, fin: bool, data: Vec<u8> },
    Reply { stream: u32, headers: Vec<u8> },
    Reset { stream: u32, status: u32 },
    GoAway,
    Other(u16),
}

pub struct SpdyClient {
    conn: TcpStream,
    pub deflater: Deflater,
    inflater: Inflater,
    next: u32,
    /// What arrived while waiting for something else.
    backlog: Vec<Event>,
    /// Stream kind → id.
    pub streams: HashMap<String, u32>,
}

/// Why the server refused the upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl SpdyClient {
    /// Upgrades a connection to `addr` for `path` with `protocols` offered.
    pub async fn connect(addr: &str, path: &str, protocols: &[&str]) -> Result<SpdyClient, Refused> {
        let mut conn = TcpStream::connect(addr).await.expect("connect to the streaming server");
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
        for p in protocols {
            req += &format!("X-Stream-Protocol-Version: {p}\r\n");
        }
        req += "Content-Length: 0\r\n\r\n";
        conn.write_all(req.as_bytes()).await.unwrap();
        let (status, text) = super::ws::read_head(&mut conn).await;
        if status != 101 {
            let mut body = String::new();
            let _ = conn.read_to_string(&mut body).await;
            return Err(Refused { status, body });
        }
        assert!(text.to_ascii_lowercase().contains("upgrade: spdy/3.1"), "{text}");
        Ok(SpdyClient {
            conn,
            deflater: Deflater::default(),
            inflater: Inflater::default(),
            next: 1,
            backlog: Vec::new(),
            streams: HashMap::new(),
        })
    }

    /// The next frame (None at the end of the connection).
    pub async fn event(&mut self) -> Option<Event> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        let mut h = [0u8; 8];
        tokio::time::timeout(super::ws::QUIET, self.conn.read_exact(&mut h))
            .await
            .ok()?
            .ok()?;
        let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
        let mut body = vec![0u8; len];
        self.conn.read_exact(&mut body).await.ok()?;
        let id = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
        if h[0] & 0x80 == 0 {
            return Some(Event::Data {
                stream: id(&h),
                fin: h[4] & 1 != 0,
                data: body,
            });
        }
        assert_eq!(u16::from_be_bytes([h[0], h[1]]) & 0x7fff, 3, "SPDY/3 frames");
        Some(match u16::from_be_bytes([h[2], h[3]]) {
            2 => Event::Reply {
                stream: id(&body),
                headers: self.inflater.inflate(&body[4..]),
            },
            3 => Event::Reset {
                stream: id(&body),
                status: id(&body[4..]),
            },
            6 => {
                // A ping from the server: answered with the same id.
                let pong = control(6, 0, &body);
                self.conn.write_all(&pong).await.ok()?;
                Event::Other(6)
            }
            7 => Event::GoAway,
            k => Event::Other(k),
        })
    }

    /// Opens a stream of `kind` (its `streamtype`) and waits for the server's reply.
    pub async fn open(&mut self, kind: &str) -> u32 {
        let id = self
            .open_with(&[("streamtype", kind)])
            .await
            .unwrap_or_else(|status| panic!("stream {kind} reset: {status}"));
        self.streams.insert(kind.to_owned(), id);
        id
    }

    /// Opens a stream with `headers`: its id once the server replied, or the status it
    /// reset it with.
    pub async fn open_with(&mut self, headers: &[(&str, &str)]) -> Result<u32, u32> {
        let id = self.next;
        self.next += 2;
        let block = self.deflater.compress(&header_block(headers));
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes()); // associated-to
        body.extend_from_slice(&[0, 0]); // priority, slot
        body.extend_from_slice(&block);
        self.conn.write_all(&control(1, 0, &body)).await.unwrap();
        let mut waiting = Vec::new();
        let answer = loop {
            match self.event().await.expect("the reply to a new stream") {
                Event::Reply { stream, headers } if stream == id => {
                    assert_eq!(&headers[..4], &[0, 0, 0, 0][..], "a reply with no headers");
                    break Ok(id);
                }
                Event::Reset { stream, status } if stream == id => break Err(status),
                other => waiting.push(other),
            }
        };
        self.backlog.extend(waiting);
        answer
    }

    /// port-forward: the error and data streams of one connection to `port`.
    pub async fn forward(&mut self, port: u16, request: u32) -> Result<(u32, u32), u32> {
        let (p, r) = (port.to_string(), request.to_string());
        let error = self
            .open_with(&[("streamtype", "error"), ("port", &p), ("requestid", &r)])
            .await?;
        let data = self
            .open_with(&[("streamtype", "data"), ("port", &p), ("requestid", &r)])
            .await?;
        Ok((error, data))
    }

    /// Sends `bytes` on stream `id`, with its FIN if `fin`.
    pub async fn send_on(&mut self, id: u32, bytes: &[u8], fin: bool) {
        let mut f = id.to_be_bytes().to_vec();
        f.push(u8::from(fin));
        f.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(bytes);
        self.conn.write_all(&f).await.unwrap();
    }

    /// Reads until each of `streams` has its FIN (or the session ends): what each carried.
    pub async fn until_fin(&mut self, streams: &[u32]) -> HashMap<u32, Vec<u8>> {
        let mut got: HashMap<u32, Vec<u8>> = streams.iter().map(|s| (*s, Vec::new())).collect();
        let mut open: Vec<u32> = streams.to_vec();
        while !open.is_empty() {
            match self.event().await {
                Some(Event::Data { stream, fin, data }) if got.contains_key(&stream) => {
                    got.get_mut(&stream).unwrap().extend_from_slice(&data);
                    if fin {
                        open.retain(|s| *s != stream);
                    }
                }
                Some(Event::GoAway) | None => break,
                Some(_) => {}
            }
        }
        got
    }

    /// Opens the streams an exec with these options needs, error first, as clients do.
    pub async fn open_exec(&mut self, stdin: bool, tty: bool) {
        self.open("error").await;
        if stdin {
            self.open("stdin").await;
        }
        self.open("stdout").await;
        if !tty {
            self.open("stderr").await;
        }
        if tty {
            self.open("resize").await;
        }
    }

    pub async fn send(&mut self, kind: &str, bytes: &[u8], fin: bool) {
        let id = self.streams[kind];
        self.send_on(id, bytes, fin).await;
    }

    /// A new terminal size on the resize stream, as a JSON value of its own.
    pub async fn resize(&mut self, width: u16, height: u16) {
        let json = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        self.send("resize", json.as_bytes(), false).await;
    }

    /// Reads until the server goes away: stdout, stderr and the error stream's status.
    pub async fn outcome(&mut self) -> super::ws::Outcome {
        let (out, err, error) = (
            self.streams.get("stdout").copied(),
            self.streams.get("stderr").copied(),
            self.streams["error"],
        );
        let mut o = super::ws::Outcome::default();
        let mut status = Vec::new();
        while let Some(e) = self.event().await {
            match e {
                Event::Data { stream, data, .. } if Some(stream) == out => o.stdout.extend_from_slice(&data),
                Event::Data { stream, data, .. } if Some(stream) == err => o.stderr.extend_from_slice(&data),
                Event::Data { stream, data, .. } if stream == error => status.extend_from_slice(&data),
                Event::GoAway => {
                    o.closed = true;
                    break;
                }
                _ => {}
            }
        }
        if !status.is_empty() {
            o.status = Some(serde_json::from_slice(&status).expect("a JSON Status"));
        }
        o
    }

    /// Reads stdout until it holds `needle` (or the session ends): what came.
    pub async fn stdout_until(&mut self, needle: &str) -> String {
        let out = self.streams["stdout"];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(needle) {
            match self.event().await {
                Some(Event::Data { stream, data, .. }) if stream == out => got.extend_from_slice(&data),
                Some(Event::GoAway) | None => break,
                Some(_) => {}
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}
