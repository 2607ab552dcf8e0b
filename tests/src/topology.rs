//! Three network namespaces for the netfilter layer: a "VM/pod" client, this host routing for it,
//! and a metadata host on the far side — all made by the test, joined by veth pairs, with
//! documentation addresses (RFC 5737, RFC 3849) only. Traffic never leaves them.
//!
//! ```text
//!  client ── c0 192.0.2.2 / 2001:db8:1::2      ──  r0 192.0.2.1 / 2001:db8:1::1   router
//!  router ── r1 198.51.100.1 / 2001:db8:2::1   ──  m0 198.51.100.2 / 2001:db8:2::2  metadata host
//! ```
//!
//! The metadata host is the [`Sandbox`]'s own namespace: the endpoint addresses on its `lo` and the
//! fake IMDS behind them. The router forwards (ip_forward=1, IPv6 forwarding) and routes the
//! endpoints to the metadata host; the daemon under test runs there. The client's processes run
//! in a cgroup of their own outside the sandbox cgroup, so no cgroup hook ever judges them, as for
//! a VM: only the router's forward path sees their packets.

use std::{fs, os::fd::OwnedFd, path::PathBuf, process::Command};

use crate::{ImdsMode, Sandbox, sandbox::run};

/// A named network namespace made by the test; deleted on drop.
pub struct Netns {
    pub name: String,
    pub fd: OwnedFd,
}

impl Netns {
    fn new(name: String) -> Self {
        run(Command::new("ip").args(["netns", "add", &name]));
        let fd = fs::File::open(format!("/run/netns/{name}")).expect("netns handle").into();
        let ns = Netns { name, fd };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a program in this namespace (`ip netns exec`, for tools that only need the network
    /// namespace: nft, sysctl).
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// `nft <args>` here; the ruleset of this namespace only.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut a = vec!["nft"];
        a.extend_from_slice(args);
        self.exec(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A cgroup the test made for processes that no guard judges; removed on drop.
pub struct OwnCgroup(pub PathBuf);

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        crate::sandbox::remove_cgroup(&self.0);
    }
}

/// Field order is drop order: the client and router namespaces and the VM cgroup go, then the
/// sandbox (metadata host, cgroup, pins).
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub vm_cgroup: OwnCgroup,
    pub sb: Sandbox,
}

pub const CLIENT_V4: &str = "192.0.2.2";
pub const CLIENT_V6: &str = "2001:db8:1::2";
/// The router's interface towards the client (forwarded packets come in here).
pub const ROUTER_CLIENT_IF: &str = "r0";

impl Topology {
    /// `None` when privileged tests cannot run here (as for [`Sandbox::new`]).
    pub fn new(test: &str, mode: ImdsMode) -> Option<Self> {
        let sb = Sandbox::new(test, mode)?;
        let vm_cgroup = OwnCgroup(sb.cgroup_root.join(format!("{}-vm", sb.name)));
        fs::create_dir(&vm_cgroup.0).expect("creating the VM cgroup");
        let router = Netns::new(format!("{}-r", sb.name));
        let client = Netns::new(format!("{}-c", sb.name));
        let topo = Topology { client, router, vm_cgroup, sb };
        let (r, c, m) = (&topo.router, &topo.client, &topo.sb.name);

        r.ip(&["link", "add", "r0", "type", "veth", "peer", "name", "c0", "netns", &c.name]);
        r.ip(&["link", "add", "r1", "type", "veth", "peer", "name", "m0", "netns", m]);
        for (ns, dev, v4, v6) in [
            (r.name.as_str(), "r0", "192.0.2.1/24", "2001:db8:1::1/64"),
            (c.name.as_str(), "c0", "192.0.2.2/24", "2001:db8:1::2/64"),
            (r.name.as_str(), "r1", "198.51.100.1/24", "2001:db8:2::1/64"),
            (m.as_str(), "m0", "198.51.100.2/24", "2001:db8:2::2/64"),
        ] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", v4, "dev", dev]));
            run(Command::new("ip").args(["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
        }
        c.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        c.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        r.ip(&["route", "add", "169.254.0.0/16", "via", "198.51.100.2"]);
        r.ip(&["-6", "route", "add", "fd00:ec2::/64", "via", "2001:db8:2::2"]);
        run(Command::new("ip").args(["-n", m, "route", "add", "192.0.2.0/24", "via", "198.51.100.1"]));
        run(Command::new("ip").args([
            "-n",
            m,
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            "2001:db8:2::1",
        ]));
        r.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        // Link-local addresses do duplicate address detection for a second or so after a link
        // comes up; until they are usable, neighbour discovery (and so IPv6) fails.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for ns in [r.name.as_str(), c.name.as_str(), m.as_str()] {
            while !run(Command::new("ip").args(["-n", ns, "-6", "addr", "show", "tentative"]))
                .trim()
                .is_empty()
            {
                assert!(std::time::Instant::now() < deadline, "IPv6 addresses in {ns} stay tentative");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Some(topo)
    }

    /// A client process in the "VM": its own cgroup (no hook judges it), the client namespace.
    #[must_use]
    pub fn vm(&self, uid: u32) -> crate::Client<'_> {
        self.sb.client(uid, uid).at_cgroup(&self.vm_cgroup.0).in_netns(&self.client.fd)
    }

    /// A process of the router host itself: in the sandbox cgroup (judged by the guard), in the
    /// router namespace.
    #[must_use]
    pub fn host(&self, uid: u32) -> crate::Client<'_> {
        self.sb.client(uid, uid).in_netns(&self.router.fd)
    }
}
