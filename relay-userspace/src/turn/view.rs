//! Read-only views of the server's state, for metrics gauges and the
//! admin socket.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{FiveTuple, Transport, server::Server};

/// One allocation, as the admin socket shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationView {
    /// The authenticated username.
    pub username: String,
    /// The client's 5-tuple.
    pub client: FiveTuple,
    /// Relayed addresses as bound (what the kernel offload knows).
    pub relayed: Vec<SocketAddr>,
    /// Relayed addresses as told to the client (XOR-RELAYED-ADDRESS): the
    /// public ones where configured, in the order of `relayed`.
    pub advertised: Vec<SocketAddr>,
    /// Time left until it expires.
    pub expires_in: Duration,
    /// Peer IPs with a permission and the time each has left, by IP.
    pub permissions: Vec<(IpAddr, Duration)>,
    /// Channel bindings, by number.
    pub channels: Vec<ChannelView>,
}

/// One channel binding of an [`AllocationView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelView {
    /// The channel number.
    pub number: u16,
    /// The peer (bound form when the peer is this relay).
    pub peer: SocketAddr,
    /// The relayed address (bound) the peer talks to.
    pub relayed: SocketAddr,
    /// Time left until the binding expires.
    pub expires_in: Duration,
}

impl Server {
    /// Every allocation at `now`, ordered by client 5-tuple.
    pub fn allocations_view(&self, now: Instant) -> Vec<AllocationView> {
        let left = |at: Instant| at.saturating_duration_since(now);
        let mut views: Vec<AllocationView> = self
            .allocations
            .values()
            .map(|allocation| {
                let mut permissions: Vec<(IpAddr, Duration)> = allocation
                    .permissions()
                    .map(|(ip, expires)| (ip, left(expires)))
                    .collect();
                permissions.sort_unstable();
                let mut channels: Vec<ChannelView> = allocation
                    .channels()
                    .filter_map(|(number, peer, expires)| {
                        Some(ChannelView {
                            number,
                            peer,
                            relayed: allocation.relayed_for(peer.ip())?,
                            expires_in: left(expires),
                        })
                    })
                    .collect();
                channels.sort_unstable_by_key(|channel| channel.number);
                AllocationView {
                    username: allocation.username.clone(),
                    client: allocation.client,
                    relayed: allocation.relayed.clone(),
                    advertised: allocation
                        .relayed
                        .iter()
                        .map(|bound| self.config.public_addresses.advertise(*bound))
                        .collect(),
                    expires_in: left(allocation.expires),
                    permissions,
                    channels,
                }
            })
            .collect();
        views.sort_unstable_by_key(|view| view.client);
        views
    }

    /// Live allocations per client transport, in [`Transport::ALL`] order.
    pub fn allocations_by_transport(&self) -> [(Transport, usize); 3] {
        let mut counts = Transport::ALL.map(|transport| (transport, 0));
        for client in self.allocations.keys() {
            counts[client.transport as usize].1 += 1;
        }
        counts
    }

    /// Live allocations per user, for the opt-in per-user gauge. The user
    /// of a TURN REST API username (`expiry:id`) is its id, so that one
    /// user's ever-changing usernames make one label; a REST username
    /// without an id counts under "". Static users are their name.
    pub fn user_allocations(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        let mut users: HashMap<&str, u32> = HashMap::new();
        for allocation in self.allocations.values() {
            *users.entry(self.user_id(&allocation.username)).or_insert(0) += 1;
        }
        users.into_iter()
    }

    fn user_id<'a>(&self, username: &'a str) -> &'a str {
        if self.config.credentials.users.contains_key(username) {
            return username;
        }
        let (expiry, id) = username.split_once(':').unwrap_or((username, ""));
        if expiry.parse::<u64>().is_ok() {
            id
        } else {
            username
        }
    }
}
