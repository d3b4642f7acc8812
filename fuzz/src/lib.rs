//! The code behind turnx's libFuzzer targets (`fuzz/fuzz_targets/`): each
//! target is one line that calls a `check` function here, so the harnesses
//! can share their helpers and stay readable.
//!
//! - [`stun_decode`]: what the server does with a STUN message or a
//!   ChannelData message it is given (decoding, attribute parsing, display);
//! - [`stream_framer`]: the TCP/TLS framer, fed in arbitrary pieces;
//! - [`turn_core`]: the sans-IO TURN server, driven by a sequence of
//!   messages that the harness signs with valid credentials;
//! - [`seeds`]: the starting corpora, generated rather than checked in;
//! - [`counters`]: what a run reached, printed at exit when
//!   `TURNX_FUZZ_DEBUG` is set.

pub mod counters;
pub mod seeds;
pub mod stream_framer;
pub mod stun_decode;
pub mod turn_core;
