//! UDP segmentation offload on send (UDP_SEGMENT, Linux 4.18): a run of
//! datagrams of one size to one destination goes to the kernel as one
//! message, which crosses the socket, UDP and IP layers once and is cut
//! into the datagrams as late as the egress allows (by the NIC, or in
//! software just before the device). The peer receives the same datagrams
//! it would have without it. A run of media from one client to one peer
//! is common: a batch received together is often one video frame's
//! packets, which WebRTC senders cut to equal sizes.

use std::{
    io,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
};

/// Most datagrams in one message (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one message: below an IP datagram's 64 KiB, with
/// room for the headers.
const MAX_BYTES: usize = 65_000;
/// Largest datagram cut by segmentation: the payload that fits a 1500-byte
/// MTU under IPv6 and UDP headers. The kernel refuses a segment larger
/// than the route's MTU (EINVAL), and such runs are rare.
const MAX_SEGMENT_SIZE: usize = 1452;

/// Whether the kernel segments for us; cleared the first time it says it
/// cannot (an old kernel, a route through IPsec).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// A control message buffer holding one UDP_SEGMENT, 8-aligned as cmsg
/// headers want.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Control([u8; 32]);

impl Control {
    /// An empty buffer.
    pub const fn new() -> Self {
        Control([0; 32])
    }

    /// Writes a UDP_SEGMENT of `segment_size` into this buffer and points
    /// `header`'s control fields at it.
    pub fn attach(&mut self, header: &mut libc::msghdr, segment_size: u16) {
        // SAFETY: CMSG_SPACE(2) (24 bytes at most) fits the 32-byte,
        // 8-aligned buffer; CMSG_FIRSTHDR of a header whose control points
        // at it returns its start, and CMSG_DATA stays within it.
        unsafe {
            header.msg_control = self.0.as_mut_ptr().cast();
            header.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(header);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_size);
        }
    }
}

/// How many of `datagrams`, from the first, go out as one message: those
/// to the first's destination that have its size, and one shorter one to
/// end the run; 1 when segmentation is off or the first is too large.
pub fn run_length(datagrams: &[(&[u8], SocketAddr)]) -> usize {
    let Some(&(first, to)) = datagrams.first() else {
        return 0;
    };
    let size = first.len();
    if !ENABLED.load(Ordering::Relaxed) || size == 0 || size > MAX_SEGMENT_SIZE {
        return 1;
    }
    let most = MAX_SEGMENTS.min(MAX_BYTES / size);
    let mut run = 1;
    for &(data, destination) in &datagrams[1..] {
        if run == most || destination != to || data.len() > size || data.is_empty() {
            break;
        }
        run += 1;
        if data.len() < size {
            break;
        }
    }
    run
}

/// Takes note of the kernel refusing a segmented message with `err`:
/// segmentation stays off from now on if the kernel cannot do it at all.
/// The caller sends the run's datagrams one by one either way.
pub fn refused(err: &io::Error) {
    let unsupported = matches!(
        err.raw_os_error(),
        Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    );
    if unsupported && ENABLED.swap(false, Ordering::Relaxed) {
        tracing::info!(
            "the kernel does not segment UDP here ({err}); sending datagrams one by one"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    // The control message as the kernel takes it: one sendmsg of three
    // buffers with a UDP_SEGMENT of 100 arrives as three datagrams (a
    // malformed one would be refused, and send_many would fall back to
    // sending one by one without anyone noticing).
    #[test]
    fn the_kernel_cuts_one_message_into_the_datagrams() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        let parts = [vec![1u8; 100], vec![2u8; 100], vec![3u8; 40]];
        let mut iovecs: Vec<libc::iovec> = parts
            .iter()
            .map(|part| libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            })
            .collect();
        // SAFETY: all-zero msghdr is valid; its pointers go to locals that
        // outlive the call.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = iovecs.as_mut_ptr();
        header.msg_iovlen = iovecs.len();
        let mut control = Control::new();
        control.attach(&mut header, 100);
        // SAFETY: a valid socket and message.
        let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), &header, 0) };
        assert_eq!(sent, 240, "{}", io::Error::last_os_error());
        receiver.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 512];
        let mut received = Vec::new();
        while let Ok(len) = receiver.recv(&mut buffer) {
            received.push(buffer[..len].to_vec());
        }
        assert_eq!(received, parts);
    }

    #[test]
    fn a_run_is_one_size_to_one_destination_ended_by_a_shorter_one() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "198.18.0.1:1".parse().unwrap(),
            "198.18.0.2:2".parse().unwrap(),
        );
        let (full, short, long) = (vec![1u8; 1000], vec![2u8; 400], vec![3u8; 1200]);
        let runs = |datagrams: &[(&[u8], SocketAddr)]| {
            let mut lengths = Vec::new();
            let mut rest = datagrams;
            while !rest.is_empty() {
                let run = run_length(rest);
                lengths.push(run);
                rest = &rest[run..];
            }
            lengths
        };
        let f = full.as_slice();
        assert_eq!(runs(&[(f, a), (f, a), (f, a)]), [3]);
        assert_eq!(runs(&[(f, a), (f, a), (&short, a), (f, a)]), [3, 1]);
        assert_eq!(runs(&[(f, a), (&long, a), (f, a)]), [1, 2], "a longer one");
        assert_eq!(runs(&[(f, a), (f, b), (f, b)]), [1, 2], "another peer");
        let many = vec![(f, a); 100];
        assert_eq!(runs(&many), [64, 36], "at most 64 segments");
        let large = vec![1u8; 1452];
        let bytes = vec![(large.as_slice(), a); 50];
        assert_eq!(runs(&bytes), [44, 6], "at most 65 000 bytes");
        let jumbo = vec![1u8; 2000];
        assert_eq!(runs(&[(&jumbo, a), (&jumbo, a)]), [1, 1], "over an MTU");
        assert_eq!(runs(&[(&[], a), (&[], a)]), [1, 1], "empty");
    }
}
