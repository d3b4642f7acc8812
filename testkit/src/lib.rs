//! What the tests and the benchmarks share, kept out of the shipped
//! library:
//! - [`netns`]: network namespaces, veth pairs, `ip`, and what is in them;
//! - [`topology`]: two namespaces on a veth, and three in a line (client ↔
//!   relay ↔ pod);
//! - [`node`]: a Kubernetes node as it is: uplink, pods' veths, a second
//!   node over the uplink and over a VXLAN tunnel;
//! - [`process`]: child processes killed by PID, turnxd, coturn's peer,
//!   temporary directories and certificates;
//! - [`cleanup`]: removing all of it when a run is interrupted;
//! - [`foreign`]: stand-ins for someone else's (Cilium's) XDP and tc
//!   programs;
//! - [`frame`]: Ethernet frames, STUN and ChannelData builders;
//! - [`client`]: a minimal blocking TURN client;
//! - [`prometheus`]: a real Prometheus scraping a test's daemons, and a
//!   small HTTP client for the daemons' endpoints.
//!
//! Everything panics on failure, with what failed: a test or benchmark
//! cannot go on without its network.

pub mod cleanup;
pub mod client;
pub mod foreign;
pub mod frame;
pub mod netns;
pub mod node;
pub mod process;
pub mod prometheus;
pub mod topology;

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use netns::{Netns, Veth, ip};

/// Whether this process runs as root, which namespaces and XDP need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A name no other run on this machine uses: prefix, our PID, and a
/// per-process counter. Interface names stay within 15 bytes.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}{:x}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a program is installed (as `cargo xtask setup` provides it).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

/// Fails (under `cargo xtask test`, which sets TURNX_REQUIRE_XDP_TESTS) or
/// skips with a message when one of `programs` (name, where it comes from)
/// is not installed; true when all are there.
pub fn have_all_or_skip(test: &str, programs: &[(&str, &str)]) -> bool {
    let required = std::env::var_os("TURNX_REQUIRE_XDP_TESTS").is_some();
    for (program, package) in programs {
        if !have(program) {
            assert!(!required, "{test}: {program} ({package}) is missing");
            eprintln!("skipping {test}: {program} is not installed ({package})");
            return false;
        }
    }
    true
}

/// Pins the task `pid` (0: the calling thread) to `core`.
pub fn pin_task(pid: i32, core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes one bit of it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pointer and size of a local set.
    if unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
