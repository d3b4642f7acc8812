//! The frames the generator sends for each configuration and direction,
//! and what the sink expects of the datagrams that come out.

use std::net::SocketAddr;

use relay_common::bench::{GEN_HEAD_LEN, GenFlow, PAYLOAD_MAGIC, SinkConfig};
use testkit::frame::{UdpFrame, channel_data};

use crate::topology::{RELAY_CLIENT_SIDE_V4, Topology};

/// Which way media flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to media server: ChannelData in, plain UDP out.
    ToPod,
    /// Media server to client: plain UDP in, ChannelData out.
    ToClient,
}

impl Direction {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ToPod => "client→pod",
            Direction::ToClient => "pod→client",
        }
    }
}

/// One channel binding set up through TURN (or, for the configurations
/// without TURN, the same addresses without a relay).
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    /// The client's transport address.
    pub client: SocketAddr,
    /// The channel number.
    pub channel: u16,
    /// The allocation's relayed address.
    pub relayed: SocketAddr,
    /// The peer in the pod.
    pub peer: SocketAddr,
}

/// What the generator sends and what the sink checks for one measurement.
pub struct Traffic {
    /// One head per binding.
    pub heads: Vec<GenFlow>,
    /// The full first frame; the generator writes each flow's head over it.
    pub template: Vec<u8>,
    /// What the sink counts.
    pub sink: SinkConfig,
}

/// The media payload: the magic the sink checks, then filler.
pub fn payload(size: usize) -> Vec<u8> {
    let mut payload = vec![0x5A; size.max(PAYLOAD_MAGIC.len())];
    payload[..PAYLOAD_MAGIC.len()].copy_from_slice(&PAYLOAD_MAGIC);
    payload
}

/// The traffic for `bindings`: through a TURN relay when `turn`, else the
/// datagrams the relay would have delivered, sent straight from origin to
/// destination (kernel forwarding and the redirect ceiling).
pub fn traffic(
    topology: &Topology,
    bindings: &[Binding],
    direction: Direction,
    payload_size: usize,
    turn: bool,
) -> Traffic {
    let data = payload(payload_size);
    let server = SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), crate::relays::TURN_PORT);
    let (src_mac, dst_mac) = match direction {
        Direction::ToPod => (topology.client_if.mac, topology.relay_client_if.mac),
        Direction::ToClient => (topology.pod_if.mac, topology.relay_pod_if.mac),
    };
    let frame = |binding: &Binding| -> Vec<u8> {
        let (src, dst, udp_payload) = match (direction, turn) {
            (Direction::ToPod, true) => (
                binding.client,
                server,
                channel_data(binding.channel, &data, false),
            ),
            (Direction::ToPod, false) => (binding.client, binding.peer, data.clone()),
            (Direction::ToClient, true) => (binding.peer, binding.relayed, data.clone()),
            (Direction::ToClient, false) => (
                binding.peer,
                binding.client,
                channel_data(binding.channel, &data, false),
            ),
        };
        let mut bytes = UdpFrame::new(src, dst, &udp_payload).build().bytes;
        bytes[..6].copy_from_slice(&dst_mac);
        bytes[6..12].copy_from_slice(&src_mac);
        bytes
    };
    let frames: Vec<Vec<u8>> = bindings.iter().map(frame).collect();
    let heads = frames
        .iter()
        .map(|bytes| {
            let mut head = [0u64; GEN_HEAD_LEN / 8];
            for (word, chunk) in head.iter_mut().zip(bytes[..GEN_HEAD_LEN].chunks_exact(8)) {
                *word = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
            }
            GenFlow { head }
        })
        .collect();
    let ports = |port: fn(&Binding) -> u16| {
        let ports = bindings.iter().map(port);
        (ports.clone().min().unwrap_or(0), ports.max().unwrap_or(0))
    };
    let sink = match direction {
        Direction::ToPod => {
            let (first, last) = ports(|b| b.peer.port());
            SinkConfig {
                port_first: first,
                port_last: last,
                udp_len: (8 + data.len()) as u16,
                magic_offset: 0,
            }
        }
        Direction::ToClient => {
            let (first, last) = ports(|b| b.client.port());
            SinkConfig {
                port_first: first,
                port_last: last,
                udp_len: (8 + 4 + data.len()) as u16,
                magic_offset: 4,
            }
        }
    };
    Traffic {
        heads,
        template: frames.into_iter().next().unwrap_or_default(),
        sink,
    }
}
