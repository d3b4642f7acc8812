//! Tells STUN from ChannelData in a UDP payload (RFC 8656 section 12.4 and
//! RFC 8489 section 5).

use aya_ebpf::Global;
use relay_common::{CHANNEL_MAX, CHANNEL_MIN, PacketClass, STUN_MAGIC_COOKIE};

use crate::{
    packet::{Packet, read},
    parse::Udp,
};

/// The highest channel number accepted: RFC 8656's 0x4FFF, or 0x7FFF when
/// the loader enables RFC 5766 channel numbers for older clients.
#[unsafe(no_mangle)]
static CHANNEL_LIMIT: Global<u16> = Global::new(CHANNEL_MAX);

/// Whether `channel` is a valid channel number.
#[inline(always)]
pub fn is_channel(channel: u16) -> bool {
    channel >= CHANNEL_MIN && channel <= CHANNEL_LIMIT.load()
}

/// STUN header length.
const STUN_HEADER_LEN: usize = 20;
/// ChannelData header length: channel number and data length.
const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// Classifies the payload of a datagram addressed to a TURN listen port.
///
/// STUN: the top two bits are 0, the magic cookie is present and the
/// message length is a multiple of 4 that fills the datagram exactly.
/// ChannelData: a channel number in 0x4000-0x4FFF and a data length that fits
/// the datagram, followed by at most the padding to a multiple of 4 (which
/// is optional over UDP, RFC 8656 section 12.5).
#[inline(always)]
pub fn payload(ctx: &impl Packet, udp: &Udp) -> PacketClass {
    let len = udp.payload_len;
    if len < CHANNEL_DATA_HEADER_LEN {
        return PacketClass::Other;
    }
    // The UDP length was checked against the frame, so these reads only fail
    // on a frame that lies about itself; that is "Other", not a new class.
    let Ok(first) = read::<[u8; 4]>(ctx, udp.payload_offset) else {
        return PacketClass::Other;
    };
    let leading = u16::from_be_bytes([first[0], first[1]]);
    let declared = u16::from_be_bytes([first[2], first[3]]) as usize;

    if leading & 0xC000 == 0 {
        if len < STUN_HEADER_LEN || !declared.is_multiple_of(4) || declared != len - STUN_HEADER_LEN
        {
            return PacketClass::Other;
        }
        let Ok(cookie) = read::<[u8; 4]>(ctx, udp.payload_offset + 4) else {
            return PacketClass::Other;
        };
        return if u32::from_be_bytes(cookie) == STUN_MAGIC_COOKIE {
            PacketClass::Stun
        } else {
            PacketClass::Other
        };
    }

    let data_room = len - CHANNEL_DATA_HEADER_LEN;
    let padded = (declared + 3) & !3;
    if is_channel(leading) && declared <= data_room && data_room <= padded {
        PacketClass::ChannelData
    } else {
        PacketClass::Other
    }
}
