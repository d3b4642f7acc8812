//! Cleanup when a run is interrupted: once [`install`]ed (the benchmark
//! does), Ctrl-C or SIGTERM stop the servers it started (by PID) and delete
//! its namespaces and its scratch directory before it exits, as drop does
//! on a normal exit, an error or a panic. Namespaces register themselves.

use std::{path::PathBuf, sync::Mutex};

/// Namespaces and processes to remove if interrupted.
static LIVE: Mutex<(Vec<String>, Vec<u32>)> = Mutex::new((Vec::new(), Vec::new()));
/// The scratch directory (server configurations and logs).
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Remembers the scratch directory, removed if interrupted.
pub fn scratch_directory(path: PathBuf) {
    *SCRATCH.lock().expect("cleanup lock") = Some(path);
}

/// Remembers a namespace until [`namespace_deleted`].
pub fn namespace_created(name: &str) {
    LIVE.lock().expect("cleanup lock").0.push(name.to_owned());
}

/// The namespace has been deleted.
pub fn namespace_deleted(name: &str) {
    LIVE.lock().expect("cleanup lock").0.retain(|n| n != name);
}

/// Remembers a process until [`process_stopped`].
pub fn process_started(pid: u32) {
    LIVE.lock().expect("cleanup lock").1.push(pid);
}

/// The process has exited.
pub fn process_stopped(pid: u32) {
    LIVE.lock().expect("cleanup lock").1.retain(|&p| p != pid);
}

/// Blocks SIGINT and SIGTERM in every thread and handles them in one
/// thread of their own. Call before starting any other thread.
pub fn install() -> std::io::Result<()> {
    // SAFETY: plain signal-mask calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::other("blocking SIGINT and SIGTERM failed"));
        }
        set
    };
    std::thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: waits for one of the blocked signals in `set`.
        unsafe { libc::sigwait(&set, &mut signal) };
        eprintln!("interrupted; stopping servers and removing namespaces");
        let (namespaces, pids) = std::mem::take(&mut *LIVE.lock().expect("cleanup lock"));
        for pid in pids {
            // SAFETY: signalling a child we started, by its PID.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for name in namespaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &name])
                .status();
        }
        if let Some(dir) = SCRATCH.lock().expect("cleanup lock").take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
    Ok(())
}
