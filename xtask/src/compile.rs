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

/// Builds the kernel program with the nightly toolchain and returns the path
/// of the object.
pub fn ebpf(root: &Path, toolchain: &Toolchain) -> Result<PathBuf> {
    run(&mut ebpf_command(
        root,
        toolchain,
        &["build", "--release"],
        &[],
    ))
    .context("building the XDP program (relay-ebpf) failed")?;
    Ok(root.join("target/ebpf/bpfel-unknown-none/release/relay-ebpf"))
}

/// `cargo <subcommand>` on relay-ebpf with the nightly toolchain, for the BPF
/// target, with bpf-linker on PATH; `trailing` goes after the cargo options.
pub fn ebpf_command(
    root: &Path,
    toolchain: &Toolchain,
    subcommand: &[&str],
    trailing: &[&str],
) -> Command {
    let path = std::env::join_paths(std::iter::once(toolchain.bpf_linker_bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH entries contain no separator");
    // -C debuginfo=2 and --btf: the object carries BTF, which aya needs for
    // maps and which makes verifier messages readable.
    let rustflags = ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .args(subcommand)
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(root.join("relay-ebpf/Cargo.toml"))
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
