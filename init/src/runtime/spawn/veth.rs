//! The cell fallback's network: a veth pair from this node's bridge into the child's
//! network namespace, where it becomes eth0 with the child's address and default route;
//! and one more pair per extra interface, from a named bridge to eth1, eth2, ...
//! with its address and no route.

use super::SpawnError;
use crate::net::{ioctl, netlink, Ipv4Cidr};
use std::net::Ipv4Addr;

/// Removes the pair by its host end (the peer goes with it). The kernel would remove it
/// when the child's network namespace dies, but asynchronously; Free must leave nothing.
/// A pair the kernel removed already (ENODEV) is removed.
pub fn remove(host_end: &str) -> Result<(), SpawnError> {
    match netlink::delete_link(host_end) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        r => r.map_err(SpawnError::Veth),
    }
}

/// One end of a veth pair, in the child.
pub struct Inside<'a> {
    /// eth0, eth1, ...
    pub name: &'a str,
    pub address: Ipv4Cidr,
    /// The default route (eth0's only).
    pub gateway: Option<Ipv4Addr>,
}

/// Creates the veth pair (the host end `host_end` on `bridge`, the peer as `inside.name`
/// in the network namespace of `holder`) and gives the peer its address (and route), from
/// a thread that enters that namespace (the runtime thread never does).
pub async fn plumb(host_end: &str, holder: i32, bridge: &str, inside: Inside<'_>) -> Result<(), SpawnError> {
    let Inside { name, address, gateway } = inside;
    let name = name.to_owned();
    netlink::create_veth(host_end, &name, holder as u32).map_err(SpawnError::Veth)?;
    ioctl::bridge_add(bridge, host_end).map_err(SpawnError::Veth)?;
    ioctl::link_up(host_end).map_err(SpawnError::Veth)?;
    let ns = format!("/proc/{holder}/ns/net");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("veth-setup".into())
        .spawn(move || {
            let r = (|| -> std::io::Result<()> {
                let f = std::fs::File::open(&ns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                ioctl::set_ipv4(&name, address.addr, address.prefix)?;
                ioctl::link_up(&name)?;
                match gateway {
                    Some(gw) => ioctl::add_default_route(gw),
                    None => Ok(()),
                }
            })();
            let _ = tx.send(r);
        })
        .map_err(SpawnError::Veth)?;
    let joined = rx
        .await
        .map_err(|_| SpawnError::Veth(std::io::Error::other("the veth setup thread ended without an answer")))?;
    joined.map_err(SpawnError::Veth)
}
