//! Prometheus metrics (`--metrics-addr`, off by default): what the kernel counted, and the
//! violations by workload.
//!
//! Encoded by `prometheus-client` (the Prometheus project's Rust client: OpenMetrics text with
//! correct escaping and `_total` suffixes) and served by hyper on the configured address (loopback
//! by default): OpenMetrics to a scraper that asks for it (Prometheus does), else the classic text
//! format 0.0.4 ([`classic_text`]), which `promtool check metrics` and older tools read.
//!
//! Workload labels are bounded: after [`MAX_WORKLOADS`] distinct values, new workloads are counted
//! under `workload="other"`, so a stream of short-lived pods cannot grow the series without
//! limit. Every other label has a fixed set of values (`enforced`, `finding`, `result`,
//! the kernel's `counter` names) or one series (`imds_guard_build_info`): at most 257 x 2
//! `connects_denied` and 3 x 257 x 2 `requests_reported` series (docs/EVENTS.md#metrics). A
//! workload value is at most [`MAX_LABEL`] bytes (cut in the middle, [`super::bound::middle`]).
//!
//! Whoever can connect cannot make the server hold more than [`MAX_CONNECTIONS`] connections (more
//! wait in the kernel's backlog, holding none of the daemon's descriptors), [`MAX_BUF`] bytes of
//! request per connection (hyper's default was ~400 KB: 300 connections of unfinished headers took
//! the daemon from 10 to 135 MB), headers that take longer than [`HEADER_TIMEOUT`], or a
//! connection for longer than [`CONNECTION_TIME`]. The labels name other users' executables,
//! units and pods: `--metrics-socket` serves the same on a Unix socket only its owner (0600) or
//! group (0660) can open, instead of a TCP port every local user can.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
};

use super::{Event, sinks::SinkStats};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// What the metrics read from the kernel at each scrape; the daemon hands it in.
pub trait KernelView: Send + Sync {
    /// The kernel programs' counters.
    fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>>;
    /// Whether every program is attached with a live policy (`/healthz`).
    fn enforcing(&self) -> bool;
}

/// Distinct `workload` label values before new ones become `other`.
pub const MAX_WORKLOADS: usize = 256;
/// Bytes of a `workload` label value.
pub const MAX_LABEL: usize = 256;
/// Connections served at once (a scraper and a health check need one each).
pub const MAX_CONNECTIONS: usize = 32;
/// Bytes hyper may buffer per connection (its minimum is 8 KiB).
pub const MAX_BUF: usize = 16 * 1024;
/// Time a client has to send a request's headers (from the connection, or the previous response).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Time a connection may last in all, however it is used.
pub const CONNECTION_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// `imds_guard_build_info`'s labels: one series, value 1, for joining and for alerts on what runs
/// where.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    /// imds-guard's version.
    pub version: String,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// The features the daemon runs without on this kernel, comma-separated (`""`: none), from
    /// `kernel::features::degraded`.
    pub degraded: String,
}

impl BuildInfo {
    /// This build on this kernel, running without the `degraded` features.
    #[must_use]
    pub fn here(degraded: &[&str]) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: kernel.trim().to_owned(),
            degraded: degraded.join(","),
        }
    }
}

/// The parts of the guard a kernel may lack the means for (`kernel::features::Degradation`'s
/// names): `imds_guard_feature_degraded` has a series for each, 0 or 1.
pub const DEGRADABLE: &[&str] = &["imdsv1_inspection", "credential_attribution"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradedFeature {
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Violation {
    workload: String,
    enforced: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    finding: String,
    workload: String,
    enforced: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Workload {
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelStat {
    counter: String,
}

pub struct Metrics {
    registry: Registry,
    denied: Family<Violation, Counter>,
    requests: Family<Request, Counter>,
    credentials: Family<Workload, Counter>,
    reloads: Family<Outcome, Counter>,
    kernel: Family<KernelStat, Counter>,
    delivered: Counter,
    aggregated: Counter,
    lines_dropped: Counter,
    write_errors: Counter,
    generation: Gauge,
    enforcing: Gauge,
    workloads: Mutex<HashSet<String>>,
    /// Where the kernel's counters are read from at each scrape.
    view: Box<dyn KernelView>,
    sinks: Arc<SinkStats>,
}

impl Metrics {
    #[must_use]
    pub fn new(view: Box<dyn KernelView>, sinks: Arc<SinkStats>, build: BuildInfo) -> Self {
        let mut registry = Registry::with_prefix("imds_guard");
        let info = Family::<BuildInfo, Gauge>::default();
        info.get_or_create(&build).set(1);
        let degraded = Family::<DegradedFeature, Gauge>::default();
        for feature in DEGRADABLE {
            let on = build.degraded.split(',').any(|d| d == *feature);
            degraded.get_or_create(&DegradedFeature { feature: (*feature).to_owned() }).set(i64::from(on));
        }
        registry.register(
            "build_info",
            "Always 1: the imds-guard version, the kernel release, and the features it runs without here (degraded)",
            info,
        );
        registry.register(
            "feature_degraded",
            "1 if this kernel lacks what the feature needs and the guard runs without it (imdsv1_inspection: IMDSv1 requests neither reported nor refused; credential_attribution: credentials_fetched not reported), else 0",
            degraded,
        );
        let denied = Family::<Violation, Counter>::default();
        registry.register(
            "connects_denied",
            "connect() calls to a metadata endpoint that no rule allowed (enforced=false: monitor mode, let through), by workload",
            denied.clone(),
        );
        let requests = Family::<Request, Counter>::default();
        registry.register(
            "requests_reported",
            "Requests to the metadata service reported (finding=imdsv1: tokenless; token_put_forwarded; unclassified), by workload",
            requests.clone(),
        );
        let credentials = Family::<Workload, Counter>::default();
        registry.register(
            "credentials_fetched",
            "Responses that carried credentials from a metadata endpoint to a process (credentials_fetched events, repeats included), by workload",
            credentials.clone(),
        );
        let reloads = Family::<Outcome, Counter>::default();
        registry.register("policy_reloads", "Policy reloads, by result (ok, failed)", reloads.clone());
        let kernel = Family::<KernelStat, Counter>::default();
        registry.register(
            "kernel",
            "The kernel programs' own counters (connects judged, allowed, denied, monitored; events sent, dropped; requests)",
            kernel.clone(),
        );
        let delivered = Counter::default();
        registry.register("events_delivered", "Events reported individually", delivered.clone());
        let aggregated = Counter::default();
        registry.register(
            "events_aggregated",
            "Repeats of a recent identical event, reported as a count in a *_repeated line",
            aggregated.clone(),
        );
        let lines_dropped = Counter::default();
        registry.register(
            "output_lines_dropped",
            "Event lines dropped because the sinks fell behind",
            lines_dropped.clone(),
        );
        let write_errors = Counter::default();
        registry.register(
            "output_write_errors",
            "Failed writes of an event line to a sink",
            write_errors.clone(),
        );
        let generation = Gauge::default();
        registry.register("policy_generation", "The live policy generation", generation.clone());
        let enforcing = Gauge::default();
        registry.register(
            "enforcing",
            "1 while every program is attached with a live policy (as /healthz), else 0",
            enforcing.clone(),
        );
        Metrics {
            registry,
            denied,
            requests,
            credentials,
            reloads,
            kernel,
            delivered,
            aggregated,
            lines_dropped,
            write_errors,
            generation,
            enforcing,
            workloads: Mutex::new(HashSet::new()),
            view,
            sinks,
        }
    }

    /// Counts one event (`repeat`: a repeat that was aggregated, `event` being its first
    /// occurrence).
    pub fn observe(&self, event: &Event, repeat: bool) {
        if repeat {
            self.aggregated.inc();
        } else if event.from_kernel_or_netfilter() {
            self.delivered.inc();
        }
        let request = |finding: &str, r: &super::event::Request| {
            self.requests
                .get_or_create(&Request {
                    finding: finding.into(),
                    workload: self.workload(&r.who),
                    enforced: r.enforced.to_string(),
                })
                .inc();
        };
        match event {
            Event::ConnectDenied(c) => {
                self.denied
                    .get_or_create(&Violation {
                        workload: self.workload(&c.who),
                        enforced: c.enforced.to_string(),
                    })
                    .inc();
            }
            Event::Imdsv1Request(r) => request("imdsv1", r),
            Event::TokenPutForwarded(r) => request("token_put_forwarded", r),
            Event::ImdsRequestUnclassified(r) => request("unclassified", r),
            Event::RequestDenied(r) => request("read_denied", r),
            Event::CredentialsFetched(c) => {
                self.credentials.get_or_create(&Workload { workload: self.workload(&c.who) }).inc();
            }
            Event::PolicyReloaded(r) => {
                self.reloads.get_or_create(&Outcome { result: "ok".into() }).inc();
                self.generation.set(i64::from(r.generation));
            }
            Event::GuardStarted(g) => {
                self.generation.set(i64::from(g.generation));
            }
            Event::PolicyReloadFailed(_) => {
                self.reloads.get_or_create(&Outcome { result: "failed".into() }).inc();
            }
            _ => {}
        }
    }

    /// The workload label: the strongest identity the event carries, bounded in number.
    fn workload(&self, who: &super::event::Who) -> String {
        let w = who.workload();
        let w = super::bound::middle(&w, MAX_LABEL).into_owned();
        let mut seen = self.workloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(&w) {
            return w;
        }
        if seen.len() >= MAX_WORKLOADS {
            return "other".into();
        }
        seen.insert(w.clone());
        w
    }

    /// The metrics in OpenMetrics text, with the kernel's counters read now.
    pub fn encode(&self) -> String {
        match self.view.counters() {
            Ok(counters) => {
                for (name, value) in &counters {
                    let c = self.kernel.get_or_create(&KernelStat { counter: (*name).to_owned() });
                    let now = c.get();
                    if *value > now {
                        c.inc_by(value - now);
                    }
                }
            }
            Err(e) => tracing::debug!("metrics: kernel counters unavailable: {e:#}"),
        }
        self.enforcing.set(i64::from(self.view.enforcing()));
        sync(&self.lines_dropped, self.sinks.lines_dropped.load(Ordering::Relaxed));
        sync(&self.write_errors, self.sinks.write_errors.load(Ordering::Relaxed));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        out
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a counter's `HELP` and `TYPE`
/// name its samples (`x_total`, where OpenMetrics names the family `x`), and no `# EOF`.
#[must_use]
pub fn classic_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) { "_total" } else { "" };
                out.push_str(format!("{prefix}{name}{total} {tail}").trim_end());
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether the scrape asks for OpenMetrics (its `Accept` header names it).
fn wants_openmetrics(req: &hyper::Request<hyper::body::Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")))
}

fn sync(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

/// Where metrics are served: a TCP address (`--metrics-addr`) or a Unix socket
/// (`--metrics-socket`).
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves `GET /metrics` (and `/healthz`, which answers 200 while the kernel programs are pinned
/// and attached) until the runtime ends, on at most [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(listener: Listener, hub: Arc<super::Consumers>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first, then accept: past the cap, connections wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, peer)| {
                let _ = s.set_nodelay(true);
                (Conn::Tcp(s), peer.to_string())
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| (Conn::Unix(s), "unix".to_owned())),
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: metrics wait, the daemon goes on.
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let r = match stream {
                Conn::Tcp(s) => connection(s, hub).await,
                Conn::Unix(s) => connection(s, hub).await,
            };
            if let Err(e) = r {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
            drop(slot);
        });
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// One HTTP/1 connection, bounded in buffer size, header time and lifetime.
async fn connection<S>(stream: S, m: Arc<super::Consumers>) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let m = m.clone();
        async move {
            let resp = match req.uri().path() {
                "/metrics" if wants_openmetrics(&req) => Response::builder()
                    .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                    .body(Full::new(Bytes::from(m.metrics.encode()))),
                "/metrics" => Response::builder()
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(classic_text(&m.metrics.encode())))),
                "/healthz" => {
                    let ok = m.metrics.view.enforcing();
                    Response::builder()
                        .status(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
                        .body(Full::new(Bytes::from(if ok { "enforcing\n" } else { "not enforcing\n" })))
                }
                _ => Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new())),
            };
            Ok::<_, hyper::http::Error>(resp.expect("static response parts"))
        }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .max_headers(32)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    match tokio::time::timeout(CONNECTION_TIME, conn).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("closed after {CONNECTION_TIME:?}"),
    }
}

/// Binds the metrics Unix socket at `path` with `mode` (0600 or 0660: never for every user).
pub fn bind_socket(path: &std::path::Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    if mode & 0o007 != 0 || mode & !0o777 != 0 {
        anyhow::bail!(
            "--metrics-socket-mode {mode:04o} would let every local user read the metrics, which name \
             other users' executables, units and pods; use 0600 or 0660"
        );
    }
    super::socket::bind_mode(path, mode)
}

/// Binds the metrics address, refusing a non-loopback one unless `allow_remote`.
pub fn bind(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "--metrics-addr {addr} is not a loopback address; metrics name workloads, so exposing them \
             beyond this host must be asked for with --metrics-allow-remote"
        );
    }
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("listening for metrics on {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{Connect, Who};

    struct NoKernel;

    impl KernelView for NoKernel {
        fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
            anyhow::bail!("no kernel here")
        }
        fn enforcing(&self) -> bool {
            false
        }
    }

    fn denied(uid: u32) -> Event {
        Event::ConnectDenied(Connect {
            enforced: true,
            time: String::new(),
            who: Who { uid, ..Who::default() },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        })
    }

    #[test]
    fn labels_are_bounded_and_counts_add_up() {
        let m = Metrics::new(Box::new(NoKernel), Arc::default(), BuildInfo::here(&[]));
        for i in 0..(MAX_WORKLOADS + 50) {
            m.observe(&denied(u32::try_from(i).unwrap()), false);
        }
        m.observe(&denied(0), true);
        let text = m.encode();
        let series = text.lines().filter(|l| l.starts_with("imds_guard_connects_denied_total{")).count();
        assert_eq!(series, MAX_WORKLOADS + 1, "{text}");
        assert!(
            text.contains("imds_guard_connects_denied_total{workload=\"other\",enforced=\"true\"} 50"),
            "{text}"
        );
        assert!(
            text.contains("imds_guard_connects_denied_total{workload=\"uid:0\",enforced=\"true\"} 2"),
            "{text}"
        );
        assert!(text.contains("imds_guard_events_aggregated_total 1"));
        assert!(text.contains(&format!("imds_guard_events_delivered_total {}", MAX_WORKLOADS + 50)));
        let classic = classic_text(&text);
        assert!(classic.contains("# TYPE imds_guard_connects_denied_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP imds_guard_events_aggregated_total Repeats"), "{classic}");
        assert!(classic.contains("# TYPE imds_guard_policy_generation gauge\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
        let info = text.lines().find(|l| l.starts_with("imds_guard_build_info{")).expect(&text);
        assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{info}");
        assert!(info.ends_with("degraded=\"\"} 1"), "{info}");
        assert!(text.contains("imds_guard_feature_degraded{feature=\"imdsv1_inspection\"} 0"), "{text}");
    }

    #[test]
    fn a_metrics_socket_open_to_every_user_is_refused_and_labels_are_cut() {
        let path = std::env::temp_dir().join(format!("imdsg-metrics-{}.sock", std::process::id()));
        for mode in [0o666, 0o604, 0o1600] {
            let e = bind_socket(&path, mode).unwrap_err().to_string();
            assert!(e.contains("use 0600 or 0660"), "{mode:o}: {e}");
        }
        assert!(!path.exists());
        let m = Metrics::new(Box::new(NoKernel), Arc::default(), BuildInfo::here(&[]));
        let long = |tail: &str| {
            let mut e = denied(1);
            if let Event::ConnectDenied(c) = &mut e {
                c.who.exe = Some(format!("/opt/{}/{tail}", "x".repeat(4000)));
            }
            e
        };
        m.observe(&long("a"), false);
        m.observe(&long("b"), false);
        let text = m.encode();
        let lines: Vec<&str> =
            text.lines().filter(|l| l.starts_with("imds_guard_connects_denied_total{")).collect();
        assert_eq!(lines.len(), 2, "two executables stay two series: {lines:?}");
        assert!(lines.iter().all(|l| l.len() < MAX_LABEL + 100), "{lines:?}");
    }

    #[test]
    fn a_degraded_feature_is_named_in_build_info_and_has_its_gauge() {
        let m = Metrics::new(Box::new(NoKernel), Arc::default(), BuildInfo::here(&["imdsv1_inspection"]));
        let text = m.encode();
        let info = text.lines().find(|l| l.starts_with("imds_guard_build_info{")).expect(&text);
        assert!(info.ends_with("degraded=\"imdsv1_inspection\"} 1"), "{info}");
        assert!(text.contains("imds_guard_feature_degraded{feature=\"imdsv1_inspection\"} 1"), "{text}");
    }

    /// The alert rules and the Grafana dashboard under deploy/ name only metrics the daemon
    /// serves (their PromQL is checked by promtool in `cargo xtask validate-k8s`).
    #[test]
    fn the_alerts_and_the_dashboard_use_metrics_that_exist() {
        use crate::report::event::{PolicyReloadFailed, Request};
        use imds_guard_common::stats::Stat;
        struct AllCounters;
        impl KernelView for AllCounters {
            fn counters(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
                Ok(Stat::ALL.iter().map(|s| (s.name(), 0)).collect())
            }
            fn enforcing(&self) -> bool {
                true
            }
        }
        let m = Metrics::new(Box::new(AllCounters), Arc::default(), BuildInfo::here(&[]));
        m.observe(&denied(1), false);
        let q = Request {
            enforced: false,
            time: String::new(),
            who: Who::default(),
            method: None,
            path: None,
            credentials: false,
            dst: String::new(),
            port: 80,
            family: "ipv4".into(),
            rule: None,
            generation: 1,
            unclassified: None,
            class: None,
            tokenless: false,
            reason: None,
        };
        m.observe(&Event::Imdsv1Request(q), false);
        let failed =
            PolicyReloadFailed { generation: 1, error: String::new(), reloads: 0, reload_failures: 1 };
        m.observe(&Event::PolicyReloadFailed(failed), false);
        let text = classic_text(&m.encode());
        let served: HashSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        for (file, body) in [
            (
                "charts/imds-guard/files/prometheus-rules.yaml",
                include_str!("../../../charts/imds-guard/files/prometheus-rules.yaml"),
            ),
            (
                "deploy/prometheus/grafana-dashboard.json",
                include_str!("../../../deploy/prometheus/grafana-dashboard.json"),
            ),
        ] {
            let mut named = 0;
            for (i, _) in body.match_indices("imds_guard_") {
                let name: String =
                    body[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(
                    served.contains(name.as_str()),
                    "{file} names {name}, which is not served: {served:?}"
                );
                named += 1;
            }
            assert!(named > 5, "{file}");
            // The kernel's counters by their `counter` label (`counter="x"`, `counter=~"x|y"`).
            for (i, _) in body.match_indices("counter=") {
                // In the JSON the quotes are escaped (`counter=\\"x\\"`).
                let value = body[i..].split('"').nth(1).unwrap_or_default().trim_end_matches('\\');
                for name in value.split('|') {
                    assert!(Stat::ALL.iter().any(|s| s.name() == name), "{file}: no kernel counter {name}");
                }
            }
        }
    }
}
