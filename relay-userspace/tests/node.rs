//! turnxd on a Kubernetes node as it is (`testkit::node`): a hostNetwork
//! relay on the node's uplink, relaying to peers in every place a media
//! server sits: a pod on this node (behind an `lxc…` veth that appears
//! after turnxd started, default offloads, no XDP program), a pod on
//! another node reached by routing over the uplink, and one reached
//! through a VXLAN tunnel. The uplink is a NIC whose wire takes what XDP
//! sends (a program that passes everything on the fabric's end of it).
//!
//! coturn's `turnutils_uclient` in its default mode and the project's
//! client bind channels to each peer, IPv4 and IPv6. Every datagram must
//! come back intact, the kernel must carry at least 95 % of the channel
//! traffic in each place, both ways, and no XDP error counter may move.
//! Once with the built-in wildcard listeners and direct sending, once with
//! specific listeners and stack routing, where the stack routes what the
//! kernel rewrote (for Cilium's policy and netfilter).
//!
//! And beside stand-ins for Cilium's programs (`testkit::foreign`): an XDP
//! program on the uplink, which turnx must leave alone and relay there at
//! tc instead, and tc programs on the uplink and the pod's veth, which must
//! still see every frame that is not turnx's, and keep running after
//! turnxd stops.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{PinDir, Process, logged_number_after, start_turnutils_peer};
use testkit::{
    Netns,
    client::TurnClient,
    foreign::Foreign,
    node::{self, NodeTopology, Place},
    process::Daemon,
};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const PEER_PORT: &str = "3480";
const COTURN: &str = "Debian package coturn";
/// Datagrams each way per uclient run: 50 messages on each of its RTP and
/// RTCP sessions.
const UCLIENT_MESSAGES: u64 = 100;
/// Round trips of the project's client per place and family.
const ROUND_TRIPS: u64 = 100;
/// Where traffic that is not turnx's goes, for the stand-ins to count.
const FOREIGN_PORT: u16 = 7000;

/// How turnxd listens and sends.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The built-in 0.0.0.0 and [::] listeners; the kernel sends to the
    /// next hop itself.
    WildcardDirect,
    /// Listeners on the node's addresses; the stack routes what the kernel
    /// rewrote.
    SpecificStackRouted,
}

struct Node {
    topology: NodeTopology,
    daemon: Daemon,
    /// Stand-ins for Cilium's programs: XDP and tc on the uplink, tc on
    /// the pod's veth, in that order.
    foreign: Vec<Foreign>,
    /// Client runs so far, each relaying at least `ROUND_TRIPS` each way.
    runs: u64,
    _peers: Vec<Process>,
    _uplink_nic: turnx::xdp::XdpRelay,
    _pins: PinDir,
}

impl Node {
    /// `foreign`: the object with the stand-ins for Cilium's programs, to
    /// attach to each interface before turnxd takes it, as Cilium's are.
    fn start(test: &str, mode: Mode, foreign: Option<&[u8]>) -> Option<Node> {
        let object = common::xdp_object_or_skip(test)?;
        let tools = [("turnutils_uclient", COTURN), ("turnutils_peer", COTURN)];
        if !common::have_all_or_skip(test, &tools) {
            return None;
        }
        let mut topology = NodeTopology::new();
        let uplink_nic = common::pass_program(&topology.fabric, &topology.uplink_far_end, object);
        let mut stand_ins = Vec::new();
        if let Some(foreign) = foreign {
            let (ns, uplink) = (&topology.node, &topology.uplink);
            stand_ins.push(Foreign::xdp(foreign, ns, uplink, FOREIGN_PORT));
            stand_ins.push(Foreign::tc(foreign, ns, uplink, FOREIGN_PORT));
        }
        let pins = PinDir::new();
        let mut args = vec![
            "--relay-address",
            node::NODE_V4,
            "--relay-address",
            node::NODE_V6,
            "--user",
            "alice:wonderland",
            "--interface",
            &topology.uplink,
            "--interface",
            &topology.tunnel,
            "--pin-dir",
            pins.path(),
            "--stats-interval",
            "0",
            "--log-level",
            "debug",
        ];
        let listen = [
            format!("{}:3478", node::NODE_V4),
            format!("[{}]:3478", node::NODE_V6),
        ];
        if mode == Mode::SpecificStackRouted {
            args.extend(["--listen", &listen[0], "--listen", &listen[1]]);
            args.push("--route-in-stack");
        }
        let mut daemon = common::turnxd_ready(&topology.node, &args);
        // The pod starts after the relay, as pods do: turnxd must find its
        // veth by the default pattern (lxc*) and take it.
        topology.add_pod();
        if let Some(foreign) = foreign {
            let (ns, pod_if) = (&topology.node, &topology.pod_if);
            stand_ins.push(Foreign::tc(foreign, ns, pod_if, FOREIGN_PORT));
        }
        let attached = format!(
            "the tc engine attached to pod interface {}",
            topology.pod_if
        );
        assert!(
            daemon.wait_for_line(&attached, Duration::from_secs(5)),
            "turnxd did not follow the new pod's veth:\n{}",
            daemon.log()
        );
        // And it sends into the pod's namespace straight from tc ingress.
        let into_pod = format!("{} (tc into the pod)", topology.pod_if);
        assert!(
            daemon.wait_for_line(&into_pod, Duration::from_secs(5)),
            "turnxd does not send into the pod directly:\n{}",
            daemon.log()
        );
        let mut peers = Vec::new();
        let pod = topology.peer_namespace(Place::SameNodePod);
        let same = Place::SameNodePod;
        peers.push(start_turnutils_peer(
            pod,
            &[same.v4(), same.v6()],
            PEER_PORT,
        ));
        let other: Vec<&str> = [Place::OtherNode, Place::Tunnel]
            .iter()
            .flat_map(|place| [place.v4(), place.v6()])
            .collect();
        peers.push(start_turnutils_peer(
            &topology.other_node,
            &other,
            PEER_PORT,
        ));
        Some(Node {
            topology,
            daemon,
            foreign: stand_ins,
            runs: 0,
            _peers: peers,
            _uplink_nic: uplink_nic,
            _pins: pins,
        })
    }

    /// What the kernel relayed so far, (to peers, to clients), from the
    /// program's counters, which every interface shares.
    fn kernel_relayed(&self) -> (u64, u64) {
        let status = common::turnxctl_status(&self.topology.node, &self.topology.uplink);
        let counters = &status["turnx"]["counters"];
        let packets = |class: &str| counters[class]["packets"].as_u64().unwrap_or(0);
        (packets("forwarded_to_peer"), packets("forwarded_to_client"))
    }

    /// Runs `run`, which relays `total` datagrams each way, and asserts the
    /// kernel carried at least 95 % of them each way.
    fn assert_kernel_carries(&self, case: &str, total: u64, run: impl FnOnce()) {
        let before = self.kernel_relayed();
        run();
        let after = self.kernel_relayed();
        let (to_peer, to_client) = (after.0 - before.0, after.1 - before.1);
        eprintln!("{case}: the kernel relayed {to_peer} to the peer, {to_client} to the client");
        // The first datagrams of a binding may go through userspace while
        // the neighbours resolve.
        let floor = total * 95 / 100;
        assert!(
            to_peer >= floor && to_client >= floor,
            "{case}: the kernel relayed {to_peer} to the peer and {to_client} to the client \
             of {total}:\n{}",
            self.daemon.log()
        );
    }

    /// turnutils_uclient in its default mode (an RTP/RTCP pair of
    /// allocations, 50 messages each) from the client to the peer at
    /// `place`, which must get every message back.
    fn uclient(&self, place: Place, ipv6: bool) {
        let (server, peer) = if ipv6 {
            (node::NODE_V6, place.v6())
        } else {
            (node::NODE_V4, place.v4())
        };
        let mut command = self.topology.client.command("timeout");
        command.args(["60", "turnutils_uclient", "-u", USER, "-w", PASSWORD]);
        if ipv6 {
            command.arg("-x");
        }
        let output = command
            .args(["-e", peer, "-r", PEER_PORT, "-n", "50", "-l", "200"])
            .arg(server)
            .output()
            .expect("running turnutils_uclient");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let total = UCLIENT_MESSAGES;
        assert!(
            output.status.success()
                && text.contains(&format!("tot_send_msgs={total}, tot_recv_msgs={total}"))
                && text.contains("Total lost packets 0 (0.000000%)"),
            "uclient to {place:?} ({peer}): not every message came back:\n{}\n--- turnxd:\n{}",
            text.lines().rev().take(8).collect::<Vec<_>>().join("\n"),
            self.daemon.log()
        );
    }

    /// The project's client: one allocation, a channel to the peer at
    /// `place`, and `ROUND_TRIPS` distinct datagrams that must each come
    /// back intact.
    fn own_client(&self, place: Place, ipv6: bool) {
        let (client_ip, server_ip, peer_ip) = if ipv6 {
            (node::CLIENT_V6, node::NODE_V6, place.v6())
        } else {
            (node::CLIENT_V4, node::NODE_V4, place.v4())
        };
        let server: SocketAddr = SocketAddr::new(server_ip.parse().unwrap(), 3478);
        let peer = SocketAddr::new(peer_ip.parse().unwrap(), PEER_PORT.parse().unwrap());
        const CHANNEL: u16 = 0x4000;
        let lost = self.topology.client.run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(client_ip.parse().unwrap(), 0)).unwrap();
            let client = TurnClient::connect(socket, server, USER, PASSWORD).expect("a 401");
            client.allocate(ipv6).expect("allocation");
            client.channel_bind(CHANNEL, peer).expect("ChannelBind");
            for i in 0..ROUND_TRIPS {
                // Sizes vary, so that padding and length rewrites show.
                let data = format!("{place:?} media {i:04} {}", "x".repeat(i as usize % 7));
                let Some(echo) = client
                    .channel_round_trip(CHANNEL, data.as_bytes(), Duration::from_secs(2))
                    .expect("sending ChannelData")
                else {
                    return Some(i);
                };
                assert_eq!(
                    echo,
                    testkit::frame::channel_data(CHANNEL, data.as_bytes(), false),
                    "{place:?}: datagram {i} came back changed"
                );
            }
            client.refresh(0).expect("deleting the allocation");
            None
        });
        if let Some(i) = lost {
            // Everything that tells where it went: the programs' counters
            // and turnxd's view of the same moment.
            let status = common::turnxctl_status(&self.topology.node, &self.topology.uplink);
            panic!(
                "{place:?} over {}: no echo for datagram {i} in 2 s\n--- turnxctl status:\n{status:#}\n--- turnxd:\n{}",
                if ipv6 { "IPv6" } else { "IPv4" },
                self.daemon.log()
            );
        }
    }

    /// Asserts that no XDP error counter of the node's uplink and the pod's
    /// veth moved (`turnxctl status`, which reads what `ethtool -S` shows).
    fn assert_no_xdp_errors(&self) {
        let interfaces = [&self.topology.uplink, &self.topology.pod_if];
        common::assert_no_driver_xdp_errors(&self.topology.node, &interfaces);
    }

    /// Runs both clients to every place in both families, then stops
    /// turnxd; see [`Self::stop`].
    fn relay_everywhere(&mut self) -> String {
        self.relay_to(&Place::ALL);
        self.stop()
    }

    /// Runs both clients to the peers at `places`, in both families, and
    /// checks the XDP error counters.
    fn relay_to(&mut self, places: &[Place]) {
        for &place in places {
            for ipv6 in [false, true] {
                let family = if ipv6 { "IPv6" } else { "IPv4" };
                let case = format!("uclient to {place:?} over {family}");
                self.assert_kernel_carries(&case, UCLIENT_MESSAGES, || self.uclient(place, ipv6));
                let case = format!("own client to {place:?} over {family}");
                self.assert_kernel_carries(&case, ROUND_TRIPS, || self.own_client(place, ipv6));
                self.runs += 2;
            }
        }
        self.assert_no_xdp_errors();
    }

    /// Stops turnxd and checks, by the per-binding counters it logs, that
    /// the kernel carried at least 95 % of all channel traffic. Returns the
    /// log.
    fn stop(&mut self) -> String {
        let exit = self.daemon.stop(libc::SIGINT);
        let log = self.daemon.log();
        assert!(exit.success(), "turnxd exited with {exit}:\n{log}");
        for field in ["to_peer_packets", "to_client_packets"] {
            let in_kernel = logged_number_after(&log, "kernel_relayed", field);
            let in_userspace = logged_number_after(&log, "relayed Stats", field);
            let total = in_kernel + in_userspace;
            eprintln!("{field}: {in_kernel} in the kernel, {in_userspace} in userspace");
            assert!(
                total >= self.runs * ROUND_TRIPS && in_kernel * 100 >= total * 95,
                "{field}: the kernel carried {in_kernel} of {total}:\n{log}"
            );
        }
        log
    }

    /// Sends `count` datagrams that are not turnx's (to FOREIGN_PORT on the
    /// node) from `from` in `ns` to `to`, and asserts that a socket on the
    /// node received every one.
    fn send_foreign(&self, ns: &Netns, from: &str, to: &str, count: u64) {
        let to = SocketAddr::new(to.parse().unwrap(), FOREIGN_PORT);
        let receiver = self.topology.node.run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(to.ip(), FOREIGN_PORT)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            socket
        });
        ns.run(|| {
            let socket = UdpSocket::bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
            for i in 0..count {
                socket
                    .send_to(format!("not turnx's {i}").as_bytes(), to)
                    .unwrap();
                // Paced, so that no socket buffer on the way overflows.
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let mut buffer = [0u8; 64];
        for i in 0..count {
            let received = receiver.recv_from(&mut buffer);
            assert!(received.is_ok(), "datagram {i} of {count} to {to} was lost");
        }
    }

    /// Packets the host side of the pod's veth has sent, and packets the
    /// pod's side has received.
    fn pod_veth_packets(&self) -> (u64, u64) {
        let count = |ns: &Netns, dev: &str, what: &str| -> u64 {
            let path = format!("/sys/class/net/{dev}/statistics/{what}_packets");
            ns.read(&path).trim().parse().unwrap()
        };
        let pod = self.topology.peer_namespace(Place::SameNodePod);
        (
            count(&self.topology.node, &self.topology.pod_if, "tx"),
            count(pod, "eth0", "rx"),
        )
    }

    /// What each stand-in has seen so far.
    fn foreign_seen(&self) -> Vec<u64> {
        self.foreign.iter().map(Foreign::seen).collect()
    }
}

#[test]
fn on_a_node_wildcard_listeners_relay_to_every_peer_place_in_the_kernel() {
    let test = "on_a_node_wildcard_listeners_relay_to_every_peer_place_in_the_kernel";
    let Some(mut node) = Node::start(test, Mode::WildcardDirect, None) else {
        return;
    };
    let before = node.pod_veth_packets();
    let log = node.relay_everywhere();
    // What reaches the pod came straight from tc ingress into its
    // namespace, not through the host side's transmit path.
    let after = node.pod_veth_packets();
    let (sent, received) = (after.0 - before.0, after.1 - before.1);
    eprintln!("pod veth: the node side sent {sent}, the pod received {received}");
    assert!(
        received >= 2 * (UCLIENT_MESSAGES + ROUND_TRIPS) && sent * 10 < received,
        "the pod's veth sent {sent} packets from the node and the pod received {received}"
    );
    assert_eq!(common::logged_number(&log, "wildcard_listener"), 0, "{log}");
}

#[test]
fn on_a_node_stack_routing_relays_to_every_peer_place_and_restores_sysctls() {
    let test = "on_a_node_stack_routing_relays_to_every_peer_place_and_restores_sysctls";
    let Some(mut node) = Node::start(test, Mode::SpecificStackRouted, None) else {
        return;
    };
    let accept_local = |node: &Node, interface: &str| {
        let path = format!("net/ipv4/conf/{interface}/accept_local");
        node.topology.node.sysctl(&path)
    };
    // What makes IPv4 accept a relayed frame from the node's own address,
    // on every interface the relay runs on, and put back when it stops.
    let interfaces = [
        node.topology.uplink.clone(),
        node.topology.tunnel.clone(),
        node.topology.pod_if.clone(),
    ];
    for interface in &interfaces {
        assert_eq!(accept_local(&node, interface), "1", "{interface}");
    }
    node.relay_everywhere();
    for interface in &interfaces {
        assert_eq!(accept_local(&node, interface), "0", "{interface}");
    }
}

#[test]
fn beside_cilium_like_programs_turnx_takes_only_its_own_frames_and_leaves_theirs() {
    let test = "beside_cilium_like_programs_turnx_takes_only_its_own_frames_and_leaves_theirs";
    let Some(foreign) = foreign_object_or_skip(test) else {
        return;
    };
    let Some(mut node) = Node::start(test, Mode::WildcardDirect, Some(&foreign)) else {
        return;
    };
    // The uplink's XDP hook is taken: turnx leaves it and relays there at
    // tc, before the stand-in's tc program.
    let uplink = node.topology.uplink.clone();
    assert!(
        node.daemon.wait_for_line(
            &format!("{uplink} already runs XDP"),
            Duration::from_secs(1)
        ),
        "{}",
        node.daemon.log()
    );
    // Frames that are not turnx's reach every stand-in, and the stack.
    let count = 100;
    let before = node.foreign_seen();
    let client = &node.topology.client;
    node.send_foreign(client, node::CLIENT_V4, node::NODE_V4, count);
    node.send_foreign(client, node::CLIENT_V6, node::NODE_V6, count);
    let pod = node.topology.peer_namespace(Place::SameNodePod);
    node.send_foreign(pod, Place::SameNodePod.v4(), node::NODE_V4, count);
    let seen: Vec<u64> = node
        .foreign_seen()
        .iter()
        .zip(&before)
        .map(|(now, before)| now - before)
        .collect();
    let places: Vec<&str> = node.foreign.iter().map(|f| f.place.as_str()).collect();
    assert_eq!(
        seen,
        [2 * count, 2 * count, count],
        "datagrams each stand-in saw ({places:?})"
    );
    // turnx still relays its own channels in the kernel, without loss.
    node.relay_to(&Place::ALL);
    node.stop();
    // And it left the stand-ins where they were.
    let before = node.foreign_seen();
    let client = &node.topology.client;
    node.send_foreign(client, node::CLIENT_V4, node::NODE_V4, count);
    let after = node.foreign_seen();
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (count, count),
        "the uplink's stand-ins after turnxd stopped"
    );
}

/// The benchmark's object, which holds the stand-ins for foreign programs
/// (`cargo xtask test` points TURNX_BENCH_OBJECT at it), or `None` after
/// saying why the test skips.
fn foreign_object_or_skip(test: &str) -> Option<Vec<u8>> {
    let required = std::env::var_os("TURNX_REQUIRE_XDP_TESTS").is_some();
    let Some(path) = std::env::var_os("TURNX_BENCH_OBJECT") else {
        assert!(!required, "{test}: TURNX_BENCH_OBJECT is not set");
        eprintln!("skipping {test}: TURNX_BENCH_OBJECT is not set; run `cargo xtask test`");
        return None;
    };
    match std::fs::read(&path) {
        Ok(object) => Some(object),
        Err(err) => panic!("{test}: reading {}: {err}", path.display()),
    }
}
