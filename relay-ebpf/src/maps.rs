//! The maps shared with the daemon. Names, key and value types come from
//! `relay-common`; the daemon finds the maps by those names.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use relay_common::{Counter, ListenPortKey, ListenPortValue, MAX_LISTEN_PORTS, PacketClass};

/// UDP ports the TURN server listens on (`relay_common::MAP_LISTEN_PORTS`).
#[map]
static LISTEN_PORTS: HashMap<ListenPortKey, ListenPortValue> =
    HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

/// Per-CPU packet counters by class (`relay_common::MAP_CLASS_COUNTERS`).
#[map]
static CLASS_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(PacketClass::COUNT, 0);

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
