//! Advertised (public) relayed addresses, for a relay behind a 1:1 NAT
//! (coturn's `external-ip`, a cloud node's public IP DNATed to it).
//!
//! Clients are told the public IP, with the bound port, in
//! XOR-RELAYED-ADDRESS; everything inside the server (allocations, events,
//! the kernel offload) keeps the bound address. The two meet where clients
//! name this relay's relayed addresses as peers: two clients behind the
//! same NATed relay learn each other's public candidates, so a public
//! address given as a peer is translated to the bound one before the policy
//! and the lookups see it, and a bound peer shown to a client is
//! translated back.

use std::net::{IpAddr, SocketAddr};

use super::policy::canonical;

/// The public IP of each family, if any. A family without one advertises
/// its bound address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublicAddresses {
    /// Advertised instead of the bound IPv4 relay address.
    pub ipv4: Option<IpAddr>,
    /// Advertised instead of the bound IPv6 relay address.
    pub ipv6: Option<IpAddr>,
}

impl PublicAddresses {
    /// What clients are told for the bound relayed address `bound`: the
    /// public IP of its family with the same port, or `bound` itself.
    pub fn advertise(&self, bound: SocketAddr) -> SocketAddr {
        match self.of_family(canonical(bound.ip()).is_ipv4()) {
            Some(public) => SocketAddr::new(public, bound.port()),
            None => bound,
        }
    }

    /// The bound relayed address a client means by `peer` (canonical):
    /// when `peer`'s IP is a public address of this relay, the relay
    /// address of that family in `relay` (the first one, or the one
    /// `is_bound` recognises when there are several) with the same port;
    /// any other address is itself. The policy then checks the port as it
    /// does for bound relayed addresses, so a public IP never reaches the
    /// node's other services through the NAT's hairpin.
    pub fn to_bound(
        &self,
        peer: SocketAddr,
        relay: &[IpAddr],
        is_bound: impl Fn(SocketAddr) -> bool,
    ) -> SocketAddr {
        let ip = canonical(peer.ip());
        let v4 = ip.is_ipv4();
        if self.of_family(v4) != Some(ip) || relay.contains(&ip) {
            return peer;
        }
        let mut candidates = relay
            .iter()
            .filter(|relay| relay.is_ipv4() == v4)
            .map(|relay| SocketAddr::new(*relay, peer.port()));
        let first = candidates.next();
        first
            .into_iter()
            .chain(candidates)
            .find(|candidate| is_bound(*candidate))
            .or(first)
            .unwrap_or(peer)
    }

    fn of_family(&self, v4: bool) -> Option<IpAddr> {
        if v4 { self.ipv4 } else { self.ipv6 }.map(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn public() -> PublicAddresses {
        PublicAddresses {
            ipv4: Some("203.0.113.7".parse().unwrap()),
            ipv6: None,
        }
    }

    #[test]
    fn advertises_the_public_ip_of_the_family_with_the_bound_port() {
        let public = public();
        assert_eq!(
            public.advertise(addr("10.0.0.5:50000")),
            addr("203.0.113.7:50000")
        );
        assert_eq!(
            public.advertise(addr("[fd00::5]:50000")),
            addr("[fd00::5]:50000"),
            "no IPv6 public address"
        );
        assert_eq!(
            PublicAddresses::default().advertise(addr("10.0.0.5:1")),
            addr("10.0.0.5:1")
        );
    }

    #[test]
    fn public_peers_become_bound_relay_addresses() {
        let public = public();
        let relay: Vec<IpAddr> = vec![
            "10.0.0.5".parse().unwrap(),
            "10.0.0.6".parse().unwrap(),
            "fd00::5".parse().unwrap(),
        ];
        let none = |_| false;
        assert_eq!(
            public.to_bound(addr("203.0.113.7:50000"), &relay, none),
            addr("10.0.0.5:50000")
        );
        // The second relay address when an allocation is bound there.
        let on_six = |a: SocketAddr| a == addr("10.0.0.6:50001");
        assert_eq!(
            public.to_bound(addr("203.0.113.7:50001"), &relay, on_six),
            addr("10.0.0.6:50001")
        );
        for other in ["198.18.1.1:50000", "10.0.0.5:50000", "[fd00::5]:50000"] {
            assert_eq!(public.to_bound(addr(other), &relay, none), addr(other));
        }
        // No relay address of the family: left as it is.
        assert_eq!(
            public.to_bound(addr("203.0.113.7:50000"), &[], none),
            addr("203.0.113.7:50000")
        );
    }
}
