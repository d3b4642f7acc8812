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
use core::mem::{size_of, zeroed};
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
    let mut hop = NextHop::STACK;
    if ROUTE_IN_STACK.load() != 0 {
        return Some(hop);
    }
    // SAFETY: reading a field of the context the kernel passed in.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if lookup(ctx.ctx.cast(), ingress, flow, &mut hop) != 0 {
        return None;
    }
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
    let mut hop = NextHop::STACK;
    if ROUTE_IN_STACK.load() != 0 {
        return Some(hop);
    }
    // SAFETY: reading a field of the context the kernel passed in.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    if lookup(ctx.skb.skb.cast(), ingress, flow, &mut hop) != 0 {
        return None;
    }
    hop.to_peer_ingress = maps::egress_allows(hop.ifindex, EGRESS_PEER);
    Some(hop)
}

/// Fills `hop` and returns 0 on success. `ctx` is the program's context
/// (XDP or skb), `ingress` the interface the packet arrived on. Not
/// inlined: its 64-byte parameter block gets a stack frame of its own.
#[inline(never)]
fn lookup(ctx: *mut aya_ebpf::cty::c_void, ingress: u32, flow: &Flow, hop: &mut NextHop) -> u32 {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input before the fields
    // below are set.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.l4_protocol = IPPROTO_UDP;
    params.sport = u16::from_ne_bytes(flow.src_port);
    params.dport = u16::from_ne_bytes(flow.dst_port);
    params.__bindgen_anon_1.tot_len = flow.ip_len;
    params.ifindex = ingress;
    if flow.ipv4 {
        params.family = AF_INET;
        let (s, d) = (flow.src, flow.dst);
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([s[12], s[13], s[14], s[15]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([d[12], d[13], d[14], d[15]]);
    } else {
        params.family = AF_INET6;
        // SAFETY: plain byte copies into the 16-byte address arrays.
        unsafe {
            params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<MapIp, [u32; 4]>(*flow.src);
            params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<MapIp, [u32; 4]>(*flow.dst);
        }
    }
    // An ingress lookup, as for a forwarded packet: it needs IP forwarding
    // on the ingress interface (Kubernetes nodes have it). (An egress
    // lookup would take the ingress index as the required output
    // interface.)
    // SAFETY: the helper reads and writes `params`, whose size we pass.
    let result = unsafe { fib_lookup(ctx, &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    if result != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return 1;
    }
    hop.ifindex = params.ifindex;
    hop.src_mac = params.smac;
    hop.dst_mac = params.dmac;
    0
}
