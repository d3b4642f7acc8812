//! The configurations compared, and the TURN servers among them: started in
//! the relay namespace pinned to the relay core, given bindings through a
//! real TURN exchange, stopped by PID.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testkit::client::TurnClient;

use crate::{
    cpu,
    flows::Binding,
    topology::{
        CLIENT_V4, POD_V4, RELAY_CLIENT_SIDE_V4, RELAY_POD_SIDE_V4, RELAY_POD_SIDE_V6, Topology,
    },
};

/// The TURN listen port of both servers.
pub const TURN_PORT: u16 = 3478;
/// The benchmark's TURN account.
pub const USERNAME: &str = "bench";
/// Its password.
pub const PASSWORD: &str = "bench-password";
/// Channels per allocation when many bindings are needed (RFC 8656 allows
/// 0x4000 to 0x4FFF).
pub const CHANNELS_PER_ALLOCATION: usize = 4000;
/// First peer port in the pod; binding `i` of an allocation uses this + i.
pub const FIRST_PEER_PORT: u16 = 10_000;
/// First client port of the measured bindings; allocation `a` uses this + a.
pub const FIRST_CLIENT_PORT: u16 = 20_000;

/// One configuration in the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Relay {
    /// turnxd with the XDP media plane (and the tc engine beside it).
    XdpOffload,
    /// turnxd with its tc engine alone (`--engine tc`).
    TcOffload,
    /// turnxd with XDP off: every packet through userspace.
    Userspace,
    /// coturn from the Debian package.
    Coturn,
    /// turnxd as it starts by default (both engines), with the pod's veth
    /// as a node has it: no XDP program, a pod's offloads. XDP cannot
    /// deliver there, so the tc engine relays what XDP passes on, straight
    /// into the pod's namespace.
    NodeTurnx,
    /// coturn with the pod's veth as a node has it.
    NodeCoturn,
    /// No TURN: the relay namespace routes the delivered datagrams.
    KernelForwarding,
    /// No TURN: an XDP program redirects frames between the relay's veths
    /// unchanged, the most any XDP forwarder can do here.
    XdpRedirect,
    /// No TURN: a minimal XDP forwarder between the relay's veths (reads
    /// the headers, swaps the MACs, decrements the TTL with an incremental
    /// checksum update, redirects): the fair ceiling of a relay that
    /// rewrites headers.
    XdpForward,
}

impl Relay {
    /// Whether BPF programs on the relay's interfaces relay the packets
    /// (and their own cost can be measured in place).
    pub fn relays_in_bpf(self) -> bool {
        matches!(
            self,
            Relay::XdpOffload
                | Relay::TcOffload
                | Relay::NodeTurnx
                | Relay::XdpRedirect
                | Relay::XdpForward
        )
    }

    /// The benchmark's ceiling program this configuration attaches, if it
    /// is one of the ceilings.
    pub fn ceiling_program(self) -> Option<&'static str> {
        match self {
            Relay::XdpRedirect => Some(relay_common::bench::REDIRECT_PROGRAM),
            Relay::XdpForward => Some(relay_common::bench::FORWARD_PROGRAM),
            _ => None,
        }
    }

    /// Every configuration, in table order.
    pub const ALL: [Relay; 9] = [
        Relay::XdpOffload,
        Relay::TcOffload,
        Relay::Userspace,
        Relay::Coturn,
        Relay::NodeTurnx,
        Relay::NodeCoturn,
        Relay::KernelForwarding,
        Relay::XdpRedirect,
        Relay::XdpForward,
    ];

    /// Name in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Relay::XdpOffload => "turnx XDP",
            Relay::TcOffload => "turnx tc",
            Relay::Userspace => "turnx userspace",
            Relay::Coturn => "coturn",
            Relay::NodeTurnx => "turnx, pod veth as on a node",
            Relay::NodeCoturn => "coturn, pod veth as on a node",
            Relay::KernelForwarding => "kernel forwarding",
            Relay::XdpRedirect => "XDP redirect (ceiling)",
            Relay::XdpForward => "XDP forward (fair ceiling)",
        }
    }

    /// Whether it is a TURN server (else no bindings are set up).
    pub fn is_turn(self) -> bool {
        !matches!(
            self,
            Relay::KernelForwarding | Relay::XdpRedirect | Relay::XdpForward
        )
    }

    /// Whether the pod's veth is as a node has it (else it is engineered:
    /// an XDP sink, full checksums).
    pub fn pod_end_as_on_a_node(self) -> bool {
        matches!(self, Relay::NodeTurnx | Relay::NodeCoturn)
    }
}

/// A TURN server process in the relay namespace, stopped on drop.
pub struct Server {
    child: Child,
    log: PathBuf,
    relay: Relay,
}

impl Server {
    /// Starts the server of `relay` (None for the configurations without
    /// TURN) and waits until it answers.
    pub fn start(
        relay: Relay,
        topology: &Topology,
        workdir: &Path,
        max_bindings: usize,
    ) -> Result<Option<Server>> {
        Self::start_on(
            relay,
            topology,
            workdir,
            max_bindings,
            &[topology.relay_core],
        )
    }

    /// turnx in userspace with one shard per core of `cores`, pinned to
    /// them.
    pub fn start_sharded(topology: &Topology, workdir: &Path, cores: &[usize]) -> Result<Server> {
        Self::start_on(Relay::Userspace, topology, workdir, 1024, cores)?
            .context("turnx is a TURN server")
    }

    /// As [`Self::start`], pinned to `cores`: turnx runs a shard per core.
    fn start_on(
        relay: Relay,
        topology: &Topology,
        workdir: &Path,
        max_bindings: usize,
        cores: &[usize],
    ) -> Result<Option<Server>> {
        let mut command = match relay {
            Relay::XdpOffload | Relay::TcOffload | Relay::Userspace | Relay::NodeTurnx => {
                let config = workdir.join("turnxd.toml");
                std::fs::write(&config, turnxd_config(topology, max_bindings))?;
                let mut command = topology.relay.command(turnxd_path()?);
                command.arg("--config").arg(&config);
                match relay {
                    Relay::Userspace => command
                        .arg("--no-xdp")
                        .args(["--workers", &cores.len().to_string()]),
                    Relay::TcOffload => command.args(["--engine", "tc"]),
                    _ => &mut command,
                };
                command
            }
            Relay::Coturn | Relay::NodeCoturn => {
                let mut command = topology.relay.command("turnserver");
                command.args(coturn_args(workdir));
                command
            }
            Relay::KernelForwarding | Relay::XdpRedirect | Relay::XdpForward => return Ok(None),
        };
        let log = workdir.join(format!("{relay:?}.log"));
        let output = File::create(&log)?;
        let affinity = cores.to_vec();
        let files = cpu::open_file_limit();
        // SAFETY: only async-signal-safe calls (setrlimit, sched_setaffinity)
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Every allocation is a socket: allow as many as we may.
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for &core in &affinity {
                    libc::CPU_SET(core, &mut set);
                }
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", relay.label()))?;
        testkit::cleanup::process_started(child.id());
        let server = Server { child, log, relay };
        server.wait_ready(topology, cores)?;
        Ok(Some(server))
    }

    /// The server's process id (`ip netns exec` execs the server itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self, topology: &Topology, cores: &[usize]) -> Result<()> {
        let server = SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), TURN_PORT);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answered = topology.client.run(|| {
                let socket = UdpSocket::bind((CLIENT_V4, 0))?;
                socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                anyhow::Ok(TurnClient::connect(socket, server, USERNAME, PASSWORD).is_ok())
            })?;
            if answered {
                // Threads started after exec inherit the pinning; these
                // were all started before the first answer.
                cpu::pin_process(self.pid(), cores)?;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer TURN within 20 s; its log:\n{}",
                    self.relay.label(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                testkit::cleanup::process_stopped(self.child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        testkit::cleanup::process_stopped(self.child.id());
    }
}

fn turnxd_path() -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("turnxd");
    if !path.exists() {
        bail!(
            "{} is missing; build it with `cargo xtask build`",
            path.display()
        );
    }
    Ok(path)
}

/// turnxd's configuration for the benchmark: the client-facing address,
/// relayed addresses on the pod side, peers limited to the pod network,
/// XDP on both relay veths, no periodic log lines.
fn turnxd_config(topology: &Topology, max_bindings: usize) -> String {
    format!(
        r#"[server]
listen = ["{RELAY_CLIENT_SIDE_V4}:{TURN_PORT}"]
realm = "bench"
relay_addresses = ["{RELAY_POD_SIDE_V4}", "{RELAY_POD_SIDE_V6}"]
relay_ports = [10000, 65000]

[auth]
users = {{ {USERNAME} = "{PASSWORD}" }}

[limits]
# The allocation load comes from one /24, thousands a second: coturn has no
# response budget, so the setup cost is compared without one.
unauthenticated_bytes_per_sec = 0
unauthenticated_total_bytes_per_sec = 0
# And its capacity, as coturn's, is measured without quotas; the many
# bindings take 4000 channels per allocation.
user_quota = 0
total_quota = 0
channels_per_allocation = 4096

[peers]
allowed = ["198.19.0.0/24", "fd00:19::/64"]

[xdp]
interfaces = ["{}", "{}"]
mode = "native"
max_bindings = {max_bindings}
pin_dir = ""

[admin]
socket = ""

[handover]
state_file = ""

[log]
level = "info"
stats_interval_secs = 0
"#,
        topology.relay_client_if.name, topology.relay_pod_if.name
    )
}

/// coturn configured like turnxd: same address, port, credentials, relayed
/// addresses and port range; UDP and TCP listeners only, no CLI, log lines
/// only for sessions (never per packet).
fn coturn_args(workdir: &Path) -> Vec<String> {
    [
        "-n",
        "--listening-ip",
        &RELAY_CLIENT_SIDE_V4.to_string(),
        "--listening-port",
        &TURN_PORT.to_string(),
        "--relay-ip",
        &RELAY_POD_SIDE_V4.to_string(),
        "--relay-ip",
        &RELAY_POD_SIDE_V6.to_string(),
        "--min-port",
        "10000",
        "--max-port",
        "65000",
        "--lt-cred-mech",
        "--user",
        &format!("{USERNAME}:{PASSWORD}"),
        "--realm",
        "bench",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--simple-log",
        "--log-file",
        "stdout",
        "--pidfile",
        &workdir.join("turnserver.pid").to_string_lossy(),
    ]
    .map(|arg| arg.to_string())
    .to_vec()
}

/// `count` channel bindings set up through TURN from the client namespace:
/// allocations from consecutive client ports, up to `per_allocation`
/// channels each, peers on consecutive pod ports. The clients are returned
/// too, so their sockets stay open.
pub fn bind_channels(
    topology: &Topology,
    count: usize,
    per_allocation: usize,
    time_limit: Duration,
) -> Result<(Vec<Binding>, Vec<TurnClient>)> {
    let server = SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), TURN_PORT);
    let deadline = Instant::now() + time_limit;
    topology.client.run_on(Some(topology.load_core), || {
        let mut bindings = Vec::with_capacity(count);
        let mut clients = Vec::new();
        for (allocation, first) in (0..count).step_by(per_allocation).enumerate() {
            let port = FIRST_CLIENT_PORT + allocation as u16;
            let socket = UdpSocket::bind((CLIENT_V4, port))
                .with_context(|| format!("binding client port {port}"))?;
            let client = TurnClient::connect(socket, server, USERNAME, PASSWORD)
                .context("first Allocate (401 expected)")?;
            let relayed = client.allocate(false).context("Allocate")?;
            for index in 0..(count - first).min(per_allocation) {
                let binding = Binding {
                    client: SocketAddr::new(CLIENT_V4.into(), port),
                    channel: 0x4000 + index as u16,
                    relayed,
                    peer: SocketAddr::new(POD_V4.into(), FIRST_PEER_PORT + index as u16),
                };
                client
                    .channel_bind(binding.channel, binding.peer)
                    .with_context(|| format!("ChannelBind {}", bindings.len()))?;
                if Instant::now() > deadline {
                    bail!(
                        "only {} of {count} channel bindings were set up within {time_limit:?}",
                        bindings.len() + 1
                    );
                }
                bindings.push(binding);
            }
            clients.push(client);
        }
        anyhow::Ok((bindings, clients))
    })
}

/// The same addresses as [`bind_channels`] without a TURN server, for the
/// configurations that only forward.
pub fn plain_bindings(count: usize) -> Vec<Binding> {
    (0..count)
        .map(|i| {
            let allocation = i / CHANNELS_PER_ALLOCATION;
            let index = i % CHANNELS_PER_ALLOCATION;
            Binding {
                client: SocketAddr::new(CLIENT_V4.into(), FIRST_CLIENT_PORT + allocation as u16),
                channel: 0x4000 + index as u16,
                relayed: SocketAddr::new(RELAY_POD_SIDE_V4.into(), 0),
                peer: SocketAddr::new(POD_V4.into(), FIRST_PEER_PORT + index as u16),
            }
        })
        .collect()
}
