//! Installing a policy is one transaction over the two places that enforce it: the kernel's maps
//! (a new generation, switched to atomically) and the nftables table (one `nft` batch). The table
//! goes first, since its batch is all or nothing; if the maps then refuse the policy, the
//! previous table is put back. Either the whole policy is enforced or the previous one stays.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use imds_guard_common::config::ExeOffsets;

use crate::{
    kernel::{
        features,
        guard::{Attachment, Guard},
    },
    netfilter::{self, Plan},
    policy::Policy,
};

/// How the netfilter layer runs for this daemon (fixed at start: changing it needs a restart).
#[derive(Clone, Copy, Debug)]
pub struct NetfilterRuntime {
    /// Reduced mode: nftables output rules instead of the cgroup programs.
    pub reduced: bool,
    /// The NFLOG group the daemon has bound (`None`: none, so the policy may not want the table).
    pub nflog_group: Option<u16>,
}

/// What this kernel runs without (fixed at start), and whether the operator accepts a policy that
/// asks for what is missing.
#[derive(Clone, Debug, Default)]
pub struct Degraded {
    /// The parts of the guard this kernel cannot run (empty: none).
    pub parts: Vec<features::Degraded>,
    /// `run --allow-degraded`: install a policy that asks for a missing part anyway (it is not
    /// enforced; `guard_started` and `status` say so).
    pub allowed: bool,
}

impl Degraded {
    /// Whether the request inspector runs.
    #[must_use]
    pub fn inspects(&self) -> bool {
        !self.parts.iter().any(|d| d.what == features::Degradation::Imdsv1Inspection)
    }

    /// Whether the response hook runs (credential attribution; it needs the inspector too).
    #[must_use]
    pub fn attributes(&self) -> bool {
        self.inspects() && !self.parts.iter().any(|d| d.what == features::Degradation::CredentialAttribution)
    }

    /// Refuses a policy that asks for what this kernel cannot do, unless allowed: today, imdsv1 =
    /// "deny" without the request inspector (the requests would go through, unreported).
    pub fn check(&self, policy: &Policy) -> anyhow::Result<()> {
        let Some(inspection) = self.parts.iter().find(|d| d.what == features::Degradation::Imdsv1Inspection)
        else {
            return Ok(());
        };
        if policy.others_read != imds_guard_common::rule::Read::Nothing {
            // Not even with --allow-degraded: without the inspector, admitting the others to
            // read a part would admit them to everything.
            bail!(
                "{} sets {} for processes no table admits, which this kernel cannot enforce: {} Refusing the policy: \
                 remove that `read` (they are then refused at connect)",
                policy.source,
                crate::policy::read_setting(policy.others_read),
                inspection.sentence()
            );
        }
        match policy.imdsv1_denial() {
            Some(rule) if !self.allowed => bail!(
                "{rule}, which this kernel cannot enforce: {} Refusing the policy: remove the treatment, or run with --allow-degraded to \
                 enforce the connect rules without it",
                inspection.sentence()
            ),
            Some(rule) => {
                tracing::warn!(
                    "{rule}, which this kernel cannot enforce (--allow-degraded): {}",
                    inspection.sentence()
                );
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The kernel programs and the nftables table, installed together.
pub struct Enforcer {
    pub kernel: Guard,
    netfilter: NetfilterRuntime,
    degraded: Degraded,
    /// The nftables table as last installed (to restore it if the maps cannot follow).
    nft_plan: Option<Plan>,
}

/// What installing one policy takes.
struct Prepared {
    next: u32,
    plan: Plan,
    /// The table is the one installed already (nothing to do in nftables).
    unchanged: bool,
}

impl Enforcer {
    /// Loads the programs (reusing pinned maps), installs `policy`, then attaches — or, when an
    /// earlier daemon's links are pinned, swaps the new programs into them atomically. The policy
    /// is live in the maps before any program can run, so there is no unconfigured instant.
    pub fn start(
        pin_dir: &Path,
        cgroup: &Path,
        policy: &Policy,
        exe_offsets: Option<ExeOffsets>,
        netfilter: NetfilterRuntime,
        degraded: Degraded,
    ) -> anyhow::Result<(Self, Attachment)> {
        // Refused before anything is loaded: nothing changes in the kernel.
        degraded.check(policy).context("installing the policy")?;
        let kernel = Guard::open(pin_dir, cgroup, exe_offsets, degraded.inspects(), degraded.attributes())?;
        if netfilter.reduced
            && let Some(link) = kernel.pinned_link()
        {
            bail!(
                "reduced mode, but an earlier daemon's programs are attached ({} is pinned); \
                 `imds-guard unload` them first, or let this daemon adopt them (reduced_mode = \"auto\")",
                link.display()
            );
        }
        let mut enforcer = Enforcer { kernel, netfilter, degraded, nft_plan: None };
        let prepared = enforcer.prepare(policy).context("installing the policy")?;
        let tables = policy.compile();
        // `nft` is a process of its own: the verifier checks the programs meanwhile. Both must
        // succeed before the maps are written or anything is attached.
        let (kernel, plan) = (&mut enforcer.kernel, &prepared.plan);
        std::thread::scope(|s| {
            let nft = (!prepared.unchanged).then(|| s.spawn(|| netfilter::apply(plan)));
            let loaded = if netfilter.reduced { Ok(()) } else { kernel.load_programs() };
            let nft = nft.map_or(Ok(()), |h| {
                h.join().unwrap_or_else(|_| Err(anyhow!("installing the nftables table panicked")))
            });
            loaded.and(nft)
        })
        .context("installing the policy")?;
        enforcer.commit(tables, prepared).context("installing the policy")?;
        if netfilter.reduced {
            // The maps hold the policy (status, explain), but no program is attached to read them.
            return Ok((enforcer, Attachment::NotAttached));
        }
        let attachment = enforcer.kernel.attach(cgroup)?;
        Ok((enforcer, attachment))
    }

    /// Installs `policy` as a new generation and switches to it atomically; returns the
    /// generation. On error the live generation and table are untouched.
    pub fn apply(&mut self, policy: &Policy) -> anyhow::Result<u32> {
        let prepared = self.prepare(policy)?;
        let next = prepared.next;
        if !prepared.unchanged {
            netfilter::apply(&prepared.plan)?;
        }
        self.commit(policy.compile(), prepared)?;
        Ok(next)
    }

    /// What this daemon runs without.
    #[must_use]
    pub fn degraded(&self) -> &[features::Degraded] {
        &self.degraded.parts
    }

    /// The nftables table as installed last.
    #[must_use]
    pub fn netfilter_plan(&self) -> Option<&Plan> {
        self.nft_plan.as_ref()
    }

    /// The next generation, its table, and whether that table is installed already. Refuses what
    /// this daemon cannot enforce.
    fn prepare(&self, policy: &Policy) -> anyhow::Result<Prepared> {
        if policy.needs_exe() && !self.kernel.knows_exe_offsets() {
            bail!(
                "the policy has exe rules, but the kernel's BTF could not be read at start-up, so imds-guard \
                 cannot find a process's executable without guessing kernel struct layouts; refusing the policy"
            );
        }
        self.degraded.check(policy)?;
        let next = self.kernel.next_generation()?;
        let plan = Plan::new(policy, next, self.netfilter.reduced);
        self.check_netfilter(policy, &plan)?;
        // A reload that leaves the table as it is (the common case: a change of [[allow]] tables
        // that nftables does not express) keeps the installed rules, and their log prefixes keep
        // naming the generation that installed them.
        let unchanged = self.nft_plan.as_ref().is_some_and(|p| p.same_table(policy, self.netfilter.reduced));
        Ok(Prepared { next, plan, unchanged })
    }

    /// Writes the tables as the prepared generation, once its nftables table is installed (or
    /// unchanged); if the maps cannot take them, the previous table comes back.
    fn commit(&mut self, tables: crate::policy::compile::KernelTables, p: Prepared) -> anyhow::Result<()> {
        match self.kernel.install(tables, p.next) {
            Ok(()) => {
                if !p.unchanged {
                    self.nft_plan = Some(p.plan);
                }
                Ok(())
            }
            Err(e) => {
                if let Some(prev) = &self.nft_plan
                    && let Err(r) = netfilter::apply(prev)
                {
                    tracing::error!("restoring the previous nftables table failed: {r:#}");
                }
                Err(e)
            }
        }
    }

    /// What the netfilter layer cannot change without a restart.
    fn check_netfilter(&self, policy: &Policy, plan: &Plan) -> anyhow::Result<()> {
        if netfilter::decide_reduced(&policy.netfilter)? != self.netfilter.reduced {
            bail!(
                "[netfilter] reduced_mode now asks to {} the cgroup programs; that takes a restart of the daemon",
                if self.netfilter.reduced { "use" } else { "stop using" }
            );
        }
        if plan.wants_table() && self.netfilter.nflog_group != Some(plan.nflog_group) {
            bail!(
                "the netfilter rules would log to NFLOG group {}, which this daemon has not bound{}; \
                 that takes a restart of the daemon",
                plan.nflog_group,
                self.netfilter.nflog_group.map(|g| format!(" (it reads group {g})")).unwrap_or_default()
            );
        }
        Ok(())
    }
}
