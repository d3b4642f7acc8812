//! Asks the kernel, over rtnetlink, which XDP program an interface runs.
//!
//! aya attaches and detaches, but does not say who else is attached; turnxd
//! needs that to name the owner of an interface it must not take over, and
//! turnxctl to find our program's maps.

use std::{io, mem::size_of};

/// The XDP program attached to an interface, in one mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachedXdp {
    /// Kernel program id.
    pub program_id: u32,
    /// Mode it runs in.
    pub mode: AttachMode,
}

/// The XDP attach modes the kernel reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native).
    Native,
    /// In the generic network stack (skb).
    Generic,
    /// Offloaded to the NIC.
    Hardware,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Hardware => "hardware",
        })
    }
}

// From include/uapi/linux/if_link.h; not all of them are in the libc crate.
const IFLA_XDP: u16 = 43;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
/// Attribute type bits that are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3FFF;
/// IFLA_TARGET_NETNSID: ask about a link in another network namespace.
const IFLA_TARGET_NETNSID: u16 = 46;

/// Returns every XDP program attached to the interface with index `ifindex`
/// in the caller's network namespace (at most one per mode).
pub fn attached_programs(ifindex: u32) -> io::Result<Vec<AttachedXdp>> {
    let reply = get_link(ifindex, None)?;
    Ok(parse_xdp_attachments(&reply))
}

/// Sends RTM_GETLINK for one interface and returns the attributes of the
/// RTM_NEWLINK answer (after the ifinfomsg header). `netnsid` names another
/// network namespace, by the id ours has for it (a veth peer's
/// IFLA_LINK_NETNSID); `None` is ours.
pub(crate) fn get_link(ifindex: u32, netnsid: Option<i32>) -> io::Result<Vec<u8>> {
    let attrs = netnsid
        .map(|id| attribute(IFLA_TARGET_NETNSID, &id.to_ne_bytes()))
        .unwrap_or_default();
    let request = message(libc::RTM_GETLINK, 0, &ifinfomsg(ifindex), &attrs);
    let reply = transact(libc::NETLINK_ROUTE, &request, libc::RTM_NEWLINK)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no RTM_NEWLINK in the kernel's reply to RTM_GETLINK",
            )
        })?;
    Ok(reply.get(IFINFOMSG_LEN..).unwrap_or_default().to_vec())
}

/// Length of `ifinfomsg`: family, pad, type, index, flags, change.
pub(crate) const IFINFOMSG_LEN: usize = 16;

/// An `ifinfomsg` for the interface `ifindex` (0: every interface).
pub(crate) fn ifinfomsg(ifindex: u32) -> [u8; IFINFOMSG_LEN] {
    let mut header = [0u8; IFINFOMSG_LEN];
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    header
}

/// Reads the IFLA_XDP_*_PROG_ID attributes from link attributes.
pub(crate) fn parse_xdp_attachments(link_attrs: &[u8]) -> Vec<AttachedXdp> {
    let mut found = Vec::new();
    for (kind, value) in attributes(link_attrs) {
        if kind != IFLA_XDP {
            continue;
        }
        for (kind, value) in attributes(value) {
            let mode = match kind {
                IFLA_XDP_DRV_PROG_ID => AttachMode::Native,
                IFLA_XDP_SKB_PROG_ID => AttachMode::Generic,
                IFLA_XDP_HW_PROG_ID => AttachMode::Hardware,
                _ => continue,
            };
            if let Ok(id) = <[u8; 4]>::try_from(value) {
                found.push(AttachedXdp {
                    program_id: u32::from_ne_bytes(id),
                    mode,
                });
            }
        }
    }
    found
}

/// A netlink message: header, the family's fixed header, attributes.
pub(crate) fn message(kind: u16, flags: u16, fixed: &[u8], attributes: &[u8]) -> Vec<u8> {
    let len = size_of::<libc::nlmsghdr>() + fixed.len() + attributes.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    out.extend_from_slice(fixed);
    out.extend_from_slice(attributes);
    out
}

/// One netlink attribute, padded.
pub(crate) fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(align4(4 + value.len()));
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
    out
}

/// Sends `request` on a new netlink socket of `protocol` and returns the
/// bodies (after the netlink header) of the replies of type `reply`: all of
/// them up to NLMSG_DONE for a dump, else the first.
pub(crate) fn transact(protocol: i32, request: &[u8], reply: u16) -> io::Result<Vec<Vec<u8>>> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // The kernel answers at once; never wait forever on it.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid fd and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: sending an initialised buffer of the given length.
    if unsafe { libc::send(raw, request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let dump = u16::from_ne_bytes([request[6], request[7]]) & libc::NLM_F_DUMP as u16 != 0;
    let mut found = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, of the given length.
        let received = unsafe { libc::recv(raw, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse_replies(&buffer[..received as usize], reply, dump, &mut found)? {
            return Ok(found);
        }
        if !dump && !found.is_empty() {
            return Ok(found);
        }
    }
}

/// Collects the bodies of the messages of type `reply` in one received
/// buffer into `found`; true when the transaction is over (NLMSG_DONE, or
/// the answer to a request that is not a dump). An error message with an
/// errno becomes that error.
fn parse_replies(
    buffer: &[u8],
    reply: u16,
    dump: bool,
    found: &mut Vec<Vec<u8>>,
) -> io::Result<bool> {
    let hdr_len = size_of::<libc::nlmsghdr>();
    let mut rest = buffer;
    while rest.len() >= hdr_len {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
        if len < hdr_len || len > rest.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated netlink message",
            ));
        }
        let body = &rest[hdr_len..len];
        match kind {
            k if k == libc::NLMSG_DONE as u16 => return Ok(true),
            k if k == libc::NLMSG_ERROR as u16 && body.len() >= 4 => {
                let errno = -i32::from_ne_bytes(body[0..4].try_into().unwrap());
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            k if k == reply => {
                found.push(body.to_vec());
                if !dump {
                    return Ok(true);
                }
            }
            _ => {}
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(false)
}

/// Iterates over netlink attributes (type, value), stopping at the first
/// malformed one.
pub(crate) fn attributes(mut buffer: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buffer.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buffer[0], buffer[1]]) as usize;
        let kind = u16::from_ne_bytes([buffer[2], buffer[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buffer.len() {
            return None;
        }
        let value = &buffer[4..len];
        buffer = &buffer[align4(len).min(buffer.len())..];
        Some((kind, value))
    })
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn finds_program_ids_per_mode() {
        let mut xdp = attr(2, &[1]); // IFLA_XDP_ATTACHED: ignored
        xdp.extend(attr(IFLA_XDP_DRV_PROG_ID, &7u32.to_ne_bytes()));
        xdp.extend(attr(IFLA_XDP_SKB_PROG_ID, &9u32.to_ne_bytes()));
        let mut link = attr(3, b"eth0\0"); // IFLA_IFNAME
        link.extend(attr(IFLA_XDP | 0x8000, &xdp)); // NLA_F_NESTED set
        assert_eq!(
            parse_xdp_attachments(&link),
            vec![
                AttachedXdp {
                    program_id: 7,
                    mode: AttachMode::Native
                },
                AttachedXdp {
                    program_id: 9,
                    mode: AttachMode::Generic
                },
            ]
        );
    }

    #[test]
    fn malformed_attributes_end_the_walk_without_panicking() {
        let mut link = attr(IFLA_XDP, &attr(IFLA_XDP_DRV_PROG_ID, &[1, 0, 0, 0]));
        link.extend_from_slice(&[200, 0, 1, 0]); // claims 200 bytes
        assert_eq!(parse_xdp_attachments(&link).len(), 1);
        assert!(parse_xdp_attachments(&[0xFF; 3]).is_empty());
        assert!(parse_xdp_attachments(&[2, 0, 43, 0]).is_empty());
    }

    #[test]
    fn netlink_error_reply_becomes_io_error() {
        let mut reply = Vec::new();
        let len = (size_of::<libc::nlmsghdr>() + 4) as u32;
        reply.extend_from_slice(&len.to_ne_bytes());
        reply.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        reply.extend_from_slice(&[0; 10]);
        reply.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let err = parse_replies(&reply, libc::RTM_NEWLINK, false, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }
}
