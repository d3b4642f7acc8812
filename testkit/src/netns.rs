//! Network namespaces and the veths between them. Every namespace is
//! deleted, with everything in it, when its [`Netns`] drops, and is known
//! to [`crate::cleanup`] until then.

use std::{fs::File, os::fd::AsRawFd, process::Command};

use crate::unique_name;

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
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A network namespace of this run.
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// A new namespace named `prefix` plus what makes it unique, with `lo`
    /// up and IPv6 duplicate address detection off: a fresh namespace's
    /// tentative addresses would otherwise drop the first packets.
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        crate::cleanup::namespace_created(&name);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.set_sysctls(&[
            ("net/ipv6/conf/default/accept_dad", "0"),
            ("net/ipv6/conf/all/accept_dad", "0"),
        ]);
        ns
    }

    /// Turns IPv4 and IPv6 forwarding on, as on a Kubernetes node (the
    /// kernel's FIB helper needs it for the relay's lookups).
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
        self.sh(&script);
    }

    /// Reads a sysctl (path below /proc/sys) in this namespace.
    pub fn sysctl(&self, path: &str) -> String {
        self.read(&format!("/proc/sys/{path}")).trim().to_owned()
    }

    /// Runs a shell snippet inside this namespace (with this namespace's
    /// /sys, which `ip netns exec` mounts).
    pub fn sh(&self, script: &str) {
        let output = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("running sh");
        assert!(
            output.status.success(),
            "`{script}` in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    /// A file as seen from inside this namespace (for its /sys and /proc).
    pub fn read(&self, path: &str) -> String {
        let output = self.command("cat").arg(path).output().expect("running cat");
        assert!(output.status.success(), "reading {path} in {}", self.name);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Turns transmit checksum offload off on `dev`: its senders fill in
    /// full checksums, as packets arrive from a NIC.
    pub fn tx_checksum_off(&self, dev: &str) {
        self.sh(&format!("ethtool -K {dev} tx off >/dev/null"));
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

    /// Runs `f` on a thread that has entered this namespace; sockets,
    /// interface names and BPF_PROG_RUN's ifindex inside `f` are this
    /// namespace's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.run_on(None, f)
    }

    /// As [`Self::run`], on a thread pinned to `core` if given.
    pub fn run_on<T: Send>(&self, core: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).expect("opening the namespace");
                    // SAFETY: setns on a namespace fd we hold open; only this
                    // thread changes namespace.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    if let Some(core) = core {
                        crate::pin_task(0, core).expect("pinning a thread");
                    }
                    f()
                })
                .join()
                .expect("a thread in a test namespace panicked")
        })
    }

    /// The interface index of `dev` here.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let text = self.read(&format!("/sys/class/net/{dev}/ifindex"));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("ifindex of {dev}: {text:?}"))
    }

    /// The MAC address of `dev` here.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let text = self.read(&format!("/sys/class/net/{dev}/address"));
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|part| u8::from_str_radix(part, 16))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|_| panic!("MAC of {dev}: {text:?}"));
        bytes
            .try_into()
            .unwrap_or_else(|_| panic!("MAC of {dev} is not 6 bytes: {text:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        crate::cleanup::namespace_deleted(&self.name);
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct Veth {
    /// Interface name, unique per run.
    pub name: String,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// Adds a veth pair with one end, `a`, in `a_ns` and the other, `b`, in
/// `b_ns`, and returns both ends (down, unaddressed, default offloads).
pub fn veth_pair(a_ns: &Netns, a: &str, b_ns: &Netns, b: &str) -> (Veth, Veth) {
    ip(&[
        "link", "add", a, "netns", &a_ns.name, "type", "veth", "peer", "name", b, "netns",
        &b_ns.name,
    ]);
    let end = |ns: &Netns, name: &str| Veth {
        name: name.to_owned(),
        mac: ns.mac(name),
    };
    (end(a_ns, a), end(b_ns, b))
}

/// `aa:bb:…` for `ip neigh`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
