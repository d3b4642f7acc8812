//! Bandwidth limits: a token bucket per allocation and per user, each
//! direction apart (as coturn's `max-bps`). The kernel keeps the buckets of
//! bound channels in the [`MAP_BUCKETS`] array and the binding's map value
//! names them; userspace keeps its own for what it relays. Both use
//! [`Bucket::admit`].
//!
//! The bucket is in its GCRA form: one timestamp, the time at which the
//! bucket is empty again, rather than a token count refilled by a timer.

/// Name of the array of [`Bucket`]s, indexed by the `bucket` fields of
/// [`crate::ChannelTarget`] and [`crate::PeerTarget`]. Index 0 is no
/// limit (never read).
pub const MAP_BUCKETS: &str = "BUCKETS";

/// Entries of [`MAP_BUCKETS`] per entry of the binding maps: two
/// directions of an allocation and two of a user, for each binding at most.
pub const BUCKETS_PER_BINDING: u32 = 4;

/// A bucket index that means "no limit".
pub const NO_BUCKET: u32 = 0;

/// One direction's token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When, in nanoseconds of the clock the caller uses, everything
    /// admitted so far has drained at the rate.
    pub drained_ns: u64,
    /// What 1024 bytes cost at the rate, in nanoseconds.
    pub ns_per_kib: u64,
    /// How far ahead of the clock `drained_ns` may run: the burst.
    pub burst_ns: u64,
}

impl Bucket {
    /// A full bucket for `bytes_per_second` (above zero) with a burst of
    /// `burst_ns` nanoseconds at that rate.
    pub const fn new(bytes_per_second: u64, burst_ns: u64) -> Self {
        let per_second = if bytes_per_second == 0 {
            1
        } else {
            bytes_per_second
        };
        Bucket {
            drained_ns: 0,
            ns_per_kib: 1024 * 1_000_000_000 / per_second,
            burst_ns,
        }
    }

    /// Whether `bytes` may go at `now_ns`; if so they are taken from the
    /// bucket. A datagram is admitted while the bucket's backlog is within
    /// the burst, so the long-run rate is the bucket's and a burst is at
    /// most the burst plus one datagram.
    #[inline(always)]
    pub fn admit(&mut self, bytes: u64, now_ns: u64) -> bool {
        let start = if self.drained_ns > now_ns {
            self.drained_ns
        } else {
            now_ns
        };
        if start - now_ns > self.burst_ns {
            return false;
        }
        self.drained_ns = start + ((bytes * self.ns_per_kib) >> 10);
        true
    }
}

/// The buckets a binding's traffic is charged to, by direction (0: to the
/// peer, 1: to the client); [`NO_BUCKET`] where there is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    /// The allocation's buckets.
    pub allocation: [u32; 2],
    /// The user's buckets, shared by all their allocations.
    pub user: [u32; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Offered twice the rate for 10 s, the bucket admits the rate, plus
    /// the burst and one datagram.
    #[test]
    fn the_long_run_rate_is_the_buckets() {
        let mut bucket = Bucket::new(1_000_000, 20 * MS);
        let mut admitted = 0;
        // 1000-byte datagrams every 0.5 ms: 2 MB/s.
        for i in 0..20_000u64 {
            if bucket.admit(1000, i * MS / 2) {
                admitted += 1000;
            }
        }
        let expected = 10 * 1_000_000 + 20_000 + 1000;
        assert!(
            admitted <= expected && admitted >= expected - 2000,
            "{admitted}"
        );
    }

    #[test]
    fn an_idle_bucket_refills_only_to_the_burst() {
        let mut bucket = Bucket::new(1_000_000, 10 * MS);
        // After an idle minute: the burst (10 KB) and one more datagram.
        let now = 60_000 * MS;
        let admitted = (0..100).filter(|_| bucket.admit(1000, now)).count();
        assert_eq!(admitted, 11);
        // 1 ms later, 1000 bytes have drained: one more.
        assert!(bucket.admit(1000, now + MS));
        assert!(!bucket.admit(1000, now + MS));
    }
}
