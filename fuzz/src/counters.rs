//! Counts of what a fuzz run reached, so that a run can show it exercised
//! the paths it was written for (for example that the TURN core answered
//! authenticated requests with successes, not only challenges). With
//! `TURNX_FUZZ_DEBUG` set, the counts are printed on one line when libFuzzer
//! exits; `cargo xtask fuzz` sets it and copies the line into its report.

use std::{
    fmt::Write,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

/// The environment variable that asks for the counts at exit.
pub const DEBUG_ENV: &str = "TURNX_FUZZ_DEBUG";

/// The start of the line the counts are printed on.
pub const LINE_PREFIX: &str = "turnx-fuzz counters:";

/// `N` named counters of one target.
pub struct Counters<const N: usize> {
    names: [&'static str; N],
    values: [AtomicU64; N],
}

impl<const N: usize> Counters<N> {
    /// Counters named `names`, all zero.
    pub const fn new(names: [&'static str; N]) -> Self {
        Counters {
            names,
            values: [const { AtomicU64::new(0) }; N],
        }
    }

    /// Adds one to counter `index` (an index into the names).
    pub fn bump(&self, index: usize) {
        // One fuzzing thread: relaxed is enough, and costs next to nothing.
        self.values[index].fetch_add(1, Ordering::Relaxed);
    }

    /// `name=value` pairs, space separated.
    pub fn line(&self) -> String {
        let mut line = String::new();
        for (name, value) in self.names.iter().zip(&self.values) {
            let _ = write!(line, " {name}={}", value.load(Ordering::Relaxed));
        }
        line
    }
}

/// A target's name and the function that prints its counters.
type Report = (&'static str, fn() -> String);

static REPORT: OnceLock<Report> = OnceLock::new();

unsafe extern "C" {
    /// The C library's `atexit`: libFuzzer ends a run with `exit`, which
    /// runs these handlers (Rust has no exit hook of its own).
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn print_report() {
    if let Some((target, line)) = REPORT.get() {
        eprintln!("{LINE_PREFIX} target={target}{}", line());
    }
}

/// Prints `line()` when the process exits, if `TURNX_FUZZ_DEBUG` is set.
/// Call it once, from the target's init block.
pub fn print_at_exit(target: &'static str, line: fn() -> String) {
    if std::env::var_os(DEBUG_ENV).is_none() || REPORT.set((target, line)).is_err() {
        return;
    }
    // SAFETY: `print_report` is a plain function that stays valid for the
    // whole life of the process, as atexit requires.
    let registered = unsafe { atexit(print_report) };
    if registered != 0 {
        eprintln!("turnx-fuzz: atexit failed; no counters will be printed");
    }
}
