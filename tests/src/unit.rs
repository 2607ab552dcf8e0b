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
        Self::load_with(&[])
    }

    /// The unit with drop-ins (files under `systemd/`, e.g. `preexisting-close.conf`) applied in
    /// order, as systemd applies `imds-guard.service.d/*.conf`: their assignments come after the
    /// unit's.
    #[must_use]
    pub fn load_with(dropins: &[&str]) -> Self {
        let mut service = Vec::new();
        let mut files = vec![path()];
        files.extend(dropins.iter().map(|d| path().with_file_name(d)));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            parse_service(&text, &mut service);
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

/// `#define PREFIXname number` lines of a C header, as (name, number).
fn header_numbers(path: &str, prefix: &str) -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (install linux-libc-dev: scripts/bootstrap.sh does)"));
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "#define").then_some(())?;
            let name = f.next()?.strip_prefix(prefix)?;
            Some((name.to_owned(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// systemd's system call groups, from `systemd-analyze syscall-filter` (`@group` → members, which
/// may be groups themselves).
fn syscall_groups() -> std::collections::HashMap<String, Vec<String>> {
    let out = std::process::Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(out.status.success(), "systemd-analyze syscall-filter: {out:?}");
    let mut groups = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            current = Some(t.to_owned());
            groups.insert(t.to_owned(), Vec::new());
        } else if let Some(g) = &current {
            groups.get_mut(g).expect("current group").push(t.to_owned());
        }
    }
    groups
}

impl Unit {
    /// The x86-64 system call numbers the unit's `SystemCallFilter=` lines allow, with systemd's
    /// semantics: the first line is an allow list (to which systemd adds @default), later
    /// `~` lines remove from it and plain lines add to it. Names that are not x86-64 system calls
    /// (systemd's groups cover every architecture) are dropped.
    #[must_use]
    pub fn allowed_syscalls(&self) -> Vec<i64> {
        let groups = syscall_groups();
        fn expand(
            item: &str,
            groups: &std::collections::HashMap<String, Vec<String>>,
            out: &mut Vec<String>,
        ) {
            if item.starts_with('@') {
                for m in groups.get(item).unwrap_or_else(|| panic!("unknown system call group {item}")) {
                    expand(m, groups, out);
                }
            } else {
                out.push(item.to_owned());
            }
        }
        let lines = self.all("SystemCallFilter");
        assert!(
            lines.first().is_some_and(|l| !l.starts_with('~')),
            "the first SystemCallFilter= is expected to be an allow list"
        );
        let mut allowed = std::collections::BTreeSet::new();
        let mut names = Vec::new();
        expand("@default", &groups, &mut names);
        allowed.extend(names);
        for line in lines {
            let (deny, list) = line.strip_prefix('~').map_or((false, line), |l| (true, l));
            let mut names = Vec::new();
            for item in list.split_whitespace() {
                expand(item, &groups, &mut names);
            }
            for n in names {
                if deny {
                    allowed.remove(&n);
                } else {
                    allowed.insert(n);
                }
            }
        }
        let numbers: std::collections::HashMap<String, i64> =
            header_numbers("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "__NR_").into_iter().collect();
        allowed.iter().filter_map(|n| numbers.get(n).copied()).collect()
    }

    /// The address family numbers of `RestrictAddressFamilies=` (an allow list).
    #[must_use]
    pub fn socket_families(&self) -> Vec<u64> {
        let v = self.get("RestrictAddressFamilies").expect("RestrictAddressFamilies=");
        assert!(!v.starts_with('~'), "RestrictAddressFamilies= is expected to be an allow list");
        v.split_whitespace()
            .map(|f| match f {
                "AF_UNIX" => 1,
                "AF_INET" => 2,
                "AF_INET6" => 10,
                "AF_NETLINK" => 16,
                "AF_PACKET" => 17,
                other => panic!("address family {other} unknown to the tests: add it"),
            })
            .collect()
    }

    /// The capability set (`CapEff`/`CapBnd` bits) of the unit's capabilities.
    #[must_use]
    pub fn capability_bits(&self) -> u64 {
        let numbers: std::collections::HashMap<String, i64> =
            header_numbers("/usr/include/linux/capability.h", "").into_iter().collect();
        self.capabilities()
            .iter()
            .map(|c| 1u64 << numbers.get(c).unwrap_or_else(|| panic!("{c} not in linux/capability.h")))
            .fold(0, |a, b| a | b)
    }
}

/// Appends the `[Service]` assignments of one unit file (continuation lines joined, comments
/// dropped).
fn parse_service(text: &str, service: &mut Vec<(String, String)>) {
    let mut section = String::new();
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
}
