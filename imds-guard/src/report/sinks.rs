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
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
};

use super::{Line, journal::Journal};

/// Lines queued for the writer thread before further lines are dropped (and counted).
const QUEUE: usize = 8192;
/// Lines kept for `imds-guard events` (without `--follow`) and sent first to a new follower.
pub const RECENT: usize = 1000;

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
    recent: Mutex<VecDeque<Arc<str>>>,
    live: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Output {
    /// Starts the writer thread for `sinks` (none at all when every sink is off).
    pub fn start(sinks: SinkConfig) -> anyhow::Result<Self> {
        let stats = Arc::new(SinkStats::default());
        let tx = if sinks.stdout || sinks.journal.is_some() || sinks.file.is_some() {
            let mut writer = Writer::open(sinks, stats.clone())?;
            let (tx, rx) = sync_channel(QUEUE);
            std::thread::Builder::new().name("imdsg-output".into()).spawn(move || writer.run(&rx))?;
            Some(tx)
        } else {
            None
        };
        let (live, _) = tokio::sync::broadcast::channel(RECENT);
        Ok(Output { tx, stats, recent: Mutex::new(VecDeque::with_capacity(RECENT)), live })
    }

    /// Hands one event to the sinks and the live stream; never blocks.
    pub fn send(&self, line: &Line) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            match tx.try_send(Msg::Line(line.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.stats.lines_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(line.json.clone());
        }
        // No receivers is fine: nobody is following.
        let _ = self.live.send(line.json.clone());
    }

    /// The last [`RECENT`] lines and a receiver for what comes after them (no gap, no overlap).
    pub fn subscribe(&self) -> (Vec<Arc<str>>, tokio::sync::broadcast::Receiver<Arc<str>>) {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (recent.iter().cloned().collect(), self.live.subscribe())
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
    /// Whether the last write to a sink failed, to log transitions rather than every line.
    failing: [bool; 3],
}

impl Writer {
    fn open(sinks: SinkConfig, stats: Arc<SinkStats>) -> anyhow::Result<Self> {
        let journal = sinks.journal.map(|p| Journal::new(&p)).transpose()?;
        let file = sinks.file.map(RotatingFile::open).transpose()?;
        Ok(Writer { stdout: sinks.stdout, journal, file, stats, failing: [false; 3] })
    }

    fn run(&mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Line(line) => self.write(&line),
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

    fn open_file(path: &Path) -> std::io::Result<File> {
        std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)
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
