//! Helpers shared by the integration tests: gating on root and on the XDP
//! object, and throwaway network namespaces with veth pairs.
#![allow(dead_code)] // each test binary uses a different subset

pub mod browser;

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A name no other test run on this machine uses: prefix, our PID, and a
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

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (package iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace that is deleted, with everything in it, on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Turns IPv6 duplicate address detection off for links made from now
    /// on: a fresh namespace's tentative link-local addresses would
    /// otherwise drop the first packets while neighbours are resolved.
    pub fn disable_dad(&self) {
        self.set_sysctls(&[
            ("net/ipv6/conf/default/accept_dad", "0"),
            ("net/ipv6/conf/all/accept_dad", "0"),
        ]);
    }

    /// Turns IPv4 and IPv6 forwarding on, which the kernel's FIB helper
    /// needs for the relay's lookups.
    pub fn enable_forwarding(&self) {
        self.set_sysctls(&[
            ("net/ipv4/conf/all/forwarding", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
        ]);
    }

    /// Writes sysctls (paths below /proc/sys, values) in this namespace.
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) {
        let script = settings
            .iter()
            .map(|(path, value)| format!("echo {value} > /proc/sys/{path}"))
            .collect::<Vec<_>>()
            .join(" && ");
        let status = self
            .command("sh")
            .args(["-c", &script])
            .status()
            .expect("writing sysctls");
        assert!(status.success(), "{script} in {}", self.name);
    }

    /// Turns transmit checksum offload off on `dev`: its senders fill in
    /// full checksums, as packets arrive from a NIC.
    pub fn tx_checksum_off(&self, dev: &str) {
        let output = self
            .command("ethtool")
            .args(["-K", dev, "tx", "off"])
            .output()
            .expect("running ethtool");
        assert!(output.status.success(), "ethtool -K {dev} tx off failed");
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// `ip -n <ns> args...`, returning stdout.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and
    /// interface lookups inside `f` see this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).expect("opening the namespace");
                    // SAFETY: setns on a namespace fd we hold open; only this
                    // thread changes namespace.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair, addressed from 198.18.0.0/15 and
/// fd00::/8, with checksum offload off on both ends so datagrams carry full
/// checksums as they would from a NIC.
pub struct Link {
    pub client: Netns,
    pub relay: Netns,
    pub client_if: String,
    pub relay_if: String,
    pub client_v4: String,
    pub relay_v4: String,
    pub client_v6: String,
    pub relay_v6: String,
}

impl Link {
    pub fn new() -> Link {
        let client = Netns::new("txc");
        let relay = Netns::new("txr");
        client.disable_dad();
        relay.disable_dad();
        let client_if = unique_name("vc");
        let relay_if = unique_name("vr");
        ip(&[
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &relay_if,
            "netns",
            &relay.name,
        ]);
        // A /30 per run would be tidier, but namespaces are private: the
        // same addresses in every run cannot collide.
        let (client_v4, relay_v4) = ("198.18.0.1".to_owned(), "198.18.0.2".to_owned());
        let (client_v6, relay_v6) = ("fd00:5eed::1".to_owned(), "fd00:5eed::2".to_owned());
        for (ns, dev, v4, v6) in [
            (&client, &client_if, &client_v4, &client_v6),
            (&relay, &relay_if, &relay_v4, &relay_v6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.tx_checksum_off(dev);
        }
        Link {
            client,
            relay,
            client_if,
            relay_if,
            client_v4,
            relay_v4,
            client_v6,
            relay_v6,
        }
    }
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

/// Three namespaces in a row, as in a cluster: client ↔ relay ↔ pod. The
/// relay reaches the pod network only through its own relayed sockets (no
/// IP forwarding), like a TURN server between the internet and pods.
pub struct Topology {
    pub client: Netns,
    pub relay: Netns,
    pub pod: Netns,
    /// Interfaces: the client's, the relay's two, the pod's.
    pub client_if: String,
    pub relay_client_if: String,
    pub relay_pod_if: String,
    pub pod_if: String,
    /// The relay's address on the client side (the TURN server address).
    pub relay_client_side: String,
    /// The relay's address on the pod side (the relayed address).
    pub relay_pod_side: String,
    /// The pod's address (the peer).
    pub pod_ip: String,
    pub relay_client_side_v6: String,
    pub relay_pod_side_v6: String,
    pub pod_ip_v6: String,
}

impl Topology {
    pub fn new() -> Topology {
        let client = Netns::new("tc");
        let relay = Netns::new("tr");
        let pod = Netns::new("tp");
        for ns in [&client, &relay, &pod] {
            ns.disable_dad();
        }
        let names = [
            (unique_name("vc"), unique_name("vr")),
            (unique_name("vs"), unique_name("vp")),
        ];
        let links = [
            (&client, &relay, "198.18.0", "fd00:18", &names[0]),
            (&relay, &pod, "198.19.0", "fd00:19", &names[1]),
        ];
        for (left, right, v4, v6, (left_if, right_if)) in links {
            ip(&[
                "link",
                "add",
                left_if,
                "netns",
                &left.name,
                "type",
                "veth",
                "peer",
                "name",
                right_if,
                "netns",
                &right.name,
            ]);
            for (ns, dev, host) in [(left, left_if, 1), (right, right_if, 2)] {
                ns.ip(&["addr", "add", &format!("{v4}.{host}/24"), "dev", dev]);
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("{v6}::{host}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
                ns.ip(&["link", "set", dev, "up"]);
            }
        }
        let [(client_if, relay_client_if), (relay_pod_if, pod_if)] = names;
        Topology {
            client,
            relay,
            pod,
            client_if,
            relay_client_if,
            relay_pod_if,
            pod_if,
            relay_client_side: "198.18.0.2".into(),
            relay_pod_side: "198.19.0.1".into(),
            pod_ip: "198.19.0.2".into(),
            relay_client_side_v6: "fd00:18::2".into(),
            relay_pod_side_v6: "fd00:19::1".into(),
            pod_ip_v6: "fd00:19::2".into(),
        }
    }
}

/// A child process killed (by PID) when dropped.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// coturn's `turnutils_peer` echoing UDP on `addresses` at `port` in
/// `ns`, given a moment to bind.
pub fn start_turnutils_peer(ns: &Netns, addresses: &[&str], port: &str) -> Process {
    let mut command = ns.command("turnutils_peer");
    for address in addresses {
        command.args(["-L", address]);
    }
    let child = command
        .args(["-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting turnutils_peer");
    std::thread::sleep(Duration::from_millis(300));
    Process(child)
}

/// A directory under the system's temporary directory, unique to the run,
/// removed on drop (also on failure).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a program is installed (as the tests' packages provide it).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

/// A turnxd process in a namespace, killed (by PID) if the test fails.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    pub fn start(ns: &Netns, args: &[&str]) -> Daemon {
        let mut child = ns
            .command(env!("CARGO_BIN_EXE_turnxd"))
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting turnxd");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Starts turnxd and waits until it says it is ready.
    pub fn start_ready(ns: &Netns, args: &[&str]) -> Daemon {
        let mut daemon = Daemon::start(ns, args);
        assert!(
            daemon.wait_for_line("turnxd ready", Duration::from_secs(20)),
            "turnxd did not become ready:\n{}",
            daemon.log()
        );
        daemon
    }

    /// Waits up to `limit` for a log line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> bool {
        if self.log.iter().any(|line| line.contains(needle)) {
            return true;
        }
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends `signal` and waits up to 10 s for the exit status.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: signalling the child we spawned, by its PID.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = wait_for(Duration::from_secs(10), || self.child.try_wait().unwrap())
            .expect("turnxd did not exit within 10 s of the signal");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        status
    }

    pub fn log(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

/// `turnxctl status --json` for one interface, run in `ns`: its report.
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
    report[0].clone()
}

/// The engineered far ends of the kernel relay tests: tx checksum offload
/// off on the client's and the pod's veth (senders fill in checksums, as a
/// NIC delivers them), and a program that passes everything on both, since
/// native XDP redirects into a veth need one on its peer. Real pods have
/// neither; the programs detach when the returned handles drop.
pub fn engineer_far_ends(topology: &Topology, object: &[u8]) -> [turnx::xdp::XdpRelay; 2] {
    use turnx::{config::XdpMode, xdp::XdpRelay};
    [
        (&topology.client, &topology.client_if),
        (&topology.pod, &topology.pod_if),
    ]
    .map(|(ns, dev)| {
        ns.tx_checksum_off(dev);
        // No listen ports and no bindings: it passes every frame.
        let mut pass = XdpRelay::load(object, "info").expect("loading the XDP program");
        ns.run(|| pass.attach(dev, XdpMode::Native))
            .expect("attaching XDP to a far end");
        pass
    })
}

/// Writes a self-signed certificate for the IP address `ip`, named `name`,
/// and its key as `tls.crt` and `tls.key` into `dir`, replacing both by
/// rename as a secret update would.
pub fn write_certificate(dir: &std::path::Path, name: &str, ip: &str) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .arg("-keyout")
        .arg(dir.join("tls.key.new"))
        .arg("-out")
        .arg(dir.join("tls.crt.new"))
        .output()
        .expect("running openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
}

/// Fails (under `cargo xtask test`) or skips with a message when one of
/// `programs` is not installed; true when all are there.
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

/// The first number turnxd logged for `field`, as in `to_peer_packets: 1`
/// of its shutdown counters.
pub fn logged_number(log: &str, field: &str) -> u64 {
    let start = log
        .find(&format!("{field}: "))
        .unwrap_or_else(|| panic!("no {field} in:\n{log}"));
    log[start + field.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
