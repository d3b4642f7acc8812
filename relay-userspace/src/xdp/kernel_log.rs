//! Forwards the XDP program's aya-log records into turnxd's log.
//!
//! aya-log hands records to the `log` crate; tracing-subscriber's log bridge
//! turns them into tracing events with the kernel program as target.

use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// Reads kernel log records whenever the ring buffer signals, until the task
/// is aborted or the ring buffer fails.
pub fn spawn(logger: EbpfLogger<&'static dyn log::Log>) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: the logger owns the ring buffer's descriptor and keeps it open
    // for as long as the AsyncFd owns the logger.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match logger.readable_mut().await {
                Ok(guard) => guard,
                Err(err) => {
                    tracing::warn!("stopped reading XDP program logs: {err}");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
