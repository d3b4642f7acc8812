//! The relay's kernel programs.
//!
//! The XDP program (`turnx_xdp`, here) parses every frame, classifies UDP to
//! the TURN listen ports (STUN, ChannelData, other), counts per class and
//! CPU, and relays bound channels where the egress delivers what XDP sends
//! (`forward`). Everything else goes on to the stack unchanged, where the tc
//! program (`turnx_tc`, in `tc`) relays what XDP could not, and the
//! userspace server the rest. Both use `binding` for the lookups, header
//! rewrites and checksums.
#![no_std]
#![no_main]

mod binding;
mod classify;
mod forward;
mod maps;
mod packet;
mod parse;
mod route;
mod tc;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use relay_common::PacketClass;

/// Why a frame is not a UDP datagram for a TURN listen port.
#[derive(Clone, Copy)]
pub enum Error {
    /// The frame ends before a header does.
    Truncated,
    /// An IP header whose version field does not match its EtherType.
    BadVersion,
    /// A length field that is too small or runs past its enclosing header.
    BadLength,
    /// An IPv4 or IPv6 fragment.
    Fragment,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// IP, but not UDP (or behind more extension headers than we skip).
    NotUdp,
    /// UDP to a port the TURN server does not listen on (nor a relayed
    /// port the kernel relays for).
    NotListenPort,
}

impl Error {
    /// The counter a frame rejected for this reason is counted in.
    fn class(self) -> PacketClass {
        match self {
            Error::Truncated | Error::BadVersion | Error::BadLength => PacketClass::Malformed,
            Error::Fragment => PacketClass::Fragment,
            Error::NotIp | Error::NotUdp | Error::NotListenPort => PacketClass::Unrelated,
        }
    }
}

#[xdp]
pub fn turnx_xdp(ctx: XdpContext) -> u32 {
    // Counted as it arrived, before any rewrite changes its length.
    let len = packet::frame_len(&ctx);
    let (class, action) = match handle(&ctx) {
        Ok(handled) => handled,
        Err(error) => (error.class(), xdp_action::XDP_PASS),
    };
    maps::count(class, len);
    action
}

/// Classifies the frame and forwards it when it belongs to a bound channel;
/// everything else passes to the stack, where the userspace server has it.
#[inline(always)]
fn handle(ctx: &XdpContext) -> Result<(PacketClass, u32), Error> {
    let udp = parse::udp(ctx)?;
    if !maps::is_listen_port(udp.header.dst_port) {
        if !maps::is_relayed_port(udp.header.dst_port) {
            return Err(Error::NotListenPort);
        }
        return forward::to_client(ctx, &udp).ok_or(Error::NotListenPort);
    }
    let class = classify::payload(ctx, &udp);
    if class == PacketClass::ChannelData
        && let Some(relayed) = forward::to_peer(ctx, &udp)
    {
        return Ok(relayed);
    }
    if class == PacketClass::Stun {
        // STUN is control traffic, a few packets per allocation, so a debug
        // line per message stays off the media hot path.
        debug!(
            ctx,
            "STUN message from UDP port {} to {} on ifindex {}",
            u16::from_be_bytes(udp.header.src_port),
            u16::from_be_bytes(udp.header.dst_port),
            // SAFETY: reading a field of the context the kernel passed in.
            unsafe { (*ctx.ctx).ingress_ifindex }
        );
    }
    Ok((class, xdp_action::XDP_PASS))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
