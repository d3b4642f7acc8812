//! relay-bench: measurements of the relay.
//!
//! For now: the XDP program's cost per frame, by frame class (including
//! relaying a bound channel in each direction), from
//! BPF_PROG_TEST_RUN with repeat (the kernel times the loop and reports the
//! mean). Each case runs several times; the median and the spread are
//! reported. `--smoke` uses few repetitions and writes nothing, to check the
//! benchmark works.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use relay_common::PacketClass;
use turnx::{
    frame::{UdpFrame, channel_data, stun_binding_request},
    xdp::{KernelBinding, XdpRelay},
};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the turnx relay")]
struct Args {
    /// Short run that only checks the benchmark works; writes no results.
    #[arg(long)]
    smoke: bool,
    /// Runs of each case (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Program executions per run.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Where the markdown table goes.
    #[arg(long, default_value = "bench/results/xdp_per_frame.md")]
    output: PathBuf,
}

/// One frame to time, and the class the program must put it in.
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    class: PacketClass,
}

impl Case {
    /// Whether the program rewrites the frame. BPF_PROG_TEST_RUN does not
    /// restore the frame between repeats, so such a case is timed one run
    /// at a time (the kernel's timer then adds its own few tens of ns).
    fn rewrites(&self) -> bool {
        matches!(
            self.class,
            PacketClass::ForwardedToPeer | PacketClass::ForwardedToClient
        )
    }
}

const LISTEN_PORT: u16 = 3478;

/// The binding the forwarding cases run on.
fn binding() -> KernelBinding {
    KernelBinding {
        // Another client port than the unbound ChannelData case's.
        client: "198.18.0.1:50001".parse().unwrap(),
        server: SocketAddr::new("198.19.0.1".parse().unwrap(), LISTEN_PORT),
        channel: 0x4000,
        relayed: "198.19.0.1:50002".parse().unwrap(),
        peer: "198.19.0.2:3480".parse().unwrap(),
        slot: 0,
    }
}

fn cases() -> Vec<Case> {
    let v4 = |port: u16| -> (SocketAddr, SocketAddr) {
        (
            "198.18.0.1:50000".parse().unwrap(),
            SocketAddr::new("198.19.0.1".parse().unwrap(), port),
        )
    };
    let v6 = |port: u16| -> (SocketAddr, SocketAddr) {
        (
            "[fd00::1]:50000".parse().unwrap(),
            SocketAddr::new("fd00::2".parse().unwrap(), port),
        )
    };
    let frame = |(src, dst): (SocketAddr, SocketAddr), payload: &[u8]| {
        UdpFrame::new(src, dst, payload).build().bytes
    };
    let media = channel_data(0x4000, &[0x5A; 60], true);
    let mut truncated = frame(v4(LISTEN_PORT), &media);
    truncated.truncate(30);
    let bound = binding();
    vec![
        Case {
            name: "bound ChannelData 64 B to peer, IPv4",
            frame: frame(
                (bound.client, bound.server),
                &channel_data(0x4000, &[0x5A; 64], false),
            ),
            class: PacketClass::ForwardedToPeer,
        },
        Case {
            name: "bound peer data 64 B to client, IPv4",
            frame: frame((bound.peer, bound.relayed), &[0x5A; 64]),
            class: PacketClass::ForwardedToClient,
        },
        Case {
            name: "ChannelData 64 B, IPv4",
            frame: frame(v4(LISTEN_PORT), &media),
            class: PacketClass::ChannelData,
        },
        Case {
            name: "ChannelData 64 B, IPv6",
            frame: frame(v6(LISTEN_PORT), &media),
            class: PacketClass::ChannelData,
        },
        Case {
            name: "STUN Binding, IPv4",
            frame: frame(v4(LISTEN_PORT), &stun_binding_request([7; 12])),
            class: PacketClass::Stun,
        },
        Case {
            name: "UDP to another port, IPv4",
            frame: frame(v4(LISTEN_PORT + 1), &media),
            class: PacketClass::Unrelated,
        },
        Case {
            name: "truncated IPv4 header",
            frame: truncated,
            class: PacketClass::Malformed,
        },
    ]
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.runs = 3;
        args.repeat = 10_000;
    }
    let object = turnx::ebpf_object::embedded()
        .context("relay-bench was built without the XDP object; run it with `cargo xtask bench`")?;
    let mut relay = XdpRelay::load(object, "info").context("loading the XDP program")?;
    relay.set_listen_ports(&[LISTEN_PORT])?;
    relay.install(&binding())?;

    let mut table = String::from(
        "| frame | class | bytes | ns/frame (median) | min | max |\n|---|---|---:|---:|---:|---:|\n",
    );
    for case in cases() {
        let before = relay.counters()?;
        let (runs, repeat) = if case.rewrites() {
            // Bounded single runs, to keep the benchmark short.
            (args.repeat.min(20_000), 1)
        } else {
            (args.runs, args.repeat)
        };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                relay
                    .run_on_frame(&case.frame, repeat)
                    .map(|run| run.duration)
            })
            .collect::<Result<_, _>>()?;
        let counted = relay.counters()?.since(&before).get(case.class).packets;
        ensure!(
            counted == u64::from(runs) * u64::from(repeat),
            "{}: expected every run counted as {}, counted {counted}",
            case.name,
            case.class.name()
        );
        times.sort();
        let ns = |d: &Duration| d.as_nanos();
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            case.name,
            case.class.name(),
            case.frame.len(),
            ns(&times[times.len() / 2]),
            ns(&times[0]),
            ns(&times[times.len() - 1]),
        ));
    }
    println!(
        "XDP cost per frame, BPF_PROG_TEST_RUN, {} runs x {} repeats \
         (forwarding cases: single runs, timer overhead included)\n\n{table}",
        args.runs, args.repeat
    );
    if !args.smoke {
        if let Some(dir) = args.output.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let header = format!(
            "# XDP cost per frame\n\nBPF_PROG_TEST_RUN with repeat: the kernel's mean \
             time per program run, {} runs of {} repeats, median and range.\n\
             Reproduce with `cargo xtask bench`.\n\n",
            args.runs, args.repeat
        );
        std::fs::write(&args.output, header + &table)
            .with_context(|| format!("writing {}", args.output.display()))?;
        println!("written to {}", args.output.display());
    }
    Ok(())
}
