//! The drivers' own XDP error counters (what `ethtool -S` shows), read with
//! the SIOCETHTOOL ioctl.
//!
//! An XDP_TX or redirect that the device then drops counts as a success in
//! the program; only the driver knows. turnxd watches these counters on the
//! interfaces it attaches to and says when they move, and `turnxctl status`
//! shows them. Drivers name them differently (veth:
//! `rx_queue_0_xdp_tx_errors`, `tx_queue_0_xdp_xmit_errors`; others
//! `rx_xdp_tx_err`, `tx_xdp_err`...), so every statistic whose name mentions
//! XDP together with errors counts, and drops on the way out (virtio's
//! `xdp_tx_drops`). Receive-side `xdp_drop(s)` count XDP_DROP verdicts,
//! which turnx's program gives on purpose to what is over a bandwidth
//! limit (counted as `over_limit`): they are not losses.

use std::io;

/// `SIOCETHTOOL` from linux/sockios.h.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
// Commands and the string set from linux/ethtool.h.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
/// Length of one statistic's name.
const ETH_GSTRING_LEN: usize = 32;
/// More statistics than any driver has; bounds the buffers.
const MAX_STATS: usize = 4096;

/// Whether a driver statistic counts frames XDP sent that were lost.
pub fn is_xdp_error(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let sending = ["tx", "xmit", "redirect"]
        .iter()
        .any(|way| name.contains(way));
    name.contains("xdp") && (name.contains("err") || (name.contains("drop") && sending))
}

/// The XDP error and drop counters of `interface`, by name. Empty when the
/// driver reports no statistics (loopback, some virtual devices).
pub fn xdp_errors(interface: &str) -> io::Result<Vec<(String, u64)>> {
    Ok(statistics(interface)?
        .into_iter()
        .filter(|(name, _)| is_xdp_error(name))
        .collect())
}

/// Every statistic the driver of `interface` reports, by name (what
/// `ethtool -S` shows). Empty when it reports none.
pub fn statistics(interface: &str) -> io::Result<Vec<(String, u64)>> {
    let socket = Socket::new()?;
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one
    // u32 per set asked for: the statistics' count.
    let mut info = [0u8; 20];
    info[0..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    match socket.ethtool(interface, info.as_mut_ptr().cast()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    }
    let answered = u64::from_ne_bytes(info[8..16].try_into().expect("8 bytes"));
    let count = if answered & (1 << ETH_SS_STATS) != 0 {
        (u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")) as usize).min(MAX_STATS)
    } else {
        0
    };
    if count == 0 {
        return Ok(Vec::new());
    }

    // struct ethtool_gstrings: cmd, string_set, len, then the names.
    let mut strings = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    strings[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    socket.ethtool(interface, strings.as_mut_ptr().cast())?;

    // struct ethtool_stats: cmd, n_stats, then the u64 values.
    let mut stats = vec![0u8; 8 + count * 8];
    stats[0..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    stats[4..8].copy_from_slice(&(count as u32).to_ne_bytes());
    socket.ethtool(interface, stats.as_mut_ptr().cast())?;
    let values: Vec<u64> = stats[8..]
        .chunks_exact(8)
        .map(|value| u64::from_ne_bytes(value.try_into().expect("8 bytes")))
        .collect();

    Ok(named_values(&strings[12..], &values).collect())
}

/// Pairs the NUL-padded names with their values.
fn named_values<'a>(
    names: &'a [u8],
    values: &'a [u64],
) -> impl Iterator<Item = (String, u64)> + 'a {
    names
        .chunks_exact(ETH_GSTRING_LEN)
        .zip(values)
        .map(|(name, value)| {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            (String::from_utf8_lossy(&name[..end]).into_owned(), *value)
        })
}

/// A datagram socket, the handle ethtool ioctls go through.
struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn new() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(Socket(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Runs one ethtool command on `interface`; `data` is the command's
    /// struct, which the kernel reads and fills.
    fn ethtool(&self, interface: &str, data: *mut libc::c_char) -> io::Result<()> {
        let name = interface.as_bytes();
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {interface:?} is too long"),
            ));
        }
        // SAFETY: all-zero ifreq is valid; the name fits (checked above)
        // and stays NUL-terminated.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = data;
        // SAFETY: SIOCETHTOOL with an ifreq whose data points at a command
        // struct the caller sized for the kernel's answer.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                SIOCETHTOOL,
                &mut request,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_error_names_of_several_drivers() {
        for name in [
            "rx_queue_0_xdp_tx_errors",
            "tx_queue_3_xdp_xmit_errors",
            "rx_queue_0_xdp_tx_drops",
            "rx_xdp_tx_err",
            "tx_xdp_err",
            "XDP_REDIRECT_ERR",
        ] {
            assert!(is_xdp_error(name), "{name}");
        }
        for name in [
            "rx_queue_0_xdp_packets",
            "rx_queue_0_xdp_tx",
            // XDP_DROP verdicts (veth, virtio, mlx5), as for over_limit.
            "rx_queue_0_xdp_drops",
            "rx_xdp_drop",
            "rx_errors",
            "tx_dropped",
        ] {
            assert!(!is_xdp_error(name), "{name}");
        }
    }

    #[test]
    fn names_and_values_pair_up() {
        let mut names = vec![0u8; 2 * ETH_GSTRING_LEN];
        names[..5].copy_from_slice(b"alpha");
        names[ETH_GSTRING_LEN..ETH_GSTRING_LEN + 4].copy_from_slice(b"beta");
        let pairs: Vec<_> = named_values(&names, &[7, 9]).collect();
        assert_eq!(pairs, [("alpha".to_owned(), 7), ("beta".to_owned(), 9)]);
    }

    #[test]
    fn loopback_reports_no_xdp_counters() {
        // Loopback has no driver statistics; this needs no privilege.
        assert_eq!(xdp_errors("lo").unwrap(), Vec::new());
    }
}
