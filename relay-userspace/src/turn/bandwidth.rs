//! Bandwidth limits per allocation and per user, each direction apart
//! (coturn's `max-bps`, and a share for one username), on the application
//! data the relay carries. What userspace relays is charged here; what the
//! kernel relays for bound channels is charged there, to buckets the
//! offload installs with the same limits (`crate::offload`). Both use
//! `relay_common::bandwidth::Bucket`.

use std::time::{Duration, Instant};

use relay_common::bandwidth::Bucket;

/// The limits, in application bytes a second; 0 for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Each allocation's, per direction.
    pub allocation: u64,
    /// Each username's, over all its allocations, per direction.
    pub user: u64,
    /// How much a bucket holds, as time at its rate.
    pub burst: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            allocation: 0,
            user: 0,
            burst: Duration::from_millis(500),
        }
    }
}

/// Which way data goes; the index of a direction's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to a peer.
    ToPeer = 0,
    /// From a peer to the client.
    ToClient = 1,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.allocation != 0 || self.user != 0
    }

    /// Full buckets for the two directions at `bytes_per_second`, or
    /// `None` without a limit.
    pub fn buckets(&self, bytes_per_second: u64) -> Option<[Bucket; 2]> {
        let burst = u64::try_from(self.burst.as_nanos()).unwrap_or(u64::MAX);
        (bytes_per_second != 0).then(|| [Bucket::new(bytes_per_second, burst); 2])
    }
}

/// The clock the buckets run on: nanoseconds since the first datagram
/// metered (the core reads no clock of its own).
#[derive(Debug, Default)]
pub struct Clock {
    epoch: Option<Instant>,
}

impl Clock {
    /// `now` in the buckets' nanoseconds.
    pub fn nanos(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}
