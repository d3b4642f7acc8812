//! Which interfaces turnxd attaches to when the configuration names none:
//! those that carry a default route, i.e. the node's uplinks, where TURN
//! clients' packets arrive.

use std::{collections::BTreeSet, net::IpAddr};

use thiserror::Error;

/// `RTF_UP` from `include/uapi/linux/route.h`.
const RTF_UP: u32 = 0x0001;
/// `RTF_REJECT`: unreachable routes, which the kernel lists on `lo`.
const RTF_REJECT: u32 = 0x0200;

/// Why the default-route interfaces could not be found.
#[derive(Debug, Error)]
pub enum InterfaceError {
    /// /proc/net/route could not be read.
    #[error("cannot read the IPv4 routing table from /proc/net/route: {0}")]
    Ipv4Routes(#[from] procfs::ProcError),
    /// /proc/net/ipv6_route could not be read.
    #[error("cannot read the IPv6 routing table from /proc/net/ipv6_route: {0}")]
    Ipv6Routes(std::io::Error),
    /// No default route at all.
    #[error(
        "no interface carries a default route; name the interfaces to attach to \
         with --interface or [xdp] interfaces"
    )]
    NoDefaultRoute,
}

/// Interfaces with an IPv4 or IPv6 default route, sorted, without `lo`.
pub fn default_route_interfaces() -> Result<Vec<String>, InterfaceError> {
    let mut names = BTreeSet::new();
    for route in procfs::net::route()? {
        let is_default = route.destination.is_unspecified() && route.mask.is_unspecified();
        if is_default && u32::from(route.flags) & RTF_UP != 0 {
            names.insert(route.iface);
        }
    }
    // A host without IPv6 has no such file; that only means no IPv6 routes.
    match std::fs::read_to_string("/proc/net/ipv6_route") {
        Ok(table) => names.extend(ipv6_default_route_interfaces(&table)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(InterfaceError::Ipv6Routes(err)),
    }
    names.remove("lo");
    if names.is_empty() {
        return Err(InterfaceError::NoDefaultRoute);
    }
    Ok(names.into_iter().collect())
}

/// Parses `/proc/net/ipv6_route`: destination, prefix length, source,
/// source prefix length, next hop, metric, refcount, use, flags, interface.
fn ipv6_default_route_interfaces(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [destination, prefix_len, .., flags, iface] = fields.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let is_default = destination.bytes().all(|b| b == b'0') && *prefix_len == "00";
            (fields.len() == 10 && is_default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0)
                .then(|| iface.to_string())
        })
        .collect()
}

/// The addresses configured on the named interfaces, IPv4 first, skipping
/// link-local IPv6 (not usable as a relayed address).
pub fn addresses_of(names: &[String]) -> std::io::Result<Vec<IpAddr>> {
    let mut found: Vec<IpAddr> = interface_addresses()?
        .into_iter()
        .filter(|(name, _)| names.contains(name))
        .map(|(_, address)| address)
        .filter(|address| !matches!(address, IpAddr::V6(v6) if v6.segments()[0] & 0xFFC0 == 0xFE80))
        .collect();
    found.sort_by_key(|address| address.is_ipv6());
    Ok(found)
}

/// The name of the interface with index `ifindex`, if there is one.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `name`.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Every address configured on every interface of the current network
/// namespace, with its interface's name (getifaddrs).
pub fn interface_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }.to_string_lossy();
        // SAFETY: the family tells which sockaddr type the pointer has.
        let address = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let v6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(v6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        found.push((name.into_owned(), address));
    }
    // SAFETY: freeing the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_default_routes_skip_unreachable_and_specific_routes() {
        let table = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003
";
        assert_eq!(ipv6_default_route_interfaces(table), vec!["eth0"]);
    }
}
