//! The rtnetlink requests ioctls cannot make, for Spawn's cell fallback: a veth pair whose
//! peer is created directly inside another network namespace (a cell's), and deleting a
//! link by name.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFINFOMSG_LEN: usize = 16;

/// Appends an rtattr; `body` fills it (nested attributes or a payload).
fn attr(buf: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend([0u8; 4]);
    body(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn name(buf: &mut Vec<u8>, n: &str) {
    attr(buf, IFLA_IFNAME, |b| {
        b.extend(n.as_bytes());
        b.push(0);
    });
}

/// The request, without the netlink header: ifinfomsg and attributes.
fn veth_request(host: &str, peer: &str, peer_netns_pid: u32) -> Vec<u8> {
    let mut b = vec![0u8; IFINFOMSG_LEN];
    name(&mut b, host);
    attr(&mut b, IFLA_LINKINFO, |b| {
        attr(b, IFLA_INFO_KIND, |b| b.extend(b"veth\0"));
        attr(b, IFLA_INFO_DATA, |b| {
            attr(b, VETH_INFO_PEER, |b| {
                b.extend([0u8; IFINFOMSG_LEN]);
                name(b, peer);
                attr(b, IFLA_NET_NS_PID, |b| b.extend(peer_netns_pid.to_ne_bytes()));
            });
        });
    });
    b
}

/// Creates veth `host` in this namespace and its peer `peer` in the network namespace of
/// process `peer_netns_pid`.
pub fn create_veth(host: &str, peer: &str, peer_netns_pid: u32) -> io::Result<()> {
    let body = veth_request(host, peer, peer_netns_pid);
    request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body)
        .map_err(|e| io::Error::new(e.kind(), format!("create veth {host}/{peer}: {e}")))
}

/// Deletes link `name` (both ends, for a veth). A link that is already gone is not an error.
pub fn delete_link(name: &str) -> io::Result<()> {
    let mut body = vec![0u8; IFINFOMSG_LEN];
    self::name(&mut body, name);
    match request(RTM_DELLINK, 0, &body) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("delete link {name}: {e}"))),
    }
}

/// The request to add `addr/prefix` to link number `index`: ifaddrmsg and its attributes.
fn address_request(index: u32, addr: std::net::Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut b = vec![libc::AF_INET as u8, prefix, 0, 0];
    b.extend(index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, |b| b.extend(addr.octets()));
    attr(&mut b, IFA_ADDRESS, |b| b.extend(addr.octets()));
    b
}

/// Adds `addr/prefix` to link `name` beside the addresses it has (its connected route
/// comes with it). An address it has already is not an error.
pub fn add_ipv4(name: &str, addr: std::net::Ipv4Addr, prefix: u8) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    match request(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        &address_request(index, addr, prefix),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("add {addr}/{prefix} to {name}: {e}"))),
    }
}

/// Sends one rtnetlink request (`body` = ifinfomsg and attributes) and reads its ack.
fn request(kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend(((16 + body.len()) as u32).to_ne_bytes());
    msg.extend(kind.to_ne_bytes());
    msg.extend((NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes()); // seq
    msg.extend(0u32.to_ne_bytes()); // pid: the kernel
    msg.extend(body);

    // SAFETY: socket() takes no pointers; the fd is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; family is set below.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg and `to` outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: reply is a live buffer of the given length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if code == 0 {
            return Ok(());
        }
        return Err(io::Error::from_raw_os_error(-code));
    }
    Err(io::Error::other("unexpected netlink reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_request_carries_local_and_address() {
        let b = address_request(7, std::net::Ipv4Addr::new(10, 244, 1, 1), 24);
        assert_eq!(&b[..8], &[libc::AF_INET as u8, 24, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&b[8..16], &[8, 0, 2, 0, 10, 244, 1, 1]);
        assert_eq!(&b[16..24], &[8, 0, 1, 0, 10, 244, 1, 1]);
    }

    #[test]
    fn veth_request_nests_the_peer_with_its_namespace() {
        let b = veth_request("av0", "eth0", 42);
        assert_eq!(b.len() % 4, 0);
        // ifinfomsg, then IFLA_IFNAME "av0\0" (len 8), then IFLA_LINKINFO.
        assert_eq!(&b[16..20], &[8, 0, 3, 0]);
        assert_eq!(&b[20..24], b"av0\0");
        assert_eq!(u16::from_ne_bytes([b[26], b[27]]), IFLA_LINKINFO);
        let tail = &b[b.len() - 8..];
        assert_eq!(u16::from_ne_bytes([tail[2], tail[3]]), IFLA_NET_NS_PID);
        assert_eq!(u32::from_ne_bytes([tail[4], tail[5], tail[6], tail[7]]), 42);
    }
}
