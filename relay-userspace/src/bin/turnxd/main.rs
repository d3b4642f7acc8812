//! turnxd: the TURN relay daemon.
//!
//! Serves TURN (UDP, TCP, TLS) on the listen addresses, loads the kernel
//! programs and attaches them, and serves operators: Prometheus metrics and
//! health checks, the credential service, the admin socket for turnxctl.
//! SIGHUP (or a changed config file) reloads; SIGTERM drains, then exits;
//! a second SIGTERM, or SIGINT, deletes every allocation and exits at once.
//! `turnxctl stop --handover` (or SIGTERM, with `[handover] on_sigterm =
//! "handover"`) exits leaving the allocations to the next turnxd (the
//! handover file) and the kernel relaying their channels (pinned links and
//! maps); `turnxctl stop --detach` stops as SIGINT does, `turnxctl drain`
//! drains as SIGTERM does by default.

mod handover;
mod kernel;
mod logs;
mod operations;
mod reload;

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
    addresses::{self, Families},
    config::{Config, DEFAULT_CONFIG_TOML, Engine, OnSigterm, overrides::Overrides},
    offload::{Eligibility, Offload},
    pod_interfaces::PodInterfaces,
    shell::{ShellConfig, TurnServer},
    state_file::RelayState,
};

use self::{
    kernel::{EgressState, follow_pods, log_counters, refresh_egress, watch_driver_errors},
    logs::Logs,
    operations::DaemonState,
};

/// TURN relay daemon with an XDP media plane.
///
/// Without --config it runs on the built-in configuration (print it with
/// --print-default-config). Flags and TURNXD_* variables override the file.
// Not Debug: the overrides hold passwords and secrets.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). It is reloaded on SIGHUP and when its
    /// content changes.
    #[arg(long, short, env = "TURNXD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the built-in configuration, which documents every key, and exit.
    #[arg(long)]
    print_default_config: bool,
    /// XDP object to load instead of the one built into this binary.
    #[arg(long, env = "TURNXD_EBPF_OBJECT")]
    ebpf_object: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

impl Args {
    /// The file's configuration (or the built-in one) with the command
    /// line applied on top, validated.
    fn config(&self) -> Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        self.overrides.apply(&mut config)?;
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
    let logs = Logs::init(&config.log.level, config.log.format);
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

/// The signals turnxd acts on.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Why the main loop ended.
enum Stop {
    /// A signal that stops at once.
    Signal(&'static str),
    /// turnxctl asked for a stop that detaches (false) or a handover.
    Asked { handover: bool },
    /// The drain finished: no allocation left.
    Drained,
    /// The drain deadline passed with allocations left.
    DrainTimeout,
}

async fn run(args: Args, config: Config, logs: &Logs) -> Result<()> {
    let mut signals = Signals::install()?;
    tracing::info!(concat!("turnx ", env!("CARGO_PKG_VERSION"), " starting"));
    raise_open_file_limit();
    let mut handover = handover::Handover::open(&config.handover.state_file)?;
    let previous = handover.as_ref().and_then(handover::Handover::previous);
    // Loaded, not attached yet: a previous turnxd's programs go on relaying
    // from the pinned maps until its allocations are back.
    let relay = if config.xdp.enabled && config.offload.engine != Engine::Off {
        let relay = kernel::load_xdp(args.ebpf_object.as_deref(), &config)?;
        kernel::check_interfaces(&relay, &config)?;
        Some(Arc::new(Mutex::new(relay)))
    } else {
        tracing::info!("XDP disabled by configuration");
        None
    };
    let bound = addresses::relay_addresses(&config.server);
    let public = addresses::public_addresses(&config.server, bound)
        .await
        .context("finding the public address to advertise")?;
    let offload = relay.as_ref().map(|relay| {
        let rules = Eligibility::new(config.server.legacy_channel_numbers, bound.iter().collect());
        Offload::new(Box::new(Arc::clone(relay)), config.xdp.max_bindings, rules)
            .with_bandwidth(config.bandwidth())
    });
    let turn = Arc::new(start_turn(&config, bound, public, offload, previous).await?);
    // The handed-over channels are installed again: the rest of what the
    // previous turnxd left goes, and this turnxd's programs take over its
    // links.
    let mut egress = EgressState::default();
    let mut pods = PodInterfaces::default();
    if let Some(relay) = &relay {
        let mut relay = relay.lock().expect("XDP lock");
        let swept = relay.sweep_unowned()?;
        if swept > 0 {
            tracing::info!("removed {swept} kernel bindings that no allocation took over");
        }
        pods = kernel::attach_xdp(&mut relay, &config)?;
        follow_pods(&mut relay, &mut pods);
        refresh_egress(&mut relay, &mut egress);
        relay.release_unclaimed_pins();
    }
    let state = DaemonState::new(
        config.clone(),
        Arc::clone(&turn),
        relay.clone(),
        bound,
        public,
    );
    let _operations = operations::start(&state)
        .await
        .context("starting the operations endpoints")?;
    state.set_ready();
    tracing::info!("turnxd ready; listening on {:?}", config.server.listen);

    let mut watch = reload::ConfigWatch::new(args.config.clone(), config.watched_files());
    let mut stats_ticker = stats_ticker(config.log.stats_interval_secs);
    // Pods' veths come and go, and which interfaces deliver XDP frames
    // changes with them and as programs attach and detach on veth peers:
    // follow both.
    let mut egress_ticker = ticker(kernel::EGRESS_REFRESH);
    let mut log_ticker = ticker(LOG_REPORT);
    let mut watch_ticker = ticker(reload::CHECK_EVERY);
    // Ticks only while draining: made when the drain starts.
    let mut drain_ticker = ticker(DRAIN_CHECK);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut fault = FaultSignal::new()?;
    let mut driver_errors = std::collections::HashMap::new();
    let mut persist_ticker = ticker(handover::PERSIST_EVERY);
    let stop = loop {
        tokio::select! {
            handover = state.stop_requested() => break Stop::Asked { handover },
            _ = persist_ticker.tick(), if handover.is_some() => {
                if let Some(handover) = &mut handover {
                    handover.persist(&turn);
                }
            }
            _ = signals.terminate.recv() => {
                // A stop asked for just before (a preStop hook) goes first.
                if let Some(handover) = state.asked_stop() {
                    break Stop::Asked { handover };
                }
                if drain_deadline.is_some() {
                    break Stop::Signal("a second SIGTERM");
                }
                if state.config().handover.on_sigterm == OnSigterm::Handover {
                    tracing::info!("SIGTERM received: handing over ([handover] on_sigterm)");
                    break Stop::Asked { handover: true };
                }
                drain_deadline = Some(start_drain(&state, &turn, "SIGTERM received"));
                drain_ticker = ticker(DRAIN_CHECK);
            }
            () = state.drain_requested(), if drain_deadline.is_none() => {
                drain_deadline = Some(start_drain(&state, &turn, "turnxctl asked for a drain"));
                drain_ticker = ticker(DRAIN_CHECK);
            }
            _ = signals.interrupt.recv() => break Stop::Signal("SIGINT"),
            _ = signals.hangup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                if let Some(interval) = reload::reload(&args, &state, logs) {
                    stats_ticker = stats_ticker_from(interval);
                }
                watch.follow(args.config.iter().cloned().chain(state.config().watched_files()).collect());
            }
            _ = watch_ticker.tick() => {
                if watch.changed() {
                    tracing::info!("the configuration changed on disk: reloading it");
                    if let Some(interval) = reload::reload(&args, &state, logs) {
                        stats_ticker = stats_ticker_from(interval);
                    }
                    watch.follow(args.config.iter().cloned().chain(state.config().watched_files()).collect());
                }
            }
            _ = drain_ticker.tick(), if drain_deadline.is_some() => {
                if turn.allocations() == 0 {
                    break Stop::Drained;
                }
                if drain_deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    break Stop::DrainTimeout;
                }
            }
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
            _ = stats_ticker.tick() => {
                if let Some(relay) = &relay {
                    log_counters(&relay.lock().expect("XDP lock"));
                }
            }
        }
    };

    state.stop_ready();
    if let Stop::Asked { handover: true } = stop {
        let handed = turn.stop_for_handover();
        match &mut handover {
            Some(handover) => handover.hand_over(&handed).await?,
            None => tracing::warn!(
                "no [handover] state_file: the next turnxd cannot take the {} allocations over; \
                 the kernel relays their channels until their lifetimes end",
                handed.allocations()
            ),
        }
        if let Some(relay) = &relay {
            let mut relay = relay.lock().expect("XDP lock");
            log_counters(&relay);
            relay.leave_for_handover();
        }
        tracing::info!("handed over: the kernel programs stay attached and relaying");
        return Ok(());
    }
    match stop {
        Stop::Asked { .. } => tracing::info!("turnxctl asked for a stop, shutting down"),
        Stop::Signal(name) => tracing::info!("{name} received, shutting down"),
        Stop::Drained => tracing::info!("drained: no allocation left, shutting down"),
        Stop::DrainTimeout => tracing::info!(
            "the drain timeout passed with {} allocations left, shutting down",
            turn.allocations()
        ),
    }
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
        let failures = relay.detach_and_unpin();
        for (interface, err) in &failures {
            tracing::error!("detaching XDP from {interface}: {err}");
        }
        if !failures.is_empty() {
            anyhow::bail!("XDP could not be detached from every interface");
        }
        tracing::info!("XDP detached from every interface");
    }
    // Nothing is left to take over.
    if let Some(handover) = &handover {
        handover.forget();
    }
    Ok(())
}

/// Starts draining, saying `why`; returns when the drain ends at the
/// latest.
fn start_drain(state: &DaemonState, turn: &TurnServer, why: &str) -> tokio::time::Instant {
    let timeout = Duration::from_secs(state.config().drain.timeout_secs);
    tracing::info!(
        "{why}: draining {} allocations for at most {timeout:?}; new allocations are \
         refused; SIGINT or another SIGTERM stops at once",
        turn.allocations()
    );
    state.start_draining();
    tokio::time::Instant::now() + timeout
}

/// A ticker for the counter log lines every `secs` seconds, or one that
/// never fires for 0.
fn stats_ticker(secs: u64) -> tokio::time::Interval {
    stats_ticker_from(Duration::from_secs(secs))
}

fn stats_ticker_from(interval: Duration) -> tokio::time::Interval {
    let period = if interval.is_zero() {
        // Never, in practice.
        Duration::from_secs(60 * 60 * 24 * 365)
    } else {
        interval
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// An interval that skips the ticks it missed (while its branch was off,
/// or the loop busy) rather than firing them all at once.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// The protocol core's configuration: the file's, with the addresses
/// found at start.
fn core_config(config: &Config, bound: Families, public: Families) -> turnx::turn::ServerConfig {
    let mut server = config.turn();
    server.policy.own.relay = bound.iter().collect();
    server.public_addresses = turnx::turn::PublicAddresses {
        ipv4: public.ipv4,
        ipv6: public.ipv6,
    };
    server
}

/// Binds the TURN listeners and starts serving, with what a previous
/// turnxd handed over.
async fn start_turn(
    config: &Config,
    bound: Families,
    public: Families,
    offload: Option<Offload>,
    previous: Option<RelayState>,
) -> Result<TurnServer> {
    let server = core_config(config, bound, public);
    if config.auth.users.is_empty() && config.auth.secrets.is_empty() {
        tracing::warn!(
            "no credentials configured: every allocation will be refused; give --user \
             NAME:PASSWORD or --static-auth-secret SECRET (or [auth] users, secrets)"
        );
    }
    let list = |families: Families| {
        families
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    };
    tracing::info!("relaying from {}", list(bound));
    tracing::info!("userspace relay shards: {}", config.workers());
    if public.iter().next().is_some() {
        tracing::info!(
            "advertising {} as the relayed addresses (public addresses)",
            list(public.or(bound))
        );
    }
    let [first, last] = config.server.relay_ports;
    TurnServer::start_with(
        ShellConfig {
            listen: config.server.listen.clone(),
            tls_listen: config.server.tls_listen.clone(),
            tls: config.tls_files(),
            relay_ipv4: bound.ipv4,
            relay_ipv6: bound.ipv6,
            relay_ports: first..=last,
            server,
            streams: turnx::shell::streams::StreamLimits {
                total: config.limits.stream_connections,
                per_address: config.limits.stream_connections_per_address,
            },
            workers: config.workers(),
        },
        offload,
        previous,
    )
    .await
    .context("starting the TURN server")
}

/// How often turnxd says what the log budget suppressed.
const LOG_REPORT: Duration = Duration::from_secs(10);

/// How often a drain looks whether allocations are left.
const DRAIN_CHECK: Duration = Duration::from_millis(250);

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

/// Makes any panic, in any thread or task, end the process. A task that
/// panics under the TURN core's lock would poison it, and the process would
/// live on while timers and tasks die one by one. When the process ends,
/// the pinned links keep the programs relaying its bindings, each only
/// until the expiry its map entry carries; the next turnxd takes them over
/// from the handover file, or removes them.
fn fail_closed() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("turnxd: a fault ends the process, so that the kernel stops relaying for it");
        std::process::abort();
    }));
}

/// Every allocation holds a socket, so the default soft limit on open files
/// (often 1024) would cap allocations long before memory does: raise it to
/// the hard limit, as coturn does. Kernels before 5.11 charge BPF maps to
/// RLIMIT_MEMLOCK, whose default (64 KiB) is far too small for them: raise
/// it as far as allowed (without limit needs CAP_SYS_RESOURCE).
fn raise_open_file_limit() {
    raise_limit(libc::RLIMIT_NOFILE, "open file");
    raise_limit(libc::RLIMIT_MEMLOCK, "locked memory");
}

/// Raises the soft limit `resource` to infinity if allowed, else to its
/// hard limit.
fn raise_limit(resource: libc::__rlimit_resource_t, what: &str) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(resource, &mut limit) != 0 {
            return;
        }
        let soft = limit.rlim_cur;
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // Only memlock is worth asking without limit; open files stay
        // bounded by the hard limit, as in coturn.
        if resource == libc::RLIMIT_MEMLOCK && libc::setrlimit(resource, &unlimited) == 0 {
            tracing::debug!("{what} limit raised from {soft} to unlimited");
            return;
        }
        if soft >= limit.rlim_max {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(resource, &limit) == 0 {
            tracing::debug!("{what} limit raised from {soft} to {}", limit.rlim_max);
        }
    }
}
