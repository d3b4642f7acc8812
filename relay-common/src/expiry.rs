//! Binding lifetimes in the kernel maps (RFC 8656 allocations, permissions
//! and channel bindings all expire): the expiry a binding's map values
//! carry, in ticks of CLOCK_MONOTONIC.
//!
//! The daemon refreshes and removes bindings as their allocations,
//! permissions and channels live and die. Without a daemon (crashed,
//! upgraded, never restarted) the pinned maps would keep relaying for ever,
//! so each value carries its own end and the kernel programs refuse a
//! value past it: the frame then goes to the stack as for an unbound
//! channel.
//!
//! A tick is 2^[`TICK_SHIFT`] ns (about 1.07 s): coarse enough that a
//! `u32` spans 146 years of uptime, fine enough for lifetimes of minutes,
//! and a shift, not a division, in the kernel. The kernel reads
//! CLOCK_MONOTONIC_COARSE, which lags CLOCK_MONOTONIC by at most a jiffy,
//! so a value never ends early there either.

/// Bits of a nanosecond count below a tick: a tick is `1 << TICK_SHIFT` ns.
pub const TICK_SHIFT: u32 = 30;

/// The [`ChannelTarget::expires`](crate::ChannelTarget::expires) of a
/// binding that never expires (tests, benchmarks).
pub const NEVER: u32 = 0;

/// The tick of a CLOCK_MONOTONIC (or MONOTONIC_COARSE) time in ns. It
/// saturates, so that time past the last tick still counts as after every
/// expiry.
#[inline(always)]
pub const fn tick(monotonic_ns: u64) -> u32 {
    let tick = monotonic_ns >> TICK_SHIFT;
    if tick > u32::MAX as u64 {
        u32::MAX
    } else {
        tick as u32
    }
}

/// The expiry of a binding installed at `monotonic_ns` for `lifetime_ns`:
/// the first tick that starts at or after the end of its lifetime, so that
/// [`expired`] never holds before the lifetime is over (it may hold up to a
/// tick after). Saturates at `u32::MAX`, and is never [`NEVER`].
#[inline(always)]
pub const fn expires_after(monotonic_ns: u64, lifetime_ns: u64) -> u32 {
    let end = monotonic_ns.saturating_add(lifetime_ns);
    // Rounded up: a tick of which part lies within the lifetime is not
    // yet its end.
    let ticks = (end >> TICK_SHIFT) + (end & ((1 << TICK_SHIFT) - 1) != 0) as u64;
    if ticks > u32::MAX as u64 {
        u32::MAX
    } else if ticks == 0 {
        // Only at time 0 with no lifetime: tick 1 is past it, and 0 would
        // mean no expiry at all.
        1
    } else {
        ticks as u32
    }
}

/// Whether a binding with expiry `expires` is over at tick `now_tick`
/// (from [`tick`]). [`NEVER`] never is.
#[inline(always)]
pub const fn expired(expires: u32, now_tick: u32) -> bool {
    expires != NEVER && now_tick >= expires
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 1 << TICK_SHIFT;

    #[test]
    fn a_tick_is_the_time_shifted() {
        assert_eq!(tick(0), 0);
        assert_eq!(tick(TICK - 1), 0);
        assert_eq!(tick(TICK), 1);
        assert_eq!(tick(5 * TICK + 7), 5);
        assert_eq!(tick(u64::MAX), u32::MAX);
        assert_eq!(tick((u32::MAX as u64 + 1) * TICK), u32::MAX);
    }

    #[test]
    fn expiry_rounds_up_to_the_next_tick() {
        // Ending exactly on a tick: that tick.
        assert_eq!(expires_after(TICK, TICK), 2);
        // Ending one ns into a tick: the next one.
        assert_eq!(expires_after(TICK, TICK + 1), 3);
        assert_eq!(expires_after(TICK + 1, TICK), 3);
        assert_eq!(expires_after(0, 1), 1);
    }

    /// At no time before the end of its lifetime is a binding expired, and
    /// at most a tick after it, it is.
    #[test]
    fn never_expired_before_its_lifetime_and_soon_after() {
        let lifetimes = [1, TICK - 1, TICK, TICK + 1, 600_000_000_000, 3_600 * TICK];
        let starts = [0, 1, TICK - 1, TICK, 12_345_678_901_234, 1 << 50];
        for start in starts {
            for lifetime in lifetimes {
                let expires = expires_after(start, lifetime);
                let end = start + lifetime;
                assert!(!expired(expires, tick(end - 1)), "{start} {lifetime}");
                assert!(expired(expires, tick(end + TICK)), "{start} {lifetime}");
            }
        }
    }

    #[test]
    fn zero_means_no_expiry_and_is_never_an_expiry() {
        assert!(!expired(NEVER, 0));
        assert!(!expired(NEVER, u32::MAX));
        assert_eq!(expires_after(0, 0), 1);
        assert!(expired(expires_after(0, 0), tick(TICK)));
        assert!(!expired(expires_after(0, 0), tick(0)));
    }

    #[test]
    fn far_expiries_saturate() {
        assert_eq!(expires_after(u64::MAX, 1), u32::MAX);
        assert_eq!(expires_after(1 << 62, 1 << 62), u32::MAX);
        assert!(!expired(u32::MAX, u32::MAX - 1));
    }
}
