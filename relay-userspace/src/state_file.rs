//! The handover file: what turnxd writes down of its allocations at every
//! change, so that the turnxd after it (a restart, an upgrade, or a start
//! after a crash) takes them over, while the kernel goes on relaying their
//! channels from the pinned maps.
//!
//! It is JSON, written whole to a temporary file beside it and renamed
//! over it, so that a reader (or a crash) only ever sees a complete one. It
//! holds the key of the relay's nonces and reservation tokens: it is made
//! readable by its owner only, and belongs on a local tmpfs (`/run`), which
//! a reboot empties along with the pinned maps.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::turn::{
    Counters,
    snapshot::{AllocationState, LedgerState},
};

/// The format this build writes and reads. A file of another format is
/// not taken over.
pub const FORMAT: u32 = 1;

/// Everything one relay hands over.
#[derive(Clone, Serialize, Deserialize)]
pub struct RelayState {
    /// [`FORMAT`].
    pub format: u32,
    /// The software that wrote it, for the log.
    pub written_by: String,
    /// When, in milliseconds since the Unix epoch: deadlines are time left
    /// at that moment.
    pub written_unix_ms: u64,
    /// The key of nonces and reservation tokens, in hex.
    pub key: String,
    /// Each shard's UDP allocations, in shard order.
    pub shards: Vec<Vec<AllocationState>>,
    /// Each shard's counters, in shard order, which the next daemon's
    /// counters go on from.
    #[serde(default)]
    pub counters: Vec<Counters>,
    /// The relay-wide reservations.
    pub ledger: LedgerState,
}

impl std::fmt::Debug for RelayState {
    // Not derived: the key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayState")
            .field("format", &self.format)
            .field("written_by", &self.written_by)
            .field("written_unix_ms", &self.written_unix_ms)
            .field("allocations", &self.allocations())
            .finish_non_exhaustive()
    }
}

impl RelayState {
    /// A state written now, by this build.
    pub fn new(
        key: [u8; 32],
        shards: Vec<Vec<AllocationState>>,
        counters: Vec<Counters>,
        ledger: LedgerState,
    ) -> Self {
        RelayState {
            format: FORMAT,
            written_by: concat!("turnx ", env!("CARGO_PKG_VERSION")).to_owned(),
            written_unix_ms: unix_ms(SystemTime::now()),
            key: key.iter().map(|byte| format!("{byte:02x}")).collect(),
            shards,
            counters,
            ledger,
        }
    }

    /// The key, if it is 32 bytes of hex.
    pub fn key(&self) -> Option<[u8; 32]> {
        let mut key = [0; 32];
        if self.key.len() != 64 {
            return None;
        }
        for (at, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(self.key.get(2 * at..2 * at + 2)?, 16).ok()?;
        }
        Some(key)
    }

    /// How long ago it was written (zero if the clock went back).
    pub fn age(&self) -> Duration {
        let now = unix_ms(SystemTime::now());
        Duration::from_millis(now.saturating_sub(self.written_unix_ms))
    }

    /// Allocations in all shards.
    pub fn allocations(&self) -> usize {
        self.shards.iter().map(Vec::len).sum()
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// What went wrong with the handover file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// It could not be read, written or locked.
    #[error("{what} the handover file {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Another turnxd holds it.
    #[error(
        "another turnxd uses the handover file {0}; give each instance its own \
         [handover] state_file"
    )]
    InUse(String),
    /// It is not a handover file this build can read.
    #[error(
        "the handover file {path} cannot be taken over ({reason}); its allocations are \
         dropped, and their clients allocate again"
    )]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The handover file of one turnxd, locked for it while it runs.
pub struct StateFile {
    path: PathBuf,
    /// Held (flock) while this process uses the file.
    _lock: File,
}

impl StateFile {
    /// Locks `path` (through `<path>.lock` beside it) for this process,
    /// creating its directory (mode 0700) if needed.
    pub fn open(path: &Path) -> Result<StateFile, StateFileError> {
        let io = |what, source| StateFileError::Io {
            what,
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| io("creating the directory of", source))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(lock_path(path))
            .map_err(|source| io("opening the lock of", source))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StateFileError::InUse(path.display().to_string()));
        }
        Ok(StateFile {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state the previous turnxd left, if it left one.
    pub fn read(&self) -> Result<Option<RelayState>, StateFileError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateFileError::Io {
                    what: "reading",
                    path: self.path.display().to_string(),
                    source,
                });
            }
        };
        let unreadable = |reason: String| StateFileError::Unreadable {
            path: self.path.display().to_string(),
            reason,
        };
        let state: RelayState =
            serde_json::from_slice(&text).map_err(|err| unreadable(err.to_string()))?;
        if state.format != FORMAT {
            return Err(unreadable(format!(
                "format {} written by {}; this turnxd reads format {FORMAT}",
                state.format, state.written_by
            )));
        }
        if state.key().is_none() {
            return Err(unreadable("its key is not 32 bytes of hex".into()));
        }
        Ok(Some(state))
    }

    /// Replaces the file with `state`, whole: written to a temporary file
    /// in the same directory, flushed, and renamed over it.
    pub fn write(&self, state: &RelayState) -> Result<(), StateFileError> {
        let io = |what, source| StateFileError::Io {
            what,
            path: self.path.display().to_string(),
            source,
        };
        let text = serde_json::to_vec(state).map_err(|err| io("encoding", err.into()))?;
        let temporary = self.path.with_extension("tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|source| io("creating a temporary file for", source))?;
        file.write_all(&text)
            .and_then(|()| file.sync_data())
            .map_err(|source| io("writing", source))?;
        std::fs::rename(&temporary, &self.path).map_err(|source| io("replacing", source))
    }

    /// Removes the file: nothing is to be taken over (a stop that is not a
    /// handover).
    pub fn remove(&self) -> Result<(), StateFileError> {
        match std::fs::remove_file(&self.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(StateFileError::Io {
                what: "removing",
                path: self.path.display().to_string(),
                source: err,
            }),
            _ => Ok(()),
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("turnx-state-{}-{name}", std::process::id()))
            .join("state.json")
    }

    #[test]
    fn a_written_state_is_read_back_and_the_file_is_one_holders() {
        let path = temporary("roundtrip");
        let file = StateFile::open(&path).unwrap();
        assert!(file.read().unwrap().is_none(), "nothing written yet");
        assert!(matches!(
            StateFile::open(&path),
            Err(StateFileError::InUse(_))
        ));
        let state = RelayState::new(
            [7; 32],
            vec![vec![], vec![]],
            vec![Counters::default(); 2],
            LedgerState::default(),
        );
        file.write(&state).unwrap();
        let read = file.read().unwrap().unwrap();
        assert_eq!(read.key(), Some([7; 32]));
        assert_eq!(read.shards.len(), 2);
        assert!(read.age() < Duration::from_secs(60));
        assert!(!format!("{read:?}").contains("0707"), "no key in logs");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        file.remove().unwrap();
        assert!(file.read().unwrap().is_none());
        drop(file);
        StateFile::open(&path).expect("free again once dropped");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn another_format_or_garbage_is_not_taken_over() {
        let path = temporary("formats");
        let file = StateFile::open(&path).unwrap();
        let mut state = RelayState::new([1; 32], vec![], vec![], LedgerState::default());
        state.format = FORMAT + 1;
        file.write(&state).unwrap();
        let err = file.read().unwrap_err().to_string();
        assert!(
            err.contains("cannot be taken over") && err.contains("format"),
            "{err}"
        );
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(
            file.read(),
            Err(StateFileError::Unreadable { .. })
        ));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
