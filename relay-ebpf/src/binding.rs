//! What both engines need to relay a bound channel (RFC 8656 section 12):
//! the IP header operations for IPv4 and IPv6, the binding lookups from a
//! datagram's headers, and the checksum arithmetic. The XDP engine
//! (`forward`) and the tc engine (`tc`) differ only in how they move bytes
//! and send the result.

use core::mem::size_of;
use relay_common::{
    ChannelKey, ChannelTarget, MapIp, PeerKey, PeerTarget,
    binding::{is_v4_mapped, mapped_v4},
    checksum::{self, Sum},
    next_hop::cache_index,
};

use crate::{
    classify, maps,
    packet::{Ipv4Hdr, Ipv6Hdr, Packet, UdpHdr, read},
    parse::Udp,
    route::Flow,
};

/// Size of the ChannelData header.
pub const CHANNEL_HEADER: usize = 4;

/// What forwarding needs from an IP header, for IPv4 and IPv6 alike.
pub trait IpHeader: Copy {
    /// Header length (no options or extension headers).
    const LEN: usize;
    /// Whether a zero UDP checksum means "none" (IPv4) and may stay zero.
    const ZERO_CHECKSUM_ALLOWED: bool;
    /// Source address as stored in the maps.
    fn map_src(&self) -> MapIp;
    /// Destination address as stored in the maps.
    fn map_dst(&self) -> MapIp;
    /// TTL or hop limit.
    fn ttl(&self) -> u8;
    /// Whether the stack would take the header: for IPv4, whether its
    /// checksum holds (the relay recomputes it, which would hide damage).
    fn intact(&self) -> bool;
    /// Whether a map address is of this family.
    fn holds(ip: &MapIp) -> bool;
    /// The sum of the addresses in the UDP pseudo-header.
    fn address_sum(&self) -> Sum;
    /// Rewrites the header in place: from `src` to `dst` (both of this
    /// family, see [`IpHeader::holds`]), one hop less, payload length
    /// changed by `delta`.
    fn rewrite(&mut self, src: &MapIp, dst: &MapIp, delta: i16);
}

impl IpHeader for Ipv4Hdr {
    const LEN: usize = size_of::<Ipv4Hdr>();
    const ZERO_CHECKSUM_ALLOWED: bool = true;

    #[inline(always)]
    fn map_src(&self) -> MapIp {
        mapped_v4(self.src)
    }

    #[inline(always)]
    fn map_dst(&self) -> MapIp {
        mapped_v4(self.dst)
    }

    #[inline(always)]
    fn ttl(&self) -> u8 {
        self.ttl
    }

    #[inline(always)]
    fn intact(&self) -> bool {
        self.sum_without_check().with(&self.check).finish() == [0, 0]
    }

    #[inline(always)]
    fn holds(ip: &MapIp) -> bool {
        is_v4_mapped(ip)
    }

    #[inline(always)]
    fn address_sum(&self) -> Sum {
        Sum::zero().with(&self.src).with(&self.dst)
    }

    #[inline(always)]
    fn rewrite(&mut self, src: &MapIp, dst: &MapIp, delta: i16) {
        self.src = [src[12], src[13], src[14], src[15]];
        self.dst = [dst[12], dst[13], dst[14], dst[15]];
        self.total_len =
            (u16::from_be_bytes(self.total_len).wrapping_add_signed(delta)).to_be_bytes();
        self.ttl -= 1;
        // The header is 20 bytes: recomputing is as cheap as updating.
        self.check = self.sum_without_check().finish();
    }
}

impl Ipv4Hdr {
    /// The sum of the header's words but its checksum field (no options:
    /// the relay handles none).
    #[inline(always)]
    fn sum_without_check(&self) -> Sum {
        Sum::zero()
            .with(&[self.version_ihl, self.tos])
            .with(&self.total_len)
            .with(&self.id)
            .with(&self.frag_off)
            .with(&[self.ttl, self.protocol])
            .with(&self.src)
            .with(&self.dst)
    }
}

impl IpHeader for Ipv6Hdr {
    const LEN: usize = size_of::<Ipv6Hdr>();
    const ZERO_CHECKSUM_ALLOWED: bool = false;

    #[inline(always)]
    fn map_src(&self) -> MapIp {
        self.src
    }

    #[inline(always)]
    fn map_dst(&self) -> MapIp {
        self.dst
    }

    #[inline(always)]
    fn ttl(&self) -> u8 {
        self.hop_limit
    }

    #[inline(always)]
    fn intact(&self) -> bool {
        // IPv6 has no header checksum.
        true
    }

    #[inline(always)]
    fn holds(ip: &MapIp) -> bool {
        !is_v4_mapped(ip)
    }

    #[inline(always)]
    fn address_sum(&self) -> Sum {
        Sum::zero().with(&self.src).with(&self.dst)
    }

    #[inline(always)]
    fn rewrite(&mut self, src: &MapIp, dst: &MapIp, delta: i16) {
        self.src = *src;
        self.dst = *dst;
        self.payload_len =
            (u16::from_be_bytes(self.payload_len).wrapping_add_signed(delta)).to_be_bytes();
        self.hop_limit -= 1;
    }
}

/// Whether the UDP checksum field holds only the pseudo-header's sum, as a
/// local sender leaves it for the device to finish (CHECKSUM_PARTIAL, with
/// transmit checksum offload on, as on a pod's veth). An incremental
/// update of such a field gives a wrong checksum, so these frames go to the
/// stack untouched, which completes them. A full checksum has this value
/// for about one datagram in 65 536; those go to the stack too.
#[inline(always)]
pub fn partial_checksum<H: IpHeader>(ip: &H, udp: &UdpHdr) -> bool {
    let pseudo = ip
        .address_sum()
        .with(&[0, relay_common::IPPROTO_UDP])
        .with(&udp.len);
    // The field is the folded sum, not its complement.
    udp.check == (!u16::from_be_bytes(pseudo.finish())).to_be_bytes()
}

/// The UDP checksum after a binding's rewrite (RFC 1624): `delta` for the
/// addresses and ports, the length from the old header's to `new_len` (it
/// appears twice, in the pseudo-header and the UDP header), and the
/// ChannelData header words stripped or prepended. An IPv4 datagram
/// without checksum stays without.
#[inline(always)]
pub fn updated_check<H: IpHeader>(
    old: &UdpHdr,
    delta: &[u8; 2],
    new_len: &[u8; 2],
    channel_header: &[u8; CHANNEL_HEADER],
    strip: bool,
) -> [u8; 2] {
    if H::ZERO_CHECKSUM_ALLOWED && old.check == [0, 0] {
        return [0, 0];
    }
    let sum = Sum::from_checksum(old.check)
        .with(delta)
        .without(&old.len)
        .without(&old.len)
        .with(new_len)
        .with(new_len);
    checksum::udp_field(if strip {
        sum.without(channel_header)
    } else {
        sum.with(channel_header)
    })
}

/// A client's ChannelData on a bound channel, as found before any change.
pub struct ToPeer {
    /// The ChannelData header, stripped by the relay.
    pub channel_header: [u8; CHANNEL_HEADER],
    /// Application bytes after it.
    pub data_len: usize,
    /// Where they go: this CPU's and engine's copy of the binding.
    pub target: &'static ChannelTarget,
    /// The UDP length after the header is stripped.
    pub new_len: [u8; 2],
}

impl ToPeer {
    /// The datagram's flow after the rewrite, for the route lookup.
    #[inline(always)]
    pub fn flow<H: IpHeader>(&self) -> Flow<'_> {
        Flow {
            ipv4: H::ZERO_CHECKSUM_ALLOWED,
            src: &self.target.relayed_ip,
            dst: &self.target.peer_ip,
            src_port: self.target.relayed_port,
            dst_port: self.target.peer_port,
            ip_len: (H::LEN + size_of::<UdpHdr>() + self.data_len) as u16,
            cache: cache_index(self.target.slot, false),
            binding: self.target.seal,
        }
    }
}

/// The binding of a client's ChannelData (IP header `ip`), if its channel is
/// bound and the datagram is one the kernel relays: unpadded, filling its
/// IP packet, TTL left, the binding of this family, the header intact.
#[inline(always)]
pub fn to_peer_binding<P: Packet, H: IpHeader>(ctx: &P, udp: &Udp, ip: &H) -> Option<ToPeer> {
    if udp.udp_offset != udp.ip_offset + H::LEN || !udp.fills_ip() {
        return None;
    }
    let channel_header: [u8; CHANNEL_HEADER] = read(ctx, udp.payload_offset).ok()?;
    let channel = u16::from_be_bytes([channel_header[0], channel_header[1]]);
    let data_len = u16::from_be_bytes([channel_header[2], channel_header[3]]) as usize;
    // Padded ChannelData (optional on UDP) is left to userspace.
    if !classify::is_channel(channel)
        || data_len + CHANNEL_HEADER != udp.payload_len
        || ip.ttl() <= 1
    {
        return None;
    }
    let key = ChannelKey::from_parts(
        ip.map_src(),
        ip.map_dst(),
        udp.header.src_port,
        udp.header.dst_port,
        [channel_header[0], channel_header[1]],
    );
    let target = maps::channel_target(&key, P::ENGINE)?;
    // Cross-family bindings are left to userspace, and damaged headers to
    // the stack, which drops them.
    if !H::holds(&target.relayed_ip) || !H::holds(&target.peer_ip) || !ip.intact() {
        return None;
    }
    Some(ToPeer {
        channel_header,
        data_len,
        target,
        new_len: (u16::from_be_bytes(udp.header.len) - CHANNEL_HEADER as u16).to_be_bytes(),
    })
}

/// A peer's datagram to a relayed address with a bound channel, as found
/// before any change.
pub struct ToClient {
    /// The ChannelData header the relay prepends.
    pub channel_header: [u8; CHANNEL_HEADER],
    /// Where the datagram goes: this CPU's and engine's copy of the
    /// binding.
    pub target: &'static PeerTarget,
    /// The UDP length with the header.
    pub new_len: [u8; 2],
}

impl ToClient {
    /// The datagram's flow after the rewrite, for the route lookup.
    #[inline(always)]
    pub fn flow<H: IpHeader>(&self, payload_len: usize) -> Flow<'_> {
        Flow {
            ipv4: H::ZERO_CHECKSUM_ALLOWED,
            src: &self.target.server_ip,
            dst: &self.target.client_ip,
            src_port: self.target.server_port,
            dst_port: self.target.client_port,
            ip_len: (H::LEN + size_of::<UdpHdr>() + CHANNEL_HEADER + payload_len) as u16,
            cache: cache_index(self.target.slot, true),
            binding: self.target.seal,
        }
    }
}

/// The binding of a peer's datagram (IP header `ip`), if it has one the
/// kernel relays. The packet is not read; its type picks the engine's copy
/// slot.
#[inline(always)]
pub fn to_client_binding<P: Packet, H: IpHeader>(_: &P, udp: &Udp, ip: &H) -> Option<ToClient> {
    if udp.udp_offset != udp.ip_offset + H::LEN
        || !udp.fills_ip()
        || ip.ttl() <= 1
        || udp.payload_len > usize::from(u16::MAX) - 64
    {
        return None;
    }
    let key = PeerKey::from_parts(
        ip.map_dst(),
        ip.map_src(),
        udp.header.dst_port,
        udp.header.src_port,
    );
    let target = maps::peer_target(&key, P::ENGINE)?;
    if !H::holds(&target.server_ip) || !H::holds(&target.client_ip) || !ip.intact() {
        return None;
    }
    let data_len = (udp.payload_len as u16).to_be_bytes();
    Some(ToClient {
        channel_header: [
            target.channel[0],
            target.channel[1],
            data_len[0],
            data_len[1],
        ],
        target,
        new_len: (u16::from_be_bytes(udp.header.len) + CHANNEL_HEADER as u16).to_be_bytes(),
    })
}
