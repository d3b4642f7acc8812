//! Builds Ethernet frames carrying UDP, with correct lengths and checksums,
//! and the TURN payloads that go in them. Tests feed these to the XDP
//! program through BPF_PROG_TEST_RUN; benchmarks use them as templates.

use std::net::{IpAddr, SocketAddr};

/// The parts of a UDP-over-IP Ethernet frame that tests vary.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    /// Source address and port; its family picks IPv4 or IPv6.
    pub src: SocketAddr,
    /// Destination address and port; must be of the same family as `src`.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
    /// 802.1Q/802.1ad tag VLAN ids, outermost first.
    pub vlan_tags: Vec<u16>,
    /// IPv4 options, a multiple of 4 bytes, at most 40.
    pub ipv4_options: Vec<u8>,
    /// IPv4 flags and fragment offset field (host order).
    pub ipv4_frag_off: u16,
    /// IPv6 extension headers before UDP: (header type, body after the two
    /// leading bytes; padded to the header's length unit by the builder).
    pub ipv6_ext_headers: Vec<(u8, Vec<u8>)>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

/// A built frame and where its headers start.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The frame from the destination MAC on.
    pub bytes: Vec<u8>,
    /// Offset of the IP header.
    pub ip_offset: usize,
    /// Offset of the UDP header.
    pub udp_offset: usize,
    /// Offset of the UDP payload.
    pub payload_offset: usize,
}

const ETH_HEADER_LEN: usize = 14;
const UDP_HEADER_LEN: usize = 8;
/// Locally administered MACs, so a frame never looks like real hardware.
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

impl UdpFrame {
    /// A plain untagged frame with TTL 64.
    pub fn new(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        UdpFrame {
            src,
            dst,
            payload: payload.to_vec(),
            vlan_tags: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_frag_off: 0,
            ipv6_ext_headers: Vec::new(),
            ttl: 64,
        }
    }

    /// Serialises the frame. Panics when `src` and `dst` differ in family or
    /// the options are malformed: a test bug, not input.
    pub fn build(&self) -> Frame {
        let mut bytes = Vec::with_capacity(128 + self.payload.len());
        bytes.extend_from_slice(&DST_MAC);
        bytes.extend_from_slice(&SRC_MAC);
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86DD };
        for (i, vid) in self.vlan_tags.iter().enumerate() {
            // Outer tag of a double-tagged frame is 802.1ad.
            let tpid: u16 = if i == 0 && self.vlan_tags.len() > 1 {
                0x88A8
            } else {
                0x8100
            };
            bytes.extend_from_slice(&tpid.to_be_bytes());
            bytes.extend_from_slice(&(vid & 0x0FFF).to_be_bytes());
        }
        bytes.extend_from_slice(&ether_type.to_be_bytes());
        let ip_offset = bytes.len();

        let udp_len = (UDP_HEADER_LEN + self.payload.len()) as u16;
        let (udp_offset, pseudo_header) = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                assert!(self.ipv4_options.len().is_multiple_of(4) && self.ipv4_options.len() <= 40);
                let header_len = 20 + self.ipv4_options.len();
                let total_len = (header_len + udp_len as usize) as u16;
                let mut ip = Vec::with_capacity(header_len);
                ip.push(0x40 | (header_len / 4) as u8);
                ip.push(0);
                ip.extend_from_slice(&total_len.to_be_bytes());
                ip.extend_from_slice(&0x1234u16.to_be_bytes());
                ip.extend_from_slice(&self.ipv4_frag_off.to_be_bytes());
                ip.push(self.ttl);
                ip.push(17);
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let check = internet_checksum(&[&ip]);
                ip[10..12].copy_from_slice(&check.to_be_bytes());
                bytes.extend_from_slice(&ip);
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&udp_len.to_be_bytes());
                (bytes.len(), pseudo)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ext = Vec::new();
                let first_next = self.ipv6_ext_headers.first().map_or(17, |(kind, _)| *kind);
                for (i, (kind, body)) in self.ipv6_ext_headers.iter().enumerate() {
                    let next = self.ipv6_ext_headers.get(i + 1).map_or(17, |(k, _)| *k);
                    let start = ext.len();
                    ext.push(next);
                    ext.push(0);
                    ext.extend_from_slice(body);
                    // AH counts 4-octet units minus 2, the others 8-octet
                    // units minus 1 (RFC 4302 section 2.2, RFC 8200 4.3).
                    let (unit, minus) = if *kind == 51 { (4, 2) } else { (8, 1) };
                    let len = (ext.len() - start).max(8).next_multiple_of(8);
                    ext.resize(start + len, 0);
                    ext[start + 1] = (len / unit - minus) as u8;
                }
                let payload_len = (ext.len() + udp_len as usize) as u16;
                bytes.extend_from_slice(&[0x60, 0, 0, 0]);
                bytes.extend_from_slice(&payload_len.to_be_bytes());
                bytes.push(first_next);
                bytes.push(self.ttl);
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(&dst.octets());
                bytes.extend_from_slice(&ext);
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
                (bytes.len(), pseudo)
            }
            _ => panic!("UdpFrame: source and destination are of different families"),
        };

        let mut udp = Vec::with_capacity(udp_len as usize);
        udp.extend_from_slice(&self.src.port().to_be_bytes());
        udp.extend_from_slice(&self.dst.port().to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        let check = match internet_checksum(&[&pseudo_header, &udp]) {
            // RFC 768: a computed zero is sent as all ones.
            0 => 0xFFFF,
            check => check,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        bytes.extend_from_slice(&udp);
        Frame {
            bytes,
            ip_offset,
            udp_offset,
            payload_offset: udp_offset + UDP_HEADER_LEN,
        }
    }
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`, each of
/// which but the last must have even length.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for pair in &mut chunks {
            sum += u16::from_be_bytes([pair[0], pair[1]]) as u64;
        }
        if let [last] = chunks.remainder() {
            sum += (*last as u64) << 8;
        }
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame of the given EtherType and body, for non-IP cases.
pub fn ethernet_frame(ether_type: u16, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ETH_HEADER_LEN + body.len());
    bytes.extend_from_slice(&DST_MAC);
    bytes.extend_from_slice(&SRC_MAC);
    bytes.extend_from_slice(&ether_type.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// A STUN Binding request (RFC 8489) with no attributes.
pub fn stun_binding_request(transaction_id: [u8; 12]) -> Vec<u8> {
    let mut message = Vec::with_capacity(20);
    message.extend_from_slice(&0x0001u16.to_be_bytes());
    message.extend_from_slice(&0u16.to_be_bytes());
    message.extend_from_slice(&relay_common::STUN_MAGIC_COOKIE.to_be_bytes());
    message.extend_from_slice(&transaction_id);
    message
}

/// A ChannelData message (RFC 8656 section 12.4), padded to a multiple of 4
/// when `pad` is set.
pub fn channel_data(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + data.len() + 3);
    message.extend_from_slice(&channel.to_be_bytes());
    message.extend_from_slice(&(data.len() as u16).to_be_bytes());
    message.extend_from_slice(data);
    if pad {
        message.resize(message.len().next_multiple_of(4), 0);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is ddf2, checksum 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&data]), 0x220d);
    }

    #[test]
    fn built_ipv4_frame_verifies() {
        let frame = UdpFrame::new(
            "198.18.0.1:5000".parse().unwrap(),
            "198.18.0.2:3478".parse().unwrap(),
            b"hello",
        )
        .build();
        let ip = &frame.bytes[frame.ip_offset..frame.udp_offset];
        assert_eq!(internet_checksum(&[ip]), 0, "IPv4 header checksum");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 17, 0, 13]);
        assert_eq!(
            internet_checksum(&[&pseudo, &frame.bytes[frame.udp_offset..]]),
            0
        );
        assert_eq!(&frame.bytes[frame.payload_offset..], b"hello");
    }

    #[test]
    fn ipv6_extension_headers_are_padded_and_chained() {
        let mut spec = UdpFrame::new(
            "[fd00::1]:5000".parse().unwrap(),
            "[fd00::2]:3478".parse().unwrap(),
            b"x",
        );
        spec.ipv6_ext_headers = vec![(0, vec![1, 0, 0, 0, 0, 0]), (60, vec![0; 10])];
        let frame = spec.build();
        let ip = frame.ip_offset;
        assert_eq!(frame.bytes[ip + 6], 0, "first next header is hop-by-hop");
        assert_eq!(frame.bytes[ip + 40], 60, "hop-by-hop chains to dest opts");
        assert_eq!(frame.bytes[ip + 41], 0, "8 bytes: length 0");
        assert_eq!(frame.bytes[ip + 48], 17, "dest opts chains to UDP");
        assert_eq!(frame.bytes[ip + 49], 1, "16 bytes: length 1");
        assert_eq!(frame.udp_offset, ip + 40 + 8 + 16);
    }

    #[test]
    fn channel_data_padding() {
        assert_eq!(channel_data(0x4000, b"abcde", false).len(), 9);
        assert_eq!(channel_data(0x4000, b"abcde", true).len(), 12);
        assert_eq!(&channel_data(0x4001, b"", true), &[0x40, 0x01, 0, 0]);
    }
}
