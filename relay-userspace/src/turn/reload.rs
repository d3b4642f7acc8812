//! Applying a new configuration to a running server (a config reload).

use super::{ServerConfig, server::Server};

impl Server {
    /// Applies `config` live: credentials, peer policy, quotas, lifetimes,
    /// per-allocation caps, the amplification budget and SOFTWARE.
    ///
    /// What the server learnt or holds stays: the relay's own addresses
    /// (`policy.own`, from the shell and [`Server::set_local_addresses`]),
    /// the nonce key (nonces handed out stay valid), allocations,
    /// permissions, channels, reservations, and the response budget's
    /// buckets. New limits apply to new requests only: a policy change
    /// revokes no existing permission or channel, and a lower quota or cap
    /// deletes nothing. Not reloadable, and kept as they are (the caller
    /// refuses such changes before calling this): bandwidth limits, the
    /// public addresses and the legacy channel range.
    pub fn reconfigure(&mut self, config: ServerConfig) {
        let ServerConfig {
            credentials,
            mut policy,
            software,
            default_lifetime,
            max_lifetime,
            user_quota,
            total_quota,
            permissions_per_allocation,
            channels_per_allocation,
            amplification,
            legacy_channel_numbers: _,
            bandwidth: _,
            public_addresses: _,
        } = config;
        policy.own = std::mem::take(&mut self.config.policy.own);
        self.auth.set_credentials(credentials.clone());
        self.ledger.books().budget.set_config(amplification);
        let current = &mut self.config;
        current.credentials = credentials;
        current.policy = policy;
        current.software = software;
        current.default_lifetime = default_lifetime;
        current.max_lifetime = max_lifetime;
        current.user_quota = user_quota;
        current.total_quota = total_quota;
        current.permissions_per_allocation = permissions_per_allocation;
        current.channels_per_allocation = channels_per_allocation;
        current.amplification = amplification;
    }
}
