//! bpf() commands aya does not offer: an RCU barrier, replacing a link's program, opening a pin
//! of any type, probing for sockmap links, attaching an sk_msg program to its map without a link
//! (so that nothing detaches it when the daemon exits), pinning an object by descriptor, detaching
//! a link, and asking whether a link is still attached.
//!
//! ## Waiting until no kernel program still runs with an old policy generation
//!
//! The kernel waits for an RCU grace period (`synchronize_rcu()`) whenever userspace updates a
//! map-in-map (`maybe_wait_bpf_programs()` in kernel/bpf/syscall.c), so that userspace knows every
//! non-sleepable program that could have seen the old value has finished. cgroup connect programs
//! run inside an RCU read-side section, so after one such update, a program that read the old
//! generation number has returned. We keep a one-slot `ARRAY_OF_MAPS` that no program uses just for
//! this, and update it after each generation switch, before deleting the old generation's rules.
//! aya has no constructor for a map-in-map without an object file, so this is two raw syscalls.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn create(map_type: u32, inner_map_fd: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..MapCreateAttr::default()
    };
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd fits i32")) })
}

pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        let inner = create(BPF_MAP_TYPE_ARRAY, 0)?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd().cast_unsigned())?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns once every BPF program that was running when it was called has finished.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd().cast_unsigned();
        let mut attr = MapUpdateAttr {
            map_fd: self.outer.as_raw_fd().cast_unsigned(),
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            flags: 0,
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Replaces the program of a bpf_link in place (`BPF_LINK_UPDATE`): the hook never goes without a
/// program. Works for cgroup links (connect, sockops) and, since Linux 6.10, sockmap links.
pub fn link_update(link: std::os::fd::BorrowedFd<'_>, prog: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd().cast_unsigned(),
        new_prog_fd: prog.as_raw_fd().cast_unsigned(),
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned BPF object (a link here).
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) })
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SK_MSG: u32 = 16;
const BPF_SK_MSG_VERDICT: u32 = 7;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;

/// The head of `bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `BPF_CGROUP_SETSOCKOPT`, the attach type of a `cgroup/setsockopt` program.
pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Attaches a loaded cgroup program to the cgroup `target` through a new bpf_link
/// (`BPF_LINK_CREATE`, Linux 5.7+): for the program types whose link aya 0.16 does not turn into
/// an `FdLink` (`cgroup/setsockopt`).
pub fn cgroup_link_create(
    prog: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd().cast_unsigned(),
        target_fd: target.as_raw_fd().cast_unsigned(),
        attach_type,
        flags: 0,
    };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) })
}

/// Whether an `sk_msg` program can be attached to a sockhash through a bpf_link (Linux 6.10),
/// which is what keeps the message hook attached when the daemon exits. Loads a two-instruction
/// program and asks for a link to an invalid map fd: a kernel that has such links looks the map up
/// and answers EBADF; one that does not refuses the link type with EINVAL.
pub fn sk_msg_link_supported() -> io::Result<bool> {
    // r0 = 1 (SK_PASS); exit
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SK_MSG,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
    };
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) };
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd().cast_unsigned(),
        target_fd: u32::MAX,
        attach_type: BPF_SK_MSG_VERDICT,
        flags: 0,
    };
    match sys_bpf(BPF_LINK_CREATE, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
        Ok(fd) => {
            // Cannot happen (the map fd is invalid); do not leak it if it does.
            // SAFETY: a new file descriptor that nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) });
            Ok(true)
        }
    }
}

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// A hook on the sockhash a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockmapHook {
    /// `sk_msg` (`BPF_SK_MSG_VERDICT`): what a process writes.
    Msg,
    /// `sk_skb` stream verdict (`BPF_SK_SKB_STREAM_VERDICT`): what a connection receives.
    StreamVerdict,
}

impl SockmapHook {
    const fn attach_type(self) -> u32 {
        match self {
            SockmapHook::Msg => BPF_SK_MSG_VERDICT,
            SockmapHook::StreamVerdict => BPF_SK_SKB_STREAM_VERDICT,
        }
    }
}

/// Attaches a program to a sockhash the way kernels before 6.10 do it (`BPF_PROG_ATTACH`): the
/// map holds the program, so it stays attached for as long as the map lives (pinned: after the
/// daemon exits), and a later attach of another program replaces it in one step (the kernel swaps
/// the map's program pointer), so the hook never goes without one.
pub fn sockmap_prog_attach(
    map: std::os::fd::BorrowedFd<'_>,
    prog: std::os::fd::BorrowedFd<'_>,
    hook: SockmapHook,
) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: map.as_raw_fd().cast_unsigned(),
        attach_bpf_fd: prog.as_raw_fd().cast_unsigned(),
        attach_type: hook.attach_type(),
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// Detaches `prog` from the sockhash (`BPF_PROG_DETACH`; the kernel checks it is the attached one).
pub fn sockmap_prog_detach(
    map: std::os::fd::BorrowedFd<'_>,
    prog: std::os::fd::BorrowedFd<'_>,
    hook: SockmapHook,
) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: map.as_raw_fd().cast_unsigned(),
        attach_bpf_fd: prog.as_raw_fd().cast_unsigned(),
        attach_type: hook.attach_type(),
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    sys_bpf(BPF_PROG_DETACH, &mut attr).map(drop)
}

const BPF_OBJ_PIN: libc::c_long = 6;

/// Pins a BPF object (a map or a link) at `path` on a bpffs.
pub fn obj_pin(fd: std::os::fd::BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut attr =
        ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd().cast_unsigned(), file_flags: 0 };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches a link from its hook (`BPF_LINK_DETACH`) whoever else holds it: the program stops
/// running at once, and the link stays as an empty shell for the holders of its descriptors.
pub fn link_detach(link: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let mut attr: u32 = link.as_raw_fd().cast_unsigned();
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_SOCKMAP: u32 = 14;

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_link_info`.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// The union: `cgroup.cgroup_id` (u64) or `sockmap.map_id` (u32, the first four bytes).
    target: u64,
    _rest: [u64; 3],
}

/// Whether a link is still attached to its hook: a cgroup link reports the id of its cgroup, a
/// sockmap link the id of its map, and 0 once it was detached (`BPF_LINK_DETACH`, or its cgroup
/// was removed).
pub fn link_attached(link: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let mut info = LinkInfo::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: link.as_raw_fd().cast_unsigned(),
        info_len: u32::try_from(size_of::<LinkInfo>()).expect("small"),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let first_word = u32::from_ne_bytes(info.target.to_ne_bytes()[..4].try_into().expect("4 bytes"));
    Ok(match info.link_type {
        BPF_LINK_TYPE_CGROUP => info.target != 0,
        BPF_LINK_TYPE_SOCKMAP => first_word != 0,
        _ => true,
    })
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `bpf_attr.batch`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] → values[i]` in one `BPF_MAP_UPDATE_BATCH` (Linux 5.6). Returns how many were
/// written, which is fewer than asked when the map fills up (then with the error).
pub fn map_update_batch<K: Copy, V: Copy>(
    map: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> (usize, io::Result<()>) {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd().cast_unsigned(),
        elem_flags: 0,
        flags: 0,
    };
    let r = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map(drop);
    // The kernel reports in `count` how many elements it processed, also on error.
    (attr.count as usize, r)
}

/// Reads `key`'s value straight into `value` (`BPF_MAP_LOOKUP_ELEM`): for values too large to
/// pass through the stack (aya's `Array::get` returns them by value; the read lists' 148 KB
/// overflowed the installer thread's stack in a debug build). `V` must be plain integers.
pub fn map_lookup_elem_into<K: Copy, V: Copy>(
    map: std::os::fd::BorrowedFd<'_>,
    key: &K,
    value: &mut V,
) -> io::Result<()> {
    elem(BPF_MAP_LOOKUP_ELEM, map, key, std::ptr::from_mut(value) as u64)
}

/// Writes `value` at `key` (`BPF_MAP_UPDATE_ELEM`, `BPF_ANY`) from where it is.
pub fn map_update_elem<K: Copy, V: Copy>(
    map: std::os::fd::BorrowedFd<'_>,
    key: &K,
    value: &V,
) -> io::Result<()> {
    elem(BPF_MAP_UPDATE_ELEM, map, key, std::ptr::from_ref(value) as u64)
}

/// One element command on `map` with `key` and the value's address (0: none).
fn elem<K: Copy>(cmd: libc::c_long, map: std::os::fd::BorrowedFd<'_>, key: &K, value: u64) -> io::Result<()> {
    let mut attr = MapUpdateAttr {
        map_fd: map.as_raw_fd().cast_unsigned(),
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value,
        flags: 0,
    };
    sys_bpf(cmd, &mut attr).map(drop)
}

/// Deletes `key` (`BPF_MAP_DELETE_ELEM`); a key that is not there is `ENOENT`.
pub fn map_delete_elem<K: Copy>(map: std::os::fd::BorrowedFd<'_>, key: &K) -> io::Result<()> {
    elem(BPF_MAP_DELETE_ELEM, map, key, 0)
}

/// Deletes `keys` in one `BPF_MAP_DELETE_BATCH`; keys that are not there are an error (ENOENT)
/// after the ones before them were deleted, so callers pass keys they know are present.
pub fn map_delete_batch<K: Copy>(map: std::os::fd::BorrowedFd<'_>, keys: &[K]) -> (usize, io::Result<()>) {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: 0,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd().cast_unsigned(),
        elem_flags: 0,
        flags: 0,
    };
    let r = sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr).map(drop);
    (attr.count as usize, r)
}
