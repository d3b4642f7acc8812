//! The benchmark's network: client namespace ↔ relay namespace ↔ pod
//! namespace over two veth pairs, addressed from 198.18.0.0/15 and
//! fd00::/8, with threaded NAPI on every veth so that each interface's
//! receive work runs in a kernel thread that can be pinned: the relay
//! side's to the relay core, the client and pod sides' to the load core.
//! Everything is removed on drop. The namespaces and veths are the
//! testkit's; what is here is the tuning for measurements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use testkit::{
    Netns, Veth,
    netns::{format_mac, veth_pair},
    unique_name,
};

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
    /// Every core the benchmark may use, in order.
    pub cores: Vec<usize>,
    /// Core for the relay: its NAPI threads and server processes.
    pub relay_core: usize,
    /// Core for the load: generator, sinks, clients.
    pub load_core: usize,
}

impl Topology {
    /// Builds the network. Names carry the process id, so concurrent runs
    /// do not collide.
    pub fn new() -> Result<Self> {
        let client = Netns::new("txbc");
        let relay = Netns::new("txbr");
        let pod = Netns::new("txbp");
        let names = [
            unique_name("bc"),
            unique_name("brc"),
            unique_name("brp"),
            unique_name("bp"),
        ];
        let (client_if, relay_client_if) = veth_pair(&client, &names[0], &relay, &names[1]);
        let (relay_pod_if, pod_if) = veth_pair(&relay, &names[2], &pod, &names[3]);
        let ends = [
            (&client, &names[0], "198.18.0.1/24", "fd00:18::1/64"),
            (&relay, &names[1], "198.18.0.254/24", "fd00:18::254/64"),
            (&relay, &names[2], "198.19.0.254/24", "fd00:19::254/64"),
            (&pod, &names[3], "198.19.0.1/24", "fd00:19::1/64"),
        ];
        for (ns, dev, v4, v6) in ends {
            ns.ip(&["addr", "add", v4, "dev", dev]);
            ns.ip(&["addr", "add", v6, "dev", dev, "nodad"]);
            // Full UDP checksums from local sockets, as a NIC would deliver
            // them (the XDP relay updates checksums incrementally); GRO on
            // and threaded NAPI, so receive work runs in a pinnable thread.
            ns.sh(&format!(
                "ethtool -K {dev} tx off gro on >/dev/null && ip link set {dev} up && \
                 echo 1 > /sys/class/net/{dev}/threaded"
            ));
        }
        let parking = unique_name("bg");
        let (parking_if, _) = veth_pair(&client, &parking, &client, &unique_name("bgp"));
        client.ip(&["link", "set", &parking, "up"]);
        for extra in EXTRA_CLIENTS_V4 {
            client.ip(&["addr", "add", &format!("{extra}/24"), "dev", &names[0]]);
        }
        client.ip(&["route", "add", "default", "via", "198.18.0.254"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd00:18::254"]);
        pod.ip(&["route", "add", "default", "via", "198.19.0.254"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:19::254"]);
        relay.enable_forwarding();
        let cores = cpu::online_cores()?;
        ensure!(
            cores.len() >= 2,
            "the benchmark needs two cores (one for the relay, one for the load)"
        );
        let topology = Topology {
            client_if,
            relay_client_if,
            relay_pod_if,
            pod_if,
            parking_if,
            client,
            relay,
            pod,
            relay_core: cores[cores.len() - 1],
            load_core: cores[0],
            cores,
        };
        topology.add_neighbours();
        topology.pin_napi_threads()?;
        Ok(topology)
    }

    /// Permanent neighbour entries everywhere: the relay's FIB lookups
    /// succeed from the first frame and no ARP or ND runs during a
    /// measurement.
    fn add_neighbours(&self) {
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
            ]);
        }
    }

    /// Pins each veth's NAPI thread: the relay namespace's to the relay
    /// core, the others to the load core. Attaching or detaching XDP can
    /// recreate the threads, so this runs before every measurement. A pod
    /// end as a node has it has no NAPI at all (see
    /// [`Topology::pod_end_as_on_a_node`]).
    /// Every drop and error counter of the four link ends (what `ethtool
    /// -S` shows), by `interface:counter`, to find where frames went.
    pub fn drop_counters(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut counters = std::collections::BTreeMap::new();
        for (ns, dev, end) in [
            (&self.client, &self.client_if, "client"),
            (&self.relay, &self.relay_client_if, "relay-client"),
            (&self.relay, &self.relay_pod_if, "relay-pod"),
            (&self.pod, &self.pod_if, "pod"),
        ] {
            let statistics = ns.run(|| turnx::xdp::driver_stats::statistics(&dev.name))?;
            for (name, value) in statistics {
                let lower = name.to_ascii_lowercase();
                // Receive-side XDP drops are XDP_DROP verdicts (the sinks'),
                // not losses.
                let verdict = lower.starts_with("rx_queue") && lower.ends_with("xdp_drops");
                if !verdict
                    && (lower.contains("drop") || lower.contains("err") || lower.contains("full"))
                {
                    counters.insert(format!("{end}:{name}"), value);
                }
            }
        }
        // Datagrams a socket had no room for: the userspace servers' loss.
        for (ns, name) in [
            (&self.client, "client"),
            (&self.relay, "relay"),
            (&self.pod, "pod"),
        ] {
            let snmp = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?;
            for (counter, value) in udp_errors(&snmp) {
                counters.insert(format!("{name}:Udp {counter}"), value);
            }
        }
        Ok(counters)
    }

    pub fn pin_napi_threads(&self) -> Result<()> {
        for (dev, core, required) in [
            (&self.relay_client_if, self.relay_core, true),
            (&self.relay_pod_if, self.relay_core, true),
            (&self.client_if, self.load_core, true),
            (&self.pod_if, self.load_core, false),
        ] {
            let threads = cpu::napi_threads(&dev.name)?;
            ensure!(
                !required || !threads.is_empty(),
                "no threaded NAPI kthread found for {}",
                dev.name
            );
            for pid in threads {
                cpu::pin_task(pid, core)?;
            }
        }
        Ok(())
    }

    /// Gives the pod's veth the offloads a pod's has (transmit checksum
    /// offload on, GRO off; with no XDP program either, which is the
    /// caller's, it has no NAPI), and steers its receive work (RPS) to the
    /// load core, where its NAPI thread ran.
    pub fn pod_end_as_on_a_node(&self) {
        let dev = &self.pod_if.name;
        self.pod.sh(&format!(
            "ethtool -K {dev} tx on gro off >/dev/null && \
             printf %x {} > /sys/class/net/{dev}/queues/rx-0/rps_cpus",
            1u64 << self.load_core
        ));
    }

    /// The cores of a relay on `n` of them: the relay core and the ones
    /// before it, down to the load core when the machine has no more.
    /// Fewer than `n` when the machine has fewer than `n`.
    pub fn relay_cores(&self, n: usize) -> Vec<usize> {
        self.cores.iter().rev().take(n).rev().copied().collect()
    }

    /// Undoes [`Self::pod_end_as_on_a_node`].
    pub fn pod_end_engineered(&self) {
        let dev = &self.pod_if.name;
        self.pod.sh(&format!(
            "echo 0 > /sys/class/net/{dev}/queues/rx-0/rps_cpus && \
             ethtool -K {dev} tx off gro on >/dev/null && \
             echo 1 > /sys/class/net/{dev}/threaded"
        ));
    }
}

/// The UDP error counters of a /proc/net/snmp text (its two `Udp:` lines:
/// names, then values).
fn udp_errors(snmp: &str) -> Vec<(String, u64)> {
    let mut lines = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Vec::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(name, _)| name.contains("Errors"))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}
