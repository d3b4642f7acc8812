//! The bandwidth limits, checked from outside: what the core relays for an
//! allocation, and for a user over all their allocations, each direction
//! apart, never exceeds the rate over the time since the allocation (or the
//! user's first live allocation) came, plus the burst and one datagram.
//! That is the bound a token bucket gives over any window of its life
//! (`relay_common::bandwidth::Bucket`).

use std::{collections::HashMap, time::Duration};

use turnx::turn::{Event, FiveTuple, bandwidth::Limits};

/// Bytes relayed in one direction since a bucket's window opened.
#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    bytes: u64,
    /// The largest datagram, which a bucket admits beyond its burst.
    largest: u64,
}

/// Usage since `start`, by direction (0: to the peer, 1: to the client).
#[derive(Debug)]
struct Window {
    start: Duration,
    flows: [Flow; 2],
}

impl Window {
    fn new(start: Duration) -> Self {
        Window {
            start,
            flows: [Flow::default(); 2],
        }
    }

    /// Adds `bytes` and checks the bound for `rate` bytes a second.
    fn charge(
        &mut self,
        direction: usize,
        bytes: u64,
        now: Duration,
        rate: u64,
        burst: Duration,
        what: &str,
    ) {
        let flow = &mut self.flows[direction];
        flow.bytes += bytes;
        flow.largest = flow.largest.max(bytes);
        if rate == 0 {
            return;
        }
        let window = now.saturating_sub(self.start).as_secs_f64() + burst.as_secs_f64();
        // A few bytes of slack for the bucket's integer nanoseconds.
        let bound = rate as f64 * window + flow.largest as f64 + 64.0;
        assert!(
            flow.bytes as f64 <= bound,
            "{what} relayed {} bytes {} in {:?}, over {rate} B/s (bound {bound:.0})",
            flow.bytes,
            if direction == 0 {
                "to peers"
            } else {
                "to the client"
            },
            now.saturating_sub(self.start)
        );
    }
}

/// The windows of live allocations and users.
pub struct Usage {
    limits: Limits,
    allocations: HashMap<FiveTuple, (String, Window)>,
    /// Per user: live allocations, and the window since the first of them.
    users: HashMap<String, (usize, Window)>,
}

impl Usage {
    /// Nothing relayed yet, under `limits`.
    pub fn new(limits: Limits) -> Self {
        Usage {
            limits,
            allocations: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// Opens and closes windows as allocations come and go. A user's
    /// bucket lives while the user holds anything, so a window from the
    /// first live allocation lies within it.
    pub fn on_event(&mut self, event: &Event, now: Duration) {
        match event {
            Event::AllocationCreated {
                client, username, ..
            } => {
                self.allocations
                    .insert(*client, (username.clone(), Window::new(now)));
                self.users
                    .entry(username.clone())
                    .or_insert_with(|| (0, Window::new(now)))
                    .0 += 1;
            }
            Event::AllocationDeleted { client, .. } => {
                if let Some((username, _)) = self.allocations.remove(client)
                    && let Some((live, _)) = self.users.get_mut(&username)
                {
                    *live -= 1;
                    if *live == 0 {
                        self.users.remove(&username);
                    }
                }
            }
            _ => {}
        }
    }

    /// Charges `bytes` relayed for `client` (direction 0: to a peer, 1: to
    /// the client) and checks both bounds.
    pub fn charge(&mut self, client: &FiveTuple, direction: usize, bytes: usize, now: Duration) {
        let (limits, bytes) = (self.limits, bytes as u64);
        let Some((username, window)) = self.allocations.get_mut(client) else {
            panic!("relayed for {client:?}, which has no allocation");
        };
        window.charge(
            direction,
            bytes,
            now,
            limits.allocation,
            limits.burst,
            "an allocation",
        );
        let (_, user) = self
            .users
            .get_mut(username.as_str())
            .expect("a live allocation's user is live");
        user.charge(direction, bytes, now, limits.user, limits.burst, "a user");
    }
}
