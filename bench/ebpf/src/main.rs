//! The benchmark's and the tests' programs. None of them is part of the
//! relay.
//!
//! - `turnx_bench_gen` runs under BPF_PROG_RUN in live-frames mode: it
//!   writes the next flow's headers over the frame and transmits it (XDP_TX
//!   out of the context's interface), which is how the benchmark offers the
//!   relay millions of frames a second the way a NIC driver would.
//! - `turnx_bench_sink` counts and checks the datagrams that reach a
//!   namespace and drops them; everything else passes.
//!   `turnx_bench_tc_sink` does the same at tc ingress, for an interface
//!   that must not run XDP (a pod's veth as a node has it).
//! - `turnx_bench_redirect` sends every frame out of another interface
//!   unchanged: the ceiling of any XDP forwarder on this machine.
//! - `turnx_bench_forward` does the least any forwarder does before it
//!   sends a frame on: reads the headers, swaps the MAC addresses,
//!   decrements the TTL (with an incremental checksum update) and
//!   redirects. The fair ceiling of a relay that rewrites headers.
//! - `turnx_bench_pass` passes everything on.
//! - `turnx_test_foreign_xdp` and `turnx_test_foreign_tc` stand in for
//!   someone else's programs (Cilium's) on the relay's interfaces: they
//!   count the datagrams to one port and pass everything on.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use relay_common::bench::{
    GEN_HEAD_LEN, GenConfig, GenFlow, MAX_GEN_FLOWS, PAYLOAD_MAGIC, SinkConfig, SinkCounters,
};

#[map]
static GEN_FLOWS: Array<GenFlow> = Array::with_max_entries(MAX_GEN_FLOWS, 0);
#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);
/// The generator's position in the flows (one CPU runs it at a time, but
/// per-CPU keeps it free of atomics either way).
#[map]
static GEN_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SINK_CONFIG: Array<SinkConfig> = Array::with_max_entries(1, 0);
#[map]
static SINK_COUNTERS: PerCpuArray<SinkCounters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static REDIRECT_TO: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn turnx_bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + GEN_HEAD_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(config), Some(next)) = (GEN_CONFIG.get(0), GEN_NEXT.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    let index = unsafe { *next };
    let following = index + 1;
    // SAFETY: as above.
    unsafe {
        *next = if following >= config.flows {
            0
        } else {
            following
        }
    };
    let Some(flow) = GEN_FLOWS.get(index) else {
        return xdp_action::XDP_ABORTED;
    };
    let head = start as *mut [u64; GEN_HEAD_LEN / 8];
    // SAFETY: the frame holds at least GEN_HEAD_LEN bytes (checked above);
    // unaligned because the frame's start need not be 8-byte aligned.
    unsafe { head.write_unaligned(flow.head) };
    xdp_action::XDP_TX
}

#[xdp]
pub fn turnx_bench_sink(ctx: XdpContext) -> u32 {
    match sink(ctx.data(), ctx.data_end()) {
        Some(good) => {
            count_sunk(good);
            xdp_action::XDP_DROP
        }
        None => xdp_action::XDP_PASS,
    }
}

/// The sink at tc ingress, for a pod's veth as a node has it: no XDP
/// program on it, so that it receives the way a pod does.
#[classifier]
pub fn turnx_bench_tc_sink(ctx: TcContext) -> i32 {
    // Direct access needs the headers and the magic in the linear area.
    if ctx.pull_data(ctx.len().min(SINK_READ_LEN)).is_err() {
        return TC_ACT_OK;
    }
    match sink(ctx.data(), ctx.data_end()) {
        Some(good) => {
            count_sunk(good);
            TC_ACT_SHOT
        }
        None => TC_ACT_OK,
    }
}

/// What the sink reads: Ethernet, IPv6 and UDP headers, the ChannelData
/// header's room and the magic.
const SINK_READ_LEN: u32 = 14 + 40 + 8 + 12 + 4;

#[inline(always)]
fn count_sunk(good: bool) {
    if let Some(counters) = SINK_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe {
            if good {
                (*counters).good += 1;
            } else {
                (*counters).bad += 1;
            }
        }
    }
}

/// Whether the frame is a datagram the sink counts (`None` if not), and if
/// so whether it is the one expected.
#[inline(always)]
fn sink(start: usize, end: usize) -> Option<bool> {
    let config = SINK_CONFIG.get(0)?;
    let udp = udp_header(start, end)?;
    // SAFETY: `udp_header` checked that the UDP header ends before `end`.
    let (dst_port, udp_len) = unsafe {
        (
            u16::from_be_bytes(*((udp + 2) as *const [u8; 2])),
            u16::from_be_bytes(*((udp + 4) as *const [u8; 2])),
        )
    };
    let magic = udp + 8 + usize::from(config.magic_offset & 0x0C);
    if magic + 4 > end {
        return None;
    }
    // SAFETY: the magic ends before `end` (checked above).
    let magic = unsafe { *(magic as *const [u8; 4]) };
    if dst_port < config.port_first || dst_port > config.port_last {
        return None;
    }
    Some(udp_len == config.udp_len && magic == PAYLOAD_MAGIC)
}

/// Where the UDP header of the Ethernet frame from `start` to `end`
/// begins, if it is an IPv4 or IPv6 datagram (without IPv6 extension
/// headers) whose UDP header is all there.
#[inline(always)]
fn udp_header(start: usize, end: usize) -> Option<usize> {
    if start + 14 > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let ether_type = unsafe { [*((start + 12) as *const u8), *((start + 13) as *const u8)] };
    let udp = match ether_type {
        [0x08, 0x00] => {
            if start + 14 + 20 > end {
                return None;
            }
            // SAFETY: bounds checked above.
            let (version_ihl, protocol) = unsafe {
                (
                    *((start + 14) as *const u8),
                    *((start + 14 + 9) as *const u8),
                )
            };
            if protocol != 17 {
                return None;
            }
            14 + usize::from(version_ihl & 0x0F) * 4
        }
        [0x86, 0xDD] => {
            if start + 14 + 40 > end {
                return None;
            }
            // SAFETY: bounds checked above.
            if unsafe { *((start + 14 + 6) as *const u8) } != 17 {
                return None;
            }
            14 + 40
        }
        _ => return None,
    };
    let udp = start + udp;
    if udp + 8 > end {
        return None;
    }
    Some(udp)
}

#[xdp]
pub fn turnx_bench_redirect(_ctx: XdpContext) -> u32 {
    match REDIRECT_TO.get(0) {
        // SAFETY: a helper call with plain integer arguments.
        Some(ifindex) => unsafe { bpf_redirect(*ifindex, 0) as u32 },
        None => xdp_action::XDP_PASS,
    }
}

/// The fair ceiling: swaps the MAC addresses, decrements the IPv4 TTL
/// (updating the header checksum incrementally, RFC 1624) or the IPv6 hop
/// limit, and redirects the frame as `turnx_bench_redirect` does. What it
/// cannot read, or whose TTL has run out, passes.
#[xdp]
pub fn turnx_bench_forward(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(ifindex) = REDIRECT_TO.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if start + 14 + 20 > end {
        return xdp_action::XDP_PASS;
    }
    let ether_type = start + 12;
    let ip = start + 14;
    // SAFETY: every access below lies within the first 34 bytes, which the
    // frame holds (checked above), or within the first 54 (checked where
    // IPv6 needs them).
    unsafe {
        match *(ether_type as *const [u8; 2]) {
            [0x08, 0x00] => {
                let ttl = (ip + 8) as *mut u8;
                if *ttl <= 1 {
                    return xdp_action::XDP_PASS;
                }
                *ttl -= 1;
                // The TTL is the high byte of its header word: the sum
                // drops by 0x0100, so its complement grows by as much.
                let check = (ip + 10) as *mut [u8; 2];
                let sum = u32::from(u16::from_be_bytes(*check)) + 0x0100;
                *check = ((sum + (sum >> 16)) as u16).to_be_bytes();
            }
            [0x86, 0xDD] => {
                if start + 14 + 40 > end {
                    return xdp_action::XDP_PASS;
                }
                let hop_limit = (ip + 7) as *mut u8;
                if *hop_limit <= 1 {
                    return xdp_action::XDP_PASS;
                }
                *hop_limit -= 1;
            }
            _ => return xdp_action::XDP_PASS,
        }
        let macs = start as *mut [u8; 12];
        let m = *macs;
        *macs = [
            m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
        ];
        bpf_redirect(*ifindex, 0) as u32
    }
}

/// Passes every frame to the stack. Attached to the relay's veths when the
/// configuration under test has no XDP program of its own, because a veth
/// drops the frames that another veth's XDP sends it unless it has one.
#[xdp]
pub fn turnx_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The destination port the stand-ins below count; set at load.
#[unsafe(no_mangle)]
static FOREIGN_PORT: Global<u16> = Global::new(0);
/// How many datagrams to FOREIGN_PORT a stand-in saw.
#[map]
static FOREIGN_SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A stand-in for someone else's XDP program on a relay interface
/// (Cilium's, say), for the coexistence tests: it counts the datagrams to
/// FOREIGN_PORT and passes every frame on.
#[xdp]
pub fn turnx_test_foreign_xdp(ctx: XdpContext) -> u32 {
    count_foreign(ctx.data(), ctx.data_end());
    xdp_action::XDP_PASS
}

/// The same at tc ingress. Like Cilium's programs it ends the chain with
/// TC_ACT_OK, which hands the packet to the stack.
#[classifier]
pub fn turnx_test_foreign_tc(ctx: TcContext) -> i32 {
    // Direct access needs the headers in the linear area (and pulling
    // more than the packet holds fails).
    if ctx.pull_data(ctx.len().min(ETH_IPV6_UDP_LEN)).is_ok() {
        count_foreign(ctx.data(), ctx.data_end());
    }
    TC_ACT_OK
}

/// Ethernet, IPv6 and UDP headers: what the stand-ins read.
const ETH_IPV6_UDP_LEN: u32 = 14 + 40 + 8;

#[inline(always)]
fn count_foreign(start: usize, end: usize) {
    let Some(udp) = udp_header(start, end) else {
        return;
    };
    // SAFETY: `udp_header` checked that the UDP header ends before `end`.
    let dst_port = unsafe { u16::from_be_bytes(*((udp + 2) as *const [u8; 2])) };
    if dst_port != FOREIGN_PORT.load() {
        return;
    }
    if let Some(seen) = FOREIGN_SEEN.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *seen += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
