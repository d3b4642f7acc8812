//! Port reservations (RFC 8656 sections 7.1 and 14.8): an Allocate with
//! EVEN-PORT and the R bit gets an even port and keeps the next one for a
//! later Allocate, which names it by a RESERVATION-TOKEN. RTP/RTCP clients
//! (coturn's `turnutils_uclient` by default) allocate that way.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::snapshot::{LedgerState, ReservationState, left_ms};

/// How long a reserved port is kept (RFC 8656 section 7.2: "about 30
/// seconds").
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// A RESERVATION-TOKEN value (8 bytes).
pub type Token = u64;

/// One reserved relayed address.
#[derive(Clone, Debug)]
pub struct Reservation {
    /// The relayed address kept for the token's holder.
    pub relayed: SocketAddr,
    /// The user who reserved it; only that user may redeem it.
    pub username: String,
    /// When the address goes back to the pool.
    pub expires: Instant,
}

/// Why a token cannot be redeemed (508 to the client, RFC 8656 section 7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Never issued, already redeemed, or expired and released.
    Unknown,
    /// Issued to another user.
    OtherUser,
}

/// The live reservations, by token. Tokens are unguessable: a keyed hash of
/// a counter.
pub struct Reservations {
    key: [u8; 32],
    issued: u64,
    by_token: HashMap<Token, Reservation>,
}

impl Reservations {
    /// No reservations; `key` must be secret.
    pub fn new(key: [u8; 32]) -> Self {
        Reservations {
            key,
            issued: 0,
            by_token: HashMap::new(),
        }
    }

    /// A fresh token, not yet holding anything.
    pub fn mint(&mut self) -> Token {
        self.issued += 1;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(b"turnx reservation token");
        mac.update(&self.issued.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&digest[..8]);
        Token::from_be_bytes(bytes)
    }

    /// Reserves `relayed` for `username` under `token` (from
    /// [`Self::mint`]) until `now` plus the lifetime.
    pub fn insert(&mut self, token: Token, relayed: SocketAddr, username: &str, now: Instant) {
        self.by_token.insert(
            token,
            Reservation {
                relayed,
                username: username.to_owned(),
                expires: now + RESERVATION_LIFETIME,
            },
        );
    }

    /// Takes the reservation of `token` for `username`: it is gone
    /// afterwards, so a token works once.
    pub fn redeem(
        &mut self,
        token: Token,
        username: &str,
        now: Instant,
    ) -> Result<Reservation, TokenError> {
        match self.by_token.get(&token) {
            None => Err(TokenError::Unknown),
            Some(reservation) if reservation.expires <= now => Err(TokenError::Unknown),
            Some(reservation) if reservation.username != username => Err(TokenError::OtherUser),
            Some(_) => Ok(self.by_token.remove(&token).expect("looked up above")),
        }
    }

    /// Removes and returns the reservations that have expired at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Reservation> {
        let expired: Vec<Token> = self
            .by_token
            .iter()
            .filter(|(_, reservation)| reservation.expires <= now)
            .map(|(token, _)| *token)
            .collect();
        expired
            .iter()
            .filter_map(|token| self.by_token.remove(token))
            .collect()
    }

    /// Removes and returns every reservation, for shutdown.
    pub fn drain(&mut self) -> Vec<Reservation> {
        self.by_token
            .drain()
            .map(|(_, reservation)| reservation)
            .collect()
    }

    /// The earliest expiry, if any.
    /// Live reservations as plain data, deadlines as time left at `now`,
    /// and the count of tokens minted.
    pub fn snapshot(&self, now: Instant) -> LedgerState {
        let mut reservations: Vec<ReservationState> = self
            .by_token
            .iter()
            .map(|(token, reservation)| ReservationState {
                token: *token,
                relayed: reservation.relayed,
                username: reservation.username.clone(),
                expires_in_ms: left_ms(reservation.expires, now),
            })
            .collect();
        reservations.sort_unstable_by_key(|reservation| reservation.token);
        LedgerState {
            tokens_issued: self.issued,
            reservations,
        }
    }

    /// Mints from after `issued` from now on, so that no token another
    /// daemon handed out (under the same key) comes out again.
    pub fn continue_from(&mut self, issued: u64) {
        self.issued = self.issued.max(issued);
    }

    /// Takes over a reservation another daemon made.
    pub fn restore(&mut self, token: Token, relayed: SocketAddr, username: &str, expires: Instant) {
        self.by_token.insert(
            token,
            Reservation {
                relayed,
                username: username.to_owned(),
                expires,
            },
        );
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_token.values().map(|r| r.expires).min()
    }

    /// Reservations held in all.
    pub fn count(&self) -> u32 {
        self.by_token.len() as u32
    }
}
