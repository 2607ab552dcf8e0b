//! Just enough of a BTF reader to find where kernel struct members are, so that the kernel
//! programs can follow `task_struct → mm → exe_file → f_inode` on *this* kernel. Rust eBPF has no
//! CO-RE relocations, so the offsets are taken from the running kernel's BTF at start-up and handed
//! to the programs in their config; without BTF, imds-guard refuses exe rules instead of guessing.
//!
//! (Hand-written rather than a dependency: aya-obj keeps struct members private, and btf-rs is
//! LGPL-2.1, awkward to link statically into an MIT/Apache binary. The format is small.)

use std::{borrow::Cow, collections::HashMap, path::Path};

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

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type for PTR/TYPEDEF/modifiers.
    size_or_type: u32,
    members: Vec<Member>,
    /// ARRAY: element type and number of elements.
    array: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    ty: u32,
    /// Bit offset (with the bitfield size in the top byte when the struct's kind_flag is set).
    offset: u32,
}

pub struct Btf {
    types: Vec<Type>, // index = type id; 0 is void
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
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
        Self::parse(&data).with_context(|| format!("parsing kernel BTF {}", path.display()))
    }

    pub fn parse(d: &[u8]) -> anyhow::Result<Self> {
        ensure!(u16_at(d, 0)? == MAGIC, "not BTF (bad magic)");
        let hdr_len = u32_at(d, 4)? as usize;
        let (type_off, type_len) = (u32_at(d, 8)? as usize, u32_at(d, 12)? as usize);
        let (str_off, str_len) = (u32_at(d, 16)? as usize, u32_at(d, 20)? as usize);
        let strings =
            d.get(hdr_len + str_off..hdr_len + str_off + str_len).context("truncated strings")?.to_vec();
        let tdata = d.get(hdr_len + type_off..hdr_len + type_off + type_len).context("truncated types")?;
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: vec![],
            array: None,
        }];
        let mut o = 0;
        while o < tdata.len() {
            let name_off = u32_at(tdata, o)?;
            let info = u32_at(tdata, o + 4)?;
            let size_or_type = u32_at(tdata, o + 8)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut members = Vec::new();
            let mut array = None;
            let extra = match kind {
                KIND_INT | 14 | 17 => 4, // INT, VAR, DECL_TAG
                KIND_ARRAY => {
                    array = Some((u32_at(tdata, o)?, u32_at(tdata, o + 8)?));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + 12 * i;
                        members.push(Member {
                            name_off: u32_at(tdata, m)?,
                            ty: u32_at(tdata, m + 4)?,
                            offset: u32_at(tdata, m + 8)?,
                        });
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen, // DATASEC, ENUM64
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                k => bail!("unknown BTF kind {k}"),
            };
            o += extra;
            types.push(Type { name_off, kind, kind_flag: info >> 31 == 1, size_or_type, members, array });
        }
        let mut btf = Btf { types, strings, structs: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.name(t.name_off).into_owned();
                btf.structs.entry(name).or_insert(u32::try_from(id)?);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let s = &self.strings[(off as usize).min(self.strings.len())..];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end])
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> &Type {
        loop {
            let t = &self.types[id as usize];
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return t,
            }
        }
    }

    /// Byte offset and byte size (0 for pointers' pointee-less view: pointers are 8) of
    /// `strukt.member`, looking into anonymous struct/union members too.
    pub fn member(&self, strukt: &str, member: &str) -> anyhow::Result<(u32, u32)> {
        let id = *self
            .structs
            .get(strukt)
            .with_context(|| format!("struct {strukt} is not in the kernel's BTF"))?;
        self.find(id, member, 0)?
            .with_context(|| format!("struct {strukt} has no member {member} in the kernel's BTF"))
    }

    fn find(&self, id: u32, member: &str, base_bits: u32) -> anyhow::Result<Option<(u32, u32)>> {
        let t = &self.types[id as usize];
        for m in &t.members {
            let bits = base_bits + if t.kind_flag { m.offset & 0x00ff_ffff } else { m.offset };
            if m.name_off == 0 {
                let inner = self.resolve(m.ty);
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    let inner_id = self.id_of(inner);
                    if let Some(found) = self.find(inner_id, member, bits)? {
                        return Ok(Some(found));
                    }
                }
                continue;
            }
            if self.name(m.name_off) == member {
                ensure!(
                    bits.is_multiple_of(8) && !(t.kind_flag && m.offset >> 24 != 0),
                    "{member} is a bitfield"
                );
                let r = self.resolve(m.ty);
                let scalar = |t: &Type| match t.kind {
                    KIND_PTR => 8,
                    KIND_INT | KIND_STRUCT | KIND_UNION => t.size_or_type,
                    _ => 0,
                };
                let size = match r.array {
                    Some((elem, n)) => scalar(self.resolve(elem)).saturating_mul(n),
                    None => scalar(r),
                };
                return Ok(Some((bits / 8, size)));
            }
        }
        Ok(None)
    }

    fn id_of(&self, t: &Type) -> u32 {
        let idx = self.types.iter().position(|x| std::ptr::eq(x, t)).expect("type from this BTF");
        u32::try_from(idx).expect("type ids fit u32")
    }
}

/// Offsets to follow from the current task to its executable's device and inode.
pub fn exe_offsets(btf: &Btf) -> anyhow::Result<imds_guard_common::config::ExeOffsets> {
    let want = |s: &str, m: &str, size: u32| -> anyhow::Result<u32> {
        let (off, sz) = btf.member(s, m)?;
        ensure!(sz == size, "{s}.{m} is {sz} bytes in this kernel's BTF, expected {size}");
        Ok(off)
    };
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
        // exe_file sits in mm_struct's anonymous struct: found through it.
        assert!(btf.member("mm_struct", "no_such_member").is_err());
        assert!(btf.member("no_such_struct_imdsg", "x").is_err());
    }

    #[test]
    fn rejects_non_btf() {
        assert!(Btf::parse(b"\x7fELF....................").is_err());
        assert!(Btf::parse(b"").is_err());
    }
}
