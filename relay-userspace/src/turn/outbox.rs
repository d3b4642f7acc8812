//! What the core has to send, written into buffers the caller reuses, so the
//! relay path allocates nothing per packet once the buffers have grown.

use std::{net::SocketAddr, ops::Range};

use super::{FiveTuple, Transmit};

/// Where one message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// To a client, over the transport and listener of the 5-tuple.
    Client(FiveTuple),
    /// To a peer, from a relayed address.
    Peer {
        /// The relayed address it is sent from.
        from: SocketAddr,
        /// The peer.
        to: SocketAddr,
    },
}

/// Messages to send, in order: destinations and the byte ranges of one
/// shared buffer.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: Vec<(Destination, Range<usize>)>,
    bytes: Vec<u8>,
}

impl Outbox {
    /// Forgets the messages, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a copy of `data` for `destination`.
    pub fn push(&mut self, destination: Destination, data: &[u8]) {
        self.push_with(destination, |bytes| bytes.extend_from_slice(data));
    }

    /// Queues the bytes `write` appends.
    pub fn push_with(&mut self, destination: Destination, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        self.entries.push((destination, start..self.bytes.len()));
    }

    /// The queued messages, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Destination, &[u8])> {
        self.entries
            .iter()
            .map(|(destination, range)| (*destination, &self.bytes[range.clone()]))
    }

    /// The queued messages as owned values (for tests and logging).
    pub fn to_transmits(&self) -> Vec<Transmit> {
        self.iter()
            .map(|(destination, data)| match destination {
                Destination::Client(to) => Transmit::ToClient {
                    to,
                    data: data.to_vec(),
                },
                Destination::Peer { from, to } => Transmit::ToPeer {
                    from,
                    to,
                    data: data.to_vec(),
                },
            })
            .collect()
    }
}
