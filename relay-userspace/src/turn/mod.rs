//! The TURN server's protocol core (RFC 8656 over RFC 8489), without I/O.
//!
//! [`Server`] consumes what arrived (bytes, the 5-tuple they came on, and
//! the time) and produces datagrams to send (into an [`Outbox`]), lifecycle
//! [`Event`]s and its next deadline. It opens no sockets and reads no clock;
//! relayed addresses come from a [`RelayAllocator`] the caller provides.
//!
//! - [`auth`]: long-term credentials, TURN REST API credentials, nonces;
//! - [`policy`]: which peers a client may reach;
//! - [`amplification`]: bounds on responses to unauthenticated requests;
//! - [`refusal`]: the error responses, as a type;
//! - `server`: the state, the inputs and outputs, and their dispatch;
//! - `challenge`: authentication and the 401/438 challenges;
//! - `requests`: the request handlers (Binding, Allocate, Refresh,
//!   CreatePermission, ChannelBind);
//! - `relay`: application data between clients and peers;
//! - `allocation`: one allocation's permissions, channels and timers;
//! - `reservation`: ports reserved by EVEN-PORT and their tokens;
//! - `reply`: building responses;
//! - [`counters`]: what the server did, for metrics;
//! - [`ledger`]: what the shards of one relay share (quotas' counts,
//!   reservations, users' buckets, the response budget);
//! - [`public_address`]: advertised relayed addresses behind a NAT;
//! - `reload`: a new configuration, applied live;
//! - `view`: the state as metrics and the admin socket show it.
//!
//! # Draining
//!
//! [`Server::set_draining`] refuses new Allocates (300 Try Alternate or
//! 508) and keeps serving everything else, until the shell has waited
//! for the allocations to end.
//!
//! # Driving the core
//!
//! The shell feeds [`Server::handle_client`] (bytes from a client),
//! [`Server::handle_peer`] (a datagram to a relayed address),
//! [`Server::handle_timeout`] (no earlier than [`Server::next_deadline`]),
//! [`Server::close_client`] (a stream closed) and
//! [`Server::set_local_addresses`] (the node's addresses changed). After
//! each call it drains [`Server::poll_event`] and then sends what the call
//! wrote into the [`Outbox`]: events first, so that whoever mirrors them
//! (the kernel offload) is up to date before a client sees the response.

mod allocation;
pub mod amplification;
pub mod auth;
pub mod bandwidth;
mod challenge;
pub mod counters;
pub mod ledger;
mod outbox;
pub mod policy;
pub mod public_address;
pub mod refusal;
mod relay;
mod reload;
mod reply;
mod requests;
mod reservation;
mod server;
pub mod snapshot;
#[cfg(test)]
mod tests;
mod view;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

pub use allocation::PERMISSION_LIFETIME;
pub use counters::Counters;
pub use outbox::{Destination, Outbox};
pub use public_address::PublicAddresses;
pub use requests::DRAINING_REASON;
pub use reservation::RESERVATION_LIFETIME;
pub use server::{Server, ServerConfig, Stats};
pub use view::{AllocationView, ChannelView};

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// A TCP connection, with STUN and ChannelData framing.
    Tcp,
    /// TLS over TCP (TURNS).
    Tls,
}

impl Transport {
    /// Whether messages arrive on a byte stream (TCP or TLS), where
    /// ChannelData is padded to a multiple of 4 (RFC 8656 section 12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The client's 5-tuple: transport, client address, server address.
/// An allocation is identified by it (RFC 8656 section 2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Transport between client and server.
    pub transport: Transport,
    /// The client's address as the server sees it.
    pub client: SocketAddr,
    /// The server's listen address the client talks to.
    pub server: SocketAddr,
}

/// Something to send, as an owned value (see [`Outbox::to_transmits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// To a client, over the transport and listener of `to`.
    ToClient {
        /// Where it goes.
        to: FiveTuple,
        /// A STUN message or a ChannelData message.
        data: Vec<u8>,
    },
    /// To a peer, from a relayed address.
    ToPeer {
        /// The relayed address it is sent from.
        from: SocketAddr,
        /// The peer.
        to: SocketAddr,
        /// The application data.
        data: Vec<u8>,
    },
}

/// Why an allocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// The client sent Refresh with LIFETIME 0.
    Refreshed,
    /// Its lifetime ran out.
    Expired,
    /// The client's TCP or TLS connection closed.
    ConnectionClosed,
    /// The server shut down.
    Shutdown,
}

/// A change of allocation state, for whoever mirrors it (the kernel offload,
/// metrics). Emitted in order, one per change. Dependent state ends first:
/// a channel's expiry is reported before its permission's, and both before
/// their allocation's deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new allocation.
    AllocationCreated {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// Relayed addresses (one, or two for a dual-stack allocation).
        relayed: Vec<SocketAddr>,
        /// Authenticated username.
        username: String,
        /// Time to expiry.
        lifetime: Duration,
    },
    /// Lifetime extended by a Refresh.
    AllocationRefreshed {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// New time to expiry.
        lifetime: Duration,
    },
    /// The allocation is gone, with its relayed addresses.
    AllocationDeleted {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// Its relayed addresses, now released.
        relayed: Vec<SocketAddr>,
        /// Why.
        reason: DeleteReason,
    },
    /// A permission for a peer IP was installed.
    PermissionCreated {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// The peer address (the port is ignored by permissions).
        peer: std::net::IpAddr,
    },
    /// A permission lapsed (or went with its allocation).
    PermissionExpired {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// The peer address.
        peer: std::net::IpAddr,
    },
    /// A channel was bound to a peer.
    ChannelBound {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// The relayed address the peer talks to.
        relayed: SocketAddr,
        /// The channel number.
        channel: u16,
        /// The peer.
        peer: SocketAddr,
    },
    /// An existing binding was refreshed by ChannelBind.
    ChannelRefreshed {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// The channel number.
        channel: u16,
    },
    /// How long a bound channel may still be relayed: until the first of
    /// its own expiry, its permission's and its allocation's. Reported
    /// after anything that may move it (a Refresh, a CreatePermission, a
    /// ChannelBind), so that whoever relays without the core (the kernel)
    /// stops on time even if the core is gone.
    ChannelLifetime {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// The channel number.
        channel: u16,
        /// Time left.
        lifetime: Duration,
    },
    /// A channel binding lapsed (or went with its permission or
    /// allocation).
    ChannelExpired {
        /// The client's 5-tuple.
        client: FiveTuple,
        /// The relayed address.
        relayed: SocketAddr,
        /// The channel number.
        channel: u16,
        /// The peer.
        peer: SocketAddr,
    },
}

/// Why no relayed address could be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// The server has no relay address of that family (440).
    FamilyNotSupported,
    /// No free port (508).
    InsufficientCapacity,
}

/// Hands out relayed transport addresses. The I/O shell's implementation
/// binds a UDP socket; tests use an in-memory one.
pub trait RelayAllocator: Send {
    /// Reserves a relayed address of the given family (IPv6 when `ipv6`),
    /// on an even port when `even_port` (RFC 8656 EVEN-PORT), sending with
    /// the IP Don't Fragment bit when `dont_fragment`.
    fn allocate(
        &mut self,
        ipv6: bool,
        even_port: bool,
        dont_fragment: bool,
    ) -> Result<SocketAddr, AllocateError>;
    /// Takes an even port for an allocation and reserves the next one, on
    /// one address (EVEN-PORT with the R bit); both are held until
    /// released.
    fn allocate_pair(
        &mut self,
        ipv6: bool,
        dont_fragment: bool,
    ) -> Result<(SocketAddr, SocketAddr), AllocateError>;
    /// A reserved address becomes an allocation's, this allocator's core's
    /// (whichever allocator reserved it): it sends with the IP Don't
    /// Fragment bit from now on when `dont_fragment`.
    fn adopt(&mut self, relayed: SocketAddr, dont_fragment: bool);
    /// Gives a relayed address back.
    fn release(&mut self, relayed: SocketAddr);
    /// Takes `relayed` again, for an allocation handed over by another
    /// daemon (`reserved`: for a reservation, which waits for the Allocate
    /// that redeems it); fails if it cannot be had.
    fn restore(&mut self, relayed: SocketAddr, reserved: bool) -> Result<(), AllocateError>;
}

/// The time, as an input. `at` drives timers; `unix_secs` checks the expiry
/// of TURN REST API usernames.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
}
