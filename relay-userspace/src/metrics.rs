//! What turnxd exports to Prometheus: a [`Snapshot`] of its counters,
//! taken at each scrape, and [`render`], which names the families. The
//! family names are the contract with `deploy/monitoring` (alerts and the
//! dashboard), which `cargo xtask deploy-check` holds to [`FAMILIES`].

use crate::{
    prometheus::Exposition,
    shell::OffloadReport,
    turn::{
        Counters, DeleteReason, Transport,
        counters::{Indication, Method, RefusalCause},
    },
    xdp::ClassCounters,
};
use relay_common::PacketClass;

/// Every family [`render`] can write.
pub const FAMILIES: [&str; 29] = [
    "turnx_build_info",
    "turnx_start_time_seconds",
    "turnx_ready",
    "turnx_draining",
    "turnx_allocations",
    "turnx_allocations_created_total",
    "turnx_allocations_deleted_total",
    "turnx_packets_total",
    "turnx_bytes_total",
    "turnx_dropped_packets_total",
    "turnx_stun_requests_total",
    "turnx_stun_responses_total",
    "turnx_stun_indications_total",
    "turnx_unauthenticated_requests_total",
    "turnx_unauthenticated_responses_total",
    "turnx_refused_total",
    "turnx_kernel_bindings",
    "turnx_kernel_binding_capacity",
    "turnx_kernel_bindings_installed_total",
    "turnx_kernel_bindings_removed_total",
    "turnx_kernel_bindings_refused_total",
    "turnx_kernel_packets_total",
    "turnx_kernel_bytes_total",
    "turnx_kernel_errors_total",
    "turnx_driver_xdp_errors_total",
    "turnx_user_allocations",
    "turnx_config_reloads_total",
    "turnx_config_last_reload_success",
    "turnx_tls_certificate_expiry_timestamp_seconds",
];

/// How configuration reloads went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// Reloads applied.
    pub applied: u64,
    /// Reloads refused: a key changed that needs a restart.
    pub refused: u64,
    /// Reloads that failed: the file did not read, parse or validate.
    pub failed: u64,
    /// Whether the last reload, if any, was applied.
    pub last_ok: bool,
}

/// Everything a scrape reports, read at once.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the daemon started, Unix seconds.
    pub start_time_unix: u64,
    /// Whether `/ready` succeeds.
    pub ready: bool,
    /// Whether the daemon is draining.
    pub draining: bool,
    /// The TURN core's counters.
    pub core: Counters,
    /// Live allocations by transport.
    pub by_transport: [(Transport, usize); 3],
    /// Live allocations per user, when `[metrics] per_user` is on.
    pub users: Option<Vec<(String, u32)>>,
    /// The kernel offload, if the kernel relays.
    pub offload: Option<OffloadReport>,
    /// The kernel programs' class counters, if loaded.
    pub kernel: Option<ClassCounters>,
    /// Drivers' XDP error counters: interface, counter, value.
    pub driver_errors: Vec<(String, String, u64)>,
    /// Configuration reloads.
    pub reloads: ReloadCounts,
    /// The TURNS certificate's notAfter, Unix seconds, with TLS.
    pub certificate_expiry: Option<u64>,
}

/// The snapshot in the Prometheus text format.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = Exposition::new();
    let bool_value = |flag: bool| u64::from(flag);
    out.gauge("turnx_build_info", "turnx's version; always 1.")
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    out.gauge(
        "turnx_start_time_seconds",
        "When turnxd started, Unix time.",
    )
    .sample(&[], snapshot.start_time_unix);
    out.gauge("turnx_ready", "1 while turnxd serves and does not drain.")
        .sample(&[], bool_value(snapshot.ready));
    out.gauge("turnx_draining", "1 while turnxd drains before it exits.")
        .sample(&[], bool_value(snapshot.draining));
    render_allocations(&mut out, snapshot);
    render_traffic(&mut out, snapshot);
    render_stun(&mut out, &snapshot.core);
    render_kernel(&mut out, snapshot);
    let reloads = snapshot.reloads;
    let mut family = out.counter(
        "turnx_config_reloads_total",
        "Configuration reloads (SIGHUP or a changed file), by result.",
    );
    family.sample(&[("result", "applied")], reloads.applied);
    family.sample(&[("result", "refused")], reloads.refused);
    family.sample(&[("result", "failed")], reloads.failed);
    out.gauge(
        "turnx_config_last_reload_success",
        "1 unless the last configuration reload was refused or failed.",
    )
    .sample(&[], bool_value(reloads.last_ok));
    if let Some(expiry) = snapshot.certificate_expiry {
        out.gauge(
            "turnx_tls_certificate_expiry_timestamp_seconds",
            "When the TURNS certificate expires (notAfter), Unix time.",
        )
        .sample(&[], expiry);
    }
    out.finish()
}

fn render_allocations(out: &mut Exposition, snapshot: &Snapshot) {
    let core = &snapshot.core;
    let mut family = out.gauge(
        "turnx_allocations",
        "Live allocations, by client transport.",
    );
    for (transport, count) in snapshot.by_transport {
        family.sample(&[("transport", transport.label())], count as u64);
    }
    let mut family = out.counter(
        "turnx_allocations_created_total",
        "Allocations created, by client transport.",
    );
    for transport in Transport::ALL {
        family.sample(
            &[("transport", transport.label())],
            core.allocations_created(transport),
        );
    }
    let mut family = out.counter(
        "turnx_allocations_deleted_total",
        "Allocations deleted, by reason.",
    );
    for reason in DeleteReason::ALL {
        family.sample(
            &[("reason", reason.label())],
            core.allocations_deleted(reason),
        );
    }
    if let Some(users) = &snapshot.users {
        let mut family = out.gauge(
            "turnx_user_allocations",
            "Live allocations per user ([metrics] per_user).",
        );
        for (user, count) in users {
            family.sample(&[("user", user)], u64::from(*count));
        }
    }
}

/// Packets and bytes at each side, each way, by path. The kernel relays
/// every datagram it takes, so its "in" and "out" match.
fn render_traffic(out: &mut Exposition, snapshot: &Snapshot) {
    let core = &snapshot.core;
    let stats = &core.stats;
    let user = [
        (
            "client",
            "in",
            core.from_clients.packets,
            core.from_clients.bytes,
        ),
        ("peer", "out", stats.to_peer_packets, stats.to_peer_bytes),
        ("peer", "in", core.from_peers.packets, core.from_peers.bytes),
        (
            "client",
            "out",
            stats.to_client_packets,
            stats.to_client_bytes,
        ),
    ];
    let relayed = snapshot
        .offload
        .map(|offload| offload.relayed)
        .unwrap_or_default();
    let kernel = [
        (
            "client",
            "in",
            relayed.to_peer_packets,
            relayed.to_peer_bytes,
        ),
        (
            "peer",
            "out",
            relayed.to_peer_packets,
            relayed.to_peer_bytes,
        ),
        (
            "peer",
            "in",
            relayed.to_client_packets,
            relayed.to_client_bytes,
        ),
        (
            "client",
            "out",
            relayed.to_client_packets,
            relayed.to_client_bytes,
        ),
    ];
    let mut family = out.counter(
        "turnx_packets_total",
        "Relayed datagrams, by side (client or peer), direction and path (kernel or userspace).",
    );
    for (path, rows) in [("userspace", &user), ("kernel", &kernel)] {
        for (side, direction, packets, _) in rows {
            family.sample(
                &[("side", side), ("direction", direction), ("path", path)],
                *packets,
            );
        }
    }
    let mut family = out.counter(
        "turnx_bytes_total",
        "Application bytes of relayed datagrams, labelled as turnx_packets_total.",
    );
    for (path, rows) in [("userspace", &user), ("kernel", &kernel)] {
        for (side, direction, _, bytes) in rows {
            family.sample(
                &[("side", side), ("direction", direction), ("path", path)],
                *bytes,
            );
        }
    }
    let mut family = out.counter(
        "turnx_dropped_packets_total",
        "Datagrams userspace dropped, by reason (the kernel's are turnx_kernel_packets_total{class=\"over_limit\"}).",
    );
    family.sample(&[("reason", "no_permission")], stats.dropped_no_permission);
    family.sample(&[("reason", "over_limit")], stats.dropped_over_limit);
}

fn render_stun(out: &mut Exposition, core: &Counters) {
    let mut family = out.counter(
        "turnx_stun_requests_total",
        "STUN requests received, by method.",
    );
    for method in Method::ALL {
        family.sample(&[("method", method.label())], core.requests(method));
    }
    let mut family = out.counter(
        "turnx_stun_responses_total",
        "STUN responses sent, by method, class and error code.",
    );
    for (method, code, count) in core.responses() {
        let code = code.map(|code| code.to_string()).unwrap_or_default();
        let class = if code.is_empty() { "success" } else { "error" };
        family.sample(
            &[
                ("method", method.label()),
                ("class", class),
                ("code", &code),
            ],
            count,
        );
    }
    let mut family = out.counter(
        "turnx_stun_indications_total",
        "Send indications received and Data indications sent.",
    );
    for method in Indication::ALL {
        family.sample(&[("method", method.label())], core.indications(method));
    }
    out.counter(
        "turnx_unauthenticated_requests_total",
        "Requests without valid credentials: Binding, challenged and malformed requests.",
    )
    .sample(&[], core.unauthenticated_requests);
    out.counter(
        "turnx_unauthenticated_responses_total",
        "Responses sent to requests without valid credentials.",
    )
    .sample(&[], core.unauthenticated_responses);
    let mut family = out.counter("turnx_refused_total", "Requests refused, by cause.");
    for cause in RefusalCause::ALL {
        family.sample(&[("cause", cause.label())], core.refused(cause));
    }
}

fn render_kernel(out: &mut Exposition, snapshot: &Snapshot) {
    if let Some(offload) = snapshot.offload {
        let stats = offload.stats;
        out.gauge(
            "turnx_kernel_bindings",
            "Channel bindings the kernel relays now.",
        )
        .sample(&[], offload.bindings as u64);
        out.gauge(
            "turnx_kernel_binding_capacity",
            "Channel bindings the kernel can hold ([xdp] max_bindings).",
        )
        .sample(&[], u64::from(offload.capacity));
        out.counter(
            "turnx_kernel_bindings_installed_total",
            "Channel bindings installed in the kernel.",
        )
        .sample(&[], stats.installed);
        out.counter(
            "turnx_kernel_bindings_removed_total",
            "Channel bindings removed from the kernel.",
        )
        .sample(&[], stats.removed);
        let mut family = out.counter(
            "turnx_kernel_bindings_refused_total",
            "Channel bindings left to userspace, by cause.",
        );
        for (cause, count) in [
            ("not_udp", stats.not_udp),
            ("wildcard_listener", stats.wildcard_listener),
            ("cross_family", stats.cross_family),
            ("legacy_channel", stats.legacy_channel),
            ("relay_to_relay", stats.relay_to_relay),
            ("map_full", stats.map_full),
            ("install_failed", stats.failed),
        ] {
            family.sample(&[("cause", cause)], count);
        }
        out.counter(
            "turnx_kernel_errors_total",
            "Failures of the kernel path, by kind: binding map updates the kernel refused.",
        )
        .sample(&[("kind", "binding_install")], stats.failed);
    }
    if let Some(kernel) = snapshot.kernel {
        let mut family = out.counter(
            "turnx_kernel_packets_total",
            "Frames the kernel programs saw, by class.",
        );
        for class in PacketClass::ALL {
            family.sample(&[("class", class.name())], kernel.get(class).packets);
        }
        let mut family = out.counter(
            "turnx_kernel_bytes_total",
            "Bytes of the frames the kernel programs saw, by class.",
        );
        for class in PacketClass::ALL {
            family.sample(&[("class", class.name())], kernel.get(class).bytes);
        }
    }
    if !snapshot.driver_errors.is_empty() {
        let mut family = out.counter(
            "turnx_driver_xdp_errors_total",
            "Drivers' XDP error counters on the interfaces turnx is attached to.",
        );
        for (interface, counter, value) in &snapshot.driver_errors {
            family.sample(&[("interface", interface), ("counter", counter)], *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{offload::KernelRelayed, turn::counters::Traffic};

    /// A snapshot with every optional part present and distinct values.
    fn full() -> Snapshot {
        let mut core = Counters::default();
        core.from_clients = Traffic {
            packets: 11,
            bytes: 1100,
        };
        core.stats.to_peer_packets = 10;
        core.stats.to_peer_bytes = 1000;
        core.stats.dropped_no_permission = 1;
        Snapshot {
            start_time_unix: 1_800_000_000,
            ready: true,
            draining: false,
            core,
            by_transport: [
                (Transport::Udp, 3),
                (Transport::Tcp, 1),
                (Transport::Tls, 0),
            ],
            users: Some(vec![("alice".into(), 2), ("b\"ob".into(), 1)]),
            offload: Some(OffloadReport {
                stats: crate::offload::OffloadStats {
                    installed: 5,
                    removed: 1,
                    ..Default::default()
                },
                relayed: KernelRelayed {
                    to_peer_packets: 70,
                    to_peer_bytes: 7000,
                    to_client_packets: 60,
                    to_client_bytes: 6000,
                },
                bindings: 4,
                capacity: 16384,
            }),
            kernel: Some(ClassCounters::default()),
            driver_errors: vec![("eth0".into(), "rx_xdp_drop".into(), 0)],
            reloads: ReloadCounts {
                applied: 2,
                refused: 1,
                failed: 0,
                last_ok: false,
            },
            certificate_expiry: Some(1_900_000_000),
        }
    }

    /// The value of the sample written exactly as `series`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn samples_carry_the_snapshot_values_by_side_and_path() {
        let text = render(&full());
        for (series, expected) in [
            ("turnx_ready", 1.0),
            ("turnx_allocations{transport=\"udp\"}", 3.0),
            (
                "turnx_packets_total{side=\"client\",direction=\"in\",path=\"userspace\"}",
                11.0,
            ),
            (
                "turnx_packets_total{side=\"peer\",direction=\"out\",path=\"userspace\"}",
                10.0,
            ),
            (
                "turnx_packets_total{side=\"peer\",direction=\"out\",path=\"kernel\"}",
                70.0,
            ),
            (
                "turnx_bytes_total{side=\"client\",direction=\"out\",path=\"kernel\"}",
                6000.0,
            ),
            ("turnx_dropped_packets_total{reason=\"no_permission\"}", 1.0),
            ("turnx_kernel_bindings", 4.0),
            ("turnx_kernel_bindings_installed_total", 5.0),
            ("turnx_user_allocations{user=\"b\\\"ob\"}", 1.0),
            ("turnx_config_reloads_total{result=\"refused\"}", 1.0),
            ("turnx_config_last_reload_success", 0.0),
            ("turnx_tls_certificate_expiry_timestamp_seconds", 1.9e9),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
    }

    #[test]
    fn every_family_is_listed_and_every_listed_family_is_written() {
        let text = render(&full());
        let written: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        let listed: std::collections::BTreeSet<&str> = FAMILIES.into_iter().collect();
        assert_eq!(written, listed);
    }

    #[test]
    fn without_a_kernel_no_kernel_family_is_written() {
        let snapshot = Snapshot {
            offload: None,
            kernel: None,
            driver_errors: Vec::new(),
            users: None,
            certificate_expiry: None,
            ..full()
        };
        let text = render(&snapshot);
        assert!(!text.contains("# TYPE turnx_kernel_"), "{text}");
        assert!(!text.contains("turnx_user_allocations"), "{text}");
        // The kernel path's packets are still written, as zero, so that
        // the offload ratio is defined.
        assert_eq!(
            value(
                &text,
                "turnx_packets_total{side=\"client\",direction=\"in\",path=\"kernel\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn promtool_accepts_a_full_scrape() {
        use std::io::Write;
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipping: promtool is not installed (Debian package prometheus)");
            return;
        };
        let text = render(&full());
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "promtool: {report}");
    }
}
