//! Who may allocate: long-term credentials (RFC 8489 section 9.2) from
//! static users or from the "TURN REST API" scheme that coturn
//! (`use-auth-secret`) and STUNner (ephemeral) use, and the nonces that make
//! them replay-resistant.
//!
//! Nonces are stateless: the minute they were issued and a 32-bit MAC over
//! it and the client's 5-tuple, so a nonce works only for the client it was
//! given to and only for its lifetime, with nothing stored per client. They
//! are 8 characters, so that a 401 fits in the size of the request that
//! caused it (no amplification): a forged nonce buys an attacker nothing,
//! since MESSAGE-INTEGRITY over it still needs the password.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::{FiveTuple, Transport};

/// RFC 8489 section 9.2: a nonce starting with this cookie announces the
/// security features in the next four characters.
const NONCE_COOKIE: &str = "obMatJos2";
/// Security feature set: "password algorithms" (bit 0) only.
const FEATURES_PASSWORD_ALGORITHMS: &str = "AAAB";

/// The credentials the server accepts.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Realm sent to clients and mixed into the long-term key.
    pub realm: String,
    /// Static users: name and password.
    pub users: HashMap<String, String>,
    /// TURN REST API shared secrets; several at once allow rotation.
    pub secrets: Vec<String>,
    /// How long a nonce stays valid, in seconds.
    pub nonce_lifetime_secs: u64,
}

/// Why a username has no password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownUser {
    /// Neither a static user nor a REST API username.
    NoSuchUser,
    /// A REST API username whose expiry time has passed.
    Expired,
}

/// What a nonce check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceStatus {
    /// Ours, for this client, not expired.
    Valid {
        /// Whether it carried the RFC 8489 security-feature cookie, so the
        /// request must carry PASSWORD-ALGORITHMS too.
        cookie: bool,
    },
    /// Expired, for another client, or not ours (438 Stale Nonce).
    Stale,
}

/// Checks credentials and mints nonces.
#[derive(Clone)]
pub struct Authenticator {
    credentials: Credentials,
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print passwords, secrets or the nonce key.
        f.debug_struct("Authenticator")
            .field("realm", &self.credentials.realm)
            .field("users", &self.credentials.users.len())
            .field("secrets", &self.credentials.secrets.len())
            .finish()
    }
}

impl Authenticator {
    /// `nonce_key` must be secret and random; the shell draws it at start.
    pub fn new(credentials: Credentials, nonce_key: [u8; 32]) -> Self {
        Authenticator {
            credentials,
            nonce_key,
        }
    }

    /// Replaces users, secrets, realm and nonce lifetime (a reload); the
    /// nonce key stays, so nonces already handed out stay valid.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.credentials.realm
    }

    /// The passwords `username` may have used: its static password, or for
    /// a REST API username one per configured secret.
    pub fn passwords(&self, username: &str, unix_now: u64) -> Result<Vec<String>, UnknownUser> {
        if let Some(password) = self.credentials.users.get(username) {
            return Ok(vec![password.clone()]);
        }
        if self.credentials.secrets.is_empty() {
            return Err(UnknownUser::NoSuchUser);
        }
        // "<expiry unix time>[:<user id>]"
        let expiry = username.split(':').next().unwrap_or_default();
        let expiry: u64 = expiry.parse().map_err(|_| UnknownUser::NoSuchUser)?;
        if expiry <= unix_now {
            return Err(UnknownUser::Expired);
        }
        Ok(self
            .credentials
            .secrets
            .iter()
            .map(|secret| rest_password(secret, username))
            .collect())
    }

    /// A nonce for `client`, valid for the configured lifetime; with the
    /// security-feature cookie when `cookie` is set.
    pub fn nonce(&self, client: &FiveTuple, unix_now: u64, cookie: bool) -> String {
        let issued = minute(unix_now);
        let mut raw = [0u8; 6];
        raw[..2].copy_from_slice(&issued.to_be_bytes());
        raw[2..].copy_from_slice(&self.nonce_tag(issued, client));
        let body = URL_SAFE_NO_PAD.encode(raw);
        if cookie {
            format!("{NONCE_COOKIE}{FEATURES_PASSWORD_ALGORITHMS}{body}")
        } else {
            body
        }
    }

    /// Whether `nonce` was minted by [`Self::nonce`] for `client` and has not
    /// expired.
    pub fn check_nonce(&self, nonce: &str, client: &FiveTuple, unix_now: u64) -> NonceStatus {
        let (cookie, body) = match nonce.strip_prefix(NONCE_COOKIE) {
            Some(rest) => match rest.strip_prefix(FEATURES_PASSWORD_ALGORITHMS) {
                Some(body) => (true, body),
                None => return NonceStatus::Stale,
            },
            None => (false, nonce),
        };
        let Ok(raw) = URL_SAFE_NO_PAD.decode(body) else {
            return NonceStatus::Stale;
        };
        let Ok(raw) = <[u8; 6]>::try_from(raw.as_slice()) else {
            return NonceStatus::Stale;
        };
        let issued = u16::from_be_bytes([raw[0], raw[1]]);
        let tag_matches = self.nonce_tag(issued, client)[..] == raw[2..];
        // Minutes wrap every 45 days; the age is taken modulo that.
        let age_secs = u64::from(minute(unix_now).wrapping_sub(issued)) * 60 + unix_now % 60;
        if tag_matches && age_secs < self.credentials.nonce_lifetime_secs {
            NonceStatus::Valid { cookie }
        } else {
            NonceStatus::Stale
        }
    }

    /// 32 bits of HMAC-SHA256 over the issue minute and the 5-tuple.
    fn nonce_tag(&self, issued: u16, client: &FiveTuple) -> [u8; 4] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.nonce_key).expect("HMAC takes any key length");
        mac.update(&issued.to_be_bytes());
        mac.update(&[match client.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        }]);
        for address in [client.client, client.server] {
            match address.ip() {
                std::net::IpAddr::V4(ip) => mac.update(&ip.octets()),
                std::net::IpAddr::V6(ip) => mac.update(&ip.octets()),
            }
            mac.update(&address.port().to_be_bytes());
        }
        let tag = mac.finalize().into_bytes();
        tag[..4].try_into().expect("SHA-256 is longer than 4 bytes")
    }
}

/// The minute of `unix_secs`, wrapping at 2^16.
fn minute(unix_secs: u64) -> u16 {
    (unix_secs / 60) as u16
}

/// The TURN REST API password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: std::net::SocketAddr::from(([198, 18, 0, 1], port)),
            server: "198.18.0.2:3478".parse().unwrap(),
        }
    }

    fn auth() -> Authenticator {
        Authenticator::new(
            Credentials {
                realm: "example.org".into(),
                users: HashMap::from([("alice".into(), "wonderland".into())]),
                secrets: vec!["old-secret".into(), "new-secret".into()],
                nonce_lifetime_secs: 600,
            },
            [7; 32],
        )
    }

    #[test]
    fn rest_password_matches_coturn() {
        // Computed with: echo -n 1700000000:bob | openssl dgst -sha1 -hmac
        // secret -binary | base64
        assert_eq!(
            rest_password("secret", "1700000000:bob"),
            "YeMuUjjOaxvglmPbYS9o30UEIYg="
        );
    }

    #[test]
    fn static_and_rest_users() {
        let auth = auth();
        assert_eq!(auth.passwords("alice", 0).unwrap(), ["wonderland"]);
        assert_eq!(
            auth.passwords("2000000000:bob", 1_900_000_000).unwrap(),
            [
                rest_password("old-secret", "2000000000:bob"),
                rest_password("new-secret", "2000000000:bob")
            ]
        );
        assert_eq!(
            auth.passwords("2000000000", 1_900_000_000).unwrap().len(),
            2
        );
        assert_eq!(
            auth.passwords("1000:bob", 1_900_000_000),
            Err(UnknownUser::Expired)
        );
        assert_eq!(auth.passwords("mallory", 0), Err(UnknownUser::NoSuchUser));
    }

    #[test]
    fn nonces_are_bound_to_client_and_expire() {
        let auth = auth();
        for cookie in [false, true] {
            // Issued at 1020 (the start of minute 17): valid until 1620; the
            // age counts from the start of the issue minute.
            let nonce = auth.nonce(&client(1), 1020, cookie);
            let valid = NonceStatus::Valid { cookie };
            assert_eq!(auth.check_nonce(&nonce, &client(1), 1020), valid);
            assert_eq!(auth.check_nonce(&nonce, &client(1), 1619), valid);
            assert_eq!(
                auth.check_nonce(&nonce, &client(1), 1620),
                NonceStatus::Stale
            );
            assert_eq!(
                auth.check_nonce(&nonce, &client(2), 1020),
                NonceStatus::Stale
            );
            // Issued "in the future" (the clock stepped back): a huge age.
            assert_eq!(
                auth.check_nonce(&nonce, &client(1), 960),
                NonceStatus::Stale
            );
        }
        assert_eq!(auth.nonce(&client(1), 0, false).len(), 8);
        for garbage in [
            "",
            "obMatJos2",
            "obMatJos2XXXX",
            "!!!!",
            "AAAAAAAA",
            "AAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(auth.check_nonce(garbage, &client(1), 0), NonceStatus::Stale);
        }
    }
}
