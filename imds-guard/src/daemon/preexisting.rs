//! Connections to a metadata endpoint that were open before imds-guard started. The connect hooks
//! cannot judge them (they are already connected), so at start-up the daemon finds them, in every
//! network namespace, with the processes holding them, and reports each one with whether the
//! policy would allow its owner. With `preexisting = "close"` (enforce mode) it also resets the
//! ones a denied process holds.
//!
//! ## How a connection is reset
//!
//! The daemon takes a duplicate of the holder's socket descriptor (`pidfd_getfd`, which needs
//! CAP_SYS_PTRACE, the capability that already lets it read other users' /proc entries), checks it
//! is still the socket it found (same inode), and calls `connect()` on it with `AF_UNSPEC`: the
//! kernel disconnects the socket (`tcp_disconnect`), sends an RST to the peer and leaves
//! ECONNRESET pending, so the holder's next read or write fails. A new `connect()` on the same
//! socket goes through the connect hooks like any other.
//!
//! The alternatives both abort through the same kernel function (`tcp_abort`) but only see the
//! sockets of the network namespace the caller is in: the `bpf_sock_destroy` kfunc (Linux 6.5)
//! runs from an `iter/tcp` program, which iterates the namespace of the process that opens the
//! iterator, and the netlink `SOCK_DESTROY` request (a kernel option, CONFIG_INET_DIAG_DESTROY,
//! that not every distribution enables) addresses the namespace of the netlink socket. Reaching a container's connections
//! would need `setns()` into each namespace, i.e. CAP_SYS_ADMIN, which the systemd unit does
//! not grant. `pidfd_getfd` reaches the socket
//! through its holder, in whatever namespace it is, with the privileges the daemon already has.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use imds_guard_common::{config::Mode, verdict::find_rule};

use crate::{
    host::identity::ProcessIdentity,
    policy::endpoints::Endpoints,
    policy::{Policy, Preexisting as PreexistingPolicy},
    report::{Event, event::Preexisting},
};

/// A connection found open, with what resetting it takes.
#[derive(Debug)]
pub struct Found {
    pub report: Preexisting,
    /// The socket's inode and the holder's descriptor for it (to reset it).
    inode: u64,
    fd: i32,
}

/// A socket of /proc/<pid>/net/tcp{,6}.
struct Line {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: &'static str,
    inode: u64,
}

/// `/proc/<pid>/net/tcp` and `tcp6` of each of `pids` (one per network namespace), in that order;
/// `None` for a table that cannot be read.
///
/// Each `read(2)` of these files returns at most a page, and a read that reaches the end walks the
/// whole TCP hash table (262,144 buckets on a 24 GiB host: ~2 ms) again: `read_to_string`'s growing
/// reads made a sandbox's two namespaces take 27 ms. Reads of a page or more, spread over a thread
/// per core (a node with a namespace per pod has hundreds), keep it to the walks the kernel cannot
/// avoid.
fn read_tcp_tables(pids: &[u32]) -> Vec<Option<String>> {
    use std::io::Read as _;
    let files: Vec<String> =
        pids.iter().flat_map(|pid| ["tcp", "tcp6"].map(|f| format!("/proc/{pid}/net/{f}"))).collect();
    let read = |path: &String| -> Option<String> {
        let mut buf = Vec::with_capacity(64 << 10);
        fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf)).ok()?;
        String::from_utf8(buf).ok()
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let per_thread = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| (chunk.len(), s.spawn(move || chunk.iter().map(read).collect::<Vec<_>>())))
            .collect();
        // In order; a thread that failed leaves its tables unread.
        workers.into_iter().flat_map(|(n, w)| w.join().unwrap_or_else(|_| vec![None; n])).collect()
    })
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

/// Finds the connections to `policy`'s endpoints open now, in every network namespace, held by
/// processes below `attached` (the cgroup the hooks judge: processes elsewhere are not the
/// policy's business).
pub fn scan(policy: &Policy, cgroup_root: &Path, attached: &Path) -> Vec<Found> {
    let Ok(attached_id) = crate::host::env::cgroup_id(attached) else { return Vec::new() };
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
    let tables = read_tcp_tables(&namespaces.values().copied().collect::<Vec<_>>());
    // tcp, then tcp6, of each namespace.
    for pair in tables.chunks(2) {
        let mut lines = Vec::new();
        for (table, v6) in pair.iter().zip([false, true]) {
            let Some(table) = table else { continue };
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
            let Some(fd_num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
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
            if !who.cgroup_ancestry.contains(&attached_id) {
                continue;
            }
            let allowed = find_rule(
                &cfg,
                &who.kernel_identity(),
                |level| who.cgroup_ancestry.get(level as usize).copied().unwrap_or(0),
                |k| rules.get(k).copied(),
            )
            .is_some();
            out.push(Found {
                report: Preexisting {
                    pid,
                    uid: who.uid,
                    gid: who.gid,
                    comm: who.comm.clone(),
                    exe: who.exe.as_ref().map(|p| p.display().to_string()),
                    cgroup: who.cgroup.clone(),
                    dst: ip.to_string(),
                    port,
                    state: state.to_owned(),
                    allowed,
                    closed: false,
                    close_error: None,
                },
                inode,
                fd: fd_num,
            });
        }
    }
    out
}

/// What `run` does once enforcement is attached: finds the connections that predate it (below
/// `attached`), resets the ones denied processes hold when the policy says `preexisting =
/// "close"` in enforce mode, and logs a warning about each denied holder. Returns the events.
pub fn at_start(policy: &Policy, cgroup_root: &Path, attached: &Path) -> Vec<Event> {
    let mut found = scan(policy, cgroup_root, attached);
    let close = policy.preexisting == PreexistingPolicy::Close;
    if close && policy.mode == Mode::Enforce {
        close_denied(&mut found);
    }
    for c in found.iter().map(|f| &f.report).filter(|c| !c.allowed) {
        let what = match (&c.close_error, c.closed) {
            (Some(e), _) => format!("; resetting it failed: {e}"),
            (None, true) => "; it was reset".to_owned(),
            (None, false) if close => "; left open in monitor mode".to_owned(),
            (None, false) => "; left open (preexisting = \"close\" resets such connections)".to_owned(),
        };
        tracing::warn!(
            pid = c.pid,
            uid = c.uid,
            comm = %c.comm,
            "a connection to {} was open before imds-guard started, held by a process the policy does not allow{what}",
            c.dst
        );
    }
    found.into_iter().map(|f| Event::PreexistingConnection(f.report)).collect()
}

/// Resets every connection in `found` that a denied process holds (also for the other processes
/// that share the socket), and records the outcome in each report of it.
pub fn close_denied(found: &mut [Found]) {
    let denied: HashSet<u64> = found.iter().filter(|c| !c.report.allowed).map(|c| c.inode).collect();
    let mut outcome: HashMap<u64, Result<(), String>> = HashMap::new();
    for inode in denied {
        // Any holder's descriptor will do; the first that can still be taken.
        let mut result = Err(String::from("no holder left"));
        for c in found.iter().filter(|c| c.inode == inode) {
            let pid = c.report.pid;
            result = reset(pid, c.fd, inode).map_err(|e| format!("pid {pid} fd {}: {e}", c.fd));
            if result.is_ok() {
                break;
            }
        }
        outcome.insert(inode, result);
    }
    for c in found.iter_mut() {
        match outcome.get(&c.inode) {
            Some(Ok(())) => c.report.closed = true,
            Some(Err(e)) => c.report.close_error = Some(e.clone()),
            None => {}
        }
    }
}

/// Disconnects socket `inode`, which process `pid` holds as descriptor `fd` (see the module doc).
fn reset(pid: u32, fd: i32, inode: u64) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let owned = |r: libc::c_long| -> std::io::Result<OwnedFd> {
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the system call returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(r).map_err(std::io::Error::other)?) })
    };
    // SAFETY: plain system calls on integers; the results are checked.
    let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: as above.
    let sock = owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) }).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            std::io::Error::other(format!(
                "pidfd_getfd: {e} (under systemd, install the drop-in systemd/preexisting-close.conf: the \
                 unit's system call filter leaves pidfd_getfd out; elsewhere the daemon needs CAP_SYS_PTRACE)"
            ))
        } else {
            e
        }
    })?;
    // The process may have closed the descriptor and reused its number since the scan.
    let st = nix::sys::stat::fstat(&sock)?;
    if st.st_ino != inode {
        return Err(std::io::Error::other(format!("descriptor {fd} is no longer socket {inode}")));
    }
    // SAFETY: an all-zero sockaddr is valid; AF_UNSPEC asks the kernel to disconnect the socket.
    let mut unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr>()).expect("small");
    // SAFETY: a valid socket descriptor and a sockaddr of the given length.
    if unsafe { libc::connect(sock.as_raw_fd(), &raw const unspec, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
