//! Embeds the XDP object when `cargo xtask build` points us at it.
//!
//! `TURNX_EBPF_OBJECT` names the object built by `cargo xtask build`. When it
//! is set, the object is compiled into the binaries (`cfg(embedded_ebpf)`),
//! so turnxd is one self-contained file. When it is not, the crate still
//! builds and unit-tests on stable, and turnxd needs `--ebpf-object PATH`.

use std::{env, path::Path};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(embedded_ebpf)");
    println!("cargo::rerun-if-env-changed=TURNX_EBPF_OBJECT");
    let Ok(object) = env::var("TURNX_EBPF_OBJECT") else {
        return;
    };
    if !Path::new(&object).is_file() {
        panic!(
            "TURNX_EBPF_OBJECT={object} is not a file; build the XDP object with \
             `cargo xtask build` or unset TURNX_EBPF_OBJECT"
        );
    }
    println!("cargo::rerun-if-changed={object}");
    println!("cargo::rustc-cfg=embedded_ebpf");
    println!("cargo::rustc-env=TURNX_EBPF_OBJECT={object}");
}
