//! turnx: the userspace half of a TURN relay whose media plane runs in XDP.
//!
//! - [`addresses`]: which addresses are bound and which advertised;
//! - [`admin`]: the daemon's local admin socket, and turnxctl's client;
//! - [`config`]: the configuration file and its embedded defaults;
//! - [`ebpf_object`]: where the XDP object comes from (embedded or a file);
//! - [`xdp`]: loading, attaching and reading the XDP program;
//! - [`offload`]: mirroring channel bindings into the XDP maps;
//! - [`kernel_buckets`]: the kernel's bandwidth buckets and their holders;
//! - [`interfaces`]: which interfaces to attach to by default;
//! - [`metrics`]: what a Prometheus scrape reports;
//! - [`logging`]: log lines under a budget, written off the hot path;
//! - [`pod_interfaces`]: following pods' veths as they come and go;
//! - [`turn`]: the TURN protocol core, without I/O;
//! - [`shell`]: the TURN server's sockets and timers on tokio.
//!
//! What tests and benchmarks share (frame builders, a TURN client,
//! namespaces) is the `turnx-testkit` crate, not part of this library.

pub mod addresses;
pub mod admin;
pub mod certificate;
pub mod config;
pub mod credentials;
pub mod ebpf_object;
pub mod http;
pub mod interfaces;
pub mod kernel_buckets;
pub mod logging;
pub mod metrics;
pub mod offload;
pub mod pod_interfaces;
pub mod prometheus;
pub mod rtnetlink_events;
pub mod shell;
pub mod state_file;
pub mod turn;
pub mod xdp;
