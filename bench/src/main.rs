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

/// A network namespace made for the benchmark, where the relay's FIB
/// lookups succeed: IP forwarding, routes to the client and peer networks,
/// and permanent neighbours (no traffic is ever sent). Removed on drop.
struct BenchNamespace {
    name: String,
}

impl BenchNamespace {
    fn new() -> Result<Self> {
        let name = format!("turnxbench{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let namespace = BenchNamespace { name };
        let ns = namespace.name.as_str();
        let links = [
            ("198.18.0", "198.18.0.1", "bclient", "bclientp"),
            ("198.19.0", "198.19.0.2", "bpod", "bpodp"),
        ];
        for (net, neighbour, a, b) in links {
            ip(&[
                "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b,
            ])?;
            ip(&["-n", ns, "addr", "add", &format!("{net}.254/24"), "dev", a])?;
            ip(&["-n", ns, "link", "set", a, "up"])?;
            ip(&["-n", ns, "link", "set", b, "up"])?;
            ip(&[
                "-n",
                ns,
                "neigh",
                "add",
                neighbour,
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                a,
                "nud",
                "permanent",
            ])?;
        }
        let status = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/conf/all/forwarding",
            ])
            .status()?;
        ensure!(status.success(), "enabling forwarding in {ns}");
        Ok(namespace)
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path)?;
                    // SAFETY: setns on a namespace fd we hold; only this
                    // thread moves.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error().into());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
        })
    }
}

impl Drop for BenchNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("ip").args(args).output()?;
    ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
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

    let namespace = BenchNamespace::new().context("creating the benchmark namespace")?;
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
        let mut times: Vec<Duration> = namespace.run(|| {
            (0..runs)
                .map(|_| {
                    relay
                        .run_on_frame(&case.frame, repeat)
                        .map(|run| run.duration)
                })
                .collect::<Result<_, _>>()
        })??;
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
             time per program run, {} runs of {} repeats, median and range. The \
             forwarding cases (with their FIB lookup, in a namespace with routes and \
             permanent neighbours) rewrite the frame, which the kernel does not restore \
             between repeats: they are single runs, median of many, and include the \
             kernel timer's own overhead, so read them as upper bounds.\n\
             Reproduce with `cargo xtask bench`.\n\n",
            args.runs, args.repeat
        );
        std::fs::write(&args.output, header + &table)
            .with_context(|| format!("writing {}", args.output.display()))?;
        println!("written to {}", args.output.display());
    }
    Ok(())
}
