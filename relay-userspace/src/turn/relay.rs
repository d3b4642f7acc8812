//! The relay path: application data from clients to peers (ChannelData,
//! Send indications) and from peers to clients (ChannelData, Data
//! indications), each checked against the allocation's permissions.

use std::net::SocketAddr;

use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};
use turn_types::{
    attribute::{Data as DataAttr, XorPeerAddress},
    channel::ChannelData,
    message::DATA,
};

use super::{
    FiveTuple, Now,
    bandwidth::Direction,
    counters::{Indication, RefusalCause},
    outbox::{Destination, Outbox},
    server::Server,
};

impl Server {
    /// Handles a datagram a peer sent to a relayed address: to the client,
    /// on its channel when it has one.
    pub fn handle_peer(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) {
        self.counters.received_from_peer(data.len());
        let Some(&client) = self.by_relayed.get(&relayed) else {
            return;
        };
        let Some(allocation) = self.allocations.get(&client) else {
            return;
        };
        // Permissions are per IP; on the relay's own addresses only other
        // allocations (relay ports) count as that peer.
        let permitted = allocation.has_permission(peer.ip(), now.at)
            && (!self.config.policy.is_own_relayed(peer)
                || self.config.policy.permits_transport(peer));
        if !permitted {
            self.counters.stats.dropped_no_permission += 1;
            return;
        }
        let channel = allocation.peer_channel(peer);
        if !self.within_limits(client, Direction::ToClient, data.len(), now.at) {
            return;
        }
        let to = client;
        match channel {
            // The hot path: a ChannelData header in front of the data.
            Some(channel) => out.push_with(Destination::Client(to), |bytes| {
                let start = bytes.len();
                bytes.extend_from_slice(&channel.to_be_bytes());
                bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
                bytes.extend_from_slice(data);
                if to.transport.is_stream() {
                    bytes.resize(start + (4 + data.len()).next_multiple_of(4), 0);
                }
            }),
            None => {
                // Another allocation of this relay is shown by the address
                // its client was given.
                let shown = if self.config.policy.is_own_relayed(peer) {
                    self.config.public_addresses.advertise(peer)
                } else {
                    peer
                };
                let mut builder = Message::builder_indication(DATA, MessageWriteVec::new());
                let built = builder
                    .add_attribute(&XorPeerAddress::new(shown, builder.transaction_id()))
                    .and_then(|()| builder.add_attribute(&DataAttr::new(data)));
                if built.is_err() {
                    return;
                }
                out.push(Destination::Client(to), &builder.finish());
                self.counters.indication(Indication::Data);
            }
        }
        self.counters.stats.to_client_packets += 1;
        self.counters.stats.to_client_bytes += data.len() as u64;
    }

    /// The hot path from clients: ChannelData to the bound peer (whose
    /// address the policy checked when the channel was bound).
    pub(super) fn channel_data_from_client(
        &mut self,
        from: FiveTuple,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) {
        let Ok(message) = ChannelData::parse(data) else {
            self.counters.stats.dropped_malformed += 1;
            return;
        };
        self.counters.received_from_client(message.data().len());
        let peer = self
            .allocations
            .get(&from)
            .and_then(|allocation| allocation.channel_peer(message.id()));
        match peer {
            Some(peer) => self.relay_to_peer(from, peer, message.data(), now, out),
            None => self.counters.stats.dropped_no_permission += 1,
        }
    }

    /// A Send indication: its data to its peer. The peer's port is checked
    /// here, since permissions only know IPs.
    pub(super) fn send_indication(
        &mut self,
        from: FiveTuple,
        indication: &Message,
        now: Now,
        out: &mut Outbox,
    ) {
        let (Ok(peer), Ok(data)) = (
            indication.attribute::<XorPeerAddress>(),
            indication.attribute::<DataAttr>(),
        ) else {
            self.counters.stats.dropped_malformed += 1;
            return;
        };
        self.counters.received_from_client(data.data().len());
        let peer = self.bound_peer(peer.addr(indication.transaction_id()));
        if peer.port() == 0 {
            self.counters.stats.dropped_malformed += 1;
            return;
        }
        if self.config.policy.is_own_relayed(peer) && !self.config.policy.permits_transport(peer) {
            self.counters.stats.denied_peers += 1;
            self.counters.refuse(RefusalCause::Policy);
            return;
        }
        self.relay_to_peer(from, peer, data.data(), now, out);
    }

    /// Relays a client's application data to `peer` from the allocation's
    /// relayed address of the peer's family, if a permission allows it.
    fn relay_to_peer(
        &mut self,
        from: FiveTuple,
        peer: SocketAddr,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) {
        let relayed = self
            .allocations
            .get(&from)
            .filter(|allocation| allocation.has_permission(peer.ip(), now.at))
            .and_then(|allocation| allocation.relayed_for(peer.ip()));
        let Some(relayed) = relayed else {
            self.counters.stats.dropped_no_permission += 1;
            return;
        };
        if !self.within_limits(from, Direction::ToPeer, data.len(), now.at) {
            return;
        }
        self.counters.stats.to_peer_packets += 1;
        self.counters.stats.to_peer_bytes += data.len() as u64;
        out.push(
            Destination::Peer {
                from: relayed,
                to: peer,
            },
            data,
        );
    }
}
