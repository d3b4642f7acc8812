//! Processes a run starts, each killed by its PID if the run fails, and
//! the files they need.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{Netns, unique_name, wait_for};

/// A child process killed (by PID) when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// coturn's `turnutils_peer` echoing UDP on `addresses` at `port` in
/// `ns`, given a moment to bind.
pub fn start_turnutils_peer(ns: &Netns, addresses: &[&str], port: &str) -> Process {
    let mut command = ns.command("turnutils_peer");
    for address in addresses {
        command.args(["-L", address]);
    }
    let child = command
        .args(["-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting turnutils_peer");
    std::thread::sleep(Duration::from_millis(300));
    Process(child)
}

/// A directory under the system's temporary directory, unique to the run,
/// removed on drop (also on failure).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon (turnxd) in a namespace whose log lines are collected, killed
/// (by PID) if the run fails.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    /// The admin socket this harness chose for it, removed on drop (a
    /// killed daemon cannot remove it itself).
    admin_socket: Option<std::path::PathBuf>,
    /// The handover directory this harness chose for it, removed on drop.
    _state_dir: Option<TempDir>,
}

impl Daemon {
    /// Starts `program` with `args` in `ns`, collecting its stderr.
    pub fn start(ns: &Netns, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Daemon {
        let mut command = ns.command(program);
        command.args(args);
        Daemon::spawn(command)
    }

    /// Starts `command` (in this namespace, unless it enters another),
    /// collecting its stderr.
    pub fn spawn(mut command: Command) -> Daemon {
        // turnxd's default admin socket is one per machine: give each test
        // daemon its own, unless the test chose one.
        let mut admin_socket = None;
        if !command
            .get_envs()
            .any(|(key, _)| key == "TURNXD_ADMIN_SOCKET")
        {
            let socket =
                std::env::temp_dir().join(format!("{}.sock", crate::unique_name("turnxd")));
            command.env("TURNXD_ADMIN_SOCKET", &socket);
            admin_socket = Some(socket);
        }
        // Its handover file too: one per daemon, unless the test shares
        // one between the daemons of a restart.
        let mut state_dir = None;
        if !command
            .get_envs()
            .any(|(key, _)| key == "TURNXD_STATE_FILE")
        {
            let dir = TempDir::new("txstate");
            command.env("TURNXD_STATE_FILE", dir.0.join("state.json"));
            state_dir = Some(dir);
        }
        let mut child = command
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            log: Vec::new(),
            admin_socket,
            _state_dir: state_dir,
        }
    }

    /// Starts the daemon and waits up to 20 s for a line containing
    /// `ready`.
    pub fn start_ready(
        ns: &Netns,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        ready: &str,
    ) -> Daemon {
        Daemon::start(ns, program, args).ready(ready)
    }

    /// Waits up to 20 s for a line containing `ready`.
    pub fn ready(mut self, ready: &str) -> Daemon {
        assert!(
            self.wait_for_line(ready, Duration::from_secs(20)),
            "the daemon did not say {ready:?}:\n{}",
            self.log()
        );
        self
    }

    /// Waits up to `limit` for a log line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> bool {
        if self.log.iter().any(|line| line.contains(needle)) {
            return true;
        }
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Collects the lines it logs for `duration`.
    pub fn settle(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => return,
            }
        }
    }

    /// Sends `signal` and waits up to 10 s for the exit status.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: signalling the child we spawned, by its PID.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = wait_for(Duration::from_secs(10), || {
            self.child.try_wait().expect("waiting for the daemon")
        })
        .expect("the daemon did not exit within 10 s of the signal");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        status
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(socket) = &self.admin_socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The first number logged for `field`, as in `to_peer_packets: 1`.
pub fn logged_number(log: &str, field: &str) -> u64 {
    logged_number_after(log, "", field)
}

/// The first number logged for `field` after the first `marker`, as in
/// `kernel_relayed: KernelRelayed { to_peer_packets: 1, … }`.
pub fn logged_number_after(log: &str, marker: &str, field: &str) -> u64 {
    let from = log
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in:\n{log}"));
    let rest = &log[from..];
    let start = rest
        .find(&format!("{field}: "))
        .unwrap_or_else(|| panic!("no {field} after {marker:?} in:\n{log}"));
    rest[start + field.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not a number in:\n{log}"))
}

/// Writes a self-signed certificate for the IP address `ip`, named `name`,
/// and its key as `tls.crt` and `tls.key` into `dir`, replacing both by
/// rename as a secret update would.
pub fn write_certificate(dir: &Path, name: &str, ip: &str) {
    let output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .arg("-keyout")
        .arg(dir.join("tls.key.new"))
        .arg("-out")
        .arg(dir.join("tls.crt.new"))
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).expect("renaming the key");
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).expect("renaming the cert");
}
