//! Internet checksum arithmetic (RFC 1071, updated incrementally per
//! RFC 1624), loop-free for the verifier: every loop has a constant bound.

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
    pub fn add<const N: usize>(self, bytes: &[u8; N]) -> Self {
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
    pub fn remove<const N: usize>(self, bytes: &[u8; N]) -> Self {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u32::from(!u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        Sum(sum)
    }

    /// The checksum field value: the complement of the folded sum.
    #[inline(always)]
    pub fn finish(self) -> [u8; 2] {
        let mut sum = self.0;
        sum = (sum & 0xFFFF) + (sum >> 16);
        sum = (sum & 0xFFFF) + (sum >> 16);
        (!(sum as u16)).to_be_bytes()
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
