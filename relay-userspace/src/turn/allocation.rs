//! One allocation: its permissions, channel bindings and their timers
//! (RFC 8656 sections 9 and 12).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use relay_common::bandwidth::Bucket;

use super::{
    Event, FiveTuple, Transport,
    policy::canonical,
    snapshot::{AllocationState, RestoreError, deadline, hex, left_ms, unhex},
};

/// Permission lifetime (RFC 8656 section 9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 section 12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a binding expires, neither its number nor its peer may be bound to
/// anything else for this long (RFC 8656 section 12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug)]
struct Binding {
    peer: SocketAddr,
    expires: Instant,
}

/// Why a ChannelBind is refused (400 Bad Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindConflict {
    /// The channel is bound, or was recently, to another peer.
    ChannelInUse,
    /// The peer is bound, or was recently, to another channel.
    PeerInUse,
}

/// An allocation's state. Every mutation reports the events it causes.
#[derive(Debug)]
pub struct Allocation {
    pub client: FiveTuple,
    pub username: String,
    /// Relayed addresses: one, or IPv4 and IPv6 for a dual allocation.
    pub relayed: Vec<SocketAddr>,
    pub expires: Instant,
    /// Transaction id and response of the Allocate that created it, to answer
    /// a retransmission identically (RFC 8656 section 7.2).
    pub created_by: (u128, Vec<u8>),
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Binding>,
    peer_channels: HashMap<SocketAddr, u16>,
    /// Expired bindings still reserved: (channel, peer, until).
    cooling: Vec<(u16, SocketAddr, Instant)>,
    /// Its bandwidth buckets by direction, if it has a limit.
    pub meter: Option<[Bucket; 2]>,
}

impl Allocation {
    pub fn new(
        client: FiveTuple,
        username: String,
        relayed: Vec<SocketAddr>,
        expires: Instant,
        created_by: (u128, Vec<u8>),
    ) -> Self {
        Allocation {
            client,
            username,
            relayed,
            expires,
            created_by,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            peer_channels: HashMap::new(),
            cooling: Vec::new(),
            meter: None,
        }
    }

    /// The relayed address of the peer's family, if the allocation has one.
    pub fn relayed_for(&self, peer: IpAddr) -> Option<SocketAddr> {
        let peer_is_v4 = canonical(peer).is_ipv4();
        self.relayed
            .iter()
            .copied()
            .find(|relayed| relayed.is_ipv4() == peer_is_v4)
    }

    /// Whether `peer`'s IP holds a permission, current or expired but not
    /// yet removed.
    pub fn holds_permission(&self, peer: IpAddr) -> bool {
        self.permissions.contains_key(&canonical(peer))
    }

    /// Each permission's peer IP and expiry, in no particular order.
    pub fn permissions(&self) -> impl Iterator<Item = (IpAddr, Instant)> + '_ {
        self.permissions.iter().map(|(ip, expires)| (*ip, *expires))
    }

    /// Each channel's number, peer and expiry, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = (u16, SocketAddr, Instant)> + '_ {
        self.channels
            .iter()
            .map(|(channel, binding)| (*channel, binding.peer, binding.expires))
    }

    /// Peer IPs with a permission.
    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    /// Channels bound.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&canonical(peer))
            .is_some_and(|expires| *expires > now)
    }

    /// Installs or refreshes the permission for `peer`'s IP.
    pub fn permit(&mut self, peer: IpAddr, now: Instant, events: &mut Vec<Event>) {
        let peer = canonical(peer);
        let previous = self.permissions.insert(peer, now + PERMISSION_LIFETIME);
        if previous.is_none() {
            events.push(Event::PermissionCreated {
                client: self.client,
                peer,
            });
        }
    }

    pub fn channel_peer(&self, channel: u16) -> Option<SocketAddr> {
        self.channels.get(&channel).map(|binding| binding.peer)
    }

    pub fn peer_channel(&self, peer: SocketAddr) -> Option<u16> {
        self.peer_channels.get(&peer).copied()
    }

    /// Checks that `channel` may be bound to `peer` without binding it.
    pub fn check_bind(&self, channel: u16, peer: SocketAddr) -> Result<(), BindConflict> {
        if let Some(bound) = self.channels.get(&channel) {
            return if bound.peer == peer {
                Ok(())
            } else {
                Err(BindConflict::ChannelInUse)
            };
        }
        if self.peer_channels.contains_key(&peer) {
            return Err(BindConflict::PeerInUse);
        }
        for (cooling_channel, cooling_peer, _) in &self.cooling {
            if *cooling_channel == channel && *cooling_peer != peer {
                return Err(BindConflict::ChannelInUse);
            }
            if *cooling_peer == peer && *cooling_channel != channel {
                return Err(BindConflict::PeerInUse);
            }
        }
        Ok(())
    }

    /// Binds or refreshes `channel` to `peer` (after [`Self::check_bind`]),
    /// refreshing the peer's permission too (RFC 8656 section 12.2).
    pub fn bind(&mut self, channel: u16, peer: SocketAddr, now: Instant, events: &mut Vec<Event>) {
        self.permit(peer.ip(), now, events);
        let expires = now + CHANNEL_LIFETIME;
        match self.channels.insert(channel, Binding { peer, expires }) {
            Some(_) => events.push(Event::ChannelRefreshed {
                client: self.client,
                channel,
            }),
            None => {
                self.cooling
                    .retain(|(c, p, _)| !(*c == channel && *p == peer));
                self.peer_channels.insert(peer, channel);
                if let Some(relayed) = self.relayed_for(peer.ip()) {
                    events.push(Event::ChannelBound {
                        client: self.client,
                        relayed,
                        channel,
                        peer,
                    });
                }
            }
        }
    }

    /// Removes what has expired at `now`: channels (including those whose
    /// permission expired), then permissions, then finished cool-downs.
    pub fn expire(&mut self, now: Instant, events: &mut Vec<Event>) {
        // A set: each channel looks its peer up in it (a list would make
        // this permissions × channels).
        let expired_permissions: std::collections::HashSet<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, expires)| **expires <= now)
            .map(|(ip, _)| *ip)
            .collect();
        let mut expired_channels: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, binding)| {
                binding.expires <= now
                    || expired_permissions.contains(&canonical(binding.peer.ip()))
            })
            .map(|(channel, _)| *channel)
            .collect();
        expired_channels.sort_unstable();
        for channel in expired_channels {
            self.end_channel(channel, now, events);
        }
        let mut expired_permissions: Vec<IpAddr> = expired_permissions.into_iter().collect();
        expired_permissions.sort_unstable();
        for peer in expired_permissions {
            self.permissions.remove(&peer);
            events.push(Event::PermissionExpired {
                client: self.client,
                peer,
            });
        }
        self.cooling.retain(|(_, _, until)| *until > now);
    }

    /// Ends every channel and permission, for deletion of the allocation.
    pub fn teardown(&mut self, now: Instant, events: &mut Vec<Event>) {
        let mut channels: Vec<u16> = self.channels.keys().copied().collect();
        channels.sort_unstable();
        for channel in channels {
            self.end_channel(channel, now, events);
        }
        let mut peers: Vec<IpAddr> = self.permissions.drain().map(|(ip, _)| ip).collect();
        peers.sort_unstable();
        for peer in peers {
            events.push(Event::PermissionExpired {
                client: self.client,
                peer,
            });
        }
    }

    fn end_channel(&mut self, channel: u16, now: Instant, events: &mut Vec<Event>) {
        let Some(binding) = self.channels.remove(&channel) else {
            return;
        };
        self.peer_channels.remove(&binding.peer);
        self.cooling
            .push((channel, binding.peer, now + CHANNEL_COOLDOWN));
        if let Some(relayed) = self.relayed_for(binding.peer.ip()) {
            events.push(Event::ChannelExpired {
                client: self.client,
                relayed,
                channel,
                peer: binding.peer,
            });
        }
    }

    /// Reports how long each channel may still be relayed: until its own
    /// expiry, its permission's or the allocation's, whichever is first.
    /// For whoever relays channels without asking (the kernel offload),
    /// after anything that may have moved one of those.
    pub fn report_lifetimes(&self, now: Instant, events: &mut Vec<Event>) {
        let mut channels: Vec<(&u16, &Binding)> = self.channels.iter().collect();
        channels.sort_unstable_by_key(|(channel, _)| **channel);
        for (channel, binding) in channels {
            let permission = self.permissions.get(&canonical(binding.peer.ip()));
            let until = permission
                .map_or(now, |permission| *permission)
                .min(binding.expires)
                .min(self.expires);
            events.push(Event::ChannelLifetime {
                client: self.client,
                channel: *channel,
                lifetime: until.saturating_duration_since(now),
            });
        }
    }

    /// Its state as plain data, deadlines as time left at `now`.
    pub fn snapshot(&self, now: Instant) -> AllocationState {
        let mut permissions: Vec<(IpAddr, u64)> = self
            .permissions
            .iter()
            .map(|(ip, expires)| (*ip, left_ms(*expires, now)))
            .collect();
        permissions.sort_unstable();
        let mut channels: Vec<(u16, SocketAddr, u64)> = self
            .channels
            .iter()
            .map(|(channel, binding)| (*channel, binding.peer, left_ms(binding.expires, now)))
            .collect();
        channels.sort_unstable();
        let mut cooling: Vec<(u16, SocketAddr, u64)> = self
            .cooling
            .iter()
            .map(|(channel, peer, until)| (*channel, *peer, left_ms(*until, now)))
            .collect();
        cooling.sort_unstable();
        AllocationState {
            client: self.client.client,
            server: self.client.server,
            username: self.username.clone(),
            relayed: self.relayed.clone(),
            expires_in_ms: left_ms(self.expires, now),
            created_by: (
                hex(&self.created_by.0.to_be_bytes()),
                hex(&self.created_by.1),
            ),
            permissions,
            channels,
            cooling,
        }
    }

    /// The allocation `state` describes, `elapsed` after it was taken, at
    /// `now`. What expired meanwhile is left out; a channel whose peer
    /// holds no permission, or has no relayed address of its family, is
    /// refused as malformed.
    pub fn from_state(
        state: &AllocationState,
        now: Instant,
        elapsed: Duration,
    ) -> Result<Self, RestoreError> {
        let expires = deadline(now, state.expires_in_ms, elapsed).ok_or(RestoreError::Expired)?;
        if state.relayed.is_empty() || state.relayed.len() > 2 {
            return Err(RestoreError::Malformed("one or two relayed addresses"));
        }
        let transaction = unhex(&state.created_by.0)
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
            .map(u128::from_be_bytes)
            .ok_or(RestoreError::Malformed("a transaction id of 16 bytes"))?;
        let response =
            unhex(&state.created_by.1).ok_or(RestoreError::Malformed("a response in hex"))?;
        let client = FiveTuple {
            transport: Transport::Udp,
            client: state.client,
            server: state.server,
        };
        let mut allocation = Allocation::new(
            client,
            state.username.clone(),
            state.relayed.clone(),
            expires,
            (transaction, response),
        );
        for (ip, ms) in &state.permissions {
            if let Some(at) = deadline(now, *ms, elapsed) {
                allocation.permissions.insert(canonical(*ip), at);
            }
        }
        for (channel, peer, ms) in &state.channels {
            let Some(at) = deadline(now, *ms, elapsed) else {
                continue;
            };
            if !allocation.holds_permission(peer.ip()) {
                continue;
            }
            if allocation.relayed_for(peer.ip()).is_none()
                || allocation.peer_channels.contains_key(peer)
            {
                return Err(RestoreError::Malformed(
                    "a channel per peer, of a relayed family",
                ));
            }
            let binding = Binding {
                peer: *peer,
                expires: at,
            };
            if allocation.channels.insert(*channel, binding).is_some() {
                return Err(RestoreError::Malformed("a peer per channel"));
            }
            allocation.peer_channels.insert(*peer, *channel);
        }
        for (channel, peer, ms) in &state.cooling {
            if let Some(at) = deadline(now, *ms, elapsed) {
                allocation.cooling.push((*channel, *peer, at));
            }
        }
        Ok(allocation)
    }

    /// The events that tell a mirror of this state (the kernel offload)
    /// about it, as if it had been built here: its creation, permissions,
    /// channels and their lifetimes.
    pub fn replay(&self, now: Instant, events: &mut Vec<Event>) {
        events.push(Event::AllocationCreated {
            client: self.client,
            relayed: self.relayed.clone(),
            username: self.username.clone(),
            lifetime: self.expires.saturating_duration_since(now),
        });
        let mut peers: Vec<IpAddr> = self.permissions.keys().copied().collect();
        peers.sort_unstable();
        for peer in peers {
            events.push(Event::PermissionCreated {
                client: self.client,
                peer,
            });
        }
        let mut channels: Vec<(u16, SocketAddr)> = self
            .channels
            .iter()
            .map(|(channel, binding)| (*channel, binding.peer))
            .collect();
        channels.sort_unstable();
        for (channel, peer) in channels {
            if let Some(relayed) = self.relayed_for(peer.ip()) {
                events.push(Event::ChannelBound {
                    client: self.client,
                    relayed,
                    channel,
                    peer,
                });
            }
        }
        self.report_lifetimes(now, events);
    }

    /// The earliest time something in this allocation expires.
    pub fn next_deadline(&self) -> Instant {
        let permissions = self.permissions.values().copied();
        let channels = self.channels.values().map(|binding| binding.expires);
        let cooling = self.cooling.iter().map(|(_, _, until)| *until);
        permissions
            .chain(channels)
            .chain(cooling)
            .fold(self.expires, Instant::min)
    }
}
