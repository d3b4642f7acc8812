//! A mirror of the allocations, rebuilt from nothing but the core's
//! lifecycle events, as the kernel offload rebuilds them. Each event is
//! checked against the mirror: the offload relies on the stream being
//! consistent (nothing created twice, nothing ended that did not exist,
//! a channel's permission before the channel, dependents ended before what
//! they depend on).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use turnx::turn::{DeleteReason, Event, FiveTuple, policy::canonical};

/// The lowest and highest RFC 8656 channel numbers (legacy numbers off).
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x4FFF;

/// One allocation as the events describe it.
#[derive(Debug)]
pub struct Mirror {
    /// Relayed addresses, one per family.
    pub relayed: Vec<SocketAddr>,
    /// Who authenticated it.
    pub username: String,
    /// Peer IPs with a permission (canonical).
    pub permissions: BTreeSet<IpAddr>,
    /// Channel number to (relayed address, peer).
    pub channels: BTreeMap<u16, (SocketAddr, SocketAddr)>,
}

/// The mirror of every allocation, with the lifetimes the server may grant.
pub struct Model {
    /// Allocations by client.
    pub allocations: HashMap<FiveTuple, Mirror>,
    /// Shortest and longest lifetime granted.
    pub lifetimes: (Duration, Duration),
}

impl Model {
    /// No allocations.
    pub fn new(lifetimes: (Duration, Duration)) -> Self {
        Model {
            allocations: HashMap::new(),
            lifetimes,
        }
    }

    /// The allocation with `relayed` among its addresses.
    pub fn owner_of(&self, relayed: SocketAddr) -> Option<FiveTuple> {
        self.allocations
            .iter()
            .find(|(_, mirror)| mirror.relayed.contains(&relayed))
            .map(|(client, _)| *client)
    }

    /// Every relayed address, in order (the fuzz input picks from it by
    /// index, so the order must not depend on hashing).
    pub fn relayed_addresses(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .allocations
            .values()
            .flat_map(|mirror| mirror.relayed.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }

    fn mirror(&mut self, client: &FiveTuple, event: &Event) -> &mut Mirror {
        self.allocations
            .get_mut(client)
            .unwrap_or_else(|| panic!("{event:?} for a client without an allocation"))
    }

    fn check_lifetime(&self, lifetime: Duration, event: &Event) {
        let (shortest, longest) = self.lifetimes;
        assert!(
            (shortest..=longest).contains(&lifetime),
            "{event:?} grants a lifetime outside {shortest:?}..={longest:?}"
        );
    }

    /// Applies one event, checking it against the mirror.
    pub fn apply(&mut self, event: Event) {
        match &event {
            Event::AllocationCreated {
                client,
                relayed,
                username,
                lifetime,
            } => {
                self.check_lifetime(*lifetime, &event);
                assert!(
                    !self.allocations.contains_key(client),
                    "{event:?}: the client already has an allocation"
                );
                assert!(
                    matches!(relayed.len(), 1 | 2),
                    "{event:?}: one or two relayed addresses"
                );
                if let [first, second] = relayed[..] {
                    assert_ne!(
                        first.is_ipv4(),
                        second.is_ipv4(),
                        "{event:?}: one per family"
                    );
                }
                for address in relayed {
                    assert!(
                        self.owner_of(*address).is_none(),
                        "{event:?}: {address} already belongs to an allocation"
                    );
                }
                self.allocations.insert(
                    *client,
                    Mirror {
                        relayed: relayed.clone(),
                        username: username.clone(),
                        permissions: BTreeSet::new(),
                        channels: BTreeMap::new(),
                    },
                );
            }
            Event::AllocationRefreshed { client, lifetime } => {
                self.check_lifetime(*lifetime, &event);
                self.mirror(client, &event);
            }
            Event::AllocationDeleted {
                client,
                relayed,
                reason,
            } => {
                let mirror = self.mirror(client, &event);
                assert_eq!(
                    &mirror.relayed, relayed,
                    "{event:?}: other relayed addresses"
                );
                assert!(
                    mirror.permissions.is_empty() && mirror.channels.is_empty(),
                    "{event:?} before its permissions and channels ended: {mirror:?}"
                );
                if *reason == DeleteReason::ConnectionClosed {
                    assert!(client.transport.is_stream(), "{event:?} on UDP");
                }
                self.allocations.remove(client);
            }
            Event::PermissionCreated { client, peer } => {
                assert_eq!(*peer, canonical(*peer), "{event:?}: not canonical");
                let mirror = self.mirror(client, &event);
                assert!(mirror.permissions.insert(*peer), "{event:?}: created twice");
            }
            Event::PermissionExpired { client, peer } => {
                let mirror = self.mirror(client, &event);
                assert!(
                    !mirror
                        .channels
                        .values()
                        .any(|(_, channel_peer)| canonical(channel_peer.ip()) == *peer),
                    "{event:?} before the channels to it ended: {mirror:?}"
                );
                assert!(
                    mirror.permissions.remove(peer),
                    "{event:?}: no such permission"
                );
            }
            Event::ChannelBound {
                client,
                relayed,
                channel,
                peer,
            } => {
                assert!(
                    CHANNELS.contains(channel),
                    "{event:?}: channel out of range"
                );
                let mirror = self.mirror(client, &event);
                assert!(
                    mirror.relayed.contains(relayed),
                    "{event:?}: not one of the allocation's addresses"
                );
                assert_eq!(
                    relayed.is_ipv4(),
                    canonical(peer.ip()).is_ipv4(),
                    "{event:?}: relayed and peer of different families"
                );
                assert!(
                    mirror.permissions.contains(&canonical(peer.ip())),
                    "{event:?} without a permission for the peer"
                );
                assert!(
                    !mirror.channels.values().any(|(_, bound)| bound == peer),
                    "{event:?}: the peer already has a channel"
                );
                let previous = mirror.channels.insert(*channel, (*relayed, *peer));
                assert!(previous.is_none(), "{event:?}: the channel was bound");
            }
            Event::ChannelRefreshed { client, channel } => {
                let mirror = self.mirror(client, &event);
                assert!(
                    mirror.channels.contains_key(channel),
                    "{event:?}: not bound"
                );
            }
            Event::ChannelLifetime {
                client,
                channel,
                lifetime,
            } => {
                let longest = self.lifetimes.1;
                let mirror = self.mirror(client, &event);
                assert!(
                    mirror.channels.contains_key(channel),
                    "{event:?}: not bound"
                );
                assert!(
                    *lifetime <= longest.min(turnx::turn::PERMISSION_LIFETIME),
                    "{event:?}: longer than a permission lives"
                );
            }
            Event::ChannelExpired {
                client,
                relayed,
                channel,
                peer,
            } => {
                let mirror = self.mirror(client, &event);
                assert_eq!(
                    mirror.channels.remove(channel),
                    Some((*relayed, *peer)),
                    "{event:?}: not bound so"
                );
            }
        }
    }

    /// Checks that data the client on `client` sent may go from `relayed`
    /// to `peer`: its allocation's address of the peer's family, and a
    /// permission for the peer.
    pub fn check_to_peer(&self, client: &FiveTuple, relayed: SocketAddr, peer: SocketAddr) {
        let mirror = self
            .allocations
            .get(client)
            .unwrap_or_else(|| panic!("relayed to {peer} for {client:?}, which has no allocation"));
        assert!(
            mirror.relayed.contains(&relayed),
            "relayed from {relayed}, not an address of {client:?}"
        );
        let ip = canonical(peer.ip());
        assert_eq!(relayed.is_ipv4(), ip.is_ipv4(), "{relayed} sent to {peer}");
        assert!(
            mirror.permissions.contains(&ip),
            "relayed to {peer} without a permission"
        );
        assert_ne!(peer.port(), 0, "relayed to port 0");
    }
}
