//! turnxd's configuration: a TOML file, with an embedded default.
//!
//! Precedence, lowest first: the built-in defaults (`config/default.toml`),
//! the file given with `--config`, then command-line flags and `TURNXD_*`
//! environment variables (applied by the binary).

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
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// Everything turnxd can be configured with.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
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
    /// Logging and counters.
    pub log: LogConfig,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
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
    /// SOFTWARE attribute; empty for none.
    pub software: String,
    /// Accept RFC 5766 channel numbers up to 0x7FFF.
    pub legacy_channel_numbers: bool,
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static users: name to password.
    pub users: BTreeMap<String, String>,
    /// TURN REST API shared secrets.
    pub secrets: Vec<String>,
    /// Nonce lifetime in seconds.
    pub nonce_lifetime_secs: u64,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
pub struct OffloadConfig {
    /// The kernel engines used.
    pub engine: Engine,
    /// Name patterns of pods' host-side veths, which the tc engine follows
    /// (see [`crate::pod_interfaces`]).
    pub pod_interfaces: Vec<String>,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            engine: Engine::Auto,
            pod_interfaces: vec!["lxc*".into(), "cali*".into()],
        }
    }
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
#[serde(default, deny_unknown_fields)]
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

/// `[log]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
    /// Seconds between counter log lines; 0 disables them.
    pub stats_interval_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 3478)),
                SocketAddr::from(([0u16; 8], 3478)),
            ],
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            realm: "turnx".into(),
            relay_addresses: Vec::new(),
            relay_ports: [49152, 65535],
            software: "turnx".into(),
            legacy_channel_numbers: true,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: BTreeMap::new(),
            secrets: Vec::new(),
            nonce_lifetime_secs: 600,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_lifetime_secs: 3600,
            user_quota: 4096,
            total_quota: 16_384,
            permissions_per_allocation: 1024,
            channels_per_allocation: 1024,
            amplification_limit: 3.0,
            unauthenticated_bytes_per_sec: 16_384,
            unauthenticated_burst_bytes: 65_536,
            unauthenticated_total_bytes_per_sec: 4_194_304,
            stream_connections: 16_384,
            stream_connections_per_address: 256,
            allocation_bytes_per_sec: 0,
            user_bytes_per_sec: 0,
            bandwidth_burst_ms: 500,
        }
    }
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            allowed: Vec::new(),
            denied: Vec::new(),
            deny_defaults: true,
            relay_to_relay: true,
        }
    }
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            enabled: true,
            interfaces: Vec::new(),
            mode: XdpMode::Auto,
            route_in_stack: false,
            max_bindings: 16384,
            pin_dir: "/sys/fs/bpf/turnx/default".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            stats_interval_secs: 10,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid configuration in {origin}: {source}")]
    Parse {
        /// The file, or "built-in defaults".
        origin: String,
        /// What the parser said, with line and column.
        source: Box<toml::de::Error>,
    },
    /// The values parse but cannot work together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The smallest `[limits] unauthenticated_burst_bytes`: a handful of
/// challenges (a 401 is 50 to 150 bytes).
const MIN_BURST_BYTES: u32 = 512;

/// The log levels the `[log] level` key accepts.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Reads `path`, or returns the built-in defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml(DEFAULT_CONFIG_TOML, "built-in defaults"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Config::from_toml(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
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
        let families = |v4: bool| {
            self.server
                .relay_addresses
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .count()
        };
        if families(true) > 1 || families(false) > 1 {
            return Err(ConfigError::Invalid(
                "[server] relay_addresses holds at most one IPv4 and one IPv6 address".into(),
            ));
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

    /// The relay's IPv4 and IPv6 address: configured, else the specific
    /// listen addresses, else those of the default-route interfaces.
    pub fn relay_addresses(&self) -> (Option<IpAddr>, Option<IpAddr>) {
        let mut candidates = self.server.relay_addresses.clone();
        if candidates.is_empty() {
            candidates = self
                .server
                .listen
                .iter()
                .map(SocketAddr::ip)
                .filter(|ip| !ip.is_unspecified())
                .collect();
        }
        if candidates.is_empty() {
            let names = crate::interfaces::default_route_interfaces().unwrap_or_default();
            candidates = crate::interfaces::addresses_of(&names).unwrap_or_default();
        }
        let v4 = candidates.iter().copied().find(IpAddr::is_ipv4);
        let v6 = candidates.iter().copied().find(IpAddr::is_ipv6);
        (v4, v6)
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
    fn embedded_file_matches_defaults() {
        assert_eq!(Config::load(None).unwrap(), Config::default());
    }

    #[test]
    fn readme_shows_the_embedded_defaults_verbatim() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(DEFAULT_CONFIG_TOML),
            "README.md must contain config/default.toml verbatim"
        );
    }

    #[test]
    fn example_configuration_is_valid() {
        let text = include_str!("../config/example.toml");
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
        assert_eq!(config.server, ServerConfig::default());
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
    fn missing_file_error_names_the_path() {
        let err = Config::load(Some(Path::new("/nonexistent/turnxd.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/turnxd.toml"));
    }
}
