//! Small topologies of the tests: two namespaces on a veth ([`Link`]), and
//! three in a line as in a cluster ([`Topology`]: client ↔ relay ↔ pod).
//! Veths keep their default offloads (partial checksums from local
//! senders, no XDP program), as a node's are; tests that engineer them for
//! XDP say so. Addresses come from 198.18.0.0/15 and fd00::/8.

use crate::{
    netns::{Netns, veth_pair},
    unique_name,
};

/// Two namespaces joined by a veth pair, with checksum offload off on both
/// ends so datagrams carry full checksums as they would from a NIC.
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
        let (client_if, relay_if) = (unique_name("vc"), unique_name("vr"));
        veth_pair(&client, &client_if, &relay, &relay_if);
        // Namespaces are private: the same addresses in every run cannot
        // collide.
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

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

/// Three namespaces in a row, as in a cluster: client ↔ relay ↔ pod. The
/// relay reaches the pod network only through its own relayed sockets
/// unless a test turns IP forwarding on.
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
        let names = [
            (unique_name("vc"), unique_name("vr")),
            (unique_name("vs"), unique_name("vp")),
        ];
        let links = [
            (&client, &relay, "198.18.0", "fd00:18", &names[0]),
            (&relay, &pod, "198.19.0", "fd00:19", &names[1]),
        ];
        for (left, right, v4, v6, (left_if, right_if)) in links {
            veth_pair(left, left_if, right, right_if);
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

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}
