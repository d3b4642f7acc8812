//! Seed inputs: well-formed STUN and ChannelData messages for the decoding
//! targets, and for the core short sessions in its chunk format (see the
//! parent module) that walk through the TURN methods. Requests are written
//! unsigned: the core harness signs them, and the fuzzer mutates their
//! bodies.

use std::net::SocketAddr;

use stun_types::{
    AddressFamily,
    attribute::{AttributeType, ErrorCode, Nonce, Realm, Software, UnknownAttributes, Username},
    message::{
        BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType,
        MessageWrite, MessageWriteExt, MessageWriteVec, Method, TransactionId,
    },
};
use turn_types::{
    attribute::{
        AdditionalAddressFamily, ChannelNumber, Data, DontFragment, EvenPort, Lifetime,
        RequestedAddressFamily, RequestedTransport, ReservationToken, XorPeerAddress,
        XorRelayedAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND},
};

use super::PEERS;

/// What a chunk does (`op` bits 2-3).
#[derive(Clone, Copy)]
enum Action {
    Signed = 0,
    AsIs = 1,
    Peer = 2,
    Close = 3,
}

/// An `op` byte: client, action, clock advance index, REST user or not.
fn op(client: u8, action: Action, advance: u8, rest_user: bool) -> u8 {
    client | (action as u8) << 2 | advance << 4 | u8::from(rest_user) << 7
}

/// One chunk: op, param, length, payload.
fn chunk(op: u8, param: u8, payload: &[u8]) -> Vec<u8> {
    let mut chunk = vec![op, param];
    chunk.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    chunk.extend_from_slice(payload);
    chunk
}

/// A message of `class` and `method` with `add`'s attributes, and a
/// FINGERPRINT when `fingerprint`.
fn message(
    class: MessageClass,
    method: Method,
    transaction: u128,
    fingerprint: bool,
    add: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let transaction = TransactionId::from(transaction);
    let mut builder = Message::builder(
        MessageType::from_class_method(class, method),
        transaction,
        MessageWriteVec::new(),
    );
    add(&mut builder, transaction);
    if fingerprint {
        builder.add_fingerprint().expect("room for FINGERPRINT");
    }
    builder.finish()
}

fn request(
    method: Method,
    transaction: u128,
    add: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    message(MessageClass::Request, method, transaction, true, add)
}

/// Writes attributes the seeds are built from; they always fit.
fn put(builder: &mut MessageWriteVec, attribute: &dyn stun_types::attribute::AttributeWrite) {
    builder.add_attribute(attribute).expect("a small seed");
}

/// The unauthenticated Allocate a client starts with: `full`, with
/// REQUESTED-TRANSPORT and a SOFTWARE as real clients send, or bare (a
/// header alone, too small for the full 401 to fit the amplification
/// ratio).
pub fn login_request(transaction: u128, full: bool) -> Vec<u8> {
    message(
        MessageClass::Request,
        ALLOCATE,
        transaction,
        false,
        |b, _| {
            if full {
                put(b, &RequestedTransport::new(17));
                put(b, &Software::new("a fuzzing client").expect("short"));
            }
        },
    )
}

fn allocate(transaction: u128, add: impl FnOnce(&mut MessageWriteVec)) -> Vec<u8> {
    request(ALLOCATE, transaction, |b, _| {
        put(b, &RequestedTransport::new(17));
        add(b);
    })
}

fn create_permission(transaction: u128, peers: &[SocketAddr]) -> Vec<u8> {
    request(CREATE_PERMISSION, transaction, |b, t| {
        for peer in peers {
            put(b, &XorPeerAddress::new(*peer, t));
        }
    })
}

fn channel_bind(transaction: u128, channel: u16, peer: SocketAddr) -> Vec<u8> {
    request(CHANNEL_BIND, transaction, |b, t| {
        put(b, &ChannelNumber::new(channel));
        put(b, &XorPeerAddress::new(peer, t));
    })
}

fn refresh(transaction: u128, lifetime: Option<u32>) -> Vec<u8> {
    request(REFRESH, transaction, |b, _| {
        if let Some(seconds) = lifetime {
            put(b, &Lifetime::new(seconds));
        }
    })
}

fn send(transaction: u128, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    message(
        MessageClass::Indication,
        SEND,
        transaction,
        false,
        |b, t| {
            put(b, &XorPeerAddress::new(peer, t));
            put(b, &Data::new(data));
        },
    )
}

/// ChannelData, padded to 4 bytes as on streams (UDP accepts the padding).
fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut bytes = channel.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}

/// Well-formed messages of every kind the server reads or writes, for the
/// decoding targets.
pub fn messages() -> Vec<Vec<u8>> {
    let [peer, _, _, peer_v6, _] = PEERS;
    let signed = message(MessageClass::Request, ALLOCATE, 0x51, true, |b, _| {
        put(b, &RequestedTransport::new(17));
        put(b, &Username::new("alice").expect("short"));
        put(b, &Realm::new("turnx").expect("short"));
        put(b, &Nonce::new("obMatJos2AAABAAAAAAAA").expect("short"));
        let key = LongTermKeyCredentials::new("alice".into(), "pass".into(), "turnx".into())
            .make_key(IntegrityAlgorithm::Sha1);
        b.add_message_integrity_with_key(&key, IntegrityAlgorithm::Sha1)
            .expect("room");
    });
    let challenge = message(MessageClass::Error, ALLOCATE, 0x52, false, |b, _| {
        put(b, &ErrorCode::new(401, "Unauthorized").expect("valid"));
        put(b, &Realm::new("turnx").expect("short"));
        put(b, &Nonce::new("AAAAAAAA").expect("short"));
        put(b, &UnknownAttributes::new(&[AttributeType::new(0x7777)]));
    });
    let success = message(MessageClass::Success, ALLOCATE, 0x53, true, |b, t| {
        put(
            b,
            &XorRelayedAddress::new("198.51.100.1:49152".parse().unwrap(), t),
        );
        put(b, &Lifetime::new(600));
        put(b, &ReservationToken::new(0x0123_4567_89ab_cdef));
    });
    let data = message(MessageClass::Indication, DATA, 0x54, false, |b, t| {
        put(b, &XorPeerAddress::new(peer_v6, t));
        put(b, &Data::new(b"from a peer"));
    });
    vec![
        request(BINDING, 0x50, |b, _| {
            put(b, &Software::new("seed").expect("short"))
        }),
        signed,
        challenge,
        success,
        data,
        allocate(0x55, |b| {
            put(b, &AdditionalAddressFamily::new(AddressFamily::IPV6));
            put(b, &EvenPort::new(true));
            put(b, &DontFragment::new());
        }),
        create_permission(0x56, &[peer, peer_v6]),
        channel_bind(0x57, 0x4000, peer),
        refresh(0x58, Some(0)),
        send(0x59, peer, b"hello"),
        channel_data(0x4000, b"media"),
    ]
}

/// Sessions in the core harness's chunk format.
pub fn chunks() -> Vec<Vec<u8>> {
    use Action::{AsIs, Close, Peer, Signed};
    let [peer, peer_b, peer_c, peer_v6, relay_peer] = PEERS;
    let signed = |client, payload: &[u8]| chunk(op(client, Signed, 0, false), 0, payload);
    let sessions: Vec<Vec<Vec<u8>>> = vec![
        // UDP: allocate, permission, Send, data back, channel, ChannelData
        // both ways, refresh, let the permission lapse, delete.
        vec![
            signed(0, &allocate(1, |_| {})),
            signed(0, &create_permission(2, &[peer])),
            chunk(op(0, AsIs, 0, false), 0, &send(3, peer, b"hello")),
            chunk(op(0, Peer, 0, false), 0x20, b"pong"),
            signed(0, &channel_bind(4, 0x4000, peer)),
            chunk(op(0, AsIs, 0, false), 0, &channel_data(0x4000, b"media")),
            chunk(op(0, Peer, 0, false), 0, b"media back"),
            signed(0, &refresh(5, Some(1200))),
            chunk(op(0, Signed, 6, false), 0, &refresh(6, None)),
            signed(0, &refresh(7, Some(0))),
        ],
        // Reservations and families: an even pair, its reserved port
        // redeemed by another client, IPv6 and dual-stack allocations.
        vec![
            chunk(
                op(1, Signed, 0, true),
                0,
                &allocate(10, |b| put(b, &EvenPort::new(true))),
            ),
            chunk(
                op(2, Signed, 0, true),
                8,
                &allocate(11, |b| put(b, &ReservationToken::new(0))),
            ),
            signed(
                3,
                &allocate(12, |b| {
                    put(b, &RequestedAddressFamily::new(AddressFamily::IPV6))
                }),
            ),
            signed(3, &create_permission(13, &[peer_v6])),
            signed(3, &channel_bind(14, 0x4001, peer_v6)),
            chunk(op(3, Peer, 0, false), 0, b"v6 media"),
            signed(
                3,
                &request(REFRESH, 15, |b, _| {
                    put(b, &RequestedAddressFamily::new(AddressFamily::IPV4))
                }),
            ),
            chunk(op(0, Signed, 5, false), 0, &allocate(16, |_| {})),
        ],
        // TCP: a dual-stack allocation, channels of both families, padded
        // ChannelData, a relay-to-relay peer, then the connection closes.
        vec![
            signed(
                2,
                &allocate(20, |b| {
                    put(b, &AdditionalAddressFamily::new(AddressFamily::IPV6));
                    put(b, &DontFragment::new());
                }),
            ),
            signed(2, &channel_bind(21, 0x4002, peer_b)),
            signed(2, &channel_bind(22, 0x4003, peer_v6)),
            signed(2, &create_permission(23, &[peer_c, relay_peer])),
            chunk(op(2, AsIs, 0, false), 0, &channel_data(0x4002, b"odd")),
            chunk(op(2, Peer, 0, false), 0x10, b"to the stream"),
            chunk(op(2, Close, 0, false), 0, &[]),
        ],
        // Quotas, retransmission, mismatches and refusals.
        vec![
            signed(0, &allocate(30, |_| {})),
            signed(0, &allocate(30, |_| {})),
            signed(0, &allocate(31, |_| {})),
            signed(1, &allocate(32, |_| {})),
            signed(2, &allocate(33, |_| {})),
            signed(3, &allocate(34, |_| {})),
            chunk(op(0, Signed, 0, true), 0, &refresh(35, None)),
            chunk(op(1, Signed, 0, false), 1, &refresh(36, None)),
            chunk(op(1, Signed, 0, false), 2, &refresh(37, None)),
            chunk(op(1, Signed, 0, false), 4, &refresh(38, None)),
            chunk(op(1, Signed, 0, false), 16, &refresh(38, None)),
            signed(
                0,
                &request(CREATE_PERMISSION, 39, |b, _| {
                    put(
                        b,
                        &stun_types::attribute::RawAttribute::new(AttributeType::new(0x7777), &[1]),
                    )
                }),
            ),
            chunk(op(0, AsIs, 0, false), 0, &request(BINDING, 40, |_, _| {})),
            chunk(op(1, AsIs, 0, false), 0, &allocate(41, |_| {})),
            signed(0, &request(Method::new(0x0777), 42, |_, _| {})),
        ],
    ];
    sessions
        .into_iter()
        .map(|session| session.concat())
        .collect()
}
