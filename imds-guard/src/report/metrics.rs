//! Prometheus metrics (`--metrics-addr`, off by default): what the kernel counted, and the
//! violations by workload.
//!
//! Encoded by `prometheus-client` (the Prometheus project's Rust client: OpenMetrics text with
//! correct escaping and `_total` suffixes) and served by hyper on the configured address (loopback
//! by default). Workload labels are bounded: after [`MAX_WORKLOADS`] distinct values, new workloads
//! are counted under `workload="other"`, so a stream of short-lived pods cannot grow the series
//! without limit.

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
    reloads: Family<Outcome, Counter>,
    kernel: Family<KernelStat, Counter>,
    delivered: Counter,
    aggregated: Counter,
    lines_dropped: Counter,
    write_errors: Counter,
    generation: Gauge,
    workloads: Mutex<HashSet<String>>,
    /// Where the kernel's counters are read from at each scrape.
    view: Box<dyn KernelView>,
    sinks: Arc<SinkStats>,
}

impl Metrics {
    #[must_use]
    pub fn new(view: Box<dyn KernelView>, sinks: Arc<SinkStats>) -> Self {
        let mut registry = Registry::with_prefix("imds_guard");
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
        Metrics {
            registry,
            denied,
            requests,
            reloads,
            kernel,
            delivered,
            aggregated,
            lines_dropped,
            write_errors,
            generation,
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
        } else if event.is_violation() {
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
        sync(&self.lines_dropped, self.sinks.lines_dropped.load(Ordering::Relaxed));
        sync(&self.write_errors, self.sinks.write_errors.load(Ordering::Relaxed));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        out
    }
}

fn sync(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

/// Serves `GET /metrics` (and `/healthz`, which answers 200 while the kernel programs are pinned
/// and attached) until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, hub: Arc<super::Consumers>) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = hub.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(m.metrics.encode()))),
                        "/healthz" => {
                            let ok = m.metrics.view.enforcing();
                            Response::builder()
                                .status(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
                                .body(Full::new(Bytes::from(if ok {
                                    "enforcing\n"
                                } else {
                                    "not enforcing\n"
                                })))
                        }
                        _ => Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new())),
                    };
                    Ok::<_, hyper::http::Error>(resp.expect("static response parts"))
                }
            });
            if let Err(e) =
                http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await
            {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
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
        })
    }

    #[test]
    fn labels_are_bounded_and_counts_add_up() {
        let m = Metrics::new(Box::new(NoKernel), Arc::default());
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
    }
}
