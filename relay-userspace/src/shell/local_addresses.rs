//! The node's own addresses, which are never peers: read from the kernel at
//! start and again whenever rtnetlink announces an address change, so that
//! an address added later (a new CNI bridge, a secondary IP) is refused
//! from the moment it exists.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use super::Shared;

/// rtnetlink multicast groups of IPv4 and IPv6 address changes
/// (`RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR` in linux/rtnetlink.h).
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// Every address of every interface in the current network namespace.
pub fn read() -> io::Result<Vec<IpAddr>> {
    Ok(crate::interfaces::interface_addresses()?
        .into_iter()
        .map(|(_, address)| address)
        .collect())
}

/// A netlink socket that becomes readable when an address is added or
/// removed.
fn subscribe() -> io::Result<OwnedFd> {
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
    address.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
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

/// Empties the socket; what the messages say does not matter, only that
/// something changed.
fn drain(fd: &OwnedFd) -> io::Result<()> {
    let mut buffer = [0u8; 8192];
    loop {
        // SAFETY: recv into a buffer we own, of its length.
        let received = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if received < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                // The kernel dropped notifications: re-reading covers them.
                _ if err.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
                _ => Err(err),
            };
        }
    }
}

/// Hands the node's addresses to the core now and after every change.
pub(super) async fn follow(shared: Arc<Shared>) {
    let update = |shared: &Arc<Shared>| match read() {
        Ok(addresses) => shared.run(|core| core.set_local_addresses(addresses)),
        Err(err) => tracing::warn!("cannot read the node's addresses: {err}"),
    };
    let registered = subscribe().and_then(|fd| {
        // SAFETY: the OwnedFd keeps its descriptor open, unchanged, for as
        // long as the AsyncFd that owns it lives.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    });
    let socket = match registered {
        Ok(socket) => socket,
        Err(err) => {
            // Without notifications, poll: the policy must stay current.
            tracing::warn!("cannot follow address changes over rtnetlink ({err}); polling");
            loop {
                update(&shared);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    // Whatever changed between the caller's first read and the subscription.
    update(&shared);
    loop {
        let mut ready = match socket.readable().await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::warn!("waiting for address changes: {err}");
                return;
            }
        };
        ready.clear_ready();
        if let Err(err) = drain(socket.get_ref()) {
            tracing::warn!("reading address changes: {err}");
        }
        update(&shared);
    }
}
