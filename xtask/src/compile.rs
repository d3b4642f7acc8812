//! `cargo xtask build`: the XDP object, then the userspace binaries with the
//! object embedded.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    setup::Toolchain,
    util::{cargo, run},
};

/// The variable that tells relay-userspace's build script which object to
/// embed (see relay-userspace/build.rs).
pub const OBJECT_ENV: &str = "TURNX_EBPF_OBJECT";

/// The variable that tells relay-bench where the benchmark's own XDP
/// programs are.
pub const BENCH_OBJECT_ENV: &str = "TURNX_BENCH_OBJECT";

/// The crates built for the BPF target, each its own workspace: the relay's
/// XDP program and the benchmark's (generator, sink, redirect).
pub const KERNEL_CRATES: [&str; 2] = ["relay-ebpf", "bench/ebpf"];

/// The objects built from [`KERNEL_CRATES`].
pub struct Objects {
    /// The relay's XDP program, embedded into turnxd.
    pub relay: PathBuf,
    /// The benchmark's programs, read by relay-bench at run time.
    pub bench: PathBuf,
}

/// Builds the kernel programs with the nightly toolchain and returns the
/// paths of the objects.
pub fn ebpf(root: &Path, toolchain: &Toolchain) -> Result<Objects> {
    for krate in KERNEL_CRATES {
        run(&mut ebpf_command(
            root,
            toolchain,
            krate,
            &["build", "--release"],
            &[],
        ))
        .with_context(|| format!("building the XDP programs in {krate} failed"))?;
    }
    let release = root.join("target/ebpf/bpfel-unknown-none/release");
    Ok(Objects {
        relay: release.join("relay-ebpf"),
        bench: release.join("bench-ebpf"),
    })
}

/// `cargo <subcommand>` on the kernel crate in directory `krate` with the
/// nightly toolchain, for the BPF target, with bpf-linker on PATH;
/// `trailing` goes after the cargo options.
pub fn ebpf_command(
    root: &Path,
    toolchain: &Toolchain,
    krate: &str,
    subcommand: &[&str],
    trailing: &[&str],
) -> Command {
    let path = std::env::join_paths(std::iter::once(toolchain.bpf_linker_bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH entries contain no separator");
    // -C debuginfo=2 and --btf: the object carries BTF, which aya needs for
    // maps and which makes verifier messages readable. Misaligned access
    // allowed: header fields are byte arrays (packet headers sit at any
    // offset), and without it every multi-byte field is read and written a
    // byte at a time. The kernel takes misaligned packet and map access on
    // the machines it runs on (x86-64, arm64), not misaligned stack access:
    // the kernel crate keeps its stack structs aligned.
    let rustflags = [
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Clink-arg=--cpu-features=+allows-misaligned-mem-access",
    ]
    .join("\x1f");
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .args(subcommand)
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(root.join(krate).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .args(trailing)
        .env("PATH", path)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS");
    command
}

/// Builds the userspace binaries in release mode with `object` embedded.
pub fn userspace(object: &Path) -> Result<()> {
    run(cargo()
        .args(["build", "--release", "--package", "relay-userspace"])
        .args(["--package", "relay-bench"])
        .env(OBJECT_ENV, object))
    .context("building turnxd and turnxctl failed")
}
