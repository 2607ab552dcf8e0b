//! Floods of denied connects with the daemon running: a million identical ones from several
//! processes, and half a million that are all different (every port, several comms), which is what
//! defeats aggregation. The daemon's memory stays bounded (its peak RSS, `VmHWM`, hardly moves
//! from start-up) and the counts are exact: the kernel counted every attempt, and every event it
//! generated was delivered, aggregated into a `*_repeated` count, or dropped and counted.
//!
//! Rates are printed, not asserted (tests assert behaviour; `cargo xtask bench` measures).
//! The floods share the machine with nothing else in this binary: they take turns.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use imds_guard_tests::{Daemon, ImdsMode, Sandbox, client::connect_bin};
use serde_json::Value;

const NOBODY: u32 = 65534;
const IMDS: &str = "169.254.169.254";

/// One flood at a time (they would otherwise share the two cores and each other's numbers).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn counters(sb: &Sandbox) -> Value {
    let o = sb.cli(&["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    assert!(o.status.success(), "status: {o:?}");
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["counters"].clone()
}

/// Runs `procs` (each a list of imdsg-connect steps) at once as nobody; returns the number of
/// connects refused with EPERM (asserting nothing else happened) and how long it took.
fn flood(sb: &Sandbox, procs: &[Vec<String>]) -> (u64, Duration) {
    let prog = connect_bin();
    let t = Instant::now();
    let refused = std::thread::scope(|scope| {
        let handles: Vec<_> = procs
            .iter()
            .map(|steps| {
                let prog = &prog;
                scope.spawn(move || {
                    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
                    sb.client(NOBODY, NOBODY).steps(prog.to_str().unwrap(), None, &steps)
                })
            })
            .collect();
        let mut refused = 0;
        for h in handles {
            for line in h.join().unwrap() {
                let counts = line.as_object().unwrap().values().next().unwrap().as_object().unwrap();
                assert_eq!(counts.keys().collect::<Vec<_>>(), ["EPERM"], "every connect refused: {line}");
                refused += counts["EPERM"].as_u64().unwrap();
            }
        }
        refused
    });
    (refused, t.elapsed())
}

/// Waits until every denial the kernel generated is accounted for in the daemon's output:
/// delivered (`connect_denied`) + aggregated (`connect_denied_repeated` counts) + dropped
/// (`events_dropped`) = generated (`denied`). Returns (delivered, aggregated, dropped, lines).
fn accounted(sb: &Sandbox, d: &Daemon, generated: u64) -> (u64, u64, u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let evs = d.events();
        let delivered = evs.iter().filter(|e| e["event"] == "connect_denied").count() as u64;
        let repeated: Vec<&Value> = evs.iter().filter(|e| e["event"] == "connect_denied_repeated").collect();
        let aggregated: u64 = repeated.iter().map(|e| e["count"].as_u64().unwrap()).sum();
        let c = counters(sb);
        let dropped = c["events_dropped"].as_u64().unwrap();
        assert_eq!(c["denied"].as_u64(), Some(generated), "the kernel counted every attempt: {c}");
        assert_eq!(c["events_sent"].as_u64().unwrap() + dropped, generated, "one event per denial: {c}");
        if delivered + aggregated + dropped == generated {
            return (delivered, aggregated, dropped, (delivered as usize) + repeated.len());
        }
        assert!(
            delivered + aggregated + dropped < generated && Instant::now() < deadline,
            "never added up: {delivered} delivered + {aggregated} aggregated + {dropped} dropped != {generated}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn steps(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|&s| s.to_owned()).collect()
}

#[test]
fn a_million_denied_connects_keep_the_daemon_small_and_the_counts_exact() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(sb) = Sandbox::new("flood_million", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    // 1 s windows, so that several of them end during the flood and their counts are reported.
    let d = sb.daemon_with(&policy, &["--aggregate-window", "1"]);
    let (start_peak, _) = d.memory();

    // Four processes, 250,000 connects each, two to the IPv4 endpoint and two to the IPv6 one.
    let procs: Vec<Vec<String>> = [IMDS, IMDS, "fd00:ec2::254", "fd00:ec2::254"]
        .iter()
        .map(|addr| steps(&["repeat", addr, "80", "250000"]))
        .collect();
    let (refused, took) = flood(&sb, &procs);
    assert_eq!(refused, 1_000_000);
    let (delivered, aggregated, dropped, lines) = accounted(&sb, &d, refused);
    let (peak, rss) = d.memory();
    eprintln!(
        "1,000,000 denied connects from 4 processes in {:.1} s ({:.0}/s): {delivered} delivered + \
         {aggregated} aggregated + {dropped} dropped, in {lines} lines; daemon peak RSS {start_peak} KiB \
         at start, {peak} KiB after (now {rss} KiB)",
        took.as_secs_f64(),
        refused as f64 / took.as_secs_f64()
    );
    assert!(lines < 200, "aggregated into a bounded number of lines: {lines}");
    assert!(peak <= start_peak + 16 * 1024, "the daemon grew from {start_peak} to {peak} KiB");
}

#[test]
fn half_a_million_distinct_denials_keep_the_daemon_small_and_the_counts_exact() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(sb) = Sandbox::new("flood_distinct", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    // The default window (10 s): nothing ends during the flood, so every distinct event would
    // stay tracked if nothing bounded them.
    let d = sb.daemon_with(&policy, &[]);
    let (start_peak, _) = d.memory();

    // Every port, under two names per process: 4 x 2 x 65,535 = 524,280 events, all different.
    let procs: Vec<Vec<String>> = (0..4)
        .map(|p| {
            let mut s = Vec::new();
            for round in 0..2 {
                s.extend(steps(&["comm", &format!("flood-{p}-{round}"), "ports", IMDS, "1", "65535"]));
            }
            s
        })
        .collect();
    let (refused, took) = flood(&sb, &procs);
    assert_eq!(refused, 4 * 2 * 65_535);
    let (delivered, aggregated, dropped, lines) = accounted(&sb, &d, refused);
    let (peak, rss) = d.memory();
    eprintln!(
        "{refused} distinct denied connects from 4 processes in {:.1} s ({:.0}/s): {delivered} delivered + \
         {aggregated} aggregated + {dropped} dropped; daemon peak RSS {start_peak} KiB at start, {peak} KiB \
         after (now {rss} KiB)",
        took.as_secs_f64(),
        refused as f64 / took.as_secs_f64()
    );
    assert_eq!(aggregated, 0, "nothing repeated");
    assert_eq!(lines as u64, delivered);
    assert!(
        delivered > imds_guard::report::aggregate::MAX_TRACKED as u64,
        "more distinct events were delivered ({delivered}) than are tracked at once"
    );
    // Bounded, not flat: the output queue holds up to 8,192 lines (each with its ancestry and
    // paths) while the writer falls behind, ~32-34 MB over a start of ~19 MB here (peak ~53 MB
    // both before and after the start-up stopped copying the kernel's BTF, which had made the
    // start peak 31 MB). Unbounded, this was 350 MB in 12 s.
    assert!(peak <= start_peak + 40 * 1024, "the daemon grew from {start_peak} to {peak} KiB");
}
