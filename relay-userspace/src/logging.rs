//! Logging that a flood cannot turn against the relay.
//!
//! Anything per packet or per request can be made to repeat at line rate:
//! malformed datagrams (stun-types warns about each), refused peers, full
//! maps. Two defences, for every log line of every crate:
//! - [`LogBudget`]: each call site may log a burst, then a few lines a
//!   second; what it drops is counted, and [`LogBudget::take_suppressed`]
//!   reports it (turnxd logs the counts every few seconds).
//! - [`QueuedWriter`]: lines go through a bounded queue to a thread that
//!   writes them, so no log I/O happens where a line is made (under the
//!   TURN core's lock, say). A full queue drops and counts lines.

use std::{
    collections::HashMap,
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tracing::{Event, Metadata, Subscriber, callsite::Identifier};
use tracing_subscriber::{
    fmt::MakeWriter,
    layer::{Context, Layer},
};

/// Lines a call site may log at once.
pub const BURST: f64 = 20.0;
/// Lines a second a call site may log after its burst.
pub const LINES_PER_SECOND: f64 = 5.0;

/// A per-call-site token bucket over log lines.
#[derive(Clone, Default)]
pub struct LogBudget {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

struct Site {
    metadata: &'static Metadata<'static>,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl LogBudget {
    /// Whether a line from the call site of `metadata` may be logged at
    /// `now`; counts it as suppressed when not.
    pub fn admit(&self, metadata: &'static Metadata<'static>, now: Instant) -> bool {
        let mut sites = self.sites.lock().expect("log budget lock");
        let site = sites.entry(metadata.callsite()).or_insert_with(|| Site {
            metadata,
            tokens: BURST,
            refilled: now,
            suppressed: 0,
        });
        let elapsed = now.saturating_duration_since(site.refilled).as_secs_f64();
        site.tokens = (site.tokens + elapsed * LINES_PER_SECOND).min(BURST);
        site.refilled = now;
        if site.tokens >= 1.0 {
            site.tokens -= 1.0;
            true
        } else {
            site.suppressed += 1;
            false
        }
    }

    /// The call sites that had lines suppressed since the last call, as
    /// (`target file:line`, count), and resets the counts.
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut sites = self.sites.lock().expect("log budget lock");
        let mut taken: Vec<(String, u64)> = sites
            .values_mut()
            .filter(|site| site.suppressed > 0)
            .map(|site| {
                let meta = site.metadata;
                let place = format!(
                    "{} {}:{}",
                    meta.target(),
                    meta.file().unwrap_or("?"),
                    meta.line().unwrap_or(0)
                );
                (place, std::mem::take(&mut site.suppressed))
            })
            .collect();
        taken.sort();
        taken
    }
}

impl<S: Subscriber> Layer<S> for LogBudget {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.admit(event.metadata(), Instant::now())
    }
}

/// Lines queued for the writer thread at most.
const QUEUE: usize = 4096;

enum Queued {
    Line(Vec<u8>),
    Flush(mpsc::SyncSender<()>),
}

/// A writer for tracing-subscriber's `fmt` layer that hands each line to a
/// thread writing to stderr.
#[derive(Clone)]
pub struct QueuedWriter {
    sender: mpsc::SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl QueuedWriter {
    /// Starts the writer thread.
    pub fn stderr() -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel::<Queued>(QUEUE);
        std::thread::Builder::new()
            .name("turnx-log".into())
            .spawn(move || {
                let mut stderr = std::io::stderr();
                for queued in receiver {
                    match queued {
                        Queued::Line(line) => {
                            let _ = stderr.write_all(&line);
                        }
                        Queued::Flush(done) => {
                            let _ = stderr.flush();
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(QueuedWriter {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Waits up to `limit` for every line queued so far to be written.
    pub fn flush(&self, limit: Duration) {
        let (done, written) = mpsc::sync_channel(1);
        if self.sender.send(Queued::Flush(done)).is_ok() {
            let _ = written.recv_timeout(limit);
        }
    }

    /// Lines dropped because the queue was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// One line being formatted; queued when dropped.
pub struct QueuedLine {
    writer: QueuedWriter,
    line: Vec<u8>,
}

impl Write for QueuedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = Queued::Line(std::mem::take(&mut self.line));
        if self.writer.sender.try_send(line).is_err() {
            self.writer.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for QueuedWriter {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine {
            writer: self.clone(),
            line: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach it and keeps the last one's metadata.
    #[derive(Clone, Default)]
    struct Seen {
        count: Arc<AtomicU64>,
        last: Arc<Mutex<Option<&'static Metadata<'static>>>>,
    }

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.count.fetch_add(1, Ordering::Relaxed);
            *self.last.lock().unwrap() = Some(event.metadata());
        }
    }

    #[test]
    fn a_call_site_logs_its_burst_then_a_few_lines_a_second() {
        let (budget, seen) = (LogBudget::default(), Seen::default());
        let subscriber = tracing_subscriber::registry()
            .with(budget.clone())
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::warn!("flood {i}");
            }
        });
        // The burst, and what refilled while the loop ran (well under 1 s).
        let logged = seen.count.load(Ordering::Relaxed);
        assert!((20..=25).contains(&logged), "{logged} lines logged");
        let suppressed = budget.take_suppressed();
        assert_eq!(suppressed.len(), 1, "{suppressed:?}");
        assert!(suppressed[0].0.contains("logging.rs"), "{suppressed:?}");
        assert_eq!(suppressed[0].1, 1000 - logged);
        assert!(budget.take_suppressed().is_empty(), "counts are reset");
        // A second later the site may log five more lines, and no more.
        let site = seen.last.lock().unwrap().expect("a line was seen");
        let later = Instant::now() + Duration::from_secs(1);
        let admitted = (0..100).filter(|_| budget.admit(site, later)).count();
        assert_eq!(admitted, LINES_PER_SECOND as usize);
    }

    #[test]
    fn lines_are_queued_and_flushed() {
        let writer = QueuedWriter::stderr().unwrap();
        for i in 0..10 {
            writeln!(writer.make_writer(), "queued line {i}").unwrap();
        }
        writer.flush(Duration::from_secs(5));
        assert_eq!(writer.take_dropped(), 0);
    }
}
