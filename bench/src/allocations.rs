//! Allocation setup rate and memory per allocation: clients in the client
//! namespace run authenticated Allocate + ChannelBind exchanges as fast as
//! the server answers them, several at a time; the server's resident memory
//! is read before and after.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use testkit::client::TurnClient;

use crate::{
    cpu,
    relays::{FIRST_CLIENT_PORT, PASSWORD, Server, TURN_PORT, USERNAME},
    topology::{EXTRA_CLIENTS_V4, POD_V4, RELAY_CLIENT_SIDE_V4, Topology},
};

/// Exchanges in flight at once.
const CONCURRENCY: usize = 16;
/// Client ports per client address.
const PORTS_PER_ADDRESS: usize = 40_000;

/// One step of the allocation load: allocations made so far, and what it
/// cost.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Live allocations after the step.
    pub allocations: u64,
    /// Allocations that failed during the step.
    pub failed: u64,
    /// Allocate + ChannelBind exchanges per second during the step.
    pub rate: f64,
    /// Server resident memory per live allocation, in bytes.
    pub bytes_per_allocation: f64,
}

/// Grows the number of allocations on `server` to each count in `targets`
/// in turn (increasing), reporting a [`Step`] at each. Each allocation
/// comes from its own client address and port; every other one asks for an
/// IPv6 relayed address, so that 100 000 fit the relay's port range.
pub fn grow(
    topology: &Topology,
    server: &Server,
    targets: &[u64],
    time_limit: Duration,
) -> Result<Vec<Step>> {
    let capacity = (EXTRA_CLIENTS_V4.len() * PORTS_PER_ADDRESS) as u64;
    ensure!(
        targets.iter().all(|&t| t <= capacity),
        "at most {capacity} allocations fit the client addresses"
    );
    let baseline = cpu::resident_bytes(server.pid())? as f64;
    let mut done = 0u64;
    let mut all_failed = 0u64;
    let mut steps = Vec::new();
    for &target in targets {
        let start = Instant::now();
        let next = AtomicU64::new(done);
        let failed = AtomicU64::new(0);
        let deadline = start + time_limit;
        std::thread::scope(|scope| {
            for _ in 0..CONCURRENCY {
                scope.spawn(|| {
                    topology.client.run_on(Some(topology.load_core), || {
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            if index >= target || Instant::now() > deadline {
                                break;
                            }
                            if allocate(index).is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                });
            }
        });
        let elapsed = start.elapsed();
        let attempted = next.load(Ordering::Relaxed).min(target) - done;
        let failed = failed.load(Ordering::Relaxed);
        done += attempted;
        all_failed += failed;
        let live = done - all_failed;
        let resident = cpu::resident_bytes(server.pid())? as f64;
        steps.push(Step {
            allocations: live,
            failed,
            rate: (attempted - failed) as f64 / elapsed.as_secs_f64(),
            bytes_per_allocation: (resident - baseline) / live.max(1) as f64,
        });
    }
    Ok(steps)
}

/// Allocation `index`: its own client address and port, Allocate (IPv6
/// relayed address for odd indices), ChannelBind to a pod port. The socket
/// closes afterwards; the allocation lives on in the server.
fn allocate(index: u64) -> Result<()> {
    let index = index as usize;
    let address = EXTRA_CLIENTS_V4[index / PORTS_PER_ADDRESS];
    let port = FIRST_CLIENT_PORT as usize + index % PORTS_PER_ADDRESS;
    let socket = UdpSocket::bind((address, port as u16))
        .with_context(|| format!("binding {address}:{port}"))?;
    let server = SocketAddr::new(RELAY_CLIENT_SIDE_V4.into(), TURN_PORT);
    let client = TurnClient::connect(socket, server, USERNAME, PASSWORD)?;
    let ipv6 = index % 2 == 1;
    client.allocate(ipv6)?;
    let peer: IpAddr = if ipv6 {
        crate::topology::POD_V6.into()
    } else {
        POD_V4.into()
    };
    client.channel_bind(0x4000, SocketAddr::new(peer, 10_000))?;
    Ok(())
}
