//! Watching the pins while the daemon runs. The pins are what keeps enforcement in place when the
//! daemon is not running; the daemon itself holds a descriptor of every link and map (see
//! [`Guard::held`]), so while it runs, losing the pins changes nothing in the kernel — but it would
//! when the daemon exits or restarts. Looked at on every periodic re-check:
//!
//! - pins missing, links still attached (bpffs unmounted, pins deleted): pin them again as soon as
//!   the pin directory's parent is on a bpffs again (`pins_restored`; the daemon does not mount one
//!   itself here); until then say so once (`pins_lost`);
//! - links detached (`imds-guard unload`, `bpftool link detach`, the attached cgroup removed): the
//!   programs no longer run; say so once (`programs_detached`) and leave it so — re-pinning a
//!   detached link would make the next daemon adopt a link that enforces nothing.

use std::{os::fd::AsFd as _, path::Path};

use crate::{
    kernel::bpf_sys::{link_attached, obj_pin},
    kernel::guard::Guard,
    report::{
        Event, Reporter,
        event::{PinsLost, PinsRestored, ProgramsDetached},
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Intact,
    /// Pins missing, reported; the links are held and attached.
    Lost,
    /// The links were detached, reported.
    Detached,
}

pub struct PinKeeper {
    state: State,
}

impl Default for PinKeeper {
    fn default() -> Self {
        PinKeeper { state: State::Intact }
    }
}

fn names(paths: &[&Path]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

impl PinKeeper {
    /// Looks at the pins and the links, restores what it can and reports changes.
    pub fn check(&mut self, guard: &Guard, reporter: &dyn Reporter) {
        if self.state == State::Detached {
            return;
        }
        let detached: Vec<&Path> = guard
            .held()
            .iter()
            .filter(|h| h.link && !link_attached(h.fd.as_fd()).unwrap_or(true))
            .map(|h| h.pin.as_path())
            .collect();
        if !detached.is_empty() {
            self.state = State::Detached;
            tracing::error!(
                links = ?names(&detached),
                "the programs were detached (imds-guard unload, bpftool link detach, or the cgroup they \
                 were attached to was removed): nothing is enforced; restart imds-guard to enforce again"
            );
            reporter.report(Event::ProgramsDetached(ProgramsDetached {
                pin_dir: guard.pin_dir().display().to_string(),
                links: names(&detached),
                enforcing: false,
            }));
            return;
        }
        let missing: Vec<&crate::kernel::guard::Held> =
            guard.held().iter().filter(|h| !h.pin.exists()).collect();
        if missing.is_empty() {
            if self.state == State::Lost {
                // Someone else put them back (e.g. another daemon on the same pin directory).
                self.state = State::Intact;
            }
            return;
        }
        let missing_paths: Vec<&Path> = missing.iter().map(|h| h.pin.as_path()).collect();
        // Never mount a bpffs here: under systemd the daemon's mounts are private to it (and go
        // with it), so pins in one would look restored and not be. Wait for the host's instead.
        let restored = crate::kernel::paths::prepare_without_mount(guard.pin_dir()).and_then(|_| {
            for h in &missing {
                obj_pin(h.fd.as_fd(), &h.pin)
                    .map_err(|e| anyhow::anyhow!("pinning {}: {e}", h.pin.display()))?;
            }
            Ok(())
        });
        match restored {
            Ok(()) => {
                if self.state == State::Intact {
                    // Lost and restored between two looks: still worth knowing.
                    self.report_lost(guard, reporter, &missing_paths, "they were pinned again at once");
                }
                self.state = State::Intact;
                tracing::warn!(pins = ?names(&missing_paths), "pinned the links and maps again");
                reporter.report(Event::PinsRestored(PinsRestored {
                    pin_dir: guard.pin_dir().display().to_string(),
                    pins: names(&missing_paths),
                    enforcing: true,
                }));
            }
            Err(e) if self.state == State::Intact => {
                self.state = State::Lost;
                self.report_lost(guard, reporter, &missing_paths, &format!("{e:#}"));
            }
            Err(e) => tracing::debug!("pins still cannot be restored: {e:#}"),
        }
    }

    fn report_lost(&self, guard: &Guard, reporter: &dyn Reporter, missing: &[&Path], why: &str) {
        tracing::error!(
            pins = ?names(missing),
            "the pins in {} are gone; enforcement continues while this daemon runs, but ends when it \
             exits; they are pinned again as soon as the pin directory is on a bpffs again ({why})",
            guard.pin_dir().display()
        );
        reporter.report(Event::PinsLost(PinsLost {
            pin_dir: guard.pin_dir().display().to_string(),
            pins: names(missing),
            enforcing: true,
            error: why.to_owned(),
        }));
    }

    /// Said when the daemon exits.
    pub fn at_exit(&self, guard: &Guard) {
        match self.state {
            State::Intact => {}
            State::Lost => tracing::error!(
                "the pins in {} are gone: the programs are detached now that this daemon exits",
                guard.pin_dir().display()
            ),
            State::Detached => tracing::warn!("the programs had been detached: nothing was enforced"),
        }
    }
}
