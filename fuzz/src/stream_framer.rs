//! The framer that cuts a TCP or TLS byte stream into STUN and ChannelData
//! messages (`turnx::shell::framing::StreamFramer`), fed the same stream in
//! pieces cut at points taken from the input.
//!
//! Input: one byte `k` (taken modulo 17), `k` big-endian u16 cut points
//! (each modulo the stream's length plus one), then the stream.
//!
//! Properties checked:
//! - the frames, concatenated, are a prefix of the stream;
//! - each frame is as long as its header says: STUN 20 + length,
//!   ChannelData 4 + length rounded up to a multiple of 4;
//! - what is left is either refused (its first byte is neither STUN nor
//!   ChannelData) or an incomplete frame: no complete frame is held back;
//! - cutting the stream differently (at the input's points, and byte by
//!   byte) yields the same frames and the same refusal.

use turnx::shell::framing::{NotTurn, StreamFramer};

use crate::counters::Counters;

/// What the inputs produced.
pub static COUNTS: Counters<4> =
    Counters::new(["inputs", "stun_frames", "channel_frames", "refused"]);

/// Prints [`COUNTS`] (for [`crate::counters::print_at_exit`]).
pub fn counts() -> String {
    COUNTS.line()
}

/// Byte-by-byte framing is quadratic in the framer's buffer copies; only
/// streams up to this long get it.
const BYTEWISE_MAX: usize = 512;

/// What one way of feeding the stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    /// The first byte of the frame the framer refused, if it refused one.
    refused: Option<u8>,
}

/// Checks one input.
pub fn check(data: &[u8]) {
    COUNTS.bump(0);
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let header = (2 * usize::from(count % 17)).min(rest.len() & !1);
    let (cut_bytes, stream) = rest.split_at(header);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|pair| usize::from(u16::from_be_bytes([pair[0], pair[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = feed(stream, &[]);
    check_outcome(stream, &whole);
    assert_eq!(feed(stream, &cuts), whole, "cut at {cuts:?}");
    if stream.len() <= BYTEWISE_MAX {
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(feed(stream, &every), whole, "fed byte by byte");
    }
    for frame in &whole.frames {
        COUNTS.bump(if frame[0] >> 6 == 0 { 1 } else { 2 });
    }
    if whole.refused.is_some() {
        COUNTS.bump(3);
    }
}

/// Pushes `stream` cut at `cuts` (sorted offsets) and takes every frame
/// after each push, as the shell's reader does.
fn feed(stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut framer = StreamFramer::default();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        framer.push(&stream[start..end]);
        start = end;
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                // The shell closes the connection here.
                Err(NotTurn(byte)) => {
                    return Outcome {
                        frames,
                        refused: Some(byte),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        refused: None,
    }
}

/// The length of the frame whose header starts `bytes`, if it is STUN or
/// ChannelData and its length field is there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let declared = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    match bytes[0] >> 6 {
        0b00 => Some(20 + declared),
        0b01 => Some((4 + declared).next_multiple_of(4)),
        _ => None,
    }
}

fn check_outcome(stream: &[u8], outcome: &Outcome) {
    let mut consumed = 0;
    for frame in &outcome.frames {
        let expected = frame_len(frame).unwrap_or_else(|| {
            panic!("a frame starts with neither STUN nor ChannelData: {frame:02x?}")
        });
        assert_eq!(
            frame.len(),
            expected,
            "frame at {consumed} is not the length its header says"
        );
        assert_eq!(
            frame[..],
            stream[consumed..consumed + frame.len()],
            "frame at {consumed} is not the stream's bytes"
        );
        consumed += frame.len();
    }
    let rest = &stream[consumed..];
    match outcome.refused {
        Some(byte) => {
            assert_eq!(
                rest.first(),
                Some(&byte),
                "the refused byte starts what is left"
            );
            assert!(byte >> 6 >= 2, "refused a frame starting {byte:#04x}");
            assert!(rest.len() >= 4, "refused with only {} bytes", rest.len());
        }
        None => {
            if rest.len() >= 4 {
                let needed = frame_len(rest).unwrap_or_else(|| {
                    panic!(
                        "{} bytes starting {:#04x} neither framed nor refused",
                        rest.len(),
                        rest[0]
                    )
                });
                assert!(
                    rest.len() < needed,
                    "a complete {needed}-byte frame was held back ({} bytes left)",
                    rest.len()
                );
            }
        }
    }
}

/// Streams of a few messages, with cut points inside headers and bodies.
pub fn seeds() -> Vec<Vec<u8>> {
    let messages = crate::turn_core::seeds::messages();
    let mut seeds = Vec::new();
    for window in messages.windows(3) {
        let mut stream: Vec<u8> = window.concat();
        // Stream ChannelData is padded; the seed messages are already.
        let len = stream.len() as u16;
        let mut seed = vec![3];
        for cut in [2u16, 21, len / 2] {
            seed.extend_from_slice(&cut.to_be_bytes());
        }
        seed.append(&mut stream);
        seeds.push(seed);
    }
    // A refusal after a good frame.
    let mut refused = vec![0];
    refused.extend_from_slice(&messages[0]);
    refused.extend_from_slice(&[0x80, 0, 0, 0]);
    seeds.push(refused);
    seeds
}
