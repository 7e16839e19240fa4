//! IPv4 subnets (`10.4.0.0/24`): parsing, overlap, and the host's routes they must not collide
//! with. Networks berth creates are IPv4; foreign configs with IPv6 ranges are carried untouched.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An IPv4 network address with its prefix length; the host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet> {
        if prefix > 32 {
            return Err(Error::invalid(format!(
                "invalid prefix length /{prefix} for {addr}"
            )));
        }
        Ok(Subnet::of(addr, prefix))
    }

    /// For prefixes known to be valid: one above 32 is taken as 32.
    pub fn of(addr: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.addr) & mask(p) == u32::from(other.addr) & mask(p)
    }

    /// The `n`th address of the subnet (`1` is the conventional gateway).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Subnet {
    type Err = Error;
    /// `A.B.C.D/N`; host bits must be zero, as a subnet given with them is most likely a typo.
    fn from_str(s: &str) -> Result<Subnet> {
        let bad = || Error::invalid(format!("invalid IPv4 subnet {s:?} (want A.B.C.D/N)"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let subnet = Subnet::new(addr, prefix).map_err(|_| bad())?;
        if subnet.addr != addr {
            return Err(Error::invalid(format!(
                "invalid IPv4 subnet {s:?}: host bits set (did you mean {subnet}?)"
            )));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A route of the host's main IPv4 table (from /proc/net/route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub iface: String,
    pub dst: Subnet,
}

/// The host's IPv4 routes other than the default one.
pub fn host_routes() -> Result<Vec<HostRoute>> {
    let text = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| Error::io("read /proc/net/route", e))?;
    Ok(parse_proc_routes(&text))
}

fn parse_proc_routes(text: &str) -> Vec<HostRoute> {
    let mut routes = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The kernel prints the network-order bytes as a native integer.
        let (Ok(dst), Ok(m)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        let dst = Ipv4Addr::from(dst.to_ne_bytes());
        let prefix = m.count_ones() as u8;
        if prefix == 0 {
            continue;
        }
        if let Ok(dst) = Subnet::new(dst, prefix) {
            routes.push(HostRoute {
                iface: f[0].to_string(),
                dst,
            });
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_overlaps() {
        let a: Subnet = "10.4.0.0/24".parse().unwrap();
        let b: Subnet = "10.4.0.0/16".parse().unwrap();
        let c: Subnet = "10.5.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert_eq!(a.host(1), Some(Ipv4Addr::new(10, 4, 0, 1)));
        assert_eq!(a.host(256), None);
        assert!("10.4.0.1/24".parse::<Subnet>().is_err());
        assert!("10.4.0.0/33".parse::<Subnet>().is_err());
        assert!("nonsense".parse::<Subnet>().is_err());
    }

    // The sample is what a little-endian kernel prints.
    #[cfg(target_endian = "little")]
    #[test]
    fn reads_proc_net_route() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let routes = parse_proc_routes(text);
        assert_eq!(
            routes,
            vec![HostRoute {
                iface: "eth0".into(),
                dst: "192.0.2.0/24".parse().unwrap()
            }]
        );
    }
}
