//! Connections to a metadata endpoint that were open before imds-guard started. The connect hooks
//! cannot judge them (they are already connected), so at start-up the daemon finds them, in every
//! network namespace, with the processes holding them, and reports each one with whether the
//! policy would allow its owner.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use imds_guard_common::verdict::find_rule;
use serde::Serialize;

use crate::{endpoints::Endpoints, identity::ProcessIdentity, policy::Policy};

#[derive(Debug, Serialize)]
pub struct Preexisting {
    pub schema: u32,
    pub event: &'static str,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup: String,
    pub dst: String,
    pub port: u16,
    /// `ESTABLISHED` or `SYN_SENT`.
    pub state: &'static str,
    /// Whether the enforced policy would let this process connect now.
    pub allowed: bool,
}

/// A socket of /proc/<pid>/net/tcp{,6}.
struct Line {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: &'static str,
    inode: u64,
}

/// One line of /proc/<pid>/net/tcp{,6}.
fn parse_socket(line: &str, v6: bool) -> Option<Line> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let state = match *f.get(3)? {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "0A" => "LISTEN",
        _ => return None,
    };
    Some(Line {
        local: parse_addr(f.get(1)?, v6)?,
        remote: parse_addr(f.get(2)?, v6)?,
        state,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// Connected (or connecting) sockets only: remote address and port, state, socket inode.
#[cfg(test)]
fn parse_line(line: &str, v6: bool) -> Option<(IpAddr, u16, &'static str, u64)> {
    let l = parse_socket(line, v6).filter(|l| l.state != "LISTEN")?;
    Some((l.remote.0, l.remote.1, l.state, l.inode))
}

fn parse_addr(field: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word in host byte order.
    let word = |i: usize| u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok().map(u32::to_le_bytes);
    let ip = if v6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some((ip, port))
}

fn is_endpoint(ip: IpAddr, endpoints: &Endpoints) -> bool {
    match ip {
        IpAddr::V4(a) => endpoints.v4.contains(&a),
        IpAddr::V6(a) => {
            a.to_ipv4_mapped().map_or_else(|| endpoints.v6.contains(&a), |m| endpoints.v4.contains(&m))
        }
    }
}

/// Finds the connections to `policy`'s endpoints open now, in every network namespace.
pub fn scan(policy: &Policy, cgroup_root: &Path) -> Vec<Preexisting> {
    // One process per network namespace is enough to read that namespace's TCP tables.
    let mut namespaces: BTreeMap<u64, u32> = BTreeMap::new();
    let pids: Vec<u32> = fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for &pid in &pids {
        if let Ok(md) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            namespaces.entry(md.ino()).or_insert(pid);
        }
    }
    let mut sockets: HashMap<u64, (IpAddr, u16, &'static str)> = HashMap::new();
    for pid in namespaces.values() {
        let mut lines = Vec::new();
        for (file, v6) in [("tcp", false), ("tcp6", true)] {
            let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
            lines.extend(table.lines().skip(1).filter_map(|l| parse_socket(l, v6)));
        }
        // A socket whose local end is a listening address is the server side of a connection
        // (a host that serves the endpoint itself, as the test sandbox does), not a client of it.
        let listening: HashSet<(IpAddr, u16)> =
            lines.iter().filter(|l| l.state == "LISTEN").map(|l| l.local).collect();
        let unspecified =
            |port| [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)].map(|a| (a, port));
        for l in lines {
            let served =
                listening.contains(&l.local) || unspecified(l.local.1).iter().any(|u| listening.contains(u));
            if l.state != "LISTEN" && l.inode != 0 && !served && is_endpoint(l.remote.0, &policy.endpoints) {
                sockets.insert(l.inode, (l.remote.0, l.remote.1, l.state));
            }
        }
    }
    if sockets.is_empty() {
        return Vec::new();
    }
    let (cfg, entries) = policy.kernel_tables(1);
    let rules: HashMap<_, _> = entries.into_iter().collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &pid in &pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let Some(inode) =
                target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            else {
                continue;
            };
            let Some(&(ip, port, state)) = sockets.get(&inode) else { continue };
            if !seen.insert((pid, inode)) {
                continue;
            }
            let Ok(who) = ProcessIdentity::of(pid, cgroup_root) else { continue };
            let allowed = find_rule(
                &cfg,
                &who.kernel_identity(),
                |level| who.cgroup_ancestry.get(level as usize).copied().unwrap_or(0),
                |k| rules.get(k).copied(),
            )
            .is_some();
            out.push(Preexisting {
                schema: crate::events::SCHEMA_VERSION,
                event: "preexisting_connection",
                pid,
                uid: who.uid,
                gid: who.gid,
                comm: who.comm.clone(),
                exe: who.exe.as_ref().map(|p| p.display().to_string()),
                cgroup: who.cgroup.clone(),
                dst: ip.to_string(),
                port,
                state,
                allowed,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        // 169.254.169.254:80 is FEA9FEA9:0050 on a little-endian host.
        let l = "   3: 0100007F:9C40 FEA9FEA9:0050 01 00000000:00000000 00:00000000 00000000 65534        0 123456 1";
        let (ip, port, state, inode) = parse_line(l, false).unwrap();
        assert_eq!(
            (ip.to_string(), port, state, inode),
            ("169.254.169.254".into(), 80, "ESTABLISHED", 123456)
        );
        let listening =
            "   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 99 1";
        assert!(parse_line(listening, false).is_none());
        // fd00:ec2::254 as printed in tcp6 (four host-order words).
        let l6 = "   1: 00000000000000000000000001000000:9C40 C20E00FD000000000000000054020000:0050 01 0:0 0:0 0 0 0 777 1";
        let (ip, _, _, _) = parse_line(l6, true).unwrap();
        assert_eq!(ip.to_string(), "fd00:ec2::254");
    }
}
