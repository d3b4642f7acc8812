//! Which addresses the relay binds relayed sockets to, and which it
//! advertises: on a NATed node (a cloud VM whose public IP is DNATed to
//! it) clients must be told the public address, while the sockets and the
//! kernel path keep the bound one.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use stun_types::{
    attribute::XorMappedAddress,
    message::{BINDING, Message, MessageWrite as _, MessageWriteExt as _, MessageWriteVec},
};
use thiserror::Error;

use crate::config::ServerConfig;

/// At most one address per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    /// The IPv4 address, if any.
    pub ipv4: Option<IpAddr>,
    /// The IPv6 address, if any.
    pub ipv6: Option<IpAddr>,
}

impl Families {
    /// The first address of each family in `candidates`.
    pub fn first_of(candidates: &[IpAddr]) -> Families {
        Families {
            ipv4: candidates.iter().copied().find(IpAddr::is_ipv4),
            ipv6: candidates.iter().copied().find(IpAddr::is_ipv6),
        }
    }

    /// The addresses, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        [self.ipv4, self.ipv6].into_iter().flatten()
    }

    /// `self`'s address of each family, else `fallback`'s.
    pub fn or(self, fallback: Families) -> Families {
        Families {
            ipv4: self.ipv4.or(fallback.ipv4),
            ipv6: self.ipv6.or(fallback.ipv6),
        }
    }
}

/// The addresses relayed sockets bind to: `[server] relay_addresses`, else
/// the specific listen addresses, else the first addresses of the
/// interfaces that carry a default route.
pub fn relay_addresses(server: &ServerConfig) -> Families {
    let mut candidates = server.relay_addresses.clone();
    if candidates.is_empty() {
        candidates = server
            .listen
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified())
            .collect();
    }
    if candidates.is_empty() {
        let names = crate::interfaces::default_route_interfaces().unwrap_or_default();
        candidates = crate::interfaces::addresses_of(&names).unwrap_or_default();
    }
    Families::first_of(&candidates)
}

/// Why the public address could not be discovered.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    /// The STUN server's name did not resolve.
    #[error("cannot resolve the STUN server {server}: {reason}")]
    Resolve {
        /// The configured server.
        server: String,
        /// What the resolver said.
        reason: String,
    },
    /// Sending or receiving failed.
    #[error("asking the STUN server {server} from {from}: {source}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The local address asked from.
        from: IpAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No usable answer in time.
    #[error(
        "the STUN server {server} did not answer a Binding request from {from} within {STUN_TIMEOUT:?}; \
         check [server] public_address_stun, or set [server] public_addresses"
    )]
    NoAnswer {
        /// The server.
        server: SocketAddr,
        /// The local address asked from.
        from: IpAddr,
    },
}

/// How long the public address query waits, over all its attempts.
const STUN_TIMEOUT: Duration = Duration::from_secs(3);

/// The public addresses to advertise: `[server] public_addresses`, else,
/// with `[server] public_address_stun`, what that server sees of each
/// relay address, else none (the bound ones are advertised).
pub async fn public_addresses(
    server: &ServerConfig,
    relay: Families,
) -> Result<Families, DiscoveryError> {
    let configured = Families::first_of(&server.public_addresses);
    let Some(stun) = &server.public_address_stun else {
        return Ok(configured);
    };
    let targets: Vec<SocketAddr> = tokio::net::lookup_host(stun.as_str())
        .await
        .map_err(|err| DiscoveryError::Resolve {
            server: stun.clone(),
            reason: err.to_string(),
        })?
        .collect();
    let mut found = Families::default();
    for from in relay.iter() {
        let slot = if from.is_ipv4() {
            &mut found.ipv4
        } else {
            &mut found.ipv6
        };
        if configured.iter().any(|ip| ip.is_ipv4() == from.is_ipv4()) {
            continue;
        }
        if let Some(target) = targets.iter().find(|t| t.is_ipv4() == from.is_ipv4()) {
            *slot = Some(mapped_address(from, *target).await?.ip());
        }
    }
    Ok(configured.or(found))
}

/// Asks `server` over STUN (RFC 8489 Binding) which address a datagram
/// from `from` arrives with.
pub async fn mapped_address(
    from: IpAddr,
    server: SocketAddr,
) -> Result<SocketAddr, DiscoveryError> {
    let io = |source| DiscoveryError::Io {
        server,
        from,
        source,
    };
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(from, 0))
        .await
        .map_err(io)?;
    let request = Message::builder_request(BINDING, MessageWriteVec::new());
    let transaction = request.transaction_id();
    let request = request.finish();
    let mut buffer = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + STUN_TIMEOUT;
    // UDP may lose the request: send it again every half second.
    while tokio::time::Instant::now() < deadline {
        socket.send_to(&request, server).await.map_err(io)?;
        let wait = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buffer));
        let Ok(received) = wait.await else { continue };
        let (len, source) = received.map_err(io)?;
        if source != server {
            continue;
        }
        let Ok(message) = Message::from_bytes(&buffer[..len]) else {
            continue;
        };
        if message.transaction_id() != transaction {
            continue;
        }
        if let Ok(mapped) = message.attribute::<XorMappedAddress>() {
            return Ok(mapped.addr(transaction));
        }
    }
    Err(DiscoveryError::NoAnswer { server, from })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_first_address_of_each_family_is_taken() {
        let families = Families::first_of(&[ip("fd00::1"), ip("198.18.0.1"), ip("198.18.0.2")]);
        assert_eq!(families.ipv4, Some(ip("198.18.0.1")));
        assert_eq!(families.ipv6, Some(ip("fd00::1")));
        assert_eq!(
            families.iter().collect::<Vec<_>>(),
            [ip("198.18.0.1"), ip("fd00::1")]
        );
    }

    #[test]
    fn specific_listen_addresses_are_the_relay_addresses() {
        let mut server = crate::config::Config::default().server;
        server.listen = vec!["127.0.0.1:3478".parse().unwrap()];
        assert_eq!(relay_addresses(&server).ipv4, Some(ip("127.0.0.1")));
        server.relay_addresses = vec![ip("127.0.0.2")];
        assert_eq!(relay_addresses(&server).ipv4, Some(ip("127.0.0.2")));
    }

    #[tokio::test]
    async fn configured_public_addresses_need_no_query() {
        let mut server = crate::config::Config::default().server;
        server.public_addresses = vec![ip("198.18.5.5")];
        let relay = Families::first_of(&[ip("127.0.0.1")]);
        let public = public_addresses(&server, relay).await.unwrap();
        assert_eq!(public.ipv4, Some(ip("198.18.5.5")));
        assert_eq!(public.ipv6, None);
    }

    /// A one-shot STUN server on loopback that answers with a mapped
    /// address of its choosing, as a NAT's outside would show.
    #[tokio::test]
    async fn the_stun_answer_is_the_public_address() {
        let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stun_address = stun.local_addr().unwrap();
        let answer = tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            let (len, from) = stun.recv_from(&mut buffer).await.unwrap();
            let request = Message::from_bytes(&buffer[..len]).unwrap();
            let transaction = request.transaction_id();
            let mut response = Message::builder(
                stun_types::message::MessageType::from_class_method(
                    stun_types::message::MessageClass::Success,
                    BINDING,
                ),
                transaction,
                MessageWriteVec::new(),
            );
            let public: SocketAddr = "198.18.9.9"
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, from.port()))
                .unwrap();
            response
                .add_attribute(&XorMappedAddress::new(public, transaction))
                .unwrap();
            stun.send_to(&response.finish(), from).await.unwrap();
        });
        let mut server = crate::config::Config::default().server;
        server.public_address_stun = Some(stun_address.to_string());
        let relay = Families::first_of(&[ip("127.0.0.1")]);
        let public = public_addresses(&server, relay).await.unwrap();
        assert_eq!(public.ipv4, Some(ip("198.18.9.9")));
        answer.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_stun_server_is_an_error_that_names_it() {
        // Bound but never read: requests go unanswered.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let err = mapped_address(ip("127.0.0.1"), silent.local_addr().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
    }
}
