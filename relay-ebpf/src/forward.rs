//! The XDP engine's relay of bound channels (RFC 8656 section 12): a
//! client's ChannelData becomes a plain UDP datagram from the relayed
//! address to the peer, and a peer's datagram becomes ChannelData from the
//! server address to the client. Headers are rewritten in place and moved
//! with the frame's head, checksums updated incrementally (RFC 1624).
//!
//! Only the common layout is handled here: untagged Ethernet, IPv4 without
//! options or IPv6 without extension headers, the same family on both
//! sides, unpadded ChannelData. Anything else returns `None` and goes to the
//! stack unchanged, where the userspace relay handles it.
//!
//! One function per direction and family, each in its own stack frame: BPF
//! allows 512 bytes per frame.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use core::mem::size_of;
use relay_common::PacketClass;

use crate::{
    binding::{self, CHANNEL_HEADER, IpHeader},
    maps,
    packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, copy_within, header_mut, write},
    parse::Udp,
    route,
};

/// A client's ChannelData on a bound channel: strips the ChannelData
/// header and sends the data from the relayed address to the peer. Returns
/// the class to count the frame in and its action.
#[inline(always)]
pub fn to_peer(ctx: &XdpContext, udp: &Udp) -> Option<(PacketClass, u32)> {
    if udp.ip_offset != IP_OFFSET {
        return None;
    }
    let action = if udp.ipv6 {
        to_peer_frame::<Ipv6Hdr>(ctx, udp)
    } else {
        to_peer_frame::<Ipv4Hdr>(ctx, udp)
    };
    outcome(action, PacketClass::ForwardedToPeer)
}

/// A peer's datagram to a relayed address with a bound channel: prepends
/// the ChannelData header and sends it from the server address to the
/// client. Returns the class and action, as [`to_peer`].
#[inline(always)]
pub fn to_client(ctx: &XdpContext, udp: &Udp) -> Option<(PacketClass, u32)> {
    if udp.ip_offset != IP_OFFSET {
        return None;
    }
    let action = if udp.ipv6 {
        to_client_frame::<Ipv6Hdr>(ctx, udp)
    } else {
        to_client_frame::<Ipv4Hdr>(ctx, udp)
    };
    outcome(action, PacketClass::ForwardedToClient)
}

/// The class and action for what a per-family function returned.
#[inline(always)]
fn outcome(action: u32, relayed: PacketClass) -> Option<(PacketClass, u32)> {
    match action {
        NOT_HANDLED => None,
        OVER_LIMIT => Some((PacketClass::OverLimit, xdp_action::XDP_DROP)),
        action => Some((relayed, action)),
    }
}

/// Where the IP header starts in the frames relayed here (untagged
/// Ethernet, checked before the per-family functions run). A constant,
/// because the verifier loses the bounds of the parsed offset across the
/// call.
const IP_OFFSET: usize = size_of::<EthHdr>();

/// What the per-family functions return when they leave the frame alone.
/// They return a plain integer: an `Option` would come back through
/// memory, which the verifier refuses across BPF function calls.
const NOT_HANDLED: u32 = u32::MAX;
/// What they return for a datagram over its bandwidth limits, to drop.
const OVER_LIMIT: u32 = u32::MAX - 1;

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
    let ip: &mut H = header_mut(ctx, IP_OFFSET).ok()?;
    let found = binding::to_peer_binding(ctx, udp, ip)?;
    if binding::partial_checksum(ip, &udp.header) {
        return None;
    }
    let target = found.target;
    let hop = route::next_hop(ctx, &found.flow::<H>())?;
    if !maps::within_limits(target.bucket, target.user_bucket, found.data_len) {
        return Some(OVER_LIMIT);
    }
    // Nothing has changed so far. From here on a failure (only a bounds
    // check the verifier made us write) drops the half-rewritten frame
    // rather than hand it to the stack.
    let mut rewritten = || -> Option<u32> {
        // Addresses and ports: the binding's precomputed delta.
        let check = binding::updated_check::<H>(
            &udp.header,
            &target.checksum_delta,
            &found.new_len,
            &found.channel_header,
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
            len: found.new_len,
            check,
        };
        let shift = CHANNEL_HEADER;
        write(ctx, udp.udp_offset + shift, new_udp).ok()?;
        copy_within::<H>(ctx, IP_OFFSET, IP_OFFSET + shift).ok()?;
        copy_within::<EthHdr>(ctx, 0, shift).ok()?;
        // SAFETY: the head moves 4 bytes forward, onto the moved headers
        // (shrinking a frame this long cannot fail).
        if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, shift as i32) } != 0 {
            return None;
        }
        set_macs(ctx, &hop)?;
        maps::count_binding(target.slot, true, found.data_len);
        Some(hop.action(ctx))
    };
    Some(rewritten().unwrap_or(xdp_action::XDP_DROP))
}

/// Writes the next hop's MAC addresses (not for the stack, which keeps
/// the frame's own).
#[inline(always)]
fn set_macs(ctx: &XdpContext, hop: &route::NextHop) -> Option<()> {
    if hop.ifindex != 0 {
        write(ctx, 0, hop.macs).ok()?;
    }
    Some(())
}

#[inline(always)]
fn to_client_via<H: IpHeader>(ctx: &XdpContext, udp: &Udp) -> Option<u32> {
    let ip: &H = header_mut(ctx, IP_OFFSET).ok()?;
    let found = binding::to_client_binding(ctx, udp, ip)?;
    if binding::partial_checksum(ip, &udp.header) {
        return None;
    }
    let target = found.target;
    let hop = route::next_hop(ctx, &found.flow::<H>(udp.payload_len))?;
    if !maps::within_limits(target.bucket, target.user_bucket, udp.payload_len) {
        return Some(OVER_LIMIT);
    }
    let check = binding::updated_check::<H>(
        &udp.header,
        &target.checksum_delta,
        &found.new_len,
        &found.channel_header,
        false,
    );
    let new_udp = UdpHdr {
        src_port: target.server_port,
        dst_port: target.client_port,
        len: found.new_len,
        check,
    };
    // SAFETY: the head moves 4 bytes back into the frame's headroom; the
    // kernel refuses (non-zero) when there is none, and then nothing has
    // changed: the frame goes to the stack as it came.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, -(CHANNEL_HEADER as i32)) } != 0 {
        return None;
    }
    // Now the frame starts with 4 bytes of headroom: from here on a failure
    // drops it.
    let rewritten = || -> Option<u32> {
        // Move the headers 4 bytes back, first header first (the ranges
        // overlap), rewrite the IP header where it now is, then write the
        // UDP and ChannelData headers after it.
        let shift = CHANNEL_HEADER;
        copy_within::<EthHdr>(ctx, shift, 0).ok()?;
        copy_within::<H>(ctx, IP_OFFSET + shift, IP_OFFSET).ok()?;
        let ip: &mut H = header_mut(ctx, IP_OFFSET).ok()?;
        ip.rewrite(&target.server_ip, &target.client_ip, CHANNEL_HEADER as i16);
        write(ctx, udp.udp_offset, new_udp).ok()?;
        write(
            ctx,
            udp.udp_offset + size_of::<UdpHdr>(),
            found.channel_header,
        )
        .ok()?;
        set_macs(ctx, &hop)?;
        maps::count_binding(target.slot, false, udp.payload_len);
        Some(hop.action(ctx))
    };
    Some(rewritten().unwrap_or(xdp_action::XDP_DROP))
}
