//! turnxd: the TURN relay daemon.
//!
//! Serves TURN (UDP and TCP) on the listen addresses, loads the XDP
//! program, tells it the TURN listen ports, attaches it to the configured
//! interfaces, logs its counters, and on SIGINT/SIGTERM deletes every
//! allocation and detaches.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use turnx::{
    config::{Config, DEFAULT_CONFIG_TOML, Engine, XdpMode},
    ebpf_object, interfaces,
    logging::{LogBudget, QueuedWriter},
    offload::{Eligibility, Offload},
    pod_interfaces::PodInterfaces,
    shell::{ShellConfig, TurnServer},
    xdp::{LoadOptions, XdpError, XdpRelay, kernel_log},
};

/// TURN relay daemon with an XDP media plane.
///
/// Without --config it runs on the built-in configuration (print it with
/// --print-default-config). Flags and TURNXD_* variables override the file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, env = "TURNXD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the built-in configuration, which documents every key, and exit.
    #[arg(long)]
    print_default_config: bool,
    /// TURN listen address; repeat for several. Replaces [server] listen.
    #[arg(long, env = "TURNXD_LISTEN", value_delimiter = ',')]
    listen: Vec<std::net::SocketAddr>,
    /// Interface to attach XDP to; repeat for several. Replaces [xdp] interfaces.
    #[arg(
        long = "interface",
        short,
        env = "TURNXD_INTERFACES",
        value_delimiter = ','
    )]
    interfaces: Vec<String>,
    /// XDP attach mode. Replaces [xdp] mode.
    #[arg(long, env = "TURNXD_XDP_MODE")]
    xdp_mode: Option<XdpMode>,
    /// Do not load XDP at all; everything stays in userspace.
    #[arg(long, env = "TURNXD_NO_XDP")]
    no_xdp: bool,
    /// Kernel engines: auto, xdp, tc or off. Replaces [offload] engine.
    #[arg(long, env = "TURNXD_ENGINE")]
    engine: Option<Engine>,
    /// Name pattern of pods' veths for the tc engine to follow, such as
    /// "lxc*"; repeat for several. Replaces [offload] pod_interfaces.
    #[arg(
        long = "pod-interface",
        env = "TURNXD_POD_INTERFACES",
        value_delimiter = ','
    )]
    pod_interfaces: Vec<String>,
    /// Hand frames the kernel relays to the network stack, for its routing
    /// and policy, instead of sending them to the next hop. Sets [xdp]
    /// route_in_stack.
    #[arg(long, env = "TURNXD_ROUTE_IN_STACK")]
    route_in_stack: bool,
    /// error, warn, info, debug or trace. Replaces [log] level.
    #[arg(long, env = "TURNXD_LOG_LEVEL")]
    log_level: Option<String>,
    /// Seconds between counter log lines, 0 for none. Replaces [log] stats_interval_secs.
    #[arg(long, env = "TURNXD_STATS_INTERVAL")]
    stats_interval: Option<u64>,
    /// Directory on bpffs for the pinned maps, "" for none. Replaces [xdp] pin_dir.
    #[arg(long, env = "TURNXD_PIN_DIR")]
    pin_dir: Option<String>,
    /// XDP object to load instead of the one built into this binary.
    #[arg(long, env = "TURNXD_EBPF_OBJECT")]
    ebpf_object: Option<PathBuf>,
    /// A static user, NAME:PASSWORD (coturn's --user); repeat for several.
    /// Adds to [auth] users. Prefer the environment variable: arguments are
    /// visible to every user of the machine.
    #[arg(
        long = "user",
        env = "TURNXD_USERS",
        value_delimiter = ',',
        value_name = "NAME:PASSWORD"
    )]
    users: Vec<String>,
    /// A TURN REST API shared secret (coturn's --static-auth-secret);
    /// repeat for several. Adds to [auth] secrets.
    #[arg(
        long = "static-auth-secret",
        env = "TURNXD_STATIC_AUTH_SECRET",
        value_delimiter = ','
    )]
    secrets: Vec<String>,
    /// Realm of the credentials. Replaces [server] realm.
    #[arg(long, env = "TURNXD_REALM")]
    realm: Option<String>,
    /// TURNS (TLS over TCP) listen address; repeat for several. Replaces
    /// [server] tls_listen.
    #[arg(long = "tls-listen", env = "TURNXD_TLS_LISTEN", value_delimiter = ',')]
    tls_listen: Vec<std::net::SocketAddr>,
    /// PEM certificate chain for TURNS (coturn's --cert). Replaces [server]
    /// tls_cert.
    #[arg(long = "tls-cert", env = "TURNXD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TURNS (coturn's --pkey). Replaces [server]
    /// tls_key.
    #[arg(long = "tls-key", env = "TURNXD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Address relayed sockets bind to, at most one IPv4 and one IPv6.
    /// Replaces [server] relay_addresses.
    #[arg(
        long = "relay-address",
        env = "TURNXD_RELAY_ADDRESSES",
        value_delimiter = ','
    )]
    relay_addresses: Vec<std::net::IpAddr>,
}

impl Args {
    /// The file's configuration with the command line applied on top.
    fn config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if !self.listen.is_empty() {
            config.server.listen = self.listen.clone();
        }
        if !self.interfaces.is_empty() {
            config.xdp.interfaces = self.interfaces.clone();
        }
        if let Some(mode) = self.xdp_mode {
            config.xdp.mode = mode;
        }
        if self.no_xdp {
            config.xdp.enabled = false;
        }
        if let Some(engine) = self.engine {
            config.offload.engine = engine;
        }
        if !self.pod_interfaces.is_empty() {
            config.offload.pod_interfaces = self.pod_interfaces.clone();
        }
        if self.route_in_stack {
            config.xdp.route_in_stack = true;
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(dir) = &self.pin_dir {
            config.xdp.pin_dir = dir.clone();
        }
        if let Some(secs) = self.stats_interval {
            config.log.stats_interval_secs = secs;
        }
        for user in &self.users {
            let Some((name, password)) = user.split_once(':') else {
                anyhow::bail!("--user {user:?} is not NAME:PASSWORD");
            };
            if name.is_empty() || password.is_empty() {
                anyhow::bail!("--user needs a non-empty name and password, as NAME:PASSWORD");
            }
            config
                .auth
                .users
                .insert(name.to_owned(), password.to_owned());
        }
        config.auth.secrets.extend(self.secrets.iter().cloned());
        if let Some(realm) = &self.realm {
            config.server.realm = realm.clone();
        }
        if !self.relay_addresses.is_empty() {
            config.server.relay_addresses = self.relay_addresses.clone();
        }
        if !self.tls_listen.is_empty() {
            config.server.tls_listen = self.tls_listen.clone();
        }
        if let Some(cert) = &self.tls_cert {
            config.server.tls_cert = Some(cert.clone());
        }
        if let Some(key) = &self.tls_key {
            config.server.tls_key = Some(key.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("turnxd: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let logs = init_tracing(&config.log.level);
    fail_closed();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            logs.finish();
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(args, config, &logs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    };
    logs.finish();
    code
}

/// Sets up logging under a budget (see `turnx::logging`); returns what
/// reports what the budget and the queue dropped, and flushes at exit.
fn init_tracing(level: &str) -> Logs {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    // The level applies to our own code and the kernel program's log;
    // libraries only speak up on warnings. RUST_LOG, when set, replaces this.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,turnx={level},turnxd={level},relay_ebpf={level}"
        ))
    });
    let budget = LogBudget::default();
    let writer = QueuedWriter::stderr().ok();
    let fmt = tracing_subscriber::fmt::layer();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(budget.clone());
    match &writer {
        Some(writer) => registry.with(fmt.with_writer(writer.clone())).init(),
        // No thread for the queue: write in place, still under the budget.
        None => registry.with(fmt.with_writer(std::io::stderr)).init(),
    }
    Logs { budget, writer }
}

/// Makes any panic, in any thread or task, end the process. A task that
/// panics under the TURN core's lock would poison it, and the process would
/// live on with its bpf links while timers and tasks die one by one: the
/// kernel would go on relaying bindings past their expiry. When the process
/// ends, the kernel detaches the programs with their links, and nothing is
/// relayed for a dead daemon. (A restart reopens the pinned maps and clears
/// the bindings left in them.)
fn fail_closed() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("turnxd: a fault ends the process, so that the kernel stops relaying for it");
        std::process::abort();
    }));
}

/// Test builds take SIGUSR2 as an order to fail, to show that the process
/// then ends (see [`fail_closed`]); release builds never do.
struct FaultSignal {
    #[cfg(debug_assertions)]
    signal: tokio::signal::unix::Signal,
}

impl FaultSignal {
    fn new() -> Result<Self> {
        Ok(FaultSignal {
            #[cfg(debug_assertions)]
            signal: signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(debug_assertions)]
        self.signal.recv().await;
        #[cfg(not(debug_assertions))]
        std::future::pending::<()>().await;
    }
}

/// What logging needs after it is set up.
struct Logs {
    budget: LogBudget,
    writer: Option<QueuedWriter>,
}

impl Logs {
    /// Says what the budget suppressed and the queue dropped since the
    /// last call.
    fn report(&self) {
        for (place, count) in self.budget.take_suppressed() {
            tracing::warn!("{count} repeated log lines from {place} suppressed");
        }
        if let Some(dropped) = self.writer.as_ref().map(QueuedWriter::take_dropped)
            && dropped > 0
        {
            tracing::warn!("{dropped} log lines dropped: the log could not keep up");
        }
    }

    /// Reports, and writes out what is queued.
    fn finish(&self) {
        self.report();
        if let Some(writer) = &self.writer {
            writer.flush(Duration::from_secs(2));
        }
    }
}

/// Every allocation holds a socket, so the default soft limit on open files
/// (often 1024) would cap allocations long before memory does: raise it to
/// the hard limit, as coturn does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!("open file limit raised from {soft} to {}", limit.rlim_max);
        }
    }
}

async fn run(args: Args, config: Config, logs: &Logs) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    raise_open_file_limit();
    let (relay, mut pods) = if config.xdp.enabled && config.offload.engine != Engine::Off {
        let (relay, pods) = start_xdp(&args, &config)?;
        (Some(Arc::new(Mutex::new(relay))), pods)
    } else {
        tracing::info!("XDP disabled by configuration");
        (None, PodInterfaces::default())
    };
    let (relay_ipv4, relay_ipv6) = config.relay_addresses();
    let offload = relay.as_ref().map(|relay| {
        let own_relay = [relay_ipv4, relay_ipv6].into_iter().flatten().collect();
        let rules = Eligibility::new(config.server.legacy_channel_numbers, own_relay);
        Offload::new(Box::new(Arc::clone(relay)), config.xdp.max_bindings, rules)
            .with_bandwidth(config.bandwidth())
    });
    // Before serving, so the kernel relay can take the first bindings.
    let mut egress = EgressState::default();
    if let Some(relay) = &relay {
        let mut relay = relay.lock().expect("XDP lock");
        follow_pods(&mut relay, &mut pods);
        refresh_egress(&mut relay, &mut egress);
    }
    let turn = start_turn(&config, (relay_ipv4, relay_ipv6), offload).await?;
    tracing::info!("turnxd ready; listening on {:?}", config.server.listen);

    let interval = Duration::from_secs(config.log.stats_interval_secs);
    let mut ticker = tokio::time::interval(if interval.is_zero() {
        Duration::MAX / 4
    } else {
        interval
    });
    ticker.tick().await;
    // Pods' veths come and go, and which interfaces deliver XDP frames
    // changes with them and as programs attach and detach on veth peers:
    // follow both.
    let mut egress_ticker = tokio::time::interval(EGRESS_REFRESH);
    let mut log_ticker = tokio::time::interval(LOG_REPORT);
    let mut fault = FaultSignal::new()?;
    let mut driver_errors = std::collections::HashMap::new();
    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = egress_ticker.tick(), if relay.is_some() => {
                if let Some(relay) = &relay {
                    let mut relay = relay.lock().expect("XDP lock");
                    follow_pods(&mut relay, &mut pods);
                    refresh_egress(&mut relay, &mut egress);
                    watch_driver_errors(&relay, &mut driver_errors);
                }
            }
            _ = log_ticker.tick() => logs.report(),
            _ = fault.recv() => turn.inject_fault(),
            _ = ticker.tick(), if !interval.is_zero() => {
                if let Some(relay) = &relay {
                    log_counters(&relay.lock().expect("XDP lock"));
                }
            }
        }
    };

    tracing::info!("{signal_name} received, shutting down");
    tracing::info!(
        "deleting {} allocations; relayed {:?}",
        turn.allocations(),
        turn.stats()
    );
    if let Some(stats) = turn.shutdown() {
        tracing::info!("kernel offload: {stats:?}");
    }
    if let Some(relay) = &relay {
        let mut relay = relay.lock().expect("XDP lock");
        log_counters(&relay);
        let failures = relay.detach_all();
        for (interface, err) in &failures {
            tracing::error!("detaching XDP from {interface}: {err}");
        }
        if !failures.is_empty() {
            anyhow::bail!("XDP could not be detached from every interface");
        }
        tracing::info!("XDP detached from every interface");
    }
    Ok(())
}

/// Loads the program, sets the listen ports and attaches to every interface,
/// or fails with everything attached so far detached again (on drop).
/// Returns it with the pod interfaces to follow.
fn start_xdp(args: &Args, config: &Config) -> Result<(XdpRelay, PodInterfaces)> {
    let object = ebpf_object::load(args.ebpf_object.as_deref())?;
    let pin_dir = (!config.xdp.pin_dir.is_empty()).then(|| PathBuf::from(&config.xdp.pin_dir));
    if pin_dir.is_some() {
        turnx::xdp::ensure_bpffs().context("mounting bpffs to pin the XDP maps")?;
    }
    let options = LoadOptions {
        route_in_stack: config.xdp.route_in_stack,
        pin_dir,
        max_bindings: Some(config.xdp.max_bindings),
        legacy_channel_numbers: config.server.legacy_channel_numbers,
    };
    let mut relay = XdpRelay::load_with(&object, &config.log.level, &options)?;
    match relay.take_logger() {
        Some(logger) => {
            kernel_log::spawn(logger).context("reading the XDP program's log")?;
        }
        None => tracing::warn!("the XDP program has no log buffer; kernel log lines are lost"),
    }
    let ports: Vec<u16> = config.listen_ports().into_iter().collect();
    relay.set_listen_ports(&ports)?;

    let names = if config.xdp.interfaces.is_empty() {
        let found = interfaces::default_route_interfaces()?;
        tracing::info!("no interfaces configured; using those with a default route: {found:?}");
        found
    } else {
        config.xdp.interfaces.clone()
    };
    let engine = config.offload.engine;
    // With both engines, an interface without native XDP is the tc
    // engine's alone: generic XDP would only add its cost.
    let mode = match (engine, config.xdp.mode) {
        (Engine::Auto, XdpMode::Auto) => XdpMode::Native,
        (_, mode) => mode,
    };
    for name in &names {
        let xdp = if engine == Engine::Tc {
            None
        } else {
            match relay.attach(name, mode) {
                Ok(mode) => Some(mode),
                Err(XdpError::Attach { reason, .. })
                    if engine == Engine::Auto && config.xdp.mode == XdpMode::Auto =>
                {
                    tracing::info!(
                        "no native XDP on {name} ({reason}); the tc engine relays there alone"
                    );
                    None
                }
                // Another program holds XDP here (Cilium's, say): leave it
                // alone and take the interface at tc. Another turnxd is a
                // misconfiguration, refused.
                Err(XdpError::Occupied { interface, owner })
                    if engine == Engine::Auto && !owner.contains(relay_common::PROGRAM_NAME) =>
                {
                    tracing::warn!(
                        "{interface} already runs XDP {owner}; turnx leaves it and relays \
                         there with its tc engine only"
                    );
                    None
                }
                Err(err) => return Err(err.into()),
            }
        };
        let tc = engine != Engine::Xdp;
        if tc {
            relay.attach_tc(name)?;
        }
        match (xdp, tc) {
            (Some(mode), true) => tracing::info!(
                "XDP attached to {name} in {mode} mode, the tc engine at its ingress"
            ),
            (Some(mode), false) => tracing::info!("XDP attached to {name} in {mode} mode"),
            (None, _) => tracing::info!("the tc engine attached to {name}'s ingress"),
        }
    }
    let pods = if engine == Engine::Xdp {
        PodInterfaces::default()
    } else {
        PodInterfaces::new(config.offload.pod_interfaces.clone(), names)
    };
    Ok((relay, pods))
}

/// Attaches the tc engine to pods' veths that appeared since the last look
/// and forgets those that are gone. A failure is logged and tried again at
/// the next look; the pod's traffic is relayed by userspace meanwhile.
fn follow_pods(relay: &mut XdpRelay, pods: &mut PodInterfaces) {
    if !pods.is_enabled() {
        return;
    }
    let present = match turnx::pod_interfaces::present() {
        Ok(present) => present,
        Err(err) => {
            tracing::warn!("cannot list the interfaces to follow pods' veths: {err}");
            return;
        }
    };
    let changes = pods.changes(&present);
    for name in changes.gone {
        relay.forget_tc(&name);
        pods.forgotten(&name);
        tracing::info!("pod interface {name} is gone");
    }
    for name in changes.attach {
        match relay.attach_tc(&name) {
            Ok(()) => {
                pods.attached(&name);
                tracing::info!("the tc engine attached to pod interface {name}");
            }
            // It may have gone again already; the next look tells.
            Err(err) => tracing::warn!("{err}"),
        }
    }
}

/// Binds the TURN listeners and starts serving.
async fn start_turn(
    config: &Config,
    (relay_ipv4, relay_ipv6): (Option<std::net::IpAddr>, Option<std::net::IpAddr>),
    offload: Option<Offload>,
) -> Result<TurnServer> {
    let mut server = config.turn();
    server.policy.own.relay = [relay_ipv4, relay_ipv6].into_iter().flatten().collect();
    if config.auth.users.is_empty() && config.auth.secrets.is_empty() {
        tracing::warn!(
            "no credentials configured: every allocation will be refused; give --user \
             NAME:PASSWORD or --static-auth-secret SECRET (or [auth] users, secrets)"
        );
    }
    tracing::info!(
        "relaying from {}",
        [relay_ipv4, relay_ipv6]
            .into_iter()
            .flatten()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let [first, last] = config.server.relay_ports;
    TurnServer::start(
        ShellConfig {
            listen: config.server.listen.clone(),
            tls_listen: config.server.tls_listen.clone(),
            tls: config.tls_files(),
            relay_ipv4,
            relay_ipv6,
            relay_ports: first..=last,
            server,
            streams: turnx::shell::streams::StreamLimits {
                total: config.limits.stream_connections,
                per_address: config.limits.stream_connections_per_address,
            },
        },
        offload,
    )
    .await
    .context("starting the TURN server")
}

/// How often turnxd says what the log budget suppressed.
const LOG_REPORT: Duration = Duration::from_secs(10);

/// How often the interfaces' XDP capabilities are read again.
const EGRESS_REFRESH: Duration = Duration::from_secs(1);

/// What the last egress refresh found: the interfaces and their bits, or
/// that it failed.
#[derive(Default, PartialEq)]
struct EgressState {
    allowed: Vec<(u32, u8)>,
    failing: bool,
}

/// Reads which interfaces deliver XDP frames into the program's map, and
/// logs when that changes.
fn refresh_egress(relay: &mut XdpRelay, last: &mut EgressState) {
    let now = match relay.refresh_egress() {
        Ok(allowed) => EgressState {
            allowed,
            failing: false,
        },
        Err(err) => {
            if !last.failing {
                tracing::warn!("{err}");
            }
            EgressState {
                allowed: Vec::new(),
                failing: true,
            }
        }
    };
    if now != *last && !now.failing {
        let names: Vec<String> = now
            .allowed
            .iter()
            .map(|(ifindex, bits)| {
                let name = interfaces::name_of(*ifindex).unwrap_or_else(|| ifindex.to_string());
                format!("{name} ({})", egress_ways(*bits))
            })
            .collect();
        tracing::info!(
            "how the kernel relay may send: {}; frames for other interfaces leave by the tc \
             engine's redirects, or by userspace",
            if names.is_empty() {
                "no interface takes XDP frames".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    *last = now;
}

/// Says when a driver's XDP error counters move on an interface turnxd is
/// attached to: frames the kernel relay sent were lost there, which the
/// egress rules exist to prevent. `last` holds each interface's total.
fn watch_driver_errors(relay: &XdpRelay, last: &mut std::collections::HashMap<String, u64>) {
    for attachment in relay.attachments() {
        let interface = &attachment.interface;
        let Ok(errors) = turnx::xdp::driver_stats::xdp_errors(interface) else {
            continue;
        };
        let total: u64 = errors.iter().map(|(_, value)| value).sum();
        let before = last.insert(interface.clone(), total);
        if let Some(before) = before
            && total > before
        {
            let moved: Vec<String> = errors
                .iter()
                .filter(|(_, value)| *value != 0)
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            tracing::warn!(
                "the driver of {interface} lost {} XDP frames in the last second ({}); \
                 please report this with `turnxctl status` and the interface's kind",
                total - before,
                moved.join(" ")
            );
        }
    }
}

/// How relayed frames may leave an interface, for logs.
fn egress_ways(bits: u8) -> String {
    let ways: Vec<&str> = [
        (relay_common::EGRESS_TX, "XDP_TX"),
        (relay_common::EGRESS_REDIRECT, "XDP redirects"),
        (relay_common::EGRESS_PEER, "tc into the pod"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, way)| way)
    .collect();
    ways.join(", ")
}

fn log_counters(relay: &XdpRelay) {
    match relay.counters() {
        Ok(counters) => tracing::info!("XDP counters: {counters}"),
        Err(err) => tracing::warn!("cannot read XDP counters: {err}"),
    }
}
