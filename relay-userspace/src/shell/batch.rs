//! Receiving many UDP datagrams per system call (`recvmmsg`), so a burst
//! costs one wake-up, one syscall and one lock of the core instead of one
//! each per datagram, and sending many the same way (`sendmmsg`). The
//! buffers are per worker thread, not per socket: a relayed socket costs
//! no receive memory while it waits.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
};

use super::gso;

/// Room for one IP_PKTINFO or IPV6_PKTINFO control message, 8-aligned as
/// cmsg headers want.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Reusable buffers for up to `slots` datagrams of up to `slot_size` bytes.
pub struct RecvBatch {
    slot_size: usize,
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_storage>,
    /// Each datagram's control messages: the address it was sent to, on
    /// sockets with IP_PKTINFO or IPV6_RECVPKTINFO.
    controls: Vec<Control>,
    destinations: Vec<Option<IpAddr>>,
    lengths: Vec<usize>,
    /// Whether each datagram was cut short (longer than a slot).
    truncated: Vec<bool>,
    received: usize,
}

// SAFETY: sockaddr_storage is plain data; the struct holds no pointers
// between calls (the mmsghdr array is built inside each call).
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `slots` datagrams of `slot_size` bytes each.
    pub fn new(slots: usize, slot_size: usize) -> Self {
        RecvBatch {
            slot_size,
            buffers: vec![0; slots * slot_size],
            // SAFETY: all-zero sockaddr_storage is valid.
            addresses: vec![unsafe { zeroed() }; slots],
            controls: vec![Control([0; 64]); slots],
            destinations: vec![None; slots],
            lengths: vec![0; slots],
            truncated: vec![false; slots],
            received: 0,
        }
    }

    /// Receives as many queued datagrams as there are slots, without
    /// blocking (`WouldBlock` when none is queued). Returns how many.
    pub fn recv_now(&mut self, fd: i32) -> io::Result<usize> {
        let slots = self.lengths.len();
        let mut iovecs: Vec<libc::iovec> = self
            .buffers
            .chunks_mut(self.slot_size)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = (0..slots)
            .map(|i| {
                // SAFETY: all-zero msghdr is valid; the fields set point into
                // buffers that outlive the call.
                let mut header: libc::mmsghdr = unsafe { zeroed() };
                header.msg_hdr.msg_name =
                    (&mut self.addresses[i] as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut iovecs[i];
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
                header.msg_hdr.msg_controllen = self.controls[i].0.len();
                header
            })
            .collect();
        // SAFETY: `headers` describes `slots` valid buffers and addresses.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                slots as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            return Err(io::Error::last_os_error());
        }
        let count = count as usize;
        for (i, header) in headers.iter().take(count).enumerate() {
            self.lengths[i] = header.msg_len as usize;
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.destinations[i] = packet_destination(&header.msg_hdr);
        }
        self.received = count;
        Ok(count)
    }

    /// The datagrams of the last receive that fit their slot, with their
    /// senders and, where the socket reports it, the address they were
    /// sent to; truncated ones are skipped (no TURN datagram is that long).
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr, Option<IpAddr>)> {
        (0..self.received).filter_map(move |i| {
            if self.truncated[i] {
                return None;
            }
            let start = i * self.slot_size;
            let data = &self.buffers[start..start + self.lengths[i]];
            Some((
                data,
                socket_address(&self.addresses[i])?,
                self.destinations[i],
            ))
        })
    }
}

/// The destination address in a received message's IP_PKTINFO or
/// IPV6_PKTINFO control message.
fn packet_destination(header: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: the kernel filled msg_control and msg_controllen; the CMSG
    // macros walk only within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    return Some(IpAddr::V4(ip));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    return Some(IpAddr::V6(info.ipi6_addr.s6_addr.into()));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Asks a UDP socket to report each datagram's destination address
/// (IP_PKTINFO, IPV6_RECVPKTINFO): a wildcard listener learns which of the
/// node's addresses a client used, and answers from it.
pub fn report_destinations(fd: i32, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    super::set_int_option(fd, level, name, 1)
}

/// Sends `data` to `to` from the local address `from`, on a socket bound
/// to a wildcard address, without blocking.
pub fn send_from(fd: i32, data: &[u8], to: SocketAddr, from: IpAddr) -> io::Result<()> {
    let (mut name, name_len) = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: all-zero msghdr is valid; every pointer set below points to a
    // local that outlives the call, and the CMSG macros stay within
    // `control`, which is large enough for one pktinfo message.
    unsafe {
        let mut header: libc::msghdr = zeroed();
        header.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        header.msg_namelen = name_len;
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.0.as_mut_ptr().cast();
        let cmsg_len = match from {
            IpAddr::V4(_) => size_of::<libc::in_pktinfo>(),
            IpAddr::V6(_) => size_of::<libc::in6_pktinfo>(),
        };
        header.msg_controllen = libc::CMSG_SPACE(cmsg_len as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_len = libc::CMSG_LEN(cmsg_len as u32) as usize;
        match from {
            IpAddr::V4(v4) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo, info);
            }
            IpAddr::V6(v6) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in6_pktinfo, info);
            }
        }
        if libc::sendmsg(fd, &header, libc::MSG_DONTWAIT) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Most datagrams [`send_many`] hands the kernel per call.
const SEND_BATCH: usize = 32;

/// Sends each `(data, to)` on the socket `fd` without blocking, as many per
/// system call as fit in a batch, and runs of one size to one destination
/// as one segmented message each (see [`gso`]). A datagram the kernel
/// refuses is dropped (as the network would drop it) and the rest still
/// go, except after a full socket buffer (`WouldBlock`), which drops the
/// rest too. Returns the first error.
pub fn send_many(fd: i32, datagrams: &[(&[u8], SocketAddr)]) -> io::Result<()> {
    let mut first_error = None;
    let mut rest = datagrams;
    // How many of `rest` go one by one: those of a run the kernel would
    // not segment.
    let mut singles = 0;
    while !rest.is_empty() {
        // Up to SEND_BATCH messages, each a run of datagrams (gso).
        let mut runs = Vec::with_capacity(SEND_BATCH);
        let mut planned = 0;
        while runs.len() < SEND_BATCH && planned < rest.len() {
            let run = if planned < singles {
                1
            } else {
                gso::run_length(&rest[planned..])
            };
            runs.push(run);
            planned += run;
        }
        let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> = Vec::new();
        let mut at = 0;
        for &run in &runs {
            names.push(sockaddr(rest[at].1));
            at += run;
        }
        let mut iovecs: Vec<libc::iovec> = rest[..planned]
            .iter()
            .map(|(data, _)| libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            })
            .collect();
        let mut controls = vec![gso::Control::new(); runs.len()];
        let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
        let mut at = 0;
        for ((&run, (name, name_len)), control) in
            runs.iter().zip(names.iter_mut()).zip(controls.iter_mut())
        {
            // SAFETY: all-zero msghdr is valid; the pointers set here point
            // into `names`, `iovecs` and `controls`, which outlive the call.
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = *name_len;
            header.msg_iov = &mut iovecs[at];
            header.msg_iovlen = run;
            if run > 1 {
                control.attach(&mut header, rest[at].0.len() as u16);
            }
            headers.push(libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            });
            at += run;
        }
        // SAFETY: `headers` holds `runs.len()` valid mmsghdrs whose
        // pointers are live for the call.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Err(first_error.unwrap_or(err));
            }
            if runs[0] > 1 {
                // The run was refused as a whole: its datagrams go again,
                // one by one, and meet their own errors.
                gso::refused(&err);
                singles = runs[0];
                continue;
            }
            // This datagram failed (too large, unreachable): skip it.
            first_error.get_or_insert(err);
            rest = &rest[1..];
            singles = singles.saturating_sub(1);
        } else {
            let done: usize = runs[..sent as usize].iter().sum();
            rest = &rest[done..];
            singles = singles.saturating_sub(done);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A socket address as the C API takes it.
fn sockaddr(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid; the writes below fill
    // a sockaddr_in or sockaddr_in6 inside it, which it is large enough for.
    unsafe {
        let mut storage: libc::sockaddr_storage = zeroed();
        match address {
            SocketAddr::V4(v4) => {
                let sin = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_scope_id = v6.scope_id();
                (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }
}

fn socket_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let v4 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let v6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(v6.sin6_port))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn receives_a_burst_in_one_call_and_skips_oversized() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        for i in 0..5u8 {
            sender.send_to(&[i; 10], to).unwrap();
        }
        sender.send_to(&[9; 100], to).unwrap();
        // Loopback delivers synchronously: all six are queued now.
        let mut batch = RecvBatch::new(8, 64);
        assert_eq!(batch.recv_now(receiver.as_raw_fd()).unwrap(), 6);
        let seen: Vec<(Vec<u8>, SocketAddr)> = batch
            .datagrams()
            .map(|(data, from, _)| (data.to_vec(), from))
            .collect();
        let expected: Vec<(Vec<u8>, SocketAddr)> = (0..5u8)
            .map(|i| (vec![i; 10], sender.local_addr().unwrap()))
            .collect();
        assert_eq!(seen, expected, "the 100-byte datagram does not fit a slot");
        receiver.set_nonblocking(true).unwrap();
        let err = batch.recv_now(receiver.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn sends_many_per_call_in_order_and_skips_what_the_kernel_refuses() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        // More than one call's batch, with one datagram over UDP's limit
        // in the middle, which alone is refused. Each is longer than the
        // one before, so that none go segmented together (gso) and every
        // datagram is a message of its own.
        let payloads: Vec<Vec<u8>> = (0..SEND_BATCH as u8 + 8)
            .map(|i| vec![i; 20 + usize::from(i)])
            .collect();
        let oversized = vec![0xEE; 70_000];
        let mut datagrams: Vec<(&[u8], SocketAddr)> =
            payloads.iter().map(|p| (p.as_slice(), to)).collect();
        datagrams.insert(5, (oversized.as_slice(), to));
        let err = send_many(sender.as_raw_fd(), &datagrams).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        receiver.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 64];
        let mut received = Vec::new();
        while let Ok((len, from)) = receiver.recv_from(&mut buffer) {
            assert_eq!(from, sender.local_addr().unwrap());
            received.push(buffer[..len].to_vec());
        }
        assert_eq!(received, payloads);
    }

    #[test]
    fn a_wildcard_socket_learns_each_destination_and_answers_from_it() {
        let receiver = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        report_destinations(receiver.as_raw_fd(), false).unwrap();
        let port = receiver.local_addr().unwrap().port();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for last in [2u8, 3] {
            sender
                .send_to(b"hi", ("127.0.0.".to_owned() + &last.to_string(), port))
                .unwrap();
        }
        let mut batch = RecvBatch::new(8, 64);
        assert_eq!(batch.recv_now(receiver.as_raw_fd()).unwrap(), 2);
        let destinations: Vec<Option<IpAddr>> = batch.datagrams().map(|(_, _, to)| to).collect();
        let expected = [[127, 0, 0, 2], [127, 0, 0, 3]].map(|ip| Some(IpAddr::from(ip)));
        assert_eq!(destinations, expected);
        // The answer leaves from the address the client used.
        let to = sender.local_addr().unwrap();
        send_from(
            receiver.as_raw_fd(),
            b"back",
            to,
            IpAddr::from([127, 0, 0, 3]),
        )
        .unwrap();
        let mut buffer = [0u8; 16];
        let (len, from) = sender.recv_from(&mut buffer).unwrap();
        assert_eq!(
            (&buffer[..len], from.ip()),
            (&b"back"[..], IpAddr::from([127, 0, 0, 3]))
        );
        assert_eq!(from.port(), port);
    }
}
