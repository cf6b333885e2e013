//! DHCPv4 for the uplink (`aurae.ip=dhcp`, RFC 2131). The packet format is dhcproto's; the
//! client is ours: one thread that never ends, so boot never waits for a server and the
//! API listens on 0.0.0.0 from the start.
//!
//! - INIT: DISCOVER (broadcast), the first OFFER, REQUEST for it, ACK; a NAK or silence
//!   starts over. Retransmissions back off 1, 2, 4, ... 64 s as RFC 2131 §4.1 asks.
//! - BOUND: the address, its mask and the default route are set; the hostname too when the
//!   command line named none. `NodeInfo` shows the lease.
//! - RENEWING at T1 (the server's, or half the lease): REQUEST unicast to the server;
//!   REBINDING at T2 (or 7/8 of it): broadcast; each retransmitted at half the time left
//!   (at least 1 s). An ACK extends the lease in place; a NAK, or the lease's end, removes
//!   the address and starts over.

use super::{ioctl, Ipv4Cidr};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
/// RFC 2131 §4.1: retransmissions double up to 64 s (we start at 1 s, not 4: a boot waits).
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LAST_WAIT: Duration = Duration::from_secs(64);

/// A lease, as the node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Cidr,
    pub router: Option<Ipv4Addr>,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    /// The lease's length, and T1 and T2 (from when it was granted).
    pub lease: Duration,
    pub renew: Duration,
    pub rebind: Duration,
    pub granted_unix_seconds: u64,
    /// How many times it was extended (RENEWING or REBINDING) since the address was bound.
    pub renewals: u32,
}

static LEASE: Mutex<Option<Lease>> = Mutex::new(None);

/// The lease the uplink holds now, if any.
pub fn current() -> Option<Lease> {
    LEASE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_current(l: Option<Lease>) {
    *LEASE.lock().unwrap_or_else(|p| p.into_inner()) = l;
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The options the client asks for.
const WANTED: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Discover,
    /// SELECTING: the offered address from this server.
    Select {
        offered: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// RENEWING or REBINDING the address held.
    Extend {
        held: Ipv4Addr,
    },
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(300);
    // Encoding a message we built cannot fail; an empty packet is never answered.
    let _ = msg.encode(&mut Encoder::new(&mut buf));
    buf
}

fn request(ask: Ask, xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let ciaddr = match ask {
        Ask::Extend { held } => held,
        _ => unspecified,
    };
    let mut m = Message::new_with_id(xid, ciaddr, unspecified, unspecified, unspecified, &mac);
    m.set_opcode(Opcode::BootRequest);
    // Until it has an address the node cannot take a unicast reply.
    if !matches!(ask, Ask::Extend { .. }) {
        m.set_flags(Flags::default().set_broadcast());
    }
    let kind = match ask {
        Ask::Discover => MessageType::Discover,
        _ => MessageType::Request,
    };
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    let mut id = vec![1u8];
    id.extend_from_slice(&mac);
    o.insert(DhcpOption::ClientIdentifier(id));
    o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    if let Ask::Select { offered, server } = ask {
        o.insert(DhcpOption::RequestedIpAddress(offered));
        o.insert(DhcpOption::ServerIdentifier(server));
    }
    encode(&m)
}

/// A reply to our `xid` for our MAC, or None for anything else on the port.
fn reply(bytes: &[u8], xid: u32, mac: [u8; 6]) -> Option<Message> {
    let m = Message::decode(&mut Decoder::new(bytes)).ok()?;
    (m.opcode() == Opcode::BootReply && m.xid() == xid && m.chaddr().get(..6) == Some(&mac[..])).then_some(m)
}

fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    // A mask is ones then zeros.
    (m.leading_ones() + m.trailing_zeros() == 32).then(|| m.leading_ones() as u8)
}

/// The shortest lease the node takes (a server's shorter one is stretched to it), so a
/// hostile or broken server cannot make the client renew in a tight loop.
const MIN_LEASE: u32 = 60;
/// The shortest T1 or T2 taken from a server; a shorter one falls back to the default.
const MIN_T: u32 = 10;

/// The lease an ACK grants. `reserved` are the node's own subnets (the instances' bridge,
/// the named bridges): a lease inside one would route the node's own traffic to the uplink.
/// Why an ACK is not taken.
#[derive(Debug, thiserror::Error)]
enum BadAck {
    #[error("the ACK grants no usable address ({0})")]
    Address(Ipv4Addr),
    #[error("subnet mask {0} is not a mask")]
    Mask(Ipv4Addr),
    #[error("the ACK's subnet mask /{prefix} for {addr} leaves no subnet to live on")]
    NoSubnet { prefix: u8, addr: Ipv4Addr },
    #[error("the ACK's subnet {subnet} overlaps this node's own {own}; a server on the uplink cannot have it")]
    Overlaps { subnet: Ipv4Cidr, own: Ipv4Cidr },
    #[error("the ACK names no server (option 54)")]
    NoServer,
}

fn lease_of(ack: &Message, reserved: &[Ipv4Cidr]) -> Result<Lease, BadAck> {
    let o = ack.opts();
    let addr = ack.yiaddr();
    if addr.is_unspecified()
        || addr.is_broadcast()
        || addr.is_multicast()
        || addr.is_loopback()
        || addr.is_link_local()
        || addr.octets()[0] == 0
        || addr.octets()[0] >= 240
    {
        return Err(BadAck::Address(addr));
    }
    let prefix = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => prefix_of(*m).ok_or(BadAck::Mask(*m))?,
        // RFC 2131 lets a server leave it out: the address's class then, as clients do.
        _ => match addr.octets()[0] {
            0..=127 => 8,
            128..=191 => 16,
            _ => 24,
        },
    };
    if prefix == 0 || prefix == 32 {
        return Err(BadAck::NoSubnet { prefix, addr });
    }
    let subnet = Ipv4Cidr { addr, prefix };
    if let Some(r) = reserved.iter().find(|r| r.overlaps(subnet)) {
        return Err(BadAck::Overlaps { subnet, own: *r });
    }
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return Err(BadAck::NoServer),
    };
    let secs = |code| match o.get(code) {
        Some(DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s)) => Some(*s),
        _ => None,
    };
    let lease = secs(OptionCode::AddressLeaseTime).unwrap_or(u32::MAX).max(MIN_LEASE);
    let rebind = secs(OptionCode::Rebinding)
        .filter(|t| *t <= lease && *t >= MIN_T)
        .unwrap_or((u64::from(lease) * 7 / 8) as u32);
    let renew = secs(OptionCode::Renewal)
        .filter(|t| *t <= rebind && *t >= MIN_T)
        .unwrap_or(lease / 2)
        .min(rebind);
    // A router the node cannot reach on the leased subnet is no route.
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let router = match router {
        Some(r) if Ipv4Cidr { addr: r, prefix }.network() == subnet.network() && r != addr => Some(r),
        Some(r) => {
            tracing::warn!("dhcp: router {r} is not on the leased subnet {subnet}; no default route from this lease");
            None
        }
        None => None,
    };
    Ok(Lease {
        address: subnet,
        router,
        server,
        dns: match o.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(d)) => d.clone(),
            _ => Vec::new(),
        },
        hostname: match o.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) if super::valid_hostname(h) => Some(h.clone()),
            _ => None,
        },
        lease: Duration::from_secs(u64::from(lease)),
        renew: Duration::from_secs(u64::from(renew)),
        rebind: Duration::from_secs(u64::from(rebind)),
        granted_unix_seconds: unix_now(),
        renewals: 0,
    })
}

/// The client's socket: port 68 on the uplink only, broadcasts allowed.
fn socket(iface: &str) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, CLIENT_PORT))?;
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(iface),
    )
    .map_err(std::io::Error::from)?;
    s.set_broadcast(true)?;
    Ok(s)
}

/// Sends `packet` to `to` and waits up to `wait` for a reply `pick` takes (another reply
/// to the same transaction, e.g. a second server's OFFER, is skipped).
fn exchange(
    s: &UdpSocket,
    to: Ipv4Addr,
    packet: &[u8],
    wait: Duration,
    xid: u32,
    mac: [u8; 6],
    pick: impl Fn(&Message) -> bool,
) -> Option<Message> {
    if let Err(e) = s.send_to(packet, SocketAddrV4::new(to, SERVER_PORT)) {
        tracing::warn!("dhcp: send to {to}: {e}");
        std::thread::sleep(wait);
        return None;
    }
    let until = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match s.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(m) = reply(&buf[..n], xid, mac).filter(|m| pick(m)) {
                    return Some(m);
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(e) => {
                tracing::warn!("dhcp: receive: {e}");
                std::thread::sleep(left);
                return None;
            }
        }
    }
}

fn is(m: &Message, t: MessageType) -> bool {
    m.opts().has_msg_type(t)
}

/// INIT → BOUND: a lease, however long it takes.
fn obtain(s: &UdpSocket, mac: [u8; 6], xid: &mut u32, reserved: &[Ipv4Cidr]) -> Lease {
    let mut wait = FIRST_WAIT;
    loop {
        *xid = xid.wrapping_add(1);
        let discover = request(Ask::Discover, *xid, mac);
        let offer = exchange(s, Ipv4Addr::BROADCAST, &discover, wait, *xid, mac, |m| {
            is(m, MessageType::Offer)
        });
        wait = (wait * 2).min(LAST_WAIT);
        let Some(offer) = offer else { continue };
        let Some(DhcpOption::ServerIdentifier(server)) = offer.opts().get(OptionCode::ServerIdentifier).cloned() else {
            tracing::warn!("dhcp: an OFFER without a server identifier; ignored");
            continue;
        };
        let ask = Ask::Select {
            offered: offer.yiaddr(),
            server,
        };
        let req = request(ask, *xid, mac);
        let ack = exchange(s, Ipv4Addr::BROADCAST, &req, wait, *xid, mac, |m| {
            is(m, MessageType::Ack) || is(m, MessageType::Nak)
        });
        match ack {
            Some(m) if is(&m, MessageType::Ack) => match lease_of(&m, reserved) {
                Ok(l) => return l,
                Err(e) => tracing::warn!("dhcp: {e}; starting over"),
            },
            Some(_) => tracing::warn!("dhcp: {server} refused {} (NAK); starting over", offer.yiaddr()),
            None => {}
        }
    }
}

/// Sets the lease's address and route on the uplink (and the hostname when asked).
fn apply(iface: &str, l: &Lease, before: Option<&Lease>, set_hostname: bool) {
    if before.map(|b| b.address) != Some(l.address) {
        if let Err(e) = ioctl::set_ipv4(iface, l.address.addr, l.address.prefix) {
            tracing::error!("dhcp: {e}");
        }
    }
    if let Some(gw) = l.router.filter(|_| before.and_then(|b| b.router) != l.router) {
        match ioctl::add_default_route(gw) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => tracing::error!("dhcp: default route via {gw}: {e}"),
        }
    }
    if let (true, Some(h)) = (set_hostname, &l.hostname) {
        if let Err(e) = nix::unistd::sethostname(h) {
            tracing::error!("dhcp: hostname {h}: {e}");
        }
    }
}

/// BOUND → RENEWING → REBINDING: the lease extended, or None once it has ended (or a
/// server refused it).
fn extend(
    s: &UdpSocket,
    mac: [u8; 6],
    xid: &mut u32,
    held: &Lease,
    bound_at: Instant,
    reserved: &[Ipv4Cidr],
) -> Option<Lease> {
    let at = |d: Duration| bound_at + d;
    std::thread::sleep(at(held.renew).saturating_duration_since(Instant::now()));
    loop {
        let now = Instant::now();
        if now >= at(held.lease) {
            return None;
        }
        // Unicast to the server until T2, then to anyone.
        let (to, until) = if now < at(held.rebind) {
            (held.server, at(held.rebind))
        } else {
            (Ipv4Addr::BROADCAST, at(held.lease))
        };
        let wait = (until.saturating_duration_since(now) / 2).max(Duration::from_secs(1));
        *xid = xid.wrapping_add(1);
        let req = request(
            Ask::Extend {
                held: held.address.addr,
            },
            *xid,
            mac,
        );
        match exchange(s, to, &req, wait, *xid, mac, |m| {
            is(m, MessageType::Ack) || is(m, MessageType::Nak)
        }) {
            Some(m) if is(&m, MessageType::Ack) => match lease_of(&m, reserved) {
                Ok(mut l) => {
                    l.renewals = held.renewals + 1;
                    return Some(l);
                }
                Err(e) => tracing::warn!("dhcp: {e}"),
            },
            Some(_) => {
                tracing::warn!("dhcp: {} refused to extend the lease (NAK)", held.server);
                return None;
            }
            None => {}
        }
    }
}

/// Runs the client on `iface` for as long as the node lives (on a thread of its own).
/// `reserved`: the node's own subnets, which no lease may overlap.
pub fn start(iface: String, set_hostname: bool, reserved: Vec<Ipv4Cidr>) -> std::io::Result<()> {
    let mac = mac_of(&iface)?;
    let s = socket(&iface)?;
    std::thread::Builder::new().name("dhcp".into()).spawn(move || {
        // Distinct per node and boot, so two nodes' transactions do not mix.
        let mut xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ (unix_now() as u32);
        loop {
            let mut lease = obtain(&s, mac, &mut xid, &reserved);
            apply(&iface, &lease, None, set_hostname);
            tracing::info!(
                "dhcp: {iface} {} from {} (router {}, lease {} s)",
                lease.address,
                lease.server,
                lease.router.map_or("none".into(), |r| r.to_string()),
                lease.lease.as_secs()
            );
            set_current(Some(lease.clone()));
            let mut bound_at = Instant::now();
            while let Some(next) = extend(&s, mac, &mut xid, &lease, bound_at, &reserved) {
                apply(&iface, &next, Some(&lease), set_hostname);
                tracing::info!("dhcp: {iface} {} extended for {} s", next.address, next.lease.as_secs());
                lease = next;
                bound_at = Instant::now();
                set_current(Some(lease.clone()));
            }
            tracing::warn!("dhcp: {iface} lost its lease on {}; asking anew", lease.address);
            set_current(None);
            if let Err(e) = ioctl::set_ipv4(&iface, Ipv4Addr::UNSPECIFIED, 0) {
                tracing::warn!("dhcp: remove {}: {e}", lease.address);
            }
        }
    })?;
    Ok(())
}

fn mac_of(iface: &str) -> std::io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    ioctl::parse_mac(text.trim()).ok_or_else(|| std::io::Error::other(format!("{iface} has no MAC address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn answer(kind: MessageType, xid: u32, opts: Vec<DhcpOption>) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, z, Ipv4Addr::new(10, 0, 2, 15), z, z, &MAC);
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        encode(&m)
    }

    #[test]
    fn requests_say_what_they_are_and_ask_for_the_lease_options() {
        let d = Message::decode(&mut Decoder::new(&request(Ask::Discover, 7, MAC))).unwrap();
        assert_eq!((d.xid(), d.opcode()), (7, Opcode::BootRequest));
        assert!(d.flags().broadcast());
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(&d.chaddr()[..6], &MAC);
        let select = Ask::Select {
            offered: Ipv4Addr::new(10, 0, 2, 15),
            server: Ipv4Addr::new(10, 0, 2, 2),
        };
        let r = Message::decode(&mut Decoder::new(&request(select, 8, MAC))).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert!(matches!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(a)) if *a == Ipv4Addr::new(10, 0, 2, 15)
        ));
        assert!(r.opts().contains(OptionCode::ServerIdentifier));
        let held = Ipv4Addr::new(10, 0, 2, 15);
        let e = Message::decode(&mut Decoder::new(&request(Ask::Extend { held }, 9, MAC))).unwrap();
        assert_eq!(e.ciaddr(), held);
        assert!(!e.flags().broadcast(), "a node with an address takes unicast replies");
        assert!(!e.opts().contains(OptionCode::ServerIdentifier));
    }

    #[test]
    fn an_ack_becomes_a_lease_with_t1_and_t2() {
        let ack = answer(
            MessageType::Ack,
            5,
            vec![
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
                DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
                DhcpOption::AddressLeaseTime(120),
                DhcpOption::Hostname("node-7".into()),
            ],
        );
        assert!(reply(&ack, 6, MAC).is_none(), "another transaction");
        assert!(reply(&ack, 5, [0; 6]).is_none(), "another client");
        let m = reply(&ack, 5, MAC).unwrap();
        let l = lease_of(&m, &[]).unwrap();
        assert_eq!(l.address.to_string(), "10.0.2.15/24");
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            (l.lease.as_secs(), l.renew.as_secs(), l.rebind.as_secs()),
            (120, 60, 105)
        );
        assert_eq!(l.hostname.as_deref(), Some("node-7"));
        // The server's own T1/T2 are taken when they make sense.
        let ack = answer(
            MessageType::Ack,
            5,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
                DhcpOption::AddressLeaseTime(100),
                DhcpOption::Renewal(20),
                DhcpOption::Rebinding(30),
            ],
        );
        let l = lease_of(&reply(&ack, 5, MAC).unwrap(), &[]).unwrap();
        assert_eq!((l.renew.as_secs(), l.rebind.as_secs()), (20, 30));
        assert_eq!(l.address.prefix, 8, "no mask: the address's class");
        // What a hostile server says is checked: a hostname the node would not take from
        // its own command line is dropped, a zero address is no lease, junk is no reply.
        let ack = answer(
            MessageType::Ack,
            5,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
                DhcpOption::Hostname("a b;$(reboot)".into()),
            ],
        );
        assert_eq!(lease_of(&reply(&ack, 5, MAC).unwrap(), &[]).unwrap().hostname, None);
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(5, z, z, z, z, &MAC);
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(lease_of(&m, &[]).unwrap_err().to_string().contains("no usable address"));
        assert!(reply(&[0xff; 40], 5, MAC).is_none());
        let no_server = answer(MessageType::Ack, 5, vec![DhcpOption::AddressLeaseTime(100)]);
        assert!(lease_of(&reply(&no_server, 5, MAC).unwrap(), &[])
            .unwrap_err()
            .to_string()
            .contains("option 54"));
        let bad_mask = answer(
            MessageType::Ack,
            5,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)),
            ],
        );
        assert!(lease_of(&reply(&bad_mask, 5, MAC).unwrap(), &[]).is_err());
    }

    /// An ACK granting `addr` with `opts` (and a server identifier).
    fn ack_for(addr: Ipv4Addr, mut opts: Vec<DhcpOption>) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(5, z, addr, z, z, &MAC);
        m.set_opcode(Opcode::BootReply);
        opts.push(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    /// What a hostile server on the uplink may try: addresses the node must never take,
    /// masks that leave no subnet, the node's own subnets, a lease of one second, a router
    /// off the subnet. Each is refused (the client starts over, backing off) or defused.
    #[test]
    fn hostile_acks_are_refused_or_defused() {
        let mask = |p: u8| DhcpOption::SubnetMask(Ipv4Addr::from(crate::net::cidr::netmask(p)));
        let aurae0: Ipv4Cidr = "10.254.0.1/24".parse().unwrap();
        let lab: Ipv4Cidr = "192.168.50.1/24".parse().unwrap();
        let reserved = [aurae0, lab];
        for (addr, opts, why) in [
            (Ipv4Addr::new(127, 0, 0, 5), vec![mask(8)], "no usable address"),
            (Ipv4Addr::new(169, 254, 1, 1), vec![mask(16)], "no usable address"),
            (Ipv4Addr::new(224, 0, 0, 9), vec![mask(24)], "no usable address"),
            (Ipv4Addr::new(0, 1, 2, 3), vec![mask(24)], "no usable address"),
            (Ipv4Addr::new(250, 1, 2, 3), vec![mask(24)], "no usable address"),
            (Ipv4Addr::new(198, 51, 100, 7), vec![mask(0)], "/0"),
            (Ipv4Addr::new(198, 51, 100, 7), vec![mask(32)], "/32"),
            (
                Ipv4Addr::new(10, 254, 0, 9),
                vec![mask(24)],
                "overlaps this node's own 10.254.0.1/24",
            ),
            (
                Ipv4Addr::new(10, 9, 9, 9),
                vec![mask(8)],
                "overlaps this node's own 10.254.0.1/24",
            ),
            (
                Ipv4Addr::new(192, 168, 50, 20),
                vec![mask(16)],
                "overlaps this node's own 192.168.50.1/24",
            ),
        ] {
            let e = lease_of(&ack_for(addr, opts), &reserved).unwrap_err().to_string();
            assert!(e.contains(why), "{addr}: {e}");
        }
        let ok = Ipv4Addr::new(198, 51, 100, 7);
        let l = lease_of(
            &ack_for(
                ok,
                vec![
                    mask(24),
                    DhcpOption::AddressLeaseTime(1),
                    DhcpOption::Renewal(0),
                    DhcpOption::Rebinding(1),
                    DhcpOption::Router(vec![Ipv4Addr::new(203, 0, 113, 1)]),
                ],
            ),
            &reserved,
        )
        .unwrap();
        assert_eq!(
            (l.lease.as_secs(), l.renew.as_secs(), l.rebind.as_secs()),
            (60, 30, 52),
            "a one-second lease is stretched to a minute, T1/T2 with it"
        );
        assert_eq!(l.router, None, "a router off the leased subnet is no route");
        let l = lease_of(&ack_for(ok, vec![mask(24), DhcpOption::Router(vec![ok])]), &reserved).unwrap();
        assert_eq!(l.router, None, "the node itself is no router");
        let l = lease_of(
            &ack_for(
                ok,
                vec![mask(24), DhcpOption::Router(vec![Ipv4Addr::new(198, 51, 100, 1)])],
            ),
            &reserved,
        )
        .unwrap();
        assert_eq!(l.router, Some(Ipv4Addr::new(198, 51, 100, 1)));
    }
}
