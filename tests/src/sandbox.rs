use std::{
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{Client, Daemon, FakeImds, ImdsMode};

/// Addresses the sandbox puts on its `lo`: the metadata endpoints (and their siblings) plus a
/// link-local neighbour that is *not* an endpoint.
pub const V4_ADDRS: &[&str] =
    &["169.254.169.254", "169.254.170.2", "169.254.170.23", "169.254.169.253", "100.100.100.200"];
pub const V6_ADDRS: &[&str] = &["fd00:ec2::254", "fd00:ec2::23", "fd00:ec2::253"];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process may run privileged tests. Outside CI a test skips (with a message) when
/// it cannot; under `CI=true` it fails.
pub fn privileged_or_skip(what: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("not running as root".to_owned())
    } else if cgroup2_root().is_none() {
        Some("no cgroup2 filesystem mounted".to_owned())
    } else if which("ip").is_none() {
        Some("iproute2 (`ip`) is not installed; run scripts/bootstrap.sh".to_owned())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("privileged test `{what}` cannot run under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED privileged test `{what}`: {why}");
            false
        }
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(prog)).find(|p| p.exists())
}

pub fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let mp = f.next()?;
        (post.starts_with("cgroup2 ") && root == "/").then(|| PathBuf::from(mp))
    })
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies the executable `src` to `dst` with `mode`, for a test to run it.
///
/// The copy is written by a `cp` child, never by this process: tests run on many threads, and a
/// thread that forks while this process holds the new file open for writing hands that descriptor
/// to its child until the child execs, so an `execve` of the file then fails with `ETXTBSY`
/// ("Text file busy") — which CI saw once with `std::fs::copy`.
pub fn copy_exe(src: impl AsRef<Path>, dst: impl AsRef<Path>, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let dst = dst.as_ref();
    run(Command::new("cp").arg("--").arg(src.as_ref()).arg(dst));
    fs::set_permissions(dst, fs::Permissions::from_mode(mode)).expect("chmod the copied executable");
}

/// `imds-guard run` arguments that report every event (tests count them).
const NO_AGGREGATION: &[&str] = &["--aggregate-window", "0"];

/// The imds-guard binary under test: `$IMDS_GUARD_BIN`, else `target/<profile>/imds-guard` beside
/// the running test binary, which must be newer than the sources it is built from.
pub fn guard_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("IMDS_GUARD_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let Some(bin) = exe.ancestors().skip(1).take(3).map(|d| d.join("imds-guard")).find(|c| c.is_file())
        else {
            panic!(
                "imds-guard binary not found near {}; build it first (cargo build -p imds-guard) or set \
                 IMDS_GUARD_BIN",
                exe.display()
            )
        };
        // `cargo test -p imds-guard-tests` builds the library the tests link, not the daemon they
        // run: without this, an edit to the daemon would be tested with the binary from before it.
        let built = fs::metadata(&bin).and_then(|m| m.modified()).expect("the daemon's mtime");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
        if let Some(newer) = ["imds-guard", "imds-guard-common", "imds-guard-ebpf"]
            .iter()
            .filter_map(|c| newest_source(&root.join(c)))
            .filter(|(t, _)| *t > built)
            .max()
        {
            panic!(
                "{} is older than {}: build it first (cargo build -p imds-guard, or ./x test)",
                bin.display(),
                newer.1.display()
            );
        }
        bin
    })
    .clone()
}

/// The most recently modified source file (`.rs`, `Cargo.toml`) below `dir`, and when.
fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let found = if path.is_dir() && name != "target" {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") || name == "Cargo.toml" {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
        } else {
            None
        };
        newest = newest.max(found);
    }
    newest
}

/// One test's private world. Field order is drop order: the fake IMDS stops, then the namespace,
/// pins and cgroup go.
pub struct Sandbox {
    pub name: String,
    pub imds: FakeImds,
    /// Files of the test (policies, scripts), readable by other users.
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub netns_fd: OwnedFd,
    daemons: std::sync::Mutex<Vec<u32>>,
}

impl Sandbox {
    /// A sandbox whose fake IMDS runs in `mode`; `None` when privileged tests cannot run here.
    pub fn new(test: &str, mode: ImdsMode) -> Option<Self> {
        if !privileged_or_skip(test) {
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("imdsg-{}-{n}", std::process::id());
        let cgroup_root = cgroup2_root().expect("checked");
        let cgroup = cgroup_root.join(&name);
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cgroup.display()));
        let dir = std::env::temp_dir().join(&name);
        let bpffs = dir.join("bpffs");
        fs::create_dir_all(&bpffs).expect("test dir");
        set_mode(&dir, 0o755);
        // Construct the guard early so everything made so far is removed if a step panics.
        let mut partial = Partial {
            name: name.clone(),
            cgroup: cgroup.clone(),
            dir: dir.clone(),
            bpffs: bpffs.clone(),
            netns: false,
            mounted: false,
        };
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs));
        partial.mounted = true;
        run(Command::new("ip").args(["netns", "add", &name]));
        partial.netns = true;
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        for a in V4_ADDRS {
            run(Command::new("ip").args(["-n", &name, "addr", "add", &format!("{a}/32"), "dev", "lo"]));
        }
        for a in V6_ADDRS {
            run(Command::new("ip").args([
                "-n",
                &name,
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]));
        }
        let netns_fd: OwnedFd = fs::File::open(format!("/run/netns/{name}")).expect("netns handle").into();
        let imds = FakeImds::start(&netns_fd, mode);
        std::mem::forget(partial);
        Some(Sandbox {
            name,
            imds,
            dir,
            cgroup,
            cgroup_root,
            bpffs,
            netns_fd,
            daemons: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The daemon's event socket (for `imds-guard events` / `suggest`).
    #[must_use]
    pub fn events_socket(&self) -> std::ffi::OsString {
        self.dir.join("events.sock").into_os_string()
    }

    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("imds-guard")
    }

    /// The sandbox cgroup relative to the cgroup2 root, as events report it.
    #[must_use]
    pub fn cgroup_rel(&self) -> String {
        format!("/{}", self.name)
    }

    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let p = self.dir.join(file);
        fs::write(&p, text).expect("write test file");
        set_mode(&p, 0o644);
        p
    }

    /// The AWS SDK for Python's credential fetch (botocore's `InstanceMetadataFetcher`: IMDSv2
    /// with its fallback to IMDSv1) as `uid`: `"credentials"` when it got an access key, else
    /// `"none"` (its log goes to the test's stderr).
    pub fn botocore(&self, uid: u32) -> String {
        let script = self.write(
            "sdk.py",
            r#"
from botocore.utils import InstanceMetadataFetcher
creds = InstanceMetadataFetcher(timeout=2, num_attempts=1).retrieve_iam_role_credentials()
print("credentials" if creds.get("access_key") else "none")
"#,
        );
        let mut cmd = self.client(uid, uid).command("/usr/bin/python3");
        cmd.arg(&script).env_remove("AWS_EC2_METADATA_DISABLED").env("HOME", "/nonexistent");
        let out = cmd.output().expect("run python3");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), &out.stderr);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts `imds-guard run` on this sandbox's cgroup and pin dir with `policy` and waits until
    /// it enforces.
    /// (Repeated events are not aggregated here, so tests see every event; see `daemon_with`.)
    pub fn daemon(&self, policy: &Path) -> Daemon {
        self.daemon_with(policy, NO_AGGREGATION)
    }

    /// `imds-guard run` started through `wrapper`, with `env` added (aggregation off).
    pub fn daemon_wrapped(&self, policy: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.tracked(Daemon::start_with(
            self,
            &self.netns_fd,
            policy,
            NO_AGGREGATION,
            wrapper,
            env,
            &self.cgroup,
        ))
    }

    /// `imds-guard run` started through `wrapper`, which gives it a mount namespace of its own in
    /// which the sandbox cgroup is at `cgroup` (aggregation off).
    pub fn daemon_as_seen(&self, policy: &Path, wrapper: &[&str], cgroup: &Path) -> Daemon {
        self.tracked(Daemon::start_with(self, &self.netns_fd, policy, NO_AGGREGATION, wrapper, &[], cgroup))
    }

    /// `imds-guard run` with extra arguments (aggregation off) and `env` added.
    pub fn daemon_env(&self, policy: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let extra: Vec<&str> = NO_AGGREGATION.iter().chain(extra).copied().collect();
        self.tracked(Daemon::start_with(self, &self.netns_fd, policy, &extra, &[], env, &self.cgroup))
    }

    /// `imds-guard run` with extra arguments.
    pub fn daemon_with(&self, policy: &Path, extra: &[&str]) -> Daemon {
        self.tracked(Daemon::start_with(self, &self.netns_fd, policy, extra, &[], &[], &self.cgroup))
    }

    /// `imds-guard run` (aggregation off) in another network namespace the test made.
    pub fn daemon_in(&self, netns: &OwnedFd, policy: &Path) -> Daemon {
        self.tracked(Daemon::start_with(self, netns, policy, NO_AGGREGATION, &[], &[], &self.cgroup))
    }

    /// `d`, whose pid is now this sandbox's to end when it is dropped.
    fn tracked(&self, d: Daemon) -> Daemon {
        self.daemons.lock().unwrap().push(d.pid());
        d
    }

    /// Starts `python3 script args...` in the sandbox as `uid` (stdin and stdout piped) and waits
    /// for its first line, which must be `ready`: the child (the caller's to end) and the rest of
    /// its output.
    pub fn python_ready(
        &self,
        uid: u32,
        script: &Path,
        args: &[&str],
    ) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
        use std::io::BufRead as _;
        let mut child = self
            .client(uid, uid)
            .command("/usr/bin/python3")
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{} (uid {uid}) did not get ready", script.display());
        (child, out)
    }

    /// A command that runs inside the sandbox's cgroup and network namespace as `uid`/`gid`.
    #[must_use]
    pub fn client(&self, uid: u32, gid: u32) -> Client<'_> {
        Client::new(self, uid, gid)
    }

    /// Runs the imds-guard CLI (not the daemon) with `args`, in the sandbox's network namespace
    /// (where `status` reads and `unload` removes the nftables table).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_in(&self.netns_fd, args)
    }

    /// `imds-guard status --json` of this sandbox's pin directory (it must succeed).
    #[must_use]
    pub fn status_json(&self) -> serde_json::Value {
        let o = self.cli(&["status", "--json", "--pin-dir", self.pin_dir().to_str().unwrap()]);
        assert!(o.status.success(), "status: {o:?}");
        serde_json::from_slice(&o.stdout).expect("status --json prints JSON")
    }

    /// The CLI in another network namespace the test made.
    pub fn cli_in(&self, netns: &OwnedFd, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(guard_bin());
        enter_netns(&mut cmd, netns);
        cmd.args(args).output().expect("running imds-guard")
    }

    /// Programs attached to the sandbox cgroup, one line each as bpftool prints them
    /// (`<id> <attach type> <name>`), read with BPF_PROG_QUERY itself: bookworm's bpftool
    /// passes query fields that kernels before 6.0 refuse, so `bpftool cgroup show` fails on 5.10.
    pub fn attached_programs(&self) -> String {
        attached_programs(&self.cgroup)
    }
}

/// Makes `cmd` run in the network namespace `netns` (setns before exec: unlike `ip netns exec`,
/// nothing is remounted).
pub fn enter_netns(cmd: &mut Command, netns: &OwnedFd) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let fd = netns.as_raw_fd();
    // SAFETY: only an async-signal-safe syscall between fork and exec, on an fd we keep open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Cleanup of a sandbox that is being built (and of a finished one, via Sandbox's Drop).
struct Partial {
    name: String,
    cgroup: PathBuf,
    dir: PathBuf,
    bpffs: PathBuf,
    netns: bool,
    mounted: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.netns {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
        if self.mounted {
            // Unmounting the private bpffs drops the pins: links detach, maps go.
            let _ = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH);
        }
        remove_cgroup(&self.cgroup);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for pid in self.daemons.lock().unwrap().drain(..) {
            // Our own children, by PID (the Daemon guard normally did this already).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.cast_signed()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(Partial {
            name: self.name.clone(),
            cgroup: self.cgroup.clone(),
            dir: self.dir.clone(),
            bpffs: self.bpffs.clone(),
            netns: true,
            mounted: true,
        });
    }
}

/// Removes a test cgroup, killing what the test left in it (only processes in our own cgroup).
pub(crate) fn remove_cgroup(cg: &Path) {
    // Reading the statistics flushes them for the whole subtree at once. Otherwise each child
    // that ran a process is flushed when it is released, and unlinking it from its parent's list
    // of children with pending statistics walks that list: quadratic in the number of children
    // (a test that leaves 65,000 cgroups in one directory took over two minutes to remove them).
    let _ = fs::read_to_string(cg.join("cpu.stat"));
    remove_subtree(cg);
}

/// [`remove_cgroup`] below its one flush: children first, then `cg`.
fn remove_subtree(cg: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(rd) = fs::read_dir(cg) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_subtree(&e.path());
                }
            }
        }
        if let Ok(procs) = fs::read_to_string(cg.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("could not remove test cgroup {}: {e}", cg.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// See [`Sandbox::attached_programs`].
pub fn attached_programs(cgroup: &Path) -> String {
    use std::os::fd::AsRawFd as _;
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // The cgroup attach types imds-guard uses, and others a test might meet.
    const TYPES: [(u32, &str); 9] = [
        (0, "ingress"),
        (1, "egress"),
        (2, "sock_create"),
        (3, "sock_ops"),
        (10, "connect4"),
        (11, "connect6"),
        (14, "sendmsg4"),
        (15, "sendmsg6"),
        (22, "setsockopt"),
    ];
    let dir = fs::File::open(cgroup).unwrap_or_else(|e| panic!("opening {}: {e}", cgroup.display()));
    let bpf = |cmd: libc::c_long, attr: &mut [u8; 128]| {
        // SAFETY: the bpf syscall with a zeroed attribute block of 128 bytes that it may read and write.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) }
    };
    let mut out = String::from("ID       AttachType      AttachFlags     Name\n");
    for (ty, ty_name) in TYPES {
        let mut ids = [0u32; 64];
        let mut attr = [0u8; 128];
        // union bpf_attr, query: target_fd u32, attach_type u32, query_flags u32, attach_flags u32,
        // prog_ids u64, prog_cnt u32.
        attr[0..4].copy_from_slice(&(dir.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&ty.to_ne_bytes());
        attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
        attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
        if bpf(BPF_PROG_QUERY, &mut attr) < 0 {
            continue; // an attach type this kernel does not know
        }
        let n = u32::from_ne_bytes(attr[24..28].try_into().unwrap()) as usize;
        for &id in &ids[..n.min(ids.len())] {
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&id.to_ne_bytes());
            let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
            let mut name = String::from("?");
            if fd >= 0 {
                let mut info = [0u8; 256];
                let mut attr = [0u8; 128];
                attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
                attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
                attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
                if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0 {
                    // struct bpf_prog_info: name[16] at offset 64.
                    let raw = &info[64..80];
                    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    name = String::from_utf8_lossy(&raw[..end]).into_owned();
                }
                // SAFETY: a descriptor this function opened.
                unsafe { libc::close(fd as i32) };
            }
            out.push_str(&format!("{id:<8} {ty_name:<15} {:<15} {name}\n", ""));
        }
    }
    out
}
