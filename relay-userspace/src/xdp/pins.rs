//! What outlives turnxd on bpffs, so that the kernel goes on relaying while
//! no daemon runs (a handover, an upgrade, a crash) and the next turnxd
//! takes it over without a gap:
//!
//! - `<pin_dir>/v<layout>/<map>`: the maps the programs relay from, in a
//!   directory per layout version (`relay_common::MAP_LAYOUT_VERSION`);
//! - `<pin_dir>/links/<engine>-<interface>`: the bpf links that attach the
//!   programs. A new turnxd loads its own programs and swaps them into
//!   these links atomically (`BPF_LINK_UPDATE`).
//!
//! A pinned map is adopted only if its type, key, value and size are what
//! this build expects; one that is not is refused, said so, and made anew
//! (the handover file still brings the bindings back). A clean stop that is
//! not a handover removes it all, which detaches the programs.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use relay_common::{
    BindingCounters, ChannelKey, ChannelTarget, Counter, LISTEN_PORT_WORDS, MAP_BINDING_COUNTERS,
    MAP_CHANNELS, MAP_CLASS_COUNTERS, MAP_EGRESS, MAP_LAYOUT_VERSION, MAP_LISTEN_PORTS, MAP_PEERS,
    MAP_RELAYED_PORTS, MAX_BINDINGS, MAX_EGRESS_INTERFACES, PacketClass, PeerKey, PeerTarget,
    bandwidth::{BUCKETS_PER_BINDING, Bucket, MAP_BUCKETS},
    next_hop::{HOP_WORDS, MAP_NEXT_HOPS, MAP_ROUTE_GENERATION},
};

use super::XdpError;

/// A map as the programs of this build declare it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    /// Its name in the object, and its pin's.
    pub name: &'static str,
    /// Its kind.
    pub kind: MapType,
    /// Key bytes.
    pub key: u32,
    /// Value bytes.
    pub value: u32,
    /// Entries.
    pub entries: u32,
}

/// The size of `T` as a map's key or value size.
const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// Every map the programs relay from, as this build makes them with
/// `max_bindings` bindings (`None`: the object's default): the ones that
/// are pinned. Per-CPU scratch space and the log buffer are the
/// program's own.
pub fn pinned_shapes(max_bindings: Option<u32>) -> [MapShape; 10] {
    let bindings = max_bindings.unwrap_or(MAX_BINDINGS);
    let shape = |name, kind, key, value, entries| MapShape {
        name,
        kind,
        key,
        value,
        entries,
    };
    [
        shape(
            MAP_LISTEN_PORTS,
            MapType::Array,
            4,
            size::<u64>(),
            LISTEN_PORT_WORDS,
        ),
        shape(
            MAP_RELAYED_PORTS,
            MapType::Array,
            4,
            size::<u64>(),
            LISTEN_PORT_WORDS,
        ),
        shape(
            MAP_CLASS_COUNTERS,
            MapType::PerCpuArray,
            4,
            size::<Counter>(),
            PacketClass::COUNT,
        ),
        shape(
            MAP_CHANNELS,
            MapType::Hash,
            size::<ChannelKey>(),
            size::<ChannelTarget>(),
            bindings,
        ),
        shape(
            MAP_PEERS,
            MapType::Hash,
            size::<PeerKey>(),
            size::<PeerTarget>(),
            bindings,
        ),
        shape(
            MAP_EGRESS,
            MapType::Hash,
            4,
            size::<u8>(),
            MAX_EGRESS_INTERFACES,
        ),
        shape(
            MAP_NEXT_HOPS,
            MapType::Array,
            4,
            size::<[u64; HOP_WORDS]>(),
            bindings * 2,
        ),
        shape(MAP_ROUTE_GENERATION, MapType::Array, 4, size::<u64>(), 1),
        shape(
            MAP_BINDING_COUNTERS,
            MapType::PerCpuArray,
            4,
            size::<BindingCounters>(),
            bindings,
        ),
        shape(
            MAP_BUCKETS,
            MapType::Array,
            4,
            size::<Bucket>(),
            bindings * BUCKETS_PER_BINDING + 1,
        ),
    ]
}

/// The engine a pinned link attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// XDP in native (driver) mode.
    XdpNative,
    /// XDP in generic (skb) mode.
    XdpGeneric,
    /// The tc engine at ingress (tcx).
    Tc,
}

impl LinkKind {
    fn prefix(self) -> &'static str {
        match self {
            LinkKind::XdpNative => "xdp-native",
            LinkKind::XdpGeneric => "xdp-generic",
            LinkKind::Tc => "tc",
        }
    }
}

/// One turnxd's pin directory, locked for it while it runs.
pub struct PinDir {
    root: PathBuf,
    /// Held (flock) while this process uses the directory.
    _lock: File,
}

impl PinDir {
    /// Creates `root` (on bpffs) with its map and link directories, and
    /// locks it, or fails if another process holds it.
    pub fn open(root: &Path) -> Result<PinDir, XdpError> {
        let dir_error = |path: &Path, source| XdpError::PinDirectory {
            path: path.display().to_string(),
            source,
        };
        let layout = root.join(format!("v{MAP_LAYOUT_VERSION}"));
        for path in [layout, root.join("links")] {
            std::fs::create_dir_all(&path).map_err(|source| dir_error(&path, source))?;
        }
        let lock = File::open(root).map_err(|source| dir_error(root, source))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(XdpError::PinDirectoryInUse(root.display().to_string()));
        }
        Ok(PinDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    /// The directory of this layout's maps.
    pub fn maps(&self) -> PathBuf {
        self.root.join(format!("v{MAP_LAYOUT_VERSION}"))
    }

    /// The directory of the pinned links.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Where the pin of map `name` is.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Where the pin of `kind`'s link on `interface` is.
    pub fn link(&self, kind: LinkKind, interface: &str) -> PathBuf {
        self.links().join(format!("{}-{interface}", kind.prefix()))
    }

    /// Refuses pinned maps whose shape is not `shapes`: each is said, and
    /// removed, so that loading makes it anew. Returns how many pinned maps
    /// are adopted.
    pub fn refuse_stale(&self, shapes: &[MapShape]) -> usize {
        let mut adopted = 0;
        for shape in shapes {
            let path = self.map(shape.name);
            if !path.exists() {
                continue;
            }
            match found_shape(&path, shape.name) {
                Ok(found) if found == *shape => adopted += 1,
                found => {
                    let found = match found {
                        Ok(found) => describe(&found),
                        Err(err) => format!("unreadable ({err})"),
                    };
                    tracing::warn!(
                        "refusing the pinned map {}: it is {found}, and this turnxd expects {} \
                         (another turnx build, or another [xdp] max_bindings); it is made \
                         anew, and the bindings come back from the handover file",
                        path.display(),
                        describe(shape)
                    );
                    if let Err(err) = std::fs::remove_file(&path) {
                        tracing::warn!("removing {}: {err}", path.display());
                    }
                }
            }
        }
        adopted
    }

    /// Removes the maps of other layout versions, which no program of
    /// this build uses (once its programs are in every link).
    pub fn remove_other_layouts(&self) {
        let current = self.maps();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let layout = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with('v'));
            if layout && path != current && std::fs::remove_dir_all(&path).is_ok() {
                tracing::info!(
                    "removed the pinned maps of another layout, {}",
                    path.display()
                );
            }
        }
    }

    /// The pinned links, by path.
    pub fn pinned_links(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.links())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes every pin, maps and links: the programs detach once this
    /// process lets go of them.
    pub fn remove_all(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.root)
    }
}

/// What the map pinned at `path` is.
fn found_shape(path: &Path, name: &'static str) -> Result<MapShape, aya::maps::MapError> {
    let info = MapData::from_pin(path)?.info()?;
    Ok(MapShape {
        name,
        kind: info.map_type()?,
        key: info.key_size(),
        value: info.value_size(),
        entries: info.max_entries(),
    })
}

fn describe(shape: &MapShape) -> String {
    format!(
        "a {:?} map of {} entries, {}-byte keys and {}-byte values",
        shape.kind, shape.entries, shape.key, shape.value
    )
}
