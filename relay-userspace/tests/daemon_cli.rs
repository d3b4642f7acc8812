//! turnxd's command line and logs, without root: it runs with XDP off on
//! loopback. JSON log lines parse one object a line; flags and files that
//! cannot work are refused at start with messages that name them.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::Daemon;

/// A UDP and TCP port free on 127.0.0.1 at the time of asking.
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

fn turnxd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnxd"));
    // No handover file: these daemons run side by side.
    command.env_remove("RUST_LOG").env("TURNXD_STATE_FILE", "");
    command
}

#[test]
fn json_logs_are_one_object_per_line() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = turnxd();
    command.args([
        "--no-xdp",
        "--listen",
        &listen,
        "--relay-address",
        "127.0.0.1",
        "--log-format",
        "json",
        "--user",
        "alice:secret",
    ]);
    let mut daemon = Daemon::spawn(command);
    assert!(
        daemon.wait_for_line("turnxd ready", Duration::from_secs(20)),
        "turnxd did not start:\n{}",
        daemon.log()
    );
    assert!(daemon.stop(libc::SIGINT).success(), "{}", daemon.log());
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: not JSON: {line}"))
        })
        .collect();
    eprintln!("{} JSON log lines", lines.len());
    let ready = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("turnxd ready"))
        })
        .expect("a ready line");
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert!(ready["timestamp"].is_string(), "{ready}");
    assert!(
        lines.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.contains("SIGINT"))),
        "{log}"
    );
}

/// Runs turnxd with `args`, which must make it fail at start, and returns
/// what it printed.
fn refused(args: &[&str]) -> String {
    let mut child = turnxd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("turnxd {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "turnxd {args:?} started: {stderr}");
    stderr
}

#[test]
fn settings_that_cannot_work_are_refused_by_name() {
    let dir = common::TempDir::new("turnxcli");
    let unknown = dir.0.join("unknown.toml");
    std::fs::write(&unknown, "[metrics]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap();
    let unknown = unknown.to_str().unwrap();
    let port = free_port().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{port}");
    for (args, needle) in [
        (vec!["--metrics-listen", "nowhere"], "--metrics-listen"),
        (vec!["--log-format", "xml"], "xml"),
        (vec!["--config", unknown], "lisen"),
        (
            vec![
                "--no-xdp",
                "--listen",
                &listen,
                "--admin-socket",
                "",
                "--metrics-listen",
                &taken,
            ],
            "binding the metrics",
        ),
    ] {
        let stderr = refused(&args);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
