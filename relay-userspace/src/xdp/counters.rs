//! The XDP program's per-CPU packet counters, summed over CPUs.

use std::fmt;

use aya::maps::{MapData, MapError, PerCpuArray};
use relay_common::{Counter, PacketClass};

/// A snapshot of the counters of every [`PacketClass`], summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounters([Counter; PacketClass::COUNT as usize]);

impl ClassCounters {
    /// Reads and sums the per-CPU counters map.
    pub fn read<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, Counter>,
    ) -> Result<Self, MapError> {
        let mut sums = ClassCounters::default();
        for class in PacketClass::ALL {
            let per_cpu = map.get(&(class as u32), 0)?;
            let sum = &mut sums.0[class as usize];
            for counter in per_cpu.iter() {
                sum.packets += counter.packets;
                sum.bytes += counter.bytes;
            }
        }
        Ok(sums)
    }

    /// The counter of one class.
    pub fn get(&self, class: PacketClass) -> Counter {
        self.0[class as usize]
    }

    /// What was counted after `earlier` was taken.
    pub fn since(&self, earlier: &ClassCounters) -> ClassCounters {
        let mut delta = *self;
        for (now, then) in delta.0.iter_mut().zip(earlier.0.iter()) {
            now.packets = now.packets.saturating_sub(then.packets);
            now.bytes = now.bytes.saturating_sub(then.bytes);
        }
        delta
    }

    /// The counters as a JSON object: `{"stun": {"packets": 1, "bytes": 90}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        PacketClass::ALL
            .iter()
            .map(|class| {
                let counter = self.get(*class);
                (
                    class.name().to_owned(),
                    serde_json::json!({ "packets": counter.packets, "bytes": counter.bytes }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// `stun=3 (270 B) channel_data=0 (0 B) ...`
impl fmt::Display for ClassCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, class) in PacketClass::ALL.iter().enumerate() {
            let counter = self.get(*class);
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(
                f,
                "{}={} ({} B)",
                class.name(),
                counter.packets,
                counter.bytes
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(class: PacketClass, packets: u64, bytes: u64) -> ClassCounters {
        let mut counters = ClassCounters::default();
        counters.0[class as usize] = Counter { packets, bytes };
        counters
    }

    #[test]
    fn since_subtracts_per_class_and_never_underflows() {
        let later = with(PacketClass::Stun, 5, 500);
        let earlier = with(PacketClass::Stun, 2, 200);
        assert_eq!(later.since(&earlier).get(PacketClass::Stun).packets, 3);
        assert_eq!(earlier.since(&later).get(PacketClass::Stun).packets, 0);
    }

    #[test]
    fn display_and_json_name_every_class() {
        let counters = with(PacketClass::ChannelData, 4, 400);
        let text = counters.to_string();
        let json = counters.to_json();
        for class in PacketClass::ALL {
            assert!(text.contains(class.name()), "{text}");
            assert!(json.get(class.name()).is_some(), "{json}");
        }
        assert!(text.contains("channel_data=4 (400 B)"), "{text}");
        assert_eq!(json["channel_data"]["bytes"], 400);
    }
}
