//! Bounds on what unauthenticated UDP requests make the server send.
//!
//! The threat is reflection: an attacker forges a victim's source address
//! on small requests (Binding, a first Allocate) and lets the server answer
//! the victim. Refusing to answer would turn away every browser, so instead
//! the cost is bounded twice:
//! - each response is at most `ratio` times its request;
//! - the bytes answered to each source prefix (IPv4 /24, IPv6 /64, what one
//!   attacker can aim at with little effort) come out of a token bucket,
//!   and all prefixes together out of another. Whatever a bucket cannot pay
//!   for is dropped and counted.
//!
//! Memory is bounded too: at most [`MAX_TRACKED_PREFIXES`] buckets; when
//! every one is busy, further prefixes share one more bucket of the same
//! rate, so no prefix ever receives more than the per-prefix rate from it.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::policy::canonical;

/// Buckets kept at most (about 40 bytes each).
pub const MAX_TRACKED_PREFIXES: usize = 65_536;

/// The limits, as configured (`[limits]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Largest response to request size ratio.
    pub ratio: f64,
    /// Bytes per second answered to one source prefix; 0: no limit.
    pub prefix_bytes_per_sec: u32,
    /// How many bytes one prefix may draw at once.
    pub prefix_burst_bytes: u32,
    /// Bytes per second answered to all prefixes together; 0: no limit.
    pub total_bytes_per_sec: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 3.0,
            prefix_bytes_per_sec: 16_384,
            prefix_burst_bytes: 65_536,
            total_bytes_per_sec: 4_194_304,
        }
    }
}

/// Why a response may not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It is more than `ratio` times its request.
    Ratio,
    /// The source prefix, or all prefixes together, spent their budget.
    Budget,
}

/// A source prefix: IPv4 /24 or IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Prefix {
    fn of(ip: IpAddr) -> Prefix {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let octets = v6.octets();
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&octets[..8]);
                Prefix::V6(prefix)
            }
        }
    }
}

/// A token bucket of bytes.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, capacity: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.updated = now;
    }
}

/// The per-prefix and total buckets. Reads no clock: `now` is an input.
#[derive(Debug)]
pub struct ResponseBudget {
    config: BudgetConfig,
    prefixes: HashMap<Prefix, Bucket>,
    /// Shared by prefixes that found the table full.
    overflow: Option<Bucket>,
    total: Option<Bucket>,
    last_sweep: Option<Instant>,
}

/// How often a full table is swept for idle buckets at most, so that a
/// flood of new prefixes does not make every packet scan the table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl ResponseBudget {
    /// Empty buckets for `config`.
    pub fn new(config: BudgetConfig) -> Self {
        ResponseBudget {
            config,
            prefixes: HashMap::new(),
            overflow: None,
            total: None,
            last_sweep: None,
        }
    }

    /// Applies new limits (a reload), keeping the buckets: their tokens are
    /// capped by the new burst at their next refill, so a source gains
    /// nothing from the change and loses no more than the new limits say.
    pub fn set_config(&mut self, config: BudgetConfig) {
        self.config = config;
    }

    /// The largest response `request_len` bytes may draw.
    pub fn max_response(&self, request_len: usize) -> usize {
        (request_len as f64 * self.config.ratio) as usize
    }

    /// Whether `source` may be sent a `response_len`-byte answer to a
    /// `request_len`-byte request now; if so, its budget pays for it.
    pub fn charge(
        &mut self,
        source: IpAddr,
        request_len: usize,
        response_len: usize,
        now: Instant,
    ) -> Result<(), Refused> {
        if response_len > self.max_response(request_len) {
            return Err(Refused::Ratio);
        }
        let cost = response_len as f64;
        let config = self.config;
        let prefix_rate = f64::from(config.prefix_bytes_per_sec);
        let prefix_capacity = f64::from(config.prefix_burst_bytes.max(1));
        let total_rate = f64::from(config.total_bytes_per_sec);
        // One second of the total rate, and never less than one prefix's burst.
        let total_capacity = total_rate.max(prefix_capacity);

        let total = (config.total_bytes_per_sec != 0).then(|| {
            let bucket = self
                .total
                .get_or_insert_with(|| Bucket::full(total_capacity, now));
            bucket.refill(now, total_rate, total_capacity);
            bucket
        });
        if total.as_ref().is_some_and(|bucket| bucket.tokens < cost) {
            return Err(Refused::Budget);
        }
        if config.prefix_bytes_per_sec != 0 {
            let bucket = Self::prefix_bucket(
                &mut self.prefixes,
                &mut self.overflow,
                &mut self.last_sweep,
                Prefix::of(source),
                (prefix_rate, prefix_capacity),
                now,
            );
            bucket.refill(now, prefix_rate, prefix_capacity);
            if bucket.tokens < cost {
                return Err(Refused::Budget);
            }
            bucket.tokens -= cost;
        }
        if let Some(total) = &mut self.total {
            total.tokens -= cost;
        }
        Ok(())
    }

    /// The bucket of `prefix`: its own, a new one, or the shared overflow
    /// bucket when the table is full of busy prefixes.
    fn prefix_bucket<'a>(
        prefixes: &'a mut HashMap<Prefix, Bucket>,
        overflow: &'a mut Option<Bucket>,
        last_sweep: &mut Option<Instant>,
        prefix: Prefix,
        (rate, capacity): (f64, f64),
        now: Instant,
    ) -> &'a mut Bucket {
        if !prefixes.contains_key(&prefix) && prefixes.len() >= MAX_TRACKED_PREFIXES {
            let due = last_sweep.is_none_or(|last| now >= last + SWEEP_INTERVAL);
            if due {
                *last_sweep = Some(now);
                // A bucket that has refilled is the same as a new one.
                prefixes.retain(|_, bucket| {
                    let mut probe = *bucket;
                    probe.refill(now, rate, capacity);
                    probe.tokens < capacity
                });
            }
            if prefixes.len() >= MAX_TRACKED_PREFIXES {
                return overflow.get_or_insert_with(|| Bucket::full(capacity, now));
            }
        }
        prefixes
            .entry(prefix)
            .or_insert_with(|| Bucket::full(capacity, now))
    }

    /// Buckets in the table, for tests and metrics.
    pub fn tracked_prefixes(&self) -> usize {
        self.prefixes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn config() -> BudgetConfig {
        BudgetConfig {
            ratio: 3.0,
            prefix_bytes_per_sec: 1000,
            prefix_burst_bytes: 2000,
            total_bytes_per_sec: 10_000,
        }
    }

    #[test]
    fn ratio_is_checked_first() {
        let mut budget = ResponseBudget::new(config());
        let now = Instant::now();
        assert_eq!(
            budget.charge(ip("198.18.0.1"), 20, 61, now),
            Err(Refused::Ratio)
        );
        assert_eq!(budget.charge(ip("198.18.0.1"), 20, 60, now), Ok(()));
    }

    #[test]
    fn a_prefix_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let mut budget = ResponseBudget::new(config());
        let start = Instant::now();
        // 2000 bytes of burst: 40 responses of 50 bytes, from anywhere in
        // the /24.
        for host in 0..40u8 {
            let source = IpAddr::from([198, 18, 0, host]);
            assert_eq!(budget.charge(source, 28, 50, start), Ok(()), "{host}");
        }
        assert_eq!(
            budget.charge(ip("198.18.0.200"), 28, 50, start),
            Err(Refused::Budget)
        );
        // Another /24 still has its own budget.
        assert_eq!(budget.charge(ip("198.18.1.1"), 28, 50, start), Ok(()));
        // A tenth of a second refills 100 bytes: two more responses.
        let later = start + Duration::from_millis(100);
        assert_eq!(budget.charge(ip("198.18.0.9"), 28, 50, later), Ok(()));
        assert_eq!(budget.charge(ip("198.18.0.9"), 28, 50, later), Ok(()));
        assert_eq!(
            budget.charge(ip("198.18.0.9"), 28, 50, later),
            Err(Refused::Budget)
        );
    }

    #[test]
    fn ipv6_prefixes_are_slash_64_and_mapped_ipv4_is_ipv4() {
        let mut budget = ResponseBudget::new(config());
        let now = Instant::now();
        assert_eq!(budget.charge(ip("fd00:1:2:3::1"), 700, 2000, now), Ok(()));
        assert_eq!(
            budget.charge(ip("fd00:1:2:3:ffff::9"), 28, 1, now),
            Err(Refused::Budget),
            "same /64"
        );
        assert_eq!(budget.charge(ip("fd00:1:2:4::1"), 28, 50, now), Ok(()));
        assert_eq!(budget.charge(ip("198.18.0.1"), 700, 2000, now), Ok(()));
        assert_eq!(
            budget.charge(ip("::ffff:198.18.0.77"), 28, 1, now),
            Err(Refused::Budget)
        );
    }

    #[test]
    fn the_total_bounds_all_prefixes_together() {
        let mut budget = ResponseBudget::new(config());
        let now = Instant::now();
        // 10 000 bytes in all: five prefixes' bursts.
        for prefix in 0..5u8 {
            let source = IpAddr::from([198, 18, prefix, 1]);
            assert_eq!(budget.charge(source, 700, 2000, now), Ok(()));
        }
        assert_eq!(
            budget.charge(ip("198.18.9.1"), 28, 50, now),
            Err(Refused::Budget)
        );
    }

    #[test]
    fn memory_is_bounded_and_busy_prefixes_share_the_overflow_bucket() {
        let mut budget = ResponseBudget::new(BudgetConfig {
            total_bytes_per_sec: 0,
            ..config()
        });
        let now = Instant::now();
        // Every prefix spends part of its burst, so none is idle; the last
        // ten find the table full.
        for index in 0..MAX_TRACKED_PREFIXES as u32 + 10 {
            let [_, a, b, c] = index.to_be_bytes();
            let source = IpAddr::from([11 + a, b, c, 1]);
            assert_eq!(budget.charge(source, 28, 50, now), Ok(()));
        }
        assert_eq!(budget.tracked_prefixes(), MAX_TRACKED_PREFIXES);
        // The overflow bucket holds one burst for every untracked prefix.
        let mut answered = 0;
        for host in 0..100u8 {
            if budget
                .charge(IpAddr::from([250, 0, 0, host]), 28, 50, now)
                .is_ok()
            {
                answered += 1;
            }
            if budget
                .charge(IpAddr::from([251, 0, 0, host]), 28, 50, now)
                .is_ok()
            {
                answered += 1;
            }
        }
        assert_eq!(answered, 40 - 10, "2000 bytes in all, 10 used before");
        // Once the busy buckets have refilled, a sweep frees them.
        let later = now + Duration::from_secs(3);
        assert_eq!(budget.charge(ip("252.0.0.1"), 28, 50, later), Ok(()));
        assert_eq!(budget.tracked_prefixes(), 1);
    }

    #[test]
    fn zero_rates_mean_no_limit() {
        let mut budget = ResponseBudget::new(BudgetConfig {
            prefix_bytes_per_sec: 0,
            total_bytes_per_sec: 0,
            ..config()
        });
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(budget.charge(ip("198.18.0.1"), 28, 80, now), Ok(()));
        }
        assert_eq!(budget.tracked_prefixes(), 0);
    }
}
