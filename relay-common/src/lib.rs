//! Plain-data types shared by the XDP program (`relay-ebpf`) and the daemon
//! (`relay-userspace`).
//!
//! Everything here is `#[repr(C)]` or a byte array, without pointers or
//! implicit padding, so the kernel and userspace agree on every byte of a map
//! key or value. Multi-byte fields that come from packet headers are kept in
//! network byte order (`[u8; N]`), so the kernel copies them straight from the
//! packet and userspace converts once, when it writes the map.
//!
//! So do their constructors ([`binding`]), the checksum arithmetic
//! ([`checksum`]) and the protocol constants both sides need.
//!
//! With the `user` feature the types implement [`aya::Pod`].
#![no_std]

pub mod bandwidth;
pub mod bench;
pub mod binding;
pub mod checksum;
pub mod expiry;
pub mod next_hop;
pub mod seal;

/// Name of the array of UDP ports the TURN server listens on: a bitmap of
/// all 65536 ports in [`LISTEN_PORT_WORDS`] words, which
/// [`listen_port_bit`] addresses. An array lookup, unlike a hash lookup, is
/// a few instructions the verifier inlines, and every UDP frame takes one.
pub const MAP_LISTEN_PORTS: &str = "LISTEN_PORTS";
/// Maximum number of TURN listen ports turnxd configures.
pub const MAX_LISTEN_PORTS: u32 = 64;
/// Words of the listen port bitmap.
pub const LISTEN_PORT_WORDS: u32 = 65536 / 64;

/// The word of the listen port bitmap that holds `port`, and its bit.
#[inline(always)]
pub const fn listen_port_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1 << (port % 64))
}

/// Name of the array of relayed ports that have a binding in the kernel: a
/// bitmap laid out as [`MAP_LISTEN_PORTS`]. A UDP datagram to neither
/// kind of port is none of the relay's, and costs no binding lookup.
pub const MAP_RELAYED_PORTS: &str = "RELAYED_PORTS";

/// Name of the per-CPU array of packet counters, indexed by [`PacketClass`].
pub const MAP_CLASS_COUNTERS: &str = "CLASS_COUNTERS";

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "turnx_xdp";
/// Name of the tc (sched_cls) program in the object file: the engine for
/// what XDP cannot deliver.
pub const TC_PROGRAM_NAME: &str = "turnx_tc";

/// How the XDP program classified a frame. The discriminant is the index into
/// the [`MAP_CLASS_COUNTERS`] array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketClass {
    /// Not a UDP datagram for a TURN listen port: another EtherType, another
    /// IP protocol, another port.
    Unrelated = 0,
    /// A header that is cut off by the end of the frame or contradicts its
    /// own length fields.
    Malformed = 1,
    /// An IPv4 or IPv6 fragment; reassembly is left to the stack.
    Fragment = 2,
    /// A STUN message (RFC 8489 section 5) to a TURN listen port.
    Stun = 3,
    /// A ChannelData message (RFC 8656 section 12.4) to a TURN listen port.
    ChannelData = 4,
    /// A UDP datagram to a TURN listen port that is neither STUN nor
    /// ChannelData (including an empty payload).
    Other = 5,
    /// ChannelData of a bound channel, rewritten and sent to its peer.
    ForwardedToPeer = 6,
    /// A peer's datagram on a bound channel, rewritten as ChannelData and
    /// sent to its client.
    ForwardedToClient = 7,
    /// A datagram of a bound channel, in either direction, dropped over
    /// its allocation's or user's bandwidth limit.
    OverLimit = 8,
}

impl PacketClass {
    /// Every class, in index order.
    pub const ALL: [PacketClass; 9] = [
        PacketClass::Unrelated,
        PacketClass::Malformed,
        PacketClass::Fragment,
        PacketClass::Stun,
        PacketClass::ChannelData,
        PacketClass::Other,
        PacketClass::ForwardedToPeer,
        PacketClass::ForwardedToClient,
        PacketClass::OverLimit,
    ];

    /// Number of classes; the length of the counters array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Short lowercase name, used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            PacketClass::Unrelated => "unrelated",
            PacketClass::Malformed => "malformed",
            PacketClass::Fragment => "fragment",
            PacketClass::Stun => "stun",
            PacketClass::ChannelData => "channel_data",
            PacketClass::Other => "other",
            PacketClass::ForwardedToPeer => "forwarded_to_peer",
            PacketClass::ForwardedToClient => "forwarded_to_client",
            PacketClass::OverLimit => "over_limit",
        }
    }
}

/// A packet and byte counter; one per class and CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Frames seen.
    pub packets: u64,
    /// Bytes seen, counting the whole frame from the Ethernet header.
    pub bytes: u64,
}

/// Name of the hash map from a client's ChannelData to its peer.
/// Key: [`ChannelKey`], value: [`ChannelTarget`].
pub const MAP_CHANNELS: &str = "CHANNELS";
/// Name of the hash map from a peer's datagram to its client's channel.
/// Key: [`PeerKey`], value: [`PeerTarget`].
pub const MAP_PEERS: &str = "PEERS";

/// Entries of each of [`MAP_CHANNELS`] and [`MAP_PEERS`], unless the
/// loader sets another size.
pub const MAX_BINDINGS: u32 = 16384;

/// Name of the hash map of interfaces the program may send relayed frames
/// out of, by interface index (`u32`), with [`EGRESS_TX`],
/// [`EGRESS_REDIRECT`] and [`EGRESS_PEER`] bits (`u8`). An interface
/// without the XDP bits receives no frame from XDP: the frame goes to the
/// stack untouched, where the tc engine or userspace relays it. The daemon
/// rewrites it from what the kernel reports; it is not pinned.
pub const MAP_EGRESS: &str = "EGRESS";
/// Entries of [`MAP_EGRESS`]: interfaces of one network namespace.
pub const MAX_EGRESS_INTERFACES: u32 = 4096;
/// [`MAP_EGRESS`] bit: XDP_TX out of this interface, back where the frame
/// came from, delivers.
pub const EGRESS_TX: u8 = 1;
/// [`MAP_EGRESS`] bit: frames redirected into this interface are delivered.
pub const EGRESS_REDIRECT: u8 = 2;
/// [`MAP_EGRESS`] bit: a veth whose peer is in another network namespace
/// (a pod's): the tc engine hands a frame for it straight to the peer's
/// ingress (`bpf_redirect_peer`), without a pass through the veth's
/// transmit path and the CPU's backlog.
pub const EGRESS_PEER: u8 = 4;

/// Version of the map layouts (keys, values, names). Pinned maps live in a
/// directory named after it, so a daemon never reopens maps of another
/// layout. Bump it with any change to the types above.
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// An IP address in the maps: IPv6 as is, IPv4 as IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`), so one key layout serves both families.
pub type MapIp = [u8; 16];

/// A client's ChannelData, identified as the kernel sees it arrive.
/// Aligned to 8 bytes for [`seal`], which reads it as words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The client's address.
    pub client_ip: MapIp,
    /// The TURN server address the client sends to.
    pub server_ip: MapIp,
    /// The client's port, network order.
    pub client_port: [u8; 2],
    /// The TURN listen port, network order.
    pub server_port: [u8; 2],
    /// The channel number, network order.
    pub channel: [u8; 2],
    /// Zero.
    pub _pad: [u8; 2],
}

/// Where a channel's data goes: from the relayed address to the peer.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelTarget {
    /// The allocation's relayed address of the peer's family.
    pub relayed_ip: MapIp,
    /// The peer's address.
    pub peer_ip: MapIp,
    /// The relayed port, network order.
    pub relayed_port: [u8; 2],
    /// The peer's port, network order.
    pub peer_port: [u8; 2],
    /// One's-complement sum (RFC 1624), network order, of the new
    /// addresses and ports minus the old ones: the part of the UDP checksum
    /// update that is the same for every packet of the binding, computed by
    /// userspace when it installs the binding.
    pub checksum_delta: [u8; 2],
    /// Zero.
    pub _pad: [u8; 2],
    /// The binding's slot in [`MAP_BINDING_COUNTERS`].
    pub slot: u32,
    /// The allocation's bucket for this direction in
    /// [`bandwidth::MAP_BUCKETS`], or [`bandwidth::NO_BUCKET`].
    pub bucket: u32,
    /// The user's bucket for this direction, or [`bandwidth::NO_BUCKET`].
    pub user_bucket: u32,
    /// When the binding ends, in [`expiry`] ticks of CLOCK_MONOTONIC, or
    /// [`expiry::NEVER`]: past it the kernel treats the entry as absent, so
    /// a binding no daemon removes stops at the end of its lifetime.
    /// Under the seal, like every field before it.
    pub expires: u32,
    /// [`seal::seal`] of the key and the fields above: the kernel
    /// uses a copy of the value only if it matches.
    pub seal: u64,
}

/// A peer's datagram to a relayed address.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The relayed address the peer sends to.
    pub relayed_ip: MapIp,
    /// The peer's address.
    pub peer_ip: MapIp,
    /// The relayed port, network order.
    pub relayed_port: [u8; 2],
    /// The peer's port, network order.
    pub peer_port: [u8; 2],
    /// Zero.
    pub _pad: [u8; 4],
}

/// Where a peer's data goes: as ChannelData from the server address to
/// the client.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTarget {
    /// The TURN server address the client talks to.
    pub server_ip: MapIp,
    /// The client's address.
    pub client_ip: MapIp,
    /// The TURN listen port, network order.
    pub server_port: [u8; 2],
    /// The client's port, network order.
    pub client_port: [u8; 2],
    /// The channel number, network order.
    pub channel: [u8; 2],
    /// As [`ChannelTarget::checksum_delta`], for this direction.
    pub checksum_delta: [u8; 2],
    /// The binding's slot in [`MAP_BINDING_COUNTERS`].
    pub slot: u32,
    /// As [`ChannelTarget::bucket`], for this direction.
    pub bucket: u32,
    /// As [`ChannelTarget::user_bucket`], for this direction.
    pub user_bucket: u32,
    /// As [`ChannelTarget::expires`].
    pub expires: u32,
    /// As [`ChannelTarget::seal`].
    pub seal: u64,
}

/// Name of the per-CPU array of per-binding traffic counters, indexed by
/// the `slot` of [`ChannelTarget`] and [`PeerTarget`]; sized like the
/// binding maps.
pub const MAP_BINDING_COUNTERS: &str = "BINDING_COUNTERS";

/// What the kernel relayed for one binding, on one CPU. Bytes are
/// application bytes (the ChannelData payload).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingCounters {
    /// Datagrams relayed from the client to the peer.
    pub to_peer_packets: u64,
    /// Their bytes.
    pub to_peer_bytes: u64,
    /// Datagrams relayed from the peer to the client.
    pub to_client_packets: u64,
    /// Their bytes.
    pub to_client_bytes: u64,
}

/// Lowest channel number a client may bind (RFC 8656 section 12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest channel number a client may bind (RFC 8656 section 12).
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// Highest channel number of RFC 5766, which coturn and its clients still
/// use; accepted with `legacy_channel_numbers`.
pub const CHANNEL_MAX_LEGACY: u16 = 0x7FFF;

/// The highest channel number accepted, with or without the RFC 5766
/// range.
pub const fn channel_max(legacy: bool) -> u16 {
    if legacy {
        CHANNEL_MAX_LEGACY
    } else {
        CHANNEL_MAX
    }
}

/// UDP's IP protocol number, in IP headers and in REQUESTED-TRANSPORT
/// (RFC 8656 section 18.11).
pub const IPPROTO_UDP: u8 = 17;

/// The STUN magic cookie (RFC 8489 section 5).
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data of integer fields, no padding, every bit
    // pattern valid.
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: byte arrays only, no padding (sizes checked in the tests).
    unsafe impl aya::Pod for super::ChannelKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ChannelTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerTarget {}
    // SAFETY: u64 fields only, no padding.
    unsafe impl aya::Pod for super::BindingCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::bandwidth::Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_values_have_no_padding() {
        assert_eq!(size_of::<Counter>(), 16);
        // Byte arrays only: the size is the sum of the fields.
        assert_eq!(size_of::<ChannelKey>(), 16 + 16 + 2 + 2 + 2 + 2);
        let target = 16 + 16 + 2 + 2 + 2 + 2 + 4 + 4 + 4 + 4 + 8;
        assert_eq!(size_of::<ChannelTarget>(), target);
        assert_eq!(size_of::<PeerKey>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<PeerTarget>(), target);
        assert_eq!(size_of::<BindingCounters>(), 32);
        assert_eq!(size_of::<bandwidth::Bucket>(), 24);
    }

    #[test]
    fn every_port_has_one_bit_of_its_own() {
        let mut seen = [0u64; LISTEN_PORT_WORDS as usize];
        for port in 0..=u16::MAX {
            let (word, bit) = listen_port_bit(port);
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(seen[word as usize] & bit, 0, "port {port}");
            seen[word as usize] |= bit;
        }
        assert!(seen.iter().all(|word| *word == u64::MAX));
    }

    #[test]
    fn class_indices_are_dense_and_ordered() {
        for (index, class) in PacketClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, index);
        }
    }
}
