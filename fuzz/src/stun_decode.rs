//! The decoding the TURN server does on what a client or peer sends: the
//! STUN header, `Message::from_bytes`, the attribute walk, every typed
//! attribute the handlers read, integrity validation and the `Display` the
//! debug logs use; and ChannelData parsing.
//!
//! Properties checked, beyond "never panics":
//! - a header that decodes has every shorter prefix reported as truncated
//!   (what lets a stream reader wait for more), never as "not STUN";
//! - a message that decodes declares no more bytes than it was given, and
//!   every attribute lies inside the input, at 4-byte aligned offsets that
//!   follow one another;
//! - every typed attribute that decodes re-encodes to bytes that decode to
//!   the same encoding (decode and encode are inverse on their image);
//! - a message rebuilt from its attributes decodes to the same type,
//!   transaction and attributes, and, when it carries no integrity or
//!   fingerprint, to the same bytes up to padding;
//! - a ChannelData message that parses has a channel number in range and
//!   exactly its declared payload, and re-encodes to its own bytes.

use stun_types::{
    attribute::{
        Attribute, AttributeFromRaw, AttributeStaticType, AttributeType, AttributeWrite, ErrorCode,
        Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm,
        PasswordAlgorithms, RawAttribute, Realm, Software, UnknownAttributes, Username,
        XorMappedAddress,
    },
    message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageHeader, MessageWrite,
        MessageWriteExt, MessageWriteVec, StunParseError,
    },
};
use turn_types::{
    attribute::{
        AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data, DontFragment, EvenPort,
        Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken, XorPeerAddress,
        XorRelayedAddress,
    },
    channel::ChannelData,
};

use crate::counters::Counters;

/// What the inputs turned out to be.
pub static COUNTS: Counters<5> = Counters::new([
    "inputs",
    "stun_decoded",
    "typed_attributes",
    "channel_data",
    "integrity_checked",
]);

/// Prints [`COUNTS`] (for [`crate::counters::print_at_exit`]).
pub fn counts() -> String {
    COUNTS.line()
}

/// The magic cookie of RFC 8489.
const MAGIC_COOKIE: [u8; 4] = 0x2112_A442_u32.to_be_bytes();

/// Checks one input, dispatched as the server dispatches a datagram: on
/// the first two bits.
pub fn check(data: &[u8]) {
    COUNTS.bump(0);
    match data.first().map(|byte| byte >> 6) {
        Some(0b00) => stun(data),
        Some(0b01) => channel_data(data),
        _ => {}
    }
}

fn stun(data: &[u8]) {
    header_prefixes(data);
    let Ok(message) = Message::from_bytes(data) else {
        return;
    };
    COUNTS.bump(1);
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    assert!(
        MessageHeader::LENGTH + declared <= data.len(),
        "decoded a message declaring {declared} bytes from {}",
        data.len()
    );
    assert_eq!(message.as_bytes(), data);
    assert_eq!(data[0] >> 6, 0, "a STUN message starts with two zero bits");
    assert_eq!(data[4..8], MAGIC_COOKIE);

    let attributes = walk_attributes(&message, data);
    for raw in &attributes {
        typed_roundtrip(raw);
    }
    handler_reads(&message);
    rebuild(&message, &attributes, data, declared);
    // The server's debug logs print requests with Display.
    let _ = message.to_string();
}

/// Every prefix of a decodable header is "truncated", not "not STUN".
fn header_prefixes(data: &[u8]) {
    if MessageHeader::from_bytes(data).is_err() {
        return;
    }
    for len in 0..MessageHeader::LENGTH {
        match MessageHeader::from_bytes(&data[..len]) {
            Err(StunParseError::Truncated { .. }) => {}
            other => panic!("a {len}-byte prefix of a valid header gave {other:?}"),
        }
    }
}

/// The attributes of `message`, checked to lie inside `data` one after
/// the other.
fn walk_attributes<'a>(message: &'a Message<'a>, data: &[u8]) -> Vec<RawAttribute<'a>> {
    let mut expected_offset = MessageHeader::LENGTH;
    let mut attributes = Vec::new();
    for (offset, raw) in message.iter_attributes() {
        assert_eq!(offset, expected_offset, "attributes follow one another");
        assert_eq!(offset % 4, 0, "attributes are 4-byte aligned");
        let len = raw.header.length() as usize;
        assert_eq!(raw.value.len(), len, "an attribute holds what it declares");
        assert!(
            offset + 4 + len <= data.len(),
            "attribute at {offset} declares {len} bytes past the input's {}",
            data.len()
        );
        expected_offset = offset + 4 + len.next_multiple_of(4);
        attributes.push(raw);
    }
    attributes
}

/// Whether two attributes have the same type and value (their derived
/// equality also compares whether the value is borrowed or owned).
fn same(a: &RawAttribute, b: &RawAttribute) -> bool {
    a.get_type() == b.get_type() && a.value[..] == b.value[..]
}

/// Decodes `raw` as `T`; if that works, encodes it and checks the encoding
/// decodes to itself.
fn roundtrip<T>(raw: &RawAttribute)
where
    T: AttributeStaticType + AttributeWrite + for<'x> AttributeFromRaw<'x>,
{
    let Ok(first) = T::from_raw_ref(raw) else {
        return;
    };
    COUNTS.bump(2);
    let encoded = first.to_raw().into_owned();
    assert_eq!(encoded.get_type(), T::TYPE);
    let again = T::from_raw_ref(&encoded)
        .unwrap_or_else(|err| panic!("{} re-encoded as {encoded:?} fails: {err}", T::TYPE));
    assert!(
        same(&again.to_raw(), &encoded),
        "{} re-encodes {encoded:?} as {:?}",
        T::TYPE,
        again.to_raw()
    );
}

fn typed_roundtrip(raw: &RawAttribute) {
    let kind: AttributeType = raw.get_type();
    match kind {
        Username::TYPE => roundtrip::<Username>(raw),
        Realm::TYPE => roundtrip::<Realm>(raw),
        Nonce::TYPE => roundtrip::<Nonce>(raw),
        Software::TYPE => roundtrip::<Software>(raw),
        ErrorCode::TYPE => roundtrip::<ErrorCode>(raw),
        UnknownAttributes::TYPE => roundtrip::<UnknownAttributes>(raw),
        PasswordAlgorithm::TYPE => roundtrip::<PasswordAlgorithm>(raw),
        PasswordAlgorithms::TYPE => roundtrip::<PasswordAlgorithms>(raw),
        XorMappedAddress::TYPE => roundtrip::<XorMappedAddress>(raw),
        MessageIntegrity::TYPE => roundtrip::<MessageIntegrity>(raw),
        MessageIntegritySha256::TYPE => roundtrip::<MessageIntegritySha256>(raw),
        Fingerprint::TYPE => roundtrip::<Fingerprint>(raw),
        ChannelNumber::TYPE => roundtrip::<ChannelNumber>(raw),
        Lifetime::TYPE => roundtrip::<Lifetime>(raw),
        XorPeerAddress::TYPE => roundtrip::<XorPeerAddress>(raw),
        XorRelayedAddress::TYPE => roundtrip::<XorRelayedAddress>(raw),
        RequestedAddressFamily::TYPE => roundtrip::<RequestedAddressFamily>(raw),
        AdditionalAddressFamily::TYPE => roundtrip::<AdditionalAddressFamily>(raw),
        AddressErrorCode::TYPE => roundtrip::<AddressErrorCode>(raw),
        EvenPort::TYPE => roundtrip::<EvenPort>(raw),
        RequestedTransport::TYPE => roundtrip::<RequestedTransport>(raw),
        DontFragment::TYPE => roundtrip::<DontFragment>(raw),
        ReservationToken::TYPE => roundtrip::<ReservationToken>(raw),
        Data::TYPE => {
            // Data borrows, so it has no `for<'x>` decoder: checked by hand.
            if let Ok(first) = Data::from_raw_ref(raw) {
                COUNTS.bump(2);
                assert_eq!(first.data(), &raw.value[..]);
                assert!(same(&first.to_raw(), raw), "DATA re-encodes differently");
            }
        }
        _ => {}
    }
}

/// What the request handlers read, the way they read it.
fn handler_reads(message: &Message) {
    use std::hint::black_box;
    let transaction = message.transaction_id();
    black_box(
        message
            .attribute::<Username>()
            .map(|u| u.username().len())
            .ok(),
    );
    black_box(message.attribute::<Realm>().map(|r| r.realm().len()).ok());
    black_box(message.attribute::<Nonce>().map(|n| n.nonce().len()).ok());
    black_box(message.attribute::<PasswordAlgorithms>().is_ok());
    black_box(message.attribute::<PasswordAlgorithm>().is_ok());
    black_box(message.attribute::<Lifetime>().map(|l| l.seconds()).ok());
    black_box(
        message
            .attribute::<ChannelNumber>()
            .map(|c| c.channel())
            .ok(),
    );
    black_box(
        message
            .attribute::<XorPeerAddress>()
            .map(|p| p.addr(transaction))
            .ok(),
    );
    black_box(message.attribute::<Data>().map(|d| d.data().len()).ok());
    black_box(
        message
            .attribute::<RequestedTransport>()
            .map(|t| t.protocol())
            .ok(),
    );
    black_box(message.attribute::<EvenPort>().map(|e| e.requested()).ok());
    black_box(message.attribute::<RequestedAddressFamily>().is_ok());
    black_box(message.attribute::<AdditionalAddressFamily>().is_ok());
    black_box(
        message
            .attribute::<ReservationToken>()
            .map(|t| t.token())
            .ok(),
    );
    black_box(message.has_attribute(DontFragment::TYPE));
    // CreatePermission reads every XOR-PEER-ADDRESS in one pass.
    black_box(
        message
            .iter_attributes()
            .filter(|(_, raw)| raw.get_type() == XorPeerAddress::TYPE)
            .filter_map(|(_, raw)| XorPeerAddress::from_raw_ref(&raw).ok())
            .map(|peer| peer.addr(transaction))
            .fold(0u64, |sum, addr| sum ^ u64::from(addr.port())),
    );
    if message.has_attribute(MessageIntegrity::TYPE)
        || message.has_attribute(MessageIntegritySha256::TYPE)
    {
        COUNTS.bump(4);
        for algorithm in [IntegrityAlgorithm::Sha1, IntegrityAlgorithm::Sha256] {
            let key = LongTermKeyCredentials::new("alice".into(), "pass".into(), "turnx".into())
                .make_key(algorithm);
            black_box(message.validate_integrity_with_key(&key).is_ok());
        }
    }
}

/// Rebuilds `message` from its attributes (integrity and fingerprint
/// recomputed, as they cannot be copied) and compares.
fn rebuild(message: &Message, attributes: &[RawAttribute], data: &[u8], declared: usize) {
    let ending = [
        MessageIntegrity::TYPE,
        MessageIntegritySha256::TYPE,
        Fingerprint::TYPE,
    ];
    let mut builder = Message::builder(
        message.get_type(),
        message.transaction_id(),
        MessageWriteVec::new(),
    );
    let mut copied = Vec::new();
    let mut has_ending = false;
    for raw in attributes {
        if ending.contains(&raw.get_type()) {
            has_ending = true;
            continue;
        }
        if has_ending {
            // Nothing may follow integrity or fingerprint in what we write.
            break;
        }
        builder
            .add_attribute(raw)
            .unwrap_or_else(|err| panic!("re-adding {raw:?} failed: {err}"));
        copied.push(raw.clone());
    }
    let rebuilt = builder.finish();
    let again = Message::from_bytes(&rebuilt)
        .unwrap_or_else(|err| panic!("the rebuilt message does not decode: {err}"));
    assert_eq!(again.get_type(), message.get_type());
    assert_eq!(again.transaction_id(), message.transaction_id());
    let reparsed: Vec<RawAttribute> = again.iter_attributes().map(|(_, raw)| raw).collect();
    assert!(
        reparsed.len() == copied.len() && reparsed.iter().zip(&copied).all(|(a, b)| same(a, b)),
        "the rebuilt message has other attributes: {reparsed:?}, not {copied:?}"
    );
    if !has_ending && MessageHeader::LENGTH + declared == data.len() {
        assert_eq!(
            rebuilt,
            without_padding(data, attributes),
            "a message without integrity does not re-encode to its bytes"
        );
    }
}

/// `data` with every attribute's padding bytes set to zero, as encoders
/// write them.
fn without_padding(data: &[u8], attributes: &[RawAttribute]) -> Vec<u8> {
    let mut canonical = data.to_vec();
    let mut offset = MessageHeader::LENGTH;
    for raw in attributes {
        let len = raw.header.length() as usize;
        let padded = len.next_multiple_of(4);
        canonical[offset + 4 + len..offset + 4 + padded].fill(0);
        offset += 4 + padded;
    }
    canonical
}

fn channel_data(data: &[u8]) {
    let Ok(message) = ChannelData::parse(data) else {
        return;
    };
    COUNTS.bump(3);
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    assert!((0x4000..=0xFFFE).contains(&message.id()));
    assert_eq!(message.id(), u16::from_be_bytes([data[0], data[1]]));
    assert_eq!(message.data(), &data[4..4 + declared]);
    let mut encoded = vec![0; 4 + declared];
    assert_eq!(
        ChannelData::new(message.id(), message.data()).write_into_unchecked(&mut encoded),
        4 + declared
    );
    assert_eq!(encoded, data[..4 + declared]);
}

/// A few well-formed messages of each kind the server sees.
pub fn seeds() -> Vec<Vec<u8>> {
    crate::turn_core::seeds::messages()
}
