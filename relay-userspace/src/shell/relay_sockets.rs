//! Relayed addresses as real UDP sockets: the [`RelayAllocator`] the core
//! calls when it grants an allocation.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket},
    ops::RangeInclusive,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex},
};

use tokio::{net::UdpSocket, task::AbortHandle};

use crate::turn::{AllocateError, RelayAllocator};

/// The sockets of live allocations and reservations, by relayed address,
/// shared between the allocators of every shard (which add and remove) and
/// the shell (which sends and receives).
pub struct RelaySockets {
    sockets: Mutex<HashMap<SocketAddr, Relay>>,
    /// Per shard, the sockets its allocations took since the shell last
    /// looked; it starts their receive loops, which feed that shard.
    fresh: Vec<Mutex<Vec<Fresh>>>,
}

/// A relayed socket whose receive loop is yet to start.
pub type Fresh = (SocketAddr, Arc<UdpSocket>);

impl RelaySockets {
    /// No sockets, for a relay of `shards` shards.
    pub fn new(shards: usize) -> Self {
        RelaySockets {
            sockets: Mutex::default(),
            fresh: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    /// The socket of a relayed address.
    pub fn get(&self, relayed: &SocketAddr) -> Option<Arc<UdpSocket>> {
        self.sockets
            .lock()
            .expect("relay sockets lock")
            .get(relayed)
            .map(|relay| Arc::clone(&relay.socket))
    }

    /// Records the receive loop of a relayed socket so that releasing the
    /// address stops it (and so closes the socket). A loop whose address
    /// was already released is stopped at once.
    pub fn set_receiver(&self, relayed: SocketAddr, receiver: AbortHandle) {
        match self
            .sockets
            .lock()
            .expect("relay sockets lock")
            .get_mut(&relayed)
        {
            Some(relay) => relay.receiver = Some(receiver),
            None => receiver.abort(),
        }
    }

    /// Sockets `shard`'s allocations took since its last call.
    pub fn take_fresh(&self, shard: usize) -> Vec<Fresh> {
        std::mem::take(&mut *self.fresh[shard].lock().expect("relay sockets lock"))
    }

    /// Hands `relayed`'s socket to `shard`, which starts its receive loop.
    fn give(&self, shard: usize, relayed: SocketAddr, socket: Arc<UdpSocket>) {
        self.fresh[shard]
            .lock()
            .expect("relay sockets lock")
            .push((relayed, socket));
    }
}

/// One relayed socket and its receive loop.
struct Relay {
    socket: Arc<UdpSocket>,
    receiver: Option<AbortHandle>,
}

/// Binds relayed sockets on the relay addresses, in the port range.
pub struct UdpRelayAllocator {
    ipv4: Option<IpAddr>,
    ipv6: Option<IpAddr>,
    ports: RangeInclusive<u16>,
    /// Where the next search starts, so ports are not reused at once.
    cursor: u16,
    sockets: Arc<RelaySockets>,
    /// The shard whose core calls this allocator.
    shard: usize,
}

impl UdpRelayAllocator {
    /// An allocator for the given relay addresses (`None`: that family is
    /// not offered) and port range, for `shard`'s core.
    pub fn new(
        ipv4: Option<IpAddr>,
        ipv6: Option<IpAddr>,
        ports: RangeInclusive<u16>,
        sockets: Arc<RelaySockets>,
        shard: usize,
    ) -> Self {
        let span = u32::from(*ports.end() - *ports.start()) + 1;
        let cursor = *ports.start() + (rand::random::<u32>() % span) as u16;
        UdpRelayAllocator {
            ipv4,
            ipv6,
            ports,
            cursor,
            sockets,
            shard,
        }
    }

    fn bind(ip: IpAddr, port: u16, dont_fragment: bool) -> std::io::Result<UdpSocket> {
        let socket = StdUdpSocket::bind(SocketAddr::new(ip, port))?;
        socket.set_nonblocking(true)?;
        super::set_udp_buffers(socket.as_raw_fd(), super::RELAYED_RECEIVE_BUFFER);
        if dont_fragment {
            set_dont_fragment(socket.as_raw_fd(), ip.is_ipv6())?;
        }
        UdpSocket::from_std(socket)
    }

    /// The relay address of a family.
    fn ip(&self, ipv6: bool) -> Result<IpAddr, AllocateError> {
        if ipv6 { self.ipv6 } else { self.ipv4 }.ok_or(AllocateError::FamilyNotSupported)
    }

    /// The ports of the range in search order, starting at the cursor.
    fn search_order(&self) -> impl Iterator<Item = u16> + use<> {
        let (start, end) = (*self.ports.start(), *self.ports.end());
        let span = u32::from(end - start) + 1;
        let cursor = u32::from(self.cursor - start);
        (0..span).map(move |step| start + ((cursor + step) % span) as u16)
    }

    /// Records a bound socket. The shell starts the receive loop of an
    /// allocation's socket (`reserved` false) at once; a reserved one waits
    /// for the allocation that redeems it, in whichever shard.
    fn register(&mut self, relayed: SocketAddr, socket: UdpSocket, reserved: bool) {
        let (start, end) = (*self.ports.start(), *self.ports.end());
        self.cursor = if relayed.port() >= end {
            start
        } else {
            relayed.port() + 1
        };
        let socket = Arc::new(socket);
        self.sockets
            .sockets
            .lock()
            .expect("relay sockets lock")
            .insert(
                relayed,
                Relay {
                    socket: Arc::clone(&socket),
                    receiver: None,
                },
            );
        if !reserved {
            self.sockets.give(self.shard, relayed, socket);
        }
    }

    fn no_free_port(&self, ip: IpAddr, what: &str) -> AllocateError {
        let (start, end) = (*self.ports.start(), *self.ports.end());
        tracing::warn!("no free relay {what} in {start}-{end} on {ip}");
        AllocateError::InsufficientCapacity
    }
}

/// Sets IP_PMTUDISC_DO (or its IPv6 twin) on a socket: datagrams leave with
/// DF set and are never fragmented locally (RFC 8656 DONT-FRAGMENT).
fn set_dont_fragment(fd: RawFd, ipv6: bool) -> std::io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    super::set_int_option(fd, level, name, value)
}

impl RelayAllocator for UdpRelayAllocator {
    fn allocate(
        &mut self,
        ipv6: bool,
        even_port: bool,
        dont_fragment: bool,
    ) -> Result<SocketAddr, AllocateError> {
        let ip = self.ip(ipv6)?;
        for port in self.search_order() {
            if even_port && port % 2 == 1 {
                continue;
            }
            if let Ok(socket) = Self::bind(ip, port, dont_fragment) {
                let relayed = SocketAddr::new(ip, port);
                self.register(relayed, socket, false);
                return Ok(relayed);
            }
        }
        Err(self.no_free_port(ip, "port"))
    }

    fn allocate_pair(
        &mut self,
        ipv6: bool,
        dont_fragment: bool,
    ) -> Result<(SocketAddr, SocketAddr), AllocateError> {
        let ip = self.ip(ipv6)?;
        let end = *self.ports.end();
        for port in self.search_order() {
            if port % 2 == 1 || port == end {
                continue;
            }
            let Ok(even) = Self::bind(ip, port, dont_fragment) else {
                continue;
            };
            // Dropping `even` frees the port again when its twin is taken.
            let Ok(next) = Self::bind(ip, port + 1, dont_fragment) else {
                continue;
            };
            let pair = (SocketAddr::new(ip, port), SocketAddr::new(ip, port + 1));
            self.register(pair.0, even, false);
            self.register(pair.1, next, true);
            return Ok(pair);
        }
        Err(self.no_free_port(ip, "port pair"))
    }

    fn adopt(&mut self, relayed: SocketAddr, dont_fragment: bool) {
        let Some(socket) = self.sockets.get(&relayed) else {
            return;
        };
        if dont_fragment && let Err(err) = set_dont_fragment(socket.as_raw_fd(), relayed.is_ipv6())
        {
            tracing::warn!("setting DONT-FRAGMENT on the reserved socket {relayed}: {err}");
        }
        self.sockets.give(self.shard, relayed, socket);
    }

    fn restore(&mut self, relayed: SocketAddr, reserved: bool) -> Result<(), AllocateError> {
        let ours = Some(relayed.ip()) == self.ip(relayed.is_ipv6()).ok()
            && self.ports.contains(&relayed.port());
        if !ours {
            tracing::warn!(
                "a handed-over allocation's relayed address {relayed} is not in this relay's \
                 addresses and ports: not taken over"
            );
            return Err(AllocateError::InsufficientCapacity);
        }
        // The DONT-FRAGMENT choice is not handed over: the socket sends as
        // sockets do by default.
        match Self::bind(relayed.ip(), relayed.port(), false) {
            Ok(socket) => {
                self.register(relayed, socket, reserved);
                Ok(())
            }
            Err(err) => {
                tracing::warn!("binding the handed-over relayed address {relayed}: {err}");
                Err(AllocateError::InsufficientCapacity)
            }
        }
    }

    fn release(&mut self, relayed: SocketAddr) {
        // Stopping the receive loop drops the last reference, which closes
        // the socket and frees the port.
        let relay = self
            .sockets
            .sockets
            .lock()
            .expect("relay sockets lock")
            .remove(&relayed);
        if let Some(receiver) = relay.and_then(|relay| relay.receiver) {
            receiver.abort();
        }
    }
}
