//! Which peers clients may reach through the relay.
//!
//! A relay inside a cluster is a door into it: by default it refuses
//! loopback, unspecified, link-local, multicast and broadcast addresses,
//! cloud metadata endpoints and its own addresses, and when an allow-list is
//! configured (the pod network, named endpoints) nothing outside it. The
//! deny-list wins over the allow-list.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An address block such as `10.244.0.0/16` or `fd00::/8`; a bare address
/// is a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `network` with `prefix` leading bits.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    /// Whether `ip` lies in the block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = ((prefix / 8) as usize, prefix % 8);
    if net[..bytes] != ip[..bytes] {
        return false;
    }
    bits == 0 || {
        let mask = 0xFFu8 << (8 - bits);
        net[bytes] & mask == ip[bytes] & mask
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`: checks must not be bypassed by mapping.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a string is not a CIDR.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address block; write it as 10.0.0.0/8, fd00::/8 or a single address")]
pub struct CidrParseError(String);

impl FromStr for Cidr {
    type Err = CidrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrParseError(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| error())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse().map_err(|_| error())?,
            None => max,
        };
        Cidr::new(network, prefix).ok_or_else(error)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Blocks refused by default: nothing a media server in a cluster needs,
/// everything an attacker would aim at.
pub fn default_denied() -> Vec<Cidr> {
    let v4 = |a, b, c, d, prefix| Cidr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix);
    let v6 = |ip: Ipv6Addr, prefix| Cidr::new(IpAddr::V6(ip), prefix);
    [
        v4(0, 0, 0, 0, 8),                         // "this network", unspecified
        v4(127, 0, 0, 0, 8),                       // loopback
        v4(169, 254, 0, 0, 16),                    // link-local, incl. 169.254.169.254 metadata
        v4(224, 0, 0, 0, 4),                       // multicast
        v4(240, 0, 0, 0, 4),                       // reserved, incl. broadcast
        v4(100, 100, 100, 200, 32),                // Alibaba Cloud metadata
        v6(Ipv6Addr::UNSPECIFIED, 128),            // unspecified
        v6(Ipv6Addr::LOCALHOST, 128),              // loopback
        v6("fe80::".parse().unwrap(), 10),         // link-local
        v6("ff00::".parse().unwrap(), 8),          // multicast
        v6("fd00:ec2::254".parse().unwrap(), 128), // AWS metadata over IPv6
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The peer policy in force.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// When non-empty, peers must lie in one of these.
    pub allowed: Vec<Cidr>,
    /// Peers in these are refused, whatever `allowed` says.
    pub denied: Vec<Cidr>,
}

impl PeerPolicy {
    /// Whether a client may reach `peer`.
    pub fn permits(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        if self.denied.iter().any(|cidr| cidr.contains(peer)) {
            return false;
        }
        self.allowed.is_empty() || self.allowed.iter().any(|cidr| cidr.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_hosts() {
        let cidr: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(cidr.contains(ip("10.244.3.4")));
        assert!(!cidr.contains(ip("10.245.0.1")));
        let host: Cidr = "fd00::7".parse().unwrap();
        assert!(host.contains(ip("fd00::7")) && !host.contains(ip("fd00::8")));
        let odd: Cidr = "198.18.0.0/15".parse().unwrap();
        assert!(odd.contains(ip("198.19.255.255")) && !odd.contains(ip("198.20.0.0")));
        for bad in ["10.0.0.0/33", "fd00::/129", "banana", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_deny_list_covers_the_dangerous_blocks() {
        let policy = PeerPolicy {
            allowed: vec![],
            denied: default_denied(),
        };
        for denied in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
        ] {
            assert!(!policy.permits(ip(denied)), "{denied} must be refused");
        }
        for allowed in ["198.18.0.1", "10.0.0.1", "fd00::1", "2001:db8::1"] {
            assert!(policy.permits(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn allow_list_restricts_and_deny_list_wins() {
        let policy = PeerPolicy {
            allowed: vec![
                "10.244.0.0/16".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            denied: default_denied(),
        };
        assert!(policy.permits(ip("10.244.1.1")));
        assert!(policy.permits(ip("::ffff:10.244.1.1")));
        assert!(!policy.permits(ip("10.0.0.1")), "outside the allow-list");
        assert!(!policy.permits(ip("127.0.0.1")), "deny wins over allow");
    }
}
