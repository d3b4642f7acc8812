//! Bounds-checked access to packet memory and the header layouts we read.
//!
//! Header fields are byte arrays in network order, so every struct has
//! alignment 1 and can be read at any offset.

use aya_ebpf::programs::{TcContext, XdpContext};
use core::mem::size_of;

use crate::Error;

/// What the accessors need of a program's context: where the packet bytes
/// it may read and write directly start and end. XDP frames are linear;
/// the tc engine makes its packets linear before parsing.
pub trait Packet {
    /// This engine's slot in the per-CPU copies of bindings
    /// (`maps::channel_target`): XDP and tc each have their own.
    const ENGINE: u32;
    /// Address of the first byte (the Ethernet header).
    fn start(&self) -> usize;
    /// Address one past the last byte.
    fn end(&self) -> usize;
}

impl Packet for XdpContext {
    const ENGINE: u32 = 0;

    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for TcContext {
    const ENGINE: u32 = 1;

    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// Returns a pointer to a `T` at `offset` bytes into the frame, or
/// [`Error::Truncated`] when the frame ends before the `T` does.
///
/// This is the only place that turns a frame offset into a pointer; every
/// header access goes through it, so the verifier sees one bounds check per
/// read.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Result<*const T, Error> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + size_of::<T>() > end {
        return Err(Error::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// Reads a copy of the `T` at `offset`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &impl Packet, offset: usize) -> Result<T, Error> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes from `ptr` lie
    // inside the frame; `T` is one of the alignment-1 header structs below.
    Ok(unsafe { *ptr })
}

/// Length of the frame in bytes, from the Ethernet header on.
#[inline(always)]
pub fn frame_len(ctx: &impl Packet) -> usize {
    ctx.end() - ctx.start()
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub use relay_common::IPPROTO_UDP;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// An 802.1Q / 802.1ad tag; `ether_type` is that of what follows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// "More fragments" flag and fragment offset; any bit set means the
    /// datagram is a fragment.
    pub const FRAGMENT_MASK: u16 = 0x3FFF;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first two bytes every IPv6 extension header starts with.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// Writes `value` at `offset`, or fails with [`Error::Truncated`].
#[inline(always)]
pub fn write<T>(ctx: &impl Packet, offset: usize, value: T) -> Result<(), Error> {
    let ptr = ptr_at::<T>(ctx, offset)? as *mut T;
    // SAFETY: `ptr_at` checked that the bytes lie inside the frame, which
    // the program may modify; alignment 1 (header structs, byte arrays).
    unsafe { ptr.write_unaligned(value) };
    Ok(())
}

/// A mutable reference to the `T` at `offset`, valid until the frame's head
/// or tail is adjusted.
// The frame's bytes are not part of the context struct the reference is
// derived from, so handing out `&mut` from `&` of the context aliases
// nothing.
#[allow(clippy::mut_from_ref)]
#[inline(always)]
pub fn header_mut<T>(ctx: &impl Packet, offset: usize) -> Result<&mut T, Error> {
    let ptr = ptr_at::<T>(ctx, offset)? as *mut T;
    // SAFETY: `ptr_at` checked the bounds; `T` has alignment 1; the frame is
    // the program's to modify, and no other reference to it is alive.
    Ok(unsafe { &mut *ptr })
}

/// Copies the `T` at `from` to `to` within the frame (the ranges may
/// overlap: the whole `T` is read before it is written).
#[inline(always)]
pub fn copy_within<T: Copy>(ctx: &impl Packet, from: usize, to: usize) -> Result<(), Error> {
    let value: T = read(ctx, from)?;
    write(ctx, to, value)
}
