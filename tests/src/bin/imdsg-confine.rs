//! Test helper: runs a program confined the way a systemd unit's sandboxing directives confine a
//! service, for a machine where systemd is not PID 1 and cannot start the unit itself. Everything
//! happens in new namespaces of this process (mount, and network with `--private-net`): the mount
//! namespace is made private first, so nothing it does reaches the host.
//!
//!   imdsg-confine [OPTIONS] -- PROGRAM ARGS...
//!
//!   --ro-root             every mount read-only, recursively        (ProtectSystem=strict,
//!                                                                    ProtectKernelTunables=,
//!                                                                    ProtectControlGroups=)
//!   --rw PATH             PATH writable again                       (ReadWritePaths=)
//!   --hide PATH           an empty read-only tmpfs over PATH        (ProtectHome=)
//!   --proc OPTIONS        a new procfs on /proc with OPTIONS        (ProcSubset=, ProtectProc=)
//!   --private-dev         a /dev with only null, zero, full, random, urandom, tty and the
//!                         fd/stdin/stdout/stderr links (PrivateDevices=)
//!   --private-net         a network namespace with only lo, down    (PrivateNetwork=)
//!   --umask OCTAL                                                   (UMask=)
//!   --memlock-infinity                                              (LimitMEMLOCK=infinity)
//!   --no-new-privs                                                  (NoNewPrivileges=)
//!   --syscalls NR,NR,...  a seccomp filter allowing exactly these x86-64 system calls, others
//!                         fail with --syscall-errno (default EPERM)  (SystemCallFilter=,
//!                                                                    SystemCallArchitectures=native)
//!   --socket-families N,N socket() only for these address families (RestrictAddressFamilies=)
//!   --deny-write-exec     mmap/mprotect refuse PROT_WRITE|PROT_EXEC  (MemoryDenyWriteExecute=)
//!
//! Capabilities are left to `setpriv` (run it as PROGRAM). The seccomp filter is installed last,
//! right before exec, and is inherited by PROGRAM and what it execs.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

#[derive(Default)]
struct Opts {
    ro_root: bool,
    rw: Vec<PathBuf>,
    hide: Vec<PathBuf>,
    proc: Option<String>,
    private_dev: bool,
    private_net: bool,
    umask: Option<u32>,
    memlock_infinity: bool,
    no_new_privs: bool,
    syscalls: Option<Vec<i64>>,
    syscall_errno: u32,
    socket_families: Option<Vec<u64>>,
    deny_write_exec: bool,
    program: Vec<String>,
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("imdsg-confine: {msg}");
    std::process::exit(125)
}

fn numbers<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').map(|n| n.parse().unwrap_or_else(|_| die(format!("not a number: {n}")))).collect()
}

fn parse() -> Opts {
    let mut o = Opts { syscall_errno: libc::EPERM.cast_unsigned(), ..Opts::default() };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(format!("{a} needs a value")));
        match a.as_str() {
            "--ro-root" => o.ro_root = true,
            "--rw" => o.rw.push(value().into()),
            "--hide" => o.hide.push(value().into()),
            "--proc" => o.proc = Some(value()),
            "--private-dev" => o.private_dev = true,
            "--private-net" => o.private_net = true,
            "--umask" => {
                o.umask =
                    Some(u32::from_str_radix(&value(), 8).unwrap_or_else(|e| die(format!("--umask: {e}"))));
            }
            "--memlock-infinity" => o.memlock_infinity = true,
            "--no-new-privs" => o.no_new_privs = true,
            "--syscalls" => o.syscalls = Some(numbers(&value())),
            "--syscall-errno" => o.syscall_errno = numbers(&value())[0],
            "--socket-families" => o.socket_families = Some(numbers(&value())),
            "--deny-write-exec" => o.deny_write_exec = true,
            "--" => {
                o.program = args.collect();
                break;
            }
            _ => die(format!("unknown option {a}")),
        }
    }
    if o.program.is_empty() {
        die("no program to run (imdsg-confine [OPTIONS] -- PROGRAM ARGS...)");
    }
    o
}

fn check(what: &str, r: nix::Result<()>) {
    if let Err(e) = r {
        die(format!("{what}: {e}"));
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets (or clears) the read-only flag of the mount at `path` and every mount below it, in this
/// mount namespace only.
fn set_readonly(path: &Path, readonly: bool) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let attr = MountAttr {
        attr_set: if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if readonly { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid path and a mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE,
            &raw const attr,
            size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        die(format!("mount_setattr {}: {}", path.display(), std::io::Error::last_os_error()));
    }
}

fn private_dev() {
    let dev = Path::new("/dev");
    check(
        "tmpfs on /dev",
        mount(
            Some("imdsg-dev"),
            dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755"),
        ),
    );
    for (name, major, minor) in
        [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
    {
        check(
            name,
            nix::sys::stat::mknod(
                &dev.join(name),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            ),
        );
    }
    // The symbolic links systemd's private /dev has too (dev_setup()): programs the daemon runs
    // (nft -f /dev/stdin) rely on them.
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        if let Err(e) = std::os::unix::fs::symlink(target, dev.join(name)) {
            die(format!("/dev/{name}: {e}"));
        }
    }
}

fn seccomp(o: &Opts, syscalls: &[i64]) -> BpfProgram {
    let cond =
        |arg, op, value| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("condition");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = syscalls.iter().map(|&nr| (nr, Vec::new())).collect();
    if let Some(families) = &o.socket_families {
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            if rules.contains_key(&nr) {
                let allowed = families.iter().map(|&f| SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, f)]));
                rules.insert(nr, allowed.collect::<Result<_, _>>().expect("rule"));
            }
        }
    }
    if o.deny_write_exec {
        // Allowed when the protection lacks PROT_EXEC or lacks PROT_WRITE (either rule matches).
        let (w, x) = (libc::PROT_WRITE as u64, libc::PROT_EXEC as u64);
        for nr in [libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_pkey_mprotect] {
            if rules.contains_key(&nr) {
                let r = vec![
                    SeccompRule::new(vec![cond(2, SeccompCmpOp::MaskedEq(x), 0)]).expect("rule"),
                    SeccompRule::new(vec![cond(2, SeccompCmpOp::MaskedEq(w), 0)]).expect("rule"),
                ];
                rules.insert(nr, r);
            }
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(o.syscall_errno),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .unwrap_or_else(|e| die(format!("seccomp filter: {e}")));
    filter.try_into().unwrap_or_else(|e| die(format!("seccomp filter: {e}")))
}

fn main() {
    let o = parse();
    let mut flags = CloneFlags::CLONE_NEWNS;
    if o.private_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    check("unshare", unshare(flags));
    // First of all: nothing done below may propagate to the host's mounts.
    check(
        "making / private",
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>),
    );
    if let Some(opts) = &o.proc {
        check(
            "procfs",
            mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(opts.as_str()),
            ),
        );
    }
    if o.private_dev {
        private_dev();
    }
    for p in &o.hide {
        if p.is_dir() {
            check(
                &format!("tmpfs on {}", p.display()),
                mount(Some("imdsg-hide"), p, Some("tmpfs"), MsFlags::MS_RDONLY, Some("mode=0755,size=4k")),
            );
        }
    }
    for p in &o.rw {
        // A mount of its own, so that it can be writable under a read-only parent.
        check(
            &format!("bind {}", p.display()),
            mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>),
        );
    }
    if o.ro_root {
        set_readonly(Path::new("/"), true);
        for p in &o.rw {
            set_readonly(p, false);
        }
    }
    if let Some(mask) = o.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    if o.memlock_infinity {
        let inf = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const inf) } != 0 {
            // Raising the hard limit needs CAP_SYS_RESOURCE, which a test container may lack; BPF
            // memory is charged to the memory cgroup since Linux 5.11 anyway.
            eprintln!(
                "imdsg-confine: RLIMIT_MEMLOCK stays at its hard limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if o.no_new_privs || o.syscalls.is_some() {
        // SAFETY: a plain prctl; a seccomp filter needs it (the process keeps its capabilities).
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            die(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()));
        }
    }
    let mut cmd = Command::new(&o.program[0]);
    cmd.args(&o.program[1..]);
    if let Some(syscalls) = &o.syscalls {
        let filter = seccomp(&o, syscalls);
        // SAFETY: installing a seccomp filter between fork and exec touches no shared state.
        unsafe {
            cmd.pre_exec(move || seccompiler::apply_filter(&filter).map_err(std::io::Error::other));
        }
    }
    let e = cmd.exec();
    die(format!("exec {}: {e}", o.program[0]));
}
