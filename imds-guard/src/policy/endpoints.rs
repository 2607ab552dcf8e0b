//! Metadata endpoints: presets and literal addresses → the lists the kernel compares against.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imds_guard_common::endpoint::{MAX_V4, MAX_V6};

/// Named endpoint sets a policy may list.
pub const PRESETS: &[(&str, &str, &[&str])] = &[
    ("aws-imds", "EC2 instance metadata service", &["169.254.169.254", "fd00:ec2::254"]),
    ("ecs-credentials", "ECS task credential endpoint", &["169.254.170.2"]),
    ("eks-pod-identity", "EKS Pod Identity agent", &["169.254.170.23", "fd00:ec2::23"]),
    // The other clouds' metadata services (IPv4; their IPv6 addresses are not listed here: give
    // them as literals). GCP, Azure and OCI share AWS's address.
    ("gcp-metadata", "GCP metadata server (metadata.google.internal)", &["169.254.169.254"]),
    ("azure-imds", "Azure Instance Metadata Service", &["169.254.169.254"]),
    ("azure-wireserver", "Azure WireServer (Azure advises restricting it to root)", &["168.63.129.16"]),
    ("oci-imds", "OCI instance metadata service", &["169.254.169.254"]),
    ("alibaba-imds", "Alibaba Cloud ECS metadata service", &["100.100.100.200"]),
];

pub const DEFAULT: &[&str] = &["aws-imds"];

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Endpoints {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Endpoints {
    /// Adds a preset name or a literal address. An IPv4-mapped IPv6 literal is the IPv4 address.
    pub fn add(&mut self, item: &str) -> Result<(), String> {
        if let Some((_, _, addrs)) = PRESETS.iter().find(|(name, _, _)| *name == item) {
            for a in *addrs {
                self.add_addr(a.parse().expect("preset addresses are valid"))?;
            }
            return Ok(());
        }
        let addr: IpAddr = item.parse().map_err(|_| {
            let names: Vec<_> = PRESETS.iter().map(|p| p.0).collect();
            format!("`{item}` is neither an endpoint preset ({}) nor an IP address", names.join(", "))
        })?;
        self.add_addr(addr)
    }

    fn add_addr(&mut self, addr: IpAddr) -> Result<(), String> {
        match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                self.add_addr(IpAddr::V4(v6.to_ipv4_mapped().expect("checked")))
            }
            IpAddr::V4(v4) => {
                if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                    return Err(format!("`{v4}` cannot be a metadata endpoint"));
                }
                if !self.v4.contains(&v4) {
                    if self.v4.len() == MAX_V4 {
                        return Err(format!("at most {MAX_V4} IPv4 endpoints are supported"));
                    }
                    self.v4.push(v4);
                }
                Ok(())
            }
            IpAddr::V6(v6) => {
                if v6.is_unspecified() || v6.is_multicast() {
                    return Err(format!("`{v6}` cannot be a metadata endpoint"));
                }
                if !self.v6.contains(&v6) {
                    if self.v6.len() == MAX_V6 {
                        return Err(format!("at most {MAX_V6} IPv6 endpoints are supported"));
                    }
                    self.v6.push(v6);
                }
                Ok(())
            }
        }
    }

    /// Network-byte-order words, as the kernel programs read `user_ip4`/`user_ip6`.
    #[must_use]
    pub fn v4_words(&self) -> Vec<u32> {
        self.v4.iter().map(|a| u32::from_ne_bytes(a.octets())).collect()
    }

    #[must_use]
    pub fn v6_words(&self) -> Vec<[u32; 4]> {
        self.v6
            .iter()
            .map(|a| {
                let o = a.octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                [w(0), w(4), w(8), w(12)]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_literals() {
        let mut e = Endpoints::default();
        e.add("aws-imds").unwrap();
        e.add("eks-pod-identity").unwrap();
        e.add("169.254.169.254").unwrap(); // duplicate is fine
        e.add("::ffff:169.254.170.2").unwrap(); // mapped is IPv4
        assert_eq!(e.v4.len(), 3);
        assert_eq!(e.v6.len(), 2);
        assert!(e.add("imds").unwrap_err().contains("aws-imds"));
        assert!(e.add("0.0.0.0").is_err());
        let mut azure = Endpoints::default();
        azure.add("azure-imds").unwrap();
        azure.add("azure-wireserver").unwrap();
        assert_eq!(
            azure.v4,
            ["169.254.169.254".parse::<Ipv4Addr>().unwrap(), "168.63.129.16".parse().unwrap()]
        );
        let mut ali = Endpoints::default();
        ali.add("alibaba-imds").unwrap();
        assert_eq!(ali.v4, ["100.100.100.200".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn too_many() {
        let mut e = Endpoints::default();
        for i in 1..=8 {
            e.add(&format!("10.0.0.{i}")).unwrap();
        }
        assert!(e.add("10.0.0.9").unwrap_err().contains("at most 8"));
    }
}
