//! What clients attached to a running executable share (`Attach`, `docker attach`,
//! `kubectl attach`): its output as it comes, in the pieces its pipes gave (a prompt with
//! no newline too, which the logs hold back until its line ends), and its stdin when it was
//! started with one kept open (or the terminal it was started on: then resizes too).
//!
//! Output goes to every attached client through a bounded broadcast: a client that reads
//! slower than the process writes loses the oldest pieces and is told how many; the process
//! never waits for a client (the logs keep everything, as always).

use super::spec::Stdin;
use crate::os::tty::AsyncTty;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// Pieces of output held for the slowest client (each at most a pipe read, 64 KiB).
const PIECES: usize = 256;

pub use super::logs::Piece;

/// Where a client's stdin goes.
enum Input {
    None,
    Pipe(tokio::net::unix::pipe::Sender),
    Tty(Arc<AsyncTty>),
}

pub struct Tap {
    out: broadcast::Sender<Piece>,
    input: tokio::sync::Mutex<Input>,
    mode: Stdin,
    /// Its terminal's master while it runs (with `tty`): what resizes set.
    terminal: std::sync::Mutex<Option<Arc<AsyncTty>>>,
}

impl Tap {
    /// A tap for a process whose stdin is `mode` (its pipe or terminal kept with `keep`).
    pub fn new(mode: Stdin) -> Tap {
        Tap {
            out: broadcast::channel(PIECES).0,
            input: tokio::sync::Mutex::new(Input::None),
            mode,
            terminal: std::sync::Mutex::new(None),
        }
    }

    pub fn mode(&self) -> Stdin {
        self.mode
    }

    fn set(&self, input: Input) -> std::io::Result<()> {
        let mut g = self
            .input
            .try_lock()
            .map_err(|_| std::io::Error::other("the stdin is in use at the start"))?;
        *g = input;
        Ok(())
    }

    /// Keeps `writer`, the write end of the process's stdin pipe (at its start).
    pub fn keep(&self, writer: OwnedFd) -> std::io::Result<()> {
        self.set(Input::Pipe(tokio::net::unix::pipe::Sender::from_owned_fd(writer)?))
    }

    /// Keeps the master of the process's terminal (at its start): resizes go to it, and
    /// stdin when the process takes some.
    pub fn keep_terminal(&self, master: Arc<AsyncTty>) -> std::io::Result<()> {
        *self.terminal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(master.clone());
        match self.mode {
            Stdin::Null => Ok(()),
            Stdin::Open | Stdin::Once => self.set(Input::Tty(master)),
        }
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
        !matches!(*self.input.lock().await, Input::None)
    }

    /// Writes `bytes` to its stdin; false when it has none (any more): the process closed
    /// its end or ended, or a client closed it for good.
    pub async fn write(&self, bytes: &[u8]) -> bool {
        let mut g = self.input.lock().await;
        let written = match &mut *g {
            Input::None => return false,
            Input::Pipe(pipe) => pipe.write_all(bytes).await,
            Input::Tty(m) => m.write_all(bytes).await,
        };
        if written.is_err() {
            *g = Input::None;
            return false;
        }
        true
    }

    /// A client closed its stdin: with `stdin_once` the process reads EOF now (a
    /// terminal's end-of-file character); otherwise its stdin stays open for the next
    /// client.
    pub async fn client_closed(&self) {
        if self.mode != Stdin::Once {
            return;
        }
        let mut g = self.input.lock().await;
        if let Input::Tty(m) = &*g {
            let _ = m.write_all(b"\x04").await;
        }
        *g = Input::None;
    }

    /// Its terminal's new size (rows, columns); nothing without one.
    pub fn resize(&self, rows: u16, columns: u16) {
        let t = self.terminal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = &*t {
            let _ = crate::os::tty::set_window_size(m.fd(), rows, columns);
        }
    }

    /// The process ended: nobody writes to its stdin or resizes it any more.
    pub async fn end(&self) {
        *self.input.lock().await = Input::None;
        self.terminal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

/// A pseudo-terminal for a process of `cell`: (master, peer).
pub(super) fn cell_pty(cell: &super::cell::Cell) -> super::error::Result<(OwnedFd, OwnedFd)> {
    match &cell.image {
        // The cell's own devpts, so the process's terminal is /dev/pts/N there.
        Some(_) => cell.root()?.pty(),
        None if cell.confinement.privileged || !cell.isolation.mount => node_pty(),
        None => cell.root()?.pty(),
    }
}

/// A pseudo-terminal of the node's devpts (cells on the node's filesystem).
fn node_pty() -> super::error::Result<(OwnedFd, OwnedFd)> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| super::error::RuntimeError::sys("open /dev/ptmx", errno))?;
    super::rootfs::pty_peer(master)
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
