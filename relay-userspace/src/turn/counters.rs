//! Counters of what the core did, for the metrics layer (Prometheus) and
//! tests. Every counter only grows, from the start of the process; the
//! metrics layer reads them under the same lock as the core and exports
//! them as `_total` counters. Labels come from the enums' `label()`, and
//! their `ALL` lists give every label value, so that a family is exported
//! with zeros before the first event.

use std::collections::BTreeMap;

use stun_types::message::{BINDING, Method as StunMethod};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};

use super::{DeleteReason, Transport, server::Stats};

/// A request method the server answers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Method {
    /// Binding (RFC 8489).
    Binding,
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
}

impl Method {
    /// Every method, in label order.
    pub const ALL: [Method; 5] = [
        Method::Binding,
        Method::Allocate,
        Method::Refresh,
        Method::CreatePermission,
        Method::ChannelBind,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Method::Binding => "binding",
            Method::Allocate => "allocate",
            Method::Refresh => "refresh",
            Method::CreatePermission => "create_permission",
            Method::ChannelBind => "channel_bind",
        }
    }

    /// The method of a STUN request, if it is one of these.
    pub fn of(method: StunMethod) -> Option<Method> {
        Some(match method {
            m if m == BINDING => Method::Binding,
            m if m == ALLOCATE => Method::Allocate,
            m if m == REFRESH => Method::Refresh,
            m if m == CREATE_PERMISSION => Method::CreatePermission,
            m if m == CHANNEL_BIND => Method::ChannelBind,
            _ => return None,
        })
    }
}

/// An indication method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Indication {
    /// Send indications received from clients.
    Send,
    /// Data indications sent to clients.
    Data,
}

impl Indication {
    /// Both, in label order.
    pub const ALL: [Indication; 2] = [Indication::Send, Indication::Data];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Indication::Send => "send",
            Indication::Data => "data",
        }
    }
}

/// Why a request (or a response, or a Send indication) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalCause {
    /// 401 to a request that carried credentials: wrong password, unknown
    /// or expired user. (The first, credential-less 401 of every client is
    /// not a refusal.)
    Auth,
    /// 438: the nonce expired or belongs to another 5-tuple.
    StaleNonce,
    /// The peer policy (403 to CreatePermission or ChannelBind, or a Send
    /// indication dropped).
    Policy,
    /// 486: the user's allocation quota.
    Quota,
    /// 508 to an Allocate: the total quota, or no free port (not an
    /// invalid reservation token).
    Capacity,
    /// 508 to CreatePermission or ChannelBind: the allocation holds as
    /// many permissions or channels as `[limits]` allow it.
    AllocationCaps,
    /// An unauthenticated response not sent: larger than the ratio allows.
    AmplificationRatio,
    /// An unauthenticated response not sent: the response budget is spent.
    ResponseBudget,
    /// A new Allocate while draining (300 or 508).
    Draining,
}

impl RefusalCause {
    /// Every cause, in label order.
    pub const ALL: [RefusalCause; 9] = [
        RefusalCause::Auth,
        RefusalCause::StaleNonce,
        RefusalCause::Policy,
        RefusalCause::Quota,
        RefusalCause::Capacity,
        RefusalCause::AllocationCaps,
        RefusalCause::AmplificationRatio,
        RefusalCause::ResponseBudget,
        RefusalCause::Draining,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalCause::Auth => "auth",
            RefusalCause::StaleNonce => "stale_nonce",
            RefusalCause::Policy => "policy",
            RefusalCause::Quota => "quota",
            RefusalCause::Capacity => "capacity",
            RefusalCause::AllocationCaps => "allocation_caps",
            RefusalCause::AmplificationRatio => "amplification_ratio",
            RefusalCause::ResponseBudget => "response_budget",
            RefusalCause::Draining => "draining",
        }
    }
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl DeleteReason {
    /// Every reason, in label order.
    pub const ALL: [DeleteReason; 4] = [
        DeleteReason::Refreshed,
        DeleteReason::Expired,
        DeleteReason::ConnectionClosed,
        DeleteReason::Shutdown,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DeleteReason::Refreshed => "refreshed",
            DeleteReason::Expired => "expired",
            DeleteReason::ConnectionClosed => "connection_closed",
            DeleteReason::Shutdown => "shutdown",
        }
    }
}

/// Packets and their application bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    /// Datagrams (ChannelData messages, Send or Data indications).
    pub packets: u64,
    /// Their application data, without TURN framing.
    pub bytes: u64,
}

impl Traffic {
    fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// The counters. Read them through the accessors (or the pub fields);
/// `stats` holds the relay counters that [`super::Server::stats`] returns.
///
/// A handover passes them on (see `crate::state_file`), so that they grow
/// on across restarts.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Relayed and dropped data, and the older counters.
    pub stats: Stats,
    /// Application data received from clients (ChannelData and Send
    /// indications that parsed), before permission checks: the userspace
    /// path's `side="client", direction="in"`. Relayed onwards is
    /// `stats.to_peer_*` (`side="peer", direction="out"`).
    pub from_clients: Traffic,
    /// Datagrams received from peers on relayed addresses, before
    /// permission checks: `side="peer", direction="in"`. Relayed onwards is
    /// `stats.to_client_*` (`side="client", direction="out"`).
    pub from_peers: Traffic,
    /// Unauthenticated requests received: Binding, and requests answered
    /// without a valid MESSAGE-INTEGRITY (challenges, 400s before
    /// authentication), whether or not a response went out.
    pub unauthenticated_requests: u64,
    /// Responses to those actually sent (the amplification bounds may
    /// drop some).
    pub unauthenticated_responses: u64,
    requests: [u64; 5],
    indications: [u64; 2],
    refused: [u64; 9],
    allocations_created: [u64; 3],
    allocations_deleted: [u64; 4],
    /// Responses sent by method and error code (0 for success). Bounded:
    /// the codes are the server's own, a dozen at most.
    #[serde(with = "as_triples")]
    responses: BTreeMap<(Method, u16), u64>,
}

/// The responses map as a list of (method, code, count): JSON keys are
/// strings only.
mod as_triples {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Method;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<(Method, u16), u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            map.iter()
                .map(|((method, code), count)| (method, code, count)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<(Method, u16), u64>, D::Error> {
        let triples: Vec<(Method, u16, u64)> = Vec::deserialize(deserializer)?;
        Ok(triples
            .into_iter()
            .map(|(method, code, count)| ((method, code), count))
            .collect())
    }
}

impl Counters {
    /// Adds `other`'s counts to these: the relay's counters are the sum of
    /// its shards'.
    pub fn absorb(&mut self, other: &Counters) {
        let Counters {
            stats,
            from_clients,
            from_peers,
            unauthenticated_requests,
            unauthenticated_responses,
            requests,
            indications,
            refused,
            allocations_created,
            allocations_deleted,
            responses,
        } = other;
        self.stats.absorb(stats);
        for (mine, theirs) in [
            (&mut self.from_clients, from_clients),
            (&mut self.from_peers, from_peers),
        ] {
            mine.packets += theirs.packets;
            mine.bytes += theirs.bytes;
        }
        self.unauthenticated_requests += unauthenticated_requests;
        self.unauthenticated_responses += unauthenticated_responses;
        add_all(&mut self.requests, requests);
        add_all(&mut self.indications, indications);
        add_all(&mut self.refused, refused);
        add_all(&mut self.allocations_created, allocations_created);
        add_all(&mut self.allocations_deleted, allocations_deleted);
        for (key, count) in responses {
            *self.responses.entry(*key).or_insert(0) += count;
        }
    }

    /// Requests of `method` received (authenticated or not).
    pub fn requests(&self, method: Method) -> u64 {
        self.requests[method as usize]
    }

    /// Indications of `method`: Send received, Data sent.
    pub fn indications(&self, method: Indication) -> u64 {
        self.indications[method as usize]
    }

    /// Refusals of `cause`.
    pub fn refused(&self, cause: RefusalCause) -> u64 {
        self.refused[cause as usize]
    }

    /// Allocations created over `transport`.
    pub fn allocations_created(&self, transport: Transport) -> u64 {
        self.allocations_created[transport as usize]
    }

    /// Allocations deleted for `reason`.
    pub fn allocations_deleted(&self, reason: DeleteReason) -> u64 {
        self.allocations_deleted[reason as usize]
    }

    /// Responses sent: method, error code (`None` for a success response)
    /// and count, ordered by method then code. Only pairs seen so far.
    pub fn responses(&self) -> impl Iterator<Item = (Method, Option<u16>, u64)> + '_ {
        self.responses
            .iter()
            .map(|(&(method, code), &count)| (method, (code != 0).then_some(code), count))
    }

    /// Responses of `method` with `code` (`None`: success) sent.
    pub fn response_count(&self, method: Method, code: Option<u16>) -> u64 {
        let key = (method, code.unwrap_or(0));
        self.responses.get(&key).copied().unwrap_or(0)
    }

    pub(super) fn request(&mut self, method: Method) {
        self.requests[method as usize] += 1;
    }

    pub(super) fn response(&mut self, method: Method, response: &[u8]) {
        let code = error_code(response).unwrap_or(0);
        *self.responses.entry((method, code)).or_insert(0) += 1;
    }

    pub(super) fn indication(&mut self, method: Indication) {
        self.indications[method as usize] += 1;
    }

    pub(super) fn refuse(&mut self, cause: RefusalCause) {
        self.refused[cause as usize] += 1;
    }

    pub(super) fn created(&mut self, transport: Transport) {
        self.allocations_created[transport as usize] += 1;
    }

    pub(super) fn deleted(&mut self, reason: DeleteReason) {
        self.allocations_deleted[reason as usize] += 1;
    }

    pub(super) fn received_from_client(&mut self, bytes: usize) {
        self.from_clients.add(bytes);
    }

    pub(super) fn received_from_peer(&mut self, bytes: usize) {
        self.from_peers.add(bytes);
    }
}

/// Adds each of `theirs` to the matching one of `mine`.
fn add_all<const N: usize>(mine: &mut [u64; N], theirs: &[u64; N]) {
    for (mine, theirs) in mine.iter_mut().zip(theirs) {
        *mine += theirs;
    }
}

/// The ERROR-CODE of a STUN error response the server built, `None` for a
/// success (or anything else). Read from the bytes with a walk over the
/// attributes, so that counting costs no parse.
fn error_code(message: &[u8]) -> Option<u16> {
    const ERROR_CODE: u16 = 0x0009;
    let kind = u16::from_be_bytes([*message.first()?, *message.get(1)?]);
    // The class bits C1 C0 are bits 8 and 4: 0b11 is an error response.
    if kind & 0x0110 != 0x0110 {
        return None;
    }
    let mut at = 20;
    while let (Some(header), Some(length)) = (message.get(at..at + 2), message.get(at + 2..at + 4))
    {
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if kind == ERROR_CODE {
            let value = message.get(at + 4..at + 8)?;
            return Some(u16::from(value[2] & 0x7) * 100 + u16::from(value[3]));
        }
        at += 4 + length.next_multiple_of(4);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_all_lists_are_complete() {
        let methods: Vec<_> = Method::ALL.iter().map(|m| m.label()).collect();
        assert_eq!(
            methods,
            [
                "binding",
                "allocate",
                "refresh",
                "create_permission",
                "channel_bind"
            ]
        );
        for (index, cause) in RefusalCause::ALL.iter().enumerate() {
            assert_eq!(*cause as usize, index, "{}", cause.label());
        }
        for (index, reason) in DeleteReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.label());
        }
        for (index, transport) in Transport::ALL.iter().enumerate() {
            assert_eq!(*transport as usize, index, "{}", transport.label());
        }
        assert_eq!(Method::of(BINDING), Some(Method::Binding));
        assert_eq!(Method::of(turn_types::message::SEND), None);
    }

    #[test]
    fn error_codes_are_read_from_the_bytes() {
        use stun_types::{
            attribute::{ErrorCode, Software},
            message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec},
        };
        let request = Message::builder_request(ALLOCATE, MessageWriteVec::new()).finish();
        let request = Message::from_bytes(&request).unwrap();
        let mut error = Message::builder_error(&request, MessageWriteVec::new());
        // An attribute of odd length before it, to check the padding.
        error.add_attribute(&Software::new("odd").unwrap()).unwrap();
        error
            .add_attribute(&ErrorCode::new(438, "Stale Nonce").unwrap())
            .unwrap();
        assert_eq!(error_code(&error.finish()), Some(438));
        let success = Message::builder_success(&request, MessageWriteVec::new()).finish();
        assert_eq!(error_code(&success), None);
        assert_eq!(error_code(&[0x01, 0x13, 0, 0]), None, "truncated");
    }
}
