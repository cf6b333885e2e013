//! Pseudo-terminals: a master's peer, window sizes, and a master read and written from the
//! async runtime.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The peer (terminal end) of pseudo-terminal master `master`, unlocked.
pub fn peer(master: BorrowedFd<'_>) -> Result<OwnedFd, (&'static str, nix::errno::Errno)> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(("unlock a pseudo-terminal", nix::errno::Errno::last()));
    }
    // SAFETY: TIOCGPTPEER returns a new fd for the peer, opened with these flags.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(("open a pseudo-terminal's peer", nix::errno::Errno::last()));
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(peer) })
}

/// The window size (rows, columns) of terminal `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    ok.then_some((ws.ws_row, ws.ws_col))
}

/// Sets terminal `fd`'s window size.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, columns: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// A pseudo-terminal master owned by the async runtime (non-blocking).
pub struct AsyncTty(AsyncFd<OwnedFd>);

impl AsyncTty {
    /// Takes `master`, makes it non-blocking and registers it with the runtime's reactor.
    pub fn new(master: OwnedFd) -> std::io::Result<AsyncTty> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        fcntl(
            &master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open (the same file
        // description) until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(master) }?;
        Ok(AsyncTty(fd))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }

    /// Reads what is there (waiting until something is); 0 or an error (EIO: every holder
    /// of the other end has gone) ends it.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(std::io::Error::from)) {
                Err(_would_block) => continue,
                Ok(r) => return r,
            }
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), bytes).map_err(std::io::Error::from)) {
                Err(_would_block) => continue,
                Ok(r) => bytes = &bytes[r?..],
            }
        }
        Ok(())
    }
}
