//! A Kubernetes node as the relay meets it, in five namespaces:
//!
//! ```text
//!  client ─┐                       ┌─ other node: 198.18.0.2
//!          ├── fabric (a bridge) ──┤    pods behind it, routed: 198.19.2.1
//!  node ───┘   198.18.0.0/24       │    pods behind it, tunnelled: 198.19.3.1
//!   │ uplink: 198.18.0.254         │
//!   ├─ VXLAN to the other node ────┘ (over the uplink)
//!   └─ lxc… veth ── pod: 198.19.0.1
//! ```
//!
//! Every device is as a node has it: default offloads (so local senders
//! leave partial checksums), no XDP program on any far end, the pod's veth
//! named as Cilium names them. The relay runs in `node` with the uplink's
//! address as its relayed address, as a hostNetwork DaemonSet does. IPv6
//! follows the same plan in fd00::/8.

use crate::{Netns, netns::veth_pair, unique_name};

/// The client's address on the fabric.
pub const CLIENT_V4: &str = "198.18.0.1";
/// The client's IPv6 address.
pub const CLIENT_V6: &str = "fd00:18::1";
/// The node's uplink address: the TURN server and relayed address.
pub const NODE_V4: &str = "198.18.0.254";
/// The node's IPv6 uplink address.
pub const NODE_V6: &str = "fd00:18::254";
/// The other node's uplink address.
pub const OTHER_NODE_V4: &str = "198.18.0.2";
/// The other node's IPv6 uplink address.
pub const OTHER_NODE_V6: &str = "fd00:18::2";

/// Where a peer sits, seen from the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A pod on this node, behind its veth.
    SameNodePod,
    /// A pod on another node, reached by routing over the uplink.
    OtherNode,
    /// A pod on another node, reached through the VXLAN tunnel.
    Tunnel,
}

impl Place {
    /// Every place.
    pub const ALL: [Place; 3] = [Place::SameNodePod, Place::OtherNode, Place::Tunnel];

    /// The peer's IPv4 address there.
    pub fn v4(self) -> &'static str {
        match self {
            Place::SameNodePod => "198.19.0.1",
            Place::OtherNode => "198.19.2.1",
            Place::Tunnel => "198.19.3.1",
        }
    }

    /// The peer's IPv6 address there.
    pub fn v6(self) -> &'static str {
        match self {
            Place::SameNodePod => "fd00:19::1",
            Place::OtherNode => "fd00:1b::1",
            Place::Tunnel => "fd00:1a::1",
        }
    }
}

/// The node, its neighbours and its pod.
pub struct NodeTopology {
    /// The network between nodes and clients: a bridge.
    pub fabric: Netns,
    pub client: Netns,
    /// Where the relay runs.
    pub node: Netns,
    pub other_node: Netns,
    /// The pod on this node, once [`Self::add_pod`] made it.
    pub pod: Option<Netns>,
    /// The node's uplink.
    pub uplink: String,
    /// The fabric's end of the node's uplink (where a NIC's wire would be).
    pub uplink_far_end: String,
    /// The node's VXLAN device to the other node.
    pub tunnel: String,
    /// The host side of the pod's veth (`lxc…`), once there.
    pub pod_if: String,
}

impl NodeTopology {
    /// Builds everything but the pod.
    pub fn new() -> NodeTopology {
        let fabric = Netns::new("txf");
        let client = Netns::new("txc");
        let node = Netns::new("txn");
        let other_node = Netns::new("txo");
        fabric.ip(&["link", "add", "fabric", "type", "bridge"]);
        fabric.ip(&["link", "set", "fabric", "up"]);
        let mut ends = Vec::new();
        for (ns, v4, v6) in [
            (&client, CLIENT_V4, CLIENT_V6),
            (&node, NODE_V4, NODE_V6),
            (&other_node, OTHER_NODE_V4, OTHER_NODE_V6),
        ] {
            let (near, far) = (unique_name("up"), unique_name("fp"));
            veth_pair(ns, &near, &fabric, &far);
            fabric.ip(&["link", "set", &far, "master", "fabric", "up"]);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", &near]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", &near, "nodad"]);
            ns.ip(&["link", "set", &near, "up"]);
            ends.push((near, far));
        }
        // The client is the internet: its frames arrive with full
        // checksums, as from a NIC.
        client.tx_checksum_off(&ends[0].0);
        node.enable_forwarding();
        other_node.enable_forwarding();

        // Pods on the other node that routing reaches (the addresses sit on
        // its loopback: no dummy devices on every kernel).
        other_node.ip(&["addr", "add", "198.19.2.1/32", "dev", "lo"]);
        other_node.ip(&["addr", "add", "fd00:1b::1/128", "dev", "lo", "nodad"]);
        node.ip(&["route", "add", "198.19.2.0/24", "via", OTHER_NODE_V4]);
        node.ip(&["-6", "route", "add", "fd00:1b::/64", "via", OTHER_NODE_V6]);

        // And pods behind a VXLAN tunnel between the two, over the uplinks.
        let tunnel = unique_name("vx");
        for (ns, local, remote, uplink, v4, v6) in [
            (
                &node,
                NODE_V4,
                OTHER_NODE_V4,
                &ends[1].0,
                "198.19.3.254/24",
                "fd00:1a::254/64",
            ),
            (
                &other_node,
                OTHER_NODE_V4,
                NODE_V4,
                &ends[2].0,
                "198.19.3.1/24",
                "fd00:1a::1/64",
            ),
        ] {
            ns.ip(&[
                "link", "add", &tunnel, "type", "vxlan", "id", "42", "local", local, "remote",
                remote, "dstport", "4789", "dev", uplink,
            ]);
            ns.ip(&["addr", "add", v4, "dev", &tunnel]);
            ns.ip(&["addr", "add", v6, "dev", &tunnel, "nodad"]);
            ns.ip(&["link", "set", &tunnel, "up"]);
        }
        // The tunnelled pods answer the node through the tunnel too, not
        // straight over the fabric both share.
        other_node.ip(&["rule", "add", "from", "198.19.3.1", "table", "100"]);
        other_node.ip(&[
            "route",
            "add",
            NODE_V4,
            "via",
            "198.19.3.254",
            "dev",
            &tunnel,
            "table",
            "100",
        ]);
        other_node.ip(&["-6", "rule", "add", "from", "fd00:1a::1", "table", "100"]);
        other_node.ip(&[
            "-6",
            "route",
            "add",
            NODE_V6,
            "via",
            "fd00:1a::254",
            "dev",
            &tunnel,
            "table",
            "100",
        ]);
        let [_, (uplink, uplink_far_end), _] = <[(String, String); 3]>::try_from(ends)
            .unwrap_or_else(|_| unreachable!("three uplinks"));
        NodeTopology {
            fabric,
            client,
            node,
            other_node,
            pod: None,
            uplink,
            uplink_far_end,
            tunnel,
            pod_if: String::new(),
        }
    }

    /// Starts the pod on this node: a namespace behind a veth whose host
    /// side is named `lxc…`, with default offloads and no XDP program.
    pub fn add_pod(&mut self) -> &Netns {
        let pod = Netns::new("txp");
        let pod_if = unique_name("lxc");
        veth_pair(&self.node, &pod_if, &pod, "eth0");
        self.node
            .ip(&["addr", "add", "198.19.0.254/24", "dev", &pod_if]);
        self.node
            .ip(&["addr", "add", "fd00:19::254/64", "dev", &pod_if, "nodad"]);
        self.node.ip(&["link", "set", &pod_if, "up"]);
        let (v4, v6) = (Place::SameNodePod.v4(), Place::SameNodePod.v6());
        pod.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        pod.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", "198.19.0.254"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd00:19::254"]);
        self.pod_if = pod_if;
        self.pod.insert(pod)
    }

    /// The namespace where a peer at `place` runs.
    pub fn peer_namespace(&self, place: Place) -> &Netns {
        match place {
            Place::SameNodePod => self.pod.as_ref().expect("add_pod first"),
            Place::OtherNode | Place::Tunnel => &self.other_node,
        }
    }
}

impl Default for NodeTopology {
    fn default() -> Self {
        NodeTopology::new()
    }
}
