//! Plain-data types shared by the XDP program (`relay-ebpf`) and the daemon
//! (`relay-userspace`).
//!
//! Everything here is `#[repr(C)]` or a byte array, without pointers or
//! implicit padding, so the kernel and userspace agree on every byte of a map
//! key or value. Multi-byte fields that come from packet headers are kept in
//! network byte order (`[u8; N]`), so the kernel copies them straight from the
//! packet and userspace converts once, when it writes the map.
//!
//! With the `user` feature the types implement [`aya::Pod`].
#![no_std]

/// Name of the hash map of UDP ports the TURN server listens on.
/// Key: [`ListenPortKey`], value: [`ListenPortValue`].
pub const MAP_LISTEN_PORTS: &str = "LISTEN_PORTS";
/// Maximum number of TURN listen ports the kernel program knows about.
pub const MAX_LISTEN_PORTS: u32 = 64;

/// Name of the per-CPU array of packet counters, indexed by [`PacketClass`].
pub const MAP_CLASS_COUNTERS: &str = "CLASS_COUNTERS";

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "turnx_xdp";

/// A UDP destination port in network byte order, as it appears in the header.
pub type ListenPortKey = [u8; 2];

/// What the kernel knows about a listen port. Only presence matters for now;
/// the struct leaves room for per-listener flags without changing the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenPortValue {
    /// Reserved, zero.
    pub flags: u32,
}

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
}

impl PacketClass {
    /// Every class, in index order.
    pub const ALL: [PacketClass; 6] = [
        PacketClass::Unrelated,
        PacketClass::Malformed,
        PacketClass::Fragment,
        PacketClass::Stun,
        PacketClass::ChannelData,
        PacketClass::Other,
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

/// Lowest channel number a client may bind (RFC 8656 section 12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest channel number a client may bind (RFC 8656 section 12).
pub const CHANNEL_MAX: u16 = 0x4FFF;

/// The STUN magic cookie (RFC 8489 section 5).
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data of integer fields, no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::ListenPortValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_values_have_no_padding() {
        assert_eq!(size_of::<ListenPortValue>(), 4);
        assert_eq!(size_of::<Counter>(), 16);
    }

    #[test]
    fn class_indices_are_dense_and_ordered() {
        for (index, class) in PacketClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, index);
        }
    }
}
