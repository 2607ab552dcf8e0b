//! The systemd unit (`systemd/imds-guard.service`) as the tests read it, so that what they emulate
//! of it (capabilities, file system and /proc confinement, system call filter) follows the file.

use std::path::PathBuf;

/// `systemd/imds-guard.service` in this checkout.
#[must_use]
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/imds-guard.service")
}

/// The `[Service]` section's assignments, in order (continuation lines joined, comments dropped).
pub struct Unit {
    pub service: Vec<(String, String)>,
}

impl Unit {
    #[must_use]
    pub fn load() -> Self {
        let text = std::fs::read_to_string(path()).expect("read systemd/imds-guard.service");
        let mut section = String::new();
        let mut service = Vec::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section == "[Service]" {
                let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not an assignment: {line}"));
                service.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Unit { service }
    }

    /// Every value assigned to `key`, in order.
    #[must_use]
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.service.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// The last value assigned to `key` (what systemd uses for single-valued settings).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    /// The capability names the unit leaves the daemon (`CapabilityBoundingSet=`), e.g. `CAP_BPF`.
    #[must_use]
    pub fn capabilities(&self) -> Vec<String> {
        let caps = self.get("CapabilityBoundingSet").expect("the unit sets CapabilityBoundingSet=");
        assert!(!caps.starts_with('~'), "CapabilityBoundingSet= is expected to be an allow list");
        caps.split_whitespace().map(str::to_owned).collect()
    }

    /// `setpriv --bounding-set=` for exactly the unit's capabilities: `-all,+bpf,+net_admin,...`.
    #[must_use]
    pub fn setpriv_bounding_set(&self) -> String {
        let mut s = String::from("-all");
        for c in self.capabilities() {
            s.push_str(",+");
            s.push_str(&c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase());
        }
        s
    }
}
