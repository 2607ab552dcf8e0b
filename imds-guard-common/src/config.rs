//! Per-generation policy configuration read by the kernel programs.
//!
//! Reloads are atomic by generation: the daemon writes the new rules (keys carry the new generation
//! number) and the new [`GenConfig`] into the slot the live generation does not use, then switches
//! [`Active::generation`] with one map update. A program reads the generation once at its start and
//! judges the whole request by that generation's config and rules, so no request ever sees a mix of
//! two policies. The old generation's rules are deleted only after the switch.

use crate::rule::field;

/// Endpoint addresses a policy may list, per family.
pub const MAX_V4: usize = 8;
pub const MAX_V6: usize = 8;

/// Largest number of allow rules in one policy.
pub const MAX_RULES: u32 = 16_384;
/// Config slots: the live generation and the one being installed.
pub const GENERATION_SLOTS: u32 = 2;
/// Lookups a connect to a metadata endpoint may cost: one per rule shape without a cgroup, one per
/// (shape, cgroup depth) pair for shapes with one. A policy needing more is refused.
pub const MAX_PROBES: usize = 32;

/// One lookup the programs make: build the key of `shape` from the process's identity, taking the
/// cgroup ancestor at `level` when the shape has a cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    pub shape: u8,
    pub level: u8,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Report connects that match no rule, but let them through.
    Monitor = 0,
    /// Refuse connects that match no rule with EPERM, and report them.
    #[default]
    Enforce = 1,
}

impl Mode {
    #[must_use]
    pub const fn from_u32(v: u32) -> Self {
        if v == Mode::Monitor as u32 { Mode::Monitor } else { Mode::Enforce }
    }

    /// As the policy file, events and `status` spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }

    /// The mode a policy file names, if it names one.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Mode::Enforce, Mode::Monitor].into_iter().find(|m| m.name() == name)
    }
}

/// `raw_sockets = ...`: raw IPv4/IPv6 sockets (which can hand-craft packets to an endpoint past
/// the connect hooks) for processes that no `[[allow]]` table admits.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RawSockets {
    /// Not judged (the default).
    #[default]
    Allow = 0,
    /// `socket(AF_INET/AF_INET6, SOCK_RAW, ...)` fails with EPERM for them (monitor mode: reported).
    Deny = 1,
}

impl RawSockets {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RawSockets::Allow => "allow",
            RawSockets::Deny => "deny",
        }
    }
}

/// The live generation, the single entry of [`crate::maps::ACTIVE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Active {
    pub generation: u32,
    pub _pad: u32,
}

impl Active {
    #[inline(always)]
    #[must_use]
    pub const fn slot(&self) -> u32 {
        self.generation % GENERATION_SLOTS
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// The generation this slot holds; a program that finds another number here fails closed.
    pub generation: u32,
    /// [`Mode`] as u32.
    pub mode: u32,
    /// Default [`crate::rule::Imdsv1Action`] for processes no rule names.
    pub default_imdsv1: u32,
    /// Number of valid entries in `probes`.
    pub probe_count: u32,
    /// The lookups that find every rule a process can match (see [`GenConfig::set_probes`]).
    pub probes: [Probe; MAX_PROBES],
    pub v4_count: u32,
    pub v6_count: u32,
    /// IPv4 endpoints in network byte order, as in `bpf_sock_addr.user_ip4`.
    pub v4: [u32; MAX_V4],
    /// IPv6 endpoints as four network-byte-order words, as in `bpf_sock_addr.user_ip6`.
    pub v6: [[u32; 4]; MAX_V6],
    /// Non-zero when some rule names an executable: the programs then read the process's
    /// executable identity with `exe_offsets`.
    pub needs_exe: u32,
    pub exe_offsets: ExeOffsets,
    /// cgroup v2 id of the cgroup the programs are attached to (for `status`; not read by programs).
    pub attach_cgroup_id: u64,
    /// Number of `[[allow]]` tables in the policy (for `status`).
    pub rule_count: u32,
    /// The strictest [`crate::rule::Imdsv1Action`] of the policy (its default and every table's):
    /// what the message hook applies to a metadata connection whose state it does not find (one
    /// no connect hook of this map layout judged: opened before the guard started, or before an
    /// upgrade that changed the layout; or whose storage could not be created). Unknown
    /// connections get no more than the most any workload gets.
    pub strictest_imdsv1: u32,
    /// [`RawSockets`] as u32: whether processes no table admits may open raw IPv4/IPv6 sockets.
    pub raw_sockets: u32,
    /// [`crate::rule::Read`] as u32: what processes no table admits may read (`read = ...` at the
    /// top of the policy). `Nothing` (the default): refused at connect.
    pub others_read: u32,
    /// The strictest `read` of any table and of `others_read` short of `Nothing`: what a
    /// connection the connect hooks did not judge gets (like `strictest_imdsv1`).
    pub strictest_read: u32,
    /// Non-zero when the response hook is attached (credential attribution, set by the daemon
    /// for the kernel it runs on): only then does the message hook watch the responses to
    /// requests for credentials.
    pub credentials: u32,
    /// SHA-256 of the policy's canonical form, shown by `status`.
    pub digest: [u8; 32],
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            generation: 0,
            mode: Mode::Enforce as u32,
            default_imdsv1: crate::rule::Imdsv1Action::Log as u32,
            probe_count: 0,
            probes: [Probe { shape: 0, level: 0 }; MAX_PROBES],
            v4_count: 0,
            v6_count: 0,
            v4: [0; MAX_V4],
            v6: [[0; 4]; MAX_V6],
            needs_exe: 0,
            exe_offsets: ExeOffsets {
                task_mm: 0,
                mm_exe_file: 0,
                file_inode: 0,
                inode_ino: 0,
                inode_sb: 0,
                sb_dev: 0,
                task_real_parent: 0,
                task_tgid: 0,
                task_comm: 0,
                file_dentry: 0,
                dentry_name: 0,
                dentry_parent: 0,
                task_ptrace: 0,
                task_group_leader: 0,
                tcp_is_mptcp: 0,
                tcp_fastopen_req: 0,
                tcp_fastopen_connect: 0,
                tcp_fastopen_connect_mask: 0,
                tcp_write_seq: 0,
                sock_rcvlowat: 0,
                task_cgroups: 0,
                css_set_dfl_cgrp: 0,
                cgroup_level: 0,
                cgroup_kn: 0,
                kernfs_node_id: 0,
                cgroup_ancestor_ids: 0,
                cgroup_ancestors: 0,
            },
            attach_cgroup_id: 0,
            rule_count: 0,
            strictest_imdsv1: crate::rule::Imdsv1Action::Log as u32,
            raw_sockets: RawSockets::Allow as u32,
            others_read: crate::rule::Read::Nothing as u32,
            strictest_read: crate::rule::Read::All as u32,
            credentials: 0,
            digest: [0; 32],
        }
    }
}

/// Byte offsets, from the running kernel's BTF, of the members the programs follow from the
/// current task to its executable: `task->mm->exe_file->f_inode->{i_ino, i_sb->s_dev}`, and to its
/// ancestors: `task->real_parent`, `task->tgid`, `task->comm`. All zero: unknown (no BTF), then
/// nothing is followed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeOffsets {
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `file->f_path.dentry`, `dentry->d_name.name`, `dentry->d_parent`: the executable's path.
    pub file_dentry: u32,
    pub dentry_name: u32,
    pub dentry_parent: u32,
    /// `task->ptrace` (non-zero while traced) and `task->group_leader`: connects whose admission
    /// rests on `exe`, `cgroup` or `comm` are refused while the thread or its process's leader is
    /// traced.
    pub task_ptrace: u32,
    pub task_group_leader: u32,
    /// `tcp_sock->is_mptcp` (a bool); 0 when this kernel has no MPTCP.
    pub tcp_is_mptcp: u32,
    /// `tcp_sock->fastopen_req` (set while `sendto(MSG_FASTOPEN)` connects) and the byte and bit
    /// of the `tcp_sock->fastopen_connect` flag (`TCP_FASTOPEN_CONNECT`): a connect whose first
    /// data may leave with the SYN, past the message hook.
    pub tcp_fastopen_req: u32,
    pub tcp_fastopen_connect: u32,
    pub tcp_fastopen_connect_mask: u32,
    /// `tcp_sock->write_seq`: the sequence number of the next byte the connection's owner
    /// queues, whatever path queues it (the message hook's or one past it): see
    /// [`crate::sock::Guard`].
    pub tcp_write_seq: u32,
    /// `sock->sk_rcvlowat` (an int): a connection whose requests must all be inspected may not
    /// raise it above 1 (see the `cgroup/setsockopt` program); a socket that did before
    /// connecting is refused at connect.
    pub sock_rcvlowat: u32,
    /// The current task's cgroup (v2) and its ancestors, for programs without
    /// `bpf_get_current_ancestor_cgroup_id` (`cgroup/sock_create` before Linux 6.4):
    /// `task->cgroups->dfl_cgrp`, `cgroup->level`, `cgroup->kn->id`, and the ancestors: the ids
    /// in `cgroup->ancestor_ids[level]` (before 6.0) or `cgroup->ancestors[level]->kn->id`. The
    /// one of `cgroup_ancestor_ids` and `cgroup_ancestors` this kernel does not have is 0.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_level: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub cgroup_ancestor_ids: u32,
    pub cgroup_ancestors: u32,
}

/// `set_probes` was given more (shape, level) pairs than [`MAX_PROBES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyProbes(pub usize);

impl GenConfig {
    /// Fills `probes` from the distinct rule shapes of a policy and the distinct depths of the
    /// cgroups its cgroup rules name: shapes without a cgroup need one lookup, shapes with one need
    /// a lookup per depth. Shapes are taken most specific first; the order does not change verdicts.
    pub fn set_probes(&mut self, shapes: &[u8], cgroup_levels: &[u8]) -> Result<(), TooManyProbes> {
        let mut n = 0usize;
        let mut push = |shape: u8, level: u8, cfg: &mut GenConfig| {
            if n < MAX_PROBES {
                cfg.probes[n] = Probe { shape, level };
            }
            n += 1;
        };
        for bits in (0..=5u32).rev() {
            for &shape in shapes.iter().filter(|s| s.count_ones() == bits) {
                if u32::from(shape) & field::CGROUP == 0 {
                    push(shape, 0, self);
                } else {
                    for &level in cgroup_levels {
                        push(shape, level, self);
                    }
                }
            }
        }
        if n > MAX_PROBES {
            return Err(TooManyProbes(n));
        }
        self.probe_count = n as u32;
        Ok(())
    }

    #[inline(always)]
    #[must_use]
    pub fn mode(&self) -> Mode {
        Mode::from_u32(self.mode)
    }
}

// No implicit padding (the struct is `aya::Pod`): no gap before the one u64 field after the
// probes' table, none at the end (there were 4 bytes at the end until `credentials` took them).
const _: () = assert!(
    core::mem::offset_of!(GenConfig, attach_cgroup_id)
        == core::mem::offset_of!(GenConfig, exe_offsets) + size_of::<ExeOffsets>()
);
const _: () = assert!(core::mem::offset_of!(GenConfig, digest) + 32 == size_of::<GenConfig>());
const _: () = assert!(size_of::<crate::sock::SockState>().is_multiple_of(8));
