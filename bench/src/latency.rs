//! Round-trip time through the relay: a client in the client namespace
//! sends a datagram to an echo in the pod namespace (through TURN as
//! ChannelData, or routed directly for kernel forwarding) and waits for it
//! to come back; optionally while the generator offers a fixed load.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use testkit::client::TurnClient;

use crate::{
    flows::{Direction, Traffic, payload},
    programs::BenchPrograms,
    relays::{PASSWORD, TURN_PORT, USERNAME},
    stats::percentile,
    throughput,
    topology::{CLIENT_V4, POD_V4, RELAY_CLIENT_SIDE_V4, Topology},
};

/// The echo's port in the pod, outside the sink's port ranges.
const ECHO_PORT: u16 = 9000;
/// The latency client's first port; each series takes the next one down,
/// below the measured bindings' ports. A port is never used twice: coturn
/// keeps a deleted allocation's 5-tuple for a while and answers 437 to a
/// new Allocate from it.
const FIRST_CLIENT_PORT: u16 = 19_999;
/// The port the next series uses.
static NEXT_CLIENT_PORT: std::sync::atomic::AtomicU16 =
    std::sync::atomic::AtomicU16::new(FIRST_CLIENT_PORT);
/// How long one ping waits for its echo.
const PING_TIMEOUT: Duration = Duration::from_millis(200);

/// Round-trip times of one series of pings.
#[derive(Clone, Debug, Default)]
pub struct Rtts {
    /// Round-trip times in microseconds, sorted.
    pub micros: Vec<f64>,
    /// Pings whose echo did not come back in time.
    pub lost: u64,
    /// The load offered meanwhile, if any, and what arrived of it.
    pub load: Option<throughput::Sample>,
}

impl Rtts {
    /// The `p`-th percentile in microseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.micros, p)
    }
}

/// How the pinger reaches the echo: the socket, where it sends, what it
/// sends (ChannelData through TURN, the bare payload when routed), and the
/// TURN client that keeps the allocation.
struct Path {
    socket: UdpSocket,
    to: SocketAddr,
    message: Vec<u8>,
    client: Option<TurnClient>,
}

/// Measures `pings` round trips of a 64-byte payload, through TURN when
/// `turn`, else routed; with `load` (traffic and rate) offered meanwhile.
pub fn measure(
    programs: &mut BenchPrograms,
    topology: &Topology,
    turn: bool,
    pings: usize,
    load: Option<(&Traffic, u64)>,
) -> Result<Rtts> {
    let stop = Arc::new(AtomicBool::new(false));
    let echo = start_echo(topology, Arc::clone(&stop))?;
    let result = (|| {
        // A benchmark runs a few dozen series: the ports stay far above
        // the ephemeral and well-known ranges' ends.
        let port = NEXT_CLIENT_PORT.fetch_sub(1, Ordering::Relaxed);
        let path = topology
            .client
            .run(|| connect(turn, port))
            .context("setting up the latency client")?;
        let rtts = match load {
            None => topology
                .client
                .run_on(Some(topology.load_core), || ping(&path, pings))?,
            Some((traffic, rate)) => {
                // The load runs a little longer than the pings need.
                let duration = Duration::from_secs_f64((pings as f64 * 200e-6).max(1.0));
                let (rtts, sample) = std::thread::scope(|scope| {
                    let pinger = scope.spawn(|| {
                        std::thread::sleep(Duration::from_millis(100));
                        topology
                            .client
                            .run_on(Some(topology.load_core), || ping(&path, pings))
                    });
                    let sample = throughput::run(
                        programs,
                        topology,
                        traffic,
                        Direction::ToPod,
                        duration,
                        Some(rate),
                    )?;
                    let rtts = pinger
                        .join()
                        .map_err(|_| anyhow::anyhow!("the pinger panicked"))??;
                    anyhow::Ok((rtts, sample))
                })?;
                Rtts {
                    load: Some(sample),
                    ..rtts
                }
            }
        };
        // Deleted, so the next series can allocate from the same port.
        if let Some(client) = &path.client {
            client.refresh(0).context("deleting the allocation")?;
        }
        Ok(rtts)
    })();
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo panicked"))??;
    result
}

fn connect(turn: bool, port: u16) -> Result<Path> {
    let socket = UdpSocket::bind((CLIENT_V4, port)).context("binding the pinger")?;
    let echo = SocketAddr::new(POD_V4.into(), ECHO_PORT);
    let data = payload(64);
    let path = if turn {
        let server = SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), TURN_PORT);
        let client = TurnClient::connect(socket, server, USERNAME, PASSWORD)
            .context("first Allocate (401 expected)")?;
        client.allocate(false).context("Allocate")?;
        client.channel_bind(0x4000, echo).context("ChannelBind")?;
        Path {
            socket: client.socket.try_clone()?,
            to: server,
            message: testkit::frame::channel_data(0x4000, &data, false),
            client: Some(client),
        }
    } else {
        Path {
            socket,
            to: echo,
            message: data,
            client: None,
        }
    };
    path.socket.set_read_timeout(Some(PING_TIMEOUT))?;
    Ok(path)
}

fn ping(path: &Path, pings: usize) -> Result<Rtts> {
    let mut rtts = Rtts::default();
    let mut buffer = [0u8; 2048];
    // A few pings first, so that first-packet work (neighbours, the
    // kernel binding) is not measured.
    for round in 0..pings + 10 {
        let start = Instant::now();
        path.socket.send_to(&path.message, path.to)?;
        let echoed = path.socket.recv(&mut buffer).is_ok();
        let rtt = start.elapsed();
        if round < 10 {
            continue;
        }
        if echoed {
            rtts.micros.push(rtt.as_secs_f64() * 1e6);
        } else {
            rtts.lost += 1;
        }
    }
    rtts.micros.sort_by(f64::total_cmp);
    Ok(rtts)
}

/// An echo on the pod's [`ECHO_PORT`] until `stop` is set.
fn start_echo(
    topology: &Topology,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let socket = topology
        .pod
        .run(|| UdpSocket::bind((POD_V4, ECHO_PORT)))
        .context("binding the echo")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let core = topology.load_core;
    Ok(std::thread::spawn(move || {
        crate::cpu::pin_task(0, core)?;
        let mut buffer = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, from)) = socket.recv_from(&mut buffer) {
                socket.send_to(&buffer[..len], from)?;
            }
        }
        Ok(())
    }))
}
