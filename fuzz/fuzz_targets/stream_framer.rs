//! Fuzzes the TCP/TLS stream framer with the same stream cut at points
//! taken from the input: frames are the stream's bytes, as long as their
//! headers say, none held back, whatever the cuts; see
//! `turnx_fuzz::stream_framer`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnx_fuzz::{counters, seeds, stream_framer};

fuzz_target!(
    init: {
        seeds::install(stream_framer::seeds);
        counters::print_at_exit("stream_framer", stream_framer::counts);
    },
    |data: &[u8]| stream_framer::check(data)
);
