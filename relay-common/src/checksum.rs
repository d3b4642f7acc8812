//! Internet checksum arithmetic (RFC 1071, updated incrementally per
//! RFC 1624), for the kernel programs and for the deltas the daemon
//! precomputes per binding. Verifier-friendly: every loop has a constant
//! bound.

/// A one's-complement sum in progress; fold it with [`finish`].
#[derive(Clone, Copy)]
pub struct Sum(u32);

impl Sum {
    /// The sum of nothing.
    #[inline(always)]
    pub const fn zero() -> Self {
        Sum(0)
    }

    /// Starts from an existing checksum field, to update it.
    #[inline(always)]
    pub fn from_checksum(check: [u8; 2]) -> Self {
        Sum(u32::from(!u16::from_be_bytes(check)))
    }

    /// Adds 16-bit words given as bytes (an even number of them).
    #[inline(always)]
    pub fn with<const N: usize>(self, bytes: &[u8; N]) -> Self {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        Sum(sum)
    }

    /// Removes words that were part of the sum (adds their complement).
    #[inline(always)]
    pub fn without<const N: usize>(self, bytes: &[u8; N]) -> Self {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u32::from(!u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        Sum(sum)
    }

    /// The folded sum itself, as a delta to add to a checksum later.
    #[inline(always)]
    pub fn fold(self) -> [u8; 2] {
        let mut sum = self.0;
        sum = (sum & 0xFFFF) + (sum >> 16);
        sum = (sum & 0xFFFF) + (sum >> 16);
        (sum as u16).to_be_bytes()
    }

    /// The checksum field value: the complement of the folded sum.
    #[inline(always)]
    pub fn finish(self) -> [u8; 2] {
        let [high, low] = self.fold();
        [!high, !low]
    }
}

/// A UDP checksum field after an update: a computed zero is sent as all
/// ones (RFC 768), since zero means "no checksum".
#[inline(always)]
pub fn udp_field(sum: Sum) -> [u8; 2] {
    match sum.finish() {
        [0, 0] => [0xFF, 0xFF],
        field => field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's own example: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn sums_fold_as_rfc_1071_shows() {
        let sum = Sum::zero().with(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(sum.fold(), [0xdd, 0xf2]);
        assert_eq!(sum.finish(), [0x22, 0x0d]);
    }

    /// Updating a checksum by removing old words and adding new ones gives
    /// the checksum computed afresh (RFC 1624, eqn. 3).
    #[test]
    fn incremental_updates_match_a_fresh_sum() {
        let (old, new) = ([0x12, 0x34, 0xab, 0xcd], [0xfe, 0xdc, 0x00, 0x07]);
        let rest = [0x45, 0x00, 0x00, 0x1c];
        let before = Sum::zero().with(&rest).with(&old).finish();
        let updated = Sum::from_checksum(before).without(&old).with(&new).finish();
        assert_eq!(updated, Sum::zero().with(&rest).with(&new).finish());
    }

    #[test]
    fn a_zero_udp_checksum_is_sent_as_all_ones() {
        // Words summing to 0xFFFF complement to zero.
        assert_eq!(udp_field(Sum::zero().with(&[0xff, 0xff])), [0xff, 0xff]);
        assert_eq!(udp_field(Sum::zero().with(&[0x00, 0x01])), [0xff, 0xfe]);
    }
}
