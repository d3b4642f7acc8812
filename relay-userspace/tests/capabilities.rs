//! Which Linux capabilities turnxd needs, measured rather than guessed, so
//! that `deploy/base/daemonset.yaml` adds exactly those.
//!
//! Each run starts turnxd as root in a test namespace, with XDP on a veth,
//! `engine` auto and pinned maps, but with its capability bounding set cut
//! down to a candidate set by `setpriv`. That is the state of a container
//! running as uid 0 with `capabilities: {drop: [ALL], add: [...]}`: for
//! root, exec makes the permitted and effective sets equal to the bounding
//! set. The test checks the effective set in /proc, so the measure is not
//! taken on a process that kept more than it was meant to.
//!
//! What it shows, on Linux 6.6 and later:
//! - CAP_SYS_ADMIN is needed: turnxd checks that its XDP attachment is a
//!   bpf link by walking the system's links (BPF_LINK_GET_NEXT_ID and
//!   BPF_LINK_GET_FD_BY_ID), which only CAP_SYS_ADMIN may do. Without it
//!   XDP is refused (the tc engine alone still runs).
//! - CAP_SYS_ADMIN also passes the kernel's checks for CAP_BPF (maps),
//!   CAP_PERFMON (the verifier's pointer rules) and, for XDP and tc
//!   programs, CAP_NET_ADMIN, so with it those three add nothing.
//! - CAP_NET_ADMIN is still added: before Linux 6.6 (no tcx) the tc engine
//!   attaches through rtnetlink (a clsact qdisc and a filter), which checks
//!   CAP_NET_ADMIN alone.
//! - Without CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are each
//!   needed to load the programs at all.
//!
//! Nothing else is: no CAP_NET_RAW, no CAP_SYS_RESOURCE (no memlock limit
//! to raise on 5.11+, where BPF memory is charged to the cgroup), no
//! CAP_NET_BIND_SERVICE while the listen ports are above 1023.

mod common;

use std::{process::ExitStatus, time::Duration};

use common::{Daemon, Link, PinDir, TempDir, wait_for};

/// What the DaemonSet adds after dropping ALL. Keep in step with
/// `deploy/base/daemonset.yaml` (checked by the first test below).
const DAEMONSET_CAPS: &[&str] = &["NET_ADMIN", "SYS_ADMIN"];

/// Capability numbers from `include/uapi/linux/capability.h`.
fn cap_number(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no number for capability {other}"),
    }
}

fn cap_mask(caps: &[&str]) -> u64 {
    caps.iter().fold(0, |mask, cap| mask | 1 << cap_number(cap))
}

/// How one run of turnxd under a capability set went.
struct Outcome {
    caps: Vec<&'static str>,
    /// It logged "turnxd ready".
    ready: bool,
    /// Its effective set as /proc showed it while it ran (ready runs only).
    effective: Option<u64>,
    /// `ip link` showed an XDP program on the veth while it ran.
    xdp_attached: bool,
    /// The pin directory held pinned maps while it ran.
    pinned: bool,
    exit: ExitStatus,
    log: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "turnxd with {:?}: ready={} xdp={} pinned={} exit={}\n{}",
            self.caps, self.ready, self.xdp_attached, self.pinned, self.exit, self.log
        )
    }
}

/// Runs turnxd in `link`'s relay namespace with only `caps`, XDP and the
/// tc engine as `engine` says, on a fresh pin directory; stops it (SIGINT)
/// once it is ready, or waits for it to give up.
fn run_with(link: &Link, caps: &[&'static str], engine: &str) -> Outcome {
    let pins = PinDir::new();
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|cap| format!("+{}", cap.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    // nsenter, not `ip netns exec`: that one mounts a fresh /sys, hiding
    // the host's bpffs, and turnxd would need CAP_SYS_ADMIN to mount its
    // own. In a pod, /sys/fs/bpf is the host's, mounted by hostPath.
    let mut command = std::process::Command::new("nsenter");
    command
        .arg(format!("--net=/var/run/netns/{}", link.relay.name))
        .args(["--", "setpriv", "--bounding-set", &bounding])
        .args(["--inh-caps", "-all", "--ambient-caps", "-all", "--"])
        .arg(env!("CARGO_BIN_EXE_turnxd"))
        .args(["--interface", &link.relay_if, "--pin-dir", pins.path()])
        .args(["--listen", &format!("{}:3478", link.relay_v4)])
        .args(["--engine", engine, "--stats-interval", "0"]);
    // Its own admin socket, so that runs in parallel never share one (the
    // variable is ignored by a turnxd without an admin socket).
    let admin = TempDir::new("txcap");
    command.env("TURNXD_ADMIN_SOCKET", admin.0.join("turnxd.sock"));
    let mut daemon = Daemon::spawn(command);
    let ready = wait_for(Duration::from_secs(20), || {
        if daemon.wait_for_line("turnxd ready", Duration::from_millis(100)) {
            Some(true)
        } else {
            daemon.child.try_wait().unwrap().map(|_| false)
        }
    })
    .unwrap_or(false);
    let (mut effective, mut xdp_attached, mut pinned) = (None, false, false);
    let exit = if ready {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
            .expect("reading turnxd's /proc status");
        effective = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).expect("CapEff is hex"));
        xdp_attached = link
            .relay
            .ip_output(&["link", "show", &link.relay_if])
            .contains("xdp");
        pinned = std::fs::read_dir(&pins.0).is_ok_and(|mut entries| entries.next().is_some());
        daemon.stop(libc::SIGINT)
    } else {
        wait_for(Duration::from_secs(10), || daemon.child.try_wait().unwrap())
            .expect("turnxd neither became ready nor exited")
    };
    let outcome = Outcome {
        caps: caps.to_vec(),
        ready,
        effective,
        xdp_attached,
        pinned,
        exit,
        log: daemon.log(),
    };
    println!(
        "{:?} engine {engine}: ready={} xdp={} exit={}",
        outcome.caps, outcome.ready, outcome.xdp_attached, outcome.exit
    );
    outcome
}

/// A run that must have served fully: ready with exactly `caps` in effect,
/// XDP on the veth in native mode, the tc engine beside it, maps pinned,
/// and a clean exit.
fn assert_serves(outcome: &Outcome, link: &Link) {
    let context = outcome.describe();
    assert!(outcome.ready, "{context}");
    assert_eq!(
        outcome.effective,
        Some(cap_mask(&outcome.caps)),
        "the effective set is not the one under test: {context}"
    );
    assert!(outcome.xdp_attached, "no XDP on the veth: {context}");
    assert!(
        outcome
            .log
            .contains(&format!("XDP attached to {} in native mode", link.relay_if)),
        "{context}"
    );
    assert!(outcome.log.contains("tc engine"), "no tc engine: {context}");
    assert!(outcome.pinned, "no pinned maps: {context}");
    assert!(outcome.exit.success(), "{context}");
}

/// A run that must have failed to start, with `needle` in its log.
fn assert_refused(outcome: &Outcome, needle: &str) {
    let context = outcome.describe();
    assert!(!outcome.ready, "it started anyway: {context}");
    assert!(!outcome.exit.success(), "{context}");
    assert!(
        outcome.log.contains(needle),
        "expected {needle:?} in the log: {context}"
    );
}

/// Linux 6.6 or newer: the tc engine attaches with tcx (a bpf link), not
/// through rtnetlink.
fn kernel_has_tcx() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

fn root_and_object_or_skip(test: &str) -> bool {
    if common::xdp_object_or_skip(test).is_none() {
        return false;
    }
    if !common::have("setpriv") || !common::have("nsenter") {
        // Both are util-linux, part of every Debian system.
        panic!("{test}: setpriv and nsenter (util-linux) are needed");
    }
    true
}

/// The manifest adds what this file measured: the list after
/// `capabilities: add:` in the DaemonSet is [`DAEMONSET_CAPS`].
#[test]
fn daemonset_adds_the_measured_capabilities() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/daemonset.yaml");
    let manifest = std::fs::read_to_string(path).expect("reading deploy/base/daemonset.yaml");
    let line = manifest
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("add:"))
        .unwrap_or_else(|| panic!("{path}: no `add:` list under `capabilities:`"));
    let added: Vec<String> = line
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|cap| cap.trim().trim_matches('"').to_owned())
        .filter(|cap| !cap.is_empty())
        .collect();
    assert_eq!(
        added, DAEMONSET_CAPS,
        "{path} adds {added:?}; the measured set is {DAEMONSET_CAPS:?} \
         (write it on one line: `add: [\"NET_ADMIN\", \"SYS_ADMIN\"]`)"
    );
    assert!(
        manifest.contains("drop: [\"ALL\"]"),
        "{path}: the container must drop ALL before adding"
    );
}

/// The DaemonSet's set serves fully, no capabilities at all do not, and
/// each capability of the set is needed or, where the kernel makes it
/// redundant, the run says so.
#[test]
fn turnxd_serves_with_the_daemonsets_capabilities_and_each_is_needed() {
    let test = "turnxd_serves_with_the_daemonsets_capabilities_and_each_is_needed";
    if !root_and_object_or_skip(test) {
        return;
    }
    let link = Link::new();

    assert_serves(&run_with(&link, DAEMONSET_CAPS, "auto"), &link);

    // None at all: the first thing it does in the kernel, creating maps,
    // is refused.
    assert_refused(&run_with(&link, &[], "auto"), "map");

    // Without CAP_SYS_ADMIN: CAP_NET_ADMIN alone cannot create a map.
    assert_refused(&run_with(&link, &["NET_ADMIN"], "auto"), "map");

    // Without CAP_NET_ADMIN: with tcx (6.6+) every attachment is a bpf
    // link, which CAP_SYS_ADMIN may make for network programs; before,
    // the tc engine's rtnetlink attachment needs CAP_NET_ADMIN.
    let outcome = run_with(&link, &["SYS_ADMIN"], "auto");
    if kernel_has_tcx() {
        println!(
            "CAP_NET_ADMIN is redundant with CAP_SYS_ADMIN on this kernel (tcx); it is kept \
             for the tc engine on kernels before 6.6"
        );
        assert_serves(&outcome, &link);
    } else {
        assert!(!outcome.ready, "{}", outcome.describe());
    }
}

/// The set the issue suggested, CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON
/// without CAP_SYS_ADMIN: each of the three is needed to load the
/// programs, and even all three leave XDP refused, since turnxd's check
/// that its attachment is a bpf link walks the system's links.
#[test]
fn without_sys_admin_bpf_net_admin_and_perfmon_are_each_needed_and_xdp_is_refused() {
    let test = "without_sys_admin_bpf_net_admin_and_perfmon_are_each_needed_and_xdp_is_refused";
    if !root_and_object_or_skip(test) {
        return;
    }
    let link = Link::new();
    let three = ["BPF", "NET_ADMIN", "PERFMON"];

    // XDP needs CAP_SYS_ADMIN: the link check fails and turnxd detaches.
    let outcome = run_with(&link, &three, "auto");
    assert_refused(&outcome, "bpf link");

    // The tc engine alone runs with the three.
    let outcome = run_with(&link, &three, "tc");
    let context = outcome.describe();
    assert!(outcome.ready, "{context}");
    assert_eq!(outcome.effective, Some(cap_mask(&three)), "{context}");
    assert!(outcome.log.contains("tc engine"), "{context}");
    assert!(outcome.pinned, "{context}");
    assert!(outcome.exit.success(), "{context}");

    // Each of the three is needed for that: CAP_BPF for maps, CAP_NET_ADMIN
    // to load network programs, CAP_PERFMON for the verifier to accept
    // the programs' pointer arithmetic.
    for (missing, needle) in [
        ("BPF", "map"),
        ("NET_ADMIN", "BPF_PROG_LOAD"),
        ("PERFMON", "BPF_PROG_LOAD"),
    ] {
        let caps: Vec<&'static str> = three.into_iter().filter(|cap| *cap != missing).collect();
        assert_refused(&run_with(&link, &caps, "tc"), needle);
    }
}
