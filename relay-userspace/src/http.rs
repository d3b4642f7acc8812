//! A minimal HTTP/1.1 server for the daemon's small GET endpoints: metrics,
//! health and the credential service.
//!
//! It is deliberately small and bounded rather than general: one request per
//! connection (every answer carries `Connection: close` and a
//! `Content-Length`), only `GET` and `HEAD`, no request bodies, and hard caps
//! on connections, head size and time, so a scanner or a slow client cannot
//! tie up the daemon. Handlers are synchronous functions of the request: the
//! endpoints only format state they already hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A parsed request: what a handler needs to route and answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD` (the server answers every other method itself).
    pub method: String,
    /// The path, as sent (not percent-decoded), without the query.
    pub path: String,
    /// The query's `name=value` pairs in order, percent-decoded, `+` as space.
    pub query: Vec<(String, String)>,
}

impl Request {
    /// The value of the first query parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An answer: status, content type and the whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body; sent with its length, left out for `HEAD`.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with any content type.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// An `application/json` response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }
}

/// What answers requests; shared by every connection.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// The bounds on what one client may cost.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once; further ones are closed on accept.
    connections: usize,
    /// Connections served at once from one IP address: one client (idle
    /// connections held open, say) cannot take every slot from the
    /// kubelet's probes and Prometheus.
    per_address: usize,
    /// Largest request head (request line and headers).
    head_bytes: usize,
    /// Time a client has to send the whole head.
    head_timeout: Duration,
    /// Time a client has to take the whole answer.
    write_timeout: Duration,
    /// How long, after answering, unread input is drained before closing.
    linger: Duration,
}

const LIMITS: Limits = Limits {
    connections: 64,
    per_address: 8,
    head_bytes: 8 * 1024,
    head_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(10),
    linger: Duration::from_secs(2),
};

/// Serves `handler` on every connection `listener` accepts, at most 64 at
/// once and 8 from one address (further connections are closed at once).
/// Never returns.
pub async fn serve(listener: TcpListener, handler: Handler) {
    serve_with(listener, handler, LIMITS).await
}

async fn serve_with(listener: TcpListener, handler: Handler, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off rather than spin
                // on an error that will repeat at once.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Over the cap: dropping the stream closes it.
            continue;
        };
        let Some(address_slot) = AddressSlot::take(&per_address, peer.ip(), limits.per_address)
        else {
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            connection(stream, &handler, limits).await;
            drop(address_slot);
            drop(slot);
        });
    }
}

/// One of an address's connections; given back on drop.
struct AddressSlot {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    /// A slot for `address` if it holds fewer than `cap`.
    fn take(
        held: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        address: IpAddr,
        cap: usize,
    ) -> Option<AddressSlot> {
        let mut counts = held.lock().expect("HTTP address lock");
        let count = counts.entry(address).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            held: Arc::clone(held),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.held.lock().expect("HTTP address lock");
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Reads one request head, answers it, and closes the connection.
async fn connection(mut stream: TcpStream, handler: &Handler, limits: Limits) {
    let response = match tokio::time::timeout(
        limits.head_timeout,
        read_head(&mut stream, limits.head_bytes),
    )
    .await
    {
        Err(_) => Some((Response::text(408, "request timeout\n"), false)),
        Ok(Head::Closed) => None,
        Ok(Head::TooLarge) => Some((Response::text(431, "request head too large\n"), false)),
        Ok(Head::Malformed) => Some((Response::text(400, "bad request\n"), false)),
        Ok(Head::Parsed(request)) => {
            let head = request.method == "HEAD";
            let response = if request.method == "GET" || head {
                handler(&request)
            } else {
                Response::text(405, "method not allowed\n")
            };
            Some((response, head))
        }
    };
    let Some((response, head_only)) = response else {
        return;
    };
    let bytes = encode(&response, head_only);
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    // Closing with unread input makes the kernel send a reset, which can
    // destroy the answer before the client reads it: drain what the client
    // still sends (a body, say) for a little while first.
    let _ = tokio::time::timeout(limits.linger, async {
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What reading a request head found.
enum Head {
    /// The client closed (or failed) before sending a whole head.
    Closed,
    /// The head does not fit in the limit.
    TooLarge,
    /// Not an HTTP/1.x request head.
    Malformed,
    /// A whole, valid head.
    Parsed(Request),
}

async fn read_head(stream: &mut TcpStream, limit: usize) -> Head {
    let mut buffer = vec![0u8; limit];
    let mut filled = 0;
    loop {
        if filled == limit {
            return Head::TooLarge;
        }
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => filled += n,
        }
        match parse_head(&buffer[..filled]) {
            Ok(Some(request)) => return Head::Parsed(request),
            Ok(None) => {}
            Err(()) => return Head::Malformed,
        }
    }
}

/// Parses a request head: `Ok(None)` while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<Request>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let method = parsed.method.ok_or(())?;
            let target = parsed.path.ok_or(())?;
            let (path, query) = split_target(target)?;
            Ok(Some(Request {
                method: method.to_owned(),
                path: path.to_owned(),
                query: parse_query(query)?,
            }))
        }
        // Among others, more than 64 headers: no endpoint here needs them.
        Err(_) => Err(()),
    }
}

/// Splits a request target into path and query; accepts the origin form
/// (`/path?query`) and, as HTTP/1.1 servers must, the absolute form.
fn split_target(target: &str) -> Result<(&str, &str), ()> {
    let target = target.split('#').next().unwrap_or_default();
    let origin = if target.starts_with('/') {
        target
    } else {
        let rest = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
            .ok_or(())?;
        match rest.find(['/', '?']) {
            Some(start) if rest[start..].starts_with('/') => &rest[start..],
            Some(start) => return Ok(("/", &rest[start + 1..])),
            None => "/",
        }
    };
    Ok(origin.split_once('?').unwrap_or((origin, "")))
}

/// Parses `a=1&b=x+y`; a name without `=` has an empty value.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, ()> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Form-style percent-decoding; bad escapes and non-UTF-8 are errors, so a
/// handler never sees a value other than what the client meant.
fn decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(())?;
                let hex = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ())
}

/// The status line, headers and (unless `head_only`) body.
fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    // Metrics and credentials are never worth caching; credentials must not be.
    out.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// The reason phrase of the statuses these endpoints use.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        // The phrase is optional (RFC 9112 section 4).
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn echo() -> Handler {
        Arc::new(|request: &Request| {
            if request.path == "/missing" {
                return Response::text(404, "no\n");
            }
            let mut body = format!("{} {}\n", request.method, request.path);
            for (name, value) in &request.query {
                body.push_str(&format!("{name}={value}\n"));
            }
            Response::text(200, body)
        })
    }

    async fn start(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, echo(), limits));
        address
    }

    /// Sends `request` and reads the answer until the server closes.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        // A refused connection may already be reset.
        let _ = stream.write_all(request).await;
        read_all(&mut stream).await
    }

    async fn read_all(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes")
            .unwrap_or_default();
        String::from_utf8(answer).unwrap()
    }

    fn status(answer: &str) -> u16 {
        answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {answer:?}"))
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").unwrap().1
    }

    #[tokio::test]
    async fn get_with_decoded_query() {
        let address = start(LIMITS).await;
        let answer = exchange(
            address,
            b"GET /ice?service=turn&username=a+b%3Ac%C3%A9&flag&&ttl= HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!(status(&answer), 200);
        assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
        let text = "GET /ice\nservice=turn\nusername=a b:cé\nflag=\nttl=\n";
        assert!(answer.contains(&format!("\r\nContent-Length: {}\r\n", text.len())));
        assert_eq!(body(&answer), text);

        // HTTP/1.0, the absolute form, and a head sent in pieces.
        let answer = exchange(address, b"GET http://h:1/p?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(body(&answer), "GET /p\nx=1\n");
        let mut stream = TcpStream::connect(address).await.unwrap();
        for piece in [&b"GET /slow"[..], b" HTTP/1.1\r\nHost:", b" x\r\n", b"\r\n"] {
            stream.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(body(&read_all(&mut stream).await), "GET /slow\n");

        let answer = exchange(address, b"GET /missing HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&answer), 404);
    }

    #[tokio::test]
    async fn head_has_length_but_no_body() {
        let address = start(LIMITS).await;
        let answer = exchange(address, b"HEAD /x HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&answer), 200);
        assert!(answer.contains("\r\nContent-Length: 8\r\n"), "{answer}");
        assert_eq!(body(&answer), "");
    }

    #[tokio::test]
    async fn other_methods_and_garbage_are_refused() {
        let address = start(LIMITS).await;
        let answer = exchange(address, b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(status(&answer), 405);
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"));
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /?a=%zz HTTP/1.1\r\n\r\n",
            b"GET /?a=%C3 HTTP/1.1\r\n\r\n",
            b"GET /?a=% HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET ftp://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            let answer = exchange(address, garbage).await;
            assert_eq!(
                status(&answer),
                400,
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        // Closing before the head is complete gets no answer.
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET / HT").await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(read_all(&mut stream).await, "");
    }

    #[tokio::test]
    async fn head_size_and_time_are_bounded() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            ..LIMITS
        };
        let address = start(limits).await;
        let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        big.resize(LIMITS.head_bytes + 100, b'a');
        let answer = exchange(address, &big).await;
        assert_eq!(status(&answer), 431);

        // A head of exactly the limit is still served.
        let mut fits = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        fits.resize(LIMITS.head_bytes - 4, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&exchange(address, &fits).await), 200);

        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(status(&read_all(&mut stream).await), 408);
    }

    #[tokio::test]
    async fn connections_are_capped() {
        let limits = Limits {
            connections: 4,
            ..LIMITS
        };
        let address = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..limits.connections {
            let mut stream = TcpStream::connect(address).await.unwrap();
            // A byte of a head, so the connection is surely accepted.
            stream.write_all(b"G").await.unwrap();
            idle.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The next one is closed without an answer.
        assert_eq!(exchange(address, b"GET / HTTP/1.1\r\n\r\n").await, "");
        // The held ones still work, and free their slot when done.
        let mut first = idle.remove(0);
        first.write_all(b"ET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(status(&read_all(&mut first).await), 200);
        // The server lingers until the client closes too.
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            status(&exchange(address, b"GET / HTTP/1.1\r\n\r\n").await),
            200
        );
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let limits = Limits {
            per_address: 2,
            ..LIMITS
        };
        let address = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..limits.per_address {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"G").await.unwrap();
            idle.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A third from 127.0.0.1 is closed; another loopback address is
        // served.
        assert_eq!(exchange(address, b"GET / HTTP/1.1\r\n\r\n").await, "");
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = other.connect(address).await.unwrap();
        other.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(status(&read_all(&mut other).await), 200);
        // A slot given back is taken again.
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            status(&exchange(address, b"GET / HTTP/1.1\r\n\r\n").await),
            200
        );
    }

    #[test]
    fn parsing_never_panics() {
        // Every prefix and some mutations of a valid head.
        let head = b"GET http://h/p?a=%41+b&c HTTP/1.1\r\nHost: h\r\n\r\n";
        for end in 0..=head.len() {
            let _ = parse_head(&head[..end]);
            for byte in [0u8, b'%', b'?', b'/', b'\n', 0xff] {
                let mut mutated = head[..end].to_vec();
                mutated.push(byte);
                mutated.extend_from_slice(&head[end..]);
                let _ = parse_head(&mutated);
            }
        }
        assert_eq!(
            parse_head(head).unwrap().unwrap(),
            Request {
                method: "GET".into(),
                path: "/p".into(),
                query: vec![("a".into(), "A b".into()), ("c".into(), String::new())],
            }
        );
        assert_eq!(split_target("https://h?x=1"), Ok(("/", "x=1")));
        assert_eq!(split_target("http://h"), Ok(("/", "")));
        assert_eq!(split_target("/a#frag"), Ok(("/a", "")));
    }
}
