//! Fuzzes the sans-IO TURN core with sequences of messages from four
//! clients and from peers, re-signing requests with valid long-term
//! credentials so mutated bodies reach the authenticated handlers. Checks
//! responses, amplification bounds, relaying, lifecycle events, quotas and
//! the allocator's bookkeeping; see `turnx_fuzz::turn_core`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnx_fuzz::{counters, seeds, turn_core};

fuzz_target!(
    init: {
        seeds::install(turn_core::seeds::chunks);
        counters::print_at_exit("turn_core", turn_core::counts);
    },
    |data: &[u8]| turn_core::check(data)
);
