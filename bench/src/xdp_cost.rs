//! The XDP program's cost per frame, by frame class and, for relaying, by
//! number of installed bindings: BPF_PROG_TEST_RUN with repeat, where the
//! kernel times the loop and reports the mean.
//!
//! A relayed frame is rewritten in place and the kernel does not restore it
//! between repeats, so relaying is timed one run at a time, which adds the
//! kernel timer's own cost. That cost is measured the same way on a frame
//! the program rejects at once (a truncated header) and subtracted.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use relay_common::PacketClass;
use testkit::{
    Netns,
    frame::{UdpFrame, channel_data, stun_binding_request},
};
use turnx::xdp::{KernelBinding, LoadOptions, XdpRelay};

use crate::{
    stats::Spread,
    topology::{CLIENT_V4, POD_V4, RELAY_CLIENT_SIDE_V4, RELAY_POD_SIDE_V4},
};

const LISTEN_PORT: u16 = 3478;
/// Single runs per relaying case.
const SINGLE_RUNS: u32 = 20_000;

/// One timed case.
pub struct Cost {
    /// What was timed.
    pub name: String,
    /// The class the program put the frame in.
    pub class: PacketClass,
    /// Frame length.
    pub bytes: usize,
    /// Bindings installed at the time.
    pub bindings: usize,
    /// Nanoseconds per frame over the runs (timer cost subtracted for
    /// relaying).
    pub ns: Spread,
}

/// Binding `i` of many: one allocation (client port, relayed port) per
/// 4000 channels, each channel to its own peer port.
fn binding(i: usize) -> KernelBinding {
    let (allocation, channel) = ((i / 4000) as u16, (i % 4000) as u16);
    KernelBinding {
        client: SocketAddr::new(CLIENT_V4.into(), 50_001 + allocation),
        server: SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), LISTEN_PORT),
        channel: 0x4000 + channel,
        relayed: SocketAddr::new(RELAY_POD_SIDE_V4.into(), 20_000 + allocation),
        peer: SocketAddr::new(POD_V4.into(), 3480 + channel),
        slot: i as u32,
        buckets: Default::default(),
        expires: 0,
    }
}

fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    UdpFrame::new(src, dst, payload).build().bytes
}

/// Frames that the program classifies without relaying.
fn classification_cases() -> Vec<(&'static str, Vec<u8>, PacketClass)> {
    let v4 = |port: u16| -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::new(CLIENT_V4.into(), 50_000),
            SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), port),
        )
    };
    let v6 = |port: u16| -> (SocketAddr, SocketAddr) {
        (
            "[fd00::1]:50000".parse().unwrap(),
            SocketAddr::new("fd00::2".parse().unwrap(), port),
        )
    };
    let media = channel_data(0x4000, &[0x5A; 60], true);
    let (src, dst) = v4(LISTEN_PORT);
    let mut truncated = frame(src, dst, &media);
    truncated.truncate(30);
    vec![
        (
            "ChannelData 64 B, unbound, IPv4",
            frame(src, dst, &media),
            PacketClass::ChannelData,
        ),
        (
            "ChannelData 64 B, unbound, IPv6",
            {
                let (src, dst) = v6(LISTEN_PORT);
                frame(src, dst, &media)
            },
            PacketClass::ChannelData,
        ),
        (
            "STUN Binding, IPv4",
            frame(src, dst, &stun_binding_request([7; 12])),
            PacketClass::Stun,
        ),
        (
            "UDP to another port, IPv4",
            {
                let (src, dst) = v4(LISTEN_PORT + 1);
                frame(src, dst, &media)
            },
            PacketClass::Unrelated,
        ),
        ("truncated IPv4 header", truncated, PacketClass::Malformed),
    ]
}

/// Times every case; relaying with each count in `map_sizes` installed.
/// Runs inside `namespace`, the relay's, which has routes and permanent
/// neighbours for the addresses above.
pub fn measure(
    object: &[u8],
    namespace: &Netns,
    runs: u32,
    repeat: u32,
    map_sizes: &[usize],
) -> Result<Vec<Cost>> {
    let capacity = map_sizes.iter().copied().max().unwrap_or(1).max(1);
    let mut relay = XdpRelay::load_with(
        object,
        "info",
        &LoadOptions {
            max_bindings: Some(capacity as u32),
            ..LoadOptions::default()
        },
    )?;
    relay.set_listen_ports(&[LISTEN_PORT])?;
    // The sinks on the far ends make the relay's veths deliver XDP frames;
    // the program checks that before relaying, as it does in production.
    let egress = namespace.run(|| relay.refresh_egress())?;
    ensure!(
        !egress.is_empty(),
        "no relay interface delivers XDP frames; the sinks should run on the far ends"
    );
    let mut costs = Vec::new();
    let time = |relay: &XdpRelay, frame: &[u8], class, runs: u32, repeat: u32| -> Result<Spread> {
        let before = relay.counters()?;
        let times: Vec<Duration> = namespace.run(|| {
            (0..runs)
                .map(|_| relay.run_on_frame(frame, repeat).map(|run| run.duration))
                .collect::<Result<_, _>>()
        })?;
        let counted = relay.counters()?.since(&before).get(class).packets;
        ensure!(
            counted == u64::from(runs) * u64::from(repeat),
            "expected every run counted as {}, counted {counted}",
            class.name()
        );
        Ok(Spread::of(times.iter().map(|d| d.as_nanos() as f64)))
    };
    let mut truncated = Vec::new();
    for (name, frame, class) in classification_cases() {
        let ns = time(&relay, &frame, class, runs, repeat)?;
        if class == PacketClass::Malformed {
            truncated = frame.clone();
        }
        costs.push(Cost {
            name: name.into(),
            class,
            bytes: frame.len(),
            bindings: 0,
            ns,
        });
    }
    let single_runs = SINGLE_RUNS.min(runs * repeat);
    // What a single run adds: the same frame timed alone and in a loop.
    let looped = time(&relay, &truncated, PacketClass::Malformed, runs, repeat)?.median;
    let alone = time(&relay, &truncated, PacketClass::Malformed, single_runs, 1)?.median;
    let overhead = (alone - looped).max(0.0);
    let mut installed = 0;
    for &size in map_sizes {
        while installed < size {
            relay.install(&binding(installed))?;
            installed += 1;
        }
        let last = binding(size - 1);
        let to_peer = frame(
            last.client,
            last.server,
            &channel_data(last.channel, &[0x5A; 64], false),
        );
        let to_client = frame(last.peer, last.relayed, &[0x5A; 64]);
        for (name, frame, class) in [
            (
                "relay 64 B client→peer, IPv4",
                to_peer,
                PacketClass::ForwardedToPeer,
            ),
            (
                "relay 64 B peer→client, IPv4",
                to_client,
                PacketClass::ForwardedToClient,
            ),
        ] {
            let raw = time(&relay, &frame, class, single_runs, 1)?;
            let net = |v: f64| (v - overhead).max(0.0);
            costs.push(Cost {
                name: name.into(),
                class,
                bytes: frame.len(),
                bindings: size,
                ns: Spread {
                    median: net(raw.median),
                    min: net(raw.min),
                    max: net(raw.max),
                },
            });
        }
    }
    Ok(costs)
}
