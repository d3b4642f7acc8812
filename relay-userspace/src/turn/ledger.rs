//! What the shards of one relay share: the counts the quotas are checked
//! against, the port reservations, the users' bandwidth buckets, the
//! response budget for unauthenticated requests, and the set of relayed
//! addresses.
//!
//! A relay may run several [`super::Server`]s, each owning the allocations
//! of the clients its listener sockets receive (see `crate::shell`). Each
//! of these things is about the relay as a whole, so they live here, behind
//! one lock. Nothing on the data path takes it unless users have a
//! bandwidth limit: it is taken to create or delete an allocation, to
//! reserve or redeem a port, to answer a request that is not
//! authenticated, and to translate a peer address that is a public address
//! of this relay.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use relay_common::bandwidth::Bucket;

use super::{
    amplification::{BudgetConfig, ResponseBudget},
    bandwidth::Clock,
    reservation::Reservations,
};

/// The relay-wide books of every shard.
pub struct Ledger {
    books: Mutex<Books>,
}

/// The books themselves, read and written under the ledger's lock.
pub(super) struct Books {
    /// Allocations and reservations per username.
    per_user: HashMap<String, u32>,
    /// Allocations of every shard.
    allocations: u32,
    /// Ports reserved by EVEN-PORT, redeemable from any shard.
    pub(super) reservations: Reservations,
    /// Each username's bandwidth buckets, if users have a limit.
    pub(super) user_meters: HashMap<String, [Bucket; 2]>,
    /// The buckets' clock.
    pub(super) clock: Clock,
    /// Bounds on responses to unauthenticated requests.
    pub(super) budget: ResponseBudget,
    /// The relayed addresses of every shard's allocations.
    relayed: HashSet<SocketAddr>,
}

impl Ledger {
    /// Empty books. `key` must be random and secret: it keys reservation
    /// tokens.
    pub fn new(key: [u8; 32], budget: BudgetConfig) -> Arc<Self> {
        Arc::new(Ledger {
            books: Mutex::new(Books {
                per_user: HashMap::new(),
                allocations: 0,
                reservations: Reservations::new(key),
                user_meters: HashMap::new(),
                clock: Clock::default(),
                budget: ResponseBudget::new(budget),
                relayed: HashSet::new(),
            }),
        })
    }

    /// The books, locked.
    pub(super) fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().expect("ledger lock")
    }
}

impl Books {
    /// Allocations and reservations held by `username`.
    pub(super) fn held_by(&self, username: &str) -> u32 {
        self.per_user.get(username).copied().unwrap_or(0)
    }

    /// Allocations and reservations held in all.
    pub(super) fn held_in_all(&self) -> u32 {
        self.allocations + self.reservations.count()
    }

    /// `username` holds one more allocation or reservation.
    pub(super) fn count_user(&mut self, username: &str) {
        *self.per_user.entry(username.to_owned()).or_insert(0) += 1;
    }

    /// `username` holds one fewer; a user holding nothing loses its
    /// bandwidth buckets too.
    pub(super) fn uncount_user(&mut self, username: &str) {
        if let Some(count) = self.per_user.get_mut(username) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(username);
                self.user_meters.remove(username);
            }
        }
    }

    /// A shard created an allocation on `relayed` for `username`.
    pub(super) fn allocated(&mut self, username: &str, relayed: &[SocketAddr]) {
        self.allocations += 1;
        self.relayed.extend(relayed);
        self.count_user(username);
    }

    /// A shard deleted an allocation on `relayed` of `username`.
    pub(super) fn deleted(&mut self, username: &str, relayed: &[SocketAddr]) {
        self.allocations -= 1;
        for address in relayed {
            self.relayed.remove(address);
        }
        self.uncount_user(username);
    }

    /// Whether some shard's allocation is on `relayed`.
    pub(super) fn is_relayed(&self, relayed: &SocketAddr) -> bool {
        self.relayed.contains(relayed)
    }

    /// When the earliest reservation of any shard expires.
    pub(super) fn next_reservation_expiry(&self) -> Option<Instant> {
        self.reservations.next_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn counts_follow_allocations_and_reservations_of_every_shard() {
        let ledger = Ledger::new([1; 32], BudgetConfig::default());
        let mut books = ledger.books();
        books.allocated("alice", &[addr("198.18.0.1:50000")]);
        books.allocated("alice", &[addr("198.18.0.1:50002")]);
        books.allocated("bob", &[addr("198.18.0.1:50004")]);
        let token = books.reservations.mint();
        let now = Instant::now();
        books
            .reservations
            .insert(token, addr("198.18.0.1:50005"), "bob", now);
        books.count_user("bob");
        assert_eq!(books.held_by("alice"), 2);
        assert_eq!(books.held_by("bob"), 2);
        assert_eq!(books.held_in_all(), 4);
        assert!(books.is_relayed(&addr("198.18.0.1:50002")));
        assert!(
            !books.is_relayed(&addr("198.18.0.1:50005")),
            "reserved only"
        );

        books.deleted("alice", &[addr("198.18.0.1:50002")]);
        assert!(!books.is_relayed(&addr("198.18.0.1:50002")));
        assert_eq!(books.held_by("alice"), 1);
        assert_eq!(books.held_in_all(), 3);
        books.deleted("alice", &[addr("198.18.0.1:50000")]);
        assert_eq!(books.held_by("alice"), 0);
        assert!(!books.per_user.contains_key("alice"), "forgotten at zero");
    }
}
