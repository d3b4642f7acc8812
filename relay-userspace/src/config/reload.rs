//! What a running turnxd may take from a changed configuration. A reload
//! applies everything or nothing: a change to a key that only a restart
//! can apply (sockets, the kernel program, the bandwidth buckets) refuses
//! the whole reload, naming each such key.
//!
//! Every field is destructured without `..`, so a new key does not compile
//! until it is classified here.

use super::{
    AdminConfig, AuthConfig, Config, CredentialsConfig, DrainConfig, HandoverConfig, LimitsConfig,
    LogConfig, MetricsConfig, OffloadConfig, PeersConfig, ServerConfig, XdpConfig,
};

/// The keys whose change needs a restart, as "[section] key"; empty when
/// `new` can be applied to a daemon running `old`.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key: &'static str, same: bool| {
        if !same {
            keys.push(key);
        }
    };
    let Config {
        server,
        auth,
        limits,
        peers,
        offload,
        xdp,
        metrics,
        credentials,
        admin,
        drain,
        handover,
        log,
    } = new;

    let ServerConfig {
        listen,
        tls_listen,
        tls_cert,
        tls_key,
        realm,
        relay_addresses,
        relay_ports,
        workers,
        software: _,
        legacy_channel_numbers,
        public_addresses,
        public_address_stun,
        alternate_server: _,
    } = server;
    let was = &old.server;
    check("[server] listen", *listen == was.listen);
    check("[server] tls_listen", *tls_listen == was.tls_listen);
    // The files themselves are reloaded when they change (shell::tls).
    check("[server] tls_cert", *tls_cert == was.tls_cert);
    check("[server] tls_key", *tls_key == was.tls_key);
    // Keys derived from the realm would no longer match live nonces.
    check("[server] realm", *realm == was.realm);
    check(
        "[server] relay_addresses",
        *relay_addresses == was.relay_addresses,
    );
    check("[server] relay_ports", *relay_ports == was.relay_ports);
    check("[server] workers", *workers == was.workers);
    check(
        "[server] legacy_channel_numbers",
        *legacy_channel_numbers == was.legacy_channel_numbers,
    );
    check(
        "[server] public_addresses",
        *public_addresses == was.public_addresses,
    );
    check(
        "[server] public_address_stun",
        *public_address_stun == was.public_address_stun,
    );

    let AuthConfig {
        users: _,
        secrets: _,
        secrets_file: _,
        nonce_lifetime_secs: _,
    } = auth;

    let LimitsConfig {
        max_lifetime_secs: _,
        user_quota: _,
        total_quota: _,
        amplification_limit: _,
        unauthenticated_bytes_per_sec: _,
        unauthenticated_burst_bytes: _,
        unauthenticated_total_bytes_per_sec: _,
        permissions_per_allocation: _,
        channels_per_allocation: _,
        stream_connections,
        stream_connections_per_address,
        allocation_bytes_per_sec,
        user_bytes_per_sec,
        bandwidth_burst_ms,
    } = limits;
    let was = &old.limits;
    check(
        "[limits] stream_connections",
        *stream_connections == was.stream_connections,
    );
    check(
        "[limits] stream_connections_per_address",
        *stream_connections_per_address == was.stream_connections_per_address,
    );
    // The kernel's buckets are sized and filled at start.
    check(
        "[limits] allocation_bytes_per_sec",
        *allocation_bytes_per_sec == was.allocation_bytes_per_sec,
    );
    check(
        "[limits] user_bytes_per_sec",
        *user_bytes_per_sec == was.user_bytes_per_sec,
    );
    check(
        "[limits] bandwidth_burst_ms",
        *bandwidth_burst_ms == was.bandwidth_burst_ms,
    );

    let PeersConfig {
        allowed: _,
        denied: _,
        deny_defaults: _,
        relay_to_relay: _,
    } = peers;

    let OffloadConfig {
        engine,
        pod_interfaces,
    } = offload;
    check("[offload] engine", *engine == old.offload.engine);
    check(
        "[offload] pod_interfaces",
        *pod_interfaces == old.offload.pod_interfaces,
    );

    let XdpConfig {
        enabled,
        interfaces,
        mode,
        route_in_stack,
        max_bindings,
        pin_dir,
    } = xdp;
    let was = &old.xdp;
    check("[xdp] enabled", *enabled == was.enabled);
    check("[xdp] interfaces", *interfaces == was.interfaces);
    check("[xdp] mode", *mode == was.mode);
    check(
        "[xdp] route_in_stack",
        *route_in_stack == was.route_in_stack,
    );
    check("[xdp] max_bindings", *max_bindings == was.max_bindings);
    check("[xdp] pin_dir", *pin_dir == was.pin_dir);

    let MetricsConfig {
        listen,
        per_user: _,
    } = metrics;
    check("[metrics] listen", *listen == old.metrics.listen);

    let CredentialsConfig {
        listen,
        uris: _,
        default_ttl_secs: _,
        max_ttl_secs: _,
        ice_transport_policy: _,
    } = credentials;
    check("[credentials] listen", *listen == old.credentials.listen);

    let AdminConfig { socket } = admin;
    check("[admin] socket", *socket == old.admin.socket);

    let DrainConfig { timeout_secs: _ } = drain;
    let HandoverConfig {
        state_file,
        on_sigterm: _,
    } = handover;
    check(
        "[handover] state_file",
        *state_file == old.handover.state_file,
    );

    let LogConfig {
        level: _,
        format,
        stats_interval_secs: _,
    } = log;
    check("[log] format", *format == old.log.format);

    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_quotas_and_peers_reload() {
        let old = Config::default();
        let mut new = old.clone();
        new.auth.users.insert("bob".into(), "secret".into());
        new.auth.secrets = vec!["rotated".into()];
        new.limits.user_quota = 3;
        new.limits.amplification_limit = 2.0;
        new.peers.relay_to_relay = false;
        new.log.level = "debug".into();
        new.metrics.per_user = true;
        new.drain.timeout_secs = 9;
        assert!(restart_needed(&old, &new).is_empty());
    }

    #[test]
    fn every_restart_key_is_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.listen = vec!["127.0.0.1:3479".parse().unwrap()];
        new.limits.allocation_bytes_per_sec = 1000;
        new.xdp.max_bindings = 5;
        new.log.format = super::super::LogFormat::Json;
        new.auth.secrets = vec!["fine".into()];
        assert_eq!(
            restart_needed(&old, &new),
            [
                "[server] listen",
                "[limits] allocation_bytes_per_sec",
                "[xdp] max_bindings",
                "[log] format"
            ]
        );
    }
}
