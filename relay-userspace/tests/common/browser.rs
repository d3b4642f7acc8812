//! Headless Chromium (Debian package `chromium`) in a test namespace,
//! loading a page the test serves itself on the namespace's loopback, which
//! reports back with a POST.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use super::{Netns, TempDir};

/// An HTTP server on 127.0.0.1 inside a namespace: GET serves `page`, POST
/// hands its body to [`PageServer::result`]. It stops when dropped.
pub struct PageServer {
    pub port: u16,
    results: mpsc::Receiver<String>,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    pub fn start(ns: &Netns, page: &'static str) -> PageServer {
        PageServer::serve(ns, page, None)
    }

    /// The next POSTed body, waiting at most `limit`.
    pub fn result(&self, limit: Duration) -> Option<String> {
        self.results.recv_timeout(limit).ok()
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one request; returns the body of a POST.
fn answer(stream: TcpStream, page: &str) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut stream = reader.get_ref().try_clone().ok()?;
    if request_line.starts_with("POST") {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        return Some(String::from_utf8_lossy(&body).into_owned());
    }
    let (status, body) = if request_line.starts_with("GET / ") || request_line.starts_with("GET /?")
    {
        ("200 OK", page)
    } else {
        ("404 Not Found", "")
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    None
}

/// A headless Chromium in `ns` on `url`, with a fresh profile; stopped
/// with SIGTERM (then SIGKILL), by PID, when dropped.
pub struct Browser {
    child: Child,
    profile: TempDir,
}

impl Browser {
    /// `extra` flags go before the URL.
    pub fn open(ns: &Netns, url: &str, extra: &[&str]) -> Browser {
        let profile = TempDir::new("turnxchr");
        let log = std::fs::File::create(profile.0.join("chromium.log")).unwrap();
        let child = ns
            .command("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.0.join("profile").display()
            ))
            .args(extra)
            .arg(url)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting chromium");
        Browser { child, profile }
    }

    /// The last lines Chromium logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.profile.0.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling the child we spawned, by its PID; Chromium
        // stops its own helper processes on SIGTERM.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let exited = super::wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl PageServer {
    /// As [`PageServer::start`], and GET requests whose path starts with
    /// `prefix` are passed on, as they came, to `upstream` (from inside
    /// `ns`), whose answer goes back to the browser unchanged: an
    /// application server in front of an internal service, such as the
    /// credential service, which the page then reaches on its own origin.
    pub fn start_proxying(
        ns: &Netns,
        page: &'static str,
        prefix: &'static str,
        upstream: std::net::SocketAddr,
    ) -> PageServer {
        PageServer::serve(ns, page, Some((prefix, upstream)))
    }

    /// Serves `page` on a port of its own in `ns`, and passes requests
    /// under `proxy`'s prefix on to its upstream.
    fn serve(
        ns: &Netns,
        page: &'static str,
        proxy: Option<(&'static str, std::net::SocketAddr)>,
    ) -> PageServer {
        let listener =
            ns.run(|| TcpListener::bind("127.0.0.1:0").expect("binding the page server"));
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, results) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let namespace = format!("/var/run/netns/{}", ns.name);
        std::thread::spawn(move || {
            // Connections to the upstream must start in the namespace.
            if proxy.is_some() {
                let Ok(file) = std::fs::File::open(&namespace) else {
                    return;
                };
                // SAFETY: setns on a namespace fd we hold open; only this
                // thread changes namespace.
                let entered = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                if entered != 0 {
                    return;
                }
            }
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => match proxy {
                        Some((prefix, upstream)) if proxied(&stream, prefix) => {
                            proxy_to(stream, upstream)
                        }
                        _ => {
                            if let Some(body) = answer(stream, page) {
                                let _ = sender.send(body);
                            }
                        }
                    },
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        PageServer {
            port,
            results,
            stop,
        }
    }
}

/// Whether the request waiting on `stream` is a GET of a path starting
/// with `prefix` (looked at without reading it).
fn proxied(stream: &TcpStream, prefix: &str) -> bool {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .is_err()
    {
        return false;
    }
    let wanted = format!("GET {prefix}");
    let mut buffer = [0u8; 256];
    // Bounded: each peek waits at most the read timeout, and ten tries
    // cover a request line sent in pieces.
    for _ in 0..10 {
        let Ok(len) = stream.peek(&mut buffer) else {
            return false;
        };
        if len >= wanted.len() || len == 0 || buffer[..len].contains(&b'\n') {
            return buffer[..len].starts_with(wanted.as_bytes());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Passes the request on `stream` to `upstream` and its answer back.
fn proxy_to(stream: TcpStream, upstream: std::net::SocketAddr) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head (no body comes with a GET).
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let answer = (|| -> std::io::Result<Vec<u8>> {
        let mut upstream_stream = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
        upstream_stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            upstream_stream,
            "GET {target} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        upstream_stream.read_to_end(&mut answer)?;
        Ok(answer)
    })();
    let mut stream = reader.into_inner();
    match answer {
        Ok(answer) => {
            let _ = stream.write_all(&answer);
        }
        Err(err) => {
            let body = format!("{{\"error\":\"proxy: {err}\"}}");
            let _ = write!(
                stream,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    }
}
