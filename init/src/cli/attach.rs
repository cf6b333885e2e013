//! The client side of `Exec` and `Attach`: a process attached to this terminal (`aer exec
//! -it`, `aer run -it`, `aer attach`). With `-t` this terminal goes raw, so every key
//! (Ctrl-C too) reaches the process, and window-size changes follow; without, SIGINT and
//! SIGTERM to `aer` are passed on to a process it started, and end `aer` alone when it
//! attached to a running one. stdin goes to the process until it ends here (EOF). `aer`
//! exits with the process's exit code (128 + N when signal N ended it).

use super::CliError;
use crate::pb::{self, exec_request::Request as In, exec_response::Response as Out};
use std::io::Write;
use std::os::fd::AsFd;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// What to attach to, and how.
pub struct Session {
    pub start: Start,
    /// -i: send this terminal's stdin.
    pub stdin: bool,
    /// -t: a terminal for the process.
    pub tty: bool,
}

/// A process started for the session (Exec), or one already running (Attach).
pub enum Start {
    Exec(pb::ExecStart),
    Attach(pb::AttachStart),
}

/// This terminal in raw mode while it lives; restored when dropped.
struct Raw(Option<nix::sys::termios::Termios>);

impl Raw {
    fn enter(on: bool) -> Raw {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        if !on {
            return Raw(None);
        }
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return Raw(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        match tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw) {
            Ok(()) => Raw(Some(saved)),
            Err(_) => Raw(None),
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

/// This terminal's size (rows, columns), if stdout is one.
fn size() -> Option<pb::TerminalSize> {
    use std::os::fd::AsFd;
    let (rows, columns) = crate::os::tty::window_size(std::io::stdout().as_fd())?;
    (rows > 0).then_some(pb::TerminalSize {
        rows: u32::from(rows),
        columns: u32::from(columns),
    })
}

fn msg(r: In) -> pb::ExecRequest {
    pb::ExecRequest { request: Some(r) }
}

/// What Attach takes of what the terminal sends: stdin, its end, and window sizes.
fn for_attach(r: In) -> Option<pb::AttachRequest> {
    use pb::attach_request::Request as A;
    let r = match r {
        In::Stdin(b) => A::Stdin(b),
        In::CloseStdin(c) => A::CloseStdin(c),
        In::Resize(s) => A::Resize(s),
        In::Start(_) | In::Signal(_) => return None,
    };
    Some(pb::AttachRequest { request: Some(r) })
}

/// Runs `s` attached; Ok only when it exited 0, else the exit code to leave with.
pub async fn attach(target: &super::Target, s: Session) -> Result<(), CliError> {
    let ch = target.connect_unbounded().await?;
    let (tx, rx) = mpsc::channel::<In>(16);
    let tty = s.tty && nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
    let mut client = pb::runtime_client::RuntimeClient::new(ch);
    let input = tokio_stream::wrappers::ReceiverStream::new(rx);
    let signals = matches!(s.start, Start::Exec(_)) && !s.tty;
    let started = match s.start {
        Start::Exec(mut start) => {
            start.tty = s.tty;
            start.size = if s.tty { size() } else { None };
            let _ = tx.send(In::Start(start)).await;
            client.exec(input.map(msg)).await
        }
        Start::Attach(start) => {
            let first = pb::AttachRequest {
                request: Some(pb::attach_request::Request::Start(start)),
            };
            // On a terminal: this one's size first.
            if let Some(size) = size().filter(|_| s.tty) {
                let _ = tx.send(In::Resize(size)).await;
            }
            client
                .attach(tokio_stream::once(first).chain(input.filter_map(for_attach)))
                .await
        }
    };
    let mut output = started.map_err(CliError::Remote)?.into_inner();
    let raw = Raw::enter(tty);
    // Input: stdin (with -i), window changes (with -t), SIGINT/SIGTERM (without -t, to a
    // process started here; attached to a running one, they end aer by default).
    let feeder = {
        let tx = tx.clone();
        let with_stdin = s.stdin;
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut winch = signal(SignalKind::window_change()).ok();
            let mut int = signals.then(|| signal(SignalKind::interrupt()).ok()).flatten();
            let mut term = signals.then(|| signal(SignalKind::terminate()).ok()).flatten();
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            let mut reading = with_stdin;
            if !with_stdin {
                let _ = tx.send(In::CloseStdin(true)).await;
            }
            loop {
                let next = async {
                    tokio::select! {
                        r = stdin.read(&mut buf), if reading => Some(match r {
                            Ok(0) | Err(_) => None,
                            Ok(n) => Some(In::Stdin(buf[..n].to_vec())),
                        }),
                        _ = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                            Some(size().map(In::Resize))
                        }
                        _ = async { int.as_mut()?.recv().await }, if int.is_some() => Some(Some(In::Signal(libc::SIGINT))),
                        _ = async { term.as_mut()?.recv().await }, if term.is_some() => Some(Some(In::Signal(libc::SIGTERM))),
                    }
                };
                match next.await {
                    Some(Some(m)) => {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    // stdin ended: EOF for the process, then only signals and resizes.
                    Some(None) if reading => {
                        reading = false;
                        let _ = tx.send(In::CloseStdin(true)).await;
                    }
                    Some(None) => {}
                    None => return,
                }
            }
        })
    };
    drop(tx);
    let mut exit = None;
    let ended = loop {
        match output.message().await {
            Ok(Some(pb::ExecResponse { response: Some(r) })) => match r {
                Out::Stdout(b) => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&b).and_then(|()| o.flush());
                }
                Out::Stderr(b) => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&b).and_then(|()| e.flush());
                }
                Out::Exit(x) => {
                    exit = Some(x);
                    break Ok(());
                }
                Out::StartedPid(_) => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => break Ok(()),
            Err(e) => break Err(CliError::Remote(e)),
        }
    };
    feeder.abort();
    drop(raw);
    ended?;
    exit.and_then(|x| CliError::from_exit(x.exit_code, x.signal))
        .unwrap_or_else(|| {
            Err(CliError::Workload(
                "the stream ended before the process's exit status arrived".into(),
            ))
        })
}
