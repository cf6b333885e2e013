//! A workload's log: timestamped lines from its stdout and stderr in a bounded buffer.
//! When full, the oldest lines go and are counted; every line has a sequence number, so a
//! reader that falls behind learns exactly how many it missed. Readers never block the
//! pipes' reader task: they copy out under a short lock and wait on a watch channel.
//!
//! Every buffer of the node draws on one [`LogPool`]: all logs together stay within a
//! node-wide ceiling (they are all in PID 1). A buffer keeps itself within its fair share
//! of the pool (the pool over the live buffers, at most its own capacity), evicting its
//! oldest lines; a newcomer that finds the pool full trims the buffers above their share;
//! a line that still finds no room is dropped and counted like an evicted one. What a
//! buffer holds is counted as it really costs: the record ring's slots (all it ever
//! allocated) and each line's bytes as the allocator rounds them, so a flood of short
//! lines keeps as many as the memory holds, not a fixed number of lines.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// The memory one log may take, all of it counted: the line records, the bytes and what
/// the allocator adds to each.
pub const DEFAULT_CAPACITY: usize = 8 << 20;
/// Longer lines are split.
pub const MAX_LINE: usize = 16 << 10;
/// What the allocator adds to each line's bytes: a header, and rounding to 16 bytes.
const ALLOC_OVERHEAD: usize = 16;
/// A slot of the record ring.
const SLOT: usize = std::mem::size_of::<Line>();

/// What one line's bytes take on the heap.
fn heap_cost(len: usize) -> usize {
    len.div_ceil(16) * 16 + ALLOC_OVERHEAD
}

/// The node-wide ceiling on all logs: a sixteenth of the node's RAM, between 16 MiB and
/// 256 MiB.
pub fn node_budget(mem_bytes: u64) -> usize {
    usize::try_from(mem_bytes / 16)
        .unwrap_or(usize::MAX)
        .clamp(16 << 20, 256 << 20)
}

/// What every log of the node draws on.
pub struct LogPool {
    cap: usize,
    held: AtomicUsize,
    /// Live logs: counted as they are made and dropped, so a push learns its share
    /// without walking `buffers`.
    live: AtomicUsize,
    /// Bytes of lines evicted to make room, or never stored for want of it.
    dropped: std::sync::atomic::AtomicU64,
    /// The logs, for trimming; dead entries go when it is walked or grows.
    buffers: Mutex<Vec<Weak<LogBuffer>>>,
}

impl LogPool {
    pub fn new(cap: usize) -> Arc<LogPool> {
        Arc::new(LogPool {
            cap,
            held: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            dropped: Default::default(),
            buffers: Mutex::new(Vec::new()),
        })
    }

    /// The ceiling and what all logs hold now.
    pub fn usage(&self) -> (usize, usize) {
        (self.cap, self.held.load(Ordering::Relaxed))
    }

    /// Bytes of log lines lost so far: evicted for newer ones, or with no room at all.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lost(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn fair_share(&self) -> usize {
        self.cap / self.live.load(Ordering::Relaxed).max(1)
    }

    /// Takes `n` bytes when they fit.
    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                (h + n <= self.cap).then_some(h + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(n)));
    }

    /// Evicts the oldest lines of the buffers above `share` (not `me`, whose lock the
    /// caller may be about to take) down to it.
    fn trim_others(&self, share: usize, me: *const LogBuffer) {
        let others: Vec<Arc<LogBuffer>> = {
            let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
            b.retain(|w| w.strong_count() > 0);
            b.iter().filter_map(Weak::upgrade).collect()
        };
        for o in others.iter().filter(|o| !std::ptr::eq(Arc::as_ptr(o), me)) {
            // A buffer busy on another thread is left for its own next push.
            if let Ok(mut g) = o.inner.try_lock() {
                o.evict_to(&mut g, share, 0);
            }
        }
    }
}

/// A piece of output as a pipe gave it, for attached clients (`tap.rs`).
pub type Piece = (Stream, std::sync::Arc<[u8]>);

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
    /// A piece of a longer line: the next line of the stream continues it.
    pub partial: bool,
}

struct Inner {
    lines: VecDeque<Line>,
    /// Sequence number of the next line to be pushed.
    next_seq: u64,
    /// Heap taken by the kept lines' bytes (`heap_cost` of each).
    bytes: usize,
    /// What this buffer has taken from the pool: the ring's slots and `bytes`.
    taken: usize,
    open_writers: u32,
}

impl Inner {
    fn cost(&self) -> usize {
        self.lines.capacity() * SLOT + self.bytes
    }
}

pub struct LogBuffer {
    inner: Mutex<Inner>,
    /// Most this buffer may hold, all counted.
    capacity: usize,
    pool: Arc<LogPool>,
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

impl Drop for LogBuffer {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        self.pool.give(g.taken);
        self.pool.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LogBuffer {
    /// A buffer whose memory, all counted, stays within `capacity` bytes and its share of
    /// `pool`.
    pub fn new(capacity: usize, writers: u32, pool: &Arc<LogPool>) -> Arc<LogBuffer> {
        let b = Arc::new(LogBuffer {
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                next_seq: 0,
                bytes: 0,
                taken: 0,
                open_writers: writers,
            }),
            capacity,
            pool: pool.clone(),
            changed: watch::channel(0).0,
        });
        pool.live.fetch_add(1, Ordering::Relaxed);
        let mut all = pool.buffers.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&b));
        drop(all);
        b
    }

    /// The heap this buffer holds now, as the allocator sees it: the record ring (every
    /// slot it has) and each kept line's bytes (their capacity, rounded, plus a header).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        let g = self.lock();
        g.lines.capacity() * SLOT + g.lines.iter().map(|l| heap_cost(l.bytes.capacity())).sum::<usize>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings what `g` has taken from the pool in line with what it costs now.
    fn settle(&self, g: &mut Inner) {
        let now = g.cost();
        if now > g.taken {
            // Only ever called after `take` made room for the growth.
            self.pool.held.fetch_add(now - g.taken, Ordering::Relaxed);
        } else {
            self.pool.give(g.taken - now);
        }
        g.taken = now;
    }

    /// Evicts the oldest lines until the buffer and `extra` more bytes cost at most
    /// `share`; shrinks a ring that stayed four times larger than its lines need.
    fn evict_to(&self, g: &mut Inner, share: usize, extra: usize) {
        while g.cost() + extra > share {
            match g.lines.pop_front() {
                Some(old) => {
                    g.bytes -= heap_cost(old.bytes.capacity());
                    self.pool.lost(old.bytes.len());
                }
                None => break,
            }
        }
        if g.lines.capacity() > 4 * g.lines.len() + 16 {
            g.lines.shrink_to(2 * g.lines.len() + 16);
        }
        self.settle(g);
    }

    /// Pushes a whole line.
    pub fn push(&self, stream: Stream, bytes: Vec<u8>) {
        self.push_piece(stream, bytes, false)
    }

    /// Pushes a line, or with `partial` a piece of one that the next piece continues.
    pub fn push_piece(&self, stream: Stream, mut bytes: Vec<u8>, partial: bool) {
        // A piece split off a longer line, or a line read into a growing buffer, may carry
        // far more capacity than bytes: keep only the bytes.
        bytes.shrink_to_fit();
        let share = self.capacity.min(self.pool.fair_share());
        let seq = {
            let mut g = self.lock();
            let cost = heap_cost(bytes.capacity());
            // The ring doubles when full: its growth is part of this line's cost.
            let growth = |g: &Inner| match g.lines.len() == g.lines.capacity() {
                true => g.lines.capacity().max(4) * SLOT,
                false => 0,
            };
            let extra = cost + growth(&g);
            self.evict_to(&mut g, share, extra);
            let mut need = cost + growth(&g);
            if !self.pool.take(need) {
                drop(g);
                self.pool.trim_others(share, self);
                g = self.lock();
                need = cost + growth(&g);
                if !self.pool.take(need) {
                    // No room anywhere: this line is dropped, and counted as lost.
                    self.pool.lost(bytes.len());
                    let seq = g.next_seq;
                    g.next_seq += 1;
                    drop(g);
                    self.changed.send_replace(seq + 1);
                    return;
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
                partial,
            });
            // What was taken covers the growth; settle to what it really is.
            g.taken += need;
            self.settle(&mut g);
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

    /// No writer is left: nothing more can come.
    pub fn writers_closed(&self) -> bool {
        self.lock().open_writers == 0
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

/// What a process's output is read from: a pipe, or its terminal's master.
pub enum Source {
    Pipe(tokio::net::unix::pipe::Receiver),
    Tty(std::sync::Arc<crate::os::tty::AsyncTty>),
}

impl From<tokio::net::unix::pipe::Receiver> for Source {
    fn from(p: tokio::net::unix::pipe::Receiver) -> Source {
        Source::Pipe(p)
    }
}

impl Source {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Pipe(p) => p.read(buf).await,
            // EIO once every holder of the terminal's other end has gone: its end.
            Source::Tty(m) => m.read(buf).await,
        }
    }
}

/// Reads a pipe (or a terminal) to its end, splitting it into lines. Runs as a tokio task;
/// a flood only fills the bounded buffer, and the writer waits when the kernel's buffer is
/// full.
pub async fn pump(
    source: impl Into<Source>,
    buf: std::sync::Arc<LogBuffer>,
    stream: Stream,
    tap: Option<tokio::sync::broadcast::Sender<Piece>>,
) {
    let mut source = source.into();
    let mut chunk = vec![0u8; 64 << 10];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match source.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Attached clients get it as it came, before the logs (whose end they wait for).
        if let Some(t) = &tap {
            if t.receiver_count() > 0 {
                let _ = t.send((stream, std::sync::Arc::from(&chunk[..n])));
            }
        }
        let mut rest = &chunk[..n];
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            partial.extend_from_slice(&rest[..i]);
            push_split(&buf, stream, std::mem::take(&mut partial));
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
        // An unfinished line is held back only up to MAX_LINE: a piece goes out once more
        // bytes are known to follow it, marked as continued, so a line exactly MAX_LINE
        // long is never mistaken for a piece.
        while partial.len() > MAX_LINE {
            let tail = partial.split_off(MAX_LINE);
            buf.push_piece(stream, std::mem::replace(&mut partial, tail), true);
        }
    }
    if !partial.is_empty() {
        buf.push(stream, partial);
    }
    buf.close_writer();
}

/// Pushes one complete line as pieces of at most MAX_LINE bytes, all but the last marked
/// as continued.
fn push_split(buf: &LogBuffer, stream: Stream, mut line: Vec<u8>) {
    while line.len() > MAX_LINE {
        let tail = line.split_off(MAX_LINE);
        buf.push_piece(stream, std::mem::replace(&mut line, tail), true);
    }
    buf.push(stream, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Arc<LogPool> {
        LogPool::new(1 << 30)
    }

    #[test]
    fn drops_oldest_and_counts_exactly() {
        // A buffer with room for a few 4-byte lines, in a roomy pool.
        let b = LogBuffer::new(16 * SLOT + 10 * heap_cost(4), 1, &pool());
        for i in 0..25u32 {
            b.push(Stream::Stdout, format!("{i:04}").into_bytes());
        }
        let mut from_start = b.start_cursor(None);
        assert_eq!(from_start, 0);
        let batch = b.read(&mut from_start, 100);
        let kept = batch.lines.len() as u64;
        assert!((4..25).contains(&kept), "{kept}");
        assert_eq!(
            batch.dropped,
            25 - kept,
            "a reader from the start learns what went before it came"
        );
        assert_eq!(batch.lines[0].bytes, format!("{:04}", 25 - kept).into_bytes());
        assert!(!batch.closed);
        let mut tail = b.start_cursor(Some(kept + 2));
        let batch = b.read(&mut tail, 100);
        assert_eq!(
            (batch.dropped, batch.lines.len() as u64),
            (2, kept),
            "2 of the last are gone"
        );
        let mut cur = 25 - kept;
        b.close_writer();
        let batch = b.read(&mut cur, 3);
        assert_eq!((batch.dropped, batch.lines.len(), batch.closed), (0, 3, false));
        let batch = b.read(&mut cur, 100);
        assert_eq!((batch.lines.len() as u64, batch.closed), (kept - 3, true));
    }

    #[test]
    fn the_memory_held_stays_within_the_capacity_whatever_the_lines() {
        const CAP: usize = 1 << 20;
        // One-byte lines (the most records), then long lines cut in pieces from a larger
        // allocation (the most spare capacity), then a mix.
        let p = pool();
        let b = LogBuffer::new(CAP, 1, &p);
        for _ in 0..200_000 {
            b.push(Stream::Stdout, vec![b'x']);
        }
        assert!(b.held_bytes() <= CAP, "{} > {CAP}", b.held_bytes());
        let kept = b.end_cursor() - b.lock().lines.front().unwrap().seq;
        assert!(
            kept as usize >= CAP / (2 * SLOT + heap_cost(1)),
            "short lines keep as many as the memory holds: {kept}"
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
        assert_eq!(p.usage().1, b.held_bytes(), "the pool counts what the buffer holds");
        drop(b);
        assert_eq!(p.usage().1, 0, "and gets it back when the log goes");
    }

    /// `seq 1 100000` into an 8 MiB log: tens of thousands of lines kept, not 16,384.
    #[test]
    fn short_lines_fill_the_log_by_what_they_cost() {
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1, &pool());
        for i in 1..=100_000u32 {
            b.push(Stream::Stdout, i.to_string().into_bytes());
        }
        let kept = b.lock().lines.len();
        assert!(kept >= 50_000, "{kept}");
        assert!(b.held_bytes() <= DEFAULT_CAPACITY);
    }

    /// All logs of the node together stay within the pool, however many flood at once; a
    /// newcomer into a full pool still gets its share (the others are trimmed to theirs);
    /// a line with no room anywhere is dropped and counted.
    #[test]
    fn the_node_wide_ceiling_holds_and_shares_fairly() {
        const POOL: usize = 4 << 20;
        let p = LogPool::new(POOL);
        let floods: Vec<Arc<LogBuffer>> = (0..8).map(|_| LogBuffer::new(DEFAULT_CAPACITY, 1, &p)).collect();
        for round in 0..20_000usize {
            for b in &floods {
                b.push(Stream::Stdout, vec![b'f'; 50 + round % 200]);
            }
        }
        let held: usize = floods.iter().map(|b| b.held_bytes()).sum();
        assert!(held <= POOL, "{held} > {POOL}");
        assert_eq!(p.usage().1, held);
        assert!(held > POOL / 2, "the pool is used: {held}");
        // A newcomer: the pool is full, yet its lines are kept (the others give way).
        let late = LogBuffer::new(DEFAULT_CAPACITY, 1, &p);
        for i in 0..2000u32 {
            late.push(Stream::Stdout, format!("late {i}").into_bytes());
        }
        let mut c = 0;
        let got = late.read(&mut c, usize::MAX);
        assert!(
            got.lines.len() > 1000,
            "the newcomer keeps its share: {}",
            got.lines.len()
        );
        let held: usize = floods.iter().map(|b| b.held_bytes()).sum::<usize>() + late.held_bytes();
        assert!(held <= POOL, "{held} > {POOL}");
        let pushed: usize = (0..20_000usize).map(|r| 8 * (50 + r % 200)).sum::<usize>()
            + (0..2000u32).map(|i| format!("late {i}").len()).sum::<usize>();
        let kept: usize = floods
            .iter()
            .chain([&late])
            .map(|b| {
                let mut c = 0;
                b.read(&mut c, usize::MAX)
                    .lines
                    .iter()
                    .map(|l| l.bytes.len())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(
            p.dropped() as usize,
            pushed - kept,
            "every byte not kept is counted as dropped"
        );
        // A pool with no room for a single line: it is dropped, and a reader is told.
        let tiny = LogPool::new(64);
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1, &tiny);
        b.push(Stream::Stdout, b"no room".to_vec());
        let mut c = 0;
        let batch = b.read(&mut c, 10);
        assert_eq!((batch.dropped, batch.lines.len()), (1, 0));
        assert_eq!(tiny.usage().1, 0);
        assert_eq!(tiny.dropped(), 7);
    }

    #[test]
    fn tail_starts_near_the_end() {
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1, &pool());
        for i in 0..5u8 {
            b.push(Stream::Stderr, vec![b'0' + i]);
        }
        let mut cur = b.start_cursor(Some(2));
        let batch = b.read(&mut cur, 10);
        assert_eq!(batch.lines.iter().map(|l| l.bytes[0]).collect::<Vec<_>>(), b"34");
    }

    async fn pumped(writes: &[&[u8]]) -> Vec<Vec<u8>> {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1, &pool());
        let task = tokio::spawn(pump(rx, b.clone(), Stream::Stdout, None));
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
    async fn pieces_of_a_long_line_say_the_next_continues_them_and_a_whole_line_does_not() {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1, &pool());
        let task = tokio::spawn(pump(rx, b.clone(), Stream::Stdout, None));
        {
            use tokio::io::AsyncWriteExt;
            let mut tx = tx;
            let mut long = vec![b'x'; 2 * MAX_LINE + 5];
            long.push(b'\n');
            // Exactly MAX_LINE, arriving in two writes, then its newline alone.
            let exact = vec![b'y'; MAX_LINE];
            tx.write_all(&long).await.unwrap();
            tx.write_all(&exact[..100]).await.unwrap();
            tx.write_all(&exact[100..]).await.unwrap();
            tx.write_all(b"\nlast").await.unwrap();
        }
        task.await.unwrap();
        let mut cur = 0;
        let got: Vec<(usize, bool)> = b
            .read(&mut cur, 100)
            .lines
            .iter()
            .map(|l| (l.bytes.len(), l.partial))
            .collect();
        assert_eq!(
            got,
            [
                (MAX_LINE, true),
                (MAX_LINE, true),
                (5, false),
                (MAX_LINE, false),
                (4, false)
            ]
        );
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
        let b = LogBuffer::new(DEFAULT_CAPACITY, 1, &pool());
        let task = tokio::spawn(pump(rx, b.clone(), Stream::Stdout, None));
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
