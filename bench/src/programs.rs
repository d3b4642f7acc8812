//! The benchmark's own programs (bench/ebpf): the generator, the sinks (XDP,
//! and tc for a pod end as on a node) and the do-nothing redirect, loaded
//! from the object `cargo xtask bench` builds.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp,
        XdpMode, tc::TcAttachOptions, xdp::XdpLinkId,
    },
};
use relay_common::bench::{
    FORWARD_PROGRAM, GEN_PROGRAM, GenConfig, GenFlow, MAP_GEN_CONFIG, MAP_GEN_FLOWS,
    MAP_REDIRECT_TO, MAP_SINK_CONFIG, MAP_SINK_COUNTERS, MAX_GEN_FLOWS, PASS_PROGRAM,
    REDIRECT_PROGRAM, SINK_PROGRAM, SinkConfig, SinkCounters, TC_SINK_PROGRAM,
};

use testkit::{Netns, Veth};

use crate::topology::Topology;

/// Frames per batch the kernel builds in live-frames mode.
const LIVE_BATCH: u32 = 64;

/// What the sinks have counted, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCount {
    /// Datagrams with the expected length and payload.
    pub good: u64,
    /// Datagrams to the counted ports with another length or payload.
    pub bad: u64,
}

/// The loaded programs, with the sinks attached to the client and pod
/// interfaces for as long as this lives.
pub struct BenchPrograms {
    ebpf: Ebpf,
    relay_links: Vec<(XdpLinkId, &'static str)>,
    /// The pod's XDP sink, unless the pod's veth is as on a node.
    pod_xdp_sink: Option<XdpLinkId>,
}

impl BenchPrograms {
    /// Loads the object at `path` and attaches a sink to the client and pod
    /// ends of the topology (native mode).
    pub fn load(path: &Path, topology: &Topology) -> Result<Self> {
        let object = std::fs::read(path).with_context(|| {
            format!(
                "reading the benchmark's XDP object {}; run the benchmark with `cargo xtask bench`",
                path.display()
            )
        })?;
        let mut ebpf = Ebpf::load(&object).context("loading the benchmark's XDP programs")?;
        for name in [
            GEN_PROGRAM,
            SINK_PROGRAM,
            REDIRECT_PROGRAM,
            FORWARD_PROGRAM,
            PASS_PROGRAM,
        ] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let tc_sink: &mut SchedClassifier = ebpf
            .program_mut(TC_SINK_PROGRAM)
            .with_context(|| format!("no program {TC_SINK_PROGRAM} in the object"))?
            .try_into()?;
        tc_sink
            .load()
            .with_context(|| format!("verifying {TC_SINK_PROGRAM}"))?;
        let mut programs = BenchPrograms {
            ebpf,
            relay_links: Vec::new(),
            pod_xdp_sink: None,
        };
        programs.attach(SINK_PROGRAM, &topology.client, &topology.client_if)?;
        let pod_sink = programs.attach(SINK_PROGRAM, &topology.pod, &topology.pod_if)?;
        programs.pod_xdp_sink = Some(pod_sink);
        // Behind each XDP sink a tc one: the tc engine hands frames for a
        // veth whose peer is in another namespace straight to the peer's
        // ingress (bpf_redirect_peer), past its XDP program. The XDP sink
        // drops what it counts, so nothing is counted twice.
        for (ns, dev) in [
            (&topology.client, &topology.client_if),
            (&topology.pod, &topology.pod_if),
        ] {
            programs.attach_tc_sink(ns, dev)?;
        }
        programs.attach(GEN_PROGRAM, &topology.client, &topology.parking_if)?;
        programs.idle_sink()?;
        Ok(programs)
    }

    fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    fn attach(&mut self, name: &'static str, ns: &Netns, dev: &Veth) -> Result<XdpLinkId> {
        let ifindex = ns.ifindex(&dev.name);
        let program = self.program(name)?;
        // The ifindex is resolved in the caller's namespace, hence the thread.
        ns.run(|| program.attach_to_if_index(ifindex, XdpMode::Driver))
            .with_context(|| format!("attaching {name} to {} (native)", dev.name))
    }

    /// Attaches a ceiling program (`program`: the do-nothing redirect or
    /// the minimal forwarder) to `from`, sending every frame out of `to`
    /// (both in the relay namespace).
    pub fn attach_redirect(
        &mut self,
        program: &'static str,
        relay: &Netns,
        from: &Veth,
        to: &Veth,
    ) -> Result<()> {
        self.detach_relay_side()?;
        let target = relay.ifindex(&to.name);
        let mut map: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(MAP_REDIRECT_TO)
                .context("no redirect map")?,
        )?;
        map.set(0, target, 0)?;
        let link = self.attach(program, relay, from)?;
        self.relay_links.push((link, program));
        Ok(())
    }

    /// Attaches the pass-everything program to both relay veths, for the
    /// configurations without XDP of their own.
    pub fn attach_pass(&mut self, topology: &Topology) -> Result<()> {
        self.detach_relay_side()?;
        for dev in [&topology.relay_client_if, &topology.relay_pod_if] {
            let link = self.attach(PASS_PROGRAM, &topology.relay, dev)?;
            self.relay_links.push((link, PASS_PROGRAM));
        }
        Ok(())
    }

    /// Detaches what [`Self::attach_redirect`] or [`Self::attach_pass`]
    /// attached.
    pub fn detach_relay_side(&mut self) -> Result<()> {
        while let Some((link, name)) = self.relay_links.pop() {
            self.program(name)?.detach(link)?;
        }
        Ok(())
    }

    /// Makes the pod's end as a node has it: the XDP sink off it, so that
    /// XDP cannot deliver there, and a pod's offloads (see
    /// [`Topology::pod_end_as_on_a_node`]); the tc sink counts alone.
    pub fn pod_end_as_on_a_node(&mut self, topology: &Topology) -> Result<()> {
        if let Some(link) = self.pod_xdp_sink.take() {
            self.program(SINK_PROGRAM)?.detach(link)?;
            topology.pod_end_as_on_a_node();
        }
        Ok(())
    }

    /// Puts the engineered pod end back: the XDP sink, full checksums.
    pub fn pod_end_engineered(&mut self, topology: &Topology) -> Result<()> {
        if self.pod_xdp_sink.is_none() {
            topology.pod_end_engineered();
            let link = self.attach(SINK_PROGRAM, &topology.pod, &topology.pod_if)?;
            self.pod_xdp_sink = Some(link);
        }
        Ok(())
    }

    /// Attaches the tc sink to `dev`'s ingress in `ns`, for as long as the
    /// programs are loaded.
    fn attach_tc_sink(&mut self, ns: &Netns, dev: &Veth) -> Result<()> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(TC_SINK_PROGRAM)
            .context("no tc sink")?
            .try_into()?;
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        ns.run(|| program.attach_with_options(&dev.name, TcAttachType::Ingress, options))
            .with_context(|| format!("attaching the tc sink to {}", dev.name))?;
        Ok(())
    }

    /// Sets what the sinks count and clears their counters.
    pub fn set_sink(&mut self, config: SinkConfig) -> Result<()> {
        let mut map: Array<_, SinkConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_SINK_CONFIG).context("no sink map")?)?;
        map.set(0, config, 0)?;
        let mut counters: PerCpuArray<_, SinkCounters> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(MAP_SINK_COUNTERS)
                .context("no sink counters")?,
        )?;
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
        counters.set(
            0,
            aya::maps::PerCpuValues::try_from(vec![SinkCounters::default(); cpus])?,
            0,
        )?;
        Ok(())
    }

    /// Makes the sinks count nothing, so that everything passes (TURN
    /// responses to a client port that the last measurement counted, say).
    pub fn idle_sink(&mut self) -> Result<()> {
        self.set_sink(SinkConfig {
            port_first: 1,
            port_last: 0,
            ..SinkConfig::default()
        })
    }

    /// What the sinks have counted since [`BenchPrograms::set_sink`].
    pub fn sink_count(&self) -> Result<SinkCount> {
        let counters: PerCpuArray<_, SinkCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_SINK_COUNTERS)
                .context("no sink counters")?,
        )?;
        Ok(counters
            .get(&0, 0)?
            .iter()
            .fold(SinkCount::default(), |sum, cpu| SinkCount {
                good: sum.good + cpu.good,
                bad: sum.bad + cpu.bad,
            }))
    }

    /// Loads the frames the generator cycles through: every frame's first
    /// bytes in `heads`, all of them as long as `frame_len`.
    pub fn set_flows(&mut self, heads: &[GenFlow]) -> Result<()> {
        ensure!(
            !heads.is_empty() && heads.len() <= MAX_GEN_FLOWS as usize,
            "the generator takes 1 to {MAX_GEN_FLOWS} flows, not {}",
            heads.len()
        );
        let mut flows: Array<_, GenFlow> =
            Array::try_from(self.ebpf.map_mut(MAP_GEN_FLOWS).context("no flow map")?)?;
        for (index, head) in heads.iter().enumerate() {
            flows.set(index as u32, *head, 0)?;
        }
        let mut config: Array<_, GenConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_GEN_CONFIG).context("no gen config")?)?;
        config.set(
            0,
            GenConfig {
                flows: heads.len() as u32,
                reserved: 0,
            },
            0,
        )?;
        Ok(())
    }

    /// A handle that transmits frames from inside a namespace.
    pub fn generator(&self) -> Result<Generator<'_>> {
        let program: &Xdp = self
            .ebpf
            .program(GEN_PROGRAM)
            .context("no generator")?
            .try_into()?;
        Ok(Generator { program })
    }
}

/// Transmits frames with BPF_PROG_RUN in live-frames mode: the kernel runs
/// the generator on each and sends it out of `ifindex` (XDP_TX), the way a
/// NIC driver hands frames to XDP.
pub struct Generator<'a> {
    program: &'a Xdp,
}

impl Generator<'_> {
    /// Sends `count` frames out of interface `ifindex` (in the calling
    /// thread's namespace), each `template` with the next flow's head
    /// written over it. Returns how long the kernel took.
    pub fn send(&self, template: &[u8], ifindex: u32, count: u32) -> Result<Duration> {
        let mut context = [0u8; 24];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...
        context[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
        context[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let result = self
            .program
            .test_run(TestRunOptions {
                data_in: Some(template),
                ctx_in: Some(&context),
                repeat: count,
                attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_RUN in live-frames mode")?;
        Ok(result.duration)
    }
}
