//! The map entries of one channel binding, built from its addresses: the
//! one definition the daemon uses to install bindings and the kernel
//! programs use to look them up.

use core::net::{IpAddr, SocketAddr};

use crate::{
    ChannelKey, ChannelTarget, MapIp, PeerKey, PeerTarget, bandwidth::Buckets, checksum::Sum,
    seal::Sealed,
};

/// The prefix of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];

/// An IPv4 address as the maps store it. Built as one 128-bit word: a
/// zeroed byte array with bytes set in it becomes a `memset` call in the
/// kernel program, a byte loop behind a function call, on the hot path.
#[inline(always)]
pub fn mapped_v4(ip: [u8; 4]) -> MapIp {
    ((0xFFFF_u128 << 32) | u128::from(u32::from_be_bytes(ip))).to_be_bytes()
}

/// Whether a map address is an IPv4 one.
#[inline(always)]
pub fn is_v4_mapped(ip: &MapIp) -> bool {
    ip[..12] == V4_MAPPED_PREFIX
}

/// An address as the maps store it: IPv4 mapped, IPv6 as is.
pub fn map_ip(ip: IpAddr) -> MapIp {
    match ip {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl ChannelKey {
    /// The key of a client's ChannelData, from its fields as they arrive.
    #[inline(always)]
    pub fn from_parts(
        client_ip: MapIp,
        server_ip: MapIp,
        client_port: [u8; 2],
        server_port: [u8; 2],
        channel: [u8; 2],
    ) -> Self {
        ChannelKey {
            client_ip,
            server_ip,
            client_port,
            server_port,
            channel,
            _pad: [0; 2],
        }
    }
}

impl PeerKey {
    /// The key of a peer's datagram, from its fields as they arrive.
    #[inline(always)]
    pub fn from_parts(
        relayed_ip: MapIp,
        peer_ip: MapIp,
        relayed_port: [u8; 2],
        peer_port: [u8; 2],
    ) -> Self {
        PeerKey {
            relayed_ip,
            peer_ip,
            relayed_port,
            peer_port,
            _pad: [0; 4],
        }
    }
}

/// Adds an endpoint's words (address, port) as the UDP checksum has them
/// in its pseudo-header and header.
fn add_endpoint(sum: Sum, endpoint: SocketAddr) -> Sum {
    let sum = match endpoint.ip() {
        IpAddr::V4(v4) => sum.with(&v4.octets()),
        IpAddr::V6(v6) => sum.with(&v6.octets()),
    };
    sum.with(&endpoint.port().to_be_bytes())
}

/// Removes an endpoint's words, as [`add_endpoint`] added them.
fn remove_endpoint(sum: Sum, endpoint: SocketAddr) -> Sum {
    let sum = match endpoint.ip() {
        IpAddr::V4(v4) => sum.without(&v4.octets()),
        IpAddr::V6(v6) => sum.without(&v6.octets()),
    };
    sum.without(&endpoint.port().to_be_bytes())
}

/// The checksum change for moving a datagram from `old` to `new`
/// endpoints (source, destination): the new words minus the old (RFC 1624).
pub fn checksum_delta(old: [SocketAddr; 2], new: [SocketAddr; 2]) -> [u8; 2] {
    let sum = new.into_iter().fold(Sum::zero(), add_endpoint);
    old.into_iter().fold(sum, remove_endpoint).fold()
}

/// The addresses of one channel binding (RFC 8656 section 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The TURN server address and port the client talks to.
    pub server: SocketAddr,
    /// The channel number.
    pub channel: u16,
    /// The relayed address the peer talks to.
    pub relayed: SocketAddr,
    /// The peer.
    pub peer: SocketAddr,
    /// Its slot in the per-binding counters.
    pub slot: u32,
    /// The bandwidth buckets its traffic is charged to.
    pub buckets: Buckets,
    /// When the kernel stops relaying it, in [`crate::expiry`] ticks, or
    /// [`crate::expiry::NEVER`]. Both directions end together.
    pub expires: u32,
}

impl Binding {
    /// The `CHANNELS` entry: a client's ChannelData goes from the relayed
    /// address to the peer.
    pub fn channel_entry(&self) -> (ChannelKey, ChannelTarget) {
        let key = ChannelKey::from_parts(
            map_ip(self.client.ip()),
            map_ip(self.server.ip()),
            self.client.port().to_be_bytes(),
            self.server.port().to_be_bytes(),
            self.channel.to_be_bytes(),
        );
        let mut target = ChannelTarget {
            relayed_ip: map_ip(self.relayed.ip()),
            peer_ip: map_ip(self.peer.ip()),
            relayed_port: self.relayed.port().to_be_bytes(),
            peer_port: self.peer.port().to_be_bytes(),
            checksum_delta: checksum_delta([self.client, self.server], [self.relayed, self.peer]),
            _pad: [0; 2],
            slot: self.slot,
            bucket: self.buckets.allocation[0],
            user_bucket: self.buckets.user[0],
            expires: self.expires,
            seal: 0,
        };
        target.seal = target.seal_for(&key);
        (key, target)
    }

    /// The `PEERS` entry: a peer's datagram goes as ChannelData from the
    /// server address to the client.
    pub fn peer_entry(&self) -> (PeerKey, PeerTarget) {
        let key = PeerKey::from_parts(
            map_ip(self.relayed.ip()),
            map_ip(self.peer.ip()),
            self.relayed.port().to_be_bytes(),
            self.peer.port().to_be_bytes(),
        );
        let mut target = PeerTarget {
            server_ip: map_ip(self.server.ip()),
            client_ip: map_ip(self.client.ip()),
            server_port: self.server.port().to_be_bytes(),
            client_port: self.client.port().to_be_bytes(),
            channel: self.channel.to_be_bytes(),
            checksum_delta: checksum_delta([self.peer, self.relayed], [self.server, self.client]),
            slot: self.slot,
            bucket: self.buckets.allocation[1],
            user_bucket: self.buckets.user[1],
            expires: self.expires,
            seal: 0,
        };
        target.seal = target.seal_for(&key);
        (key, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(198, 18, 0, a).into(), port)
    }

    #[test]
    fn an_ipv4_address_is_stored_mapped() {
        let ip = core::net::Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(mapped_v4(ip.octets()), ip.to_ipv6_mapped().octets());
        assert!(is_v4_mapped(&mapped_v4(ip.octets())));
    }

    #[test]
    fn ipv4_is_stored_mapped_and_ipv6_as_is() {
        let mapped = map_ip(Ipv4Addr::new(198, 18, 0, 1).into());
        assert_eq!(
            mapped,
            Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets()
        );
        assert!(is_v4_mapped(&mapped));
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(map_ip(v6.into()), v6.octets());
        assert!(!is_v4_mapped(&v6.octets()));
    }

    /// A checksum updated with the delta equals one summed over the new
    /// endpoints: the delta is the whole address and port change.
    #[test]
    fn the_delta_moves_a_checksum_from_old_to_new_endpoints() {
        let (old, new) = ([v4(1, 50000), v4(254, 3478)], [v4(253, 49152), v4(9, 3480)]);
        let payload = [0x12, 0x34, 0x56, 0x78];
        let checksum = |endpoints: [SocketAddr; 2]| {
            endpoints
                .into_iter()
                .fold(Sum::zero(), add_endpoint)
                .with(&payload)
                .finish()
        };
        let delta = checksum_delta(old, new);
        let updated = Sum::from_checksum(checksum(old)).with(&delta).finish();
        assert_eq!(updated, checksum(new));
    }

    #[test]
    fn entries_point_both_ways() {
        let binding = Binding {
            client: v4(1, 50000),
            server: v4(254, 3478),
            channel: 0x4001,
            relayed: v4(253, 49152),
            peer: v4(9, 3480),
            slot: 7,
            buckets: Buckets {
                allocation: [1, 2],
                user: [3, 4],
            },
            expires: 99,
        };
        let (key, target) = binding.channel_entry();
        assert_eq!(key.channel, [0x40, 0x01]);
        assert_eq!(key.client_port, 50000u16.to_be_bytes());
        assert_eq!(target.peer_port, 3480u16.to_be_bytes());
        let (peer_key, peer_target) = binding.peer_entry();
        assert_eq!(peer_key.relayed_ip, target.relayed_ip);
        assert_eq!(peer_key.peer_ip, target.peer_ip);
        assert_eq!(peer_target.client_ip, key.client_ip);
        assert_eq!((target.slot, peer_target.slot), (7, 7));
        assert_eq!((target.bucket, target.user_bucket), (1, 3));
        assert_eq!((peer_target.bucket, peer_target.user_bucket), (2, 4));
        assert_eq!((target.expires, peer_target.expires), (99, 99));
    }

    /// The expiry is under the seal: a value whose expiry changed after
    /// sealing (or was torn from another version of the binding) is
    /// refused, so the kernel never relays past a lifetime it read wrong.
    #[test]
    fn the_expiry_is_sealed() {
        use crate::seal::Sealed;
        let binding = Binding {
            client: v4(1, 50000),
            server: v4(254, 3478),
            channel: 0x4001,
            relayed: v4(253, 49152),
            peer: v4(9, 3480),
            slot: 7,
            buckets: Buckets::default(),
            expires: 1000,
        };
        let (key, mut target) = binding.channel_entry();
        let (peer_key, mut peer_target) = binding.peer_entry();
        assert!(target.sealed_for(&key) && peer_target.sealed_for(&peer_key));
        target.expires += 1;
        peer_target.expires = 0;
        assert!(!target.sealed_for(&key));
        assert!(!peer_target.sealed_for(&peer_key));
    }
}
