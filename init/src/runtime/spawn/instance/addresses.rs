//! An instance's addresses: its host number on the node's bridge, and its extra
//! interfaces' addresses on named bridges, each checked against the node's bridges and
//! taken once.

use super::*;

/// Checks an instance's extra interfaces against the node's named bridges and takes
/// their addresses (`give_back` returns them).
pub(super) fn take_attachments(host: &Host, spec: &InstanceSpec, own: crate::net::Ipv4Cidr) -> Result<()> {
    let list = &spec.attachments;
    if list.len() > MAX_ATTACHMENTS {
        return Err(RuntimeError::invalid(
            "networks",
            format!(
                "{} interfaces asked for; a pod has at most {MAX_ATTACHMENTS} beside eth0 (eth1..=eth{MAX_ATTACHMENTS})",
                list.len()
            ),
        ));
    }
    for i in 0..list.len() {
        check_attachment(&host.named_bridges, own, list, i)?;
    }
    let mut t = host.table();
    for (i, a) in list.iter().enumerate() {
        if let Some(owner) = t.attached.get(&(a.bridge.clone(), a.address.addr)) {
            return Err(RuntimeError::AlreadyExists(format!(
                "networks[{i}].address: {} on bridge {} is taken by '{owner}'; choose another address",
                a.address.addr, a.bridge
            )));
        }
    }
    for a in list {
        t.attached
            .insert((a.bridge.clone(), a.address.addr), spec.name.to_string());
    }
    Ok(())
}

/// Returns an instance's addresses: its host number on the bridge and what it held on
/// named bridges.
pub(super) fn give_back(host: &Host, name: &str, attachments: &[NetAttachment], host_no: Option<u8>) {
    let mut t = host.table();
    for a in attachments {
        let key = (a.bridge.clone(), a.address.addr);
        if t.attached.get(&key).is_some_and(|o| o == name) {
            t.attached.remove(&key);
        }
    }
    if let Some(h) = host_no {
        t.hosts.remove(&h);
    }
}

/// Makes `cidr` (kubelet's pod CIDR, `10.D.X.0/24`) the subnet CRI sandboxes' instances
/// take their addresses from: its first address joins the node's bridge beside the
/// bridge's own (their connected route with it). The bridge's own subnet needs nothing; a
/// CIDR instances cannot use, or where this node's children put their own bridges, is
/// refused naming the field, and nothing changes.
pub(crate) fn use_pod_subnet(host: &Host, cidr: crate::net::Ipv4Cidr) -> Result<crate::net::Ipv4Cidr> {
    const FIELD: &str = "runtime_config.network_config.pod_cidr";
    let Some((bridge, own)) = host.bridge.clone() else {
        return Err(Lack::Bridge {
            field: "runtime_config.network_config.pod_cidr: ",
            what: "pods",
        }
        .into());
    };
    let [a, d, x, h] = cidr.addr.octets();
    if cidr.prefix != 24 || h != 0 {
        return Err(RuntimeError::invalid(
            FIELD,
            format!("{cidr}: pods' instances take their addresses from a /24 of 10.0.0.0/8 (10.D.X.0/24); give the node such a pod CIDR"),
        ));
    }
    let gateway = crate::net::Ipv4Cidr {
        addr: std::net::Ipv4Addr::new(a, d, x, 1),
        prefix: 24,
    };
    addressing::child_net(gateway, 2).map_err(|e| RuntimeError::invalid(FIELD, format!("{cidr}: {e}")))?;
    let [_, own_d, own_x, _] = own.addr.octets();
    if (d, x) == (own_d, own_x) {
        *host.alloc.pod_subnet() = None;
        return Ok(own);
    }
    if d == own_d.wrapping_sub(1) {
        return Err(RuntimeError::invalid(
            FIELD,
            format!(
                "{cidr} is among the subnets this node's instances give their own bridges (10.{}.N.0/24); give the node a pod CIDR with another second octet",
                own_d.wrapping_sub(1)
            ),
        ));
    }
    host.devices.add_address(&bridge, gateway).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            RuntimeError::invalid(FIELD, format!("{cidr}: {e}; give the node another pod CIDR"))
        }
        _ => RuntimeError::Network(format!("{FIELD}: add {gateway} to bridge {bridge}: {e}")),
    })?;
    *host.alloc.pod_subnet() = Some(gateway);
    tracing::info!("pod CIDR {cidr}: sandboxes' instances take addresses from it, {gateway} on {bridge}");
    Ok(gateway)
}

pub(super) fn take_host_number(host: &Host) -> Result<u8> {
    let mut t = host.table();
    // From the top down, away from addresses people pick by hand for plain VMs.
    let free = (2..=254u8).rev().find(|h| !t.hosts.contains(h));
    let Some(h) = free else {
        return Err(RuntimeError::Exhausted("every address on the bridge is taken".into()));
    };
    t.hosts.insert(h);
    Ok(h)
}

/// Checks attachment `i` of `list`: its bridge is one of the node's named bridges, and
/// once in the list; its address is a host address, in the bridge's subnet when the node
/// has an address there, and apart from `own` (the instances' bridge, where eth0 is).
pub(super) fn check_attachment(
    bridges: &[crate::net::NamedBridge],
    own: crate::net::Ipv4Cidr,
    list: &[NetAttachment],
    i: usize,
) -> Result<()> {
    let a = &list[i];
    let field = |f: &str| format!("networks[{i}].{f}");
    let Some(b) = bridges.iter().find(|b| b.name == a.bridge) else {
        let known = if bridges.is_empty() {
            "it has none (name them with aurae.bridges= on the node's kernel command line)".to_owned()
        } else {
            let names: Vec<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
            format!("its bridges for pods are {}", names.join(", "))
        };
        return Err(RuntimeError::invalid(
            field("bridge"),
            format!("this node has no bridge '{}' to attach to; {known}", a.bridge),
        ));
    };
    if let Some(j) = list[..i].iter().position(|x| x.bridge == a.bridge) {
        return Err(RuntimeError::invalid(
            field("bridge"),
            format!(
                "networks[{j}] is on bridge '{}' already; one interface per bridge",
                a.bridge
            ),
        ));
    }
    let ip = a.address;
    let bad = |why: String| Err(RuntimeError::invalid(field("address"), format!("'{ip}' {why}")));
    if !(8..=30).contains(&ip.prefix) {
        return bad("has a prefix outside /8../30".into());
    }
    let host_mask = !crate::net::cidr::netmask(ip.prefix);
    let host = u32::from(ip.addr) & host_mask;
    if host == 0 || host == host_mask {
        return bad("is its subnet's network or broadcast address; give a host address".into());
    }
    if ip.addr.is_loopback() || ip.addr.is_multicast() || ip.addr.is_link_local() {
        return bad("is a loopback, multicast or link-local address".into());
    }
    if ip.overlaps(own) {
        return bad(format!(
            "overlaps the subnet of the pod's eth0 ({}/{}); choose a subnet apart from it",
            own.network(),
            own.prefix
        ));
    }
    if let Some(node) = b.address {
        if ip.prefix != node.prefix || ip.network() != node.network() {
            return bad(format!(
                "is not in bridge {}'s subnet {}/{}",
                b.name,
                node.network(),
                node.prefix
            ));
        }
        if ip.addr == node.addr {
            return bad(format!("is the node's own address on bridge {}", b.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Ipv4Cidr, NamedBridge};

    fn att(bridge: &str, address: &str) -> NetAttachment {
        NetAttachment {
            bridge: bridge.into(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn attachments_are_checked_against_the_node_bridges() {
        let bridges = [
            NamedBridge {
                name: "lab0".into(),
                address: None,
            },
            NamedBridge {
                name: "lab1".into(),
                address: Some("192.168.60.1/24".parse().unwrap()),
            },
        ];
        let own: Ipv4Cidr = "10.254.0.1/24".parse().unwrap();
        let check = |list: &[NetAttachment], i| check_attachment(&bridges, own, list, i).map_err(|e| e.to_string());
        assert!(check(&[att("lab0", "192.168.50.2/24")], 0).is_ok());
        assert!(check(&[att("lab1", "192.168.60.9/24")], 0).is_ok());
        for (list, i, want) in [
            (vec![att("aurae0", "192.168.50.2/24")], 0, "networks[0].bridge"),
            (vec![att("nope", "192.168.50.2/24")], 0, "lab0, lab1"),
            (
                vec![att("lab0", "192.168.50.2/24"), att("lab0", "192.168.50.3/24")],
                1,
                "networks[0] is on bridge 'lab0'",
            ),
            (vec![att("lab0", "192.168.50.0/24")], 0, "network or broadcast"),
            (vec![att("lab0", "192.168.50.255/24")], 0, "network or broadcast"),
            (vec![att("lab0", "192.168.50.2/32")], 0, "/8../30"),
            (vec![att("lab0", "127.0.0.2/8")], 0, "loopback"),
            (
                vec![att("lab0", "10.254.0.7/24")],
                0,
                "overlaps the subnet of the pod's eth0 (10.254.0.0/24)",
            ),
            (vec![att("lab0", "10.1.0.7/8")], 0, "overlaps"),
            (
                vec![att("lab1", "192.168.61.2/24")],
                0,
                "not in bridge lab1's subnet 192.168.60.0/24",
            ),
            (vec![att("lab1", "192.168.60.1/24")], 0, "the node's own address"),
        ] {
            let e = check(&list, i).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let none = check_attachment(&[], own, &[att("lab0", "192.168.50.2/24")], 0).unwrap_err();
        assert!(none.to_string().contains("aurae.bridges="), "{none}");
    }
}
