//! A binding's seal: a hash of its map key and value, kept in the value.
//!
//! The binding maps are preallocated hash maps. The kernel hands a deleted
//! element to the next insert at once, with no RCU grace period, while a
//! program on another CPU may still be reading it through the pointer its
//! lookup returned. Such a program would read the new binding's fields, or
//! a mix of the old and the new. So the kernel programs copy the value out
//! of the map first, then check the copy's seal against the key they looked
//! up: a copy torn between two bindings, or of an element that now holds
//! another key, fails the check, and the frame goes to the stack as it
//! came, for userspace to relay.
//!
//! The seal is not a secret: it guards against a race, not against a
//! forger, who would have to win the race as well.

use crate::{ChannelKey, ChannelTarget, PeerKey, PeerTarget};

/// Words of a key.
const KEY_WORDS: usize = 5;
/// Words of a value, the seal (the last) included.
const VALUE_WORDS: usize = 8;

const _: () = {
    assert!(size_of::<ChannelKey>() == KEY_WORDS * 8);
    assert!(size_of::<PeerKey>() == KEY_WORDS * 8);
    assert!(size_of::<ChannelTarget>() == VALUE_WORDS * 8);
    assert!(size_of::<PeerTarget>() == VALUE_WORDS * 8);
};

/// The seal of a key's words and a value's words before its seal.
#[inline(always)]
fn seal(key: &[u64; KEY_WORDS], value: &[u64; VALUE_WORDS]) -> u64 {
    // Indexed loops over references: the compiler unrolls them into what
    // the verifier takes (an iterator chain became a pointer loop it
    // refuses), and the words stay where they are, off the small BPF
    // stack.
    let mut hash = 0u64;
    #[allow(clippy::needless_range_loop)]
    for i in 0..KEY_WORDS {
        hash = mix(hash, key[i]);
    }
    #[allow(clippy::needless_range_loop)]
    for i in 0..VALUE_WORDS - 1 {
        hash = mix(hash, value[i]);
    }
    hash ^ (hash >> 32)
}

/// One step of the seals' multiply-rotate mixing (as in FxHash and its
/// kin): cheap in BPF, and every input bit reaches the result.
#[inline(always)]
pub(crate) fn mix(hash: u64, word: u64) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    (hash ^ word).wrapping_mul(K).rotate_left(29)
}

/// The words of a plain-data map type of `N` words.
#[inline(always)]
fn words<T: Copy, const N: usize>(value: &T) -> &[u64; N] {
    const { assert!(size_of::<T>() == N * 8 && align_of::<T>() == 8) };
    // SAFETY: `T` is one of the map types above: `N` words long, aligned to
    // 8, and without padding (see the size checks in the crate's tests), so
    // every byte is initialised.
    unsafe { &*(value as *const T).cast::<[u64; N]>() }
}

/// A map value with a seal over its key.
pub trait Sealed: Copy {
    /// The key it is stored under.
    type Key: Copy;

    /// The value's seal field.
    fn seal_field(&self) -> u64;

    /// The seal of this value under `key`.
    #[inline(always)]
    fn seal_for(&self, key: &Self::Key) -> u64 {
        seal(words(key), words(self))
    }

    /// Whether the value carries its seal under `key`: it was written
    /// whole, for that key.
    #[inline(always)]
    fn sealed_for(&self, key: &Self::Key) -> bool {
        self.seal_field() == self.seal_for(key)
    }
}

impl Sealed for ChannelTarget {
    type Key = ChannelKey;

    #[inline(always)]
    fn seal_field(&self) -> u64 {
        self.seal
    }
}

impl Sealed for PeerTarget {
    type Key = PeerKey;

    #[inline(always)]
    fn seal_field(&self) -> u64 {
        self.seal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bandwidth::Buckets, binding::Binding};
    use core::net::{Ipv4Addr, SocketAddr};

    fn binding(peer: u8, slot: u32) -> Binding {
        let v4 = |a: u8, port: u16| SocketAddr::new(Ipv4Addr::new(198, 18, 0, a).into(), port);
        Binding {
            client: v4(1, 50000),
            server: v4(254, 3478),
            channel: 0x4001,
            relayed: v4(253, 49152),
            peer: v4(peer, 3480),
            slot,
            buckets: Buckets::default(),
            expires: 0,
        }
    }

    #[test]
    fn entries_are_sealed_for_their_own_key_only() {
        let (key, target) = binding(9, 1).channel_entry();
        let (peer_key, peer_target) = binding(9, 1).peer_entry();
        assert!(target.sealed_for(&key));
        assert!(peer_target.sealed_for(&peer_key));
        let (other_key, _) = Binding {
            channel: 0x4002,
            ..binding(9, 1)
        }
        .channel_entry();
        assert!(!target.sealed_for(&other_key));
    }

    /// Two bindings of one key (a channel rebound to another peer): every
    /// value that mixes their words fails, whichever words come from which;
    /// only each whole value passes.
    #[test]
    fn a_value_torn_between_two_bindings_is_refused() {
        let (key, a) = binding(9, 1).channel_entry();
        let (_, b) = binding(10, 2).channel_entry();
        let (a, b): ([u64; VALUE_WORDS], [u64; VALUE_WORDS]) = (*words(&a), *words(&b));
        for mask in 0..1u32 << VALUE_WORDS {
            let mut torn = a;
            for (i, word) in torn.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *word = b[i];
                }
            }
            // SAFETY: any 64 bytes are a valid `ChannelTarget`.
            let torn: ChannelTarget = unsafe { core::mem::transmute(torn) };
            let whole = [a, b].contains(words::<_, VALUE_WORDS>(&torn));
            assert_eq!(torn.sealed_for(&key), whole, "mask {mask:#b}");
        }
    }
}
