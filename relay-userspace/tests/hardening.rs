//! turnxd under abuse, on loopback with the kernel offload off (no root
//! needed): what a flood of bad input costs it.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use testkit::{frame::stun_binding_request, process::Daemon};

/// turnxd on a free loopback port, XDP off, at the default log level.
fn turnxd_on_loopback() -> (Daemon, SocketAddr) {
    turnxd_on_loopback_with(&[])
}

/// As [`turnxd_on_loopback`], with more arguments.
fn turnxd_on_loopback_with(extra: &[&str]) -> (Daemon, SocketAddr) {
    // A port free for UDP and TCP now; nothing else here binds it next.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnxd"));
    command.args(["--listen", &server.to_string(), "--no-xdp", "--pin-dir", ""]);
    command.args(["--user", "alice:wonderland", "--stats-interval", "0"]);
    command.args(extra);
    (Daemon::spawn(command).ready("turnxd ready"), server)
}

/// Whether a Binding request to `server` is answered within a second.
fn answers(socket: &UdpSocket, server: SocketAddr) -> bool {
    socket
        .send_to(&stun_binding_request(transaction_id()), server)
        .unwrap();
    let mut buffer = [0u8; 1500];
    socket.recv_from(&mut buffer).is_ok()
}

/// A transaction id not used before in this run.
fn transaction_id() -> [u8; 12] {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&next.to_be_bytes());
    id[8..].copy_from_slice(&std::process::id().to_be_bytes());
    id
}

#[test]
fn a_flood_of_malformed_datagrams_logs_a_bounded_number_of_lines() {
    let (mut daemon, server) = turnxd_on_loopback();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(answers(&socket, server), "{}", daemon.log());
    daemon.settle(Duration::from_millis(200));
    let before = daemon.log().lines().count();
    // STUN-looking datagrams that do not parse: a Binding request whose
    // length field overruns the datagram, and one with a broken attribute.
    let mut overrun = stun_binding_request([7; 12]);
    overrun[3] = 200;
    let mut broken = stun_binding_request([8; 12]);
    broken[3] = 8;
    broken.extend_from_slice(&[0x00, 0x06, 0x00, 0x40, 1, 2, 3, 4]);
    let flood = 20_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..flood {
        let datagram = if i % 2 == 0 { &overrun } else { &broken };
        socket.send_to(datagram, server).unwrap();
        if i % 1000 == 999 {
            // Paced a little, so that the socket buffer holds the flood.
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(Instant::now() < deadline, "the flood is bounded in time");
    }
    // The relay still serves, during and after.
    assert!(answers(&socket, server), "{}", daemon.log());
    // The budget's report comes within its 10-second period.
    assert!(
        daemon.wait_for_line("repeated log lines from", Duration::from_secs(12)),
        "no report of suppressed lines:\n{}",
        daemon.log()
    );
    let added = daemon.log().lines().count() - before;
    assert!(
        added <= 200,
        "{added} log lines for {flood} malformed datagrams:\n{}",
        daemon.log()
    );
    let exit = daemon.stop(libc::SIGINT);
    assert!(exit.success(), "{}", daemon.log());
    // The shutdown counters come out: lines are flushed at exit. (Some of
    // the flood overflows the socket buffer before turnxd reads it.)
    let log = daemon.log();
    let counted = common::logged_number(&log, "dropped_malformed");
    assert!(counted >= flood as u64 / 2, "{counted} counted:\n{log}");
}

/// turnxd's resident memory in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[test]
fn a_stream_client_that_never_reads_is_closed_and_costs_bounded_memory() {
    use std::io::Write;
    let (mut daemon, server) = turnxd_on_loopback();
    let pid = daemon.child.id();
    daemon.settle(Duration::from_millis(300));
    let before = resident_kib(pid);
    let mut stream = std::net::TcpStream::connect(server).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // Binding requests, 1000 to a write, and never a read: each draws a
    // response that has nowhere to go.
    let batch: Vec<u8> = (0..1000)
        .flat_map(|_| stun_binding_request(transaction_id()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    let closed = loop {
        if Instant::now() > deadline || sent >= 2_000_000 {
            break false;
        }
        match stream.write_all(&batch) {
            Ok(()) => sent += 1000,
            // Refused or reset once turnxd closed its end; a write that
            // times out means its receive buffer is full and nothing reads.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break true,
        }
    };
    let grown = resident_kib(pid).saturating_sub(before);
    eprintln!("{sent} requests sent; turnxd grew by {grown} KiB; closed: {closed}");
    assert!(
        closed,
        "turnxd kept a connection that reads nothing:\n{}",
        daemon.log()
    );
    assert!(grown < 32 * 1024, "turnxd grew by {grown} KiB");
    // And it serves others meanwhile.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(answers(&socket, server), "{}", daemon.log());
}

#[test]
fn idle_stream_connections_are_capped_and_closed_and_others_still_allocate() {
    use std::io::{Read, Write};
    let dir = common::TempDir::new("turnxcfg");
    let config = dir.0.join("turnxd.toml");
    std::fs::write(&config, "[limits]\nstream_connections_per_address = 8\n").unwrap();
    let (daemon, server) = turnxd_on_loopback_with(&["--config", config.to_str().unwrap()]);
    let opened = std::time::Instant::now();
    // 20 connections from one address that never say anything: 8 are held,
    // the others closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(server).unwrap())
        .collect();
    let closed_at_once = idle
        .iter_mut()
        .map(|stream| closed_within(stream, Duration::from_millis(500)))
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed_at_once, 12, "{}", daemon.log());
    // Another address is not held back by them: its connection is served.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    other.connect(&server.into()).unwrap();
    let mut other: std::net::TcpStream = other.into();
    other
        .write_all(&stun_binding_request(transaction_id()))
        .unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut header = [0u8; 20];
    other.read_exact(&mut header).unwrap();
    assert_eq!(&header[..2], &[0x01, 0x01], "a Binding success response");
    // And a UDP client allocates meanwhile.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = testkit::client::TurnClient::connect(socket, server, "alice", "wonderland")
        .expect("a 401 and the long-term credentials");
    client
        .allocate(false)
        .expect("an allocation beside the idle connections");
    // The silent ones are closed once the first-message deadline passes.
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(15)));
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "closed after {waited:?}"
    );
}

/// Whether the server closes `stream` within `limit` (it sends nothing).
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => panic!("the server sent something unasked"),
        Err(err) => !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}
