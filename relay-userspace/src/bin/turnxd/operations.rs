//! What turnxd shows operators: its state for the metrics and health
//! endpoints and the admin socket, and the credential service.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use turnx::{
    addresses::Families,
    admin::{AdminError, AdminServer, AdminSource},
    config::Config,
    credentials::{CredentialService, ServiceConfig},
    http::{self, Request, Response},
    metrics::{self, ReloadCounts, Snapshot},
    offload::KernelRelayed,
    shell::TurnServer,
    xdp::XdpRelay,
};

/// The running daemon as operators see it.
pub struct DaemonState {
    started: Instant,
    start_unix: u64,
    ready: AtomicBool,
    draining: AtomicBool,
    turn: Arc<TurnServer>,
    relay: Option<Arc<Mutex<XdpRelay>>>,
    config: Mutex<Config>,
    reloads: Mutex<ReloadCounts>,
    credentials: Arc<CredentialService>,
    bound: Families,
    public: Families,
    /// What turnxctl asked for, if it asked turnxd to stop: true for a
    /// handover.
    stop_request: Mutex<Option<bool>>,
    /// Wakes the main loop when it does.
    stop_asked: tokio::sync::Notify,
    /// Wakes the main loop when turnxctl asks for a drain.
    drain_asked: tokio::sync::Notify,
}

/// The endpoints' tasks and the admin socket; dropping it stops them.
pub struct Operations {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _admin: Option<AdminServer>,
}

impl Drop for Operations {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How a reload ended, for the counters.
pub enum ReloadResult {
    Applied,
    Refused,
    Failed,
}

impl DaemonState {
    /// The state of a daemon that has bound its listeners but is not
    /// ready yet.
    pub fn new(
        config: Config,
        turn: Arc<TurnServer>,
        relay: Option<Arc<Mutex<XdpRelay>>>,
        bound: Families,
        public: Families,
    ) -> Arc<DaemonState> {
        let credentials = Arc::new(CredentialService::new(service_config(
            &config,
            advertised_hosts(&config, bound, public),
        )));
        Arc::new(DaemonState {
            started: Instant::now(),
            start_unix: unix_now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            turn,
            relay,
            config: Mutex::new(config),
            reloads: Mutex::new(ReloadCounts {
                last_ok: true,
                ..ReloadCounts::default()
            }),
            credentials,
            bound,
            public,
            stop_request: Mutex::new(None),
            stop_asked: tokio::sync::Notify::new(),
            drain_asked: tokio::sync::Notify::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config.lock().expect("config lock").clone()
    }

    /// `/ready` succeeds from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Waits until turnxctl asks for a drain.
    pub async fn drain_requested(&self) {
        self.drain_asked.notified().await;
    }

    /// Whether turnxctl asked turnxd to stop: `Some(true)` for a handover.
    pub fn asked_stop(&self) -> Option<bool> {
        *self.stop_request.lock().expect("stop lock")
    }

    /// Waits until turnxctl asks turnxd to stop; true for a handover.
    pub async fn stop_requested(&self) -> bool {
        loop {
            if let Some(handover) = self.asked_stop() {
                return handover;
            }
            self.stop_asked.notified().await;
        }
    }

    /// `/ready` fails from now on.
    pub fn stop_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Fails `/ready` and refuses new allocations; the others carry on.
    pub fn start_draining(&self) {
        self.stop_ready();
        self.draining.store(true, Ordering::SeqCst);
        let alternate = self.config().server.alternate_server;
        self.turn.drain(alternate);
    }

    /// Puts a reloaded configuration in force everywhere it applies.
    pub fn apply(&self, config: Config) {
        self.turn
            .reconfigure(super::core_config(&config, self.bound, self.public));
        if self.draining.load(Ordering::SeqCst) {
            self.turn.drain(config.server.alternate_server);
        }
        self.credentials.update(service_config(
            &config,
            advertised_hosts(&config, self.bound, self.public),
        ));
        *self.config.lock().expect("config lock") = config;
    }

    /// Counts a reload.
    pub fn record_reload(&self, result: ReloadResult) {
        let mut reloads = self.reloads.lock().expect("reloads lock");
        match result {
            ReloadResult::Applied => reloads.applied += 1,
            ReloadResult::Refused => reloads.refused += 1,
            ReloadResult::Failed => reloads.failed += 1,
        }
        reloads.last_ok = matches!(result, ReloadResult::Applied);
    }

    /// Everything a scrape reports.
    pub fn snapshot(&self) -> Snapshot {
        let config = self.config();
        let (kernel, driver_errors) = match &self.relay {
            Some(relay) => {
                let relay = relay.lock().expect("XDP lock");
                let mut errors = Vec::new();
                for attachment in relay.attachments() {
                    let interface = &attachment.interface;
                    if let Ok(counters) = turnx::xdp::driver_stats::xdp_errors(interface) {
                        errors.extend(
                            counters
                                .into_iter()
                                .map(|(counter, value)| (interface.clone(), counter, value)),
                        );
                    }
                }
                (relay.counters().ok(), errors)
            }
            None => (None, Vec::new()),
        };
        let certificate_expiry = config
            .server
            .tls_cert
            .as_ref()
            .filter(|_| !config.server.tls_listen.is_empty())
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|pem| turnx::certificate::not_after(&pem).ok());
        Snapshot {
            start_time_unix: self.start_unix,
            ready: self.ready.load(Ordering::SeqCst),
            draining: self.draining.load(Ordering::SeqCst),
            core: self.turn.counters(),
            by_transport: self.turn.allocations_by_transport(),
            users: config
                .metrics
                .per_user
                .then(|| self.turn.user_allocations()),
            offload: self.turn.offload_report(),
            kernel,
            driver_errors,
            reloads: *self.reloads.lock().expect("reloads lock"),
            certificate_expiry,
        }
    }

    /// The metrics server's answer to `request`.
    fn observe(&self, request: &Request) -> Response {
        match request.path.as_str() {
            "/metrics" => Response::new(
                200,
                turnx::prometheus::CONTENT_TYPE,
                metrics::render(&self.snapshot()),
            ),
            "/live" => Response::text(200, "ok\n"),
            "/ready" if self.ready.load(Ordering::SeqCst) => Response::text(200, "ready\n"),
            "/ready" if self.draining.load(Ordering::SeqCst) => Response::text(503, "draining\n"),
            "/ready" => Response::text(503, "not ready\n"),
            _ => Response::text(404, "not found: try /metrics, /live or /ready\n"),
        }
    }
}

impl AdminSource for DaemonState {
    fn drain(&self) -> Value {
        self.drain_asked.notify_one();
        json!({ "draining": self.turn.allocations() })
    }

    fn stop(&self, handover: bool) -> Value {
        *self.stop_request.lock().expect("stop lock") = Some(handover);
        self.stop_asked.notify_one();
        let how = if handover { "handover" } else { "detach" };
        tracing::info!("turnxctl asked turnxd to stop ({how})");
        json!({ "stopping": how })
    }

    fn status(&self) -> Value {
        let config = self.config();
        let by_transport: serde_json::Map<String, Value> = self
            .turn
            .allocations_by_transport()
            .into_iter()
            .map(|(transport, count)| (transport.label().to_owned(), json!(count)))
            .collect();
        // Before the XDP lock: the offload takes it to read the bindings'
        // counters (the lock order is core, offload, XDP).
        let report = self.turn.offload_report();
        let offload = self.relay.as_ref().map(|relay| {
            let relay = relay.lock().expect("XDP lock");
            let mut attachments: Vec<Value> = relay
                .attachments()
                .iter()
                .map(|attachment| {
                    let interface = attachment.interface.as_str();
                    json!({
                        "interface": interface,
                        "xdp_mode": attachment.mode.to_string(),
                        "tc": relay.tc_interfaces().any(|tc| tc == interface),
                    })
                })
                .collect();
            for tc in relay.tc_interfaces() {
                if !relay.attachments().iter().any(|a| a.interface == tc) {
                    attachments.push(json!({ "interface": tc, "xdp_mode": null, "tc": true }));
                }
            }
            json!({
                "engine": engine_name(&config),
                "attachments": attachments,
                "bindings": report.map_or(0, |report| report.bindings),
                "capacity": report.map_or(0, |report| report.capacity),
                "stats": report.map(|report| json!({
                    "installed": report.stats.installed,
                    "removed": report.stats.removed,
                    "failed": report.stats.failed,
                    "not_udp": report.stats.not_udp,
                    "wildcard_listener": report.stats.wildcard_listener,
                    "cross_family": report.stats.cross_family,
                    "legacy_channel": report.stats.legacy_channel,
                    "relay_to_relay": report.stats.relay_to_relay,
                    "relayed": relayed_json(&report.relayed),
                })),
                "counters": relay.counters().ok().map(|counters| counters.to_json()),
            })
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "ready": self.ready.load(Ordering::SeqCst),
            "draining": self.draining.load(Ordering::SeqCst),
            "listeners": config.server.listen,
            "tls_listeners": config.server.tls_listen,
            "relay_addresses": self.bound.iter().collect::<Vec<_>>(),
            "public_addresses": self.public.iter().collect::<Vec<_>>(),
            "allocations": self.turn.allocations(),
            "allocations_by_transport": by_transport,
            "allocations_by_shard": self.turn.allocations_by_shard(),
            "offload": offload,
        })
    }

    fn allocations(&self) -> Value {
        let reports = self.turn.allocation_reports();
        Value::Array(
            reports
                .into_iter()
                .map(|report| {
                    let view = report.view;
                    let channels: Vec<Value> = view
                        .channels
                        .iter()
                        .zip(&report.kernel)
                        .map(|(channel, kernel)| {
                            json!({
                                "number": channel.number,
                                "peer": channel.peer,
                                "relayed": channel.relayed,
                                "expires_in_secs": channel.expires_in.as_secs(),
                                "kernel": kernel.as_ref().map(relayed_json),
                            })
                        })
                        .collect();
                    json!({
                        "username": view.username,
                        "transport": view.client.transport.label(),
                        "client": view.client.client,
                        "server": view.client.server,
                        "relayed": view.relayed,
                        "advertised": view.advertised,
                        "expires_in_secs": view.expires_in.as_secs(),
                        "permissions": view.permissions.iter().map(|(ip, _)| ip).collect::<Vec<_>>(),
                        "channels": channels,
                    })
                })
                .collect(),
        )
    }
}

/// Binds the metrics server, the credential service and the admin socket
/// that `state`'s configuration asks for.
pub async fn start(state: &Arc<DaemonState>) -> Result<Operations> {
    let config = state.config();
    let mut tasks = Vec::new();
    if let Some(address) = config.metrics.listen {
        let listener = bind(address, "metrics").await?;
        let observed = Arc::clone(state);
        let handler: http::Handler = Arc::new(move |request| observed.observe(request));
        tasks.push(tokio::spawn(http::serve(listener, handler)));
        tracing::info!("metrics and health checks on http://{address}/metrics, /live, /ready");
    }
    if let Some(address) = config.credentials.listen {
        let listener = bind(address, "credential service").await?;
        tasks.push(tokio::spawn(http::serve(
            listener,
            state.credentials.handler(),
        )));
        tracing::info!("credential service on http://{address}/ and /ice (keep it internal)");
    }
    let admin = match &config.admin.socket {
        Some(path) => {
            let source: Arc<dyn AdminSource> = Arc::clone(state) as Arc<dyn AdminSource>;
            match turnx::admin::serve(path, source).await {
                Ok(server) => {
                    tracing::info!("admin socket at {}", path.display());
                    Some(server)
                }
                // Another daemon there is a misconfiguration, which turnxctl
                // would make worse by talking to the wrong one.
                Err(err @ (AdminError::InUse { .. } | AdminError::NotASocket { .. })) => {
                    return Err(err).context("opening the admin socket");
                }
                // Without the socket the relay still serves (as a user
                // without write access to /run, say); say what is missing.
                Err(err) => {
                    tracing::warn!(
                        "{err}; turnxctl status and allocations will not reach this daemon \
                         (give --admin-socket a writable path, or \"\" to silence this)"
                    );
                    None
                }
            }
        }
        None => None,
    };
    Ok(Operations {
        tasks,
        _admin: admin,
    })
}

async fn bind(address: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} to {address}; is another process on it?"))
}

/// Where clients reach this relay, per family: the public address, else a
/// specific listen address, else the relay address.
fn advertised_hosts(config: &Config, bound: Families, public: Families) -> Families {
    let listen: Vec<_> = config
        .server
        .listen
        .iter()
        .map(|address| address.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    public.or(Families::first_of(&listen)).or(bound)
}

/// What the credential service hands out under `config`: minted with the
/// first `[auth] secret`, with `[credentials] uris` or those of `hosts`.
pub fn service_config(config: &Config, advertised: Families) -> ServiceConfig {
    let credentials = &config.credentials;
    let uris = if credentials.uris.is_empty() {
        let hosts: Vec<_> = advertised.iter().collect();
        let ports: Vec<u16> = config.listen_ports().into_iter().collect();
        let mut tls_ports: Vec<u16> = config.server.tls_listen.iter().map(|a| a.port()).collect();
        tls_ports.sort_unstable();
        tls_ports.dedup();
        turnx::credentials::default_uris(&hosts, &ports, &tls_ports)
    } else {
        credentials.uris.clone()
    };
    ServiceConfig {
        secret: config.auth.secrets.first().cloned(),
        uris,
        default_ttl_secs: credentials.default_ttl_secs,
        max_ttl_secs: credentials.max_ttl_secs,
        ice_transport_policy: credentials.ice_transport_policy,
    }
}

fn relayed_json(relayed: &KernelRelayed) -> Value {
    json!({
        "to_peer_packets": relayed.to_peer_packets,
        "to_peer_bytes": relayed.to_peer_bytes,
        "to_client_packets": relayed.to_client_packets,
        "to_client_bytes": relayed.to_client_bytes,
    })
}

/// The engine's name as the configuration spells it.
fn engine_name(config: &Config) -> Option<String> {
    use clap::ValueEnum as _;
    let value = config.offload.engine.to_possible_value()?;
    Some(value.get_name().to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
