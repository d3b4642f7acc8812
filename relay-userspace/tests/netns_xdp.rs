//! The XDP program on real interfaces: namespaces and a veth pair made by
//! the test, real UDP datagrams from the client side, counters read from the
//! kernel. Also the daemon itself: attach, kernel log, status, refusal of an
//! occupied interface, clean detach on SIGINT.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{Link, Netns, wait_for};
use relay_common::PacketClass;
use testkit::frame::{channel_data, stun_binding_request};
use turnx::{
    config::XdpMode,
    xdp::{AttachMode, ClassCounters, XdpError, XdpRelay},
};

const LISTEN_PORT: u16 = 3478;

/// Sends `count` copies of `payload` from a fresh socket in the current
/// namespace to `to`.
fn send(to: SocketAddr, payload: &[u8], count: usize) {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(bind).unwrap();
    for _ in 0..count {
        socket.send_to(payload, to).unwrap();
    }
}

fn relay_addr(link: &Link, v6: bool) -> SocketAddr {
    let ip = if v6 { &link.relay_v6 } else { &link.relay_v4 };
    SocketAddr::new(ip.parse().unwrap(), LISTEN_PORT)
}

#[test]
fn native_xdp_on_veth_counts_real_datagrams() {
    let Some(object) = common::xdp_object_or_skip("native_xdp_on_veth_counts_real_datagrams")
    else {
        return;
    };
    let link = Link::new();
    let mut relay = XdpRelay::load(object, "info").unwrap();
    relay.set_listen_ports(&[LISTEN_PORT]).unwrap();
    let mode = link
        .relay
        .run(|| relay.attach(&link.relay_if, XdpMode::Native))
        .expect("native attach on veth");
    assert_eq!(mode, AttachMode::Native);

    let (stun, data) = (
        stun_binding_request(*b"0123456789ab"),
        channel_data(0x4000, &[7; 100], true),
    );
    link.client.run(|| {
        for v6 in [false, true] {
            let to = relay_addr(&link, v6);
            send(to, &stun, 5);
            send(to, &data, 7);
            send(to, b"neither", 3);
            send(SocketAddr::new(to.ip(), LISTEN_PORT + 1), &stun, 4);
        }
    });

    let expected = |counters: &ClassCounters| {
        counters.get(PacketClass::Stun).packets == 10
            && counters.get(PacketClass::ChannelData).packets == 14
            && counters.get(PacketClass::Other).packets == 6
    };
    let counters = wait_for(Duration::from_secs(5), || {
        let counters = relay.counters().unwrap();
        expected(&counters).then_some(counters)
    })
    .unwrap_or_else(|| panic!("counters never matched: {}", relay.counters().unwrap()));
    // Neighbour discovery and the other port are unrelated; nothing is
    // malformed or fragmented on a clean link.
    assert!(
        counters.get(PacketClass::Unrelated).packets >= 8,
        "{counters}"
    );
    assert_eq!(counters.get(PacketClass::Malformed).packets, 0);
    assert_eq!(counters.get(PacketClass::Fragment).packets, 0);
    // Ethernet + IPv4/IPv6 + UDP headers + 20 bytes of STUN, 5 of each.
    assert_eq!(
        counters.get(PacketClass::Stun).bytes,
        5 * (14 + 20 + 8 + 20) + 5 * (14 + 40 + 8 + 20)
    );

    // A second loader must be refused, naming our program as the owner.
    let mut intruder = XdpRelay::load(object, "info").unwrap();
    let err = link
        .relay
        .run(|| intruder.attach(&link.relay_if, XdpMode::Auto))
        .unwrap_err();
    assert!(matches!(err, XdpError::Occupied { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&link.relay_if) && message.contains("turnx_xdp"),
        "{message}"
    );

    assert!(relay.detach_all().is_empty());
    assert!(
        !link
            .relay
            .ip_output(&["link", "show", &link.relay_if])
            .contains("xdp"),
        "still attached after detach"
    );
}

#[test]
fn interfaces_without_native_xdp_fall_back_to_generic() {
    let Some(object) =
        common::xdp_object_or_skip("interfaces_without_native_xdp_fall_back_to_generic")
    else {
        return;
    };
    // The namespace's own loopback has no native XDP support (and this
    // kernel has no modules for a loopback interface).
    let ns = Netns::new("txd");
    let loopback = "lo".to_owned();

    let mut strict = XdpRelay::load(object, "info").unwrap();
    let err = ns
        .run(|| strict.attach(&loopback, XdpMode::Native))
        .unwrap_err();
    assert!(
        matches!(
            err,
            XdpError::Attach {
                mode: AttachMode::Native,
                ..
            }
        ),
        "{err}"
    );

    let mut relay = XdpRelay::load(object, "info").unwrap();
    let mode = ns.run(|| relay.attach(&loopback, XdpMode::Auto)).unwrap();
    assert_eq!(mode, AttachMode::Generic);
    assert!(
        ns.ip_output(&["link", "show", &loopback])
            .contains("xdpgeneric")
    );

    let err = ns
        .run(|| relay.attach("nonexistent0", XdpMode::Auto))
        .unwrap_err();
    assert!(err.to_string().contains("nonexistent0"), "{err}");
}

#[test]
fn daemon_attaches_counts_logs_and_detaches_on_sigterm() {
    if common::xdp_object_or_skip("daemon_attaches_counts_logs_and_detaches_on_sigterm").is_none() {
        return;
    }
    let link = Link::new();
    let (pins, second_pins) = (common::PinDir::new(), common::PinDir::new());
    let args = [
        "--pin-dir",
        pins.path(),
        "--interface",
        &link.relay_if,
        "--listen",
        "0.0.0.0:3478",
        "--log-level",
        "debug",
        "--stats-interval",
        "1",
    ];
    let mut daemon = common::turnxd_ready(&link.relay, &args);
    assert!(
        daemon
            .log()
            .contains(&format!("XDP attached to {} in native mode", link.relay_if)),
        "{}",
        daemon.log()
    );

    let stun = stun_binding_request(*b"daemon-test!");
    link.client.run(|| send(relay_addr(&link, false), &stun, 3));
    let report = wait_for(Duration::from_secs(5), || {
        let report = common::turnxctl_status(&link.relay, &link.relay_if);
        (report["turnx"]["counters"]["stun"]["packets"] == 3).then_some(report)
    })
    .unwrap_or_else(|| panic!("turnxctl never showed 3 STUN packets"));
    assert_eq!(report["xdp"][0]["mode"], "native");

    // The kernel program's aya-log line reaches the daemon's log.
    assert!(
        daemon.wait_for_line("STUN message from UDP port", Duration::from_secs(5)),
        "no kernel log line in:\n{}",
        daemon.log()
    );
    assert!(
        daemon.wait_for_line("stun=3", Duration::from_secs(5)),
        "no counter line in:\n{}",
        daemon.log()
    );

    // A second daemon on the same interface fails and names the owner.
    let mut second_args = args;
    second_args[1] = second_pins.path();
    let mut second = common::turnxd(&link.relay, &second_args);
    let status_second = wait_for(Duration::from_secs(20), || second.child.try_wait().unwrap())
        .expect("the second turnxd should exit on its own");
    assert!(!status_second.success());
    assert!(
        second.wait_for_line("already runs XDP", Duration::from_secs(2)),
        "{}",
        second.log()
    );
    assert!(
        second.log().contains("turnx_xdp") && second.log().contains(&link.relay_if),
        "{}",
        second.log()
    );

    let exit = daemon.stop(libc::SIGINT);
    assert!(
        exit.success(),
        "turnxd exited with {exit}:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("XDP detached from every interface"),
        "{}",
        daemon.log()
    );
    assert!(
        !link
            .relay
            .ip_output(&["link", "show", &link.relay_if])
            .contains("xdp"),
        "an XDP program is still attached after SIGINT"
    );
    assert_eq!(
        common::turnxctl_status(&link.relay, &link.relay_if)["xdp"],
        serde_json::json!([])
    );
}

#[test]
fn daemon_without_xdp_object_or_interface_fails_clearly() {
    if !common::is_root() {
        eprintln!("skipping daemon_without_xdp_object_or_interface_fails_clearly: needs root");
        return;
    }
    let ns = Netns::new("txe");
    let mut daemon = common::turnxd(&ns, &["--interface", "nonexistent0"]);
    let exit = wait_for(Duration::from_secs(20), || daemon.child.try_wait().unwrap())
        .expect("turnxd should exit on its own");
    assert!(!exit.success());
    let needle = if turnx::ebpf_object::embedded().is_some() {
        "nonexistent0"
    } else {
        "built without the XDP object"
    };
    assert!(
        daemon.wait_for_line(needle, Duration::from_secs(2)),
        "{}",
        daemon.log()
    );
}

/// turnxctl reads the driver's XDP error counters as `ethtool -S` shows
/// them, through the SIOCETHTOOL ioctl.
#[test]
fn driver_xdp_error_counters_are_those_ethtool_shows() {
    if !common::is_root() {
        eprintln!("skipping driver_xdp_error_counters_are_those_ethtool_shows: it needs root");
        return;
    }
    let link = Link::new();
    let status = common::turnxctl_status(&link.relay, &link.relay_if);
    let shown = status["driver_xdp_errors"].as_object().unwrap().clone();
    let output = link
        .relay
        .command("ethtool")
        .args(["-S", &link.relay_if])
        .output()
        .expect("running ethtool -S");
    let expected: serde_json::Map<String, serde_json::Value> =
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .filter(|(name, _)| turnx::xdp::driver_stats::is_xdp_error(name))
            .map(|(name, value)| {
                let value: u64 = value.trim().parse().unwrap();
                (name.to_owned(), value.into())
            })
            .collect();
    assert!(
        expected.contains_key("rx_queue_0_xdp_tx_errors"),
        "{expected:?}"
    );
    assert_eq!(shown, expected);
}
