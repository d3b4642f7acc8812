//! The kernel programs as turnxd runs them: loading and attaching, pods'
//! veths as they come and go, where XDP may send, and the drivers' XDP
//! error counters.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use turnx::{
    config::{Config, Engine, XdpMode},
    ebpf_object, interfaces,
    pod_interfaces::PodInterfaces,
    xdp::{LoadOptions, XdpError, XdpRelay, kernel_log},
};

/// Loads the programs (adopting the pinned maps a previous turnxd left)
/// and sets the listen ports; nothing is attached yet (see [`attach_xdp`]).
pub fn load_xdp(object: Option<&Path>, config: &Config) -> Result<XdpRelay> {
    let object = ebpf_object::load(object)?;
    let pin_dir = (!config.xdp.pin_dir.is_empty()).then(|| PathBuf::from(&config.xdp.pin_dir));
    if pin_dir.is_some() {
        turnx::xdp::ensure_bpffs().context("mounting bpffs to pin the XDP maps")?;
    }
    let options = LoadOptions {
        route_in_stack: config.xdp.route_in_stack,
        pin_dir,
        max_bindings: Some(config.xdp.max_bindings),
        legacy_channel_numbers: config.server.legacy_channel_numbers,
    };
    let mut relay = XdpRelay::load_with(&object, &config.log.level, &options)?;
    match relay.take_logger() {
        Some(logger) => {
            kernel_log::spawn(logger).context("reading the XDP program's log")?;
        }
        None => tracing::warn!("the XDP program has no log buffer; kernel log lines are lost"),
    }
    let ports: Vec<u16> = config.listen_ports().into_iter().collect();
    relay.set_listen_ports(&ports)?;
    Ok(relay)
}

/// The interfaces to relay on: the configured ones, or those with a
/// default route.
fn interface_names(config: &Config) -> Result<Vec<String>> {
    if config.xdp.interfaces.is_empty() {
        let found = interfaces::default_route_interfaces()?;
        tracing::info!("no interfaces configured; using those with a default route: {found:?}");
        Ok(found)
    } else {
        Ok(config.xdp.interfaces.clone())
    }
}

/// Fails, before anything serves, where [`attach_xdp`] would fail for
/// want of its interfaces: one that does not exist, or that holds an XDP
/// program turnxd may not take (another turnxd's, or anyone's with
/// `engine = "xdp"`).
pub fn check_interfaces(relay: &XdpRelay, config: &Config) -> Result<()> {
    let engine = config.offload.engine;
    if engine == Engine::Tc {
        return Ok(());
    }
    for name in interface_names(config)? {
        match relay.check_attachable(&name) {
            Err(XdpError::Occupied { owner, .. })
                if engine == Engine::Auto && !owner.contains(relay_common::PROGRAM_NAME) => {}
            Err(err) => return Err(err.into()),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// Attaches to every interface: a pinned link a previous turnxd left gets
/// this turnxd's program in place of its own, atomically; elsewhere the
/// programs attach anew. Fails with everything attached so far detached
/// again (when the relay drops). Returns the pod interfaces to follow.
pub fn attach_xdp(relay: &mut XdpRelay, config: &Config) -> Result<PodInterfaces> {
    let names = interface_names(config)?;
    let engine = config.offload.engine;
    // With both engines, an interface without native XDP is the tc
    // engine's alone: generic XDP would only add its cost.
    let mode = match (engine, config.xdp.mode) {
        (Engine::Auto, XdpMode::Auto) => XdpMode::Native,
        (_, mode) => mode,
    };
    for name in &names {
        let xdp = if engine == Engine::Tc {
            None
        } else {
            match relay.attach(name, mode) {
                Ok(mode) => Some(mode),
                Err(XdpError::Attach { reason, .. })
                    if engine == Engine::Auto && config.xdp.mode == XdpMode::Auto =>
                {
                    tracing::info!(
                        "no native XDP on {name} ({reason}); the tc engine relays there alone"
                    );
                    None
                }
                // Another program holds XDP here (Cilium's, say): leave it
                // alone and take the interface at tc. Another turnxd is a
                // misconfiguration, refused.
                Err(XdpError::Occupied { interface, owner })
                    if engine == Engine::Auto && !owner.contains(relay_common::PROGRAM_NAME) =>
                {
                    tracing::warn!(
                        "{interface} already runs XDP {owner}; turnx leaves it and relays \
                         there with its tc engine only"
                    );
                    None
                }
                Err(err) => return Err(err.into()),
            }
        };
        let tc = engine != Engine::Xdp;
        if tc {
            relay.attach_tc(name)?;
        }
        match (xdp, tc) {
            (Some(mode), true) => tracing::info!(
                "XDP attached to {name} in {mode} mode, the tc engine at its ingress"
            ),
            (Some(mode), false) => tracing::info!("XDP attached to {name} in {mode} mode"),
            (None, _) => tracing::info!("the tc engine attached to {name}'s ingress"),
        }
    }
    let pods = if engine == Engine::Xdp {
        PodInterfaces::default()
    } else {
        PodInterfaces::new(config.offload.pod_interfaces.clone(), names)
    };
    Ok(pods)
}

/// Attaches the tc engine to pods' veths that appeared since the last look
/// and forgets those that are gone. A failure is logged and tried again at
/// the next look; the pod's traffic is relayed by userspace meanwhile.
pub fn follow_pods(relay: &mut XdpRelay, pods: &mut PodInterfaces) {
    if !pods.is_enabled() {
        return;
    }
    let present = match turnx::pod_interfaces::present() {
        Ok(present) => present,
        Err(err) => {
            tracing::warn!("cannot list the interfaces to follow pods' veths: {err}");
            return;
        }
    };
    let changes = pods.changes(&present);
    for name in changes.gone {
        relay.forget_tc(&name);
        pods.forgotten(&name);
        tracing::info!("pod interface {name} is gone");
    }
    for name in changes.attach {
        match relay.attach_tc(&name) {
            Ok(()) => {
                pods.attached(&name);
                tracing::info!("the tc engine attached to pod interface {name}");
            }
            // It may have gone again already; the next look tells.
            Err(err) => tracing::warn!("{err}"),
        }
    }
}

/// How often the interfaces' XDP capabilities are read again.
pub const EGRESS_REFRESH: Duration = Duration::from_secs(1);

/// What the last egress refresh found: the interfaces and their bits, or
/// that it failed.
#[derive(Default, PartialEq)]
pub struct EgressState {
    allowed: Vec<(u32, u8)>,
    failing: bool,
}

/// Reads which interfaces deliver XDP frames into the program's map, and
/// logs when that changes.
pub fn refresh_egress(relay: &mut XdpRelay, last: &mut EgressState) {
    let now = match relay.refresh_egress() {
        Ok(allowed) => EgressState {
            allowed,
            failing: false,
        },
        Err(err) => {
            if !last.failing {
                tracing::warn!("{err}");
            }
            EgressState {
                allowed: Vec::new(),
                failing: true,
            }
        }
    };
    if now != *last && !now.failing {
        let names: Vec<String> = now
            .allowed
            .iter()
            .map(|(ifindex, bits)| {
                let name = interfaces::name_of(*ifindex).unwrap_or_else(|| ifindex.to_string());
                format!("{name} ({})", egress_ways(*bits))
            })
            .collect();
        tracing::info!(
            "how the kernel relay may send: {}; frames for other interfaces leave by the tc \
             engine's redirects, or by userspace",
            if names.is_empty() {
                "no interface takes XDP frames".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    *last = now;
}

/// Says when a driver's XDP error counters move on an interface turnxd is
/// attached to: frames the kernel relay sent were lost there, which the
/// egress rules exist to prevent. `last` holds each interface's total.
pub fn watch_driver_errors(relay: &XdpRelay, last: &mut std::collections::HashMap<String, u64>) {
    for attachment in relay.attachments() {
        let interface = &attachment.interface;
        let Ok(errors) = turnx::xdp::driver_stats::xdp_errors(interface) else {
            continue;
        };
        let total: u64 = errors.iter().map(|(_, value)| value).sum();
        let before = last.insert(interface.clone(), total);
        if let Some(before) = before
            && total > before
        {
            let moved: Vec<String> = errors
                .iter()
                .filter(|(_, value)| *value != 0)
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            tracing::warn!(
                "the driver of {interface} lost {} XDP frames in the last second ({}); \
                 please report this with `turnxctl status` and the interface's kind",
                total - before,
                moved.join(" ")
            );
        }
    }
}

/// How relayed frames may leave an interface, for logs.
fn egress_ways(bits: u8) -> String {
    let ways: Vec<&str> = [
        (relay_common::EGRESS_TX, "XDP_TX"),
        (relay_common::EGRESS_REDIRECT, "XDP redirects"),
        (relay_common::EGRESS_PEER, "tc into the pod"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, way)| way)
    .collect();
    ways.join(", ")
}

pub fn log_counters(relay: &XdpRelay) {
    match relay.counters() {
        Ok(counters) => tracing::info!("XDP counters: {counters}"),
        Err(err) => tracing::warn!("cannot read XDP counters: {err}"),
    }
}
