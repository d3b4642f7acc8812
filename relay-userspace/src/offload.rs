//! The offload manager: mirrors the TURN server's channel bindings into the
//! XDP program's maps, following the core's lifecycle events, so the kernel
//! relays exactly the channels the server has bound, for as long as the RFC
//! allows.
//!
//! A binding the kernel cannot take stays with the userspace relay, which
//! handles every kind of traffic: bindings of TCP or TLS clients, of
//! clients on wildcard listen addresses (the kernel needs the exact server
//! address), across address families, on RFC 5766 channel numbers unless
//! enabled, or that do not fit in the maps. Each refusal is counted and logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    turn::{Event, FiveTuple, Transport},
    xdp::{KernelBinding, XdpRelay},
};

/// Why a binding stayed in userspace, and how many did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Bindings installed in the kernel.
    pub installed: u64,
    /// Bindings removed from the kernel.
    pub removed: u64,
    /// Clients over TCP or TLS (the kernel relays UDP).
    pub not_udp: u64,
    /// Clients on a wildcard listen address.
    pub wildcard_listener: u64,
    /// Client and peer of different address families.
    pub cross_family: u64,
    /// Channel numbers above 0x4FFF (RFC 5766 clients) while the kernel
    /// program accepts only RFC 8656's.
    pub legacy_channel: u64,
    /// Map insertions that failed (full maps).
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
}

/// Follows events into the kernel maps.
pub struct Offload {
    relay: Arc<Mutex<XdpRelay>>,
    /// Highest channel number the kernel program accepts.
    max_channel: u16,
    /// Counter slots not in use.
    free_slots: Vec<u32>,
    installed: HashMap<(FiveTuple, u16), KernelBinding>,
    stats: OffloadStats,
}

impl Offload {
    /// An offload manager writing into `relay`'s maps, which hold
    /// `max_bindings` bindings; with `legacy_channel_numbers` (as loaded
    /// into the program) RFC 5766 channel numbers are offloaded too.
    pub fn new(
        relay: Arc<Mutex<XdpRelay>>,
        max_bindings: u32,
        legacy_channel_numbers: bool,
    ) -> Self {
        Offload {
            relay,
            // Popped from the end: slot 0 first.
            free_slots: (0..max_bindings).rev().collect(),
            max_channel: if legacy_channel_numbers {
                0x7FFF
            } else {
                relay_common::CHANNEL_MAX
            },
            installed: HashMap::new(),
            stats: OffloadStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> OffloadStats {
        self.stats
    }

    /// What the kernel relayed in all, live bindings included.
    pub fn kernel_relayed(&self) -> KernelRelayed {
        let mut total = self.stats.kernel_relayed;
        let relay = self.relay.lock().expect("XDP lock");
        for binding in self.installed.values() {
            if let Ok(counters) = relay.binding_counters(binding.slot) {
                total.add(&counters);
            }
        }
        total
    }

    /// What the kernel relayed for one live binding.
    pub fn binding_relayed(&self, client: FiveTuple, channel: u16) -> Option<KernelRelayed> {
        let binding = self.installed.get(&(client, channel))?;
        let counters = self
            .relay
            .lock()
            .expect("XDP lock")
            .binding_counters(binding.slot)
            .ok()?;
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
            _ => {}
        }
    }

    fn bind(
        &mut self,
        client: FiveTuple,
        relayed: std::net::SocketAddr,
        channel: u16,
        peer: std::net::SocketAddr,
    ) {
        let stat = if client.transport != Transport::Udp {
            &mut self.stats.not_udp
        } else if client.server.ip().is_unspecified() {
            &mut self.stats.wildcard_listener
        } else if client.client.is_ipv4() != peer.is_ipv4() {
            &mut self.stats.cross_family
        } else if channel > self.max_channel {
            &mut self.stats.legacy_channel
        } else if let Some(slot) = self.free_slots.pop() {
            let binding = KernelBinding {
                client: client.client,
                server: client.server,
                channel,
                relayed,
                peer,
                slot,
            };
            let mut relay = self.relay.lock().expect("XDP lock");
            match relay
                .reset_binding_counters(slot)
                .and_then(|()| relay.install(&binding))
            {
                Ok(()) => {
                    self.installed.insert((client, channel), binding);
                    self.stats.installed += 1;
                    return;
                }
                Err(err) => {
                    self.free_slots.push(slot);
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
            &mut self.stats.failed
        };
        *stat += 1;
    }

    fn unbind(&mut self, client: FiveTuple, channel: u16) {
        let Some(binding) = self.installed.remove(&(client, channel)) else {
            return;
        };
        let mut relay = self.relay.lock().expect("XDP lock");
        if let Err(err) = relay.remove(&binding) {
            tracing::warn!(
                "removing channel {channel:#x} of {} from the kernel: {err}",
                client.client
            );
        }
        // Read after removal: no packet can count after this.
        match relay.binding_counters(binding.slot) {
            Ok(counters) => {
                tracing::debug!(
                    "channel {channel:#x} of {}: the kernel relayed {counters:?}",
                    client.client
                );
                self.stats.kernel_relayed.add(&counters);
            }
            Err(err) => tracing::warn!("reading the counters of channel {channel:#x}: {err}"),
        }
        drop(relay);
        self.free_slots.push(binding.slot);
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
