//! turnxd's side of a handover: it writes its allocations down after every
//! change (off the data path, at most every [`PERSIST_EVERY`]), so that
//! the turnxd after it takes them over, after `turnxctl stop --handover`
//! and after a crash alike; and it reads what the previous one left.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use turnx::{
    shell::TurnServer,
    state_file::{RelayState, StateFile, StateFileError},
};

/// How often changed allocations are written down: what a crash can lose
/// is what changed in the last interval (those clients get 437 on their
/// next request, and allocate again).
pub const PERSIST_EVERY: Duration = Duration::from_millis(250);

/// The handover file and its writer.
pub struct Handover {
    file: Arc<StateFile>,
    /// The write under way, if any: one at a time, in order.
    writing: Option<tokio::task::JoinHandle<()>>,
    /// Whether the last write failed (said once, not at every try).
    failing: Arc<AtomicBool>,
}

impl Handover {
    /// Locks the handover file at `path`; `None` when `path` is empty
    /// (handover off).
    pub fn open(path: &str) -> Result<Option<Handover>> {
        if path.is_empty() {
            tracing::info!(
                "no [handover] state_file: a restarted turnxd starts without allocations"
            );
            return Ok(None);
        }
        let file = match StateFile::open(Path::new(path)) {
            Ok(file) => file,
            Err(err @ StateFileError::Io { .. }) => {
                // Not root, say, with the built-in /run/turnx: serve anyway.
                tracing::warn!(
                    "{err}; running without handover: a restarted turnxd starts without \
                     allocations (give [handover] state_file a writable path, or \"\")"
                );
                return Ok(None);
            }
            Err(err) => return Err(err).context("opening the handover file"),
        };
        Ok(Some(Handover {
            file: Arc::new(file),
            writing: None,
            failing: Arc::default(),
        }))
    }

    /// What the previous turnxd handed over, if anything (a file that
    /// cannot be taken over is said, and ignored).
    pub fn previous(&self) -> Option<RelayState> {
        match self.file.read() {
            Ok(Some(state)) => {
                tracing::info!(
                    "{} handed over {} allocations in {}, {:?} ago",
                    state.written_by,
                    state.allocations(),
                    self.file.path().display(),
                    state.age()
                );
                Some(state)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!("{err}");
                None
            }
        }
    }

    /// Writes the allocations down if they changed since the last write,
    /// unless a write is still under way (the change is then written at
    /// the next call).
    pub fn persist(&mut self, turn: &TurnServer) {
        if self
            .writing
            .as_ref()
            .is_some_and(|writing| !writing.is_finished())
        {
            return;
        }
        if !turn.take_changed() {
            return;
        }
        let state = turn.snapshot();
        let file = Arc::clone(&self.file);
        let failing = Arc::clone(&self.failing);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            match file.write(&state) {
                Ok(()) if failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!("the handover file is written again");
                }
                Ok(()) => {}
                Err(err) if !failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                    "{err}; a turnxd after this one could not take the allocations over"
                ),
                Err(_) => {}
            }
        }));
    }

    /// Writes `state`, the last one, for the next turnxd, after any write
    /// under way.
    pub async fn hand_over(&mut self, state: &RelayState) -> Result<()> {
        if let Some(writing) = self.writing.take() {
            let _ = writing.await;
        }
        let file = Arc::clone(&self.file);
        let state = state.clone();
        let count = state.allocations();
        tokio::task::spawn_blocking(move || file.write(&state))
            .await
            .context("writing the handover file")?
            .context("handing over")?;
        tracing::info!(
            "wrote {count} allocations to {} for the next turnxd",
            self.file.path().display()
        );
        Ok(())
    }

    /// Removes the file: a stop that is not a handover leaves nothing to
    /// take over.
    pub fn forget(&self) {
        if let Err(err) = self.file.remove() {
            tracing::warn!("{err}");
        }
    }
}
