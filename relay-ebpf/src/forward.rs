//! Relaying bound channels in the kernel (RFC 8656 section 12): a client's
//! ChannelData becomes a plain UDP datagram from the relayed address to the
//! peer, and a peer's datagram becomes ChannelData from the server address
//! to the client. Headers are rewritten in place, checksums updated
//! incrementally (RFC 1624).
//!
//! Only the common layout is handled here: untagged Ethernet, IPv4 without
//! options or IPv6 without extension headers, the same family on both
//! sides, unpadded ChannelData. Anything else returns `None` and goes to the
//! stack unchanged, where the userspace relay handles it.
//!
//! One function per direction and family, each in its own stack frame: BPF
//! allows 512 bytes per frame.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use relay_common::{ChannelKey, MapIp, PeerKey};

use crate::{
    classify,
    csum::{self, Sum},
    maps,
    packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, copy_within, header_mut, read, write},
    parse::Udp,
    route::{self, Flow},
};

/// Size of the ChannelData header.
const CHANNEL_HEADER: usize = 4;

/// What forwarding needs from an IP header, for IPv4 and IPv6 alike.
trait IpHeader: Copy {
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
    /// Whether a map address is of this family.
    fn holds(ip: &MapIp) -> bool;
    /// The sum of the addresses in the UDP pseudo-header.
    fn address_sum(&self) -> Sum;
    /// Rewrites the header in place: from `src` to `dst` (both of this
    /// family, see [`IpHeader::holds`]), one hop less, payload length
    /// changed by `delta`.
    fn rewrite(&mut self, src: &MapIp, dst: &MapIp, delta: i16);
}

const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];

#[inline(always)]
fn mapped(ip: [u8; 4]) -> MapIp {
    let mut out = [0u8; 16];
    out[10] = 0xFF;
    out[11] = 0xFF;
    out[12..].copy_from_slice(&ip);
    out
}

impl IpHeader for Ipv4Hdr {
    const LEN: usize = size_of::<Ipv4Hdr>();
    const ZERO_CHECKSUM_ALLOWED: bool = true;

    #[inline(always)]
    fn map_src(&self) -> MapIp {
        mapped(self.src)
    }

    #[inline(always)]
    fn map_dst(&self) -> MapIp {
        mapped(self.dst)
    }

    #[inline(always)]
    fn ttl(&self) -> u8 {
        self.ttl
    }

    #[inline(always)]
    fn holds(ip: &MapIp) -> bool {
        ip[..12] == V4_MAPPED_PREFIX
    }

    #[inline(always)]
    fn address_sum(&self) -> Sum {
        Sum::zero().add(&self.src).add(&self.dst)
    }

    #[inline(always)]
    fn rewrite(&mut self, src: &MapIp, dst: &MapIp, delta: i16) {
        self.src = [src[12], src[13], src[14], src[15]];
        self.dst = [dst[12], dst[13], dst[14], dst[15]];
        self.total_len =
            (u16::from_be_bytes(self.total_len).wrapping_add_signed(delta)).to_be_bytes();
        self.ttl -= 1;
        // The header is 20 bytes: recomputing is as cheap as updating.
        let sum = Sum::zero()
            .add(&[self.version_ihl, self.tos])
            .add(&self.total_len)
            .add(&self.id)
            .add(&self.frag_off)
            .add(&[self.ttl, self.protocol])
            .add(&self.src)
            .add(&self.dst);
        self.check = sum.finish();
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
    fn holds(ip: &MapIp) -> bool {
        ip[..12] != V4_MAPPED_PREFIX
    }

    #[inline(always)]
    fn address_sum(&self) -> Sum {
        Sum::zero().add(&self.src).add(&self.dst)
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
fn partial_checksum<H: IpHeader>(ip: &H, udp: &UdpHdr) -> bool {
    let pseudo = ip
        .address_sum()
        .add(&[0, relay_common::IPPROTO_UDP])
        .add(&udp.len);
    // The field is the folded sum, not its complement.
    udp.check == (!u16::from_be_bytes(pseudo.finish())).to_be_bytes()
}

/// The UDP checksum after a binding's rewrite (RFC 1624): `delta` for the
/// addresses and ports, the length from the old header's to `new_len` (it
/// appears twice, in the pseudo-header and the UDP header), and the
/// ChannelData header words stripped or prepended. An IPv4 datagram
/// without checksum stays without.
#[inline(always)]
fn updated_check<H: IpHeader>(
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
        .add(delta)
        .remove(&old.len)
        .remove(&old.len)
        .add(new_len)
        .add(new_len);
    csum::udp_field(if strip {
        sum.remove(channel_header)
    } else {
        sum.add(channel_header)
    })
}

/// A client's ChannelData on a bound channel: strips the ChannelData
/// header and sends the data from the relayed address to the peer.
#[inline(always)]
pub fn to_peer(ctx: &XdpContext, udp: &Udp) -> Option<u32> {
    if udp.ip_offset != size_of::<EthHdr>() {
        return None;
    }
    let action = if udp.ipv6 {
        to_peer_frame::<Ipv6Hdr>(ctx, udp)
    } else {
        to_peer_frame::<Ipv4Hdr>(ctx, udp)
    };
    (action != NOT_HANDLED).then_some(action)
}

/// A peer's datagram to a relayed address with a bound channel: prepends
/// the ChannelData header and sends it from the server address to the
/// client.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, udp: &Udp) -> Option<u32> {
    if udp.ip_offset != size_of::<EthHdr>() {
        return None;
    }
    let action = if udp.ipv6 {
        to_client_frame::<Ipv6Hdr>(ctx, udp)
    } else {
        to_client_frame::<Ipv4Hdr>(ctx, udp)
    };
    (action != NOT_HANDLED).then_some(action)
}

/// What the per-family functions return when they leave the frame alone.
/// They return a plain integer: an `Option` would come back through
/// memory, which the verifier refuses across BPF function calls.
const NOT_HANDLED: u32 = u32::MAX;

#[inline(never)]
fn to_peer_frame<H: IpHeader>(ctx: &XdpContext, udp: &Udp) -> u32 {
    to_peer_via::<H>(ctx, udp).unwrap_or(NOT_HANDLED)
}

#[inline(never)]
fn to_client_frame<H: IpHeader>(ctx: &XdpContext, udp: &Udp) -> u32 {
    to_client_via::<H>(ctx, udp).unwrap_or(NOT_HANDLED)
}

#[inline(always)]
fn to_peer_via<H: IpHeader>(ctx: &XdpContext, udp: &Udp) -> Option<u32> {
    if udp.udp_offset != udp.ip_offset + H::LEN {
        return None;
    }
    let channel_header: [u8; CHANNEL_HEADER] = read(ctx, udp.payload_offset).ok()?;
    let channel = u16::from_be_bytes([channel_header[0], channel_header[1]]);
    let data_len = u16::from_be_bytes([channel_header[2], channel_header[3]]) as usize;
    let ip: &mut H = header_mut(ctx, udp.ip_offset).ok()?;
    // Padded ChannelData (optional on UDP) is left to userspace.
    if !classify::is_channel(channel)
        || data_len + CHANNEL_HEADER != udp.payload_len
        || ip.ttl() <= 1
        || partial_checksum(ip, &udp.header)
    {
        return None;
    }
    let key = ChannelKey {
        client_ip: ip.map_src(),
        server_ip: ip.map_dst(),
        client_port: udp.header.src_port,
        server_port: udp.header.dst_port,
        channel: [channel_header[0], channel_header[1]],
        _pad: [0; 2],
    };
    let target = maps::channel_target(&key)?;
    let new_len = (u16::from_be_bytes(udp.header.len) - CHANNEL_HEADER as u16).to_be_bytes();
    // Cross-family bindings are left to userspace.
    if !H::holds(&target.relayed_ip) || !H::holds(&target.peer_ip) {
        return None;
    }
    let hop = route::next_hop(
        ctx,
        &Flow {
            ipv4: H::ZERO_CHECKSUM_ALLOWED,
            src: &target.relayed_ip,
            dst: &target.peer_ip,
            src_port: target.relayed_port,
            dst_port: target.peer_port,
            ip_len: (H::LEN + udp.payload_len + size_of::<UdpHdr>() - CHANNEL_HEADER) as u16,
        },
    )?;
    // Addresses and ports: the binding's precomputed delta.
    let check = updated_check::<H>(
        &udp.header,
        &target.checksum_delta,
        &new_len,
        &channel_header,
        true,
    );
    // Rewrite in place, then move the headers 4 bytes forward over the
    // ChannelData header, last header first (the ranges overlap).
    ip.rewrite(
        &target.relayed_ip,
        &target.peer_ip,
        -(CHANNEL_HEADER as i16),
    );
    let new_udp = UdpHdr {
        src_port: target.relayed_port,
        dst_port: target.peer_port,
        len: new_len,
        check,
    };
    let shift = CHANNEL_HEADER;
    write(ctx, udp.udp_offset + shift, new_udp).ok()?;
    copy_within::<H>(ctx, udp.ip_offset, udp.ip_offset + shift).ok()?;
    copy_within::<EthHdr>(ctx, 0, shift).ok()?;
    // SAFETY: the head moves 4 bytes forward, onto the moved headers.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, shift as i32) } != 0 {
        return None;
    }
    set_macs(ctx, &hop)?;
    maps::count_binding(target.slot, true, data_len);
    Some(hop.action(ctx))
}

/// Writes the next hop's MAC addresses (not for the stack, which keeps
/// the frame's own).
#[inline(always)]
fn set_macs(ctx: &XdpContext, hop: &route::NextHop) -> Option<()> {
    if hop.ifindex != 0 {
        write(ctx, 0, hop.dst_mac).ok()?;
        write(ctx, 6, hop.src_mac).ok()?;
    }
    Some(())
}

#[inline(always)]
fn to_client_via<H: IpHeader>(ctx: &XdpContext, udp: &Udp) -> Option<u32> {
    if udp.udp_offset != udp.ip_offset + H::LEN {
        return None;
    }
    let ip: &mut H = header_mut(ctx, udp.ip_offset).ok()?;
    if ip.ttl() <= 1
        || udp.payload_len > usize::from(u16::MAX) - 64
        || partial_checksum(ip, &udp.header)
    {
        return None;
    }
    let key = PeerKey {
        relayed_ip: ip.map_dst(),
        peer_ip: ip.map_src(),
        relayed_port: udp.header.dst_port,
        peer_port: udp.header.src_port,
    };
    let target = maps::peer_target(&key)?;
    let new_len = (u16::from_be_bytes(udp.header.len) + CHANNEL_HEADER as u16).to_be_bytes();
    let data_len = (udp.payload_len as u16).to_be_bytes();
    let channel_header = [
        target.channel[0],
        target.channel[1],
        data_len[0],
        data_len[1],
    ];
    if !H::holds(&target.server_ip) || !H::holds(&target.client_ip) {
        return None;
    }
    let hop = route::next_hop(
        ctx,
        &Flow {
            ipv4: H::ZERO_CHECKSUM_ALLOWED,
            src: &target.server_ip,
            dst: &target.client_ip,
            src_port: target.server_port,
            dst_port: target.client_port,
            ip_len: (H::LEN + udp.payload_len + size_of::<UdpHdr>() + CHANNEL_HEADER) as u16,
        },
    )?;
    let check = updated_check::<H>(
        &udp.header,
        &target.checksum_delta,
        &new_len,
        &channel_header,
        false,
    );
    ip.rewrite(&target.server_ip, &target.client_ip, CHANNEL_HEADER as i16);
    let new_udp = UdpHdr {
        src_port: target.server_port,
        dst_port: target.client_port,
        len: new_len,
        check,
    };
    // SAFETY: the head moves 4 bytes back into the frame's headroom; the
    // kernel refuses (non-zero) when there is none.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, -(CHANNEL_HEADER as i32)) } != 0 {
        return None;
    }
    // Move the headers 4 bytes back, first header first (the ranges
    // overlap), then write the UDP and ChannelData headers after them.
    let shift = CHANNEL_HEADER;
    copy_within::<EthHdr>(ctx, shift, 0).ok()?;
    copy_within::<H>(ctx, udp.ip_offset + shift, udp.ip_offset).ok()?;
    write(ctx, udp.udp_offset, new_udp).ok()?;
    write(ctx, udp.udp_offset + size_of::<UdpHdr>(), channel_header).ok()?;
    set_macs(ctx, &hop)?;
    maps::count_binding(target.slot, false, udp.payload_len);
    Some(hop.action(ctx))
}
