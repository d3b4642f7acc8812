//! `cargo xtask setup`: everything a fresh machine needs, idempotently.
//!
//! - rust-src and clippy for the nightly toolchain (the kernel program is
//!   built with `-Z build-std=core`), installing the nightly if it is missing;
//! - bpf-linker, built from crates.io against the nightly's own libLLVM
//!   (no packaged LLVM here is new enough), once per nightly;
//! - bpffs mounted at /sys/fs/bpf;
//! - for tests, the Debian packages they drive (iproute2, ethtool, coturn's
//!   clients, openssl, chromium) and turnhammer from crates.io;
//! - for fuzzing, cargo-fuzz from crates.io ([`ensure_cargo_fuzz`]);
//! - for `deploy-check`, promtool (Debian `prometheus`) and a Python venv
//!   in target/tools/venv with kubernetes-validate ([`ensure_deploy_tools`]).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{command_output, is_root, run};

/// Where the bpf-linker built for the current nightly lives.
pub struct Toolchain {
    /// Directory holding the `bpf-linker` binary; goes first on PATH.
    pub bpf_linker_bin: PathBuf,
}

/// Where `cargo install`ed test tools go; the tests find them on PATH.
pub const TEST_TOOLS_DIR: &str = "target/tools";

/// Test tools from crates.io: (binary, crate, version). turnhammer is a
/// third-party TURN load client.
const TEST_CRATES: &[(&str, &str, &str)] = &[("turnhammer", "turnhammer", "0.2.0")];

/// The fuzzing driver, pinned like the test tools: (binary, crate, version).
/// It runs as a cargo subcommand of the nightly toolchain.
const CARGO_FUZZ: (&str, &str, &str) = ("cargo-fuzz", "cargo-fuzz", "0.13.2");

/// Debian packages the tests call, by the command that shows they are there.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("turnutils_uclient", "coturn"),
    ("openssl", "openssl"),
    ("chromium", "chromium"),
];

/// Debian packages `deploy-check` calls: promtool checks the alert rules,
/// Python (with venv) runs kubernetes-validate.
const DEPLOY_PACKAGES: &[(&str, &str)] = &[("promtool", "prometheus"), ("python3", "python3")];

/// PyPI packages of the deploy-check venv, pinned: kubernetes-validate
/// carries the Kubernetes API schemas (and brings jsonschema and PyYAML).
const DEPLOY_PYTHON_PACKAGES: &[&str] = &["kubernetes-validate==1.37.0"];

/// The venv `deploy-check` runs its Python tools from.
pub struct DeployTools {
    /// The venv's Python.
    pub python: PathBuf,
    /// The venv's kubernetes-validate.
    pub kubernetes_validate: PathBuf,
}

/// Installs promtool and Python if missing, and the pinned Python tools
/// into target/tools/venv unless the venv already holds those pins.
pub fn ensure_deploy_tools(root: &Path) -> Result<DeployTools> {
    ensure_packages(DEPLOY_PACKAGES)?;
    let venv = root.join(TEST_TOOLS_DIR).join("venv");
    let bin = venv.join("bin");
    let tools = DeployTools {
        python: bin.join("python"),
        kubernetes_validate: bin.join("kubernetes-validate"),
    };
    // The stamp records what the venv was made with, so a new pin rebuilds it.
    let stamp = venv.join("turnx-requirements.txt");
    let wanted = DEPLOY_PYTHON_PACKAGES.join("\n") + "\n";
    if tools.kubernetes_validate.is_file()
        && fs::read_to_string(&stamp).is_ok_and(|pins| pins == wanted)
    {
        return Ok(tools);
    }
    println!(
        "setup: creating {} with {}",
        venv.display(),
        DEPLOY_PYTHON_PACKAGES.join(" ")
    );
    let _ = fs::remove_dir_all(&venv);
    if run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).is_err() {
        // Debian's python3 leaves ensurepip, which venv needs, to python3-venv.
        apt_install(&["python3-venv"])?;
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("`python3 -m venv` failed even with python3-venv installed")?;
    }
    run(Command::new(&tools.python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(DEPLOY_PYTHON_PACKAGES))
    .with_context(|| format!("`pip install {}` failed", DEPLOY_PYTHON_PACKAGES.join(" ")))?;
    fs::write(&stamp, wanted)?;
    Ok(tools)
}

/// Runs every setup step; `for_tests` also installs the test packages.
pub fn setup(root: &Path, for_tests: bool) -> Result<Toolchain> {
    ensure_nightly_rust_src()?;
    let toolchain = ensure_bpf_linker(root)?;
    ensure_bpffs()?;
    if for_tests {
        ensure_packages(TEST_PACKAGES)?;
        ensure_test_crates(root)?;
    }
    Ok(toolchain)
}

/// Installs the crates.io test tools into `target/tools/bin` unless they
/// are there.
fn ensure_test_crates(root: &Path) -> Result<()> {
    for (binary, krate, version) in TEST_CRATES {
        ensure_crate(root, binary, krate, version, false)?;
    }
    Ok(())
}

/// Installs cargo-fuzz into `target/tools/bin` unless it is there, and the
/// nightly toolchain it builds with; returns the directory to put first on
/// PATH.
pub fn ensure_cargo_fuzz(root: &Path) -> Result<PathBuf> {
    ensure_nightly_rust_src()?;
    let (binary, krate, version) = CARGO_FUZZ;
    // A debug build: cargo-fuzz only starts cargo and the fuzzer, and a
    // fresh clone (CI) builds it in about 20 s rather than a minute.
    ensure_crate(root, binary, krate, version, true)?;
    Ok(root.join(TEST_TOOLS_DIR).join("bin"))
}

/// `cargo install`s `krate` at `version` into `target/tools` unless
/// `binary` is there; unoptimized when `debug`.
fn ensure_crate(root: &Path, binary: &str, krate: &str, version: &str, debug: bool) -> Result<()> {
    let prefix = root.join(TEST_TOOLS_DIR);
    if prefix.join("bin").join(binary).is_file() {
        return Ok(());
    }
    println!("setup: installing {krate} {version} from crates.io");
    let mut command = Command::new("cargo");
    command.args(["install", krate, "--version", version, "--locked"]);
    if debug {
        command.arg("--debug");
    }
    run(command
        .arg("--root")
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", prefix.join("build"))
        .env_remove("RUSTUP_TOOLCHAIN"))
    .with_context(|| format!("`cargo install {krate} --version {version}` failed"))?;
    let _ = fs::remove_dir_all(prefix.join("build"));
    Ok(())
}

fn nightly_sysroot() -> Result<Option<PathBuf>> {
    let output = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    match output {
        Ok(output) if output.status.success() => Ok(Some(PathBuf::from(
            String::from_utf8(output.stdout)?.trim(),
        ))),
        Ok(_) => Ok(None),
        Err(err) => Err(err).context("running rustc; is rustup installed?"),
    }
}

fn ensure_nightly_rust_src() -> Result<()> {
    let Some(sysroot) = nightly_sysroot()? else {
        println!("setup: installing the nightly toolchain (minimal, with rust-src and clippy)");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))
        .context(
            "installing the nightly toolchain failed; the kernel program needs nightly \
             for -Z build-std",
        );
    };
    // rust-src for -Z build-std=core; clippy to lint the kernel program.
    let components = [
        ("rust-src", "lib/rustlib/src/rust/library/core"),
        ("clippy", "bin/cargo-clippy"),
    ];
    for (component, marker) in components {
        if sysroot.join(marker).exists() {
            continue;
        }
        println!("setup: adding {component} to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))
            .with_context(|| {
                format!("`rustup component add {component} --toolchain nightly` failed")
            })?;
    }
    Ok(())
}

/// Facts about the nightly that decide which bpf-linker fits it.
struct Nightly {
    sysroot: PathBuf,
    commit: String,
    llvm_major: String,
    /// The real libLLVM shared object in the sysroot (not the linker script).
    libllvm: PathBuf,
}

fn inspect_nightly() -> Result<Nightly> {
    let sysroot = nightly_sysroot()?.context("the nightly toolchain is not installed")?;
    let version = command_output(
        Command::new("rustc")
            .args(["+nightly", "-vV"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .with_context(|| format!("`rustc +nightly -vV` printed no {name}"))
    };
    let commit = field("commit-hash:")?;
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();
    // The nightly ships libLLVM.so.<ver>-rust-<ver>-nightly (the ELF, whose
    // soname is its file name) beside a small linker script; we want the ELF.
    let libllvm = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libLLVM.so.") && is_elf(path)
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* shared object in {}/lib; bpf-linker cannot be built \
                 against this nightly",
                sysroot.display()
            )
        })?;
    Ok(Nightly {
        sysroot,
        commit,
        llvm_major,
        libllvm,
    })
}

fn is_elf(path: &Path) -> bool {
    fs::read(path)
        .map(|bytes| bytes.starts_with(b"\x7fELF"))
        .unwrap_or(false)
}

/// Builds bpf-linker into `target/bpf-linker/<nightly commit>/` unless it is
/// already there.
fn ensure_bpf_linker(root: &Path) -> Result<Toolchain> {
    let nightly = inspect_nightly()?;
    let short_commit = &nightly.commit[..nightly.commit.len().min(12)];
    let prefix = root.join("target/bpf-linker").join(short_commit);
    let bin = prefix.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(Toolchain {
            bpf_linker_bin: bin,
        });
    }

    println!(
        "setup: building bpf-linker against the nightly's LLVM {} (about a minute)",
        nightly.llvm_major
    );
    // llvm-sys looks for $LLVM_PREFIX/lib/libLLVM.so; the binary then loads
    // the library by its soname, found through the same directory (rpath).
    let llvm_lib = prefix.join("llvm/lib");
    fs::create_dir_all(&llvm_lib)?;
    let soname = nightly.libllvm.file_name().context("libLLVM has no name")?;
    for link in [llvm_lib.join("libLLVM.so"), llvm_lib.join(soname)] {
        let _ = fs::remove_file(&link);
        symlink(&nightly.libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let feature = format!("llvm-{}", nightly.llvm_major);
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--no-default-features"])
        .args(["--features", &feature, "--root"])
        .arg(&prefix)
        .env("LLVM_PREFIX", prefix.join("llvm"))
        .env("CARGO_TARGET_DIR", prefix.join("build"))
        .env_remove("RUSTUP_TOOLCHAIN"))
    .with_context(|| {
        format!(
            "building bpf-linker with feature {feature} against {} failed; see the cargo \
             output above (nightly sysroot {})",
            nightly.libllvm.display(),
            nightly.sysroot.display()
        )
    })?;
    let _ = fs::remove_dir_all(prefix.join("build"));
    Ok(Toolchain {
        bpf_linker_bin: bin,
    })
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there.
fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        println!("setup: bpffs is not mounted at /sys/fs/bpf and we are not root; skipping");
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs at /sys/fs/bpf failed")
}

/// Installs with apt-get whichever of `packages` (command, package) is
/// missing.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs `packages` with apt-get, as root.
fn apt_install(missing: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {}; install them with `apt-get install {}` as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update failed")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {} failed", missing.join(" ")))
}

/// Whether `command` is on PATH (or in /usr/sbin, /sbin).
pub fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
                || ["/usr/sbin", "/sbin"]
                    .iter()
                    .any(|dir| Path::new(dir).join(command).is_file())
        })
        .unwrap_or(false)
}
