//! What one stream (TCP or TLS) client may cost: connections are admitted
//! up to a total and a per-address cap, must send a first message soon and
//! stay busy or hold an allocation, and what is sent to them waits in a
//! bounded queue.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

/// Longest a new connection may take to send its first message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection without an allocation may stay silent (one with
/// an allocation is looked at again after as long).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TLS handshakes in progress at most; more wait to be refused.
pub const MAX_TLS_HANDSHAKES: usize = 256;
/// Messages queued for one client at most (about 64 KiB of media at
/// typical sizes).
pub const QUEUE: usize = 256;

/// Caps on concurrent stream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// In all; 0 for no cap.
    pub total: usize,
    /// From one IP address; 0 for no cap.
    pub per_address: usize,
}

/// Counts connections against [`StreamLimits`].
#[derive(Debug)]
pub struct Admission {
    limits: StreamLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock().expect("admission lock");
        let from_ip = counts.by_address.get(&ip).copied().unwrap_or(0);
        let full = |count: usize, cap: usize| cap != 0 && count >= cap;
        if full(counts.total, self.limits.total) || full(from_ip, self.limits.per_address) {
            return None;
        }
        counts.total += 1;
        *counts.by_address.entry(ip).or_default() += 1;
        Some(Slot {
            admission: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().expect("admission lock");
        counts.total -= 1;
        if let Some(count) = counts.by_address.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.by_address.remove(&self.ip);
            }
        }
    }
}

/// What is sent to a stream client goes through a bounded queue to the
/// connection's writer task.
pub struct StreamWriter {
    queue: mpsc::Sender<Vec<u8>>,
    /// Ends the connection: the client stopped reading its responses.
    close: Arc<Notify>,
}

impl StreamWriter {
    /// A writer, the receiving end of its queue, and what tells the
    /// connection to close.
    pub fn new() -> (StreamWriter, mpsc::Receiver<Vec<u8>>, Arc<Notify>) {
        let (queue, outgoing) = mpsc::channel(QUEUE);
        let close = Arc::new(Notify::new());
        let writer = StreamWriter {
            queue,
            close: Arc::clone(&close),
        };
        (writer, outgoing, close)
    }

    /// Queues `data`. When the queue is full, relayed data (ChannelData,
    /// Data indications) is dropped, as UDP would, and anything else (a
    /// response the client waits for) ends the connection.
    pub fn send(&self, data: &[u8]) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(data.to_vec())
            && !is_relayed_data(data)
        {
            self.close.notify_one();
        }
    }
}

/// Whether a message to a client carries relayed data: ChannelData, or a
/// Data indication (STUN method 0x007, indication class: type 0x0017).
fn is_relayed_data(message: &[u8]) -> bool {
    match message {
        [first, ..] if first >> 6 == 0b01 => true,
        [0x00, 0x17, ..] => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let admission = Admission::new(StreamLimits {
            total: 3,
            per_address: 2,
        });
        let first = admission.admit(ip(1)).unwrap();
        let second = admission.admit(ip(1)).unwrap();
        assert!(admission.admit(ip(1)).is_none(), "per address");
        let third = admission.admit(ip(2)).unwrap();
        assert!(admission.admit(ip(3)).is_none(), "in all");
        drop(first);
        assert!(admission.admit(ip(1)).is_some(), "a slot came back");
        drop((second, third));
        let unlimited = Admission::new(StreamLimits {
            total: 0,
            per_address: 0,
        });
        let held: Vec<Slot> = (0..100).filter_map(|_| unlimited.admit(ip(1))).collect();
        assert_eq!(held.len(), 100);
    }

    #[test]
    fn relayed_data_is_told_from_responses() {
        assert!(is_relayed_data(&[0x40, 0x00, 0x00, 0x00]));
        assert!(is_relayed_data(&[0x00, 0x17, 0x00, 0x08]));
        assert!(
            !is_relayed_data(&[0x01, 0x01, 0x00, 0x0c]),
            "Binding success"
        );
        assert!(
            !is_relayed_data(&[0x01, 0x13, 0x00, 0x00]),
            "Allocate error"
        );
        assert!(!is_relayed_data(&[]));
    }

    #[tokio::test]
    async fn a_full_queue_drops_data_and_closes_on_a_stalled_response() {
        let (writer, mut outgoing, close) = StreamWriter::new();
        for _ in 0..QUEUE {
            writer.send(&[0x40, 0x00, 0x00, 0x00]);
        }
        // Media over the cap is dropped; the connection stays.
        writer.send(&[0x40, 0x00, 0x00, 0x00]);
        let closed = tokio::time::timeout(Duration::from_millis(50), close.notified());
        assert!(closed.await.is_err(), "closed for dropped media");
        // A response over it ends the connection.
        writer.send(&[0x01, 0x01, 0x00, 0x00]);
        let closed = tokio::time::timeout(Duration::from_millis(50), close.notified());
        assert!(closed.await.is_ok(), "not closed for a stalled response");
        let mut queued = 0;
        while outgoing.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, QUEUE);
    }
}
