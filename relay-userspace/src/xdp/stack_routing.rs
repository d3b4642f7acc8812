//! What stack routing needs from the kernel. A frame the kernel relay has
//! rewritten and handed on to the stack carries one of this node's
//! addresses as its source (the relayed address towards peers, the listen
//! address towards clients). IPv4 drops such a packet as a martian source
//! unless the interface it arrived on has `accept_local` set; IPv6 has no
//! such check. So, with stack routing, every interface the relay runs on
//! gets `accept_local = 1`, and its old value back when the relay detaches.

use std::path::PathBuf;

use super::XdpError;

/// The interfaces whose `accept_local` was changed, with their old values.
#[derive(Debug, Default)]
pub struct AcceptLocal {
    changed: Vec<(String, String)>,
}

impl AcceptLocal {
    /// Sets `accept_local` on `interface`, remembering the old value; once
    /// per interface.
    pub fn enable(&mut self, interface: &str) -> Result<(), XdpError> {
        if self.changed.iter().any(|(name, _)| name == interface) {
            return Ok(());
        }
        let path = path(interface);
        let failed = |source| XdpError::Sysctl {
            path: path.display().to_string(),
            source,
        };
        let old = std::fs::read_to_string(&path).map_err(failed)?;
        let old = old.trim().to_owned();
        if old != "1" {
            std::fs::write(&path, "1").map_err(failed)?;
            tracing::info!(
                "stack routing: set {} to 1 (was {old}), so that IPv4 accepts relayed \
                 frames whose source is this node's address",
                path.display()
            );
        }
        self.changed.push((interface.to_owned(), old));
        Ok(())
    }

    /// Forgets `interface`, which is gone with its sysctls.
    pub fn forget(&mut self, interface: &str) {
        self.changed.retain(|(name, _)| name != interface);
    }

    /// Puts every old value back; returns the interfaces where that failed
    /// (an interface that is gone has nothing to put back).
    pub fn restore(&mut self) -> Vec<(String, XdpError)> {
        let mut failures = Vec::new();
        for (interface, old) in self.changed.drain(..) {
            let path = path(&interface);
            match std::fs::write(&path, &old) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => failures.push((
                    interface,
                    XdpError::Sysctl {
                        path: path.display().to_string(),
                        source,
                    },
                )),
            }
        }
        failures
    }
}

/// The sysctl's file. Names keep their dots here (`eth0.100`); only the
/// `sysctl` tool writes them as slashes.
fn path(interface: &str) -> PathBuf {
    PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(interface)
        .join("accept_local")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_keeps_vlan_dots() {
        assert_eq!(
            path("eth0.100"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/accept_local")
        );
    }
}
