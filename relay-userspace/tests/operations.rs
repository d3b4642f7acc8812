//! turnxd as an operator runs it on a cluster (issue 12), under test
//! conditions: the relay namespace between a client namespace and a pod
//! namespace where coturn's `turnutils_peer` echoes, the kernel offload on
//! (far ends engineered so that XDP delivers, as in kernel_relay.rs), and
//! the operations features exercised against real software:
//! - a real Prometheus scrapes `/metrics` while coturn's
//!   `turnutils_uclient` relays, and what it stored matches the traffic;
//! - SIGTERM drains: `/ready` fails, new Allocates are refused (508, or 300
//!   with ALTERNATE-SERVER), the existing allocation keeps relaying in the
//!   kernel, and the daemon exits when it ends, or at the deadline, or at
//!   once on a second SIGTERM;
//! - a reload (file change, SIGHUP) adds a user and rotates the REST
//!   secret while an allocation relays, and a change of `[server] listen`
//!   is refused whole;
//! - a public address is advertised while the kernel carries the media
//!   on the bound one;
//! - the credential service's answers are accepted by the project's client
//!   and by Chromium;
//! - the userspace relay in four shards spreads clients over them, relays
//!   for every one, and holds them to one user quota.
//!
//! `turnxctl status --json` and `turnxctl allocations --json` are checked
//! against the running daemons along the way.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use common::{Daemon, PinDir, Process, TempDir, Topology, browser};
use hmac::Mac;
use serde_json::Value;
use stun_types::{
    attribute::{AlternateServer, ErrorCode, Nonce, Realm, Software, Username},
    message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageWrite, MessageWriteExt,
        MessageWriteVec,
    },
};
use testkit::{
    client::TurnClient,
    prometheus::{Prometheus, http_get, http_request, sum_samples},
};
use turn_types::{attribute::RequestedTransport, message::ALLOCATE};
use turnx::xdp::XdpRelay;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const PEER_PORT: u16 = 3480;
const CHANNEL: u16 = 0x4000;
const COTURN: &str = "Debian package coturn";
const CLIENT_IP: &str = "198.18.0.1";
const METRICS: &str = "198.18.0.2:9641";
const CREDENTIALS: &str = "198.18.0.2:9642";

/// The relay's network: three namespaces, far ends engineered for XDP,
/// forwarding on, turnutils_peer echoing in the pod namespace.
struct Net {
    topology: Topology,
    server: SocketAddr,
    peer: SocketAddr,
    _far_ends: [XdpRelay; 2],
    _peer: Process,
}

impl Net {
    /// `None` (after saying why) when the test skips.
    fn new(test: &str, tools: &[(&str, &str)]) -> Option<Net> {
        let object = common::xdp_object_or_skip(test)?;
        let mut needed = vec![("turnutils_peer", COTURN)];
        needed.extend_from_slice(tools);
        if !common::have_all_or_skip(test, &needed) {
            return None;
        }
        let topology = Topology::new();
        let far_ends = common::engineer_far_ends(&topology, object);
        topology.relay.enable_forwarding();
        let peer = common::start_turnutils_peer(
            &topology.pod,
            &[&topology.pod_ip],
            &PEER_PORT.to_string(),
        );
        Some(Net {
            server: format!("{}:3478", topology.relay_client_side)
                .parse()
                .unwrap(),
            peer: format!("{}:{PEER_PORT}", topology.pod_ip).parse().unwrap(),
            topology,
            _far_ends: far_ends,
            _peer: peer,
        })
    }

    /// Starts turnxd in the relay namespace on `settings`, written to a
    /// config file (`--config`), with `flags` after it, and waits until it
    /// is ready.
    fn turnxd(&self, settings: &Settings, flags: &[&str]) -> Turnxd {
        let dir = TempDir::new("turnxops");
        let pins = PinDir::new();
        let config = dir.0.join("turnxd.toml");
        let admin = dir.0.join("admin.sock");
        std::fs::write(&config, settings.render(&self.topology, pins.path())).unwrap();
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--admin-socket",
            admin.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let daemon = common::turnxd_ready(&self.topology.relay, &args);
        Turnxd {
            daemon,
            config,
            admin,
            _pins: pins,
            _dir: dir,
        }
    }

    /// A client in the client namespace with an allocation of `user` and
    /// channel `CHANNEL` bound to the echoing peer, after a warm-up round
    /// trip (which resolves the neighbours); returns it with its relayed
    /// address.
    fn bound_client(&self, user: &str, password: &str) -> (TurnClient, SocketAddr) {
        let (server, peer) = (self.server, self.peer);
        self.topology.client.run(|| {
            let socket = UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
            let client = TurnClient::connect(socket, server, user, password).expect("a 401");
            let relayed = client.allocate(false).expect("an allocation");
            client.channel_bind(CHANNEL, peer).expect("ChannelBind");
            let warm = (0..5).find_map(|_| {
                client
                    .channel_round_trip(CHANNEL, b"warm-up", Duration::from_secs(1))
                    .expect("sending the warm-up")
            });
            assert!(warm.is_some(), "no warm-up round trip for {user}");
            (client, relayed)
        })
    }

    /// A client in the client namespace with an allocation of `user`, and
    /// nothing else.
    fn allocated_client(&self, user: &str, password: &str) -> TurnClient {
        let server = self.server;
        self.topology.client.run(|| {
            let socket = UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
            let client = TurnClient::connect(socket, server, user, password).expect("a 401");
            client.allocate(false).expect("an allocation");
            client
        })
    }

    /// `rounds` ChannelData round trips of `client` on `channel`; returns
    /// how many echoes came back intact.
    fn round_trips(&self, client: &TurnClient, channel: u16, rounds: usize) -> usize {
        self.topology.client.run(|| {
            (0..rounds)
                .filter(|i| {
                    let data = format!("media {i:04}");
                    let echo = client
                        .channel_round_trip(channel, data.as_bytes(), Duration::from_secs(1))
                        .expect("sending ChannelData");
                    echo == Some(testkit::frame::channel_data(
                        channel,
                        data.as_bytes(),
                        false,
                    ))
                })
                .count()
        })
    }

    /// A new allocation attempt with the project's client: `Ok(relayed)`
    /// or the error code.
    fn try_allocate(&self, user: &str, password: &str) -> Result<SocketAddr, u16> {
        let server = self.server;
        self.topology.client.run(|| {
            let socket = UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
            let client = TurnClient::connect(socket, server, user, password).expect("a 401");
            let result = client.allocate(false).map_err(|err| {
                err.code()
                    .unwrap_or_else(|| panic!("Allocate for {user}: {err}"))
            });
            if result.is_ok() {
                // Leave no allocation behind.
                client.refresh(0).expect("Refresh 0");
            }
            result
        })
    }

    /// A signed Allocate from a new socket, by hand, for what the project's
    /// client does not keep of an error: the final response.
    fn raw_allocate(&self, user: &str, password: &str) -> Refusal {
        let server = self.server;
        self.topology.client.run(|| {
            let socket = UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let exchange = |message: Vec<u8>| {
                socket.send_to(&message, server).unwrap();
                let mut buffer = [0u8; 2048];
                let (len, _) = socket.recv_from(&mut buffer).expect("a response");
                buffer[..len].to_vec()
            };
            let mut first = Message::builder_request(ALLOCATE, MessageWriteVec::new());
            first.add_attribute(&RequestedTransport::new(17)).unwrap();
            // Padding, so that the 401 fits the amplification limit.
            let padding = Software::new("turnx operations test, padded to earn a challenge");
            first.add_attribute(&padding.unwrap()).unwrap();
            let challenge = exchange(first.finish());
            let challenge = Message::from_bytes(&challenge).expect("a STUN answer");
            let realm = challenge.attribute::<Realm>().expect("REALM");
            let nonce = challenge.attribute::<Nonce>().expect("NONCE");
            let key =
                LongTermKeyCredentials::new(user.into(), password.into(), realm.realm().to_owned())
                    .make_key(IntegrityAlgorithm::Sha1);
            let mut signed = Message::builder_request(ALLOCATE, MessageWriteVec::new());
            signed.add_attribute(&RequestedTransport::new(17)).unwrap();
            signed.add_attribute(&Username::new(user).unwrap()).unwrap();
            signed.add_attribute(&realm).unwrap();
            signed.add_attribute(&nonce).unwrap();
            signed
                .add_message_integrity_with_key(&key, IntegrityAlgorithm::Sha1)
                .unwrap();
            let response = exchange(signed.finish());
            let response = Message::from_bytes(&response).expect("a STUN answer");
            let error = response.attribute::<ErrorCode>().ok();
            Refusal {
                code: error.as_ref().map(|error| error.code()),
                reason: error
                    .as_ref()
                    .map(|error| error.reason().to_owned())
                    .unwrap_or_default(),
                alternate: response
                    .attribute::<AlternateServer>()
                    .ok()
                    .map(|alternate| alternate.server()),
            }
        })
    }

    /// A GET to one of the daemon's HTTP servers, from the client
    /// namespace.
    fn get(&self, address: &str, path: &str) -> (u16, String) {
        http_get(&self.topology.client, address.parse().unwrap(), path)
            .unwrap_or_else(|err| panic!("GET http://{address}{path}: {err}"))
    }

    /// The value of the samples of `name` with `labels`, summed, in the
    /// daemon's `/metrics` now.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, text) = self.get(METRICS, "/metrics");
        assert_eq!(status, 200, "{text}");
        sum_samples(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}:\n{text}"))
    }
}

/// What a hand-made Allocate got.
#[derive(Debug)]
struct Refusal {
    code: Option<u16>,
    reason: String,
    alternate: Option<SocketAddr>,
}

/// The configuration file's content, written by [`Settings::render`].
#[derive(Clone)]
struct Settings {
    listen: Vec<String>,
    users: Vec<(&'static str, &'static str)>,
    secrets: Vec<&'static str>,
    /// More lines of `[server]`.
    server_extra: String,
    /// Further sections.
    extra: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: vec!["198.18.0.2:3478".into()],
            users: vec![(USER, PASSWORD)],
            secrets: Vec::new(),
            server_extra: String::new(),
            extra: String::new(),
        }
    }
}

impl Settings {
    fn render(&self, topology: &Topology, pins: &str) -> String {
        let quoted = |items: &mut dyn Iterator<Item = String>| {
            items
                .map(|item| format!("\"{item}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let users = self
            .users
            .iter()
            .map(|(user, password)| format!("{user} = \"{password}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"[server]
listen = [{listen}]
relay_addresses = ["{relayed}"]
relay_ports = [51000, 51999]
{server_extra}
[auth]
users = {{ {users} }}
secrets = [{secrets}]
[peers]
allowed = ["198.19.0.0/24"]
[xdp]
interfaces = ["{client_side}", "{pod_side}"]
pin_dir = "{pins}"
[metrics]
listen = "{METRICS}"
[log]
level = "debug"
stats_interval_secs = 0
{extra}
"#,
            listen = quoted(&mut self.listen.iter().cloned()),
            relayed = topology.relay_pod_side,
            server_extra = self.server_extra,
            extra = self.extra,
            secrets = quoted(&mut self.secrets.iter().map(|s| s.to_string())),
            client_side = topology.relay_client_if,
            pod_side = topology.relay_pod_if,
            pins = pins,
        )
    }
}

/// One turnxd, with its config file and admin socket.
struct Turnxd {
    daemon: Daemon,
    config: PathBuf,
    admin: PathBuf,
    _pins: PinDir,
    _dir: TempDir,
}

impl Turnxd {
    /// `turnxctl --admin-socket … --json <args>` in the relay namespace.
    fn turnxctl(&self, net: &Net, args: &[&str]) -> Value {
        let output = net
            .topology
            .relay
            .command("timeout")
            .args(["10", env!("CARGO_BIN_EXE_turnxctl"), "--admin-socket"])
            .arg(&self.admin)
            .arg("--json")
            .args(args)
            .output()
            .expect("running turnxctl");
        assert!(
            output.status.success(),
            "turnxctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "turnxctl {args:?} printed no JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The daemon's part of `turnxctl status --json`.
    fn status(&self, net: &Net, when: &str) -> Value {
        let status = self.turnxctl(net, &["status"]);
        assert!(
            status["daemon_error"].is_null(),
            "turnxctl status, {when}: the daemon did not answer: {}",
            status["daemon_error"]
        );
        status["daemon"].clone()
    }

    /// The allocation of the client at `client` in `turnxctl allocations
    /// --json`.
    fn allocation(&self, net: &Net, client: SocketAddr) -> Value {
        let allocations = self.turnxctl(net, &["allocations"]);
        allocations
            .as_array()
            .expect("a list of allocations")
            .iter()
            .find(|allocation| allocation["client"] == client.to_string())
            .unwrap_or_else(|| panic!("no allocation of {client} in {allocations}"))
            .clone()
    }

    /// The kernel's per-binding counters of `channel` of the allocation of
    /// `client`: (to peer, to client) packets.
    fn kernel_packets(&self, net: &Net, client: SocketAddr, channel: u16) -> (u64, u64) {
        let allocation = self.allocation(net, client);
        let bound = allocation["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .find(|bound| bound["number"] == channel)
            .unwrap_or_else(|| panic!("no channel {channel:#x} in {allocation}"))
            .clone();
        let kernel = &bound["kernel"];
        assert!(
            kernel.is_object(),
            "channel {channel:#x} has no kernel binding: {allocation}"
        );
        (
            kernel["to_peer_packets"].as_u64().unwrap(),
            kernel["to_client_packets"].as_u64().unwrap(),
        )
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling the daemon this test started, by its PID.
        unsafe { libc::kill(self.daemon.child.id() as i32, signal) };
    }

    /// Waits up to `limit` for the daemon to exit: its status and how long
    /// it took.
    fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        let child = &mut self.daemon.child;
        let status = common::wait_for(limit, || child.try_wait().expect("waiting for turnxd"))?;
        let elapsed = started.elapsed();
        self.daemon.settle(Duration::from_millis(200));
        Some((status, elapsed))
    }

    /// Stops it with SIGINT and asserts a clean exit.
    fn stop(mut self) {
        let status = self.daemon.stop(libc::SIGINT);
        assert!(status.success(), "{status}:\n{}", self.daemon.log());
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A TURN REST API credential for `user` from `secret`, minted here by
/// the published scheme (not the daemon's code): username
/// "<expiry>:<user>", password base64(HMAC-SHA1(secret, username)).
fn rest_credential(secret: &str, user: &str, ttl: u64) -> (String, String) {
    let username = format!("{}:{user}", unix_now() + ttl);
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// What coturn's client reported: messages and bytes sent and received,
/// and packets lost.
#[derive(Debug, Clone, Copy)]
struct UclientReport {
    sent: u64,
    received: u64,
    sent_bytes: u64,
    received_bytes: u64,
    lost: u64,
}

/// The number after the last `field` in uclient's output (its totals come
/// last: `tot_send_msgs=100`, `tot_send_bytes ~ 20000`, `Total lost
/// packets 0`).
fn uclient_number(text: &str, field: &str) -> Option<u64> {
    let start = text.rfind(field)? + field.len();
    text[start..]
        .trim_start_matches(['=', '~', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn prometheus_scrapes_what_coturns_client_relays() {
    let test = "prometheus_scrapes_what_coturns_client_relays";
    let tools = [
        ("turnutils_uclient", COTURN),
        ("prometheus", "Debian package prometheus"),
    ];
    let Some(net) = Net::new(test, &tools) else {
        return;
    };
    let turnxd = net.turnxd(&Settings::default(), &[]);
    let started = SystemTime::now();
    // Prometheus where a monitoring host would be: across the network.
    let prometheus = Prometheus::start(
        &net.topology.client,
        "127.0.0.1:9090".parse().unwrap(),
        "turnxd",
        &[METRICS.parse().unwrap()],
    );
    assert!(
        prometheus.wait_for_scrape_after("turnxd", started, Duration::from_secs(10)),
        "no successful scrape:\n{}",
        prometheus.log()
    );

    // coturn's client in its default mode: two sessions (RTP and RTCP),
    // each on an allocation of its own with a channel to the peer, 100
    // messages of 200 bytes each.
    let (messages, sessions) = (100u64, 2u64);
    let uclient = net
        .topology
        .client
        .command("timeout")
        .args(["60", "turnutils_uclient", "-u", USER, "-w", PASSWORD])
        .args([
            "-e",
            &net.peer.ip().to_string(),
            "-r",
            &PEER_PORT.to_string(),
        ])
        .args(["-n", &messages.to_string(), "-l", "200"])
        .arg(net.server.ip().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running turnutils_uclient");
    let mut uclient = Process(uclient);
    // Live, not at the end of a session: while uclient relays, scrapes see
    // the kernel's packets of bindings that are still installed.
    let mut live = None;
    let watching = Instant::now() + Duration::from_secs(60);
    while uclient.0.try_wait().unwrap().is_none() && Instant::now() < watching {
        let kernel_in = prometheus
            .query("sum(turnx_packets_total{side=\"client\",direction=\"in\",path=\"kernel\"})");
        let bindings = prometheus.query("turnx_kernel_bindings");
        if let (Some(packets), Some(bindings)) = (kernel_in, bindings)
            && packets > 0.0
            && bindings > 0.0
        {
            live.get_or_insert((packets, bindings));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Bounded by `timeout 60`; its output is small enough for the pipes.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut uclient.0.stdout.take().unwrap(), &mut text).unwrap();
    std::io::Read::read_to_string(&mut uclient.0.stderr.take().unwrap(), &mut text).unwrap();
    let exit = uclient.0.wait().expect("waiting for turnutils_uclient");
    eprintln!("while uclient ran, a scrape showed (kernel packets in, bindings) {live:?}");
    let ended = SystemTime::now();
    let number = |field| {
        uclient_number(&text, field)
            .unwrap_or_else(|| panic!("no {field} in uclient's output:\n{text}"))
    };
    assert!(exit.success(), "uclient failed ({exit}):\n{text}");
    let uclient = UclientReport {
        sent: number("tot_send_msgs"),
        received: number("tot_recv_msgs"),
        sent_bytes: number("tot_send_bytes"),
        received_bytes: number("tot_recv_bytes"),
        lost: number("Total lost packets"),
    };
    eprintln!("uclient reported {uclient:?}");
    assert_eq!(uclient.sent, messages * sessions, "{text}");
    let (live_packets, _) = live.expect("no scrape saw kernel packets while uclient relayed");
    assert!(
        live_packets < uclient.sent as f64,
        "{live_packets}: only at the end?"
    );

    // Settled: two successive scrapes, both begun after uclient ended,
    // give the same values.
    let queries = [
        ("up", "up{job=\"turnxd\"}"),
        (
            "allocations created",
            "sum(turnx_allocations_created_total)",
        ),
        (
            "udp allocations created",
            "sum(turnx_allocations_created_total{transport=\"udp\"})",
        ),
        ("allocations now", "sum(turnx_allocations)"),
        (
            "deleted, refreshed",
            "sum(turnx_allocations_deleted_total{reason=\"refreshed\"})",
        ),
        (
            "allocate requests",
            "sum(turnx_stun_requests_total{method=\"allocate\"})",
        ),
        (
            "allocate successes",
            "sum(turnx_stun_responses_total{method=\"allocate\",class=\"success\"})",
        ),
        (
            "client in",
            "sum(turnx_packets_total{side=\"client\",direction=\"in\"})",
        ),
        (
            "peer out",
            "sum(turnx_packets_total{side=\"peer\",direction=\"out\"})",
        ),
        (
            "peer in",
            "sum(turnx_packets_total{side=\"peer\",direction=\"in\"})",
        ),
        (
            "client out",
            "sum(turnx_packets_total{side=\"client\",direction=\"out\"})",
        ),
        (
            "client in, kernel",
            "sum(turnx_packets_total{side=\"client\",direction=\"in\",path=\"kernel\"})",
        ),
        (
            "client out, kernel",
            "sum(turnx_packets_total{side=\"client\",direction=\"out\",path=\"kernel\"})",
        ),
        (
            "client in bytes",
            "sum(turnx_bytes_total{side=\"client\",direction=\"in\"})",
        ),
        (
            "client out bytes",
            "sum(turnx_bytes_total{side=\"client\",direction=\"out\"})",
        ),
        (
            "bindings installed",
            "sum(turnx_kernel_bindings_installed_total)",
        ),
        ("ready", "turnx_ready"),
        ("draining", "turnx_draining"),
        ("kernel errors", "sum(turnx_kernel_errors_total)"),
    ];
    let read_all = || -> Vec<f64> {
        queries
            .iter()
            .map(|(_, query)| prometheus.query(query).unwrap_or(f64::NAN))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = ended;
    let mut previous: Option<Vec<f64>> = None;
    let values = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus's values did not settle within 20 s: {previous:?}\n{}",
            prometheus.log()
        );
        assert!(
            prometheus.wait_for_scrape_after("turnxd", after, Duration::from_secs(5)),
            "no scrape after uclient ended:\n{}",
            prometheus.log()
        );
        after = SystemTime::now();
        let values = read_all();
        if previous.as_ref().is_some_and(|previous| {
            previous
                .iter()
                .zip(&values)
                .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()))
        }) {
            break values;
        }
        previous = Some(values);
    };
    for ((name, query), value) in queries.iter().zip(&values) {
        eprintln!("prometheus: {name:<24} {query} = {value}");
    }
    let value = |wanted: &str| {
        let at = queries
            .iter()
            .position(|(name, _)| *name == wanted)
            .unwrap();
        values[at]
    };
    let (sent, received) = (uclient.sent as f64, uclient.received as f64);
    let context = format!("uclient: {uclient:?}\n{text}");
    assert_eq!(value("up"), 1.0);
    assert_eq!(value("ready"), 1.0);
    assert_eq!(value("draining"), 0.0);
    // uclient's default mode allocates three times over UDP (EVEN-PORT
    // and RESERVATION-TOKEN among them): two allocations carry its two
    // sessions and are deleted (Refresh 0) when it ends; the third never
    // binds a channel and stays until it expires.
    assert_eq!(value("allocations created"), 3.0, "{context}");
    assert_eq!(value("udp allocations created"), 3.0);
    assert_eq!(value("allocate successes"), 3.0);
    assert_eq!(value("deleted, refreshed"), 2.0);
    assert_eq!(value("allocations now"), 1.0);
    assert!(value("allocate requests") >= value("allocations created"));
    // Every message uclient sent reached the relay; what came back to
    // uclient left the relay; in between, nothing but what uclient counts
    // as lost.
    assert_eq!(value("client in"), sent, "{context}");
    assert!(value("client out") >= received && value("client out") <= sent);
    for side in ["peer out", "peer in"] {
        assert!(
            value(side) >= sent - uclient.lost as f64 && value(side) <= sent,
            "{side}: {} of {sent}",
            value(side)
        );
    }
    assert_eq!(
        value("client in bytes"),
        uclient.sent_bytes as f64,
        "{context}"
    );
    assert!(value("client out bytes") >= uclient.received_bytes as f64);
    // The kernel carried the channel traffic: all but the first messages,
    // which go through userspace while the neighbours resolve.
    let kernel_share = value("client in, kernel") / value("client in");
    eprintln!(
        "kernel share of client-side packets: in {kernel_share:.3}, out {:.3}",
        value("client out, kernel") / value("client out")
    );
    assert!(value("client in, kernel") > 0.0 && value("client out, kernel") > 0.0);
    assert!(kernel_share >= 0.9, "kernel share {kernel_share}");
    assert!(value("bindings installed") >= sessions as f64);
    assert_eq!(value("kernel errors"), 0.0);
    // The offload ratio of the alert rules, over the run.
    let ratio = prometheus.query(
        "sum(increase(turnx_packets_total{path=\"kernel\"}[1m])) / sum(increase(turnx_packets_total[1m]))",
    );
    eprintln!("offload ratio over the last minute: {ratio:?}");
    assert!(ratio.is_some_and(|ratio| ratio >= 0.9), "{ratio:?}");
    drop(prometheus);
    // The daemon's own account, now that uclient's bindings are gone.
    let status = turnxd.status(&net, "after uclient");
    eprintln!("turnxctl status --json: {status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["allocations"], 1, "uclient's probe: {status}");
    let offload = &status["offload"];
    assert_eq!(offload["stats"]["installed"], 3, "{status}");
    assert_eq!(offload["stats"]["removed"], 3, "{status}");
    assert_eq!(offload["bindings"], 0, "{status}");
    let kernel = offload["stats"]["relayed"]["to_peer_packets"].as_f64();
    assert_eq!(kernel, Some(value("client in, kernel")), "{status}");
    assert!(offload["counters"]["forwarded_to_peer"]["packets"].as_f64() >= kernel);
    turnxd.stop();
}

// Four shards, the kernel path off so that every datagram goes through
// one: the SO_REUSEPORT group spreads clients (one address, many ports)
// over the shards, each client's media relays in its shard, and the user
// quota counts the allocations of all of them.
#[test]
fn shards_spread_clients_relay_for_each_and_share_one_quota() {
    let test = "shards_spread_clients_relay_for_each_and_share_one_quota";
    let Some(net) = Net::new(test, &[]) else {
        return;
    };
    const CLIENTS: usize = 16;
    let settings = Settings {
        server_extra: "workers = 4".into(),
        extra: format!("[limits]\nuser_quota = {CLIENTS}\n"),
        ..Settings::default()
    };
    let turnxd = net.turnxd(&settings, &["--no-xdp"]);
    let clients: Vec<TurnClient> = (0..CLIENTS)
        .map(|_| net.bound_client(USER, PASSWORD).0)
        .collect();
    for (index, client) in clients.iter().enumerate() {
        assert_eq!(net.round_trips(client, CHANNEL, 5), 5, "client {index}");
    }
    let status = turnxd.status(&net, "with the clients bound");
    eprintln!("turnxctl status --json with {CLIENTS} clients: {status}");
    let shards: Vec<u64> = status["allocations_by_shard"]
        .as_array()
        .expect("allocations_by_shard")
        .iter()
        .map(|count| count.as_u64().unwrap())
        .collect();
    assert_eq!(shards.len(), 4, "{status}");
    assert_eq!(shards.iter().sum::<u64>(), CLIENTS as u64, "{status}");
    // All 16 in one shard has a chance of 4 in 4^16.
    assert!(
        shards.iter().filter(|&&count| count > 0).count() >= 2,
        "every client in one shard: {shards:?}"
    );
    // The metrics are the shards' sum: a warm-up (one to five tries) and
    // five round trips per client went out to the peer.
    let to_peer = net.metric(
        "turnx_packets_total",
        &[
            ("side", "peer"),
            ("direction", "out"),
            ("path", "userspace"),
        ],
    ) as usize;
    assert!(
        (6 * CLIENTS..=10 * CLIENTS).contains(&to_peer),
        "{to_peer} datagrams relayed to the peer"
    );
    assert_eq!(net.try_allocate(USER, PASSWORD), Err(486), "over the quota");
    net.topology.client.run(|| clients[0].refresh(0)).unwrap();
    assert!(
        net.try_allocate(USER, PASSWORD).is_ok(),
        "room again after one allocation ended, whatever its shard"
    );
}

#[test]
fn drain_refuses_new_allocations_and_exits_when_the_last_ends() {
    let test = "drain_refuses_new_allocations_and_exits_when_the_last_ends";
    let Some(net) = Net::new(test, &[]) else {
        return;
    };

    // 1. Drain without an alternate server, ended by the last allocation.
    let mut turnxd = net.turnxd(&Settings::default(), &[]);
    let (a, relayed) = net.bound_client(USER, PASSWORD);
    let a_address = a.socket.local_addr().unwrap();
    let allocation = turnxd.allocation(&net, a_address);
    eprintln!("turnxctl allocations --json, A: {allocation}");
    assert_eq!(allocation["username"], USER);
    assert_eq!(allocation["transport"], "udp");
    assert_eq!(
        allocation["relayed"],
        serde_json::json!([relayed.to_string()])
    );
    assert_eq!(
        allocation["permissions"],
        serde_json::json!([net.peer.ip().to_string()])
    );
    assert_eq!(allocation["channels"][0]["number"], CHANNEL);
    assert_eq!(allocation["channels"][0]["peer"], net.peer.to_string());
    assert_eq!(net.get(METRICS, "/ready"), (200, "ready\n".into()));

    turnxd.signal(libc::SIGTERM);
    let draining = common::wait_for(Duration::from_secs(2), || {
        (net.get(METRICS, "/ready") == (503, "draining\n".into())).then_some(())
    });
    assert!(
        draining.is_some(),
        "/ready: {:?}",
        net.get(METRICS, "/ready")
    );
    assert_eq!(net.get(METRICS, "/live"), (200, "ok\n".into()));
    assert_eq!(net.metric("turnx_draining", &[]), 1.0);
    assert_eq!(net.metric("turnx_ready", &[]), 0.0);
    // A new allocation is refused, with a reason.
    let refused = net.raw_allocate(USER, PASSWORD);
    eprintln!("a new Allocate while draining: {refused:?}");
    assert_eq!(refused.code, Some(508), "{refused:?}");
    assert!(
        refused.reason.to_lowercase().contains("draining"),
        "{refused:?}"
    );
    assert_eq!(refused.alternate, None);
    assert_eq!(net.try_allocate(USER, PASSWORD), Err(508));
    assert!(net.metric("turnx_refused_total", &[("cause", "draining")]) >= 2.0);
    // A keeps relaying both ways, in the kernel, and may refresh.
    let before = turnxd.kernel_packets(&net, a_address, CHANNEL);
    let rounds = 50;
    assert_eq!(
        net.round_trips(&a, CHANNEL, rounds),
        rounds,
        "{}",
        turnxd.daemon.log()
    );
    let after = turnxd.kernel_packets(&net, a_address, CHANNEL);
    eprintln!("while draining the kernel relayed A: {before:?} -> {after:?}");
    assert_eq!(after.0 - before.0, rounds as u64, "to the peer");
    assert_eq!(after.1 - before.1, rounds as u64, "to the client");
    net.topology
        .client
        .run(|| a.refresh(600))
        .expect("Refresh while draining");
    // The last allocation ends: the daemon exits.
    net.topology.client.run(|| a.refresh(0)).expect("Refresh 0");
    let (exit, took) = turnxd
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("turnxd still drains 5 s after the last allocation ended"));
    eprintln!("turnxd exited {took:?} after the last allocation ended: {exit}");
    assert!(exit.success(), "{exit}:\n{}", turnxd.daemon.log());
    // The drain timeout is 60 s: only the end of the last allocation can
    // explain an exit this soon.
    assert!(took <= Duration::from_millis(1500), "{took:?}");

    // 2. With an alternate server: 300 and ALTERNATE-SERVER; a second
    // SIGTERM stops at once.
    let alternate: SocketAddr = "198.18.0.9:3478".parse().unwrap();
    let settings = Settings {
        server_extra: format!("alternate_server = \"{alternate}\""),
        ..Settings::default()
    };
    let mut turnxd = net.turnxd(&settings, &[]);
    let (a, _) = net.bound_client(USER, PASSWORD);
    turnxd.signal(libc::SIGTERM);
    let draining = common::wait_for(Duration::from_secs(2), || {
        (net.get(METRICS, "/ready").0 == 503).then_some(())
    });
    assert!(draining.is_some(), "not draining 2 s after SIGTERM");
    let refused = net.raw_allocate(USER, PASSWORD);
    eprintln!("a new Allocate while draining, with an alternate: {refused:?}");
    assert_eq!(refused.code, Some(300), "{refused:?}");
    assert_eq!(refused.alternate, Some(alternate), "{refused:?}");
    assert_eq!(net.round_trips(&a, CHANNEL, 10), 10);
    turnxd.signal(libc::SIGTERM);
    let (exit, took) = turnxd
        .wait_exit(Duration::from_secs(5))
        .expect("turnxd still runs 5 s after a second SIGTERM");
    eprintln!("turnxd exited {took:?} after a second SIGTERM: {exit}");
    assert!(exit.success(), "{exit}");
    assert!(took <= Duration::from_secs(1), "{took:?}");

    // 3. The deadline: the allocation stays, the daemon exits on time.
    let mut turnxd = net.turnxd(&Settings::default(), &["--drain-timeout", "2"]);
    let status = turnxd.status(&net, "before any allocation");
    eprintln!("turnxctl status --json: {status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["draining"], false, "{status}");
    assert_eq!(status["allocations"], 0, "{status}");
    assert_eq!(
        status["listeners"],
        serde_json::json!([net.server.to_string()])
    );
    // An allocation without a channel, so that no kernel binding is
    // installed (see the public address test for status with one).
    let b = net.allocated_client(USER, PASSWORD);
    turnxd.signal(libc::SIGTERM);
    let draining = common::wait_for(Duration::from_secs(2), || {
        (net.get(METRICS, "/ready").0 == 503).then_some(())
    });
    assert!(
        draining.is_some(),
        "/ready: {:?}",
        net.get(METRICS, "/ready")
    );
    let status = turnxd.status(&net, "while draining");
    eprintln!("turnxctl status --json while draining: {status}");
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(status["draining"], true, "{status}");
    assert_eq!(status["allocations"], 1, "{status}");
    assert_eq!(status["allocations_by_transport"]["udp"], 1, "{status}");
    let (exit, took) = turnxd
        .wait_exit(Duration::from_secs(8))
        .expect("turnxd still runs 8 s after SIGTERM with --drain-timeout 2");
    eprintln!("with --drain-timeout 2, turnxd exited {took:?} after SIGTERM: {exit}");
    assert!(exit.success(), "{exit}");
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(4),
        "{took:?}"
    );
    // Its allocation went with it.
    let refresh = net.topology.client.run(|| b.refresh(600));
    assert!(refresh.is_err(), "refreshed after the daemon exited");
}

#[test]
fn reload_adds_a_user_and_rotates_a_secret_while_relaying() {
    let test = "reload_adds_a_user_and_rotates_a_secret_while_relaying";
    let Some(net) = Net::new(test, &[]) else {
        return;
    };
    let mut settings = Settings {
        secrets: vec!["secret-one"],
        ..Settings::default()
    };
    let mut turnxd = net.turnxd(&settings, &[]);
    let (a, _) = net.bound_client(USER, PASSWORD);
    let a_address = a.socket.local_addr().unwrap();
    let mut relayed = 0;
    let mut relay_a = |net: &Net, when: &str| {
        let rounds = 20;
        assert_eq!(net.round_trips(&a, CHANNEL, rounds), rounds, "A, {when}");
        relayed += rounds as u64;
    };
    relay_a(&net, "before any reload");
    let rest = |secret: &str, user: &str| {
        let (username, password) = rest_credential(secret, user, 600);
        net.try_allocate(&username, &password)
    };
    assert!(rest("secret-one", "app").is_ok());
    let (config, pins) = (turnxd.config.clone(), turnxd._pins.path().to_owned());
    let write = |settings: &Settings| {
        // As Kubernetes swaps a mounted file: a new file renamed into place.
        let new = config.with_extension("new");
        std::fs::write(&new, settings.render(&net.topology, &pins)).unwrap();
        std::fs::rename(&new, &config).unwrap();
    };

    // 2. A file change: bob added, the secret rotated.
    settings.users.push(("bob", "builder"));
    settings.secrets = vec!["secret-two"];
    let changed_at = Instant::now();
    write(&settings);
    assert!(
        turnxd
            .daemon
            .wait_for_line("configuration reloaded", Duration::from_secs(5)),
        "no reload within 5 s of the file change:\n{}",
        turnxd.daemon.log()
    );
    eprintln!(
        "the file change was applied after {:?}",
        changed_at.elapsed()
    );
    // No SIGHUP was sent: the file watch found it.
    let log = turnxd.daemon.log();
    assert!(!log.contains("SIGHUP"), "{log}");
    assert!(net.try_allocate("bob", "builder").is_ok(), "bob");
    assert!(rest("secret-two", "app").is_ok(), "the new secret");
    assert_eq!(rest("secret-one", "app"), Err(401), "the old secret");
    relay_a(&net, "after the file change");

    // 3. SIGHUP: carol added, the secret rotated again.
    settings.users.push(("carol", "singer"));
    settings.secrets = vec!["secret-three"];
    let lines = turnxd.daemon.log().lines().count();
    write(&settings);
    turnxd.signal(libc::SIGHUP);
    // Wait for the reload that follows the line saying SIGHUP came, with
    // no line between them about the file changing (the file watch sees
    // the change too, every 2 s, and may reload it again afterwards).
    let reloaded = common::wait_for(Duration::from_secs(3), || {
        turnxd.daemon.settle(Duration::from_millis(50));
        let log = turnxd.daemon.log();
        let fresh: Vec<&str> = log.lines().skip(lines).collect();
        let hup = fresh.iter().position(|l| l.contains("SIGHUP"))?;
        let done = fresh[hup..]
            .iter()
            .position(|l| l.contains("configuration reloaded"))?;
        Some(fresh[hup..hup + done].iter().any(|l| l.contains("changed")))
    });
    assert_eq!(
        reloaded,
        Some(false),
        "no reload on SIGHUP alone:\n{}",
        turnxd.daemon.log()
    );
    assert!(net.try_allocate("carol", "singer").is_ok(), "carol");
    assert!(net.try_allocate("bob", "builder").is_ok(), "bob");
    assert!(rest("secret-three", "app").is_ok(), "the newest secret");
    assert_eq!(rest("secret-two", "app"), Err(401), "the replaced secret");
    relay_a(&net, "after SIGHUP");
    // Let the file watch see the content it has already applied.
    turnxd.daemon.settle(Duration::from_millis(2500));
    let applied = net.metric("turnx_config_reloads_total", &[("result", "applied")]);
    eprintln!("reloads applied so far: {applied}");
    assert!(applied >= 2.0, "{applied}");
    assert_eq!(net.metric("turnx_config_last_reload_success", &[]), 1.0);
    let refused_before = net.metric("turnx_config_reloads_total", &[("result", "refused")]);

    // 4. A change that needs a restart (and a user with it): refused whole.
    let mut forbidden = settings.clone();
    forbidden.listen = vec!["198.18.0.2:3479".into()];
    forbidden.users.push(("dave", "diver"));
    write(&forbidden);
    assert!(
        turnxd
            .daemon
            .wait_for_line("configuration reload refused", Duration::from_secs(5)),
        "{}",
        turnxd.daemon.log()
    );
    let log = turnxd.daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains("configuration reload refused"))
        .unwrap();
    eprintln!("refused: {line}");
    assert!(line.contains("[server] listen"), "{line}");
    let refused = net.metric("turnx_config_reloads_total", &[("result", "refused")]);
    assert_eq!(refused, refused_before + 1.0);
    assert_eq!(net.metric("turnx_config_last_reload_success", &[]), 0.0);
    // The running configuration stands, all of it.
    assert_eq!(net.try_allocate("dave", "diver"), Err(401), "half applied");
    assert!(net.try_allocate("carol", "singer").is_ok());
    assert!(rest("secret-three", "app").is_ok());
    relay_a(&net, "after the refused reload");

    // A relayed throughout, in the kernel (its warm-up aside).
    let (to_peer, to_client) = turnxd.kernel_packets(&net, a_address, CHANNEL);
    eprintln!(
        "A: {relayed} round trips; the kernel relayed {to_peer} to the peer, {to_client} back"
    );
    assert!(
        to_peer >= relayed && to_client >= relayed,
        "{to_peer} {to_client} of {relayed}"
    );
    turnxd.stop();
}

#[test]
fn a_public_address_is_advertised_while_the_kernel_carries_the_media() {
    let test = "a_public_address_is_advertised_while_the_kernel_carries_the_media";
    let Some(net) = Net::new(test, &[]) else {
        return;
    };
    // On no interface of the relay: as a node's public IP DNATed to it.
    let public = "198.18.77.1";
    let secret = "public-secret";
    let settings = Settings {
        secrets: vec![secret],
        ..Settings::default()
    };
    let turnxd = net.turnxd(
        &settings,
        &[
            "--public-address",
            public,
            "--credentials-listen",
            CREDENTIALS,
        ],
    );
    let (client, advertised) = net.bound_client(USER, PASSWORD);
    let client_address = client.socket.local_addr().unwrap();
    let allocation = turnxd.allocation(&net, client_address);
    eprintln!("XOR-RELAYED-ADDRESS {advertised}; turnxctl allocations --json: {allocation}");
    let bound: SocketAddr = allocation["relayed"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(advertised.ip().to_string(), public);
    assert_eq!(bound.ip().to_string(), net.topology.relay_pod_side);
    assert_eq!(advertised.port(), bound.port());
    assert_eq!(
        allocation["advertised"],
        serde_json::json!([advertised.to_string()])
    );
    // A peer of its own in the pod namespace: what it receives comes from
    // the bound address, and it answers there.
    let sink: SocketAddr = format!("{}:3490", net.topology.pod_ip).parse().unwrap();
    let sink_socket = net.topology.pod.run(|| UdpSocket::bind(sink).unwrap());
    sink_socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let sink_channel = CHANNEL + 1;
    net.topology
        .client
        .run(|| client.channel_bind(sink_channel, sink))
        .expect("ChannelBind to the sink");
    let messages = 50;
    let mut sources = std::collections::BTreeSet::new();
    let mut echoed = 0;
    for i in 0..messages {
        let data = format!("to the sink {i}");
        let frame = testkit::frame::channel_data(sink_channel, data.as_bytes(), false);
        net.topology
            .client
            .run(|| client.socket.send_to(&frame, net.server))
            .unwrap();
        let mut buffer = [0u8; 2048];
        let Ok((len, from)) = sink_socket.recv_from(&mut buffer) else {
            continue;
        };
        sources.insert(from);
        assert_eq!(&buffer[..len], data.as_bytes(), "what the sink received");
        sink_socket.send_to(&buffer[..len], from).unwrap();
        let mut reply = [0u8; 2048];
        if let Ok(len) = net.topology.client.run(|| client.socket.recv(&mut reply))
            && reply[..len] == frame[..]
        {
            echoed += 1;
        }
    }
    eprintln!("the sink heard from {sources:?}; {echoed} of {messages} came back");
    assert_eq!(sources.into_iter().collect::<Vec<_>>(), vec![bound]);
    assert_eq!(echoed, messages);
    // The echoing peer too, on the first channel.
    assert_eq!(net.round_trips(&client, CHANNEL, 50), 50);
    let (to_peer, to_client) = turnxd.kernel_packets(&net, client_address, sink_channel);
    eprintln!("the kernel relayed {to_peer} to the sink and {to_client} back");
    // The first datagram may go through userspace while the neighbours
    // resolve.
    assert!(
        to_peer >= messages - 1 && to_client >= messages - 1,
        "{to_peer} {to_client}"
    );
    let (to_peer, to_client) = turnxd.kernel_packets(&net, client_address, CHANNEL);
    eprintln!("and {to_peer} to turnutils_peer and {to_client} back");
    assert!(to_peer >= 50 && to_client >= 50);

    // Applications are handed the public address.
    let (code, body) = net.get(CREDENTIALS, "/?service=turn&username=app");
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    eprintln!("the credential service: {answer}");
    let uris = answer["uris"].as_array().unwrap();
    assert!(
        uris.contains(&Value::from(format!("turn:{public}:3478?transport=udp"))),
        "{answer}"
    );
    assert!(!body.contains(&net.topology.relay_pod_side), "{answer}");

    // The daemon's status, with two kernel bindings installed.
    let status = turnxd.status(&net, "with kernel bindings installed");
    eprintln!("turnxctl status --json: {status}");
    assert_eq!(
        status["public_addresses"],
        serde_json::json!([public]),
        "{status}"
    );
    assert_eq!(
        status["relay_addresses"],
        serde_json::json!([net.topology.relay_pod_side]),
        "{status}"
    );
    assert_eq!(status["allocations"], 1, "{status}");
    let offload = &status["offload"];
    assert!(offload["bindings"].as_u64() >= Some(2), "{status}");
    assert!(
        offload["counters"]["forwarded_to_peer"]["packets"].as_u64() >= Some(2 * messages),
        "{status}"
    );
    turnxd.stop();
}

#[test]
fn credentials_from_the_service_work_for_the_client_and_chromium() {
    let test = "credentials_from_the_service_work_for_the_client_and_chromium";
    let Some(net) = Net::new(test, &[("chromium", "Debian package chromium")]) else {
        return;
    };
    let secret = "service-secret";
    // No static user: only the service's credentials can allocate. The
    // URIs are given: derived ones name the relay address (the spec's
    // rule), which clients here cannot reach, since turnxd listens on
    // another address of the relay.
    let settings = Settings {
        users: Vec::new(),
        extra: format!(
            "[credentials]\nuris = [\"turn:{server}?transport=udp\", \"turn:{server}?transport=tcp\"]\n\
             ice_transport_policy = \"relay\"\n",
            server = net.server
        ),
        ..Settings::default()
    };
    let turnxd = net.turnxd(
        &settings,
        &[
            "--static-auth-secret",
            secret,
            "--credentials-listen",
            CREDENTIALS,
        ],
    );

    let asked_at = unix_now();
    let (code, body) = net.get(CREDENTIALS, "/?service=turn&username=alice&ttl=600");
    assert_eq!(code, 200, "{body}");
    let credential: Value = serde_json::from_str(&body).unwrap();
    eprintln!("GET /?service=turn&username=alice&ttl=600: {credential}");
    let username = credential["username"].as_str().unwrap();
    let password = credential["password"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    let expiry: u64 = expiry.parse().unwrap();
    assert_eq!(user, "alice");
    assert!(
        (asked_at + 599..=unix_now() + 601).contains(&expiry),
        "{expiry}"
    );
    assert_eq!(credential["ttl"], 600);
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(password, expected, "not the REST API scheme");
    let udp_uri = Value::from(format!("turn:{}?transport=udp", net.server));
    let tcp_uri = Value::from(format!("turn:{}?transport=tcp", net.server));
    let uris = credential["uris"].as_array().unwrap();
    assert!(
        uris.contains(&udp_uri) && uris.contains(&tcp_uri),
        "{credential}"
    );
    // The project's client allocates with it, and relays in the kernel.
    let (client, _) = net.bound_client(username, password);
    assert_eq!(net.round_trips(&client, CHANNEL, 20), 20);
    let client_address = client.socket.local_addr().unwrap();
    let allocation = turnxd.allocation(&net, client_address);
    assert_eq!(allocation["username"], username);
    let (to_peer, to_client) = turnxd.kernel_packets(&net, client_address, CHANNEL);
    eprintln!("alice's service credential: the kernel relayed {to_peer} and {to_client}");
    assert!(to_peer >= 20 && to_client >= 20);

    // The service's other answers.
    let (code, body) = net.get(CREDENTIALS, "/ice?service=turn&username=bob&ttl=60");
    assert_eq!(code, 200, "{body}");
    let ice: Value = serde_json::from_str(&body).unwrap();
    eprintln!("GET /ice: {ice}");
    assert_eq!(ice["iceTransportPolicy"], "relay");
    let server = &ice["iceServers"][0];
    assert!(
        server["urls"].as_array().unwrap().contains(&udp_uri),
        "{ice}"
    );
    assert!(
        server["username"].as_str().unwrap().ends_with(":bob"),
        "{ice}"
    );
    assert!(server["credential"].is_string(), "{ice}");
    let (code, body) = net.get(CREDENTIALS, "/?service=turn&ttl=99999999");
    assert_eq!(code, 200, "{body}");
    let capped: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(capped["ttl"], 604800, "capped at max_ttl_secs: {capped}");
    assert!(
        capped["username"].as_str().unwrap().ends_with(":turnx"),
        "{capped}"
    );
    let (code, body) = net.get(CREDENTIALS, "/?service=stun");
    assert_eq!(code, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    assert_eq!(net.get(CREDENTIALS, "/nowhere").0, 404);
    let post = http_request(
        &net.topology.client,
        CREDENTIALS.parse().unwrap(),
        "POST",
        "/",
    );
    assert_eq!(post.unwrap().0, 405);

    // Chromium: the page asks its own origin for /ice, which the page
    // server (the application) passes on to the internal service.
    let page = browser::PageServer::start_proxying(
        &net.topology.client,
        include_str!("browser/ice.html"),
        "/ice",
        CREDENTIALS.parse().unwrap(),
    );
    let messages = 20;
    let url = format!(
        "http://127.0.0.1:{}/?username=browser&ttl=600&messages={messages}&timeout_ms=40000",
        page.port
    );
    let chromium = browser::Browser::open(&net.topology.client, &url, &[]);
    let Some(report) = page.result(Duration::from_secs(60)) else {
        panic!(
            "the page reported nothing\n--- chromium:\n{}\n--- turnxd:\n{}",
            chromium.log_tail(),
            turnxd.daemon.log()
        );
    };
    let report: Value = serde_json::from_str(&report).expect("the page's JSON");
    eprintln!("the page: {report}");
    assert_eq!(
        report["ok"],
        true,
        "{report}\n--- turnxd:\n{}",
        turnxd.daemon.log()
    );
    let received = report["received"].as_array().unwrap();
    assert_eq!(received.len(), messages);
    for (i, message) in received.iter().enumerate() {
        assert_eq!(message, &Value::from(format!("echo message {i}")));
    }
    let handed = &report["ice"]["iceServers"][0];
    assert!(
        handed["username"].as_str().unwrap().ends_with(":browser"),
        "{report}"
    );
    for pair in report["pairs"].as_array().unwrap() {
        assert_eq!(pair["state"], "succeeded", "{pair}");
        assert_eq!(
            (&pair["local"], &pair["remote"]),
            (&"relay".into(), &"relay".into()),
            "{pair}"
        );
    }
    drop(chromium);
    // Chromium's allocations were made with the credential it was handed.
    let created = net.metric("turnx_allocations_created_total", &[]);
    eprintln!("allocations created in all: {created}");
    assert!(created >= 3.0, "{created}");
    turnxd.stop();
}
