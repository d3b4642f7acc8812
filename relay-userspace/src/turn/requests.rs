//! The request handlers: Binding, and the authenticated Allocate, Refresh,
//! CreatePermission and ChannelBind (RFC 8656 sections 7 to 12).

use std::{net::SocketAddr, time::Duration};

use stun_types::{
    AddressFamily,
    attribute::{
        AlternateServer, Attribute, AttributeFromRaw, AttributeStaticType, AttributeType,
        MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm, Realm,
        UnknownAttributes, Username, XorMappedAddress,
    },
    message::{Message, MessageWriteExt, StunWriteError},
};
use turn_types::attribute::{
    AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data as DataAttr, DontFragment,
    EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayedAddress,
};

use super::{
    AllocateError, Event, FiveTuple, Now,
    allocation::{Allocation, PERMISSION_LIFETIME},
    counters::RefusalCause,
    policy::{canonical, canonical_transport},
    refusal::Refusal,
    reply::Reply,
    reservation::TokenError,
    server::Server,
};

/// The reason phrase of the 508 that refuses new Allocates while draining
/// without an alternate server.
pub const DRAINING_REASON: &str = "Draining: try another relay";

/// Where an Allocate's relayed address comes from.
enum Source {
    /// New ports, one per family (IPv4, or IPv6 when `true`), even ones
    /// when asked.
    Ports { families: Vec<bool>, even: bool },
    /// An even port, and the next one reserved (EVEN-PORT with R).
    EvenPair { ipv6: bool },
    /// A port reserved earlier, named by its token.
    Reserved(u64),
}

/// The relayed addresses an Allocate obtained.
struct Obtained {
    relayed: Vec<SocketAddr>,
    /// Why the second family of a dual allocation failed, if it did.
    family_error: Option<AllocateError>,
    /// The port reserved for a later Allocate.
    reserved: Option<SocketAddr>,
}

impl Server {
    pub(super) fn binding(&mut self, from: FiveTuple, request: &Message) -> Option<Vec<u8>> {
        let reply = Reply::new(request, None, None);
        if let Some(unknown) = unknown_required_attributes(request) {
            return reply.refuse(Refusal::UnknownAttributes(unknown)).ok();
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

    pub(super) fn allocate(
        &mut self,
        from: FiveTuple,
        request: &Message,
        reply: &Reply,
        username: String,
        now: Now,
    ) -> Result<Vec<u8>, StunWriteError> {
        if let Some(existing) = self.allocations.get(&from) {
            // A retransmission gets the same answer, signed with its user's
            // key, so only that user may have it; anything else is a
            // mismatch (RFC 8656 section 7.2).
            if existing.username != username {
                return reply.refuse(Refusal::WrongCredentials);
            }
            let transaction: u128 = request.transaction_id().into();
            if existing.created_by.0 == transaction {
                return Ok(existing.created_by.1.clone());
            }
            return reply.refuse(Refusal::AllocationMismatch);
        }
        if let Some(alternate) = self.draining {
            return self.refuse_while_draining(from, reply, alternate, &username);
        }
        let source = match allocate_source(request) {
            Ok(source) => source,
            Err(refusal) => return reply.refuse(refusal),
        };
        if let Err(refusal) = self.check_quotas(&username, &source) {
            return reply.refuse(refusal);
        }
        let dont_fragment = request.has_attribute(DontFragment::TYPE);
        let obtained = match self.obtain(&source, &username, dont_fragment, now) {
            Ok(obtained) => obtained,
            Err(refusal) => {
                // A token that is not valid is the client's fault, not a
                // lack of capacity.
                if refusal == Refusal::InsufficientCapacity
                    && !matches!(source, Source::Reserved(_))
                {
                    self.counters.refuse(RefusalCause::Capacity);
                }
                return reply.refuse(refusal);
            }
        };
        let lifetime = self.lifetime(request.attribute::<Lifetime>().ok().map(|l| l.seconds()));
        let token = obtained
            .reserved
            .map(|_| self.ledger.books().reservations.mint());
        let transaction = request.transaction_id();
        let response = reply.success(|b| {
            for address in &obtained.relayed {
                let advertised = self.config.public_addresses.advertise(*address);
                b.add_attribute(&XorRelayedAddress::new(advertised, transaction))?;
            }
            if let Some(error) = obtained.family_error {
                let code = Refusal::from(error).code();
                let error = stun_types::attribute::ErrorCode::new(code, "")?;
                b.add_attribute(&AddressErrorCode::new(AddressFamily::IPV6, error))?;
            }
            b.add_attribute(&Lifetime::new(lifetime.as_secs() as u32))?;
            if let Some(token) = token {
                b.add_attribute(&ReservationToken::new(token))?;
            }
            b.add_attribute(&XorMappedAddress::new(from.client, transaction))
        });
        let Ok(response) = response else {
            for address in obtained.relayed.iter().chain(&obtained.reserved) {
                self.allocator.release(*address);
            }
            return response;
        };
        let mut books = self.ledger.books();
        if let (Some(token), Some(reserved)) = (token, obtained.reserved) {
            books
                .reservations
                .insert(token, reserved, &username, now.at);
            books.count_user(&username);
            self.counters.stats.reservations_made += 1;
        }
        books.allocated(&username, &obtained.relayed);
        drop(books);
        if token.is_some() {
            self.note_reservation(now.at + super::reservation::RESERVATION_LIFETIME);
        }
        let expires = now.at + lifetime;
        for address in &obtained.relayed {
            self.by_relayed.insert(*address, from);
        }
        self.counters.created(from.transport);
        self.pending.push(Event::AllocationCreated {
            client: from,
            relayed: obtained.relayed.clone(),
            username: username.clone(),
            lifetime,
        });
        let mut allocation = Allocation::new(
            from,
            username,
            obtained.relayed,
            expires,
            (transaction.into(), response.clone()),
        );
        allocation.meter = self
            .config
            .bandwidth
            .buckets(self.config.bandwidth.allocation);
        self.allocations.insert(from, allocation);
        self.note_deadline(from, expires);
        Ok(response)
    }

    /// The answer to a new Allocate while draining: 300 Try Alternate with
    /// ALTERNATE-SERVER (signed, as RFC 8489 section 10 requires, since this
    /// runs after authentication), or 508 when there is no alternate of
    /// the client's address family, which the RFC requires it to be.
    fn refuse_while_draining(
        &mut self,
        from: FiveTuple,
        reply: &Reply,
        alternate: Option<SocketAddr>,
        username: &str,
    ) -> Result<Vec<u8>, StunWriteError> {
        self.counters.refuse(RefusalCause::Draining);
        let family = |ip| canonical(ip).is_ipv4();
        let alternate = alternate.filter(|a| family(a.ip()) == family(from.client.ip()));
        tracing::debug!(
            "allocation for {username} from {} refused: draining, alternate {alternate:?}",
            from.client
        );
        match alternate {
            Some(alternate) => reply.error(300, |b| {
                b.add_attribute(&AlternateServer::new(canonical_transport(alternate)))
            }),
            None => reply.error_with_reason(508, DRAINING_REASON, |_| Ok(())),
        }
    }

    /// Whether `username` and the server have room for what `source` takes:
    /// an allocation, plus a reservation for an even pair; redeeming a
    /// reservation turns one into an allocation and takes nothing more.
    fn check_quotas(&mut self, username: &str, source: &Source) -> Result<(), Refusal> {
        let needed = match source {
            Source::Reserved(_) => return Ok(()),
            Source::EvenPair { .. } => 2,
            Source::Ports { .. } => 1,
        };
        let books = self.ledger.books();
        let user_quota = self.config.user_quota;
        if user_quota != 0 && books.held_by(username) + needed > user_quota {
            self.counters.stats.quota_refusals += 1;
            self.counters.refuse(RefusalCause::Quota);
            tracing::info!("allocation for {username} refused: user quota {user_quota} reached");
            return Err(Refusal::AllocationQuotaReached);
        }
        let total_quota = self.config.total_quota;
        if total_quota != 0 && books.held_in_all() + needed > total_quota {
            self.counters.stats.quota_refusals += 1;
            self.counters.refuse(RefusalCause::Capacity);
            tracing::info!("allocation for {username} refused: total quota {total_quota} reached");
            return Err(Refusal::InsufficientCapacity);
        }
        Ok(())
    }

    /// Gets the relayed addresses `source` names from the allocator or the
    /// reservations.
    fn obtain(
        &mut self,
        source: &Source,
        username: &str,
        dont_fragment: bool,
        now: Now,
    ) -> Result<Obtained, Refusal> {
        let mut obtained = Obtained {
            relayed: Vec::new(),
            family_error: None,
            reserved: None,
        };
        match *source {
            Source::Reserved(token) => {
                let mut books = self.ledger.books();
                let reservation =
                    books
                        .reservations
                        .redeem(token, username, now.at)
                        .map_err(|error| {
                            let why = match error {
                                TokenError::Unknown => "unknown, used or expired",
                                TokenError::OtherUser => "issued to another user",
                            };
                            tracing::debug!("reservation token {token:#018x} of {username}: {why}");
                            Refusal::InsufficientCapacity
                        })?;
                // The reservation becomes this allocation.
                books.uncount_user(username);
                drop(books);
                self.counters.stats.reservations_redeemed += 1;
                self.allocator.adopt(reservation.relayed, dont_fragment);
                obtained.relayed.push(reservation.relayed);
            }
            Source::EvenPair { ipv6 } => {
                let (even, next) = self.allocator.allocate_pair(ipv6, dont_fragment)?;
                obtained.relayed.push(even);
                obtained.reserved = Some(next);
            }
            Source::Ports { ref families, even } => {
                for (index, ipv6) in families.iter().enumerate() {
                    match self.allocator.allocate(*ipv6, even, dont_fragment) {
                        Ok(address) => obtained.relayed.push(address),
                        // The second family of a dual allocation may fail alone.
                        Err(error) if index == 1 => obtained.family_error = Some(error),
                        Err(error) => {
                            for address in &obtained.relayed {
                                self.allocator.release(*address);
                            }
                            return Err(error.into());
                        }
                    }
                }
            }
        }
        Ok(obtained)
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

    pub(super) fn refresh(
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
                return reply.refuse(Refusal::PeerAddressFamilyMismatch);
            }
        }
        if requested == Some(0) {
            self.delete(from, super::DeleteReason::Refreshed, now.at);
            return reply.success(|b| b.add_attribute(&Lifetime::new(0)));
        }
        let lifetime = self.lifetime(requested);
        self.pending.push(Event::AllocationRefreshed {
            client: from,
            lifetime,
        });
        if let Some(allocation) = self.allocations.get_mut(&from) {
            allocation.expires = now.at + lifetime;
            allocation.report_lifetimes(now.at, &mut self.pending);
        }
        self.note_deadline(from, now.at + lifetime);
        reply.success(|b| b.add_attribute(&Lifetime::new(lifetime.as_secs() as u32)))
    }

    /// Checks a peer against the allocation's families (443) and the policy
    /// (403): by IP for a permission, with the port for a channel.
    fn check_peer(
        &mut self,
        from: FiveTuple,
        peer: SocketAddr,
        with_port: bool,
    ) -> Result<(), Refusal> {
        if self.allocations[&from].relayed_for(peer.ip()).is_none() {
            return Err(Refusal::PeerAddressFamilyMismatch);
        }
        let policy = &self.config.policy;
        let permitted = if with_port {
            policy.permits_transport(peer)
        } else {
            policy.permits(peer.ip())
        };
        if !permitted {
            self.counters.stats.denied_peers += 1;
            self.counters.refuse(RefusalCause::Policy);
            tracing::info!("peer {peer} refused by policy for {}", from.client);
            return Err(Refusal::Forbidden);
        }
        Ok(())
    }

    pub(super) fn create_permission(
        &mut self,
        from: FiveTuple,
        request: &Message,
        reply: &Reply,
        now: Now,
    ) -> Result<Vec<u8>, StunWriteError> {
        let transaction = request.transaction_id();
        // One pass over the attributes: looking each peer up by index would
        // rescan from the start, quadratic in a request of thousands.
        let peers: Result<Vec<SocketAddr>, _> = request
            .iter_attributes()
            .filter(|(_, raw)| raw.get_type() == XorPeerAddress::TYPE)
            .map(|(_, raw)| {
                XorPeerAddress::from_raw_ref(&raw)
                    .map(|peer| self.bound_peer(peer.addr(transaction)))
            })
            .collect();
        let peers = match peers {
            Ok(peers) if !peers.is_empty() => peers,
            _ => return reply.refuse(Refusal::BadRequest),
        };
        // All or nothing (RFC 8656 section 10.2).
        for peer in &peers {
            if let Err(refusal) = self.check_peer(from, *peer, false) {
                return reply.refuse(refusal);
            }
        }
        let allocation = self
            .allocations
            .get_mut(&from)
            .expect("checked by the caller");
        let cap = self.config.permissions_per_allocation;
        let mut new: Vec<std::net::IpAddr> = peers
            .iter()
            .map(|peer| super::policy::canonical(peer.ip()))
            .filter(|ip| !allocation.holds_permission(*ip))
            .collect();
        new.sort();
        new.dedup();
        if cap != 0 && allocation.permission_count() + new.len() > cap {
            tracing::debug!(
                "CreatePermission from {} over the cap of {cap}",
                from.client
            );
            self.counters.refuse(RefusalCause::AllocationCaps);
            return reply.refuse(Refusal::InsufficientCapacity);
        }
        for peer in peers {
            allocation.permit(peer.ip(), now.at, &mut self.pending);
        }
        allocation.report_lifetimes(now.at, &mut self.pending);
        // A refreshed permission reports nothing else, but is state.
        self.changed = true;
        self.note_deadline(from, now.at + PERMISSION_LIFETIME);
        reply.success(|_| Ok(()))
    }

    pub(super) fn channel_bind(
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
            return reply.refuse(Refusal::BadRequest);
        };
        let channel = channel.channel();
        // One peer, one key: `[::ffff:a.b.c.d]:p` is `a.b.c.d:p`, and this
        // relay's public address is its bound one.
        let peer = self.bound_peer(peer.addr(request.transaction_id()));
        if peer.port() == 0 {
            tracing::debug!(
                "ChannelBind from {} to port 0 of {}",
                from.client,
                peer.ip()
            );
            return reply.refuse(Refusal::BadRequest);
        }
        let max = relay_common::channel_max(self.config.legacy_channel_numbers);
        if !(relay_common::CHANNEL_MIN..=max).contains(&channel) {
            tracing::debug!(
                "ChannelBind from {} with channel {channel:#x} outside {:#x}-{max:#x}",
                from.client,
                relay_common::CHANNEL_MIN
            );
            return reply.refuse(Refusal::BadRequest);
        }
        if let Err(refusal) = self.check_peer(from, peer, true) {
            return reply.refuse(refusal);
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
            return reply.refuse(Refusal::BadRequest);
        }
        let cap = self.config.channels_per_allocation;
        let refresh = allocation.channel_peer(channel).is_some();
        let permits = allocation.holds_permission(peer.ip())
            || self.config.permissions_per_allocation == 0
            || allocation.permission_count() < self.config.permissions_per_allocation;
        if (cap != 0 && !refresh && allocation.channel_count() >= cap) || !permits {
            tracing::debug!("ChannelBind from {} over a cap", from.client);
            self.counters.refuse(RefusalCause::AllocationCaps);
            return reply.refuse(Refusal::InsufficientCapacity);
        }
        allocation.bind(channel, peer, now.at, &mut self.pending);
        allocation.report_lifetimes(now.at, &mut self.pending);
        self.note_deadline(from, now.at + PERMISSION_LIFETIME);
        reply.success(|_| Ok(()))
    }
}

/// Reads an Allocate's REQUESTED-TRANSPORT, address family, EVEN-PORT and
/// RESERVATION-TOKEN attributes into where its address comes from, or the
/// refusal RFC 8656 section 7.2 prescribes for their combination.
fn allocate_source(request: &Message) -> Result<Source, Refusal> {
    let transport = request
        .attribute::<RequestedTransport>()
        .map_err(|_| Refusal::BadRequest)?;
    // UDP is the only relayed transport.
    if transport.protocol() != relay_common::IPPROTO_UDP {
        return Err(Refusal::UnsupportedTransportProtocol);
    }
    let even_port = match request.attribute::<EvenPort>() {
        Ok(even) => Some(even.requested()),
        Err(_) if request.has_attribute(EvenPort::TYPE) => return Err(Refusal::BadRequest),
        Err(_) => None,
    };
    let requested = request
        .attribute::<RequestedAddressFamily>()
        .ok()
        .map(|f| f.family());
    let additional = request
        .attribute::<AdditionalAddressFamily>()
        .ok()
        .map(|f| f.family());
    if request.has_attribute(ReservationToken::TYPE) {
        // Step 5: a token goes with no EVEN-PORT and no family.
        let token = request
            .attribute::<ReservationToken>()
            .map_err(|_| Refusal::BadRequest)?;
        if even_port.is_some() || requested.is_some() || additional.is_some() {
            return Err(Refusal::BadRequest);
        }
        return Ok(Source::Reserved(token.token()));
    }
    let families = match (requested, additional) {
        (Some(_), Some(_)) => return Err(Refusal::BadRequest),
        (None, Some(AddressFamily::IPV6)) => vec![false, true],
        (None, Some(AddressFamily::IPV4)) => return Err(Refusal::BadRequest),
        (Some(AddressFamily::IPV6), None) => vec![true],
        _ => vec![false],
    };
    match even_port {
        // Step 8: a reserved pair is of one family.
        Some(true) if families.len() > 1 => Err(Refusal::BadRequest),
        Some(true) => Ok(Source::EvenPair { ipv6: families[0] }),
        even => Ok(Source::Ports {
            families,
            even: even.is_some(),
        }),
    }
}

/// Comprehension-required attributes of a request this server does not
/// know, for 420 (RFC 8489 section 6.3.1).
pub(super) fn unknown_required_attributes(request: &Message) -> Option<Vec<AttributeType>> {
    const KNOWN: [AttributeType; 19] = [
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
        ReservationToken::TYPE,
    ];
    let unknown: Vec<AttributeType> = request
        .iter_attributes()
        .map(|(_, attribute)| attribute.get_type())
        .filter(|kind| kind.comprehension_required() && !KNOWN.contains(kind))
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}
