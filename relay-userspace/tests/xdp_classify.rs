//! The XDP program run on crafted frames with BPF_PROG_TEST_RUN: each case
//! builds a frame, runs the loaded program on it, and checks the action, that
//! the frame is unchanged, and which counter moved.

mod common;

use std::net::SocketAddr;

use relay_common::PacketClass;
use testkit::frame::{UdpFrame, channel_data, ethernet_frame, stun_binding_request};
use turnx::xdp::XdpRelay;

const XDP_PASS: u32 = 2;
const LISTEN_PORT: u16 = 3478;

/// IPv6 extension headers as `UdpFrame` takes them.
type ExtHeaders = Vec<(u8, Vec<u8>)>;

fn v4(port: u16) -> (SocketAddr, SocketAddr) {
    (
        "198.18.0.1:50000".parse().unwrap(),
        SocketAddr::new("198.18.0.2".parse().unwrap(), port),
    )
}

fn v6(port: u16) -> (SocketAddr, SocketAddr) {
    (
        "[fd00::1]:50000".parse().unwrap(),
        SocketAddr::new("fd00::2".parse().unwrap(), port),
    )
}

fn stun() -> Vec<u8> {
    stun_binding_request(*b"abcdefghijkl")
}

/// A loaded program that knows the listen port, or `None` when skipping.
fn relay(test: &str) -> Option<XdpRelay> {
    let object = common::xdp_object_or_skip(test)?;
    let mut relay = XdpRelay::load(object, "info").expect("loading the XDP program");
    relay.set_listen_ports(&[LISTEN_PORT]).unwrap();
    Some(relay)
}

/// Runs the program once on `frame` and returns the one class whose counter
/// moved, after checking it moved by one packet of `frame.len()` bytes, that
/// the action is XDP_PASS and that the frame was not modified.
fn classify(relay: &XdpRelay, frame: &[u8]) -> PacketClass {
    let before = relay.counters().unwrap();
    let run = relay.run_on_frame(frame, 1).expect("BPF_PROG_TEST_RUN");
    let delta = relay.counters().unwrap().since(&before);
    assert_eq!(run.action, XDP_PASS, "every frame passes to the stack");
    assert_eq!(run.output, frame, "the program must not modify the frame");
    let moved: Vec<PacketClass> = PacketClass::ALL
        .into_iter()
        .filter(|class| delta.get(*class).packets != 0)
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one class counts the frame: {delta}"
    );
    let counter = delta.get(moved[0]);
    assert_eq!(counter.packets, 1, "{delta}");
    assert_eq!(counter.bytes, frame.len() as u64, "{delta}");
    moved[0]
}

fn build((src, dst): (SocketAddr, SocketAddr), payload: &[u8]) -> Vec<u8> {
    UdpFrame::new(src, dst, payload).build().bytes
}

#[test]
fn valid_stun_over_ipv4_and_ipv6() {
    let Some(relay) = relay("valid_stun_over_ipv4_and_ipv6") else {
        return;
    };
    assert_eq!(
        classify(&relay, &build(v4(LISTEN_PORT), &stun())),
        PacketClass::Stun
    );
    assert_eq!(
        classify(&relay, &build(v6(LISTEN_PORT), &stun())),
        PacketClass::Stun
    );
}

#[test]
fn valid_channel_data_with_and_without_padding() {
    let Some(relay) = relay("valid_channel_data_with_and_without_padding") else {
        return;
    };
    for (channel, data, pad) in [
        (0x4000, &b"media"[..], false),
        (0x4000, &b"media"[..], true),
        (0x4FFF, &b"1234"[..], false),
        (0x4ABC, &[][..], false),
    ] {
        let payload = channel_data(channel, data, pad);
        for addrs in [v4(LISTEN_PORT), v6(LISTEN_PORT)] {
            assert_eq!(
                classify(&relay, &build(addrs, &payload)),
                PacketClass::ChannelData,
                "channel {channel:#x}, {} data bytes, pad {pad}",
                data.len()
            );
        }
    }
}

#[test]
fn other_payloads_to_the_listen_port() {
    let Some(relay) = relay("other_payloads_to_the_listen_port") else {
        return;
    };
    let mut bad_cookie = stun();
    bad_cookie[4] ^= 0xFF;
    let mut stun_length_too_long = stun();
    stun_length_too_long[3] = 4;
    let mut stun_length_unaligned = stun();
    stun_length_unaligned.extend_from_slice(&[0; 2]);
    stun_length_unaligned[3] = 2;
    let mut declared_longer = channel_data(0x4000, b"abcd", false);
    declared_longer[3] = 5;
    let mut too_much_padding = channel_data(0x4000, b"abcd", false);
    too_much_padding.extend_from_slice(&[0; 4]);
    let cases: [(&str, Vec<u8>); 9] = [
        ("empty payload", Vec::new()),
        ("three bytes", vec![0x40, 0x00, 0x00]),
        ("text", b"hello, relay".to_vec()),
        ("STUN with a wrong magic cookie", bad_cookie),
        ("STUN longer than the datagram", stun_length_too_long),
        ("STUN length not a multiple of 4", stun_length_unaligned),
        (
            "channel 0x5000 (reserved)",
            channel_data(0x5000, b"abcd", false),
        ),
        ("ChannelData longer than the datagram", declared_longer),
        (
            "ChannelData with more than padding after it",
            too_much_padding,
        ),
    ];
    for (name, payload) in cases {
        assert_eq!(
            classify(&relay, &build(v4(LISTEN_PORT), &payload)),
            PacketClass::Other,
            "{name}"
        );
    }
}

#[test]
fn wrong_port_non_udp_and_non_ip_are_unrelated() {
    let Some(relay) = relay("wrong_port_non_udp_and_non_ip_are_unrelated") else {
        return;
    };
    assert_eq!(
        classify(&relay, &build(v4(LISTEN_PORT + 1), &stun())),
        PacketClass::Unrelated,
        "STUN to another port"
    );
    assert_eq!(
        classify(&relay, &build(v6(LISTEN_PORT + 1), &stun())),
        PacketClass::Unrelated,
        "IPv6 STUN to another port"
    );

    let mut tcp = UdpFrame::new(v4(LISTEN_PORT).0, v4(LISTEN_PORT).1, &stun()).build();
    tcp.bytes[tcp.ip_offset + 9] = 6;
    assert_eq!(classify(&relay, &tcp.bytes), PacketClass::Unrelated, "TCP");

    let arp = ethernet_frame(0x0806, &[0; 28]);
    assert_eq!(classify(&relay, &arp), PacketClass::Unrelated, "ARP");
}

#[test]
fn truncated_at_every_length_is_malformed() {
    let Some(relay) = relay("truncated_at_every_length_is_malformed") else {
        return;
    };
    let mut vlan = UdpFrame::new(v4(LISTEN_PORT).0, v4(LISTEN_PORT).1, &stun());
    vlan.vlan_tags = vec![100];
    let mut ext = UdpFrame::new(v6(LISTEN_PORT).0, v6(LISTEN_PORT).1, &stun());
    ext.ipv6_ext_headers = vec![(0, vec![1, 4, 0, 0, 0, 0])];
    for spec in [
        UdpFrame::new(v4(LISTEN_PORT).0, v4(LISTEN_PORT).1, &stun()),
        UdpFrame::new(v6(LISTEN_PORT).0, v6(LISTEN_PORT).1, &stun()),
        vlan,
        ext,
    ] {
        let frame = spec.build();
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header,
        // so cuts start there: at the Ethernet, IP, UDP and payload
        // boundaries and every byte in between.
        for len in 14..frame.bytes.len() {
            assert_eq!(
                classify(&relay, &frame.bytes[..len]),
                PacketClass::Malformed,
                "{} cut to {len} of {} bytes (IP at {}, UDP at {}, payload at {})",
                spec.src,
                frame.bytes.len(),
                frame.ip_offset,
                frame.udp_offset,
                frame.payload_offset
            );
        }
    }
}

#[test]
fn inconsistent_headers_are_malformed() {
    let Some(relay) = relay("inconsistent_headers_are_malformed") else {
        return;
    };
    let base = UdpFrame::new(v4(LISTEN_PORT).0, v4(LISTEN_PORT).1, &stun()).build();
    let (ip, udp) = (base.ip_offset, base.udp_offset);
    let cases: [(&str, usize, u8); 4] = [
        ("IPv4 header length 4 words", ip, 0x44),
        ("version 6 in an IPv4 EtherType", ip, 0x65),
        ("UDP length beyond the IP packet", udp + 5, 0xFF),
        ("UDP length below its header", udp + 5, 7),
    ];
    for (name, offset, value) in cases {
        let mut frame = base.bytes.clone();
        frame[offset] = value;
        if offset == udp + 5 {
            frame[udp + 4] = 0;
        }
        assert_eq!(classify(&relay, &frame), PacketClass::Malformed, "{name}");
    }
}

#[test]
fn vlan_tagged_frames_are_looked_through() {
    let Some(relay) = relay("vlan_tagged_frames_are_looked_through") else {
        return;
    };
    for tags in [vec![7], vec![100, 200]] {
        for (addrs, payload, class) in [
            (v4(LISTEN_PORT), stun(), PacketClass::Stun),
            (
                v6(LISTEN_PORT),
                channel_data(0x4001, b"x", true),
                PacketClass::ChannelData,
            ),
        ] {
            let mut spec = UdpFrame::new(addrs.0, addrs.1, &payload);
            spec.vlan_tags = tags.clone();
            assert_eq!(
                classify(&relay, &spec.build().bytes),
                class,
                "tags {tags:?}"
            );
        }
    }
}

#[test]
fn ipv4_options_are_skipped() {
    let Some(relay) = relay("ipv4_options_are_skipped") else {
        return;
    };
    // NOP, NOP, NOP, end-of-options; and the 40-byte maximum.
    for options in [vec![1, 1, 1, 0], vec![1; 40]] {
        let mut spec = UdpFrame::new(v4(LISTEN_PORT).0, v4(LISTEN_PORT).1, &stun());
        spec.ipv4_options = options.clone();
        assert_eq!(
            classify(&relay, &spec.build().bytes),
            PacketClass::Stun,
            "{} option bytes",
            options.len()
        );
    }
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let Some(relay) = relay("ipv6_extension_headers_are_skipped") else {
        return;
    };
    let pad_n = vec![1, 4, 0, 0, 0, 0];
    let cases: [(&str, ExtHeaders); 3] = [
        ("hop-by-hop", vec![(0, pad_n.clone())]),
        (
            "hop-by-hop, routing, destination options",
            vec![(0, pad_n.clone()), (43, vec![0; 6]), (60, pad_n.clone())],
        ),
        ("authentication header", vec![(51, vec![0; 10])]),
    ];
    for (name, headers) in cases {
        let mut spec = UdpFrame::new(v6(LISTEN_PORT).0, v6(LISTEN_PORT).1, &stun());
        spec.ipv6_ext_headers = headers;
        assert_eq!(
            classify(&relay, &spec.build().bytes),
            PacketClass::Stun,
            "{name}"
        );
    }
}

#[test]
fn fragments_are_left_to_the_stack() {
    let Some(relay) = relay("fragments_are_left_to_the_stack") else {
        return;
    };
    // More-fragments set on the first fragment, then a later fragment.
    for frag_off in [0x2000, 0x0010] {
        let mut spec = UdpFrame::new(v4(LISTEN_PORT).0, v4(LISTEN_PORT).1, &stun());
        spec.ipv4_frag_off = frag_off;
        assert_eq!(
            classify(&relay, &spec.build().bytes),
            PacketClass::Fragment,
            "IPv4 frag_off {frag_off:#x}"
        );
    }
    let mut spec = UdpFrame::new(v6(LISTEN_PORT).0, v6(LISTEN_PORT).1, &stun());
    spec.ipv6_ext_headers = vec![(44, vec![0, 1, 0, 0, 0, 1])];
    assert_eq!(
        classify(&relay, &spec.build().bytes),
        PacketClass::Fragment,
        "IPv6 fragment header"
    );
}

#[test]
fn ethernet_padding_after_a_short_datagram_is_ignored() {
    let Some(relay) = relay("ethernet_padding_after_a_short_datagram_is_ignored") else {
        return;
    };
    let mut frame = build(v4(LISTEN_PORT), &channel_data(0x4000, b"", false));
    assert!(frame.len() < 60);
    frame.resize(60, 0);
    assert_eq!(classify(&relay, &frame), PacketClass::ChannelData);
}

#[test]
fn listen_ports_can_be_replaced() {
    let Some(mut relay) = relay("listen_ports_can_be_replaced") else {
        return;
    };
    relay.set_listen_ports(&[5349]).unwrap();
    assert_eq!(
        classify(&relay, &build(v4(LISTEN_PORT), &stun())),
        PacketClass::Unrelated,
        "the old port is forgotten"
    );
    assert_eq!(
        classify(&relay, &build(v4(5349), &stun())),
        PacketClass::Stun
    );
    let too_many: Vec<u16> = (1..=65).collect();
    assert!(relay.set_listen_ports(&too_many).is_err());
}
