//! Where the programs and maps are pinned.
//!
//! Layout of the pin directory (on a bpffs), in one place: no other module computes a pin path.
//!   maps-<layout>/IMDSG_*  the maps, pinned by name, in a directory named after their layout
//!                          (`imds_guard_common::maps::LAYOUT`); a daemon of the same layout reuses
//!                          them (state and counters survive a restart)
//!   links/connect4         the bpf_link attaching `imdsg_connect4` to the cgroup
//!   links/connect6, links/sendmsg4, links/sendmsg6, links/sock_create, links/setsockopt,
//!   links/sockops, links/msg,
//!   links/resp             (the last two attach to the sockhash map)
//!   links/msg_prog, links/resp_prog
//!                          before Linux 6.10, which has no sockmap links: the message hook's and
//!                          the response hook's programs, attached to the sockhash by the map
//!                          itself (what shows that they are attached, and what `unload` detaches)

use std::path::{Path, PathBuf};

use imds_guard_common::maps;

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/imds-guard";

/// (program name in the object, link pin name).
/// In attach order: enforcement first, then request inspection (the message and response hooks
/// before the sockops program that feeds their sockhash).
pub const PROGRAMS: [(&str, &str); 9] = [
    ("imdsg_connect4", "connect4"),
    ("imdsg_connect6", "connect6"),
    ("imdsg_sendmsg4", "sendmsg4"),
    ("imdsg_sendmsg6", "sendmsg6"),
    ("imdsg_sock_create", "sock_create"),
    ("imdsg_msg", "msg"),
    ("imdsg_resp", "resp"),
    ("imdsg_setsockopt", "setsockopt"),
    ("imdsg_sockops", "sockops"),
];

/// The link names of the request inspector's programs (of [`PROGRAMS`]), which a kernel without
/// sockhash/sk_msg support runs without (`kernel::features::Degradation::Imdsv1Inspection`): the
/// socket option hook only guards what the inspector's response hook judges.
pub const INSPECTOR: [&str; 3] = ["msg", "setsockopt", "sockops"];

/// The link name of credential attribution's response hook, which a kernel without sk_skb
/// programs runs without (`kernel::features::Degradation::CredentialAttribution`); it also needs
/// the inspector's sockhash.
pub const ATTRIBUTION: [&str; 1] = ["resp"];

/// The programs a daemon attaches (of [`PROGRAMS`]): all of them, less the request inspector's
/// and the response hook where it runs without them.
pub fn wanted(inspects: bool, attributes: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    PROGRAMS.into_iter().filter(move |(_, l)| {
        (inspects || !INSPECTOR.contains(l)) && ((inspects && attributes) || !ATTRIBUTION.contains(l))
    })
}

#[must_use]
pub fn link_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("links").join(name)
}

/// The programs attached to the sockhash, not a cgroup: (link name, the pin of its program when
/// it is attached to its map without a link, Linux < 6.10).
pub const SOCKMAP_PROGS: [(&str, &str); 2] = [("msg", "msg_prog"), ("resp", "resp_prog")];

/// The pin of sockhash program `link_name`'s program when attached through its map, if it is one.
#[must_use]
pub fn map_attached_pin_name(link_name: &str) -> Option<&'static str> {
    SOCKMAP_PROGS.iter().find(|(l, _)| *l == link_name).map(|(_, p)| *p)
}

/// The pin that shows program `link_name` (of [`PROGRAMS`]) attached, if there is one: its link,
/// or for a sockhash program its program attached through the map.
#[must_use]
pub fn attached_pin(pin_dir: &Path, link_name: &str) -> Option<PathBuf> {
    let link = link_pin(pin_dir, link_name);
    if link.exists() {
        return Some(link);
    }
    let prog = link_pin(pin_dir, map_attached_pin_name(link_name)?);
    prog.exists().then_some(prog)
}

/// This build's map directory: `maps-<layout>`. (`IMDS_GUARD_LAYOUT_TAG` replaces the layout
/// part: tests use it to play an upgrade to a binary whose maps have another layout.)
#[must_use]
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    let tag = std::env::var("IMDS_GUARD_LAYOUT_TAG")
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| format!("{:016x}", maps::LAYOUT));
    pin_dir.join(format!("maps-{tag}"))
}

#[must_use]
pub fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    maps_dir(pin_dir).join(name)
}

/// Map directories of other layouts (an earlier version's), oldest naming first.
#[must_use]
pub fn other_map_dirs(pin_dir: &Path) -> Vec<PathBuf> {
    let mine = maps_dir(pin_dir);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(pin_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && *p != mine
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n == "maps" || n.starts_with("maps-"))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Creates the pin directory's subdirectories (the pin directory's parent must be on a bpffs).
pub fn create_dirs(pin_dir: &Path) -> std::io::Result<()> {
    for d in [pin_dir.to_owned(), maps_dir(pin_dir), pin_dir.join("links")] {
        if !d.exists() {
            std::fs::create_dir(&d)
                .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))?;
        }
    }
    Ok(())
}

/// Makes `pin_dir` ready for pins: its parent on a bpffs (mounted there for the default location
/// when nothing is; an explicit `--pin-dir` elsewhere must already be on one, or `may_mount`),
/// and its subdirectories. Whether bpffs was mounted.
pub fn prepare(pin_dir: &Path, may_mount: bool) -> anyhow::Result<bool> {
    let mounted =
        crate::host::env::ensure_bpffs(pin_dir, may_mount || pin_dir == Path::new(DEFAULT_PIN_DIR))?;
    create_dirs(pin_dir)?;
    Ok(mounted)
}

/// [`prepare`] that never mounts anything (the pin directory's parent must be on a bpffs).
pub fn prepare_without_mount(pin_dir: &Path) -> anyhow::Result<()> {
    crate::host::env::ensure_bpffs(pin_dir, false)?;
    create_dirs(pin_dir)?;
    Ok(())
}

/// Unpins every map in `dir` and removes it (a map lives on while a program still uses it).
pub fn remove_map_dir(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match std::fs::remove_file(e.path()) {
            Ok(()) => removed.push(format!("map {}", e.path().display())),
            Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
        }
    }
    if let Err(err) = std::fs::remove_dir(dir) {
        tracing::warn!("cannot remove {}: {err}", dir.display());
    }
    removed
}
