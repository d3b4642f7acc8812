//! Receiving many UDP datagrams per system call (`recvmmsg`), so a burst
//! costs one wake-up, one syscall and one lock of the core instead of one
//! each per datagram. The buffers are per worker thread, not per socket: a
//! relayed socket costs no receive memory while it waits.

use std::{
    io,
    mem::{size_of, zeroed},
    net::SocketAddr,
};

/// Reusable buffers for up to `slots` datagrams of up to `slot_size` bytes.
pub struct RecvBatch {
    slot_size: usize,
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_storage>,
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
        }
        self.received = count;
        Ok(count)
    }

    /// The datagrams of the last receive that fit their slot, with their
    /// senders; truncated ones are skipped (no TURN datagram is that long).
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        (0..self.received).filter_map(move |i| {
            if self.truncated[i] {
                return None;
            }
            let start = i * self.slot_size;
            let data = &self.buffers[start..start + self.lengths[i]];
            Some((data, socket_address(&self.addresses[i])?))
        })
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
            .map(|(data, from)| (data.to_vec(), from))
            .collect();
        let expected: Vec<(Vec<u8>, SocketAddr)> = (0..5u8)
            .map(|i| (vec![i; 10], sender.local_addr().unwrap()))
            .collect();
        assert_eq!(seen, expected, "the 100-byte datagram does not fit a slot");
        receiver.set_nonblocking(true).unwrap();
        let err = batch.recv_now(receiver.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
