//! Relayed packets per second and per CPU-second of the relay core: the
//! generator offers frames for a fixed time (at full speed or at a fixed
//! rate), the sink counts what arrives, /proc/stat says how busy the relay
//! core was.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::{
    cpu::CoreTimes,
    flows::{Direction, Traffic},
    programs::BenchPrograms,
    topology::Topology,
};

/// Frames per BPF_PROG_RUN call at full speed.
const FULL_SPEED_CHUNK: u32 = 8192;
/// Most frames per call at a fixed rate. A veth's receive ring holds 256
/// frames, and the generator fills it faster than one core empties it: a
/// larger burst (after a sleep that overran, say) would overflow the ring
/// before the relay saw it, the generator's loss rather than the relay's.
const PACED_CHUNK: u64 = 64;
/// How long the generator sleeps between chunks at a fixed rate.
const PACING_TICK: Duration = Duration::from_micros(100);
/// Time for frames still in queues to arrive after the generator stops.
const DRAIN: Duration = Duration::from_millis(200);

/// One run's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Frames the generator sent.
    pub sent: u64,
    /// Datagrams the sink counted as expected.
    pub received: u64,
    /// Datagrams the sink counted as wrong.
    pub bad: u64,
    /// How long the generator sent.
    pub duration: Duration,
    /// Busy time of the relay core from start to the end of the drain.
    pub relay_busy: Duration,
    /// Time the hypervisor took the relay core away meanwhile.
    pub relay_steal: Duration,
}

impl Sample {
    /// Relayed packets per second.
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.duration.as_secs_f64()
    }

    /// Share of the sent frames that did not arrive.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }

    /// Relayed packets per CPU-second of the relay core.
    pub fn pps_per_cpu(&self) -> f64 {
        self.received as f64 / self.relay_busy.as_secs_f64().max(1e-3)
    }

    /// Share of the run the relay core was busy.
    pub fn busy_share(&self) -> f64 {
        self.relay_busy.as_secs_f64() / self.duration.as_secs_f64()
    }

    /// Share of the run the hypervisor took the relay core away.
    pub fn steal_share(&self) -> f64 {
        self.relay_steal.as_secs_f64() / self.duration.as_secs_f64()
    }

    /// Relay-core nanoseconds per relayed packet.
    pub fn ns_per_packet(&self) -> f64 {
        self.relay_busy.as_nanos() as f64 / (self.received.max(1)) as f64
    }
}

/// Offers `traffic` for `duration`, at `rate` frames per second or as fast
/// as the generator goes, and measures what arrives.
pub fn run(
    programs: &mut BenchPrograms,
    topology: &Topology,
    traffic: &Traffic,
    direction: Direction,
    duration: Duration,
    rate: Option<u64>,
) -> Result<Sample> {
    topology.pin_napi_threads()?;
    programs.set_flows(&traffic.heads)?;
    programs.set_sink(traffic.sink)?;
    let (ns, dev) = match direction {
        Direction::ToPod => (&topology.client, &topology.client_if),
        Direction::ToClient => (&topology.pod, &topology.pod_if),
    };
    let ifindex = ns.ifindex(&dev.name);
    let before = CoreTimes::read(topology.relay_core)?;
    let generator = programs.generator()?;
    let (sent, elapsed) = ns.run_on(Some(topology.load_core), || {
        send_for(&generator, &traffic.template, ifindex, duration, rate)
    })?;
    std::thread::sleep(DRAIN);
    let after = CoreTimes::read(topology.relay_core)?;
    let count = programs.sink_count()?;
    programs.idle_sink()?;
    ensure!(sent > 0, "the generator sent nothing");
    Ok(Sample {
        sent,
        received: count.good,
        bad: count.bad,
        duration: elapsed,
        relay_busy: after.busy_since(&before),
        relay_steal: after.steal_since(&before),
    })
}

/// Sends for `duration`; returns frames sent and the time it took.
fn send_for(
    generator: &crate::programs::Generator<'_>,
    template: &[u8],
    ifindex: u32,
    duration: Duration,
    rate: Option<u64>,
) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let mut sent = 0u64;
    match rate {
        None => {
            while start.elapsed() < duration {
                generator.send(template, ifindex, FULL_SPEED_CHUNK)?;
                sent += u64::from(FULL_SPEED_CHUNK);
            }
        }
        Some(rate) => {
            // Catch up to the schedule in small bursts, a tick apart, so
            // that sleeps which overrun do not lower the rate.
            while start.elapsed() < duration {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if due > sent {
                    let chunk = (due - sent).min(PACED_CHUNK) as u32;
                    generator.send(template, ifindex, chunk)?;
                    sent += u64::from(chunk);
                }
                std::thread::sleep(PACING_TICK);
            }
        }
    }
    Ok((sent, start.elapsed()))
}
