//! Re-signing: turns whatever request the fuzzer wrote into one that
//! authenticates, so that mutated Allocate, Refresh, CreatePermission and
//! ChannelBind bodies reach the handlers behind the integrity check.
//!
//! The request's type, transaction and other attributes are kept, in
//! order; USERNAME, REALM and NONCE are replaced by valid ones,
//! MESSAGE-INTEGRITY (or -SHA256) is computed with the long-term key, and
//! FINGERPRINT is recomputed when the request had one. Attributes are read
//! leniently (a stale FINGERPRINT, a bad length further on), since the
//! point is to keep what the fuzzer mutated.

use stun_types::{
    attribute::{
        Attribute, AttributeStaticType, Fingerprint, MessageIntegrity, MessageIntegritySha256,
        Nonce, PasswordAlgorithm, PasswordAlgorithmValue, PasswordAlgorithms, RawAttribute, Realm,
        Userhash, Username,
    },
    message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageHeader,
        MessageWrite, MessageWriteExt, MessageWriteVec,
    },
};
use turn_types::attribute::ReservationToken;

/// RFC 8489's nonce cookie: such a nonce needs PASSWORD-ALGORITHMS echoed.
const NONCE_COOKIE: &str = "obMatJos2";

/// The algorithms the server offers, in its order (`challenge.rs`).
const OFFERED: [PasswordAlgorithmValue; 2] =
    [PasswordAlgorithmValue::SHA256, PasswordAlgorithmValue::MD5];

/// Who signs, and with which nonce.
pub struct Signing<'a> {
    /// USERNAME.
    pub username: &'a str,
    /// The password the key is made of (wrong on purpose when asked).
    pub password: &'a str,
    /// REALM.
    pub realm: &'a str,
    /// NONCE, as the server last gave it to this client.
    pub nonce: &'a str,
}

/// How to sign, from the chunk's parameter byte.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY (bit 0).
    pub sha256: bool,
    /// Sign with a wrong password (bit 1): the integrity check fails late.
    pub wrong_password: bool,
    /// Keep the request's PASSWORD-ALGORITHM(S) instead of writing the
    /// right ones (bit 2).
    pub keep_algorithms: bool,
    /// Replace RESERVATION-TOKEN by one the server issued (bit 3).
    pub known_token: bool,
    /// Choose MD5 rather than SHA-256 in PASSWORD-ALGORITHM (bit 4).
    pub md5: bool,
}

impl Options {
    /// Reads the parameter byte.
    pub fn from_bits(bits: u8) -> Self {
        Options {
            sha256: bits & 1 != 0,
            wrong_password: bits & 2 != 0,
            keep_algorithms: bits & 4 != 0,
            known_token: bits & 8 != 0,
            md5: bits & 16 != 0,
        }
    }

    /// The integrity algorithm.
    pub fn algorithm(self) -> IntegrityAlgorithm {
        if self.sha256 {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        }
    }
}

/// Whether `payload` starts with the header of a STUN request: what
/// [`resign`] signs.
pub fn is_request(payload: &[u8]) -> bool {
    MessageHeader::from_bytes(payload)
        .is_ok_and(|header| header.get_type().class() == MessageClass::Request)
}

/// The attributes of `payload` after its header, as far as they parse.
fn lenient_attributes(payload: &[u8]) -> impl Iterator<Item = RawAttribute<'_>> {
    let mut offset = MessageHeader::LENGTH;
    std::iter::from_fn(move || {
        let raw = RawAttribute::from_bytes(payload.get(offset..)?).ok()?;
        offset += 4 + usize::from(raw.length()).next_multiple_of(4);
        Some(raw)
    })
}

/// `payload` re-signed as described in the module documentation, or `None`
/// when it is not a STUN request (it then goes to the server as it is).
/// `tokens` are the reservation tokens the server has issued.
pub fn resign(
    payload: &[u8],
    signing: &Signing,
    options: Options,
    tokens: &[u64],
) -> Option<Vec<u8>> {
    if !is_request(payload) {
        return None;
    }
    let header = MessageHeader::from_bytes(payload).ok()?;
    let cookie = signing.nonce.starts_with(NONCE_COOKIE);
    let mut fingerprint = false;
    let mut builder = Message::builder(
        header.get_type(),
        header.transaction_id(),
        MessageWriteVec::new(),
    );
    for raw in lenient_attributes(payload) {
        match raw.get_type() {
            // Replaced below.
            Username::TYPE
            | Userhash::TYPE
            | Realm::TYPE
            | Nonce::TYPE
            | MessageIntegrity::TYPE
            | MessageIntegritySha256::TYPE => {}
            Fingerprint::TYPE => fingerprint = true,
            PasswordAlgorithm::TYPE | PasswordAlgorithms::TYPE
                if cookie && !options.keep_algorithms => {}
            ReservationToken::TYPE if options.known_token && !tokens.is_empty() => {
                let pick = raw.value.first().copied().unwrap_or(0);
                let token = tokens[usize::from(pick) % tokens.len()];
                builder.add_attribute(&ReservationToken::new(token)).ok()?;
            }
            // An attribute that no longer fits ends the request there.
            _ => {
                if builder.add_attribute(&raw).is_err() {
                    break;
                }
            }
        }
    }
    builder
        .add_attribute(&Username::new(signing.username).ok()?)
        .ok()?;
    builder
        .add_attribute(&Realm::new(signing.realm).ok()?)
        .ok()?;
    builder
        .add_attribute(&Nonce::new(signing.nonce).ok()?)
        .ok()?;
    if cookie && !options.keep_algorithms {
        builder
            .add_attribute(&PasswordAlgorithms::new(&OFFERED))
            .ok()?;
        let chosen = if options.md5 { OFFERED[1] } else { OFFERED[0] };
        builder
            .add_attribute(&PasswordAlgorithm::new(chosen))
            .ok()?;
    }
    let algorithm = options.algorithm();
    let key = LongTermKeyCredentials::new(
        signing.username.to_owned(),
        signing.password.to_owned(),
        signing.realm.to_owned(),
    )
    .make_key(algorithm);
    builder
        .add_message_integrity_with_key(&key, algorithm)
        .ok()?;
    if fingerprint {
        builder.add_fingerprint().ok()?;
    }
    Some(builder.finish())
}
