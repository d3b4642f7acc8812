//! The TURN server's I/O on tokio: UDP and TCP listeners, one relayed UDP
//! socket per allocation, the timer, and the event stream. The protocol
//! lives in [`crate::turn`]; this module only moves bytes and time in and
//! out of it.
//!
//! The server runs in shards, one per worker core (`ShellConfig::workers`).
//! Each has its own protocol core, behind a mutex held only while it
//! computes (sends happen after it is released), and its own socket of
//! every UDP listener, in one SO_REUSEPORT group per address: the kernel
//! hands each client's datagrams, by a hash of its address and port, to
//! one shard, which holds that client's allocation, its relayed sockets
//! and their receive loops. A stream client's connection is given to a
//! shard by the same kind of hash. What is relay-wide (quotas,
//! reservations, budgets) is in the shards' shared
//! [`Ledger`](crate::turn::ledger::Ledger); the kernel offload, the
//! relayed sockets' registry and the stream writers are shared too.

mod batch;
pub mod framing;
mod gso;
pub mod local_addresses;
pub mod relay_sockets;
pub mod streams;
pub mod tls;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};

use self::{
    framing::StreamFramer,
    relay_sockets::{RelaySockets, UdpRelayAllocator},
    streams::{Admission, Slot, StreamLimits, StreamWriter},
};
use crate::{
    offload::{KernelRelayed, Offload, OffloadStats},
    state_file::RelayState,
    turn::{
        Destination, Event, FiveTuple, Now, Outbox, Server, ServerConfig, Transport, ledger::Ledger,
    },
};

/// Where the server listens and relays.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// UDP and TCP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS-over-TCP listen addresses (TURNS).
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate and key for TURNS; required when `tls_listen` is not
    /// empty.
    pub tls: Option<tls::TlsFiles>,
    /// IPv4 address of relayed sockets; `None` offers no IPv4 relaying.
    pub relay_ipv4: Option<IpAddr>,
    /// IPv6 address of relayed sockets; `None` offers no IPv6 relaying.
    pub relay_ipv6: Option<IpAddr>,
    /// Ports relayed sockets bind to.
    pub relay_ports: RangeInclusive<u16>,
    /// The protocol configuration.
    pub server: ServerConfig,
    /// Caps on concurrent TCP and TLS connections.
    pub streams: StreamLimits,
    /// Shards: protocol cores, each fed by its own socket of every UDP
    /// listener. 1 runs one core and no SO_REUSEPORT group.
    pub workers: usize,
}

/// An allocation as `turnxctl allocations` shows it.
#[derive(Clone, Debug)]
pub struct AllocationReport {
    /// What the core knows of it.
    pub view: crate::turn::AllocationView,
    /// What the kernel relayed for each of `view.channels`, in order;
    /// `None` for a channel the kernel does not hold.
    pub kernel: Vec<Option<KernelRelayed>>,
}

/// The kernel offload's state.
#[derive(Clone, Copy, Debug)]
pub struct OffloadReport {
    /// What it did.
    pub stats: OffloadStats,
    /// What the kernel relayed, live bindings included.
    pub relayed: KernelRelayed,
    /// Bindings installed now.
    pub bindings: usize,
    /// Bindings the kernel can hold.
    pub capacity: u32,
}

/// What the shards of the running server share.
struct Common {
    relays: Arc<RelaySockets>,
    streams: Mutex<HashMap<FiveTuple, StreamWriter>>,
    /// Admits stream connections under the caps.
    admission: Arc<Admission>,
    /// The kernel offload, which follows every lifecycle event, in order,
    /// before anything the same step produced is sent: a client that sees
    /// its Refresh(0) answered can rely on the kernel binding being gone.
    /// One allocation's events all come from its shard, so they stay in
    /// order.
    offload: Mutex<Option<Offload>>,
}

/// One shard of the running server: a protocol core and the sockets that
/// feed it.
struct Shard {
    /// Its place among the shards.
    index: usize,
    core: Mutex<Server>,
    /// This shard's socket of each UDP listener.
    udp_listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    common: Arc<Common>,
}

/// A handle on the running server.
pub struct TurnServer {
    shards: Vec<Arc<Shard>>,
    common: Arc<Common>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The key of nonces and reservation tokens, which a handover passes
    /// on.
    key: [u8; 32],
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    }
}

/// Sets an integer socket option.
fn set_int_option(fd: i32, level: i32, name: i32, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt with a valid fd and a c_int option value of its
    // size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Receive buffer of a UDP listener, in bytes: every client of the port
/// shares it. The kernel's default (about 208 KiB) holds a few
/// milliseconds of media at 100 k pps, and a scheduling hiccup longer than
/// that loses datagrams below saturation. A buffer is a limit, not an
/// allocation: a socket without traffic costs no buffer memory, and the
/// kernel's `net.ipv4.udp_mem` bounds all of them together.
pub const LISTENER_RECEIVE_BUFFER: libc::c_int = 4 << 20;
/// Receive buffer of a relayed socket, in bytes: one allocation's peers.
pub const RELAYED_RECEIVE_BUFFER: libc::c_int = 1 << 20;
/// Send buffer of every UDP socket, in bytes: room for the datagrams sent
/// while the link's queue drains (1 MiB still overflowed at 150 k pps).
pub const UDP_SEND_BUFFER: libc::c_int = 4 << 20;

/// Sets a UDP socket's receive buffer to `receive` bytes and its send
/// buffer to [`UDP_SEND_BUFFER`]: past the `net.core.[rw]mem_max` limits
/// with CAP_NET_ADMIN (as turnxd runs), else up to them.
fn set_udp_buffers(fd: i32, receive: libc::c_int) {
    for (force, plain, size) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, receive),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, UDP_SEND_BUFFER),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, size).is_err()
            && let Err(err) = set_int_option(fd, libc::SOL_SOCKET, plain, size)
        {
            tracing::debug!("cannot size a UDP socket's buffer: {err}");
        }
    }
}

/// Binds a socket2 socket: IPv6 sockets are IPv6-only so that `[::]:p`
/// and `0.0.0.0:p` can both be bound. `reuse_port` joins the address's
/// SO_REUSEPORT group.
fn bind_socket(
    address: SocketAddr,
    kind: socket2::Type,
    reuse_port: bool,
) -> Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, kind, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// Binds `shards` sockets of a UDP listener, one per shard, in one
/// SO_REUSEPORT group when there are several.
fn bind_udp_listener(address: SocketAddr, shards: usize) -> Result<Vec<UdpSocket>> {
    use std::os::fd::AsRawFd;
    (0..shards)
        .map(|_| {
            let udp = bind_socket(address, socket2::Type::DGRAM, shards > 1)
                .with_context(|| format!("binding UDP listener {address}"))?;
            set_udp_buffers(udp.as_raw_fd(), LISTENER_RECEIVE_BUFFER);
            if address.ip().is_unspecified() {
                batch::report_destinations(udp.as_raw_fd(), address.is_ipv6()).with_context(
                    || format!("asking the wildcard listener {address} for destinations"),
                )?;
            }
            Ok(UdpSocket::from_std(udp.into())?)
        })
        .collect()
}

/// The shard of a stream client: any fixed spread does, since a
/// connection's allocation lives and dies with it.
fn stream_shard(shards: &[Arc<Shard>], client: SocketAddr) -> &Arc<Shard> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(client);
    &shards[(hash % shards.len() as u64) as usize]
}

impl TurnServer {
    /// Binds every listener and starts serving; `offload`, when given,
    /// mirrors channel bindings into the kernel.
    pub async fn start(config: ShellConfig, offload: Option<Offload>) -> Result<TurnServer> {
        Self::start_with(config, offload, None).await
    }

    /// As [`Self::start`], taking over what another daemon handed over
    /// (`previous`) before serving: its key, its UDP allocations, each in
    /// the shard of the same place (where the kernel's SO_REUSEPORT hash
    /// sends its client, as long as the number of shards is the same), and
    /// its reservations. Their relayed addresses are bound again, and the
    /// offload installs their channels again.
    pub async fn start_with(
        config: ShellConfig,
        offload: Option<Offload>,
        previous: Option<RelayState>,
    ) -> Result<TurnServer> {
        let workers = config.workers.max(1);
        let relays = Arc::new(RelaySockets::new(workers));
        let key = previous
            .as_ref()
            .and_then(RelayState::key)
            .unwrap_or_else(rand::random);
        let ledger = Ledger::new(key, config.server.amplification);
        let local =
            local_addresses::read().context("reading the node's addresses for the peer policy")?;
        let mut udp_listeners = vec![HashMap::new(); workers];
        let mut tcp_listeners = Vec::new();
        for address in &config.listen {
            for (shard, udp) in bind_udp_listener(*address, workers)?
                .into_iter()
                .enumerate()
            {
                udp_listeners[shard].insert(*address, Arc::new(udp));
            }
            let tcp = bind_socket(*address, socket2::Type::STREAM, false)
                .with_context(|| format!("binding TCP listener {address}"))?;
            tcp.listen(1024)?;
            tcp_listeners.push((*address, TcpListener::from_std(tcp.into())?));
        }
        let common = Arc::new(Common {
            relays: Arc::clone(&relays),
            streams: Mutex::new(HashMap::new()),
            admission: Admission::new(config.streams),
            offload: Mutex::new(offload),
        });
        let shards: Vec<Arc<Shard>> = udp_listeners
            .into_iter()
            .enumerate()
            .map(|(index, udp_listeners)| {
                let allocator = UdpRelayAllocator::new(
                    config.relay_ipv4,
                    config.relay_ipv6,
                    config.relay_ports.clone(),
                    Arc::clone(&relays),
                    index,
                );
                let ledger = Arc::clone(&ledger);
                let mut core =
                    Server::shard(config.server.clone(), key, Box::new(allocator), ledger);
                core.set_local_addresses(local.iter().copied());
                Arc::new(Shard {
                    index,
                    core: Mutex::new(core),
                    udp_listeners,
                    common: Arc::clone(&common),
                })
            })
            .collect();
        if let Some(previous) = &previous {
            take_over(&shards, previous);
        }
        let mut tasks = Vec::new();
        for shard in &shards {
            for (address, socket) in &shard.udp_listeners {
                tasks.push(tokio::spawn(udp_loop(
                    Arc::clone(shard),
                    UdpRole::Listener(*address),
                    Arc::clone(socket),
                )));
            }
            tasks.push(tokio::spawn(timer(Arc::clone(shard))));
        }
        for (address, listener) in tcp_listeners {
            tasks.push(tokio::spawn(tcp_listener(
                shards.clone(),
                address,
                listener,
            )));
        }
        if !config.tls_listen.is_empty() {
            let files = config
                .tls
                .clone()
                .context("TLS listen addresses need a certificate and key")?;
            let state = Arc::new(tls::TlsState::load(files)?);
            for address in &config.tls_listen {
                let tcp = bind_socket(*address, socket2::Type::STREAM, false)
                    .with_context(|| format!("binding TLS listener {address}"))?;
                tcp.listen(1024)?;
                let listener = TcpListener::from_std(tcp.into())?;
                tasks.push(tokio::spawn(tls_listener(
                    shards.clone(),
                    *address,
                    listener,
                    Arc::clone(&state),
                )));
            }
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(tls::RELOAD_CHECK);
                loop {
                    tick.tick().await;
                    state.reload_if_changed();
                }
            }));
        }
        tasks.push(tokio::spawn(local_addresses::follow(shards.clone())));
        Ok(TurnServer {
            shards,
            common,
            tasks,
            key,
        })
    }

    /// Whether allocation state changed since the last call, in any shard.
    pub fn take_changed(&self) -> bool {
        let mut changed = false;
        for shard in &self.shards {
            changed |= shard.core.lock().expect("core lock").take_changed();
        }
        changed
    }

    /// What a handover passes on: the key, every shard's UDP allocations
    /// and the reservations, as of now.
    pub fn snapshot(&self) -> RelayState {
        let at = Instant::now();
        let mut shards = Vec::with_capacity(self.shards.len());
        let mut counters = Vec::with_capacity(self.shards.len());
        let mut ledger = None;
        for shard in &self.shards {
            let core = shard.core.lock().expect("core lock");
            shards.push(core.snapshot(at));
            counters.push(core.counters().clone());
            ledger.get_or_insert_with(|| core.snapshot_ledger(at));
        }
        RelayState::new(self.key, shards, counters, ledger.unwrap_or_default())
    }

    /// Stops serving without ending anything, for a handover: the
    /// listeners and timers stop, and allocations, relayed sockets and
    /// kernel bindings stay as they are until the process exits. Returns
    /// the state to hand over, taken after the last request was handled.
    pub fn stop_for_handover(&self) -> RelayState {
        for task in &self.tasks {
            task.abort();
        }
        self.snapshot()
    }

    /// Runs `f` on each shard's core in turn.
    fn each_core(&self, mut f: impl FnMut(&Server)) {
        for shard in &self.shards {
            f(&shard.core.lock().expect("core lock"));
        }
    }

    /// Counters of the cores, summed.
    pub fn stats(&self) -> crate::turn::Stats {
        let mut stats = crate::turn::Stats::default();
        self.each_core(|core| stats.absorb(&core.stats()));
        stats
    }

    /// Every counter of the cores, summed, for metrics.
    pub fn counters(&self) -> crate::turn::counters::Counters {
        let mut counters = crate::turn::counters::Counters::default();
        self.each_core(|core| counters.absorb(core.counters()));
        counters
    }

    /// Number of live allocations.
    pub fn allocations(&self) -> usize {
        let mut count = 0;
        self.each_core(|core| count += core.allocation_count());
        count
    }

    /// Live allocations of each shard, in shard order: how evenly the
    /// kernel spreads clients over them.
    pub fn allocations_by_shard(&self) -> Vec<usize> {
        let mut counts = Vec::with_capacity(self.shards.len());
        self.each_core(|core| counts.push(core.allocation_count()));
        counts
    }

    /// Live allocations by transport.
    pub fn allocations_by_transport(&self) -> [(Transport, usize); 3] {
        let mut counts = Transport::ALL.map(|transport| (transport, 0));
        self.each_core(|core| {
            for (total, (_, count)) in counts.iter_mut().zip(core.allocations_by_transport()) {
                total.1 += count;
            }
        });
        counts
    }

    /// Live allocations per user (the id of REST API usernames).
    pub fn user_allocations(&self) -> Vec<(String, u32)> {
        let mut users = std::collections::BTreeMap::<String, u32>::new();
        self.each_core(|core| {
            for (user, count) in core.user_allocations() {
                *users.entry(user.to_owned()).or_insert(0) += count;
            }
        });
        users.into_iter().collect()
    }

    /// Every allocation, with what the kernel relayed for each channel
    /// it holds a binding of.
    pub fn allocation_reports(&self) -> Vec<AllocationReport> {
        let mut views = Vec::new();
        self.each_core(|core| views.extend(core.allocations_view(Instant::now())));
        views.sort_unstable_by_key(|view| view.client);
        // One binding's read at a time under the offload's lock, which the
        // cores wait on when they bind or unbind.
        let relayed = |client, channel| {
            let offload = self.common.offload.lock().expect("offload lock");
            offload.as_ref()?.binding_relayed(client, channel)
        };
        views
            .into_iter()
            .map(|view| {
                let kernel = view
                    .channels
                    .iter()
                    .map(|channel| relayed(view.client, channel.number))
                    .collect();
                AllocationReport { view, kernel }
            })
            .collect()
    }

    /// What the kernel offload did so far, if there is one.
    pub fn offload_stats(&self) -> Option<OffloadStats> {
        let offload = self.common.offload.lock().expect("offload lock");
        offload.as_ref().map(Offload::stats)
    }

    /// The kernel offload's state, if there is one, with what the kernel
    /// relayed read afresh: a few bindings at a time, so that the core,
    /// which waits on the offload when it binds or unbinds, never waits
    /// for a read of every binding.
    pub fn offload_report(&self) -> Option<OffloadReport> {
        let slots = self
            .common
            .offload
            .lock()
            .expect("offload lock")
            .as_ref()?
            .live_slots();
        for chunk in slots.chunks(REFRESH_CHUNK) {
            if let Some(offload) = self.common.offload.lock().expect("offload lock").as_mut() {
                offload.refresh_relayed(chunk);
            }
        }
        let offload = self.common.offload.lock().expect("offload lock");
        offload.as_ref().map(|offload| OffloadReport {
            stats: offload.stats(),
            relayed: offload.kernel_relayed(),
            bindings: offload.bindings(),
            capacity: offload.capacity(),
        })
    }

    /// Applies a reloaded protocol configuration; allocations carry on.
    pub fn reconfigure(&self, config: ServerConfig) {
        for shard in &self.shards {
            shard.run(|core| core.reconfigure(config.clone()));
        }
    }

    /// Starts draining: new allocations are refused (or sent to
    /// `alternate`), the others carry on.
    pub fn drain(&self, alternate: Option<SocketAddr>) {
        for shard in &self.shards {
            shard.run(|core| core.set_draining(alternate));
        }
    }

    /// For tests: panics in a task of its own while holding the core's
    /// lock, the fault the daemon must not survive.
    #[doc(hidden)]
    pub fn inject_fault(&self) {
        let shard = Arc::clone(&self.shards[0]);
        tokio::spawn(async move { shard.run(|_| panic!("a fault injected for a test")) });
    }

    /// Deletes every allocation, and with them every kernel binding, and
    /// stops serving; returns what the offload did.
    pub fn shutdown(&self) -> Option<OffloadStats> {
        for task in &self.tasks {
            task.abort();
        }
        for shard in &self.shards {
            shard.run(|core| core.shutdown(now()));
        }
        let mut offload = self.common.offload.lock().expect("offload lock");
        offload.as_mut().map(|offload| {
            offload.remove_all();
            offload.stats()
        })
    }
}

/// Takes over `previous`'s allocations and reservations (see
/// [`TurnServer::start_with`]), saying what it took.
fn take_over(shards: &[Arc<Shard>], previous: &RelayState) {
    let elapsed = previous.age();
    let now = now();
    let (mut taken, mut dropped) = (0, 0);
    if previous.shards.len() != shards.len() {
        tracing::warn!(
            "the previous turnxd ran {} shards and this one runs {}: a client whose \
             allocation lands in another shard than the kernel sends it to gets 437 and \
             allocates again; keep [server] workers the same across a restart",
            previous.shards.len(),
            shards.len()
        );
    }
    for (index, allocations) in previous.shards.iter().enumerate() {
        let shard = &shards[index % shards.len()];
        for allocation in allocations {
            let mut result = Ok(());
            shard.run(|core| result = core.restore(allocation, now, elapsed));
            match result {
                Ok(()) => taken += 1,
                Err(err) => {
                    dropped += 1;
                    tracing::info!(
                        "not taking over the allocation of {}: {err}",
                        allocation.client
                    );
                }
            }
        }
    }
    for (index, counters) in previous.counters.iter().enumerate() {
        let shard = &shards[index % shards.len()];
        shard.run(|core| core.absorb_counters(counters));
    }
    let mut reservations = 0;
    if let Some(shard) = shards.first() {
        shard.run(|core| reservations = core.restore_ledger(&previous.ledger, now, elapsed));
    }
    tracing::info!(
        "took over {taken} allocations and {reservations} port reservations from {}, \
         written {elapsed:?} ago ({dropped} allocations not taken over)",
        previous.written_by
    );
}

impl Shard {
    /// Runs `f` on the core (which writes its transmits where `f` says),
    /// hands the events it caused to the offload, and starts receive loops
    /// for the relayed sockets its allocations took.
    fn run(self: &Arc<Self>, f: impl FnOnce(&mut Server)) {
        let mut core = self.core.lock().expect("core lock");
        f(&mut core);
        if let Some(event) = core.poll_event() {
            let mut offload = self.common.offload.lock().expect("offload lock");
            let mut follow = |event: &Event| {
                tracing::debug!(?event, "allocation state");
                if let Some(offload) = offload.as_mut() {
                    offload.apply(event);
                }
            };
            follow(&event);
            while let Some(event) = core.poll_event() {
                follow(&event);
            }
        }
        drop(core);
        let relays = &self.common.relays;
        for (relayed, socket) in relays.take_fresh(self.index) {
            let task = tokio::spawn(udp_loop(Arc::clone(self), UdpRole::Relay(relayed), socket));
            relays.set_receiver(relayed, task.abort_handle());
        }
    }

    /// Sends to a UDP client of a wildcard listener, from the address the
    /// client talks to. (Clients of a listener bound to their address go
    /// in [`Self::transmit_now`]'s batches.)
    fn send_from_wildcard(&self, to: FiveTuple, data: &[u8]) -> std::io::Result<()> {
        let wildcard = SocketAddr::new(unspecified_like(to.server.ip()), to.server.port());
        match self.udp_listeners.get(&wildcard) {
            Some(socket) => {
                use std::os::fd::AsRawFd;
                batch::send_from(socket.as_raw_fd(), data, to.client, to.server.ip())
            }
            None => Ok(()),
        }
    }

    /// Sends what the core produced, without waiting, and empties the
    /// outbox. A UDP datagram that finds its socket buffer full is dropped,
    /// as the network would drop it.
    fn transmit_now(&self, out: &mut Outbox) {
        use std::os::fd::AsRawFd;
        // Consecutive UDP datagrams out of one socket go in one sendmmsg,
        // with one lookup of the socket: a batch received from one client
        // usually all goes to one peer. The run holds the socket, so its
        // descriptor stays this socket's until the run is sent.
        let mut run: Vec<(&[u8], SocketAddr)> = Vec::new();
        let mut run_socket: Option<(SocketAddr, Arc<UdpSocket>)> = None;
        let flush = |socket: &Option<(SocketAddr, Arc<UdpSocket>)>,
                     run: &mut Vec<(&[u8], SocketAddr)>| {
            if let Some((_, socket)) = socket
                && !run.is_empty()
                && let Err(err) = batch::send_many(socket.as_raw_fd(), run)
            {
                tracing::debug!("send failed: {err}");
            }
            run.clear();
        };
        for (destination, data) in out.iter() {
            // The local address the datagram leaves from, and where to.
            let plain = match destination {
                Destination::Client(to)
                    if to.transport == Transport::Udp
                        && self.udp_listeners.contains_key(&to.server) =>
                {
                    Some((to.server, to.client))
                }
                Destination::Peer { from, to } => Some((from, to)),
                Destination::Client(_) => None,
            };
            if let Some((local, to)) = plain {
                if run_socket.as_ref().is_none_or(|(at, _)| *at != local) {
                    flush(&run_socket, &mut run);
                    let socket = match destination {
                        Destination::Peer { .. } => self.common.relays.get(&local),
                        Destination::Client(_) => self.udp_listeners.get(&local).cloned(),
                    };
                    run_socket = socket.map(|socket| (local, socket));
                }
                if run_socket.is_some() {
                    run.push((data, to));
                }
                continue;
            }
            flush(&run_socket, &mut run);
            // What is left: clients over streams, and UDP clients of a
            // wildcard listener (sent from the address they talk to).
            let Destination::Client(to) = destination else {
                continue;
            };
            let result = match to.transport {
                Transport::Udp => self.send_from_wildcard(to, data),
                // Stream writes go through the connection's writer task;
                // this copy is the price of not blocking on a slow client.
                Transport::Tcp | Transport::Tls => {
                    let streams = self.common.streams.lock().expect("streams lock");
                    if let Some(writer) = streams.get(&to) {
                        writer.send(data);
                    }
                    Ok(())
                }
            };
            if let Err(err) = result {
                tracing::debug!("send failed: {err}");
            }
        }
        flush(&run_socket, &mut run);
        out.clear();
    }
}

/// The unspecified address of `ip`'s family.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The server side of a client's 5-tuple: the listener's address, or for a
/// wildcard listener the address the datagram was sent to.
fn server_address(listener: SocketAddr, destination: Option<IpAddr>) -> SocketAddr {
    match destination {
        Some(ip) if listener.ip().is_unspecified() => SocketAddr::new(ip, listener.port()),
        _ => listener,
    }
}

/// Bindings whose kernel counters one hold of the offload's lock reads.
const REFRESH_CHUNK: usize = 64;

/// Datagrams received per system call.
const BATCH: usize = 32;
/// Largest datagram received: an Ethernet MTU's worth and more. Longer
/// ones (jumbo frames) are dropped, as no WebRTC stack sends them.
const SLOT: usize = 4096;

thread_local! {
    /// Each worker thread's receive batch and outbox: used only inside a
    /// synchronous receive-process-send step, never across an await.
    static SCRATCH: std::cell::RefCell<(batch::RecvBatch, Outbox)> =
        std::cell::RefCell::new((batch::RecvBatch::new(BATCH, SLOT), Outbox::default()));
}

/// What a UDP socket is to the server.
#[derive(Clone, Copy)]
enum UdpRole {
    /// A listener: datagrams from clients.
    Listener(SocketAddr),
    /// A relayed socket: datagrams from peers.
    Relay(SocketAddr),
}

/// Serves one UDP socket: on readiness, receives a batch, hands it to the
/// core under one lock, and sends what the core produced, all without
/// awaiting in between.
async fn udp_loop(shared: Arc<Shard>, role: UdpRole, socket: Arc<UdpSocket>) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    loop {
        if let Err(err) = socket.readable().await {
            tracing::debug!("waiting on a UDP socket: {err}");
            return;
        }
        let step = socket.try_io(tokio::io::Interest::READABLE, || {
            SCRATCH.with(|scratch| {
                let (batch, out) = &mut *scratch.borrow_mut();
                batch.recv_now(fd)?;
                shared.run(|core| {
                    let now = now();
                    for (data, source, destination) in batch.datagrams() {
                        match role {
                            UdpRole::Listener(listener) => {
                                let from = FiveTuple {
                                    transport: Transport::Udp,
                                    client: source,
                                    server: server_address(listener, destination),
                                };
                                core.handle_client(from, data, now, out);
                            }
                            UdpRole::Relay(relayed) => {
                                core.handle_peer(relayed, source, data, now, out)
                            }
                        }
                    }
                });
                shared.transmit_now(out);
                Ok(())
            })
        });
        if let Err(err) = step
            && err.kind() != std::io::ErrorKind::WouldBlock
        {
            tracing::debug!("UDP receive: {err}");
        }
    }
}

async fn timer(shared: Arc<Shard>) {
    // Lifetimes are in seconds; a one-second tick bounds the lateness.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.run(|core| core.handle_timeout(now()));
    }
}

async fn tcp_listener(shards: Vec<Arc<Shard>>, address: SocketAddr, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                let shared = stream_shard(&shards, client);
                // Over a cap the connection is closed at once (dropped).
                let Some(slot) = shared.common.admission.admit(client.ip()) else {
                    tracing::debug!("refusing a TCP connection from {client}: too many");
                    continue;
                };
                // On a wildcard listener, the address the client connected to.
                let server = stream.local_addr().unwrap_or(address);
                let from = FiveTuple {
                    transport: Transport::Tcp,
                    client,
                    server,
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(stream_connection(Arc::clone(shared), from, stream, slot));
            }
            Err(err) => {
                tracing::warn!("accepting on {address}: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn tls_listener(
    shards: Vec<Arc<Shard>>,
    address: SocketAddr,
    listener: TcpListener,
    tls: Arc<tls::TlsState>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(streams::MAX_TLS_HANDSHAKES));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("accepting on {address}: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = stream_shard(&shards, client);
        let Some(slot) = shared.common.admission.admit(client.ip()) else {
            tracing::debug!("refusing a TLS connection from {client}: too many");
            continue;
        };
        let Ok(handshake_permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!("refusing a TLS connection from {client}: too many handshakes");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = stream.local_addr().unwrap_or(address);
        let acceptor = tls.acceptor();
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            // A client that never finishes the handshake must not hold a
            // task forever.
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let handshake = handshake.await;
            drop(handshake_permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let from = FiveTuple {
                        transport: Transport::Tls,
                        client,
                        server,
                    };
                    stream_connection(shared, from, stream, slot).await;
                }
                Ok(Err(err)) => tracing::debug!("TLS handshake with {client} failed: {err}"),
                Err(_) => tracing::debug!("TLS handshake with {client} timed out"),
            }
        });
    }
}

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads frames from one TCP or TLS client until it closes, sends
/// garbage, stays silent too long (see [`streams`]) or stops reading what
/// it is sent; the allocation goes with the connection, and `slot` with it.
async fn stream_connection<S>(shared: Arc<Shard>, from: FiveTuple, stream: S, slot: Slot)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let _slot = slot;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (writer_handle, mut outgoing, close) = StreamWriter::new();
    shared
        .common
        .streams
        .lock()
        .expect("streams lock")
        .insert(from, writer_handle);
    let write_task = tokio::spawn(async move {
        while let Some(data) = outgoing.recv().await {
            if writer.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    let _cleanup = ConnectionCleanup {
        shared: Arc::clone(&shared),
        from,
        write_task,
    };
    let mut framer = StreamFramer::default();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut out = Outbox::default();
    // Silence is allowed for so long: until the first message, and then
    // for as long as the client holds an allocation (its lifetime ends it).
    let mut silence = streams::FIRST_MESSAGE_TIMEOUT;
    let mut allocated = false;
    'connection: loop {
        let read = tokio::select! {
            read = reader.read(&mut buffer) => read,
            _ = close.notified() => {
                tracing::debug!("closing connection from {}: it does not read", from.client);
                break;
            }
            _ = tokio::time::sleep(silence) => {
                // An allocation may have expired since the last message.
                shared.run(|core| allocated = core.has_allocation(&from));
                if allocated {
                    continue;
                }
                tracing::debug!("closing connection from {}: silent for {silence:?}", from.client);
                break;
            }
        };
        let len = match read {
            Ok(0) | Err(_) => break,
            Ok(len) => len,
        };
        framer.push(&buffer[..len]);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    shared.run(|core| {
                        core.handle_client(from, &frame, now(), &mut out);
                        allocated = core.has_allocation(&from);
                    });
                    silence = streams::IDLE_TIMEOUT;
                    shared.transmit_now(&mut out);
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!("closing connection from {}: {err}", from.client);
                    break 'connection;
                }
            }
        }
    }
}

/// Ends a stream connection however its task ends, early return or panic
/// included: the writer stops, and the client's allocation is deleted.
struct ConnectionCleanup {
    shared: Arc<Shard>,
    from: FiveTuple,
    write_task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectionCleanup {
    fn drop(&mut self) {
        let from = self.from;
        self.shared
            .common
            .streams
            .lock()
            .expect("streams lock")
            .remove(&from);
        self.write_task.abort();
        self.shared.run(|core| core.close_client(from, now()));
    }
}
