//! Packets the netfilter layer refused (or, in monitor mode, would have), read from NFLOG and
//! reported as `forward_denied` / `output_denied` events.
//!
//! The rules of [`crate::netfilter`] log to an NFLOG group; the daemon binds that group (per
//! network namespace, like the table) on a netlink socket, with the first [`COPY_RANGE`] bytes of
//! each packet: enough for the IP and TCP/UDP headers. The NFLOG prefix says which hook, policy
//! generation and mode judged the packet. The netlink messages are parsed with
//! `netlink-packet-netfilter` (rust-netlink, which maintains the netlink crates); the IP and
//! transport headers, of which only addresses and ports are needed, are read here directly.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
};

use crate::report::{Event, event::Packet};
use anyhow::{Context as _, anyhow};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    nflog::{ConfigCmd, ConfigFlags, ConfigMode, PacketNla, ULogMessage, config_request},
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::netfilter::{Hook, parse_log_prefix};

/// Bytes of each logged packet copied to the daemon: an IPv6 header with a few extension headers
/// and the transport ports.
pub const COPY_RANGE: u32 = 160;
/// NFULNL_CFG_F_UID_GID: add the socket's uid and gid to packets that have a local socket.
const CFG_F_UID_GID: u16 = 0x0002;

/// One refused packet, as the kernel logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub hook: Hook,
    pub generation: u32,
    pub enforced: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub protocol: u8,
    /// Destination port (TCP, UDP, SCTP, UDP-Lite); 0 for other protocols.
    pub port: u16,
    pub in_ifindex: Option<u32>,
    /// Owner of the local socket (output hook only).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The NFLOG group, bound on a netlink socket of this network namespace.
pub struct Nflog {
    socket: Socket,
    buf: Vec<u8>,
    /// Logged packets lost because the socket's buffer was full (ENOBUFS).
    pub lost_batches: u64,
}

impl AsRawFd for Nflog {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Nflog {
    /// Binds `group`. Fails (naming the group) when another process holds it.
    pub fn bind(group: u16) -> anyhow::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).context("opening a netfilter netlink socket")?;
        socket.bind_auto().context("binding the netfilter netlink socket")?;
        let mut n = Nflog { socket, buf: vec![0; 1 << 16], lost_batches: 0 };
        n.request(config_request(NetfilterProtoFamily::Unspec, group, vec![ConfigCmd::Bind.into()]))
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    anyhow!(
                        "NFLOG group {group} is already bound by another process in this network namespace \
                         (ulogd?); choose another with [netfilter] nflog_group"
                    )
                } else {
                    anyhow!("binding NFLOG group {group}: {e}")
                }
            })?;
        n.request(config_request(
            NetfilterProtoFamily::Unspec,
            group,
            vec![
                ConfigMode::new_packet(COPY_RANGE).into(),
                ConfigFlags::from_bits_preserve(CFG_F_UID_GID).into(),
            ],
        ))
        .with_context(|| format!("configuring NFLOG group {group}"))?;
        // Room for bursts (a flood is aggregated downstream, but must be read first).
        let _ = n.socket.set_rx_buf_sz(4 << 20);
        n.socket.set_non_blocking(true)?;
        Ok(n)
    }

    /// Sends a configuration request and waits for its acknowledgement.
    fn request(&mut self, mut msg: NetlinkMessage<NetfilterMessage>) -> io::Result<()> {
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let m = <NetlinkMessage<NetfilterMessage>>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if let NetlinkPayload::Error(e) = &m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// The packets logged so far, from at most `max_batches` reads of the socket (non-blocking,
    /// so that a flood cannot starve the daemon's other work), and whether the socket is drained.
    pub fn read(&mut self, max_batches: usize) -> io::Result<(Vec<Logged>, bool)> {
        let mut out = Vec::new();
        for _ in 0..max_batches {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((out, true)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // The kernel dropped messages for us; the socket goes on.
                    self.lost_batches += 1;
                    tracing::warn!("NFLOG messages lost: the daemon did not read them fast enough");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < n {
                let Ok(m) = <NetlinkMessage<NetfilterMessage>>::deserialize(&self.buf[off..n]) else { break };
                let len = m.header.length as usize;
                if let Some(l) = decode(&m) {
                    out.push(l);
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        Ok((out, false))
    }
}

/// One NFLOG packet message → [`Logged`], for messages of our rules that carry an IP packet.
fn decode(m: &NetlinkMessage<NetfilterMessage>) -> Option<Logged> {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
        ..
    }) = &m.payload
    else {
        return None;
    };
    let (mut prefix, mut payload, mut iif, mut uid, mut gid) = (None, None, None, None, None);
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => prefix = Some(p.to_string_lossy().into_owned()),
            PacketNla::Payload(p) => payload = Some(p.as_slice()),
            PacketNla::IfIndexInDev(i) => iif = Some(*i),
            PacketNla::Uid(u) => uid = Some(*u),
            PacketNla::Gid(g) => gid = Some(*g),
            _ => {}
        }
    }
    let (hook, generation, enforced) = parse_log_prefix(&prefix?)?;
    let h = parse_ip(payload?)?;
    Some(Logged {
        hook,
        generation,
        enforced,
        src: h.src,
        dst: h.dst,
        protocol: h.protocol,
        port: h.port,
        in_ifindex: iif,
        uid,
        gid,
    })
}

/// What the reports need from a packet's headers.
#[derive(Debug, PartialEq, Eq)]
struct Headers {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    port: u16,
}

/// Reads the IPv4 or IPv6 header (skipping IPv6 extension headers) and the destination port of
/// TCP, UDP, UDP-Lite and SCTP. `None` for anything that is not IP or is cut short before the
/// addresses; a port cut off by the copy range reads as 0.
fn parse_ip(p: &[u8]) -> Option<Headers> {
    let (src, dst, mut proto, mut off) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let a: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let b: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            // A fragment other than the first has no transport header.
            let frag_off = u16::from_be_bytes(p.get(6..8)?.try_into().ok()?) & 0x1fff;
            let off = if frag_off == 0 { ihl } else { usize::MAX };
            (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)), *p.get(9)?, off)
        }
        6 => {
            let a: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let b: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)), *p.get(6)?, 40)
        }
        _ => return None,
    };
    if src.is_ipv6() {
        // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes; fragment: 8 bytes.
        for _ in 0..8 {
            match proto {
                0 | 43 | 60 => {
                    let (Some(next), Some(len)) = (p.get(off), p.get(off + 1)) else { break };
                    proto = *next;
                    off += (usize::from(*len) + 1) * 8;
                }
                44 => {
                    let Some(next) = p.get(off) else { break };
                    let first = p
                        .get(off + 2..off + 4)
                        .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0xfff8 == 0);
                    proto = *next;
                    off = if first { off + 8 } else { usize::MAX };
                }
                _ => break,
            }
        }
    }
    let port = match proto {
        6 | 17 | 132 | 136 => {
            off.checked_add(2).and_then(|o| p.get(o..o + 2)).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
        }
        _ => 0,
    };
    Some(Headers { src, dst, protocol: proto, port })
}

/// Turns logged packets into events, caching interface and user names.
#[derive(Default)]
pub struct Packets {
    ifnames: HashMap<u32, Option<String>>,
    users: HashMap<u32, Option<String>>,
}

impl Packets {
    /// `forward_denied` or `output_denied`.
    pub fn event(&mut self, l: &Logged) -> Event {
        let protocol = match l.protocol {
            6 => "tcp".to_owned(),
            17 => "udp".to_owned(),
            n => n.to_string(),
        };
        let packet = Packet {
            enforced: l.enforced,
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            src: l.src.to_string(),
            dst: l.dst.to_string(),
            port: l.port,
            protocol,
            family: if l.dst.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned(),
            in_interface: l.in_ifindex.and_then(|i| self.ifname(i)),
            uid: l.uid,
            gid: l.gid,
            user: l.uid.and_then(|u| self.user(u)),
            generation: l.generation,
        };
        match l.hook {
            Hook::Forward => Event::ForwardDenied(packet),
            Hook::Output => Event::OutputDenied(packet),
        }
    }

    /// The name of an interface of this network namespace (cached: indexes are not reused while
    /// the interface exists; a recreated one gets a new index).
    fn ifname(&mut self, index: u32) -> Option<String> {
        self.ifnames
            .entry(index)
            .or_insert_with(|| {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
                let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
                (!p.is_null()).then(|| {
                    // SAFETY: on success buf holds a NUL-terminated name.
                    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
                })
            })
            .clone()
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
            })
            .clone()
    }
}

/// What makes two logged packets the same event for aggregation: not the source port (each
/// connection attempt has its own) nor the time.
#[must_use]
pub fn aggregation_key(l: &Logged) -> String {
    format!(
        "{:?}|{}|{}|{}|{}|{}|{:?}|{:?}|{:?}",
        l.hook, l.enforced, l.src, l.dst, l.port, l.protocol, l.in_ifindex, l.uid, l.gid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_tcp_syn(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn reads_v4_and_v6_headers() {
        let h = parse_ip(&v4_tcp_syn([192, 0, 2, 2], [169, 254, 169, 254], 80)).unwrap();
        assert_eq!(h.src, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(h.dst, "169.254.169.254".parse::<IpAddr>().unwrap());
        assert_eq!((h.protocol, h.port), (6, 80));

        let mut p = vec![0u8; 40 + 8 + 8];
        p[0] = 0x60;
        p[6] = 0; // hop-by-hop options first
        p[8..24].copy_from_slice(&"2001:db8:1::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00:ec2::254".parse::<Ipv6Addr>().unwrap().octets());
        p[40] = 17; // then UDP
        p[41] = 0; // 8 bytes of options
        p[48 + 2..48 + 4].copy_from_slice(&53u16.to_be_bytes());
        let h = parse_ip(&p).unwrap();
        assert_eq!(h.dst, "fd00:ec2::254".parse::<IpAddr>().unwrap());
        assert_eq!((h.protocol, h.port), (17, 53));

        // Cut short: addresses still read, the port is unknown.
        assert_eq!(parse_ip(&v4_tcp_syn([1, 2, 3, 4], [169, 254, 169, 254], 80)[..21]).unwrap().port, 0);
        assert!(parse_ip(&[0x45, 0, 0]).is_none());
        assert!(parse_ip(&[0x10; 40]).is_none(), "not IP");
    }

    #[test]
    fn reports_and_keys() {
        let l = Logged {
            hook: Hook::Forward,
            generation: 3,
            enforced: true,
            src: "192.0.2.2".parse().unwrap(),
            dst: "169.254.169.254".parse().unwrap(),
            protocol: 6,
            port: 80,
            in_ifindex: Some(1),
            uid: None,
            gid: None,
        };
        let r = Packets::default().event(&l);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["event"], "forward_denied");
        assert_eq!(j["protocol"], "tcp");
        assert_eq!(j["family"], "ipv4");
        assert_eq!(j["in_interface"], "lo", "ifindex 1 is lo");
        assert!(j.get("uid").is_none());
        let out = Logged { hook: Hook::Output, uid: Some(0), gid: Some(0), in_ifindex: None, ..l.clone() };
        let j = serde_json::to_value(Packets::default().event(&out)).unwrap();
        assert_eq!((j["event"].as_str(), j["user"].as_str()), (Some("output_denied"), Some("root")));
        assert_ne!(aggregation_key(&l), aggregation_key(&out));
        assert_eq!(aggregation_key(&l), aggregation_key(&Logged { ..l.clone() }));
    }
}
