//! The XDP program seen from userspace: load it, tell it the listen ports,
//! attach it to interfaces, read its counters, detach it.

mod attach;
mod bpffs;
pub mod counters;
pub mod driver_stats;
pub mod egress;
pub mod kernel_log;
pub mod netlink;
pub mod pins;
pub mod route_watch;
pub mod stack_routing;

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, MapInfo, PerCpuArray},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp,
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
};
use relay_common::{
    BindingCounters, ChannelKey, ChannelTarget, Counter, LISTEN_PORT_WORDS, MAP_BINDING_COUNTERS,
    MAP_CHANNELS, MAP_CLASS_COUNTERS, MAP_EGRESS, MAP_LISTEN_PORTS, MAP_PEERS, MAP_RELAYED_PORTS,
    MAX_LISTEN_PORTS, PROGRAM_NAME, PeerKey, PeerTarget, TC_PROGRAM_NAME, listen_port_bit,
    next_hop::{MAP_NEXT_HOPS, MAP_ROUTE_GENERATION},
};
use thiserror::Error;

pub use self::{
    attach::if_index, bpffs::ensure_bpffs, counters::ClassCounters, netlink::AttachMode,
};
use self::{
    pins::{LinkKind, PinDir},
    route_watch::{RouteGeneration, RouteWatches},
};
use crate::config::XdpMode;

/// What can go wrong between loading the XDP object and detaching it.
#[derive(Debug, Error)]
pub enum XdpError {
    /// The object could not be loaded (maps created, relocations applied).
    #[error(
        "cannot load the XDP object: {0}; turnxd needs root (or CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON) and a kernel with BTF"
    )]
    Load(#[from] aya::EbpfError),
    /// The object lacks something this build of turnxd expects.
    #[error(
        "the XDP object has no {0}; it does not match this turnxd, rebuild both with \
         `cargo xtask build`"
    )]
    Mismatch(String),
    /// The verifier or the kernel refused a program or an operation on it.
    #[error("the kernel refused a turnx kernel program or an operation on it: {0}")]
    Program(#[from] ProgramError),
    /// A map operation failed.
    #[error("XDP map operation failed: {0}")]
    Map(#[from] MapError),
    /// More distinct listen ports than the kernel map holds.
    #[error("{0} listen ports configured; the XDP program supports at most {MAX_LISTEN_PORTS}")]
    TooManyPorts(usize),
    /// The pin directory could not be created (is bpffs mounted?).
    #[error(
        "cannot create the map pin directory {path}: {source}; is bpffs mounted at /sys/fs/bpf?"
    )]
    PinDirectory {
        /// The directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process uses the pin directory.
    #[error(
        "another turnxd uses the map pin directory {0}; give each instance its own \
         [xdp] pin_dir"
    )]
    PinDirectoryInUse(String),
    /// No such interface in this network namespace.
    #[error("no network interface named {0:?} in this network namespace")]
    UnknownInterface(String),
    /// Asking the kernel about an interface failed.
    #[error("cannot query the XDP programs attached to {interface}: {source}")]
    QueryInterface {
        /// The interface.
        interface: String,
        /// What netlink said.
        source: std::io::Error,
    },
    /// The kernel attached the program without a bpf link (kernels before
    /// 5.9); such an attachment would outlive turnxd.
    #[error(
        "the kernel attached XDP to {0} without a bpf link, so it would stay attached if \
         turnxd died; turnxd needs Linux 5.9 or newer"
    )]
    NotALink(String),
    /// Another XDP program is attached; turnxd never replaces it.
    #[error(
        "interface {interface} already runs XDP {owner}; turnxd does not replace programs it \
         did not attach: detach that program or leave {interface} out of the interface list"
    )]
    Occupied {
        /// The interface.
        interface: String,
        /// Which program, by name, id and mode.
        owner: String,
    },
    /// The kernel could not tell which interfaces deliver XDP frames.
    #[error(
        "cannot read the interfaces' XDP capabilities over netlink: {0}; the kernel relay \
         stays off until it can (the netdev family needs Linux 6.3 or newer)"
    )]
    Netlink(std::io::Error),
    /// A sysctl that stack routing needs could not be read or written.
    #[error(
        "cannot set {path} for stack routing: {source}; run turnxd with CAP_NET_ADMIN and \
         /proc/sys writable, or turn [xdp] route_in_stack off"
    )]
    Sysctl {
        /// The sysctl's file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The kernel refused the tc program.
    #[error("cannot attach the tc engine to {interface}'s ingress: {reason}")]
    AttachTc {
        /// The interface.
        interface: String,
        /// What the kernel said.
        reason: String,
    },
    /// The kernel refused to attach for another reason.
    #[error("cannot attach XDP in {mode} mode to {interface}: {reason}")]
    Attach {
        /// The interface.
        interface: String,
        /// The mode tried.
        mode: AttachMode,
        /// What the kernel said, with the errno.
        reason: String,
    },
}

/// How many XDP bpf links point at program `program_id`.
fn xdp_links_of(program_id: u32) -> usize {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| {
            link.program_id() == program_id
                && matches!(link.link_type(), Ok(aya::programs::links::LinkType::Xdp))
        })
        .count()
}

/// A channel binding as the kernel relays it, in both directions; its map
/// entries are built in `relay-common`, beside their types.
pub type KernelBinding = relay_common::binding::Binding;

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    /// The interface name.
    pub interface: String,
    /// The mode it runs in there.
    pub mode: AttachMode,
    link: XdpLinkId,
    /// Its pin, if pinned.
    pin: Option<std::path::PathBuf>,
}

/// The pin kind of an XDP link in `mode`.
fn xdp_link_kind(mode: AttachMode) -> LinkKind {
    match mode {
        AttachMode::Generic => LinkKind::XdpGeneric,
        _ => LinkKind::XdpNative,
    }
}

/// Pins `link` at `path` and gives it back, to be handed to its program
/// again (which then owns it as before).
fn pin_link<L>(link: L, path: &std::path::Path) -> Result<L, String>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
    L: TryFrom<FdLink>,
    <L as TryFrom<FdLink>>::Error: std::fmt::Display,
{
    let fd = FdLink::try_from(link).map_err(|err| err.to_string())?;
    let pinned = fd.pin(path).map_err(|err| err.to_string())?;
    L::try_from(FdLink::from(pinned)).map_err(|err| err.to_string())
}

/// The link pinned at `path`, as a link of its engine (its pin stays).
fn adopt_link<L>(path: &std::path::Path) -> Result<L, String>
where
    L: TryFrom<FdLink>,
    <L as TryFrom<FdLink>>::Error: std::fmt::Display,
{
    let pinned = PinnedLink::from_pin(path).map_err(|err| err.to_string())?;
    L::try_from(FdLink::from(pinned)).map_err(|err| err.to_string())
}

/// The result of running the program once (or `repeat` times) on a frame
/// with BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct FrameRun {
    /// The verdict returned: an XDP action (`XDP_PASS` is 2), or a tc one.
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Mean time per run, as measured by the kernel.
    pub duration: Duration,
}

/// How to load the program.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Hand frames relayed in the kernel to the stack instead of
    /// redirecting them.
    pub route_in_stack: bool,
    /// Pin the maps in `<pin_dir>/v<layout version>/` (on bpffs), reopening
    /// them if they are there. `None`: no pinning.
    pub pin_dir: Option<std::path::PathBuf>,
    /// Entries of each binding map; `None`: the object's default.
    pub max_bindings: Option<u32>,
    /// Treat channel numbers up to 0x7FFF (RFC 5766) as channels, as the
    /// server's `legacy_channel_numbers` does.
    pub legacy_channel_numbers: bool,
}

/// The loaded XDP program, the tc program beside it, and their maps.
pub struct XdpRelay {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// Interfaces whose tc ingress runs the tc program.
    tc_attachments: Vec<TcAttachment>,
    /// The locked pin directory, if the maps and links are pinned.
    pins: Option<PinDir>,
    /// With stack routing: the interfaces set to accept local sources.
    accept_local: Option<stack_routing::AcceptLocal>,
    /// The kernel's route generation, which invalidates its cached next
    /// hops, and the threads that advance it; `None` with stack routing,
    /// which caches none.
    routing: Option<RouteWatches>,
    /// Installed bindings per relayed port: a port's bit in
    /// `RELAYED_PORTS` is set while it has one.
    relayed_ports: std::collections::HashMap<u16, u32>,
    /// The binding entries this process installed: a pinned map may hold
    /// others, from a previous daemon, until [`Self::sweep_unowned`].
    owned: std::collections::HashSet<(ChannelKey, PeerKey)>,
}

/// The tc engine on one interface.
struct TcAttachment {
    interface: String,
    link: SchedClassifierLinkId,
    /// Its pin, if pinned.
    pin: Option<std::path::PathBuf>,
}

/// The aya-log level the kernel program logs at, from a tracing level name.
fn kernel_log_level(level: &str) -> u8 {
    let level = match level {
        "error" => aya_log::Level::Error,
        "warn" => aya_log::Level::Warn,
        "info" => aya_log::Level::Info,
        "debug" => aya_log::Level::Debug,
        _ => aya_log::Level::Trace,
    };
    level as u8
}

impl XdpRelay {
    /// Loads the object into the kernel (maps and the verified program), with
    /// the kernel's own logging filtered at `log_level` (a `[log] level`
    /// value), and nothing attached yet.
    pub fn load(object: &[u8], log_level: &str) -> Result<Self, XdpError> {
        Self::load_with(object, log_level, &LoadOptions::default())
    }

    /// As [`Self::load`], with options. Pinned maps that already exist are
    /// reopened: the counters carry over, and bindings left by a previous
    /// run are removed, since their allocations are unknown to this one.
    pub fn load_with(
        object: &[u8],
        log_level: &str,
        options: &LoadOptions,
    ) -> Result<Self, XdpError> {
        let level = kernel_log_level(log_level);
        let route_in_stack = u8::from(options.route_in_stack);
        let channel_limit = relay_common::channel_max(options.legacy_channel_numbers);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(aya_log::LEVEL, &level, true)
            .override_global("ROUTE_IN_STACK", &route_in_stack, true)
            .override_global("CHANNEL_LIMIT", &channel_limit, true);
        if let Some(size) = options.max_bindings {
            loader
                .map_max_entries(MAP_CHANNELS, size)
                .map_max_entries(MAP_PEERS, size)
                .map_max_entries(MAP_BINDING_COUNTERS, size)
                .map_max_entries(MAP_NEXT_HOPS, size * 2)
                .map_max_entries(
                    relay_common::bandwidth::MAP_BUCKETS,
                    size * relay_common::bandwidth::BUCKETS_PER_BINDING + 1,
                );
        }
        let pins = options.pin_dir.as_deref().map(PinDir::open).transpose()?;
        if let Some(pins) = &pins {
            let shapes = pins::pinned_shapes(options.max_bindings);
            let adopted = pins.refuse_stale(&shapes);
            for shape in shapes {
                loader.map_pin_path(shape.name, pins.map(shape.name));
            }
            if adopted > 0 {
                tracing::info!(
                    "adopting {adopted} pinned maps of {}: the kernel relays on from them",
                    pins.maps().display()
                );
            }
        }
        let mut ebpf = loader.load(object)?;
        program_mut(&mut ebpf)?.load()?;
        tc_program_mut(&mut ebpf)?.load()?;
        let routing = if options.route_in_stack {
            None
        } else {
            let map = ebpf
                .take_map(MAP_ROUTE_GENERATION)
                .ok_or_else(|| XdpError::Mismatch(format!("map {MAP_ROUTE_GENERATION}")))?;
            Some(RouteWatches::new(RouteGeneration::new(Array::try_from(
                map,
            )?)))
        };
        Ok(XdpRelay {
            ebpf,
            attachments: Vec::new(),
            tc_attachments: Vec::new(),
            pins,
            accept_local: options
                .route_in_stack
                .then(stack_routing::AcceptLocal::default),
            routing,
            relayed_ports: std::collections::HashMap::new(),
            owned: std::collections::HashSet::new(),
        })
    }

    /// Removes the binding entries this process did not install: those a
    /// previous daemon left in the pinned maps that no handed-over
    /// allocation claimed again. The relayed-port bits are set to what is
    /// installed. Returns how many bindings went.
    pub fn sweep_unowned(&mut self) -> Result<usize, XdpError> {
        let owned_channels: std::collections::HashSet<ChannelKey> =
            self.owned.iter().map(|(channel, _)| *channel).collect();
        let mut channels = self.hash_map::<ChannelKey, ChannelTarget>(MAP_CHANNELS)?;
        let stale: Vec<ChannelKey> = channels
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !owned_channels.contains(key))
            .collect();
        for key in &stale {
            channels.remove(key)?;
        }
        let owned_peers: std::collections::HashSet<PeerKey> =
            self.owned.iter().map(|(_, peer)| *peer).collect();
        let mut peers = self.hash_map::<PeerKey, PeerTarget>(MAP_PEERS)?;
        let stale_peers: Vec<PeerKey> = peers
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !owned_peers.contains(key))
            .collect();
        for key in &stale_peers {
            peers.remove(key)?;
        }
        let ports: Vec<u16> = self.relayed_ports.keys().copied().collect();
        self.write_port_bits(MAP_RELAYED_PORTS, &ports)?;
        Ok(stale.len().max(stale_peers.len()))
    }

    /// Removes the pinned links that no interface of this process took
    /// over (interfaces it no longer relays on), which detaches their
    /// programs, and the maps of other layouts.
    pub fn release_unclaimed_pins(&mut self) {
        let Some(pins) = &self.pins else {
            return;
        };
        let claimed: Vec<&std::path::Path> = self
            .attachments
            .iter()
            .filter_map(|attachment| attachment.pin.as_deref())
            .chain(
                self.tc_attachments
                    .iter()
                    .filter_map(|tc| tc.pin.as_deref()),
            )
            .collect();
        for path in pins.pinned_links() {
            if !claimed.contains(&path.as_path()) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!("detached the unclaimed pinned link {}", path.display())
                    }
                    Err(err) => {
                        tracing::warn!("removing the pinned link {}: {err}", path.display())
                    }
                }
            }
        }
        pins.remove_other_layouts();
    }

    /// Leaves everything in the kernel as it is for the daemon after this
    /// one: the pinned links keep the programs attached, the pinned maps
    /// keep their bindings, and the sysctls stay set. Nothing is detached
    /// when this is dropped.
    pub fn leave_for_handover(&mut self) {
        self.attachments.clear();
        self.tc_attachments.clear();
        if let Some(accept_local) = self.accept_local.take() {
            // Its settings stay for the programs that stay.
            std::mem::forget(accept_local);
        }
    }

    /// Detaches everything and removes every pin, maps and links: a stop
    /// that is not a handover. Returns what failed, as
    /// [`Self::detach_all`].
    pub fn detach_and_unpin(&mut self) -> Vec<(String, XdpError)> {
        let mut failures = self.detach_all();
        if let Some(pins) = &self.pins
            && let Err(err) = pins.remove_all()
        {
            failures.push((
                String::new(),
                XdpError::PinDirectory {
                    path: pins.maps().display().to_string(),
                    source: err,
                },
            ));
        }
        failures
    }

    /// Rewrites the `EGRESS` map from what the kernel reports about the
    /// current namespace's interfaces (see [`egress`]); returns the
    /// interfaces relayed frames may leave by, with their bits.
    /// When the kernel cannot be asked, the map is emptied: relayed frames
    /// then all go to userspace. Routing changes in this namespace are
    /// followed from now on (as after [`Self::attach`]).
    pub fn refresh_egress(&mut self) -> Result<Vec<(u32, u8)>, XdpError> {
        self.follow_routing_here()?;
        let interfaces = match egress::interfaces() {
            Ok(interfaces) => interfaces,
            Err(err) => {
                let mut map = self.hash_map::<u32, u8>(MAP_EGRESS)?;
                let known: Vec<u32> = map.keys().filter_map(Result::ok).collect();
                for ifindex in known {
                    map.remove(&ifindex)?;
                }
                self.advance_route_generation()?;
                return Err(XdpError::Netlink(err));
            }
        };
        let allowed: Vec<(u32, u8)> = interfaces
            .into_iter()
            .map(|(ifindex, interface)| (ifindex, interface.egress_bits()))
            .filter(|(_, bits)| *bits != 0)
            .collect();
        let mut map = self.hash_map::<u32, u8>(MAP_EGRESS)?;
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !allowed.iter().any(|(allowed, _)| allowed == ifindex))
            .collect();
        let mut changed = !stale.is_empty();
        // Remove first: a frame must never find an interface that stopped
        // delivering.
        for ifindex in stale {
            map.remove(&ifindex)?;
        }
        for (ifindex, bits) in &allowed {
            if map.get(ifindex, 0).ok() != Some(*bits) {
                changed = true;
                map.insert(ifindex, bits, 0)?;
            }
        }
        // The cached next hops carry their interface's bits.
        if changed {
            self.advance_route_generation()?;
        }
        Ok(allowed)
    }

    /// Counts a routing change: the kernel programs look every binding's
    /// next hop up again.
    pub fn advance_route_generation(&mut self) -> Result<(), XdpError> {
        match &mut self.routing {
            Some(routing) => routing.advance(),
            None => Ok(()),
        }
    }

    /// The route generation the kernel's cached next hops must carry: it
    /// grows with every routing change seen; 0 when nothing is cached.
    pub fn route_generation(&self) -> u64 {
        self.routing.as_ref().map_or(0, RouteWatches::value)
    }

    /// Follows routing changes in the calling thread's network namespace
    /// (once per namespace), where the programs are about to relay.
    fn follow_routing_here(&mut self) -> Result<(), XdpError> {
        match &mut self.routing {
            Some(routing) => routing.follow_here(),
            None => Ok(()),
        }
    }

    /// Takes the reader of the program's aya-log records; `None` the second
    /// time.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Replaces the set of UDP ports the program treats as TURN traffic.
    /// The new ports are set before the old ones are cleared, so a port in
    /// both sets never drops out.
    pub fn set_listen_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        if ports.len() > MAX_LISTEN_PORTS as usize {
            return Err(XdpError::TooManyPorts(ports.len()));
        }
        self.write_port_bits(MAP_LISTEN_PORTS, ports)
    }

    /// Sets port bitmap `name` to exactly `ports`: the new bits first, then
    /// the old ones cleared, so a port in both never drops out.
    fn write_port_bits(&mut self, name: &str, ports: &[u16]) -> Result<(), XdpError> {
        let mut wanted = vec![0u64; LISTEN_PORT_WORDS as usize];
        for port in ports {
            let (word, bit) = listen_port_bit(*port);
            wanted[word as usize] |= bit;
        }
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| XdpError::Mismatch(format!("map {name}")))?;
        let mut map: Array<_, u64> = Array::try_from(map)?;
        let mut now = Vec::with_capacity(wanted.len());
        for word in 0..LISTEN_PORT_WORDS {
            now.push(map.get(&word, 0)?);
        }
        for (word, (now, wanted)) in (0..).zip(now.iter().zip(&wanted)) {
            if now | wanted != *now {
                map.set(word, now | wanted, 0)?;
            }
        }
        for (word, (now, wanted)) in (0..).zip(now.iter().zip(&wanted)) {
            if now | wanted != *wanted {
                map.set(word, *wanted, 0)?;
            }
        }
        Ok(())
    }

    /// Installs a binding in both directions.
    pub fn install(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
        let (channel_key, channel_target) = binding.channel_entry();
        let (peer_key, peer_target) = binding.peer_entry();
        let port = binding.relayed.port();
        // The port's bit before the binding: a peer's datagram with a
        // binding is never taken for one to another port.
        if !self.relayed_ports.contains_key(&port) {
            self.set_relayed_port(port, true)?;
        }
        let installed = self.insert_binding(channel_key, channel_target, peer_key, peer_target);
        match installed {
            Ok(()) => {
                *self.relayed_ports.entry(port).or_insert(0) += 1;
                self.owned.insert((channel_key, peer_key));
            }
            Err(_) if !self.relayed_ports.contains_key(&port) => {
                let _ = self.set_relayed_port(port, false);
            }
            Err(_) => {}
        }
        installed
    }

    /// The counter slot of the entry a previous daemon left for
    /// `binding`'s channel and peer, if this process did not install it
    /// (see [`Self::sweep_unowned`]).
    pub fn adopted_slot(&self, binding: &KernelBinding) -> Option<u32> {
        let (channel_key, _) = binding.channel_entry();
        let (peer_key, _) = binding.peer_entry();
        if self.owned.contains(&(channel_key, peer_key)) {
            return None;
        }
        let map = self.ebpf.map(MAP_CHANNELS)?;
        let channels: HashMap<_, ChannelKey, ChannelTarget> = HashMap::try_from(map).ok()?;
        let target = channels.get(&channel_key, 0).ok()?;
        // Of the same binding: a channel now bound elsewhere starts anew.
        let map_ip = relay_common::binding::map_ip;
        let same = target.peer_ip == map_ip(binding.peer.ip())
            && target.peer_port == binding.peer.port().to_be_bytes()
            && target.relayed_ip == map_ip(binding.relayed.ip())
            && target.relayed_port == binding.relayed.port().to_be_bytes();
        same.then_some(target.slot)
    }

    /// Rewrites both entries of an installed binding, for a new expiry.
    pub fn update(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
        let (channel_key, channel_target) = binding.channel_entry();
        let (peer_key, peer_target) = binding.peer_entry();
        self.insert_binding(channel_key, channel_target, peer_key, peer_target)
    }

    /// Inserts both entries of a binding, or neither.
    fn insert_binding(
        &mut self,
        channel_key: ChannelKey,
        channel_target: ChannelTarget,
        peer_key: PeerKey,
        peer_target: PeerTarget,
    ) -> Result<(), XdpError> {
        self.hash_map::<ChannelKey, ChannelTarget>(MAP_CHANNELS)?
            .insert(channel_key, channel_target, 0)?;
        if let Err(err) =
            self.hash_map::<PeerKey, PeerTarget>(MAP_PEERS)?
                .insert(peer_key, peer_target, 0)
        {
            // Never half a binding.
            let _ = self
                .hash_map::<ChannelKey, ChannelTarget>(MAP_CHANNELS)?
                .remove(&channel_key);
            return Err(err.into());
        }
        Ok(())
    }

    /// Sets or clears `port`'s bit in `RELAYED_PORTS`.
    fn set_relayed_port(&mut self, port: u16, set: bool) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(MAP_RELAYED_PORTS)
            .ok_or_else(|| XdpError::Mismatch(format!("map {MAP_RELAYED_PORTS}")))?;
        let mut map: Array<_, u64> = Array::try_from(map)?;
        let (word, bit) = listen_port_bit(port);
        let now = map.get(&word, 0)?;
        map.set(word, if set { now | bit } else { now & !bit }, 0)?;
        Ok(())
    }

    /// Sets entry `index` of the bandwidth buckets.
    pub fn set_bucket(
        &mut self,
        index: u32,
        bucket: relay_common::bandwidth::Bucket,
    ) -> Result<(), XdpError> {
        let name = relay_common::bandwidth::MAP_BUCKETS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| XdpError::Mismatch(format!("map {name}")))?;
        aya::maps::Array::<_, relay_common::bandwidth::Bucket>::try_from(map)?
            .set(index, bucket, 0)
            .map_err(Into::into)
    }

    /// Removes a binding from both directions.
    pub fn remove(&mut self, binding: &KernelBinding) -> Result<(), XdpError> {
        let (channel_key, _) = binding.channel_entry();
        let (peer_key, _) = binding.peer_entry();
        let first = self
            .hash_map::<ChannelKey, ChannelTarget>(MAP_CHANNELS)?
            .remove(&channel_key);
        let second = self
            .hash_map::<PeerKey, PeerTarget>(MAP_PEERS)?
            .remove(&peer_key);
        self.owned.remove(&(channel_key, peer_key));
        let port = binding.relayed.port();
        if let Some(count) = self.relayed_ports.get_mut(&port) {
            *count -= 1;
            if *count == 0 {
                self.relayed_ports.remove(&port);
                self.set_relayed_port(port, false)?;
            }
        }
        first.and(second).map_err(Into::into)
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>, XdpError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| XdpError::Mismatch(format!("map {name}")))?;
        Ok(HashMap::try_from(map)?)
    }

    /// Attaches the tc program to `interface`'s ingress, before any other
    /// tc program there (tcx, Linux 6.6+; clsact before), so that it takes
    /// the packets of its bindings that XDP left and hands every other one
    /// on to the programs after it (Cilium's) unchanged. Routing changes in
    /// this namespace are followed from now on (as after [`Self::attach`]).
    pub fn attach_tc(&mut self, interface: &str) -> Result<(), XdpError> {
        self.follow_routing_here()?;
        if let Some(accept_local) = &mut self.accept_local {
            accept_local.enable(interface)?;
        }
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|version| version >= aya::util::KernelVersion::new(6, 6, 0));
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        } else {
            // The clsact qdisc may be there already (Cilium's): fine.
            let _ = aya::programs::tc::qdisc_add_clsact(interface);
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let failed = |err: &dyn std::fmt::Display| XdpError::AttachTc {
            interface: interface.to_owned(),
            reason: err.to_string(),
        };
        let pin = self
            .pins
            .as_ref()
            .filter(|_| tcx)
            .map(|pins| pins.link(LinkKind::Tc, interface));
        let program = tc_program_mut(&mut self.ebpf)?;
        // A previous daemon's link: its program is replaced in place.
        if let Some(path) = pin.as_deref().filter(|path| path.exists()) {
            match adopt_link::<SchedClassifierLink>(path)
                .and_then(|link| program.attach_to_link(link).map_err(|err| err.to_string()))
            {
                Ok(link) => {
                    self.tc_attachments.push(TcAttachment {
                        interface: interface.to_owned(),
                        link,
                        pin,
                    });
                    return Ok(());
                }
                Err(err) => {
                    tracing::warn!(
                        "cannot take over the pinned tc link {}: {err}",
                        path.display()
                    );
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let link = program
            .attach_with_options(interface, TcAttachType::Ingress, options)
            .map_err(|err| failed(&err))?;
        let link = match &pin {
            Some(path) => pin_link(program.take_link(link).map_err(|err| failed(&err))?, path)
                .and_then(|link| program.attach_to_link(link).map_err(|err| err.to_string()))
                .map_err(|err| failed(&err))?,
            None => link,
        };
        self.tc_attachments.push(TcAttachment {
            interface: interface.to_owned(),
            link,
            pin,
        });
        Ok(())
    }

    /// Forgets the tc engine's link on `interface`, which is gone (or is
    /// to be left): the link is detached if the kernel still has it.
    pub fn forget_tc(&mut self, interface: &str) {
        let Some(index) = self
            .tc_attachments
            .iter()
            .position(|tc| tc.interface == interface)
        else {
            return;
        };
        let tc = self.tc_attachments.swap_remove(index);
        if let Some(accept_local) = &mut self.accept_local {
            accept_local.forget(interface);
        }
        if let Some(pin) = &tc.pin {
            let _ = std::fs::remove_file(pin);
        }
        if let Ok(program) = tc_program_mut(&mut self.ebpf) {
            // A vanished interface took its attachment with it.
            let _ = program.detach(tc.link);
        }
    }

    /// Attaches to `interface`; see [`XdpMode`] for the fallback rules.
    /// Refuses with [`XdpError::Occupied`] when another program is there.
    ///
    /// The attachment is a bpf link, which the kernel removes when turnxd
    /// exits, however it exits. aya falls back to a netlink attachment on
    /// kernels without XDP links; that would outlive a crash, so it is
    /// undone and refused.
    ///
    /// From now on the relay follows routing changes in the calling
    /// thread's network namespace (`route_watch`): the programs cache each
    /// binding's next hop for as long as nothing changes.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, XdpError> {
        self.follow_routing_here()?;
        if let Some(accept_local) = &mut self.accept_local {
            accept_local.enable(interface)?;
        }
        if let Some(mode) = self.adopt_xdp(interface, mode) {
            return Ok(mode);
        }
        let program = program_mut(&mut self.ebpf)?;
        let (link, mode) = attach::attach(program, interface, mode)?;
        let program_id = program.info()?.id();
        if xdp_links_of(program_id) <= self.attachments.len() {
            program.detach(link)?;
            return Err(XdpError::NotALink(interface.to_owned()));
        }
        let pin = self
            .pins
            .as_ref()
            .map(|pins| pins.link(xdp_link_kind(mode), interface));
        let link = match &pin {
            Some(path) => {
                let failed = |reason: String| XdpError::Attach {
                    interface: interface.to_owned(),
                    mode,
                    reason: format!("pinning its link at {}: {reason}", path.display()),
                };
                let taken = program.take_link(link)?;
                pin_link(taken, path)
                    .and_then(|link| program.attach_to_link(link).map_err(|err| err.to_string()))
                    .map_err(failed)?
            }
            None => link,
        };
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            mode,
            link,
            pin,
        });
        Ok(mode)
    }

    /// Fails as [`Self::attach`] would on an interface that is missing or
    /// holds an XDP program this relay cannot take over (none of its
    /// pinned links): for a check before serving, while attaching waits
    /// until the handed-over bindings are back.
    pub fn check_attachable(&self, interface: &str) -> Result<(), XdpError> {
        let ifindex = if_index(interface)?;
        let pinned = self.pins.as_ref().is_some_and(|pins| {
            [LinkKind::XdpNative, LinkKind::XdpGeneric]
                .iter()
                .any(|kind| pins.link(*kind, interface).exists())
        });
        if pinned {
            return Ok(());
        }
        attach::refuse_if_occupied(interface, ifindex)
    }

    /// Takes over a previous daemon's pinned XDP link on `interface`, if
    /// there is one of a mode `mode` allows: this program replaces the
    /// old one in it, atomically. One of another mode is removed (which
    /// detaches it) so that a new attachment can be made.
    fn adopt_xdp(&mut self, interface: &str, mode: XdpMode) -> Option<AttachMode> {
        let pins = self.pins.as_ref()?;
        let program = program_mut(&mut self.ebpf).ok()?;
        for (kind, pinned_mode) in [
            (LinkKind::XdpNative, AttachMode::Native),
            (LinkKind::XdpGeneric, AttachMode::Generic),
        ] {
            let path = pins.link(kind, interface);
            if !path.exists() {
                continue;
            }
            let allowed = match mode {
                XdpMode::Auto => true,
                XdpMode::Native => pinned_mode == AttachMode::Native,
                XdpMode::Generic => pinned_mode == AttachMode::Generic,
            };
            let adopted = if allowed {
                adopt_link::<XdpLink>(&path)
                    .and_then(|link| program.attach_to_link(link).map_err(|err| err.to_string()))
            } else {
                Err(format!(
                    "it runs in {pinned_mode} mode, and {mode:?} is configured"
                ))
            };
            match adopted {
                Ok(link) => {
                    self.attachments.push(Attachment {
                        interface: interface.to_owned(),
                        mode: pinned_mode,
                        link,
                        pin: Some(path),
                    });
                    return Some(pinned_mode);
                }
                Err(err) => {
                    tracing::warn!(
                        "not taking over the pinned XDP link {}: {err}; attaching anew",
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        None
    }

    /// The interfaces whose tc ingress runs the tc program.
    pub fn tc_interfaces(&self) -> impl Iterator<Item = &str> {
        self.tc_attachments.iter().map(|tc| tc.interface.as_str())
    }

    /// The interfaces the program is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Detaches from every interface and puts back the sysctls stack
    /// routing changed, returning those where the kernel reported an error
    /// (the link is closed when `self` drops either way).
    pub fn detach_all(&mut self) -> Vec<(String, XdpError)> {
        let mut failures = Vec::new();
        if let Some(accept_local) = &mut self.accept_local {
            failures.extend(accept_local.restore());
        }
        let tc_attachments = std::mem::take(&mut self.tc_attachments);
        match tc_program_mut(&mut self.ebpf) {
            Ok(program) => {
                for tc in tc_attachments {
                    // The pin would keep it attached.
                    if let Some(pin) = &tc.pin {
                        let _ = std::fs::remove_file(pin);
                    }
                    if let Err(err) = program.detach(tc.link) {
                        failures.push((tc.interface, err.into()));
                    }
                }
            }
            Err(err) => failures.push((String::new(), err)),
        }
        let attachments = std::mem::take(&mut self.attachments);
        match program_mut(&mut self.ebpf) {
            Ok(program) => {
                for attachment in attachments {
                    if let Some(pin) = &attachment.pin {
                        let _ = std::fs::remove_file(pin);
                    }
                    if let Err(err) = program.detach(attachment.link) {
                        failures.push((attachment.interface, err.into()));
                    }
                }
            }
            Err(err) => failures.push((String::new(), err)),
        }
        failures
    }

    /// What the kernel relayed for the binding in `slot`, summed over CPUs.
    pub fn binding_counters(&self, slot: u32) -> Result<BindingCounters, XdpError> {
        let map = self
            .ebpf
            .map(MAP_BINDING_COUNTERS)
            .ok_or_else(|| XdpError::Mismatch(format!("map {MAP_BINDING_COUNTERS}")))?;
        let map: PerCpuArray<_, BindingCounters> = PerCpuArray::try_from(map)?;
        let mut sum = BindingCounters::default();
        for counters in map.get(&slot, 0)?.iter() {
            sum.to_peer_packets += counters.to_peer_packets;
            sum.to_peer_bytes += counters.to_peer_bytes;
            sum.to_client_packets += counters.to_client_packets;
            sum.to_client_bytes += counters.to_client_bytes;
        }
        Ok(sum)
    }

    /// Zeroes the counters of `slot` on every CPU, for a new binding.
    pub fn reset_binding_counters(&mut self, slot: u32) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(MAP_BINDING_COUNTERS)
            .ok_or_else(|| XdpError::Mismatch(format!("map {MAP_BINDING_COUNTERS}")))?;
        let mut map: PerCpuArray<_, BindingCounters> = PerCpuArray::try_from(map)?;
        let cpus =
            aya::util::nr_cpus().map_err(|(_, err)| XdpError::Map(MapError::IoError(err)))?;
        let zeroes = aya::maps::PerCpuValues::try_from(vec![BindingCounters::default(); cpus])
            .map_err(|err| XdpError::Map(MapError::IoError(err)))?;
        map.set(slot, zeroes, 0)?;
        Ok(())
    }

    /// Reads the packet counters, summed over CPUs.
    pub fn counters(&self) -> Result<ClassCounters, XdpError> {
        let map = self
            .ebpf
            .map(MAP_CLASS_COUNTERS)
            .ok_or_else(|| XdpError::Mismatch(format!("map {MAP_CLASS_COUNTERS}")))?;
        let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
        Ok(ClassCounters::read(&map)?)
    }

    /// Runs the program on `frame` with BPF_PROG_TEST_RUN, `repeat` times.
    /// The counters count every run.
    pub fn run_on_frame(&self, frame: &[u8], repeat: u32) -> Result<FrameRun, XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| XdpError::Mismatch(format!("program {PROGRAM_NAME}")))?
            .try_into()?;
        test_run(program, frame, repeat)
    }

    /// Runs the tc program once on an Ethernet frame with
    /// BPF_PROG_TEST_RUN, as it would run at an interface's ingress: for
    /// tests. `action` is its tc verdict (-1, TCX_NEXT, as `u32::MAX`).
    pub fn run_tc_on_frame(&self, frame: &[u8]) -> Result<FrameRun, XdpError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_PROGRAM_NAME)
            .ok_or_else(|| XdpError::Mismatch(format!("program {TC_PROGRAM_NAME}")))?
            .try_into()?;
        test_run(program, frame, 1)
    }
}

impl Drop for XdpRelay {
    fn drop(&mut self) {
        for (interface, err) in self.detach_all() {
            tracing::warn!("detaching XDP from {interface} failed: {err}");
        }
    }
}

/// Runs `program` on `frame` `repeat` times with BPF_PROG_TEST_RUN.
fn test_run<P>(program: &P, frame: &[u8], repeat: u32) -> Result<FrameRun, XdpError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for the program to grow the frame (by a ChannelData header).
    let mut output = vec![0u8; frame.len() + 256];
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut output),
        repeat,
        ..TestRunOptions::default()
    })?;
    output.truncate(result.data_size_out as usize);
    Ok(FrameRun {
        action: result.return_value,
        output,
        duration: result.duration,
    })
}

fn tc_program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, XdpError> {
    Ok(ebpf
        .program_mut(TC_PROGRAM_NAME)
        .ok_or_else(|| XdpError::Mismatch(format!("program {TC_PROGRAM_NAME}")))?
        .try_into()?)
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    Ok(ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| XdpError::Mismatch(format!("program {PROGRAM_NAME}")))?
        .try_into()?)
}

/// Our program's counters among the XDP programs `attached` to an
/// interface (as [`netlink::attached_programs`] lists them), read through
/// the kernel (no pinning needed), for operators and tests. `Ok(None)` when
/// none of them is ours.
pub fn attached_counters(
    attached: &[netlink::AttachedXdp],
) -> Result<Option<(u32, ClassCounters)>, XdpError> {
    for program in attached {
        let Some(info) = attach::program_info(program.program_id) else {
            continue;
        };
        if !kernel_name_is(info.name_as_str(), PROGRAM_NAME) {
            continue;
        }
        if let Some(counters) = program_counters(&info)? {
            return Ok(Some((program.program_id, counters)));
        }
    }
    Ok(None)
}

/// As [`attached_counters`], for our tc program at `interface`'s tcx
/// ingress, where the tc engine runs alone (no XDP program of ours there).
pub fn tc_counters(interface: &str) -> Result<Option<(u32, ClassCounters)>, XdpError> {
    // Kernels without tcx (or an interface without it) have nothing to say.
    let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress) else {
        return Ok(None);
    };
    for info in programs {
        if !kernel_name_is(info.name_as_str(), TC_PROGRAM_NAME) {
            continue;
        }
        if let Some(counters) = program_counters(&info)? {
            return Ok(Some((info.id(), counters)));
        }
    }
    Ok(None)
}

/// The class counters in a program's maps, summed over CPUs.
fn program_counters(info: &aya::programs::ProgramInfo) -> Result<Option<ClassCounters>, XdpError> {
    let Some(map_ids) = info.map_ids()? else {
        return Ok(None);
    };
    for id in map_ids {
        let info = MapInfo::from_id(id)?;
        if !kernel_name_is(info.name_as_str(), MAP_CLASS_COUNTERS) {
            continue;
        }
        let map = aya::maps::Map::PerCpuArray(MapData::from_id(id)?);
        let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
        return Ok(Some(ClassCounters::read(&map)?));
    }
    Ok(None)
}

/// Whether a kernel object name is `full`, which the kernel truncates to its
/// first 15 bytes.
fn kernel_name_is(kernel: Option<&str>, full: &str) -> bool {
    kernel.is_some_and(|name| !name.is_empty() && full.starts_with(name))
}
