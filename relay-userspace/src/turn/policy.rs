//! Which peers clients may reach through the relay.
//!
//! A relay inside a cluster is a door into it: by default it refuses
//! loopback, unspecified, link-local, multicast and broadcast addresses and
//! cloud metadata endpoints; it always refuses the node's own addresses,
//! except its relayed transport addresses (other clients of this relay);
//! and when an allow-list is configured (the pod network, named endpoints)
//! nothing outside it. The deny-list wins over the allow-list.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
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
    /// The block of `network` with `prefix` leading bits. A block written
    /// in IPv4-mapped form (`::ffff:10.0.0.0/104`) is the IPv4 block it
    /// maps, since addresses are compared in canonical form.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        if let IpAddr::V6(v6) = network
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Some(Cidr {
                network: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Some(Cidr { network, prefix })
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

/// A transport address with its IP in canonical form.
pub fn canonical_transport(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(address.ip()), address.port())
}

/// The IPv4 addresses an IPv6 address carries, which a translator or a
/// tunnel on the way may deliver to: IPv4-compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::/96`, RFC 6052, and `64:ff9b:1::/48`, RFC 8215, with the
/// address in bits 48 to 87 around the u octet), 6to4 (`2002::/16`) and
/// Teredo (`2001::/32`: the server, and the client, stored inverted).
/// (IPv4-mapped addresses are handled by [`canonical`].)
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = ip.octets();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Ipv4Addr::new(a, b, c, d);
    let mut found = Vec::new();
    // IPv4-compatible, deprecated but still parsed by some stacks; :: and
    // ::1 are not IPv4 addresses.
    if o[..12] == [0; 12] && u32::from_be_bytes([o[12], o[13], o[14], o[15]]) > 1 {
        found.push(v4(o[12], o[13], o[14], o[15]));
    }
    if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
        found.push(v4(o[12], o[13], o[14], o[15]));
    }
    if o[..6] == [0, 0x64, 0xff, 0x9b, 0, 1] {
        found.push(v4(o[6], o[7], o[9], o[10]));
    }
    if o[..2] == [0x20, 0x02] {
        found.push(v4(o[2], o[3], o[4], o[5]));
    }
    if o[..4] == [0x20, 0x01, 0, 0] {
        found.push(v4(o[4], o[5], o[6], o[7]));
        found.push(v4(!o[12], !o[13], !o[14], !o[15]));
    }
    found
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
        v4(100, 64, 0, 0, 10),                     // shared address space (CGNAT)
        v4(192, 0, 0, 0, 24),                      // IETF protocol assignments
        v4(168, 63, 129, 16, 32),                  // Azure wire server
        v6(Ipv6Addr::UNSPECIFIED, 128),            // unspecified
        v6(Ipv6Addr::LOCALHOST, 128),              // loopback
        v6("fe80::".parse().unwrap(), 10),         // link-local
        v6("ff00::".parse().unwrap(), 8),          // multicast
        v6("fd00:ec2::254".parse().unwrap(), 128), // AWS metadata over IPv6
        v6("fec0::".parse().unwrap(), 10),         // site-local (deprecated)
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The relay's own addresses, as far as peers are concerned.
///
/// A relayed transport address of this server (a relay address with a port
/// in the relay port range) is a legitimate peer: two clients of one relay
/// talk to each other through it, as two browsers behind NATs do. Every
/// other address of the node is not: it would reach the node's own services
/// (anything bound to a wildcard address), other listeners, or chain TURN
/// into TURN.
#[derive(Clone, Debug, Default)]
pub struct OwnAddresses {
    /// The relay addresses (canonical), which relayed sockets bind to.
    pub relay: Vec<IpAddr>,
    /// Ports relayed sockets bind to.
    pub relay_ports: Option<RangeInclusive<u16>>,
    /// Every address configured on the node's interfaces (canonical), as
    /// the kernel reports them; kept current by the I/O shell.
    pub local: HashSet<IpAddr>,
}

impl OwnAddresses {
    fn is_relay(&self, ip: IpAddr) -> bool {
        self.relay.contains(&ip)
    }
}

/// The peer policy in force.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// When non-empty, peers must lie in one of these.
    pub allowed: Vec<Cidr>,
    /// Peers in these are refused, whatever `allowed` says.
    pub denied: Vec<Cidr>,
    /// The relay's own addresses; relayed transport addresses are allowed
    /// as peers when `relay_to_relay` is set, every other local address is
    /// refused.
    pub own: OwnAddresses,
    /// Whether clients may reach other allocations of this relay.
    pub relay_to_relay: bool,
}

impl PeerPolicy {
    /// Whether a client may have a permission for `peer`'s IP
    /// (CreatePermission; permissions ignore ports). The relay's own
    /// relay addresses pass here and have their port checked by
    /// [`Self::permits_transport`].
    pub fn permits(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        if self.own.is_relay(peer) {
            return self.relay_to_relay;
        }
        if self.refuses(peer) {
            return false;
        }
        // An IPv6 peer is refused when an IPv4 address it carries would
        // be: a NAT64 gateway or a tunnel on the way delivers to that one.
        // (Carried addresses never grant what the allow-list does not.)
        if let IpAddr::V6(v6) = peer
            && embedded_ipv4(v6)
                .into_iter()
                .any(|v4| self.own.is_relay(v4.into()) || self.refuses(v4.into()))
        {
            return false;
        }
        self.allowed.is_empty() || self.allowed.iter().any(|cidr| cidr.contains(peer))
    }

    /// Whether `peer` (canonical) is one of the node's addresses or denied.
    fn refuses(&self, peer: IpAddr) -> bool {
        self.own.local.contains(&peer) || self.denied.iter().any(|cidr| cidr.contains(peer))
    }

    /// Whether a client may send to, or receive from, the transport address
    /// `peer` (ChannelBind, Send, data from peers): [`Self::permits`], and on
    /// a relay address only a port of the relay range.
    pub fn permits_transport(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        if self.own.is_relay(ip) {
            return self.relay_to_relay
                && self
                    .own
                    .relay_ports
                    .as_ref()
                    .is_some_and(|ports| ports.contains(&peer.port()));
        }
        self.permits(ip)
    }

    /// Whether `peer` is one of this relay's relayed transport addresses
    /// (traffic to it never leaves the node, so the kernel offload leaves
    /// it to userspace).
    pub fn is_own_relayed(&self, peer: SocketAddr) -> bool {
        self.own.is_relay(canonical(peer.ip()))
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
            denied: default_denied(),
            ..PeerPolicy::default()
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
    fn ipv4_carried_in_ipv6_is_checked_in_every_encoding() {
        let policy = PeerPolicy {
            denied: default_denied(),
            ..node_policy()
        };
        // 127.0.0.1, 169.254.169.254 and the node's own 198.18.9.1, as
        // IPv4-compatible, NAT64 (both prefixes), 6to4 and Teredo (server,
        // and client with its address inverted) addresses.
        for carried in [
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::c612:901",
            "64:ff9b:1:7f00:0:100::",
            "64:ff9b:1:c612:9:100::",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:4136:e378:8000:63bf:39ed:f6fe",
        ] {
            assert!(
                !policy.permits(ip(carried)),
                "{carried} carries a refused IPv4"
            );
        }
        // The same encodings of an ordinary address, and ordinary IPv6.
        for fine in [
            "64:ff9b::c612:505",
            "2002:c612:505::1",
            "2001:0:c612:505::39ed:faaa",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert!(policy.permits(ip(fine)), "{fine} must be allowed");
        }
        assert_eq!(
            embedded_ipv4(match ip("2001:0:4136:e378:8000:63bf:3fff:fdd2") {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => unreachable!(),
            }),
            [
                Ipv4Addr::new(65, 54, 227, 120),
                Ipv4Addr::new(192, 0, 2, 45)
            ],
            "RFC 4380's example"
        );
    }

    #[test]
    fn newer_special_blocks_are_denied_by_default() {
        let policy = PeerPolicy {
            denied: default_denied(),
            ..PeerPolicy::default()
        };
        for denied in [
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "168.63.129.16",
            "fec0::1",
        ] {
            assert!(!policy.permits(ip(denied)), "{denied} must be refused");
        }
        assert!(policy.permits(ip("100.128.0.1")));
    }

    #[test]
    fn blocks_written_in_mapped_form_are_ipv4_blocks() {
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(!mapped.contains(ip("11.0.0.1")));
        // A mapped prefix shorter than the mapping is an IPv6 block.
        let wide: Cidr = "::ffff:0:0/95".parse().unwrap();
        assert!(wide.contains(ip("::fffe:1:2")));
    }

    #[test]
    fn allow_list_restricts_and_deny_list_wins() {
        let policy = PeerPolicy {
            allowed: vec![
                "10.244.0.0/16".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            denied: default_denied(),
            ..PeerPolicy::default()
        };
        assert!(policy.permits(ip("10.244.1.1")));
        assert!(policy.permits(ip("::ffff:10.244.1.1")));
        assert!(!policy.permits(ip("10.0.0.1")), "outside the allow-list");
        assert!(!policy.permits(ip("127.0.0.1")), "deny wins over allow");
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A node with relay addresses 198.18.2.1 and fd00:2::1, ports
    /// 50000-50999, a listen address, a secondary address, a bridge
    /// address and a CNI address.
    fn node_policy() -> PeerPolicy {
        let local = [
            "198.18.0.2",
            "198.18.2.1",
            "198.18.2.7",
            "198.18.9.1",
            "fd00:2::1",
            "fd00:2::99",
        ];
        PeerPolicy {
            denied: default_denied(),
            own: OwnAddresses {
                relay: vec![ip("198.18.2.1"), ip("fd00:2::1")],
                relay_ports: Some(50000..=50999),
                local: local.iter().map(|text| ip(text)).collect(),
            },
            relay_to_relay: true,
            ..PeerPolicy::default()
        }
    }

    #[test]
    fn relayed_transport_addresses_are_peers_and_nothing_else_local_is() {
        let policy = node_policy();
        for relay in ["198.18.2.1", "::ffff:198.18.2.1", "fd00:2::1"] {
            assert!(policy.permits(ip(relay)), "{relay}: permission by IP");
        }
        for relayed in ["198.18.2.1:50000", "198.18.2.1:50999", "[fd00:2::1]:50123"] {
            assert!(policy.permits_transport(addr(relayed)), "{relayed}");
        }
        for other_port in ["198.18.2.1:3478", "198.18.2.1:49999", "[fd00:2::1]:51000"] {
            assert!(!policy.permits_transport(addr(other_port)), "{other_port}");
        }
        // Listen, secondary, bridge and CNI addresses and other IPv6
        // addresses of the node, in every encoding.
        for local in [
            "198.18.0.2",
            "198.18.2.7",
            "198.18.9.1",
            "::ffff:198.18.9.1",
            "fd00:2::99",
        ] {
            assert!(!policy.permits(ip(local)), "{local} is the node's own");
            let transport = SocketAddr::new(ip(local), 50000);
            assert!(!policy.permits_transport(transport), "{transport}");
        }
        assert!(
            policy.permits_transport(addr("198.18.5.5:50000")),
            "a real peer"
        );
        assert!(policy.is_own_relayed(addr("198.18.2.1:50000")));
        assert!(!policy.is_own_relayed(addr("198.18.5.5:50000")));
    }

    #[test]
    fn relay_to_relay_can_be_switched_off_and_ignores_the_allow_list() {
        let mut policy = node_policy();
        policy.allowed = vec!["10.244.0.0/16".parse().unwrap()];
        assert!(policy.permits_transport(addr("198.18.2.1:50000")));
        assert!(!policy.permits_transport(addr("198.18.5.5:50000")));
        policy.relay_to_relay = false;
        assert!(!policy.permits(ip("198.18.2.1")));
        assert!(!policy.permits_transport(addr("198.18.2.1:50000")));
    }
}
