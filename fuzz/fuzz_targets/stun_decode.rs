//! Fuzzes the decoding the TURN server does on what it receives: STUN
//! headers, messages, every attribute the handlers read, integrity
//! validation and ChannelData. Checks round trips and that nothing read
//! lies outside the input; see `turnx_fuzz::stun_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnx_fuzz::{counters, seeds, stun_decode};

fuzz_target!(
    init: {
        seeds::install(stun_decode::seeds);
        counters::print_at_exit("stun_decode", stun_decode::counts);
    },
    |data: &[u8]| stun_decode::check(data)
);
