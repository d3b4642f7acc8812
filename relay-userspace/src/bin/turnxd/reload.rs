//! Reloading the configuration: on SIGHUP, and when the file's content
//! changes. Kubernetes updates a mounted ConfigMap or Secret by swapping a
//! symlink, which no single inode watch sees, so the file is read again on
//! a timer and compared.

use std::{path::PathBuf, time::Duration};

use turnx::config::reload::restart_needed;

use super::{
    Args,
    logs::Logs,
    operations::{DaemonState, ReloadResult},
};

/// How often the file is read again.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The content of the configuration file, and of the files it names, as
/// last seen.
pub struct ConfigWatch {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl ConfigWatch {
    /// Watches `config` (if turnxd runs on a file) and `others`.
    pub fn new(config: Option<PathBuf>, others: Vec<PathBuf>) -> ConfigWatch {
        let mut watch = ConfigWatch { files: Vec::new() };
        watch.follow(config.into_iter().chain(others).collect());
        watch
    }

    /// Watches `paths` from now on (after a reload, whose configuration
    /// may name other files). A path already watched keeps the content
    /// last seen, so that a change made while the reload ran is not taken
    /// as seen; a new one is read as it is now.
    pub fn follow(&mut self, paths: Vec<PathBuf>) {
        let mut old = std::mem::take(&mut self.files);
        self.files = paths
            .into_iter()
            .map(
                |path| match old.iter().position(|(seen, _)| *seen == path) {
                    Some(index) => old.swap_remove(index),
                    None => {
                        let content = std::fs::read(&path).ok();
                        (path, content)
                    }
                },
            )
            .collect();
    }

    /// Whether any content differs from the last look. A file that cannot
    /// be read (in the middle of a swap, say) counts as unchanged until it
    /// can.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, last) in &mut self.files {
            let Ok(now) = std::fs::read(&*path) else {
                continue;
            };
            if last.as_ref() != Some(&now) {
                *last = Some(now);
                changed = true;
            }
        }
        changed
    }
}

/// Reads the configuration again and applies it whole, or refuses it
/// whole. Returns the counter log interval when it changed.
pub fn reload(args: &Args, state: &DaemonState, logs: &Logs) -> Option<Duration> {
    let new = match args.config() {
        Ok(new) => new,
        Err(err) => {
            tracing::error!("configuration reload failed; keeping the running one: {err:#}");
            state.record_reload(ReloadResult::Failed);
            return None;
        }
    };
    let old = state.config();
    let keys = restart_needed(&old, &new);
    if !keys.is_empty() {
        tracing::error!(
            "configuration reload refused; nothing was changed: {} needs a restart",
            keys.join(", ")
        );
        state.record_reload(ReloadResult::Refused);
        return None;
    }
    let interval = (new.log.stats_interval_secs != old.log.stats_interval_secs)
        .then(|| Duration::from_secs(new.log.stats_interval_secs));
    if new.log.level != old.log.level {
        logs.set_level(&new.log.level);
    }
    let users = new.auth.users.len();
    let secrets = new.auth.secrets.len();
    state.apply(new);
    state.record_reload(ReloadResult::Applied);
    tracing::info!("configuration reloaded: {users} static users, {secrets} shared secrets");
    interval
}
