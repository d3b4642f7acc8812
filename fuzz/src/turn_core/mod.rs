//! The TURN core (`turnx::turn::Server`), driven through its sans-IO API
//! by a sequence of messages, with every output and lifecycle event
//! checked.
//!
//! # Input
//!
//! A sequence of chunks, each `op`, `param`, a big-endian u16 length and
//! that many bytes (fewer at the end of the input):
//! - `op` bits 0-1: which of four clients ([`TUPLES`]: two UDP clients in
//!   one IPv4 /24, a TCP client, an IPv6 UDP client);
//! - `op` bits 2-3: the action: 0 sends the bytes from the client,
//!   re-signed when they are a STUN request ([`resign`]); 1 sends them as
//!   they are; 2 delivers them to a relayed address from a peer; 3 closes
//!   the client's connection (TCP; on UDP it sends as is);
//! - `op` bits 4-6: how far the clock moves first ([`ADVANCES`]);
//! - `op` bit 7: which user signs (a static user or a TURN REST API one);
//! - `param`: signing options ([`resign::Options`]), or for peer data which
//!   relayed address (low nibble) and which peer (high nibble).
//!
//! Before its first re-signed request, a client gets a nonce the way a
//! real one does: an unauthenticated Allocate answered by 401 with NONCE. A
//! nonce about to go stale is renewed the same way, and any NONCE the
//! server answers with is taken.
//!
//! # Invariants
//!
//! - nothing panics, in the core or in the fake allocator it drives (no
//!   address released twice);
//! - a request gets at most one output, a response on its own 5-tuple that
//!   decodes, is of its method and transaction, success or error with a
//!   valid ERROR-CODE; a signed response validates with the key of the
//!   request's user;
//! - a response without integrity (so unauthenticated) to a UDP client is
//!   at most the amplification ratio times its request, and what all of
//!   them sent to one source prefix stays within that prefix's budget
//!   (burst plus rate over the elapsed time, `amplification.rs`);
//! - data reaches a peer only from the client's own relayed address of the
//!   peer's family, under a permission; data from a peer reaches only the
//!   allocation's client, on its channel (padded on streams) or in a Data
//!   indication carrying the peer and the data;
//! - what is relayed stays within the bandwidth limits, per allocation and
//!   per user, each direction ([`bandwidth`]);
//! - lifecycle events are consistent ([`model`]), and the allocations they
//!   describe are the ones the server reports;
//! - allocations never exceed the user and total quotas (reservations
//!   counted, from what the allocator holds), and the allocator holds
//!   exactly the relayed addresses plus the reservations;
//! - after shutdown every allocation ended with its events and every
//!   address was given back.

mod allocator;
mod bandwidth;
mod model;
pub mod resign;
pub mod seeds;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use stun_types::{
    attribute::{
        AttributeStaticType, ErrorCode, MessageIntegrity, MessageIntegritySha256, Nonce, Username,
    },
    message::{BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass},
};
use turn_types::{
    attribute::{Data, ReservationToken, XorPeerAddress},
    message::{ALLOCATE, DATA},
};
use turnx::turn::{
    Destination, FiveTuple, Now, Outbox, Server, ServerConfig, Transport,
    amplification::BudgetConfig,
    auth::{Credentials, rest_password},
    bandwidth::Limits,
    policy::{OwnAddresses, PeerPolicy, canonical, default_denied},
};

use self::{
    allocator::{FakeAllocator, Held},
    bandwidth::Usage,
    model::Model,
    resign::{Options, Signing},
};
use crate::counters::Counters;

/// What the runs reached: the authenticated successes show that re-signing
/// gets mutated requests past the integrity check.
pub static COUNTS: Counters<14> = Counters::new([
    "inputs",
    "chunks",
    "resigned",
    "allocate_ok",
    "refresh_ok",
    "create_permission_ok",
    "channel_bind_ok",
    "binding_ok",
    "signed_errors",
    "challenges",
    "to_peer",
    "to_client",
    "allocations_created",
    "channels_bound",
]);

/// Indexes into [`COUNTS`].
mod count {
    pub const INPUTS: usize = 0;
    pub const CHUNKS: usize = 1;
    pub const RESIGNED: usize = 2;
    pub const ALLOCATE_OK: usize = 3;
    pub const REFRESH_OK: usize = 4;
    pub const CREATE_PERMISSION_OK: usize = 5;
    pub const CHANNEL_BIND_OK: usize = 6;
    pub const BINDING_OK: usize = 7;
    pub const SIGNED_ERRORS: usize = 8;
    pub const CHALLENGES: usize = 9;
    pub const TO_PEER: usize = 10;
    pub const TO_CLIENT: usize = 11;
    pub const ALLOCATIONS_CREATED: usize = 12;
    pub const CHANNELS_BOUND: usize = 13;
}

/// Prints [`COUNTS`] (for [`crate::counters::print_at_exit`]).
pub fn counts() -> String {
    COUNTS.line()
}

const REALM: &str = "turnx";
/// The static user.
const STATIC_USER: (&str, &str) = ("alice", "wonderland");
/// The TURN REST API secret, and the username signed with it: valid for an
/// hour of fuzzing time, so long inputs see it expire.
const REST_SECRET: &str = "fuzz-secret";
const START_UNIX: u64 = 1_800_000_000;
const REST_USER: &str = "1800003600:bob";

/// Allocations (and reservations) per user and in all: small, so that
/// inputs reach the quotas.
const USER_QUOTA: u32 = 3;
const TOTAL_QUOTA: u32 = 5;

/// How far the clock moves before a chunk, by `op` bits 4-6: mostly not
/// at all, then past the reservation (30 s), permission (300 s) and
/// allocation and channel (600 s) lifetimes.
pub const ADVANCES: [u64; 8] = [0, 0, 0, 0, 2, 31, 301, 601];

/// A nonce is renewed when older than this (its lifetime is 600 s).
const NONCE_RENEWAL_SECS: u64 = 540;

/// The server's listen addresses.
const SERVER_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 3478);
const SERVER_V6: SocketAddr =
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)), 3478);

/// The four clients.
pub const TUPLES: [FiveTuple; 4] = [
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 40000),
        server: SERVER_V4,
    },
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)), 40001),
        server: SERVER_V4,
    },
    FiveTuple {
        transport: Transport::Tcp,
        client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)), 40002),
        server: SERVER_V4,
    },
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            40003,
        ),
        server: SERVER_V6,
    },
];

/// Peers that data from "the network" comes from, after the channel peers
/// of the allocation it goes to.
const PEERS: [SocketAddr; 5] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 5000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 5001),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)), 5000),
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 9)), 6000),
    SocketAddr::new(allocator::RELAY_V4, 49152),
];

/// The environment variable that makes the harness print each step, to
/// read what a crashing input does.
pub const TRACE_ENV: &str = "TURNX_FUZZ_TRACE";

fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os(TRACE_ENV).is_some())
}

/// Checks one input.
pub fn check(data: &[u8]) {
    COUNTS.bump(count::INPUTS);
    // Clients log in when they first send a request to re-sign.
    let mut harness = Harness::new();
    let mut rest = data;
    while let [op, param, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (payload, next) = tail.split_at(len);
        harness.step(*op, *param, payload);
        rest = next;
    }
    harness.finish();
}

// Every field is given today; the struct update keeps the harness building
// when the server gains one.
#[allow(clippy::needless_update)]
fn config() -> ServerConfig {
    let cidr = |text: &str| text.parse().expect("a valid block");
    ServerConfig {
        credentials: Credentials {
            realm: REALM.into(),
            users: HashMap::from([(STATIC_USER.0.into(), STATIC_USER.1.into())]),
            secrets: vec![REST_SECRET.into()],
            nonce_lifetime_secs: 600,
        },
        policy: PeerPolicy {
            allowed: vec![cidr("198.18.0.0/15"), cidr("fd00::/8")],
            denied: default_denied(),
            own: OwnAddresses {
                relay: vec![allocator::RELAY_V4, allocator::RELAY_V6],
                relay_ports: Some(allocator::PORTS),
                ..OwnAddresses::default()
            },
            relay_to_relay: true,
        },
        software: Some("turnx fuzz".into()),
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        user_quota: USER_QUOTA,
        total_quota: TOTAL_QUOTA,
        permissions_per_allocation: 4,
        channels_per_allocation: 3,
        amplification: BudgetConfig::default(),
        legacy_channel_numbers: false,
        // Rates a 1024-byte unit divides into whole nanoseconds, so the
        // buckets' arithmetic is exact; small, so inputs reach them.
        bandwidth: Limits {
            allocation: 4096,
            user: 8192,
            burst: Duration::from_millis(500),
        },
        // Whatever the server gains later, at its defaults.
        ..ServerConfig::default()
    }
}

/// A source prefix as the response budget groups them: IPv4 /24, IPv6 /64.
fn prefix(ip: IpAddr) -> Vec<u8> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
    }
}

/// The password of a user the harness knows.
fn password_of(username: &str) -> Option<String> {
    if username == STATIC_USER.0 {
        Some(STATIC_USER.1.into())
    } else if username == REST_USER {
        Some(rest_password(REST_SECRET, REST_USER))
    } else {
        None
    }
}

struct Harness {
    server: Server,
    config: ServerConfig,
    held: Held,
    model: Model,
    usage: Usage,
    start: Instant,
    elapsed: Duration,
    /// Per client: the last nonce and when it was obtained (Unix seconds).
    nonces: [Option<(String, u64)>; 4],
    /// RESERVATION-TOKENs the server issued.
    tokens: Vec<u64>,
    /// Bytes of unauthenticated UDP responses per source prefix.
    unsigned_bytes: HashMap<Vec<u8>, usize>,
    logins: u128,
    out: Outbox,
}

impl Harness {
    fn new() -> Self {
        let config = config();
        let (allocator, held) = FakeAllocator::new();
        let mut server = Server::new(config.clone(), [7; 32], Box::new(allocator));
        server.set_local_addresses([SERVER_V4.ip(), SERVER_V6.ip()]);
        Harness {
            model: Model::new((config.default_lifetime, config.max_lifetime)),
            usage: Usage::new(config.bandwidth),
            server,
            config,
            held,
            start: Instant::now(),
            elapsed: Duration::ZERO,
            nonces: Default::default(),
            tokens: Vec::new(),
            unsigned_bytes: HashMap::new(),
            logins: 0,
            out: Outbox::default(),
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.start + self.elapsed,
            unix_secs: START_UNIX + self.elapsed.as_secs(),
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match &event {
                turnx::turn::Event::AllocationCreated { .. } => {
                    COUNTS.bump(count::ALLOCATIONS_CREATED)
                }
                turnx::turn::Event::ChannelBound { .. } => COUNTS.bump(count::CHANNELS_BOUND),
                _ => {}
            }
            self.usage.on_event(&event, self.elapsed);
            self.model.apply(event);
        }
    }

    /// An unauthenticated Allocate, as a client's first; the 401 brings
    /// the nonce. Clients 0 and 2 send a full one, whose 401 carries a nonce
    /// with the RFC 8489 cookie (so re-signing adds PASSWORD-ALGORITHMS);
    /// clients 1 and 3 a bare one, which only the compact 401 fits under
    /// the amplification ratio (a plain nonce).
    fn login(&mut self, index: usize) {
        self.logins += 1;
        let transaction = 0xF0F0_0000_0000_0000_0000_0000 + self.logins;
        let request = seeds::login_request(transaction, index.is_multiple_of(2));
        self.client(index, &request);
    }

    fn step(&mut self, op: u8, param: u8, payload: &[u8]) {
        COUNTS.bump(count::CHUNKS);
        if tracing() {
            eprintln!(
                "chunk: client {} action {} advance {}s rest user {} param {param:#04x}, {} bytes",
                op & 3,
                (op >> 2) & 3,
                ADVANCES[usize::from((op >> 4) & 7)],
                op >> 7,
                payload.len()
            );
        }
        let index = usize::from(op & 3);
        let advance = ADVANCES[usize::from((op >> 4) & 7)];
        if advance > 0 {
            self.elapsed += Duration::from_secs(advance);
            let now = self.now();
            self.server.handle_timeout(now);
            self.drain_events();
            self.check_state();
        }
        match (op >> 2) & 3 {
            0 => {
                let rest_user = op & 0x80 != 0;
                match self.resign(index, rest_user, param, payload) {
                    Some(signed) => self.client(index, &signed),
                    None => self.client(index, payload),
                }
            }
            2 => self.peer(param, payload),
            3 if TUPLES[index].transport.is_stream() => {
                let now = self.now();
                self.server.close_client(TUPLES[index], now);
                self.drain_events();
                self.check_state();
            }
            _ => self.client(index, payload),
        }
    }

    fn resign(
        &mut self,
        index: usize,
        rest_user: bool,
        param: u8,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        if !resign::is_request(payload) {
            return None;
        }
        let unix = self.now().unix_secs;
        let fresh = self.nonces[index]
            .as_ref()
            .is_some_and(|(_, issued)| unix - issued < NONCE_RENEWAL_SECS);
        if !fresh {
            self.login(index);
        }
        let (nonce, _) = self.nonces[index].as_ref()?;
        let options = Options::from_bits(param);
        let username = if rest_user { REST_USER } else { STATIC_USER.0 };
        let mut password = password_of(username).expect("a known user");
        if options.wrong_password {
            password.push('!');
        }
        let signing = Signing {
            username,
            password: &password,
            realm: REALM,
            nonce,
        };
        let signed = resign::resign(payload, &signing, options, &self.tokens)?;
        COUNTS.bump(count::RESIGNED);
        Some(signed)
    }

    /// Sends `bytes` from client `index` and checks what comes out.
    fn client(&mut self, index: usize, bytes: &[u8]) {
        let from = TUPLES[index];
        let now = self.now();
        self.out.clear();
        self.server.handle_client(from, bytes, now, &mut self.out);
        self.drain_events();
        let request = Message::from_bytes(bytes)
            .ok()
            .filter(|message| message.class() == MessageClass::Request);
        if tracing() {
            match &request {
                Some(request) => eprintln!("  request: {request}"),
                None => eprintln!("  sent: {bytes:02x?}"),
            }
            for (destination, data) in self.out.iter() {
                match Message::from_bytes(data) {
                    Ok(message) => eprintln!("  -> {destination:?}: {message}"),
                    Err(_) => eprintln!("  -> {destination:?}: {data:02x?}"),
                }
            }
        }
        let mut responses = 0;
        let outputs: Vec<(Destination, Vec<u8>)> = self
            .out
            .iter()
            .map(|(destination, data)| (destination, data.to_vec()))
            .collect();
        for (destination, data) in outputs {
            match destination {
                Destination::Client(to) => {
                    assert_eq!(to, from, "a response goes back on the request's 5-tuple");
                    let request = request
                        .as_ref()
                        .unwrap_or_else(|| panic!("{bytes:02x?} is no request but was answered"));
                    responses += 1;
                    assert_eq!(responses, 1, "a request gets one response");
                    self.check_response(index, request, &data);
                }
                Destination::Peer { from: relayed, to } => {
                    assert!(request.is_none(), "a request relayed data to {to}");
                    self.model.check_to_peer(&from, relayed, to);
                    self.usage.charge(&from, 0, data.len(), self.elapsed);
                    COUNTS.bump(count::TO_PEER);
                }
            }
        }
        self.check_state();
    }

    fn check_response(&mut self, index: usize, request: &Message, data: &[u8]) {
        let from = TUPLES[index];
        let response = Message::from_bytes(data)
            .unwrap_or_else(|err| panic!("the response does not decode ({err}): {data:02x?}"));
        assert_eq!(response.transaction_id(), request.transaction_id());
        assert_eq!(response.method(), request.method());
        let error = match response.class() {
            MessageClass::Success => None,
            MessageClass::Error => {
                let code = response
                    .attribute::<ErrorCode>()
                    .unwrap_or_else(|err| panic!("an error response without ERROR-CODE: {err}"))
                    .code();
                assert!((300..700).contains(&code), "error code {code}");
                Some(code)
            }
            other => panic!("a request answered with a {other:?}"),
        };
        let signed = response.has_attribute(MessageIntegrity::TYPE)
            || response.has_attribute(MessageIntegritySha256::TYPE);
        if signed {
            self.check_signature(request, &response);
            match error {
                None => COUNTS.bump(success_counter(request)),
                Some(_) => COUNTS.bump(count::SIGNED_ERRORS),
            }
        } else {
            if error.is_none() {
                assert_eq!(
                    request.method(),
                    BINDING,
                    "an unsigned success to a request other than Binding"
                );
                COUNTS.bump(count::BINDING_OK);
            }
            if !from.transport.is_stream() {
                self.check_amplification(from, request.as_bytes().len(), data.len());
            }
        }
        if matches!(error, Some(401 | 438)) {
            COUNTS.bump(count::CHALLENGES);
            if let Ok(nonce) = response.attribute::<Nonce>() {
                self.nonces[index] = Some((nonce.nonce().to_owned(), self.now().unix_secs));
            }
        }
        if error.is_none()
            && let Ok(token) = response.attribute::<ReservationToken>()
        {
            self.tokens.push(token.token());
        }
    }

    /// A signed response validates with the key of the request's user.
    fn check_signature(&self, request: &Message, response: &Message) {
        let username = request
            .attribute::<Username>()
            .unwrap_or_else(|err| panic!("signed a response to a request without USERNAME: {err}"));
        let username = username.username();
        let password = password_of(username)
            .unwrap_or_else(|| panic!("signed a response for unknown user {username:?}"));
        let algorithm = if response.has_attribute(MessageIntegritySha256::TYPE) {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        let key = LongTermKeyCredentials::new(username.into(), password, REALM.into())
            .make_key(algorithm);
        // An Allocate retransmission once got the stored response whoever
        // signed it, signed with the first user's key: found here, fixed in
        // requests.rs (fuzz/artifacts/turn_core/ keeps the input).
        if let Err(err) = response.validate_integrity_with_key(&key) {
            panic!("a signed response does not validate with {username}'s key: {err}");
        }
    }

    /// The ratio and the source prefix's budget (`amplification.rs`).
    fn check_amplification(&mut self, from: FiveTuple, request_len: usize, response_len: usize) {
        let budget = self.config.amplification;
        let most = (request_len as f64 * budget.ratio) as usize;
        assert!(
            response_len <= most,
            "an unauthenticated {response_len}-byte response to a {request_len}-byte request \
             (ratio {})",
            budget.ratio
        );
        let spent = self
            .unsigned_bytes
            .entry(prefix(from.client.ip()))
            .or_default();
        *spent += response_len;
        if budget.prefix_bytes_per_sec != 0 {
            // A bucket holds at most its burst and refills at its rate.
            let allowed = f64::from(budget.prefix_burst_bytes.max(1))
                + f64::from(budget.prefix_bytes_per_sec) * self.elapsed.as_secs_f64();
            assert!(
                *spent as f64 <= allowed,
                "{spent} unauthenticated bytes to {}'s prefix in {:?}",
                from.client.ip(),
                self.elapsed
            );
        }
    }

    /// Delivers `data` from a peer to a relayed address picked by `param`.
    fn peer(&mut self, param: u8, data: &[u8]) {
        let live = self.model.relayed_addresses();
        let relayed = match live.len() {
            // No allocation: an address nobody holds.
            0 => SocketAddr::new(allocator::RELAY_V4, 1),
            n => live[usize::from(param & 15) % n],
        };
        let owner = self.model.owner_of(relayed);
        let mut candidates: Vec<SocketAddr> = owner
            .and_then(|owner| self.model.allocations.get(&owner))
            .map(|mirror| mirror.channels.values().map(|(_, peer)| *peer).collect())
            .unwrap_or_default();
        candidates.extend(PEERS);
        // A relayed socket only hears peers of its own family.
        candidates.retain(|peer| canonical(peer.ip()).is_ipv4() == relayed.is_ipv4());
        let peer = candidates[usize::from(param >> 4) % candidates.len()];

        let now = self.now();
        self.out.clear();
        self.server
            .handle_peer(relayed, peer, data, now, &mut self.out);
        assert!(
            self.server.poll_event().is_none(),
            "data from a peer changed an allocation"
        );
        let outputs: Vec<(Destination, Vec<u8>)> = self
            .out
            .iter()
            .map(|(destination, bytes)| (destination, bytes.to_vec()))
            .collect();
        assert!(outputs.len() <= 1, "one datagram in, {} out", outputs.len());
        for (destination, bytes) in outputs {
            let Destination::Client(to) = destination else {
                panic!("data from a peer went to {destination:?}");
            };
            let owner = owner.unwrap_or_else(|| panic!("data for unallocated {relayed} delivered"));
            assert_eq!(to, owner, "data for {relayed} went to another client");
            self.check_to_client(owner, relayed, peer, data, &bytes);
            self.usage.charge(&owner, 1, data.len(), self.elapsed);
            COUNTS.bump(count::TO_CLIENT);
        }
    }

    fn check_to_client(
        &self,
        client: FiveTuple,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        bytes: &[u8],
    ) {
        let mirror = &self.model.allocations[&client];
        assert!(
            mirror.permissions.contains(&canonical(peer.ip())),
            "data from {peer} delivered without a permission"
        );
        if bytes[0] >> 6 == 0b01 {
            let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
            assert_eq!(
                mirror.channels.get(&channel),
                Some(&(relayed, peer)),
                "data from {peer} on channel {channel:#x}, not bound to it"
            );
            let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            assert_eq!(len, data.len(), "ChannelData length");
            assert_eq!(&bytes[4..4 + len], data, "ChannelData payload");
            let framed = if client.transport.is_stream() {
                (4 + len).next_multiple_of(4)
            } else {
                4 + len
            };
            assert_eq!(bytes.len(), framed, "ChannelData padding");
        } else {
            let indication = Message::from_bytes(bytes)
                .unwrap_or_else(|err| panic!("the Data indication does not decode: {err}"));
            assert_eq!(indication.class(), MessageClass::Indication);
            assert_eq!(indication.method(), DATA);
            let from = indication
                .attribute::<XorPeerAddress>()
                .expect("XOR-PEER-ADDRESS")
                .addr(indication.transaction_id());
            assert_eq!(from, peer, "the Data indication names another peer");
            let carried = indication.attribute::<Data>().expect("DATA");
            assert_eq!(carried.data(), data, "the Data indication's data");
        }
    }

    /// The server, the allocator and the mirror agree, within the quotas.
    fn check_state(&self) {
        assert_eq!(
            self.server.allocation_count(),
            self.model.allocations.len(),
            "the server counts other allocations than its events describe"
        );
        for tuple in &TUPLES {
            assert_eq!(
                self.server.has_allocation(tuple),
                self.model.allocations.contains_key(tuple),
                "{tuple:?}"
            );
        }
        let held = self.held.lock().expect("one thread");
        let mut relayed = 0;
        let mut per_user: HashMap<&str, u32> = HashMap::new();
        for (client, mirror) in &self.model.allocations {
            for address in &mirror.relayed {
                assert!(
                    held.contains(address),
                    "{client:?} relays on {address}, which the allocator does not hold"
                );
            }
            relayed += mirror.relayed.len();
            *per_user.entry(&mirror.username).or_default() += 1;
        }
        // What the allocator holds beyond relayed addresses are reservations.
        let reservations = held.len() - relayed;
        let in_all = self.model.allocations.len() + reservations;
        assert!(
            in_all <= TOTAL_QUOTA as usize,
            "{in_all} allocations and reservations, over the total quota {TOTAL_QUOTA}"
        );
        for (user, allocations) in per_user {
            assert!(
                allocations <= USER_QUOTA,
                "{user} holds {allocations} allocations, over the quota {USER_QUOTA}"
            );
        }
    }

    fn finish(mut self) {
        let now = self.now();
        self.server.shutdown(now);
        self.drain_events();
        assert!(
            self.model.allocations.is_empty(),
            "shutdown left allocations: {:?}",
            self.model.allocations
        );
        let held = self.held.lock().expect("one thread");
        assert!(held.is_empty(), "shutdown left addresses held: {held:?}");
    }
}

/// The success counter of `request`'s method.
fn success_counter(request: &Message) -> usize {
    use turn_types::message::{CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
    match request.method() {
        ALLOCATE => count::ALLOCATE_OK,
        REFRESH => count::REFRESH_OK,
        CREATE_PERMISSION => count::CREATE_PERMISSION_OK,
        CHANNEL_BIND => count::CHANNEL_BIND_OK,
        method => panic!("a signed success to a {method:?} request"),
    }
}
