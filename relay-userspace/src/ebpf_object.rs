//! Where the XDP object comes from.
//!
//! `cargo xtask build` compiles the kernel program and builds the binaries
//! with `TURNX_EBPF_OBJECT` pointing at it, which embeds it (see `build.rs`).
//! A binary built without it (plain `cargo build` on stable) has no embedded
//! object and must be given one with `--ebpf-object`.

use std::{borrow::Cow, path::Path};

use thiserror::Error;

/// Why no XDP object could be had.
#[derive(Debug, Error)]
pub enum ObjectError {
    /// Neither embedded nor given.
    #[error(
        "this binary was built without the XDP object; build it with `cargo xtask build` \
         (which embeds the object) or pass --ebpf-object PATH"
    )]
    Missing,
    /// The given file could not be read.
    #[error("cannot read XDP object {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The object compiled into this binary, if any.
pub fn embedded() -> Option<&'static [u8]> {
    #[cfg(embedded_ebpf)]
    {
        Some(aya::include_bytes_aligned!(env!("TURNX_EBPF_OBJECT")))
    }
    #[cfg(not(embedded_ebpf))]
    {
        None
    }
}

/// The object at `path` if one is given, else the embedded one.
pub fn load(path: Option<&Path>) -> Result<Cow<'static, [u8]>, ObjectError> {
    match path {
        Some(path) => std::fs::read(path)
            .map(Cow::Owned)
            .map_err(|source| ObjectError::Read {
                path: path.display().to_string(),
                source,
            }),
        None => embedded().map(Cow::Borrowed).ok_or(ObjectError::Missing),
    }
}
