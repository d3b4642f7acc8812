//! Tests of what operators see and do: counters, draining, live
//! reconfiguration, advertised public addresses and the state views.

use std::net::IpAddr;

use stun_types::attribute::{AlternateServer, Software};

use super::*;
use crate::turn::{
    DRAINING_REASON, PublicAddresses,
    counters::{Indication, Method as Kind, RefusalCause},
};

fn refresh(signing: &Signing, lifetime: u32) -> Vec<u8> {
    build(REFRESH, Some(signing), |b, _| {
        b.add_attribute(&Lifetime::new(lifetime)).unwrap();
    })
}

fn rest_user(id: &str) -> (String, String) {
    let name = if id.is_empty() {
        format!("{}", START_UNIX + 1000)
    } else {
        format!("{}:{id}", START_UNIX + 1000)
    };
    let password = rest_password(SECRET, &name);
    (name, password)
}

/// Allocates for `from` as `username` and returns the signing credentials.
fn allocate_as(harness: &mut Harness, from: FiveTuple, username: &str, password: &str) -> Signing {
    let signing = login(harness, from, username, password);
    expect_success(
        harness,
        from,
        &build(ALLOCATE, Some(&signing), allocate_body),
    );
    signing
}

#[test]
fn counters_follow_requests_responses_data_and_refusals() {
    let mut harness = Harness::new();
    let from = client(41000);
    let (signing, relayed) = allocate(&mut harness, from);
    let counters = harness.server.counters().clone();
    assert_eq!(counters.requests(Kind::Allocate), 2);
    assert_eq!(counters.response_count(Kind::Allocate, Some(401)), 1);
    assert_eq!(counters.response_count(Kind::Allocate, None), 1);
    assert_eq!(counters.unauthenticated_requests, 1, "the first Allocate");
    assert_eq!(counters.unauthenticated_responses, 1);
    assert_eq!(
        counters.refused(RefusalCause::Auth),
        0,
        "a challenge is no refusal"
    );
    assert_eq!(counters.allocations_created(Transport::Udp), 1);
    assert_eq!(counters.allocations_created(Transport::Tcp), 0);

    expect_success(&mut harness, from, &bare(BINDING));
    // Wrong password, then a stale nonce, from another client.
    let other = client(41001);
    let wrong = login(&mut harness, other, USER, "nope");
    expect_error(
        &mut harness,
        other,
        &build(ALLOCATE, Some(&wrong), allocate_body),
        401,
    );
    let stale = Signing {
        nonce: "AAAAAAAA".into(),
        ..signing.clone()
    };
    expect_error(&mut harness, from, &refresh(&stale, 600), 438);
    // The policy: 10.0.0.1 is outside the allowed blocks.
    let outside: SocketAddr = "10.0.0.1:7000".parse().unwrap();
    expect_error(&mut harness, from, &permission(&signing, outside), 403);
    assert!(
        harness
            .send(from, &send_indication(outside, b"x"))
            .is_empty()
    );

    // Data both ways, counted on arrival, permitted or not.
    let to = peer(2, 7000);
    assert!(
        harness
            .send(from, &send_indication(to, b"early"))
            .is_empty()
    );
    expect_success(&mut harness, from, &permission(&signing, to));
    assert_eq!(harness.send(from, &send_indication(to, b"hello")).len(), 1);
    assert_eq!(harness.peer_sends(relayed, to, b"back!!").len(), 1);
    assert!(harness.peer_sends(relayed, peer(3, 1), b"no").is_empty());
    expect_success(&mut harness, from, &channel_bind(&signing, 0x4000, to));
    let data = testkit::frame::channel_data(0x4000, b"media", false);
    assert_eq!(harness.send(from, &data).len(), 1);
    expect_success(&mut harness, from, &refresh(&signing, 0));

    let counters = harness.server.counters();
    assert_eq!(counters.requests(Kind::Binding), 1);
    assert_eq!(counters.requests(Kind::Allocate), 4);
    assert_eq!(counters.requests(Kind::Refresh), 2);
    assert_eq!(counters.requests(Kind::CreatePermission), 2);
    assert_eq!(counters.requests(Kind::ChannelBind), 1);
    assert_eq!(counters.response_count(Kind::Binding, None), 1);
    assert_eq!(counters.response_count(Kind::Allocate, Some(401)), 3);
    assert_eq!(counters.response_count(Kind::Refresh, Some(438)), 1);
    assert_eq!(
        counters.response_count(Kind::CreatePermission, Some(403)),
        1
    );
    assert!(
        counters
            .responses()
            .any(|entry| entry == (Kind::Refresh, None, 1))
    );
    // Binding, three first Allocates... and the 401 to the wrong password,
    // the 438: answered without a valid MESSAGE-INTEGRITY.
    assert_eq!(counters.unauthenticated_requests, 5);
    assert_eq!(counters.unauthenticated_responses, 5);
    assert_eq!(counters.refused(RefusalCause::Auth), 1);
    assert_eq!(counters.refused(RefusalCause::StaleNonce), 1);
    // The Send to it has no permission to pass: not the policy's.
    assert_eq!(counters.refused(RefusalCause::Policy), 1);
    assert_eq!(counters.stats.dropped_no_permission, 3);
    assert_eq!(counters.indications(Indication::Send), 3);
    assert_eq!(counters.indications(Indication::Data), 1);
    assert_eq!(counters.from_clients.packets, 4);
    assert_eq!(counters.from_clients.bytes, (1 + 5 + 5 + 5) as u64);
    assert_eq!(
        (counters.from_peers.packets, counters.from_peers.bytes),
        (2, 8)
    );
    assert_eq!(counters.stats.to_peer_packets, 2);
    assert_eq!(counters.stats.to_client_packets, 1);
    assert_eq!(counters.allocations_deleted(DeleteReason::Refreshed), 1);
    assert_eq!(counters.allocations_deleted(DeleteReason::Expired), 0);
    assert_eq!(harness.server.stats(), counters.stats);
}

#[test]
fn quota_capacity_and_amplification_refusals_are_counted() {
    let mut config = config();
    config.user_quota = 1;
    config.total_quota = 2;
    config.permissions_per_allocation = 1;
    let mut harness = Harness::with(config, true);
    let (signing, _) = allocate(&mut harness, client(41010));
    let again = login(&mut harness, client(41011), USER, PASSWORD);
    let request = build(ALLOCATE, Some(&again), allocate_body);
    expect_error(&mut harness, client(41011), &request, 486);
    let (bob, password) = rest_user("bob");
    allocate_as(&mut harness, client(41012), &bob, &password);
    let (carol, password) = rest_user("carol");
    let carol = login(&mut harness, client(41013), &carol, &password);
    let request = build(ALLOCATE, Some(&carol), allocate_body);
    expect_error(&mut harness, client(41013), &request, 508);
    let peers = [peer(2, 1), peer(3, 1)];
    expect_error(
        &mut harness,
        client(41010),
        &permissions(&signing, &peers),
        508,
    );
    let counters = harness.server.counters();
    assert_eq!(counters.refused(RefusalCause::Quota), 1);
    assert_eq!(counters.refused(RefusalCause::Capacity), 1);
    assert_eq!(counters.refused(RefusalCause::AllocationCaps), 1);
    assert_eq!(counters.stats.quota_refusals, 2);

    let mut config = self::config();
    config.amplification.ratio = 0.5;
    let mut harness = Harness::with(config, true);
    assert!(harness.request(client(41014), &bare(BINDING)).is_none());
    let counters = harness.server.counters();
    assert_eq!(counters.refused(RefusalCause::AmplificationRatio), 1);
    assert_eq!(counters.unauthenticated_requests, 1);
    assert_eq!(counters.unauthenticated_responses, 0);
    assert_eq!(counters.response_count(Kind::Binding, None), 0);
}

fn key_of(signing: &Signing) -> stun_types::message::IntegrityKey {
    LongTermKeyCredentials::new(
        signing.username.clone(),
        signing.password.clone(),
        REALM.into(),
    )
    .make_key(IntegrityAlgorithm::Sha1)
}

#[test]
fn draining_refuses_new_allocations_and_serves_the_rest() {
    let mut harness = Harness::new();
    let alice = client(41020);
    let signing = login(&mut harness, alice, USER, PASSWORD);
    let request = build(ALLOCATE, Some(&signing), allocate_body);
    let success = expect_success(&mut harness, alice, &request);
    let bob = client(41021);
    let bob_signing = login(&mut harness, bob, USER, PASSWORD);

    let alternate: SocketAddr = "198.18.9.9:3478".parse().unwrap();
    assert!(!harness.server.is_draining());
    harness.server.set_draining(Some(alternate));
    assert!(harness.server.is_draining());
    assert_eq!(
        harness.request(alice, &request).unwrap(),
        success,
        "retransmission"
    );
    let response = harness
        .request(bob, &build(ALLOCATE, Some(&bob_signing), allocate_body))
        .unwrap();
    assert_eq!(error_code(&response), Some(300));
    let message = Message::from_bytes(&response).unwrap();
    assert_eq!(
        message.attribute::<AlternateServer>().unwrap().server(),
        alternate
    );
    assert!(
        message
            .validate_integrity_with_key(&key_of(&bob_signing))
            .is_ok(),
        "a 300 must be signed"
    );
    // Nothing else changes for alice.
    let to = peer(2, 7000);
    expect_success(&mut harness, alice, &permission(&signing, to));
    expect_success(&mut harness, alice, &channel_bind(&signing, 0x4000, to));
    assert_eq!(harness.send(alice, &send_indication(to, b"x")).len(), 1);
    let data = testkit::frame::channel_data(0x4000, b"media", false);
    assert_eq!(harness.send(alice, &data).len(), 1);
    expect_success(&mut harness, alice, &refresh(&signing, 600));

    // No alternate, or one of another family: 508 with the reason.
    for alternate in [None, Some("[fd00::9]:3478".parse().unwrap())] {
        harness.server.set_draining(alternate);
        let response = harness
            .request(bob, &build(ALLOCATE, Some(&bob_signing), allocate_body))
            .unwrap();
        let message = Message::from_bytes(&response).unwrap();
        let error = message.attribute::<ErrorCode>().unwrap();
        assert_eq!((error.code(), error.reason()), (508, DRAINING_REASON));
        assert!(!message.has_attribute(AlternateServer::TYPE));
    }
    // A reservation token does not get around it.
    let response = harness
        .request(bob, &build(ALLOCATE, Some(&bob_signing), with_token(7)))
        .unwrap();
    assert_eq!(error_code(&response), Some(508));
    let counters = harness.server.counters();
    assert_eq!(counters.refused(RefusalCause::Draining), 4);
    assert_eq!(counters.refused(RefusalCause::Capacity), 0);
    assert_eq!(counters.response_count(Kind::Allocate, Some(300)), 1);
    assert_eq!(harness.server.allocation_count(), 1);
}

#[test]
fn reconfigure_applies_new_settings_and_keeps_state() {
    let mut harness = Harness::new();
    let alice = client(41030);
    let (signing, relayed) = allocate(&mut harness, alice);
    let to = peer(2, 7000);
    expect_success(&mut harness, alice, &permission(&signing, to));
    let local: SocketAddr = "198.18.3.3:5000".parse().unwrap();
    harness.server.set_local_addresses([local.ip()]);

    let mut config = config();
    config.credentials.users.insert("carol".into(), "pw".into());
    config.credentials.secrets = vec!["new-secret".into()];
    config.policy.denied.push("198.18.1.2/32".parse().unwrap());
    config.policy.own = Default::default();
    config.user_quota = 1;
    config.max_lifetime = Duration::from_secs(900);
    config.software = Some("turnx reloaded".into());
    config.bandwidth.allocation = 1;
    harness.server.reconfigure(config);

    // Alice's nonce, permission and allocation still work.
    let response = expect_success(&mut harness, alice, &refresh(&signing, 3600));
    let message = Message::from_bytes(&response).unwrap();
    assert_eq!(message.attribute::<Lifetime>().unwrap().seconds(), 900);
    assert_eq!(
        message.attribute::<Software>().unwrap().software(),
        "turnx reloaded"
    );
    assert_eq!(harness.send(alice, &send_indication(to, b"kept")).len(), 1);
    assert_eq!(harness.peer_sends(relayed, to, b"kept").len(), 1);
    // New requests meet the new policy; the learnt addresses stay.
    expect_error(&mut harness, alice, &permission(&signing, to), 403);
    expect_error(&mut harness, alice, &permission(&signing, local), 403);
    let other_relay = SocketAddr::new(relayed.ip(), 60000);
    expect_success(&mut harness, alice, &permission(&signing, other_relay));
    // The new quota, users and secrets.
    let again = login(&mut harness, client(41031), USER, PASSWORD);
    let request = build(ALLOCATE, Some(&again), allocate_body);
    expect_error(&mut harness, client(41031), &request, 486);
    allocate_as(&mut harness, client(41032), "carol", "pw");
    let (bob, old_password) = rest_user("bob");
    let old = login(&mut harness, client(41033), &bob, &old_password);
    let request = build(ALLOCATE, Some(&old), allocate_body);
    expect_error(&mut harness, client(41033), &request, 401);
    allocate_as(
        &mut harness,
        client(41034),
        &bob,
        &rest_password("new-secret", &bob),
    );
    // Bandwidth limits are not reloaded.
    assert_eq!(harness.server.config.bandwidth.allocation, 0);
}

fn public_config() -> ServerConfig {
    ServerConfig {
        public_addresses: PublicAddresses {
            ipv4: Some("203.0.113.7".parse().unwrap()),
            ipv6: None,
        },
        ..config()
    }
}

#[test]
fn public_addresses_are_advertised_and_mean_the_bound_ones() {
    let mut harness = Harness::with(public_config(), true);
    let (alice, bob) = (client(41040), client(41041));
    let (signing_a, public_a) = allocate(&mut harness, alice);
    let (signing_b, public_b) = allocate(&mut harness, bob);
    let public_ip: IpAddr = "203.0.113.7".parse().unwrap();
    assert_eq!((public_a.ip(), public_b.ip()), (public_ip, public_ip));
    let bound_a = SocketAddr::new(RELAY_V4.parse().unwrap(), public_a.port());
    let bound_b = SocketAddr::new(RELAY_V4.parse().unwrap(), public_b.port());
    let created: Vec<Vec<SocketAddr>> = harness
        .events()
        .into_iter()
        .filter_map(|event| match event {
            Event::AllocationCreated { relayed, .. } => Some(relayed),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        [vec![bound_a], vec![bound_b]],
        "events keep the bound ones"
    );

    // Each names the other by the public address it was given.
    expect_success(&mut harness, alice, &permission(&signing_a, public_b));
    expect_success(
        &mut harness,
        alice,
        &channel_bind(&signing_a, 0x4000, public_b),
    );
    expect_success(&mut harness, bob, &permission(&signing_b, public_a));
    assert_eq!(
        harness.events(),
        [
            Event::PermissionCreated {
                client: alice,
                peer: bound_b.ip()
            },
            Event::ChannelBound {
                client: alice,
                relayed: bound_a,
                channel: 0x4000,
                peer: bound_b
            },
            Event::ChannelLifetime {
                client: alice,
                channel: 0x4000,
                lifetime: Duration::from_secs(300)
            },
            Event::PermissionCreated {
                client: bob,
                peer: bound_a.ip()
            },
        ]
    );
    let data = testkit::frame::channel_data(0x4000, b"hi bob", false);
    assert_eq!(
        harness.send(alice, &data),
        [Transmit::ToPeer {
            from: bound_a,
            to: bound_b,
            data: b"hi bob".to_vec()
        }]
    );
    // Bob has no channel: a Data indication shows alice's public address.
    let out = harness.peer_sends(bound_b, bound_a, b"hi bob");
    let [Transmit::ToClient { to, data }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(*to, bob);
    let message = Message::from_bytes(data).unwrap();
    let shown = message.attribute::<XorPeerAddress>().unwrap();
    assert_eq!(shown.addr(message.transaction_id()), public_a);
    assert_eq!(
        harness.send(bob, &send_indication(public_a, b"hi alice")),
        [Transmit::ToPeer {
            from: bound_b,
            to: bound_a,
            data: b"hi alice".to_vec()
        }]
    );
    // Other ports of the public address are the node's: refused.
    let service = SocketAddr::new(public_ip, 22);
    expect_error(
        &mut harness,
        alice,
        &channel_bind(&signing_a, 0x4001, service),
        403,
    );
    assert!(
        harness
            .send(alice, &send_indication(service, b"x"))
            .is_empty()
    );

    let view = harness.server.allocations_view(harness.now().at);
    assert_eq!(view[0].relayed, [bound_a]);
    assert_eq!(view[0].advertised, [public_a]);
}

#[test]
fn views_of_allocations_transports_and_users() {
    let mut harness = Harness::new();
    let alice = client(41050);
    let (signing, relayed) = allocate(&mut harness, alice);
    let to = peer(2, 7000);
    expect_success(&mut harness, alice, &channel_bind(&signing, 0x4001, to));
    harness.elapsed += Duration::from_secs(60);
    expect_success(&mut harness, alice, &permission(&signing, peer(3, 1)));
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..client(41051)
    };
    let (bob, password) = rest_user("bob");
    allocate_as(&mut harness, tcp, &bob, &password);
    allocate_as(&mut harness, client(41052), &bob, &password);
    let (anonymous, password) = rest_user("");
    allocate_as(&mut harness, client(41053), &anonymous, &password);

    harness.elapsed += Duration::from_secs(40);
    let view = harness.server.allocations_view(harness.now().at);
    assert_eq!(view.len(), 4);
    let first = view.iter().find(|v| v.client == alice).unwrap();
    assert_eq!(first.username, USER);
    assert_eq!(
        (first.relayed.clone(), first.advertised.clone()),
        (vec![relayed], vec![relayed])
    );
    assert_eq!(first.expires_in, Duration::from_secs(500));
    assert_eq!(
        first.permissions,
        [
            (peer(2, 0).ip(), Duration::from_secs(200)),
            (peer(3, 0).ip(), Duration::from_secs(260)),
        ]
    );
    assert_eq!(
        first.channels,
        [ChannelView {
            number: 0x4001,
            peer: to,
            relayed,
            expires_in: Duration::from_secs(500),
        }]
    );
    assert_eq!(
        harness.server.allocations_by_transport(),
        [
            (Transport::Udp, 3),
            (Transport::Tcp, 1),
            (Transport::Tls, 0)
        ]
    );
    let mut users: Vec<(String, u32)> = harness
        .server
        .user_allocations()
        .map(|(user, count)| (user.to_owned(), count))
        .collect();
    users.sort();
    assert_eq!(users, [("".into(), 1), (USER.into(), 1), ("bob".into(), 2)]);
}
