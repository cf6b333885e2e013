//! Network bring-up for PID 1: loopback, the uplink from the kernel command line, and the
//! bridge that child instances' TAPs attach to.
//!
//! Uses the classic netdevice ioctls (`ioctl.rs`): four operations at boot do not justify a
//! netlink stack in PID 1. TAP attachment (later) will use the same wrapper style.

pub mod cidr;
pub mod dhcp;
pub mod ioctl;
pub mod netlink;
pub mod proxy;

pub use cidr::Ipv4Cidr;
use std::net::Ipv4Addr;

/// Every IPv4 address of this node's interfaces, as (interface, address/prefix).
pub fn interface_subnets() -> Vec<(String, Ipv4Cidr)> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter_map(|i| {
        let addr = i.address.as_ref()?.as_sockaddr_in()?.ip();
        let mask = i.netmask.as_ref()?.as_sockaddr_in()?.ip();
        let prefix = u32::from(mask).leading_ones() as u8;
        Some((i.interface_name, Ipv4Cidr { addr, prefix }))
    })
    .collect()
}

/// `aurae.ip=dhcp`.
#[derive(Debug, Clone, Copy)]
pub struct DhcpPlan {
    /// The lease's hostname becomes the node's (no `aurae.hostname` was given).
    pub set_hostname: bool,
}

/// A named node bridge (`aurae.bridges=`): pods attach extra interfaces to it
/// (`Pod.networks`). Nothing routes between it and the node's other networks; with an
/// address the node itself is on it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBridge {
    pub name: String,
    pub address: Option<Ipv4Cidr>,
}

/// An extra interface of an instance (and so of a pod): `ethN` (N from 1, in order) on a
/// named node bridge, with a static address and no route beyond its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAttachment {
    pub bridge: String,
    pub address: Ipv4Cidr,
}

/// Hostnames as the node takes them (`aurae.hostname`, a DHCP lease's): 1..=64 of
/// letters, digits, '-' and '.'.
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A spawned instance's extra NIC (`aurae.nic=`): the interface with `mac` is renamed
/// `name` and given `address`, with no route beyond its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: [u8; 6],
    pub address: Ipv4Cidr,
}

/// The node's network at boot: the uplink, the bridge for instances' TAPs, the named
/// bridges, and (in a spawned instance) the extra NICs.
pub struct Plan<'a> {
    pub iface: &'a str,
    pub ip: Option<Ipv4Cidr>,
    /// Lease the uplink's address by DHCP (`dhcp`), and its hostname when this is set.
    pub dhcp: Option<DhcpPlan>,
    pub gateway: Option<Ipv4Addr>,
    pub bridge: &'a str,
    pub bridge_ip: Ipv4Cidr,
    pub named: &'a [NamedBridge],
    pub nics: &'a [Nic],
}

/// Brings the network up; returns (step, error) for each step that failed.
pub fn bring_up(cfg: &Plan<'_>) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    let mut step = |name: String, r: std::io::Result<()>| match r {
        Ok(()) => tracing::info!("net: {name}"),
        Err(e) => failures.push((format!("net: {name}"), e.to_string())),
    };
    step("lo up".into(), ioctl::link_up("lo"));
    if let Some(ip) = cfg.ip {
        step(
            format!("{} address {ip}", cfg.iface),
            ioctl::set_ipv4(cfg.iface, ip.addr, ip.prefix),
        );
    }
    step(format!("{} up", cfg.iface), ioctl::link_up(cfg.iface));
    if let Some(d) = cfg.dhcp {
        step(
            format!("{} DHCP client started", cfg.iface),
            dhcp::start(
                cfg.iface.to_owned(),
                d.set_hostname,
                std::iter::once(cfg.bridge_ip)
                    .chain(cfg.named.iter().filter_map(|b| b.address))
                    .collect(),
            ),
        );
    }
    if let Some(gw) = cfg.gateway {
        step(format!("default route via {gw}"), ioctl::add_default_route(gw));
    }
    step(
        format!("bridge {} created", cfg.bridge),
        ioctl::create_bridge(cfg.bridge),
    );
    step(
        format!("bridge {} address {}", cfg.bridge, cfg.bridge_ip),
        ioctl::set_ipv4(cfg.bridge, cfg.bridge_ip.addr, cfg.bridge_ip.prefix),
    );
    step(format!("bridge {} up", cfg.bridge), ioctl::link_up(cfg.bridge));
    for b in cfg.named {
        if b.name == cfg.bridge || b.name == cfg.iface {
            step(
                format!("bridge {}", b.name),
                Err(std::io::Error::other(
                    "the name is the uplink's or the instances' bridge's",
                )),
            );
            continue;
        }
        let made = ioctl::create_bridge(&b.name)
            .and_then(|()| match b.address {
                Some(a) => ioctl::set_ipv4(&b.name, a.addr, a.prefix),
                None => Ok(()),
            })
            .and_then(|()| ioctl::link_up(&b.name));
        let what = b.address.map(|a| format!(" address {a}")).unwrap_or_default();
        step(format!("bridge {}{what}", b.name), made);
    }
    for n in cfg.nics {
        step(format!("{} address {}", n.name, n.address), nic_up(n));
    }
    failures
}

/// Finds the NIC by its MAC, names it, addresses it and brings it up.
fn nic_up(n: &Nic) -> std::io::Result<()> {
    let found = ioctl::find_by_mac(n.mac)?;
    if found != n.name {
        ioctl::rename(&found, &n.name)?;
    }
    ioctl::set_ipv4(&n.name, n.address.addr, n.address.prefix)?;
    ioctl::link_up(&n.name)
}

/// Whether a step of bridge `name` is among the failures `bring_up` returned.
pub fn bridge_failed(name: &str, failures: &[(String, String)]) -> bool {
    let step = format!("net: bridge {name}");
    failures
        .iter()
        .any(|(s, _)| s == &step || s.strip_prefix(&step).is_some_and(|r| r.starts_with(' ')))
}
