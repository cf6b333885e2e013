//! The `aurae.*=` kernel command-line parameters that configure the appliance.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `aurae.log=LEVEL` | error, warn, info, debug, trace | `info` |
//! | `aurae.hostname=NAME` | the node's hostname | `aurae` |
//! | `aurae.iface=NAME` | the uplink interface | `eth0` |
//! | `aurae.ip=A.B.C.D/N` or `dhcp` | static IPv4 address of the uplink, or one leased by DHCP (`net::dhcp`) | none (link only brought up) |
//! | `aurae.gw=A.B.C.D` | default gateway | none |
//! | `aurae.listen=ADDR:PORT` | where the API listens | `0.0.0.0:8443` |
//! | `aurae.bridge=NAME` | bridge that child instances' TAPs attach to | `aurae0` |
//! | `aurae.bridge_ip=A.B.C.D/N` | the bridge's address | `10.254.0.1/24` |
//! | `aurae.max_workloads=N` | workloads the node keeps at once (1..=65536) | `4096` |
//! | `aurae.child_check=SECS` | how often a served child's health is checked, and how long it has to answer (1..=300); three misses in a row and it is killed | `10` |
//! | `aurae.images_mib=N` | the image store's limit, in MiB | a quarter of the RAM |
//! | `aurae.insecure_registries=H:P,...` | registries pulled from over plain HTTP | none |
//! | `aurae.data=/dev/NAME` | a disk whose filesystem holds the image store | none (RAM) |
//! | `aurae.bridges=NAME[=A.B.C.D/N],...` | named bridges pods attach extra interfaces to (`Pod.networks`), with the node's address on each if given | none |
//! | `aurae.cri=PATH` | serve the Kubernetes CRI to a kubelet on this unix socket (root only); `aurae.cri=1` is `/run/aurae/cri.sock` | off |
//! | `aurae.cri_stream=ADDR:PORT` | where the CRI's streaming server (exec through kubelet) listens; port 0 picks a free one | `127.0.0.1:0` |
//! | `aurae.nic=NAME,MAC,A.B.C.D/N` | (set by the parent for a spawned instance, repeatable) name the NIC with this MAC and give it this address | none |

pub use crate::net::cidr::{Ipv4Cidr, ValueError};
use crate::net::valid_hostname;
use std::net::{Ipv4Addr, SocketAddr};
use tracing::Level;

/// The appliance configuration read from the kernel command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BootConfig {
    pub log_level: Level,
    pub hostname: String,
    pub iface: String,
    pub ip: Option<Ipv4Cidr>,
    /// `aurae.ip=dhcp`: the uplink's address (and route, and hostname unless
    /// `aurae.hostname` names one) from a DHCP lease.
    pub dhcp: bool,
    /// `aurae.hostname` was given (a lease's hostname then does not replace it).
    pub hostname_given: bool,
    pub gateway: Option<Ipv4Addr>,
    pub listen: SocketAddr,
    pub bridge: String,
    pub bridge_ip: Ipv4Cidr,
    /// Booted by auraed's VMM (a spawned instance): power off through the VMM's port.
    pub vmm: bool,
    /// How many workloads (table entries: cells, private cells included, executables,
    /// VMs, instances) the node keeps at once.
    pub max_workloads: usize,
    /// Seconds between a served child's health checks, and for each answer.
    pub child_check_secs: u64,
    /// The image store's size limit (`aurae.images_mib`); None: a quarter of the RAM.
    pub images_max_bytes: Option<u64>,
    /// Registries reached over plain HTTP (`aurae.insecure_registries=HOST:PORT,...`),
    /// besides those of the registries file.
    pub insecure_registries: Vec<String>,
    /// The data disk (`aurae.data=/dev/vdb`): mounted, it holds the image store.
    pub data_device: Option<std::path::PathBuf>,
    /// Named bridges for pods' extra interfaces (`aurae.bridges=`).
    pub bridges: Vec<crate::net::NamedBridge>,
    /// A spawned instance's extra NICs (`aurae.nic=`, one each).
    pub nics: Vec<crate::net::Nic>,
    /// Where to serve the Kubernetes CRI (`aurae.cri=`); None: only on the API port.
    pub cri_socket: Option<std::path::PathBuf>,
    /// Where the CRI's streaming server listens (`aurae.cri_stream=`).
    pub cri_stream: SocketAddr,
}

/// The default of `aurae.max_workloads`: room for the bench's 1000 kept executables and
/// their cells several times over, while bounding what the table and log buffers hold.
pub const DEFAULT_MAX_WORKLOADS: usize = 4096;
const MAX_WORKLOADS_LIMIT: usize = 65536;

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            log_level: Level::INFO,
            hostname: "aurae".into(),
            iface: "eth0".into(),
            ip: None,
            dhcp: false,
            hostname_given: false,
            gateway: None,
            listen: SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT)),
            bridge: "aurae0".into(),
            bridge_ip: Ipv4Cidr {
                addr: Ipv4Addr::new(10, 254, 0, 1),
                prefix: 24,
            },
            vmm: false,
            max_workloads: DEFAULT_MAX_WORKLOADS,
            child_check_secs: 10,
            images_max_bytes: None,
            insecure_registries: Vec::new(),
            data_device: None,
            bridges: Vec::new(),
            nics: Vec::new(),
            cri_socket: None,
            cri_stream: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl BootConfig {
    /// Parses a kernel command line. Unknown or malformed `aurae.*` parameters are reported
    /// as warnings and leave the default in place; they never stop the boot.
    pub fn parse(cmdline: &str) -> (BootConfig, Vec<String>) {
        let mut cfg = BootConfig::default();
        let mut warnings = Vec::new();
        for tok in cmdline.split_whitespace() {
            let Some(rest) = tok.strip_prefix("aurae.") else {
                continue;
            };
            let (key, val) = rest.split_once('=').unwrap_or((rest, ""));
            let not = |expected| ValueError::Not {
                value: val.into(),
                expected,
            };
            let res: Result<(), ValueError> = match key {
                "log" => crate::logging::parse_level(val)
                    .map(|l| cfg.log_level = l)
                    .ok_or_else(|| not("a log level (error|warn|info|debug|trace)")),
                "hostname" if valid_hostname(val) => {
                    cfg.hostname = val.into();
                    cfg.hostname_given = true;
                    Ok(())
                }
                "hostname" => Err(not("a valid hostname")),
                "iface" if valid_ifname(val) => {
                    cfg.iface = val.into();
                    Ok(())
                }
                "bridge" if valid_ifname(val) => {
                    cfg.bridge = val.into();
                    Ok(())
                }
                "iface" | "bridge" => Err(not("an interface name (1-15 chars, no '/')")),
                "ip" if val == "dhcp" => {
                    cfg.dhcp = true;
                    cfg.ip = None;
                    Ok(())
                }
                "ip" => val.parse().map(|c| {
                    cfg.ip = Some(c);
                    cfg.dhcp = false;
                }),
                "bridge_ip" => val.parse().map(|c| cfg.bridge_ip = c),
                "gw" => val
                    .parse()
                    .map(|g| cfg.gateway = Some(g))
                    .map_err(|_| ValueError::NotIpv4(val.into())),
                "listen" => val.parse().map(|l| cfg.listen = l).map_err(|_| not("ADDR:PORT")),
                "max_workloads" => match val.parse::<usize>() {
                    Ok(n) if (1..=MAX_WORKLOADS_LIMIT).contains(&n) => {
                        cfg.max_workloads = n;
                        Ok(())
                    }
                    _ => Err(not("a number of workloads, 1..=65536")),
                },
                "child_check" => match val.parse::<u64>() {
                    Ok(n) if (1..=300).contains(&n) => {
                        cfg.child_check_secs = n;
                        Ok(())
                    }
                    _ => Err(not("seconds, 1..=300")),
                },
                "insecure_registries" => {
                    let hosts: Vec<String> = val.split(',').map(str::to_owned).collect();
                    let valid = |h: &String| {
                        !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                    };
                    if hosts.iter().all(valid) {
                        cfg.insecure_registries = hosts;
                        Ok(())
                    } else {
                        Err(not("HOST[:PORT] names, comma-separated"))
                    }
                }
                "data" => {
                    let ok = val.strip_prefix("/dev/").is_some_and(|n| {
                        !n.is_empty() && n.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
                    });
                    if ok {
                        cfg.data_device = Some(val.into());
                        Ok(())
                    } else {
                        Err(not("a device under /dev, e.g. /dev/vdb"))
                    }
                }
                "images_mib" => match val.parse::<u64>() {
                    Ok(n) if n > 0 => {
                        cfg.images_max_bytes = Some(n << 20);
                        Ok(())
                    }
                    _ => Err(not("a size in MiB above 0")),
                },
                "cri" if val == "1" => {
                    cfg.cri_socket = Some(crate::cri::DEFAULT_SOCKET.into());
                    Ok(())
                }
                "cri" => {
                    let ok = val.starts_with('/') && val.split('/').all(|seg| seg != "." && seg != "..");
                    if ok {
                        cfg.cri_socket = Some(val.into());
                        Ok(())
                    } else {
                        Err(not(
                            "an absolute path for the CRI socket (or 1 for /run/aurae/cri.sock)",
                        ))
                    }
                }
                "cri_stream" => match val.parse::<SocketAddr>() {
                    Ok(a) => {
                        cfg.cri_stream = a;
                        Ok(())
                    }
                    Err(_) => Err(not(
                        "ADDR:PORT for the CRI's streaming server (127.0.0.1:0 picks a free port)",
                    )),
                },
                "bridges" => parse_bridges(val).map(|b| cfg.bridges = b),
                "nic" => parse_nic(val).map(|n| cfg.nics.push(n)),
                "vmm" => match val {
                    "0" | "1" => {
                        cfg.vmm = val == "1";
                        Ok(())
                    }
                    _ => Err(not("0 or 1")),
                },
                _ => Err(ValueError::Unknown),
            };
            if let Err(e) = res {
                warnings.push(format!("ignoring aurae.{key}: {e}"));
            }
        }
        (cfg, warnings)
    }
}

/// What a parent tells a child auraed it boots in a microVM, on the child's kernel command
/// line: its name, its address on the parent's bridge and the parent as its gateway, the
/// subnet of its own bridge (for its children), and one extra NIC per attachment (found by
/// MAC). The parent writes it with `to_cmdline`; the child reads it back with `parse`, the
/// same parser as every other `aurae.*` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildBoot {
    pub hostname: String,
    pub ip: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub bridge_ip: Ipv4Cidr,
    pub nics: Vec<crate::net::Nic>,
}

impl ChildBoot {
    /// The `aurae.*` parameters (`aurae.vmm=1` first: the child powers off through its VMM).
    pub fn to_cmdline(&self) -> String {
        let mut s = format!(
            "aurae.vmm=1 aurae.hostname={} aurae.ip={} aurae.gw={} aurae.bridge_ip={}",
            self.hostname, self.ip, self.gateway, self.bridge_ip
        );
        for n in &self.nics {
            s.push_str(&format!(
                " aurae.nic={},{},{}",
                n.name,
                crate::net::ioctl::format_mac(n.mac),
                n.address
            ));
        }
        s
    }

    /// The child's settings from its command line; None when it was not booted as one (no
    /// `aurae.vmm=1`, or no address or gateway), with the parser's warnings.
    pub fn parse(cmdline: &str) -> (Option<ChildBoot>, Vec<String>) {
        let (cfg, warnings) = BootConfig::parse(cmdline);
        let child = match (cfg.vmm, cfg.ip, cfg.gateway) {
            (true, Some(ip), Some(gateway)) => Some(ChildBoot {
                hostname: cfg.hostname,
                ip,
                gateway,
                bridge_ip: cfg.bridge_ip,
                nics: cfg.nics,
            }),
            _ => None,
        };
        (child, warnings)
    }
}

/// `lab0,lab1=192.168.50.1/24`: names unique, addresses optional.
fn parse_bridges(val: &str) -> Result<Vec<crate::net::NamedBridge>, ValueError> {
    let expected = "NAME[=A.B.C.D/N],... with distinct interface names";
    let mut out: Vec<crate::net::NamedBridge> = Vec::new();
    for item in val.split(',') {
        let (name, address) = match item.split_once('=') {
            Some((n, a)) => (n, Some(a.parse()?)),
            None => (item, None),
        };
        if !valid_ifname(name) || out.iter().any(|b| b.name == name) {
            return Err(ValueError::Not {
                value: val.into(),
                expected,
            });
        }
        out.push(crate::net::NamedBridge {
            name: name.into(),
            address,
        });
    }
    Ok(out)
}

/// `eth1,02:41:00:00:00:07,192.168.50.3/24`.
fn parse_nic(val: &str) -> Result<crate::net::Nic, ValueError> {
    let not = || ValueError::Not {
        value: val.into(),
        expected: "NAME,MAC,A.B.C.D/N",
    };
    let mut parts = val.split(',');
    let (Some(name), Some(mac), Some(addr), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(not());
    };
    if !valid_ifname(name) {
        return Err(not());
    }
    Ok(crate::net::Nic {
        name: name.into(),
        mac: crate::net::ioctl::parse_mac(mac).ok_or_else(not)?,
        address: addr.parse()?,
    })
}

/// Linux interface names: 1..=15 bytes, no '/', no whitespace.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a parent writes, its child reads back whole, among the VM's own parameters.
    #[test]
    fn a_childs_boot_settings_round_trip_through_its_command_line() {
        let boot = ChildBoot {
            hostname: "web-1".into(),
            ip: "10.254.0.7/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 254, 0, 1),
            bridge_ip: "10.254.7.1/24".parse().unwrap(),
            nics: vec![
                crate::net::Nic {
                    name: "eth1".into(),
                    mac: [0x52, 0x54, 0, 0xab, 0, 3],
                    address: "192.168.50.2/24".parse().unwrap(),
                },
                crate::net::Nic {
                    name: "eth2".into(),
                    mac: [0x52, 0x54, 0, 0xab, 0, 4],
                    address: "192.168.60.9/24".parse().unwrap(),
                },
            ],
        };
        let line = format!("console=ttyS0 reboot=k {} quiet", boot.to_cmdline());
        let (back, warnings) = ChildBoot::parse(&line);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(back, Some(boot.clone()));
        // The same line as a node reads it.
        let (cfg, _) = BootConfig::parse(&line);
        assert!(cfg.vmm && cfg.hostname_given);
        assert_eq!(cfg.nics, boot.nics);
        // Not a child: no settings.
        assert_eq!(ChildBoot::parse("console=ttyS0 aurae.ip=10.0.0.2/24").0, None);
    }

    #[test]
    fn defaults_when_nothing_given() {
        let (cfg, w) = BootConfig::parse("console=ttyS0 quiet");
        assert_eq!(cfg, BootConfig::default());
        assert!(w.is_empty());
    }

    #[test]
    fn parses_every_parameter() {
        let (cfg, w) = BootConfig::parse(
            "console=ttyS0 aurae.log=debug aurae.hostname=node-1 aurae.iface=eth1 aurae.ip=10.0.2.15/24 \
             aurae.gw=10.0.2.2 aurae.listen=0.0.0.0:9000 aurae.bridge=br9 aurae.bridge_ip=10.9.0.1/16 aurae.max_workloads=40 aurae.child_check=3 \
             aurae.images_mib=256 aurae.insecure_registries=10.0.2.100:5000,reg.local aurae.data=/dev/vdb \
             aurae.cri=/run/k/cri.sock aurae.cri_stream=10.0.2.15:10010",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.cri_stream.to_string(), "10.0.2.15:10010");
        assert_eq!(cfg.log_level, Level::DEBUG);
        assert_eq!(cfg.hostname, "node-1");
        assert_eq!(cfg.iface, "eth1");
        assert_eq!(
            cfg.ip,
            Some(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24
            })
        );
        assert_eq!(cfg.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.bridge, "br9");
        assert_eq!(cfg.bridge_ip.to_string(), "10.9.0.1/16");
        assert_eq!(cfg.max_workloads, 40);
        assert_eq!(cfg.child_check_secs, 3);
        assert_eq!(cfg.images_max_bytes, Some(256 << 20));
        assert_eq!(cfg.insecure_registries, ["10.0.2.100:5000", "reg.local"]);
        assert_eq!(cfg.data_device.as_deref(), Some(std::path::Path::new("/dev/vdb")));
        assert_eq!(cfg.cri_socket.as_deref(), Some(std::path::Path::new("/run/k/cri.sock")));
        let (cfg, _) = BootConfig::parse("aurae.cri=1");
        assert_eq!(
            cfg.cri_socket.as_deref(),
            Some(std::path::Path::new("/run/aurae/cri.sock"))
        );
        for bad in ["cri.sock", "/run/../etc/x", ""] {
            let (cfg, w) = BootConfig::parse(&format!("aurae.cri={bad}"));
            assert_eq!(cfg.cri_socket, None, "{bad}");
            assert!(w[0].contains("absolute path"), "{w:?}");
        }
        for bad in ["10010", "localhost:10010", "1.2.3.4"] {
            let (cfg, w) = BootConfig::parse(&format!("aurae.cri_stream={bad}"));
            assert_eq!(cfg.cri_stream, BootConfig::default().cri_stream, "{bad}");
            assert!(w[0].contains("ADDR:PORT"), "{w:?}");
        }
        for bad in ["vdb", "/dev/", "/dev/../etc/passwd", "/etc/x"] {
            let (cfg, w) = BootConfig::parse(&format!("aurae.data={bad}"));
            assert_eq!(cfg.data_device, None, "{bad}");
            assert!(w[0].contains("/dev/vdb"), "{w:?}");
        }
        for bad in ["0", "65537", "x"] {
            let (cfg, w) = BootConfig::parse(&format!("aurae.max_workloads={bad}"));
            assert_eq!(cfg.max_workloads, DEFAULT_MAX_WORKLOADS);
            assert!(w[0].contains("1..=65536"), "{w:?}");
        }
    }

    #[test]
    fn dhcp_or_a_static_address_whichever_comes_last() {
        let (cfg, w) = BootConfig::parse("aurae.ip=10.0.2.15/24 aurae.ip=dhcp");
        assert!(w.is_empty() && cfg.dhcp && cfg.ip.is_none() && !cfg.hostname_given);
        let (cfg, _) = BootConfig::parse("aurae.ip=dhcp aurae.ip=10.0.2.15/24 aurae.hostname=n1");
        assert!(!cfg.dhcp && cfg.ip.is_some() && cfg.hostname_given);
    }

    #[test]
    fn named_bridges_and_nics() {
        let (cfg, w) = BootConfig::parse(
            "aurae.bridges=lab0,lab1=192.168.50.1/24 aurae.nic=eth1,02:41:00:00:00:0a,192.168.50.3/24 \
             aurae.nic=eth2,02:41:00:00:01:00,10.1.0.2/16",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.bridges.len(), 2);
        assert_eq!((cfg.bridges[0].name.as_str(), cfg.bridges[0].address), ("lab0", None));
        assert_eq!(
            cfg.bridges[1].address.map(|a| a.to_string()).as_deref(),
            Some("192.168.50.1/24")
        );
        assert_eq!(cfg.nics[0].mac, [2, 0x41, 0, 0, 0, 10]);
        assert_eq!(cfg.nics[1].name, "eth2");
        assert_eq!(cfg.nics[1].address.to_string(), "10.1.0.2/16");
        for bad in [
            "aurae.bridges=a,a",
            "aurae.bridges=a/b",
            "aurae.bridges=a=1.2.3.4",
            "aurae.nic=eth1,02:41:00:00:00,1.2.3.4/24",
            "aurae.nic=eth1,02:41:00:00:00:0a",
            "aurae.nic=eth1,02:41:00:00:00:0g,1.2.3.4/24",
        ] {
            let (cfg, w) = BootConfig::parse(bad);
            assert!(cfg.bridges.is_empty() && cfg.nics.is_empty(), "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
        }
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let (cfg, w) =
            BootConfig::parse("aurae.ip=10.0.0.1/40 aurae.gw=nope aurae.log=loud aurae.bogus=1 aurae.iface=a/b");
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(w.len(), 5, "{w:?}");
        assert!(w[0].contains("aurae.ip") && w[0].contains("/40"));
    }
}
