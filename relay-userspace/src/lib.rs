//! turnx: the userspace half of a TURN relay whose media plane runs in XDP.
//!
//! - [`config`]: the configuration file and its embedded defaults;
//! - [`ebpf_object`]: where the XDP object comes from (embedded or a file);
//! - [`xdp`]: loading, attaching and reading the XDP program;
//! - [`offload`]: mirroring channel bindings into the XDP maps;
//! - [`interfaces`]: which interfaces to attach to by default;
//! - [`turn`]: the TURN protocol core, without I/O;
//! - [`shell`]: the TURN server's sockets and timers on tokio;
//! - [`frame`]: Ethernet frame builders for tests and benchmarks.

pub mod client;
pub mod config;
pub mod ebpf_object;
pub mod frame;
pub mod interfaces;
pub mod offload;
pub mod shell;
pub mod turn;
pub mod xdp;
