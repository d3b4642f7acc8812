//! Where a relayed frame goes: a FIB lookup in the kernel's routing and
//! neighbour tables for the rewritten addresses, done before rewriting.
//! When it succeeds, and the egress interface is one the daemon knows
//! delivers what XDP sends it (a veth whose peer runs XDP, a driver that
//! takes redirected frames), the frame is rewritten and sent with XDP_TX or
//! a redirect; when it does not (next hop unresolved, no route, forwarding
//! off, an egress that would drop the frame) the frame is left untouched
//! for the userspace relay, whose sending also resolves the neighbour.
//! With stack routing (so that Cilium's policy, netfilter and the kernel's
//! routing apply) the rewritten frame goes on to the stack instead.
//!
//! Each binding's result is cached (`relay_common::next_hop`): the lookup
//! runs again only after routing may have changed, for a longer datagram,
//! or for a frame from another interface.

use aya_ebpf::{
    Global,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::{TcContext, XdpContext},
};
use core::{
    mem::{MaybeUninit, size_of},
    ptr::addr_of_mut,
};
use relay_common::{
    EGRESS_PEER, EGRESS_REDIRECT, EGRESS_TX, IPPROTO_UDP, MapIp, next_hop::CachedHop,
};

use crate::{maps, packet::Packet};

/// Set to 1 by the loader for stack routing.
#[unsafe(no_mangle)]
static ROUTE_IN_STACK: Global<u8> = Global::new(0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How a rewritten frame leaves.
///
/// Laid out so that its fields sit at aligned offsets: the program is built
/// with misaligned access allowed (header fields are byte arrays, which
/// become word accesses), and the verifier refuses misaligned stack
/// access.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The Ethernet header's MAC addresses as they are to be written: the
    /// next hop's, then the egress interface's (unused for the stack).
    pub macs: [u8; 12],
    /// Egress interface; 0 for the stack.
    pub ifindex: u32,
    /// Its `relay_common::EGRESS_*` bits: how frames may leave by it.
    pub egress_bits: u8,
}

impl NextHop {
    /// The stack routes the rewritten frame (stack routing), or nothing
    /// has been looked up yet.
    const STACK: NextHop = NextHop {
        macs: [0; 12],
        ifindex: 0,
        egress_bits: 0,
    };

    /// For the tc engine: the egress is a veth whose peer is in another
    /// namespace, so the frame goes straight to the peer's ingress.
    #[inline(always)]
    pub fn to_peer_ingress(self) -> bool {
        self.egress_bits & EGRESS_PEER != 0
    }

    /// The XDP action that sends the (rewritten) frame to this next hop.
    #[inline(always)]
    pub fn action(&self, ctx: &XdpContext) -> u32 {
        if self.ifindex == 0 {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: reading a field of the context the kernel passed in.
        if self.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
            return xdp_action::XDP_TX;
        }
        // SAFETY: a helper call with an interface index from the FIB.
        unsafe { bpf_redirect(self.ifindex, 0) as u32 }
    }
}

/// The flow a relayed frame will have after the rewrite.
pub struct Flow<'a> {
    /// Whether the addresses are IPv4 (mapped in the map format).
    pub ipv4: bool,
    pub src: &'a MapIp,
    pub dst: &'a MapIp,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// IP total length (IPv4) or payload length plus header (IPv6).
    pub ip_len: u16,
    /// The binding's entry in the next-hop cache.
    pub cache: u32,
    /// The binding's seal, which its cache entry must carry.
    pub binding: u64,
}

/// The next hop of `flow`, or `None` when the frame should be left to
/// userspace.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, flow: &Flow) -> Option<NextHop> {
    if ROUTE_IN_STACK.load() != 0 {
        return Some(NextHop::STACK);
    }
    // SAFETY: reading a field of the context the kernel passed in.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let hop = find::<XdpContext>(ctx.ctx.cast(), ingress, flow)?;
    let how = if hop.ifindex == ingress {
        EGRESS_TX
    } else {
        EGRESS_REDIRECT
    };
    (hop.egress_bits & how != 0).then_some(hop)
}

/// The next hop of `flow` for the tc engine, or `None` when the frame
/// should be left to userspace. Any interface takes what tc redirects to
/// it (the skb goes through the device's transmit path), so no egress rule
/// applies. With stack routing it is the stack. A pod's veth takes the
/// frame straight into the pod ([`NextHop::to_peer_ingress`]).
#[inline(always)]
pub fn tc_next_hop(ctx: &TcContext, flow: &Flow) -> Option<NextHop> {
    if ROUTE_IN_STACK.load() != 0 {
        return Some(NextHop::STACK);
    }
    // SAFETY: reading a field of the context the kernel passed in.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    find::<TcContext>(ctx.skb.skb.cast(), ingress, flow)
}

/// The next hop of `flow` from the cache, or else from a FIB lookup
/// (whose result is cached); `None` if there is none. `P` is the engine's
/// context type.
#[inline(always)]
fn find<P: Packet>(ctx: *mut aya_ebpf::cty::c_void, ingress: u32, flow: &Flow) -> Option<NextHop> {
    // Read before the lookup: a change after this read makes the entry
    // stale once the daemon counts it. Zero: the daemon does not follow
    // routing, so nothing is cached.
    let generation = maps::route_generation()?;
    // Not zeroed first (a `memset` call): each writes every field.
    let mut hop = MaybeUninit::uninit();
    // Inline for the XDP engine, whose relaying functions have room for
    // the entry's words: a call costs a mispredicted return on CPUs with
    // return mitigations. A function of its own for the tc engine, whose
    // frames do not.
    let hit = generation != 0
        && if P::ENGINE == XdpContext::ENGINE {
            from_cache(generation, ingress, flow, &mut hop) == 0
        } else {
            cached(generation, ingress, flow, &mut hop) == 0
        };
    if !hit {
        if lookup(ctx, ingress, flow, &mut hop) != 0 {
            return None;
        }
        if generation != 0 {
            // SAFETY: `lookup` wrote it, as it does when it returns 0.
            remember(generation, ingress, flow, unsafe { hop.assume_init_ref() });
        }
    }
    // SAFETY: `cached` or `lookup` wrote it, as they do when they return 0.
    Some(unsafe { hop.assume_init() })
}

/// [`from_cache`] in a stack frame of its own (an integer result: see
/// `forward::NOT_HANDLED`).
#[inline(never)]
fn cached(generation: u64, ingress: u32, flow: &Flow, hop: &mut MaybeUninit<NextHop>) -> u32 {
    from_cache(generation, ingress, flow, hop)
}

/// Writes all of `hop` from the cache and returns 0, if the binding's entry
/// serves this frame in `generation`; else 1.
#[inline(always)]
fn from_cache(generation: u64, ingress: u32, flow: &Flow, hop: &mut MaybeUninit<NextHop>) -> u32 {
    let Some(words) = maps::cached_hop(flow.cache) else {
        return 1;
    };
    match CachedHop::from_words(&words) {
        Some(entry) if entry.serves(flow.binding, ingress, flow.ip_len, generation) => {
            hop.write(NextHop {
                macs: entry.macs,
                ifindex: entry.ifindex,
                egress_bits: entry.egress_bits,
            });
            0
        }
        _ => 1,
    }
}

/// Caches `hop`, just looked up for `flow` in `generation`. A function of
/// its own, for the same reason as [`cached`].
#[inline(never)]
fn remember(generation: u64, ingress: u32, flow: &Flow, hop: &NextHop) {
    if let Some(entry) = maps::hop_entry(flow.cache) {
        let cached = CachedHop {
            macs: hop.macs,
            ifindex: hop.ifindex,
            ingress,
            egress_bits: hop.egress_bits,
            max_len: flow.ip_len,
            binding: flow.binding,
            generation,
        };
        maps::store_hop(entry, &cached.to_words());
    }
}

/// The helper's parameter block, aligned for word stores.
#[repr(C, align(8))]
struct FibBlock(MaybeUninit<bpf_fib_lookup>);

const _: () = assert!(size_of::<bpf_fib_lookup>().is_multiple_of(size_of::<u64>()));

/// Looks `flow` up in the FIB, writes all of `hop` and returns 0 on
/// success. `ctx` is the program's context (XDP or skb), `ingress` the
/// interface the packet arrived on. Not inlined: its 64-byte parameter
/// block gets a stack frame of its own.
#[inline(never)]
fn lookup(
    ctx: *mut aya_ebpf::cty::c_void,
    ingress: u32,
    flow: &Flow,
    hop: &mut MaybeUninit<NextHop>,
) -> u32 {
    let mut block = FibBlock(MaybeUninit::uninit());
    let params = block.0.as_mut_ptr();
    // Zeroed a word at a time and then filled, all with volatile stores:
    // `zeroed()` becomes a call to `memset`, a loop of 64 byte stores, on
    // every relayed frame, and volatile stores are neither merged back
    // into it nor reordered among themselves (the fields land after the
    // zeros).
    let words = params.cast::<u64>();
    // SAFETY: every store is within the block, which FibBlock aligns to 8;
    // the field pointers come from `addr_of_mut!` on it.
    unsafe {
        for word in 0..size_of::<bpf_fib_lookup>() / size_of::<u64>() {
            words.add(word).write_volatile(0);
        }
        addr_of_mut!((*params).l4_protocol).write_volatile(IPPROTO_UDP);
        addr_of_mut!((*params).sport).write_volatile(u16::from_ne_bytes(flow.src_port));
        addr_of_mut!((*params).dport).write_volatile(u16::from_ne_bytes(flow.dst_port));
        addr_of_mut!((*params).__bindgen_anon_1.tot_len).write_volatile(flow.ip_len);
        addr_of_mut!((*params).ifindex).write_volatile(ingress);
        if flow.ipv4 {
            let (s, d) = (flow.src, flow.dst);
            addr_of_mut!((*params).family).write_volatile(AF_INET);
            addr_of_mut!((*params).__bindgen_anon_3.ipv4_src)
                .write_volatile(u32::from_ne_bytes([s[12], s[13], s[14], s[15]]));
            addr_of_mut!((*params).__bindgen_anon_4.ipv4_dst)
                .write_volatile(u32::from_ne_bytes([d[12], d[13], d[14], d[15]]));
        } else {
            addr_of_mut!((*params).family).write_volatile(AF_INET6);
            // Word by word from the bytes: a whole-array copy would pass
            // through a stack temporary, and this frame's stack counts
            // towards the 512 bytes of the calls it is nested in.
            let src = addr_of_mut!((*params).__bindgen_anon_3.ipv6_src).cast::<u32>();
            let dst = addr_of_mut!((*params).__bindgen_anon_4.ipv6_dst).cast::<u32>();
            for word in 0..4 {
                let at = word * 4;
                let (s, d) = (flow.src, flow.dst);
                src.add(word).write_volatile(u32::from_ne_bytes([
                    s[at],
                    s[at + 1],
                    s[at + 2],
                    s[at + 3],
                ]));
                dst.add(word).write_volatile(u32::from_ne_bytes([
                    d[at],
                    d[at + 1],
                    d[at + 2],
                    d[at + 3],
                ]));
            }
        }
    }
    // An ingress lookup, as for a forwarded packet: it needs IP forwarding
    // on the ingress interface (Kubernetes nodes have it). (An egress
    // lookup would take the ingress index as the required output
    // interface.)
    // SAFETY: the helper reads and writes `params`, whose size we pass.
    let result = unsafe { fib_lookup(ctx, params, size_of::<bpf_fib_lookup>() as i32, 0) };
    if result != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return 1;
    }
    // SAFETY: every byte was written above, and the helper wrote the rest.
    let params = unsafe { block.0.assume_init_ref() };
    let ifindex = params.ifindex;
    // The key where it is, in the block: a copy would take another slot.
    let egress_bits = maps::egress_bits(&params.ifindex);
    let hop = hop.as_mut_ptr();
    // SAFETY: field pointers into `hop`, which the caller owns; the MAC
    // addresses go straight in, not through a stack temporary (this
    // frame's stack counts towards the nested calls' 512 bytes).
    unsafe {
        let macs = addr_of_mut!((*hop).macs).cast::<u8>();
        core::ptr::copy_nonoverlapping(params.dmac.as_ptr(), macs, 6);
        core::ptr::copy_nonoverlapping(params.smac.as_ptr(), macs.add(6), 6);
        addr_of_mut!((*hop).ifindex).write(ifindex);
        addr_of_mut!((*hop).egress_bits).write(egress_bits);
    }
    0
}
