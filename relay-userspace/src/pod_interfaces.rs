//! Pods' veths, which come and go with the pods. What a pod on this node
//! sends to a relayed address enters the node at the ingress of the pod's
//! host-side veth, so the tc engine has to be there for the kernel to relay
//! it. turnxd follows the interfaces whose names match the configured
//! patterns (Cilium names them `lxc…`, Calico `cali…`): it attaches the tc
//! engine to each as it appears and forgets it once it is gone. Nothing
//! here touches the kernel; the daemon lists the interfaces and applies the
//! changes.

use std::collections::BTreeSet;

/// Whether `name` matches `pattern`: the whole name, or, for a pattern
/// ending in `*`, everything before the star as a prefix.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// The pod interfaces the tc engine is attached to.
#[derive(Debug, Default)]
pub struct PodInterfaces {
    patterns: Vec<String>,
    /// Interfaces attached by other configuration, never followed here.
    fixed: BTreeSet<String>,
    attached: BTreeSet<String>,
}

/// What to do after a look at the interfaces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New pod interfaces: attach the tc engine.
    pub attach: Vec<String>,
    /// Pod interfaces that are gone: forget their links.
    pub gone: Vec<String>,
}

impl PodInterfaces {
    /// Follows interfaces matching `patterns`, except the `fixed` ones,
    /// which the daemon attaches to by configuration.
    pub fn new(patterns: Vec<String>, fixed: impl IntoIterator<Item = String>) -> Self {
        PodInterfaces {
            patterns,
            fixed: fixed.into_iter().collect(),
            attached: BTreeSet::new(),
        }
    }

    /// Whether any pattern is configured.
    pub fn is_enabled(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Compares `present`, the interfaces there are now, with those
    /// attached to, and returns the difference.
    pub fn changes(&self, present: &[String]) -> Changes {
        let wanted: BTreeSet<&String> = present
            .iter()
            .filter(|name| !self.fixed.contains(*name))
            .filter(|name| self.patterns.iter().any(|p| matches(p, name)))
            .collect();
        Changes {
            attach: wanted
                .iter()
                .filter(|name| !self.attached.contains(**name))
                .map(|name| (*name).clone())
                .collect(),
            gone: self
                .attached
                .iter()
                .filter(|name| !wanted.contains(name))
                .cloned()
                .collect(),
        }
    }

    /// Records that the tc engine runs on `name`.
    pub fn attached(&mut self, name: &str) {
        self.attached.insert(name.to_owned());
    }

    /// Records that `name` is gone.
    pub fn forgotten(&mut self, name: &str) {
        self.attached.remove(name);
    }
}

/// The names of this network namespace's interfaces.
pub fn present() -> std::io::Result<Vec<String>> {
    // SAFETY: if_nameindex returns an array ending in a zeroed entry, or
    // null on failure; it is freed below and not used after.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let mut names = Vec::new();
        let mut entry = list;
        while (*entry).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*entry).if_name);
            names.push(name.to_string_lossy().into_owned());
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn patterns_match_whole_names_or_prefixes() {
        assert!(matches("lxc*", "lxc1a2b3c"));
        assert!(matches("lxc*", "lxc"));
        assert!(!matches("lxc*", "eth0"));
        assert!(matches("cali0", "cali0"));
        assert!(!matches("cali0", "cali01"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn interfaces_are_attached_as_they_come_and_forgotten_as_they_go() {
        let mut pods = PodInterfaces::new(names(&["lxc*", "cali*"]), names(&["lxcfixed"]));
        assert!(pods.is_enabled());
        let changes = pods.changes(&names(&["lo", "eth0", "lxc1", "cali2", "lxcfixed"]));
        assert_eq!(changes.attach, names(&["cali2", "lxc1"]));
        assert!(changes.gone.is_empty());
        pods.attached("cali2");
        pods.attached("lxc1");
        // Nothing new: nothing to do.
        assert_eq!(
            pods.changes(&names(&["eth0", "lxc1", "cali2"])),
            Changes::default()
        );
        // A pod went, another came.
        let changes = pods.changes(&names(&["eth0", "cali2", "lxc3"]));
        assert_eq!(changes.attach, names(&["lxc3"]));
        assert_eq!(changes.gone, names(&["lxc1"]));
        pods.forgotten("lxc1");
        assert_eq!(pods.changes(&names(&["cali2"])).gone, Vec::<String>::new());
    }

    #[test]
    fn no_patterns_follow_nothing() {
        let pods = PodInterfaces::new(Vec::new(), Vec::new());
        assert!(!pods.is_enabled());
        assert_eq!(pods.changes(&names(&["lxc1"])), Changes::default());
    }

    #[test]
    fn this_namespace_has_loopback() {
        assert!(present().unwrap().iter().any(|name| name == "lo"));
    }
}
