//! turnxd as a new user runs it: the built-in configuration, with only
//! listen and relay addresses and credentials given on the command line,
//! and the kernel offload on, against third-party clients in their default
//! modes:
//! - coturn's `turnutils_uclient`, which allocates RTP/RTCP pairs
//!   (EVEN-PORT with the R bit, then RESERVATION-TOKEN), over UDP, TCP and
//!   TLS, with channels and with Send indications, one and ten clients;
//! - turnhammer, with channels and without (`-C`);
//! - headless Chromium: two relay-only RTCPeerConnections through the
//!   relay, over `turn:` UDP and TCP and `turns:`, so that each relays to
//!   the other's relayed address on this same relay;
//! - and unauthenticated floods, which the response budget bounds, and
//!   peers on the node's own addresses, refused as the addresses appear.
//!
//! The relay sits between a client namespace and a pod namespace. Most
//! cases engineer the far ends so that XDP can deliver (see
//! `common::engineer_far_ends`): where the traffic is channel traffic over
//! UDP the kernel carries it, and the tests assert that it did; everything
//! else must be relayed by userspace, and the kernel counters must not move.
//! One case leaves the far ends as a node has them (plain veths, default
//! offloads, so partial checksums, and no XDP): XDP cannot deliver there,
//! so the tc engine must carry the channel traffic, losing nothing, with
//! no XDP error counted.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{
    Daemon, PinDir, Process, TempDir, Topology,
    browser::{Browser, PageServer},
    logged_number,
};
use testkit::client::TurnClient;
use turnx::xdp::XdpRelay;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "rest-api-secret";
const PEER_PORT: &str = "3480";
const COTURN: &str = "Debian package coturn";

/// A relay namespace running turnxd on its defaults plus flags, with
/// turnutils_peer echoing in the pod namespace.
struct Relay {
    topology: Topology,
    daemon: Daemon,
    _peer: Process,
    _far_ends: Option<[XdpRelay; 2]>,
    _pins: PinDir,
    _tls: TempDir,
}

/// What the client's and the pod's veths are like.
#[derive(Clone, Copy, PartialEq)]
enum FarEnds {
    /// Engineered for the kernel relay: XDP programs, full checksums.
    Engineered,
    /// As on a node: default offloads (partial checksums), no XDP.
    AsOnANode,
}

/// Where turnxd listens.
#[derive(Clone, Copy, PartialEq)]
enum Listen {
    /// On the relay's client-side addresses.
    Specific,
    /// On 0.0.0.0 and [::], as the built-in configuration does.
    Wildcard,
}

impl Relay {
    fn start(test: &str, tools: &[(&str, &str)]) -> Option<Relay> {
        Relay::start_with(test, tools, FarEnds::Engineered, Listen::Specific, &[])
    }

    /// `extra` flags go to turnxd after the others.
    fn start_with(
        test: &str,
        tools: &[(&str, &str)],
        far: FarEnds,
        listen: Listen,
        extra: &[&str],
    ) -> Option<Relay> {
        let object = common::xdp_object_or_skip(test)?;
        if !common::have_all_or_skip(test, tools) {
            return None;
        }
        let topology = Topology::new();
        let far_ends =
            (far == FarEnds::Engineered).then(|| common::engineer_far_ends(&topology, object));
        topology.relay.enable_forwarding();
        // turnhammer's peer is its own socket in the client namespace, which
        // sends to the relayed addresses.
        topology.client.ip(&[
            "route",
            "add",
            "198.19.0.0/24",
            "via",
            &topology.relay_client_side,
        ]);
        let tls = TempDir::new("turnxtls");
        common::write_certificate(&tls.0, "turnx-test", &topology.relay_client_side);
        let pins = PinDir::new();
        let (listen, listen_v6) = match listen {
            Listen::Specific => (
                format!("{}:3478", topology.relay_client_side),
                format!("[{}]:3478", topology.relay_client_side_v6),
            ),
            Listen::Wildcard => ("0.0.0.0:3478".to_owned(), "[::]:3478".to_owned()),
        };
        let tls_listen = format!("{}:5349", topology.relay_client_side);
        let (cert, key) = (tls.0.join("tls.crt"), tls.0.join("tls.key"));
        let user = format!("{USER}:{PASSWORD}");
        let args = [
            "--listen",
            &listen,
            "--listen",
            &listen_v6,
            "--tls-listen",
            &tls_listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--relay-address",
            &topology.relay_pod_side,
            "--relay-address",
            &topology.relay_pod_side_v6,
            "--user",
            &user,
            "--static-auth-secret",
            SECRET,
            "--interface",
            &topology.relay_client_if,
            "--interface",
            &topology.relay_pod_if,
            // Tests run side by side; each needs its own pinned maps.
            "--pin-dir",
            pins.path(),
            "--stats-interval",
            "0",
            "--log-level",
            "debug",
        ];
        let args: Vec<&str> = args.iter().copied().chain(extra.iter().copied()).collect();
        let daemon = common::turnxd_ready(&topology.relay, &args);
        let peer = common::start_turnutils_peer(
            &topology.pod,
            &[&topology.pod_ip, &topology.pod_ip_v6],
            PEER_PORT,
        );
        Some(Relay {
            topology,
            daemon,
            _peer: peer,
            _far_ends: far_ends,
            _pins: pins,
            _tls: tls,
        })
    }

    /// Datagrams the kernel relayed so far: (to peers, to clients). The
    /// counters are the program's, shared by every interface it is
    /// attached to.
    fn kernel_relayed(&self) -> (u64, u64) {
        let ns = &self.topology.relay;
        let status = common::turnxctl_status(ns, &self.topology.relay_client_if);
        let counters = &status["turnx"]["counters"];
        let packets = |class: &str| counters[class]["packets"].as_u64().unwrap_or(0);
        (packets("forwarded_to_peer"), packets("forwarded_to_client"))
    }

    /// The relay's veths' XDP error counters, as the driver reports them
    /// (`turnxctl status`, which reads what `ethtool -S` shows), named
    /// `interface: counter`.
    fn xdp_errors(&self) -> Vec<(String, u64)> {
        let mut errors = Vec::new();
        for interface in [&self.topology.relay_client_if, &self.topology.relay_pod_if] {
            let status = common::turnxctl_status(&self.topology.relay, interface);
            let counters = status["driver_xdp_errors"].as_object().cloned();
            for (name, value) in counters.unwrap_or_default() {
                errors.push((format!("{interface}: {name}"), value.as_u64().unwrap()));
            }
        }
        assert!(!errors.is_empty(), "turnxctl shows no driver XDP counters");
        errors
    }

    /// Asserts that no XDP error counter of the relay's veths moved.
    fn assert_no_xdp_errors(&self) {
        for (counter, value) in self.xdp_errors() {
            assert_eq!(value, 0, "{counter}");
        }
    }

    /// Runs turnutils_uclient from the client namespace against the pod's
    /// turnutils_peer with `flags`, `messages` per session, and asserts that
    /// all `total` came back.
    fn uclient(&self, case: &str, flags: &[&str], messages: u64, total: u64) {
        let output = self
            .topology
            .client
            .command("timeout")
            .args(["60", "turnutils_uclient", "-u", USER, "-w", PASSWORD])
            .args(["-e", &self.topology.pod_ip, "-r", PEER_PORT])
            .args(["-n", &messages.to_string(), "-l", "200"])
            .args(flags)
            .arg(&self.topology.relay_client_side)
            .output()
            .expect("running turnutils_uclient");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        assert!(
            output.status.success()
                && text.contains(&format!("tot_send_msgs={total}, tot_recv_msgs={total}"))
                && text.contains("Total lost packets 0 (0.000000%)"),
            "{case}: not every message came back:\n{}\n--- turnxd:\n{}",
            tail.join("\n"),
            self.daemon.log()
        );
    }

    /// Runs turnhammer from the client namespace with (clients, packets
    /// per second, seconds) and `flags`, and asserts it lost nothing.
    fn turnhammer(&self, case: &str, (clients, pps, seconds): (u64, u64, u64), flags: &[&str]) {
        let output = self
            .topology
            .client
            .command("timeout")
            .args(["60", "turnhammer", "-J"])
            .args(["-j", &clients.to_string(), "--pps", &pps.to_string()])
            .args(["-d", &seconds.to_string(), "-s", "200"])
            .args(flags)
            .arg(format!("{}:3478", self.topology.relay_client_side))
            .args([USER, PASSWORD])
            .output()
            .expect("running turnhammer");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|err| {
            panic!(
                "{case}: turnhammer printed no report ({err}):\n{stdout}\n{}\n--- turnxd:\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.daemon.log()
            )
        });
        assert_eq!(report["status"], "ok", "{case}: {report}");
        assert_eq!(report["loss"].as_f64(), Some(0.0), "{case}: {report}");
        assert_eq!(report["bad_loss"].as_f64(), Some(0.0), "{case}: {report}");
    }

    /// Stops turnxd and returns its log, which ends with its counters.
    fn stop(mut self) -> String {
        let exit = self.daemon.stop(libc::SIGINT);
        let log = self.daemon.log();
        assert!(exit.success(), "turnxd exited with {exit}:\n{log}");
        log
    }
}

/// What the kernel carried during `run`, which must be every datagram
/// `expected` says, in each direction, or none at all.
fn assert_kernel_share(relay: &Relay, case: &str, expected: Option<u64>, run: impl FnOnce()) {
    let before = relay.kernel_relayed();
    run();
    let after = relay.kernel_relayed();
    let (to_peer, to_client) = (after.0 - before.0, after.1 - before.1);
    eprintln!("{case}: the kernel relayed {to_peer} to peers and {to_client} to clients");
    match expected {
        // The first datagrams of a binding may go through userspace while
        // the relay resolves its neighbours.
        Some(total) => {
            let floor = total * 95 / 100;
            assert!(
                to_peer >= floor && to_client >= floor,
                "{case}: the kernel relayed {to_peer} to peers and {to_client} to clients of {total}"
            );
        }
        None => assert_eq!(
            (to_peer, to_client),
            (0, 0),
            "{case}: the kernel relayed traffic it cannot carry"
        ),
    }
}

#[test]
fn uclient_in_its_default_mode_relays_every_message() {
    let test = "uclient_in_its_default_mode_relays_every_message";
    let tools = [("turnutils_uclient", COTURN), ("turnutils_peer", COTURN)];
    let Some(relay) = Relay::start(test, &tools) else {
        return;
    };
    let messages = 50;
    // (case, flags, sessions: an RTP and an RTCP one per client, whether
    // the kernel carries the media). -m counts sessions.
    let cases: [(&str, &[&str], u64, bool); 5] = [
        ("UDP, channels", &[], 2, true),
        ("UDP, Send indications", &["-s"], 2, false),
        ("UDP, 10 sessions", &["-m", "10"], 10, true),
        ("TCP", &["-t"], 2, false),
        ("TLS", &["-t", "-S", "-p", "5349"], 2, false),
    ];
    for (case, flags, sessions, in_kernel) in cases {
        let total = messages * sessions;
        assert_kernel_share(&relay, case, in_kernel.then_some(total), || {
            relay.uclient(case, flags, messages, total);
        });
    }
    relay.assert_no_xdp_errors();
    let log = relay.stop();
    // Each client's RTP Allocate redeemed a reservation made with EVEN-PORT.
    assert!(logged_number(&log, "reservations_redeemed") >= 5, "{log}");
}

#[test]
fn turnhammer_loses_nothing_with_and_without_channels() {
    let test = "turnhammer_loses_nothing_with_and_without_channels";
    let tools = [
        ("turnhammer", "cargo install turnhammer"),
        ("turnutils_peer", COTURN),
    ];
    let Some(relay) = Relay::start(test, &tools) else {
        return;
    };
    let (clients, pps, seconds) = (5, 50, 4);
    let total = clients * pps * seconds;
    for (case, flags, in_kernel) in [("channels", &[][..], true), ("-C", &["-C"][..], false)] {
        assert_kernel_share(&relay, case, in_kernel.then_some(total), || {
            relay.turnhammer(case, (clients, pps, seconds), flags);
        });
    }
    relay.assert_no_xdp_errors();
    relay.stop();
}

/// The page of two relay-only peer connections.
const PAGE: &str = include_str!("browser/datachannel.html");
const ROUND_TRIPS: u64 = 200;

/// Opens the page in Chromium with `turn` as the only ICE server and
/// returns its report; asserts every round trip came back over a relayed
/// pair on both sides, relayed over `protocol`.
fn browser_round_trips(
    ns: &common::Netns,
    server: &PageServer,
    turn: &str,
    protocol: &str,
    extra: &[&str],
    daemon: &Daemon,
) {
    let url = format!(
        "http://127.0.0.1:{}/?turn={turn}&username={USER}&credential={PASSWORD}\
         &rounds={ROUND_TRIPS}&timeout_ms=40000",
        server.port
    );
    let browser = Browser::open(ns, &url, extra);
    let Some(report) = server.result(Duration::from_secs(60)) else {
        panic!(
            "{turn}: the page reported nothing\n--- chromium:\n{}\n--- turnxd:\n{}",
            browser.log_tail(),
            daemon.log()
        );
    };
    let report: serde_json::Value = serde_json::from_str(&report).expect("the page's JSON");
    assert_eq!(
        report["ok"],
        true,
        "{turn}: {report}\n--- turnxd:\n{}",
        daemon.log()
    );
    assert_eq!(report["roundTrips"].as_u64(), Some(ROUND_TRIPS), "{report}");
    for pair in report["pairs"].as_array().expect("pairs") {
        assert_eq!(pair["state"], "succeeded", "{turn}: {pair}");
        assert_eq!(pair["local"], "relay", "{turn}: {pair}");
        assert_eq!(pair["remote"], "relay", "{turn}: {pair}");
        assert_eq!(pair["relayProtocol"], protocol, "{turn}: {pair}");
    }
}

#[test]
fn browsers_relay_to_each_other_over_udp_tcp_and_tls() {
    let test = "browsers_relay_to_each_other_over_udp_tcp_and_tls";
    let tools = [
        ("chromium", "Debian package chromium"),
        ("turnutils_peer", COTURN),
    ];
    let Some(relay) = Relay::start(test, &tools) else {
        return;
    };
    let server = PageServer::start(&relay.topology.client, PAGE);
    let host = &relay.topology.relay_client_side;
    // The certificate is self-signed: Chromium must be told to accept it.
    let cases = [
        (format!("turn:{host}:3478?transport=udp"), "udp", &[][..]),
        (format!("turn:{host}:3478?transport=tcp"), "tcp", &[][..]),
        (
            format!("turns:{host}:5349?transport=tcp"),
            "tls",
            &["--ignore-certificate-errors"][..],
        ),
    ];
    for (turn, protocol, extra) in cases {
        // Both peers' relayed addresses are on this relay: userspace
        // relays between them, the kernel carries nothing.
        assert_kernel_share(&relay, &turn, None, || {
            browser_round_trips(
                &relay.topology.client,
                &server,
                &turn,
                protocol,
                extra,
                &relay.daemon,
            )
        });
    }
    let log = relay.stop();
    assert!(
        log.contains("stays in userspace: RelayToRelay"),
        "the UDP channels between the two allocations were offered to the kernel:\n{log}"
    );
}

#[test]
fn built_in_configuration_serves_a_local_browser() {
    let test = "built_in_configuration_serves_a_local_browser";
    let Some(_object) = common::xdp_object_or_skip(test) else {
        return;
    };
    if !common::have_all_or_skip(test, &[("chromium", "Debian package chromium")]) {
        return;
    }
    // A machine with an uplink and a default route, as a laptop or a node
    // has: turnxd picks its relay address and its XDP interface from it.
    let link = common::Link::new();
    let machine = &link.relay;
    machine.ip(&["route", "add", "default", "via", &link.client_v4]);
    let pins = PinDir::new();
    let user = format!("{USER}:{PASSWORD}");
    let mut daemon = common::turnxd_ready(
        machine,
        &[
            "--user",
            &user,
            "--pin-dir",
            pins.path(),
            "--stats-interval",
            "0",
        ],
    );
    assert!(
        daemon.wait_for_line(&format!("relaying from {}", link.relay_v4), Duration::ZERO),
        "{}",
        daemon.log()
    );
    let server = PageServer::start(machine, PAGE);
    browser_round_trips(machine, &server, "turn:127.0.0.1:3478", "udp", &[], &daemon);
    let exit = daemon.stop(libc::SIGINT);
    assert!(exit.success(), "{}", daemon.log());
}

#[test]
fn unauthenticated_flood_from_one_prefix_is_bounded_and_others_are_answered() {
    let test = "unauthenticated_flood_from_one_prefix_is_bounded_and_others_are_answered";
    let Some(relay) = Relay::start(test, &[("turnutils_peer", COTURN)]) else {
        return;
    };
    let topology = &relay.topology;
    // A second client address in another /24.
    topology
        .client
        .ip(&["addr", "add", "198.18.1.1/24", "dev", &topology.client_if]);
    topology
        .relay
        .ip(&["route", "add", "198.18.1.0/24", "via", "198.18.0.1"]);
    let server = format!("{}:3478", topology.relay_client_side);
    let binding = {
        use stun_types::message::{BINDING, Message, MessageWrite, MessageWriteVec};
        Message::builder_request(BINDING, MessageWriteVec::new()).finish()
    };
    let (answered, elapsed, other_prefix) = topology.client.run(|| {
        let flooder = UdpSocket::bind("198.18.0.1:0").unwrap();
        flooder
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // 5000 requests, 100 at a time so that no response is lost in
        // our own socket buffer: 160 KB of responses asked for.
        let start = std::time::Instant::now();
        let mut answered = 0u64;
        let mut buffer = [0u8; 128];
        for _ in 0..50 {
            for _ in 0..100 {
                flooder.send_to(&binding, &server).unwrap();
            }
            while flooder.recv_from(&mut buffer).is_ok() {
                answered += 1;
            }
        }
        let elapsed = start.elapsed();
        let other = UdpSocket::bind("198.18.1.1:0").unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let replies = (0..10)
            .filter(|_| {
                other.send_to(&binding, &server).unwrap();
                other.recv_from(&mut buffer).is_ok()
            })
            .count();
        (answered, elapsed, replies)
    });
    // 32-byte responses: the default burst of 64 KiB (2048 of them), plus
    // what refilled at 16 KiB/s while the flood lasted.
    let allowed = (65_536.0 + 16_384.0 * elapsed.as_secs_f64()) / 32.0;
    eprintln!("{answered} of 5000 answered in {elapsed:?}; the budget allows {allowed:.0}");
    assert!(
        answered >= 2000 && answered as f64 <= allowed + 1.0,
        "{answered} of 5000 answered in {elapsed:?}; the budget allows {allowed:.0}"
    );
    assert_eq!(other_prefix, 10, "another prefix was not answered");
    let log = relay.stop();
    assert!(
        logged_number(&log, "refused_response_budget") >= 5000 - allowed as u64,
        "{log}"
    );
}

#[test]
fn the_nodes_own_addresses_are_refused_as_peers_as_they_come_and_go() {
    let test = "the_nodes_own_addresses_are_refused_as_peers_as_they_come_and_go";
    let Some(relay) = Relay::start(test, &[("turnutils_peer", COTURN)]) else {
        return;
    };
    let topology = &relay.topology;
    let server: SocketAddr = format!("{}:3478", topology.relay_client_side)
        .parse()
        .unwrap();
    let later: SocketAddr = "198.19.0.77:3480".parse().unwrap();
    let other_allocation: SocketAddr = format!("{}:50000", topology.relay_pod_side)
        .parse()
        .unwrap();
    let listener = server;
    let relay_other_port: SocketAddr = format!("{}:3478", topology.relay_pod_side).parse().unwrap();
    let add_or_delete = |verb: &str| {
        topology.relay.ip(&[
            "addr",
            verb,
            "198.19.0.77/24",
            "dev",
            &topology.relay_pod_if,
        ]);
    };
    topology.client.run(|| {
        let socket = UdpSocket::bind("198.18.0.1:0").unwrap();
        let client = TurnClient::connect(socket, server, USER, PASSWORD).expect("a 401");
        client.allocate(false).expect("an allocation");
        let bind = |channel: u16, peer: SocketAddr| {
            client
                .channel_bind(channel, peer)
                .err()
                .map(|err| err.code().unwrap_or_else(|| panic!("ChannelBind: {err}")))
        };
        assert_eq!(bind(0x4000, later), None, "not the node's address yet");
        assert_eq!(bind(0x4001, listener), Some(403), "the listen address");
        assert_eq!(
            bind(0x4002, relay_other_port),
            Some(403),
            "the relay address, another port"
        );
        assert_eq!(
            bind(0x4003, other_allocation),
            None,
            "the relay address, a relay port"
        );
        // Refreshing the binding checks the peer again: refused once the
        // address is the node's, allowed again once it is gone.
        add_or_delete("add");
        let refused = common::wait_for(Duration::from_secs(3), || {
            (bind(0x4000, later) == Some(403)).then_some(())
        });
        assert!(refused.is_some(), "{later} is the node's now");
        add_or_delete("del");
        let allowed = common::wait_for(Duration::from_secs(3), || {
            bind(0x4000, later).is_none().then_some(())
        });
        assert!(allowed.is_some(), "{later} is no longer the node's");
    });
    relay.stop();
}

#[test]
fn on_veths_as_a_node_has_them_the_tc_engine_relays_and_nothing_is_lost() {
    let test = "on_veths_as_a_node_has_them_the_tc_engine_relays_and_nothing_is_lost";
    let tools = [
        ("turnhammer", "cargo install turnhammer"),
        ("turnutils_uclient", COTURN),
        ("turnutils_peer", COTURN),
    ];
    let Some(relay) = Relay::start_with(test, &tools, FarEnds::AsOnANode, Listen::Specific, &[])
    else {
        return;
    };
    // Neither far end can receive what XDP sends (no program on the peer),
    // and local senders leave partial checksums: the tc engine relays it,
    // IPv4 and IPv6.
    assert_kernel_share(&relay, "turnhammer on plain veths", Some(1000), || {
        relay.turnhammer("turnhammer on plain veths", (5, 50, 4), &[])
    });
    assert_kernel_share(&relay, "uclient on plain veths", Some(100), || {
        relay.uclient("uclient on plain veths", &[], 50, 100)
    });
    assert_kernel_share(
        &relay,
        "uclient over IPv6 on plain veths",
        Some(100),
        || {
            let output = relay
                .topology
                .client
                .command("timeout")
                .args(["60", "turnutils_uclient", "-u", USER, "-w", PASSWORD, "-x"])
                .args(["-e", &relay.topology.pod_ip_v6, "-r", PEER_PORT, "-n", "50"])
                .arg(&relay.topology.relay_client_side_v6)
                .output()
                .expect("running turnutils_uclient");
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(
                text.contains("tot_send_msgs=100, tot_recv_msgs=100"),
                "{text}\n--- turnxd:\n{}",
                relay.daemon.log()
            );
        },
    );
    relay.assert_no_xdp_errors();
    relay.stop();
}

#[test]
fn wildcard_listeners_answer_from_the_address_used_and_offload() {
    let test = "wildcard_listeners_answer_from_the_address_used_and_offload";
    let tools = [("turnutils_uclient", COTURN), ("turnutils_peer", COTURN)];
    let Some(relay) = Relay::start_with(test, &tools, FarEnds::Engineered, Listen::Wildcard, &[])
    else {
        return;
    };
    // A second address on the client side, which the kernel would not pick
    // as the source of an answer: answering from it takes IP_PKTINFO.
    let secondary = "198.18.0.3";
    relay.topology.relay.ip(&[
        "addr",
        "add",
        &format!("{secondary}/24"),
        "dev",
        &relay.topology.relay_client_if,
    ]);
    let on_secondary = |case: &str, flags: &[&str]| {
        let output = relay
            .topology
            .client
            .command("timeout")
            .args(["60", "turnutils_uclient", "-u", USER, "-w", PASSWORD])
            .args(["-e", &relay.topology.pod_ip, "-r", PEER_PORT, "-n", "50"])
            .args(flags)
            .arg(secondary)
            .output()
            .expect("running turnutils_uclient");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && text.contains("tot_send_msgs=100, tot_recv_msgs=100"),
            "{case}:\n{text}\n--- turnxd:\n{}",
            relay.daemon.log()
        );
    };
    // Channel traffic of a client on a wildcard listener is the kernel's.
    assert_kernel_share(&relay, "UDP to the secondary address", Some(100), || {
        on_secondary("UDP to the secondary address", &[])
    });
    assert_kernel_share(&relay, "TCP to the secondary address", None, || {
        on_secondary("TCP to the secondary address", &["-t"])
    });
    relay.assert_no_xdp_errors();
    let log = relay.stop();
    assert_eq!(logged_number(&log, "wildcard_listener"), 0, "{log}");
}

#[test]
fn each_engine_alone_carries_what_it_can_and_userspace_the_rest() {
    let test = "each_engine_alone_carries_what_it_can_and_userspace_the_rest";
    let tools = [("turnutils_uclient", COTURN), ("turnutils_peer", COTURN)];
    // (far ends, engine, what the kernel carries of uclient's 100 each way)
    let cases = [
        (FarEnds::Engineered, "tc", Some(100)),
        (FarEnds::AsOnANode, "xdp", None),
        (FarEnds::AsOnANode, "off", None),
    ];
    for (far, engine, in_kernel) in cases {
        let Some(relay) =
            Relay::start_with(test, &tools, far, Listen::Specific, &["--engine", engine])
        else {
            return;
        };
        let case = format!("--engine {engine}");
        if engine == "off" {
            // No program at all: nothing to count in the kernel.
            relay.uclient(&case, &[], 50, 100);
        } else {
            assert_kernel_share(&relay, &case, in_kernel, || {
                relay.uclient(&case, &[], 50, 100)
            });
            relay.assert_no_xdp_errors();
        }
        relay.stop();
    }
}
