//! The kernel's bandwidth buckets (`relay_common::bandwidth`): which
//! allocation and which user holds which entry of the `BUCKETS` array.
//! An allocation gets its two buckets, and its user theirs, when its first
//! channel goes into the kernel; they are given back when the allocation
//! ends, and the user's when their last such allocation does.

use std::collections::HashMap;

use relay_common::bandwidth::{Bucket, Buckets, NO_BUCKET};

use crate::turn::{FiveTuple, bandwidth::Limits};

/// Writes a bucket into the kernel's array.
pub trait BucketWriter {
    /// Sets entry `index` to `bucket`.
    fn set_bucket(&mut self, index: u32, bucket: Bucket) -> Result<(), crate::xdp::XdpError>;
}

/// Entries of the bucket array in use, and by whom.
#[derive(Debug)]
pub struct KernelBuckets {
    limits: Limits,
    /// Entries not in use; popped from the end.
    free: Vec<u32>,
    /// Usernames of live allocations (from their creation events).
    usernames: HashMap<FiveTuple, String>,
    /// Allocations whose channels are in the kernel: their buckets.
    allocations: HashMap<FiveTuple, Buckets>,
    /// Users with such allocations: their buckets and how many.
    users: HashMap<String, ([u32; 2], usize)>,
}

impl KernelBuckets {
    /// Buckets for `limits` in an array of `entries` (entry 0 unused).
    pub fn new(limits: Limits, entries: u32) -> Self {
        KernelBuckets {
            limits,
            free: if limits.any() {
                (1..entries).rev().collect()
            } else {
                Vec::new()
            },
            usernames: HashMap::new(),
            allocations: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// An allocation was created for `username`.
    pub fn allocation_created(&mut self, client: FiveTuple, username: &str) {
        if self.limits.any() {
            self.usernames.insert(client, username.to_owned());
        }
    }

    /// The buckets for a channel of `client`'s allocation, taken and filled
    /// on its first; [`NO_BUCKET`] where there is no limit, or no entry or
    /// write to be had (the limit then holds in userspace only).
    pub fn for_channel(&mut self, client: FiveTuple, kernel: &mut dyn BucketWriter) -> Buckets {
        if !self.limits.any() {
            return Buckets::default();
        }
        if let Some(buckets) = self.allocations.get(&client) {
            return *buckets;
        }
        let mut buckets = Buckets {
            allocation: self.take(self.limits.allocation, kernel),
            user: [NO_BUCKET; 2],
        };
        if let Some(username) = self.usernames.get(&client).cloned() {
            if let Some((user, count)) = self.users.get_mut(&username) {
                *count += 1;
                buckets.user = *user;
            } else {
                let user = self.take(self.limits.user, kernel);
                if user != [NO_BUCKET; 2] {
                    self.users.insert(username, (user, 1));
                }
                buckets.user = user;
            }
        }
        self.allocations.insert(client, buckets);
        buckets
    }

    /// `client`'s allocation ended (after its channels): its buckets, and
    /// its user's if it was their last, are free again.
    pub fn allocation_deleted(&mut self, client: FiveTuple) {
        let username = self.usernames.remove(&client);
        let Some(buckets) = self.allocations.remove(&client) else {
            return;
        };
        self.give_back(buckets.allocation);
        if let Some(username) = username
            && let Some((user, count)) = self.users.get_mut(&username)
            && buckets.user == *user
        {
            *count -= 1;
            if *count == 0 {
                let user = *user;
                self.users.remove(&username);
                self.give_back(user);
            }
        }
    }

    /// Two full buckets at `bytes_per_second`, written into the kernel.
    fn take(&mut self, bytes_per_second: u64, kernel: &mut dyn BucketWriter) -> [u32; 2] {
        let Some(full) = self.limits.buckets(bytes_per_second) else {
            return [NO_BUCKET; 2];
        };
        if self.free.len() < 2 {
            tracing::warn!("no kernel bandwidth bucket is free; the limit holds in userspace only");
            return [NO_BUCKET; 2];
        }
        let taken = [self.free.pop().unwrap(), self.free.pop().unwrap()];
        for (index, bucket) in taken.into_iter().zip(full) {
            if let Err(err) = kernel.set_bucket(index, bucket) {
                tracing::warn!("writing kernel bandwidth bucket {index}: {err}");
                self.give_back(taken);
                return [NO_BUCKET; 2];
            }
        }
        taken
    }

    fn give_back(&mut self, buckets: [u32; 2]) {
        self.free
            .extend(buckets.into_iter().filter(|index| *index != NO_BUCKET));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Transport;
    use std::time::Duration;

    #[derive(Default)]
    struct Written(Vec<(u32, Bucket)>);

    impl BucketWriter for Written {
        fn set_bucket(&mut self, index: u32, bucket: Bucket) -> Result<(), crate::xdp::XdpError> {
            self.0.push((index, bucket));
            Ok(())
        }
    }

    fn client(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: format!("198.18.0.1:{port}").parse().unwrap(),
            server: "198.18.0.254:3478".parse().unwrap(),
        }
    }

    #[test]
    fn allocations_share_their_users_buckets_until_the_last_ends() {
        let limits = Limits {
            allocation: 1000,
            user: 5000,
            burst: Duration::from_millis(100),
        };
        let mut buckets = KernelBuckets::new(limits, 9);
        let mut kernel = Written::default();
        let (a, b) = (client(1), client(2));
        buckets.allocation_created(a, "alice");
        buckets.allocation_created(b, "alice");
        let first = buckets.for_channel(a, &mut kernel);
        assert_eq!(
            buckets.for_channel(a, &mut kernel),
            first,
            "one per allocation"
        );
        let second = buckets.for_channel(b, &mut kernel);
        assert_eq!(first.user, second.user);
        assert_ne!(first.allocation, second.allocation);
        // Three pairs written: two allocations' and the user's.
        assert_eq!(kernel.0.len(), 6);
        assert_eq!(kernel.0[0].1, Bucket::new(1000, 100_000_000));
        // 8 usable entries, 6 taken: a third allocation of another user
        // gets its own pair and none for its user.
        let c = client(3);
        buckets.allocation_created(c, "bob");
        let third = buckets.for_channel(c, &mut kernel);
        assert_ne!(third.allocation, [NO_BUCKET; 2]);
        assert_eq!(third.user, [NO_BUCKET; 2]);
        buckets.allocation_deleted(a);
        buckets.allocation_deleted(c);
        assert_eq!(buckets.free.len(), 4, "alice's stay while b lives");
        buckets.allocation_deleted(b);
        assert_eq!(buckets.free.len(), 8);
    }

    #[test]
    fn without_limits_nothing_is_taken() {
        let mut buckets = KernelBuckets::new(Limits::default(), 9);
        let mut kernel = Written::default();
        buckets.allocation_created(client(1), "alice");
        assert_eq!(
            buckets.for_channel(client(1), &mut kernel),
            Buckets::default()
        );
        assert!(kernel.0.is_empty());
    }
}
