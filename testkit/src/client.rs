//! A minimal blocking TURN client over UDP, for tests and benchmarks: long-
//! term credentials, Allocate, ChannelBind, Refresh, ChannelData, Send and
//! Data indications. It is not
//! meant for applications (no retransmissions, one request at a time).

use std::{
    io,
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
        ChannelNumber, Data, Lifetime, RequestedAddressFamily, RequestedTransport, XorPeerAddress,
        XorRelayedAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, DATA, REFRESH, SEND},
};

/// How long the client waits for a response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// No response arrived in time.
    #[error("no response from the TURN server within {RESPONSE_TIMEOUT:?}")]
    NoResponse,
    /// The response could not be parsed or lacked an attribute.
    #[error("unusable response: {0}")]
    Malformed(String),
    /// The server answered with this error code.
    #[error("the server answered with error {0}")]
    Rejected(u16),
}

impl ClientError {
    /// The STUN error code, if the server rejected the request.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Rejected(code) => Some(*code),
            _ => None,
        }
    }
}

/// A client with a nonce and a key, after the 401 exchange.
pub struct TurnClient {
    /// The client's socket, whose address is the allocation's 5-tuple.
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
    pub fn connect(
        socket: UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Self, ClientError> {
        socket.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        let mut first = Message::builder_request(ALLOCATE, MessageWriteVec::new());
        let padding = Software::new("turnx test client, padded to earn a full challenge")
            .map_err(malformed)?;
        first
            .add_attribute(&RequestedTransport::new(17))
            .map_err(malformed)?;
        first.add_attribute(&padding).map_err(malformed)?;
        let transaction = first.transaction_id();
        socket.send_to(&first.finish(), server)?;
        let challenge = receive(&socket, transaction)?;
        let challenge = Message::from_bytes(&challenge).map_err(malformed)?;
        match challenge.attribute::<ErrorCode>() {
            Ok(error) if error.code() == 401 => {}
            Ok(error) => return Err(ClientError::Rejected(error.code())),
            Err(_) => return Err(malformed("no 401 challenge")),
        }
        let realm = challenge.attribute::<Realm>().map_err(malformed)?;
        let nonce = challenge.attribute::<Nonce>().map_err(malformed)?;
        let realm = realm.realm().to_owned();
        let key = LongTermKeyCredentials::new(username.into(), password.into(), realm.clone())
            .make_key(IntegrityAlgorithm::Sha1);
        Ok(TurnClient {
            socket,
            server,
            username: username.into(),
            realm,
            nonce: nonce.nonce().to_owned(),
            key,
        })
    }

    /// Sends a signed request built by `add` and returns the success
    /// response's bytes.
    pub fn request(
        &self,
        method: Method,
        add: impl FnOnce(&mut MessageWriteVec, TransactionId) -> Result<(), ClientError>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut builder = Message::builder_request(method, MessageWriteVec::new());
        let transaction = builder.transaction_id();
        add(&mut builder, transaction)?;
        builder
            .add_attribute(&Username::new(&self.username).map_err(malformed)?)
            .map_err(malformed)?;
        builder
            .add_attribute(&Realm::new(&self.realm).map_err(malformed)?)
            .map_err(malformed)?;
        builder
            .add_attribute(&Nonce::new(&self.nonce).map_err(malformed)?)
            .map_err(malformed)?;
        builder
            .add_message_integrity_with_key(&self.key, IntegrityAlgorithm::Sha1)
            .map_err(malformed)?;
        self.socket.send_to(&builder.finish(), self.server)?;
        let response = receive(&self.socket, transaction)?;
        let message = Message::from_bytes(&response).map_err(malformed)?;
        match message.attribute::<ErrorCode>() {
            Ok(error) => Err(ClientError::Rejected(error.code())),
            Err(_) => Ok(response),
        }
    }

    /// Allocates a UDP relay, IPv6 if `ipv6` (REQUESTED-ADDRESS-FAMILY);
    /// returns the relayed address.
    pub fn allocate(&self, ipv6: bool) -> Result<SocketAddr, ClientError> {
        let response = self.request(ALLOCATE, |b, _| {
            b.add_attribute(&RequestedTransport::new(17))
                .map_err(malformed)?;
            if ipv6 {
                let family = RequestedAddressFamily::new(stun_types::AddressFamily::IPV6);
                b.add_attribute(&family).map_err(malformed)?;
            }
            Ok(())
        })?;
        let message = Message::from_bytes(&response).map_err(malformed)?;
        let relayed = message
            .attribute::<XorRelayedAddress>()
            .map_err(malformed)?;
        Ok(relayed.addr(message.transaction_id()))
    }

    /// Binds `channel` to `peer`.
    pub fn channel_bind(&self, channel: u16, peer: SocketAddr) -> Result<(), ClientError> {
        self.request(CHANNEL_BIND, |b, t| {
            b.add_attribute(&ChannelNumber::new(channel))
                .map_err(malformed)?;
            b.add_attribute(&XorPeerAddress::new(peer, t))
                .map_err(malformed)
        })
        .map(drop)
    }

    /// Refreshes with `lifetime` seconds (0 deletes).
    pub fn refresh(&self, lifetime: u32) -> Result<(), ClientError> {
        self.request(REFRESH, |b, _| {
            b.add_attribute(&Lifetime::new(lifetime)).map_err(malformed)
        })
        .map(drop)
    }

    /// Sends ChannelData and returns the next datagram received, if any
    /// within `timeout`.
    pub fn channel_round_trip(
        &self,
        channel: u16,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.socket.set_read_timeout(Some(timeout))?;
        let message = crate::frame::channel_data(channel, data, false);
        self.socket.send_to(&message, self.server)?;
        let mut buffer = [0u8; 2048];
        let reply = match self.socket.recv_from(&mut buffer) {
            Ok((len, _)) => Some(buffer[..len].to_vec()),
            Err(err) if is_timeout(&err) => None,
            Err(err) => return Err(err.into()),
        };
        self.socket.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        Ok(reply)
    }
}

impl TurnClient {
    /// Sends `data` to `peer` in a Send indication (the allocation needs a
    /// permission for it) and returns the data of the next Data
    /// indication from `peer`, if one comes within `timeout`. Other
    /// datagrams are skipped.
    pub fn send_round_trip(
        &self,
        peer: SocketAddr,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut builder = Message::builder_indication(SEND, MessageWriteVec::new());
        let transaction = builder.transaction_id();
        builder
            .add_attribute(&XorPeerAddress::new(peer, transaction))
            .map_err(malformed)?;
        builder.add_attribute(&Data::new(data)).map_err(malformed)?;
        self.socket.send_to(&builder.finish(), self.server)?;
        let deadline = std::time::Instant::now() + timeout;
        let mut buffer = [0u8; 2048];
        let reply = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break None;
            }
            self.socket.set_read_timeout(Some(left))?;
            let len = match self.socket.recv_from(&mut buffer) {
                Ok((len, _)) => len,
                Err(err) if is_timeout(&err) => break None,
                Err(err) => return Err(err.into()),
            };
            let Ok(message) = Message::from_bytes(&buffer[..len]) else {
                continue;
            };
            if !message.has_method(DATA) {
                continue;
            }
            let from = message.attribute::<XorPeerAddress>().map_err(malformed)?;
            if from.addr(message.transaction_id()) == peer {
                let data = message.attribute::<Data>().map_err(malformed)?;
                break Some(data.data().to_vec());
            }
        };
        self.socket.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        Ok(reply)
    }
}

fn malformed(err: impl std::fmt::Display) -> ClientError {
    ClientError::Malformed(err.to_string())
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The next datagram that is a response to `transaction` (others, such as
/// late ChannelData, are skipped).
fn receive(socket: &UdpSocket, transaction: TransactionId) -> Result<Vec<u8>, ClientError> {
    let mut buffer = [0u8; 2048];
    loop {
        let len = match socket.recv_from(&mut buffer) {
            Ok((len, _)) => len,
            Err(err) if is_timeout(&err) => return Err(ClientError::NoResponse),
            Err(err) => return Err(err.into()),
        };
        let datagram = &buffer[..len];
        if Message::from_bytes(datagram).is_ok_and(|m| m.transaction_id() == transaction) {
            return Ok(datagram.to_vec());
        }
    }
}
