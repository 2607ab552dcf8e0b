//! Attaching the programs to the cgroup, or adopting an earlier daemon's.
//!
//! The links keep the programs attached after the daemon exits; only `unload` removes them. A new
//! daemon that finds the links replaces their programs in place (BPF_LINK_UPDATE): there is no
//! instant with no program attached. An upgrade whose maps have another layout creates its own
//! maps, installs the policy in them, swaps its programs into the same links (and attaches the
//! message and response hooks to its new sockhash), then removes the old maps: still no
//! unguarded instant.

use std::{fs::File, os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    maps::SockHash,
    programs::{CgroupAttachMode, Program, links::FdLink},
};
use imds_guard_common::maps;

use super::{
    bpf_sys::{self, SockmapHook, link_attached, link_update, obj_get},
    guard::{Attachment, Guard, Held},
    paths::{ATTRIBUTION, INSPECTOR, link_pin, map_attached_pin_name, remove_map_dir},
};

impl Guard {
    /// Attaches the loaded programs to `cgroup` — or, when an earlier daemon's links are pinned,
    /// swaps them into those links atomically. Call once a policy is installed, so that no
    /// program runs unconfigured.
    pub fn attach(&mut self, cgroup: &Path) -> anyhow::Result<Attachment> {
        let cgroup_file =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let sockets = SockHash::<_, u64>::try_from(self.ebpf.map(maps::SOCKETS).context("SOCKETS map")?)?
            .fd()
            .try_clone()?;
        let absent = INSPECTOR
            .iter()
            .filter(|_| !self.inspect)
            .chain(ATTRIBUTION.iter().filter(|_| !self.attribute))
            .map(|l| (*l, if INSPECTOR.contains(l) { "the request inspector" } else { "the response hook" }));
        for (l, what) in absent {
            if let Some(pin) = super::paths::attached_pin(&self.pin_dir, l) {
                // An earlier daemon ran it (the kernel had it then, or it was not told to pretend
                // otherwise): leaving its programs attached would contradict what this daemon
                // reports, and detaching them is not this daemon's call.
                bail!(
                    "this daemon runs without {what}, but an earlier daemon's is attached ({} is \
                     pinned); `imds-guard unload` first",
                    pin.display()
                );
            }
        }
        let mut attachment = Attachment::Attached;
        // The sockhash programs' links of an upgrade, pinned beside the old ones until all is
        // swapped.
        let mut new_sockmap_links = Vec::new();
        for (prog_name, link_name) in self.programs() {
            if let Some(prog_pin) = map_attached_pin_name(link_name)
                && !self.msg_link
            {
                if self.attach_through_map(prog_name, prog_pin, sockets.as_fd())? {
                    attachment = Attachment::Adopted;
                }
                continue;
            }
            let link_path = link_pin(&self.pin_dir, link_name);
            let mut adopt = link_path.exists();
            if adopt && !obj_get(&link_path).and_then(|l| link_attached(l.as_fd())).unwrap_or(true) {
                // Detached behind our back (`bpftool link detach`, or its cgroup was removed):
                // adopting it would enforce nothing. Attach afresh instead.
                tracing::warn!(link = %link_path.display(), "the pinned link is detached; attaching anew");
                std::fs::remove_file(&link_path)
                    .with_context(|| format!("removing the detached link {}", link_path.display()))?;
                adopt = false;
            }
            let program =
                self.ebpf.program_mut(prog_name).with_context(|| format!("program {prog_name} missing"))?;
            // Either swap the (loaded) program into the pinned link of an earlier daemon, or attach
            // it afresh. A cgroup bpf_link always coexists with other programs (links are
            // multi-attach by nature) and the kernel refuses attach flags on link creation, so
            // `Single` (no flag) is what asks for a link.
            // The cgroup program types have the same attach/take_link shape.
            macro_rules! cgroup_link {
                ($p:expr) => {{
                    if adopt {
                        None
                    } else {
                        let id = $p.attach(&cgroup_file, CgroupAttachMode::Single)?;
                        Some($p.take_link(id)?.try_into()?)
                    }
                }};
            }
            let fresh: Option<FdLink> = match program {
                Program::CgroupSockAddr(p) => cgroup_link!(p),
                Program::CgroupSock(p) => cgroup_link!(p),
                Program::CgroupSockopt(p) => {
                    if adopt {
                        None
                    } else {
                        // aya 0.16 gives this program type's link no `FdLink`: made here, and
                        // taken as one through a pin of its own.
                        use crate::kernel::bpf_sys::{BPF_CGROUP_SETSOCKOPT, cgroup_link_create, obj_pin};
                        let link =
                            cgroup_link_create(p.fd()?.as_fd(), cgroup_file.as_fd(), BPF_CGROUP_SETSOCKOPT)
                                .with_context(|| format!("attaching {prog_name} to the cgroup"))?;
                        let tmp = link_path.with_file_name(format!("{link_name}_made"));
                        let _ = std::fs::remove_file(&tmp);
                        obj_pin(link.as_fd(), &tmp).with_context(|| format!("pinning {}", tmp.display()))?;
                        Some(aya::programs::links::PinnedLink::from_pin(&tmp)?.unpin()?)
                    }
                }
                Program::SockOps(p) => cgroup_link!(p),
                Program::SkMsg(p) => {
                    if adopt && !self.fresh_maps {
                        None
                    } else {
                        let id = p.attach(&sockets)?;
                        Some(p.take_link(id)?.try_into().map_err(|e| {
                            anyhow!(
                                "{e}: this kernel attached the message hook without a bpf_link (Linux < 6.10)"
                            )
                        })?)
                    }
                }
                Program::SkSkb(p) => {
                    if adopt && !self.fresh_maps {
                        None
                    } else {
                        let id = p.attach(&sockets)?;
                        Some(p.take_link(id)?.try_into().map_err(|e| {
                            anyhow!(
                                "{e}: this kernel attached the response hook without a bpf_link (Linux < 6.10)"
                            )
                        })?)
                    }
                }
                _ => bail!("program {prog_name} has an unexpected type"),
            };
            let link = match fresh {
                Some(link) if adopt => {
                    // An upgrade: the old link is attached to the old sockhash; this one to the new
                    // sockhash, which the new sockops program (swapped in below) fills. It takes the
                    // old link's pin once everything is swapped.
                    // (bpffs reserves '.' in names.)
                    let tmp = link_path.with_file_name(format!("{link_name}_new"));
                    let _ = std::fs::remove_file(&tmp);
                    link.pin(&tmp)
                        .map_err(|e| anyhow!("{e}"))
                        .with_context(|| format!("pinning {}", tmp.display()))?;
                    let fd = obj_get(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
                    new_sockmap_links.push((tmp, link_path.clone()));
                    attachment = Attachment::Adopted;
                    fd
                }
                Some(link) => {
                    link.pin(&link_path)
                        .map_err(|e| anyhow!("{e}"))
                        .with_context(|| format!("pinning {}", link_path.display()))?;
                    obj_get(&link_path).with_context(|| format!("opening {}", link_path.display()))?
                }
                None => {
                    let link =
                        obj_get(&link_path).with_context(|| format!("opening {}", link_path.display()))?;
                    link_update(link.as_fd(), program.fd()?.as_fd())
                        .with_context(|| format!("replacing the program of {}", link_path.display()))?;
                    attachment = Attachment::Adopted;
                    link
                }
            };
            self.held.push(Held { pin: link_path, fd: link, link: true });
        }
        self.readers = true;
        for (tmp, path) in new_sockmap_links {
            // rename(2) on bpffs replaces the old pin in one step; the old link, attached to the old
            // sockhash, goes with its last reference.
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))?;
        }
        if !self.old_maps.is_empty() {
            if attachment == Attachment::Adopted {
                tracing::info!(
                    old_maps = ?self.old_maps,
                    "upgraded: programs swapped onto maps of a new layout; removing the old maps"
                );
            }
            for d in std::mem::take(&mut self.old_maps).iter() {
                remove_map_dir(d);
            }
        }
        Ok(attachment)
    }

    /// Attaches a sockhash program (the message hook, the response hook) the way kernels without
    /// sockmap links (Linux < 6.10) do: the sockhash holds the program (`BPF_PROG_ATTACH`). An
    /// earlier daemon's program on the same map is replaced in one step, so the hook never goes
    /// without one; the program is pinned beside the links (as `prog_pin`), which shows it
    /// attached and lets `unload` detach it. Whether an earlier daemon's program was there
    /// (adopted).
    fn attach_through_map(
        &mut self,
        prog_name: &str,
        prog_pin: &str,
        sockets: std::os::fd::BorrowedFd<'_>,
    ) -> anyhow::Result<bool> {
        let program =
            self.ebpf.program_mut(prog_name).with_context(|| format!("program {prog_name} missing"))?;
        let (prog, hook) = match program {
            Program::SkMsg(p) => (p.fd()?.as_fd().try_clone_to_owned()?, SockmapHook::Msg),
            Program::SkSkb(p) => (p.fd()?.as_fd().try_clone_to_owned()?, SockmapHook::StreamVerdict),
            _ => bail!("program {prog_name} has an unexpected type"),
        };
        bpf_sys::sockmap_prog_attach(sockets, prog.as_fd(), hook)
            .with_context(|| format!("attaching {prog_name} to its socket map"))?;
        let pin = link_pin(&self.pin_dir, prog_pin);
        let adopted = pin.exists();
        // Only the record of what is attached changes hands here; the map already holds the new
        // program. (bpffs pins cannot be replaced by a pin in place.)
        if adopted {
            std::fs::remove_file(&pin).with_context(|| format!("replacing {}", pin.display()))?;
        }
        bpf_sys::obj_pin(prog.as_fd(), &pin).with_context(|| format!("pinning {}", pin.display()))?;
        self.held.push(Held { pin, fd: prog, link: false });
        Ok(adopted)
    }
}
