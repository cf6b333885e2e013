//! Where a spawned child lives on the network: pure arithmetic, no system calls.
//!
//! A node serves its children on its bridge, a /24 in 10.0.0.0/8 (`10.D.X.0/24`). Child
//! number N (a host number on that bridge, handed out from .254 down) gets `10.D.X.N` as
//! its eth0 and, for its own children, the bridge `10.(D-1).N.0/24`. So the second octet
//! counts down one per generation: along a line of descent every bridge (and so every
//! eth0, which is the parent's bridge) has a different second octet, and no two subnets a
//! node or any of its ancestors uses can overlap. Siblings' descendants may reuse a
//! subnet; they never share a link. The top of the tree uses `10.254.0.0/24` by default,
//! which leaves room for more generations than forwarding allows; past `10.MIN_OCTET`,
//! where QEMU's user network (10.0.2.0/24) and other hand-made nets live, Spawn refuses.

use crate::net::Ipv4Cidr;
use std::net::Ipv4Addr;

/// The lowest second octet a child's bridge may take.
pub const MIN_OCTET: u8 = 16;

/// A child's place: its eth0 on the parent's bridge and its own bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildNet {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub bridge: Ipv4Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "instances need a /24 bridge subnet in 10.0.0.0/8; this node's bridge is {0} (set aurae.bridge_ip=10.D.X.1/24)"
    )]
    Unsupported(Ipv4Cidr),
    #[error("this node's bridge {0} is the {MIN_OCTET}th generation down from the top: a child would need a bridge below 10.{MIN_OCTET}.0.0/16, where hand-made networks live; spawn from an instance higher up")]
    TooDeep(Ipv4Cidr),
    #[error("host number {0} is not a child's address (2..=254)")]
    BadHost(u8),
}

/// Child number `host` of the node whose bridge is `bridge`.
pub fn child_net(bridge: Ipv4Cidr, host: u8) -> Result<ChildNet, AddressError> {
    let [a, d, x, _] = bridge.addr.octets();
    if a != 10 || bridge.prefix != 24 {
        return Err(AddressError::Unsupported(bridge));
    }
    if !(2..=254).contains(&host) {
        return Err(AddressError::BadHost(host));
    }
    if d <= MIN_OCTET {
        return Err(AddressError::TooDeep(bridge));
    }
    Ok(ChildNet {
        ip: Ipv4Addr::new(10, d, x, host),
        gateway: bridge.addr,
        bridge: Ipv4Cidr {
            addr: Ipv4Addr::new(10, d - 1, host, 1),
            prefix: 24,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn a_child_sits_on_its_parents_bridge_and_gets_the_next_generation_down() {
        let c = child_net(cidr("10.254.0.1/24"), 254).unwrap();
        assert_eq!(c.ip, Ipv4Addr::new(10, 254, 0, 254));
        assert_eq!(c.gateway, Ipv4Addr::new(10, 254, 0, 1));
        assert_eq!(c.bridge, cidr("10.253.254.1/24"));
        let g = child_net(c.bridge, 254).unwrap();
        assert_eq!(g.ip, Ipv4Addr::new(10, 253, 254, 254));
        assert_eq!(g.bridge, cidr("10.252.254.1/24"), "no wrap to 10.0 at depth 2");
    }

    #[test]
    fn no_two_subnets_along_any_line_of_descent_overlap_until_refused() {
        // The worst case: every generation takes the same host number, down to the floor,
        // for every host number; QEMU's user network stands for the top's uplink.
        for host in [2u8, 3, 100, 253, 254] {
            let mut line = vec![cidr("10.0.2.15/24"), cidr("10.254.0.1/24")];
            loop {
                let Some(&bridge) = line.last() else { unreachable!() };
                match child_net(bridge, host) {
                    Ok(c) => {
                        for earlier in &line {
                            assert!(!earlier.overlaps(c.bridge), "{} overlaps {earlier}", c.bridge);
                        }
                        line.push(c.bridge);
                    }
                    Err(e) => {
                        assert_eq!(e, AddressError::TooDeep(bridge));
                        assert!(e.to_string().contains("spawn from an instance higher up"), "{e}");
                        break;
                    }
                }
            }
            assert_eq!(
                line.len(),
                2 + usize::from(254 - MIN_OCTET),
                "generations for host {host}"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_address() {
        let e = child_net(cidr("192.168.1.1/24"), 9).unwrap_err();
        assert!(e.to_string().contains("aurae.bridge_ip=10.D.X.1/24"), "{e}");
        assert_eq!(
            child_net(cidr("10.9.0.1/16"), 9).unwrap_err(),
            AddressError::Unsupported(cidr("10.9.0.1/16"))
        );
        assert_eq!(child_net(cidr("10.9.0.1/24"), 1).unwrap_err(), AddressError::BadHost(1));
        assert_eq!(
            child_net(cidr("10.9.0.1/24"), 255).unwrap_err(),
            AddressError::BadHost(255)
        );
    }

    #[test]
    fn overlap_is_symmetric_and_respects_prefixes() {
        assert!(cidr("10.0.0.0/8").overlaps(cidr("10.254.3.0/24")));
        assert!(cidr("10.254.3.0/24").overlaps(cidr("10.0.0.0/8")));
        assert!(!cidr("10.254.3.0/24").overlaps(cidr("10.254.4.0/24")));
        assert!(cidr("0.0.0.0/0").overlaps(cidr("1.2.3.4/32")));
    }
}
