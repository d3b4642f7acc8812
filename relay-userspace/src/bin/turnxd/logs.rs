//! turnxd's logging: text or JSON lines, under a budget (see
//! `turnx::logging`), with a level a reload can change.

use std::{sync::Mutex, time::Duration};

use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt::writer::BoxMakeWriter, layer::SubscriberExt, reload,
    util::SubscriberInitExt,
};
use turnx::{
    config::LogFormat,
    logging::{LogBudget, QueuedWriter},
};

/// What logging needs after it is set up.
pub struct Logs {
    budget: LogBudget,
    writer: Option<QueuedWriter>,
    level: Mutex<Option<reload::Handle<EnvFilter, Registry>>>,
}

/// The filter for `level`: it applies to our own code and the kernel
/// program's log; libraries only speak up on warnings.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!(
        "warn,turnx={level},turnxd={level},relay_ebpf={level}"
    ))
}

impl Logs {
    /// Installs the global subscriber. RUST_LOG, when set, replaces the
    /// level (and then a reload leaves it alone).
    pub fn init(level: &str, format: LogFormat) -> Logs {
        let from_env = EnvFilter::try_from_default_env().ok();
        let fixed = from_env.is_some();
        let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| filter(level)));
        let budget = LogBudget::default();
        let writer = QueuedWriter::stderr().ok();
        let make_writer = || match &writer {
            Some(writer) => BoxMakeWriter::new(writer.clone()),
            // No thread for the queue: write in place, still under the
            // budget.
            None => BoxMakeWriter::new(std::io::stderr),
        };
        let output: Box<dyn Layer<_> + Send + Sync> = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(make_writer())
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(make_writer())
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(budget.clone())
            .with(output)
            .init();
        Logs {
            budget,
            writer,
            level: Mutex::new((!fixed).then_some(handle)),
        }
    }

    /// Applies a reloaded `[log] level`.
    pub fn set_level(&self, level: &str) {
        if let Some(handle) = &*self.level.lock().expect("log level lock")
            && let Err(err) = handle.reload(filter(level))
        {
            tracing::warn!("cannot change the log level: {err}");
        }
    }

    /// Says what the budget suppressed and the queue dropped since the
    /// last call.
    pub fn report(&self) {
        for (place, count) in self.budget.take_suppressed() {
            tracing::warn!("{count} repeated log lines from {place} suppressed");
        }
        if let Some(dropped) = self.writer.as_ref().map(QueuedWriter::take_dropped)
            && dropped > 0
        {
            tracing::warn!("{dropped} log lines dropped: the log could not keep up");
        }
    }

    /// Reports, and writes out what is queued.
    pub fn finish(&self) {
        self.report();
        if let Some(writer) = &self.writer {
            writer.flush(Duration::from_secs(2));
        }
    }
}
