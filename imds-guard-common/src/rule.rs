//! How allow rules are stored in the kernel.
//!
//! A rule constrains some identity fields (its *shape*, a bit set of [`field`]s) and leaves the
//! others free. The key of a rule holds the required values of the constrained fields and zeroes
//! elsewhere, so a process matches a rule of shape `s` exactly when the key built from the process's
//! own values, masked by `s`, is in the map. Deciding a connect therefore costs one hash lookup per
//! shape the policy uses (per cgroup level for shapes with a cgroup), whatever the number of rules.

/// Identity fields a rule can constrain (bits of a shape).
pub mod field {
    pub const UID: u32 = 1 << 0;
    pub const GID: u32 = 1 << 1;
    pub const CGROUP: u32 = 1 << 2;
    pub const EXE: u32 = 1 << 3;
    pub const COMM: u32 = 1 << 4;
    /// Every valid field bit.
    pub const ALL: u32 = UID | GID | CGROUP | EXE | COMM;

    /// Each field bit with the policy key that sets it.
    pub const NAMES: [(u32, &str); 5] =
        [(UID, "uid"), (GID, "gid"), (CGROUP, "cgroup"), (EXE, "exe"), (COMM, "comm")];

    /// The policy keys of the fields `shape` constrains, in the order of [`NAMES`].
    pub fn names(shape: u32) -> impl Iterator<Item = &'static str> {
        NAMES.into_iter().filter(move |(bit, _)| shape & bit != 0).map(|(_, name)| name)
    }
}

/// Number of distinct shapes (every subset of [`field::ALL`]).
pub const SHAPE_COUNT: usize = 32;

pub const COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Policy generation the rule belongs to (see [`crate::config::Active`]).
    pub generation: u32,
    /// Which fields below are constrained; the others are zero.
    pub shape: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (the inode number of the cgroup directory) of the rule's cgroup.
    pub cgroup_id: u64,
    /// Executable file identity: device and inode.
    pub exe_dev: u64,
    pub exe_ino: u64,
    /// NUL-padded task comm, as two native-endian words.
    pub comm: [u64; 2],
}

/// How a workload's tokenless (IMDSv1) requests are treated.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Imdsv1Action {
    Allow = 0,
    #[default]
    Log = 1,
    Deny = 2,
}

impl Imdsv1Action {
    #[must_use]
    pub const fn from_u32(v: u32) -> Self {
        match v {
            0 => Imdsv1Action::Allow,
            2 => Imdsv1Action::Deny,
            _ => Imdsv1Action::Log,
        }
    }

    /// As the policy file (`imdsv1 = ...`) and `check` spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Imdsv1Action::Allow => "allow",
            Imdsv1Action::Log => "log",
            Imdsv1Action::Deny => "deny",
        }
    }

    /// The treatment a policy file names, if it names one.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Imdsv1Action::Allow, Imdsv1Action::Log, Imdsv1Action::Deny].into_iter().find(|a| a.name() == name)
    }
}

/// What a workload may read from the metadata service (`read = ...`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Read {
    /// Everything (a table's default).
    #[default]
    All = 0,
    /// Everything but the secrets: role credentials, identity credentials, user data
    /// ([`crate::path`]).
    NoSecrets = 1,
    /// Nothing: refused at connect (what processes no table admits get by default).
    Nothing = 2,
    /// Only the paths under a list of prefixes (`read = ["/latest/meta-data/placement/", ...]`):
    /// which list is in the encoded value's upper bits ([`listed`], [`list_of`]).
    Listed = 3,
}

/// The encoded `read` ([`RuleValue::read`]) of list `list` of the policy ([`crate::lists`]).
#[inline(always)]
#[must_use]
pub const fn listed(list: u32) -> u32 {
    Read::Listed as u32 | (list << 8)
}

/// Which list an encoded `read` names (meaningful for [`Read::Listed`]).
#[inline(always)]
#[must_use]
pub const fn list_of(read: u32) -> u32 {
    (read >> 8) & 0xff
}

impl Read {
    #[must_use]
    pub const fn from_u32(v: u32) -> Self {
        match v & 0xff {
            0 => Read::All,
            1 => Read::NoSecrets,
            3 => Read::Listed,
            _ => Read::Nothing,
        }
    }

    /// As the policy file spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Read::All => "all",
            Read::NoSecrets => "no-secrets",
            Read::Nothing => "none",
            Read::Listed => "a list of path prefixes",
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Read::All, Read::NoSecrets, Read::Nothing].into_iter().find(|r| r.name() == name)
    }

    /// Whether every request on the workload's connections must be read (and so connections the
    /// message hook cannot see are refused).
    #[inline(always)]
    #[must_use]
    pub const fn restricted(self) -> bool {
        !matches!(self, Read::All)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// Index of the `[[allow]]` table in the policy file (0-based): the first matching rule wins.
    pub rule_index: u32,
    /// [`Imdsv1Action`] as u32.
    pub imdsv1: u32,
    /// [`Read`] as u32; for [`Read::Listed`], with the list ([`listed`]).
    pub read: u32,
}

impl RuleValue {
    /// Whether the workload's requests must all be inspected: its tokenless requests are refused,
    /// or what it may read is restricted.
    #[inline(always)]
    #[must_use]
    pub const fn needs_inspection(&self) -> bool {
        self.imdsv1 == Imdsv1Action::Deny as u32 || self.read != Read::All as u32
    }
}

/// The identity of the process making a request, as far as the rules need it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub comm: [u64; 2],
}

/// A comm as the two words stored in [`RuleKey::comm`] and [`Identity::comm`].
#[inline(always)]
#[must_use]
pub fn comm_words(comm: &[u8; COMM_LEN]) -> [u64; 2] {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&comm[..8]);
    b.copy_from_slice(&comm[8..]);
    [u64::from_ne_bytes(a), u64::from_ne_bytes(b)]
}

/// All ones when `shape` has `bit`, else zero: keys are built with masks, not branches, so the
/// verifier sees one path per lookup.
#[inline(always)]
const fn mask64(shape: u32, bit: u32) -> u64 {
    (((shape & bit) != 0) as u64).wrapping_neg()
}

impl RuleKey {
    /// The key a process with `id` (in cgroup `cgroup_id` at the level being tried) would need to
    /// find to match a rule of `shape` in `generation`.
    #[inline(always)]
    #[must_use]
    pub fn probe(generation: u32, shape: u32, id: &Identity, cgroup_id: u64) -> Self {
        let exe = mask64(shape, field::EXE);
        let comm = mask64(shape, field::COMM);
        RuleKey {
            generation,
            shape,
            uid: id.uid & mask64(shape, field::UID) as u32,
            gid: id.gid & mask64(shape, field::GID) as u32,
            cgroup_id: cgroup_id & mask64(shape, field::CGROUP),
            exe_dev: id.exe_dev & exe,
            exe_ino: id.exe_ino & exe,
            comm: [id.comm[0] & comm, id.comm[1] & comm],
        }
    }
}
