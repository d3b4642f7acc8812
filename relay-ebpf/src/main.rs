//! The relay's XDP program.
//!
//! For now it finds UDP datagrams addressed to the TURN listen ports,
//! classifies their payload (STUN, ChannelData, other) and counts every frame
//! per class and CPU. Every frame goes on to the stack unchanged.
#![no_std]
#![no_main]

mod classify;
mod maps;
mod packet;
mod parse;

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
    /// UDP to a port the TURN server does not listen on.
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
    let class = match classify_frame(&ctx) {
        Ok(class) => class,
        Err(error) => error.class(),
    };
    maps::count(class, packet::frame_len(&ctx));
    // Every class passes for now: the userspace server handles all of it.
    xdp_action::XDP_PASS
}

#[inline(always)]
fn classify_frame(ctx: &XdpContext) -> Result<PacketClass, Error> {
    let udp = parse::udp(ctx)?;
    if !maps::is_listen_port(udp.header.dst_port) {
        return Err(Error::NotListenPort);
    }
    let class = classify::payload(ctx, &udp);
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
    Ok(class)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
