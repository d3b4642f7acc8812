//! The daemon's local admin socket, and the client `turnxctl` uses on it.
//!
//! A Unix stream socket (`[admin] socket`, mode 0600 in a 0700 directory):
//! the client writes one JSON line, `{"command":"status"}`,
//! `{"command":"allocations"}`, `{"command":"stop-handover"}`,
//! `{"command":"stop-detach"}` or `{"command":"drain"}`, and the daemon
//! answers one JSON document,
//! then closes. Unknown commands and malformed requests get
//! `{"error":"..."}`. Only root and the daemon's own user are served: the
//! file modes keep others out, and `SO_PEERCRED` checks each peer in case
//! the directory was made by someone else with looser modes.
//!
//! What the answers hold comes from an [`AdminSource`] (turnxd's state);
//! this module only moves them.

use std::{
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    task::{JoinHandle, JoinSet},
};

/// The longest request line the daemon reads, newline included.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// How long the daemon waits for a request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon gives a client to take its answer: a client that
/// stops reading must not hold a task forever.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`request`] waits for the whole exchange.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer [`request`] accepts; far above any real allocation
/// list, it only stops a runaway peer from filling turnxctl's memory.
const MAX_ANSWER_BYTES: u64 = 256 << 20;

/// What the admin socket reports; turnxd implements it over its state.
///
/// Called on a blocking thread, so an implementation may take locks and
/// read kernel maps.
pub trait AdminSource: Send + Sync {
    /// The `status` document (see the admin socket protocol in the docs).
    fn status(&self) -> Value;
    /// The `allocations` document: a JSON array, one object per allocation.
    fn allocations(&self) -> Value;
    /// Asks the daemon to stop: `handover` leaves the kernel relaying and
    /// the allocations written down for the next daemon; otherwise every
    /// allocation ends and the programs detach. Answers at once.
    fn stop(&self, handover: bool) -> Value;
    /// Asks the daemon to drain, as SIGTERM does by default: new
    /// allocations are refused, and it exits when the others have ended.
    fn drain(&self) -> Value;
}

/// What can go wrong serving or using the admin socket.
///
/// Each message carries its cause itself (no `source()`), so that a hint
/// such as "is turnxd running?" comes after the cause, not before it.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The socket's directory is missing and cannot be made.
    #[error("cannot create the admin socket directory {path}: {error}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A daemon answers on the socket already.
    #[error(
        "another turnxd serves {path}; give --admin-socket (or [admin] socket) another path, \
         or \"\" to run without one"
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the path; it is left alone.
    #[error("{path} exists and is not a socket; remove it or give --admin-socket another path")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Binding, removing a stale socket or setting its mode failed.
    #[error("cannot set up the admin socket {path}: {error}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The client could not connect.
    #[error("cannot reach turnxd at {path}: {error}; {hint}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
        /// What to check, for the errno at hand.
        hint: &'static str,
    },
    /// The exchange failed after connecting.
    #[error("talking to turnxd at {path}: {error}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The daemon did not answer in time.
    #[error(
        "turnxd did not answer on {path} within {}s; it may be stuck: check its log",
        CLIENT_TIMEOUT.as_secs()
    )]
    Timeout {
        /// The socket.
        path: PathBuf,
    },
    /// The daemon closed without a word: what it does to peers it does not
    /// serve.
    #[error(
        "turnxd closed {path} without answering; only root and the daemon's own user may use \
         the admin socket: are you root?"
    )]
    NoAnswer {
        /// The socket.
        path: PathBuf,
    },
    /// The answer is not JSON.
    #[error("turnxd's answer on {path} is not JSON: {error}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What the parser said.
        error: serde_json::Error,
    },
    /// The daemon answered `{"error": ...}`.
    #[error("turnxd refused the request: {0}")]
    Refused(String),
}

/// A running admin socket. Dropping it stops serving and removes the
/// socket file.
pub struct AdminServer {
    path: PathBuf,
    /// The bound file's identity: on drop only our own file is removed,
    /// never one a later daemon bound at the same path.
    identity: (u64, u64),
    task: JoinHandle<()>,
}

impl AdminServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts the
        // connections in flight too.
        self.task.abort();
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Binds the admin socket at `path` and serves `source` on it from a task
/// of the current tokio runtime.
///
/// Makes the parent directory (mode 0700) when missing, replaces a stale
/// socket nobody answers on, and refuses when a live daemon answers there.
pub async fn serve(path: &Path, source: Arc<dyn AdminSource>) -> Result<AdminServer, AdminError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| AdminError::CreateDir {
                path: dir.to_owned(),
                error,
            })?;
    }
    remove_stale(path).await?;
    let bind_err = |error| AdminError::Bind {
        path: path.to_owned(),
        error,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    // Between bind and chmod the file has the umask's mode; SO_PEERCRED
    // below keeps out anyone who connects in that window.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let task = tokio::spawn(accept_loop(listener, source));
    Ok(AdminServer {
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
        task,
    })
}

/// Removes a socket file left by a daemon that died; refuses to touch a
/// live one or anything that is not a socket.
async fn remove_stale(path: &Path) -> Result<(), AdminError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(AdminError::Bind {
                path: path.to_owned(),
                error,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(AdminError::InUse {
            path: path.to_owned(),
        }),
        // Refused: the file outlived its listener.
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(AdminError::Bind {
                    path: path.to_owned(),
                    error,
                }),
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(AdminError::Bind {
            path: path.to_owned(),
            error,
        }),
    }
}

async fn accept_loop(listener: UnixListener, source: Arc<dyn AdminSource>) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let allowed = stream
                        .peer_cred()
                        .is_ok_and(|cred| cred.uid() == 0 || cred.uid() == own_uid);
                    if !allowed {
                        // Closed without a word: nothing for those we do not serve.
                        tracing::debug!("admin socket: closed a connection from another user");
                        continue;
                    }
                    connections.spawn(handle(stream, source.clone()));
                }
                Err(err) => {
                    // EMFILE and the like pass; a pause keeps this from spinning.
                    tracing::warn!("admin socket: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reaps finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(stream: UnixStream, source: Arc<dyn AdminSource>) {
    let (mut read, mut write) = stream.into_split();
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut read)).await {
        Err(_) => error_answer(format!(
            "no request line within {}s",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(message)) => error_answer(message),
        Ok(Ok(line)) => match command(&line) {
            Err(message) => error_answer(message),
            Ok(command) => {
                let source = source.clone();
                match tokio::task::spawn_blocking(move || answer(&*source, &command)).await {
                    Ok(answer) => answer,
                    Err(err) => error_answer(format!("the daemon failed to answer: {err}")),
                }
            }
        },
    };
    let mut bytes = serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        write.write_all(&bytes).await?;
        write.shutdown().await
    })
    .await;
    // Closing with unread input resets the connection, and the client
    // may lose the answer (an overlong request's error, say): read a
    // little of what is left first.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        for _ in 0..16 {
            if read.read(&mut sink).await? == 0 {
                break;
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// The request line, newline stripped; at most [`MAX_REQUEST_BYTES`].
async fn read_request(read: &mut tokio::net::unix::OwnedReadHalf) -> Result<Vec<u8>, String> {
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|err| format!("reading the request: {err}"))?;
    if line.len() == MAX_REQUEST_BYTES && line.last() != Some(&b'\n') {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// The command of a request line.
fn command(line: &[u8]) -> Result<String, String> {
    let request: Value =
        serde_json::from_slice(line).map_err(|err| format!("the request is not JSON: {err}"))?;
    match request.get("command").and_then(Value::as_str) {
        Some(command) => Ok(command.to_owned()),
        None => Err("the request has no \"command\" string; send {\"command\":\"status\"}".into()),
    }
}

fn answer(source: &dyn AdminSource, command: &str) -> Value {
    match command {
        "status" => source.status(),
        "allocations" => source.allocations(),
        "stop-handover" => source.stop(true),
        "stop-detach" => source.stop(false),
        "drain" => source.drain(),
        other => error_answer(format!(
            "unknown command {other:?}; known: \"status\", \"allocations\", \
             \"stop-handover\", \"stop-detach\", \"drain\""
        )),
    }
}

fn error_answer(message: String) -> Value {
    json!({ "error": message })
}

/// Sends `command` to the daemon at `path` and returns its answer; blocks
/// for at most [`CLIENT_TIMEOUT`].
///
/// An answer `{"error": "..."}` comes back as [`AdminError::Refused`].
pub fn request(path: &Path, command: &str) -> Result<Value, AdminError> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|error| {
        let hint = match error.kind() {
            io::ErrorKind::NotFound => {
                "is turnxd running? is --admin-socket the daemon's [admin] socket?"
            }
            io::ErrorKind::PermissionDenied => {
                "the admin socket is for root and the daemon's user: are you root?"
            }
            io::ErrorKind::ConnectionRefused => {
                "nobody answers there (a socket left by a daemon that stopped): is turnxd running?"
            }
            _ => "is turnxd running? is --admin-socket the daemon's [admin] socket? are you root?",
        };
        AdminError::Connect {
            path: path.to_owned(),
            error,
            hint,
        }
    })?;
    let io_err = |error: io::Error| {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            AdminError::Timeout {
                path: path.to_owned(),
            }
        } else {
            AdminError::Io {
                path: path.to_owned(),
                error,
            }
        }
    };
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(&json!({ "command": command })).expect("a JSON object");
    line.push(b'\n');
    match stream.write_all(&line) {
        Ok(()) => {}
        // A daemon that refuses the peer closes at once; say so, not EPIPE.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
            return Err(AdminError::NoAnswer {
                path: path.to_owned(),
            });
        }
        Err(err) => return Err(io_err(err)),
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        // A read timeout bounds one read; the deadline bounds them all.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AdminError::Timeout {
                path: path.to_owned(),
            });
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > MAX_ANSWER_BYTES {
                    return Err(AdminError::Io {
                        path: path.to_owned(),
                        error: io::Error::other("answer too long"),
                    });
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset && answer.is_empty() => {
                return Err(AdminError::NoAnswer {
                    path: path.to_owned(),
                });
            }
            Err(err) => return Err(io_err(err)),
        }
    }
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::NoAnswer {
            path: path.to_owned(),
        });
    }
    let value: Value = serde_json::from_slice(&answer).map_err(|error| AdminError::BadAnswer {
        path: path.to_owned(),
        error,
    })?;
    if let Some(message) = value.get("error").and_then(Value::as_str) {
        return Err(AdminError::Refused(message.to_owned()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake;

    impl AdminSource for Fake {
        fn status(&self) -> Value {
            json!({ "version": "test", "ready": true, "allocations": 2 })
        }
        fn allocations(&self) -> Value {
            json!([{ "username": "alice", "transport": "udp" }])
        }
        fn stop(&self, handover: bool) -> Value {
            json!({ "stopping": if handover { "handover" } else { "detach" } })
        }
        fn drain(&self) -> Value {
            json!({ "draining": 2 })
        }
    }

    /// A fresh directory under the temp dir; removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "turnx-admin-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn ask(path: &Path, command: &str) -> Result<Value, AdminError> {
        let (path, command) = (path.to_owned(), command.to_owned());
        tokio::task::spawn_blocking(move || request(&path, &command))
            .await
            .unwrap()
    }

    /// Sends raw bytes and returns the raw answer.
    async fn raw(path: &Path, bytes: &[u8]) -> Value {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        serde_json::from_slice(&answer).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn answers_status_and_allocations() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let server = serve(&path, Arc::new(Fake)).await.unwrap();
        assert_eq!(server.path(), path);
        let status = ask(&path, "status").await.unwrap();
        assert_eq!(status["version"], "test");
        assert_eq!(status["allocations"], 2);
        let allocations = ask(&path, "allocations").await.unwrap();
        assert_eq!(allocations[0]["username"], "alice");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unknown_and_malformed_requests_get_errors() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let _server = serve(&path, Arc::new(Fake)).await.unwrap();
        match ask(&path, "reboot").await {
            Err(AdminError::Refused(message)) => assert!(message.contains("unknown command")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let answer = raw(&path, b"{\"command\":\"reboot\"}\n").await;
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("unknown command")
        );
        let answer = raw(&path, b"not json\n").await;
        assert!(answer["error"].as_str().unwrap().contains("not JSON"));
        let answer = raw(&path, b"{\"verb\":\"status\"}").await;
        assert!(answer["error"].as_str().unwrap().contains("command"));
        let long = vec![b' '; MAX_REQUEST_BYTES + 10];
        let answer = raw(&path, &long).await;
        assert!(answer["error"].as_str().unwrap().contains("longer"));
        // A request without a newline, ended by shutdown, still counts.
        let answer = raw(&path, b"{\"command\":\"status\"}").await;
        assert_eq!(answer["version"], "test");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_client_is_answered_after_the_timeout() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let _server = serve(&path, Arc::new(Fake)).await.unwrap();
        let mut stream = UnixStream::connect(&path).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert!(started.elapsed() >= REQUEST_TIMEOUT - Duration::from_millis(100));
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert!(answer["error"].as_str().unwrap().contains("no request"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_socket_is_replaced() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        // A listener that goes away leaves its file behind, as a killed
        // daemon does.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _server = serve(&path, Arc::new(Fake)).await.unwrap();
        assert_eq!(ask(&path, "status").await.unwrap()["version"], "test");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_live_socket_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let _first = serve(&path, Arc::new(Fake)).await.unwrap();
        let err = serve(&path, Arc::new(Fake)).await.unwrap_err();
        assert!(matches!(err, AdminError::InUse { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("another turnxd serves"), "{message}");
        assert!(message.contains("--admin-socket"), "{message}");
        // The first one still serves.
        assert_eq!(ask(&path, "status").await.unwrap()["version"], "test");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn something_other_than_a_socket_is_left_alone() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = serve(&path, Arc::new(Fake)).await.unwrap_err();
        assert!(matches!(err, AdminError::NotASocket { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn modes_are_0600_and_0700_and_drop_removes_the_socket() {
        let dir = TempDir::new();
        let parent = dir.0.join("run").join("turnx");
        let path = parent.join("turnxd.sock");
        let server = serve(&path, Arc::new(Fake)).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&parent), 0o700);
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        drop(server);
        assert!(!path.exists());
        // Nobody serves now: the client says what to check.
        let err = ask(&path, "status").await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("is turnxd running?"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn drop_leaves_a_later_daemons_socket() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let first = serve(&path, Arc::new(Fake)).await.unwrap();
        // Someone replaced the file (a second daemon after removing ours).
        std::fs::remove_file(&path).unwrap();
        let second = serve(&path, Arc::new(Fake)).await.unwrap();
        drop(first);
        assert!(path.exists());
        assert_eq!(ask(&path, "status").await.unwrap()["version"], "test");
        drop(second);
        assert!(!path.exists());
    }

    /// Run by `other_users_are_not_served`, as another user.
    #[test]
    #[ignore = "a helper: other_users_are_not_served runs it as nobody"]
    fn connect_as_another_user() {
        let Ok(path) = std::env::var("TURNX_ADMIN_TEST_SOCKET") else {
            return;
        };
        match request(Path::new(&path), "status") {
            Err(AdminError::NoAnswer { .. }) => std::process::exit(0),
            other => {
                eprintln!("served another user: {other:?}");
                std::process::exit(3)
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn other_users_are_not_served() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: switching to another user needs root");
            return;
        }
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let _server = serve(&path, Arc::new(Fake)).await.unwrap();
        // Open the modes, as a careless directory would: SO_PEERCRED must
        // still keep the other user out.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let socket = path.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(exe)
                .args([
                    "--exact",
                    "admin::tests::connect_as_another_user",
                    "--ignored",
                ])
                .env("TURNX_ADMIN_TEST_SOCKET", socket)
                .uid(65534)
                .gid(65534)
                .stdout(std::process::Stdio::null())
                .status()
        })
        .await
        .unwrap();
        match status {
            Ok(status) => assert!(status.success(), "another user was served: {status}"),
            // The test binary's directory is closed to nobody.
            Err(err) => eprintln!("skipped: cannot run the test binary as nobody: {err}"),
        }
        // Root still is.
        assert_eq!(ask(&path, "status").await.unwrap()["version"], "test");
    }

    #[test]
    fn a_stale_socket_is_reported_with_a_hint() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = request(&path, "status").unwrap_err();
        assert!(matches!(err, AdminError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("is turnxd running?"), "{err}");
    }

    #[test]
    fn a_daemon_that_closes_without_answering_is_reported() {
        let dir = TempDir::new();
        let path = dir.0.join("turnxd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let closer = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let err = request(&path, "status").unwrap_err();
        closer.join().unwrap();
        assert!(matches!(err, AdminError::NoAnswer { .. }), "{err:?}");
        assert!(err.to_string().contains("are you root?"), "{err}");
    }
}
