//! The maps shared with the daemon. Names, key and value types come from
//! `relay-common`; the daemon finds the maps by those names.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use relay_common::{
    BindingCounters, ChannelKey, ChannelTarget, Counter, ListenPortKey, ListenPortValue,
    MAX_BINDINGS, MAX_EGRESS_INTERFACES, MAX_LISTEN_PORTS, PacketClass, PeerKey, PeerTarget,
};

/// UDP ports the TURN server listens on (`relay_common::MAP_LISTEN_PORTS`).
#[map]
static LISTEN_PORTS: HashMap<ListenPortKey, ListenPortValue> =
    HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

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

/// Whether a relayed frame may leave by `ifindex` as `how` (one of the
/// `relay_common::EGRESS_*` bits).
#[inline(always)]
pub fn egress_allows(ifindex: u32, how: u8) -> bool {
    // SAFETY: a hash map value stays valid for the rest of this program run.
    EGRESS
        .get_ptr(ifindex)
        .is_some_and(|bits| unsafe { *bits } & how != 0)
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

/// Where a client's ChannelData goes, if its channel is bound.
#[inline(always)]
pub fn channel_target(key: &ChannelKey) -> Option<&'static ChannelTarget> {
    // SAFETY: a hash map value stays valid for the rest of this program run
    // (the kernel frees deleted elements after an RCU grace period), which
    // is as long as any reference lives; read in place to keep it off the
    // 512-byte stack.
    CHANNELS.get_ptr(key).map(|target| unsafe { &*target })
}

/// Where a peer's datagram goes, if it has a bound channel.
#[inline(always)]
pub fn peer_target(key: &PeerKey) -> Option<&'static PeerTarget> {
    // SAFETY: as above.
    PEERS.get_ptr(key).map(|target| unsafe { &*target })
}

/// Whether UDP to `port` (network order) is TURN traffic.
#[inline(always)]
pub fn is_listen_port(port: ListenPortKey) -> bool {
    LISTEN_PORTS.get_ptr(port).is_some()
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
