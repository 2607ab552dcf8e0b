//! The policy's digest: SHA-256 of what the kernel enforces (mode, endpoints, every rule's keys
//! and treatment, the netfilter settings), shown by `check`, `status` and the events, and how the
//! reloader tells whether a re-resolution changed anything.

use imds_guard_common::rule::field;
use sha2::{Digest as _, Sha256};

use super::Policy;

impl Policy {
    pub(super) fn compute_digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.mode.name());
        h.update(self.default_imdsv1.name());
        h.update(self.raw_sockets.name());
        h.update(self.others_read.name());
        for p in self.others_prefixes.iter().flat_map(|l| l.iter()) {
            h.update(p.as_bytes());
            h.update([0]);
        }
        for a in &self.endpoints.v4 {
            h.update(a.octets());
        }
        for a in &self.endpoints.v6 {
            h.update(a.octets());
        }
        // Per key only the fields its shape constrains (the others are zero): a third of the
        // bytes for the common one-field rule, which keeps this small beside parsing.
        let mut buf = Vec::with_capacity(64);
        for r in &self.rules {
            buf.clear();
            buf.extend_from_slice(&r.index.to_le_bytes());
            for (k, level) in r.keys() {
                buf.push(u8::try_from(k.shape).expect("shape fits u8"));
                if k.shape & field::UID != 0 {
                    buf.extend_from_slice(&k.uid.to_le_bytes());
                }
                if k.shape & field::GID != 0 {
                    buf.extend_from_slice(&k.gid.to_le_bytes());
                }
                if k.shape & field::CGROUP != 0 {
                    buf.extend_from_slice(&k.cgroup_id.to_le_bytes());
                    buf.push(level.unwrap_or(0));
                }
                if k.shape & field::EXE != 0 {
                    buf.extend_from_slice(&k.exe_dev.to_le_bytes());
                    buf.extend_from_slice(&k.exe_ino.to_le_bytes());
                }
                if k.shape & field::COMM != 0 {
                    buf.extend_from_slice(&k.comm[0].to_le_bytes());
                    buf.extend_from_slice(&k.comm[1].to_le_bytes());
                }
            }
            buf.extend_from_slice(&[u8::from(r.is_pending()), r.imdsv1 as u8, r.read as u8]);
            for p in r.read_prefixes.iter().flat_map(|l| l.iter()) {
                buf.extend_from_slice(p.as_bytes());
                buf.push(0);
            }
            h.update(&buf);
        }
        h.update(self.netfilter.digest_input());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
