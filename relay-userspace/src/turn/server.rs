//! The TURN server state machine: its state, its inputs and outputs, and
//! the dispatch of what arrives. The work is done in sibling modules:
//! `challenge` (authentication), `requests` (the request handlers) and
//! `relay` (application data both ways, including
//! [`Server::handle_peer`]).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use stun_types::message::{BINDING, Message, MessageClass};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};

use super::{
    DeleteReason, Event, FiveTuple, Now, RelayAllocator, Transport,
    allocation::Allocation,
    amplification::{BudgetConfig, Refused},
    auth::{Authenticator, Credentials},
    bandwidth::{Clock, Direction, Limits},
    counters::{Counters, Indication, Method, RefusalCause},
    ledger::Ledger,
    outbox::{Destination, Outbox},
    policy::{PeerPolicy, canonical, canonical_transport},
    public_address::PublicAddresses,
    refusal::Refusal,
    reply::Reply,
    snapshot::{AllocationState, LedgerState, RestoreError, deadline},
};

/// What the server is configured with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Realm, users and secrets.
    pub credentials: Credentials,
    /// Which peers are reachable.
    pub policy: PeerPolicy,
    /// SOFTWARE attribute in authenticated responses; `None` for none.
    pub software: Option<String>,
    /// Allocation lifetime when the client asks for less or nothing
    /// (RFC 8656: 10 minutes).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    pub max_lifetime: Duration,
    /// Allocations (and port reservations) one username may hold at once;
    /// 0 for no limit.
    pub user_quota: u32,
    /// Allocations (and port reservations) the server holds at once; 0 for
    /// no limit.
    pub total_quota: u32,
    /// Peer IPs one allocation may hold permissions for; 0 for no limit.
    pub permissions_per_allocation: usize,
    /// Channels one allocation may bind; 0 for no limit.
    pub channels_per_allocation: usize,
    /// Bounds on responses to requests that are not authenticated, on UDP
    /// (whose source addresses can be forged).
    pub amplification: BudgetConfig,
    /// Accept the RFC 5766 channel range 0x4000-0x7FFF instead of RFC
    /// 8656's 0x4000-0x4FFF.
    pub legacy_channel_numbers: bool,
    /// Bandwidth limits per allocation and per user.
    pub bandwidth: Limits,
    /// Public IPs advertised in XOR-RELAYED-ADDRESS instead of the bound
    /// ones, for a relay behind a 1:1 NAT.
    pub public_addresses: PublicAddresses,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            credentials: Credentials {
                realm: "turnx".into(),
                nonce_lifetime_secs: 600,
                ..Credentials::default()
            },
            policy: PeerPolicy {
                relay_to_relay: true,
                ..PeerPolicy::default()
            },
            software: Some(concat!("turnx ", env!("CARGO_PKG_VERSION")).into()),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            user_quota: 0,
            total_quota: 0,
            permissions_per_allocation: 0,
            channels_per_allocation: 0,
            amplification: BudgetConfig::default(),
            legacy_channel_numbers: false,
            bandwidth: Limits::default(),
            public_addresses: PublicAddresses::default(),
        }
    }
}

/// Counters of what the server did, for metrics and tests; part of
/// [`Counters`], which has the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Datagrams relayed from clients to peers.
    pub to_peer_packets: u64,
    /// Their application bytes.
    pub to_peer_bytes: u64,
    /// Datagrams relayed from peers to clients.
    pub to_client_packets: u64,
    /// Their application bytes.
    pub to_client_bytes: u64,
    /// Data dropped for lack of a permission or channel.
    pub dropped_no_permission: u64,
    /// Data dropped over an allocation's or a user's bandwidth limit.
    pub dropped_over_limit: u64,
    /// Unauthenticated responses not sent: larger than the ratio allows.
    pub refused_amplification_ratio: u64,
    /// Unauthenticated responses not sent: the source prefix, or all
    /// sources together, spent their response budget.
    pub refused_response_budget: u64,
    /// Messages that did not parse.
    pub dropped_malformed: u64,
    /// Requests refused by the peer policy (403).
    pub denied_peers: u64,
    /// Allocations refused by quota (486, 508).
    pub quota_refusals: u64,
    /// Ports reserved with EVEN-PORT's R bit.
    pub reservations_made: u64,
    /// Reservations redeemed by an Allocate with RESERVATION-TOKEN.
    pub reservations_redeemed: u64,
    /// Reservations that expired unused.
    pub reservations_expired: u64,
}

impl Stats {
    /// Adds `other`'s counts to these (a relay's are its shards' sum).
    pub fn absorb(&mut self, other: &Stats) {
        let Stats {
            to_peer_packets,
            to_peer_bytes,
            to_client_packets,
            to_client_bytes,
            dropped_no_permission,
            dropped_over_limit,
            refused_amplification_ratio,
            refused_response_budget,
            dropped_malformed,
            denied_peers,
            quota_refusals,
            reservations_made,
            reservations_redeemed,
            reservations_expired,
        } = *other;
        self.to_peer_packets += to_peer_packets;
        self.to_peer_bytes += to_peer_bytes;
        self.to_client_packets += to_client_packets;
        self.to_client_bytes += to_client_bytes;
        self.dropped_no_permission += dropped_no_permission;
        self.dropped_over_limit += dropped_over_limit;
        self.refused_amplification_ratio += refused_amplification_ratio;
        self.refused_response_budget += refused_response_budget;
        self.dropped_malformed += dropped_malformed;
        self.denied_peers += denied_peers;
        self.quota_refusals += quota_refusals;
        self.reservations_made += reservations_made;
        self.reservations_redeemed += reservations_redeemed;
        self.reservations_expired += reservations_expired;
    }
}

/// The TURN server core. See the module documentation of `turn`.
pub struct Server {
    pub(super) config: ServerConfig,
    pub(super) auth: Authenticator,
    pub(super) allocator: Box<dyn RelayAllocator>,
    pub(super) allocations: HashMap<FiveTuple, Allocation>,
    pub(super) by_relayed: HashMap<SocketAddr, FiveTuple>,
    /// What this server shares with the other shards of the relay.
    pub(super) ledger: Arc<Ledger>,
    events: VecDeque<Event>,
    /// When each allocation may next have something due, earliest first:
    /// a timer queue, so that a deadline visits only the allocations due
    /// then. Entries are hints; one that finds nothing due (its allocation
    /// was refreshed or is gone) is dropped.
    timers: BinaryHeap<Reverse<(Instant, FiveTuple)>>,
    /// When a port reservation this server made may next expire (the
    /// reservations themselves are in the ledger).
    reservation_deadline: Option<Instant>,
    /// The clock of the allocations' bandwidth buckets.
    clock: Clock,
    /// Allocations the timeouts have visited, for the tests.
    #[cfg(test)]
    pub(super) timer_visits: usize,
    pub(super) counters: Counters,
    /// While draining: the alternate server to send clients to, if any.
    pub(super) draining: Option<Option<SocketAddr>>,
    /// Scratch space for events of one operation.
    pub(super) pending: Vec<Event>,
    /// Whether allocation state changed since [`Self::take_changed`].
    pub(super) changed: bool,
}

impl Server {
    /// A server with no allocations, the only shard of its relay. `key`
    /// must be random and secret: it keys nonces and reservation tokens.
    pub fn new(config: ServerConfig, key: [u8; 32], allocator: Box<dyn RelayAllocator>) -> Self {
        let ledger = Ledger::new(key, config.amplification);
        Self::shard(config, key, allocator, ledger)
    }

    /// A server with no allocations, one shard of a relay whose shards
    /// share `ledger` and `key` (so that each accepts the others' nonces).
    pub fn shard(
        config: ServerConfig,
        key: [u8; 32],
        allocator: Box<dyn RelayAllocator>,
        ledger: Arc<Ledger>,
    ) -> Self {
        Server {
            auth: Authenticator::new(config.credentials.clone(), key),
            ledger,
            config,
            allocator,
            allocations: HashMap::new(),
            by_relayed: HashMap::new(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            reservation_deadline: None,
            clock: Clock::default(),
            #[cfg(test)]
            timer_visits: 0,
            counters: Counters::default(),
            draining: None,
            pending: Vec::new(),
            changed: false,
        }
    }

    /// The relay counters so far (a part of [`Self::counters`]).
    pub fn stats(&self) -> Stats {
        self.counters.stats
    }

    /// Every counter so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Starts draining (or changes the alternate server): new Allocates
    /// are refused, with 300 Try Alternate and ALTERNATE-SERVER when
    /// `alternate` is given (and of the client's family), else 508;
    /// everything else, existing allocations included, keeps working.
    pub fn set_draining(&mut self, alternate: Option<SocketAddr>) {
        self.draining = Some(alternate);
    }

    /// Whether [`Self::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Whether the client on `from` holds an allocation.
    pub fn has_allocation(&self, from: &FiveTuple) -> bool {
        self.allocations.contains_key(from)
    }

    /// Replaces the node's local addresses, which are never peers (except
    /// relayed transport addresses); the shell reads them from the kernel
    /// and calls this whenever they change.
    pub fn set_local_addresses(&mut self, addresses: impl IntoIterator<Item = IpAddr>) {
        self.config.policy.own.local = addresses.into_iter().map(canonical).collect::<HashSet<_>>();
    }

    /// The next lifecycle event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.reservation_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles bytes from a client: one UDP datagram, or one framed message
    /// from a stream.
    pub fn handle_client(&mut self, from: FiveTuple, data: &[u8], now: Now, out: &mut Outbox) {
        match data.first().map(|byte| byte >> 6) {
            Some(0b01) => self.channel_data_from_client(from, data, now, out),
            Some(0b00) => self.stun_from_client(from, data, now, out),
            _ => self.counters.stats.dropped_malformed += 1,
        }
        self.flush_events();
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        let mut due = HashSet::new();
        while let Some(Reverse((at, client))) = self.timers.peek().copied()
            && at <= now.at
        {
            self.timers.pop();
            due.insert(client);
        }
        // In order, so that events come out the same on every run.
        let mut due: Vec<FiveTuple> = due.into_iter().collect();
        due.sort_unstable();
        for client in due {
            let Some(allocation) = self.allocations.get_mut(&client) else {
                continue;
            };
            #[cfg(test)]
            {
                self.timer_visits += 1;
            }
            if allocation.expires <= now.at {
                self.delete(client, DeleteReason::Expired, now.at);
                continue;
            }
            allocation.expire(now.at, &mut self.pending);
            let next = allocation.next_deadline();
            self.timers.push(Reverse((next, client)));
        }
        if self.reservation_deadline.is_some_and(|at| at <= now.at) {
            // Another shard may have redeemed or expired them already.
            let mut books = self.ledger.books();
            for reservation in books.reservations.expire(now.at) {
                self.counters.stats.reservations_expired += 1;
                self.allocator.release(reservation.relayed);
                books.uncount_user(&reservation.username);
            }
            self.reservation_deadline = books.next_reservation_expiry();
        }
        self.flush_events();
    }

    /// The client's TCP or TLS connection closed: its allocation goes too
    /// (RFC 8656 section 3.1).
    pub fn close_client(&mut self, client: FiveTuple, now: Now) {
        self.delete(client, DeleteReason::ConnectionClosed, now.at);
        self.flush_events();
    }

    /// Deletes every allocation and reservation, for shutdown.
    pub fn shutdown(&mut self, now: Now) {
        let clients: Vec<FiveTuple> = self.allocations.keys().copied().collect();
        for client in clients {
            self.delete(client, DeleteReason::Shutdown, now.at);
        }
        let mut books = self.ledger.books();
        for reservation in books.reservations.drain() {
            self.allocator.release(reservation.relayed);
            books.uncount_user(&reservation.username);
        }
        drop(books);
        self.flush_events();
    }

    fn flush_events(&mut self) {
        if !self.pending.is_empty() {
            self.changed = true;
        }
        self.events.extend(self.pending.drain(..));
    }

    /// Whether allocation state changed since the last call: what a
    /// handover would take over is worth writing down again.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every UDP allocation as plain data, deadlines as time left at `now`
    /// (see [`snapshot`](super::snapshot)).
    pub fn snapshot(&self, now: Instant) -> Vec<AllocationState> {
        let mut states: Vec<AllocationState> = self
            .allocations
            .values()
            .filter(|allocation| allocation.client.transport == Transport::Udp)
            .map(|allocation| allocation.snapshot(now))
            .collect();
        states.sort_unstable_by_key(|state| (state.client, state.server));
        states
    }

    /// Counts another daemon's counters as this shard's too, so that the
    /// relay's counters go on from where they were.
    pub fn absorb_counters(&mut self, counters: &Counters) {
        self.counters.absorb(counters);
    }

    /// The relay-wide reservations, as plain data. Any shard may take them:
    /// they are the ledger's.
    pub fn snapshot_ledger(&self, now: Instant) -> LedgerState {
        self.ledger.books().reservations.snapshot(now)
    }

    /// Takes over an allocation another daemon held, `elapsed` after it was
    /// written down: binds its relayed addresses again and reports it (its
    /// permissions, channels and their lifetimes) as events, as if it had
    /// been made here. Quotas are not checked: it exists already.
    pub fn restore(
        &mut self,
        state: &AllocationState,
        now: Now,
        elapsed: Duration,
    ) -> Result<(), RestoreError> {
        let allocation = Allocation::from_state(state, now.at, elapsed)?;
        let client = allocation.client;
        if self.allocations.contains_key(&client)
            || allocation
                .relayed
                .iter()
                .any(|relayed| self.ledger.books().is_relayed(relayed))
        {
            return Err(RestoreError::Duplicate);
        }
        for (index, relayed) in allocation.relayed.iter().enumerate() {
            if self.allocator.restore(*relayed, false).is_err() {
                for taken in &allocation.relayed[..index] {
                    self.allocator.release(*taken);
                }
                return Err(RestoreError::Relayed(*relayed));
            }
        }
        self.ledger
            .books()
            .allocated(&allocation.username, &allocation.relayed);
        for relayed in &allocation.relayed {
            self.by_relayed.insert(*relayed, client);
        }
        let mut allocation = allocation;
        allocation.meter = self
            .config
            .bandwidth
            .buckets(self.config.bandwidth.allocation);
        allocation.replay(now.at, &mut self.pending);
        self.note_deadline(client, allocation.next_deadline());
        self.allocations.insert(client, allocation);
        self.flush_events();
        Ok(())
    }

    /// Takes over the reservations and the token count of another daemon's
    /// relay, `elapsed` after they were written down; returns how many
    /// reservations were kept (the others expired, or their port could not
    /// be bound again).
    pub fn restore_ledger(&mut self, state: &LedgerState, now: Now, elapsed: Duration) -> usize {
        let mut kept = 0;
        let mut books = self.ledger.books();
        books.reservations.continue_from(state.tokens_issued);
        for reservation in &state.reservations {
            let Some(expires) = deadline(now.at, reservation.expires_in_ms, elapsed) else {
                continue;
            };
            if books.is_relayed(&reservation.relayed)
                || self.allocator.restore(reservation.relayed, true).is_err()
            {
                continue;
            }
            books.reservations.restore(
                reservation.token,
                reservation.relayed,
                &reservation.username,
                expires,
            );
            books.count_user(&reservation.username);
            kept += 1;
        }
        let next = books.next_reservation_expiry();
        drop(books);
        if let Some(at) = next {
            self.note_reservation(at);
        }
        kept
    }

    /// Something of `client`'s allocation is due at `at`.
    pub(super) fn note_deadline(&mut self, client: FiveTuple, at: Instant) {
        self.timers.push(Reverse((at, client)));
    }

    /// A port reservation expires at `at`.
    pub(super) fn note_reservation(&mut self, at: Instant) {
        self.reservation_deadline = Some(self.reservation_deadline.map_or(at, |d| d.min(at)));
    }

    /// The bound relayed address a client means by the peer address it
    /// gave (XOR-PEER-ADDRESS), in canonical form: a public address of this
    /// relay is the matching bound relayed address (see
    /// [`PublicAddresses::to_bound`]).
    pub(super) fn bound_peer(&self, peer: SocketAddr) -> SocketAddr {
        let peer = canonical_transport(peer);
        self.config
            .public_addresses
            .to_bound(peer, &self.config.policy.own.relay, |candidate| {
                // Another shard's allocation is just as much this relay's.
                self.by_relayed.contains_key(&candidate)
                    || self.ledger.books().is_relayed(&candidate)
            })
    }

    /// Whether `bytes` of the allocation's data may go `direction` at
    /// `now`, within its and its user's bandwidth limits; if so they are
    /// charged.
    pub(super) fn within_limits(
        &mut self,
        client: FiveTuple,
        direction: Direction,
        bytes: usize,
        now: Instant,
    ) -> bool {
        let limits = self.config.bandwidth;
        if !limits.any() {
            return true;
        }
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return false;
        };
        let (bytes, way) = (bytes as u64, direction as usize);
        // Both buckets are tried on copies and charged only if both admit,
        // so a datagram one refuses costs the other nothing.
        let own_now = self.clock.nanos(now);
        let mut own = allocation.meter.map(|meter| meter[way]);
        // The user's buckets are the relay's, shared by the shards, and run
        // on the ledger's clock.
        let user_limit = limits.buckets(limits.user);
        let mut books = user_limit.map(|_| self.ledger.books());
        let mut user_meter = books.as_mut().zip(user_limit).map(|(books, full)| {
            let user_now = books.clock.nanos(now);
            let meter = books
                .user_meters
                .entry(allocation.username.clone())
                .or_insert(full);
            (meter, user_now)
        });
        let mut user = user_meter.as_ref().map(|(meter, _)| meter[way]);
        let admitted = own
            .as_mut()
            .is_none_or(|bucket| bucket.admit(bytes, own_now))
            && user
                .as_mut()
                .zip(user_meter.as_ref())
                .is_none_or(|(bucket, (_, user_now))| bucket.admit(bytes, *user_now));
        if admitted {
            if let (Some(meter), Some(bucket)) = (allocation.meter.as_mut(), own) {
                meter[way] = bucket;
            }
            if let (Some((meter, _)), Some(bucket)) = (user_meter.as_mut(), user) {
                meter[way] = bucket;
            }
        }
        if !admitted {
            self.counters.stats.dropped_over_limit += 1;
        }
        admitted
    }

    pub(super) fn delete(&mut self, client: FiveTuple, reason: DeleteReason, now: Instant) {
        let Some(mut allocation) = self.allocations.remove(&client) else {
            return;
        };
        allocation.teardown(now, &mut self.pending);
        for relayed in &allocation.relayed {
            self.by_relayed.remove(relayed);
            self.allocator.release(*relayed);
        }
        self.ledger
            .books()
            .deleted(&allocation.username, &allocation.relayed);
        self.counters.deleted(reason);
        self.pending.push(Event::AllocationDeleted {
            client,
            relayed: allocation.relayed,
            reason,
        });
    }

    fn stun_from_client(&mut self, from: FiveTuple, data: &[u8], now: Now, out: &mut Outbox) {
        let Ok(message) = Message::from_bytes(data) else {
            self.counters.stats.dropped_malformed += 1;
            return;
        };
        match message.class() {
            MessageClass::Request => {
                let method = Method::of(message.method());
                if let Some(method) = method {
                    self.counters.request(method);
                }
                let (response, authenticated) = self.request(from, &message, now);
                if !authenticated {
                    self.counters.unauthenticated_requests += 1;
                }
                let Some(response) = response else {
                    return;
                };
                if !authenticated && !from.transport.is_stream() {
                    let charge = self.ledger.books().budget.charge(
                        from.client.ip(),
                        data.len(),
                        response.len(),
                        now.at,
                    );
                    match charge {
                        Ok(()) => {}
                        Err(Refused::Ratio) => {
                            self.counters.stats.refused_amplification_ratio += 1;
                            self.counters.refuse(RefusalCause::AmplificationRatio);
                            return;
                        }
                        Err(Refused::Budget) => {
                            self.counters.stats.refused_response_budget += 1;
                            self.counters.refuse(RefusalCause::ResponseBudget);
                            return;
                        }
                    }
                }
                if !authenticated {
                    self.counters.unauthenticated_responses += 1;
                }
                if let Some(method) = method {
                    self.counters.response(method, &response);
                }
                out.push(Destination::Client(from), &response);
            }
            MessageClass::Indication if message.method() == SEND => {
                self.counters.indication(Indication::Send);
                self.send_indication(from, &message, now, out)
            }
            _ => {}
        }
    }

    /// Answers a request; the flag says whether it was authenticated.
    fn request(&mut self, from: FiveTuple, request: &Message, now: Now) -> (Option<Vec<u8>>, bool) {
        let method = request.method();
        if method == BINDING {
            return (self.binding(from, request), false);
        }
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
            let reply = Reply::new(request, None, None);
            return (reply.refuse(Refusal::BadRequest).ok(), false);
        }
        let (signer, username) = match self.authenticate(from, request, now) {
            Ok(authenticated) => authenticated,
            Err(response) => return (response, false),
        };
        let software = self.config.software.clone();
        let reply = Reply::new(request, Some(&signer), software.as_deref());
        let response = if let Some(unknown) = super::requests::unknown_required_attributes(request)
        {
            reply.refuse(Refusal::UnknownAttributes(unknown))
        } else if method == ALLOCATE {
            self.allocate(from, request, &reply, username, now)
        } else {
            match self.allocations.get(&from) {
                None => reply.refuse(Refusal::AllocationMismatch),
                Some(allocation) if allocation.username != username => {
                    reply.refuse(Refusal::WrongCredentials)
                }
                Some(_) if method == REFRESH => self.refresh(from, request, &reply, now),
                Some(_) if method == CREATE_PERMISSION => {
                    self.create_permission(from, request, &reply, now)
                }
                Some(_) => self.channel_bind(from, request, &reply, now),
            }
        };
        (response.ok(), true)
    }
}
