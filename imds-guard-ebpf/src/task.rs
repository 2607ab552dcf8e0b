//! What the programs read from the current task through the member offsets the daemon took from
//! this kernel's BTF: the executable (for `exe` rules and events) and the ancestry (for events).

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use imds_guard_common::{
    config::ExeOffsets,
    event::{ANCESTORS, EXE_COMPONENTS, TaskInfo},
};

/// `*(base + off)` as a `T`, or `None` (null base, or a read that failed).
#[inline(always)]
pub fn read_at<T>(base: u64, off: u32) -> Option<T> {
    at(base, off)
}

/// A kernel pointer the verifier types (a socket, say) as a plain number, so that a member can
/// be read at an offset from it (the verifier forbids arithmetic on such pointers): copied out of
/// the stack by a helper, which the verifier sees as writing an unknown scalar. 0 on failure.
#[inline(always)]
pub fn address_of<P>(ptr: *mut P) -> u64 {
    let slot = ptr;
    // SAFETY: reads the 8 bytes of a local.
    unsafe { bpf_probe_read_kernel(core::ptr::addr_of!(slot).cast::<u64>()).unwrap_or(0) }
}

/// The current task's comm, read through its offset (`bpf_get_current_comm` is not offered to
/// every program type on every kernel: not to `sk_msg` on 5.10). Zeroes when unknown.
#[inline(always)]
pub fn current_comm(o: &ExeOffsets) -> [u8; 16] {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    if o.task_comm == 0 {
        return [0; 16];
    }
    at(task, o.task_comm).unwrap_or([0; 16])
}

/// The current task's cgroup (v2): `task->cgroups->dfl_cgrp`, 0 when unknown.
#[inline(always)]
fn current_cgroup(o: &ExeOffsets) -> u64 {
    if o.task_cgroups == 0 {
        return 0;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    at::<u64>(task, o.task_cgroups).and_then(|css| at::<u64>(css, o.css_set_dfl_cgrp)).unwrap_or(0)
}

/// The id of the current task's cgroup, read through the offsets, as `bpf_get_current_cgroup_id`
/// gives it (for programs without that helper). 0 when unknown.
#[inline(always)]
pub fn current_cgroup_id(o: &ExeOffsets) -> u64 {
    at::<u64>(current_cgroup(o), o.cgroup_kn).and_then(|kn| at::<u64>(kn, o.kernfs_node_id)).unwrap_or(0)
}

/// The id of the current task's cgroup ancestor at `level` (the root is 0), as
/// `bpf_get_current_ancestor_cgroup_id` gives it: 0 past the task's own level, or when unknown.
#[inline(always)]
pub fn ancestor_cgroup_id(o: &ExeOffsets, level: u32) -> u64 {
    let cg = current_cgroup(o);
    let Some(own) = at::<i32>(cg, o.cgroup_level) else { return 0 };
    if own < 0 || level > own as u32 || level > 255 {
        return 0;
    }
    if o.cgroup_ancestor_ids != 0 {
        return at::<u64>(cg, o.cgroup_ancestor_ids + 8 * level).unwrap_or(0);
    }
    if o.cgroup_ancestors == 0 {
        return 0;
    }
    at::<u64>(cg, o.cgroup_ancestors + 8 * level)
        .and_then(|a| at::<u64>(a, o.cgroup_kn))
        .and_then(|kn| at::<u64>(kn, o.kernfs_node_id))
        .unwrap_or(0)
}

/// The current process's id (tgid), read through the offsets. 0 when unknown.
#[inline(always)]
pub fn current_tgid(o: &ExeOffsets) -> u32 {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    if o.task_tgid == 0 {
        return 0;
    }
    at::<u32>(task, o.task_tgid).unwrap_or(0)
}

/// The current thread, or the leader of its process, is being traced (`task->ptrace` non-zero).
/// False where the offsets are unknown.
#[inline(always)]
pub fn traced(o: &ExeOffsets) -> bool {
    if o.task_ptrace == 0 || o.task_group_leader == 0 {
        return false;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let mine: u32 = at(task, o.task_ptrace).unwrap_or(0);
    let leader: u64 = at(task, o.task_group_leader).unwrap_or(0);
    let theirs: u32 = at(leader, o.task_ptrace).unwrap_or(0);
    mine != 0 || theirs != 0
}

#[inline(always)]
fn at<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address (it fails instead of faulting).
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// The device and inode of the current process's executable (`mm->exe_file`). (0, 0) when there
/// is none (a kernel thread) or a read fails: then no exe rule matches, the safe side.
#[inline(always)]
pub fn current_exe(o: &ExeOffsets) -> (u64, u64) {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let exe = (|| {
        let mm: u64 = at(task, o.task_mm)?;
        let file: u64 = at(mm, o.mm_exe_file)?;
        let inode: u64 = at(file, o.file_inode)?;
        let ino: u64 = at(inode, o.inode_ino)?;
        let sb: u64 = at(inode, o.inode_sb)?;
        let dev: u32 = at(sb, o.sb_dev)?;
        Some((u64::from(dev), ino))
    })();
    exe.unwrap_or((0, 0))
}

/// The executable's path within its filesystem, leaf first, from the dentry chain.
#[inline(always)]
fn exe_path(info: &mut TaskInfo, o: &ExeOffsets) {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let Some(mm) = at::<u64>(task, o.task_mm) else { return };
    let Some(file) = at::<u64>(mm, o.mm_exe_file) else { return };
    let Some(mut dentry) = at::<u64>(file, o.file_dentry) else { return };
    let mut depth = 0u32;
    for slot in info.exe_names.iter_mut().take(EXE_COMPONENTS) {
        let Some(parent) = at::<u64>(dentry, o.dentry_parent) else { break };
        if parent == dentry {
            // The filesystem's root.
            info.exe_depth = depth;
            return;
        }
        let Some(name) = at::<u64>(dentry, o.dentry_name) else { break };
        // SAFETY: reads at most the slot's length from a kernel address; fails instead of faulting.
        if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, slot) }.is_err() {
            break;
        }
        depth += 1;
        dentry = parent;
    }
    // Deeper than recorded, or a read failed: mark the path as cut at the top.
    info.exe_depth = EXE_COMPONENTS as u32 + 1;
}

/// Fills `info` (zeroed by the caller) with the executable and up to [`ANCESTORS`] ancestors
/// (`real_parent` chain; it ends at pid 1's parent, the idle task, pid 0). Only on the report
/// path: a handful of reads, never on a connect that is not reported.
#[inline(always)]
pub fn fill(info: &mut TaskInfo, o: &ExeOffsets) {
    if o.task_real_parent == 0 {
        return;
    }
    let (dev, ino) = current_exe(o);
    info.exe_dev = dev;
    info.exe_ino = ino;
    exe_path(info, o);
    // SAFETY: plain helper call.
    let mut task = unsafe { bpf_get_current_task() };
    for a in info.ancestors.iter_mut().take(ANCESTORS) {
        let Some(parent) = at::<u64>(task, o.task_real_parent) else { return };
        let Some(pid) = at::<u32>(parent, o.task_tgid) else { return };
        if pid == 0 || parent == task {
            return;
        }
        a.pid = pid;
        if let Some(comm) = at::<[u8; 16]>(parent, o.task_comm) {
            a.comm = comm;
        }
        task = parent;
    }
}
