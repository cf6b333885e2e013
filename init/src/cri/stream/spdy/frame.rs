//! SPDY/3 framing (draft 3, §2.2): control and data frames, header blocks and their zlib
//! compression with SPDY's dictionary.

use std::sync::OnceLock;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

/// Why a frame could not be read: the connection broke, or the client broke the protocol.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Broken(pub String);

impl From<&str> for Broken {
    fn from(s: &str) -> Broken {
        Broken(s.to_owned())
    }
}

impl From<String> for Broken {
    fn from(s: String) -> Broken {
        Broken(s)
    }
}

/// The most one frame may carry.
const MAX_FRAME: usize = 1 << 20;
/// The most one header block may hold, inflated.
const MAX_HEADERS: usize = 64 * 1024;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 1;

/// SPDY/3's header dictionary (draft 3, §2.6.10.1): length-prefixed header names and
/// values, then common status lines, dates and media types.
pub fn dictionary() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &[&str] = &[
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        for t in TAIL {
            d.extend_from_slice(t.as_bytes());
        }
        d
    })
}

/// zlib's Adler-32 (RFC 1950 §8.2): how a zlib stream names its preset dictionary.
pub fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// One frame as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream: u32,
    },
    Ping(u32),
    GoAway,
    /// Anything else (SETTINGS, WINDOW_UPDATE, HEADERS, NOOP): nothing to do.
    Other,
}

/// The client's header blocks, inflated with the dictionary: one zlib stream for the whole
/// connection, each block ending on a sync flush. The output buffer is the window, primed
/// with the dictionary and slid back to its last 32 KiB between blocks.
pub struct Inflater {
    d: Box<miniz_oxide::inflate::core::DecompressorOxide>,
    out: Vec<u8>,
    pos: usize,
    started: bool,
}

const WINDOW: usize = 32 * 1024;

impl Default for Inflater {
    fn default() -> Inflater {
        let dict = dictionary();
        Inflater {
            d: Box::default(),
            out: dict.to_vec(),
            pos: dict.len(),
            started: false,
        }
    }
}

impl Inflater {
    pub fn inflate(&mut self, mut block: &[u8]) -> Result<Vec<u8>, Broken> {
        use miniz_oxide::inflate::core::{decompress, inflate_flags as f};
        use miniz_oxide::inflate::TINFLStatus;
        if !self.started {
            let (cmf, flg) = match block {
                [c, g, ..] => (*c, *g),
                _ => return Err("a header block too short for its zlib header".into()),
            };
            if cmf & 0x0f != 8 || cmf >> 4 > 7 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
                return Err("not a zlib stream".into());
            }
            block = &block[2..];
            if flg & 0x20 != 0 {
                let id = block.get(..4).ok_or("a header block too short for its dictionary id")?;
                if u32::from_be_bytes([id[0], id[1], id[2], id[3]]) != adler32(dictionary()) {
                    return Err("compressed with a dictionary other than SPDY/3's".into());
                }
                block = &block[4..];
            }
            self.started = true;
        }
        let start = self.pos;
        loop {
            if self.out.len() < self.pos + 4096 {
                self.out.resize(self.pos + 16 * 1024, 0);
            }
            let flags = f::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | f::TINFL_FLAG_HAS_MORE_INPUT;
            let (status, used, made) = decompress(&mut self.d, block, &mut self.out, self.pos, flags);
            block = &block[used..];
            self.pos += made;
            if self.pos - start > MAX_HEADERS {
                return Err(format!("a header block over {MAX_HEADERS} bytes").into());
            }
            match status {
                TINFLStatus::NeedsMoreInput if block.is_empty() => break,
                TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => continue,
                other => return Err(format!("a header block that does not inflate ({other:?})").into()),
            }
        }
        let inflated = self.out[start..self.pos].to_vec();
        if self.pos > 4 * WINDOW {
            self.out.drain(..self.pos - WINDOW);
            self.pos = WINDOW;
            self.out.truncate(WINDOW);
        }
        Ok(inflated)
    }
}

/// A header block's name/value pairs (SPDY/3: a count, then length-prefixed names and
/// values, all 32-bit big-endian lengths); names lower-cased.
pub fn parse_headers(b: &[u8]) -> Result<Vec<(String, String)>, Broken> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], Broken> {
        if b.len() < n {
            return Err("a header block ends early".into());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, Broken> {
        let x = take(b, 4)?;
        Ok(u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    }
    let mut b = b;
    let n = u32_of(&mut b)?;
    if n > 64 {
        return Err(format!("{n} headers; at most 64").into());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32_of(&mut b)?;
        let name = String::from_utf8_lossy(take(&mut b, len)?).to_ascii_lowercase();
        let len = u32_of(&mut b)?;
        let value = String::from_utf8_lossy(take(&mut b, len)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A DATA frame.
pub fn data(stream: u32, fin: bool, bytes: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + bytes.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(bytes);
    f
}

/// What is sent: frames, their header blocks as zlib stored blocks.
#[derive(Default)]
pub struct Deflater {
    started: bool,
}

impl Deflater {
    /// A SYN_REPLY for `stream` with no headers.
    pub fn syn_reply(&mut self, stream: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&self.block(&[]));
        control(SYN_REPLY, 0, &body)
    }

    /// A SYN_STREAM opening `stream` with `headers` (what a client sends: the bench's).
    #[cfg(any(test, feature = "bench"))]
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        // No associated stream; priority 0, no slot.
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&self.block(headers));
        control(SYN_STREAM, 0, &body)
    }

    /// A header block: the count, then length-prefixed names and values, as one zlib
    /// stored block of the connection's stream.
    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (n, v) in headers {
            for s in [n, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 7);
        if !self.started {
            // zlib: deflate with a 32 KiB window, no dictionary, FCHECK right.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        // A stored block that does not end the stream: its header byte, LEN and NLEN.
        out.push(0);
        out.extend_from_slice(&(raw.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
        out.extend_from_slice(&raw);
        out
    }
}

pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut body = stream.to_be_bytes().to_vec();
    body.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

pub fn goaway(last: u32) -> Vec<u8> {
    let mut body = last.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &body)
}

/// Frames as read, in order, each `read_frame`'s answer; the last one is the end of the
/// connection or why it broke.
pub type Frames = tokio::sync::mpsc::Receiver<Result<Option<Frame>, Broken>>;

/// Reads `r`'s frames on a task of their own, so a session can wait on them beside other
/// things: a `read_frame` cut off half way (by the process's output arriving first) would
/// lose the rest of its frame. The task ends with the connection or when its frames are
/// no longer wanted.
pub fn read_frames(mut r: OwnedReadHalf, mut inflater: Inflater) -> (Frames, tokio::task::JoinHandle<()>) {
    let (tx, frames) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let f = read_frame(&mut r, &mut inflater).await;
            let end = !matches!(f, Ok(Some(_)));
            if tx.send(f).await.is_err() || end {
                break;
            }
        }
    });
    (frames, reader)
}

/// Reads one frame (None at the end of the connection).
pub async fn read_frame(r: &mut OwnedReadHalf, inflater: &mut Inflater) -> Result<Option<Frame>, Broken> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Broken(e.to_string())),
    }
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if len > MAX_FRAME {
        return Err(Broken(format!("a frame of {len} bytes; at most {MAX_FRAME}")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| Broken(e.to_string()))?;
    let fin = flags & FLAG_FIN != 0;
    if h[0] & 0x80 == 0 {
        let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff;
        return Ok(Some(Frame::Data {
            stream,
            fin,
            data: body,
        }));
    }
    let version = u16::from_be_bytes([h[0], h[1]]) & 0x7fff;
    if version != 3 {
        return Err(Broken(format!("SPDY version {version}; only 3 is served")));
    }
    let stream_id = |b: &[u8]| {
        b.get(..4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]) & 0x7fff_ffff)
    };
    Ok(Some(match u16::from_be_bytes([h[2], h[3]]) {
        SYN_STREAM => {
            let stream = stream_id(&body).ok_or("a SYN_STREAM too short")?;
            let block = body.get(10..).ok_or("a SYN_STREAM too short")?;
            let headers = parse_headers(&inflater.inflate(block)?)?;
            Frame::SynStream { stream, fin, headers }
        }
        RST_STREAM => Frame::RstStream {
            stream: stream_id(&body).ok_or("a RST_STREAM too short")?,
        },
        PING => Frame::Ping(stream_id(&body).ok_or("a PING too short")?),
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the bench's client sends is what the server reads: a SYN_STREAM's headers
    /// through the connection's zlib stream, across several frames, then DATA.
    #[tokio::test]
    async fn a_clients_frames_read_back() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut d = Deflater::default();
        c.write_all(&d.syn_stream(1, &[("streamtype", "error")])).await.unwrap();
        c.write_all(&d.syn_stream(3, &[("streamtype", "data"), ("port", "80")]))
            .await
            .unwrap();
        c.write_all(&data(3, true, b"GET /")).await.unwrap();
        drop(c);
        let (mut r, _w) = s.into_split();
        let mut i = Inflater::default();
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut i).await.unwrap() {
            got.push(f);
        }
        let h = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got,
            vec![
                Frame::SynStream {
                    stream: 1,
                    fin: false,
                    headers: h(&[("streamtype", "error")])
                },
                Frame::SynStream {
                    stream: 3,
                    fin: false,
                    headers: h(&[("streamtype", "data"), ("port", "80")])
                },
                Frame::Data {
                    stream: 3,
                    fin: true,
                    data: b"GET /".to_vec()
                },
            ]
        );
    }
}
