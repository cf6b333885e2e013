//! IPv4 subnets as the kernel command line, the flags and Spawn's addressing write them.

use std::net::Ipv4Addr;

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Why a value of the kernel command line (or a flag) was not taken; says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("'{0}' is not A.B.C.D/N")]
    NotCidr(String),
    #[error("'{0}' is not an IPv4 address")]
    NotIpv4(String),
    #[error("'{0}' is not a prefix length")]
    NotPrefix(String),
    #[error("prefix /{0} is longer than 32")]
    PrefixTooLong(u8),
    #[error("'{value}' is not {expected}")]
    Not { value: String, expected: &'static str },
    #[error("unknown parameter")]
    Unknown,
}

/// The netmask of a prefix length, as a number (/0: none; beyond 32: all ones).
pub fn netmask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

impl Ipv4Cidr {
    /// The subnet's network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & netmask(self.prefix))
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        let m = netmask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let (a, p) = s.split_once('/').ok_or_else(|| ValueError::NotCidr(s.into()))?;
        let addr = a.parse().map_err(|_| ValueError::NotIpv4(a.into()))?;
        let prefix: u8 = p.parse().map_err(|_| ValueError::NotPrefix(p.into()))?;
        if prefix > 32 {
            return Err(ValueError::PrefixTooLong(prefix));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
