//! The TURN server state machine: requests, indications, ChannelData, the
//! relay path from peers, and timers.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

use stun_types::{
    AddressFamily,
    attribute::{
        Attribute, AttributeStaticType, AttributeType, MessageIntegrity, MessageIntegritySha256,
        Nonce, PasswordAlgorithm, PasswordAlgorithmValue, PasswordAlgorithms, Realm,
        UnknownAttributes, Username, XorMappedAddress,
    },
    message::{
        BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageWrite,
        MessageWriteExt, MessageWriteVec, StunWriteError,
    },
};
use turn_types::{
    attribute::{
        AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data as DataAttr, DontFragment,
        EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken,
        XorPeerAddress, XorRelayedAddress,
    },
    channel::ChannelData,
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND},
};

use super::{
    AllocateError, DeleteReason, Event, FiveTuple, Now, RelayAllocator,
    allocation::Allocation,
    auth::{Authenticator, Credentials, NonceStatus, UnknownUser},
    outbox::{Destination, Outbox},
    policy::PeerPolicy,
    reply::{Reply, Signer},
};

/// Highest channel number of RFC 5766, for `legacy_channel_numbers`.
const LEGACY_CHANNEL_MAX: u16 = 0x7FFF;

/// UDP, the only relayed transport (REQUESTED-TRANSPORT value).
const PROTOCOL_UDP: u8 = 17;

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
    /// Allocations one username may hold at once; 0 for no limit.
    pub user_quota: u32,
    /// Allocations the server holds at once; 0 for no limit.
    pub total_quota: u32,
    /// Largest ratio of response to request size for requests that are not
    /// authenticated, on UDP (whose source addresses can be forged).
    pub amplification_limit: f64,
    /// Accept the RFC 5766 channel range 0x4000-0x7FFF, which older
    /// clients (coturn's tools among them) use, instead of RFC 8656's
    /// 0x4000-0x4FFF.
    pub legacy_channel_numbers: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            credentials: Credentials {
                realm: "turnx".into(),
                nonce_lifetime_secs: 600,
                ..Credentials::default()
            },
            policy: PeerPolicy::default(),
            software: Some(concat!("turnx ", env!("CARGO_PKG_VERSION")).into()),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            user_quota: 0,
            total_quota: 0,
            amplification_limit: 1.0,
            legacy_channel_numbers: false,
        }
    }
}

/// Counters of what the server did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Responses not sent because they would have amplified.
    pub dropped_amplification: u64,
    /// Messages that did not parse.
    pub dropped_malformed: u64,
    /// Requests refused by the peer policy (403).
    pub denied_peers: u64,
    /// Allocations refused by quota (486, 508).
    pub quota_refusals: u64,
}

/// The TURN server core. See the module documentation of `turn`.
pub struct Server {
    config: ServerConfig,
    auth: Authenticator,
    allocator: Box<dyn RelayAllocator>,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relayed: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<String, u32>,
    events: VecDeque<Event>,
    /// No state changes before this; recomputed by each timeout sweep.
    deadline: Option<Instant>,
    stats: Stats,
    /// Scratch space for events of one operation.
    pending: Vec<Event>,
}

/// The result of authenticating a request: go on with this signer, or send
/// this response.
enum Authenticated {
    Yes { signer: Signer, username: String },
    No(Option<Vec<u8>>),
}

impl Server {
    /// A server with no allocations. `nonce_key` must be random and secret.
    pub fn new(
        config: ServerConfig,
        nonce_key: [u8; 32],
        allocator: Box<dyn RelayAllocator>,
    ) -> Self {
        Server {
            auth: Authenticator::new(config.credentials.clone(), nonce_key),
            config,
            allocator,
            allocations: HashMap::new(),
            by_relayed: HashMap::new(),
            per_user: HashMap::new(),
            events: VecDeque::new(),
            deadline: None,
            stats: Stats::default(),
            pending: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The next lifecycle event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Handles bytes from a client: one UDP datagram, or one framed message
    /// from a stream.
    pub fn handle_client(&mut self, from: FiveTuple, data: &[u8], now: Now, out: &mut Outbox) {
        match data.first().map(|byte| byte >> 6) {
            Some(0b01) => self.channel_data_from_client(from, data, now, out),
            Some(0b00) => self.stun_from_client(from, data, now, out),
            _ => self.stats.dropped_malformed += 1,
        }
        self.flush_events();
    }

    /// Handles a datagram a peer sent to a relayed address.
    pub fn handle_peer(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) {
        let Some(client) = self.by_relayed.get(&relayed) else {
            return;
        };
        let Some(allocation) = self.allocations.get(client) else {
            return;
        };
        if !allocation.has_permission(peer.ip(), now.at) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        let to = allocation.client;
        match allocation.peer_channel(peer) {
            // The hot path: a ChannelData header in front of the data.
            Some(channel) => out.push_with(Destination::Client(to), |bytes| {
                let start = bytes.len();
                bytes.extend_from_slice(&channel.to_be_bytes());
                bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
                bytes.extend_from_slice(data);
                if to.transport.is_stream() {
                    bytes.resize(start + (4 + data.len()).next_multiple_of(4), 0);
                }
            }),
            None => {
                let mut builder = Message::builder_indication(DATA, MessageWriteVec::new());
                let built = builder
                    .add_attribute(&XorPeerAddress::new(peer, builder.transaction_id()))
                    .and_then(|()| builder.add_attribute(&DataAttr::new(data)));
                if built.is_err() {
                    return;
                }
                out.push(Destination::Client(to), &builder.finish());
            }
        }
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += data.len() as u64;
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.deadline.is_some_and(|deadline| deadline > now.at) {
            return;
        }
        let expired: Vec<FiveTuple> = self
            .allocations
            .values()
            .filter(|allocation| allocation.expires <= now.at)
            .map(|allocation| allocation.client)
            .collect();
        for client in expired {
            self.delete(client, DeleteReason::Expired, now.at);
        }
        let mut deadline: Option<Instant> = None;
        for allocation in self.allocations.values_mut() {
            allocation.expire(now.at, &mut self.pending);
            let next = allocation.next_deadline();
            deadline = Some(deadline.map_or(next, |d| d.min(next)));
        }
        self.deadline = deadline;
        self.flush_events();
    }

    /// The client's TCP or TLS connection closed: its allocation goes too
    /// (RFC 8656 section 3.1).
    pub fn close_client(&mut self, client: FiveTuple, now: Now) {
        self.delete(client, DeleteReason::ConnectionClosed, now.at);
        self.flush_events();
    }

    /// Deletes every allocation, for shutdown.
    pub fn shutdown(&mut self, now: Now) {
        let clients: Vec<FiveTuple> = self.allocations.keys().copied().collect();
        for client in clients {
            self.delete(client, DeleteReason::Shutdown, now.at);
        }
        self.flush_events();
    }

    fn flush_events(&mut self) {
        self.events.extend(self.pending.drain(..));
    }

    fn note_deadline(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    fn delete(&mut self, client: FiveTuple, reason: DeleteReason, now: Instant) {
        let Some(mut allocation) = self.allocations.remove(&client) else {
            return;
        };
        allocation.teardown(now, &mut self.pending);
        for relayed in &allocation.relayed {
            self.by_relayed.remove(relayed);
            self.allocator.release(*relayed);
        }
        if let Some(count) = self.per_user.get_mut(&allocation.username) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&allocation.username);
            }
        }
        self.pending.push(Event::AllocationDeleted {
            client,
            relayed: allocation.relayed,
            reason,
        });
    }

    /// The hot path from clients: ChannelData to the bound peer.
    fn channel_data_from_client(
        &mut self,
        from: FiveTuple,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) {
        let Ok(message) = ChannelData::parse(data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let peer = self
            .allocations
            .get(&from)
            .and_then(|allocation| allocation.channel_peer(message.id()));
        match peer {
            Some(peer) => self.relay_to_peer(from, peer, message.data(), now, out),
            None => self.stats.dropped_no_permission += 1,
        }
    }

    /// Relays a client's application data to `peer` from the allocation's
    /// relayed address of the peer's family, if a permission allows it.
    fn relay_to_peer(
        &mut self,
        from: FiveTuple,
        peer: SocketAddr,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) {
        let relayed = self
            .allocations
            .get(&from)
            .filter(|allocation| allocation.has_permission(peer.ip(), now.at))
            .and_then(|allocation| allocation.relayed_for(peer.ip()));
        let Some(relayed) = relayed else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += data.len() as u64;
        out.push(
            Destination::Peer {
                from: relayed,
                to: peer,
            },
            data,
        );
    }

    fn stun_from_client(&mut self, from: FiveTuple, data: &[u8], now: Now, out: &mut Outbox) {
        let Ok(message) = Message::from_bytes(data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        match message.class() {
            MessageClass::Request => {
                let (response, authenticated) = self.request(from, &message, now);
                let Some(response) = response else {
                    return;
                };
                let over_budget = response.len() > self.amplification_budget(data.len());
                if !authenticated && !from.transport.is_stream() && over_budget {
                    self.stats.dropped_amplification += 1;
                    return;
                }
                out.push(Destination::Client(from), &response);
            }
            MessageClass::Indication if message.method() == SEND => {
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
            return (reply.error(400, |_| Ok(())).ok(), false);
        }
        let (signer, username) = match self.authenticate(from, request, now) {
            Authenticated::Yes { signer, username } => (signer, username),
            Authenticated::No(response) => return (response, false),
        };
        let software = self.config.software.clone();
        let reply = Reply::new(request, Some(&signer), software.as_deref());
        if let Some(unknown) = unknown_required_attributes(request) {
            return (
                reply
                    .error(420, |b| b.add_attribute(&UnknownAttributes::new(&unknown)))
                    .ok(),
                true,
            );
        }
        let response = if method == ALLOCATE {
            self.allocate(from, request, &reply, username, now)
        } else {
            match self.allocations.get(&from) {
                None => reply.error(437, |_| Ok(())),
                Some(allocation) if allocation.username != username => reply.error(441, |_| Ok(())),
                Some(_) if method == REFRESH => self.refresh(from, request, &reply, now),
                Some(_) if method == CREATE_PERMISSION => {
                    self.create_permission(from, request, &reply, now)
                }
                Some(_) => self.channel_bind(from, request, &reply, now),
            }
        };
        (response.ok(), true)
    }

    fn binding(&mut self, from: FiveTuple, request: &Message) -> Option<Vec<u8>> {
        let reply = Reply::new(request, None, None);
        if let Some(unknown) = unknown_required_attributes(request) {
            return reply
                .error(420, |b| b.add_attribute(&UnknownAttributes::new(&unknown)))
                .ok();
        }
        reply
            .success(|b| {
                b.add_attribute(&XorMappedAddress::new(
                    from.client,
                    request.transaction_id(),
                ))
            })
            .ok()
    }

    /// RFC 8489 section 9.2.4, long-term credentials.
    fn authenticate(&mut self, from: FiveTuple, request: &Message, now: Now) -> Authenticated {
        let reply = Reply::new(request, None, None);
        let has_integrity = request.has_attribute(MessageIntegrity::TYPE)
            || request.has_attribute(MessageIntegritySha256::TYPE);
        if !has_integrity {
            return Authenticated::No(self.challenge(from, request, 401, now));
        }
        let (Ok(username), Ok(_realm), Ok(nonce)) = (
            request.attribute::<Username>(),
            request.attribute::<Realm>(),
            request.attribute::<Nonce>(),
        ) else {
            return Authenticated::No(reply.error(400, |_| Ok(())).ok());
        };
        let cookie = match self.auth.check_nonce(nonce.nonce(), &from, now.unix_secs) {
            NonceStatus::Valid { cookie } => cookie,
            NonceStatus::Stale => {
                return Authenticated::No(self.challenge(from, request, 438, now));
            }
        };
        if cookie && !password_algorithms_match(request) {
            return Authenticated::No(reply.error(400, |_| Ok(())).ok());
        }
        let passwords = match self.auth.passwords(username.username(), now.unix_secs) {
            Ok(passwords) => passwords,
            Err(UnknownUser::NoSuchUser | UnknownUser::Expired) => {
                return Authenticated::No(self.challenge(from, request, 401, now));
            }
        };
        let algorithm = if request.has_attribute(MessageIntegritySha256::TYPE) {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        for password in passwords {
            let credentials = LongTermKeyCredentials::new(
                username.username().to_owned(),
                password,
                self.auth.realm().to_owned(),
            );
            let key = credentials.make_key(algorithm);
            if request.validate_integrity_with_key(&key).is_ok() {
                return Authenticated::Yes {
                    signer: Signer { key, algorithm },
                    username: username.username().to_owned(),
                };
            }
        }
        Authenticated::No(self.challenge(from, request, 401, now))
    }

    /// 401 or 438 with REALM and a fresh NONCE. On UDP the response must
    /// fit the amplification limit: first choice is the full form (nonce
    /// with the security-feature cookie, PASSWORD-ALGORITHMS, FINGERPRINT as
    /// the request had it), second the compact one (plain nonce, no
    /// FINGERPRINT); the caller drops what still does not fit.
    fn challenge(
        &self,
        from: FiveTuple,
        request: &Message,
        code: u16,
        now: Now,
    ) -> Option<Vec<u8>> {
        let realm = Realm::new(self.auth.realm()).ok()?;
        let build = |reply: Reply, cookie: bool| {
            let nonce = Nonce::new(&self.auth.nonce(&from, now.unix_secs, cookie))?;
            reply.error(code, |b| {
                b.add_attribute(&realm)?;
                b.add_attribute(&nonce)?;
                if cookie {
                    b.add_attribute(&PasswordAlgorithms::new(&SUPPORTED_PASSWORD_ALGORITHMS))?;
                }
                Ok(())
            })
        };
        let full = build(Reply::new(request, None, None), true).ok()?;
        if from.transport.is_stream()
            || full.len() <= self.amplification_budget(request.as_bytes().len())
        {
            Some(full)
        } else {
            build(Reply::compact(request), false).ok()
        }
    }

    /// The largest response allowed to an unauthenticated UDP request.
    fn amplification_budget(&self, request_len: usize) -> usize {
        (request_len as f64 * self.config.amplification_limit) as usize
    }

    fn allocate(
        &mut self,
        from: FiveTuple,
        request: &Message,
        reply: &Reply,
        username: String,
        now: Now,
    ) -> Result<Vec<u8>, StunWriteError> {
        if let Some(existing) = self.allocations.get(&from) {
            // A retransmission gets the same answer; anything else is a
            // mismatch (RFC 8656 section 7.2).
            let transaction: u128 = request.transaction_id().into();
            if existing.created_by.0 == transaction {
                return Ok(existing.created_by.1.clone());
            }
            return reply.error(437, |_| Ok(()));
        }
        let Ok(transport) = request.attribute::<RequestedTransport>() else {
            return reply.error(400, |_| Ok(()));
        };
        if transport.protocol() != PROTOCOL_UDP {
            return reply.error(442, |_| Ok(()));
        }
        let even_port = request.attribute::<EvenPort>().ok();
        if even_port.as_ref().is_some_and(|even| even.requested())
            || request.has_attribute(ReservationToken::TYPE)
        {
            // Port reservations are not supported: refuse clearly.
            return reply.error(508, |_| Ok(()));
        }
        let requested = request
            .attribute::<RequestedAddressFamily>()
            .ok()
            .map(|f| f.family());
        let additional = request
            .attribute::<AdditionalAddressFamily>()
            .ok()
            .map(|f| f.family());
        let families: Vec<bool> = match (requested, additional) {
            (Some(_), Some(_)) => return reply.error(400, |_| Ok(())),
            (None, Some(AddressFamily::IPV6)) => vec![false, true],
            (None, Some(AddressFamily::IPV4)) => return reply.error(400, |_| Ok(())),
            (Some(AddressFamily::IPV6), None) => vec![true],
            _ => vec![false],
        };
        let user_count = self.per_user.get(&username).copied().unwrap_or(0);
        if self.config.user_quota != 0 && user_count >= self.config.user_quota {
            self.stats.quota_refusals += 1;
            tracing::info!(
                "allocation for {username} refused: user quota {} reached",
                self.config.user_quota
            );
            return reply.error(486, |_| Ok(()));
        }
        if self.config.total_quota != 0 && self.allocations.len() as u32 >= self.config.total_quota
        {
            self.stats.quota_refusals += 1;
            tracing::info!(
                "allocation for {username} refused: total quota {} reached",
                self.config.total_quota
            );
            return reply.error(508, |_| Ok(()));
        }
        let dont_fragment = request.has_attribute(DontFragment::TYPE);
        let mut relayed = Vec::new();
        let mut family_error = None;
        for (index, ipv6) in families.iter().enumerate() {
            match self
                .allocator
                .allocate(*ipv6, even_port.is_some(), dont_fragment)
            {
                Ok(address) => relayed.push(address),
                // The second family of a dual allocation may fail alone.
                Err(error) if index == 1 => family_error = Some(error),
                Err(AllocateError::FamilyNotSupported) => return reply.error(440, |_| Ok(())),
                Err(AllocateError::InsufficientCapacity) => return reply.error(508, |_| Ok(())),
            }
        }
        let lifetime = self.lifetime(request.attribute::<Lifetime>().ok().map(|l| l.seconds()));
        let transaction = request.transaction_id();
        let response = reply.success(|b| {
            for address in &relayed {
                b.add_attribute(&XorRelayedAddress::new(*address, transaction))?;
            }
            if let Some(error) = family_error {
                let code = match error {
                    AllocateError::FamilyNotSupported => 440,
                    AllocateError::InsufficientCapacity => 508,
                };
                let error = stun_types::attribute::ErrorCode::new(code, "")?;
                b.add_attribute(&AddressErrorCode::new(AddressFamily::IPV6, error))?;
            }
            b.add_attribute(&Lifetime::new(lifetime.as_secs() as u32))?;
            b.add_attribute(&XorMappedAddress::new(from.client, transaction))
        });
        let Ok(response) = response else {
            for address in relayed {
                self.allocator.release(address);
            }
            return response;
        };
        let expires = now.at + lifetime;
        for address in &relayed {
            self.by_relayed.insert(*address, from);
        }
        *self.per_user.entry(username.clone()).or_insert(0) += 1;
        self.pending.push(Event::AllocationCreated {
            client: from,
            relayed: relayed.clone(),
            username: username.clone(),
            lifetime,
        });
        self.allocations.insert(
            from,
            Allocation::new(
                from,
                username,
                relayed,
                expires,
                (transaction.into(), response.clone()),
            ),
        );
        self.note_deadline(expires);
        Ok(response)
    }

    /// The granted lifetime: the default when the client asks for less or
    /// nothing, capped at the maximum (RFC 8656 section 7.2).
    fn lifetime(&self, requested_secs: Option<u32>) -> Duration {
        let requested = requested_secs.map_or(self.config.default_lifetime, |s| {
            Duration::from_secs(s.into())
        });
        requested
            .max(self.config.default_lifetime)
            .min(self.config.max_lifetime)
    }

    fn refresh(
        &mut self,
        from: FiveTuple,
        request: &Message,
        reply: &Reply,
        now: Now,
    ) -> Result<Vec<u8>, StunWriteError> {
        let requested = request.attribute::<Lifetime>().ok().map(|l| l.seconds());
        if let Ok(family) = request.attribute::<RequestedAddressFamily>() {
            let want_v6 = family.family() == AddressFamily::IPV6;
            let has = self.allocations[&from]
                .relayed
                .iter()
                .any(|a| a.is_ipv6() == want_v6);
            if !has {
                return reply.error(443, |_| Ok(()));
            }
        }
        if requested == Some(0) {
            self.delete(from, DeleteReason::Refreshed, now.at);
            return reply.success(|b| b.add_attribute(&Lifetime::new(0)));
        }
        let lifetime = self.lifetime(requested);
        if let Some(allocation) = self.allocations.get_mut(&from) {
            allocation.expires = now.at + lifetime;
        }
        self.pending.push(Event::AllocationRefreshed {
            client: from,
            lifetime,
        });
        self.note_deadline(now.at + lifetime);
        reply.success(|b| b.add_attribute(&Lifetime::new(lifetime.as_secs() as u32)))
    }

    /// Checks a peer against the allocation's families (443) and the policy
    /// (403).
    fn check_peer(&mut self, from: FiveTuple, peer: SocketAddr) -> Result<(), u16> {
        if self.allocations[&from].relayed_for(peer.ip()).is_none() {
            return Err(443);
        }
        if !self.config.policy.permits(peer.ip()) {
            self.stats.denied_peers += 1;
            tracing::info!("peer {peer} refused by policy for {}", from.client);
            return Err(403);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        from: FiveTuple,
        request: &Message,
        reply: &Reply,
        now: Now,
    ) -> Result<Vec<u8>, StunWriteError> {
        let transaction = request.transaction_id();
        let mut peers = Vec::new();
        for index in 0.. {
            match request.nth_attribute::<XorPeerAddress>(index) {
                Ok(peer) => peers.push(peer.addr(transaction)),
                Err(_) => break,
            }
        }
        if peers.is_empty() {
            return reply.error(400, |_| Ok(()));
        }
        // All or nothing (RFC 8656 section 10.2).
        for peer in &peers {
            if let Err(code) = self.check_peer(from, *peer) {
                return reply.error(code, |_| Ok(()));
            }
        }
        let allocation = self
            .allocations
            .get_mut(&from)
            .expect("checked by the caller");
        for peer in peers {
            allocation.permit(peer.ip(), now.at, &mut self.pending);
        }
        self.note_deadline(now.at + super::allocation::PERMISSION_LIFETIME);
        reply.success(|_| Ok(()))
    }

    fn channel_bind(
        &mut self,
        from: FiveTuple,
        request: &Message,
        reply: &Reply,
        now: Now,
    ) -> Result<Vec<u8>, StunWriteError> {
        let (channel, peer) = (
            request.attribute::<ChannelNumber>(),
            request.attribute::<XorPeerAddress>(),
        );
        let (Ok(channel), Ok(peer)) = (channel, peer) else {
            tracing::debug!(
                "ChannelBind from {} lacks CHANNEL-NUMBER or XOR-PEER-ADDRESS: {request}",
                from.client
            );
            return reply.error(400, |_| Ok(()));
        };
        let channel = channel.channel();
        let peer = peer.addr(request.transaction_id());
        let max = if self.config.legacy_channel_numbers {
            LEGACY_CHANNEL_MAX
        } else {
            relay_common::CHANNEL_MAX
        };
        if !(relay_common::CHANNEL_MIN..=max).contains(&channel) {
            tracing::debug!(
                "ChannelBind from {} with channel {channel:#x} outside {:#x}-{max:#x}",
                from.client,
                relay_common::CHANNEL_MIN
            );
            return reply.error(400, |_| Ok(()));
        }
        if let Err(code) = self.check_peer(from, peer) {
            return reply.error(code, |_| Ok(()));
        }
        let allocation = self
            .allocations
            .get_mut(&from)
            .expect("checked by the caller");
        if let Err(conflict) = allocation.check_bind(channel, peer) {
            tracing::debug!(
                "ChannelBind {channel:#x} to {peer} from {} refused: {conflict:?}",
                from.client
            );
            return reply.error(400, |_| Ok(()));
        }
        allocation.bind(channel, peer, now.at, &mut self.pending);
        self.note_deadline(now.at + super::allocation::PERMISSION_LIFETIME);
        reply.success(|_| Ok(()))
    }

    fn send_indication(
        &mut self,
        from: FiveTuple,
        indication: &Message,
        now: Now,
        out: &mut Outbox,
    ) {
        let (Ok(peer), Ok(data)) = (
            indication.attribute::<XorPeerAddress>(),
            indication.attribute::<DataAttr>(),
        ) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let peer = peer.addr(indication.transaction_id());
        self.relay_to_peer(from, peer, data.data(), now, out);
    }
}

/// The password algorithms offered in PASSWORD-ALGORITHMS, strongest first.
const SUPPORTED_PASSWORD_ALGORITHMS: [PasswordAlgorithmValue; 2] =
    [PasswordAlgorithmValue::SHA256, PasswordAlgorithmValue::MD5];

/// With the security-feature cookie, the request must echo our
/// PASSWORD-ALGORITHMS and pick one of them (RFC 8489 section 9.2.4).
fn password_algorithms_match(request: &Message) -> bool {
    let (Ok(list), Ok(chosen)) = (
        request.attribute::<PasswordAlgorithms>(),
        request.attribute::<PasswordAlgorithm>(),
    ) else {
        // A client unaware of the feature sends neither: plain RFC 5389.
        return !request.has_attribute(PasswordAlgorithms::TYPE)
            && !request.has_attribute(PasswordAlgorithm::TYPE);
    };
    list.algorithms() == SUPPORTED_PASSWORD_ALGORITHMS
        && SUPPORTED_PASSWORD_ALGORITHMS.contains(&chosen.algorithm())
}

/// Comprehension-required attributes of a request this server does not
/// know, for 420 (RFC 8489 section 6.3.1).
fn unknown_required_attributes(request: &Message) -> Option<Vec<AttributeType>> {
    const KNOWN: [AttributeType; 18] = [
        Username::TYPE,
        MessageIntegrity::TYPE,
        MessageIntegritySha256::TYPE,
        stun_types::attribute::ErrorCode::TYPE,
        UnknownAttributes::TYPE,
        Realm::TYPE,
        Nonce::TYPE,
        PasswordAlgorithm::TYPE,
        XorMappedAddress::TYPE,
        ChannelNumber::TYPE,
        Lifetime::TYPE,
        XorPeerAddress::TYPE,
        DataAttr::TYPE,
        XorRelayedAddress::TYPE,
        RequestedAddressFamily::TYPE,
        EvenPort::TYPE,
        RequestedTransport::TYPE,
        DontFragment::TYPE,
    ];
    let unknown: Vec<AttributeType> = request
        .iter_attributes()
        .map(|(_, attribute)| attribute.get_type())
        .filter(|kind| {
            kind.comprehension_required()
                && !KNOWN.contains(kind)
                && *kind != ReservationToken::TYPE
        })
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}
