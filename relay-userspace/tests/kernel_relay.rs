//! The kernel media plane end to end: turnxd with XDP on both of the relay
//! namespace's interfaces, a TURN client in the client namespace,
//! coturn's `turnutils_peer` echoing in the pod namespace. After one
//! round trip through userspace (which resolves the neighbours), channel
//! traffic crosses the relay in both directions in the kernel, the userspace
//! relay stays idle, and deleting the allocation stops the kernel relay.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{Daemon, Process, TempDir, Topology, logged_number, logged_number_after};
use testkit::client::TurnClient;
use turnx::xdp::XdpRelay;

const CHANNEL: u16 = 0x4000;
const ROUND_TRIPS: usize = 200;

/// The turnx counters `turnxctl status` shows for `interface` in `ns`.
fn counters(ns: &common::Netns, interface: &str) -> serde_json::Value {
    common::turnxctl_status(ns, interface)["turnx"]["counters"].clone()
}

fn packets(counters: &serde_json::Value, class: &str) -> u64 {
    counters[class]["packets"].as_u64().unwrap_or(0)
}

#[test]
fn ipv4_channel_traffic_crosses_the_relay_in_the_kernel() {
    channel_traffic_crosses_the_relay_in_the_kernel("ipv4 kernel relay", false);
}

#[test]
fn ipv6_channel_traffic_crosses_the_relay_in_the_kernel() {
    channel_traffic_crosses_the_relay_in_the_kernel("ipv6 kernel relay", true);
}

/// A relay namespace running turnxd with native XDP on both interfaces,
/// between a client namespace and a pod namespace where turnutils_peer
/// echoes, with everything the kernel relay needs; `None` when skipping.
struct KernelSetup {
    topology: Topology,
    daemon: Daemon,
    server: SocketAddr,
    peer: SocketAddr,
    client_ip: String,
    _pass_programs: [XdpRelay; 2],
    _peer_process: Process,
    _pins: common::PinDir,
    _config_dir: TempDir,
}

impl KernelSetup {
    /// `extra` follows `[server]`'s keys in turnxd's configuration: more of
    /// them, or further sections.
    fn new(test: &str, ipv6: bool, extra: &str) -> Option<KernelSetup> {
        let object = common::xdp_object_or_skip(test)?;
        if !common::have_all_or_skip(test, &[("turnutils_peer", "Debian package coturn")]) {
            return None;
        }
        let topology = Topology::new();
        let pass_programs = common::engineer_far_ends(&topology, object);
        topology.relay.enable_forwarding();
        let (server_ip, relayed_ip, pod_ip, client_ip) = if ipv6 {
            (
                topology.relay_client_side_v6.clone(),
                topology.relay_pod_side_v6.clone(),
                topology.pod_ip_v6.clone(),
                "fd00:18::1".to_owned(),
            )
        } else {
            (
                topology.relay_client_side.clone(),
                topology.relay_pod_side.clone(),
                topology.pod_ip.clone(),
                "198.18.0.1".to_owned(),
            )
        };
        let bracketed = |ip: &str| {
            if ipv6 {
                format!("[{ip}]")
            } else {
                ip.to_owned()
            }
        };
        let pins = common::PinDir::new();
        let dir = TempDir::new("turnxk");
        let config = dir.0.join("turnxd.toml");
        std::fs::write(
            &config,
            format!(
                r#"
    [server]
    listen = ["{server}:3478"]
    relay_addresses = ["{relayed}"]
    relay_ports = [51000, 51999]
    {extra}
    [auth]
    users = {{ alice = "wonderland" }}
    [peers]
    allowed = ["198.19.0.0/24", "fd00:19::/64"]
    [xdp]
    interfaces = ["{client_side}", "{pod_side}"]
    mode = "native"
    pin_dir = "{pins}"
    [log]
    level = "debug"
    stats_interval_secs = 0
    "#,
                server = bracketed(&server_ip),
                relayed = relayed_ip,
                client_side = topology.relay_client_if,
                pod_side = topology.relay_pod_if,
                pins = pins.path(),
            ),
        )
        .unwrap();
        let daemon = common::turnxd_ready(&topology.relay, &["--config", config.to_str().unwrap()]);
        let _peer_process = common::start_turnutils_peer(&topology.pod, &[&pod_ip], "3480");
        let server: SocketAddr = format!("{}:3478", bracketed(&server_ip)).parse().unwrap();
        let peer: SocketAddr = format!("{}:3480", bracketed(&pod_ip)).parse().unwrap();
        Some(KernelSetup {
            topology,
            daemon,
            server,
            peer,
            client_ip: bracketed(&client_ip),
            _pass_programs: pass_programs,
            _peer_process,
            _pins: pins,
            _config_dir: dir,
        })
    }

    /// A client in the client namespace with an allocation and channel
    /// `CHANNEL` bound to the peer, and the echo of a warm-up round trip.
    /// Round trips through userspace resolve the neighbours; a first packet
    /// may be lost while they resolve, so it tries a few times.
    fn bound_client(&self, ipv6: bool) -> (TurnClient, Option<Vec<u8>>) {
        let (server, peer, client_ip) = (self.server, self.peer, &self.client_ip);
        self.topology.client.run(|| {
            let socket = UdpSocket::bind(format!("{client_ip}:0")).unwrap();
            let client = TurnClient::connect(socket, server, "alice", "wonderland").expect("a 401");
            client.allocate(ipv6).expect("allocation");
            client.channel_bind(CHANNEL, peer).expect("ChannelBind");
            let warm = (0..5).find_map(|_| {
                client
                    .channel_round_trip(CHANNEL, b"warm-up", Duration::from_secs(1))
                    .expect("sending the warm-up")
            });
            (client, warm)
        })
    }

    /// The turnx counters of the relay's client-side and pod-side
    /// interfaces.
    fn counters(&self) -> (serde_json::Value, serde_json::Value) {
        relay_counters(&self.topology)
    }
}

fn channel_traffic_crosses_the_relay_in_the_kernel(test: &str, ipv6: bool) {
    let Some(mut setup) = KernelSetup::new(test, ipv6, "") else {
        return;
    };
    let (client, warm) = setup.bound_client(ipv6);
    let topology = &setup.topology;
    let (before, after) = topology.client.run(|| {
        let before = relay_counters(topology);
        for i in 0..ROUND_TRIPS {
            let data = format!("media packet {i:04}");
            let echo = client
                .channel_round_trip(CHANNEL, data.as_bytes(), Duration::from_secs(2))
                .expect("sending ChannelData")
                .unwrap_or_else(|| panic!("no echo for packet {i}"));
            assert_eq!(
                echo,
                testkit::frame::channel_data(CHANNEL, data.as_bytes(), false)
            );
        }
        let after = relay_counters(topology);
        // Deleting the allocation removes the binding from the kernel.
        client.refresh(0).expect("Refresh 0");
        let lost = client
            .channel_round_trip(CHANNEL, b"after delete", Duration::from_millis(500))
            .expect("sending ChannelData");
        assert!(lost.is_none(), "relayed after the allocation was deleted");
        (before, after)
    });
    assert!(
        warm.is_some(),
        "the warm-up round trip failed:\n{}",
        setup.daemon.log()
    );
    let to_peer = packets(&after.0, "forwarded_to_peer") - packets(&before.0, "forwarded_to_peer");
    let to_client =
        packets(&after.1, "forwarded_to_client") - packets(&before.1, "forwarded_to_client");
    assert_eq!(
        to_peer, ROUND_TRIPS as u64,
        "kernel client->peer: {after:?}"
    );
    assert_eq!(
        to_client, ROUND_TRIPS as u64,
        "kernel peer->client: {after:?}"
    );
    let late = setup.counters().0;
    assert_eq!(
        packets(&late, "forwarded_to_peer"),
        packets(&after.0, "forwarded_to_peer"),
        "the kernel forwarded after the allocation was deleted"
    );

    let exit = setup.daemon.stop(libc::SIGINT);
    assert!(exit.success(), "{}", setup.daemon.log());
    let log = setup.daemon.log();
    // The userspace relay carried at most the warm-up tries, never the
    // measured packets.
    let userspace = |field| logged_number_after(&log, "relayed Stats", field);
    assert!(userspace("to_peer_packets") <= 5, "{log}");
    assert!(userspace("to_client_packets") <= 5, "{log}");
    assert_eq!(logged_number(&log, "installed"), 1, "{log}");
    assert_eq!(logged_number(&log, "removed"), 1, "{log}");
    // The binding's own counters account for every kernel-relayed packet.
    let kernel = |field| logged_number_after(&log, "kernel_relayed", field);
    assert!(kernel("to_peer_packets") >= ROUND_TRIPS as u64, "{log}");
    assert!(kernel("to_client_packets") >= ROUND_TRIPS as u64, "{log}");
}

#[test]
fn uclient_channels_cross_the_relay_in_the_kernel() {
    let test = "uclient_channels_cross_the_relay_in_the_kernel";
    // coturn's client binds RFC 5766 channel numbers.
    let Some(mut setup) = KernelSetup::new(test, false, "legacy_channel_numbers = true") else {
        return;
    };
    let before = setup.counters();
    let messages = 100;
    let output = setup
        .topology
        .client
        .command("timeout")
        .args([
            "60",
            "turnutils_uclient",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-c",
        ])
        .args(["-e", &setup.peer.ip().to_string(), "-r", "3480"])
        .args(["-n", &messages.to_string(), "-l", "200"])
        .arg(setup.server.ip().to_string())
        .output()
        .expect("running turnutils_uclient");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "uclient failed:\n{text}\n{}",
        setup.daemon.log()
    );
    assert!(
        text.contains(&format!(
            "tot_send_msgs={messages}, tot_recv_msgs={messages}"
        )),
        "not every message came back:\n{text}"
    );
    let after = setup.counters();
    let to_peer = packets(&after.0, "forwarded_to_peer") - packets(&before.0, "forwarded_to_peer");
    let to_client =
        packets(&after.1, "forwarded_to_client") - packets(&before.1, "forwarded_to_client");
    // The first packets go through userspace while the neighbours resolve.
    assert!(
        to_peer >= messages - 10,
        "kernel client->peer {to_peer} of {messages}"
    );
    assert!(
        to_client >= messages - 10,
        "kernel peer->client {to_client} of {messages}"
    );
    let exit = setup.daemon.stop(libc::SIGINT);
    assert!(exit.success());
    let log = setup.daemon.log();
    assert!(
        logged_number_after(&log, "relayed Stats", "to_peer_packets") <= 10,
        "{log}"
    );
}

/// Issue 11, item 8: a flood on a bound channel is held to its
/// allocation's bandwidth limit in the kernel, and another allocation's
/// channel, under the limit, loses nothing. Both send to a sink in the pod
/// namespace, which counts what arrives from each relayed address.
#[test]
fn a_flooded_channel_is_held_to_its_bandwidth_limit_in_the_kernel() {
    const LIMIT: u64 = 1_000_000;
    const BURST_MS: u64 = 50;
    const SECONDS: u64 = 4;
    const DATA: usize = 1000;
    // Offered: three times the limit, and a tenth of it.
    const FLOOD_PPS: u64 = 3 * LIMIT / DATA as u64;
    const CALM_PPS: u64 = LIMIT / 10 / DATA as u64;
    let test = "a_flooded_channel_is_held_to_its_bandwidth_limit_in_the_kernel";
    let limits =
        format!("[limits]\nallocation_bytes_per_sec = {LIMIT}\nbandwidth_burst_ms = {BURST_MS}\n");
    let Some(mut setup) = KernelSetup::new(test, false, &limits) else {
        return;
    };
    let sink_address = SocketAddr::new(setup.peer.ip(), 3490);
    let sink = setup
        .topology
        .pod
        .run(|| UdpSocket::bind(sink_address).unwrap());
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (client, warm) = setup.bound_client(false);
        assert!(warm.is_some(), "no warm-up round trip");
        setup
            .topology
            .client
            .run(|| client.channel_bind(CHANNEL + 1, sink_address))
            .expect("ChannelBind to the sink");
        senders.push(client);
    }
    let over_limit_before = packets(&setup.counters().0, "over_limit");
    let frame = testkit::frame::channel_data(CHANNEL + 1, &[0xAB; DATA], false);
    let (received, (sent, elapsed)) = std::thread::scope(|scope| {
        let counting = scope.spawn(|| {
            let mut received = std::collections::HashMap::<SocketAddr, u64>::new();
            let mut buffer = [0u8; 2048];
            let deadline = std::time::Instant::now() + Duration::from_secs(SECONDS + 3);
            while std::time::Instant::now() < deadline {
                match sink.recv_from(&mut buffer) {
                    Ok((len, from)) => *received.entry(from).or_default() += len as u64,
                    Err(_) if !received.is_empty() => break,
                    Err(_) => {}
                }
            }
            received
        });
        let sending = setup.topology.client.run(|| {
            let started = std::time::Instant::now();
            let mut sent = [0u64; 2];
            // Paced by the millisecond, catching up after any stall.
            while started.elapsed() < Duration::from_secs(SECONDS) {
                let elapsed = started.elapsed().as_secs_f64();
                for (i, pps) in [FLOOD_PPS, CALM_PPS].into_iter().enumerate() {
                    while (sent[i] as f64) < elapsed * pps as f64 {
                        senders[i].socket.send_to(&frame, setup.server).unwrap();
                        sent[i] += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (sent, started.elapsed())
        });
        (counting.join().unwrap(), sending)
    });
    let over_limit = packets(&setup.counters().0, "over_limit") - over_limit_before;
    let mut by_source: Vec<u64> = received.values().copied().collect();
    by_source.sort();
    assert_eq!(by_source.len(), 2, "{received:?}");
    let (calm, flooded) = (by_source[0], by_source[1]);
    let burst = LIMIT * BURST_MS / 1000 + DATA as u64;
    let rate = (flooded.saturating_sub(burst)) as f64 / elapsed.as_secs_f64();
    println!(
        "offered {} and {} datagrams in {elapsed:?}: {rate:.0} bytes/s delivered of a {LIMIT} \
         limit, {over_limit} dropped in the kernel; the calm channel {calm} bytes",
        sent[0], sent[1]
    );
    assert!(
        (rate - LIMIT as f64).abs() <= 0.05 * LIMIT as f64,
        "{rate:.0} bytes/s is not within 5 % of {LIMIT}"
    );
    assert_eq!(calm, sent[1] * DATA as u64, "the calm channel lost data");
    assert!(
        over_limit > sent[0] / 2,
        "the kernel dropped only {over_limit} of {}",
        sent[0]
    );
    assert!(setup.daemon.stop(libc::SIGINT).success());
}

/// The turnx counters of the relay's client-side and pod-side interfaces.
fn relay_counters(topology: &Topology) -> (serde_json::Value, serde_json::Value) {
    (
        counters(&topology.relay, &topology.relay_client_if),
        counters(&topology.relay, &topology.relay_pod_if),
    )
}

/// A fault in turnxd (a task that panics holding the core's lock, injected
/// with SIGUSR2 in test builds) ends the process at once, and with it the
/// kernel relay: nothing is relayed for a daemon that can no longer expire
/// bindings.
#[test]
fn a_fault_ends_the_daemon_and_the_kernel_stops_relaying() {
    let test = "a_fault_ends_the_daemon_and_the_kernel_stops_relaying";
    let Some(mut setup) = KernelSetup::new(test, false, "") else {
        return;
    };
    let relayed_in_kernel = |setup: &KernelSetup| packets(&setup.counters().0, "forwarded_to_peer");
    // A bound channel the kernel relays.
    let (client, warm) = setup.bound_client(false);
    assert!(warm.is_some(), "no warm-up round trip");
    let kernel_before = relayed_in_kernel(&setup);
    let echo = setup.topology.client.run(|| {
        client
            .channel_round_trip(CHANNEL, b"in the kernel", Duration::from_secs(2))
            .expect("sending ChannelData")
    });
    assert!(echo.is_some(), "{}", setup.daemon.log());
    assert!(
        relayed_in_kernel(&setup) > kernel_before,
        "not relayed in the kernel"
    );
    // The fault.
    let pid = setup.daemon.child.id() as i32;
    // SAFETY: signalling the daemon this test started, by its PID.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    let started = std::time::Instant::now();
    let status = common::wait_for(Duration::from_secs(1), || {
        setup.daemon.child.try_wait().unwrap()
    });
    let Some(status) = status else {
        panic!(
            "turnxd still runs 1 s after the fault:\n{}",
            setup.daemon.log()
        );
    };
    eprintln!(
        "turnxd ended {:?} after the fault: {status}",
        started.elapsed()
    );
    assert!(!status.success(), "{status}");
    // No program is left on the relay's interfaces, and nothing comes back.
    for interface in [
        &setup.topology.relay_client_if,
        &setup.topology.relay_pod_if,
    ] {
        let report = common::turnxctl_status(&setup.topology.relay, interface);
        assert_eq!(
            report["xdp"],
            serde_json::json!([]),
            "{interface}: {report}"
        );
        assert!(report["turnx"].is_null(), "{interface}: {report}");
    }
    let echo = setup.topology.client.run(|| {
        client
            .channel_round_trip(CHANNEL, b"after the fault", Duration::from_millis(500))
            .expect("sending ChannelData")
    });
    assert!(echo.is_none(), "relayed after the daemon ended");
}
