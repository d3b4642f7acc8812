//! The tc engine: the same relay of bound channels on the skb, for what the
//! XDP engine leaves alone (egresses that drop XDP frames: veths to pods,
//! tunnels; partial checksums from local senders). It runs at tc ingress of
//! the same interfaces, after XDP, and redirects to the egress's transmit
//! path, which every device has.
//!
//! The UDP header never moves: the payload is shifted by the ChannelData
//! header's 4 bytes and the tail trimmed or grown, so that a partial
//! checksum's start offset stays right. Checksums are updated with the skb
//! helper, which knows whether the field is a full checksum or a partial
//! one (only pseudo-header changes then count).

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT,
    },
    helpers::{
        bpf_l4_csum_replace, bpf_redirect, bpf_redirect_peer, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    macros::classifier,
    programs::TcContext,
};
use core::mem::size_of;
use relay_common::{MapIp, PacketClass};

use crate::{
    binding::{self, CHANNEL_HEADER, IpHeader},
    classify, maps,
    packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, frame_len, read},
    parse::{self, Udp},
    route,
};

/// Largest datagram the tc engine relays: an Ethernet MTU's worth. Larger
/// ones (and GSO packets) go to userspace.
const MAX_IP_LEN: usize = 1500;

#[classifier]
pub fn turnx_tc(ctx: TcContext) -> i32 {
    match relay(&ctx) {
        Some(action) => action,
        None => NEXT,
    }
}

/// "Not ours": tcx runs the next program (Cilium's), or passes the packet
/// to the stack when there is none (TCX_NEXT, TC_ACT_UNSPEC for clsact).
/// Passing (0) would end the chain before the programs after ours.
const NEXT: i32 = -1;

/// The action for a packet of a bound channel, or `None` to leave it.
#[inline(always)]
fn relay(ctx: &TcContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of the context the kernel passed in.
    if unsafe { (*skb).gso_size } != 0 || ctx.len() as usize > size_of::<EthHdr>() + MAX_IP_LEN {
        return None;
    }
    // Direct access needs the headers and the payload in the linear area.
    ctx.pull_data(ctx.len()).ok()?;
    let udp = parse::udp(ctx).ok()?;
    if udp.ip_offset != size_of::<EthHdr>() {
        return None;
    }
    let action = if maps::is_listen_port(udp.header.dst_port) {
        if classify::payload(ctx, &udp) != PacketClass::ChannelData {
            return None;
        }
        if udp.ipv6 {
            to_peer::<Ipv6Hdr>(ctx, &udp)
        } else {
            to_peer::<Ipv4Hdr>(ctx, &udp)
        }
    } else if !maps::is_relayed_port(udp.header.dst_port) {
        return None;
    } else if udp.ipv6 {
        to_client::<Ipv6Hdr>(ctx, &udp)
    } else {
        to_client::<Ipv4Hdr>(ctx, &udp)
    };
    (action != NOT_HANDLED).then_some(action)
}

/// What the per-family functions return when they leave the packet alone
/// (a plain integer, as in the XDP engine).
const NOT_HANDLED: i32 = i32::MIN;

#[inline(never)]
fn to_peer<H: IpHeader>(ctx: &TcContext, udp: &Udp) -> i32 {
    to_peer_via::<H>(ctx, udp).unwrap_or(NOT_HANDLED)
}

#[inline(never)]
fn to_client<H: IpHeader>(ctx: &TcContext, udp: &Udp) -> i32 {
    to_client_via::<H>(ctx, udp).unwrap_or(NOT_HANDLED)
}

#[inline(always)]
fn to_peer_via<H: IpHeader>(ctx: &TcContext, udp: &Udp) -> Option<i32> {
    let old: H = read(ctx, udp.ip_offset).ok()?;
    let found = binding::to_peer_binding(ctx, udp, &old)?;
    let target = found.target;
    let hop = route::tc_next_hop(ctx, &found.flow::<H>())?;
    if !maps::within_limits(target.bucket, target.user_bucket, found.data_len) {
        return Some(over_limit(ctx));
    }
    let skb = ctx.skb.skb;
    // Nothing has changed so far. Once something has, a failure (the
    // helpers fail only without memory) drops the half-rewritten packet
    // rather than hand it to userspace.
    // The data moves 4 bytes forward over the ChannelData header (a failed
    // move changes nothing).
    move_bytes(
        skb,
        udp.payload_offset + CHANNEL_HEADER,
        udp.payload_offset,
        found.data_len,
    )?;
    let rewritten = || -> Option<i32> {
        // SAFETY: a helper call on our skb; shrinking by 4 bytes.
        if unsafe { bpf_skb_change_tail(skb, frame_len(ctx) as u32 - CHANNEL_HEADER as u32, 0) }
            != 0
        {
            return None;
        }
        let new_udp = UdpHdr {
            src_port: target.relayed_port,
            dst_port: target.peer_port,
            len: found.new_len,
            check: udp.header.check,
        };
        // The ChannelData header's words leave the datagram.
        let header = found.channel_header;
        rewrite(
            skb,
            udp,
            &old,
            (&target.relayed_ip, &target.peer_ip),
            &new_udp,
            [
                ([header[0], header[1]], [0, 0]),
                ([header[2], header[3]], [0, 0]),
            ],
        )?;
        send(ctx, &hop, target.slot, true, found.data_len)
    };
    Some(rewritten().unwrap_or(TC_ACT_SHOT))
}

#[inline(always)]
fn to_client_via<H: IpHeader>(ctx: &TcContext, udp: &Udp) -> Option<i32> {
    let old: H = read(ctx, udp.ip_offset).ok()?;
    if H::LEN + size_of::<UdpHdr>() + CHANNEL_HEADER + udp.payload_len > MAX_IP_LEN {
        return None;
    }
    let found = binding::to_client_binding(ctx, udp, &old)?;
    let target = found.target;
    let hop = route::tc_next_hop(ctx, &found.flow::<H>(udp.payload_len))?;
    if !maps::within_limits(target.bucket, target.user_bucket, udp.payload_len) {
        return Some(over_limit(ctx));
    }
    let skb = ctx.skb.skb;
    // SAFETY: a helper call on our skb; growing by 4 bytes (a failure
    // changes nothing).
    if unsafe { bpf_skb_change_tail(skb, frame_len(ctx) as u32 + CHANNEL_HEADER as u32, 0) } != 0 {
        return None;
    }
    // As in `to_peer_via`: now that something has changed, a failure drops.
    let rewritten = || -> Option<i32> {
        // The data moves 4 bytes back, making room for the ChannelData header.
        move_bytes(
            skb,
            udp.payload_offset,
            udp.payload_offset + CHANNEL_HEADER,
            udp.payload_len,
        )?;
        store(skb, udp.payload_offset, &found.channel_header)?;
        let new_udp = UdpHdr {
            src_port: target.server_port,
            dst_port: target.client_port,
            len: found.new_len,
            check: udp.header.check,
        };
        // The ChannelData header's words join the datagram.
        let header = found.channel_header;
        rewrite(
            skb,
            udp,
            &old,
            (&target.server_ip, &target.client_ip),
            &new_udp,
            [
                ([0, 0], [header[0], header[1]]),
                ([0, 0], [header[2], header[3]]),
            ],
        )?;
        send(ctx, &hop, target.slot, false, udp.payload_len)
    };
    Some(rewritten().unwrap_or(TC_ACT_SHOT))
}

/// Counts and drops a datagram over its bandwidth limits.
#[inline(always)]
fn over_limit(ctx: &TcContext) -> i32 {
    maps::count(PacketClass::OverLimit, ctx.len() as usize);
    TC_ACT_SHOT
}

/// Writes the new UDP header (with the old checksum) and the IP header
/// from `old` to the addresses `to`, then updates the checksum for every
/// change: addresses, ports, length, and the ChannelData header `words`
/// (from, to) that leave or join the datagram.
#[inline(always)]
fn rewrite<H: IpHeader>(
    skb: *mut __sk_buff,
    udp: &Udp,
    old: &H,
    to: (&MapIp, &MapIp),
    new_udp: &UdpHdr,
    words: [([u8; 2], [u8; 2]); 2],
) -> Option<()> {
    store(skb, udp.udp_offset, new_udp)?;
    let mut ip = *old;
    let delta = i16::from_be_bytes(new_udp.len).wrapping_sub(i16::from_be_bytes(udp.header.len));
    ip.rewrite(to.0, to.1, delta);
    // A receive checksum over the whole packet (CHECKSUM_COMPLETE, from
    // some NICs) covers the IP header too, and IPv6 has no header checksum
    // to keep its sum: the helper updates skb->csum for what changes here
    // (a no-op for other checksum states). Everything below the IP header
    // is covered by the UDP checksum updates, whose changes cancel.
    store_with(skb, udp.ip_offset, &ip, u64::from(BPF_F_RECOMPUTE_CSUM))?;
    let checksum = Checksum {
        skb,
        offset: udp.udp_offset + 6,
        flags: if H::ZERO_CHECKSUM_ALLOWED {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        },
    };
    checksum.addresses(old, to.0, to.1)?;
    checksum.udp_header(&udp.header, new_udp)?;
    for (from, to) in words {
        checksum.word(from, to, false)?;
    }
    Some(())
}

/// Writes the next hop's MAC addresses, counts, and redirects; with stack
/// routing (no next hop) it hands the rewritten packet on instead, to the
/// tc programs after this one (Cilium's) and then the stack, which route
/// it and apply their policy.
#[inline(always)]
fn send(
    ctx: &TcContext,
    hop: &route::NextHop,
    slot: u32,
    to_peer: bool,
    data_len: usize,
) -> Option<i32> {
    let skb = ctx.skb.skb;
    if hop.ifindex != 0 {
        store(skb, 0, &hop.macs)?;
    }
    maps::count_binding(slot, to_peer, data_len);
    let class = if to_peer {
        PacketClass::ForwardedToPeer
    } else {
        PacketClass::ForwardedToClient
    };
    maps::count(class, ctx.len() as usize);
    if hop.ifindex == 0 {
        return Some(NEXT);
    }
    // SAFETY: helper calls with an interface index from the FIB; the peer
    // redirect is for tc ingress, where this program runs, and a veth whose
    // peer is in another namespace, which the EGRESS map says it is.
    Some(unsafe {
        if hop.to_peer_ingress() {
            bpf_redirect_peer(hop.ifindex, 0)
        } else {
            bpf_redirect(hop.ifindex, 0)
        }
    } as i32)
}

/// Writes `value` at `offset` of the skb.
#[inline(always)]
fn store<T>(skb: *mut __sk_buff, offset: usize, value: &T) -> Option<()> {
    store_with(skb, offset, value, 0)
}

/// Writes `value` at `offset` of the skb with the helper's `flags`.
#[inline(always)]
fn store_with<T>(skb: *mut __sk_buff, offset: usize, value: &T, flags: u64) -> Option<()> {
    // SAFETY: the helper copies size_of::<T>() bytes from `value`, which is
    // that large, into the skb, bounds-checked by the kernel.
    let rc = unsafe {
        bpf_skb_store_bytes(
            skb,
            offset as u32,
            (value as *const T).cast(),
            size_of::<T>() as u32,
            flags,
        )
    };
    (rc == 0).then_some(())
}

/// Moves `len` bytes of the skb from `from` to `to` through a per-CPU
/// scratch buffer (the ranges may overlap).
#[inline(always)]
fn move_bytes(skb: *mut __sk_buff, from: usize, to: usize, len: usize) -> Option<()> {
    if len == 0 {
        return Some(());
    }
    if len >= maps::SCRATCH_LEN {
        return None;
    }
    let buffer = maps::scratch()?;
    // Shows the verifier the bounds the checks above established: from 1
    // to SCRATCH_LEN. The volatile read keeps the compiler from folding
    // the arithmetic away, since it already knows those bounds.
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    let len = (((len - 1) & (maps::SCRATCH_LEN - 1)) + 1) as u32;
    // SAFETY: `buffer` is this CPU's scratch value of SCRATCH_LEN bytes and
    // `len` is below that; the helpers bounds-check the skb side.
    unsafe {
        if bpf_skb_load_bytes(skb as *const _, from as u32, buffer.cast(), len) != 0 {
            return None;
        }
        if bpf_skb_store_bytes(skb, to as u32, buffer as *const _, len, 0) != 0 {
            return None;
        }
    }
    Some(())
}

/// The UDP checksum field of one packet, updated by the kernel's helper:
/// for a full checksum every change counts, for a partial one (the device
/// finishes it) only the pseudo-header's.
struct Checksum {
    skb: *mut __sk_buff,
    offset: usize,
    flags: u64,
}

impl Checksum {
    /// One 16-bit word changed from `from` to `to`, in the pseudo-header or
    /// not.
    #[inline(always)]
    fn word(&self, from: [u8; 2], to: [u8; 2], pseudo: bool) -> Option<()> {
        let pseudo = if pseudo {
            u64::from(BPF_F_PSEUDO_HDR)
        } else {
            0
        };
        // SAFETY: a helper call on our skb; size 2 in the low bits.
        let rc = unsafe {
            bpf_l4_csum_replace(
                self.skb,
                self.offset as u32,
                u64::from(u16::from_ne_bytes(from)),
                u64::from(u16::from_ne_bytes(to)),
                self.flags | pseudo | 2,
            )
        };
        (rc == 0).then_some(())
    }

    /// The addresses (pseudo-header) from those of `old` to `src`, `dst`.
    #[inline(always)]
    fn addresses<H: IpHeader>(&self, old: &H, src: &MapIp, dst: &MapIp) -> Option<()> {
        let (old_src, old_dst) = (old.map_src(), old.map_dst());
        // IPv4 addresses are the last 4 bytes of their mapped form; the
        // mapped prefix is the same on both sides and changes nothing.
        let first = if H::ZERO_CHECKSUM_ALLOWED { 12 } else { 0 };
        let mut i = first;
        while i < 16 {
            self.word([old_src[i], old_src[i + 1]], [src[i], src[i + 1]], true)?;
            self.word([old_dst[i], old_dst[i + 1]], [dst[i], dst[i + 1]], true)?;
            i += 2;
        }
        Some(())
    }

    /// The UDP header: ports (not in the pseudo-header) and the length,
    /// which is in both.
    #[inline(always)]
    fn udp_header(&self, old: &UdpHdr, new: &UdpHdr) -> Option<()> {
        self.word(old.src_port, new.src_port, false)?;
        self.word(old.dst_port, new.dst_port, false)?;
        self.word(old.len, new.len, false)?;
        self.word(old.len, new.len, true)
    }
}
