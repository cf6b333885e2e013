//! The listener: TCP accept, the TLS handshake, and the limits that keep any number of
//! clients from stalling PID 1.
//!
//! - Each handshake runs on a task of its own and has `HANDSHAKE` to finish.
//! - At most `PENDING` handshakes wait at once. A new connection beyond that evicts the
//!   oldest pending one. Connections that never say anything cannot crowd out a real
//!   client, even when they all come from the address the client comes from (QEMU's user
//!   network makes every host connection look alike).
//! - At most `CONNECTIONS` established connections, and `PER_PEER` from one address, so
//!   one client (or one machine's clients) cannot take every slot; beyond that a new
//!   connection is closed once its handshake is done.
//! - TCP keepalive finds peers that vanished; Nagle is off (a response's headers, body and
//!   trailers go out as separate small writes).
//! - `accept` errors (out of descriptors) back off instead of spinning.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
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
pub const PER_PEER: usize = CONNECTIONS / 4;
/// Open calls from one address that may last as long as a workload runs (`Wait`, a
/// followed `Logs`): two connections' worth of streams (`MAX_STREAMS` each), so one
/// address cannot hold a task and a buffer for each of its 256 connections × 256 streams.
pub const WATCHES_PER_PEER: usize = 2 * super::MAX_STREAMS as usize;
const KEEPALIVE_IDLE_SECS: i32 = 60;

/// What a request's handlers learn about its connection (tonic puts it in the request's
/// extensions): the peer's address, the certificate chain it presented, and the
/// connection's turns for quick reads.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<std::net::SocketAddr>,
    pub certs: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    /// `QUICK_PER_CONNECTION` permits, one per connection (see `authz::QUICK`).
    pub quick: Arc<Semaphore>,
}

/// Quick reads (`Node.Info`, `Status`, `List`, health) one connection has running at once;
/// its others wait for a turn outside PID 1's run queue. A client that floods its 256
/// streams with them then delays another connection's call by a few reads, not by 256.
pub const QUICK_PER_CONNECTION: usize = 4;

/// An established connection; it holds one of the `CONNECTIONS` slots and one of its
/// address's `PER_PEER` until dropped.
pub struct Conn {
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    quick: Arc<Semaphore>,
    _slot: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

/// Things held per peer address (established connections; open watches), counted.
#[derive(Default, Clone)]
pub struct PeerCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One of an address's slots, given back when dropped.
pub struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerCounts {
    /// One of `ip`'s `max` slots, or None when it holds them all.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    pub(crate) fn held(&self, ip: IpAddr) -> usize {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.tls.get_ref();
        PeerInfo {
            remote: tcp.peer_addr().ok(),
            certs: session.peer_certificates().map(|c| Arc::new(c.to_vec())),
            quick: self.quick.clone(),
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

/// The established connections of `listener`, handshakes done, each holding one of
/// `slots` (`CONNECTIONS` of them); ends when the server drops the stream.
pub fn incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    slots: Arc<Semaphore>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let peers = PeerCounts::default();
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
            let (acceptor, tx, slots, peers, pending_for_task) = (
                acceptor.clone(),
                tx.clone(),
                slots.clone(),
                peers.clone(),
                pending.clone(),
            );
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
                let Some(from_peer) = peers.take(peer.ip(), PER_PEER) else {
                    return tracing::warn!(
                        "{peer}: {PER_PEER} connections from {} already open; closing this one",
                        peer.ip()
                    );
                };
                match slots.try_acquire_owned() {
                    Ok(slot) => {
                        let conn = Conn {
                            tls,
                            quick: Arc::new(Semaphore::new(QUICK_PER_CONNECTION)),
                            _slot: slot,
                            _peer: from_peer,
                        };
                        let _ = tx.send(Ok(conn)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_at_most_its_share_of_connections_and_gets_them_back() {
        let peers = PeerCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.2.2".parse().unwrap(), "10.0.2.3".parse().unwrap());
        let mut held: Vec<PeerSlot> = (0..PER_PEER).map(|_| peers.take(a, PER_PEER).unwrap()).collect();
        assert!(peers.take(a, PER_PEER).is_none(), "the next one from a is refused");
        assert!(peers.take(b, PER_PEER).is_some(), "another address still gets one");
        assert_eq!(peers.held(b), 0, "a dropped slot is given back");
        held.pop();
        assert!(peers.take(a, PER_PEER).is_some(), "a closed connection frees a slot");
        held.clear();
        assert_eq!(peers.held(a), 0);
        assert!(peers.0.lock().unwrap().is_empty(), "nothing kept for addresses gone");
    }
}
