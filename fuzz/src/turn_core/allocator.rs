//! An in-memory [`RelayAllocator`] with a dozen ports per family, so that
//! capacity runs out within one input, and which checks how the core uses
//! it: an address is never released twice, nor adopted or released without
//! being held. The addresses it holds are shared with the harness, which
//! compares them with the allocations and reservations it can see.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

use turnx::turn::{AllocateError, RelayAllocator};

/// The relay's IPv4 address.
pub const RELAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
/// The relay's IPv6 address.
pub const RELAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 1));
/// The ports handed out, per address.
pub const PORTS: RangeInclusive<u16> = 49152..=49163;

/// The addresses the allocator has handed out and not had back.
pub type Held = Arc<Mutex<BTreeSet<SocketAddr>>>;

/// See the module documentation.
pub struct FakeAllocator {
    held: Held,
}

impl FakeAllocator {
    /// An allocator with every port free, and the set it keeps of the held
    /// ones.
    pub fn new() -> (Self, Held) {
        let held = Held::default();
        (
            FakeAllocator {
                held: Arc::clone(&held),
            },
            held,
        )
    }

    fn address(ipv6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(if ipv6 { RELAY_V6 } else { RELAY_V4 }, port)
    }

    /// The lowest free port (an even one when `even`) whose successor is
    /// free too when `pair`.
    fn free_port(held: &BTreeSet<SocketAddr>, ipv6: bool, even: bool, pair: bool) -> Option<u16> {
        let free = |port: u16| !held.contains(&Self::address(ipv6, port));
        PORTS
            .filter(|port| !even || port % 2 == 0)
            .find(|&port| free(port) && (!pair || (PORTS.contains(&(port + 1)) && free(port + 1))))
    }
}

impl RelayAllocator for FakeAllocator {
    fn allocate(
        &mut self,
        ipv6: bool,
        even_port: bool,
        _dont_fragment: bool,
    ) -> Result<SocketAddr, AllocateError> {
        let mut held = self.held.lock().expect("one thread");
        let port = Self::free_port(&held, ipv6, even_port, false)
            .ok_or(AllocateError::InsufficientCapacity)?;
        let address = Self::address(ipv6, port);
        held.insert(address);
        Ok(address)
    }

    fn allocate_pair(
        &mut self,
        ipv6: bool,
        _dont_fragment: bool,
    ) -> Result<(SocketAddr, SocketAddr), AllocateError> {
        let mut held = self.held.lock().expect("one thread");
        let port =
            Self::free_port(&held, ipv6, true, true).ok_or(AllocateError::InsufficientCapacity)?;
        let pair = (Self::address(ipv6, port), Self::address(ipv6, port + 1));
        held.insert(pair.0);
        held.insert(pair.1);
        Ok(pair)
    }

    fn restore(&mut self, relayed: SocketAddr, _reserved: bool) -> Result<(), AllocateError> {
        // Nothing is handed over in these runs.
        let held = self.held.lock().expect("one thread");
        panic!(
            "restoring {relayed} with {} held, in a run without handovers",
            held.len()
        );
    }

    fn adopt(&mut self, relayed: SocketAddr, _dont_fragment: bool) {
        let held = self.held.lock().expect("one thread");
        assert!(
            held.contains(&relayed),
            "adopted {relayed}, which is not held"
        );
    }

    fn release(&mut self, relayed: SocketAddr) {
        let mut held = self.held.lock().expect("one thread");
        assert!(
            held.remove(&relayed),
            "released {relayed}, which is not held (released twice?)"
        );
    }
}
