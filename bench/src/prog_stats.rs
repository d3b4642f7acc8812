//! What the relay's BPF programs themselves cost per relayed packet,
//! measured in place during a throughput run: with
//! `kernel.bpf_stats_enabled` the kernel adds up each program's run time
//! and runs, which BPF_PROG_TEST_RUN on one frame cannot show (caches, the
//! redirect's bulk queue, the real receive path).
//!
//! Stats cost two clock reads a run, so they are on only for a run of
//! their own, after the runs that measure throughput.

use anyhow::{Context, Result};
use testkit::Netns;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run-time statistics switched on; the previous setting comes back on
/// drop.
pub struct Enabled {
    previous: String,
}

impl Enabled {
    /// Switches the kernel's BPF run-time statistics on.
    pub fn new() -> Result<Enabled> {
        let previous =
            std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
        Ok(Enabled { previous })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, self.previous.trim());
    }
}

/// Summed run time and runs of some programs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// Nanoseconds spent in them.
    pub run_ns: u64,
    /// Times they ran.
    pub runs: u64,
}

impl RunStats {
    /// What was added after `earlier`.
    pub fn since(&self, earlier: &RunStats) -> RunStats {
        RunStats {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// The ids of the XDP and tc programs attached to `interfaces` in `ns`.
pub fn attached(ns: &Netns, interfaces: &[&str]) -> Result<Vec<u32>> {
    ns.run(|| {
        let mut ids = Vec::new();
        for name in interfaces {
            let ifindex = turnx::xdp::if_index(name)?;
            for program in turnx::xdp::netlink::attached_programs(ifindex)? {
                ids.push(program.program_id);
            }
            if let Some((id, _)) = turnx::xdp::tc_counters(name)? {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    })
}

/// The statistics of the programs `ids`, summed (programs that are gone
/// count nothing).
pub fn read(ids: &[u32]) -> RunStats {
    let mut stats = RunStats::default();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if ids.contains(&info.id()) {
            stats.run_ns += info.run_time().as_nanos() as u64;
            stats.runs += info.run_count();
        }
    }
    stats
}
