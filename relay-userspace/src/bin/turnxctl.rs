//! turnxctl: inspect a running turnxd, mint credentials, and run the
//! credential service on its own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, parser::ValueSource};
use serde_json::{Value, json};
use turnx::{
    admin,
    config::Config,
    credentials::{self, CredentialService, ServiceConfig},
    xdp::{self, driver_stats, netlink},
};

/// Operator CLI for the turnx TURN relay.
#[derive(Debug, Parser)]
#[command(name = "turnxctl", version)]
struct Args {
    /// The daemon's admin socket: turnxd's [admin] socket or --admin-socket.
    #[arg(
        long,
        global = true,
        env = "TURNXD_ADMIN_SOCKET",
        default_value = "/run/turnx/turnxd.sock"
    )]
    admin_socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's state (version, uptime, readiness, listeners,
    /// allocations, offload), then the XDP programs on each interface,
    /// turnx's packet counters and the driver's XDP error counters.
    Status {
        /// Interfaces to show; default: every interface in this namespace.
        #[arg(long = "interface", short)]
        interfaces: Vec<String>,
    },
    /// List the daemon's allocations with their permissions, channels and
    /// the kernel's counters per channel.
    Allocations,
    /// Mint TURN REST API credentials (what the credential service hands
    /// out) with a shared secret.
    Auth {
        /// The user part of the credential.
        #[arg(long)]
        user: String,
        /// Seconds the credential stays valid; default: [credentials]
        /// default_ttl_secs of --config, else of the built-in defaults.
        #[arg(long)]
        ttl: Option<u64>,
        /// The shared secret. Prefer --secret-file or TURNX_AUTH_SECRET:
        /// arguments are visible to every user of the machine.
        #[arg(long, env = "TURNX_AUTH_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// A file holding the shared secret (a trailing newline is ignored).
        #[arg(long, conflicts_with = "config")]
        secret_file: Option<PathBuf>,
        /// A turnxd.toml: its first [auth] secrets entry, and its
        /// [credentials] uris.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop the daemon, in one of two ways (one is required).
    ///
    /// --handover: for a restart or an upgrade. turnxd writes its UDP
    /// allocations to its handover file and exits, leaving the kernel
    /// programs attached and relaying bound channels; the next turnxd takes
    /// both over. --detach: every allocation ends, the programs detach and
    /// every pin is removed, for a node that turnx leaves.
    #[command(group(clap::ArgGroup::new("how").required(true).args(["handover", "detach"])))]
    Stop {
        /// Hand over to the next turnxd.
        #[arg(long)]
        handover: bool,
        /// End everything and detach.
        #[arg(long)]
        detach: bool,
    },
    /// Drain the daemon, as SIGTERM does by default: /ready fails, new
    /// allocations are refused, the others go on until they end or [drain]
    /// timeout_secs passes; then turnxd detaches and exits.
    Drain,
    /// The credential service.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Run the credential service on its own (the Kubernetes Deployment),
    /// until SIGTERM or SIGINT. Re-reads --config every 2 s and on SIGHUP,
    /// so a rotated secret takes effect without a restart.
    Serve {
        /// Address to serve on; default: [credentials] listen of --config.
        #[arg(long, env = "TURNXD_CREDENTIALS_LISTEN")]
        listen: Option<SocketAddr>,
        /// The turnxd.toml to take [auth] secrets and [credentials] from.
        #[arg(long, env = "TURNXD_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    // clap counts TURNX_AUTH_SECRET in conflicts; only a --secret typed on
    // the command line may not meet --secret-file or --config.
    if let Some(auth) = matches.subcommand_matches("auth")
        && auth.value_source("secret") == Some(ValueSource::CommandLine)
        && (auth.contains_id("secret_file") || auth.contains_id("config"))
    {
        let mut command = Args::command();
        let auth = command
            .find_subcommand_mut("auth")
            .expect("the auth subcommand");
        auth.clone()
            .bin_name("turnxctl auth")
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "give one of --secret, --secret-file and --config",
            )
            .exit();
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("turnxctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Status { interfaces } => status(&args.admin_socket, interfaces, args.json),
        Command::Allocations => allocations(&args.admin_socket, args.json),
        Command::Stop { handover, .. } => stop(&args.admin_socket, handover, args.json),
        Command::Drain => {
            let answer = admin::request(&args.admin_socket, "drain")?;
            if args.json {
                println!("{answer}");
            } else {
                println!("turnxd is draining {} allocations", answer["draining"]);
            }
            Ok(())
        }
        Command::Auth {
            user,
            ttl,
            secret,
            secret_file,
            config,
        } => auth(&user, ttl, secret, secret_file, config, args.json),
        Command::Credentials {
            command: CredentialsCommand::Serve { listen, config },
        } => credentials_serve(listen, &config),
    }
}

// ---------------------------------------------------------------- status

fn status(socket: &Path, interfaces: Vec<String>, json: bool) -> Result<()> {
    let daemon = admin::request(socket, "status");
    if !json {
        match &daemon {
            Ok(status) => print_daemon_status(status),
            Err(err) => println!("turnxd: could not reach the daemon: {err}"),
        }
    }
    // The kernel view works without the daemon (its programs outlive it,
    // and it may be the daemon that is broken), so it always runs.
    let report = kernel_view(interfaces, json)?;
    if json {
        let (daemon, daemon_error) = match daemon {
            Ok(status) => (status, Value::Null),
            Err(err) => (Value::Null, Value::String(err.to_string())),
        };
        let document = json!({
            "daemon": daemon,
            "daemon_error": daemon_error,
            "interfaces": report,
        });
        println!("{document}");
    }
    Ok(())
}

fn print_daemon_status(status: &Value) {
    let state = if status["draining"].as_bool() == Some(true) {
        "draining"
    } else if status["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "not ready"
    };
    let uptime = status["uptime_secs"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), duration);
    println!("turnxd {}: up {uptime}, {state}", text(&status["version"]));
    println!("listeners: {}", list(&status["listeners"]));
    if status["tls_listeners"]
        .as_array()
        .is_some_and(|tls| !tls.is_empty())
    {
        println!("tls listeners: {}", list(&status["tls_listeners"]));
    }
    let by_transport = match status["allocations_by_transport"].as_object() {
        Some(map) if !map.is_empty() => format!(
            " ({})",
            map.iter()
                .map(|(transport, n)| format!("{transport} {}", text(n)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    };
    println!(
        "allocations: {}{by_transport}",
        text(&status["allocations"])
    );
    if let Some(shards) = status["allocations_by_shard"].as_array() {
        let counts: Vec<String> = shards.iter().map(text).collect();
        println!(
            "shards: {} (allocations {})",
            counts.len(),
            counts.join(", ")
        );
    }
    let offload = &status["offload"];
    if offload.is_null() {
        println!("offload: off (everything relays in userspace)");
        return;
    }
    let attachments: Vec<String> = offload["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|attachment| {
            let mut engines = Vec::new();
            if let Some(mode) = attachment["xdp_mode"].as_str() {
                engines.push(format!("xdp {mode}"));
            }
            if attachment["tc"].as_bool() == Some(true) {
                engines.push("tc".to_owned());
            }
            format!(
                "{} ({})",
                text(&attachment["interface"]),
                if engines.is_empty() {
                    "nothing attached".to_owned()
                } else {
                    engines.join(", ")
                }
            )
        })
        .collect();
    println!(
        "offload: engine {}, on {}",
        text(&offload["engine"]),
        if attachments.is_empty() {
            "no interface".to_owned()
        } else {
            attachments.join(", ")
        }
    );
    println!(
        "kernel bindings: {} of {}",
        text(&offload["bindings"]),
        text(&offload["capacity"])
    );
    for (name, key) in [("offload stats", "stats"), ("kernel counters", "counters")] {
        if let Some(pairs) = nonzero_pairs(&offload[key]) {
            println!("{name}: {pairs}");
        }
    }
}

/// `key=value` for an object's non-zero entries (all zero: "all zero"),
/// or `None` when there is no such object.
fn nonzero_pairs(value: &Value) -> Option<String> {
    let map = value.as_object()?;
    let pairs: Vec<String> = map
        .iter()
        .filter(|(_, v)| v.as_u64() != Some(0) && v.as_f64() != Some(0.0))
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    Some(if pairs.is_empty() {
        "all zero".to_owned()
    } else {
        pairs.join(" ")
    })
}

/// Today's per-interface view: the XDP programs, turnx's counters and the
/// driver's XDP errors. Prints it unless `json`; returns the JSON objects.
fn kernel_view(mut interfaces: Vec<String>, json: bool) -> Result<Vec<Value>> {
    // Interfaces the operator named must be readable; of all the ones
    // listed, some (a pod's veth) may go away while we look.
    let named = !interfaces.is_empty();
    if !named {
        interfaces = std::fs::read_dir("/sys/class/net")
            .context("listing /sys/class/net")?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        interfaces.sort();
    }
    let mut report = Vec::new();
    for name in &interfaces {
        match interface_view(name, json) {
            Ok(view) => report.push(view),
            Err(err) if !named => {
                if !json {
                    println!("{name}: {err:#}");
                }
                report.push(json!({ "interface": name, "error": format!("{err:#}") }));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(report)
}

/// One interface's XDP programs, turnx's counters and the driver's XDP
/// error counters; printed unless `json`.
fn interface_view(name: &str, json: bool) -> Result<Value> {
    let ifindex = xdp::if_index(name)?;
    let attached = netlink::attached_programs(ifindex)
        .with_context(|| format!("querying XDP programs on {name}"))?;
    // The XDP program's counters, or where the tc engine runs alone, its.
    let counters = match xdp::attached_counters(&attached)? {
        Some(counters) => Some(counters),
        None => xdp::tc_counters(name)?,
    };
    let errors = driver_stats::xdp_errors(name)
        .with_context(|| format!("reading the driver statistics of {name}"))?;
    let view = json!({
        "interface": name,
        "xdp": attached.iter().map(|program| json!({
            "program_id": program.program_id,
            "mode": program.mode.to_string(),
        })).collect::<Vec<_>>(),
        "turnx": counters.map(|(id, counters)| json!({
            "program_id": id,
            "counters": counters.to_json(),
        })),
        "driver_xdp_errors": errors
            .iter()
            .map(|(counter, value)| (counter.clone(), json!(value)))
            .collect::<serde_json::Map<_, _>>(),
    });
    if !json {
        print_text(name, &attached, counters);
        let lost: Vec<String> = errors
            .iter()
            .filter(|(_, value)| *value != 0)
            .map(|(counter, value)| format!("{counter}={value}"))
            .collect();
        if !lost.is_empty() {
            println!("{name}: the driver lost XDP frames: {}", lost.join(" "));
        }
    }
    Ok(view)
}

fn print_text(
    name: &str,
    attached: &[netlink::AttachedXdp],
    counters: Option<(u32, xdp::ClassCounters)>,
) {
    let ours = counters.as_ref().map(|(id, _)| *id);
    if let Some((id, counters)) = &counters {
        println!("{name}: turnx (program {id}): {counters}");
    }
    for program in attached {
        if Some(program.program_id) != ours {
            println!(
                "{name}: other XDP program {} ({} mode)",
                program.program_id, program.mode
            );
        }
    }
    if attached.is_empty() && counters.is_none() {
        println!("{name}: no XDP program");
    }
}

// ----------------------------------------------------------- allocations

/// Asks turnxd to stop (see `Command::Stop`).
fn stop(socket: &Path, handover: bool, json: bool) -> Result<()> {
    let command = if handover {
        "stop-handover"
    } else {
        "stop-detach"
    };
    let answer = admin::request(socket, command)?;
    if json {
        println!("{answer}");
    } else if handover {
        println!(
            "turnxd is stopping for a handover: the kernel goes on relaying bound channels, \
             and the next turnxd takes the allocations over"
        );
    } else {
        println!("turnxd is stopping: every allocation ends and the programs detach");
    }
    Ok(())
}

fn allocations(socket: &Path, json: bool) -> Result<()> {
    let allocations = admin::request(socket, "allocations")?;
    if json {
        println!("{allocations}");
        return Ok(());
    }
    let Some(list) = allocations.as_array() else {
        bail!("turnxd answered allocations with something other than a list: {allocations}");
    };
    if list.is_empty() {
        println!("no allocations");
        return Ok(());
    }
    let header = [
        "USER",
        "TRANSPORT",
        "CLIENT",
        "RELAYED",
        "EXPIRES",
        "PERMISSIONS",
    ];
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|allocation| {
            [
                text(&allocation["username"]),
                text(&allocation["transport"]),
                text(&allocation["client"]),
                list_or_dash(&allocation["relayed"]),
                allocation["expires_in_secs"]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), duration),
                list_or_dash(&allocation["permissions"]),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                // No padding after the last column.
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out
    };
    println!("{}", line(&header.map(String::from)));
    for (allocation, row) in list.iter().zip(&rows) {
        println!("{}", line(row));
        let several_relayed = allocation["relayed"]
            .as_array()
            .is_some_and(|relayed| relayed.len() > 1);
        for channel in allocation["channels"].as_array().into_iter().flatten() {
            println!("  {}", channel_line(channel, several_relayed));
        }
    }
    Ok(())
}

fn channel_line(channel: &Value, several_relayed: bool) -> String {
    let number = match channel["number"].as_u64() {
        Some(number) => format!("{number:#06x}"),
        None => text(&channel["number"]),
    };
    let via = if several_relayed {
        format!(" via {}", text(&channel["relayed"]))
    } else {
        String::new()
    };
    let kernel = &channel["kernel"];
    let kernel = if kernel.is_null() {
        "not in the kernel".to_owned()
    } else {
        let count = |key: &str| kernel[key].as_u64().unwrap_or(0);
        format!(
            "kernel: to peer {} packets {}, to client {} packets {}",
            count("to_peer_packets"),
            bytes(count("to_peer_bytes")),
            count("to_client_packets"),
            bytes(count("to_client_bytes")),
        )
    };
    format!(
        "channel {number} peer {}{via}  {kernel}",
        text(&channel["peer"])
    )
}

// ------------------------------------------------------------------ auth

/// The first of turnxd's own `TURNXD_STATIC_AUTH_SECRET` secrets: inside
/// the daemon's container, `turnxctl auth --user U` needs nothing more.
fn daemon_secret_from_env() -> Option<String> {
    let secrets = std::env::var("TURNXD_STATIC_AUTH_SECRET").ok()?;
    let first = secrets.split(',').find(|secret| !secret.is_empty())?;
    Some(first.to_owned())
}

fn auth(
    user: &str,
    ttl: Option<u64>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    // The group makes these exclusive on the command line; TURNX_AUTH_SECRET
    // only fills --secret when neither of the others is given.
    let (secret, uris, default_ttl) = if let Some(path) = secret_file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the secret from {}", path.display()))?;
        (
            text.trim_end_matches(['\r', '\n']).to_owned(),
            Vec::new(),
            Config::default().credentials.default_ttl_secs,
        )
    } else if let Some(path) = config {
        let config = load_config(&path)?;
        let Some(secret) = config.auth.secrets.first() else {
            bail!(
                "{} has no [auth] secrets; add one, or give --secret-file",
                path.display()
            );
        };
        (
            secret.clone(),
            config.credentials.uris.clone(),
            config.credentials.default_ttl_secs,
        )
    } else if let Some(secret) = secret.or_else(daemon_secret_from_env) {
        (
            secret,
            Vec::new(),
            Config::default().credentials.default_ttl_secs,
        )
    } else {
        bail!(
            "give --secret-file, --config or TURNX_AUTH_SECRET (or --secret); in turnxd's \
             pod, TURNXD_STATIC_AUTH_SECRET serves"
        );
    };
    if secret.is_empty() {
        bail!("the shared secret is empty");
    }
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        bail!("--user must be non-empty, without ':' or control characters");
    }
    let ttl = ttl.unwrap_or(default_ttl);
    if ttl == 0 {
        bail!("--ttl must be at least 1 second");
    }
    let mut credential = credentials::mint(&secret, user, ttl, unix_now());
    credential.uris = uris;
    if json {
        println!("{}", serde_json::to_string(&credential)?);
    } else {
        println!("username {}", credential.username);
        println!("password {}", credential.password);
        println!("ttl {}", credential.ttl);
        for uri in &credential.uris {
            println!("uri {uri}");
        }
    }
    Ok(())
}

/// [`Config::load`], its message flattened: `ConfigError`'s text already
/// holds its cause, which `{:#}` would print a second time.
fn load_config(path: &Path) -> Result<Config> {
    Config::load(Some(path)).map_err(|err| anyhow::anyhow!("{err}"))
}

/// [`Config::from_toml`] of `path`'s `text`, with its `[auth]
/// secrets_file` read, flattened as [`load_config`].
fn parse_config(text: &str, path: &Path) -> Result<Config> {
    let mut config = Config::from_toml(text, &path.display().to_string())
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    config
        .read_secrets_file()
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(config)
}

/// The config file's text and that of the files it names (the secrets
/// file): what a change is looked for in.
fn watched_text(path: &Path, text: &str) -> String {
    let mut all = text.to_owned();
    if let Ok(config) = Config::from_toml(text, &path.display().to_string()) {
        for file in config.watched_files() {
            all.push('\0');
            all.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        }
    }
    all
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

// --------------------------------------------------- credentials serve

/// How often the standalone service re-reads its config file: a mounted
/// ConfigMap or Secret changes under it without a signal.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

fn credentials_serve(listen: Option<SocketAddr>, config_path: &Path) -> Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve_credentials(listen, config_path))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a pod's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The file's text and the service configuration it gives.
fn read_service_config(path: &Path) -> Result<(String, Config, ServiceConfig)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = parse_config(&text, path)?;
    let service = service_config(&config, path)?;
    Ok((text, config, service))
}

fn service_config(config: &Config, path: &Path) -> Result<ServiceConfig> {
    if config.credentials.uris.is_empty() {
        bail!(
            "{}: [credentials] uris is empty; the standalone credential service cannot \
             discover the relay's addresses, so list the TURN URIs there, such as \
             uris = [\"turn:203.0.113.7:3478?transport=udp\"]",
            path.display()
        );
    }
    // As turnxd does, TURNXD_STATIC_AUTH_SECRET adds to the file's secrets
    // (the first one mints): a Kubernetes Secret can arrive either way.
    let from_env = std::env::var("TURNXD_STATIC_AUTH_SECRET").unwrap_or_default();
    let secret = config
        .auth
        .secrets
        .iter()
        .map(String::as_str)
        .chain(from_env.split(',').filter(|secret| !secret.is_empty()))
        .next()
        .map(str::to_owned);
    Ok(ServiceConfig {
        secret,
        uris: config.credentials.uris.clone(),
        default_ttl_secs: config.credentials.default_ttl_secs,
        max_ttl_secs: config.credentials.max_ttl_secs,
        ice_transport_policy: config.credentials.ice_transport_policy,
    })
}

async fn serve_credentials(listen: Option<SocketAddr>, config_path: &Path) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let (text, config, service_cfg) = read_service_config(config_path)?;
    let mut text = watched_text(config_path, &text);
    let Some(listen) = listen.or(config.credentials.listen) else {
        bail!(
            "give --listen, or set [credentials] listen in {}",
            config_path.display()
        );
    };
    if service_cfg.secret.is_none() {
        tracing::warn!(
            "{} has no [auth] secrets: the service answers 503 until one is added",
            config_path.display()
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the credential service to {listen}"))?;
    let local = listener.local_addr().unwrap_or(listen);
    let service = Arc::new(CredentialService::new(service_cfg));
    tokio::spawn(turnx::http::serve(listener, service.handler()));
    tracing::info!(
        uris = ?service.config().uris,
        "credential service listening on http://{local}/ (internal only: it hands out credentials to anyone who asks)"
    );

    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = hangup.recv() => true,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        reload(config_path, &service, &mut text, forced);
    }
    tracing::info!("credential service stopping");
    Ok(())
}

/// Re-reads the config file and applies it when its text changed (or on
/// SIGHUP); a broken file keeps the running configuration.
fn reload(path: &Path, service: &CredentialService, last_text: &mut String, forced: bool) {
    let current = match std::fs::read_to_string(path) {
        Ok(current) => current,
        Err(err) => {
            // A mounted volume swaps its files by symlink; a read in that
            // instant can fail, and the next tick sees the new file.
            if forced {
                tracing::error!(
                    "configuration reload failed: reading {}: {err}",
                    path.display()
                );
            }
            return;
        }
    };
    let watched = watched_text(path, &current);
    if !forced && watched == *last_text {
        return;
    }
    // Remember the text even when it is broken, so it is reported once
    // and not every 2 s.
    *last_text = watched;
    let applied = parse_config(&current, path).and_then(|config| service_config(&config, path));
    match applied {
        Ok(new) if new == service.config() => {
            tracing::info!("configuration reloaded: the credential service is unchanged");
        }
        Ok(new) => {
            if new.secret.is_none() {
                tracing::warn!("configuration reloaded without [auth] secrets: answering 503");
            }
            service.update(new);
            tracing::info!("configuration reloaded");
        }
        Err(err) => {
            tracing::error!("configuration reload failed, keeping the running one: {err:#}");
        }
    }
}

// ------------------------------------------------------------- rendering

/// A JSON value as text: strings bare, `null` as "-", others as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// A JSON array as comma-separated text; "none" when empty.
fn list(value: &Value) -> String {
    match value.as_array() {
        Some(items) if items.is_empty() => "none".to_owned(),
        Some(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        None => text(value),
    }
}

/// Like [`list`], with "-" for an empty array (a table cell).
fn list_or_dash(value: &Value) -> String {
    match value.as_array() {
        Some(items) if items.is_empty() => "-".to_owned(),
        _ => list(value),
    }
}

/// Seconds as "1d 2h 3m 4s", leading zero units left out.
fn duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut left = secs;
    let mut parts = Vec::new();
    for (size, unit) in units {
        let n = left / size;
        left %= size;
        if n > 0 || (!parts.is_empty()) || size == 1 {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

/// Bytes with a binary unit.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
