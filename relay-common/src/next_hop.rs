//! The kernel programs' cache of where each binding's frames go.
//!
//! A FIB lookup (`bpf_fib_lookup`) per relayed frame costs more than the
//! rest of the relaying. So the programs remember each binding's result, a
//! next hop per binding and direction in [`MAP_NEXT_HOPS`], and look it up
//! again only when it may have changed. The daemon follows the kernel's
//! routes, neighbours, links, addresses and rules over rtnetlink, and the
//! interfaces frames may leave by, and counts each change in
//! [`MAP_ROUTE_GENERATION`]; an entry of an older generation is not used.
//!
//! The entry also says which binding it is for (the binding's seal, so a
//! slot reused by another binding misses), which interface the frames came
//! in on, and the largest IP length the lookup let through, which is the
//! MTU check: a longer datagram is looked up again. CPUs relaying one
//! binding may write its entry at once, and read it while another writes,
//! so the entry carries a seal over its words and a torn one misses.

use crate::seal::mix;

/// Name of the array of cached next hops, [`HOP_WORDS`] words each,
/// indexed by [`cache_index`]: twice the size of the binding maps.
pub const MAP_NEXT_HOPS: &str = "NEXT_HOPS";
/// Name of the one-element array (`u64`) that the daemon increments
/// whenever routing may have changed; entries of another value are stale.
/// The daemon sets it to 1 or more before it attaches anything: zero is
/// never current.
pub const MAP_ROUTE_GENERATION: &str = "ROUTE_GENERATION";
/// Words of an entry, its seal (the last) included.
pub const HOP_WORDS: usize = 6;

/// The entry of the binding in `slot` for frames towards the peer or, with
/// `to_client`, towards the client.
#[inline(always)]
pub const fn cache_index(slot: u32, to_client: bool) -> u32 {
    slot.wrapping_mul(2) | to_client as u32
}

/// One binding's next hop in one direction, as the FIB lookup gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedHop {
    /// The Ethernet header's MAC addresses: the next hop's, then the
    /// egress interface's.
    pub macs: [u8; 12],
    /// The egress interface.
    pub ifindex: u32,
    /// The interface the binding's frames arrived on when it was looked up.
    pub ingress: u32,
    /// The egress interface's `EGRESS_*` bits (see `MAP_EGRESS`).
    pub egress_bits: u8,
    /// The largest IP length the lookup's MTU check let through.
    pub max_len: u16,
    /// The seal of the binding (its `ChannelTarget` or `PeerTarget`) the
    /// entry is for.
    pub binding: u64,
    /// The [`MAP_ROUTE_GENERATION`] read before the lookup.
    pub generation: u64,
}

impl CachedHop {
    /// The entry's words, as the kernel stores them: the seal last.
    #[inline(always)]
    pub fn to_words(&self) -> [u64; HOP_WORDS] {
        let m = &self.macs;
        let w0 = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]]);
        let w1 = u64::from(u32::from_le_bytes([m[8], m[9], m[10], m[11]]))
            | u64::from(self.ifindex) << 32;
        let w2 = u64::from(self.ingress)
            | u64::from(self.egress_bits) << 32
            | u64::from(self.max_len) << 48;
        let words = [w0, w1, w2, self.binding, self.generation];
        [w0, w1, w2, self.binding, self.generation, hop_seal(&words)]
    }

    /// The entry in `words`, if its seal holds: it was written whole.
    #[inline(always)]
    pub fn from_words(words: &[u64; HOP_WORDS]) -> Option<CachedHop> {
        if words[5] != hop_seal(&[words[0], words[1], words[2], words[3], words[4]]) {
            return None;
        }
        let (a, b) = (words[0].to_le_bytes(), words[1].to_le_bytes());
        Some(CachedHop {
            macs: [
                a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3],
            ],
            ifindex: (words[1] >> 32) as u32,
            ingress: words[2] as u32,
            egress_bits: (words[2] >> 32) as u8,
            max_len: (words[2] >> 48) as u16,
            binding: words[3],
            generation: words[4],
        })
    }

    /// Whether the entry serves a frame of the binding sealed `binding`,
    /// arriving on `ingress`, `ip_len` bytes long, in `generation`.
    #[inline(always)]
    pub fn serves(&self, binding: u64, ingress: u32, ip_len: u16, generation: u64) -> bool {
        self.binding == binding
            && self.generation == generation
            && self.ingress == ingress
            && ip_len <= self.max_len
    }
}

/// The seal of an entry's words before the seal. Starts from a constant,
/// so an entry never written (all zeros) does not carry its seal.
#[inline(always)]
fn hop_seal(words: &[u64; HOP_WORDS - 1]) -> u64 {
    let mut hash = 0x243F_6A88_85A3_08D3;
    #[allow(clippy::needless_range_loop)]
    for i in 0..HOP_WORDS - 1 {
        hash = mix(hash, words[i]);
    }
    hash ^ (hash >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ifindex: u32, generation: u64) -> CachedHop {
        CachedHop {
            macs: [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2],
            ifindex,
            ingress: 3,
            egress_bits: 2,
            max_len: 1500,
            binding: 0xABCD_0123_4567_89EF,
            generation,
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let entry = hop(7, 9);
        assert_eq!(CachedHop::from_words(&entry.to_words()), Some(entry));
    }

    #[test]
    fn an_entry_never_written_does_not_hold() {
        assert_eq!(CachedHop::from_words(&[0; HOP_WORDS]), None);
    }

    /// Two CPUs writing one entry (or one writing while another reads): any
    /// mix of two entries' words fails, only each whole entry passes.
    #[test]
    fn an_entry_torn_between_two_writes_is_refused() {
        let (a, b) = (hop(7, 9).to_words(), hop(8, 10).to_words());
        for mask in 0..1u32 << HOP_WORDS {
            let mut torn = a;
            for (i, word) in torn.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *word = b[i];
                }
            }
            let whole = torn == a || torn == b;
            assert_eq!(CachedHop::from_words(&torn).is_some(), whole, "{mask:#b}");
        }
    }

    #[test]
    fn an_entry_serves_its_binding_generation_ingress_and_lengths_only() {
        let entry = hop(7, 9);
        assert!(entry.serves(entry.binding, 3, 1500, 9));
        assert!(entry.serves(entry.binding, 3, 60, 9));
        assert!(
            !entry.serves(entry.binding, 3, 1501, 9),
            "longer: the MTU check again"
        );
        assert!(
            !entry.serves(entry.binding ^ 1, 3, 60, 9),
            "another binding"
        );
        assert!(!entry.serves(entry.binding, 4, 60, 9), "another ingress");
        assert!(
            !entry.serves(entry.binding, 3, 60, 10),
            "a newer generation"
        );
    }

    #[test]
    fn each_binding_and_direction_has_its_own_entry() {
        assert_eq!(cache_index(0, false), 0);
        assert_eq!(cache_index(0, true), 1);
        assert_eq!(cache_index(5, false), 10);
        assert_eq!(cache_index(5, true), 11);
    }
}
