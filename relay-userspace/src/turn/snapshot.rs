//! An allocation's state as plain data, for a daemon that takes over from
//! another (a handover, an upgrade, a restart after a crash): what it needs
//! to go on answering the client's requests and relaying its data, with
//! every deadline as the time left, so that it means the same in another
//! process.
//!
//! Only UDP allocations are taken over: a TCP or TLS allocation lives as
//! long as its connection (RFC 8656 section 3.1), which ends with the
//! process that holds it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// One UDP allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationState {
    /// The client's address.
    pub client: SocketAddr,
    /// The listen address it talks to.
    pub server: SocketAddr,
    /// Its authenticated username; requests keep being checked against the
    /// configured credentials.
    pub username: String,
    /// Relayed addresses.
    pub relayed: Vec<SocketAddr>,
    /// Time left, in milliseconds.
    pub expires_in_ms: u64,
    /// The transaction id of the Allocate that made it, and the response,
    /// to answer a retransmission identically (hex).
    pub created_by: (String, String),
    /// Peer IPs with a permission, and the time left on each.
    pub permissions: Vec<(IpAddr, u64)>,
    /// Channels: number, peer, time left.
    pub channels: Vec<(u16, SocketAddr, u64)>,
    /// Channels in their cool-down after expiry: number, peer, time left.
    pub cooling: Vec<(u16, SocketAddr, u64)>,
}

/// A port kept by EVEN-PORT's R bit for a later Allocate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationState {
    /// The RESERVATION-TOKEN that redeems it.
    pub token: u64,
    /// The reserved relayed address.
    pub relayed: SocketAddr,
    /// Who may redeem it.
    pub username: String,
    /// Time left, in milliseconds.
    pub expires_in_ms: u64,
}

/// The relay-wide part: reservations, and how many tokens were minted (so
/// that a new daemon never mints one again).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    /// Tokens minted so far.
    pub tokens_issued: u64,
    /// Live reservations.
    pub reservations: Vec<ReservationState>,
}

/// Why a handed-over allocation was not taken over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Its lifetime ran out meanwhile.
    #[error("its lifetime ran out during the handover")]
    Expired,
    /// The client already has an allocation here.
    #[error("the client already holds an allocation")]
    Duplicate,
    /// A relayed address could not be bound again, or is not this relay's.
    #[error("its relayed address {0} could not be bound again")]
    Relayed(SocketAddr),
    /// The state is not one this relay can have made.
    #[error("the state does not hold together: {0}")]
    Malformed(&'static str),
}

/// `deadline` as time left at `now`, in milliseconds.
pub(super) fn left_ms(deadline: Instant, now: Instant) -> u64 {
    u64::try_from(deadline.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
}

/// The deadline `ms` milliseconds after `now`, less `elapsed` (the time
/// since the state was written).
pub(super) fn deadline(now: Instant, ms: u64, elapsed: Duration) -> Option<Instant> {
    let left = Duration::from_millis(ms).checked_sub(elapsed)?;
    (!left.is_zero()).then(|| now + left)
}

/// Lowercase hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex, if it is hex.
pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("00AB"), Some(vec![0, 0xab]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn deadlines_lose_the_time_the_handover_took() {
        let now = Instant::now();
        let at = deadline(now, 10_000, Duration::from_secs(4)).unwrap();
        assert_eq!(at - now, Duration::from_secs(6));
        assert_eq!(deadline(now, 3_000, Duration::from_secs(4)), None);
        assert_eq!(deadline(now, 4_000, Duration::from_secs(4)), None);
        assert_eq!(left_ms(now + Duration::from_millis(1500), now), 1500);
        assert_eq!(left_ms(now, now + Duration::from_secs(1)), 0);
    }
}
