//! A minimal TURN client over UDP for tests: long-term credentials,
//! Allocate, ChannelBind, Refresh, ChannelData.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use stun_types::{
    attribute::{ErrorCode, Nonce, Realm, Software, Username},
    message::{
        IntegrityAlgorithm, IntegrityKey, LongTermKeyCredentials, Message, MessageWrite,
        MessageWriteExt, MessageWriteVec, Method, TransactionId,
    },
};
use turn_types::{
    attribute::{
        ChannelNumber, Lifetime, RequestedAddressFamily, RequestedTransport, XorPeerAddress,
        XorRelayedAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, REFRESH},
};

/// A client with a nonce and a key, after the 401 exchange.
pub struct TurnClient {
    pub socket: UdpSocket,
    server: SocketAddr,
    username: String,
    realm: String,
    nonce: String,
    key: IntegrityKey,
}

impl TurnClient {
    /// Gets a nonce from `server` with an unauthenticated Allocate (padded
    /// so the 401 fits the server's amplification limit).
    pub fn connect(socket: UdpSocket, server: SocketAddr, username: &str, password: &str) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut first = Message::builder_request(ALLOCATE, MessageWriteVec::new());
        first.add_attribute(&RequestedTransport::new(17)).unwrap();
        let padding = Software::new("turnx test client, padded to earn a full challenge").unwrap();
        first.add_attribute(&padding).unwrap();
        socket.send_to(&first.finish(), server).unwrap();
        let challenge = receive(&socket).expect("a 401 challenge");
        let challenge = Message::from_bytes(&challenge).unwrap();
        let realm = challenge.attribute::<Realm>().unwrap().realm().to_owned();
        let nonce = challenge.attribute::<Nonce>().unwrap().nonce().to_owned();
        let key = LongTermKeyCredentials::new(username.into(), password.into(), realm.clone())
            .make_key(IntegrityAlgorithm::Sha1);
        TurnClient {
            socket,
            server,
            username: username.into(),
            realm,
            nonce,
            key,
        }
    }

    /// Sends a signed request and returns the response's error code (None
    /// on success) and bytes.
    pub fn request(
        &self,
        method: Method,
        add: impl FnOnce(&mut MessageWriteVec, TransactionId),
    ) -> (Option<u16>, Vec<u8>) {
        let mut builder = Message::builder_request(method, MessageWriteVec::new());
        let transaction = builder.transaction_id();
        add(&mut builder, transaction);
        builder
            .add_attribute(&Username::new(&self.username).unwrap())
            .unwrap();
        builder
            .add_attribute(&Realm::new(&self.realm).unwrap())
            .unwrap();
        builder
            .add_attribute(&Nonce::new(&self.nonce).unwrap())
            .unwrap();
        builder
            .add_message_integrity_with_key(&self.key, IntegrityAlgorithm::Sha1)
            .unwrap();
        self.socket.send_to(&builder.finish(), self.server).unwrap();
        let response = receive(&self.socket).expect("a response");
        let code = Message::from_bytes(&response)
            .unwrap()
            .attribute::<ErrorCode>()
            .ok()
            .map(|error| error.code());
        (code, response)
    }

    /// Allocates a UDP relay, IPv6 if `ipv6` (REQUESTED-ADDRESS-FAMILY);
    /// returns the error code or the relayed address.
    pub fn allocate(&self, ipv6: bool) -> Result<SocketAddr, u16> {
        let (code, response) = self.request(ALLOCATE, |b, _| {
            b.add_attribute(&RequestedTransport::new(17)).unwrap();
            if ipv6 {
                let family = RequestedAddressFamily::new(stun_types::AddressFamily::IPV6);
                b.add_attribute(&family).unwrap();
            }
        });
        if let Some(code) = code {
            return Err(code);
        }
        let message = Message::from_bytes(&response).unwrap();
        let relayed = message.attribute::<XorRelayedAddress>().unwrap();
        Ok(relayed.addr(message.transaction_id()))
    }

    /// Binds `channel` to `peer`; `None` on success.
    pub fn channel_bind(&self, channel: u16, peer: SocketAddr) -> Option<u16> {
        self.request(CHANNEL_BIND, |b, t| {
            b.add_attribute(&ChannelNumber::new(channel)).unwrap();
            b.add_attribute(&XorPeerAddress::new(peer, t)).unwrap();
        })
        .0
    }

    /// Refreshes with `lifetime` seconds (0 deletes); `None` on success.
    pub fn refresh(&self, lifetime: u32) -> Option<u16> {
        self.request(REFRESH, |b, _| {
            b.add_attribute(&Lifetime::new(lifetime)).unwrap();
        })
        .0
    }

    /// Sends ChannelData and returns the next datagram received, if any
    /// within the timeout.
    pub fn channel_round_trip(
        &self,
        channel: u16,
        data: &[u8],
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let message = turnx::frame::channel_data(channel, data, false);
        self.socket.send_to(&message, self.server).unwrap();
        let reply = receive(&self.socket);
        self.socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        reply
    }
}

fn receive(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 2048];
    let (len, _) = socket.recv_from(&mut buffer).ok()?;
    Some(buffer[..len].to_vec())
}
