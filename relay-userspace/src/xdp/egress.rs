//! Which interfaces deliver what the XDP program sends them, as the kernel
//! reports it, for the program's `EGRESS` map.
//!
//! XDP_TX and redirects succeed in the program even when the device then
//! drops the frame, so the program asks this map first and leaves the frame
//! to the stack (and the userspace relay) unless the interface is known to
//! deliver:
//! - a veth delivers only when its peer runs a native XDP program, which
//!   gives the peer the NAPI instance that receives such frames. A peer with
//!   only GRO on is also reported as able (`ndo_xdp_xmit` in its
//!   xdp-features), yet drops them here, so it does not count;
//! - any other device delivers redirected frames when its xdp-features
//!   (netdev netlink family) include `ndo_xdp_xmit`, and XDP_TX when they
//!   include basic XDP. Tunnels and devices without XDP support have
//!   neither.
//!
//! And for the tc engine: a veth whose peer is in another namespace (a
//! pod's) takes frames straight into the peer's ingress.

use std::{collections::BTreeMap, io};

use relay_common::{EGRESS_PEER, EGRESS_REDIRECT, EGRESS_TX};

use super::netlink::{
    AttachMode, IFINFOMSG_LEN, attribute, attributes, get_link, ifinfomsg, message,
    parse_xdp_attachments, transact,
};

/// `NETDEV_XDP_ACT_*` bits of the netdev family's xdp-features.
const XDP_ACT_BASIC: u64 = 1;
const XDP_ACT_NDO_XMIT: u64 = 4;

// Generic netlink (linux/genetlink.h) and the netdev family
// (linux/netdev.h).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

// rtnetlink link attributes (linux/if_link.h).
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;

/// What the kernel says about one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Its xdp-features (`NETDEV_XDP_ACT_*`), 0 when not reported.
    pub xdp_features: u64,
    /// For a veth: whether its peer runs a native XDP program.
    pub veth_peer_runs_xdp: Option<bool>,
    /// For a veth: whether its peer is in another network namespace.
    pub veth_peer_elsewhere: bool,
}

impl Interface {
    /// The `EGRESS` map bits of this interface.
    pub fn egress_bits(&self) -> u8 {
        let peer = if self.veth_peer_elsewhere {
            EGRESS_PEER
        } else {
            0
        };
        peer | match self.veth_peer_runs_xdp {
            Some(peer_runs_xdp) => {
                let delivers = peer_runs_xdp && self.xdp_features & XDP_ACT_NDO_XMIT != 0;
                if delivers {
                    EGRESS_TX | EGRESS_REDIRECT
                } else {
                    0
                }
            }
            None => {
                let mut bits = 0;
                if self.xdp_features & XDP_ACT_BASIC != 0 {
                    bits |= EGRESS_TX;
                }
                if self.xdp_features & XDP_ACT_NDO_XMIT != 0 {
                    bits |= EGRESS_REDIRECT;
                }
                bits
            }
        }
    }
}

/// Every interface of the current network namespace, by index.
pub fn interfaces() -> io::Result<BTreeMap<u32, Interface>> {
    let mut found: BTreeMap<u32, Interface> = BTreeMap::new();
    for (ifindex, features) in xdp_features()? {
        found.entry(ifindex).or_default().xdp_features = features;
    }
    for link in links()? {
        if link.kind.as_deref() == Some("veth") {
            let runs = match link.peer {
                Some(peer) => peer_runs_native_xdp(peer, link.peer_netnsid).unwrap_or(false),
                None => false,
            };
            let interface = found.entry(link.ifindex).or_default();
            interface.veth_peer_runs_xdp = Some(runs);
            interface.veth_peer_elsewhere = link.peer_netnsid.is_some();
        }
    }
    Ok(found)
}

/// The netdev family's xdp-features of every interface: (index, bits).
fn xdp_features() -> io::Result<Vec<(u32, u64)>> {
    let family = netdev_family()?;
    let request = message(
        family,
        libc::NLM_F_DUMP as u16,
        &[NETDEV_CMD_DEV_GET, 1, 0, 0],
        &[],
    );
    let replies = transact(libc::NETLINK_GENERIC, &request, family)?;
    Ok(replies
        .iter()
        .filter_map(|reply| parse_dev(reply.get(4..)?))
        .collect())
}

/// (index, xdp-features) from a netdev DEV_GET reply's attributes.
fn parse_dev(attrs: &[u8]) -> Option<(u32, u64)> {
    let (mut ifindex, mut features) = (None, 0);
    for (kind, value) in attributes(attrs) {
        match kind {
            NETDEV_A_DEV_IFINDEX => ifindex = Some(u32::from_ne_bytes(value.try_into().ok()?)),
            NETDEV_A_DEV_XDP_FEATURES => features = u64::from_ne_bytes(value.try_into().ok()?),
            _ => {}
        }
    }
    Some((ifindex?, features))
}

/// The id of the netdev generic netlink family (kernel 6.3 and newer).
fn netdev_family() -> io::Result<u16> {
    let request = message(
        GENL_ID_CTRL,
        0,
        &[CTRL_CMD_GETFAMILY, 1, 0, 0],
        &attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
    );
    let replies = transact(libc::NETLINK_GENERIC, &request, GENL_ID_CTRL)?;
    replies
        .first()
        .and_then(|reply| reply.get(4..))
        .and_then(|attrs| {
            attributes(attrs)
                .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
                .and_then(|(_, value)| Some(u16::from_ne_bytes(value.try_into().ok()?)))
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no netdev netlink family"))
}

/// One interface from an rtnetlink link dump.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    ifindex: u32,
    kind: Option<String>,
    /// The peer's index, for a veth.
    peer: Option<u32>,
    /// The peer's namespace, as an id relative to ours, when it is in
    /// another one.
    peer_netnsid: Option<i32>,
}

fn links() -> io::Result<Vec<Link>> {
    let request = message(
        libc::RTM_GETLINK,
        libc::NLM_F_DUMP as u16,
        &ifinfomsg(0),
        &[],
    );
    let replies = transact(libc::NETLINK_ROUTE, &request, libc::RTM_NEWLINK)?;
    Ok(replies
        .iter()
        .filter_map(|reply| parse_link(reply))
        .collect())
}

fn parse_link(reply: &[u8]) -> Option<Link> {
    let ifindex = u32::from_ne_bytes(reply.get(4..8)?.try_into().ok()?);
    let mut link = Link {
        ifindex,
        kind: None,
        peer: None,
        peer_netnsid: None,
    };
    for (kind, value) in attributes(reply.get(IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_LINK => link.peer = value.try_into().ok().map(u32::from_ne_bytes),
            IFLA_LINK_NETNSID => link.peer_netnsid = value.try_into().ok().map(i32::from_ne_bytes),
            IFLA_LINKINFO => {
                link.kind = attributes(value)
                    .find(|(kind, _)| *kind == IFLA_INFO_KIND)
                    .map(|(_, name)| {
                        String::from_utf8_lossy(name)
                            .trim_end_matches('\0')
                            .to_owned()
                    });
            }
            _ => {}
        }
    }
    Some(link)
}

/// Whether the interface `ifindex` of the namespace `netnsid` (ours when
/// `None`) runs an XDP program in native mode.
fn peer_runs_native_xdp(ifindex: u32, netnsid: Option<i32>) -> io::Result<bool> {
    Ok(parse_xdp_attachments(&get_link(ifindex, netnsid)?)
        .iter()
        .any(|attached| attached.mode == AttachMode::Native))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_bits_follow_the_rules() {
        let veth = |features, peer_runs_xdp| Interface {
            xdp_features: features,
            veth_peer_runs_xdp: Some(peer_runs_xdp),
            veth_peer_elsewhere: false,
        };
        let both = EGRESS_TX | EGRESS_REDIRECT;
        // A veth whose peer runs XDP (the kernel then reports ndo_xdp_xmit).
        assert_eq!(veth(0x67, true).egress_bits(), both);
        // Peer with GRO only: reported able, but drops; and a plain peer.
        assert_eq!(veth(0x67, false).egress_bits(), 0);
        assert_eq!(veth(0x23, false).egress_bits(), 0);
        let device = |features| Interface {
            xdp_features: features,
            veth_peer_runs_xdp: None,
            veth_peer_elsewhere: false,
        };
        assert_eq!(device(XDP_ACT_BASIC | XDP_ACT_NDO_XMIT).egress_bits(), both);
        assert_eq!(device(0x2b).egress_bits(), EGRESS_TX, "no ndo_xdp_xmit");
        assert_eq!(device(0).egress_bits(), 0, "a tunnel");
        // A pod's veth: its peer in the pod's namespace, no XDP there.
        let pod = Interface {
            veth_peer_elsewhere: true,
            ..veth(0x23, false)
        };
        assert_eq!(pod.egress_bits(), EGRESS_PEER);
    }

    #[test]
    fn link_dump_replies_are_read() {
        let mut reply = ifinfomsg(7).to_vec();
        reply.extend(attribute(3, b"vr1\0"));
        reply.extend(attribute(IFLA_LINK, &9u32.to_ne_bytes()));
        reply.extend(attribute(IFLA_LINK_NETNSID, &2i32.to_ne_bytes()));
        reply.extend(attribute(
            IFLA_LINKINFO | 0x8000,
            &attribute(IFLA_INFO_KIND, b"veth\0"),
        ));
        assert_eq!(
            parse_link(&reply),
            Some(Link {
                ifindex: 7,
                kind: Some("veth".into()),
                peer: Some(9),
                peer_netnsid: Some(2),
            })
        );
        let mut dev = attribute(NETDEV_A_DEV_IFINDEX, &4u32.to_ne_bytes());
        dev.extend(attribute(NETDEV_A_DEV_XDP_FEATURES, &0x2bu64.to_ne_bytes()));
        assert_eq!(parse_dev(&dev), Some((4, 0x2b)));
        assert_eq!(parse_dev(&[1, 2, 3]), None);
    }
}
