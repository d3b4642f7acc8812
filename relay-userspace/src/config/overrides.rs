//! The command line and `TURNXD_*` environment variables, applied over
//! the file in one place: at start and again on every reload, so that a
//! reload never undoes a flag.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use thiserror::Error;

use super::{Config, Engine, LogFormat, XdpMode};

/// A flag or variable that cannot be applied.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct OverrideError(String);

/// What flags and `TURNXD_*` variables set; each replaces (or, where it
/// says so, adds to) a key of the file.
// Not Debug: it holds passwords and secrets.
#[derive(Clone, Default, clap::Args)]
pub struct Overrides {
    /// TURN listen address; repeat for several. Replaces [server] listen.
    #[arg(long, env = "TURNXD_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// Interface to attach XDP to; repeat for several. Replaces [xdp] interfaces.
    #[arg(
        long = "interface",
        short,
        env = "TURNXD_INTERFACES",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// XDP attach mode. Replaces [xdp] mode.
    #[arg(long, env = "TURNXD_XDP_MODE")]
    pub xdp_mode: Option<XdpMode>,
    /// Do not load XDP at all; everything stays in userspace.
    #[arg(long, env = "TURNXD_NO_XDP")]
    pub no_xdp: bool,
    /// Kernel engines: auto, xdp, tc or off. Replaces [offload] engine.
    #[arg(long, env = "TURNXD_ENGINE")]
    pub engine: Option<Engine>,
    /// Name pattern of pods' veths for the tc engine to follow, such as
    /// "lxc*"; repeat for several. Replaces [offload] pod_interfaces.
    #[arg(
        long = "pod-interface",
        env = "TURNXD_POD_INTERFACES",
        value_delimiter = ','
    )]
    pub pod_interfaces: Vec<String>,
    /// Hand frames the kernel relays to the network stack, for its routing
    /// and policy, instead of sending them to the next hop. Sets [xdp]
    /// route_in_stack.
    #[arg(long, env = "TURNXD_ROUTE_IN_STACK")]
    pub route_in_stack: bool,
    /// error, warn, info, debug or trace. Replaces [log] level.
    #[arg(long, env = "TURNXD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Seconds between counter log lines, 0 for none. Replaces [log] stats_interval_secs.
    #[arg(long, env = "TURNXD_STATS_INTERVAL")]
    pub stats_interval: Option<u64>,
    /// Directory on bpffs for the pinned maps, "" for none. Replaces [xdp] pin_dir.
    #[arg(long, env = "TURNXD_PIN_DIR")]
    pub pin_dir: Option<String>,
    /// The handover file, "" for none. Replaces [handover] state_file.
    #[arg(long, env = "TURNXD_STATE_FILE")]
    pub state_file: Option<String>,
    /// A static user, NAME:PASSWORD (coturn's --user); repeat for several.
    /// Adds to [auth] users. Prefer the environment variable: arguments are
    /// visible to every user of the machine.
    #[arg(
        long = "user",
        env = "TURNXD_USERS",
        value_delimiter = ',',
        value_name = "NAME:PASSWORD"
    )]
    pub users: Vec<String>,
    /// A TURN REST API shared secret (coturn's --static-auth-secret);
    /// repeat for several. Adds to [auth] secrets.
    #[arg(
        long = "static-auth-secret",
        env = "TURNXD_STATIC_AUTH_SECRET",
        value_delimiter = ','
    )]
    pub secrets: Vec<String>,
    /// Realm of the credentials. Replaces [server] realm.
    #[arg(long, env = "TURNXD_REALM")]
    pub realm: Option<String>,
    /// TURNS (TLS over TCP) listen address; repeat for several. Replaces
    /// [server] tls_listen.
    #[arg(long = "tls-listen", env = "TURNXD_TLS_LISTEN", value_delimiter = ',')]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TURNS (coturn's --cert). Replaces [server]
    /// tls_cert.
    #[arg(long = "tls-cert", env = "TURNXD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TURNS (coturn's --pkey). Replaces [server]
    /// tls_key.
    #[arg(long = "tls-key", env = "TURNXD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Address relayed sockets bind to, at most one IPv4 and one IPv6.
    /// Replaces [server] relay_addresses.
    #[arg(
        long = "relay-address",
        env = "TURNXD_RELAY_ADDRESSES",
        value_delimiter = ','
    )]
    pub relay_addresses: Vec<IpAddr>,
    /// Address of the metrics and health server, "" for none. Replaces
    /// [metrics] listen.
    #[arg(long, env = "TURNXD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Address of the credential service, "" for none. Replaces
    /// [credentials] listen.
    #[arg(long, env = "TURNXD_CREDENTIALS_LISTEN")]
    pub credentials_listen: Option<String>,
    /// Path of the admin socket turnxctl talks to, "" for none. Replaces
    /// [admin] socket.
    #[arg(long, env = "TURNXD_ADMIN_SOCKET")]
    pub admin_socket: Option<String>,
    /// Public address advertised as the relayed address (coturn's
    /// external-ip), at most one per family. Replaces [server]
    /// public_addresses.
    #[arg(
        long = "public-address",
        env = "TURNXD_PUBLIC_ADDRESSES",
        value_delimiter = ','
    )]
    pub public_addresses: Vec<IpAddr>,
    /// Log format: text or json. Replaces [log] format.
    #[arg(long, env = "TURNXD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Longest SIGTERM drain, seconds. Replaces [drain] timeout_secs.
    #[arg(long, env = "TURNXD_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<u64>,
    /// Shards of the userspace relay, 0 for one per CPU. Replaces [server]
    /// workers.
    #[arg(long, env = "TURNXD_WORKERS")]
    pub workers: Option<usize>,
}

impl Overrides {
    /// Applies every override to `config` (which the caller validates).
    pub fn apply(&self, config: &mut Config) -> Result<(), OverrideError> {
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
        if let Some(file) = &self.state_file {
            config.handover.state_file = file.clone();
        }
        if let Some(secs) = self.stats_interval {
            config.log.stats_interval_secs = secs;
        }
        for user in &self.users {
            let Some((name, password)) = user.split_once(':') else {
                return Err(OverrideError(format!(
                    "--user {user:?} is not NAME:PASSWORD"
                )));
            };
            if name.is_empty() || password.is_empty() {
                return Err(OverrideError(
                    "--user needs a non-empty name and password, as NAME:PASSWORD".into(),
                ));
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
        if !self.public_addresses.is_empty() {
            config.server.public_addresses = self.public_addresses.clone();
        }
        if let Some(listen) = &self.metrics_listen {
            config.metrics.listen = optional("--metrics-listen", listen)?;
        }
        if let Some(listen) = &self.credentials_listen {
            config.credentials.listen = optional("--credentials-listen", listen)?;
        }
        if let Some(socket) = &self.admin_socket {
            config.admin.socket = (!socket.is_empty()).then(|| socket.into());
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(secs) = self.drain_timeout {
            config.drain.timeout_secs = secs;
        }
        if let Some(workers) = self.workers {
            config.server.workers = workers;
        }
        Ok(())
    }
}

/// `text` as an address, or none for "".
fn optional(flag: &str, text: &str) -> Result<Option<SocketAddr>, OverrideError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|err| OverrideError(format!("{flag} {text:?}: {err}; give ADDRESS:PORT or \"\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_replace_their_keys_and_users_add() {
        let overrides = Overrides {
            metrics_listen: Some("127.0.0.1:9641".into()),
            admin_socket: Some(String::new()),
            users: vec!["alice:secret".into()],
            drain_timeout: Some(5),
            workers: Some(3),
            ..Overrides::default()
        };
        let mut config = Config::default();
        overrides.apply(&mut config).unwrap();
        assert_eq!(config.workers(), 3);
        config.server.workers = Config::default().server.workers;
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9641".parse().unwrap())
        );
        assert_eq!(config.admin.socket, None);
        assert_eq!(config.auth.users["alice"], "secret");
        assert_eq!(config.drain.timeout_secs, 5);
        assert_eq!(config.server, Config::default().server);
    }

    #[test]
    fn bad_flags_say_which() {
        for (overrides, needle) in [
            (
                Overrides {
                    users: vec!["alice".into()],
                    ..Overrides::default()
                },
                "NAME:PASSWORD",
            ),
            (
                Overrides {
                    metrics_listen: Some("nowhere".into()),
                    ..Overrides::default()
                },
                "--metrics-listen",
            ),
        ] {
            let err = overrides.apply(&mut Config::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
