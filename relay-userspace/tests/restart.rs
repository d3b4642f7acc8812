//! Media survives a daemon restart: turnxd relays 100 bound channels at
//! 1000 datagrams a second each way (a client namespace, turnxd's relay
//! namespace, a pod namespace with plain veths), and is restarted in the
//! middle of it three ways: a handover (`turnxctl stop --handover`, then a
//! new turnxd), a crash (SIGKILL, then a new turnxd) and an upgrade (a
//! handover on SIGTERM, as a DaemonSet's rolling update sends it, to a
//! turnxd binary with another version string). Not one
//! datagram may be lost, each allocation must answer a Refresh afterwards,
//! and Send indications must be relayed again. Also: a binding left
//! without any daemon stops relaying at its expiry, and pinned maps of
//! another shape are refused, and `turnxctl stop --detach` leaves no pin
//! and no handover file behind.

mod common;

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Daemon, Netns, PinDir, TempDir, Topology};
use testkit::client::TurnClient;

const CLIENTS: usize = 100;
/// Datagrams a second from the clients to the peer, echoed back.
const RATE: u64 = 1000;
/// How long each load runs, and when in it the restart starts.
const LOAD: Duration = Duration::from_secs(5);
const RESTART_AT: Duration = Duration::from_millis(1500);
const CHANNEL: u16 = 0x4000;
/// The peer's ports: channel traffic, and Send indications.
const ECHO_PORT: u16 = 3480;
const SEND_PORT: u16 = 3481;

#[test]
fn bound_channels_lose_nothing_across_handover_crash_and_upgrade() {
    let test = "bound_channels_lose_nothing_across_handover_crash_and_upgrade";
    let Some(object) = common::xdp_object_or_skip(test) else {
        return;
    };
    let relay = RelayNode::new();
    // Pinned maps of another shape (a smaller max_bindings) where the
    // daemon's go: it must refuse them and make its own.
    relay.leave_stale_maps(object);
    let mut daemon = relay.start(Path::new(env!("CARGO_BIN_EXE_turnxd")));
    assert!(
        daemon.wait_for_line("refusing the pinned map", Duration::from_secs(1)),
        "stale maps must be refused:\n{}",
        daemon.log()
    );
    let echo = Echo::start(&relay.topology.pod, &relay.topology.pod_ip);
    let clients = relay.clients();
    relay.wait_for_kernel_and_file(&mut daemon, clients.len());
    let upgrade = relay.upgraded_binary();

    for (round, (how, binary)) in (1..).zip([
        (Restart::Handover, Path::new(env!("CARGO_BIN_EXE_turnxd"))),
        (Restart::Crash, Path::new(env!("CARGO_BIN_EXE_turnxd"))),
        // As a DaemonSet's rolling update does it: SIGTERM, with
        // [handover] on_sigterm = "handover".
        (Restart::Sigterm, upgrade.as_path()),
    ]) {
        let case = if binary == upgrade.as_path() {
            "upgrade".to_owned()
        } else {
            format!("{how:?}")
        };
        let (before, after) = relay.kernel_relayed();
        let (mut next, lost) = relay.restart_under_load(&clients, &echo, daemon, how, binary);
        assert!(
            next.wait_for_line(
                &format!("took over {CLIENTS} allocations"),
                Duration::from_secs(1)
            ),
            "{case}: not every allocation was taken over:\n{}",
            next.log()
        );
        assert_eq!(
            lost,
            Lost::default(),
            "{case}: datagrams lost:\n{}",
            next.log()
        );
        let (to_peer, to_client) = relay.kernel_relayed();
        let carried = RATE * LOAD.as_secs();
        assert!(
            to_peer - before >= carried && to_client - after >= carried,
            "{case}: the kernel relayed {} and {} of {carried} each way",
            to_peer - before,
            to_client - after
        );
        // Every allocation is this daemon's now: it refreshes, and its
        // relayed socket relays Send indications again.
        let peer = SocketAddr::new(relay.pod_ip(), SEND_PORT);
        for (index, client) in clients.iter().enumerate() {
            client
                .refresh(600)
                .unwrap_or_else(|err| panic!("{case}: refreshing allocation {index}: {err}"));
            let data = format!("send {index}");
            let echoed = client
                .send_round_trip(peer, data.as_bytes(), Duration::from_secs(2))
                .unwrap();
            assert_eq!(
                echoed.as_deref(),
                Some(data.as_bytes()),
                "{case}: Send of allocation {index}"
            );
        }
        if binary == upgrade.as_path() {
            let version = upgraded_version();
            assert!(
                next.log().contains(&format!("{version} starting")),
                "the upgrade runs the other binary:\n{}",
                next.log()
            );
        }
        relay.assert_no_xdp_errors();
        // The kernel's counters of each binding go on across restarts:
        // each load sends every channel RATE * LOAD / CLIENTS datagrams.
        let least = relay.least_kernel_packets_per_channel();
        let sent = RATE * LOAD.as_secs() / CLIENTS as u64 * round;
        assert!(
            least >= sent,
            "{case}: a channel's kernel counters show {least} datagrams of {sent}"
        );
        daemon = next;
    }
    // A stop that is no handover ends everything and removes every pin.
    let output = relay.turnxctl(&["stop", "--detach"]);
    assert!(output.status.success(), "turnxctl stop --detach");
    let exit = daemon.stop(0);
    assert!(
        exit.success(),
        "turnxd exited with {exit}:\n{}",
        daemon.log()
    );
    assert!(!relay.pins.0.exists(), "the pins are gone after the stop");
    assert!(!relay.state.exists(), "and the handover file");
}

#[test]
fn an_ownerless_binding_stops_at_its_expiry() {
    let test = "an_ownerless_binding_stops_at_its_expiry";
    let Some(object) = common::xdp_object_or_skip(test) else {
        return;
    };
    let topology = Topology::new();
    topology.relay.enable_forwarding();
    // Neighbours resolved (a datagram to each end makes the relay ask):
    // without a daemon nobody would resolve them.
    topology.relay.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for ip in [topology.pod_ip.as_str(), "198.18.0.1"] {
            socket.send_to(b"hello", format!("{ip}:9")).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let pins = PinDir::new();
    let options = turnx::xdp::LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..Default::default()
    };
    let echo = Echo::start(&topology.pod, &topology.pod_ip);
    let client = topology
        .client
        .run(|| UdpSocket::bind("198.18.0.1:40000").unwrap());
    let server: SocketAddr = format!("{}:3478", topology.relay_client_side)
        .parse()
        .unwrap();
    let lifetime = Duration::from_secs(3);
    topology.relay.run(|| {
        let mut xdp = turnx::xdp::XdpRelay::load_with(object, "info", &options).unwrap();
        xdp.set_listen_ports(&[3478]).unwrap();
        for interface in [&topology.relay_client_if, &topology.relay_pod_if] {
            xdp.attach(interface, turnx::config::XdpMode::Native)
                .unwrap();
            xdp.attach_tc(interface).unwrap();
        }
        xdp.refresh_egress().unwrap();
        let binding = turnx::xdp::KernelBinding {
            client: client.local_addr().unwrap(),
            server,
            channel: CHANNEL,
            relayed: format!("{}:51000", topology.relay_pod_side)
                .parse()
                .unwrap(),
            peer: SocketAddr::new(topology.pod_ip.parse().unwrap(), ECHO_PORT),
            slot: 0,
            buckets: Default::default(),
            expires: relay_common::expiry::expires_after(
                monotonic_ns(),
                lifetime.as_nanos() as u64,
            ),
        };
        xdp.install(&binding).unwrap();
        // As a daemon leaves it for a handover that never comes.
        xdp.leave_for_handover();
    });
    let start = Instant::now();
    let mut arrivals = Vec::new();
    for seq in 0u32.. {
        let at = start + Duration::from_millis(200) * seq;
        if at > start + Duration::from_secs(6) {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let payload = Echo::payload(0, seq);
        let message = testkit::frame::channel_data(CHANNEL, &payload, false);
        client.send_to(&message, server).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        if echo.seen(0, seq) {
            arrivals.push(start.elapsed());
        }
    }
    // The expiry is rounded up to the next tick of about 1.07 s.
    let end = lifetime + Duration::from_millis(1100);
    assert!(
        arrivals
            .first()
            .is_some_and(|at| *at < Duration::from_secs(1)),
        "the binding relays while it lives: {arrivals:?}"
    );
    assert!(
        arrivals
            .iter()
            .all(|at| *at <= end + Duration::from_millis(300)),
        "nothing is relayed after its expiry ({end:?}): {arrivals:?}"
    );
    assert!(
        arrivals.len() >= 10,
        "most datagrams before it are relayed: {arrivals:?}"
    );
}

/// CLOCK_MONOTONIC in ns, the clock of the kernel's binding expiries.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    /// `turnxctl stop --handover`, then the next turnxd.
    Handover,
    /// SIGKILL, then the next turnxd.
    Crash,
    /// SIGTERM (a handover, as configured), then the next turnxd.
    Sigterm,
}

/// Datagrams that did not arrive, by direction, with a few examples.
#[derive(Debug, Default, PartialEq, Eq)]
struct Lost {
    to_peer: usize,
    to_client: usize,
    examples: Vec<(u16, u32)>,
}

/// The relay namespace where turnxd runs, restart after restart, and the
/// paths its daemons share.
struct RelayNode {
    topology: Topology,
    config: PathBuf,
    state: PathBuf,
    admin: PathBuf,
    pins: PinDir,
    dir: TempDir,
}

impl RelayNode {
    fn new() -> RelayNode {
        let topology = Topology::new();
        topology.relay.enable_forwarding();
        let pins = PinDir::new();
        let dir = TempDir::new("turnxrs");
        let config = dir.0.join("turnxd.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = ["{server}:3478"]
relay_addresses = ["{relayed}"]
relay_ports = [51000, 51999]
[auth]
users = {{ alice = "wonderland" }}
[peers]
allowed = ["198.19.0.0/24"]
[xdp]
interfaces = ["{client_side}", "{pod_side}"]
pin_dir = "{pins}"
[handover]
on_sigterm = "handover"
[log]
stats_interval_secs = 0
"#,
                server = topology.relay_client_side,
                relayed = topology.relay_pod_side,
                client_side = topology.relay_client_if,
                pod_side = topology.relay_pod_if,
                pins = pins.path(),
            ),
        )
        .unwrap();
        RelayNode {
            config,
            state: dir.0.join("state").join("state.json"),
            admin: dir.0.join("turnxd.sock"),
            topology,
            pins,
            dir,
        }
    }

    fn pod_ip(&self) -> std::net::IpAddr {
        self.topology.pod_ip.parse().unwrap()
    }

    /// Starts `binary` as turnxd, with the shared configuration, pins,
    /// handover file and admin socket, and waits until it is ready.
    fn start(&self, binary: &Path) -> Daemon {
        // nsenter, not `ip netns exec`: that one mounts a /sys of its own,
        // and the pins would go with it. On a node the pins live on the
        // host's bpffs (the manifests' hostPath), as here.
        let mut command = std::process::Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.topology.relay.name))
            .arg("--")
            .arg(binary)
            .args(["--config", self.config.to_str().unwrap()])
            .env("TURNXD_ADMIN_SOCKET", &self.admin)
            .env("TURNXD_STATE_FILE", &self.state);
        Daemon::spawn(command).ready("turnxd ready")
    }

    /// Runs turnxctl with `args` in the relay namespace, on the daemons'
    /// admin socket.
    fn turnxctl(&self, args: &[&str]) -> std::process::Output {
        self.topology
            .relay
            .command(env!("CARGO_BIN_EXE_turnxctl"))
            .args(args)
            .env("TURNXD_ADMIN_SOCKET", &self.admin)
            .output()
            .expect("running turnxctl")
    }

    /// Pinned maps of another shape where turnxd pins its own.
    fn leave_stale_maps(&self, object: &[u8]) {
        let options = turnx::xdp::LoadOptions {
            pin_dir: Some(self.pins.0.clone()),
            max_bindings: Some(4),
            ..Default::default()
        };
        drop(turnx::xdp::XdpRelay::load_with(object, "info", &options).unwrap());
    }

    /// A copy of turnxd whose version string differs, as an upgrade's.
    fn upgraded_binary(&self) -> PathBuf {
        let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_turnxd")).unwrap();
        let (old, new) = (current_version(), upgraded_version());
        let mut replaced = 0;
        let mut at = 0;
        while let Some(found) = find(&bytes[at..], old.as_bytes()) {
            let start = at + found;
            bytes[start..start + new.len()].copy_from_slice(new.as_bytes());
            at = start + new.len();
            replaced += 1;
        }
        assert!(replaced > 0, "no {old:?} in turnxd");
        let path = self.dir.0.join("turnxd-upgraded");
        std::fs::write(&path, bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// CLIENTS clients, each with an allocation and CHANNEL bound to the
    /// echo, after one round trip each (which resolves the neighbours).
    fn clients(&self) -> Vec<TurnClient> {
        let server: SocketAddr = format!("{}:3478", self.topology.relay_client_side)
            .parse()
            .unwrap();
        let peer = SocketAddr::new(self.pod_ip(), ECHO_PORT);
        self.topology.client.run(|| {
            (0..CLIENTS)
                .map(|index| {
                    let socket = UdpSocket::bind("198.18.0.1:0").unwrap();
                    let client =
                        TurnClient::connect(socket, server, "alice", "wonderland").expect("a 401");
                    client.allocate(false).expect("an allocation");
                    client.channel_bind(CHANNEL, peer).expect("ChannelBind");
                    let payload = Echo::payload(index as u16, u32::MAX);
                    let echo = client
                        .channel_round_trip(CHANNEL, &payload, Duration::from_secs(2))
                        .unwrap();
                    assert!(echo.is_some(), "warm-up round trip of client {index}");
                    client
                })
                .collect()
        })
    }

    /// Waits until the handover file holds every allocation and the kernel
    /// every binding.
    fn wait_for_kernel_and_file(&self, daemon: &mut Daemon, allocations: usize) {
        let written = common::wait_for(Duration::from_secs(5), || {
            let text = std::fs::read(&self.state).ok()?;
            let state: serde_json::Value = serde_json::from_slice(&text).ok()?;
            let count: usize = state["shards"]
                .as_array()?
                .iter()
                .filter_map(|shard| shard.as_array().map(Vec::len))
                .sum();
            (count == allocations).then_some(())
        });
        assert!(
            written.is_some(),
            "the handover file holds every allocation:\n{}",
            daemon.log()
        );
        let installed = common::wait_for(Duration::from_secs(5), || {
            let status = self.turnxctl(&["status", "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
            let bindings = status["daemon"]["offload"]["bindings"].as_u64()?;
            (bindings as usize >= allocations).then_some(())
        });
        assert!(
            installed.is_some(),
            "every channel is in the kernel:\n{}",
            daemon.log()
        );
    }

    /// The fewest datagrams the kernel relayed to the peer on any one
    /// channel, by `turnxctl allocations`.
    fn least_kernel_packets_per_channel(&self) -> u64 {
        let output = self.turnxctl(&["allocations", "--json"]);
        let allocations: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let allocations = allocations.as_array().cloned().unwrap_or_default();
        assert_eq!(allocations.len(), CLIENTS, "{allocations:?}");
        allocations
            .iter()
            .map(|allocation| {
                allocation["channels"][0]["kernel"]["to_peer_packets"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0)
    }

    /// What the kernel relayed so far, to peers and to clients.
    fn kernel_relayed(&self) -> (u64, u64) {
        let status = common::turnxctl_status(&self.topology.relay, &self.topology.relay_client_if);
        let counters = &status["turnx"]["counters"];
        let packets = |class: &str| counters[class]["packets"].as_u64().unwrap_or(0);
        (packets("forwarded_to_peer"), packets("forwarded_to_client"))
    }

    /// Asserts that no XDP error counter of the relay's interfaces moved.
    fn assert_no_xdp_errors(&self) {
        let interfaces = [&self.topology.relay_client_if, &self.topology.relay_pod_if];
        common::assert_no_driver_xdp_errors(&self.topology.relay, &interfaces);
    }

    /// Runs the load, restarts `daemon` as `how` (the next one runs
    /// `binary`) in the middle of it, and returns the next daemon and what
    /// was lost.
    fn restart_under_load(
        &self,
        clients: &[TurnClient],
        echo: &Echo,
        mut daemon: Daemon,
        how: Restart,
        binary: &Path,
    ) -> (Daemon, Lost) {
        echo.clear();
        let received = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let server: SocketAddr = format!("{}:3478", self.topology.relay_client_side)
            .parse()
            .unwrap();
        let total = RATE * LOAD.as_secs();
        let next = std::thread::scope(|scope| {
            for client in clients {
                let socket = client.socket.try_clone().unwrap();
                let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
                scope.spawn(move || receive_echoes(&socket, &received, &stop));
            }
            let sender = scope.spawn(|| {
                let start = Instant::now();
                for n in 0..total {
                    let at = start + LOAD.mul_f64(n as f64 / total as f64);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let index = (n % CLIENTS as u64) as usize;
                    let payload = Echo::payload(index as u16, n as u32);
                    let message = testkit::frame::channel_data(CHANNEL, &payload, false);
                    clients[index].socket.send_to(&message, server).unwrap();
                }
            });
            std::thread::sleep(RESTART_AT);
            let stopping = Instant::now();
            match how {
                Restart::Handover => {
                    let output = self.turnxctl(&["stop", "--handover"]);
                    assert!(
                        output.status.success(),
                        "turnxctl stop --handover: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    let exit = daemon.stop(0);
                    assert!(
                        exit.success(),
                        "turnxd exited with {exit}:\n{}",
                        daemon.log()
                    );
                    assert!(daemon.log().contains("handed over:"), "{}", daemon.log());
                }
                Restart::Crash => {
                    daemon.stop(libc::SIGKILL);
                }
                Restart::Sigterm => {
                    let exit = daemon.stop(libc::SIGTERM);
                    assert!(
                        exit.success(),
                        "turnxd exited with {exit}:\n{}",
                        daemon.log()
                    );
                    assert!(daemon.log().contains("handed over:"), "{}", daemon.log());
                }
            }
            let next = self.start(binary);
            eprintln!(
                "{how:?}: the next turnxd was ready {:?} after the stop began",
                stopping.elapsed()
            );
            sender.join().unwrap();
            // What is in flight arrives.
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::SeqCst);
            next
        });
        let received = received.lock().unwrap();
        let mut lost = Lost::default();
        for n in 0..total {
            let key = ((n % CLIENTS as u64) as u16, n as u32);
            let to_peer = !echo.seen(key.0, key.1);
            let to_client = !received.contains(&key);
            lost.to_peer += usize::from(to_peer);
            lost.to_client += usize::from(to_client);
            if (to_peer || to_client) && lost.examples.len() < 5 {
                lost.examples.push(key);
            }
        }
        (next, lost)
    }
}

/// Records the (client, sequence) of every echo that comes back on
/// `socket`, until `stop`.
fn receive_echoes(socket: &UdpSocket, received: &Mutex<HashSet<(u16, u32)>>, stop: &AtomicBool) {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, _)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        // ChannelData: channel, length, then the echoed payload.
        if len >= 4 + Echo::PAYLOAD
            && let Some(key) = Echo::key(&buffer[4..4 + Echo::PAYLOAD])
        {
            received.lock().unwrap().insert(key);
        }
    }
    // Back to what the client's requests expect.
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
}

/// The peer: in the pod namespace, it echoes what arrives on its channel
/// port and its Send port, and remembers what came to the channel port.
struct Echo {
    seen: Arc<Mutex<HashSet<(u16, u32)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Echo {
    const PAYLOAD: usize = 10;
    const MAGIC: &[u8; 4] = b"rst!";

    fn start(pod: &Netns, ip: &str) -> Echo {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in [ECHO_PORT, SEND_PORT] {
            let socket = pod.run(|| UdpSocket::bind(format!("{ip}:{port}")).unwrap());
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    if port == ECHO_PORT
                        && let Some(key) = Echo::key(&buffer[..len])
                    {
                        seen.lock().unwrap().insert(key);
                    }
                    let _ = socket.send_to(&buffer[..len], from);
                }
            }));
        }
        Echo {
            seen,
            stop,
            threads,
        }
    }

    fn payload(client: u16, seq: u32) -> Vec<u8> {
        let mut payload = Self::MAGIC.to_vec();
        payload.extend_from_slice(&client.to_be_bytes());
        payload.extend_from_slice(&seq.to_be_bytes());
        payload
    }

    fn key(payload: &[u8]) -> Option<(u16, u32)> {
        if payload.len() != Self::PAYLOAD || &payload[..4] != Self::MAGIC {
            return None;
        }
        let client = u16::from_be_bytes([payload[4], payload[5]]);
        let seq = u32::from_be_bytes([payload[6], payload[7], payload[8], payload[9]]);
        Some((client, seq))
    }

    fn seen(&self, client: u16, seq: u32) -> bool {
        self.seen.lock().unwrap().contains(&(client, seq))
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// turnxd's version string, as its binary holds it.
fn current_version() -> String {
    concat!("turnx ", env!("CARGO_PKG_VERSION")).to_owned()
}

/// The same, of the same length, with another last digit.
fn upgraded_version() -> String {
    let mut version = current_version();
    let last = version.pop().unwrap();
    version.push(if last == '9' { '8' } else { '9' });
    version
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
