//! Repeated violations are reported once, then counted: the first occurrence of an identical event
//! goes out at once (enriched, as JSON), the repeats within the window are only counted (no /proc
//! reads, no JSON), and when the window ends one `<event>_repeated` line carries the count. A
//! crash-looping client thus costs a bounded number of lines, and the daemon drains the ring buffer
//! faster, so the kernel drops less. Every kernel event is either delivered, aggregated or dropped
//! (counted in the kernel): delivered + aggregated + dropped = generated, exactly.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use imds_guard_common::event::Record;

use super::event::Event;

/// What makes two events "identical": who (uid, gid, comm, cgroup), what (kind, verdict, finding,
/// path) and where (destination). Not the pid: a crash-looping client has a new pid every time.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    kind: u32,
    flags: u32,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    comm: [u8; 16],
    family: u32,
    port: u32,
    addr: [u8; 16],
    finding: u32,
    path: Vec<u8>,
}

/// A kernel record's key, or the key of an event from elsewhere (NFLOG), given by its source.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum AnyKey {
    Kernel(Key),
    Other(String),
}

impl AnyKey {
    #[must_use]
    pub fn of(record: &Record) -> Self {
        AnyKey::Kernel(match record {
            Record::Connect(e) => Key {
                kind: e.kind,
                flags: e.flags,
                uid: e.uid,
                gid: e.gid,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
                family: e.family,
                port: e.port,
                addr: e.addr,
                finding: 0,
                path: Vec::new(),
            },
            Record::Request(e) => Key {
                kind: e.kind,
                flags: e.flags,
                uid: e.uid,
                gid: e.gid,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
                family: e.family,
                port: e.port,
                addr: e.addr,
                finding: e.finding,
                path: e.path[..(e.path_len as usize).min(e.path.len())].to_vec(),
            },
            // The same workload fetching the same key for the same path: a repeat. (Another key
            // is another event.)
            Record::Credentials(e) => Key {
                kind: e.kind,
                flags: e.flags,
                uid: e.uid,
                gid: e.gid,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
                family: e.family,
                port: e.port,
                addr: e.addr,
                finding: 0,
                path: [
                    &e.path[..(e.path_len as usize).min(e.path.len())],
                    b"\0",
                    &e.values[..(e.values_len as usize).min(e.values.len())],
                ]
                .concat(),
            },
        })
    }
}

struct Entry {
    first: Instant,
    repeats: u64,
    /// [`entry_bytes`].
    bytes: usize,
    /// The first occurrence, to describe the repeats.
    sample: Event,
}

/// Distinct events counted at once. Each costs its report (a few KB): without a bound, a denied
/// process that varies what makes events distinct (the port, its comm) as fast as the daemon
/// delivers them grew the daemon by ~3 KB per event (350 MB in 12 s here). Past the bound, new
/// distinct events are delivered as usual but not counted for aggregation until windows end.
pub const MAX_TRACKED: usize = 4096;
/// ... and their bytes: a report's size is the process's to choose (a 4 KiB executable path, the
/// same for four ancestors, a long cgroup), so 4,096 of them could be 100 MB. Past the bound,
/// events are delivered one by one, as past [`MAX_TRACKED`].
pub const MAX_TRACKED_BYTES: usize = 2 << 20;

/// Roughly what an entry holds on to: its key and its sample's strings.
fn entry_bytes(k: &AnyKey, e: &Event) -> usize {
    let key = match k {
        AnyKey::Kernel(k) => std::mem::size_of::<Key>() + k.path.len(),
        AnyKey::Other(s) => s.len(),
    };
    let who = e.who().map_or(0, |w| {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        w.comm.len()
            + opt(&w.user)
            + opt(&w.exe)
            + opt(&w.cgroup)
            + opt(&w.unit)
            + opt(&w.container_id)
            + w.pod.as_ref().map_or(0, |p| {
                p.namespace.len() + p.name.len() + p.uid.len() + p.container.as_ref().map_or(0, String::len)
            })
            + w.ancestors.iter().map(|a| 32 + a.comm.len() + opt(&a.exe)).sum::<usize>()
    });
    256 + key + who
}

pub struct Aggregator {
    window: Duration,
    entries: HashMap<AnyKey, Entry>,
    /// Ended windows with repeats, replaced by a new first occurrence before `flush` reported them.
    pending: Vec<Entry>,
    /// Bytes of `entries` and `pending` ([`MAX_TRACKED_BYTES`]).
    bytes: usize,
    /// Events written out individually, and repeats counted instead.
    pub delivered: u64,
    pub aggregated: u64,
}

impl Aggregator {
    /// `window` zero: every event is delivered.
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Aggregator {
            window,
            entries: HashMap::new(),
            pending: Vec::new(),
            bytes: 0,
            delivered: 0,
            aggregated: 0,
        }
    }

    /// Whether the event keyed `k` repeats one delivered within the window: then it is counted,
    /// and the first occurrence is returned (the caller writes nothing for it).
    pub fn is_repeat(&mut self, k: &AnyKey, now: Instant) -> Option<&Event> {
        if self.window.is_zero() {
            return None;
        }
        match self.entries.get_mut(k) {
            Some(e) if now.duration_since(e.first) < self.window => {
                e.repeats += 1;
                self.aggregated += 1;
                Some(&e.sample)
            }
            _ => None,
        }
    }

    /// Records a delivered event as the first of its kind in a new window.
    pub fn delivered(&mut self, k: AnyKey, report: Event, now: Instant) {
        self.delivered += 1;
        if self.window.is_zero() {
            return;
        }
        // A bounded table: past MAX_TRACKED distinct events (or MAX_TRACKED_BYTES) in their
        // windows, new ones are delivered one by one (and counted) rather than remembered.
        let bytes = entry_bytes(&k, &report);
        if !self.entries.contains_key(&k)
            && (self.entries.len() >= MAX_TRACKED || self.bytes + bytes > MAX_TRACKED_BYTES)
        {
            return;
        }
        self.bytes += bytes;
        if let Some(old) = self.entries.insert(k, Entry { first: now, repeats: 0, bytes, sample: report }) {
            if old.repeats > 0 {
                // Its window ended before `flush` came round: keep its count for the next report.
                self.pending.push(old);
            } else {
                self.bytes -= old.bytes;
            }
        }
    }

    /// The `<event>_repeated` lines of windows that have ended (all of them with `all`).
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<Event> {
        let window = self.window;
        let mut freed = 0;
        let mut out: Vec<Event> = self
            .pending
            .drain(..)
            .filter_map(|e| {
                freed += e.bytes;
                summary(&e, window)
            })
            .collect();
        self.entries.retain(|_, e| {
            if !all && now.duration_since(e.first) < window {
                return true;
            }
            freed += e.bytes;
            if e.repeats > 0 {
                out.extend(summary(e, window));
            }
            false
        });
        self.bytes -= freed;
        out
    }
}

/// The `<event>_repeated` line of an ended window.
fn summary(e: &Entry, window: Duration) -> Option<Event> {
    e.sample.repeated(e.repeats, window.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    use imds_guard_common::event::{ConnectEvent, kind};

    use crate::report::event::{Connect, Packet, Who};

    fn connect(time: &str) -> Event {
        Event::ConnectDenied(Connect {
            enforced: true,
            time: time.into(),
            who: Who { pid: 1, ..Who::default() },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        })
    }

    fn forward(time: &str) -> Event {
        Event::ForwardDenied(Packet {
            enforced: true,
            time: time.into(),
            src: "192.0.2.2".into(),
            dst: "169.254.169.254".into(),
            port: 80,
            protocol: "tcp".into(),
            family: "ipv4".into(),
            in_interface: None,
            uid: None,
            gid: None,
            user: None,
            generation: 1,
        })
    }

    fn count(e: &Event) -> u64 {
        e.occurrences()
    }

    fn key(ev: &ConnectEvent) -> AnyKey {
        AnyKey::of(&Record::Connect(*ev))
    }

    fn other(k: &str) -> AnyKey {
        AnyKey::Other(k.to_owned())
    }

    #[test]
    fn first_is_delivered_repeats_counted_then_summarised() {
        let mut a = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let ev = ConnectEvent { kind: kind::CONNECT_DENIED, uid: 7, ..ConnectEvent::default() };
        let other = ConnectEvent { uid: 8, ..ev };
        assert!(a.is_repeat(&key(&ev), t0).is_none());
        a.delivered(key(&ev), connect("t"), t0);
        for i in 0..999u64 {
            // A new pid each time (crash loop) is still the same event.
            let again = ConnectEvent { pid_tgid: i << 32, ..ev };
            assert!(a.is_repeat(&key(&again), t0 + Duration::from_millis(i)).is_some());
        }
        assert!(a.is_repeat(&key(&other), t0).is_none(), "another identity is not a repeat");
        assert!(a.flush(t0 + Duration::from_secs(5), false).is_empty(), "window still open");
        let lines = a.flush(t0 + Duration::from_secs(11), false);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].name(), "connect_denied_repeated");
        assert_eq!(count(&lines[0]), 999);
        let v = serde_json::to_value(&lines[0]).unwrap();
        assert!(v.get("pid").is_none(), "{v}");
        assert_eq!((a.delivered, a.aggregated), (1, 999));
        // After the window, the next one is delivered again.
        assert!(a.is_repeat(&key(&ev), t0 + Duration::from_secs(12)).is_none());
    }

    #[test]
    fn counts_survive_a_window_that_ends_before_the_flush() {
        let mut a = Aggregator::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let ev = key(&ConnectEvent { kind: kind::CONNECT_DENIED, uid: 7, ..ConnectEvent::default() });
        let mut generated = 0u64;
        // 5 s of a flood, one event per ms, with a flush only every 1.5 s.
        for ms in 0..5000u64 {
            let now = t0 + Duration::from_millis(ms);
            generated += 1;
            if a.is_repeat(&ev, now).is_none() {
                a.delivered(ev.clone(), connect("t"), now);
            }
            if ms % 1500 == 0 {
                let _ = a.flush(now, false);
            }
        }
        let reported: u64 = a.flush(t0 + Duration::from_secs(10), true).iter().map(count).sum();
        assert_eq!(a.delivered + a.aggregated, generated);
        assert!(reported <= a.aggregated);
        // Everything aggregated is eventually reported in some summary line.
        let mut b = Aggregator::new(Duration::from_secs(1));
        let mut lines_total = 0u64;
        for ms in 0..5000u64 {
            let now = t0 + Duration::from_millis(ms);
            if b.is_repeat(&ev, now).is_none() {
                b.delivered(ev.clone(), connect("t"), now);
            }
            if ms % 1500 == 0 {
                lines_total += b.flush(now, false).iter().map(count).sum::<u64>();
            }
        }
        lines_total += b.flush(t0 + Duration::from_secs(10), true).iter().map(count).sum::<u64>();
        assert_eq!(lines_total, b.aggregated, "no count is lost");
        assert_eq!(b.delivered + b.aggregated, 5000);
    }

    #[test]
    fn keyed_events_aggregate_apart_from_kernel_records() {
        let mut a = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(a.is_repeat(&other("forward|192.0.2.2"), t0).is_none());
        a.delivered(other("forward|192.0.2.2"), forward("t"), t0);
        for i in 0..5 {
            assert!(a.is_repeat(&other("forward|192.0.2.2"), t0 + Duration::from_millis(i)).is_some());
        }
        assert!(a.is_repeat(&other("forward|192.0.2.3"), t0).is_none(), "another source");
        let ev = ConnectEvent { kind: kind::CONNECT_DENIED, ..ConnectEvent::default() };
        assert!(a.is_repeat(&key(&ev), t0).is_none(), "kernel records have keys of their own");
        let lines = a.flush(t0 + Duration::from_secs(11), false);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].name(), count(&lines[0])), ("forward_denied_repeated", 5));
        assert!(serde_json::to_value(&lines[0]).unwrap().get("time").is_none());
    }

    #[test]
    fn memory_is_bounded_whatever_varies() {
        let mut a = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut generated = 0u64;
        // Twice as many distinct events as are tracked, each repeated: the first MAX_TRACKED are
        // aggregated, the rest delivered one by one; every one is accounted for.
        for _ in 0..3 {
            for port in 0..2 * MAX_TRACKED as u32 {
                let ev = key(&ConnectEvent { kind: kind::CONNECT_DENIED, port, ..ConnectEvent::default() });
                generated += 1;
                if a.is_repeat(&ev, t0).is_none() {
                    a.delivered(ev, connect("t"), t0);
                }
            }
            assert!(a.entries.len() <= MAX_TRACKED);
        }
        assert_eq!(a.delivered + a.aggregated, generated);
        assert_eq!(a.aggregated, 2 * MAX_TRACKED as u64, "the tracked ones repeat twice");
        let summed: u64 = a.flush(t0 + Duration::from_secs(11), false).iter().map(count).sum();
        assert_eq!(summed, a.aggregated);
        assert!(a.entries.is_empty(), "the ended windows make room");
    }

    #[test]
    fn memory_is_bounded_in_bytes_whatever_the_names() {
        use crate::report::event::Ancestor;
        let mut a = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let exe = format!("/{}", "x".repeat(4000));
        let big = || {
            let mut e = connect("t");
            if let Event::ConnectDenied(c) = &mut e {
                c.who.exe = Some(exe.clone());
                c.who.ancestors =
                    (0..4).map(|pid| Ancestor { pid, comm: "x".into(), exe: Some(exe.clone()) }).collect();
            }
            e
        };
        for port in 0..MAX_TRACKED as u32 {
            let k = key(&ConnectEvent { kind: kind::CONNECT_DENIED, port, ..ConnectEvent::default() });
            if a.is_repeat(&k, t0).is_none() {
                a.delivered(k, big(), t0);
            }
        }
        assert!(a.bytes <= MAX_TRACKED_BYTES, "{}", a.bytes);
        assert!(a.entries.len() < MAX_TRACKED / 4, "{}", a.entries.len());
        let _ = a.flush(t0 + Duration::from_secs(11), false);
        assert_eq!((a.bytes, a.entries.len()), (0, 0), "ended windows give their bytes back");
    }

    #[test]
    fn zero_window_delivers_everything() {
        let mut a = Aggregator::new(Duration::ZERO);
        let ev = ConnectEvent { kind: kind::CONNECT_DENIED, ..ConnectEvent::default() };
        let t = Instant::now();
        a.delivered(key(&ev), connect("t"), t);
        assert!(a.is_repeat(&key(&ev), t).is_none());
    }
}
