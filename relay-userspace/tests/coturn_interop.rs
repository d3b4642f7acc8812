//! turnxd with a configuration file as an operator writes one (peers
//! restricted to the pod network, a user quota, REST API secrets), against
//! coturn's `turnutils_uclient` in its default mode (RTP/RTCP pairs)
//! relaying to `turnutils_peer`, through namespaces made by the test
//! (client ↔ relay ↔ pod), with the kernel offload off: these test the TURN
//! server and its userspace relay path. `real_clients.rs` runs the same
//! client, and others, on the built-in configuration with the offload on.
//!
//! The negative cases coturn's client cannot express (an expired REST
//! username, a quota) use the library's minimal test client (`turnx::client`).

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{Daemon, Process, TempDir, Topology};
use testkit::client::TurnClient;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "s3cret-for-rest";
const PEER_PORT: &str = "3480";
/// uclient's default mode runs an RTP and an RTCP session per client.
const SESSIONS: u32 = 2;
const COTURN_TOOLS: &[(&str, &str)] = &[
    ("turnutils_uclient", "Debian package coturn"),
    ("turnutils_peer", "Debian package coturn"),
];

/// A relay with turnxd running in it and turnutils_peer in the pod, or
/// `None` (after saying why) when the test cannot run here.
struct Setup {
    topology: Topology,
    daemon: Daemon,
    _peer: Process,
    _config_dir: TempDir,
}

/// `server_extra` goes into `[server]`, `extra_config` at the end.
fn setup(test: &str, server_extra: &str, extra_config: &str) -> Option<Setup> {
    if !common::is_root() {
        eprintln!("skipping {test}: it creates network namespaces and needs root");
        return None;
    }
    if !common::have_all_or_skip(test, COTURN_TOOLS) {
        return None;
    }
    let topology = Topology::new();
    let dir = TempDir::new("turnx");
    let config = format!(
        r#"
[server]
listen = ["{client_side}:3478", "[{client_side_v6}]:3478"]
relay_addresses = ["{pod_side}", "{pod_side_v6}"]
relay_ports = [50000, 50999]
{server_extra}

[auth]
users = {{ {USER} = "{PASSWORD}", quota = "limited" }}
secrets = ["old-secret", "{SECRET}"]

[peers]
allowed = ["198.19.0.0/24", "fd00:19::/64"]

[log]
level = "debug"
stats_interval_secs = 0
{extra_config}
"#,
        client_side = topology.relay_client_side,
        client_side_v6 = topology.relay_client_side_v6,
        pod_side = topology.relay_pod_side,
        pod_side_v6 = topology.relay_pod_side_v6,
    );
    let path = dir.0.join("turnxd.toml");
    std::fs::write(&path, config).unwrap();
    let daemon = common::turnxd_ready(
        &topology.relay,
        &["--no-xdp", "--config", path.to_str().unwrap()],
    );
    let peer = common::start_turnutils_peer(
        &topology.pod,
        &[&topology.pod_ip, &topology.pod_ip_v6],
        PEER_PORT,
    );
    Some(Setup {
        topology,
        daemon,
        _peer: peer,
        _config_dir: dir,
    })
}

/// Runs turnutils_uclient in the client namespace with `args` and returns
/// (success, output).
fn uclient(setup: &Setup, args: &[&str], server: &str) -> (bool, String) {
    let output = setup
        .topology
        .client
        .command("timeout")
        .args(["60", "turnutils_uclient"])
        .args(args)
        .arg(server)
        .output()
        .expect("running turnutils_uclient");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Asserts that a uclient run completed: every message of every session
/// came back, none was lost.
fn assert_complete(setup: &Setup, (ok, output): (bool, String), messages: u32, sessions: u32) {
    let total = messages * sessions;
    let tail: String = output.lines().rev().take(15).collect::<Vec<_>>().join("\n");
    assert!(
        ok,
        "uclient failed:\n{tail}\n--- turnxd:\n{}",
        setup.daemon.log()
    );
    assert!(
        output.contains(&format!("tot_send_msgs={total}, tot_recv_msgs={total}")),
        "not every message came back:\n{tail}"
    );
    assert!(
        output.contains("Total lost packets 0 (0.000000%)"),
        "{tail}"
    );
}

fn udp_args<'a>(setup: &'a Setup, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-u",
        USER,
        "-w",
        PASSWORD,
        "-e",
        &setup.topology.pod_ip,
        "-r",
        PEER_PORT,
    ];
    // 50 messages of 200 bytes at the default 20 ms pace, on each of the
    // RTP and RTCP sessions.
    args.extend_from_slice(&["-n", "50", "-l", "200"]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn uclient_ipv6_client_and_peer() {
    let Some(setup) = setup("uclient_ipv6_client_and_peer", "", "") else {
        return;
    };
    let mut args = udp_args(&setup, &["-x"]);
    let peer = setup.topology.pod_ip_v6.clone();
    args[5] = &peer;
    let result = uclient(&setup, &args, &setup.topology.relay_client_side_v6);
    assert_complete(&setup, result, 50, SESSIONS);
}

#[test]
fn uclient_with_ephemeral_credentials() {
    let Some(setup) = setup("uclient_with_ephemeral_credentials", "", "") else {
        return;
    };
    let args = [
        "-u",
        "bob",
        "-W",
        SECRET,
        "-e",
        &setup.topology.pod_ip,
        "-r",
        PEER_PORT,
        "-n",
        "30",
    ];
    let result = uclient(&setup, &args, &setup.topology.relay_client_side);
    assert_complete(&setup, result, 30, SESSIONS);
}

#[test]
fn uclient_negative_cases() {
    let Some(setup) = setup("uclient_negative_cases", "", "") else {
        return;
    };
    let server = setup.topology.relay_client_side.clone();
    let pod = setup.topology.pod_ip.as_str();
    // (case, credentials flags, peer, what uclient must report). The
    // loopback peer and the client network (outside the allow-list) are
    // refused by policy.
    let cases = [
        (
            "wrong password",
            ["-u", USER, "-w", "not-it"],
            pod,
            "Cannot complete Allocation",
        ),
        (
            "wrong secret",
            ["-u", "bob", "-W", "not-the-secret"],
            pod,
            "Cannot complete Allocation",
        ),
        (
            "loopback peer",
            ["-u", USER, "-w", PASSWORD],
            "127.0.0.1",
            "error 403",
        ),
        (
            "peer outside the allow-list",
            ["-u", USER, "-w", PASSWORD],
            "198.18.0.1",
            "error 403",
        ),
    ];
    for (case, credentials, peer, expected) in cases {
        let mut args = credentials.to_vec();
        args.extend_from_slice(&["-e", peer, "-r", PEER_PORT, "-n", "3"]);
        let (ok, output) = uclient(&setup, &args, &server);
        assert!(!ok && output.contains(expected), "{case}:\n{output}");
    }
}

/// Allocates with long-term credentials from a new socket in the client
/// namespace; returns the error code, if any.
fn allocate(setup: &Setup, username: &str, password: &str) -> Option<u16> {
    let server: SocketAddr = format!("{}:3478", setup.topology.relay_client_side)
        .parse()
        .unwrap();
    setup.topology.client.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        TurnClient::connect(socket, server, username, password)
            .expect("a 401 challenge")
            .allocate(false)
            .err()
            .map(|err| {
                err.code()
                    .unwrap_or_else(|| panic!("Allocate failed: {err}"))
            })
    })
}

#[test]
fn expired_ephemeral_username_and_quota() {
    let Some(setup) = setup(
        "expired_ephemeral_username_and_quota",
        "",
        "[limits]\nuser_quota = 1\n",
    ) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = format!("{}:bob", now - 10);
    let valid = format!("{}:bob", now + 3600);
    let password = |username: &str| turnx::turn::auth::rest_password(SECRET, username);
    assert_eq!(
        allocate(&setup, &expired, &password(&expired)),
        Some(401),
        "expired username"
    );
    assert_eq!(
        allocate(&setup, &valid, &password(&valid)),
        None,
        "valid username"
    );
    // user_quota = 1: the second allocation of one user is refused (each
    // call uses a new socket, so a new 5-tuple).
    assert_eq!(allocate(&setup, "quota", "limited"), None);
    assert_eq!(allocate(&setup, "quota", "limited"), Some(486));
}

/// The subject the TURNS listener presents, as seen from the client.
fn served_subject(setup: &Setup) -> String {
    let output = setup
        .topology
        .client
        .command("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {}:5349 </dev/null 2>/dev/null | openssl x509 -noout -subject",
            setup.topology.relay_client_side
        ))
        .output()
        .expect("running openssl s_client");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn uclient_over_tls_and_certificate_reload() {
    let temp = TempDir::new("turnxtls");
    let dir = temp.0.clone();
    if common::is_root() && common::have("openssl") {
        common::write_certificate(&dir, "turnx-first", "198.18.0.2");
    }
    let server_extra = format!(
        "tls_listen = [\"198.18.0.2:5349\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    let Some(setup) = setup("uclient_over_tls_and_certificate_reload", &server_extra, "") else {
        return;
    };
    let args = udp_args(&setup, &["-t", "-S", "-p", "5349"]);
    let result = uclient(&setup, &args, &setup.topology.relay_client_side);
    assert_complete(&setup, result, 50, SESSIONS);

    assert!(
        served_subject(&setup).contains("turnx-first"),
        "{}",
        served_subject(&setup)
    );
    common::write_certificate(&dir, "turnx-second", "198.18.0.2");
    let reloaded = common::wait_for(Duration::from_secs(10), || {
        served_subject(&setup)
            .contains("turnx-second")
            .then_some(())
    });
    assert!(
        reloaded.is_some(),
        "still serving: {}",
        served_subject(&setup)
    );
}
