//! Resolving path-based identities on this host: an executable file to the (device, inode) the
//! kernel sees in `mm->exe_file`, a cgroup path to its id and depth.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// An executable, as the kernel identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExeId {
    /// As written in the policy.
    pub path: String,
    /// After following symlinks: the file that runs.
    pub file: PathBuf,
    /// `super_block.s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u64,
    pub ino: u64,
}

/// Resolves an `exe` value. Errors say what is wrong with the path.
pub fn resolve_exe(path: &str) -> Result<ExeId, String> {
    if !path.starts_with('/') {
        return Err(format!("exe `{path}` must be an absolute path"));
    }
    let file = std::fs::canonicalize(path).map_err(|e| format!("exe `{path}`: {e}"))?;
    let md = std::fs::metadata(&file).map_err(|e| format!("exe `{path}`: {e}"))?;
    if !md.is_file() {
        return Err(format!("exe `{path}` is not a regular file"));
    }
    let dev = kernel_dev(&file).unwrap_or_else(|| encode(libc::major(md.dev()), libc::minor(md.dev())));
    Ok(ExeId { path: path.to_owned(), file, dev, ino: md.ino() })
}

const fn encode(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | minor as u64
}

/// The device of the superblock `file` lives on, from /proc/self/mountinfo (the mount with the
/// longest mount point containing it). Unlike `stat`'s `st_dev`, this is `sb->s_dev` also on
/// filesystems that report another device to stat (btrfs subvolumes).
fn kernel_dev(file: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, u64)> = None;
    for line in info.lines() {
        let mut f = line.split_whitespace();
        let dev = f.nth(2)?;
        let mount_point = f.nth(1)?.replace("\\040", " ");
        if file.starts_with(&mount_point) && best.is_none_or(|(len, _)| mount_point.len() >= len) {
            let (ma, mi) = dev.split_once(':')?;
            best = Some((mount_point.len(), encode(ma.parse().ok()?, mi.parse().ok()?)));
        }
    }
    best.map(|(_, d)| d)
}

/// A cgroup named by a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupRef {
    /// As written (relative to the cgroup2 root, starting with `/`).
    pub path: String,
    /// Depth below the root (`/a/b` is 2).
    pub level: u8,
    /// The cgroup's id; `None` while it does not exist (the rule waits for it).
    pub id: Option<u64>,
}

pub fn resolve_cgroup(root: &Path, path: &str) -> Result<CgroupRef, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "cgroup `{path}` must start with `/` (it is relative to the cgroup2 root {})",
            root.display()
        ));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("cgroup `/` is the root: it would allow every process; leave the key out or use mode = \"monitor\"".into());
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("cgroup `{path}` must not contain `.` or `..`"));
    }
    let level = u8::try_from(parts.len()).map_err(|_| format!("cgroup `{path}` is too deep"))?;
    let dir = root.join(parts.join("/"));
    let id = match std::fs::metadata(&dir) {
        Ok(md) if md.is_dir() => Some(md.ino()),
        Ok(_) => return Err(format!("cgroup `{path}`: {} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cgroup `{path}`: {e}")),
    };
    Ok(CgroupRef { path: format!("/{}", parts.join("/")), level, id })
}

/// The deepest existing directory at or above `root/path` (what to watch for the path to appear).
#[must_use]
pub fn existing_ancestor(root: &Path, path: &str) -> PathBuf {
    let mut dir = root.join(path.trim_start_matches('/'));
    while !dir.is_dir() && dir != root {
        if !dir.pop() {
            break;
        }
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_resolution() {
        let sh = resolve_exe("/bin/sh").unwrap();
        // /bin/sh is a symlink on Debian (and /bin itself may be): the file is what runs.
        assert_eq!(sh.ino, std::fs::metadata(&sh.file).unwrap().ino());
        assert!(sh.dev > 0);
        assert!(resolve_exe("bin/sh").unwrap_err().contains("absolute"));
        assert!(resolve_exe("/no/such/exe").unwrap_err().contains("No such file"));
        assert!(resolve_exe("/usr").unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn cgroup_resolution() {
        let root = std::env::temp_dir().join(format!("imdsg-cg-unit-{}", std::process::id()));
        std::fs::create_dir_all(root.join("system.slice/a.service")).unwrap();
        let a = resolve_cgroup(&root, "/system.slice/a.service/").unwrap();
        assert_eq!((a.level, a.path.as_str()), (2, "/system.slice/a.service"));
        assert_eq!(a.id, Some(std::fs::metadata(root.join("system.slice/a.service")).unwrap().ino()));
        let b = resolve_cgroup(&root, "/system.slice/b.service").unwrap();
        assert_eq!(b.id, None);
        assert_eq!(existing_ancestor(&root, "/system.slice/b.service/x"), root.join("system.slice"));
        assert!(resolve_cgroup(&root, "/").is_err());
        assert!(resolve_cgroup(&root, "system.slice").is_err());
        assert!(resolve_cgroup(&root, "/a/../b").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
