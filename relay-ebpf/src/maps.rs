//! The maps shared with the daemon. Names, key and value types come from
//! `relay-common`; the daemon finds the maps by those names.

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use relay_common::{
    BindingCounters, ChannelKey, ChannelTarget, Counter, LISTEN_PORT_WORDS, MAX_BINDINGS,
    MAX_EGRESS_INTERFACES, PacketClass, PeerKey, PeerTarget,
    bandwidth::{BUCKETS_PER_BINDING, Bucket, NO_BUCKET},
    expiry::{self, NEVER},
    listen_port_bit,
    next_hop::HOP_WORDS,
    seal::Sealed,
};

/// UDP ports the TURN server listens on, a bitmap
/// (`relay_common::MAP_LISTEN_PORTS`).
#[map]
static LISTEN_PORTS: Array<u64> = Array::with_max_entries(LISTEN_PORT_WORDS, 0);

/// Relayed ports with a binding in the kernel, a bitmap
/// (`relay_common::MAP_RELAYED_PORTS`).
#[map]
static RELAYED_PORTS: Array<u64> = Array::with_max_entries(LISTEN_PORT_WORDS, 0);

/// Per-CPU packet counters by class (`relay_common::MAP_CLASS_COUNTERS`).
#[map]
static CLASS_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

/// Bound channels seen from the client side (`relay_common::MAP_CHANNELS`).
#[map]
static CHANNELS: HashMap<ChannelKey, ChannelTarget> = HashMap::with_max_entries(MAX_BINDINGS, 0);

/// Bound channels seen from the peer side (`relay_common::MAP_PEERS`).
#[map]
static PEERS: HashMap<PeerKey, PeerTarget> = HashMap::with_max_entries(MAX_BINDINGS, 0);

/// Interfaces relayed frames may leave by (`relay_common::MAP_EGRESS`).
#[map]
static EGRESS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_EGRESS_INTERFACES, 0);

/// Size of the tc engine's scratch buffer, a power of two above any
/// datagram it relays.
pub const SCRATCH_LEN: usize = 2048;

/// One buffer per CPU, for the tc engine to move a payload through.
#[map]
static SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch buffer.
#[inline(always)]
pub fn scratch() -> Option<*mut [u8; SCRATCH_LEN]> {
    SCRATCH.get_ptr_mut(0)
}

/// The egress interface's bits, 0 for an interface not in the map. By
/// reference: the key is read where it is, in the caller's frame.
#[inline(always)]
pub fn egress_bits(ifindex: &u32) -> u8 {
    // SAFETY: a hash map value stays valid for the rest of this program run.
    EGRESS.get_ptr(ifindex).map_or(0, |bits| unsafe { *bits })
}

/// Each binding's next hop in each direction
/// (`relay_common::next_hop::MAP_NEXT_HOPS`), shared by all CPUs.
#[map]
static NEXT_HOPS: Array<[u64; HOP_WORDS]> = Array::with_max_entries(MAX_BINDINGS * 2, 0);

/// Which routing the cached next hops must be of
/// (`relay_common::next_hop::MAP_ROUTE_GENERATION`).
#[map]
static ROUTE_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// The current route generation (see `relay_common::next_hop`).
#[inline(always)]
pub fn route_generation() -> Option<u64> {
    ROUTE_GENERATION.get(0).copied()
}

/// The words of the cached next hop at `index`, each read once (another
/// CPU may be writing them: the caller checks their seal).
#[inline(always)]
pub fn cached_hop(index: u32) -> Option<[u64; HOP_WORDS]> {
    let entry = NEXT_HOPS.get_ptr(index)?.cast::<u64>();
    // SAFETY: an array element of HOP_WORDS words, valid for the program's
    // run; volatile, so that each word is read here, once.
    Some(core::array::from_fn(|i| unsafe {
        entry.add(i).read_volatile()
    }))
}

/// The cached next hop at `index`, to write with [`store_hop`].
#[inline(always)]
pub fn hop_entry(index: u32) -> Option<*mut [u64; HOP_WORDS]> {
    NEXT_HOPS.get_ptr_mut(index)
}

/// Stores a next hop in `entry`, its seal (the last word) last, so that a
/// reader between the stores finds a seal that does not hold.
#[inline(always)]
pub fn store_hop(entry: *mut [u64; HOP_WORDS], words: &[u64; HOP_WORDS]) {
    let entry = entry.cast::<u64>();
    #[allow(clippy::needless_range_loop)]
    for i in 0..HOP_WORDS {
        // SAFETY: an array element of HOP_WORDS words, valid for the
        // program's run; volatile keeps the order.
        unsafe { entry.add(i).write_volatile(words[i]) };
    }
}

/// Per-binding traffic (`relay_common::MAP_BINDING_COUNTERS`).
#[map]
static BINDING_COUNTERS: PerCpuArray<BindingCounters> =
    PerCpuArray::with_max_entries(MAX_BINDINGS, 0);

/// Counts one datagram of `bytes` application bytes relayed for the
/// binding in `slot`, towards the peer or the client.
#[inline(always)]
pub fn count_binding(slot: u32, to_peer: bool, bytes: usize) {
    if let Some(counters) = BINDING_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array, which nothing else
        // writes while this program runs on this CPU.
        unsafe {
            if to_peer {
                (*counters).to_peer_packets += 1;
                (*counters).to_peer_bytes += bytes as u64;
            } else {
                (*counters).to_client_packets += 1;
                (*counters).to_client_bytes += bytes as u64;
            }
        }
    }
}

/// Where a client's ChannelData goes, if its channel is bound and its
/// lifetime not over: a copy, in this CPU's slot for `engine` (see
/// [`checked_copy`]).
#[inline(always)]
pub fn channel_target(key: &ChannelKey, engine: u32) -> Option<&'static ChannelTarget> {
    let copy = CHANNEL_COPIES.get_ptr_mut(engine)?;
    // SAFETY: this CPU's slot, valid as long as the program.
    checked_copy(CHANNELS.get_ptr(key)?, key, copy, engine).then(|| unsafe { &*copy })
}

/// Where a peer's datagram goes, if it has a bound channel: a copy, as
/// above.
#[inline(always)]
pub fn peer_target(key: &PeerKey, engine: u32) -> Option<&'static PeerTarget> {
    let copy = PEER_COPIES.get_ptr_mut(engine)?;
    // SAFETY: as above.
    checked_copy(PEERS.get_ptr(key)?, key, copy, engine).then(|| unsafe { &*copy })
}

/// Each engine's copy of the binding it relays by, on each CPU: off the
/// stack, which is too small to hold it beside the route lookup. XDP and
/// tc have a slot each; a program does not nest within another of its
/// kind on one CPU.
#[map]
static CHANNEL_COPIES: PerCpuArray<ChannelTarget> = PerCpuArray::with_max_entries(2, 0);

/// As [`CHANNEL_COPIES`], for peers' datagrams.
#[map]
static PEER_COPIES: PerCpuArray<PeerTarget> = PerCpuArray::with_max_entries(2, 0);

/// Copies the map value at `value` into `copy`, and returns whether the
/// copy is whole and `key`'s, and its binding not expired. The maps are
/// preallocated: a deleted element can be reused for another binding while
/// this program reads it (see `relay_common::seal`), so the value is read
/// once, and used only if its seal holds. An expired binding is refused
/// here as well, so that its frames take the path of an unbound channel's
/// (see [`live`]).
///
/// Inline for the XDP engine, whose relaying functions have room for its
/// temporaries: a call costs a mispredicted return on CPUs with return
/// mitigations. A function of its own for the tc engine, whose frames do
/// not.
#[inline(always)]
fn checked_copy<T: Sealed + Expiring>(
    value: *const T,
    key: &T::Key,
    copy: *mut T,
    engine: u32,
) -> bool {
    if engine == <aya_ebpf::programs::XdpContext as crate::packet::Packet>::ENGINE {
        sealed_copy(value, key, copy) != 0
    } else {
        sealed_copy_apart(value, key, copy) != 0
    }
}

/// [`sealed_copy`] in a stack frame of its own (an integer result: see
/// `forward::NOT_HANDLED`).
#[inline(never)]
fn sealed_copy_apart<T: Sealed + Expiring>(value: *const T, key: &T::Key, copy: *mut T) -> u32 {
    sealed_copy(value, key, copy)
}

/// See [`checked_copy`]: 1 if the copy holds, 0 if not.
#[inline(always)]
fn sealed_copy<T: Sealed + Expiring>(value: *const T, key: &T::Key, copy: *mut T) -> u32 {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let (from, to) = (value.cast::<u64>(), copy.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: `value` is the kernel's pointer to a map value, valid (if
        // perhaps being rewritten) for the rest of this program run, and
        // `copy` this CPU's slot of a per-CPU array of the same type, which
        // nothing else uses while this program runs; both are whole words
        // (asserted above). Volatile, word by word, so that the compiler
        // reads the map once, here, and not again later.
        unsafe { to.add(i).write(from.add(i).read_volatile()) };
    }
    // SAFETY: as above.
    let copy = unsafe { &*copy };
    // The seal first: the expiry is read from a whole copy only.
    u32::from(copy.sealed_for(key) && live(copy.expires()))
}

/// A binding map value with an expiry (`relay_common::expiry`).
pub trait Expiring {
    /// The value's `expires` field.
    fn expires(&self) -> u32;
}

impl Expiring for ChannelTarget {
    #[inline(always)]
    fn expires(&self) -> u32 {
        self.expires
    }
}

impl Expiring for PeerTarget {
    #[inline(always)]
    fn expires(&self) -> u32 {
        self.expires
    }
}

/// Whether a binding with expiry `expires` is still within its lifetime:
/// past it the kernel stops relaying, even if no daemon is left to remove
/// the binding. Reached only on a lookup hit, so other traffic reads no
/// clock, and a binding without expiry (tests, benchmarks) reads none
/// either. The coarse clock is a few loads, without the clocksource read
/// of `bpf_ktime_get_ns`, and a tick is far coarser than its jiffy. Here,
/// in the copy's function, rather than in the relaying functions: for the
/// tc engine this is a frame of its own, and the tc relaying functions
/// have no stack left for what a helper call makes them spill.
#[inline(always)]
fn live(expires: u32) -> bool {
    if expires == NEVER {
        return true;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    !expiry::expired(expires, expiry::tick(now))
}

/// Bandwidth buckets of allocations and users
/// (`relay_common::bandwidth::MAP_BUCKETS`), shared by all CPUs.
#[map]
static BUCKETS: Array<Bucket> = Array::with_max_entries(MAX_BINDINGS * BUCKETS_PER_BINDING + 1, 0);

/// Whether `bytes` of a binding's data fit its allocation's and its user's
/// buckets (`bucket`, `user_bucket`) now; if so they are charged to both.
/// Each is tried on a copy, so a datagram one refuses costs the other
/// nothing. The buckets are updated without a lock: two CPUs relaying for
/// one bucket at the same moment may each miss the other's charge, which
/// admits a datagram more. One flow arrives on one receive queue, so that
/// is rare. A function of its own, for its copies take stack room that the
/// relaying functions do not have; the test for no limit at all stays
/// inline, so that a relay without limits makes no call for it.
#[inline(always)]
pub fn within_limits(bucket: u32, user_bucket: u32, bytes: usize) -> bool {
    (bucket == NO_BUCKET && user_bucket == NO_BUCKET) || charge(bucket, user_bucket, bytes) != 0
}

/// [`within_limits`] for a binding with a bucket: 1 if admitted and
/// charged, 0 if not (an integer result: see `forward::NOT_HANDLED`).
#[inline(never)]
fn charge(bucket: u32, user_bucket: u32, bytes: usize) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (own, user) = (bucket_ptr(bucket), bucket_ptr(user_bucket));
    // SAFETY: array elements, valid for the program's run.
    let (mut own_copy, mut user_copy) = unsafe { (own.map(|b| *b), user.map(|b| *b)) };
    let admitted = own_copy.as_mut().is_none_or(|b| b.admit(bytes as u64, now))
        && user_copy
            .as_mut()
            .is_none_or(|b| b.admit(bytes as u64, now));
    if admitted {
        // SAFETY: as above.
        unsafe {
            if let (Some(own), Some(copy)) = (own, own_copy) {
                (*own).drained_ns = copy.drained_ns;
            }
            if let (Some(user), Some(copy)) = (user, user_copy) {
                (*user).drained_ns = copy.drained_ns;
            }
        }
    }
    u32::from(admitted)
}

/// The bucket at `index`, if it is one ([`NO_BUCKET`] and an index past
/// the array, never installed, are no limit).
#[inline(always)]
fn bucket_ptr(index: u32) -> Option<*mut Bucket> {
    if index == NO_BUCKET {
        return None;
    }
    BUCKETS.get_ptr_mut(index)
}

/// Whether UDP to `port` (network order, as in the header) is TURN
/// traffic.
#[inline(always)]
pub fn is_listen_port(port: [u8; 2]) -> bool {
    has_port(&LISTEN_PORTS, port)
}

/// Whether UDP to `port` (network order) may be a peer's datagram with a
/// binding in the kernel.
#[inline(always)]
pub fn is_relayed_port(port: [u8; 2]) -> bool {
    has_port(&RELAYED_PORTS, port)
}

#[inline(always)]
fn has_port(bitmap: &Array<u64>, port: [u8; 2]) -> bool {
    let (word, bit) = listen_port_bit(u16::from_be_bytes(port));
    bitmap.get(word).is_some_and(|word| word & bit != 0)
}

/// Counts one frame of `len` bytes in `class` on this CPU.
#[inline(always)]
pub fn count(class: PacketClass, len: usize) {
    if let Some(counter) = CLASS_COUNTERS.get_ptr_mut(class as u32) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, which
        // nothing else writes while this program runs on this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len as u64;
        }
    }
}
