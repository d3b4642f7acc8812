//! Tests of the TURN core, by RFC section, with a fake clock and an
//! in-memory relay allocator.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use stun_types::{
    attribute::{
        AttributeStaticType, ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256,
        Nonce, PasswordAlgorithm, PasswordAlgorithmValue, PasswordAlgorithms, Realm,
        UnknownAttributes, Username, XorMappedAddress,
    },
    message::{
        BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType,
        MessageWrite, MessageWriteExt, MessageWriteVec, Method, ShortTermCredentials,
        TransactionId,
    },
};
use turn_types::{
    attribute::{
        AdditionalAddressFamily, ChannelNumber, Data, EvenPort, Lifetime, RequestedAddressFamily,
        RequestedTransport, ReservationToken, XorPeerAddress, XorRelayedAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND},
};

mod operations;

use super::{
    AllocateError, ChannelView, DeleteReason, Event, FiveTuple, Now, Outbox, RelayAllocator,
    Server, ServerConfig, Transmit, Transport,
    auth::{Credentials, rest_password},
    ledger::Ledger,
    policy::{OwnAddresses, PeerPolicy, default_denied},
    snapshot,
};

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

// RFC 5769 section 2.1: sample request, short-term credentials.
const RFC5769_REQUEST: &str = "00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74 00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36 00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";
// RFC 5769 section 2.2: sample IPv4 response.
const RFC5769_IPV4_RESPONSE: &str = "01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";
// RFC 5769 section 2.4: sample request with long-term credentials.
const RFC5769_LONG_TERM: &str = "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";
const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn rfc5769_short_term_integrity_and_fingerprint() {
    let credentials = ShortTermCredentials::new(SHORT_TERM_PASSWORD.into()).into();
    for vector in [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE] {
        let bytes = hex(vector);
        // Parsing checks FINGERPRINT.
        let message = Message::from_bytes(&bytes).expect("vector parses");
        assert!(message.validate_integrity(&credentials).is_ok());
        let wrong = ShortTermCredentials::new("wrong".into()).into();
        assert!(message.validate_integrity(&wrong).is_err());
        let mut corrupted = bytes.clone();
        corrupted[30] ^= 1;
        assert!(
            Message::from_bytes(&corrupted).is_err(),
            "FINGERPRINT catches a flipped bit"
        );
    }
    let response = hex(RFC5769_IPV4_RESPONSE);
    let response = Message::from_bytes(&response).unwrap();
    let mapped = response.attribute::<XorMappedAddress>().unwrap();
    assert_eq!(
        mapped.addr(response.transaction_id()),
        "192.0.2.1:32853".parse().unwrap()
    );
}

#[test]
fn rfc5769_long_term_integrity() {
    let bytes = hex(RFC5769_LONG_TERM);
    let message = Message::from_bytes(&bytes).unwrap();
    let username = message.attribute::<Username>().unwrap();
    assert_eq!(
        username.username(),
        "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}"
    );
    // The password after SASLprep, as the RFC gives it.
    let key = LongTermKeyCredentials::new(
        username.username().into(),
        "TheMatrIX".into(),
        "example.org".into(),
    )
    .make_key(IntegrityAlgorithm::Sha1);
    assert!(message.validate_integrity_with_key(&key).is_ok());
    let wrong = LongTermKeyCredentials::new(
        username.username().into(),
        "thematrix".into(),
        "example.org".into(),
    )
    .make_key(IntegrityAlgorithm::Sha1);
    assert!(message.validate_integrity_with_key(&wrong).is_err());
}

/// Hands out 198.51.100.1 and fd00:5eed::1 ports in order; IPv6 can be
/// switched off.
struct FakeAllocator {
    next_port: u16,
    ipv6: bool,
    released: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

/// The fake allocator's relay addresses and port range.
const RELAY_V4: &str = "198.51.100.1";
const RELAY_V6: &str = "fd00:5eed::1";
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

impl FakeAllocator {
    fn address(ipv6: bool, port: u16) -> SocketAddr {
        let ip = if ipv6 { RELAY_V6 } else { RELAY_V4 };
        SocketAddr::new(ip.parse().unwrap(), port)
    }
}

impl RelayAllocator for FakeAllocator {
    fn allocate(
        &mut self,
        ipv6: bool,
        even_port: bool,
        _dont_fragment: bool,
    ) -> Result<SocketAddr, AllocateError> {
        if ipv6 && !self.ipv6 {
            return Err(AllocateError::FamilyNotSupported);
        }
        if even_port && self.next_port % 2 == 1 {
            self.next_port += 1;
        }
        let port = self.next_port;
        self.next_port += 1;
        Ok(Self::address(ipv6, port))
    }

    fn allocate_pair(
        &mut self,
        ipv6: bool,
        dont_fragment: bool,
    ) -> Result<(SocketAddr, SocketAddr), AllocateError> {
        let even = self.allocate(ipv6, true, dont_fragment)?;
        self.next_port += 1;
        Ok((even, Self::address(ipv6, even.port() + 1)))
    }

    fn adopt(&mut self, _relayed: SocketAddr, _dont_fragment: bool) {}

    fn release(&mut self, relayed: SocketAddr) {
        self.released.lock().unwrap().push(relayed);
    }

    fn restore(&mut self, relayed: SocketAddr, _reserved: bool) -> Result<(), AllocateError> {
        // Its own addresses only, as the shell's binds only in its range.
        if relayed.ip() == Self::address(relayed.is_ipv6(), 0).ip() {
            self.next_port = self.next_port.max(relayed.port() + 1);
            Ok(())
        } else {
            Err(AllocateError::InsufficientCapacity)
        }
    }
}

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "rest-secret";
const REALM: &str = "turnx";
const START_UNIX: u64 = 1_800_000_000;

/// A server, a fake clock and the client-side bookkeeping of a test.
struct Harness {
    server: Server,
    start: Instant,
    elapsed: Duration,
    released: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

fn config() -> ServerConfig {
    ServerConfig {
        credentials: Credentials {
            realm: REALM.into(),
            users: HashMap::from([(USER.into(), PASSWORD.into())]),
            secrets: vec!["old-secret".into(), SECRET.into()],
            nonce_lifetime_secs: 600,
        },
        policy: PeerPolicy {
            allowed: vec![
                "198.18.0.0/15".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            denied: default_denied(),
            own: OwnAddresses {
                relay: vec![RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()],
                relay_ports: Some(RELAY_PORTS),
                ..OwnAddresses::default()
            },
            relay_to_relay: true,
        },
        ..ServerConfig::default()
    }
}

impl Harness {
    fn new() -> Self {
        Harness::with(config(), true)
    }

    fn with(config: ServerConfig, ipv6: bool) -> Self {
        let ledger = Ledger::new([9; 32], config.amplification);
        Harness::shard(config, ipv6, ledger, 49152)
    }

    /// One shard of a relay whose shards share `ledger`; its allocator
    /// hands out ports from `first_port` on.
    fn shard(config: ServerConfig, ipv6: bool, ledger: Arc<Ledger>, first_port: u16) -> Self {
        let released = std::sync::Arc::default();
        let allocator = FakeAllocator {
            next_port: first_port,
            ipv6,
            released: std::sync::Arc::clone(&released),
        };
        Harness {
            server: Server::shard(config, [9; 32], Box::new(allocator), ledger),
            start: Instant::now(),
            elapsed: Duration::ZERO,
            released,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.start + self.elapsed,
            unix_secs: START_UNIX + self.elapsed.as_secs(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now();
        self.server.handle_timeout(now);
    }

    fn send(&mut self, from: FiveTuple, bytes: &[u8]) -> Vec<Transmit> {
        let mut out = Outbox::default();
        let now = self.now();
        self.server.handle_client(from, bytes, now, &mut out);
        out.to_transmits()
    }

    /// Sends a request and returns the response bytes (the only transmit).
    fn request(&mut self, from: FiveTuple, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = self.send(from, bytes);
        assert!(out.len() <= 1, "one response at most: {out:?}");
        out.pop().map(|transmit| match transmit {
            Transmit::ToClient { to, data } => {
                assert_eq!(to, from, "responses go back on the same 5-tuple");
                data
            }
            other => panic!("a request produced {other:?}"),
        })
    }

    fn peer_sends(&mut self, relayed: SocketAddr, peer: SocketAddr, data: &[u8]) -> Vec<Transmit> {
        let mut out = Outbox::default();
        let now = self.now();
        self.server.handle_peer(relayed, peer, data, now, &mut out);
        out.to_transmits()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

fn client(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::from(([198, 18, 0, 1], port)),
        server: "198.18.0.2:3478".parse().unwrap(),
    }
}

fn peer(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 1, last], port))
}

/// Credentials a test client signs with.
#[derive(Clone)]
struct Signing {
    username: String,
    password: String,
    nonce: String,
    algorithm: IntegrityAlgorithm,
}

/// Builds a request of `method` with `add`'s attributes, signed when
/// `signing` is given, always fingerprinted.
fn build(
    method: Method,
    signing: Option<&Signing>,
    add: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    build_as(TransactionId::generate(), method, signing, add)
}

/// As [`build`], with the transaction id `transaction`.
fn build_as(
    transaction: TransactionId,
    method: Method,
    signing: Option<&Signing>,
    add: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let mut builder = Message::builder(
        MessageType::from_class_method(MessageClass::Request, method),
        transaction,
        MessageWriteVec::new(),
    );
    add(&mut builder, transaction);
    if let Some(signing) = signing {
        builder
            .add_attribute(&Username::new(&signing.username).unwrap())
            .unwrap();
        builder.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
        builder
            .add_attribute(&Nonce::new(&signing.nonce).unwrap())
            .unwrap();
        let key = LongTermKeyCredentials::new(
            signing.username.clone(),
            signing.password.clone(),
            REALM.into(),
        )
        .make_key(signing.algorithm);
        builder
            .add_message_integrity_with_key(&key, signing.algorithm)
            .unwrap();
    }
    builder.add_fingerprint().unwrap();
    builder.finish()
}

/// Writes a test request's attributes.
type AttributeWriter = dyn Fn(&mut MessageWriteVec, TransactionId);

fn allocate_body(builder: &mut MessageWriteVec, _: TransactionId) {
    builder.add_attribute(&RequestedTransport::new(17)).unwrap();
}

fn error_code(response: &[u8]) -> Option<u16> {
    let message = Message::from_bytes(response).unwrap();
    message
        .attribute::<ErrorCode>()
        .ok()
        .map(|error| error.code())
}

fn nonce_of(response: &[u8]) -> String {
    let message = Message::from_bytes(response).unwrap();
    message.attribute::<Nonce>().unwrap().nonce().to_owned()
}

/// An unauthenticated first Allocate, with SOFTWARE as real clients send
/// it.
fn first_allocate() -> Vec<u8> {
    build(ALLOCATE, None, |b, t| {
        allocate_body(b, t);
        let padding = "a test client that pads its first request like coturn's uclient does";
        b.add_attribute(&stun_types::attribute::Software::new(padding).unwrap())
            .unwrap();
    })
}

/// Does the 401 dance and returns signing credentials for `from`.
fn login(harness: &mut Harness, from: FiveTuple, username: &str, password: &str) -> Signing {
    let challenge = harness.request(from, &first_allocate()).expect("401");
    assert_eq!(error_code(&challenge), Some(401));
    Signing {
        username: username.into(),
        password: password.into(),
        nonce: nonce_of(&challenge),
        algorithm: IntegrityAlgorithm::Sha1,
    }
}

/// Allocates for `from` and returns the signing credentials and relayed
/// address.
fn allocate(harness: &mut Harness, from: FiveTuple) -> (Signing, SocketAddr) {
    let signing = login(harness, from, USER, PASSWORD);
    let response = harness
        .request(from, &build(ALLOCATE, Some(&signing), allocate_body))
        .expect("response");
    let message = Message::from_bytes(&response).unwrap();
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    let relayed = message
        .attribute::<XorRelayedAddress>()
        .unwrap()
        .addr(message.transaction_id());
    (signing, relayed)
}

/// A signed ChannelBind of `channel` to `to`.
fn channel_bind(signing: &Signing, channel: u16, to: SocketAddr) -> Vec<u8> {
    build(CHANNEL_BIND, Some(signing), |builder, transaction| {
        builder.add_attribute(&ChannelNumber::new(channel)).unwrap();
        builder
            .add_attribute(&XorPeerAddress::new(to, transaction))
            .unwrap();
    })
}

/// A signed CreatePermission for `to`.
fn permission(signing: &Signing, to: SocketAddr) -> Vec<u8> {
    build(CREATE_PERMISSION, Some(signing), |builder, transaction| {
        builder
            .add_attribute(&XorPeerAddress::new(to, transaction))
            .unwrap();
    })
}

fn expect_success(harness: &mut Harness, from: FiveTuple, request: &[u8]) -> Vec<u8> {
    let response = harness.request(from, request).expect("a response");
    assert_eq!(
        error_code(&response),
        None,
        "{}",
        Message::from_bytes(&response).unwrap()
    );
    response
}

fn expect_error(harness: &mut Harness, from: FiveTuple, request: &[u8], code: u16) {
    let response = harness.request(from, request).expect("a response");
    assert_eq!(
        error_code(&response),
        Some(code),
        "{}",
        Message::from_bytes(&response).unwrap()
    );
}

// RFC 8489 section 6 / RFC 8656 section 3: Binding.
#[test]
fn binding_returns_the_mapped_address() {
    let mut harness = Harness::new();
    let from = client(40000);
    // SOFTWARE and FINGERPRINT, as clients send them.
    let request = build(BINDING, None, |b, _| {
        b.add_attribute(&stun_types::attribute::Software::new("test client").unwrap())
            .unwrap();
    });
    let response = expect_success(&mut harness, from, &request);
    let message = Message::from_bytes(&response).unwrap();
    let mapped = message.attribute::<XorMappedAddress>().unwrap();
    assert_eq!(mapped.addr(message.transaction_id()), from.client);
    assert!(
        message.has_attribute(Fingerprint::TYPE),
        "fingerprinted like the request"
    );
}

// RFC 8489 section 9.2: long-term credentials.
#[test]
fn long_term_authentication_table() {
    struct Case {
        name: &'static str,
        username: &'static str,
        password: &'static str,
        tamper_nonce: bool,
        expect: Option<u16>,
    }
    let cases = [
        Case {
            name: "static user",
            username: USER,
            password: PASSWORD,
            tamper_nonce: false,
            expect: None,
        },
        Case {
            name: "wrong password",
            username: USER,
            password: "nope",
            tamper_nonce: false,
            expect: Some(401),
        },
        Case {
            name: "unknown user",
            username: "mallory",
            password: PASSWORD,
            tamper_nonce: false,
            expect: Some(401),
        },
        Case {
            name: "forged nonce",
            username: USER,
            password: PASSWORD,
            tamper_nonce: true,
            expect: Some(438),
        },
    ];
    for case in cases {
        let mut harness = Harness::new();
        let from = client(40001);
        let mut signing = login(&mut harness, from, case.username, case.password);
        if case.tamper_nonce {
            signing.nonce = "AAAAAAAA".into();
        }
        let response = harness
            .request(from, &build(ALLOCATE, Some(&signing), allocate_body))
            .unwrap();
        assert_eq!(error_code(&response), case.expect, "{}", case.name);
        let message = Message::from_bytes(&response).unwrap();
        if case.expect.is_none() {
            let key = LongTermKeyCredentials::new(USER.into(), PASSWORD.into(), REALM.into())
                .make_key(IntegrityAlgorithm::Sha1);
            assert!(
                message.validate_integrity_with_key(&key).is_ok(),
                "{}: response signed",
                case.name
            );
        } else {
            assert!(
                !message.has_attribute(MessageIntegrity::TYPE),
                "{}: errors to unauthenticated requests are unsigned",
                case.name
            );
            assert!(
                message.has_attribute(Nonce::TYPE) && message.has_attribute(Realm::TYPE),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn nonce_expires_and_is_bound_to_the_client() {
    let mut harness = Harness::new();
    let from = client(40002);
    let signing = login(&mut harness, from, USER, PASSWORD);
    // Another client may not use it.
    expect_error(
        &mut harness,
        client(40003),
        &build(ALLOCATE, Some(&signing), allocate_body),
        438,
    );
    harness.advance(Duration::from_secs(601));
    expect_error(
        &mut harness,
        from,
        &build(ALLOCATE, Some(&signing), allocate_body),
        438,
    );
}

#[test]
fn missing_realm_or_nonce_is_bad_request() {
    let mut harness = Harness::new();
    let from = client(40004);
    let request = build(ALLOCATE, None, |b, t| {
        allocate_body(b, t);
        b.add_attribute(&Username::new(USER).unwrap()).unwrap();
        let key = LongTermKeyCredentials::new(USER.into(), PASSWORD.into(), REALM.into())
            .make_key(IntegrityAlgorithm::Sha1);
        b.add_message_integrity_with_key(&key, IntegrityAlgorithm::Sha1)
            .unwrap();
    });
    expect_error(&mut harness, from, &request, 400);
}

// TURN REST API credentials (coturn use-auth-secret, STUNner ephemeral).
#[test]
fn rest_api_credentials_with_rotation_and_expiry() {
    for (username, secret, expect) in [
        (format!("{}:bob", START_UNIX + 3600), SECRET, None),
        (format!("{}:bob", START_UNIX + 3600), "old-secret", None),
        (format!("{}", START_UNIX + 3600), SECRET, None),
        (format!("{}:bob", START_UNIX - 1), SECRET, Some(401)),
        (
            format!("{}:bob", START_UNIX + 3600),
            "unknown-secret",
            Some(401),
        ),
    ] {
        let mut harness = Harness::new();
        let from = client(40005);
        let password = rest_password(secret, &username);
        let signing = login(&mut harness, from, &username, &password);
        let response = harness
            .request(from, &build(ALLOCATE, Some(&signing), allocate_body))
            .unwrap();
        assert_eq!(error_code(&response), expect, "{username} with {secret}");
    }
}

// RFC 8489 section 9.2 with RFC 8489 security features: SHA-256.
#[test]
fn message_integrity_sha256_with_password_algorithms() {
    let mut harness = Harness::new();
    let from = client(40006);
    // A large enough first request receives the full challenge.
    let first = first_allocate();
    let challenge = harness.request(from, &first).unwrap();
    let message = Message::from_bytes(&challenge).unwrap();
    let offered = message
        .attribute::<PasswordAlgorithms>()
        .expect("PASSWORD-ALGORITHMS offered");
    assert!(
        offered
            .algorithms()
            .contains(&PasswordAlgorithmValue::SHA256)
    );
    let nonce = nonce_of(&challenge);
    assert!(nonce.starts_with("obMatJos2"), "{nonce}");
    let signing = Signing {
        username: USER.into(),
        password: PASSWORD.into(),
        nonce,
        algorithm: IntegrityAlgorithm::Sha256,
    };
    let algorithms = offered.algorithms().to_vec();
    let request = build(ALLOCATE, Some(&signing), |b, t| {
        allocate_body(b, t);
        b.add_attribute(&PasswordAlgorithms::new(&algorithms))
            .unwrap();
        b.add_attribute(&PasswordAlgorithm::new(PasswordAlgorithmValue::SHA256))
            .unwrap();
    });
    let response = expect_success(&mut harness, from, &request);
    let message = Message::from_bytes(&response).unwrap();
    assert!(message.has_attribute(MessageIntegritySha256::TYPE));

    // Dropping PASSWORD-ALGORITHMS after a cookie nonce is a bid-down.
    let from = client(40007);
    let challenge = harness.request(from, &first).unwrap();
    let signing = Signing {
        nonce: nonce_of(&challenge),
        ..signing
    };
    let request = build(ALLOCATE, Some(&signing), |b, t| {
        allocate_body(b, t);
        b.add_attribute(&PasswordAlgorithm::new(PasswordAlgorithmValue::SHA256))
            .unwrap();
    });
    expect_error(&mut harness, from, &request, 400);
}

// RFC 8656 section 7.2: Allocate.
#[test]
fn allocate_success_response_and_event() {
    let mut harness = Harness::new();
    let from = client(40010);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let request = build(ALLOCATE, Some(&signing), |b, t| {
        allocate_body(b, t);
        b.add_attribute(&Lifetime::new(1200)).unwrap();
    });
    let response = expect_success(&mut harness, from, &request);
    let message = Message::from_bytes(&response).unwrap();
    let transaction = message.transaction_id();
    assert_eq!(message.attribute::<Lifetime>().unwrap().seconds(), 1200);
    assert_eq!(
        message
            .attribute::<XorMappedAddress>()
            .unwrap()
            .addr(transaction),
        from.client
    );
    let relayed = message
        .attribute::<XorRelayedAddress>()
        .unwrap()
        .addr(transaction);
    assert!(relayed.is_ipv4());
    assert!(message.has_attribute(stun_types::attribute::Software::TYPE));
    assert_eq!(
        harness.events(),
        [Event::AllocationCreated {
            client: from,
            relayed: vec![relayed],
            username: USER.into(),
            lifetime: Duration::from_secs(1200)
        }]
    );
    // A retransmission gets the same bytes; a new transaction gets 437.
    assert_eq!(harness.request(from, &request).unwrap(), response);
    expect_error(
        &mut harness,
        from,
        &build(ALLOCATE, Some(&signing), allocate_body),
        437,
    );
}

#[test]
fn allocate_errors_table() {
    let unknown_attribute = |b: &mut MessageWriteVec, t| {
        allocate_body(b, t);
        b.add_attribute(&stun_types::attribute::RawAttribute::new(
            stun_types::attribute::AttributeType::new(0x0077),
            &[0; 4],
        ))
        .unwrap();
    };
    let cases: Vec<(&str, Box<AttributeWriter>, u16)> = vec![
        ("no REQUESTED-TRANSPORT", Box::new(|_, _| {}), 400),
        (
            "TCP relaying",
            Box::new(|b, _| b.add_attribute(&RequestedTransport::new(6)).unwrap()),
            442,
        ),
        (
            "unknown comprehension-required attribute",
            Box::new(unknown_attribute),
            420,
        ),
        (
            "EVEN-PORT with R on a dual allocation",
            Box::new(|b, t| {
                allocate_body(b, t);
                b.add_attribute(&EvenPort::new(true)).unwrap();
                b.add_attribute(&AdditionalAddressFamily::new(
                    stun_types::AddressFamily::IPV6,
                ))
                .unwrap();
            }),
            400,
        ),
        (
            "RESERVATION-TOKEN with EVEN-PORT",
            Box::new(|b, t| {
                allocate_body(b, t);
                b.add_attribute(&ReservationToken::new(1)).unwrap();
                b.add_attribute(&EvenPort::new(false)).unwrap();
            }),
            400,
        ),
        (
            "RESERVATION-TOKEN with REQUESTED-ADDRESS-FAMILY",
            Box::new(|b, t| {
                allocate_body(b, t);
                b.add_attribute(&ReservationToken::new(1)).unwrap();
                b.add_attribute(&RequestedAddressFamily::new(
                    stun_types::AddressFamily::IPV4,
                ))
                .unwrap();
            }),
            400,
        ),
        (
            "RESERVATION-TOKEN with ADDITIONAL-ADDRESS-FAMILY",
            Box::new(|b, t| {
                allocate_body(b, t);
                b.add_attribute(&ReservationToken::new(1)).unwrap();
                b.add_attribute(&AdditionalAddressFamily::new(
                    stun_types::AddressFamily::IPV6,
                ))
                .unwrap();
            }),
            400,
        ),
        (
            "unknown RESERVATION-TOKEN",
            Box::new(|b, t| {
                allocate_body(b, t);
                b.add_attribute(&ReservationToken::new(0x1234)).unwrap();
            }),
            508,
        ),
        (
            "both address-family attributes",
            Box::new(|b, t| {
                allocate_body(b, t);
                b.add_attribute(&RequestedAddressFamily::new(
                    stun_types::AddressFamily::IPV4,
                ))
                .unwrap();
                b.add_attribute(&AdditionalAddressFamily::new(
                    stun_types::AddressFamily::IPV6,
                ))
                .unwrap();
            }),
            400,
        ),
    ];
    for (name, body, code) in cases {
        let mut harness = Harness::new();
        let from = client(40011);
        let signing = login(&mut harness, from, USER, PASSWORD);
        let response = harness
            .request(from, &build(ALLOCATE, Some(&signing), |b, t| body(b, t)))
            .unwrap();
        assert_eq!(error_code(&response), Some(code), "{name}");
        if code == 420 {
            let message = Message::from_bytes(&response).unwrap();
            let unknown = message.attribute::<UnknownAttributes>().unwrap();
            assert!(unknown.has_attribute(stun_types::attribute::AttributeType::new(0x0077)));
        }
        assert_eq!(harness.server.allocation_count(), 0, "{name}");
    }
    // IPv6 relaying on a server without IPv6: 440.
    let mut harness = Harness::with(config(), false);
    let from = client(40012);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let request = build(ALLOCATE, Some(&signing), |b, t| {
        allocate_body(b, t);
        b.add_attribute(&RequestedAddressFamily::new(
            stun_types::AddressFamily::IPV6,
        ))
        .unwrap();
    });
    expect_error(&mut harness, from, &request, 440);
}

#[test]
fn even_port_and_dual_allocations() {
    let mut harness = Harness::new();
    let from = client(40013);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let request = build(ALLOCATE, Some(&signing), |b, t| {
        allocate_body(b, t);
        b.add_attribute(&EvenPort::new(false)).unwrap();
        b.add_attribute(&AdditionalAddressFamily::new(
            stun_types::AddressFamily::IPV6,
        ))
        .unwrap();
    });
    let response = expect_success(&mut harness, from, &request);
    let message = Message::from_bytes(&response).unwrap();
    let transaction = message.transaction_id();
    let first = message
        .nth_attribute::<XorRelayedAddress>(0)
        .unwrap()
        .addr(transaction);
    let second = message
        .nth_attribute::<XorRelayedAddress>(1)
        .unwrap()
        .addr(transaction);
    assert!(first.is_ipv4() && second.is_ipv6());
    assert_eq!(first.port() % 2, 0, "EVEN-PORT");
}

// RFC 8656 section 8: Refresh.
#[test]
fn refresh_extends_and_zero_deletes() {
    let mut harness = Harness::new();
    let from = client(40020);
    let (signing, relayed) = allocate(&mut harness, from);
    harness.events();
    harness.advance(Duration::from_secs(500));
    let refresh = build(REFRESH, Some(&signing), |b, _| {
        b.add_attribute(&Lifetime::new(99_999)).unwrap()
    });
    let response = expect_success(&mut harness, from, &refresh);
    let lifetime = Message::from_bytes(&response)
        .unwrap()
        .attribute::<Lifetime>()
        .unwrap()
        .seconds();
    assert_eq!(lifetime, 3600, "capped at the maximum");
    assert_eq!(
        harness.events(),
        [Event::AllocationRefreshed {
            client: from,
            lifetime: Duration::from_secs(3600)
        }]
    );
    harness.advance(Duration::from_secs(3000));
    assert_eq!(
        harness.server.allocation_count(),
        1,
        "still alive after the original 600 s"
    );
    // The nonce has expired meanwhile; a client gets a fresh one.
    let signing = login(&mut harness, from, USER, PASSWORD);

    let delete = build(REFRESH, Some(&signing), |b, _| {
        b.add_attribute(&Lifetime::new(0)).unwrap()
    });
    expect_success(&mut harness, from, &delete);
    assert_eq!(harness.server.allocation_count(), 0);
    assert_eq!(
        harness.events(),
        [Event::AllocationDeleted {
            client: from,
            relayed: vec![relayed],
            reason: DeleteReason::Refreshed
        }]
    );
    assert_eq!(*harness.released.lock().unwrap(), [relayed]);
    expect_error(
        &mut harness,
        from,
        &build(REFRESH, Some(&signing), |_, _| {}),
        437,
    );
}

#[test]
fn requests_without_allocation_or_with_another_user() {
    let mut harness = Harness::new();
    let from = client(40021);
    let signing = login(&mut harness, from, USER, PASSWORD);
    expect_error(
        &mut harness,
        from,
        &permission(&signing, peer(1, 5000)),
        437,
    );
    let (_, _) = allocate(&mut harness, from);
    let rest_user = format!("{}:eve", START_UNIX + 100);
    let other = Signing {
        username: rest_user.clone(),
        password: rest_password(SECRET, &rest_user),
        ..signing
    };
    expect_error(&mut harness, from, &permission(&other, peer(1, 5000)), 441);
}

/// Found by the core fuzzer: an Allocate retransmission (same 5-tuple,
/// same transaction) answered with the stored response whoever signed it.
/// Another user gets 441, as for any request on someone else's
/// allocation; the same user still gets the stored response.
#[test]
fn an_allocate_retransmission_is_answered_only_to_its_user() {
    let mut harness = Harness::new();
    let from = client(40022);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let transaction = TransactionId::generate();
    let first = expect_success(
        &mut harness,
        from,
        &build_as(transaction, ALLOCATE, Some(&signing), allocate_body),
    );
    let again = expect_success(
        &mut harness,
        from,
        &build_as(transaction, ALLOCATE, Some(&signing), allocate_body),
    );
    assert_eq!(again, first);
    let rest_user = format!("{}:eve", START_UNIX + 100);
    let other = Signing {
        username: rest_user.clone(),
        password: rest_password(SECRET, &rest_user),
        ..signing
    };
    let forged = build_as(transaction, ALLOCATE, Some(&other), allocate_body);
    expect_error(&mut harness, from, &forged, 441);
}

// RFC 8656 sections 9 and 10: permissions, and the peer policy.
#[test]
fn create_permission_policy_and_family() {
    let mut harness = Harness::new();
    let from = client(40030);
    let (signing, _) = allocate(&mut harness, from);
    harness.events();
    for (peer_address, code) in [
        ("127.0.0.1:5000", 403),
        ("169.254.169.254:80", 403),
        ("[::ffff:127.0.0.1]:5000", 403),
        ("10.1.2.3:5000", 403),  // outside the allow-list
        ("[fd00::9]:5000", 443), // IPv6 peer on an IPv4 allocation
    ] {
        expect_error(
            &mut harness,
            from,
            &permission(&signing, peer_address.parse().unwrap()),
            code,
        );
    }
    assert!(harness.events().is_empty(), "refusals change nothing");
    expect_success(&mut harness, from, &permission(&signing, peer(1, 5000)));
    assert_eq!(
        harness.events(),
        [Event::PermissionCreated {
            client: from,
            peer: peer(1, 0).ip()
        }]
    );
    // Refreshing an existing permission is not a new one.
    expect_success(&mut harness, from, &permission(&signing, peer(1, 6000)));
    assert!(harness.events().is_empty());
    assert_eq!(harness.server.stats().denied_peers, 4);
}

/// A Send indication of `data` to `to`.
fn send_indication(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut builder = Message::builder_indication(SEND, MessageWriteVec::new());
    let t = builder.transaction_id();
    builder.add_attribute(&XorPeerAddress::new(to, t)).unwrap();
    builder.add_attribute(&Data::new(data)).unwrap();
    builder.finish()
}

// RFC 8656 sections 11 and 12: Send/Data and channels.
#[test]
fn send_indication_and_data_indication() {
    let mut harness = Harness::new();
    let from = client(40040);
    let (signing, relayed) = allocate(&mut harness, from);
    let to = peer(2, 7000);
    let indication = send_indication(to, b"hello peer");
    assert!(
        harness.send(from, &indication).is_empty(),
        "no permission yet: dropped"
    );
    expect_success(&mut harness, from, &permission(&signing, to));
    assert_eq!(
        harness.send(from, &indication),
        [Transmit::ToPeer {
            from: relayed,
            to,
            data: b"hello peer".to_vec()
        }]
    );

    let back = harness.peer_sends(relayed, to, b"hello client");
    let [Transmit::ToClient { to: back_to, data }] = back.as_slice() else {
        panic!("{back:?}")
    };
    assert_eq!(*back_to, from);
    let message = Message::from_bytes(data).unwrap();
    assert_eq!(message.method(), DATA);
    assert_eq!(
        message
            .attribute::<XorPeerAddress>()
            .unwrap()
            .addr(message.transaction_id()),
        to
    );
    assert_eq!(message.attribute::<Data>().unwrap().data(), b"hello client");
    assert!(
        harness
            .peer_sends(relayed, peer(3, 7000), b"stranger")
            .is_empty(),
        "no permission for this peer"
    );
}

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let mut harness = Harness::new();
    let from = client(40050);
    let (signing, relayed) = allocate(&mut harness, from);
    harness.events();
    let to = peer(4, 8000);
    for (channel, code) in [(0x3FFF, 400), (0x5000, 400)] {
        expect_error(
            &mut harness,
            from,
            &channel_bind(&signing, channel, to),
            code,
        );
    }
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4000, "127.0.0.1:9".parse().unwrap()),
        403,
    );
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4000, to));
    assert_eq!(
        harness.events(),
        [
            Event::PermissionCreated {
                client: from,
                peer: to.ip()
            },
            Event::ChannelBound {
                client: from,
                relayed,
                channel: 0x4000,
                peer: to
            },
            Event::ChannelLifetime {
                client: from,
                channel: 0x4000,
                lifetime: Duration::from_secs(300)
            },
        ]
    );
    // Client to peer, with and without padding on UDP.
    for message in [
        testkit::frame::channel_data(0x4000, b"media", false),
        testkit::frame::channel_data(0x4000, b"media", true),
    ] {
        assert_eq!(
            harness.send(from, &message),
            [Transmit::ToPeer {
                from: relayed,
                to,
                data: b"media".to_vec()
            }]
        );
    }
    // Truncated, unbound and out-of-range channels are dropped.
    assert!(
        harness
            .send(from, &[0x40, 0x00, 0x00, 0x09, 1, 2])
            .is_empty()
    );
    assert!(
        harness
            .send(from, &testkit::frame::channel_data(0x4001, b"x", false))
            .is_empty()
    );
    // Peer to client.
    assert_eq!(
        harness.peer_sends(relayed, to, b"back"),
        [Transmit::ToClient {
            to: from,
            data: testkit::frame::channel_data(0x4000, b"back", false)
        }]
    );
    // Conflicts: the channel to another peer, the peer to another channel.
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4000, peer(5, 8000)),
        400,
    );
    expect_error(&mut harness, from, &channel_bind(&signing, 0x4001, to), 400);
    // The same binding again is a refresh.
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4000, to));
    assert_eq!(
        harness.events(),
        [
            Event::ChannelRefreshed {
                client: from,
                channel: 0x4000
            },
            Event::ChannelLifetime {
                client: from,
                channel: 0x4000,
                lifetime: Duration::from_secs(300)
            }
        ]
    );
    let stats = harness.server.stats();
    assert_eq!((stats.to_peer_packets, stats.to_client_packets), (2, 1));
}

/// A peer written as IPv4-mapped IPv6 is the IPv4 peer: one channel, one
/// kernel binding, sent from the IPv4 relayed address. Port 0 is no peer.
#[test]
fn mapped_peers_are_the_same_peer_and_port_zero_is_refused() {
    let mut harness = Harness::new();
    let from = client(40051);
    let (signing, relayed) = allocate(&mut harness, from);
    let to = peer(4, 8000);
    let mapped = SocketAddr::new(
        match to.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().into(),
            v6 => v6,
        },
        to.port(),
    );
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4000, to));
    harness.events();
    // Another channel to the same peer in another spelling is a conflict.
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4001, mapped),
        400,
    );
    // The same channel to it is a refresh of the one binding.
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4000, mapped));
    assert_eq!(
        harness.events(),
        [
            Event::ChannelRefreshed {
                client: from,
                channel: 0x4000
            },
            Event::ChannelLifetime {
                client: from,
                channel: 0x4000,
                lifetime: Duration::from_secs(300)
            }
        ]
    );
    // A Send indication to the mapped spelling leaves from the IPv4
    // relayed address, to the IPv4 peer.
    assert_eq!(
        harness.send(from, &send_indication(mapped, b"hi")),
        [Transmit::ToPeer {
            from: relayed,
            to,
            data: b"hi".to_vec()
        }]
    );
    // Port 0: 400 for a channel, dropped for a Send indication.
    for peer in [peer(4, 0), SocketAddr::new(mapped.ip(), 0)] {
        expect_error(
            &mut harness,
            from,
            &channel_bind(&signing, 0x4002, peer),
            400,
        );
        assert!(harness.send(from, &send_indication(peer, b"x")).is_empty());
    }
    assert!(harness.events().is_empty(), "no binding was made");
}

#[test]
fn channel_data_is_padded_on_streams() {
    let mut harness = Harness::new();
    let from = FiveTuple {
        transport: Transport::Tcp,
        ..client(40051)
    };
    let (signing, relayed) = allocate(&mut harness, from);
    let to = peer(6, 8000);
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4001, to));
    assert_eq!(
        harness.peer_sends(relayed, to, b"12345"),
        [Transmit::ToClient {
            to: from,
            data: testkit::frame::channel_data(0x4001, b"12345", true)
        }]
    );
}

// Timers, driven by the fake clock.
#[test]
fn permission_channel_and_allocation_expiry_in_order() {
    let mut harness = Harness::new();
    let from = client(40060);
    let (signing, relayed) = allocate(&mut harness, from);
    let to = peer(7, 9000);
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4002, to));
    harness.events();

    harness.advance(Duration::from_secs(299));
    assert!(harness.events().is_empty());
    assert_eq!(
        harness
            .send(from, &testkit::frame::channel_data(0x4002, b"x", false))
            .len(),
        1
    );
    // The permission (300 s) ends first and takes the channel with it.
    harness.advance(Duration::from_secs(2));
    assert_eq!(
        harness.events(),
        [
            Event::ChannelExpired {
                client: from,
                relayed,
                channel: 0x4002,
                peer: to
            },
            Event::PermissionExpired {
                client: from,
                peer: to.ip()
            },
        ]
    );
    assert!(
        harness
            .send(from, &testkit::frame::channel_data(0x4002, b"x", false))
            .is_empty()
    );
    assert!(harness.peer_sends(relayed, to, b"x").is_empty());

    // Within 5 minutes the number and the peer stay reserved for each other.
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4002, peer(8, 9000)),
        400,
    );
    expect_error(&mut harness, from, &channel_bind(&signing, 0x4003, to), 400);
    // ...but rebinding the same pair is allowed.
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4002, to));
    harness.events();

    // Without a Refresh the allocation ends at 600 s.
    harness.advance(Duration::from_secs(298));
    harness.events();
    harness.advance(Duration::from_secs(2));
    let events = harness.events();
    assert_eq!(
        events.last(),
        Some(&Event::AllocationDeleted {
            client: from,
            relayed: vec![relayed],
            reason: DeleteReason::Expired
        })
    );
    assert_eq!(harness.server.allocation_count(), 0);
    assert!(harness.server.next_deadline().is_none());
}

/// Issue 11, item 8: bandwidth limits per allocation and per user, each
/// direction apart. 10 000 bytes a second with a 100 ms burst: at one
/// instant eleven 100-byte datagrams go (the burst and one), and a second
/// later eleven more.
#[test]
fn bandwidth_limits_per_allocation_and_per_user() {
    let limited = |allocation, user| {
        let mut config = config();
        config.bandwidth = super::bandwidth::Limits {
            allocation,
            user,
            burst: Duration::from_millis(100),
        };
        Harness::with(config, true)
    };
    let data = [0x5A; 100];
    let frame = testkit::frame::channel_data(0x4000, &data, false);
    let bound = |harness: &mut Harness, port| {
        let from = client(port);
        let (signing, relayed) = allocate(harness, from);
        let to = peer(4, 8000);
        expect_success(harness, from, &channel_bind(&signing, 0x4000, to));
        (from, relayed, to)
    };
    let to_peer = |harness: &mut Harness, from| {
        (0..100)
            .filter(|_| !harness.send(from, &frame).is_empty())
            .count()
    };

    let mut harness = limited(10_000, 0);
    let (from, relayed, to) = bound(&mut harness, 40070);
    assert_eq!(to_peer(&mut harness, from), 11);
    let to_client = (0..100)
        .filter(|_| !harness.peer_sends(relayed, to, &data).is_empty())
        .count();
    assert_eq!(to_client, 11, "the other direction has its own bucket");
    harness.advance(Duration::from_secs(1));
    assert_eq!(to_peer(&mut harness, from), 11);
    assert_eq!(harness.server.stats().dropped_over_limit, 3 * 89);
    // Another allocation of the same user has its own.
    let (other, _, _) = bound(&mut harness, 40071);
    assert_eq!(to_peer(&mut harness, other), 11);

    // A user's limit holds over all their allocations.
    let mut harness = limited(0, 10_000);
    let (first, _, _) = bound(&mut harness, 40072);
    let (second, _, _) = bound(&mut harness, 40073);
    assert_eq!(
        to_peer(&mut harness, first) + to_peer(&mut harness, second),
        11
    );
}

/// Issue 11, item 8: a deadline visits the allocations due then, not all
/// of them.
#[test]
fn a_deadline_visits_only_the_allocations_due() {
    let mut harness = Harness::new();
    let clients: Vec<FiveTuple> = (0..500).map(|i| client(20000 + i)).collect();
    let mut first = None;
    for from in &clients {
        let allocated = allocate(&mut harness, *from);
        first.get_or_insert(allocated);
    }
    let (signing, _) = first.unwrap();
    harness.advance(Duration::from_secs(10));
    expect_success(
        &mut harness,
        clients[0],
        &permission(&signing, peer(7, 9000)),
    );
    harness.events();
    harness.server.timer_visits = 0;
    // The permission lapses at 310 s: one allocation has something due.
    harness.advance(Duration::from_secs(300));
    assert_eq!(
        harness.events(),
        [Event::PermissionExpired {
            client: clients[0],
            peer: peer(7, 9000).ip()
        }]
    );
    assert_eq!(harness.server.timer_visits, 1);
    // Every allocation ends at 600 s, each visited once.
    harness.advance(Duration::from_secs(290));
    assert_eq!(harness.server.allocation_count(), 0);
    assert_eq!(harness.server.timer_visits, 1 + clients.len());
}

#[test]
fn channel_cooldown_ends_after_five_minutes() {
    let mut harness = Harness::new();
    let from = client(40061);
    let (signing, _) = allocate(&mut harness, from);
    let to = peer(9, 9000);
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4100, to));
    // Keep the allocation alive; let the channel lapse (600 s), then wait
    // out the 300 s cool-down.
    let refresh = |harness: &mut Harness| {
        let signing = login(harness, from, USER, PASSWORD);
        expect_success(
            harness,
            from,
            &build(REFRESH, Some(&signing), |b, _| {
                b.add_attribute(&Lifetime::new(3600)).unwrap()
            }),
        );
    };
    refresh(&mut harness);
    harness.advance(Duration::from_secs(301));
    let signing = Signing {
        nonce: nonce_of(&harness.request(from, &first_allocate()).unwrap()),
        ..signing
    };
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4100, peer(10, 9000)),
        400,
    );
    harness.advance(Duration::from_secs(300));
    let signing = Signing {
        nonce: nonce_of(&harness.request(from, &first_allocate()).unwrap()),
        ..signing
    };
    expect_success(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4100, peer(10, 9000)),
    );
}

/// A CreatePermission for every one of `peers`, in one request.
fn permissions(signing: &Signing, peers: &[SocketAddr]) -> Vec<u8> {
    build(CREATE_PERMISSION, Some(signing), |builder, transaction| {
        for peer in peers {
            builder
                .add_attribute(&XorPeerAddress::new(*peer, transaction))
                .unwrap();
        }
    })
}

/// Peer `i` of many, each on an IP of its own in 198.18.0.0/15.
fn many(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 16 + (i / 250) as u8, 1 + (i % 250) as u8], 9000))
}

// Caps per allocation (issue 11): permissions, channels, and a request
// of thousands of peers read in one pass.
#[test]
fn permissions_and_channels_are_capped_per_allocation() {
    let mut config = config();
    config.permissions_per_allocation = 1000;
    config.channels_per_allocation = 3;
    let mut harness = Harness::with(config, true);
    let from = client(40080);
    let (signing, _) = allocate(&mut harness, from);
    // 990 peers in one request (about 12 KiB), then 10 more: the cap.
    let first: Vec<SocketAddr> = (0..990).map(many).collect();
    expect_success(&mut harness, from, &permissions(&signing, &first));
    let more: Vec<SocketAddr> = (990..1000).map(many).collect();
    expect_success(&mut harness, from, &permissions(&signing, &more));
    // Refreshing held ones is fine; one more IP is not, all or nothing.
    expect_success(&mut harness, from, &permissions(&signing, &first[..5]));
    let over = [many(0), many(1000)];
    expect_error(&mut harness, from, &permissions(&signing, &over), 508);
    // ChannelBind to a new IP needs a permission slot too.
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4000, many(1001)),
        508,
    );
    for (channel, peer) in [(0x4000, 0), (0x4001, 1), (0x4002, 2)] {
        expect_success(
            &mut harness,
            from,
            &channel_bind(&signing, channel, many(peer)),
        );
    }
    // A fourth channel is over the cap; refreshing a bound one is not.
    expect_error(
        &mut harness,
        from,
        &channel_bind(&signing, 0x4003, many(3)),
        508,
    );
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4001, many(1)));
}

// Quotas.
#[test]
fn user_and_total_quotas() {
    let mut config = config();
    config.user_quota = 1;
    let mut harness = Harness::with(config, true);
    allocate(&mut harness, client(40070));
    let signing = login(&mut harness, client(40071), USER, PASSWORD);
    expect_error(
        &mut harness,
        client(40071),
        &build(ALLOCATE, Some(&signing), allocate_body),
        486,
    );
    // Another user is not limited by alice's quota.
    let bob = format!("{}:bob", START_UNIX + 100);
    let signing = login(
        &mut harness,
        client(40072),
        &bob,
        &rest_password(SECRET, &bob),
    );
    expect_success(
        &mut harness,
        client(40072),
        &build(ALLOCATE, Some(&signing), allocate_body),
    );

    let mut config = self::config();
    config.total_quota = 1;
    let mut harness = Harness::with(config, true);
    allocate(&mut harness, client(40073));
    let signing = login(
        &mut harness,
        client(40074),
        &bob,
        &rest_password(SECRET, &bob),
    );
    expect_error(
        &mut harness,
        client(40074),
        &build(ALLOCATE, Some(&signing), allocate_body),
        508,
    );
    assert_eq!(harness.server.stats().quota_refusals, 1);
}

/// A bare request: a 20-byte Binding, or a 28-byte Allocate with only
/// REQUESTED-TRANSPORT, as libwebrtc sends first.
fn bare(method: Method) -> Vec<u8> {
    let mut builder = Message::builder_request(method, MessageWriteVec::new());
    if method == ALLOCATE {
        builder.add_attribute(&RequestedTransport::new(17)).unwrap();
    }
    builder.finish()
}

fn ipv6_client(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new("fd00:18::1".parse().unwrap(), port),
        server: "[fd00:18::2]:3478".parse().unwrap(),
    }
}

// The sizes the README gives: what the smallest requests draw, and that
// the default limits answer them all.
#[test]
fn bare_binding_and_allocate_are_answered_with_these_sizes() {
    let mut harness = Harness::new();
    let binding = bare(BINDING);
    let allocate = bare(ALLOCATE);
    assert_eq!((binding.len(), allocate.len()), (20, 28));
    let sizes = [
        (client(40080), &binding, 32),
        (ipv6_client(40080), &binding, 44),
        // 401 with ERROR-CODE, REALM "turnx", a nonce with the RFC 8489
        // security-feature cookie, PASSWORD-ALGORITHMS.
        (client(40081), &allocate, 80),
        (ipv6_client(40081), &allocate, 80),
    ];
    for (from, request, size) in sizes {
        let response = harness.request(from, request).expect("answered");
        assert_eq!(response.len(), size, "{from:?}");
        assert!(response.len() as f64 <= 3.0 * request.len() as f64);
    }
    // A longer realm falls back to the compact 401 (plain nonce, no
    // PASSWORD-ALGORITHMS) to stay within the ratio.
    let mut long_realm = config();
    long_realm.credentials.realm = "turn.media.example.com".into();
    let mut harness = Harness::with(long_realm, true);
    let response = harness.request(client(40082), &allocate).expect("answered");
    assert_eq!(error_code(&response), Some(401));
    assert_eq!(response.len(), 20 + 8 + 4 + 24 + 4 + 8);
    assert!(
        !Message::from_bytes(&response)
            .unwrap()
            .has_attribute(PasswordAlgorithms::TYPE)
    );
    assert_eq!(harness.server.stats().refused_amplification_ratio, 0);
}

// Reflection: a flood of unauthenticated requests forged from one /24 is
// answered up to its budget only, while other prefixes are still answered
// and the budget refills with time.
#[test]
fn unauthenticated_flood_from_one_prefix_is_bounded_by_its_budget() {
    let mut harness = Harness::new();
    let binding = bare(BINDING);
    let mut answered_bytes = 0;
    for index in 0..5000u16 {
        let forged = FiveTuple {
            client: SocketAddr::from(([198, 18, 0, (index % 250) as u8], 1000 + index)),
            ..client(0)
        };
        if let Some(response) = harness.request(forged, &binding) {
            answered_bytes += response.len();
        }
    }
    // The default burst: 64 KiB to one prefix, then 16 KiB a second.
    assert!(answered_bytes <= 65_536, "{answered_bytes} bytes answered");
    assert!(
        answered_bytes > 65_536 - 32,
        "{answered_bytes} bytes answered"
    );
    let refused = harness.server.stats().refused_response_budget;
    assert_eq!(refused, 5000 - answered_bytes as u64 / 32);
    // Another /24 and another /64 are answered meanwhile.
    assert!(
        harness.request(client(40083), &binding).is_none(),
        "same /24"
    );
    let other = FiveTuple {
        client: "198.18.7.1:4000".parse().unwrap(),
        ..client(0)
    };
    assert!(harness.request(other, &binding).is_some());
    assert!(harness.request(ipv6_client(40083), &binding).is_some());
    // Authenticated traffic from the flooded prefix is not limited.
    let from = client(40084);
    harness.advance(Duration::from_secs(1));
    let (signing, _) = allocate(&mut harness, from);
    for _ in 0..200 {
        expect_success(&mut harness, from, &permission(&signing, peer(1, 1)));
    }
    // A second later the prefix has 16 KiB again.
    harness.advance(Duration::from_secs(1));
    assert!(harness.request(client(40085), &binding).is_some());
    // On TCP the handshake proves the source: not limited.
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..client(40086)
    };
    for _ in 0..3000 {
        assert!(harness.request(tcp, &binding).is_some());
    }
}

/// Random and mutated input never panics, and unauthenticated input never
/// draws more than three times its size on UDP.
#[test]
fn malformed_input_never_panics_or_amplifies() {
    let mut harness = Harness::new();
    let from = client(40090);
    let (signing, relayed) = allocate(&mut harness, from);
    let seeds = [
        first_allocate(),
        channel_bind(&signing, 0x4000, peer(1, 1)),
        build(REFRESH, Some(&signing), |b, _| {
            b.add_attribute(&Lifetime::new(600)).unwrap()
        }),
        permission(&signing, peer(1, 1)),
        testkit::frame::channel_data(0x4000, b"abcdefgh", true),
        hex(RFC5769_REQUEST),
    ];
    // xorshift: deterministic, so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..30_000u32 {
        let seed = &seeds[round as usize % seeds.len()];
        let mut input = seed.clone();
        match next() % 4 {
            0 => input.truncate((next() % (seed.len() as u64 + 1)) as usize),
            1 => {
                for _ in 0..=next() % 4 {
                    let index = (next() % input.len() as u64) as usize;
                    input[index] ^= 1 << (next() % 8);
                }
            }
            2 => input = (0..next() % 100).map(|_| next() as u8).collect(),
            _ => input.extend((0..next() % 40).map(|_| next() as u8)),
        }
        let stranger = client(41000 + (round % 100) as u16);
        for transmit in harness.send(stranger, &input) {
            if let Transmit::ToClient { data, .. } = transmit {
                assert!(
                    data.len() <= 3 * input.len(),
                    "amplified {} -> {}",
                    input.len(),
                    data.len()
                );
            }
        }
        harness.send(from, &input);
        harness.peer_sends(relayed, peer(1, 1), &input);
    }
}

/// Allocates for `from` with `add`'s attributes and returns the response.
fn allocate_with(
    harness: &mut Harness,
    from: FiveTuple,
    signing: &Signing,
    add: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Message<'static> {
    let response = harness
        .request(from, &build(ALLOCATE, Some(signing), add))
        .expect("a response");
    Message::from_bytes(Box::leak(response.into_boxed_slice())).unwrap()
}

fn relayed_of(message: &Message) -> SocketAddr {
    message
        .attribute::<XorRelayedAddress>()
        .unwrap()
        .addr(message.transaction_id())
}

/// An Allocate with EVEN-PORT and the R bit: the relayed address and the
/// token.
fn allocate_even_pair(
    harness: &mut Harness,
    from: FiveTuple,
    signing: &Signing,
) -> (SocketAddr, u64) {
    let message = allocate_with(harness, from, signing, |b, t| {
        allocate_body(b, t);
        b.add_attribute(&EvenPort::new(true)).unwrap();
    });
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    let token = message.attribute::<ReservationToken>().unwrap().token();
    (relayed_of(&message), token)
}

fn with_token(token: u64) -> impl FnOnce(&mut MessageWriteVec, TransactionId) {
    move |b, t| {
        allocate_body(b, t);
        b.add_attribute(&ReservationToken::new(token)).unwrap();
    }
}

// RFC 8656 sections 7.1 and 7.2: EVEN-PORT with R reserves the next port;
// a later Allocate redeems it with the token, from any 5-tuple of the
// same user, once.
#[test]
fn even_port_reservation_is_redeemed_once_by_its_token() {
    let mut harness = Harness::new();
    let rtp = client(40100);
    let signing = login(&mut harness, rtp, USER, PASSWORD);
    let (even, token) = allocate_even_pair(&mut harness, rtp, &signing);
    assert_eq!(even.port() % 2, 0);
    assert_eq!(harness.server.stats().reservations_made, 1);
    // The reserved port carries no allocation yet: peers reach nobody.
    let reserved = SocketAddr::new(even.ip(), even.port() + 1);
    assert!(
        harness
            .peer_sends(reserved, peer(1, 1), b"early")
            .is_empty()
    );

    let rtcp = client(40101);
    let signing = login(&mut harness, rtcp, USER, PASSWORD);
    let message = allocate_with(&mut harness, rtcp, &signing, with_token(token));
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    assert_eq!(relayed_of(&message), reserved);
    assert!(
        !message.has_attribute(ReservationToken::TYPE),
        "no new reservation"
    );
    assert_eq!(harness.server.stats().reservations_redeemed, 1);
    // The redeemed address is a full allocation: it relays.
    expect_success(&mut harness, rtcp, &permission(&signing, peer(1, 1)));
    assert_eq!(harness.peer_sends(reserved, peer(1, 1), b"rtcp").len(), 1);

    // Reused: the token is gone.
    let again = client(40102);
    let signing = login(&mut harness, again, USER, PASSWORD);
    let message = allocate_with(&mut harness, again, &signing, with_token(token));
    assert_eq!(error_code(message.as_bytes()), Some(508));
    assert_eq!(harness.server.allocation_count(), 2);
}

#[test]
fn reservation_tokens_of_other_users_or_expired_are_refused_and_ports_released() {
    let mut harness = Harness::new();
    let from = client(40110);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let (even, token) = allocate_even_pair(&mut harness, from, &signing);
    let reserved = SocketAddr::new(even.ip(), even.port() + 1);

    let bob = format!("{}:bob", START_UNIX + 3600);
    let thief = client(40111);
    let signing = login(&mut harness, thief, &bob, &rest_password(SECRET, &bob));
    let message = allocate_with(&mut harness, thief, &signing, with_token(token));
    assert_eq!(error_code(message.as_bytes()), Some(508), "another user");
    assert!(!harness.released.lock().unwrap().contains(&reserved));

    // After 30 s the port goes back, and the token is worth nothing.
    harness.advance(super::RESERVATION_LIFETIME);
    assert!(harness.released.lock().unwrap().contains(&reserved));
    assert_eq!(harness.server.stats().reservations_expired, 1);
    let late = client(40112);
    let signing = login(&mut harness, late, USER, PASSWORD);
    let message = allocate_with(&mut harness, late, &signing, with_token(token));
    assert_eq!(error_code(message.as_bytes()), Some(508), "expired");
}

#[test]
fn reservations_count_against_quotas() {
    let mut config = config();
    config.user_quota = 2;
    let mut harness = Harness::with(config, true);
    let from = client(40120);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let (_, token) = allocate_even_pair(&mut harness, from, &signing);
    // An allocation and a reservation: the quota is used up...
    let other = client(40121);
    let signing = login(&mut harness, other, USER, PASSWORD);
    let message = allocate_with(&mut harness, other, &signing, allocate_body);
    assert_eq!(error_code(message.as_bytes()), Some(486));
    // ...but redeeming the reservation needs nothing more.
    let message = allocate_with(&mut harness, other, &signing, with_token(token));
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    // A pair needs room for two.
    let mut config = self::config();
    config.total_quota = 1;
    let mut harness = Harness::with(config, true);
    let from = client(40122);
    let signing = login(&mut harness, from, USER, PASSWORD);
    let message = allocate_with(&mut harness, from, &signing, |b, t| {
        allocate_body(b, t);
        b.add_attribute(&EvenPort::new(true)).unwrap();
    });
    assert_eq!(error_code(message.as_bytes()), Some(508));
}

// The shards of one relay (the shell runs one per core) share quotas and
// reservations: a user's quota counts its allocations in every shard, and
// a port reserved in one shard is redeemed from another, with the nonce
// that shard gave.
#[test]
fn shards_share_quotas_and_reservations() {
    let mut config = config();
    config.user_quota = 3;
    let ledger = Ledger::new([9; 32], config.amplification);
    let mut a = Harness::shard(config.clone(), true, Arc::clone(&ledger), 49152);
    let mut b = Harness::shard(config, true, ledger, 50152);
    let rtp = client(40140);
    let signing = login(&mut a, rtp, USER, PASSWORD);
    let (even, token) = allocate_even_pair(&mut a, rtp, &signing);

    let rtcp = client(40141);
    let signing = login(&mut b, rtcp, USER, PASSWORD);
    let message = allocate_with(&mut b, rtcp, &signing, with_token(token));
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    assert_eq!(relayed_of(&message).port(), even.port() + 1);
    assert_eq!(b.server.stats().reservations_redeemed, 1);
    expect_success(&mut b, rtcp, &permission(&signing, peer(1, 1)));
    let reserved = SocketAddr::new(even.ip(), even.port() + 1);
    assert_eq!(b.peer_sends(reserved, peer(1, 1), b"rtcp").len(), 1);

    // Two held; a third anywhere, and the fourth is over the quota.
    let (third, fourth) = (client(40142), client(40143));
    let signing_third = login(&mut b, third, USER, PASSWORD);
    let message = allocate_with(&mut b, third, &signing_third, allocate_body);
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    let signing = login(&mut a, fourth, USER, PASSWORD);
    let message = allocate_with(&mut a, fourth, &signing, allocate_body);
    assert_eq!(error_code(message.as_bytes()), Some(486), "{message}");

    // Deleting one in shard b makes room in shard a.
    let refresh = build(REFRESH, Some(&signing_third), |b, _| {
        b.add_attribute(&Lifetime::new(0)).unwrap()
    });
    expect_success(&mut b, third, &refresh);
    let message = allocate_with(&mut a, fourth, &signing, allocate_body);
    assert_eq!(message.class(), MessageClass::Success, "{message}");
}

// Relay to relay: two clients of this server reach each other through
// their relayed addresses, with permissions, channels and Send, even
// though the relay address is outside the allow-list; other ports of the
// relay address and other local addresses stay refused.
#[test]
fn allocations_of_this_relay_are_peers_of_each_other() {
    let mut harness = Harness::new();
    let (alice, bob) = (client(40130), client(40131));
    let (signing_a, relayed_a) = allocate(&mut harness, alice);
    let (signing_b, relayed_b) = allocate(&mut harness, bob);
    assert_eq!(relayed_a.ip(), relayed_b.ip());
    // Permissions are by IP: each lets the other's relay address in.
    expect_success(&mut harness, alice, &permission(&signing_a, relayed_b));
    expect_success(&mut harness, bob, &permission(&signing_b, relayed_a));
    expect_success(
        &mut harness,
        alice,
        &channel_bind(&signing_a, 0x4000, relayed_b),
    );
    let listener = SocketAddr::new(relayed_b.ip(), 3478);
    expect_error(
        &mut harness,
        alice,
        &channel_bind(&signing_a, 0x4001, listener),
        403,
    );

    // Alice's ChannelData leaves her relayed address for Bob's...
    let data = testkit::frame::channel_data(0x4000, b"hello bob", false);
    let out = harness.send(alice, &data);
    assert_eq!(
        out,
        [Transmit::ToPeer {
            from: relayed_a,
            to: relayed_b,
            data: b"hello bob".to_vec()
        }]
    );
    // ...and arrives at Bob's as a Data indication, since Bob has no channel.
    let out = harness.peer_sends(relayed_b, relayed_a, b"hello bob");
    assert!(matches!(&out[..], [Transmit::ToClient { to, .. }] if *to == bob));
    // Bob answers with a Send indication.
    let send = send_indication(relayed_a, b"hi alice");
    assert_eq!(
        harness.send(bob, &send),
        [Transmit::ToPeer {
            from: relayed_b,
            to: relayed_a,
            data: b"hi alice".to_vec()
        }]
    );
    // A Send to another port of the relay address goes nowhere, and a
    // datagram from one does not reach the client.
    assert!(
        harness
            .send(bob, &send_indication(listener, b"x"))
            .is_empty()
    );
    assert!(harness.peer_sends(relayed_b, listener, b"x").is_empty());
}

#[test]
fn the_nodes_other_addresses_are_refused_and_follow_changes() {
    let mut harness = Harness::new();
    let from = client(40140);
    let (signing, _) = allocate(&mut harness, from);
    let secondary: SocketAddr = "198.18.3.3:5000".parse().unwrap();
    let cni: SocketAddr = "[fd00:cafe::1]:5000".parse().unwrap();
    expect_success(&mut harness, from, &permission(&signing, secondary));
    harness
        .server
        .set_local_addresses([secondary.ip(), cni.ip(), "198.18.0.2".parse().unwrap()]);
    let listen: SocketAddr = "198.18.0.2:3478".parse().unwrap();
    for local in [secondary, listen, "[::ffff:198.18.3.3]:1".parse().unwrap()] {
        expect_error(&mut harness, from, &permission(&signing, local), 403);
        expect_error(
            &mut harness,
            from,
            &channel_bind(&signing, 0x4002, local),
            403,
        );
    }
    // The address went away: it is a peer like any other again.
    harness.server.set_local_addresses([cni.ip()]);
    expect_success(&mut harness, from, &permission(&signing, secondary));
}

// A handover: one server writes an allocation down, another (with the same
// key, so that the client's nonce stays good) takes it over three seconds
// later, and goes on as the first would have: requests are answered, data
// is relayed both ways, and every lifetime runs on from where it was.
#[test]
fn a_handed_over_allocation_answers_relays_and_keeps_its_lifetimes() {
    let mut old = Harness::new();
    let from = client(40200);
    let (signing, relayed) = allocate(&mut old, from);
    let (bound, permitted) = (peer(4, 8000), peer(5, 8001));
    expect_success(&mut old, from, &channel_bind(&signing, 0x4000, bound));
    expect_success(&mut old, from, &permission(&signing, permitted));
    old.events();
    assert!(old.server.take_changed(), "state changed");
    assert!(!old.server.take_changed(), "and was taken");
    let written = serde_json::to_string(&old.server.snapshot(old.now().at)).unwrap();
    let states: Vec<snapshot::AllocationState> = serde_json::from_str(&written).unwrap();
    assert_eq!(states.len(), 1);

    let mut new = Harness::new();
    let took = Duration::from_secs(3);
    new.server.restore(&states[0], new.now(), took).unwrap();
    let lifetime = |events: &[Event]| {
        events.iter().find_map(|event| match event {
            Event::ChannelLifetime { lifetime, .. } => Some(lifetime.as_secs()),
            _ => None,
        })
    };
    let events = new.events();
    assert!(
        matches!(&events[0], Event::AllocationCreated { relayed: r, lifetime, .. }
            if r == &vec![relayed] && lifetime.as_secs() == 597),
        "{events:?}"
    );
    let bound_channel = Event::ChannelBound {
        client: from,
        relayed,
        channel: 0x4000,
        peer: bound,
    };
    assert!(events.contains(&bound_channel), "{events:?}");
    // The channel may be relayed as long as its permission lasts.
    assert_eq!(lifetime(&events), Some(297), "{events:?}");
    assert_eq!(
        new.server.restore(&states[0], new.now(), took),
        Err(snapshot::RestoreError::Duplicate)
    );

    let refresh = build(REFRESH, Some(&signing), |b, _| {
        b.add_attribute(&Lifetime::new(600)).unwrap()
    });
    expect_success(&mut new, from, &refresh);
    assert_eq!(
        lifetime(&new.events()),
        Some(297),
        "the permission still bounds it"
    );
    let data = testkit::frame::channel_data(0x4000, b"media", false);
    assert_eq!(
        new.send(from, &data),
        [Transmit::ToPeer {
            from: relayed,
            to: bound,
            data: b"media".to_vec()
        }]
    );
    assert_eq!(new.peer_sends(relayed, bound, b"back").len(), 1);
    assert_eq!(new.peer_sends(relayed, permitted, b"data").len(), 1);

    // The permissions run out when they would have in the old server.
    new.advance(Duration::from_secs(297));
    let events = new.events();
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Event::ChannelExpired { .. })),
        "{events:?}"
    );
    assert!(new.peer_sends(relayed, permitted, b"late").is_empty());
}

// Reservations are the relay's: a new server takes them over with the
// token count, and the RTCP Allocate redeems the port the old one kept.
#[test]
fn handed_over_reservations_are_redeemed_and_tokens_not_minted_again() {
    let mut old = Harness::new();
    let rtp = client(40210);
    let signing = login(&mut old, rtp, USER, PASSWORD);
    let (even, token) = allocate_even_pair(&mut old, rtp, &signing);
    let ledger = old.server.snapshot_ledger(old.now().at);
    assert_eq!(ledger.reservations.len(), 1);
    assert_eq!(ledger.reservations[0].token, token);

    let mut new = Harness::new();
    let took = Duration::from_secs(1);
    assert_eq!(new.server.restore_ledger(&ledger, new.now(), took), 1);
    let rtcp = client(40211);
    let signing = login(&mut new, rtcp, USER, PASSWORD);
    let message = allocate_with(&mut new, rtcp, &signing, with_token(token));
    assert_eq!(message.class(), MessageClass::Success, "{message}");
    assert_eq!(relayed_of(&message).port(), even.port() + 1);
    let again = new.server.snapshot_ledger(new.now().at);
    assert!(again.reservations.is_empty());
    assert_eq!(again.tokens_issued, ledger.tokens_issued);

    // One that expired during the handover is dropped.
    let late = Duration::from_secs(31);
    let mut newer = Harness::new();
    assert_eq!(newer.server.restore_ledger(&ledger, newer.now(), late), 0);
}
