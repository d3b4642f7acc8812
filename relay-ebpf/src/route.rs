//! Sending a rewritten frame on its way: a FIB lookup in the kernel's
//! routing and neighbour tables, then XDP_TX or a redirect with the next
//! hop's MAC addresses. When the next hop is not resolved yet, or the
//! operator chose stack routing (so that Cilium's routing and policy apply),
//! the frame goes to the stack (XDP_PASS), rewritten.

use aya_ebpf::{
    Global,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use core::mem::{size_of, zeroed};

use crate::packet::{ETH_P_IPV4, EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr, read, write};

/// Set to 1 by the loader for stack routing: rewritten frames always pass
/// to the stack.
#[unsafe(no_mangle)]
static ROUTE_IN_STACK: Global<u8> = Global::new(0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;

/// Routes the rewritten UDP frame (untagged, no IP options or extension
/// headers) and returns the XDP action.
#[inline(never)]
pub fn forward(ctx: &XdpContext) -> u32 {
    if ROUTE_IN_STACK.load() != 0 {
        return xdp_action::XDP_PASS;
    }
    route(ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn route(ctx: &XdpContext) -> Option<u32> {
    let eth: EthHdr = read(ctx, 0).ok()?;
    // SAFETY: an all-zero bpf_fib_lookup is a valid input before the fields
    // below are set.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.l4_protocol = IPPROTO_UDP;
    // SAFETY: reading a field of the context the kernel passed in.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let udp_offset = if u16::from_be_bytes(eth.ether_type) == ETH_P_IPV4 {
        let ip: Ipv4Hdr = read(ctx, size_of::<EthHdr>()).ok()?;
        params.family = AF_INET;
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.total_len);
        params.__bindgen_anon_2.tos = ip.tos;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
        size_of::<EthHdr>() + size_of::<Ipv4Hdr>()
    } else {
        let ip: Ipv6Hdr = read(ctx, size_of::<EthHdr>()).ok()?;
        params.family = AF_INET6;
        params.__bindgen_anon_1.tot_len =
            u16::from_be_bytes(ip.payload_len) + size_of::<Ipv6Hdr>() as u16;
        // SAFETY: plain byte copies into the 16-byte address arrays.
        unsafe {
            params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(ip.src);
            params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(ip.dst);
        }
        size_of::<EthHdr>() + size_of::<Ipv6Hdr>()
    };
    let udp: UdpHdr = read(ctx, udp_offset).ok()?;
    params.sport = u16::from_ne_bytes(udp.src_port);
    params.dport = u16::from_ne_bytes(udp.dst_port);
    // An ingress lookup, as for a forwarded packet: it needs IP forwarding
    // on the ingress interface (Kubernetes nodes have it); without, the
    // helper says so and the frame goes to the stack. (An egress lookup
    // would take the ingress index as the required output interface.)
    // SAFETY: the helper reads and writes `params`, whose size we pass.
    let result = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if result != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        // Unresolved neighbour, blackhole, no route...: the stack decides.
        return None;
    }
    write(
        ctx,
        0,
        EthHdr {
            dst: params.dmac,
            src: params.smac,
            ether_type: eth.ether_type,
        },
    )
    .ok()?;
    // SAFETY: reading a field of the context the kernel passed in.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if params.ifindex == ingress {
        return Some(xdp_action::XDP_TX);
    }
    // SAFETY: a helper call with an interface index from the FIB.
    Some(unsafe { bpf_redirect(params.ifindex, 0) } as u32)
}
