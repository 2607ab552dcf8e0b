//! The mount table (`/proc/self/mountinfo`), read in one place: where the cgroup2 hierarchy is,
//! which device a file's superblock is, and where a filesystem whose root-relative path the
//! kernel reported is mounted.

use std::path::{Path, PathBuf};

/// One line of mountinfo: `36 35 98:0 /sub /mnt/point rw,… shared:9 - ext4 /dev/vda rw`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The superblock's device in the kernel's encoding (`major << 20 | minor`), what the kernel
    /// programs read from `sb->s_dev`.
    pub dev: u64,
    /// The directory of the filesystem that is mounted (`/` unless a bind mount of a part of it).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// The kernel's `dev_t` encoding, as `sb->s_dev` holds it.
#[must_use]
pub const fn encode(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | minor as u64
}

/// The mounts of `mountinfo`; lines it cannot read are left out.
#[must_use]
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo.lines().filter_map(parse_line).collect()
}

/// The mounts of this process's mount namespace (empty when /proc cannot be read).
#[must_use]
pub fn current() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|s| parse(&s)).unwrap_or_default()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split_whitespace();
    let (ma, mi) = f.nth(2)?.split_once(':')?;
    let root = unescape(f.next()?);
    let mount_point = unescape(f.next()?);
    Some(Mount {
        dev: encode(ma.parse().ok()?, mi.parse().ok()?),
        root: PathBuf::from(root),
        mount_point: PathBuf::from(mount_point),
        fstype: post.split_whitespace().next()?.to_owned(),
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
#[must_use]
pub fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The device of the superblock `file` lives on: that of the mount with the longest mount point
/// containing it (the last such, as mounts stack). Unlike `stat`'s `st_dev`, this is `sb->s_dev`
/// also on filesystems that report another device to stat (btrfs subvolumes).
#[must_use]
pub fn device_of(mounts: &[Mount], file: &Path) -> Option<u64> {
    let mut best: Option<(usize, u64)> = None;
    for m in mounts {
        let len = m.mount_point.as_os_str().len();
        if file.starts_with(&m.mount_point) && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, m.dev));
        }
    }
    best.map(|(_, d)| d)
}

/// Where the file that the kernel named `fs_path` — a path from the root of the filesystem on
/// device `dev`, as a walk of its dentries gives it — may be seen from here: one candidate per
/// mount of that filesystem whose root contains it, in mount-table order. The caller confirms a
/// candidate (same device and inode) before trusting it.
#[must_use]
pub fn paths_in_mounts(mounts: &[Mount], dev: u64, fs_path: &Path) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.dev == dev)
        .filter_map(|m| {
            let rest = fs_path.strip_prefix(&m.root).ok()?;
            Some(if rest.as_os_str().is_empty() { m.mount_point.clone() } else { m.mount_point.join(rest) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
36 22 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw
90 22 7:3 / /snap/aws-cli/1234 ro,nodev,relatime shared:40 - squashfs /dev/loop3 ro
91 22 253:2 /srv/tools /opt/my\\040tools rw,relatime shared:41 - xfs /dev/vdb rw
92 22 253:2 / /data rw,relatime shared:42 - xfs /dev/vdb rw
bad line
";

    #[test]
    fn lines_are_read_with_their_escapes() {
        let m = parse(INFO);
        assert_eq!(m.len(), 5, "the bad line is left out");
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[3].mount_point, Path::new("/opt/my tools"));
        assert_eq!(m[3].root, Path::new("/srv/tools"));
        assert_eq!(m[2].dev, encode(7, 3));
    }

    #[test]
    fn the_longest_mount_point_names_the_device() {
        let m = parse(INFO);
        assert_eq!(device_of(&m, Path::new("/snap/aws-cli/1234/bin/aws")), Some(encode(7, 3)));
        assert_eq!(device_of(&m, Path::new("/snap/aws-cli/12345/bin/aws")), Some(encode(253, 1)));
        assert_eq!(device_of(&m, Path::new("/usr/bin/curl")), Some(encode(253, 1)));
    }

    #[test]
    fn a_filesystem_path_is_found_under_each_mount_of_its_device() {
        let m = parse(INFO);
        assert_eq!(
            paths_in_mounts(&m, encode(7, 3), Path::new("/bin/aws")),
            [PathBuf::from("/snap/aws-cli/1234/bin/aws")]
        );
        // Mounted twice: whole, and a bind mount of a directory of it.
        assert_eq!(
            paths_in_mounts(&m, encode(253, 2), Path::new("/srv/tools/agent")),
            [PathBuf::from("/opt/my tools/agent"), PathBuf::from("/data/srv/tools/agent")]
        );
        // Outside the bind mount's directory: only the whole mount shows it.
        assert_eq!(
            paths_in_mounts(&m, encode(253, 2), Path::new("/srv/toolsx/agent")),
            [PathBuf::from("/data/srv/toolsx/agent")]
        );
        assert!(paths_in_mounts(&m, encode(9, 9), Path::new("/bin/aws")).is_empty());
    }
}
