//! `[netfilter]` of the policy, validated: what the nftables layer ([`crate::netfilter`]) does
//! with forwarded packets, and whether it replaces the cgroup programs (reduced mode).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use toml::Spanned;

use super::{
    schema::NetfilterTable,
    source::{ConfigError, Source},
};

/// Default NFLOG group the rules log to (169, as in 169.254.169.254).
pub const DEFAULT_NFLOG_GROUP: u16 = 169;

/// Whether the nftables output rules replace the cgroup programs (`[netfilter] reduced_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReducedMode {
    /// Only when this kernel cannot run the cgroup programs (default).
    Auto,
    /// Never: without the cgroup programs `run` fails.
    Off,
    /// Always: the cgroup programs are not attached (for hosts that must not use them, and tests).
    On,
}

/// A source prefix that forwarded packets may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Net {
    /// `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `x::/n`. Host bits must be zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or prefix (a.b.c.d/n, x:y::/n)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))),
        };
        if masked != addr {
            return Err(format!(
                "`{text}` has bits set past the prefix length; did you mean `{masked}/{len}`?"
            ));
        }
        Ok(Net { addr, len })
    }
}

const fn mask32(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

const fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - len) }
}

/// `[netfilter]`, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Judge forwarded packets to the endpoints (default true).
    pub forward: bool,
    /// Input interfaces (`iifname`, `*` at the end for a prefix) whose forwarded packets are not
    /// judged here.
    pub forward_allow_interfaces: Vec<String>,
    /// Source prefixes whose forwarded packets are not judged here.
    pub forward_allow_sources: Vec<Net>,
    pub reduced_mode: ReducedMode,
    pub nflog_group: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            forward: true,
            forward_allow_interfaces: Vec::new(),
            forward_allow_sources: Vec::new(),
            reduced_mode: ReducedMode::Auto,
            nflog_group: DEFAULT_NFLOG_GROUP,
        }
    }
}

impl Settings {
    /// Validates `[netfilter]`; errors point at the offending value.
    pub fn resolve(source: &Source, table: Option<&Spanned<NetfilterTable>>) -> Result<Self, ConfigError> {
        let mut s = Settings::default();
        let Some(t) = table.map(Spanned::get_ref) else { return Ok(s) };
        if let Some(f) = &t.forward {
            s.forward = *f.get_ref();
        }
        for i in t.forward_allow_interfaces.iter().flat_map(|l| l.get_ref()) {
            check_ifname(i.get_ref()).map_err(|m| source.error_at(Some(i.span()), m))?;
            if !s.forward_allow_interfaces.contains(i.get_ref()) {
                s.forward_allow_interfaces.push(i.get_ref().clone());
            }
        }
        for n in t.forward_allow_sources.iter().flat_map(|l| l.get_ref()) {
            let net = Net::parse(n.get_ref()).map_err(|m| source.error_at(Some(n.span()), m))?;
            if net.len == 0 {
                return Err(source.error_at(
                    Some(n.span()),
                    format!(
                        "`{}` would let every forwarded packet through; use forward = false instead",
                        n.get_ref()
                    ),
                ));
            }
            if !s.forward_allow_sources.contains(&net) {
                s.forward_allow_sources.push(net);
            }
        }
        if let Some(r) = &t.reduced_mode {
            s.reduced_mode = match r.get_ref().as_str() {
                "auto" => ReducedMode::Auto,
                "off" => ReducedMode::Off,
                "on" => ReducedMode::On,
                other => {
                    return Err(source.error_at(
                        Some(r.span()),
                        format!("unknown reduced_mode `{other}`: expected \"auto\", \"off\" or \"on\""),
                    ));
                }
            };
        }
        if let Some(g) = &t.nflog_group {
            s.nflog_group = *g.get_ref();
        }
        Ok(s)
    }

    /// Bytes that identify these settings, for the policy digest.
    #[must_use]
    pub fn digest_input(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An interface name as `iifname` compares it: 1 to 15 bytes, no whitespace, quotes or `/`, and
/// `*` only as the last character (a prefix match, e.g. `eni*`).
fn check_ifname(name: &str) -> Result<(), String> {
    let body = name.strip_suffix('*').unwrap_or(name);
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface `{name}` must be 1 to 15 bytes (the kernel's limit for interface names)"
        ));
    }
    if body.is_empty() {
        return Err("interface `*` would match every interface; use forward = false instead".into());
    }
    if let Some(c) =
        body.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '"' | '\\' | '*'))
    {
        return Err(format!(
            "interface `{name}` contains {c:?}, which no interface name has (only a trailing `*` is a wildcard)"
        ));
    }
    Ok(())
}
