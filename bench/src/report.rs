//! The results: markdown tables (with the machine and the targets) and
//! plots in the output directory, and the headline table in the README.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{
    allocations::Step,
    flows::Direction,
    latency::Rtts,
    plots,
    relays::Relay,
    stats::{Spread, si},
    throughput::Sample,
    xdp_cost::Cost,
};

/// Marks the generated block in the README.
const README_BEGIN: &str = "<!-- bench:begin -->";
const README_END: &str = "<!-- bench:end -->";
/// The payload and direction of the headline comparison.
pub const HEADLINE_SIZE: usize = 64;

/// Repeated throughput runs of one configuration and traffic.
pub struct ThroughputRow {
    pub relay: Relay,
    pub direction: Direction,
    pub size: usize,
    pub bindings: usize,
    pub samples: Vec<Sample>,
    /// The relay's BPF programs' mean run time per frame, measured in place
    /// (`kernel.bpf_stats_enabled`: `run_time_ns / run_cnt`), where BPF
    /// relays.
    pub program_ns: Option<f64>,
}

impl ThroughputRow {
    pub fn pps(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::pps))
    }
    pub fn pps_per_cpu(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::pps_per_cpu))
    }
    pub fn ns_per_packet(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::ns_per_packet))
    }
    fn offered(&self) -> Spread {
        Spread::of(
            self.samples
                .iter()
                .map(|s| s.sent as f64 / s.duration.as_secs_f64()),
        )
    }
    fn loss(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::loss))
    }

    /// One line for the console.
    pub fn summary(&self) -> String {
        format!(
            "{:<24} {} {:>5} B {:>6} bindings: {:>9} pps relayed of {:>9} offered, {:>9} pps per CPU-s",
            self.relay.label(),
            self.direction.label(),
            self.size,
            self.bindings,
            si(self.pps().median),
            si(self.offered().median),
            si(self.pps_per_cpu().median)
        )
    }
}

/// Loss at a moderate, paced load: 64-byte media, client→pod, one binding.
pub struct PacedRow {
    pub relay: Relay,
    /// Offered frames per second.
    pub rate: u64,
    /// Whether the cores were kept from halting (`cpu::AwakeCores`).
    pub awake: bool,
    pub samples: Vec<Sample>,
    /// The link ends' drop and error counters that grew over the runs.
    pub drops: Vec<(String, u64)>,
}

impl PacedRow {
    /// Share of the offered frames lost: median and range over the runs.
    pub fn loss(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::loss))
    }

    /// Relayed packets per CPU-second of the relay core.
    pub fn pps_per_cpu(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::pps_per_cpu))
    }

    /// Share of the time the hypervisor took the relay core away.
    pub fn steal(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::steal_share))
    }

    /// Share of the time the relay core was busy.
    pub fn busy(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::busy_share))
    }

    pub fn summary(&self) -> String {
        let (loss, busy) = (self.loss(), self.busy());
        format!(
            "{:<24} paced at {} pps{}: loss {:.3} % [{:.3}–{:.3} %], relay core {:.0} % busy, \
             {:.1} % stolen; counted drops: {}",
            self.relay.label(),
            si(self.rate as f64),
            if self.awake { ", cores awake" } else { "" },
            100.0 * loss.median,
            100.0 * loss.min,
            100.0 * loss.max,
            100.0 * busy.median,
            100.0 * self.steal().median,
            self.drops_text(),
        )
    }

    /// The drop counters that grew, or "none".
    fn drops_text(&self) -> String {
        if self.drops.is_empty() {
            return "none".into();
        }
        let drops: Vec<String> = self
            .drops
            .iter()
            .map(|(name, grew)| format!("`{name}` +{grew}"))
            .collect();
        drops.join(", ")
    }
}

/// The userspace path on one core or several, one shard per core, at a
/// fixed offered load above what one core relays: 64-byte media,
/// client→pod, one binding per allocation.
pub struct ScalingRow {
    /// Relay cores, and shards.
    pub cores: usize,
    /// Whether the load core is one of them (a machine of too few cores).
    pub shares_load_core: bool,
    /// Offered frames per second.
    pub rate: u64,
    /// Allocations the media spreads over.
    pub allocations: usize,
    pub samples: Vec<Sample>,
    /// The relay's own CPU time in each run: turnxd's threads and its
    /// veths' NAPI threads.
    pub relay_cpu: Vec<Duration>,
}

impl ScalingRow {
    /// Relayed packets per second: median and range over the runs.
    pub fn pps(&self) -> Spread {
        Spread::of(self.samples.iter().map(Sample::pps))
    }

    /// Relayed packets per CPU-second of the relay's own threads.
    pub fn pps_per_relay_cpu(&self) -> Spread {
        Spread::of(
            self.samples
                .iter()
                .zip(&self.relay_cpu)
                .map(|(sample, cpu)| sample.received as f64 / cpu.as_secs_f64().max(1e-3)),
        )
    }

    /// Cores' worth of the relay's own threads.
    pub fn relay_cores_used(&self) -> Spread {
        Spread::of(
            self.samples
                .iter()
                .zip(&self.relay_cpu)
                .map(|(sample, cpu)| cpu.as_secs_f64() / sample.duration.as_secs_f64()),
        )
    }

    pub fn summary(&self) -> String {
        let pps = self.pps();
        format!(
            "turnx userspace, {} core{} ({} shard{}{}): {} pps relayed [{}–{}] of {} pps offered \
             over {} allocations; the relay's threads used {:.2} cores, {} pps per CPU-s",
            self.cores,
            if self.cores == 1 { "" } else { "s" },
            self.cores,
            if self.cores == 1 { "" } else { "s" },
            if self.shares_load_core {
                ", one core shared with the load"
            } else {
                ""
            },
            si(pps.median),
            si(pps.min),
            si(pps.max),
            si(self.rate as f64),
            self.allocations,
            self.relay_cores_used().median,
            si(self.pps_per_relay_cpu().median),
        )
    }
}

/// Ping-pong round trips, idle and under a fixed load, one series of each
/// per run.
pub struct LatencyRow {
    pub relay: Relay,
    pub idle: Vec<Rtts>,
    pub loaded: Vec<Rtts>,
    pub load_rate: u64,
}

/// The `p`-th percentile of each series: median and range over the runs.
pub fn percentile(series: &[Rtts], p: f64) -> Spread {
    Spread::of(series.iter().map(|rtts| rtts.percentile(p)))
}

impl LatencyRow {
    pub fn summary(&self) -> String {
        let p = |series: &[Rtts], q| percentile(series, q).median;
        format!(
            "{:<24} RTT idle p50/p99/p99.9 {:.1}/{:.1}/{:.1} µs, at {} pps {:.1}/{:.1}/{:.1} µs",
            self.relay.label(),
            p(&self.idle, 50.0),
            p(&self.idle, 99.0),
            p(&self.idle, 99.9),
            si(self.load_rate as f64),
            p(&self.loaded, 50.0),
            p(&self.loaded, 99.0),
            p(&self.loaded, 99.9),
        )
    }

    /// Pings lost in every series.
    fn lost(&self) -> u64 {
        self.idle.iter().chain(&self.loaded).map(|r| r.lost).sum()
    }

    /// Loss of the load offered during the loaded series.
    fn load_loss(&self) -> Spread {
        Spread::of(self.loaded.iter().filter_map(|r| r.load).map(|s| s.loss()))
    }
}

/// One step of the allocation load on one server.
pub struct AllocationRow {
    pub relay: Relay,
    pub step: Step,
}

/// Everything measured in one run.
pub struct Report {
    output: PathBuf,
    relay_core: usize,
    pub xdp_costs: Vec<Cost>,
    pub throughput: Vec<ThroughputRow>,
    pub latency: Vec<LatencyRow>,
    pub paced: Vec<PacedRow>,
    pub scaling: Vec<ScalingRow>,
    pub allocations: Vec<AllocationRow>,
    /// Measurements that could not be made, and why.
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(output: &Path, relay_core: usize) -> Result<Self> {
        std::fs::create_dir_all(output)
            .with_context(|| format!("creating {}", output.display()))?;
        Ok(Report {
            output: output.to_owned(),
            relay_core,
            xdp_costs: Vec::new(),
            throughput: Vec::new(),
            latency: Vec::new(),
            paced: Vec::new(),
            scaling: Vec::new(),
            allocations: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// Checks what a smoke run must show: every configuration relayed in
    /// both directions, and on more cores, no idle echo lost, no
    /// allocation failed.
    pub fn check_smoke(&self) -> Result<()> {
        for row in &self.throughput {
            ensure!(
                row.samples.iter().all(|s| s.received > 0),
                "{} {} relayed nothing",
                row.relay.label(),
                row.direction.label()
            );
        }
        for row in &self.latency {
            // Pings under load may share the load's loss; idle ones may not.
            let idle_lost: u64 = row.idle.iter().map(|r| r.lost).sum();
            ensure!(
                idle_lost == 0 && row.idle.iter().all(|r| !r.micros.is_empty()),
                "{}: {idle_lost} idle pings lost",
                row.relay.label(),
            );
        }
        for row in &self.scaling {
            ensure!(
                row.samples.iter().all(|s| s.received > 0),
                "turnx userspace on {} cores relayed nothing",
                row.cores
            );
        }
        for row in &self.allocations {
            ensure!(
                row.step.failed == 0 && row.step.allocations > 0,
                "{}: {} allocations failed",
                row.relay.label(),
                row.step.failed
            );
        }
        Ok(())
    }

    fn headline(&self, relay: Relay) -> Option<&ThroughputRow> {
        self.throughput.iter().find(|row| {
            row.relay == relay
                && row.direction == Direction::ToPod
                && row.size == HEADLINE_SIZE
                && row.bindings == 1
        })
    }

    /// The one-binding row of `relay` at the headline size in `direction`.
    fn one_binding(&self, relay: Relay, direction: Direction) -> Option<&ThroughputRow> {
        self.throughput.iter().find(|row| {
            row.relay == relay
                && row.direction == direction
                && row.size == HEADLINE_SIZE
                && row.bindings == 1
        })
    }

    fn latency_of(&self, relay: Relay) -> Option<&LatencyRow> {
        self.latency.iter().find(|row| row.relay == relay)
    }

    /// Writes results.md and the plots; with `update_readme`, also the
    /// README's results block.
    pub fn write(&self, readme: &Path, update_readme: bool) -> Result<()> {
        let headline = self.headline_table();
        let mut text = String::from("# Benchmark results\n\n");
        writeln!(
            text,
            "Written by `cargo xtask bench` on {}. {}\n",
            today(),
            machine()
        )?;
        text += &headline;
        text += "\n## Targets\n\n";
        text += &self.targets();
        text += &self.throughput_table();
        text += &self.paced_table();
        text += &self.scaling_table();
        text += &self.latency_table();
        text += &self.bindings_table();
        text += &self.allocation_table();
        text += &self.cost_table();
        if !self.notes.is_empty() {
            text += "\n## Not measured\n\n";
            for note in &self.notes {
                writeln!(text, "- {note}")?;
            }
        }
        text += METHOD;
        let path = self.output.join("results.md");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        plots::throughput(&self.output.join("throughput.svg"), &self.throughput)?;
        plots::latency(&self.output.join("latency.svg"), &self.latency)?;
        plots::bindings(&self.output.join("bindings.svg"), &self.throughput)?;
        if update_readme {
            update_readme_block(readme, &headline)?;
        }
        Ok(())
    }

    fn headline_table(&self) -> String {
        let mut text = format!(
            "{HEADLINE_SIZE}-byte media, client→pod, one channel binding, relay pinned to one \
             core (core {}); median of the runs. `pps/CPU-s` is relayed packets per second of \
             busy time on the relay core.\n\n\
             | relay | relayed pps | loss | pps/CPU-s | × coturn | of ceiling | RTT p99 idle | RTT p99 loaded |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
            self.relay_core
        );
        let coturn = self.headline(Relay::Coturn).map(|r| r.pps_per_cpu().median);
        let ceiling = self
            .headline(Relay::XdpRedirect)
            .map(|r| r.pps_per_cpu().median);
        for relay in Relay::ALL {
            let Some(row) = self.headline(relay) else {
                continue;
            };
            let per_cpu = row.pps_per_cpu().median;
            let ratio = |base: Option<f64>, pct: bool| match base {
                Some(base) if base > 0.0 && pct => format!("{:.0} %", 100.0 * per_cpu / base),
                Some(base) if base > 0.0 => format!("{:.1}×", per_cpu / base),
                _ => "–".into(),
            };
            let rtt = |f: fn(&LatencyRow) -> &[Rtts]| {
                self.latency_of(relay).map_or("–".into(), |l| {
                    format!("{:.1} µs", percentile(f(l), 99.0).median)
                })
            };
            writeln!(
                text,
                "| {} | {} | {:.1} % | {} | {} | {} | {} | {} |",
                relay.label(),
                si(row.pps().median),
                100.0 * row.loss().median,
                si(per_cpu),
                ratio(coturn, false),
                ratio(ceiling, true),
                rtt(|l| &l.idle),
                rtt(|l| &l.loaded),
            )
            .expect("writing to a String");
        }
        text
    }

    fn targets(&self) -> String {
        let per_cpu = |relay| self.headline(relay).map(|r| r.pps_per_cpu().median);
        let p99 = |relay| {
            self.latency_of(relay)
                .map(|l| percentile(&l.idle, 99.0).median)
        };
        let rate = |relay| {
            self.allocations
                .iter()
                .find(|a| a.relay == relay)
                .map(|a| a.step.rate)
        };
        let xdp_costs: Vec<f64> = self
            .throughput
            .iter()
            .filter(|r| {
                r.relay == Relay::XdpOffload
                    && r.direction == Direction::ToPod
                    && r.size == HEADLINE_SIZE
            })
            .map(|r| r.ns_per_packet().median)
            .collect();
        let mut text = String::from("| target | measured | met |\n|---|---|---|\n");
        let mut row = |target: &str, value: Option<(f64, String)>, met: fn(f64) -> bool| {
            let (measured, verdict) = match value {
                Some((v, shown)) => (shown, if met(v) { "yes" } else { "no" }),
                None => ("not measured".into(), "–"),
            };
            writeln!(text, "| {target} | {measured} | {verdict} |").expect("writing to a String");
        };
        let both = |a: Option<f64>, b: Option<f64>| a.zip(b);
        row(
            "XDP ≥ 20× coturn in packets per CPU-second",
            both(per_cpu(Relay::XdpOffload), per_cpu(Relay::Coturn))
                .map(|(x, c)| (x / c, format!("{:.1}×", x / c))),
            |v| v >= 20.0,
        );
        for direction in [Direction::ToPod, Direction::ToClient] {
            let per_cpu = |relay| {
                self.one_binding(relay, direction)
                    .map(|r| r.pps_per_cpu().median)
            };
            row(
                &format!(
                    "XDP ≥ 85 % of the do-nothing XDP redirect, {} (packets per CPU-second)",
                    direction.label()
                ),
                both(per_cpu(Relay::XdpOffload), per_cpu(Relay::XdpRedirect))
                    .map(|(x, c)| (x / c, format!("{:.0} %", 100.0 * x / c))),
                |v| v >= 0.85,
            );
            row(
                &format!(
                    "XDP ≥ 95 % of the minimal forwarder (fair ceiling), {} (packets per CPU-second)",
                    direction.label()
                ),
                both(per_cpu(Relay::XdpOffload), per_cpu(Relay::XdpForward))
                    .map(|(x, c)| (x / c, format!("{:.0} %", 100.0 * x / c))),
                |v| v >= 0.95,
            );
        }
        for awake in [false, true] {
            let xdp_paced: Vec<&PacedRow> = self
                .paced
                .iter()
                .filter(|row| row.relay == Relay::XdpOffload && row.awake == awake)
                .collect();
            row(
                if awake {
                    "no loss on the XDP path at moderate load, cores kept awake (every run)"
                } else {
                    "no loss on the XDP path at moderate load, cores as they idle (every run)"
                },
                (!xdp_paced.is_empty()).then(|| {
                    let worst = xdp_paced
                        .iter()
                        .map(|row| row.loss().max)
                        .fold(0.0, f64::max);
                    let rates: Vec<String> = xdp_paced.iter().map(|r| si(r.rate as f64)).collect();
                    (
                        worst,
                        format!(
                            "worst {:.3} % at {} pps",
                            100.0 * worst,
                            rates.join(" and ")
                        ),
                    )
                }),
                |v| v == 0.0,
            );
        }
        row(
            "XDP program ≤ 150 ns per packet, in place (bpf_stats run time / runs, client→pod)",
            self.headline(Relay::XdpOffload)
                .and_then(|r| r.program_ns)
                .map(|ns| (ns, format!("{ns:.0} ns"))),
            |v| v <= 150.0,
        );
        row(
            "added p99 round trip through the XDP path ≤ 10 µs (vs kernel forwarding)",
            both(p99(Relay::XdpOffload), p99(Relay::KernelForwarding))
                .map(|(x, f)| (x - f, format!("{:+.1} µs", x - f))),
            |v| v <= 10.0,
        );
        let best_paced = |relay| {
            self.paced
                .iter()
                .filter(|row| row.relay == relay && !row.awake)
                .map(|row| row.pps_per_cpu().median)
                .reduce(f64::max)
        };
        row(
            "userspace path ≥ 2× coturn, best paced figures (packets per CPU-second)",
            both(best_paced(Relay::Userspace), best_paced(Relay::Coturn))
                .map(|(u, c)| (u / c, format!("{:.2}× ({} vs {})", u / c, si(u), si(c)))),
            |v| v >= 2.0,
        );
        row(
            "userspace path ≥ 2× coturn at saturation (packets per CPU-second)",
            both(per_cpu(Relay::Userspace), per_cpu(Relay::Coturn))
                .map(|(u, c)| (u / c, format!("{:.2}×", u / c))),
            |v| v >= 2.0,
        );
        let scaled = |cores| {
            self.scaling
                .iter()
                .find(|row| row.cores == cores)
                .map(|row| row.pps().median)
        };
        row(
            "userspace path on 2 relay cores ≥ 1.8× its single-core figure (relayed pps)",
            both(scaled(2), scaled(1)).map(|(two, one)| {
                let shared = self.scaling.iter().any(|row| row.shares_load_core);
                let note = if shared {
                    ", one of the 2 cores also running the load"
                } else {
                    ""
                };
                (
                    two / one,
                    format!("{:.2}× ({} vs {} pps{note})", two / one, si(two), si(one)),
                )
            }),
            |v| v >= 1.8,
        );
        row(
            "allocation setup rate ≥ coturn's",
            both(rate(Relay::XdpOffload), rate(Relay::Coturn))
                .map(|(x, c)| (x / c, format!("{:.0}/s vs {:.0}/s", x, c))),
            |v| v >= 1.0,
        );
        let flat = match (
            xdp_costs.iter().copied().reduce(f64::min),
            xdp_costs.iter().copied().reduce(f64::max),
        ) {
            (Some(low), Some(high)) if xdp_costs.len() > 1 && low > 0.0 => {
                Some((high / low, format!("{low:.0} to {high:.0} ns per packet")))
            }
            _ => None,
        };
        row(
            "XDP cost per packet flat from 1 to 100 000 bindings (within 10 %)",
            flat,
            |v| v <= 1.10,
        );
        text
    }

    fn throughput_table(&self) -> String {
        let mut text = String::from(
            "\n## Throughput, one binding, full offered load\n\n\
             Median [min–max] of the runs.\n\n\
             | relay | direction | payload | offered pps | relayed pps | loss | pps/CPU-s | relay-core ns/packet | BPF ns/run in place |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in self.throughput.iter().filter(|r| r.bindings == 1) {
            let (pps, per_cpu, ns) = (row.pps(), row.pps_per_cpu(), row.ns_per_packet());
            let program = row
                .program_ns
                .map_or_else(|| "–".to_owned(), |ns| format!("{ns:.0}"));
            writeln!(
                text,
                "| {} | {} | {} B | {} | {} [{}–{}] | {:.1} % | {} [{}–{}] | {:.0} [{:.0}–{:.0}] | {} |",
                row.relay.label(),
                row.direction.label(),
                row.size,
                si(row.offered().median),
                si(pps.median),
                si(pps.min),
                si(pps.max),
                100.0 * row.loss().median,
                si(per_cpu.median),
                si(per_cpu.min),
                si(per_cpu.max),
                ns.median,
                ns.min,
                ns.max,
                program,
            )
            .expect("writing to a String");
        }
        text.push_str(
            "\n`BPF ns/run in place`: the relay's XDP and tc programs' mean run time \
             (`run_time_ns / run_cnt` of the kernel's `bpf_stats_enabled` accounting), in one \
             more run at full load with the statistics on.\n",
        );
        text
    }

    fn scaling_table(&self) -> String {
        let mut text = String::from(
            "\n## The userspace path on more cores\n\n\
             turnx with XDP off, one shard per relay core (`--workers`), pinned to those \
             cores; 64-byte media, client→pod, offered at a fixed rate above what one core \
             relays, one binding on each of many allocations (from as many client ports), \
             so that the listener's SO_REUSEPORT group spreads them over the shards. The \
             relay veth's receive work stays in its NAPI thread on the relay core: RPS, the \
             one way to spread a veth's, costs an inter-processor interrupt per batch in a \
             virtual machine and measured worse here. Relayed packets per second, median \
             [min–max] of the runs; the relay's own threads' CPU (turnxd's and its veths' \
             NAPI threads'), in cores, and relayed packets per CPU-second of it.\n\n\
             | relay cores | offered | allocations | relayed pps | loss | relay threads' cores | pps per relay CPU-s |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.scaling {
            let pps = row.pps();
            let loss = Spread::of(row.samples.iter().map(Sample::loss));
            writeln!(
                text,
                "| {}{} | {} pps | {} | {} [{}–{}] | {:.1} % | {:.2} | {} |",
                row.cores,
                if row.shares_load_core {
                    " (one shared with the load)"
                } else {
                    ""
                },
                si(row.rate as f64),
                row.allocations,
                si(pps.median),
                si(pps.min),
                si(pps.max),
                100.0 * loss.median,
                row.relay_cores_used().median,
                si(row.pps_per_relay_cpu().median),
            )
            .expect("writing to a String");
        }
        text
    }

    fn paced_table(&self) -> String {
        let mut text = String::from(
            "\n## Loss at moderate load\n\n\
             64-byte media, client→pod, one binding, offered at a fixed rate below the XDP \
             path's saturation: the share of the offered frames that did not arrive, and how \
             busy the relay core was; median [min–max] of the runs. Each rate twice: as the \
             machine idles, and with its cores kept from halting (a zero PM QoS wake-up \
             latency request, `/dev/cpu_dma_latency`; polling idle time still counts as \
             idle). The last column: the link ends' drop and error counters (`ethtool -S`) that \
             grew over the runs; `xdp_xmit_errors` on a sender's end are frames its peer's \
             256-frame veth ring had no room for. Stolen: time the hypervisor ran something \
             else on the relay's virtual core (/proc/stat steal).\n\n\
             | relay | offered | cores | loss | relay core busy | pps/CPU-s | stolen by the host | counted drops |\n\
             |---|---:|---|---:|---:|---:|---:|---|\n",
        );
        for row in &self.paced {
            let (loss, busy) = (row.loss(), row.busy());
            writeln!(
                text,
                "| {} | {} pps | {} | {:.3} [{:.3}–{:.3}] % | {:.0} [{:.0}–{:.0}] % | {} | {:.1} [{:.1}–{:.1}] % | {} |",
                row.relay.label(),
                si(row.rate as f64),
                if row.awake { "kept awake" } else { "as they idle" },
                100.0 * loss.median,
                100.0 * loss.min,
                100.0 * loss.max,
                100.0 * busy.median,
                100.0 * busy.min,
                100.0 * busy.max,
                si(row.pps_per_cpu().median),
                100.0 * row.steal().median,
                100.0 * row.steal().min,
                100.0 * row.steal().max,
                row.drops_text(),
            )
            .expect("writing to a String");
        }
        text
    }

    fn latency_table(&self) -> String {
        let mut text = String::from(
            "\n## Round-trip latency\n\n\
             64-byte ping-pong between the client and an echo in the pod, through the relay \
             both ways, one series per run: each percentile is the median [min–max] over the \
             runs. Idle, and while the generator offers a fixed load on another binding \
             (whose loss is reported too). The XDP redirect is one-way only and has no round \
             trip.\n\n\
             | relay | idle p50 | p99 | p99.9 | loaded p50 | p99 | p99.9 | load | loss of the load | pings lost |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let cell = |series: &[Rtts], p| {
            let spread = percentile(series, p);
            format!(
                "{:.1} [{:.1}–{:.1}] µs",
                spread.median, spread.min, spread.max
            )
        };
        for row in &self.latency {
            writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} | {} pps | {:.2} % | {} |",
                row.relay.label(),
                cell(&row.idle, 50.0),
                cell(&row.idle, 99.0),
                cell(&row.idle, 99.9),
                cell(&row.loaded, 50.0),
                cell(&row.loaded, 99.0),
                cell(&row.loaded, 99.9),
                si(row.load_rate as f64),
                100.0 * row.load_loss().median,
                row.lost(),
            )
            .expect("writing to a String");
        }
        text
    }

    fn bindings_table(&self) -> String {
        let mut text = String::from(
            "\n## Cost versus number of bindings\n\n\
             64-byte media, client→pod, full offered load, the generator cycling through every \
             binding.\n\n\
             | relay | bindings | relayed pps | pps/CPU-s | relay-core ns/packet |\n\
             |---|---:|---:|---:|---:|\n",
        );
        let mut rows: Vec<&ThroughputRow> = self
            .throughput
            .iter()
            .filter(|r| r.direction == Direction::ToPod && r.size == HEADLINE_SIZE)
            .collect();
        rows.sort_by_key(|r| (Relay::ALL.iter().position(|&x| x == r.relay), r.bindings));
        for row in rows {
            let ns = row.ns_per_packet();
            writeln!(
                text,
                "| {} | {} | {} | {} | {:.0} [{:.0}–{:.0}] |",
                row.relay.label(),
                row.bindings,
                si(row.pps().median),
                si(row.pps_per_cpu().median),
                ns.median,
                ns.min,
                ns.max
            )
            .expect("writing to a String");
        }
        text
    }

    fn allocation_table(&self) -> String {
        let mut text = String::from(
            "\n## Allocation setup rate and memory\n\n\
             Authenticated Allocate (after the 401) and ChannelBind from a new client address \
             and port each, 16 at a time; every other allocation has an IPv6 relayed address. \
             Memory is the growth of the server's resident set divided by live allocations \
             (turnx's kernel maps are preallocated and not in it).\n\n\
             | server | live allocations | setup rate (per s) | resident bytes per allocation | failed |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for row in &self.allocations {
            writeln!(
                text,
                "| {} | {} | {:.0} | {:.0} | {} |",
                row.relay.label(),
                row.step.allocations,
                row.step.rate,
                row.step.bytes_per_allocation,
                row.step.failed
            )
            .expect("writing to a String");
        }
        text
    }

    fn cost_table(&self) -> String {
        let mut text = String::from(
            "\n## XDP program cost per frame\n\n\
             BPF_PROG_TEST_RUN in the relay namespace. Classification: the kernel's mean over \
             a loop of repeats, median [min–max] of the runs. Relaying rewrites the frame, so it \
             is timed one run at a time, less the timer's own cost per run (measured on a \
             frame rejected at once).\n\n\
             | frame | class | bytes | bindings installed | ns/frame |\n\
             |---|---|---:|---:|---:|\n",
        );
        for cost in &self.xdp_costs {
            writeln!(
                text,
                "| {} | {} | {} | {} | {:.0} [{:.0}–{:.0}] |",
                cost.name,
                cost.class.name(),
                cost.bytes,
                cost.bindings,
                cost.ns.median,
                cost.ns.min,
                cost.ns.max
            )
            .expect("writing to a String");
        }
        text
    }
}

const METHOD: &str = "
## How it is measured

- Three namespaces: client ↔ relay ↔ pod over two veth pairs (198.18.0.0/24 and \
198.19.0.0/24), threaded NAPI on every veth. The relay namespace's NAPI threads and the \
server under test are pinned to one core, the generator, sinks and clients to the other.
- The generator is an XDP program run with BPF_PROG_RUN in live-frames mode: each frame \
gets the next binding's headers and leaves the client's (or pod's) veth with XDP_TX, so the \
relay receives `xdp_frame`s as from a NIC driver. Bindings are made first by real TURN \
exchanges (authenticated Allocate, ChannelBind) from the same client addresses and ports.
- Sinks are XDP programs on the far veths: they count datagrams to the expected ports, check \
length and payload, and drop them. A wrong datagram fails the benchmark.
- CPU: busy time of the relay core from /proc/stat (user, system, irq, softirq) over the run.
- The configurations without TURN receive the datagrams the relay would deliver: kernel \
forwarding routes them through the relay namespace; the ceiling redirects them unchanged \
between the relay's veths with a do-nothing XDP program; the fair ceiling does the least a \
forwarder does on the way (reads the headers, swaps the MACs, decrements the TTL with an \
incremental checksum update) and redirects the same way.
";

/// Replaces the README's block between the markers with `table`.
fn update_readme_block(readme: &Path, table: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
        anyhow::bail!(
            "{} has no {README_BEGIN} … {README_END} block for the results",
            readme.display()
        );
    };
    let updated = format!(
        "{}{README_BEGIN}\n{}\n{}",
        &text[..begin],
        table.trim_end(),
        &text[end..]
    );
    std::fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One sentence about the machine and the software measured.
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .unwrap_or("unknown CPU")
        .trim()
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let coturn = std::process::Command::new("sh")
        .args(["-c", "dpkg-query -W -f '${Version}' coturn 2>/dev/null"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "Machine: {model}, {cores} cores, {memory_gib:.0} GiB, Linux {}. turnx at {}, coturn {}.",
        read("/proc/sys/kernel/osrelease").trim(),
        if commit.is_empty() {
            "unknown commit"
        } else {
            &commit
        },
        if coturn.is_empty() {
            "(version unknown)"
        } else {
            &coturn
        },
    )
}
