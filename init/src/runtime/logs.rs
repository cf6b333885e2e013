//! A workload's log: timestamped lines from its stdout and stderr in a bounded buffer.
//! When full, the oldest lines go and are counted; every line has a sequence number, so a
//! reader that falls behind learns exactly how many it missed. Readers never block the
//! pipes' reader task: they copy out under a short lock and wait on a watch channel.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// The memory a log may take, all of it counted: the line records, the bytes and what
/// the allocator adds to each.
pub const DEFAULT_CAPACITY: usize = 8 << 20;
/// Longer lines are split.
pub const MAX_LINE: usize = 16 << 10;
/// What the allocator adds to each line's bytes: a header, and rounding to 16 bytes.
const ALLOC_OVERHEAD: usize = 16;
/// At most one line per this many bytes of capacity: the record ring (48 bytes a slot,
/// allocated for the most lines it ever held) stays a fixed, small share of the capacity.
const BYTES_PER_RECORD: usize = 512;

/// What one line's bytes take on the heap.
fn heap_cost(len: usize) -> usize {
    len.div_ceil(16) * 16 + ALLOC_OVERHEAD
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Console,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub seq: u64,
    pub unix_nanos: i64,
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

struct Inner {
    lines: VecDeque<Line>,
    /// Sequence number of the next line to be pushed.
    next_seq: u64,
    /// Heap taken by the kept lines' bytes (`heap_cost` of each).
    bytes: usize,
    open_writers: u32,
}

pub struct LogBuffer {
    inner: Mutex<Inner>,
    /// Heap the kept lines' bytes may take: the capacity less the record ring at its largest.
    byte_budget: usize,
    /// Most lines kept at once.
    max_lines: usize,
    /// Bumped on every push and when the last writer closes.
    changed: watch::Sender<u64>,
}

/// A batch for a reader: lines from its cursor on, and how many it lost before them.
#[derive(Debug, Default)]
pub struct Batch {
    pub dropped: u64,
    pub lines: Vec<Line>,
    /// True when no more lines can ever arrive.
    pub closed: bool,
}

pub fn now_unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl LogBuffer {
    /// A buffer whose memory, all counted, stays within `capacity` bytes.
    pub fn new(capacity: usize, writers: u32) -> LogBuffer {
        // A power of two: the ring grows by doubling, so it never has more slots than this.
        let lines = (capacity / BYTES_PER_RECORD).max(1);
        let max_lines = 1 << (usize::BITS - 1 - lines.leading_zeros());
        let byte_budget = capacity.saturating_sub(max_lines * std::mem::size_of::<Line>());
        LogBuffer::with_limits(byte_budget, max_lines, writers)
    }

    fn with_limits(byte_budget: usize, max_lines: usize, writers: u32) -> LogBuffer {
        LogBuffer {
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                next_seq: 0,
                bytes: 0,
                open_writers: writers,
            }),
            byte_budget,
            max_lines,
            changed: watch::channel(0).0,
        }
    }

    /// The heap this buffer holds now, as the allocator sees it: the record ring (every
    /// slot it has) and each kept line's bytes (their capacity, rounded, plus a header).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        let g = self.lock();
        g.lines.capacity() * std::mem::size_of::<Line>()
            + g.lines.iter().map(|l| heap_cost(l.bytes.capacity())).sum::<usize>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, stream: Stream, mut bytes: Vec<u8>) {
        // A piece split off a longer line, or a line read into a growing buffer, may carry
        // far more capacity than bytes: keep only the bytes.
        bytes.shrink_to_fit();
        let seq = {
            let mut g = self.lock();
            let cost = heap_cost(bytes.capacity());
            while g.bytes + cost > self.byte_budget || g.lines.len() >= self.max_lines {
                match g.lines.pop_front() {
                    Some(old) => g.bytes -= heap_cost(old.bytes.capacity()),
                    None => break,
                }
            }
            let seq = g.next_seq;
            g.next_seq += 1;
            g.bytes += cost;
            g.lines.push_back(Line {
                seq,
                unix_nanos: now_unix_nanos(),
                stream,
                bytes,
            });
            seq
        };
        self.changed.send_replace(seq + 1);
    }

    /// A writer (a pipe) reached EOF.
    pub fn close_writer(&self) {
        let mut g = self.lock();
        g.open_writers = g.open_writers.saturating_sub(1);
        drop(g);
        self.changed.send_modify(|v| *v = v.wrapping_add(0));
    }

    /// Where a reader starts: the very first line ever written, or `tail` lines before the
    /// end. Lines no longer held between there and the oldest kept line are reported as
    /// dropped by the first `read`, so a reader always learns what it missed.
    pub fn start_cursor(&self, tail: Option<u64>) -> u64 {
        match tail {
            Some(n) => self.lock().next_seq.saturating_sub(n),
            None => 0,
        }
    }

    /// The cursor just past the newest line.
    pub fn end_cursor(&self) -> u64 {
        self.lock().next_seq
    }

    /// Up to `max` lines from `cursor` on; advances the cursor.
    pub fn read(&self, cursor: &mut u64, max: usize) -> Batch {
        let g = self.lock();
        let first = g.lines.front().map_or(g.next_seq, |l| l.seq);
        let dropped = first.saturating_sub(*cursor);
        let from = (*cursor).max(first);
        let skip = (from - first) as usize;
        let lines: Vec<Line> = g.lines.iter().skip(skip).take(max).cloned().collect();
        *cursor = from + lines.len() as u64;
        Batch {
            dropped,
            closed: g.open_writers == 0 && *cursor >= g.next_seq,
            lines,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Reads a pipe to EOF, splitting it into lines. Runs as a tokio task; a flood only fills
/// the bounded buffer, and the pipe's writer waits when the kernel pipe is full.
pub async fn pump(mut pipe: tokio::net::unix::pipe::Receiver, buf: std::sync::Arc<LogBuffer>, stream: Stream) {
    let mut chunk = vec![0u8; 64 << 10];
    let mut partial: Vec<u8> = Vec::new();
    // The unfinished line went out in MAX_LINE pieces: its newline ends it, adding nothing.
    let mut continued = false;
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &chunk[..n];
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            partial.extend_from_slice(&rest[..i]);
            if !(continued && partial.is_empty()) {
                push_split(&buf, stream, std::mem::take(&mut partial));
            }
            continued = false;
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
        // An unfinished line is held back only up to MAX_LINE: the rest goes out now.
        while partial.len() >= MAX_LINE {
            let tail = partial.split_off(MAX_LINE);
            buf.push(stream, std::mem::replace(&mut partial, tail));
            continued = true;
        }
    }
    if !partial.is_empty() {
        buf.push(stream, partial);
    }
    buf.close_writer();
}

/// Pushes one complete line as pieces of at most MAX_LINE bytes.
fn push_split(buf: &LogBuffer, stream: Stream, mut line: Vec<u8>) {
    while line.len() > MAX_LINE {
        let tail = line.split_off(MAX_LINE);
        buf.push(stream, std::mem::replace(&mut line, tail));
    }
    buf.push(stream, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_and_counts_exactly() {
        // Ten 4-byte lines fit; an eleventh does not.
        let b = LogBuffer::with_limits(10 * heap_cost(4), 64, 1);
        for i in 0..25u32 {
            b.push(Stream::Stdout, format!("{i:04}").into_bytes());
        }
        let mut from_start = b.start_cursor(None);
        assert_eq!(from_start, 0);
        let batch = b.read(&mut from_start, 100);
        assert_eq!(
            batch.dropped, 15,
            "a reader from the start learns what went before it came"
        );
        assert_eq!(batch.lines.len(), 10);
        assert_eq!(batch.lines[0].bytes, b"0015");
        assert!(!batch.closed);
        let mut tail = b.start_cursor(Some(12));
        let batch = b.read(&mut tail, 100);
        assert_eq!((batch.dropped, batch.lines.len()), (2, 10), "2 of the last 12 are gone");
        let mut cur = 15;
        b.close_writer();
        let batch = b.read(&mut cur, 3);
        assert_eq!((batch.dropped, batch.lines.len(), batch.closed), (0, 3, false));
        let batch = b.read(&mut cur, 100);
        assert_eq!((batch.lines.len(), batch.closed), (7, true));
    }

    #[test]
    fn the_memory_held_stays_within_the_capacity_whatever_the_lines() {
        const CAP: usize = 1 << 20;
        // One-byte lines (the most records), then long lines cut in pieces from a larger
        // allocation (the most spare capacity), then a mix.
        let b = LogBuffer::new(CAP, 1);
        for _ in 0..200_000 {
            b.push(Stream::Stdout, vec![b'x']);
        }
        assert!(b.held_bytes() <= CAP, "{} > {CAP}", b.held_bytes());
        assert_eq!(
            b.end_cursor() - b.lock().lines.front().unwrap().seq,
            2048,
            "a line per 512 bytes"
        );
        for _ in 0..100 {
            let mut big = Vec::with_capacity(4 * MAX_LINE);
            big.resize(3 * MAX_LINE, b'y');
            push_split(&b, Stream::Stdout, big);
        }
        assert!(b.held_bytes() <= CAP, "{} > {CAP}", b.held_bytes());
        for i in 0..50_000usize {
            b.push(Stream::Stderr, vec![b'z'; i % 700]);
        }
        assert!(b.held_bytes() <= CAP, "{} > {CAP}", b.held_bytes());
        assert!(b.held_bytes() > CAP / 2, "and the capacity is used: {}", b.held_bytes());
    }

    #[test]
    fn tail_starts_near_the_end() {
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1);
        for i in 0..5u8 {
            b.push(Stream::Stderr, vec![b'0' + i]);
        }
        let mut cur = b.start_cursor(Some(2));
        let batch = b.read(&mut cur, 10);
        assert_eq!(batch.lines.iter().map(|l| l.bytes[0]).collect::<Vec<_>>(), b"34");
    }

    async fn pumped(writes: &[&[u8]]) -> Vec<Vec<u8>> {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let b = std::sync::Arc::new(LogBuffer::new(DEFAULT_CAPACITY, 1));
        let task = tokio::spawn(pump(rx, b.clone(), Stream::Stdout));
        {
            use tokio::io::AsyncWriteExt;
            let mut tx = tx;
            for w in writes {
                tx.write_all(w).await.unwrap();
            }
        }
        task.await.unwrap();
        let mut cur = 0;
        b.read(&mut cur, 1000).lines.into_iter().map(|l| l.bytes).collect()
    }

    #[tokio::test]
    async fn no_line_is_longer_than_max_line_however_it_arrives() {
        // One 40 000-byte line and its newline in a single write (as `dd bs=64k` does).
        let mut one = vec![b'x'; 40_000];
        one.push(b'\n');
        one.extend_from_slice(b"next\n");
        let got = pumped(&[&one]).await;
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 40_000 - 2 * MAX_LINE, 4]);
        assert_eq!(got[3], b"next");
        // The same line in pieces, and one exactly MAX_LINE long: never an empty piece.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let got = pumped(&[&one[..10_000], &one[10_000..], &exact]).await;
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 40_000 - 2 * MAX_LINE, 4, MAX_LINE]);
    }

    #[tokio::test]
    async fn pump_splits_lines_and_flushes_the_last_partial_one() {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let b = std::sync::Arc::new(LogBuffer::new(DEFAULT_CAPACITY, 1));
        let task = tokio::spawn(pump(rx, b.clone(), Stream::Stdout));
        {
            use tokio::io::AsyncWriteExt;
            let mut tx = tx;
            tx.write_all(b"one\ntwo\nthr").await.unwrap();
            tx.write_all(b"ee").await.unwrap();
        }
        task.await.unwrap();
        let mut cur = 0;
        let batch = b.read(&mut cur, 10);
        let got: Vec<_> = batch
            .lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect();
        assert_eq!(got, ["one", "two", "three"]);
        assert!(batch.closed);
    }
}
