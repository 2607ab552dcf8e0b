//! Where events go: the sinks (JSON lines on stdout, the systemd journal with structured fields,
//! an append-only file with rotation), in the `--event-format` chosen ([`Line::out`]), and the
//! live stream for `imds-guard events`, always native ([`Line::json`]).
//!
//! The daemon's event loop never waits for a sink: lines are handed to one writer thread through a
//! bounded queue. A sink that cannot keep up (a stdout pipe nobody reads, a full disk) costs lines,
//! which are counted (`lines_dropped`, `write_errors` in the metrics and in `output_degraded` log
//! messages), never enforcement or the kernel's ring buffer.

use std::{
    collections::VecDeque,
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
};

use super::{Line, journal::Journal};

/// Lines queued for the writer thread before further lines are dropped (and counted)...
const QUEUE: usize = 8192;
/// ... and bytes: a line's size is chosen by the process it names (paths, cgroup and pod names
/// of it and its ancestors, escaped), so a count alone let 8,192 lines of 120 KB each (about 1 GB)
/// wait for a slow sink. A line costs its JSON twice (the line and its fields) plus the sinks'
/// line when that is another format.
const QUEUE_BYTES: usize = 8 << 20;
/// Lines kept for `imds-guard events` (without `--follow`) and sent first to a new follower...
pub const RECENT: usize = 1000;
/// ... and their bytes, whatever the lines' size: followers read from the same lines, so this
/// bounds the live stream too, however many follow and however slowly.
pub const RECENT_BYTES: usize = 2 << 20;

/// Which sinks get events.
#[derive(Clone, Debug, Default)]
pub struct SinkConfig {
    pub stdout: bool,
    /// Path of the journal socket, when events go to the journal.
    pub journal: Option<PathBuf>,
    pub file: Option<FileConfig>,
}

#[derive(Clone, Debug)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` … `.N`); the oldest is removed.
    pub keep: u32,
}

/// Counters of what happened to lines after the event loop let go of them.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Lines handed to the writer.
    pub lines: AtomicU64,
    /// Lines dropped because the writer was behind by [`QUEUE`] lines.
    pub lines_dropped: AtomicU64,
    /// Failed writes (per sink and line): the line is missing from that sink.
    pub write_errors: AtomicU64,
}

/// Sinks plus the live stream. Cheap to share: everything inside is behind an `Arc` or a lock.
pub struct Output {
    tx: Option<SyncSender<Msg>>,
    pub stats: Arc<SinkStats>,
    /// Bytes of the lines queued for the writer ([`QUEUE_BYTES`]).
    queued: Arc<AtomicUsize>,
    recent: Mutex<Recent>,
    /// The sequence number the next line will get, for followers to wait on.
    live: tokio::sync::watch::Sender<u64>,
}

/// The last lines, bounded in number and bytes, numbered so that a follower knows what it missed.
#[derive(Default)]
struct Recent {
    lines: VecDeque<Arc<str>>,
    bytes: usize,
    /// The sequence number of the line after the last one.
    next: u64,
}

impl Recent {
    fn push(&mut self, line: Arc<str>) {
        self.bytes += line.len();
        self.lines.push_back(line);
        self.next += 1;
        while self.lines.len() > RECENT || (self.bytes > RECENT_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// The lines from sequence number `seq` on, and how many of those are gone already.
    fn after(&self, seq: u64) -> (u64, Vec<Arc<str>>) {
        let first = self.next - self.lines.len() as u64;
        let missed = first.saturating_sub(seq);
        let skip = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
        (missed, self.lines.iter().skip(skip).cloned().collect())
    }
}

/// A reader of the live stream ([`Output::follow`]).
pub struct Follower {
    seq: u64,
    rx: tokio::sync::watch::Receiver<u64>,
}

impl Follower {
    /// The next lines (waiting for some), and how many were missed before them because this
    /// follower fell behind by more than the recent lines hold. `None` once the daemon ends.
    pub async fn next(&mut self, output: &Output) -> Option<(u64, Vec<Arc<str>>)> {
        loop {
            // Seen before looking, so that a line pushed after the look wakes the wait below.
            self.rx.borrow_and_update();
            let (missed, lines) =
                output.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).after(self.seq);
            if missed > 0 || !lines.is_empty() {
                self.seq += missed + lines.len() as u64;
                return Some((missed, lines));
            }
            self.rx.changed().await.ok()?;
        }
    }
}

impl Output {
    /// Starts the writer thread for `sinks` (none at all when every sink is off).
    pub fn start(sinks: SinkConfig) -> anyhow::Result<Self> {
        let stats = Arc::new(SinkStats::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let tx = if sinks.stdout || sinks.journal.is_some() || sinks.file.is_some() {
            let mut writer = Writer::open(sinks, stats.clone(), queued.clone())?;
            let (tx, rx) = sync_channel(QUEUE);
            std::thread::Builder::new().name("imdsg-output".into()).spawn(move || writer.run(&rx))?;
            Some(tx)
        } else {
            None
        };
        let (live, _) = tokio::sync::watch::channel(0);
        Ok(Output { tx, stats, queued, recent: Mutex::new(Recent::default()), live })
    }

    /// Hands one event to the sinks and the live stream; never blocks.
    pub fn send(&self, line: &Line) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let cost = cost(line);
            if self.queued.fetch_add(cost, Ordering::Relaxed) + cost > QUEUE_BYTES {
                self.queued.fetch_sub(cost, Ordering::Relaxed);
                self.stats.lines_dropped.fetch_add(1, Ordering::Relaxed);
            } else if tx.try_send(Msg::Line(line.clone())).is_err() {
                // Full (QUEUE lines) or the writer is gone.
                self.queued.fetch_sub(cost, Ordering::Relaxed);
                self.stats.lines_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let next = {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.push(line.json.clone());
            recent.next
        };
        // No receivers is fine: nobody is following.
        self.live.send_replace(next);
    }

    /// The last lines kept ([`RECENT`], [`RECENT_BYTES`]) and a follower of what comes after them
    /// (no gap, no overlap).
    pub fn subscribe(&self) -> (Vec<Arc<str>>, Follower) {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lines = recent.lines.iter().cloned().collect();
        (lines, Follower { seq: recent.next, rx: self.live.subscribe() })
    }

    /// Waits (at most 2 s) until the writer has written everything queued so far.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (ack, done) = sync_channel(1);
            if tx.send(Msg::Flush(ack)).is_ok() {
                let _ = done.recv_timeout(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// What a queued line holds on to, in bytes ([`QUEUE_BYTES`]).
fn cost(line: &Line) -> usize {
    let out = if Arc::ptr_eq(&line.out, &line.json) { 0 } else { line.out.len() };
    2 * line.json.len() + out
}

enum Msg {
    Line(Line),
    /// Answered once everything queued before it is written.
    Flush(SyncSender<()>),
}

/// The writer thread's sinks.
struct Writer {
    stdout: bool,
    journal: Option<Journal>,
    file: Option<RotatingFile>,
    stats: Arc<SinkStats>,
    queued: Arc<AtomicUsize>,
    /// Whether the last write to a sink failed, to log transitions rather than every line.
    failing: [bool; 3],
}

impl Writer {
    fn open(sinks: SinkConfig, stats: Arc<SinkStats>, queued: Arc<AtomicUsize>) -> anyhow::Result<Self> {
        let journal = sinks.journal.map(|p| Journal::new(&p)).transpose()?;
        let file = sinks.file.map(RotatingFile::open).transpose()?;
        Ok(Writer { stdout: sinks.stdout, journal, file, stats, queued, failing: [false; 3] })
    }

    fn run(&mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Line(line) => {
                    self.write(&line);
                    self.queued.fetch_sub(cost(&line), Ordering::Relaxed);
                }
                Msg::Flush(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    }

    fn write(&mut self, line: &Line) {
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let r = out
                .write_all(line.out.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush());
            self.outcome(0, "stdout", r);
        }
        if let Some(j) = &self.journal {
            let r = j.send(line);
            self.outcome(1, "journal", r);
        }
        if let Some(f) = &mut self.file {
            let r = f.append(&line.out);
            self.outcome(2, "event file", r);
        }
    }

    fn outcome(&mut self, i: usize, sink: &str, r: std::io::Result<()>) {
        match r {
            Ok(()) if self.failing[i] => {
                self.failing[i] = false;
                tracing::warn!(sink, "events are being written again");
            }
            Ok(()) => {}
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing[i] {
                    self.failing[i] = true;
                    tracing::error!(
                        sink,
                        "cannot write events ({e}); enforcement is unaffected, lines are lost until writing works again"
                    );
                }
            }
        }
    }
}

/// An append-only JSON-lines file, rotated by size (`path` → `path.1` → … → `path.keep`).
/// A failed write (a full disk) is undone by truncating back to the last whole line, so the file
/// stays one JSON object per line.
struct RotatingFile {
    cfg: FileConfig,
    file: File,
    size: u64,
}

impl RotatingFile {
    fn open(cfg: FileConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the event file's directory {}", dir.display()))?;
        }
        let file = Self::open_file(&cfg.path)
            .with_context(|| format!("opening the event file {}", cfg.path.display()))?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { cfg, file, size })
    }

    /// Never through a symbolic link (`O_NOFOLLOW`): whoever can write the file's directory could
    /// otherwise point the daemon's writes at a file of their choosing (it may run as root).
    fn open_file(path: &Path) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{} is a symbolic link; the event file is never written through one (name the file itself)",
                            path.display()
                        ),
                    )
                } else {
                    e
                }
            })
    }

    fn append(&mut self, json: &str) -> std::io::Result<()> {
        let len = json.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.cfg.max_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(json.len() + 1);
        buf.extend_from_slice(json.as_bytes());
        buf.push(b'\n');
        match self.file.write_all(&buf) {
            Ok(()) => {
                self.size += len;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.size);
                Err(e)
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| {
            let mut p = self.cfg.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.cfg.keep == 0 {
            std::fs::remove_file(&self.cfg.path).or_else(ignore_missing)?;
        } else {
            std::fs::remove_file(name(self.cfg.keep)).or_else(ignore_missing)?;
            for i in (1..self.cfg.keep).rev() {
                std::fs::rename(name(i), name(i + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.cfg.path, name(1))?;
        }
        self.file = Self::open_file(&self.cfg.path)?;
        self.size = 0;
        Ok(())
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// Whether stdout is connected to the journal (systemd sets `JOURNAL_STREAM` to the device and
/// inode of the stream it connects stdout/stderr to).
#[must_use]
pub fn stdout_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(st) = nix::sys::stat::fstat(std::io::stdout().as_fd()) else { return false };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn recent_lines_are_bounded_in_bytes_and_a_follower_learns_what_it_missed() {
        let mut r = Recent::default();
        let big: Arc<str> = "x".repeat(100 * 1024).into();
        for _ in 0..100 {
            r.push(big.clone());
        }
        assert!(r.bytes <= RECENT_BYTES && r.lines.len() == RECENT_BYTES / big.len(), "{}", r.lines.len());
        // A follower at 0 missed what was pushed out.
        let (missed, lines) = r.after(0);
        assert_eq!(missed + lines.len() as u64, 100);
        assert_eq!(r.after(100), (0, vec![]));
        for i in 0..(RECENT + 10) {
            r.push(format!("{i}").into());
        }
        assert_eq!(r.lines.len(), RECENT);
        let (missed, lines) = r.after(100 + 5);
        assert_eq!((missed, lines.len()), (5, RECENT));
    }

    #[test]
    fn file_rotates_and_survives_a_failed_write() {
        let dir = std::env::temp_dir().join(format!("imdsg-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.jsonl");
        let mut f = RotatingFile::open(FileConfig { path: path.clone(), max_bytes: 100, keep: 2 }).unwrap();
        for i in 0..20 {
            f.append(&format!("{{\"n\":{i},\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}}")).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let all: Vec<String> = [path.with_extension("jsonl.2"), path.with_extension("jsonl.1"), path.clone()]
            .iter()
            .flat_map(|p| read(p).lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        assert!(!path.with_extension("jsonl.3").exists(), "only `keep` rotated files");
        for l in &all {
            serde_json::from_str::<Value>(l).unwrap();
        }
        assert!(all.len() >= 6, "{all:?}");
        let last: Vec<u64> =
            all.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["n"].as_u64().unwrap()).collect();
        assert_eq!(*last.last().unwrap(), 19);
        assert!(last.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost between files: {last:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
