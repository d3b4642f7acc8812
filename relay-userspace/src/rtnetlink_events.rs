//! Notifications of changes the kernel announces over rtnetlink: a socket
//! subscribed to multicast groups, and emptying it. Its users care that
//! something changed, not what: they read the current state again.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

// rtnetlink multicast groups (linux/rtnetlink.h).
/// Links: added, removed, up, down, MTU.
pub const RTNLGRP_LINK: u32 = 1;
/// Neighbours (ARP, NDP).
pub const RTNLGRP_NEIGH: u32 = 3;
/// IPv4 addresses.
pub const RTNLGRP_IPV4_IFADDR: u32 = 5;
/// IPv4 routes.
pub const RTNLGRP_IPV4_ROUTE: u32 = 7;
/// IPv4 policy routing rules.
pub const RTNLGRP_IPV4_RULE: u32 = 8;
/// IPv6 addresses.
pub const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// IPv6 routes.
pub const RTNLGRP_IPV6_ROUTE: u32 = 11;
/// IPv6 policy routing rules.
pub const RTNLGRP_IPV6_RULE: u32 = 19;
/// Nexthop objects (`ip nexthop`): past the 32 groups `nl_groups` holds,
/// so joined with NETLINK_ADD_MEMBERSHIP.
pub const RTNLGRP_NEXTHOP: u32 = 32;

/// A group's bit in `nl_groups` (linux/rtnetlink.h numbers the groups
/// from 1; group n is bit n - 1). Groups past 32 need
/// NETLINK_ADD_MEMBERSHIP instead.
pub const fn group_bit(group: u32) -> u32 {
    1 << (group - 1)
}

/// A nonblocking rtnetlink socket subscribed to the groups in `groups`
/// (see [`group_bit`]), in the caller's network namespace.
pub fn subscribe(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zero is a valid start.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = groups;
    // SAFETY: binding our socket to a valid sockaddr_nl of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Empties the socket without blocking; returns how many notifications it
/// held. Notifications the kernel dropped because the socket's buffer was
/// full (ENOBUFS) count as one: something changed.
pub fn drain(fd: &OwnedFd) -> io::Result<usize> {
    let mut buffer = [0u8; 8192];
    let mut received = 0;
    loop {
        // SAFETY: recv into a buffer we own, of its length.
        let len = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if len < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(received),
                _ if err.raw_os_error() == Some(libc::ENOBUFS) => received += 1,
                _ => return Err(err),
            }
        } else {
            received += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_numbered_from_one() {
        assert_eq!(group_bit(1), 1);
        // RTMGRP_IPV4_IFADDR and RTMGRP_IPV6_IFADDR, the legacy masks.
        assert_eq!(group_bit(RTNLGRP_IPV4_IFADDR), 0x10);
        assert_eq!(group_bit(RTNLGRP_IPV6_IFADDR), 0x100);
    }

    #[test]
    fn an_empty_subscription_drains_to_nothing() {
        let fd = subscribe(group_bit(RTNLGRP_IPV4_IFADDR)).unwrap();
        assert_eq!(drain(&fd).unwrap(), 0);
    }
}
