//! Boots one guest: `qemu-system-x86_64 -accel tcg` (KVM hangs on these machines), no network
//! device, the kernel given directly (no initramfs: NVMe and ext4 are built into Debian's cloud
//! kernels), the cached root image as the only NVMe disk (`snapshot=on`: the guest's writes never
//! reach the cache; with a second NVMe namespace the names would follow the kernel's asynchronous
//! scan) and the run's payload disk on virtio-blk (the guest's init loads the module). The kernel
//! console goes to `console.log`, the guest's result lines to `results.log` (the second serial
//! port), both read as they grow. A panic makes the kernel reboot and `-no-reboot` makes QEMU exit.

use std::{
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::results::End;

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub root_img: &'a Path,
    pub payload_img: &'a Path,
    /// Where console.log, results.log and qemu.log go.
    pub run_dir: &'a Path,
    /// The whole VM's time limit.
    pub timeout: Duration,
    /// Time limit until the guest's first line.
    pub boot_timeout: Duration,
    /// Time limit between two lines of a booted guest (its longest check's limit and some).
    pub idle_timeout: Duration,
    /// `init=` (the matrix's script, or systemd later).
    pub init: &'a str,
    /// More kernel command line arguments (`--append`).
    pub append: &'a str,
    /// Boot the root image itself, writable, instead of a snapshot of it (`snapshot=on`, whose
    /// changes are gone when QEMU exits): the real host's copy of the image, whose changes must
    /// live across its reboot. A reboot always ends QEMU (`-no-reboot`); the real host boots
    /// its copy again in a new QEMU.
    pub root_writable: bool,
}

/// What the host saw.
pub struct Outcome {
    pub end: End,
    pub lines: String,
    pub console: String,
    /// Seconds from starting QEMU to the guest's first line.
    pub to_first_line: Option<f64>,
    pub wall: Duration,
}

/// The kernel command line.
pub fn cmdline(init: &str, append: &str) -> String {
    // panic=-1: reboot at once on a panic (QEMU then exits, -no-reboot); random.trust_cpu: RDRAND
    // of the emulated CPU seeds the RNG, so nothing waits for entropy; loglevel=5: warnings (a
    // WARN_ON splat) reach the console, where results.rs looks for them, informational lines do not.
    format!(
        "console=ttyS0 root=/dev/nvme0n1 rootfstype=ext4 rw rootwait init={init} panic=-1 \
         random.trust_cpu=on net.ifnames=0 loglevel=5 {append}"
    )
    .trim_end()
    .to_owned()
}

pub fn command(b: &Boot<'_>) -> Command {
    let console = b.run_dir.join("console.log");
    let results = b.run_dir.join("results.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2G", "-smp", "2"])
        .args(["-nic", "none", "-nographic"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-append")
        .arg(cmdline(b.init, b.append))
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=root,format=raw,snapshot={}",
            b.root_img.display(),
            if b.root_writable { "off" } else { "on" }
        ))
        .args(["-device", "nvme,drive=root,serial=imdsg-root"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", b.payload_img.display()))
        // The two serial ports written to files, appended to (a later boot of the same guest
        // adds to them; boot() empties them for a first boot). A comma is doubled in an option.
        .arg("-chardev")
        .arg(format!("file,id=console,append=on,path={}", console.display().to_string().replace(',', ",,")))
        .args(["-serial", "chardev:console"])
        .arg("-chardev")
        .arg(format!("file,id=results,append=on,path={}", results.display().to_string().replace(',', ",,")))
        .args(["-serial", "chardev:results"])
        // A reboot (which is also what a kernel panic does, panic=-1) ends QEMU. The real host
        // boots its guest again in a new QEMU: rebooted inside the same QEMU, the second boot
        // spent 65-120 s, one emulated CPU busy, between the kernel starting systemd and
        // systemd's first line (the first boot: under 1 s).
        .arg("-no-reboot");
    // A profiling aid: a TCG plugin (`-plugin <file>[,<arg>=<value>...]`), its output in the run's
    // plugin.log (scripts/profile-msg.sh runs QEMU's cache simulator this way).
    if let Some(plugin) = std::env::var_os("IMDSG_QEMU_PLUGIN") {
        cmd.arg("-plugin").arg(plugin).args(["-d", "plugin", "-D"]).arg(b.run_dir.join("plugin.log"));
    }
    // A debugging aid: QEMU's monitor on a unix socket (`info registers` shows where a guest
    // that seems stuck spends its time; boot with `--append nokaslr` to look the address up in
    // the kernel's System.map).
    if let Some(sock) = std::env::var_os("IMDSG_QEMU_MONITOR") {
        let mut arg = std::ffi::OsString::from("unix:");
        arg.push(sock);
        arg.push(",server,nowait");
        cmd.arg("-monitor").arg(arg);
    } else {
        cmd.args(["-monitor", "none"]);
    }
    cmd
}

/// A file read as it grows, complete lines at a time.
struct Tail {
    path: PathBuf,
    pos: u64,
    partial: String,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail { path, pos: 0, partial: String::new() }
    }

    /// New complete lines since the last call.
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return Vec::new() };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.pos)).is_err() || f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut out = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            out.push(line.trim_end_matches(['\r', '\n']).to_owned());
        }
        out
    }
}

/// Runs the VM to its end, calling `on_line` with each guest line as it arrives.
pub fn boot(b: &Boot<'_>, on_line: impl FnMut(&str)) -> anyhow::Result<Outcome> {
    boot_again(b, false, on_line)
}

/// [`boot`], or with `again` a later boot of the same guest: console.log and results.log are
/// added to, not started afresh, and the outcome holds only this boot's lines and console.
pub fn boot_again(b: &Boot<'_>, again: bool, mut on_line: impl FnMut(&str)) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(b.run_dir)?;
    let mut results = Tail::new(b.run_dir.join("results.log"));
    let mut console_from = 0;
    if again {
        results.pos = std::fs::metadata(&results.path).map_or(0, |m| m.len());
        console_from = std::fs::metadata(b.run_dir.join("console.log")).map_or(0, |m| m.len());
    } else {
        for f in ["console.log", "results.log"] {
            std::fs::write(b.run_dir.join(f), "")?;
        }
    }
    let qemu_log = std::fs::File::create(b.run_dir.join("qemu.log"))?;
    let mut cmd = command(b);
    cmd.stdin(Stdio::null()).stdout(qemu_log.try_clone()?).stderr(qemu_log);
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64 (run scripts/bootstrap.sh)")?;
    let mut lines = String::new();
    let mut to_first_line = None;
    let mut last_line = start;
    let end = loop {
        for l in results.lines() {
            if to_first_line.is_none() {
                to_first_line = Some(start.elapsed().as_secs_f64());
            }
            last_line = Instant::now();
            on_line(&l);
            lines.push_str(&l);
            lines.push('\n');
        }
        match child.try_wait()? {
            Some(status) if status.success() => break End::Exited,
            Some(status) => {
                let log = std::fs::read_to_string(b.run_dir.join("qemu.log")).unwrap_or_default();
                break End::QemuFailed(format!("{status}: {}", log.trim()));
            }
            None => {}
        }
        let elapsed = start.elapsed();
        let limit = if to_first_line.is_none() && elapsed > b.boot_timeout {
            Some(End::NoBoot(b.boot_timeout.as_secs()))
        } else if elapsed > b.timeout {
            Some(End::TimedOut(b.timeout.as_secs()))
        } else if to_first_line.is_some() && last_line.elapsed() > b.idle_timeout {
            Some(End::Silent(b.idle_timeout.as_secs()))
        } else {
            None
        };
        if let Some(end) = limit {
            // Our own child, by its PID.
            let _ = child.kill();
            let _ = child.wait();
            break end;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever arrived between the last read and the exit.
    for l in results.lines() {
        on_line(&l);
        lines.push_str(&l);
        lines.push('\n');
    }
    let console = std::fs::read(b.run_dir.join("console.log")).unwrap_or_default();
    let console =
        String::from_utf8_lossy(console.get(console_from as usize..).unwrap_or_default()).into_owned();
    Ok(Outcome { end, lines, console, to_first_line, wall: start.elapsed() })
}
