//! Publishing a cell's TCP ports on the node (`-p HOST:CELL`): auraed listens on the node's
//! port (every address, so the uplink's too) and joins each accepted connection to a new
//! connection to `127.0.0.1:CELL` made inside the cell's network namespace. A userspace
//! proxy rather than netfilter rules: the appliance's kernel has no netfilter, and a cell's
//! namespace needs no route or address of the node's.
//!
//! A pod's ports go the same way to the pod's address on the node's bridge.
//!
//! A connection inside the cell is made by one thread per cell that has joined the cell's
//! network namespace and does nothing else (sockets belong to the namespace of the thread
//! that creates them); no tokio thread ever changes namespace. At most `MAX_CONNECTIONS`
//! connections per published port are open at once; more wait in the listen queue.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::sync::{oneshot, Semaphore};

pub const MAX_CONNECTIONS: usize = 256;

/// A port bound on the node, not yet forwarding.
pub struct Bound {
    pub host_port: u16,
    pub cell_port: u16,
    listener: std::net::TcpListener,
}

/// Binds `host_port` on every node address. EADDRINUSE: someone (another cell, auraed's
/// own API) has it.
pub fn bind(host_port: u16, cell_port: u16) -> std::io::Result<Bound> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, host_port)))?;
    listener.set_nonblocking(true)?;
    Ok(Bound {
        host_port,
        cell_port,
        listener,
    })
}

type Dial = (u16, oneshot::Sender<std::io::Result<TcpStream>>);

/// Where a pod's ports lead: its instance's address, which changes when the pod is given
/// a new instance; none while it has none (a connection is then closed at once).
pub type Target = Arc<std::sync::RwLock<Option<Ipv4Addr>>>;

/// Makes connections inside one cell's network namespace, or (a pod) to an address the
/// node reaches itself, fixed or as a pod's `Target` says at each connection.
#[derive(Clone)]
pub enum Dialer {
    Namespace(std::sync::mpsc::Sender<Dial>),
    Address(Ipv4Addr),
    Follow(Target),
}

impl Dialer {
    /// A thread in the network namespace of the process `pidfd` names (a cell's init).
    pub fn new(pidfd: Arc<OwnedFd>) -> std::io::Result<Dialer> {
        let (tx, rx) = std::sync::mpsc::channel::<Dial>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("aurae-dialer".into()).spawn(move || {
            // Changes this thread's network namespace only.
            let joined = nix::sched::setns(&*pidfd, nix::sched::CloneFlags::CLONE_NEWNET);
            let _ = ready_tx.send(joined.map_err(std::io::Error::from));
            let joined = joined.is_ok();
            drop(pidfd);
            if !joined {
                return;
            }
            for (port, reply) in rx {
                let _ = reply.send(TcpStream::connect((Ipv4Addr::LOCALHOST, port)));
            }
        })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the dialer thread ended before joining the cell"))??;
        Ok(Dialer::Namespace(tx))
    }

    /// A connection to `port` where this dialer reaches.
    pub async fn dial(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let tx_dial = match self {
            Dialer::Address(ip) => return tokio::net::TcpStream::connect((*ip, port)).await,
            Dialer::Follow(target) => {
                let ip = *target.read().unwrap_or_else(|p| p.into_inner());
                return match ip {
                    Some(ip) => tokio::net::TcpStream::connect((ip, port)).await,
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the pod has no running instance now",
                    )),
                };
            }
            Dialer::Namespace(tx) => tx,
        };
        let (tx, rx) = oneshot::channel();
        tx_dial
            .send((port, tx))
            .map_err(|_| std::io::Error::other("the cell's dialer has ended"))?;
        let s = rx
            .await
            .map_err(|_| std::io::Error::other("the cell's dialer has ended"))??;
        s.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(s)
    }
}

/// A published port: forwarding until dropped, then the node's port is free again.
pub struct Published {
    pub host_port: u16,
    pub cell_port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts forwarding `b` into the cell `dialer` reaches; `name` is for the logs.
pub fn publish(b: Bound, dialer: Dialer, name: String) -> std::io::Result<Published> {
    let listener = tokio::net::TcpListener::from_std(b.listener)?;
    let (host_port, cell_port) = (b.host_port, b.cell_port);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (mut outside, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cell {name}: port {host_port}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let dialer = dialer.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match dialer.dial(cell_port).await {
                    Ok(mut inside) => {
                        let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                    }
                    Err(e) => tracing::info!("cell {name}: {peer} -> port {cell_port}: {e}"),
                }
            });
        }
    });
    Ok(Published {
        host_port,
        cell_port,
        task,
    })
}
