//! The offload manager: mirrors the TURN server's channel bindings into the
//! XDP program's maps, following the core's lifecycle events, so the kernel
//! relays exactly the channels the server has bound, for as long as the RFC
//! allows.
//!
//! A binding the kernel cannot take stays with the userspace relay, which
//! handles every kind of traffic: bindings of TCP or TLS clients, of
//! clients on wildcard listen addresses (the kernel needs the exact server
//! address), across address families, on RFC 5766 channel numbers unless
//! enabled, to another allocation of this relay (the traffic never leaves
//! the node, so the kernel's forwarding would only hand it back to the
//! stack), or that do not fit in the maps. Each refusal is counted and
//! logged.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
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
    /// Peers that are relayed addresses of this relay.
    pub relay_to_relay: u64,
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

/// Follows events into the kernel maps.
pub struct Offload {
    relay: Arc<Mutex<XdpRelay>>,
    rules: Eligibility,
    /// Counter slots not in use.
    free_slots: Vec<u32>,
    installed: HashMap<(FiveTuple, u16), KernelBinding>,
    stats: OffloadStats,
}

impl Offload {
    /// An offload manager writing into `relay`'s maps, which hold
    /// `max_bindings` bindings; with `legacy_channel_numbers` (as loaded
    /// into the program) RFC 5766 channel numbers are offloaded too.
    /// `own_relay` are the relay addresses, whose channels stay in userspace.
    pub fn new(
        relay: Arc<Mutex<XdpRelay>>,
        max_bindings: u32,
        legacy_channel_numbers: bool,
        own_relay: Vec<IpAddr>,
    ) -> Self {
        Offload {
            relay,
            // Popped from the end: slot 0 first.
            free_slots: (0..max_bindings).rev().collect(),
            rules: Eligibility {
                max_channel: relay_common::channel_max(legacy_channel_numbers),
                own_relay,
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
}
