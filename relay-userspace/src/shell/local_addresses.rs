//! The node's own addresses, which are never peers: read from the kernel at
//! start and again whenever rtnetlink announces an address change, so that
//! an address added later (a new CNI bridge, a secondary IP) is refused
//! from the moment it exists.

use std::{io, net::IpAddr, sync::Arc, time::Duration};

use tokio::io::unix::AsyncFd;

use super::Shard;
use crate::rtnetlink_events::{
    RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR, drain, group_bit, subscribe,
};

/// The rtnetlink groups of IPv4 and IPv6 address changes.
const ADDRESS_GROUPS: u32 = group_bit(RTNLGRP_IPV4_IFADDR) | group_bit(RTNLGRP_IPV6_IFADDR);

/// Every address of every interface in the current network namespace.
pub fn read() -> io::Result<Vec<IpAddr>> {
    Ok(crate::interfaces::interface_addresses()?
        .into_iter()
        .map(|(_, address)| address)
        .collect())
}

/// Hands the node's addresses to every shard's core now and after every
/// change.
pub(super) async fn follow(shards: Vec<Arc<Shard>>) {
    let update = |shards: &[Arc<Shard>]| match read() {
        Ok(addresses) => {
            for shard in shards {
                shard.run(|core| core.set_local_addresses(addresses.iter().copied()));
            }
        }
        Err(err) => tracing::warn!("cannot read the node's addresses: {err}"),
    };
    let registered = subscribe(ADDRESS_GROUPS).and_then(|fd| {
        // SAFETY: the OwnedFd keeps its descriptor open, unchanged, for as
        // long as the AsyncFd that owns it lives.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    });
    let socket = match registered {
        Ok(socket) => socket,
        Err(err) => {
            // Without notifications, poll: the policy must stay current.
            tracing::warn!("cannot follow address changes over rtnetlink ({err}); polling");
            loop {
                update(&shards);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    // Whatever changed between the caller's first read and the subscription.
    update(&shards);
    loop {
        let mut ready = match socket.readable().await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::warn!("waiting for address changes: {err}");
                return;
            }
        };
        ready.clear_ready();
        if let Err(err) = drain(socket.get_ref()) {
            tracing::warn!("reading address changes: {err}");
        }
        update(&shards);
    }
}
