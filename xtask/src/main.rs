//! `cargo xtask`: set up, build, run, test and benchmark the relay.
//!
//! Every command that builds runs `setup` first, so a fresh clone needs
//! nothing but `cargo xtask run` or `cargo xtask test`.

mod compile;
mod deploy_check;
mod fuzz;
mod setup;
mod util;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::util::{cargo, is_root, run};

#[derive(Debug, Parser)]
#[command(about = "Project automation for the turnx TURN relay")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the toolchain pieces: nightly rust-src, bpf-linker, bpffs.
    Setup,
    /// Build the XDP object and the userspace binaries (release).
    Build,
    /// Build, then run turnxd (as root) on its built-in configuration;
    /// arguments after `--` go to turnxd.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then run every check and test: format, clippy, unit tests,
    /// BPF_PROG_TEST_RUN and network-namespace tests, fuzz and benchmark
    /// smoke runs.
    Test,
    /// Build, then run the benchmarks; arguments after `--` go to relay-bench.
    Bench {
        /// A short run that only checks the benchmarks work.
        #[arg(long)]
        smoke: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build and run the fuzz targets (fuzz/): at least 10 million inputs
    /// each, then, as root, the kernel program's fuzzer; prints executions
    /// per second and coverage, and writes target/fuzz-report.md.
    Fuzz(fuzz::Options),
    /// Validate deploy/ offline: manifests against the Kubernetes API
    /// schemas, alert rules with promtool, dashboard, Containerfile.
    DeployCheck(deploy_check::Options),
}

/// Set by `cargo xtask test`: tests that need the XDP object fail instead of
/// skipping when it is missing, so CI never passes by skipping.
const REQUIRE_XDP_TESTS_ENV: &str = "TURNX_REQUIRE_XDP_TESTS";

fn main() -> ExitCode {
    match run_task(Args::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask/Cargo.toml sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn run_task(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Setup => {
            setup::setup(&root, false)?;
            println!("setup: done");
            Ok(())
        }
        Task::Build => build(&root).map(|_| ()),
        Task::Run { args } => {
            build(&root)?;
            require_root("turnxd attaches XDP programs")?;
            Err(Command::new(root.join("target/release/turnxd"))
                .args(args)
                .exec())
            .context("starting target/release/turnxd")
        }
        Task::Test => test(&root),
        Task::Fuzz(options) => fuzz::run(&root, &options),
        Task::DeployCheck(options) => deploy_check::run(&root, &options),
        Task::Bench { smoke, args } => {
            let objects = build(&root)?;
            require_root("the benchmarks load XDP programs and create network namespaces")?;
            let mut command = Command::new(root.join("target/release/relay-bench"));
            if smoke {
                command.arg("--smoke");
            }
            run(command
                .args(args)
                .env(compile::BENCH_OBJECT_ENV, &objects.bench)
                .current_dir(&root))
        }
    }
}

fn build(root: &Path) -> Result<compile::Objects> {
    let toolchain = setup::setup(root, false)?;
    let objects = compile::ebpf(root, &toolchain)?;
    compile::userspace(&objects.relay)?;
    Ok(objects)
}

fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("{why}: run this as root (or with CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)");
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    let toolchain = setup::setup(root, true)?;
    let objects = compile::ebpf(root, &toolchain)?;
    let object = &objects.relay;

    println!("test: cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]).current_dir(root))
        .context("formatting differs; run `cargo fmt --all`")?;
    for krate in compile::KERNEL_CRATES {
        run(cargo()
            .args(["fmt", "--check", "--manifest-path"])
            .arg(root.join(krate).join("Cargo.toml")))
        .with_context(|| format!("{krate} formatting differs; run `cargo fmt` in {krate}"))?;
    }
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml")))
    .context("fuzz formatting differs; run `cargo fmt --manifest-path fuzz/Cargo.toml`")?;

    println!("test: cargo clippy");
    run(cargo()
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env(compile::OBJECT_ENV, object)
        .current_dir(root))
    .context("clippy found problems")?;
    for krate in compile::KERNEL_CRATES {
        run(&mut compile::ebpf_command(
            root,
            &toolchain,
            krate,
            &["clippy", "--release"],
            &["--", "-D", "warnings"],
        ))
        .with_context(|| format!("clippy found problems in {krate}"))?;
    }

    println!("test: deploy-check");
    deploy_check::run(root, &deploy_check::Options { update: false })
        .context("deploy/ does not validate")?;

    println!("test: cargo test");
    // The tests drive the crates.io tools setup installed.
    let tools = root.join(setup::TEST_TOOLS_DIR).join("bin");
    let path = std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let mut command = cargo();
    command
        .args(["test", "--workspace"])
        .env(compile::OBJECT_ENV, object)
        // The coexistence tests load its stand-ins for foreign programs.
        .env(compile::BENCH_OBJECT_ENV, &objects.bench)
        .env(REQUIRE_XDP_TESTS_ENV, "1")
        .env("PATH", path)
        .current_dir(root);
    run(&mut command).context("tests failed")?;

    println!("test: fuzz smoke run");
    fuzz::run(root, &fuzz::Options::smoke()).context("the fuzz smoke run failed")?;

    if is_root() {
        println!("test: benchmark smoke run");
        compile::userspace(object)?;
        run(Command::new(root.join("target/release/relay-bench"))
            .arg("--smoke")
            .env(compile::BENCH_OBJECT_ENV, &objects.bench)
            .current_dir(root))
        .context("the benchmark smoke run failed")?;
    } else {
        println!("test: skipping the benchmark smoke run: it needs root to load XDP");
    }
    Ok(())
}
