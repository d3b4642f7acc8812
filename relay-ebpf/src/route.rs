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
use relay_common::{EGRESS_PEER, EGRESS_REDIRECT, EGRESS_TX, IPPROTO_UDP, MapIp};

use crate::maps;

/// Set to 1 by the loader for stack routing.
#[unsafe(no_mangle)]
static ROUTE_IN_STACK: Global<u8> = Global::new(0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How a rewritten frame leaves.
#[derive(Clone, Copy)]
pub struct NextHop {
    /// Egress interface; 0 for the stack.
    pub ifindex: u32,
    /// MAC addresses to write (unused for the stack).
    pub src_mac: [u8; 6],
    /// The next hop's MAC address.
    pub dst_mac: [u8; 6],
    /// For the tc engine: the egress is a veth whose peer is in another
    /// namespace, so the frame goes straight to the peer's ingress.
    pub to_peer_ingress: bool,
}

impl NextHop {
    /// The stack routes the rewritten frame (stack routing), or nothing
    /// has been looked up yet.
    const STACK: NextHop = NextHop {
        ifindex: 0,
        src_mac: [0; 6],
        dst_mac: [0; 6],
        to_peer_ingress: false,
    };

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
    // Not zeroed first (a `memset` call): `lookup` writes every field.
    let mut hop = MaybeUninit::uninit();
    if lookup(ctx.ctx.cast(), ingress, flow, &mut hop) != 0 {
        return None;
    }
    // SAFETY: `lookup` wrote it, as it does when it returns 0.
    let hop = unsafe { hop.assume_init() };
    let how = if hop.ifindex == ingress {
        EGRESS_TX
    } else {
        EGRESS_REDIRECT
    };
    maps::egress_allows(hop.ifindex, how).then_some(hop)
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
    let mut hop = MaybeUninit::uninit();
    if lookup(ctx.skb.skb.cast(), ingress, flow, &mut hop) != 0 {
        return None;
    }
    // SAFETY: `lookup` wrote it, as it does when it returns 0.
    let mut hop = unsafe { hop.assume_init() };
    hop.to_peer_ingress = maps::egress_allows(hop.ifindex, EGRESS_PEER);
    Some(hop)
}

/// The helper's parameter block, aligned for word stores.
#[repr(C, align(8))]
struct FibBlock(MaybeUninit<bpf_fib_lookup>);

const _: () = assert!(size_of::<bpf_fib_lookup>().is_multiple_of(size_of::<u64>()));

/// Writes all of `hop` and returns 0 on success. `ctx` is the program's context
/// (XDP or skb), `ingress` the interface the packet arrived on. Not
/// inlined: its 64-byte parameter block gets a stack frame of its own.
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
    hop.write(NextHop {
        ifindex: params.ifindex,
        src_mac: params.smac,
        dst_mac: params.dmac,
        to_peer_ingress: false,
    });
    0
}
