//! Compiling a resolved policy into what the kernel programs read: the generation's config (mode,
//! endpoints, the lookups a connect makes) and the rule entries. No generation is stamped here:
//! the kernel layer installs the tables as whichever generation comes next.

use foldhash::{HashSet, HashSetExt as _};
use imds_guard_common::{
    config::GenConfig,
    rule::{RuleKey, RuleValue},
};

use super::{Policy, Rule};

/// The maps' contents that enforce a policy, as generation 0 (see the module doc).
#[derive(Clone, Debug)]
pub struct KernelTables {
    pub config: GenConfig,
    /// The distinct `read` lists (list `k` is the `k`th), compiled at install for the generation.
    pub lists: Vec<super::rule::ReadList>,
    /// The rule entries, keys and values in the same order (one batch update writes them).
    pub keys: Vec<RuleKey>,
    pub values: Vec<RuleValue>,
}

impl KernelTables {
    /// As `generation`: its config and entries (for host-side verdicts and tests).
    #[must_use]
    pub fn as_generation(&self, generation: u32) -> (GenConfig, Vec<(RuleKey, RuleValue)>) {
        let cfg = GenConfig { generation, ..self.config };
        let entries =
            self.keys.iter().zip(&self.values).map(|(k, v)| (RuleKey { generation, ..*k }, *v)).collect();
        (cfg, entries)
    }
}

impl Policy {
    /// The tables that enforce this policy.
    #[must_use]
    pub fn compile(&self) -> KernelTables {
        let n = self.rules.len();
        let (mut keys, mut values) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let lists = self.read_lists();
        let config = self.kernel_tables_with(0, &lists, |k, v| {
            keys.push(k);
            values.push(v);
        });
        KernelTables { config, lists, keys, values }
    }

    /// The map contents that enforce this policy as `generation`.
    #[must_use]
    pub fn kernel_tables(&self, generation: u32) -> (GenConfig, Vec<(RuleKey, RuleValue)>) {
        self.compile().as_generation(generation)
    }

    /// The tables, handing each rule entry to `entry`.
    fn kernel_tables_with(
        &self,
        generation: u32,
        lists: &[super::rule::ReadList],
        mut entry: impl FnMut(RuleKey, RuleValue),
    ) -> GenConfig {
        let mut cfg = GenConfig { generation, mode: self.mode as u32, ..GenConfig::default() };
        let v4 = self.endpoints.v4_words();
        cfg.v4[..v4.len()].copy_from_slice(&v4);
        cfg.v4_count = u32::try_from(v4.len()).expect("bounded");
        let v6 = self.endpoints.v6_words();
        cfg.v6[..v6.len()].copy_from_slice(&v6);
        cfg.v6_count = u32::try_from(v6.len()).expect("bounded");
        let digest: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&self.digest[2 * i..2 * i + 2], 16).expect("hex digest"))
            .collect();
        cfg.digest.copy_from_slice(&digest);

        // A key two rules share (a pod selected by a `pod` and a `namespace` rule, or by a pod
        // rule and a `cgroup` rule) belongs to the first: the first matching table decides. Rules
        // without pods that share a key are already marked duplicates.
        let shared = self.installed().any(|r| r.pods.is_some());
        let mut seen = HashSet::with_capacity(if shared { self.rules.len() } else { 0 });
        for rule in self.installed() {
            for (k, _) in rule.keys() {
                if !shared || seen.insert(k) {
                    entry(
                        RuleKey { generation, ..k },
                        RuleValue {
                            rule_index: rule.index,
                            imdsv1: rule.imdsv1 as u32,
                            read: Policy::encoded_read(rule.read, rule.read_prefixes.as_ref(), lists),
                        },
                    );
                }
            }
        }
        let (shapes, levels) = shapes_and_levels(&self.rules);
        cfg.set_probes(&shapes, &levels).expect("checked when the policy was resolved");
        cfg.needs_exe = u32::from(self.needs_exe());
        cfg.default_imdsv1 = self.default_imdsv1 as u32;
        cfg.strictest_imdsv1 = self.strictest_imdsv1() as u32;
        cfg.raw_sockets = self.raw_sockets as u32;
        cfg.others_read = Policy::encoded_read(self.others_read, self.others_prefixes.as_ref(), lists);
        cfg.strictest_read = self.strictest_read() as u32;
        cfg.rule_count = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        cfg
    }
}

/// The distinct shapes and cgroup depths of the rules that are installed.
fn shapes_and_levels(rules: &[Rule]) -> (Vec<u8>, Vec<u8>) {
    let mut shapes: Vec<u8> = Vec::new();
    let mut levels: Vec<u8> = Vec::new();
    for r in rules {
        add_shape_and_levels(r, &mut shapes, &mut levels);
    }
    (shapes, levels)
}

/// Adds the shape and cgroup depths of `rule`, if it is installed, to those not yet in the lists;
/// whether it added any.
pub(super) fn add_shape_and_levels(rule: &Rule, shapes: &mut Vec<u8>, levels: &mut Vec<u8>) -> bool {
    if rule.duplicate_of.is_some() || rule.is_pending() {
        return false;
    }
    let mut added = false;
    let shape = u8::try_from(rule.key().shape).expect("shape fits u8");
    if !shapes.contains(&shape) {
        shapes.push(shape);
        added = true;
    }
    for level in rule.keys().filter_map(|(_, level)| level) {
        if !levels.contains(&level) {
            levels.push(level);
            added = true;
        }
    }
    added
}
