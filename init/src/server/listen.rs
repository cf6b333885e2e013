//! The listener: TCP accept, the TLS handshake, and the limits that keep any number of
//! clients from stalling PID 1.
//!
//! - Each handshake runs on a task of its own and has `HANDSHAKE` to finish.
//! - At most `PENDING` handshakes wait at once. A new connection beyond that evicts the
//!   oldest pending one. Connections that never say anything cannot crowd out a real
//!   client, even when they all come from the address the client comes from (QEMU's user
//!   network makes every host connection look alike).
//! - At most `CONNECTIONS` established connections; beyond that a new one is closed once
//!   its handshake is done.
//! - TCP keepalive finds peers that vanished; Nagle is off (a response's headers, body and
//!   trailers go out as separate small writes).
//! - `accept` errors (out of descriptors) back off instead of spinning.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

pub const HANDSHAKE: Duration = Duration::from_secs(10);
pub const PENDING: usize = 256;
pub const CONNECTIONS: usize = 1024;
const KEEPALIVE_IDLE_SECS: i32 = 60;

/// What a request's handlers learn about its connection (tonic puts it in the request's
/// extensions): the peer's address and the certificate chain it presented.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<std::net::SocketAddr>,
    pub certs: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
}

/// An established connection; it holds one of the `CONNECTIONS` slots until dropped.
pub struct Conn {
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.tls.get_ref();
        PeerInfo {
            remote: tcp.peer_addr().ok(),
            certs: session.peer_certificates().map(|c| Arc::new(c.to_vec())),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

fn tune(tcp: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let keepalive = setsockopt(tcp, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepIdle, &(KEEPALIVE_IDLE_SECS as u32)));
    if let Err(e) = keepalive {
        tracing::debug!("TCP keepalive: {e}");
    }
}

/// Handshakes in progress, oldest first, so the oldest can be evicted.
#[derive(Default)]
struct Pending {
    next: u64,
    tasks: VecDeque<(u64, AbortHandle)>,
}

/// The established connections of `listener`, handshakes done; ends when the server drops
/// the stream.
pub fn incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    let pending = Arc::new(Mutex::new(Pending::default()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            tune(&tcp);
            let (acceptor, tx, slots, pending_for_task) =
                (acceptor.clone(), tx.clone(), slots.clone(), pending.clone());
            let Ok(mut p) = pending.lock() else { continue };
            let id = p.next;
            p.next += 1;
            let task = tokio::spawn(async move {
                let done = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await;
                if let Ok(mut p) = pending_for_task.lock() {
                    p.tasks.retain(|(i, _)| *i != id);
                }
                let tls = match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::info!("TLS handshake with {peer} refused: {e}"),
                    Err(_) => return tracing::info!("TLS handshake with {peer}: nothing within {HANDSHAKE:?}"),
                };
                match slots.try_acquire_owned() {
                    Ok(slot) => {
                        let _ = tx.send(Ok(Conn { tls, _slot: slot })).await;
                    }
                    Err(_) => tracing::warn!("{peer}: {CONNECTIONS} connections already open; closing this one"),
                }
            });
            if p.tasks.len() >= PENDING {
                if let Some((_, oldest)) = p.tasks.pop_front() {
                    oldest.abort();
                }
            }
            p.tasks.push_back((id, task.abort_handle()));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
