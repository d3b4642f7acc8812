//! The benchmark's network: client namespace ↔ relay namespace ↔ pod
//! namespace over two veth pairs, addressed from 198.18.0.0/15 and
//! fd00::/8, with threaded NAPI on every veth so that each interface's
//! receive work runs in a kernel thread that can be pinned: the relay
//! side's to the relay core, the client and pod sides' to the load core.
//! Everything is removed on drop.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::cpu;

/// The client's address for the measured flows and for latency.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Further client addresses, for allocation load beyond one address's ports.
pub const EXTRA_CLIENTS_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 2),
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
];
/// The relay's client-facing address (the TURN listen address).
pub const RELAY_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The relay's pod-facing address (the relayed address).
pub const RELAY_POD_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
/// The relay's pod-facing IPv6 address (relayed addresses of IPv6 allocations).
pub const RELAY_POD_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x254);
/// The media server pod.
pub const POD_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The pod's IPv6 address.
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 1);

/// One network namespace made by the benchmark.
pub struct Netns {
    /// The namespace's name under /var/run/netns.
    pub name: String,
}

impl Netns {
    fn new(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        crate::cleanup::namespace_created(&name);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctl("net/ipv6/conf/all/accept_dad", "0")?;
        ns.sysctl("net/ipv6/conf/default/accept_dad", "0")?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs a shell snippet inside this namespace (with this namespace's
    /// /sys mounted, which `ip netns exec` does).
    pub fn sh(&self, script: &str) -> Result<()> {
        let output = self.command("sh").args(["-c", script]).output()?;
        ensure!(
            output.status.success(),
            "`{script}` in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    /// Writes a sysctl (path below /proc/sys).
    pub fn sysctl(&self, path: &str, value: &str) -> Result<()> {
        self.sh(&format!("echo {value} > /proc/sys/{path}"))
    }

    /// Runs `f` on a thread that has entered this namespace (sockets,
    /// interface names and BPF_PROG_RUN's ifindex are this namespace's),
    /// pinned to `core` if given.
    pub fn run<T: Send>(&self, core: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<T> {
                    self::enter(&path)?;
                    if let Some(core) = core {
                        cpu::pin_current_thread(core)?;
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in namespace {} panicked", self.name))?
        })
    }
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &str) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace fd we hold open; only this thread moves.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
        crate::cleanup::namespace_deleted(&self.name);
    }
}

/// One end of a veth pair.
pub struct Veth {
    /// Interface name, unique per benchmark run.
    pub name: String,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// The three namespaces and the veths between them.
pub struct Topology {
    /// Where clients (and the generator towards the relay) live.
    pub client: Netns,
    /// Where the relay runs.
    pub relay: Netns,
    /// Where the media server (peer, sink, echo) lives.
    pub pod: Netns,
    /// Client namespace end of the client link.
    pub client_if: Veth,
    /// Relay namespace end of the client link.
    pub relay_client_if: Veth,
    /// Relay namespace end of the pod link.
    pub relay_pod_if: Veth,
    /// Pod namespace end of the pod link.
    pub pod_if: Veth,
    /// An idle veth in the client namespace where the generator is
    /// attached, only so that the kernel's XDP dispatcher already holds it:
    /// otherwise every BPF_PROG_RUN call would add it and remove it again,
    /// waiting for two RCU grace periods each time.
    pub parking_if: Veth,
    /// Core for the relay: its NAPI threads and server processes.
    pub relay_core: usize,
    /// Core for the load: generator, sinks, clients.
    pub load_core: usize,
}

impl Topology {
    /// Builds the network. Names carry the process id, so concurrent runs
    /// do not collide.
    pub fn new() -> Result<Self> {
        let id = std::process::id() % 100_000;
        let client = Netns::new(format!("txbench{id}c"))?;
        let relay = Netns::new(format!("txbench{id}r"))?;
        let pod = Netns::new(format!("txbench{id}p"))?;
        let names = [
            format!("bc{id}"),
            format!("brc{id}"),
            format!("brp{id}"),
            format!("bp{id}"),
        ];
        for (a, a_ns, b, b_ns) in [
            (&names[0], &client, &names[1], &relay),
            (&names[2], &relay, &names[3], &pod),
        ] {
            ip(&[
                "link", "add", a, "netns", &a_ns.name, "type", "veth", "peer", "name", b, "netns",
                &b_ns.name,
            ])?;
        }
        let ends = [
            (&client, &names[0], "198.18.0.1/24", "fd00:18::1/64"),
            (&relay, &names[1], "198.18.0.254/24", "fd00:18::254/64"),
            (&relay, &names[2], "198.19.0.254/24", "fd00:19::254/64"),
            (&pod, &names[3], "198.19.0.1/24", "fd00:19::1/64"),
        ];
        for (ns, dev, v4, v6) in ends {
            ns.ip(&["addr", "add", v4, "dev", dev])?;
            ns.ip(&["addr", "add", v6, "dev", dev, "nodad"])?;
            // Full UDP checksums from local sockets, as a NIC would deliver
            // them (the XDP relay updates checksums incrementally); GRO on
            // and threaded NAPI, so receive work runs in a pinnable thread.
            ns.sh(&format!(
                "ethtool -K {dev} tx off gro on >/dev/null && ip link set {dev} up && \
                 echo 1 > /sys/class/net/{dev}/threaded"
            ))?;
        }
        let parking = format!("bg{id}");
        client.ip(&[
            "link",
            "add",
            &parking,
            "type",
            "veth",
            "peer",
            "name",
            &format!("bg{id}p"),
        ])?;
        client.ip(&["link", "set", &parking, "up"])?;
        for extra in EXTRA_CLIENTS_V4 {
            client.ip(&["addr", "add", &format!("{extra}/24"), "dev", &names[0]])?;
        }
        client.ip(&["route", "add", "default", "via", "198.18.0.254"])?;
        client.ip(&["-6", "route", "add", "default", "via", "fd00:18::254"])?;
        pod.ip(&["route", "add", "default", "via", "198.19.0.254"])?;
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:19::254"])?;
        relay.sysctl("net/ipv4/conf/all/forwarding", "1")?;
        relay.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        let cores = cpu::online_cores()?;
        ensure!(
            cores.len() >= 2,
            "the benchmark needs two cores (one for the relay, one for the load)"
        );
        let mac = |ns: &Netns, dev: &str| -> Result<Veth> {
            Ok(Veth {
                name: dev.to_owned(),
                mac: read_mac(ns, dev)?,
            })
        };
        let topology = Topology {
            client_if: mac(&client, &names[0])?,
            relay_client_if: mac(&relay, &names[1])?,
            relay_pod_if: mac(&relay, &names[2])?,
            pod_if: mac(&pod, &names[3])?,
            parking_if: mac(&client, &parking)?,
            client,
            relay,
            pod,
            relay_core: cores[cores.len() - 1],
            load_core: cores[0],
        };
        topology.add_neighbours()?;
        topology.pin_napi_threads()?;
        Ok(topology)
    }

    /// Permanent neighbour entries everywhere: the relay's FIB lookups
    /// succeed from the first frame and no ARP or ND runs during a
    /// measurement.
    fn add_neighbours(&self) -> Result<()> {
        let mut entries: Vec<(&Netns, IpAddr, &Veth, &Veth)> = vec![
            (&self.relay, POD_V4.into(), &self.pod_if, &self.relay_pod_if),
            (&self.relay, POD_V6.into(), &self.pod_if, &self.relay_pod_if),
            (
                &self.client,
                RELAY_CLIENT_SIDE_V4.into(),
                &self.relay_client_if,
                &self.client_if,
            ),
            (
                &self.pod,
                RELAY_POD_SIDE_V4.into(),
                &self.relay_pod_if,
                &self.pod_if,
            ),
            (
                &self.pod,
                RELAY_POD_SIDE_V6.into(),
                &self.relay_pod_if,
                &self.pod_if,
            ),
        ];
        for client in std::iter::once(CLIENT_V4).chain(EXTRA_CLIENTS_V4) {
            entries.push((
                &self.relay,
                client.into(),
                &self.client_if,
                &self.relay_client_if,
            ));
        }
        for (ns, address, owner, dev) in entries {
            ns.ip(&[
                "neigh",
                "replace",
                &address.to_string(),
                "lladdr",
                &format_mac(&owner.mac),
                "dev",
                &dev.name,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    /// Pins each veth's NAPI thread: the relay namespace's to the relay
    /// core, the others to the load core. Attaching or detaching XDP can
    /// recreate the threads, so this runs before every measurement.
    pub fn pin_napi_threads(&self) -> Result<()> {
        for (dev, core) in [
            (&self.relay_client_if, self.relay_core),
            (&self.relay_pod_if, self.relay_core),
            (&self.client_if, self.load_core),
            (&self.pod_if, self.load_core),
        ] {
            let threads = cpu::napi_threads(&dev.name)?;
            ensure!(
                !threads.is_empty(),
                "no threaded NAPI kthread found for {}",
                dev.name
            );
            for pid in threads {
                cpu::pin_task(pid, core)?;
            }
        }
        Ok(())
    }

    /// The interface index of `dev` in `ns`.
    pub fn ifindex(ns: &Netns, dev: &Veth) -> Result<u32> {
        let text = read_in(ns, &format!("/sys/class/net/{}/ifindex", dev.name))?;
        text.trim()
            .parse()
            .with_context(|| format!("ifindex of {}: {text:?}", dev.name))
    }
}

fn read_mac(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let text = read_in(ns, &format!("/sys/class/net/{dev}/address"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC of {dev}: {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC of {dev} is not 6 bytes: {text:?}"))
}

/// Reads a file as seen from inside `ns` (for its /sys).
fn read_in(ns: &Netns, path: &str) -> Result<String> {
    let output = ns.command("cat").arg(path).output()?;
    ensure!(output.status.success(), "reading {path} in {}", ns.name);
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
