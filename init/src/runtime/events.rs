//! What happens to workloads, as it happens (`Workloads.Events`): each event numbered from
//! 1 since the node started, the last `HELD` kept, readers woken on each new one. A reader
//! resumes after the last number it saw; events it can no longer get are counted, never
//! silently skipped.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::watch;

/// Events held for readers that fall behind or reconnect.
pub const HELD: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Created,
    Started,
    /// It exited with this code (OOM-killed: its cgroup counted an OOM kill).
    Exited {
        code: i32,
        oom: bool,
    },
    Killed {
        signal: i32,
        oom: bool,
    },
    Failed(String),
    /// A cell, VM, instance or pod stopped as asked.
    Stopped,
    /// A VM, instance or pod ended on its own: how (the guest reset or powered off, every
    /// container of a pod completed).
    Ended(String),
    Freed,
}

/// How a VM or an instance ended, from its phase, its error and what it said at its end.
pub fn end_of(phase: Option<super::Phase>, error: &str, said: &str) -> What {
    use super::Phase;
    let or = |s: &str, default: &str| match s.trim() {
        "" => default.to_owned(),
        s => s.to_owned(),
    };
    match phase {
        Some(Phase::Stopped) => What::Stopped,
        Some(Phase::Exited) => What::Ended(or(said, "it ended")),
        Some(Phase::Failed | Phase::Killed) => What::Failed(or(error, "it failed without saying why")),
        p => What::Failed(format!("it ended while {p:?}")),
    }
}

/// An event of a workload of kind `K` (the table's `Kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<K> {
    pub seq: u64,
    pub unix_nanos: i64,
    pub kind: K,
    pub name: String,
    pub what: What,
}

pub struct Events<K> {
    held: Mutex<(VecDeque<Event<K>>, u64)>,
    /// The last number given.
    changed: watch::Sender<u64>,
}

impl<K> Default for Events<K> {
    fn default() -> Events<K> {
        Events {
            held: Mutex::new((VecDeque::with_capacity(64), 1)),
            changed: watch::channel(0).0,
        }
    }
}

/// What a reader gets: the events after its point, and how many it missed before them.
#[derive(Debug, PartialEq, Eq)]
pub struct Read<K> {
    pub missed: u64,
    pub events: Vec<Event<K>>,
}

impl<K: Clone> Events<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Event<K>>, u64)> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn emit(&self, kind: K, name: &str, what: What) {
        let seq = {
            let mut g = self.lock();
            let seq = g.1;
            g.1 += 1;
            if g.0.len() == HELD {
                g.0.pop_front();
            }
            g.0.push_back(Event {
                seq,
                unix_nanos: super::logs::now_unix_nanos(),
                kind,
                name: name.to_owned(),
                what,
            });
            seq
        };
        self.changed.send_replace(seq);
    }

    /// Up to `max` events after `after`.
    pub fn read(&self, after: u64, max: usize) -> Read<K> {
        let g = self.lock();
        let first = g.0.front().map_or(g.1, |e| e.seq);
        let missed = first.saturating_sub(after + 1);
        let events = g.0.iter().filter(|e| e.seq > after).take(max).cloned().collect();
        Read { missed, events }
    }

    /// The number of the last event (0 before any).
    pub fn last(&self) -> u64 {
        self.lock().1 - 1
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_resumes_after_its_point_and_learns_what_it_missed() {
        let e = Events::<&'static str>::default();
        assert_eq!(e.last(), 0);
        for i in 0..(HELD + 10) {
            e.emit("executable", &format!("x{i}"), What::Created);
        }
        assert_eq!(e.last(), (HELD + 10) as u64);
        let r = e.read(0, 3);
        assert_eq!(r.missed, 10, "the oldest ten are gone");
        assert_eq!(r.events[0].seq, 11);
        let r = e.read(HELD as u64 + 8, 100);
        assert_eq!((r.missed, r.events.len()), (0, 2));
        assert_eq!(r.events[0].name, format!("x{}", HELD + 8));
        assert!(e.read(e.last(), 100).events.is_empty());
    }
}
