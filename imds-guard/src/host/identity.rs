//! Resolving path-based identities on this host: an executable file to the (device, inode) the
//! kernel sees in `mm->exe_file`, a cgroup path to its id and depth.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::mounts;

/// An executable, as the kernel identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExeId {
    /// As written in the policy.
    pub path: String,
    /// After following symlinks: the file that runs (as written while there is none).
    pub file: PathBuf,
    /// The file's identity; `None` while no file is at the path (deleted, not installed yet): the
    /// rule then waits for one, like a `cgroup` rule for its cgroup, and matches nothing. It must
    /// never keep the identity of a file that is gone, whose inode number another file may get.
    #[serde(flatten)]
    pub id: Option<FileId>,
}

/// A file's identity as the kernel's `mm->exe_file` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FileId {
    /// `super_block.s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u64,
    pub ino: u64,
}

/// Resolves an `exe` value. Errors say what is wrong with the path. A path at which no file
/// exists is an error, unless `wait`: then the result has no [`FileId`] (the rule waits).
pub fn resolve_exe(path: &str, wait: bool) -> Result<ExeId, String> {
    if !path.starts_with('/') {
        return Err(format!("exe `{path}` must be an absolute path"));
    }
    let file = match std::fs::canonicalize(path) {
        Ok(file) => file,
        Err(e) if wait && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ExeId { path: path.to_owned(), file: PathBuf::from(path), id: None });
        }
        Err(e) => return Err(format!("exe `{path}`: {e}")),
    };
    let md = match std::fs::metadata(&file) {
        Ok(md) => md,
        // Removed between the two calls.
        Err(e) if wait && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ExeId { path: path.to_owned(), file, id: None });
        }
        Err(e) => return Err(format!("exe `{path}`: {e}")),
    };
    if !md.is_file() {
        return Err(format!("exe `{path}` is not a regular file"));
    }
    let dev =
        kernel_dev(&file).unwrap_or_else(|| mounts::encode(libc::major(md.dev()), libc::minor(md.dev())));
    Ok(ExeId { path: path.to_owned(), file, id: Some(FileId { dev, ino: md.ino() }) })
}

/// Interpreters: an `exe` rule on one allows every script it runs.
const INTERPRETERS: &[&str] = &[
    "python",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "Rscript",
    "java",
    "bash",
    "sh",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "fish",
    "busybox",
    "awk",
    "gawk",
    "mawk",
    "pwsh",
    "osascript",
    "expect",
];

/// Whether `file` is a script interpreter (by its name: `python3.11`, `perl5.36`, `node`, `bash`,
/// ...): whoever may run it, runs their own code as it.
#[must_use]
pub fn is_interpreter(file: &Path) -> bool {
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else { return false };
    // python3.11 → python, perl5.36 → perl, ruby3.1 → ruby.
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    INTERPRETERS.contains(&base)
}

/// Who besides root could replace the program at `file`: the first of the file and the
/// directories on its path (down from `/`) that a user other than root owns, or that anyone may
/// write (a directory that is sticky, like /tmp, lets nobody replace another's file, so it only
/// counts when `file` is not root's). `None` when only root can.
#[must_use]
pub fn writable_by_others(file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut path = PathBuf::from("/");
    let mut parts = vec![path.clone()];
    for c in file.components().skip(1) {
        path.push(c);
        parts.push(path.clone());
    }
    let file_owner = std::fs::metadata(file).ok()?.uid();
    for p in parts {
        let md = std::fs::metadata(&p).ok()?;
        let mode = md.permissions().mode();
        let sticky = mode & 0o1000 != 0;
        if md.uid() != 0 {
            return Some(format!("{} belongs to uid {}", p.display(), md.uid()));
        }
        if mode & 0o002 != 0 && !(md.is_dir() && sticky && file_owner == 0) {
            return Some(format!("everyone may write {}", p.display()));
        }
        if mode & 0o020 != 0 && md.gid() != 0 && !(md.is_dir() && sticky && file_owner == 0) {
            return Some(format!("group {} may write {}", md.gid(), p.display()));
        }
    }
    None
}

/// The device of the superblock `file` lives on ([`mounts::device_of`]).
fn kernel_dev(file: &Path) -> Option<u64> {
    mounts::device_of(&mounts::current(), file)
}

/// What the connect programs would see of a running process, read from /proc.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub comm: String,
    /// Real uid and gid (what `bpf_get_current_uid_gid` reports).
    pub uid: u32,
    pub gid: u32,
    pub exe: Option<PathBuf>,
    pub exe_dev: u64,
    pub exe_ino: u64,
    /// The cgroup path relative to the cgroup2 root.
    pub cgroup: String,
    /// Ids of the cgroup and its ancestors, index = depth (0 is the root).
    pub cgroup_ancestry: Vec<u64>,
}

impl ProcessIdentity {
    pub fn of(pid: u32, cgroup_root: &Path) -> Result<Self, String> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let status =
            std::fs::read_to_string(proc.join("status")).map_err(|e| format!("process {pid}: {e}"))?;
        let field = |name: &str| -> Result<u32, String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("process {pid}: no {name} in /proc/{pid}/status"))
        };
        let (uid, gid) = (field("Uid:")?, field("Gid:")?);
        let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default().trim_end().to_owned();
        let exe = std::fs::read_link(proc.join("exe")).ok();
        let (exe_dev, exe_ino) = match std::fs::metadata(proc.join("exe")) {
            Ok(md) => {
                let dev = exe
                    .as_deref()
                    .and_then(kernel_dev)
                    .unwrap_or_else(|| mounts::encode(libc::major(md.dev()), libc::minor(md.dev())));
                (dev, md.ino())
            }
            Err(_) => (0, 0),
        };
        let cgroup = std::fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
            .ok_or_else(|| format!("process {pid} has no cgroup v2 membership in /proc/{pid}/cgroup"))?;
        let mut cgroup_ancestry = Vec::new();
        let mut dir = cgroup_root.to_owned();
        cgroup_ancestry.push(std::fs::metadata(&dir).map(|m| m.ino()).unwrap_or(0));
        for part in cgroup.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            cgroup_ancestry.push(std::fs::metadata(&dir).map(|m| m.ino()).unwrap_or(0));
        }
        Ok(ProcessIdentity { pid, comm, uid, gid, exe, exe_dev, exe_ino, cgroup, cgroup_ancestry })
    }

    /// The identity in the form the shared verdict logic takes.
    #[must_use]
    pub fn kernel_identity(&self) -> imds_guard_common::rule::Identity {
        let mut comm = [0u8; 16];
        let n = self.comm.len().min(15);
        comm[..n].copy_from_slice(&self.comm.as_bytes()[..n]);
        imds_guard_common::rule::Identity {
            uid: self.uid,
            gid: self.gid,
            exe_dev: self.exe_dev,
            exe_ino: self.exe_ino,
            comm: imds_guard_common::rule::comm_words(&comm),
        }
    }
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
        let sh = resolve_exe("/bin/sh", false).unwrap();
        // /bin/sh is a symlink on Debian (and /bin itself may be): the file is what runs.
        assert_eq!(sh.id.unwrap().ino, std::fs::metadata(&sh.file).unwrap().ino());
        assert!(sh.id.unwrap().dev > 0);
        assert!(resolve_exe("bin/sh", true).unwrap_err().contains("absolute"));
        assert!(resolve_exe("/no/such/exe", false).unwrap_err().contains("No such file"));
        assert!(resolve_exe("/usr", true).unwrap_err().contains("not a regular file"));
        // A file that is not there (yet, or any more): waits, with no identity at all.
        let gone = resolve_exe("/no/such/dir/exe", true).unwrap();
        assert_eq!((gone.id, gone.file.to_str()), (None, Some("/no/such/dir/exe")));
    }

    #[test]
    fn interpreters_are_named() {
        for p in
            ["/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/perl5.36.0", "/bin/bash", "/usr/bin/node"]
        {
            assert!(is_interpreter(Path::new(p)), "{p}");
        }
        for p in ["/usr/bin/curl", "/usr/bin/amazon-ssm-agent", "/usr/bin/pythonista-agent"] {
            assert!(!is_interpreter(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn files_others_can_replace_are_found() {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(writable_by_others(Path::new("/bin/sh")), None, "root's all the way down");
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("imdsg-writable-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub/agent");
        std::fs::write(&file, "").unwrap();
        let perm =
            |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        perm(&dir, 0o755);
        perm(&dir.join("sub"), 0o777);
        let why = writable_by_others(&file).unwrap();
        assert!(why.starts_with("everyone may write") && why.ends_with("/sub"), "{why}");
        perm(&dir.join("sub"), 0o755);
        std::os::unix::fs::chown(&file, Some(1000), None).unwrap();
        // Not root's: a sticky world-writable directory above it (/tmp) is enough, or its owner.
        let why = writable_by_others(&file).unwrap();
        assert!(why.contains("belongs to uid 1000") || why.starts_with("everyone may write"), "{why}");
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();
        if writable_by_others(&dir).is_none() {
            assert_eq!(writable_by_others(&file), None);
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
