//! What clients attached to a running executable share (`Attach`, `docker attach`,
//! `kubectl attach`): its output as it comes, in the pieces its pipes gave (a prompt with
//! no newline too, which the logs hold back until its line ends), and its stdin when it was
//! started with one kept open.
//!
//! Output goes to every attached client through a bounded broadcast: a client that reads
//! slower than the process writes loses the oldest pieces and is told how many; the process
//! never waits for a client (the logs keep everything, as always).

use super::spec::Stdin;
use std::os::fd::OwnedFd;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// Pieces of output held for the slowest client (each at most a pipe read, 64 KiB).
const PIECES: usize = 256;

pub use super::logs::Piece;

pub struct Tap {
    out: broadcast::Sender<Piece>,
    stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>,
    mode: Stdin,
}

impl Tap {
    /// A tap for a process whose stdin is `mode` (its pipe kept with `keep`).
    pub fn new(mode: Stdin) -> Tap {
        Tap {
            out: broadcast::channel(PIECES).0,
            stdin: tokio::sync::Mutex::new(None),
            mode,
        }
    }

    pub fn mode(&self) -> Stdin {
        self.mode
    }

    /// Keeps `writer`, the write end of the process's stdin pipe (at its start).
    pub fn keep(&self, writer: OwnedFd) -> std::io::Result<()> {
        let pipe = tokio::net::unix::pipe::Sender::from_owned_fd(writer)?;
        let mut g = self
            .stdin
            .try_lock()
            .map_err(|_| std::io::Error::other("the stdin pipe is in use at the start"))?;
        *g = Some(pipe);
        Ok(())
    }

    /// Where the output pumps send what they read.
    pub fn output(&self) -> broadcast::Sender<Piece> {
        self.out.clone()
    }

    /// The output from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Piece> {
        self.out.subscribe()
    }

    /// Whether its stdin takes input (it was started with one, and it is still open).
    #[cfg(test)]
    pub async fn takes_stdin(&self) -> bool {
        self.mode != Stdin::Null && self.stdin.lock().await.is_some()
    }

    /// Writes `bytes` to its stdin; false when it has none (any more): the process closed
    /// its end or ended, or a client closed it for good.
    pub async fn write(&self, bytes: &[u8]) -> bool {
        let mut g = self.stdin.lock().await;
        let Some(pipe) = g.as_mut() else {
            return false;
        };
        if pipe.write_all(bytes).await.is_err() {
            *g = None;
            return false;
        }
        true
    }

    /// A client closed its stdin: with `stdin_once` the process reads EOF now; otherwise
    /// the pipe stays open for the next client.
    pub async fn client_closed(&self) {
        if self.mode == Stdin::Once {
            self.stdin.lock().await.take();
        }
    }

    /// The process ended: nobody writes to its stdin any more.
    pub async fn end(&self) {
        self.stdin.lock().await.take();
    }
}

/// What a client's receiver gave next.
pub enum Next {
    Piece(Piece),
    /// The client fell behind and missed this many pieces.
    Missed(u64),
    /// No more can come (the tap is gone).
    Closed,
}

/// The next piece for a client.
pub async fn next(rx: &mut broadcast::Receiver<Piece>) -> Next {
    match rx.recv().await {
        Ok(p) => Next::Piece(p),
        Err(broadcast::error::RecvError::Lagged(n)) => Next::Missed(n),
        Err(broadcast::error::RecvError::Closed) => Next::Closed,
    }
}

/// What is already there for a client, without waiting.
pub fn ready(rx: &mut broadcast::Receiver<Piece>) -> Option<Next> {
    match rx.try_recv() {
        Ok(p) => Some(Next::Piece(p)),
        Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Next::Missed(n)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::logs;
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn stdin_once_closes_with_the_first_client_and_open_stays_open() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let t = Tap::new(Stdin::Open);
        t.keep(w).unwrap();
        assert!(t.write(b"a").await);
        t.client_closed().await;
        assert!(t.takes_stdin().await, "stays open for the next client");
        assert!(t.write(b"b").await);
        let mut buf = [0u8; 2];
        nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf, b"ab");

        let (r, w) = nix::unistd::pipe().unwrap();
        let t = Tap::new(Stdin::Once);
        t.keep(w).unwrap();
        assert!(t.write(b"x").await);
        t.client_closed().await;
        assert!(!t.takes_stdin().await);
        assert!(!t.write(b"y").await, "closed for good");
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 0, "the process reads EOF");
    }

    #[tokio::test]
    async fn a_process_that_closed_its_stdin_takes_no_more() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let t = Tap::new(Stdin::Open);
        t.keep(w).unwrap();
        drop(r);
        assert!(!t.write(b"x").await);
        assert!(!t.takes_stdin().await);
        let t = Tap::new(Stdin::Null);
        assert!(!t.takes_stdin().await);
    }

    #[tokio::test]
    async fn a_slow_client_is_told_what_it_missed() {
        let t = Tap::new(Stdin::Null);
        let mut rx = t.subscribe();
        let out = t.output();
        for i in 0..(PIECES + 3) {
            let _ = out.send((logs::Stream::Stdout, Arc::from(format!("{i}").as_bytes())));
        }
        assert!(matches!(next(&mut rx).await, Next::Missed(3)));
        match next(&mut rx).await {
            Next::Piece((_, b)) => assert_eq!(&*b, b"3"),
            _ => panic!("a piece"),
        }
    }
}
