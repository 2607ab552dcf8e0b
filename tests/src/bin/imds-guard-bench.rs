//! `cargo xtask bench`: what imds-guard costs, measured in one run on this machine.
//!
//! In-kernel cost comes from the kernel's BPF run statistics (`kernel.bpf_stats_enabled`, restored
//! afterwards), with an empty program of each attach type attached beside imds-guard's on the
//! same cgroup as the floor; both see exactly the same connects. Whole-process numbers (connect
//! rate, throughput, latency) are medians of interleaved runs and are reported as ratios, since
//! this shared 2-core machine varies by ±15 % from one minute to the next.
//!
//! Everything runs in a sandbox (child cgroup, network namespace, fake IMDS, private bpffs). The
//! bench re-executes itself as the workload (`imds-guard-bench worker ...`).

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramInfo, SkMsg, SockOps, loaded_programs},
};
use imds_guard_tests::{Daemon, ImdsMode, Sandbox};
use serde_json::{Value, json};

const PORT: u16 = 9000;
const NOBODY: u32 = 65534;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        worker(&args[1..]);
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "the benchmark loads eBPF programs and makes a sandbox: run it as root (cargo xtask bench)"
        );
        std::process::exit(1);
    }
    let out_md = args.iter().position(|a| a == "--markdown").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let out_json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    // SIGINT/SIGTERM end the run like a panic does: unwinding, so the sandbox is removed.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let results = run();
    let md = markdown(&results);
    println!("{md}");
    if let Some(p) = out_md {
        fs::write(&p, &md).expect("write markdown");
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = out_json {
        fs::write(&p, serde_json::to_string_pretty(&results).unwrap()).expect("write json");
        eprintln!("wrote {}", p.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads, run inside the sandbox by re-executing this binary.

fn worker(args: &[String]) {
    let arg = |i: usize| args[i].as_str();
    let num = |i: usize| args[i].parse::<u64>().expect("number");
    let out = match arg(0) {
        "serve" => {
            // PORT: accept and close at once (the server closes first, so the client's connects
            // do not pile up in TIME_WAIT and the connect rate measures connect). PORT+1: a sink.
            let port = num(1) as u16;
            let quick = TcpListener::bind(("::", port)).expect("bind");
            let sink = TcpListener::bind(("::", port + 1)).expect("bind");
            std::thread::spawn(move || {
                for s in sink.incoming().flatten() {
                    std::thread::spawn(move || {
                        let mut s = s;
                        let mut buf = vec![0u8; 1 << 16];
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
            });
            println!("{{\"ready\":true}}");
            std::io::stdout().flush().unwrap();
            for s in quick.incoming().flatten() {
                drop(s);
            }
            return;
        }
        "connects" => {
            // The address is parsed once: only connect() and close() are timed.
            let sa = std::net::SocketAddr::new(arg(1).parse().expect("address"), num(2) as u16);
            let n = num(3);
            let t = Instant::now();
            for _ in 0..n {
                match TcpStream::connect(sa) {
                    Ok(s) => drop(s),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => panic!("connect: {e}"),
                }
            }
            json!({"secs": t.elapsed().as_secs_f64(), "n": n})
        }
        "throughput" => {
            let sa = std::net::SocketAddr::new(arg(1).parse().expect("address"), num(2) as u16);
            let bytes = num(3);
            let mut s = TcpStream::connect(sa).expect("connect");
            let chunk = vec![0x5au8; 1 << 16];
            let t = Instant::now();
            let mut sent = 0;
            while sent < bytes {
                s.write_all(&chunk).unwrap();
                sent += chunk.len() as u64;
            }
            s.shutdown(Shutdown::Write).unwrap();
            json!({"secs": t.elapsed().as_secs_f64(), "bytes": sent})
        }
        "imds" => {
            let n = num(1);
            let mut lat = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                let token = http(
                    "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
                );
                let body = http(&format!(
                    "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
                ));
                assert!(!body.is_empty());
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            json!({"lat_us": lat})
        }
        "flood-connect" => {
            let until = Instant::now() + Duration::from_millis(num(1));
            let mut n = 0u64;
            while Instant::now() < until {
                let _ = TcpStream::connect(("169.254.169.254", 80));
                n += 1;
            }
            json!({"n": n})
        }
        "flood-v1" => {
            let until = Instant::now() + Duration::from_millis(num(1));
            let mut n = 0u64;
            while Instant::now() < until {
                let _ = http(
                    "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
                );
                n += 1;
            }
            json!({"n": n})
        }
        other => panic!("unknown worker {other}"),
    };
    println!("{out}");
}

/// One request on a fresh connection; the response body.
fn http(req: &str) -> String {
    let mut s = TcpStream::connect(("169.254.169.254", 80)).expect("connect to the fake IMDS");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

// ---------------------------------------------------------------------------------------------

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn run_worker(sb: &Sandbox, uid: u32, cgroup: &Path, args: &[&str]) -> Value {
    assert!(!STOP.load(std::sync::atomic::Ordering::Relaxed), "interrupted");
    let exe = std::env::current_exe().unwrap();
    let out = sb
        .client(uid, uid)
        .at_cgroup(cgroup)
        .command(exe.to_str().unwrap())
        .arg("worker")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "worker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("worker {args:?} output: {e}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Run statistics of a loaded program, by id.
fn stats(id: u32) -> (u64, u64) {
    let info: ProgramInfo = loaded_programs().flatten().find(|p| p.id() == id).expect("program still loaded");
    (info.run_time().as_nanos() as u64, info.run_count())
}

/// The id of the newest loaded program with this name (the daemon's, loaded last).
fn newest(name: &str) -> u32 {
    loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .max()
        .unwrap_or_else(|| panic!("{name} not loaded"))
}

struct BpfStats {
    old: String,
}

impl BpfStats {
    fn enable() -> Self {
        let old = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enable kernel.bpf_stats_enabled");
        BpfStats { old: old.trim().to_owned() }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.old);
    }
}

/// A child process that is killed (and reaped) on drop, also when the bench panics.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sibling cgroup of the sandbox with no program attached (the "nothing" condition).
struct BareCgroup(PathBuf);

impl Drop for BareCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Iptables {
    ns: String,
    rule: Vec<String>,
}

impl Iptables {
    /// The AWS-documented alternative: reject metadata traffic by owner (here: everyone but root).
    fn add(ns: &str) -> Self {
        let rule: Vec<String> =
            ["OUTPUT", "-d", "169.254.169.254", "-m", "owner", "!", "--uid-owner", "0", "-j", "REJECT"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let st =
            Command::new("ip").args(["netns", "exec", ns, "iptables", "-A"]).args(&rule).status().unwrap();
        assert!(st.success(), "iptables -A");
        Iptables { ns: ns.to_owned(), rule }
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        let _ =
            Command::new("ip").args(["netns", "exec", &self.ns, "iptables", "-D"]).args(&self.rule).status();
    }
}

fn proc_field(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field).map(|v| v.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn counter(sb: &Sandbox, name: &str) -> u64 {
    let out = sb.cli(&["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    v["counters"][name].as_u64().unwrap_or(0)
}

fn run() -> Value {
    let _stats = BpfStats::enable();
    let sb = Sandbox::new("bench", ImdsMode::Optional).expect("sandbox");
    let bare = BareCgroup(sb.cgroup_root.join(format!("{}-bare", sb.name)));
    fs::create_dir(&bare.0).expect("bare cgroup");
    let mut r = BTreeMap::<&str, Value>::new();

    // A loopback server in the namespace (dual stack), outside both measured cgroups' programs'
    // concern: it only accepts.
    let exe = std::env::current_exe().unwrap();
    let mut server = Killed(
        sb.client(0, 0)
            .at_cgroup(&bare.0)
            .command(exe.to_str().unwrap())
            .args(["worker", "serve", &PORT.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    {
        let mut line = String::new();
        let mut so = std::io::BufReader::new(server.0.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut so, &mut line).unwrap();
    }

    // Daemon: time from exec to enforcing, idle RSS.
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let t = Instant::now();
    let d: Daemon = sb.daemon_with(&policy, &["--aggregate-window", "1"]);
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss_kb = proc_field(d.pid(), "VmRSS:");

    // 1. In-kernel cost per run, against empty programs on the same cgroup.
    // Its maps are pinned in the sandbox's private bpffs, never the host's /sys/fs/bpf.
    let bench_pins = sb.bpffs.join("bench");
    fs::create_dir_all(&bench_pins).unwrap();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&bench_pins)
        .load(imds_guard::guard::EBPF_OBJECT)
        .expect("load object");
    let cg = fs::File::open(&sb.cgroup).unwrap();
    let mut floor: BTreeMap<&'static str, u32> = BTreeMap::new();
    for name in ["bench_connect4", "bench_connect6", "bench_connect4_addr", "bench_connect6_addr"] {
        let p: &mut CgroupSockAddr = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach(&cg, CgroupAttachMode::Single).unwrap();
        floor.insert(name, p.info().unwrap().id());
    }
    {
        let p: &mut SockOps = ebpf.program_mut("bench_sockops").unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach(&cg, CgroupAttachMode::Single).unwrap();
        floor.insert("bench_sockops", p.info().unwrap().id());
        let p: &mut SkMsg = ebpf.program_mut("bench_msg").unwrap().try_into().unwrap();
        p.load().unwrap();
        floor.insert("bench_msg", p.info().unwrap().id());
    }
    let ours: BTreeMap<&str, u32> = ["imdsg_connect4", "imdsg_connect6", "imdsg_sockops", "imdsg_msg"]
        .iter()
        .map(|n| (*n, newest(n)))
        .collect();
    fn snap(ids: &BTreeMap<&'static str, u32>) -> BTreeMap<&'static str, (u64, u64)> {
        ids.iter().map(|(n, id)| (*n, stats(*id))).collect()
    }
    let delta = |a: &BTreeMap<&str, (u64, u64)>, b: &BTreeMap<&str, (u64, u64)>, n: &str| {
        let (t0, c0) = a[n];
        let (t1, c1) = b[n];
        let runs = c1 - c0;
        (if runs == 0 { 0.0 } else { (t1 - t0) as f64 / runs as f64 }, runs)
    };
    const N: &str = "20000";
    let (o0, f0) = (snap(&ours), snap(&floor));
    run_worker(&sb, 0, &sb.cgroup, &["connects", "127.0.0.1", "9", N]);
    run_worker(&sb, 0, &sb.cgroup, &["connects", "::1", "9", N]);
    let (o1, f1) = (snap(&ours), snap(&floor));
    let mut kernel = Vec::new();
    for (ours_name, floor_name, addr_floor, what) in [
        ("imdsg_connect4", "bench_connect4", Some("bench_connect4_addr"), "connect4, non-metadata connect"),
        ("imdsg_connect6", "bench_connect6", Some("bench_connect6_addr"), "connect6, non-metadata connect"),
        ("imdsg_sockops", "bench_sockops", None, "sockops, every callback of non-metadata TCP sockets"),
    ] {
        let (o, runs) = delta(&o0, &o1, ours_name);
        let (f, _) = delta(&f0, &f1, floor_name);
        let a = addr_floor.map(|n| delta(&f0, &f1, n).0);
        kernel.push(json!({"program": ours_name, "what": what, "runs": runs, "ns_per_run": o, "floor_ns_per_run": f, "over_floor_ns": o - f, "target_over_floor_ns": 5.0, "reads_destination_floor_ns_per_run": a, "over_reads_destination_ns": a.map(|a| o - a)}));
    }
    let (m0, _) = (snap(&ours), ());
    run_worker(&sb, 0, &sb.cgroup, &["imds", "500"]);
    let m1 = snap(&ours);
    for (name, what) in [
        ("imdsg_connect4", "connect4, metadata connect (rule lookup)"),
        ("imdsg_msg", "sk_msg, per request written to IMDS"),
    ] {
        let (o, runs) = delta(&m0, &m1, name);
        kernel.push(json!({"program": name, "what": what, "runs": runs, "ns_per_run": o, "floor_ns_per_run": null, "over_floor_ns": null, "target_over_floor_ns": null}));
    }
    r.insert("kernel", Value::Array(kernel));
    drop(ebpf); // detach the empty programs before timing whole processes

    // 2. Loopback connect rate and bulk throughput: guard vs nothing vs iptables owner match.
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut tput: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    const CONDS: [&str; 3] = ["nothing", "imds-guard", "iptables"];
    for round in 0..6 {
        // Each round starts with another condition, so none always runs first (or last).
        for k in 0..3 {
            let cond = CONDS[(round + k) % 3];
            let cgroup = if cond == "imds-guard" { sb.cgroup.clone() } else { bare.0.clone() };
            let _ipt = (cond == "iptables").then(|| Iptables::add(&sb.name));
            // A closed port: the hooks run and the SYN goes out, the kernel answers RST at once; no
            // server side (accept, TIME_WAIT) is mixed into the number.
            let v = run_worker(&sb, 0, &cgroup, &["connects", "127.0.0.1", "9", "20000"]);
            rates.entry(cond).or_default().push(v["n"].as_f64().unwrap() / v["secs"].as_f64().unwrap());
            let v =
                run_worker(&sb, 0, &cgroup, &["throughput", "127.0.0.1", "9001", &(1u64 << 30).to_string()]);
            tput.entry(cond)
                .or_default()
                .push(v["bytes"].as_f64().unwrap() / v["secs"].as_f64().unwrap() / 1e6);
        }
    }
    let med = |m: &mut BTreeMap<&str, Vec<f64>>, k: &str| median(m.get_mut(k).unwrap());
    let (rn, rg, ri) =
        (med(&mut rates, "nothing"), med(&mut rates, "imds-guard"), med(&mut rates, "iptables"));
    let (tn, tg, ti) = (med(&mut tput, "nothing"), med(&mut tput, "imds-guard"), med(&mut tput, "iptables"));
    r.insert(
        "loopback",
        json!({"connects_per_s": {"nothing": rn, "imds-guard": rg, "iptables": ri},
               "throughput_mb_s": {"nothing": tn, "imds-guard": tg, "iptables": ti},
               "connect_rate_ratio_guard": rg / rn, "connect_rate_ratio_iptables": ri / rn,
               "throughput_ratio_guard": tg / tn, "throughput_ratio_iptables": ti / tn, "target_ratio": 0.99}),
    );

    // 3. Allowed client latency: IMDSv2 token PUT + GET, with and without the guard.
    let mut lat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..3 {
        for (cond, cgroup) in [("nothing", &bare.0), ("imds-guard", &sb.cgroup)] {
            let v = run_worker(&sb, 0, cgroup, &["imds", "200"]);
            lat.entry(cond)
                .or_default()
                .extend(v["lat_us"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()));
        }
    }
    let mut l = BTreeMap::new();
    for (k, v) in &mut lat {
        l.insert(*k, json!({"p50_us": percentile(v, 0.5), "p99_us": percentile(v, 0.99)}));
    }
    r.insert("imds_latency", json!(l));

    // 4. Event throughput: denied connects from 4 processes and tokenless GETs, for 3 s.
    let before = (
        counter(&sb, "denied"),
        counter(&sb, "imdsv1_requests"),
        counter(&sb, "events_dropped"),
        d.events().len(),
    );
    let single = |e: &Value| e["event"] == "connect_denied" || e["event"] == "imdsv1_request";
    let repeats = |e: &Value| {
        e["count"]
            .as_u64()
            .filter(|_| e["event"].as_str().is_some_and(|n| n.ends_with("_repeated")))
            .unwrap_or(0)
    };
    let cpu0 = cpu_ticks(d.pid());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| run_worker(&sb, NOBODY, &sb.cgroup, &["flood-connect", "3000"]));
        }
        s.spawn(|| run_worker(&sb, 0, &sb.cgroup, &["flood-v1", "3000"]));
    });
    std::thread::sleep(Duration::from_millis(2500)); // let the daemon drain and close its 1 s windows
    let secs = t.elapsed().as_secs_f64();
    let cpu_s = (cpu_ticks(d.pid()) - cpu0) as f64 / 100.0;
    let generated = counter(&sb, "denied") - before.0 + counter(&sb, "imdsv1_requests") - before.1;
    let dropped = counter(&sb, "events_dropped") - before.2;
    let after: Vec<Value> = d.events().into_iter().skip(before.3).collect();
    let delivered = after.iter().filter(|e| single(e)).count() as u64;
    let aggregated: u64 = after.iter().map(repeats).sum();
    r.insert(
        "events",
        json!({"generated": generated, "delivered": delivered, "dropped": dropped, "aggregated": aggregated,
               "lines": after.len(), "generated_per_s": generated as f64 / 3.0,
               "daemon_cpu_percent": 100.0 * cpu_s / secs, "daemon_peak_rss_kb": proc_field(d.pid(), "VmHWM:"),
               "accounted": generated == delivered + aggregated + dropped}),
    );

    // 5. Reload with 10,000 rules.
    let mut big = String::new();
    for uid in 0..10_000 {
        big.push_str(&format!("[[allow]]\nuid = {uid}\n"));
    }
    sb.write("policy.toml", &big);
    let ev = d
        .wait_event(Duration::from_secs(30), |e| e["event"] == "policy_reloaded" && e["rules"] == 10_000)
        .expect("10k reload");
    let reload_ms = ev["enforced_us"].as_f64().unwrap() / 1000.0;
    let reload_total_ms = ev["elapsed_us"].as_f64().unwrap() / 1000.0;
    let bin = imds_guard_tests::sandbox::guard_bin();
    r.insert(
        "daemon",
        json!({"start_ms": start_ms, "reload_10k_rules_ms": reload_ms, "reload_10k_rules_complete_ms": reload_total_ms, "idle_rss_kb": idle_rss_kb,
               "binary_bytes": fs::metadata(&bin).map(|m| m.len()).unwrap_or(0), "binary": bin.display().to_string(),
               "targets": {"start_ms": 100, "reload_ms": 10, "idle_rss_kb": 20480}}),
    );
    r.insert("machine", machine());
    drop(server);
    drop(d);
    json!(r)
}

fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel})
}

fn ok(pass: bool) -> &'static str {
    if pass { "met" } else { "MISSED" }
}

fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    s += "## imds-guard benchmark\n\nProduced by `cargo xtask bench` (as root), which rewrites this file.\n";
    s += &format!(
        "\nMachine: {} ({} cores), kernel {}.\n\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?")
    );
    s += "### In-kernel cost per run (kernel BPF run statistics)\n\n| program | runs | ns/run | empty program ns/run | over the floor | target | empty program that reads the destination, ns/run | over that |\n|---|---:|---:|---:|---:|---|---:|---:|\n";
    for k in r["kernel"].as_array().unwrap() {
        let f = |v: &Value| v.as_f64().map_or("–".to_owned(), |x| format!("{x:.1}"));
        let target = match k["over_floor_ns"].as_f64() {
            Some(o) => format!("≤ +5 ns: {}", ok(o <= 5.0)),
            None => "(metadata path)".into(),
        };
        s += &format!(
            "| {} — {} | {} | {} | {} | {} | {} | {} | {} |\n",
            k["program"].as_str().unwrap(),
            k["what"].as_str().unwrap(),
            k["runs"],
            f(&k["ns_per_run"]),
            f(&k["floor_ns_per_run"]),
            f(&k["over_floor_ns"]),
            target,
            f(&k["reads_destination_floor_ns_per_run"]),
            f(&k["over_reads_destination_ns"]),
        );
    }
    s += "\nPer-packet work on non-metadata traffic: none (no program runs per packet; the message hook is attached only to a sockhash of metadata connections).\n\n";
    let lb = &r["loopback"];
    s += "### Loopback, medians of 6 interleaved runs (rotating order; 20,000 connects to a closed port, answered by RST; 1 GiB streams)\n\n| | nothing | imds-guard | iptables owner match | imds-guard / nothing | iptables / nothing | target |\n|---|---:|---:|---:|---:|---:|---|\n";
    let cr = lb["connect_rate_ratio_guard"].as_f64().unwrap();
    s += &format!(
        "| connects/s | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | ≥ 0.99: {} |\n",
        lb["connects_per_s"]["nothing"].as_f64().unwrap(),
        lb["connects_per_s"]["imds-guard"].as_f64().unwrap(),
        lb["connects_per_s"]["iptables"].as_f64().unwrap(),
        cr,
        lb["connect_rate_ratio_iptables"].as_f64().unwrap(),
        ok(cr >= 0.99)
    );
    let tr = lb["throughput_ratio_guard"].as_f64().unwrap();
    s += &format!(
        "| throughput MB/s | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | ≥ 0.99: {} |\n\n",
        lb["throughput_mb_s"]["nothing"].as_f64().unwrap(),
        lb["throughput_mb_s"]["imds-guard"].as_f64().unwrap(),
        lb["throughput_mb_s"]["iptables"].as_f64().unwrap(),
        tr,
        lb["throughput_ratio_iptables"].as_f64().unwrap(),
        ok(tr >= 0.99)
    );
    let l = &r["imds_latency"];
    s += &format!(
        "### Allowed client: IMDSv2 token PUT + GET (600 each)\n\n| | p50 µs | p99 µs |\n|---|---:|---:|\n| nothing | {:.0} | {:.0} |\n| imds-guard | {:.0} | {:.0} |\n\n",
        l["nothing"]["p50_us"].as_f64().unwrap(),
        l["nothing"]["p99_us"].as_f64().unwrap(),
        l["imds-guard"]["p50_us"].as_f64().unwrap(),
        l["imds-guard"]["p99_us"].as_f64().unwrap()
    );
    let e = &r["events"];
    s += &format!(
        "### Event flood (4 processes of denied connects + tokenless GETs, 3 s; 1 s aggregation window)\n\n| generated | generated/s | delivered | aggregated | dropped | output lines | delivered + aggregated + dropped = generated | daemon CPU | daemon peak RSS |\n|---:|---:|---:|---:|---:|---:|---|---:|---:|\n| {} | {:.0} | {} | {} | {} | {} | {} | {:.0} % | {} KiB |\n\n",
        e["generated"],
        e["generated_per_s"].as_f64().unwrap(),
        e["delivered"],
        e["aggregated"],
        e["dropped"],
        e["lines"],
        e["accounted"],
        e["daemon_cpu_percent"].as_f64().unwrap(),
        e["daemon_peak_rss_kb"]
    );
    let d = &r["daemon"];
    let (st, rl, rc, rss) = (
        d["start_ms"].as_f64().unwrap(),
        d["reload_10k_rules_ms"].as_f64().unwrap(),
        d["reload_10k_rules_complete_ms"].as_f64().unwrap(),
        d["idle_rss_kb"].as_f64().unwrap(),
    );
    s += &format!(
        "### Daemon\n\n| | value | target |\n|---|---:|---|\n| exec → enforcing | {st:.0} ms | ≤ 100 ms: {} |\n| reload, 10,000 rules: file read → new policy enforced | {rl:.1} ms | ≤ 10 ms: {} |\n| reload, 10,000 rules: … → previous generation removed | {rc:.1} ms | |\n| idle RSS | {:.1} MB | ≤ 20 MB: {} |\n| binary | {:.1} MB | |\n",
        ok(st <= 100.0),
        ok(rl <= 10.0),
        rss / 1024.0,
        ok(rss <= 20480.0),
        d["binary_bytes"].as_f64().unwrap() / 1e6
    );
    s += ANALYSIS;
    s
}

/// What the numbers mean and where the misses come from (measured while building this bench).
const ANALYSIS: &str = r#"
### Reading these numbers

- **Empty-program floor.** Under `kernel.bpf_stats_enabled` every run is timed, which is most of
  the ~55–70 ns an empty program costs; the column that matters is *over the floor*.
- **connect4/connect6 on non-metadata connects (target met or missed depending on the run).** A
  non-metadata connect now runs about 18 instructions (`bpftool prog dump xlated`): the destination
  loaded through the context (two dependent loads each, rewritten by the verifier), then the live
  generation and that slot's endpoint prefilter read from the programs' own global (`.data.imdsg`,
  plain loads, no map lookup, no helper call), one AND and one compare, return. Before the
  prefilter it was two inlined array-map lookups and the endpoint loop (+10–12 ns). Since then,
  consecutive runs of this bench on this shared 2-core VM measured connect4 at +8.2, +5.1 and
  +1.7 ns and connect6 at +7.6, +11.4 and +8.3 ns over the empty program. The "empty program that
  reads the destination" column, a second floor, sometimes comes out *below* the empty program:
  per-run figures of programs measured side by side move by several ns. The remaining cost is the
  destination's loads and the global's cache line; we found nothing left to remove from a path
  that still judges the connect.
- **sockops** runs on every TCP callback of every socket below the cgroup; its early return on the
  operation code is within a few ns of the floor.
- **sk_msg** never runs for a socket that is not connected to a metadata endpoint (it is attached
  to a sockhash that only holds those), so non-metadata traffic pays nothing per message or packet.
  On a metadata request it costs ~2.5 µs: `bpf_loop` calls the classifier once per byte.
- **Connect rate.** Connects to a closed loopback port isolate the connect path (the hook, the
  SYN, the RST) from any server. The ratio carries the same ±5 % noise as the rest of this VM;
  the in-kernel table is the precise measure of what the hook adds.
- **Throughput** is unaffected by design (no per-packet program); differences between the three
  columns are this shared machine's noise, iptables included.
- **IMDSv2 latency** (~4.2 ms) is dominated by the sandbox's fake IMDS, which polls its listener
  every 2 ms; the difference between the rows is what the guard adds.
- **Event flood.** Identical repeats (same identity, verdict and destination) are counted, not
  written: the first goes out at once, one `*_repeated` line per window carries the count. That
  keeps the output to a handful of lines and lets the daemon drain the ring buffer faster; what
  the kernel still drops is counted. generated = delivered + aggregated + dropped, exactly.
- **Start.** Most of it is the kernel verifying the four programs and reading BTF (~11 ms). It
  was ~360 ms until the rule search and the request scan became `bpf_loop` callbacks whose state
  the verifier does not have to follow value by value (the sk_msg scan alone took 255 ms).
- **Reload of 10,000 rules (target missed).** Measured from reading the file to the switch, after
  which every program run judges by the new generation: ~22 ms (it was 40–70 ms). The rules of a
  generation go to the kernel in one `BPF_MAP_UPDATE_BATCH` (~4 ms for 10,000, down from one
  `bpf()` call each). A reload that leaves the nftables table as it was no longer runs `nft` twice.
  The RCU barrier (~15 ms on this VM) and removing the previous generation (one
  `BPF_MAP_DELETE_BATCH`) come after the switch, in the second row. What remains before the switch
  is mostly parsing 20,000 lines of TOML with positions and resolving them; next step: a parser
  pass without per-value spans for large files (spans are only needed to place an error).
"#;
