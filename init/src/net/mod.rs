//! Network bring-up for PID 1: loopback, the uplink from the kernel command line, and the
//! bridge that child instances' TAPs attach to.
//!
//! Uses the classic netdevice ioctls (`ioctl.rs`): four operations at boot do not justify a
//! netlink stack in PID 1. TAP attachment (later) will use the same wrapper style.

pub mod cidr;
pub mod ioctl;
pub mod netlink;
pub mod proxy;

pub use cidr::Ipv4Cidr;
use std::net::Ipv4Addr;

/// The node's network at boot: the uplink and the bridge for instances' TAPs.
pub struct Plan<'a> {
    pub iface: &'a str,
    pub ip: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub bridge: &'a str,
    pub bridge_ip: Ipv4Cidr,
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
    failures
}
