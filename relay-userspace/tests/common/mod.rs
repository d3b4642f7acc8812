//! What the integration tests share beyond the testkit: gating on root and
//! on the XDP object, turnxd and turnxctl as this crate builds them, and
//! pinned maps.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod browser;

pub use testkit::{
    Netns, have, have_all_or_skip, is_root,
    process::{
        Daemon, Process, TempDir, logged_number, logged_number_after, start_turnutils_peer,
        write_certificate,
    },
    topology::{Link, Topology},
    unique_name, wait_for,
};

/// The embedded XDP object, or `None` after printing why the calling test
/// skips. Under `cargo xtask test` (TURNX_REQUIRE_XDP_TESTS=1) a missing
/// object is a failure, never a skip.
pub fn xdp_object_or_skip(test: &str) -> Option<&'static [u8]> {
    if !is_root() {
        eprintln!("skipping {test}: it loads XDP programs and needs root");
        return None;
    }
    match turnx::ebpf_object::embedded() {
        Some(object) => Some(object),
        None if std::env::var_os("TURNX_REQUIRE_XDP_TESTS").is_some() => {
            panic!("{test}: no XDP object embedded although TURNX_REQUIRE_XDP_TESTS is set")
        }
        None => {
            eprintln!(
                "skipping {test}: built without the XDP object; run `cargo xtask test`, which \
                 builds and embeds it"
            );
            None
        }
    }
}

/// Starts turnxd, as this crate builds it, with `args` in `ns`.
pub fn turnxd(ns: &Netns, args: &[&str]) -> Daemon {
    Daemon::start(ns, env!("CARGO_BIN_EXE_turnxd"), args)
}

/// Starts turnxd and waits until it says it is ready.
pub fn turnxd_ready(ns: &Netns, args: &[&str]) -> Daemon {
    Daemon::start_ready(ns, env!("CARGO_BIN_EXE_turnxd"), args, "turnxd ready")
}

/// A unique pin directory on bpffs, removed on drop (also on failure).
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    pub fn new() -> PinDir {
        turnx::xdp::ensure_bpffs().expect("mounting bpffs");
        PinDir(std::path::Path::new("/sys/fs/bpf").join(unique_name("turnxpin")))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `turnxctl status --json` for one interface, run in `ns`: the
/// interface's report (`["interfaces"][0]`; no daemon need answer).
pub fn turnxctl_status(ns: &Netns, interface: &str) -> serde_json::Value {
    let output = ns
        .command(env!("CARGO_BIN_EXE_turnxctl"))
        .args(["status", "--json", "--interface", interface])
        .output()
        .expect("running turnxctl");
    assert!(
        output.status.success(),
        "turnxctl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["interfaces"][0].clone()
}

/// Asserts that no driver XDP error counter of `interfaces` in `ns`
/// moved (`turnxctl status`, which reads what `ethtool -S` shows), and
/// that there are such counters to read.
pub fn assert_no_driver_xdp_errors(ns: &Netns, interfaces: &[&String]) {
    for interface in interfaces {
        let status = turnxctl_status(ns, interface);
        let counters = status["driver_xdp_errors"].as_object().cloned();
        let counters = counters.unwrap_or_default();
        assert!(
            !counters.is_empty(),
            "no driver XDP counters for {interface}"
        );
        for (name, value) in counters {
            assert_eq!(value.as_u64(), Some(0), "{interface}: {name}");
        }
    }
}

/// A program that passes every frame, attached (native XDP) to `dev` in
/// `ns`: a veth end with it receives what XDP sends, as a NIC does. It
/// detaches when the handle drops.
pub fn pass_program(ns: &Netns, dev: &str, object: &[u8]) -> turnx::xdp::XdpRelay {
    // No listen ports and no bindings: it passes every frame.
    let mut pass = turnx::xdp::XdpRelay::load(object, "info").expect("loading the XDP program");
    ns.run(|| pass.attach(dev, turnx::config::XdpMode::Native))
        .expect("attaching XDP to a far end");
    pass
}

/// The engineered far ends of the kernel relay tests: tx checksum offload
/// off on the client's and the pod's veth (senders fill in checksums, as a
/// NIC delivers them), and a program that passes everything on both, since
/// native XDP redirects into a veth need one on its peer. Real pods have
/// neither; the programs detach when the returned handles drop.
pub fn engineer_far_ends(topology: &Topology, object: &[u8]) -> [turnx::xdp::XdpRelay; 2] {
    [
        (&topology.client, &topology.client_if),
        (&topology.pod, &topology.pod_if),
    ]
    .map(|(ns, dev)| {
        ns.tx_checksum_off(dev);
        pass_program(ns, dev, object)
    })
}
