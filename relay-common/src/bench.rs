//! Map types of the benchmark's own XDP programs (`bench/ebpf`): a traffic
//! generator run with BPF_PROG_RUN in live-frames mode, a sink that counts
//! and checks what arrives, a do-nothing redirect (the machine's ceiling)
//! and a minimal forwarder (the fair ceiling). They are not part of the
//! relay.

/// Name of the generator program.
pub const GEN_PROGRAM: &str = "turnx_bench_gen";
/// Name of the sink program.
pub const SINK_PROGRAM: &str = "turnx_bench_sink";
/// Name of the sink at tc ingress (same maps).
pub const TC_SINK_PROGRAM: &str = "turnx_bench_tc_sink";
/// Name of the redirect program.
pub const REDIRECT_PROGRAM: &str = "turnx_bench_redirect";
/// Name of the minimal forwarder (the fair ceiling), which redirects as
/// the redirect program does.
pub const FORWARD_PROGRAM: &str = "turnx_bench_forward";

/// Name of the pass-everything program.
pub const PASS_PROGRAM: &str = "turnx_bench_pass";

/// Array of [`GenFlow`]: the frames the generator cycles through.
pub const MAP_GEN_FLOWS: &str = "GEN_FLOWS";
/// Array of one [`GenConfig`].
pub const MAP_GEN_CONFIG: &str = "GEN_CONFIG";
/// Array of one [`SinkConfig`].
pub const MAP_SINK_CONFIG: &str = "SINK_CONFIG";
/// Per-CPU array of [`SinkCounters`], one entry.
pub const MAP_SINK_COUNTERS: &str = "SINK_COUNTERS";
/// Array of one `u32`: the ifindex the redirect program sends frames to.
pub const MAP_REDIRECT_TO: &str = "REDIRECT_TO";

/// Most flows the generator cycles through (one per channel binding).
pub const MAX_GEN_FLOWS: u32 = 131_072;
/// Bytes of a flow's frame the generator writes: every header of the
/// largest frame (Ethernet, IPv6, UDP, ChannelData) and the start of the
/// payload, which is the same in every flow.
pub const GEN_HEAD_LEN: usize = 72;
/// The first bytes of every generated payload, which the sink checks.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"TXBG";

/// The first [`GEN_HEAD_LEN`] bytes of one flow's frame, checksums included.
/// The generator copies them over the frame before each transmission,
/// because the pages of live frames are recycled with whatever the relay
/// wrote into them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenFlow {
    /// The frame's first bytes, as 8-byte words so the copy is word-wise.
    pub head: [u64; GEN_HEAD_LEN / 8],
}

/// What the generator does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenConfig {
    /// Number of flows in [`MAP_GEN_FLOWS`] to cycle through, at least 1.
    pub flows: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// What the sink counts: UDP datagrams to a destination port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkConfig {
    /// Lowest destination port counted (host order).
    pub port_first: u16,
    /// Highest destination port counted (host order).
    pub port_last: u16,
    /// The UDP length every counted datagram must have (host order).
    pub udp_len: u16,
    /// Offset of [`PAYLOAD_MAGIC`] in the UDP payload (4 after a
    /// ChannelData header).
    pub magic_offset: u16,
}

/// The sink's count, per CPU. Counted datagrams are dropped; others pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCounters {
    /// Datagrams to the port range with the expected length and magic.
    pub good: u64,
    /// Datagrams to the port range with another length or payload.
    pub bad: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: u64 words only.
    unsafe impl aya::Pod for super::GenFlow {}
    // SAFETY: u32 fields, no padding.
    unsafe impl aya::Pod for super::GenConfig {}
    // SAFETY: u16 fields, no padding.
    unsafe impl aya::Pod for super::SinkConfig {}
    // SAFETY: u64 fields, no padding.
    unsafe impl aya::Pod for super::SinkCounters {}
}
