//! Keeps the kernel programs' next-hop cache honest: counts every change to
//! routing in the route generation (`relay_common::next_hop`), so that no
//! cached next hop outlives the routes, neighbours, links, addresses or
//! rules it came from.
//!
//! A thread listens on an rtnetlink socket subscribed to all of those, in
//! each network namespace the relay works in (where it attaches, or runs
//! a frame). What a message says does not matter, only that something
//! changed; a lost notification (the socket's buffer overran) counts as a
//! change too. Until the first thread runs, the generation is 0 and the
//! programs cache nothing.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{Array, MapData};

use super::XdpError;
use crate::rtnetlink_events::{
    self, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_IFADDR,
    RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE, RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_NEXTHOP, group_bit,
};

/// The groups of everything a next hop depends on: links, neighbours,
/// IPv4 and IPv6 addresses, routes and rules, as `nl_groups` bits.
const GROUPS: u32 = group_bit(RTNLGRP_LINK)
    | group_bit(RTNLGRP_NEIGH)
    | group_bit(RTNLGRP_IPV4_IFADDR)
    | group_bit(RTNLGRP_IPV4_ROUTE)
    | group_bit(RTNLGRP_IPV4_RULE)
    | group_bit(RTNLGRP_IPV6_IFADDR)
    | group_bit(RTNLGRP_IPV6_ROUTE)
    | group_bit(RTNLGRP_IPV6_RULE);
/// How often the thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The kernel's route generation, and the count userspace keeps of it.
pub struct RouteGeneration {
    map: Array<MapData, u64>,
    value: u64,
    /// Whether changes can no longer be followed, and the cache is off.
    off: bool,
}

impl RouteGeneration {
    /// Takes over the generation map, at 0: nobody follows routing yet,
    /// and the programs cache nothing. A pinned map may hold a previous
    /// daemon's count: it is set to 0 too (what it cached was checked
    /// against routing while nobody followed it), and counting goes on
    /// above it, so that no old entry ever matches again.
    pub fn new(mut map: Array<MapData, u64>) -> RouteGeneration {
        let value = map.get(&0, 0).unwrap_or(0);
        if value != 0 && map.set(0, 0, 0).is_err() {
            tracing::warn!("cannot reset the pinned route generation");
        }
        RouteGeneration {
            map,
            value,
            off: false,
        }
    }

    /// Counts a change: every cached next hop is stale from now on.
    pub fn advance(&mut self) -> Result<(), XdpError> {
        if self.off {
            return Ok(());
        }
        self.value += 1;
        self.map.set(0, self.value, 0)?;
        Ok(())
    }

    /// Switches the cache off for good (generation 0): for when changes
    /// can no longer be followed. Every frame is looked up again.
    pub fn switch_off(&mut self) -> Result<(), XdpError> {
        self.off = true;
        self.value = 0;
        self.map.set(0, 0, 0)?;
        Ok(())
    }

    /// The current generation; 0 when the cache is off.
    pub fn value(&self) -> u64 {
        self.value
    }
}

/// The threads that advance the generation on every rtnetlink change, one
/// per network namespace.
pub struct RouteWatches {
    generation: Arc<Mutex<RouteGeneration>>,
    /// The namespaces followed (by their inode), with their threads.
    watches: Vec<(u64, RouteWatch)>,
}

impl RouteWatches {
    /// Nothing followed yet.
    pub fn new(generation: RouteGeneration) -> RouteWatches {
        RouteWatches {
            generation: Arc::new(Mutex::new(generation)),
            watches: Vec::new(),
        }
    }

    /// Follows the calling thread's network namespace, if nothing does
    /// yet. If it cannot, the cache is switched off for good (every frame
    /// looked up), and said.
    pub fn follow_here(&mut self) -> Result<(), XdpError> {
        use std::os::unix::fs::MetadataExt;
        let namespace = match std::fs::metadata("/proc/thread-self/ns/net") {
            Ok(metadata) => metadata.ino(),
            Err(err) => return self.switch_off(&err),
        };
        if self
            .watches
            .iter()
            .any(|(followed, _)| *followed == namespace)
        {
            return Ok(());
        }
        match RouteWatch::start(Arc::clone(&self.generation)) {
            Ok(watch) => {
                self.watches.push((namespace, watch));
                // Whatever changed before the subscription.
                self.advance()
            }
            Err(err) => self.switch_off(&err),
        }
    }

    fn switch_off(&mut self, err: &io::Error) -> Result<(), XdpError> {
        tracing::warn!(
            "cannot follow routing changes over rtnetlink ({err}); the kernel relay looks up \
             every frame's next hop"
        );
        self.lock().switch_off()
    }

    /// Counts a change (see [`RouteGeneration::advance`]).
    pub fn advance(&mut self) -> Result<(), XdpError> {
        self.lock().advance()
    }

    /// The current generation (see [`RouteGeneration::value`]).
    pub fn value(&self) -> u64 {
        self.lock().value()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteGeneration> {
        self.generation.lock().expect("route generation lock")
    }
}

/// The thread that advances the generation on every rtnetlink change in
/// one network namespace; it stops when dropped.
struct RouteWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RouteWatch {
    /// Subscribes in the caller's network namespace and starts the thread.
    fn start(generation: Arc<Mutex<RouteGeneration>>) -> io::Result<RouteWatch> {
        let socket = subscribe()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("turnx-routes".into())
            .spawn(move || follow(&socket, &generation, &stopping))?;
        Ok(RouteWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A nonblocking rtnetlink socket subscribed to every group above.
fn subscribe() -> io::Result<OwnedFd> {
    let fd = rtnetlink_events::subscribe(GROUPS)?;
    // SAFETY: setsockopt with an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            (&RTNLGRP_NEXTHOP as *const u32).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    // Kernels before 5.3 have no nexthop objects, and so no such changes.
    if rc != 0 {
        tracing::debug!(
            "not following nexthop objects: {}",
            io::Error::last_os_error()
        );
    }
    Ok(fd)
}

/// Advances the generation after each batch of notifications until told
/// to stop.
fn follow(socket: &OwnedFd, generation: &Mutex<RouteGeneration>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for at most STOP_CHECK.
        let ready = unsafe { libc::poll(&mut poll, 1, STOP_CHECK.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        match rtnetlink_events::drain(socket) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(err) => {
                // Nothing tells us of changes any more: stop caching rather
                // than serve stale next hops.
                tracing::error!(
                    "reading routing changes failed ({err}); the kernel relay stops caching next hops"
                );
                let mut generation = generation.lock().expect("route generation lock");
                if let Err(err) = generation.switch_off() {
                    tracing::error!("cannot switch the next-hop cache off: {err}");
                }
                return;
            }
        }
        let mut generation = generation.lock().expect("route generation lock");
        if let Err(err) = generation.advance() {
            tracing::error!("cannot advance the route generation: {err}");
        }
    }
}
