//! TURN REST API credentials for applications, minted the way STUNner's
//! auth service and coturn's `use-auth-secret` expect: the username is
//! `<expiry unix time>:<user>` and the password is
//! base64(HMAC-SHA1(shared secret, username)), so the relay checks them with
//! the secret alone and nothing is stored per credential.
//!
//! [`CredentialService`] answers STUNner's two endpoints over [`crate::http`]:
//! `GET /` (`{username, password, ttl, uris}`) and `GET /ice` (an
//! `RTCConfiguration` fragment for browsers). Anyone who can reach it can
//! relay through the server, so it belongs on an internal address only.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{self, Request, Response};
use crate::turn::auth::rest_password;

/// The user name minted when the request names none.
pub const DEFAULT_USER: &str = "turnx";
/// Longest user name accepted in a request.
pub const MAX_USER_LEN: usize = 128;

/// A credential, shaped as STUNner's auth service answers `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Credential {
    /// `<expiry unix time>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Seconds the credential stays valid.
    pub ttl: u64,
    /// The TURN URIs it is good for.
    pub uris: Vec<String>,
}

/// Mints a credential for `user`, valid `ttl_secs` from `unix_now`, with no
/// URIs (the caller adds them).
pub fn mint(secret: &str, user: &str, ttl_secs: u64, unix_now: u64) -> Credential {
    let username = format!("{}:{user}", unix_now.saturating_add(ttl_secs));
    Credential {
        password: rest_password(secret, &username),
        username,
        ttl: ttl_secs,
        uris: Vec::new(),
    }
}

/// The TURN URIs of a server reachable at `hosts` (one per family, the public
/// address where there is one): UDP and TCP on each distinct port of
/// `udp_tcp_ports`, TURNS on each distinct port of `tls_ports`.
pub fn default_uris(hosts: &[IpAddr], udp_tcp_ports: &[u16], tls_ports: &[u16]) -> Vec<String> {
    let hosts = distinct(hosts);
    let udp_tcp_ports = distinct(udp_tcp_ports);
    let tls_ports = distinct(tls_ports);
    let mut uris = Vec::new();
    for host in hosts {
        // RFC 7065: the host is a URI host, so IPv6 goes in brackets.
        let host = match host {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        for port in &udp_tcp_ports {
            uris.push(format!("turn:{host}:{port}?transport=udp"));
            uris.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        for port in &tls_ports {
            uris.push(format!("turns:{host}:{port}?transport=tcp"));
        }
    }
    uris
}

/// `items` without repeats, in their first order.
fn distinct<T: Copy + Eq + std::hash::Hash>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .iter()
        .copied()
        .filter(|item| seen.insert(*item))
        .collect()
}

/// The `iceTransportPolicy` handed to browsers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IcePolicy {
    /// Any candidate, relayed or not.
    #[default]
    All,
    /// Relayed candidates only.
    Relay,
}

impl IcePolicy {
    /// The WebRTC spelling: `"all"` or `"relay"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IcePolicy::All => "all",
            IcePolicy::Relay => "relay",
        }
    }
}

/// What the credential service hands out.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The REST API shared secret credentials are minted with (the newest of
    /// `[auth] secrets`); `None` answers 503.
    pub secret: Option<String>,
    /// The TURN URIs put in every answer.
    pub uris: Vec<String>,
    /// TTL when the request names none, in seconds.
    pub default_ttl_secs: u64,
    /// Largest TTL handed out; longer requests are cut to it.
    pub max_ttl_secs: u64,
    /// The `iceTransportPolicy` of `/ice` answers.
    pub ice_transport_policy: IcePolicy,
}

impl Default for ServiceConfig {
    /// No secret, no URIs, and `[credentials]`'s default TTLs (a day, a week).
    fn default() -> Self {
        ServiceConfig {
            secret: None,
            uris: Vec::new(),
            default_ttl_secs: 86400,
            max_ttl_secs: 604800,
            ice_transport_policy: IcePolicy::All,
        }
    }
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ServiceConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("uris", &self.uris)
            .field("default_ttl_secs", &self.default_ttl_secs)
            .field("max_ttl_secs", &self.max_ttl_secs)
            .field("ice_transport_policy", &self.ice_transport_policy)
            .finish()
    }
}

/// A request the credential service refuses (400), with the reason sent back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum BadQuery {
    /// `service` missing or not `turn`.
    #[error("service must be \"turn\"")]
    Service,
    /// A user name that is empty, too long, or has `:` or control characters.
    #[error("username must be 1 to 128 characters, without ':' or control characters")]
    Username,
    /// A TTL that is not a positive integer.
    #[error("ttl must be a positive integer number of seconds")]
    Ttl,
}

/// The credential service: STUNner's auth service endpoints, reloadable.
#[derive(Debug)]
pub struct CredentialService {
    config: RwLock<ServiceConfig>,
}

impl CredentialService {
    /// A service handing out what `config` says.
    pub fn new(config: ServiceConfig) -> Self {
        CredentialService {
            config: RwLock::new(config),
        }
    }

    /// Replaces the configuration (on a reload); later requests see the new one.
    pub fn update(&self, config: ServiceConfig) {
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }

    /// The current configuration.
    pub fn config(&self) -> ServiceConfig {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// An HTTP handler for [`http::serve`], reading the wall clock per request.
    pub fn handler(self: &Arc<Self>) -> http::Handler {
        let service = Arc::clone(self);
        Arc::new(move |request: &Request| {
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            service.answer(request, unix_now)
        })
    }

    /// The answer to `request` at `unix_now`: `GET /` or `GET /ice`.
    pub fn answer(&self, request: &Request, unix_now: u64) -> Response {
        let ice = match request.path.as_str() {
            "/" => false,
            "/ice" => true,
            _ => return error(404, "not found"),
        };
        if request.method != "GET" && request.method != "HEAD" {
            return error(405, "method not allowed");
        }
        let config = self.config();
        let (user, ttl) = match parse_query(request, &config) {
            Ok(query) => query,
            Err(bad) => return error(400, &bad.to_string()),
        };
        let Some(secret) = config.secret.as_deref() else {
            return error(503, "no [auth] secrets configured");
        };
        let mut credential = mint(secret, user, ttl, unix_now);
        credential.uris = config.uris;
        let body = if ice {
            json!({
                "iceServers": [{
                    "urls": credential.uris,
                    "username": credential.username,
                    "credential": credential.password,
                }],
                "iceTransportPolicy": config.ice_transport_policy.as_str(),
            })
        } else {
            serde_json::to_value(&credential).expect("a Credential is plain data")
        };
        Response::json(200, &body)
    }
}

/// The user and TTL a request asks for, defaulted and capped.
fn parse_query<'a>(
    request: &'a Request,
    config: &ServiceConfig,
) -> Result<(&'a str, u64), BadQuery> {
    if request.param("service") != Some("turn") {
        return Err(BadQuery::Service);
    }
    let user = request.param("username").unwrap_or(DEFAULT_USER);
    let valid_user = (1..=MAX_USER_LEN).contains(&user.chars().count())
        && !user.chars().any(|c| c == ':' || c.is_control());
    if !valid_user {
        return Err(BadQuery::Username);
    }
    let ttl = match request.param("ttl") {
        None => config.default_ttl_secs,
        // Digits only: u64's parser would also take a leading '+'.
        Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            match text.parse::<u64>() {
                Ok(0) => return Err(BadQuery::Ttl),
                Ok(ttl) => ttl,
                // More digits than fit: as long as can be, so capped below.
                Err(_) => u64::MAX,
            }
        }
        Some(_) => return Err(BadQuery::Ttl),
    };
    Ok((user, ttl.min(config.max_ttl_secs)))
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::auth::{Authenticator, Credentials, UnknownUser};
    use serde_json::Value;

    const NOW: u64 = 1_700_000_000;

    fn config() -> ServiceConfig {
        ServiceConfig {
            secret: Some("s3cret".into()),
            uris: vec!["turn:198.18.0.1:3478?transport=udp".into()],
            ..ServiceConfig::default()
        }
    }

    fn get(target: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (name.into(), value.into())
                })
                .collect(),
        }
    }

    fn answer(service: &CredentialService, target: &str) -> (u16, Value) {
        let response = service.answer(&get(target), NOW);
        assert_eq!(response.content_type, "application/json");
        (
            response.status,
            serde_json::from_slice(&response.body).unwrap(),
        )
    }

    #[test]
    fn minted_password_verifies_with_the_core() {
        let credential = mint("s3cret", "alice", 3600, NOW);
        assert_eq!(credential.username, "1700003600:alice");
        assert_eq!(credential.ttl, 3600);
        let auth = Authenticator::new(
            Credentials {
                realm: "example.org".into(),
                secrets: vec!["other".into(), "s3cret".into()],
                nonce_lifetime_secs: 600,
                ..Credentials::default()
            },
            [1; 32],
        );
        let passwords = auth.passwords(&credential.username, NOW + 3599).unwrap();
        assert!(passwords.contains(&credential.password));
        assert_eq!(
            auth.passwords(&credential.username, NOW + 3600),
            Err(UnknownUser::Expired)
        );
        // The reference value of coturn's scheme (see turn::auth's tests).
        assert_eq!(
            mint("secret", "bob", 0, 1_700_000_000).password,
            "YeMuUjjOaxvglmPbYS9o30UEIYg="
        );
    }

    #[test]
    fn uris_per_host_and_port() {
        let hosts = [
            "203.0.113.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        ];
        assert_eq!(
            default_uris(&hosts, &[3478, 3478, 3479], &[5349]),
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:203.0.113.7:3478?transport=tcp",
                "turn:203.0.113.7:3479?transport=udp",
                "turn:203.0.113.7:3479?transport=tcp",
                "turns:203.0.113.7:5349?transport=tcp",
                "turn:[2001:db8::7]:3478?transport=udp",
                "turn:[2001:db8::7]:3478?transport=tcp",
                "turn:[2001:db8::7]:3479?transport=udp",
                "turn:[2001:db8::7]:3479?transport=tcp",
                "turns:[2001:db8::7]:5349?transport=tcp",
            ]
        );
        assert!(default_uris(&[], &[3478], &[]).is_empty());
    }

    #[test]
    fn credential_and_ice_answers() {
        let service = CredentialService::new(config());
        let (status, body) = answer(&service, "/?service=turn&username=alice&ttl=600");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({
                "username": "1700000600:alice",
                "password": rest_password("s3cret", "1700000600:alice"),
                "ttl": 600,
                "uris": ["turn:198.18.0.1:3478?transport=udp"],
            })
        );

        // Defaults, and the cap.
        let (_, body) = answer(&service, "/?service=turn");
        assert_eq!(body["username"], "1700086400:turnx");
        assert_eq!(body["ttl"], 86400);
        let (_, body) = answer(&service, "/?service=turn&ttl=99999999999999999999999");
        assert_eq!(body["ttl"], 604800);

        let (status, body) = answer(&service, "/ice?service=turn&username=bob&ttl=60");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({
                "iceServers": [{
                    "urls": ["turn:198.18.0.1:3478?transport=udp"],
                    "username": "1700000060:bob",
                    "credential": rest_password("s3cret", "1700000060:bob"),
                }],
                "iceTransportPolicy": "all",
            })
        );

        // A reload takes effect at the next request.
        service.update(ServiceConfig {
            ice_transport_policy: IcePolicy::Relay,
            secret: Some("rotated".into()),
            ..config()
        });
        let (_, body) = answer(&service, "/ice?service=turn&username=bob&ttl=60");
        assert_eq!(body["iceTransportPolicy"], "relay");
        assert_eq!(
            body["iceServers"][0]["credential"],
            rest_password("rotated", "1700000060:bob")
        );
    }

    #[test]
    fn refusals() {
        let service = CredentialService::new(config());
        let long = "x".repeat(MAX_USER_LEN + 1);
        let longest = "é".repeat(MAX_USER_LEN);
        assert_eq!(
            answer(&service, &format!("/?service=turn&username={longest}")).0,
            200
        );
        for target in [
            "/",
            "/?service=stun",
            "/ice?username=alice",
            "/?service=turn&username=",
            "/?service=turn&username=a:b",
            "/?service=turn&username=a\nb",
            "/?service=turn&username=a\u{7f}",
            &format!("/?service=turn&username={long}"),
            "/?service=turn&ttl=0",
            "/?service=turn&ttl=-5",
            "/?service=turn&ttl=+5",
            "/?service=turn&ttl=1.5",
            "/?service=turn&ttl=",
            "/?service=turn&ttl=1h",
        ] {
            let (status, body) = answer(&service, target);
            assert_eq!(status, 400, "{target}");
            assert!(body["error"].is_string(), "{target}");
        }
        assert_eq!(answer(&service, "/metrics?service=turn").0, 404);
        let mut post = get("/?service=turn");
        post.method = "POST".into();
        assert_eq!(service.answer(&post, NOW).status, 405);

        service.update(ServiceConfig {
            secret: None,
            ..config()
        });
        assert_eq!(
            answer(&service, "/?service=turn"),
            (503, json!({"error": "no [auth] secrets configured"}))
        );
        assert!(!format!("{:?}", config()).contains("s3cret"));
    }

    #[tokio::test]
    async fn served_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let service = Arc::new(CredentialService::new(config()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(http::serve(listener, service.handler()));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /?service=turn&username=a%20b&ttl=60 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        let username = body["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "a b");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 50..=now + 70).contains(&expiry.parse().unwrap()));
    }
}
