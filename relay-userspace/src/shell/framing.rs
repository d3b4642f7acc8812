//! Splits a TCP or TLS byte stream into STUN and ChannelData messages
//! (RFC 8656 section 12.5: on streams ChannelData is padded to a multiple of
//! four bytes, and the padding is part of the frame).

use thiserror::Error;

/// The stream cannot be a TURN stream; the connection should be closed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the stream carries neither STUN nor ChannelData (first byte {0:#04x})")]
pub struct NotTurn(pub u8);

/// Buffers stream bytes and hands out whole messages.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buffer: Vec<u8>,
}

/// Largest frame: a STUN header and the largest length it declares (a
/// ChannelData header, 65535 bytes and padding are 3 bytes fewer).
const MAX_FRAME: usize = 20 + 65535;

impl StreamFramer {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, NotTurn> {
        let Some(&first) = self.buffer.first() else {
            return Ok(None);
        };
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let declared = u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize;
        let frame_len = match first >> 6 {
            0b00 => 20 + declared,
            0b01 => (4 + declared).next_multiple_of(4),
            _ => return Err(NotTurn(first)),
        };
        debug_assert!(frame_len <= MAX_FRAME, "{frame_len} > {MAX_FRAME}");
        if self.buffer.len() < frame_len {
            return Ok(None);
        }
        let rest = self.buffer.split_off(frame_len);
        Ok(Some(std::mem::replace(&mut self.buffer, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::frame::{channel_data, stun_binding_request};

    /// The largest lengths either kind declares are frames, not faults.
    #[test]
    fn the_largest_declared_lengths_are_waited_for() {
        for header in [[0x00, 0x01, 0xFF, 0xFF], [0x40, 0x00, 0xFF, 0xFF]] {
            let mut framer = StreamFramer::default();
            framer.push(&header);
            framer.push(&[0; 16]);
            assert_eq!(framer.next_frame(), Ok(None), "{header:02x?}");
        }
        let mut framer = StreamFramer::default();
        let mut stun = vec![0x00, 0x01, 0xFF, 0xFF];
        stun.resize(MAX_FRAME, 0);
        framer.push(&stun);
        assert_eq!(framer.next_frame(), Ok(Some(stun)));
    }

    #[test]
    fn splits_messages_across_arbitrary_reads() {
        let stun = stun_binding_request([1; 12]);
        let padded = channel_data(0x4000, b"hello", true);
        let empty = channel_data(0x4001, b"", true);
        let stream: Vec<u8> = [stun.clone(), padded.clone(), empty.clone(), stun.clone()].concat();
        for chunk in [1, 3, 7, stream.len()] {
            let mut framer = StreamFramer::default();
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                framer.push(piece);
                while let Some(frame) = framer.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                [stun.clone(), padded.clone(), empty.clone(), stun.clone()],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        let mut framer = StreamFramer::default();
        framer.push(&[0x80, 0, 0, 0]);
        assert_eq!(framer.next_frame(), Err(NotTurn(0x80)));
    }
}
