//! relay-bench: how much media one core relays and how much delay it adds,
//! side by side with coturn and with the machine's limits, in one run.
//!
//! It builds a client ↔ relay ↔ pod network of namespaces, offers ChannelData
//! on channel bindings made by real TURN exchanges with a generator of its
//! own (BPF_PROG_RUN in live-frames mode), counts what arrives with XDP
//! sinks, and reads how busy the relay's core was. Compared: turnx with the
//! XDP media plane, turnx in userspace, coturn, plain kernel forwarding and a
//! do-nothing XDP redirect. Also: round-trip latency, allocation setup rate
//! and memory, and the XDP program's own cost per frame. See bench/README.md.

mod allocations;
mod cpu;
mod flows;
mod latency;
mod plots;
mod prog_stats;
mod programs;
mod relays;
mod report;
mod stats;
mod throughput;
mod topology;
mod xdp_cost;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};
use clap::Parser;

use crate::{
    flows::{Binding, Direction},
    programs::BenchPrograms,
    relays::{Relay, Server},
    report::{AllocationRow, LatencyRow, PacedRow, Report, ScalingRow, ThroughputRow},
    topology::Topology,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the turnx relay against coturn and the machine's limits")]
struct Args {
    /// A short run (a second or two per configuration) that checks the
    /// whole suite works; results go to target/bench-smoke/.
    #[arg(long)]
    smoke: bool,
    /// Runs of each throughput measurement (median and range reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds the generator sends in each throughput run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Media payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 200, 1200])]
    sizes: Vec<usize>,
    /// Channel binding counts for the cost-versus-bindings measurement.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 1000, 100_000])]
    bindings: Vec<usize>,
    /// Fixed offered load for latency under load, frames per second.
    #[arg(long, default_value_t = 20_000)]
    load_rate: u64,
    /// Moderate offered loads, frames per second, at which loss is
    /// measured (below saturation there should be none).
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 150_000])]
    paced_rates: Vec<u64>,
    /// Offered load for the userspace path on one core and on two,
    /// frames per second: above what one core relays.
    #[arg(long, default_value_t = 400_000)]
    scaling_rate: u64,
    /// Pings per latency series.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// Allocation counts at which setup rate and memory are reported.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000])]
    allocations: Vec<u64>,
    /// BPF_PROG_TEST_RUN repeats per run for the XDP cost per frame.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Configurations to measure (all by default).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Relay::ALL)]
    relays: Vec<Relay>,
    /// Where tables and plots go.
    #[arg(long, default_value = "bench/results")]
    output: PathBuf,
    /// The README whose results block is replaced with the new headline
    /// table (full runs only).
    #[arg(long, default_value = "README.md")]
    readme: PathBuf,
    /// The benchmark's own XDP object (`cargo xtask bench` sets this).
    #[arg(long, env = "TURNX_BENCH_OBJECT")]
    bench_object: PathBuf,
}

impl Args {
    fn smoke(mut self) -> Self {
        self.runs = 1;
        self.seconds = 0.5;
        self.sizes = vec![64];
        self.bindings = vec![1, 1000];
        self.pings = 200;
        self.allocations = vec![300];
        self.paced_rates = vec![100_000];
        self.scaling_rate = 200_000;
        self.repeat = 10_000;
        self.output = PathBuf::from("target/bench-smoke");
        self
    }
}

/// Bindings in the XDP maps: room for the largest count measured.
const MAX_BINDINGS: usize = 131_072;
/// Longest the channel bindings of one measurement may take to set up.
const BINDING_TIME_LIMIT: Duration = Duration::from_secs(90);
/// Open files a server needs besides its allocations' sockets.
const ALLOCATION_FD_HEADROOM: u64 = 1000;
/// Longest a step of the allocation load may take.
const ALLOCATION_TIME_LIMIT: Duration = Duration::from_secs(120);

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args = args.smoke();
    }
    testkit::cleanup::install()?;
    let relay_object = turnx::ebpf_object::embedded()
        .context("relay-bench was built without the XDP object; run it with `cargo xtask bench`")?;
    let workdir = std::env::temp_dir().join(format!("turnx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    testkit::cleanup::scratch_directory(workdir.clone());
    let result = (|| {
        let topology = Topology::new().context("building the benchmark network")?;
        let mut programs = BenchPrograms::load(&args.bench_object, &topology)?;
        let mut report = Report::new(&args.output, topology.relay_core)?;

        println!("XDP program cost per frame (BPF_PROG_TEST_RUN)");
        report.xdp_costs = xdp_cost::measure(
            relay_object,
            &topology.relay,
            if args.smoke { 3 } else { 5 },
            args.repeat,
            &args.bindings,
        )?;

        for &relay in &args.relays {
            measure_relay(
                &args,
                &topology,
                &mut programs,
                &workdir,
                relay,
                &mut report,
            )?;
            if relay == Relay::Userspace {
                measure_scaling(&args, &topology, &mut programs, &workdir, &mut report)?;
            }
        }
        // Both servers hold a socket per allocation, so the open-file limit
        // caps allocations; it is fixed from outside (root may be refused a
        // higher hard limit, as on our CI machines).
        let most = cpu::open_file_limit().saturating_sub(ALLOCATION_FD_HEADROOM);
        let mut targets: Vec<u64> = args.allocations.iter().map(|&n| n.min(most)).collect();
        targets.dedup();
        if let Some(&wanted) = args.allocations.iter().find(|&&n| n > most) {
            let note = format!(
                "{wanted} allocations: both servers hold a socket per allocation and the hard \
                 limit on open files here is {} (raising it was refused), so the largest count \
                 measured is {most}",
                cpu::open_file_limit()
            );
            println!("capped: {note}");
            report.notes.push(note);
        }
        let servers = [Relay::XdpOffload, Relay::Coturn];
        for relay in servers.into_iter().filter(|r| args.relays.contains(r)) {
            println!("{}: allocation setup rate and memory", relay.label());
            let server = Server::start(relay, &topology, &workdir, MAX_BINDINGS)?
                .context("a TURN server")?;
            let steps = allocations::grow(&topology, &server, &targets, ALLOCATION_TIME_LIMIT)
                .with_context(|| format!("allocation load on {}", relay.label()))?;
            for step in steps {
                println!(
                    "  {} allocations: {:.0}/s, {:.0} bytes each, {} failed",
                    step.allocations, step.rate, step.bytes_per_allocation, step.failed
                );
                report.allocations.push(AllocationRow { relay, step });
            }
        }
        report.write(&args.readme, !args.smoke)?;
        if args.smoke {
            report.check_smoke()?;
        }
        println!("results in {}", args.output.display());
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&workdir);
    result
}

/// Throughput at every size in both directions, latency, and cost versus
/// bindings, for one configuration.
fn measure_relay(
    args: &Args,
    topology: &Topology,
    programs: &mut BenchPrograms,
    workdir: &std::path::Path,
    relay: Relay,
    report: &mut Report,
) -> Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    let mut counts = vec![1];
    let on_node = relay.pod_end_as_on_a_node();
    if on_node {
        programs.pod_end_as_on_a_node(topology)?;
    } else {
        counts.extend(args.bindings.iter().copied().filter(|&n| n > 1));
    }
    for count in counts {
        let server = Server::start(relay, topology, workdir, MAX_BINDINGS)?;
        let (bindings, _clients) = if relay.is_turn() {
            let per_allocation = relays::CHANNELS_PER_ALLOCATION;
            match relays::bind_channels(topology, count, per_allocation, BINDING_TIME_LIMIT) {
                Ok(made) => made,
                // Many bindings are a measurement of their own: note why
                // one is missing and go on with the rest.
                Err(err) if count > 1 => {
                    let note = format!("{} with {count} bindings: {err:#}", relay.label());
                    println!("skipped: {note}");
                    report.notes.push(note);
                    continue;
                }
                Err(err) => {
                    return Err(err.context(format!("a channel binding on {}", relay.label())));
                }
            }
        } else {
            (relays::plain_bindings(count), Vec::new())
        };
        // Without turnx's XDP program on the relay's veths, they need one
        // to receive what the generator sends with XDP.
        if matches!(
            relay,
            Relay::TcOffload
                | Relay::Userspace
                | Relay::Coturn
                | Relay::NodeCoturn
                | Relay::KernelForwarding
        ) {
            programs.attach_pass(topology)?;
        }
        let first = count == 1;
        let sizes: &[usize] = if first { &args.sizes } else { &[64] };
        // The generator's frames carry full checksums, which a pod's do
        // not: from a pod end as on a node only client→pod is measured.
        let directions: &[Direction] = if first && !on_node {
            &[Direction::ToPod, Direction::ToClient]
        } else {
            &[Direction::ToPod]
        };
        for &direction in directions {
            if let Some(program) = relay.ceiling_program() {
                let (from, to) = match direction {
                    Direction::ToPod => (&topology.relay_client_if, &topology.relay_pod_if),
                    Direction::ToClient => (&topology.relay_pod_if, &topology.relay_client_if),
                };
                programs.attach_redirect(program, &topology.relay, from, to)?;
            }
            for &size in sizes {
                let traffic = flows::traffic(topology, &bindings, direction, size, relay.is_turn());
                settle(topology, relay, report)?;
                // A short warm-up: caches, and the first packets' slow paths.
                throughput::run(programs, topology, &traffic, direction, duration / 10, None)?;
                let mut samples = Vec::new();
                for _ in 0..args.runs {
                    let sample =
                        throughput::run(programs, topology, &traffic, direction, duration, None)?;
                    samples.push(all_good(sample, relay.label())?);
                }
                let program_ns = if relay.relays_in_bpf() {
                    Some(program_ns_per_packet(
                        programs, topology, &traffic, direction, duration,
                    )?)
                } else {
                    None
                };
                let row = ThroughputRow {
                    relay,
                    direction,
                    size,
                    bindings: count,
                    samples,
                    program_ns,
                };
                println!("{}", row.summary());
                report.throughput.push(row);
                if first && direction == Direction::ToPod && size == report::HEADLINE_SIZE {
                    measure_paced(args, topology, programs, relay, &traffic, duration, report)?;
                }
            }
        }
        programs.detach_relay_side()?;
        if first && relay.ceiling_program().is_none() {
            measure_latency(args, topology, programs, relay, &bindings, report)?;
        }
        drop(server);
    }
    if on_node {
        programs.pod_end_engineered(topology)?;
    }
    Ok(())
}

/// `sample`, if the sink counted no wrong datagram in it; `what` names the
/// configuration in the error.
fn all_good(sample: throughput::Sample, what: &str) -> Result<throughput::Sample> {
    ensure!(
        sample.bad == 0,
        "{what}: the sink received {} wrong datagrams",
        sample.bad
    );
    Ok(sample)
}

/// Longest wait for the relay core to get quiet before a measurement.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Waits for the relay core to get quiet (see [`cpu::wait_quiet`]); notes
/// a measurement that had to start on a busy core.
fn settle(topology: &Topology, relay: Relay, report: &mut Report) -> Result<()> {
    if !cpu::wait_quiet(topology.relay_core, SETTLE_LIMIT)? {
        let note = format!(
            "{}: the relay core was still busy {SETTLE_LIMIT:?} after the previous \
             measurement, and the next one started anyway",
            relay.label()
        );
        println!("busy: {note}");
        report.notes.push(note);
    }
    Ok(())
}

/// The relay's BPF programs' mean run time (`run_time_ns / run_cnt`), in
/// place: one more run at full offered load with the kernel's run-time
/// statistics on. Frames the egress then drops ran too, so the runs
/// outnumber the packets relayed at full load.
fn program_ns_per_packet(
    programs: &mut BenchPrograms,
    topology: &Topology,
    traffic: &flows::Traffic,
    direction: Direction,
    duration: Duration,
) -> Result<f64> {
    let interfaces = [
        topology.relay_client_if.name.as_str(),
        topology.relay_pod_if.name.as_str(),
    ];
    let ids = prog_stats::attached(&topology.relay, &interfaces)?;
    let _enabled = prog_stats::Enabled::new()?;
    let before = prog_stats::read(&ids);
    let sample = throughput::run(programs, topology, traffic, direction, duration, None)?;
    let spent = prog_stats::read(&ids).since(&before);
    let per_run = spent.run_ns as f64 / spent.runs.max(1) as f64;
    println!(
        "  BPF in place: {} runs for {} relayed, {per_run:.0} ns per run",
        spent.runs, sample.received
    );
    Ok(per_run)
}

/// Loss at the moderate loads (`--paced-rates`), each as the cores idle
/// and kept awake, with the drop counters that grew: 64-byte media,
/// client→pod, for one configuration.
fn measure_paced(
    args: &Args,
    topology: &Topology,
    programs: &mut BenchPrograms,
    relay: Relay,
    traffic: &flows::Traffic,
    duration: Duration,
    report: &mut Report,
) -> Result<()> {
    for (&rate, awake) in args
        .paced_rates
        .iter()
        .flat_map(|rate| [(rate, false), (rate, true)])
    {
        let _awake = match awake.then(cpu::AwakeCores::new).transpose() {
            Ok(request) => request,
            Err(err) => {
                let note = format!(
                    "{} at {} pps with the cores kept awake: {err:#}",
                    relay.label(),
                    rate
                );
                println!("skipped: {note}");
                report.notes.push(note);
                continue;
            }
        };
        let before = topology.drop_counters()?;
        let mut samples = Vec::new();
        for _ in 0..args.runs {
            samples.push(throughput::run(
                programs,
                topology,
                traffic,
                Direction::ToPod,
                duration / 2,
                Some(rate),
            )?);
        }
        let drops = topology
            .drop_counters()?
            .into_iter()
            .filter_map(|(name, after)| {
                let grew = after.saturating_sub(*before.get(&name).unwrap_or(&0));
                (grew > 0).then_some((name, grew))
            })
            .collect();
        let row = PacedRow {
            relay,
            rate,
            awake,
            samples,
            drops,
        };
        println!("{}", row.summary());
        report.paced.push(row);
    }
    Ok(())
}

/// Allocations the media of the scaling measurement spreads over, one
/// binding each: enough that a hash spreads them about evenly over two
/// shards.
const SCALING_ALLOCATIONS: usize = 64;

/// The userspace path on one relay core and on two, one shard per core, at
/// `--scaling-rate`.
fn measure_scaling(
    args: &Args,
    topology: &Topology,
    programs: &mut BenchPrograms,
    workdir: &std::path::Path,
    report: &mut Report,
) -> Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    // The topology has two cores at least.
    for cores in [vec![topology.relay_core], topology.relay_cores(2)] {
        let server = Server::start_sharded(topology, workdir, &cores)?;
        let (bindings, _clients) =
            relays::bind_channels(topology, SCALING_ALLOCATIONS, 1, BINDING_TIME_LIMIT)
                .context("the scaling measurement's channel bindings")?;
        programs.attach_pass(topology)?;
        let traffic = flows::traffic(topology, &bindings, Direction::ToPod, 64, true);
        let rate = Some(args.scaling_rate);
        settle(topology, Relay::Userspace, report)?;
        let measured = (|| {
            throughput::run(
                programs,
                topology,
                &traffic,
                Direction::ToPod,
                duration / 10,
                rate,
            )?;
            let (mut samples, mut relay_cpu) = (Vec::new(), Vec::new());
            for _ in 0..args.runs {
                let before = relay_time(topology, &server)?;
                let sample = throughput::run(
                    programs,
                    topology,
                    &traffic,
                    Direction::ToPod,
                    duration,
                    rate,
                )?;
                relay_cpu.push(relay_time(topology, &server)?.saturating_sub(before));
                let what = format!("turnx userspace on {} cores", cores.len());
                samples.push(all_good(sample, &what)?);
            }
            anyhow::Ok((samples, relay_cpu))
        })();
        programs.detach_relay_side()?;
        drop(server);
        let (samples, relay_cpu) = measured?;
        let row = ScalingRow {
            cores: cores.len(),
            shares_load_core: cores.contains(&topology.load_core),
            rate: args.scaling_rate,
            allocations: SCALING_ALLOCATIONS,
            samples,
            relay_cpu,
        };
        println!("{}", row.summary());
        report.scaling.push(row);
    }
    Ok(())
}

/// CPU time of the relay so far: turnxd's threads and the NAPI threads of
/// the relay's veths, which do its receive work.
fn relay_time(topology: &Topology, server: &Server) -> Result<Duration> {
    let mut time = cpu::task_time(server.pid())?;
    for dev in [&topology.relay_client_if, &topology.relay_pod_if] {
        for thread in cpu::napi_threads(&dev.name)? {
            time += cpu::task_time(thread as u32)?;
        }
    }
    Ok(time)
}

fn measure_latency(
    args: &Args,
    topology: &Topology,
    programs: &mut BenchPrograms,
    relay: Relay,
    bindings: &[Binding],
    report: &mut Report,
) -> Result<()> {
    let traffic = flows::traffic(topology, bindings, Direction::ToPod, 64, relay.is_turn());
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        idle.push(latency::measure(
            programs,
            topology,
            relay.is_turn(),
            args.pings,
            None,
        )?);
        loaded.push(latency::measure(
            programs,
            topology,
            relay.is_turn(),
            args.pings,
            Some((&traffic, args.load_rate)),
        )?);
    }
    let row = LatencyRow {
        relay,
        idle,
        loaded,
        load_rate: args.load_rate,
    };
    println!("{}", row.summary());
    report.latency.push(row);
    Ok(())
}
