//! The few netdevice ioctls PID 1 needs at boot (link up, IPv4 address, default route,
//! bridge). Kept here, behind safe functions; the kernel structs are declared locally because
//! libc's coverage of them differs between its glibc and musl flavours.

use std::ffi::c_ulong;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCADDRT: c_ulong = 0x890B;
const SIOCGIFFLAGS: c_ulong = 0x8913;
const SIOCSIFFLAGS: c_ulong = 0x8914;
const SIOCSIFADDR: c_ulong = 0x8916;
const SIOCSIFNETMASK: c_ulong = 0x891C;
const SIOCBRADDBR: c_ulong = 0x89A0;
const SIOCBRADDIF: c_ulong = 0x89A2;
const SIOCGIFINDEX: c_ulong = 0x8933;
const SIOCSIFNAME: c_ulong = 0x8923;
/// _IOW('T', 202, int)
const TUNSETIFF: c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const RTF_UP: u16 = 0x1;
const RTF_GATEWAY: u16 = 0x2;
const IFNAMSIZ: usize = 16;

#[repr(C)]
#[derive(Clone, Copy)]
union IfrData {
    addr: libc::sockaddr_in,
    flags: libc::c_short,
    index: libc::c_int,
    newname: [u8; IFNAMSIZ],
    _pad: [u8; 24],
}

/// `struct ifreq`.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: IfrData,
}

/// `struct rtentry` from include/uapi/linux/route.h.
#[repr(C)]
struct RtEntry {
    rt_pad1: c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: u16,
    rt_pad2: i16,
    rt_pad3: c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: i16,
    rt_dev: *mut libc::c_char,
    rt_mtu: c_ulong,
    rt_window: c_ulong,
    rt_irtt: u16,
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn ifname(name: &str) -> io::Result<[u8; IFNAMSIZ]> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name '{name}' must be 1-15 bytes"),
        ));
    }
    let mut out = [0u8; IFNAMSIZ];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the returned fd is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl<T>(req: c_ulong, arg: *mut T, what: &str) -> io::Result<()> {
    let sock = control_socket()?;
    // SAFETY: every caller passes a pointer to a live, correctly laid out struct for `req`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, arg) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    Ok(IfReq {
        name: ifname(name)?,
        data: IfrData { _pad: [0; 24] },
    })
}

/// Sets IFF_UP on an interface.
pub fn link_up(name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(SIOCGIFFLAGS, &mut req, &format!("get flags of {name}"))?;
    // SAFETY: SIOCGIFFLAGS filled the `flags` member of the union.
    let flags = unsafe { req.data.flags };
    req.data.flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(SIOCSIFFLAGS, &mut req, &format!("bring {name} up"))
}

/// Renames an interface (it must be down).
pub fn rename(name: &str, new: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.data.newname = ifname(new)?;
    ioctl(SIOCSIFNAME, &mut req, &format!("rename {name} to {new}"))
}

/// The interface with this MAC address, from /sys/class/net.
pub fn find_by_mac(mac: [u8; 6]) -> io::Result<String> {
    let want = format_mac(mac);
    for e in std::fs::read_dir("/sys/class/net")?.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(&want) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no interface has MAC {want}"),
    ))
}

/// `02:41:00:00:00:07`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The inverse of `format_mac`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Assigns an IPv4 address and netmask to an interface.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.data.addr = sockaddr(addr);
    ioctl(SIOCSIFADDR, &mut req, &format!("set address {addr} on {name}"))?;
    req.data.addr = sockaddr(Ipv4Addr::from(super::cidr::netmask(prefix)));
    ioctl(SIOCSIFNETMASK, &mut req, &format!("set netmask /{prefix} on {name}"))
}

/// Adds the IPv4 default route via `gw`.
pub fn add_default_route(gw: Ipv4Addr) -> io::Result<()> {
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gw),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(SIOCADDRT, &mut rt, &format!("add default route via {gw}"))
}

/// Creates a Linux bridge.
pub fn create_bridge(name: &str) -> io::Result<()> {
    let mut n = ifname(name)?;
    ioctl(SIOCBRADDBR, n.as_mut_ptr(), &format!("create bridge {name}"))
}

/// Adds interface `port` to bridge `bridge`.
pub fn bridge_add(bridge: &str, port: &str) -> io::Result<()> {
    let mut req = ifreq(port)?;
    ioctl(SIOCGIFINDEX, &mut req, &format!("find {port}"))?;
    // SAFETY: SIOCGIFINDEX filled the union's int member.
    let index = unsafe { req.data.index };
    let mut br = ifreq(bridge)?;
    br.data = IfrData { index };
    ioctl(SIOCBRADDIF, &mut br, &format!("add {port} to bridge {bridge}"))
}

/// Creates TAP `name` (no packet-info header) owned by the returned fd: the interface goes
/// away when the fd is closed, so a VMM that dies leaves no TAP behind.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let mut req = ifreq(name)?;
    req.data = IfrData {
        flags: IFF_TAP | IFF_NO_PI,
    };
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(tun);
    // SAFETY: req is a live `struct ifreq`, as TUNSETIFF expects.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("create TAP {name}: {e}")));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn interface_names_are_bounded() {
        assert!(ifname("eth0").is_ok());
        assert!(ifname("").is_err());
        assert!(ifname("a-very-long-name0").is_err());
    }
}
