//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/`, run like a
//! benchmark, and the kernel program's fuzzer.
//!
//! Full mode runs each target for at least [`FULL_RUNS`] inputs (and at
//! most `--max-time` seconds, so the load is bounded), one process each,
//! from a fresh corpus of generated seeds, then, as root, the kernel
//! program's fuzzer (`relay-userspace/tests/kernel_fuzz.rs`). It prints a
//! table of inputs, executions per second, coverage (libFuzzer's edges,
//! `cov`, and features, `ft`) and corpus size, and writes it to
//! `target/fuzz-report.md`. Smoke mode (`--smoke`, run by `cargo xtask
//! test`) gives each target a few seconds.
//!
//! The targets are built without a sanitizer, for speed: the code under
//! test is safe Rust, whose out-of-bounds accesses and overflows already
//! panic (debug assertions are on), so AddressSanitizer would mostly cost
//! executions. Plain `cargo fuzz run <target>` (AddressSanitizer on) is
//! still there to look at a crash inside a dependency's unsafe code.
//!
//! Everything goes under `target/fuzz/` (build, corpora, logs) except what
//! cargo-fuzz itself keeps in `fuzz/`: crashing inputs in
//! `fuzz/artifacts/<target>/`. The inputs of bugs found and fixed live in
//! `fuzz/regressions/<target>/`, and every run starts with them.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    compile, setup,
    util::{cargo, describe, is_root},
};

/// The cargo-fuzz targets, in the order they run.
pub const TARGETS: [&str; 3] = ["stun_decode", "stream_framer", "turn_core"];

/// The name `--target` knows the kernel program's fuzzer by (the
/// integration test of that name).
pub const KERNEL_TARGET: &str = "kernel_fuzz";

/// Inputs per target in full mode.
pub const FULL_RUNS: u64 = 10_000_000;
/// Seconds per target at most in full mode.
const FULL_MAX_SECS: u64 = 3600;
/// Inputs and seconds per target at most in smoke mode.
const SMOKE_RUNS: u64 = 200_000;
const SMOKE_MAX_SECS: u64 = 15;
/// Frames the kernel fuzzer sends in full mode.
const KERNEL_FRAMES: u64 = 1_000_000;
/// The variable the kernel fuzzer reads its frame count from.
const KERNEL_FRAMES_ENV: &str = "TURNX_KERNEL_FUZZ_FRAMES";
/// A single input taking longer than this is a failure (a hang).
const INPUT_TIMEOUT_SECS: u64 = 10;
/// Runs shorter than this get their exec/s from the wall time.
const SHORT_RUN: Duration = Duration::from_secs(30);
/// Lines of the kernel fuzzer's output kept in the report.
const KERNEL_TAIL_LINES: usize = 15;

/// Makes the harnesses print what they reached (see fuzz/src/counters.rs).
const DEBUG_ENV: &str = "TURNX_FUZZ_DEBUG";
const COUNTERS_PREFIX: &str = "turnx-fuzz counters:";

/// What `cargo xtask fuzz` was asked.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// A short bounded run that only checks the targets work (CI).
    #[arg(long)]
    pub smoke: bool,
    /// Inputs per target (default: 10 000 000, or 200 000 with --smoke).
    #[arg(long)]
    pub runs: Option<u64>,
    /// Seconds per target at most (default: 3600, or 15 with --smoke).
    #[arg(long)]
    pub max_time: Option<u64>,
    /// Only this target: stun_decode, stream_framer, turn_core or
    /// kernel_fuzz.
    #[arg(long)]
    pub target: Option<String>,
    /// Frames the kernel fuzzer sends (default: 1 000 000).
    #[arg(long)]
    pub kernel_frames: Option<u64>,
    /// Leave the kernel fuzzer out.
    #[arg(long)]
    pub no_kernel: bool,
}

impl Options {
    /// The smoke run `cargo xtask test` does.
    pub fn smoke() -> Self {
        Options {
            smoke: true,
            runs: None,
            max_time: None,
            target: None,
            kernel_frames: None,
            no_kernel: true,
        }
    }
}

/// How the targets are built, in both modes (a smoke run and a full one
/// share the build): optimized where the targets run (fuzz/Cargo.toml's
/// release profile says where), with debug assertions and overflow checks,
/// without a sanitizer. `run` must get the same flags as `build`, or
/// cargo-fuzz rebuilds.
const BUILD_FLAGS: [&str; 6] = [
    "--release",
    "--debug-assertions",
    "--sanitizer",
    "none",
    "--target-dir",
    "target/fuzz/build",
];

/// What one target's run gave.
#[derive(Debug, Default)]
struct TargetRun {
    name: String,
    ok: bool,
    /// Why it failed, if it did.
    failure: Option<String>,
    inputs: u64,
    exec_per_sec: u64,
    cov: Option<u64>,
    /// Edges instrumented in the binary, of which `cov` were reached.
    edges: Option<u64>,
    features: Option<u64>,
    corpus: Option<String>,
    peak_rss_mb: Option<u64>,
    wall: Duration,
    seed: Option<String>,
    counters: Option<String>,
}

/// Runs `cargo xtask fuzz` with `options`.
pub fn run(root: &Path, options: &Options) -> Result<()> {
    let mode = if options.smoke { "smoke" } else { "full" };
    let runs = options
        .runs
        .unwrap_or(if options.smoke { SMOKE_RUNS } else { FULL_RUNS });
    let max_time = options.max_time.unwrap_or(if options.smoke {
        SMOKE_MAX_SECS
    } else {
        FULL_MAX_SECS
    });
    let targets: Vec<&str> = match options.target.as_deref() {
        None => TARGETS.to_vec(),
        Some(KERNEL_TARGET) => Vec::new(),
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "unknown fuzz target {name}; the targets are {} and {KERNEL_TARGET}",
            TARGETS.join(", ")
        ),
    };
    let kernel = !options.smoke
        && !options.no_kernel
        && matches!(options.target.as_deref(), None | Some(KERNEL_TARGET));

    let started = Instant::now();
    let mut results = Vec::new();
    let mut build_time = None;
    if !targets.is_empty() {
        let tools = setup::ensure_cargo_fuzz(root)?;
        let flags = BUILD_FLAGS;
        println!("fuzz: building the targets ({})", flags.join(" "));
        let build_started = Instant::now();
        let mut build = cargo_fuzz(root, &tools, "build", &flags);
        // cargo fuzz builds one target, or all when given none.
        if let [only] = targets[..] {
            build.arg(only);
        }
        crate::util::run(&mut build)
            .context("building the fuzz targets failed; see the cargo output above")?;
        build_time = Some(build_started.elapsed());
        for target in &targets {
            results.push(run_target(root, &tools, &flags, target, runs, max_time)?);
        }
    }
    let kernel_report = if kernel {
        Some(kernel_fuzz(
            root,
            options.kernel_frames.unwrap_or(KERNEL_FRAMES),
        )?)
    } else {
        None
    };

    let report = render_report(
        mode,
        runs,
        max_time,
        build_time,
        started.elapsed(),
        &results,
        kernel_report.as_ref(),
    );
    // A smoke run (CI's) does not overwrite the last full report.
    let path = root.join(if options.smoke {
        "target/fuzz-smoke-report.md"
    } else {
        "target/fuzz-report.md"
    });
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{report}");
    println!("fuzz: report written to {}", path.display());

    let mut failures: Vec<String> = results
        .iter()
        .filter_map(|result| {
            result
                .failure
                .as_ref()
                .map(|why| format!("{}: {why}", result.name))
        })
        .collect();
    if !options.smoke {
        for result in results.iter().filter(|result| result.ok) {
            if result.inputs < runs {
                failures.push(format!(
                    "{}: ran {} inputs of the {runs} asked within {max_time} s; raise --max-time \
                     or lower --runs",
                    result.name, result.inputs
                ));
            }
        }
    }
    if let Some(KernelReport::Failed { why, .. }) = &kernel_report {
        failures.push(format!("{KERNEL_TARGET}: {why}"));
    }
    if !failures.is_empty() {
        bail!("fuzzing failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// `cargo +nightly fuzz <subcommand> <flags>` in the repository root, with
/// cargo-fuzz on PATH and none of the outer cargo's variables.
fn cargo_fuzz(root: &Path, tools: &Path, subcommand: &str, flags: &[&str]) -> Command {
    let path = std::env::join_paths(std::iter::once(tools.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH entries contain no separator");
    // `rustup run` rather than `cargo +nightly`: under `cargo xtask`, PATH
    // may start with the stable toolchain's own cargo, which knows no `+`.
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz", subcommand])
        .args(["--fuzz-dir", "fuzz"])
        .args(flags)
        .current_dir(root)
        .env("PATH", path);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        compile::OBJECT_ENV,
    ] {
        command.env_remove(var);
    }
    command
}

/// Fuzzes `target` from a fresh corpus of its generated seeds.
fn run_target(
    root: &Path,
    tools: &Path,
    flags: &[&str],
    target: &str,
    runs: u64,
    max_time: u64,
) -> Result<TargetRun> {
    let corpus = root.join("target/fuzz/corpus").join(target);
    let logs = root.join("target/fuzz/logs");
    // Fresh every run, so that the figures of two runs compare; the
    // harness writes the seeds into the empty directory.
    let _ = fs::remove_dir_all(&corpus);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    println!("fuzz: {target}: up to {runs} inputs or {max_time} s");
    let mut command = cargo_fuzz(root, tools, "run", flags);
    command.arg(target).arg(&corpus);
    // Inputs of bugs fuzzing found, a second corpus that libFuzzer reads
    // (and replays) first but does not write to.
    let regressions = root.join("fuzz/regressions").join(target);
    if regressions.is_dir() {
        command.arg(&regressions);
    }
    command
        .arg("--")
        .arg(format!("-runs={runs}"))
        .arg(format!("-max_total_time={max_time}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .env(DEBUG_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", describe(&command)))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut result = TargetRun {
        name: target.to_owned(),
        ..TargetRun::default()
    };
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzzer's output")?;
        let _ = writeln!(log, "{line}");
        if shown(&line) {
            eprintln!("{line}");
        }
        parse_line(&line, &mut result);
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    result.wall = started.elapsed();
    if result.wall < SHORT_RUN && !result.wall.is_zero() {
        // libFuzzer divides by whole seconds, which is coarse for a short
        // run: inputs over the wall time instead.
        result.exec_per_sec = (result.inputs as f64 / result.wall.as_secs_f64()) as u64;
    }
    result.ok = status.success();
    if !status.success() {
        result.failure = Some(format!(
            "the fuzzer exited with {status}: a crash, a hang (over {INPUT_TIMEOUT_SECS} s) or \
             an out-of-memory; the input is in fuzz/artifacts/{target}/, reproduce it with \
             `rustup run nightly cargo fuzz run {} {target} fuzz/artifacts/{target}/<file>` \
             (TURNX_FUZZ_TRACE=1 makes turn_core print each step); full log: {}",
            flags.join(" "),
            log_path.display()
        ));
    }
    Ok(result)
}

/// Whether a line of libFuzzer's output is worth echoing: not the stream
/// of new and reduced corpus entries, nor the dictionary it suggests.
fn shown(line: &str) -> bool {
    // "#N<tab>NEW ..." and "#N<tab>REDUCE ..." lines.
    let event = line.split_whitespace().nth(1);
    let noisy = matches!(event, Some("NEW" | "REDUCE"))
        || line.starts_with('"')
        || line.contains("dictionary. ######");
    !noisy
}

/// Takes what `line` tells of the run into `result`.
fn parse_line(line: &str, result: &mut TargetRun) {
    if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
        result.inputs = value.trim().parse().unwrap_or(result.inputs);
    } else if let Some(value) = line.strip_prefix("stat::average_exec_per_sec:") {
        result.exec_per_sec = value.trim().parse().unwrap_or(0);
    } else if let Some(value) = line.strip_prefix("stat::peak_rss_mb:") {
        result.peak_rss_mb = value.trim().parse().ok();
    } else if line.starts_with("INFO: Loaded") && line.contains("inline 8-bit counters") {
        // "INFO: Loaded 1 modules   (14567 inline 8-bit counters): ..."
        result.edges = line
            .split_once('(')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok());
    } else if let Some(value) = line.strip_prefix("INFO: Seed:") {
        result.seed = Some(value.trim().to_owned());
    } else if let Some(counters) = line.strip_prefix(COUNTERS_PREFIX) {
        result.counters = Some(counters.trim().to_owned());
    } else if line.starts_with('#') {
        // "#N <event> cov: X ft: Y corp: A/B ..." status lines; the last
        // one (DONE, or the last before a crash) stands.
        let mut words = line.split_whitespace();
        let executed = words.next().and_then(|n| n[1..].parse::<u64>().ok());
        let mut words = words.peekable();
        while let Some(word) = words.next() {
            match word {
                "cov:" => result.cov = words.peek().and_then(|v| v.parse().ok()),
                "ft:" => result.features = words.peek().and_then(|v| v.parse().ok()),
                "corp:" => result.corpus = words.peek().map(|v| v.to_string()),
                _ => {}
            }
        }
        if let Some(executed) = executed
            && result.inputs < executed
        {
            result.inputs = executed;
        }
    }
}

/// What the kernel fuzzer did.
enum KernelReport {
    Skipped(String),
    Passed { tail: Vec<String>, wall: Duration },
    Failed { why: String, tail: Vec<String> },
}

/// Runs the kernel program's fuzzer, an integration test that needs root
/// and the XDP object.
fn kernel_fuzz(root: &Path, frames: u64) -> Result<KernelReport> {
    let test = root
        .join("relay-userspace/tests")
        .join(format!("{KERNEL_TARGET}.rs"));
    if !is_root() {
        println!("fuzz: skipping {KERNEL_TARGET}: it loads the XDP program, which needs root");
        return Ok(KernelReport::Skipped("needs root".into()));
    }
    if !test.is_file() {
        println!(
            "fuzz: skipping {KERNEL_TARGET}: {} does not exist",
            test.display()
        );
        return Ok(KernelReport::Skipped(format!(
            "{} does not exist",
            test.display()
        )));
    }
    let toolchain = setup::setup(root, false)?;
    let objects = compile::ebpf(root, &toolchain)?;
    println!("fuzz: {KERNEL_TARGET}: {frames} frames");
    let mut command = cargo();
    command
        .args([
            "test",
            "--release",
            "-p",
            "relay-userspace",
            "--test",
            KERNEL_TARGET,
        ])
        .args(["--", "--nocapture"])
        .env(KERNEL_FRAMES_ENV, frames.to_string())
        .env(compile::OBJECT_ENV, &objects.relay)
        // Fail rather than skip if the object did not make it in.
        .env(crate::REQUIRE_XDP_TESTS_ENV, "1")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", describe(&command)))?;
    // Both streams into one tail, echoed as they come.
    let stderr = child.stderr.take().expect("stderr is piped");
    let echo = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .inspect(|line| eprintln!("{line}"))
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .inspect(|line| println!("{line}"))
        .collect();
    let status = child.wait().context("waiting for the kernel fuzzer")?;
    lines.extend(echo.join().unwrap_or_default());
    let tail = lines[lines.len().saturating_sub(KERNEL_TAIL_LINES)..].to_vec();
    if status.success() {
        Ok(KernelReport::Passed {
            tail,
            wall: started.elapsed(),
        })
    } else {
        Ok(KernelReport::Failed {
            why: format!("{} failed with {status}", describe(&command)),
            tail,
        })
    }
}

/// The report, in Markdown.
fn render_report(
    mode: &str,
    runs: u64,
    max_time: u64,
    build_time: Option<Duration>,
    total: Duration,
    results: &[TargetRun],
    kernel: Option<&KernelReport>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# cargo xtask fuzz ({mode})\n");
    let _ = writeln!(
        out,
        "Up to {runs} inputs or {max_time} s per target, one process each, from generated \
         seeds; build flags `{}`.",
        BUILD_FLAGS.join(" ")
    );
    if let Some(build) = build_time {
        let _ = writeln!(out, "Build (or build check): {:.1} s.", build.as_secs_f64());
    }
    let _ = writeln!(out, "Total: {:.1} s.\n", total.as_secs_f64());
    if !results.is_empty() {
        let _ = writeln!(
            out,
            "| target | result | inputs | exec/s | cov | ft | corpus | peak RSS | wall |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
        let show = |value: Option<u64>| value.map_or("-".to_owned(), |v| v.to_string());
        for result in results {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} of {} | {} | {} | {} | {:.1} s |",
                result.name,
                if result.ok { "ok" } else { "FAILED" },
                result.inputs,
                result.exec_per_sec,
                show(result.cov),
                show(result.edges),
                show(result.features),
                result.corpus.as_deref().unwrap_or("-"),
                result
                    .peak_rss_mb
                    .map_or("-".to_owned(), |mb| format!("{mb} MB")),
                result.wall.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "\nexec/s: libFuzzer's average (inputs over wall time for runs under 30 s); \
             cov: edges reached, of those instrumented in the target's binary (what it \
             links, dead code stripped, the harness included); ft: libFuzzer's features (edges \
             with hit counts, compared values); corpus: entries/size when the run ended.\n\n\
             What the harnesses reached (`{DEBUG_ENV}` counters):\n"
        );
        for result in results {
            let _ = writeln!(
                out,
                "- {} (libFuzzer seed {}): {}",
                result.name,
                result.seed.as_deref().unwrap_or("?"),
                result.counters.as_deref().unwrap_or("none printed")
            );
        }
        for result in results.iter().filter(|result| !result.ok) {
            if let Some(why) = &result.failure {
                let _ = writeln!(out, "\n**{} failed**: {why}", result.name);
            }
        }
    }
    match kernel {
        None => {}
        Some(KernelReport::Skipped(why)) => {
            let _ = writeln!(out, "\n{KERNEL_TARGET}: skipped ({why}).");
        }
        Some(KernelReport::Passed { tail, wall }) => {
            let _ = writeln!(
                out,
                "\n{KERNEL_TARGET}: passed in {:.1} s; its last lines:\n\n```\n{}\n```",
                wall.as_secs_f64(),
                tail.join("\n")
            );
        }
        Some(KernelReport::Failed { why, tail }) => {
            let _ = writeln!(
                out,
                "\n**{KERNEL_TARGET} failed**: {why}; its last lines:\n\n```\n{}\n```",
                tail.join("\n")
            );
        }
    }
    out
}
