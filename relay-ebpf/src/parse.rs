//! Walks Ethernet, VLAN tags, IPv4 or IPv6 and UDP to the UDP header.

use core::mem::size_of;

use crate::{
    Error,
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_AH, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP, Ipv4Hdr, Ipv6ExtHdr,
        Ipv6Hdr, Packet, UdpHdr, VlanHdr, frame_len, read,
    },
};

/// VLAN tags we look through: an 802.1ad outer tag and an 802.1Q inner one.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we skip before giving up on finding UDP. Real
/// traffic rarely carries more than one; the bound keeps the loop verifiable.
const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Where a UDP datagram sits in the frame. The header comes first, at an
/// aligned offset: its byte arrays are read as words, and the verifier
/// refuses misaligned stack access.
#[repr(C, align(8))]
pub struct Udp {
    /// The UDP header, copied out of the frame.
    pub header: UdpHdr,
    /// Offset of the IP header.
    pub ip_offset: usize,
    /// Whether the IP header is IPv6.
    pub ipv6: bool,
    /// Offset of the UDP header.
    pub udp_offset: usize,
    /// Offset of the first payload byte.
    pub payload_offset: usize,
    /// Payload length according to the UDP header, checked against the IP
    /// header and the frame.
    pub payload_len: usize,
    /// Offset one past the IP packet, which the datagram may end before.
    pub ip_end: usize,
}

impl Udp {
    /// Whether the datagram fills its IP packet. A UDP length short of it
    /// is valid (the stack trims the rest), but the relay, which moves the
    /// IP length with the UDP length, leaves such datagrams to the stack.
    #[inline(always)]
    pub fn fills_ip(&self) -> bool {
        self.payload_offset + self.payload_len == self.ip_end
    }
}

/// Finds the UDP datagram in the frame, or says why there is none.
#[inline(always)]
pub fn udp(ctx: &impl Packet) -> Result<Udp, Error> {
    let eth: EthHdr = read(ctx, 0)?;
    let mut offset = size_of::<EthHdr>();
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: VlanHdr = read(ctx, offset)?;
        ether_type = u16::from_be_bytes(tag.ether_type);
        offset += size_of::<VlanHdr>();
    }

    let ip_offset = offset;
    let l3 = match ether_type {
        ETH_P_IPV4 => ipv4(ctx, offset)?,
        ETH_P_IPV6 => ipv6(ctx, offset)?,
        _ => return Err(Error::NotIp),
    };

    let header: UdpHdr = read(ctx, l3.l4_offset)?;
    let udp_len = u16::from_be_bytes(header.len) as usize;
    if udp_len < size_of::<UdpHdr>() || l3.l4_offset + udp_len > l3.end {
        return Err(Error::BadLength);
    }
    Ok(Udp {
        ip_offset,
        ipv6: ether_type == ETH_P_IPV6,
        udp_offset: l3.l4_offset,
        header,
        payload_offset: l3.l4_offset + size_of::<UdpHdr>(),
        payload_len: udp_len - size_of::<UdpHdr>(),
        ip_end: l3.end,
    })
}

/// The network layer of a UDP datagram.
struct L3 {
    /// Offset of the UDP header.
    l4_offset: usize,
    /// Offset one past the last byte the IP header declares.
    end: usize,
}

#[inline(always)]
fn ipv4(ctx: &impl Packet, offset: usize) -> Result<L3, Error> {
    let ip: Ipv4Hdr = read(ctx, offset)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(Error::BadVersion);
    }
    let header_len = (ip.version_ihl & 0x0F) as usize * 4;
    let total_len = u16::from_be_bytes(ip.total_len) as usize;
    if header_len < size_of::<Ipv4Hdr>() || total_len < header_len {
        return Err(Error::BadLength);
    }
    if offset + total_len > frame_len(ctx) {
        return Err(Error::Truncated);
    }
    if u16::from_be_bytes(ip.frag_off) & Ipv4Hdr::FRAGMENT_MASK != 0 {
        return Err(Error::Fragment);
    }
    if ip.protocol != IPPROTO_UDP {
        return Err(Error::NotUdp);
    }
    Ok(L3 {
        l4_offset: offset + header_len,
        end: offset + total_len,
    })
}

#[inline(always)]
fn ipv6(ctx: &impl Packet, offset: usize) -> Result<L3, Error> {
    let ip: Ipv6Hdr = read(ctx, offset)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(Error::BadVersion);
    }
    let end = offset + size_of::<Ipv6Hdr>() + u16::from_be_bytes(ip.payload_len) as usize;
    if end > frame_len(ctx) {
        return Err(Error::Truncated);
    }

    let mut next_header = ip.next_header;
    let mut l4_offset = offset + size_of::<Ipv6Hdr>();
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext_len = match next_header {
            // RFC 8200 section 4.3-4.6: length in 8-octet units, not
            // counting the first 8 octets.
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: Ipv6ExtHdr = read(ctx, l4_offset)?;
                next_header = ext.next_header;
                (ext.len as usize + 1) * 8
            }
            // RFC 4302 section 2.2: length in 4-octet units, minus 2.
            IPPROTO_AH => {
                let ext: Ipv6ExtHdr = read(ctx, l4_offset)?;
                next_header = ext.next_header;
                (ext.len as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => return Err(Error::Fragment),
            _ => break,
        };
        l4_offset += ext_len;
    }
    if next_header != IPPROTO_UDP {
        return Err(Error::NotUdp);
    }
    Ok(L3 { l4_offset, end })
}
