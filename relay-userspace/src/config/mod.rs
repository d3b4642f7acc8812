//! turnxd's configuration: a TOML file, with an embedded default.
//!
//! Precedence, lowest first: the built-in defaults (`config/default.toml`,
//! the only place they are written down), the file given with `--config`,
//! then command-line flags and `TURNXD_*` environment variables
//! ([`overrides`]). What a running daemon may change on a reload is in
//! [`reload`].

pub mod overrides;
pub mod reload;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use crate::turn::policy::Cidr;

/// The configuration turnxd runs with when given no file; also the reference
/// for every key and its default.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/default.toml");

/// Everything turnxd can be configured with. Every field is required in
/// the merged document: a file's missing keys come from
/// [`DEFAULT_CONFIG_TOML`] (see [`Config::from_toml`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TURN listeners and relaying.
    pub server: ServerConfig,
    /// Credentials.
    pub auth: AuthConfig,
    /// Lifetimes and quotas.
    pub limits: LimitsConfig,
    /// Which peers are reachable.
    pub peers: PeersConfig,
    /// Which kernel engines relay bound channels.
    pub offload: OffloadConfig,
    /// The XDP program.
    pub xdp: XdpConfig,
    /// Prometheus metrics and health checks.
    pub metrics: MetricsConfig,
    /// The credential service for applications.
    pub credentials: CredentialsConfig,
    /// The local admin socket for turnxctl.
    pub admin: AdminConfig,
    /// Graceful shutdown.
    pub drain: DrainConfig,
    /// Restarts and upgrades without dropping allocations.
    pub handover: HandoverConfig,
    /// Logging and counters.
    pub log: LogConfig,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses the TURN server listens on.
    pub listen: Vec<SocketAddr>,
    /// TLS-over-TCP listen addresses (TURNS).
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TURNS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TURNS.
    pub tls_key: Option<PathBuf>,
    /// Realm of the long-term credentials.
    pub realm: String,
    /// Relayed socket addresses; empty picks them (see the default file).
    pub relay_addresses: Vec<IpAddr>,
    /// First and last relay port.
    pub relay_ports: [u16; 2],
    /// Shards of the userspace relay; 0 for one per usable CPU.
    pub workers: usize,
    /// SOFTWARE attribute; empty for none.
    pub software: String,
    /// Accept RFC 5766 channel numbers up to 0x7FFF.
    pub legacy_channel_numbers: bool,
    /// Relayed addresses advertised to clients instead of the bound ones
    /// (a NATed node's public addresses), at most one per family.
    pub public_addresses: Vec<IpAddr>,
    /// A STUN server asked at start for the public address of the relay
    /// address, as "host:port"; `None` asks none.
    #[serde(deserialize_with = "empty_is_none")]
    pub public_address_stun: Option<String>,
    /// Sent as ALTERNATE-SERVER to new allocations while draining.
    #[serde(deserialize_with = "empty_is_none")]
    pub alternate_server: Option<SocketAddr>,
}

/// `[auth]`. Its `Debug` shows user names and how many secrets there
/// are, never a password or a secret.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static users: name to password.
    pub users: BTreeMap<String, String>,
    /// TURN REST API shared secrets.
    pub secrets: Vec<String>,
    /// A file of further secrets, one a line (a mounted Kubernetes
    /// Secret); read at start and on every reload.
    #[serde(deserialize_with = "empty_is_none")]
    pub secrets_file: Option<PathBuf>,
    /// Nonce lifetime in seconds.
    pub nonce_lifetime_secs: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("secrets_file", &self.secrets_file)
            .field("nonce_lifetime_secs", &self.nonce_lifetime_secs)
            .finish()
    }
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest allocation lifetime, seconds.
    pub max_lifetime_secs: u64,
    /// Allocations per username; 0 for no limit.
    pub user_quota: u32,
    /// Allocations in all; 0 for no limit.
    pub total_quota: u32,
    /// Response/request size ratio allowed for unauthenticated UDP requests.
    pub amplification_limit: f64,
    /// Unauthenticated response bytes per second to one source prefix.
    pub unauthenticated_bytes_per_sec: u32,
    /// Burst of unauthenticated response bytes to one source prefix.
    pub unauthenticated_burst_bytes: u32,
    /// Unauthenticated response bytes per second to all sources together.
    pub unauthenticated_total_bytes_per_sec: u32,
    /// Peer IPs one allocation may hold permissions for; 0 for no cap.
    pub permissions_per_allocation: usize,
    /// Channels one allocation may bind; 0 for no cap.
    pub channels_per_allocation: usize,
    /// Concurrent TCP and TLS connections; 0 for no cap.
    pub stream_connections: usize,
    /// Concurrent TCP and TLS connections from one IP address; 0 for no cap.
    pub stream_connections_per_address: usize,
    /// Application bytes per second one allocation may relay each way; 0
    /// for no limit.
    pub allocation_bytes_per_sec: u64,
    /// Application bytes per second one username may relay each way, over
    /// all its allocations; 0 for no limit.
    pub user_bytes_per_sec: u64,
    /// What a bandwidth limit lets through at once, as milliseconds at its
    /// rate.
    pub bandwidth_burst_ms: u64,
}

/// `[peers]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeersConfig {
    /// Allowed peer blocks; empty allows any peer not denied.
    pub allowed: Vec<Cidr>,
    /// Extra denied peer blocks.
    pub denied: Vec<Cidr>,
    /// Whether the built-in deny-list applies.
    pub deny_defaults: bool,
    /// Whether clients may reach other allocations of this relay.
    pub relay_to_relay: bool,
}

/// `[offload]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OffloadConfig {
    /// The kernel engines used.
    pub engine: Engine,
    /// Name patterns of pods' host-side veths, which the tc engine follows
    /// (see [`crate::pod_interfaces`]).
    pub pod_interfaces: Vec<String>,
}

/// Which kernel programs relay bound channels.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// XDP where the egress delivers what XDP sends, the tc engine for the
    /// rest; the tc engine alone on interfaces another XDP program holds.
    #[default]
    Auto,
    /// The XDP engine only.
    Xdp,
    /// The tc engine only.
    Tc,
    /// No kernel engine: userspace relays everything.
    Off,
}

/// `[xdp]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Whether to load and attach the XDP program at all.
    pub enabled: bool,
    /// Interfaces to attach to; empty means those carrying a default route.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub mode: XdpMode,
    /// Hand frames relayed in the kernel to the stack instead of
    /// redirecting them.
    pub route_in_stack: bool,
    /// Channel bindings the kernel can hold.
    pub max_bindings: u32,
    /// Directory on bpffs for the pinned maps; empty: no pinning.
    pub pin_dir: String,
}

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, or generic mode where the driver refuses native.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only: works on every interface, slower.
    Generic,
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics and health server; `None`: off.
    #[serde(deserialize_with = "empty_is_none")]
    pub listen: Option<SocketAddr>,
    /// Label allocations with their user (unbounded cardinality with REST
    /// usernames).
    pub per_user: bool,
}

/// `[credentials]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// Address of the credential service; `None`: off.
    #[serde(deserialize_with = "empty_is_none")]
    pub listen: Option<SocketAddr>,
    /// TURN URIs handed out; empty: derived from the relay's addresses.
    pub uris: Vec<String>,
    /// Lifetime of credentials when the request names none, seconds.
    pub default_ttl_secs: u64,
    /// Longest lifetime handed out, seconds.
    pub max_ttl_secs: u64,
    /// The `iceTransportPolicy` of `/ice` answers.
    pub ice_transport_policy: crate::credentials::IcePolicy,
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Path of the admin socket; `None`: off.
    #[serde(deserialize_with = "empty_is_none")]
    pub socket: Option<PathBuf>,
}

/// `[drain]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// Longest wait on SIGTERM for allocations to end, seconds.
    pub timeout_secs: u64,
}

/// `[handover]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HandoverConfig {
    /// Where turnxd writes down its UDP allocations for the next turnxd;
    /// empty: nowhere, and a new turnxd starts empty.
    pub state_file: String,
    /// What SIGTERM does.
    pub on_sigterm: OnSigterm,
}

/// What turnxd does on SIGTERM.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnSigterm {
    /// Drain (see `[drain]`), then detach and exit.
    #[default]
    Drain,
    /// Hand over to the next turnxd at once, as `turnxctl stop --handover`.
    Handover,
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
    /// Text for people, or JSON lines for log collectors.
    pub format: LogFormat,
    /// Seconds between counter log lines; 0 disables them.
    pub stats_interval_secs: u64,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Reads a string where "" means "none" and anything else parses as `T`.
fn empty_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|err| serde::de::Error::custom(format!("{text:?}: {err}")))
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said (not a `source`: the message carries it).
        reason: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid configuration in {origin}: {reason}")]
    Parse {
        /// The file, or "built-in defaults".
        origin: String,
        /// What the parser said (with line and column for syntax errors).
        reason: Box<toml::de::Error>,
    },
    /// The values parse but cannot work together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The smallest `[limits] unauthenticated_burst_bytes`: a handful of
/// challenges (a 401 is 50 to 150 bytes).
const MIN_BURST_BYTES: u32 = 512;

/// Most shards `[server] workers = 0` runs: past that, one socket of a
/// listener per core costs more than the cores give.
pub const AUTO_WORKERS: usize = 16;
/// Most shards `[server] workers` may ask for.
pub const MAX_WORKERS: usize = 256;

/// The log levels the `[log] level` key accepts.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Default for Config {
    /// The built-in configuration, [`DEFAULT_CONFIG_TOML`].
    fn default() -> Self {
        defaults_table()
            .try_into()
            .expect("the built-in config/default.toml deserializes (a unit test checks)")
    }
}

/// The built-in configuration as a TOML table.
fn defaults_table() -> toml::Table {
    DEFAULT_CONFIG_TOML
        .parse()
        .expect("the built-in config/default.toml parses (a unit test checks)")
}

/// Lays `over` onto `base`: tables merge key by key, anything else
/// replaces. A file thereby only names the keys it changes.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Config {
    /// Reads `path`, or returns the built-in defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
                    path: path.to_owned(),
                    reason,
                })?;
                let mut config = Config::from_toml(&text, &path.display().to_string())?;
                config.read_secrets_file()?;
                Ok(config)
            }
        }
    }

    /// Adds the secrets of `[auth] secrets_file`, if set, after those of
    /// `[auth] secrets`: one a line; blank lines and lines starting with
    /// `#` are skipped. ([`Config::load`] does this; text parsed with
    /// [`Config::from_toml`] needs it called.)
    pub fn read_secrets_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.auth.secrets_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.clone(),
            reason,
        })?;
        let secrets = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned);
        self.auth.secrets.extend(secrets);
        Ok(())
    }

    /// The files besides the configuration file itself that a reload
    /// reads, and whose change should trigger one.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.auth.secrets_file.iter().cloned().collect()
    }

    /// Parses TOML text over the built-in defaults and validates the
    /// result; `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_error = |reason| ConfigError::Parse {
            origin: origin.to_owned(),
            reason: Box::new(reason),
        };
        let mut merged = defaults_table();
        merge(
            &mut merged,
            text.parse::<toml::Table>().map_err(parse_error)?,
        );
        let config: Config = merged.try_into().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// The userspace relay's shards: `[server] workers`, or for 0 one per
    /// CPU this process may run on (at most [`AUTO_WORKERS`]).
    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(AUTO_WORKERS),
            workers => workers,
        }
    }

    /// Checks the rules the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "[server] listen is empty; give at least one address such as \"0.0.0.0:3478\""
                    .into(),
            ));
        }
        if let Some(zero) = self.server.listen.iter().find(|a| a.port() == 0) {
            return Err(ConfigError::Invalid(format!(
                "[server] listen address {zero} has port 0; TURN clients need a fixed port"
            )));
        }
        let [first, last] = self.server.relay_ports;
        if first == 0 || first > last {
            return Err(ConfigError::Invalid(format!(
                "[server] relay_ports [{first}, {last}] is not a range of non-zero ports"
            )));
        }
        if self.server.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid(format!(
                "[server] workers = {} is more than {MAX_WORKERS}; give at most one per core, or 0 \
                 for one per CPU",
                self.server.workers
            )));
        }
        let families =
            |addresses: &[IpAddr], v4: bool| addresses.iter().filter(|a| a.is_ipv4() == v4).count();
        if families(&self.server.relay_addresses, true) > 1
            || families(&self.server.relay_addresses, false) > 1
        {
            return Err(ConfigError::Invalid(
                "[server] relay_addresses holds at most one IPv4 and one IPv6 address".into(),
            ));
        }
        if families(&self.server.public_addresses, true) > 1
            || families(&self.server.public_addresses, false) > 1
        {
            return Err(ConfigError::Invalid(
                "[server] public_addresses holds at most one IPv4 and one IPv6 address".into(),
            ));
        }
        let credentials = &self.credentials;
        if credentials.default_ttl_secs == 0
            || credentials.default_ttl_secs > credentials.max_ttl_secs
        {
            return Err(ConfigError::Invalid(
                "[credentials] default_ttl_secs must be at least 1 and at most max_ttl_secs".into(),
            ));
        }
        if let Some(uri) = credentials
            .uris
            .iter()
            .find(|uri| !(uri.starts_with("turn:") || uri.starts_with("turns:")))
        {
            return Err(ConfigError::Invalid(format!(
                "[credentials] uris entry {uri:?} is not a turn: or turns: URI"
            )));
        }
        let has_tls_files = self.server.tls_cert.is_some() && self.server.tls_key.is_some();
        if !self.server.tls_listen.is_empty() && !has_tls_files {
            return Err(ConfigError::Invalid(
                "[server] tls_listen needs tls_cert and tls_key (PEM files)".into(),
            ));
        }
        if self.xdp.max_bindings == 0 {
            return Err(ConfigError::Invalid(
                "[xdp] max_bindings must be at least 1".into(),
            ));
        }
        if self.server.realm.is_empty() {
            return Err(ConfigError::Invalid("[server] realm is empty".into()));
        }
        if self.limits.max_lifetime_secs < 600 {
            return Err(ConfigError::Invalid(
                "[limits] max_lifetime_secs is below the RFC default lifetime of 600 s".into(),
            ));
        }
        if (self.limits.allocation_bytes_per_sec != 0 || self.limits.user_bytes_per_sec != 0)
            && self.limits.bandwidth_burst_ms < 10
        {
            return Err(ConfigError::Invalid(
                "[limits] bandwidth_burst_ms must be at least 10 with a bandwidth limit: a \
                 smaller burst drops datagrams that merely arrive together"
                    .into(),
            ));
        }
        if self.limits.amplification_limit.is_nan() || self.limits.amplification_limit < 1.0 {
            return Err(ConfigError::Invalid(
                "[limits] amplification_limit must be 1.0 or more".into(),
            ));
        }
        if self.limits.unauthenticated_bytes_per_sec != 0
            && self.limits.unauthenticated_burst_bytes < MIN_BURST_BYTES
        {
            return Err(ConfigError::Invalid(format!(
                "[limits] unauthenticated_burst_bytes must be at least {MIN_BURST_BYTES}: a \
                 burst smaller than a few responses refuses clients that did nothing wrong"
            )));
        }
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "[log] level {:?} is not one of {}",
                self.log.level,
                LOG_LEVELS.join(", ")
            )));
        }
        Ok(())
    }

    /// The TURNS certificate and key files, if configured.
    pub fn tls_files(&self) -> Option<crate::shell::tls::TlsFiles> {
        Some(crate::shell::tls::TlsFiles {
            cert: self.server.tls_cert.clone()?,
            key: self.server.tls_key.clone()?,
        })
    }

    /// The protocol core's configuration.
    pub fn turn(&self) -> crate::turn::ServerConfig {
        use crate::turn::{auth::Credentials, policy};
        let mut denied = self.peers.denied.clone();
        if self.peers.deny_defaults {
            denied.extend(policy::default_denied());
        }
        crate::turn::ServerConfig {
            credentials: Credentials {
                realm: self.server.realm.clone(),
                users: self.auth.users.clone().into_iter().collect(),
                secrets: self.auth.secrets.clone(),
                nonce_lifetime_secs: self.auth.nonce_lifetime_secs,
            },
            policy: policy::PeerPolicy {
                allowed: self.peers.allowed.clone(),
                denied,
                own: policy::OwnAddresses {
                    relay_ports: Some(self.server.relay_ports[0]..=self.server.relay_ports[1]),
                    ..policy::OwnAddresses::default()
                },
                relay_to_relay: self.peers.relay_to_relay,
            },
            software: (!self.server.software.is_empty()).then(|| self.server.software.clone()),
            default_lifetime: std::time::Duration::from_secs(600),
            max_lifetime: std::time::Duration::from_secs(self.limits.max_lifetime_secs),
            user_quota: self.limits.user_quota,
            total_quota: self.limits.total_quota,
            permissions_per_allocation: self.limits.permissions_per_allocation,
            channels_per_allocation: self.limits.channels_per_allocation,
            amplification: crate::turn::amplification::BudgetConfig {
                ratio: self.limits.amplification_limit,
                prefix_bytes_per_sec: self.limits.unauthenticated_bytes_per_sec,
                prefix_burst_bytes: self.limits.unauthenticated_burst_bytes,
                total_bytes_per_sec: self.limits.unauthenticated_total_bytes_per_sec,
            },
            legacy_channel_numbers: self.server.legacy_channel_numbers,
            bandwidth: self.bandwidth(),
            // Discovered at start (crate::addresses), then set by the daemon.
            public_addresses: crate::turn::PublicAddresses::default(),
        }
    }

    /// The bandwidth limits of `[limits]`, for the core and the kernel.
    pub fn bandwidth(&self) -> crate::turn::bandwidth::Limits {
        crate::turn::bandwidth::Limits {
            allocation: self.limits.allocation_bytes_per_sec,
            user: self.limits.user_bytes_per_sec,
            burst: std::time::Duration::from_millis(self.limits.bandwidth_burst_ms),
        }
    }

    /// The distinct UDP ports of the listen addresses.
    pub fn listen_ports(&self) -> BTreeSet<u16> {
        self.server.listen.iter().map(SocketAddr::port).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_are_valid_and_an_empty_file_keeps_them() {
        let defaults = Config::default();
        defaults.validate().unwrap();
        assert_eq!(Config::from_toml("", "empty").unwrap(), defaults);
        assert_eq!(Config::load(None).unwrap(), defaults);
        assert_eq!(defaults.server.realm, "turnx");
        assert_eq!(defaults.metrics.listen, None);
    }

    #[test]
    fn a_file_replaces_only_the_keys_it_names() {
        let config = Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9641\"\n", "test").unwrap();
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9641".parse().unwrap())
        );
        assert_eq!(config.metrics.per_user, Config::default().metrics.per_user);
        assert_eq!(config.server, Config::default().server);
    }

    #[test]
    fn readme_shows_the_embedded_defaults_verbatim() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(DEFAULT_CONFIG_TOML),
            "README.md must contain config/default.toml verbatim"
        );
    }

    #[test]
    fn example_configuration_is_valid() {
        let text = include_str!("../../config/example.toml");
        let config = Config::from_toml(text, "example.toml").unwrap();
        assert_eq!(config.limits.user_quota, 10);
        assert!(config.tls_files().is_some());
        assert_eq!(config.peers.allowed.len(), 2);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::from_toml("[xdp]\ninterfaces = [\"eth1\"]\n", "test").unwrap();
        assert_eq!(config.xdp.interfaces, vec!["eth1".to_owned()]);
        assert_eq!(config.xdp.mode, XdpMode::Auto);
        assert_eq!(config.server, Config::default().server);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::from_toml("[xdp]\nmodes = \"native\"\n", "test.toml").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains("modes"), "{message}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            ("[server]\nrelay_ports = [5000, 4000]\n", "relay_ports"),
            ("[server]\nworkers = 100000\n", "workers"),
            (
                "[limits]\nuser_bytes_per_sec = 100000\nbandwidth_burst_ms = 1\n",
                "bandwidth_burst_ms",
            ),
            ("[server]\ntls_listen = [\"0.0.0.0:5349\"]\n", "tls_cert"),
            (
                "[server]\nrelay_addresses = [\"198.18.0.1\", \"198.18.0.2\"]\n",
                "at most one",
            ),
            ("[peers]\nallowed = [\"10.0.0.0/33\"]\n", "10.0.0.0/33"),
            ("[limits]\nmax_lifetime_secs = 60\n", "600"),
            (
                "[limits]\namplification_limit = 0.5\n",
                "amplification_limit",
            ),
            (
                "[limits]\nunauthenticated_burst_bytes = 100\n",
                "unauthenticated_burst_bytes",
            ),
            ("[server]\nlisten = []\n", "listen is empty"),
            ("[server]\nlisten = [\"0.0.0.0:0\"]\n", "port 0"),
            ("[log]\nlevel = \"loud\"\n", "loud"),
            ("[xdp]\nmode = \"fast\"\n", "fast"),
            (
                "[server]\npublic_addresses = [\"198.18.0.1\", \"198.18.0.2\"]\n",
                "public_addresses",
            ),
            ("[metrics]\nlisten = \"nowhere\"\n", "nowhere"),
            (
                "[credentials]\ndefault_ttl_secs = 100\nmax_ttl_secs = 10\n",
                "default_ttl_secs",
            ),
            ("[credentials]\nuris = [\"http://x\"]\n", "http://x"),
            ("[log]\nformat = \"xml\"\n", "xml"),
        ] {
            let message = Config::from_toml(text, "test").unwrap_err().to_string();
            assert!(message.contains(needle), "{text}: {message}");
        }
    }

    #[test]
    fn listen_ports_are_deduplicated() {
        let config = Config::from_toml(
            "[server]\nlisten = [\"0.0.0.0:3478\", \"[::]:3478\", \"0.0.0.0:5349\"]\n",
            "test",
        )
        .unwrap();
        assert_eq!(
            config.listen_ports().into_iter().collect::<Vec<_>>(),
            [3478, 5349]
        );
    }

    #[test]
    fn debug_output_shows_no_password_or_secret() {
        let mut config = Config::default();
        config
            .auth
            .users
            .insert("alice".into(), "wonderland".into());
        config.auth.secrets.push("hunter2".into());
        let shown = format!("{config:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("wonderland") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn a_secrets_file_adds_one_secret_a_line() {
        let dir = std::env::temp_dir().join(format!("turnx-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = dir.join("static-auth-secret");
        std::fs::write(
            &secrets,
            "# rotated 2026-12-01\nnew-secret\n\n  old-secret  \n",
        )
        .unwrap();
        let file = dir.join("turnxd.toml");
        std::fs::write(
            &file,
            format!(
                "[auth]\nsecrets = [\"inline\"]\nsecrets_file = {:?}\n",
                secrets.display().to_string()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.auth.secrets, ["inline", "new-secret", "old-secret"]);
        assert_eq!(config.watched_files(), std::slice::from_ref(&secrets));
        std::fs::remove_file(&secrets).unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("static-auth-secret"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let err = Config::load(Some(Path::new("/nonexistent/turnxd.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/turnxd.toml"));
    }
}
