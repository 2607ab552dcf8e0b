//! Just enough of a BTF reader to find where kernel struct members are, so that the kernel
//! programs can follow `task_struct → mm → exe_file → f_inode` on *this* kernel. Rust eBPF has no
//! CO-RE relocations, so the offsets are taken from the running kernel's BTF at start-up and handed
//! to the programs in their config; without BTF, imds-guard refuses exe rules instead of guessing.
//!
//! (Hand-written rather than a dependency: aya-obj keeps struct members private, and btf-rs is
//! LGPL-2.1, awkward to link statically into an MIT/Apache binary. The format is small.)

use std::{borrow::Cow, path::Path};

use anyhow::{Context as _, bail, ensure};

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_ARRAY: u32 = 3;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One type record, read where it lies in the type section (nothing is copied at parse time).
#[derive(Clone, Copy, Debug)]
struct Type {
    id: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type for PTR/TYPEDEF/modifiers.
    size_or_type: u32,
    /// Offset of the record's kind-specific data (members, array) in the type section.
    extra: usize,
}

/// The kernel's BTF, indexed: each type's offset, and the named structs. A vmlinux BTF holds
/// ~150,000 types and weighs ~5 MB; copying every struct's members into vectors took ~12 ms of
/// each start, so records are read in place when asked for.
pub struct Btf {
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Offset of each type record in the type section; index = type id (0, void, is unused).
    offsets: Vec<u32>,
    /// Named structs: (name offset, type id), for the few lookups by name.
    structs: Vec<(u32, u32)>,
}

fn u16_at(d: &[u8], o: usize) -> anyhow::Result<u16> {
    Ok(u16::from_ne_bytes(d.get(o..o + 2).context("truncated BTF")?.try_into()?))
}

fn u32_at(d: &[u8], o: usize) -> anyhow::Result<u32> {
    Ok(u32::from_ne_bytes(d.get(o..o + 4).context("truncated BTF")?.try_into()?))
}

impl Btf {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading kernel BTF {}", path.display()))?;
        Self::parse(data).with_context(|| format!("parsing kernel BTF {}", path.display()))
    }

    pub fn parse(d: impl Into<Vec<u8>>) -> anyhow::Result<Self> {
        let d = d.into();
        ensure!(u16_at(&d, 0)? == MAGIC, "not BTF (bad magic)");
        let hdr_len = u32_at(&d, 4)? as usize;
        let (type_off, type_len) = (u32_at(&d, 8)? as usize, u32_at(&d, 12)? as usize);
        let (str_off, str_len) = (u32_at(&d, 16)? as usize, u32_at(&d, 20)? as usize);
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        d.get(strings.clone()).context("truncated strings")?;
        let tdata = d.get(types.clone()).context("truncated types")?;
        let mut offsets = vec![0];
        let mut structs = Vec::new();
        let mut o = 0;
        while o < tdata.len() {
            let start = o;
            let name_off = u32_at(tdata, o)?;
            let info = u32_at(tdata, o + 4)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            o += match kind {
                KIND_INT | 14 | 17 => 4, // INT, VAR, DECL_TAG
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => 12 * vlen,
                6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen, // DATASEC, ENUM64
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                k => bail!("unknown BTF kind {k}"),
            };
            ensure!(o <= tdata.len(), "truncated BTF type {}", offsets.len());
            if kind == KIND_STRUCT && name_off != 0 {
                structs.push((name_off, u32::try_from(offsets.len())?));
            }
            offsets.push(u32::try_from(start)?);
        }
        Ok(Btf { data: d, types, strings, offsets, structs })
    }

    fn name_bytes(&self, off: u32) -> &[u8] {
        let s = &self.data[self.strings.clone()];
        let s = &s[(off as usize).min(s.len())..];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        String::from_utf8_lossy(self.name_bytes(off))
    }

    fn tdata(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    /// The record of type `id` (checked at parse time to lie within the type section).
    fn get(&self, id: u32) -> anyhow::Result<Type> {
        let o = *self.offsets.get(id as usize).filter(|_| id != 0).context("type id out of range")? as usize;
        let t = self.tdata();
        let info = u32_at(t, o + 4)?;
        Ok(Type {
            id,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            size_or_type: u32_at(t, o + 8)?,
            extra: o + 12,
        })
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> anyhow::Result<Type> {
        // A chain longer than the number of types is a loop.
        for _ in 0..self.offsets.len() {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(t),
            }
        }
        bail!("type {id} refers to itself")
    }

    /// Byte offset and byte size (0 for pointers' pointee-less view: pointers are 8) of
    /// `strukt.member`, looking into anonymous struct/union members too.
    pub fn member(&self, strukt: &str, member: &str) -> anyhow::Result<(u32, u32)> {
        let (bits, size) = self.member_bits(strukt, member, false)?;
        Ok((bits / 8, size))
    }

    /// A one-bit bitfield member: the byte that holds it and the bit's mask in that byte
    /// (little-endian bit order, as on x86_64 and arm64).
    pub fn flag_bit(&self, strukt: &str, member: &str) -> anyhow::Result<(u32, u8)> {
        let (bits, size) = self.member_bits(strukt, member, true)?;
        ensure!(size == 1, "{strukt}.{member} is a {size}-bit field, not a flag");
        Ok((bits / 8, 1u8 << (bits % 8)))
    }

    /// The bit offset of `member` in `strukt` and its size: bytes, or bits for a bitfield (only
    /// taken when `bitfield`).
    fn member_bits(&self, strukt: &str, member: &str, bitfield: bool) -> anyhow::Result<(u32, u32)> {
        let id = self
            .structs
            .iter()
            .find(|(name, _)| self.name_bytes(*name) == strukt.as_bytes())
            .map(|&(_, id)| id)
            .with_context(|| format!("struct {strukt} is not in the kernel's BTF"))?;
        self.find(id, member, 0, 0, bitfield)?
            .with_context(|| format!("struct {strukt} has no member {member} in the kernel's BTF"))
    }

    fn find(
        &self,
        id: u32,
        member: &str,
        base_bits: u32,
        depth: u32,
        bitfield: bool,
    ) -> anyhow::Result<Option<(u32, u32)>> {
        ensure!(depth < 32, "anonymous members nest too deep");
        let (t, td) = (self.get(id)?, self.tdata());
        for i in 0..t.vlen {
            let m = t.extra + 12 * i;
            let (name_off, ty, offset) = (u32_at(td, m)?, u32_at(td, m + 4)?, u32_at(td, m + 8)?);
            let bits = base_bits + if t.kind_flag { offset & 0x00ff_ffff } else { offset };
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find(inner.id, member, bits, depth + 1, bitfield)?
                {
                    return Ok(Some(found));
                }
                continue;
            }
            if self.name(name_off) == member {
                if bitfield && t.kind_flag && offset >> 24 != 0 {
                    return Ok(Some((bits, offset >> 24)));
                }
                ensure!(
                    bits.is_multiple_of(8) && !(t.kind_flag && offset >> 24 != 0),
                    "{member} is a bitfield"
                );
                let r = self.resolve(ty)?;
                let scalar = |t: &Type| match t.kind {
                    KIND_PTR => 8,
                    KIND_INT | KIND_STRUCT | KIND_UNION => t.size_or_type,
                    _ => 0,
                };
                let size = if r.kind == KIND_ARRAY {
                    let (elem, n) = (u32_at(td, r.extra)?, u32_at(td, r.extra + 8)?);
                    scalar(&self.resolve(elem)?).saturating_mul(n)
                } else {
                    scalar(&r)
                };
                return Ok(Some((bits, size)));
            }
        }
        Ok(None)
    }
}

/// Offsets to follow from the current task to its executable's device and inode.
pub fn exe_offsets(btf: &Btf) -> anyhow::Result<imds_guard_common::config::ExeOffsets> {
    let want = |s: &str, m: &str, size: u32| -> anyhow::Result<u32> {
        let (off, sz) = btf.member(s, m)?;
        ensure!(sz == size, "{s}.{m} is {sz} bytes in this kernel's BTF, expected {size}");
        Ok(off)
    };
    let fastopen_connect = btf.flag_bit("tcp_sock", "fastopen_connect")?;
    Ok(imds_guard_common::config::ExeOffsets {
        task_mm: want("task_struct", "mm", 8)?,
        mm_exe_file: want("mm_struct", "exe_file", 8)?,
        file_inode: want("file", "f_inode", 8)?,
        inode_ino: want("inode", "i_ino", 8)?,
        inode_sb: want("inode", "i_sb", 8)?,
        sb_dev: want("super_block", "s_dev", 4)?,
        task_real_parent: want("task_struct", "real_parent", 8)?,
        task_tgid: want("task_struct", "tgid", 4)?,
        task_comm: want("task_struct", "comm", 16)?,
        file_dentry: want("file", "f_path", 16)? + want("path", "dentry", 8)?,
        dentry_name: want("dentry", "d_name", 16)? + want("qstr", "name", 8)?,
        dentry_parent: want("dentry", "d_parent", 8)?,
        task_ptrace: want("task_struct", "ptrace", 4)?,
        task_group_leader: want("task_struct", "group_leader", 8)?,
        // Absent from kernels built without MPTCP, which then have no MPTCP sockets to judge.
        tcp_is_mptcp: btf
            .member("tcp_sock", "is_mptcp")
            .ok()
            .filter(|&(_, size)| size == 1)
            .map_or(0, |(off, _)| off),
        tcp_fastopen_req: want("tcp_sock", "fastopen_req", 8)?,
        tcp_fastopen_connect: fastopen_connect.0,
        tcp_fastopen_connect_mask: u32::from(fastopen_connect.1),
        tcp_write_seq: want("tcp_sock", "write_seq", 4)?,
        sock_rcvlowat: want("sock", "sk_rcvlowat", 4)?,
        task_cgroups: want("task_struct", "cgroups", 8)?,
        css_set_dfl_cgrp: want("css_set", "dfl_cgrp", 8)?,
        cgroup_level: want("cgroup", "level", 4)?,
        cgroup_kn: want("cgroup", "kn", 8)?,
        kernfs_node_id: want("kernfs_node", "id", 8)?,
        // Flexible arrays (BTF gives them no size): ids before Linux 6.0, pointers since.
        cgroup_ancestor_ids: btf.member("cgroup", "ancestor_ids").map_or(0, |(off, _)| off),
        cgroup_ancestors: btf.member("cgroup", "ancestors").map_or(0, |(off, _)| off),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exe_chain_in_this_kernel() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true: this kernel has no BTF ({}), which exe rules and attribution need",
                p.display()
            );
            eprintln!("SKIPPED: no kernel BTF here");
            return;
        }
        let btf = Btf::from_file(p).unwrap();
        let o = exe_offsets(&btf).unwrap();
        assert!(o.task_mm > 0 && o.mm_exe_file > 0 && o.inode_sb > 0, "{o:?}");
        assert!(o.task_real_parent > 0 && o.task_tgid > 0 && o.task_comm > 0, "{o:?}");
        assert!(o.task_ptrace > 0 && o.task_group_leader > 0, "{o:?}");
        assert!(o.tcp_fastopen_req > 0 && o.tcp_fastopen_connect > 0, "{o:?}");
        assert!(o.tcp_write_seq > o.tcp_fastopen_connect.min(o.tcp_fastopen_req) / 2, "{o:?}");
        assert!(o.sock_rcvlowat > 0 && o.sock_rcvlowat < o.tcp_write_seq, "{o:?}");
        assert_eq!(o.tcp_fastopen_connect_mask.count_ones(), 1, "{o:?}");
        assert!(btf.flag_bit("task_struct", "comm").is_err(), "not a bitfield");
        assert!(o.task_cgroups > 0 && o.cgroup_kn > 0 && o.kernfs_node_id > 0, "{o:?}");
        assert!((o.cgroup_ancestor_ids == 0) != (o.cgroup_ancestors == 0), "exactly one form: {o:?}");
        if Path::new("/proc/sys/net/mptcp").exists() {
            assert!(o.tcp_is_mptcp > 0, "this kernel has MPTCP: {o:?}");
        }
        // exe_file sits in mm_struct's anonymous struct: found through it.
        assert!(btf.member("mm_struct", "no_such_member").is_err());
        assert!(btf.member("no_such_struct_imdsg", "x").is_err());
    }

    #[test]
    fn rejects_non_btf() {
        assert!(Btf::parse(b"\x7fELF....................".to_vec()).is_err());
        assert!(Btf::parse(Vec::new()).is_err());
    }
}
