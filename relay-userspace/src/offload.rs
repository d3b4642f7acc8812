//! The offload manager: mirrors the TURN server's channel bindings into the
//! XDP program's maps, following the core's lifecycle events, so the kernel
//! relays exactly the channels the server has bound, for as long as the RFC
//! allows.
//!
//! A binding the kernel cannot take stays with the userspace relay, which
//! handles every kind of traffic: bindings of TCP or TLS clients, of
//! clients whose server address is unknown (a wildcard listener that could
//! not tell; the kernel needs the exact address), across address families, on RFC 5766 channel numbers unless
//! enabled, to another allocation of this relay (the traffic never leaves
//! the node, so the kernel's forwarding would only hand it back to the
//! stack), or that do not fit in the maps. Each refusal is counted and
//! logged.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use relay_common::{
    BindingCounters,
    bandwidth::{BUCKETS_PER_BINDING, Bucket},
};

use crate::{
    kernel_buckets::{BucketWriter, KernelBuckets},
    turn::PERMISSION_LIFETIME,
    turn::bandwidth::Limits,
    turn::{Event, FiveTuple, Transport},
    xdp::{KernelBinding, XdpError, XdpRelay},
};

/// The kernel maps the offload writes: the XDP program's, or a stand-in in
/// tests.
pub trait BindingMaps: BucketWriter + Send {
    /// Installs a binding in both directions, or nothing.
    fn install(&mut self, binding: &KernelBinding) -> Result<(), XdpError>;
    /// Removes a binding from both directions.
    fn remove(&mut self, binding: &KernelBinding) -> Result<(), XdpError>;
    /// Rewrites both entries of an installed binding (a new expiry).
    fn update(&mut self, binding: &KernelBinding) -> Result<(), XdpError>;
    /// The counter slot of the entry a previous daemon left in the pinned
    /// maps for `binding`'s channel, if there is one that this process did
    /// not install: a binding handed over keeps its counters.
    fn adopted_slot(&self, binding: &KernelBinding) -> Option<u32>;
    /// Zeroes the counters of `slot`, for a new binding.
    fn reset_counters(&mut self, slot: u32) -> Result<(), XdpError>;
    /// What the kernel relayed for the binding in `slot`.
    fn counters(&self, slot: u32) -> Result<BindingCounters, XdpError>;
}

/// The loaded program's maps, shared with whoever else uses the program
/// (counters, detaching).
impl BindingMaps for Arc<Mutex<XdpRelay>> {
    fn install(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
        self.lock().expect("XDP lock").install(binding)
    }

    fn remove(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
        self.lock().expect("XDP lock").remove(binding)
    }

    fn update(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
        self.lock().expect("XDP lock").update(binding)
    }

    fn adopted_slot(&self, binding: &KernelBinding) -> Option<u32> {
        self.lock().expect("XDP lock").adopted_slot(binding)
    }

    fn reset_counters(&mut self, slot: u32) -> Result<(), XdpError> {
        self.lock().expect("XDP lock").reset_binding_counters(slot)
    }

    fn counters(&self, slot: u32) -> Result<BindingCounters, XdpError> {
        self.lock().expect("XDP lock").binding_counters(slot)
    }
}

impl BucketWriter for Arc<Mutex<XdpRelay>> {
    fn set_bucket(&mut self, index: u32, bucket: Bucket) -> Result<(), XdpError> {
        self.lock().expect("XDP lock").set_bucket(index, bucket)
    }
}

/// Why a binding stayed in userspace, and how many did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Bindings installed in the kernel.
    pub installed: u64,
    /// Bindings removed from the kernel.
    pub removed: u64,
    /// Clients over TCP or TLS (the kernel relays UDP).
    pub not_udp: u64,
    /// Clients whose server address is a wildcard (not learnt).
    pub wildcard_listener: u64,
    /// Client and peer of different address families.
    pub cross_family: u64,
    /// Channel numbers above 0x4FFF (RFC 5766 clients) while the kernel
    /// program accepts only RFC 8656's.
    pub legacy_channel: u64,
    /// Peers that are relayed addresses of this relay.
    pub relay_to_relay: u64,
    /// Bindings refused for want of a free slot: `[xdp] max_bindings`
    /// are in the kernel.
    pub map_full: u64,
    /// Map updates that failed (an error of the kernel's).
    pub failed: u64,
    /// What the kernel relayed for bindings that have ended.
    pub kernel_relayed: KernelRelayed,
}

/// Traffic the kernel relayed, summed over bindings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelRelayed {
    /// Datagrams from clients to peers.
    pub to_peer_packets: u64,
    /// Their application bytes.
    pub to_peer_bytes: u64,
    /// Datagrams from peers to clients.
    pub to_client_packets: u64,
    /// Their application bytes.
    pub to_client_bytes: u64,
}

impl KernelRelayed {
    fn add(&mut self, counters: &relay_common::BindingCounters) {
        self.to_peer_packets += counters.to_peer_packets;
        self.to_peer_bytes += counters.to_peer_bytes;
        self.to_client_packets += counters.to_client_packets;
        self.to_client_bytes += counters.to_client_bytes;
    }

    fn subtract(&mut self, counters: &relay_common::BindingCounters) {
        self.to_peer_packets -= counters.to_peer_packets;
        self.to_peer_bytes -= counters.to_peer_bytes;
        self.to_client_packets -= counters.to_client_packets;
        self.to_client_bytes -= counters.to_client_bytes;
    }
}

/// Whether `now` counts at least what `then` did in every field: a live
/// binding's counters only grow.
fn grew(now: &relay_common::BindingCounters, then: &relay_common::BindingCounters) -> bool {
    now.to_peer_packets >= then.to_peer_packets
        && now.to_peer_bytes >= then.to_peer_bytes
        && now.to_client_packets >= then.to_client_packets
        && now.to_client_bytes >= then.to_client_bytes
}

/// Why a channel binding is left to the userspace relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// The client speaks TCP or TLS; the kernel relays UDP.
    NotUdp,
    /// The client reached a wildcard listener: the kernel needs the exact
    /// server address.
    WildcardListener,
    /// Client and peer are of different address families.
    CrossFamily,
    /// A channel number above what the kernel program accepts.
    LegacyChannel,
    /// The peer is a relayed address of this relay.
    RelayToRelay,
}

/// What the kernel program can relay, as plain rules.
#[derive(Clone, Debug)]
pub struct Eligibility {
    /// Highest channel number the kernel program accepts.
    pub max_channel: u16,
    /// The relay's own relay addresses.
    pub own_relay: Vec<IpAddr>,
}

impl Eligibility {
    /// The rules for a program loaded with or without RFC 5766 channel
    /// numbers, on a relay with the relay addresses `own_relay`.
    pub fn new(legacy_channel_numbers: bool, own_relay: Vec<IpAddr>) -> Self {
        Eligibility {
            max_channel: relay_common::channel_max(legacy_channel_numbers),
            own_relay,
        }
    }

    /// Whether the kernel can take `channel` of `client` to `peer`.
    pub fn check(
        &self,
        client: &FiveTuple,
        channel: u16,
        peer: SocketAddr,
    ) -> Result<(), Ineligible> {
        if client.transport != Transport::Udp {
            Err(Ineligible::NotUdp)
        } else if client.server.ip().is_unspecified() {
            Err(Ineligible::WildcardListener)
        } else if client.client.is_ipv4() != peer.is_ipv4() {
            Err(Ineligible::CrossFamily)
        } else if channel > self.max_channel {
            Err(Ineligible::LegacyChannel)
        } else if self
            .own_relay
            .contains(&crate::turn::policy::canonical(peer.ip()))
        {
            Err(Ineligible::RelayToRelay)
        } else {
            Ok(())
        }
    }
}

/// The binding expiry (in the kernel's ticks) `lifetime` after the
/// CLOCK_MONOTONIC time `now_ns`.
fn expires_after(now_ns: u64, lifetime: Duration) -> u32 {
    let lifetime = u64::try_from(lifetime.as_nanos()).unwrap_or(u64::MAX);
    relay_common::expiry::expires_after(now_ns, lifetime)
}

/// CLOCK_MONOTONIC in ns: the clock the kernel programs compare expiries
/// with (its coarse twin).
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Follows events into the kernel maps.
pub struct Offload {
    maps: Box<dyn BindingMaps>,
    rules: Eligibility,
    /// Counter slots not in use.
    free_slots: std::collections::BTreeSet<u32>,
    installed: HashMap<(FiveTuple, u16), KernelBinding>,
    stats: OffloadStats,
    /// Each live binding's counters as last read, by slot, and their sum:
    /// what the kernel relayed is read a few bindings at a time (see
    /// [`Offload::refresh_relayed`]) and summed here, so that a scrape
    /// never holds the offload, and the core waiting on it, for a read of
    /// every binding.
    seen: HashMap<u32, BindingCounters>,
    live: KernelRelayed,
    max_bindings: u32,
    buckets: KernelBuckets,
}

impl Offload {
    /// An offload manager writing into `maps`, which hold `max_bindings`
    /// bindings, of those `rules` allow.
    pub fn new(maps: Box<dyn BindingMaps>, max_bindings: u32, rules: Eligibility) -> Self {
        Offload {
            maps,
            // Lowest first: slot 0 first.
            free_slots: (0..max_bindings).collect(),
            rules,
            installed: HashMap::new(),
            stats: OffloadStats::default(),
            seen: HashMap::new(),
            live: KernelRelayed::default(),
            max_bindings,
            buckets: KernelBuckets::new(Limits::default(), 0),
        }
    }

    /// Holds the channels it installs to `limits` in the kernel too.
    pub fn with_bandwidth(mut self, limits: Limits) -> Self {
        let entries = self.max_bindings * BUCKETS_PER_BINDING + 1;
        self.buckets = KernelBuckets::new(limits, entries);
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> OffloadStats {
        self.stats
    }

    /// Bindings in the kernel now.
    pub fn bindings(&self) -> usize {
        self.installed.len()
    }

    /// Bindings the kernel can hold.
    pub fn capacity(&self) -> u32 {
        self.max_bindings
    }

    /// What the kernel relayed in all: the bindings that ended, and the
    /// live ones as [`Offload::refresh_relayed`] last read them. It never
    /// goes down, as metrics counters must not.
    pub fn kernel_relayed(&self) -> KernelRelayed {
        let mut total = self.stats.kernel_relayed;
        total.to_peer_packets += self.live.to_peer_packets;
        total.to_peer_bytes += self.live.to_peer_bytes;
        total.to_client_packets += self.live.to_client_packets;
        total.to_client_bytes += self.live.to_client_bytes;
        total
    }

    /// The counter slots of the live bindings, for
    /// [`Offload::refresh_relayed`].
    pub fn live_slots(&self) -> Vec<u32> {
        self.seen.keys().copied().collect()
    }

    /// Reads the counters of the live bindings among `slots` into
    /// [`Offload::kernel_relayed`]. Callers pass a few at a time, letting
    /// go of the offload in between; a slot whose binding ended since is
    /// skipped.
    pub fn refresh_relayed(&mut self, slots: &[u32]) {
        for slot in slots {
            let Some(seen) = self.seen.get_mut(slot) else {
                continue;
            };
            let Ok(now) = self.maps.counters(*slot) else {
                continue;
            };
            if grew(&now, seen) {
                self.live.subtract(seen);
                self.live.add(&now);
                *seen = now;
            }
        }
    }

    /// What the kernel relayed for one live binding.
    pub fn binding_relayed(&self, client: FiveTuple, channel: u16) -> Option<KernelRelayed> {
        let binding = self.installed.get(&(client, channel))?;
        let counters = self.maps.counters(binding.slot).ok()?;
        let mut relayed = KernelRelayed::default();
        relayed.add(&counters);
        Some(relayed)
    }

    /// Applies one lifecycle event.
    pub fn apply(&mut self, event: &Event) {
        match *event {
            Event::ChannelBound {
                client,
                relayed,
                channel,
                peer,
            } => self.bind(client, relayed, channel, peer),
            Event::ChannelExpired {
                client, channel, ..
            } => self.unbind(client, channel),
            Event::ChannelLifetime {
                client,
                channel,
                lifetime,
            } => self.set_lifetime(client, channel, lifetime),
            Event::AllocationCreated {
                client,
                ref username,
                ..
            } => self.buckets.allocation_created(client, username),
            Event::AllocationDeleted { client, .. } => self.buckets.allocation_deleted(client),
            _ => {}
        }
    }

    fn bind(&mut self, client: FiveTuple, relayed: SocketAddr, channel: u16, peer: SocketAddr) {
        let stat = if let Err(ineligible) = self.rules.check(&client, channel, peer) {
            tracing::debug!(
                "channel {channel:#x} of {} to {peer} stays in userspace: {ineligible:?}",
                client.client
            );
            match ineligible {
                Ineligible::NotUdp => &mut self.stats.not_udp,
                Ineligible::WildcardListener => &mut self.stats.wildcard_listener,
                Ineligible::CrossFamily => &mut self.stats.cross_family,
                Ineligible::LegacyChannel => &mut self.stats.legacy_channel,
                Ineligible::RelayToRelay => &mut self.stats.relay_to_relay,
            }
        } else if let Some((slot, adopted)) = self.slot_for(client, channel, relayed, peer) {
            let binding = KernelBinding {
                client: client.client,
                server: client.server,
                channel,
                relayed,
                peer,
                slot,
                buckets: self.buckets.for_channel(client, &mut *self.maps),
                // A ChannelBind refreshes the peer's permission, which
                // bounds the binding's life; its exact lifetime follows.
                expires: expires_after(monotonic_ns(), PERMISSION_LIFETIME),
            };
            // A handed-over binding's counters go on; a new one's start at 0.
            let installed = if adopted {
                Ok(())
            } else {
                self.maps.reset_counters(slot)
            };
            match installed.and_then(|()| self.maps.install(&binding)) {
                Ok(()) => {
                    self.installed.insert((client, channel), binding);
                    self.seen.insert(slot, BindingCounters::default());
                    self.stats.installed += 1;
                    return;
                }
                Err(err) => {
                    self.free_slots.insert(slot);
                    tracing::warn!(
                        "channel {channel:#x} of {} stays in userspace: {err}",
                        client.client
                    );
                    &mut self.stats.failed
                }
            }
        } else {
            tracing::warn!(
                "channel {channel:#x} of {} stays in userspace: the kernel maps are full \
                 (raise [xdp] max_bindings)",
                client.client
            );
            &mut self.stats.map_full
        };
        *stat += 1;
    }

    /// The counter slot for a new binding, and whether it is the one a
    /// previous daemon's entry for it holds; `None` when all are taken.
    fn slot_for(
        &mut self,
        client: FiveTuple,
        channel: u16,
        relayed: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(u32, bool)> {
        let probe = KernelBinding {
            client: client.client,
            server: client.server,
            channel,
            relayed,
            peer,
            slot: 0,
            buckets: Default::default(),
            expires: 0,
        };
        if let Some(slot) = self.maps.adopted_slot(&probe)
            && self.free_slots.remove(&slot)
        {
            return Some((slot, true));
        }
        self.free_slots.pop_first().map(|slot| (slot, false))
    }

    /// Moves the kernel's expiry of a binding to `lifetime` from now.
    fn set_lifetime(&mut self, client: FiveTuple, channel: u16, lifetime: Duration) {
        let Some(binding) = self.installed.get_mut(&(client, channel)) else {
            return;
        };
        let expires = expires_after(monotonic_ns(), lifetime);
        if binding.expires == expires {
            return;
        }
        let updated = KernelBinding {
            expires,
            ..*binding
        };
        match self.maps.update(&updated) {
            Ok(()) => *binding = updated,
            // The old expiry stays: the kernel hands the binding's traffic
            // to userspace from then on, which relays it as long as it
            // should.
            Err(err) => tracing::warn!(
                "moving the kernel expiry of channel {channel:#x} of {}: {err}",
                client.client
            ),
        }
    }

    fn unbind(&mut self, client: FiveTuple, channel: u16) {
        let Some(binding) = self.installed.remove(&(client, channel)) else {
            return;
        };
        if let Err(err) = self.maps.remove(&binding) {
            tracing::warn!(
                "removing channel {channel:#x} of {} from the kernel: {err}",
                client.client
            );
        }
        // Read after removal: no packet can count after this. What was
        // last seen moves from the live sum to the ended one, as the final
        // read or, should that fail, as it was: the total never drops.
        let seen = self.seen.remove(&binding.slot).unwrap_or_default();
        self.live.subtract(&seen);
        let counters = match self.maps.counters(binding.slot) {
            Ok(counters) if grew(&counters, &seen) => counters,
            Ok(_) => seen,
            Err(err) => {
                tracing::warn!("reading the counters of channel {channel:#x}: {err}");
                seen
            }
        };
        tracing::debug!(
            "channel {channel:#x} of {}: the kernel relayed {counters:?}",
            client.client
        );
        self.stats.kernel_relayed.add(&counters);
        self.free_slots.insert(binding.slot);
        self.stats.removed += 1;
    }

    /// Removes every binding it installed, for shutdown.
    pub fn remove_all(&mut self) {
        let keys: Vec<(FiveTuple, u16)> = self.installed.keys().copied().collect();
        for (client, channel) in keys {
            self.unbind(client, channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_client(server: &str) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: "198.18.0.1:40000".parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    #[test]
    fn eligibility_rules() {
        let rules = Eligibility {
            max_channel: relay_common::CHANNEL_MAX,
            own_relay: vec!["198.19.0.1".parse().unwrap()],
        };
        let peer: SocketAddr = "198.19.0.2:3480".parse().unwrap();
        let client = udp_client("198.18.0.2:3478");
        assert_eq!(rules.check(&client, 0x4000, peer), Ok(()));
        let tcp = FiveTuple {
            transport: Transport::Tcp,
            ..client
        };
        let cases = [
            (tcp, 0x4000, peer, Ineligible::NotUdp),
            (
                udp_client("0.0.0.0:3478"),
                0x4000,
                peer,
                Ineligible::WildcardListener,
            ),
            (
                client,
                0x4000,
                "[fd00:19::2]:3480".parse().unwrap(),
                Ineligible::CrossFamily,
            ),
            (client, 0x5000, peer, Ineligible::LegacyChannel),
            (
                client,
                0x4000,
                "198.19.0.1:50000".parse().unwrap(),
                Ineligible::RelayToRelay,
            ),
        ];
        for (client, channel, peer, why) in cases {
            assert_eq!(rules.check(&client, channel, peer), Err(why), "{peer}");
        }
    }

    /// Maps in memory: what is installed, counters per slot, and a
    /// capacity after which inserts fail as a full kernel map does.
    #[derive(Default)]
    struct FakeMaps {
        state: Arc<Mutex<FakeState>>,
    }

    #[derive(Default)]
    struct FakeState {
        installed: Vec<KernelBinding>,
        counters: HashMap<u32, BindingCounters>,
        capacity: usize,
    }

    impl BindingMaps for FakeMaps {
        fn install(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
            let mut state = self.state.lock().unwrap();
            if state.installed.len() >= state.capacity {
                return Err(XdpError::Mismatch("the fake map is full".into()));
            }
            state.installed.push(*binding);
            Ok(())
        }

        fn remove(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
            self.state
                .lock()
                .unwrap()
                .installed
                .retain(|b| b != binding);
            Ok(())
        }

        fn update(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
            let mut state = self.state.lock().unwrap();
            let installed = state.installed.iter_mut().find(|b| b.slot == binding.slot);
            *installed.ok_or_else(|| XdpError::Mismatch("not installed".into()))? = *binding;
            Ok(())
        }

        fn adopted_slot(&self, _binding: &KernelBinding) -> Option<u32> {
            None
        }

        fn reset_counters(&mut self, slot: u32) -> Result<(), XdpError> {
            self.state.lock().unwrap().counters.remove(&slot);
            Ok(())
        }

        fn counters(&self, slot: u32) -> Result<BindingCounters, XdpError> {
            Ok(self
                .state
                .lock()
                .unwrap()
                .counters
                .get(&slot)
                .copied()
                .unwrap_or_default())
        }
    }

    impl BucketWriter for FakeMaps {
        fn set_bucket(&mut self, _: u32, _: Bucket) -> Result<(), XdpError> {
            Ok(())
        }
    }

    fn bound(client: FiveTuple, channel: u16) -> Event {
        Event::ChannelBound {
            client,
            relayed: "198.19.0.1:50000".parse().unwrap(),
            channel,
            peer: "198.19.0.2:3480".parse().unwrap(),
        }
    }

    fn expired(client: FiveTuple, channel: u16) -> Event {
        Event::ChannelExpired {
            client,
            relayed: "198.19.0.1:50000".parse().unwrap(),
            channel,
            peer: "198.19.0.2:3480".parse().unwrap(),
        }
    }

    #[test]
    fn a_binding_carries_its_lifetime_into_the_kernel() {
        let maps = FakeMaps::default();
        let state = Arc::clone(&maps.state);
        state.lock().unwrap().capacity = 2;
        let rules = Eligibility::new(false, vec!["198.19.0.1".parse().unwrap()]);
        let mut offload = Offload::new(Box::new(maps), 2, rules);
        let client = udp_client("198.18.0.2:3478");
        let expires = || state.lock().unwrap().installed[0].expires;
        let at = |lifetime: Duration| expires_after(monotonic_ns(), lifetime);
        let before = at(PERMISSION_LIFETIME);
        offload.apply(&bound(client, 0x4000));
        // Until the permission's end at most, before its exact lifetime.
        assert!((before..=at(PERMISSION_LIFETIME)).contains(&expires()));
        let lifetime = |secs| Event::ChannelLifetime {
            client,
            channel: 0x4000,
            lifetime: Duration::from_secs(secs),
        };
        let before = at(Duration::from_secs(60));
        offload.apply(&lifetime(60));
        assert!((before..=at(Duration::from_secs(60))).contains(&expires()));
        assert!(expires() < at(PERMISSION_LIFETIME) - 100);
        // Another channel's lifetime changes nothing.
        let other = Event::ChannelLifetime {
            client,
            channel: 0x4001,
            lifetime: Duration::from_secs(600),
        };
        let was = expires();
        offload.apply(&other);
        assert_eq!(expires(), was);
    }

    #[test]
    fn bindings_follow_events_and_their_counters_are_kept_when_they_end() {
        let maps = FakeMaps::default();
        let state = Arc::clone(&maps.state);
        state.lock().unwrap().capacity = 2;
        let rules = Eligibility::new(false, vec!["198.19.0.1".parse().unwrap()]);
        let mut offload = Offload::new(Box::new(maps), 2, rules);
        let (a, b, c) = (
            udp_client("198.18.0.2:3478"),
            FiveTuple {
                client: "198.18.0.1:40001".parse().unwrap(),
                ..udp_client("198.18.0.2:3478")
            },
            FiveTuple {
                client: "198.18.0.1:40002".parse().unwrap(),
                ..udp_client("198.18.0.2:3478")
            },
        );
        offload.apply(&bound(a, 0x4000));
        offload.apply(&bound(b, 0x4000));
        // Out of slots: the third stays in userspace.
        offload.apply(&bound(c, 0x4000));
        assert_eq!(state.lock().unwrap().installed.len(), 2);
        let slot = state.lock().unwrap().installed[0].slot;
        state.lock().unwrap().counters.insert(
            slot,
            BindingCounters {
                to_peer_packets: 7,
                to_peer_bytes: 700,
                to_client_packets: 5,
                to_client_bytes: 500,
            },
        );
        assert_eq!(
            offload.binding_relayed(a, 0x4000).unwrap().to_peer_packets,
            7
        );
        // Refreshes and permission events change nothing; expiry removes.
        offload.apply(&Event::ChannelRefreshed {
            client: a,
            channel: 0x4000,
        });
        offload.apply(&expired(a, 0x4000));
        assert_eq!(state.lock().unwrap().installed.len(), 1);
        assert!(offload.binding_relayed(a, 0x4000).is_none());
        // Its slot is free again and its counts are kept.
        offload.apply(&bound(c, 0x4000));
        assert_eq!(state.lock().unwrap().installed.len(), 2);
        let stats = offload.stats();
        assert_eq!(
            (stats.installed, stats.removed, stats.map_full, stats.failed),
            (3, 1, 1, 0)
        );
        assert_eq!(stats.kernel_relayed.to_peer_packets, 7);
        assert_eq!(stats.kernel_relayed.to_client_bytes, 500);
        offload.remove_all();
        assert!(state.lock().unwrap().installed.is_empty());
        assert_eq!(offload.stats().removed, 3);
    }

    #[test]
    fn kernel_relayed_is_read_as_refreshed_and_never_goes_down() {
        let maps = FakeMaps::default();
        let state = Arc::clone(&maps.state);
        state.lock().unwrap().capacity = 4;
        let mut offload = Offload::new(Box::new(maps), 4, Eligibility::new(false, Vec::new()));
        let a = udp_client("198.18.0.2:3478");
        offload.apply(&bound(a, 0x4000));
        offload.apply(&bound(a, 0x4001));
        let counts = |packets| BindingCounters {
            to_peer_packets: packets,
            to_peer_bytes: packets * 100,
            to_client_packets: packets,
            to_client_bytes: packets * 100,
        };
        let slots = offload.live_slots();
        assert_eq!(slots.len(), 2);
        state.lock().unwrap().counters.insert(slots[0], counts(7));
        state.lock().unwrap().counters.insert(slots[1], counts(3));
        // Nothing is read until a refresh, and then only the slots given.
        assert_eq!(offload.kernel_relayed().to_peer_packets, 0);
        offload.refresh_relayed(&slots[..1]);
        assert_eq!(offload.kernel_relayed().to_peer_packets, 7);
        offload.refresh_relayed(&slots);
        assert_eq!(offload.kernel_relayed().to_peer_packets, 10);
        // A binding that ends moves its final count to the ended sum.
        state.lock().unwrap().counters.insert(slots[0], counts(9));
        let ended = if state.lock().unwrap().installed[0].slot == slots[0] {
            state.lock().unwrap().installed[0].channel
        } else {
            state.lock().unwrap().installed[1].channel
        };
        offload.apply(&expired(a, ended));
        assert_eq!(offload.kernel_relayed().to_peer_packets, 12);
        // A stale slot is skipped; a count that went down (a reused,
        // reset slot) is not taken.
        offload.refresh_relayed(&slots);
        assert_eq!(offload.kernel_relayed().to_peer_packets, 12);
        state.lock().unwrap().counters.insert(slots[1], counts(1));
        offload.refresh_relayed(&slots);
        assert_eq!(offload.kernel_relayed().to_client_bytes, 1200);
    }

    #[test]
    fn a_failed_insert_frees_its_slot_and_is_counted() {
        let maps = FakeMaps::default();
        let state = Arc::clone(&maps.state);
        let mut offload = Offload::new(Box::new(maps), 4, Eligibility::new(false, Vec::new()));
        let client = udp_client("198.18.0.2:3478");
        offload.apply(&bound(client, 0x4000));
        assert_eq!(offload.stats().failed, 1);
        state.lock().unwrap().capacity = 1;
        offload.apply(&bound(client, 0x4001));
        assert_eq!(state.lock().unwrap().installed[0].slot, 0, "slot 0 reused");
        // Ineligible bindings never reach the maps.
        offload.apply(&bound(udp_client("0.0.0.0:3478"), 0x4000));
        assert_eq!(offload.stats().wildcard_listener, 1);
        assert_eq!(state.lock().unwrap().installed.len(), 1);
    }
}
