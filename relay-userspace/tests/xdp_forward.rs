//! The kernel relay path on crafted frames (BPF_PROG_TEST_RUN): a bound
//! channel's ChannelData leaves as plain UDP to the peer and the peer's
//! datagram leaves as ChannelData to the client, byte for byte what an
//! independent frame builder (full checksums, RFC 1071) produces; anything
//! the kernel does not handle passes unchanged.

mod common;

use std::net::SocketAddr;

use relay_common::PacketClass;
use testkit::frame::{UdpFrame, channel_data};
use turnx::xdp::{KernelBinding, XdpRelay};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const CHANNEL: u16 = 0x4000;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn v4_binding() -> KernelBinding {
    KernelBinding {
        client: addr("198.18.0.1:50000"),
        server: addr("198.18.0.2:3478"),
        channel: CHANNEL,
        relayed: addr("198.19.0.1:50002"),
        peer: addr("198.19.0.2:3480"),
        slot: 0,
        buckets: Default::default(),
        expires: 0,
    }
}

fn v6_binding() -> KernelBinding {
    KernelBinding {
        client: addr("[fd00:18::1]:50000"),
        server: addr("[fd00:18::2]:3478"),
        channel: 0x4ABC,
        relayed: addr("[fd00:19::1]:50002"),
        peer: addr("[fd00:19::2]:3480"),
        slot: 1,
        buckets: Default::default(),
        expires: 0,
    }
}

/// A loaded program with `bindings`, and an empty network namespace to run
/// frames in, so that the host's routes play no part.
struct Relay {
    xdp: XdpRelay,
    ns: common::Netns,
}

/// A relay in stack-routing mode: relayed frames are rewritten and passed
/// to the stack, so their bytes can be compared whatever the routes.
fn relay(test: &str, bindings: &[KernelBinding]) -> Option<Relay> {
    relay_routed(test, bindings, true)
}

fn relay_routed(test: &str, bindings: &[KernelBinding], route_in_stack: bool) -> Option<Relay> {
    let object = common::xdp_object_or_skip(test)?;
    let options = turnx::xdp::LoadOptions {
        route_in_stack,
        ..Default::default()
    };
    let mut xdp = XdpRelay::load_with(object, "info", &options).expect("loading the XDP program");
    xdp.set_listen_ports(&[3478]).unwrap();
    for binding in bindings {
        xdp.install(binding).unwrap();
    }
    Some(Relay {
        xdp,
        ns: common::Netns::new("txf"),
    })
}

/// Runs the program once in the relay's namespace; returns action, output
/// and the class counted.
fn run(relay: &Relay, frame: &[u8]) -> (u32, Vec<u8>, PacketClass) {
    let xdp = &relay.xdp;
    let before = xdp.counters().unwrap();
    let result = relay.ns.run(|| xdp.run_on_frame(frame, 1)).unwrap();
    let relay = xdp;
    let delta = relay.counters().unwrap().since(&before);
    let class = PacketClass::ALL
        .into_iter()
        .find(|class| delta.get(*class).packets == 1)
        .expect("one class counted");
    (result.action, result.output, class)
}

fn client_frame(binding: &KernelBinding, payload: &[u8]) -> UdpFrame {
    UdpFrame::new(binding.client, binding.server, payload)
}

fn peer_frame(binding: &KernelBinding, payload: &[u8]) -> UdpFrame {
    UdpFrame::new(binding.peer, binding.relayed, payload)
}

#[test]
fn channel_data_is_relayed_to_the_peer_ipv4_and_ipv6() {
    let Some(relay) = relay(
        "channel_data_is_relayed_to_the_peer_ipv4_and_ipv6",
        &[v4_binding(), v6_binding()],
    ) else {
        return;
    };
    for binding in [v4_binding(), v6_binding()] {
        for data in [&b"media"[..], &[0xA5; 1200][..], &[][..]] {
            let input = client_frame(&binding, &channel_data(binding.channel, data, false)).build();
            let mut expected = UdpFrame::new(binding.relayed, binding.peer, data);
            expected.ttl = 63;
            let (action, output, class) = run(&relay, &input.bytes);
            assert_eq!(action, XDP_PASS);
            assert_eq!(class, PacketClass::ForwardedToPeer);
            assert_eq!(
                output,
                expected.build().bytes,
                "{} bytes over {}",
                data.len(),
                binding.client
            );
        }
    }
}

#[test]
fn peer_data_is_relayed_to_the_client_as_channel_data() {
    let Some(relay) = relay(
        "peer_data_is_relayed_to_the_client_as_channel_data",
        &[v4_binding(), v6_binding()],
    ) else {
        return;
    };
    for binding in [v4_binding(), v6_binding()] {
        for data in [&b"media"[..], &[0x5A; 1200][..], &[][..]] {
            let input = peer_frame(&binding, data).build();
            let mut expected = UdpFrame::new(
                binding.server,
                binding.client,
                &channel_data(binding.channel, data, false),
            );
            expected.ttl = 63;
            let (action, output, class) = run(&relay, &input.bytes);
            assert_eq!(action, XDP_PASS);
            assert_eq!(class, PacketClass::ForwardedToClient);
            assert_eq!(
                output,
                expected.build().bytes,
                "{} bytes from {}",
                data.len(),
                binding.peer
            );
        }
    }
}

/// A local sender with transmit checksum offload on (a pod's veth) leaves
/// only the pseudo-header's sum in the UDP checksum: updating it would send
/// a wrong checksum, so such frames go to the stack untouched.
#[test]
fn partial_checksums_are_left_to_the_stack() {
    for binding in [v4_binding(), v6_binding()] {
        let Some(relay) = relay("partial_checksums_are_left_to_the_stack", &[binding]) else {
            return;
        };
        let to_peer = client_frame(&binding, &channel_data(CHANNEL, b"partial", false)).build();
        let to_client = peer_frame(&binding, b"partial").build();
        for (mut input, class) in [
            (to_peer, PacketClass::ChannelData),
            (to_client, PacketClass::Unrelated),
        ] {
            let udp = &input.bytes[input.udp_offset..];
            let (src, dst) = match binding.client {
                SocketAddr::V4(_) => (
                    &input.bytes[input.ip_offset + 12..input.ip_offset + 16],
                    &input.bytes[input.ip_offset + 16..input.ip_offset + 20],
                ),
                SocketAddr::V6(_) => (
                    &input.bytes[input.ip_offset + 8..input.ip_offset + 24],
                    &input.bytes[input.ip_offset + 24..input.ip_offset + 40],
                ),
            };
            // What Linux writes for CHECKSUM_PARTIAL: the folded
            // pseudo-header sum, not complemented.
            let partial = !testkit::frame::internet_checksum(&[src, dst, &[0, 17], &udp[4..6]]);
            let at = input.udp_offset + 6;
            input.bytes[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            let (action, output, counted) = run(&relay, &input.bytes);
            assert_eq!((action, counted), (XDP_PASS, class), "{binding:?}");
            assert_eq!(output, input.bytes, "untouched");
        }
    }
}

#[test]
fn ipv4_without_udp_checksum_stays_without() {
    let binding = v4_binding();
    let Some(relay) = relay("ipv4_without_udp_checksum_stays_without", &[binding]) else {
        return;
    };
    let to_peer = client_frame(&binding, &channel_data(CHANNEL, b"no checksum", false)).build();
    let to_client = peer_frame(&binding, b"no checksum").build();
    for mut input in [to_peer, to_client] {
        input.bytes[input.udp_offset + 6..input.udp_offset + 8].fill(0);
        let (_, output, class) = run(&relay, &input.bytes);
        assert!(matches!(
            class,
            PacketClass::ForwardedToPeer | PacketClass::ForwardedToClient
        ));
        let check = &output[input.udp_offset + 6..input.udp_offset + 8];
        assert_eq!(check, [0, 0]);
    }
}

/// Frames the kernel must leave alone, and the class they are counted in.
#[test]
fn what_the_kernel_does_not_relay_passes_unchanged() {
    let binding = v4_binding();
    let cross = KernelBinding {
        client: addr("198.18.0.3:50000"),
        peer: addr("[fd00:19::2]:3480"),
        relayed: addr("[fd00:19::1]:50004"),
        ..v4_binding()
    };
    let Some(relay) = relay(
        "what_the_kernel_does_not_relay_passes_unchanged",
        &[binding, cross],
    ) else {
        return;
    };
    let data = channel_data(CHANNEL, b"media", false);
    let mut cases: Vec<(&str, Vec<u8>, PacketClass)> = Vec::new();
    let unbound = UdpFrame::new(addr("198.18.0.9:50000"), binding.server, &data);
    cases.push((
        "unbound client",
        unbound.build().bytes,
        PacketClass::ChannelData,
    ));
    cases.push((
        "unknown channel",
        client_frame(&binding, &channel_data(0x4001, b"media", false))
            .build()
            .bytes,
        PacketClass::ChannelData,
    ));
    cases.push((
        "channel 0x5000",
        client_frame(&binding, &channel_data(0x5000, b"media", false))
            .build()
            .bytes,
        PacketClass::Other,
    ));
    let mut longer = data.clone();
    longer[3] = 9;
    cases.push((
        "declared longer than the datagram",
        client_frame(&binding, &longer).build().bytes,
        PacketClass::Other,
    ));
    cases.push((
        "padded ChannelData",
        client_frame(&binding, &channel_data(CHANNEL, b"media", true))
            .build()
            .bytes,
        PacketClass::ChannelData,
    ));
    let mut fragment = client_frame(&binding, &data);
    fragment.ipv4_frag_off = 0x2000;
    cases.push((
        "IPv4 fragment",
        fragment.build().bytes,
        PacketClass::Fragment,
    ));
    let mut options = client_frame(&binding, &data);
    options.ipv4_options = vec![1, 1, 1, 0];
    cases.push((
        "IPv4 options",
        options.build().bytes,
        PacketClass::ChannelData,
    ));
    let mut ttl = client_frame(&binding, &data);
    ttl.ttl = 1;
    cases.push((
        "TTL 1 to the peer",
        ttl.build().bytes,
        PacketClass::ChannelData,
    ));
    let mut ttl = peer_frame(&binding, b"media");
    ttl.ttl = 1;
    cases.push((
        "TTL 1 to the client",
        ttl.build().bytes,
        PacketClass::Unrelated,
    ));
    let wrong_port = UdpFrame::new(binding.client, addr("198.18.0.2:3479"), &data);
    cases.push((
        "wrong destination port",
        wrong_port.build().bytes,
        PacketClass::Unrelated,
    ));
    let stranger = UdpFrame::new(addr("198.19.0.7:3480"), binding.relayed, b"media");
    cases.push((
        "peer without a binding",
        stranger.build().bytes,
        PacketClass::Unrelated,
    ));
    let mut tagged = client_frame(&binding, &data);
    tagged.vlan_tags = vec![5];
    cases.push((
        "VLAN-tagged",
        tagged.build().bytes,
        PacketClass::ChannelData,
    ));
    let cross_frame = UdpFrame::new(cross.client, cross.server, &data);
    cases.push((
        "IPv4 client, IPv6 peer",
        cross_frame.build().bytes,
        PacketClass::ChannelData,
    ));
    let mut truncated = client_frame(&binding, &data).build().bytes;
    truncated.truncate(truncated.len() - 2);
    cases.push(("truncated datagram", truncated, PacketClass::Malformed));
    // Found by the kernel fuzzer: the stack drops a damaged IPv4 header,
    // and the relay, which recomputes the checksum, would have hidden it.
    for (name, frame) in [
        (
            "damaged IPv4 header to the peer",
            client_frame(&binding, &data),
        ),
        (
            "damaged IPv4 header to the client",
            peer_frame(&binding, b"media"),
        ),
    ] {
        let mut frame = frame.build();
        frame.bytes[frame.ip_offset + 8] ^= 0x01; // TTL, checksum unchanged
        let class = if name.ends_with("peer") {
            PacketClass::ChannelData
        } else {
            PacketClass::Unrelated
        };
        cases.push((name, frame.bytes, class));
    }
    // Also found by it: a UDP length short of the IP packet is valid (the
    // stack trims the rest), but the relay moves both lengths together.
    let mut short = peer_frame(&binding, b"media and more").build();
    let udp_len = (8 + 5u16).to_be_bytes();
    short.bytes[short.udp_offset + 4..short.udp_offset + 6].copy_from_slice(&udp_len);
    short.bytes[short.udp_offset + 6..short.udp_offset + 8].fill(0);
    cases.push((
        "UDP shorter than its IP packet",
        short.bytes,
        PacketClass::Unrelated,
    ));

    for (name, frame, class) in cases {
        let (action, output, counted) = run(&relay, &frame);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(output, frame, "{name}: must pass unchanged");
        assert_eq!(counted, class, "{name}");
    }
}

#[test]
fn removing_a_binding_stops_the_kernel_relay() {
    let binding = v4_binding();
    // Another channel of the same allocation: same relayed port, another
    // peer. The port stays marked for the kernel while either is bound.
    let sibling = KernelBinding {
        channel: CHANNEL + 1,
        peer: addr("198.19.0.3:3480"),
        slot: 1,
        ..binding
    };
    let Some(mut relay) = relay(
        "removing_a_binding_stops_the_kernel_relay",
        &[binding, sibling],
    ) else {
        return;
    };
    let input = client_frame(&binding, &channel_data(CHANNEL, b"media", false)).build();
    assert_eq!(run(&relay, &input.bytes).2, PacketClass::ForwardedToPeer);
    relay.xdp.remove(&binding).unwrap();
    let (_, output, class) = run(&relay, &input.bytes);
    assert_eq!(
        (output, class),
        (input.bytes.clone(), PacketClass::ChannelData)
    );
    let back = peer_frame(&binding, b"media").build();
    assert_eq!(run(&relay, &back.bytes).2, PacketClass::Unrelated);
    let sibling_back = peer_frame(&sibling, b"media").build();
    assert_eq!(
        run(&relay, &sibling_back.bytes).2,
        PacketClass::ForwardedToClient
    );
    relay.xdp.remove(&sibling).unwrap();
    assert_eq!(run(&relay, &sibling_back.bytes).2, PacketClass::Unrelated);
}

#[test]
fn relayed_frames_go_to_the_next_hop_or_stay_for_userspace() {
    const XDP_REDIRECT: u32 = 4;
    let binding = v4_binding();
    let Some(relay) = relay_routed(
        "relayed_frames_go_to_the_next_hop_or_stay_for_userspace",
        &[binding],
        false,
    ) else {
        return;
    };
    let input = client_frame(&binding, &channel_data(CHANNEL, b"to the peer", false)).build();

    // No route yet: the frame stays as it came, for the userspace relay.
    let (action, output, class) = run(&relay, &input.bytes);
    assert_eq!((action, class), (XDP_PASS, PacketClass::ChannelData));
    assert_eq!(output, input.bytes);

    // A route to the peer's network, its resolved neighbour, and IP
    // forwarding, which the kernel's FIB helper requires.
    relay.ns.enable_forwarding();
    let (out, peer_end) = (common::unique_name("vo"), common::unique_name("vp"));
    relay.ns.ip(&[
        "link", "add", &out, "type", "veth", "peer", "name", &peer_end,
    ]);
    relay.ns.ip(&["addr", "add", "198.19.0.1/24", "dev", &out]);
    relay.ns.ip(&["link", "set", &out, "up"]);
    relay.ns.ip(&["link", "set", &peer_end, "up"]);
    relay.ns.ip(&[
        "neigh",
        "add",
        "198.19.0.2",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        &out,
        "nud",
        "permanent",
    ]);
    let own_mac: Vec<u8> = relay
        .ns
        .ip_output(&["-br", "link", "show", &out])
        .split_whitespace()
        .nth(2)
        .expect("a MAC in ip -br link")
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect();

    // A route and a neighbour, but the egress veth's peer runs no XDP: a
    // redirect would be dropped there, so the frame stays for userspace.
    let mut relay = relay;
    let allowed = relay.ns.run(|| relay.xdp.refresh_egress()).unwrap();
    assert!(allowed.is_empty(), "{allowed:?}");
    let (action, output, class) = run(&relay, &input.bytes);
    assert_eq!((action, class), (XDP_PASS, PacketClass::ChannelData));
    assert_eq!(output, input.bytes);

    // With a program on the peer, the veth delivers what XDP sends it.
    let object = common::xdp_object_or_skip("the peer's program").unwrap();
    let mut peer_program = turnx::xdp::XdpRelay::load(object, "info").unwrap();
    relay
        .ns
        .run(|| peer_program.attach(&peer_end, turnx::config::XdpMode::Native))
        .unwrap();
    let out_index = relay.ns.run(|| turnx::xdp::if_index(&out)).unwrap();
    let allowed = relay.ns.run(|| relay.xdp.refresh_egress()).unwrap();
    assert!(
        allowed.iter().any(|(ifindex, _)| *ifindex == out_index),
        "{allowed:?}"
    );
    let (action, output, class) = run(&relay, &input.bytes);
    assert_eq!(class, PacketClass::ForwardedToPeer);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        &output[..6],
        &[0x02, 0, 0, 0, 0, 0x99],
        "destination MAC: the neighbour's"
    );
    assert_eq!(
        &output[6..12],
        &own_mac[..],
        "source MAC: the egress interface's"
    );
    let mut expected = UdpFrame::new(binding.relayed, binding.peer, b"to the peer");
    expected.ttl = 63;
    assert_eq!(
        &output[12..],
        &expected.build().bytes[12..],
        "the rest as in stack mode"
    );

    // The next hop is cached now. A neighbour that changes its MAC address
    // gets frames at the new one as soon as the relay has seen the change.
    let seen = relay.xdp.route_generation();
    relay.ns.ip(&[
        "neigh",
        "replace",
        "198.19.0.2",
        "lladdr",
        "02:00:00:00:00:98",
        "dev",
        &out,
        "nud",
        "permanent",
    ]);
    wait_for_routing_change(&relay, seen);
    let (action, output, class) = run(&relay, &input.bytes);
    assert_eq!(
        (action, class),
        (XDP_REDIRECT, PacketClass::ForwardedToPeer)
    );
    assert_eq!(&output[..6], &[0x02, 0, 0, 0, 0, 0x98], "the new MAC");

    // The MTU check holds for what the cache has not seen: a frame longer
    // than the ones looked up so far, over the new MTU, stays for userspace.
    let seen = relay.xdp.route_generation();
    relay.ns.ip(&["link", "set", &out, "mtu", "600"]);
    wait_for_routing_change(&relay, seen);
    let (action, _, class) = run(&relay, &input.bytes);
    assert_eq!(
        (action, class),
        (XDP_REDIRECT, PacketClass::ForwardedToPeer)
    );
    let long = client_frame(&binding, &channel_data(CHANNEL, &[7; 700], false)).build();
    let (action, output, class) = run(&relay, &long.bytes);
    assert_eq!((action, class), (XDP_PASS, PacketClass::ChannelData));
    assert_eq!(output, long.bytes);

    // Without the route the frame stays for userspace again.
    let seen = relay.xdp.route_generation();
    relay.ns.ip(&["addr", "del", "198.19.0.1/24", "dev", &out]);
    wait_for_routing_change(&relay, seen);
    let (action, output, class) = run(&relay, &input.bytes);
    assert_eq!((action, class), (XDP_PASS, PacketClass::ChannelData));
    assert_eq!(output, input.bytes);
}

/// Waits until the relay has counted a routing change after `seen`, as
/// its rtnetlink thread does for every change (at most 5 s).
fn wait_for_routing_change(relay: &Relay, seen: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while relay.xdp.route_generation() <= seen {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not see the routing change"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn offload_follows_channel_events_and_keeps_the_rest_in_userspace() {
    use std::sync::{Arc, Mutex};
    use turnx::{
        offload::{Eligibility, Offload},
        turn::{Event, FiveTuple, Transport},
    };
    let Some(relay) = relay(
        "offload_follows_channel_events_and_keeps_the_rest_in_userspace",
        &[],
    ) else {
        return;
    };
    let Relay { xdp, ns } = relay;
    let xdp = Arc::new(Mutex::new(xdp));
    let rules = Eligibility::new(false, Vec::new());
    let mut offload = Offload::new(Box::new(Arc::clone(&xdp)), 16, rules);
    let binding = v4_binding();
    let udp_client = FiveTuple {
        transport: Transport::Udp,
        client: binding.client,
        server: binding.server,
    };
    let bound = |client: FiveTuple, channel: u16, peer: SocketAddr| Event::ChannelBound {
        client,
        relayed: binding.relayed,
        channel,
        peer,
    };
    let frame = client_frame(&binding, &channel_data(CHANNEL, b"media", false)).build();
    let class_of = |frame: &[u8]| {
        let xdp = xdp.lock().unwrap();
        let before = xdp.counters().unwrap();
        ns.run(|| xdp.run_on_frame(frame, 1)).unwrap();
        let delta = xdp.counters().unwrap().since(&before);
        PacketClass::ALL
            .into_iter()
            .find(|class| delta.get(*class).packets == 1)
            .unwrap()
    };

    offload.apply(&bound(udp_client, CHANNEL, binding.peer));
    assert_eq!(class_of(&frame.bytes), PacketClass::ForwardedToPeer);
    // Per-binding counters: one datagram of 5 application bytes.
    let relayed = offload.binding_relayed(udp_client, CHANNEL).unwrap();
    assert_eq!((relayed.to_peer_packets, relayed.to_peer_bytes), (1, 5));
    // Refreshes and other events change nothing in the kernel.
    offload.apply(&Event::ChannelRefreshed {
        client: udp_client,
        channel: CHANNEL,
    });
    assert_eq!(class_of(&frame.bytes), PacketClass::ForwardedToPeer);
    // Expiry (of the channel, or with its permission or allocation, which
    // the core reports as channel expiry first) removes it.
    offload.apply(&Event::ChannelExpired {
        client: udp_client,
        relayed: binding.relayed,
        channel: CHANNEL,
        peer: binding.peer,
    });
    assert_eq!(class_of(&frame.bytes), PacketClass::ChannelData);

    // What stays in userspace, counted by reason.
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..udp_client
    };
    let wildcard = FiveTuple {
        server: addr("0.0.0.0:3478"),
        ..udp_client
    };
    offload.apply(&bound(tcp, CHANNEL, binding.peer));
    offload.apply(&bound(wildcard, CHANNEL, binding.peer));
    offload.apply(&bound(udp_client, CHANNEL, addr("[fd00:19::2]:3480")));
    offload.apply(&bound(udp_client, 0x6DB8, binding.peer));
    let stats = offload.stats();
    // The ended binding's traffic is in the accounting.
    assert_eq!(stats.kernel_relayed.to_peer_packets, 2);
    assert_eq!(
        (
            stats.installed,
            stats.removed,
            stats.not_udp,
            stats.wildcard_listener,
            stats.cross_family,
            stats.legacy_channel
        ),
        (1, 1, 1, 1, 1, 1)
    );
    assert_eq!(class_of(&frame.bytes), PacketClass::ChannelData);
}

#[test]
fn pinned_maps_are_reopened_and_full_maps_refuse_bindings() {
    let Some(object) =
        common::xdp_object_or_skip("pinned_maps_are_reopened_and_full_maps_refuse_bindings")
    else {
        return;
    };
    let dir = common::PinDir::new();
    let options = turnx::xdp::LoadOptions {
        route_in_stack: true,
        pin_dir: Some(dir.0.clone()),
        max_bindings: Some(1),
        ..Default::default()
    };
    let binding = v4_binding();
    let frame = client_frame(&binding, &channel_data(CHANNEL, b"media", false)).build();
    let ns = common::Netns::new("txp");

    let mut first = XdpRelay::load_with(object, "info", &options).unwrap();
    first.set_listen_ports(&[3478]).unwrap();
    first.install(&binding).unwrap();
    // The maps hold one binding: a second one is refused.
    let other = KernelBinding {
        channel: 0x4001,
        client: addr("198.18.0.9:50000"),
        ..binding
    };
    assert!(first.install(&other).is_err(), "a full map must refuse");
    let relay = Relay { xdp: first, ns };
    assert_eq!(run(&relay, &frame.bytes).2, PacketClass::ForwardedToPeer);
    let Relay { xdp: first, ns } = relay;
    let version = format!("v{}", relay_common::MAP_LAYOUT_VERSION);
    for shape in turnx::xdp::pins::pinned_shapes(Some(1)) {
        let name = shape.name;
        assert!(dir.0.join(&version).join(name).exists(), "{name} is pinned");
    }
    drop(first);

    // A new load adopts the pinned maps: the counters carry over, and the
    // previous run's binding still relays, until the new daemon has taken
    // over what it was handed and sweeps what nobody claimed.
    let mut second = XdpRelay::load_with(object, "info", &options).unwrap();
    second.set_listen_ports(&[3478]).unwrap();
    let counted = second
        .counters()
        .unwrap()
        .get(PacketClass::ForwardedToPeer)
        .packets;
    assert_eq!(counted, 1, "counters survive a restart");
    let relay = Relay { xdp: second, ns };
    assert_eq!(run(&relay, &frame.bytes).2, PacketClass::ForwardedToPeer);
    let Relay {
        xdp: mut second,
        ns,
    } = relay;
    assert_eq!(
        second.sweep_unowned().unwrap(),
        1,
        "one binding nobody claimed"
    );
    let relay = Relay { xdp: second, ns };
    let (_, output, class) = run(&relay, &frame.bytes);
    assert_eq!(
        (output, class),
        (frame.bytes.clone(), PacketClass::ChannelData)
    );
    let Relay {
        xdp: mut second,
        ns,
    } = relay;
    second.install(&binding).unwrap();
    drop(second);

    // A pinned map of another shape (another max_bindings here) is
    // refused and made anew: nothing of it is adopted.
    let bigger = turnx::xdp::LoadOptions {
        max_bindings: Some(2),
        ..options.clone()
    };
    let third = XdpRelay::load_with(object, "info", &bigger).unwrap();
    let counted = third
        .counters()
        .unwrap()
        .get(PacketClass::ForwardedToPeer)
        .packets;
    assert_eq!(counted, 2, "the counters, of the same shape, are adopted");
    let relay = Relay { xdp: third, ns };
    let (_, output, class) = run(&relay, &frame.bytes);
    assert_eq!(
        (output, class),
        (frame.bytes.clone(), PacketClass::ChannelData),
        "no binding of the refused map"
    );
}

/// Issue 11, item 9: the binding maps are preallocated, so the kernel hands
/// a deleted element to the next insert at once. One thread binds and
/// unbinds four bindings in turn, two of them sharing a channel key, two a
/// peer key, and one unlike the others, while another runs frames of both
/// keys through the program. Every frame leaves either untouched or exactly as one of its
/// key's bindings sends it: never with a target torn between two, nor with
/// another key's.
#[test]
fn bindings_replaced_while_frames_run_never_mix() {
    use aya::maps::{HashMap, Map, MapData};
    use relay_common::{ChannelKey, ChannelTarget, PeerKey, PeerTarget};
    use std::time::{Duration, Instant};

    const RUNS: usize = 1_000_000;
    const TIME: Duration = Duration::from_secs(20);

    let Some(object) = common::xdp_object_or_skip("bindings_replaced_while_frames_run_never_mix")
    else {
        return;
    };
    let pins = common::PinDir::new();
    let options = turnx::xdp::LoadOptions {
        route_in_stack: true,
        pin_dir: Some(pins.0.clone()),
        ..Default::default()
    };
    let mut xdp = XdpRelay::load_with(object, "info", &options).expect("loading the XDP program");
    xdp.set_listen_ports(&[3478]).unwrap();
    let ns = common::Netns::new("txr");

    // x and y: one channel key, two peers. x and z: one peer key, two
    // clients. w: neither key; any frame sent as w's took another key's
    // element.
    let x = v4_binding();
    let y = KernelBinding {
        relayed: addr("198.19.0.1:50004"),
        peer: addr("198.19.0.3:3482"),
        slot: 1,
        ..x
    };
    let z = KernelBinding {
        client: addr("198.18.0.5:50006"),
        channel: CHANNEL + 1,
        slot: 2,
        ..x
    };
    let w = KernelBinding {
        client: addr("198.18.0.7:50008"),
        channel: CHANNEL + 2,
        relayed: addr("198.19.0.1:50010"),
        peer: addr("198.19.0.4:3484"),
        slot: 3,
        ..x
    };
    let data = [0xC3; 100];
    let to_peer = client_frame(&x, &channel_data(CHANNEL, &data, false)).build();
    let to_client = peer_frame(&x, &data).build();
    let sent = |from: SocketAddr, to: SocketAddr, payload: &[u8]| {
        let mut frame = UdpFrame::new(from, to, payload);
        frame.ttl = 63;
        frame.build().bytes
    };
    let to_peer_outputs = [
        sent(x.relayed, x.peer, &data),
        sent(y.relayed, y.peer, &data),
    ];
    let to_client_outputs = [
        sent(x.server, x.client, &channel_data(x.channel, &data, false)),
        sent(z.server, z.client, &channel_data(z.channel, &data, false)),
    ];

    // Installed once through the relay, which marks its relayed port (the
    // peers send to x's); the writer below then replaces the entries
    // behind the relay's back.
    xdp.install(&x).unwrap();
    let dir = pins
        .0
        .join(format!("v{}", relay_common::MAP_LAYOUT_VERSION));
    let open = |name: &str| Map::HashMap(MapData::from_pin(dir.join(name)).unwrap());
    let mut channels: HashMap<MapData, ChannelKey, ChannelTarget> =
        HashMap::try_from(open(relay_common::MAP_CHANNELS)).unwrap();
    let mut peers: HashMap<MapData, PeerKey, PeerTarget> =
        HashMap::try_from(open(relay_common::MAP_PEERS)).unwrap();

    let done = std::sync::atomic::AtomicBool::new(false);
    let mut forwarded = [[0usize; 2]; 2];
    let mut replaced = 0usize;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let started = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < TIME {
                for binding in [x, w, y, w, z, w] {
                    let (key, target) = binding.channel_entry();
                    let (peer_key, peer_target) = binding.peer_entry();
                    channels.insert(key, target, 0).unwrap();
                    peers.insert(peer_key, peer_target, 0).unwrap();
                    channels.remove(&key).unwrap();
                    peers.remove(&peer_key).unwrap();
                    replaced += 1;
                }
            }
        });
        // The writer stops when the frames do, even on a failure.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let started = Instant::now();
        ns.run(|| {
            let _stop = Stop(&done);
            for run in 0..RUNS {
                if started.elapsed() > TIME {
                    break;
                }
                let (input, outputs, direction) = if run % 2 == 0 {
                    (&to_peer, &to_peer_outputs, 0)
                } else {
                    (&to_client, &to_client_outputs, 1)
                };
                let result = xdp.run_on_frame(&input.bytes, 1).unwrap();
                assert_eq!(result.action, XDP_PASS);
                if result.output == input.bytes {
                    continue;
                }
                let Some(which) = outputs.iter().position(|out| *out == result.output) else {
                    panic!(
                        "run {run}: a frame left with a mixed target:\n{:02x?}\nexpected one of\n{:02x?}",
                        result.output, outputs
                    );
                };
                forwarded[direction][which] += 1;
            }
        });
        writer.join().unwrap();
    });
    println!("{replaced} bindings installed and removed; forwarded {forwarded:?}");
    // The race was run: each direction went by both of its key's bindings.
    assert!(
        forwarded.iter().flatten().all(|count| *count > 0),
        "{forwarded:?}"
    );
}

/// Issue 11, item 8, in the kernel: a binding's datagrams are charged to
/// its allocation's and its user's buckets, and dropped over either. Two
/// allocations of one user share the user's bucket: 10 000 bytes a second
/// with a 100 ms burst lets eleven 100-byte datagrams through at once, and
/// one more for each 10 ms the runs take, whichever binding they come
/// from.
#[test]
fn over_its_buckets_a_binding_is_dropped_in_the_kernel() {
    use relay_common::bandwidth::{Bucket, Buckets};
    let first = KernelBinding {
        buckets: Buckets {
            allocation: [1, 2],
            user: [5, 6],
        },
        ..v4_binding()
    };
    let second = KernelBinding {
        client: addr("198.18.0.1:50001"),
        relayed: addr("198.19.0.1:50004"),
        slot: 1,
        buckets: Buckets {
            allocation: [3, 4],
            user: [5, 6],
        },
        ..v4_binding()
    };
    let Some(mut relay) = relay(
        "over_its_buckets_a_binding_is_dropped_in_the_kernel",
        &[first, second],
    ) else {
        return;
    };
    for index in 1..=6 {
        // The allocations' buckets are wider than the user's.
        let rate = if index <= 4 { 1_000_000 } else { 10_000 };
        relay
            .xdp
            .set_bucket(index, Bucket::new(rate, 100_000_000))
            .unwrap();
    }
    let mut relayed = 0;
    let started = std::time::Instant::now();
    for i in 0..100 {
        let binding = if i % 2 == 0 { first } else { second };
        let frame = client_frame(&binding, &channel_data(CHANNEL, &[7; 100], false)).build();
        match run(&relay, &frame.bytes) {
            (XDP_PASS, _, PacketClass::ForwardedToPeer) => relayed += 1,
            (XDP_DROP, _, PacketClass::OverLimit) => {}
            other => panic!("datagram {i}: {other:?}"),
        }
    }
    let drained = started.elapsed().as_millis() as usize / 10 + 1;
    assert!(
        (11..=11 + drained).contains(&relayed),
        "{relayed} relayed, {drained} drained"
    );
    // The other direction has buckets of its own.
    let back = peer_frame(&first, &[7; 100]).build();
    assert_eq!(run(&relay, &back.bytes).2, PacketClass::ForwardedToClient);
}

/// CLOCK_MONOTONIC now, in ns: the clock binding expiries are ticks of.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Runs the tc program once in the relay's namespace; returns verdict,
/// output and the class counted, if any (tc counts only what it relays).
fn run_tc(relay: &Relay, frame: &[u8]) -> (u32, Vec<u8>, Option<PacketClass>) {
    let xdp = &relay.xdp;
    let before = xdp.counters().unwrap();
    let result = relay.ns.run(|| xdp.run_tc_on_frame(frame)).unwrap();
    let delta = xdp.counters().unwrap().since(&before);
    let counted: Vec<_> = PacketClass::ALL
        .into_iter()
        .filter(|class| delta.get(*class).packets != 0)
        .collect();
    assert!(counted.len() <= 1, "tc counted {counted:?}");
    (result.action, result.output, counted.first().copied())
}

/// RFC 8656 lifetimes in the kernel: a binding whose expiry has passed is
/// no binding to either program, in either direction (its frames go to the
/// stack untouched, counted as for an unbound channel), so a binding left
/// behind by a daemon that is gone stops at the end of its lifetime. The
/// same binding with its expiry ahead is relayed.
#[test]
fn expired_bindings_are_left_to_the_stack_by_xdp_and_tc() {
    use relay_common::expiry::{expires_after, tick};
    /// tc's "hand on" verdict (TCX_NEXT, -1), for frames it leaves and,
    /// with stack routing, for those it rewrote.
    const TC_NEXT: u32 = u32::MAX;

    let now = monotonic_ns();
    assert!(tick(now) > 1, "the clock is past its first ticks");
    let past = tick(now) - 1;
    let ahead = expires_after(now, 60_000_000_000);
    let expired = [v4_binding(), v6_binding()].map(|b| KernelBinding { expires: past, ..b });
    let Some(mut relay) = relay(
        "expired_bindings_are_left_to_the_stack_by_xdp_and_tc",
        &expired,
    ) else {
        return;
    };
    let data = b"after the lifetime";
    for binding in expired {
        let to_peer = client_frame(&binding, &channel_data(binding.channel, data, false)).build();
        let to_client = peer_frame(&binding, data).build();
        for (name, input, miss) in [
            ("to the peer", &to_peer.bytes, PacketClass::ChannelData),
            ("to the client", &to_client.bytes, PacketClass::Unrelated),
        ] {
            let (action, output, class) = run(&relay, input);
            assert_eq!((action, class), (XDP_PASS, miss), "XDP {name} {binding:?}");
            assert_eq!(&output, input, "XDP {name}: untouched");
            let (action, output, class) = run_tc(&relay, input);
            assert_eq!((action, class), (TC_NEXT, None), "tc {name} {binding:?}");
            assert_eq!(&output, input, "tc {name}: untouched");
        }
    }

    // The same bindings with a minute left are relayed by both programs.
    for binding in expired {
        relay.xdp.remove(&binding).unwrap();
        let fresh = KernelBinding {
            expires: ahead,
            ..binding
        };
        relay.xdp.install(&fresh).unwrap();
        let to_peer = client_frame(&fresh, &channel_data(fresh.channel, data, false)).build();
        let mut peer_expected = UdpFrame::new(fresh.relayed, fresh.peer, data);
        peer_expected.ttl = 63;
        let to_client = peer_frame(&fresh, data).build();
        let mut client_expected = UdpFrame::new(
            fresh.server,
            fresh.client,
            &channel_data(fresh.channel, data, false),
        );
        client_expected.ttl = 63;
        for (name, input, expected, class) in [
            (
                "to the peer",
                &to_peer.bytes,
                peer_expected.build().bytes,
                PacketClass::ForwardedToPeer,
            ),
            (
                "to the client",
                &to_client.bytes,
                client_expected.build().bytes,
                PacketClass::ForwardedToClient,
            ),
        ] {
            let (action, output, counted) = run(&relay, input);
            assert_eq!((action, counted), (XDP_PASS, class), "XDP {name} {fresh:?}");
            assert_eq!(output, expected, "XDP {name}: relayed");
            let (action, output, counted) = run_tc(&relay, input);
            assert_eq!(
                (action, counted),
                (TC_NEXT, Some(class)),
                "tc {name} {fresh:?}"
            );
            assert_eq!(output, expected, "tc {name}: relayed");
        }
    }
}
