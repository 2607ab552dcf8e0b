//! Reporting that operators use: attribution (ancestry, short-lived processes), a flood that costs
//! a bounded number of lines with exact counts, the sinks (file with rotation, journal) in each
//! event format (OCSF and ECS validated against the pinned schemas), the metrics endpoint (checked
//! by promtool), the live event stream and `suggest`.

use std::time::Duration;

use imds_guard_tests::{ImdsMode, Sandbox, client::connect_bin, sandbox::copy_exe};
use serde_json::Value;

const IMDS: &str = "169.254.169.254";
const T: Duration = Duration::from_secs(10);

fn connect_prog() -> String {
    connect_bin().display().to_string()
}

/// GET `path` from the daemon's metrics server (on the loopback of the sandbox's network namespace,
/// where the harness runs the daemon), with curl.
fn http_get(sb: &Sandbox, addr: &str, path: &str) -> (u16, String) {
    let out = sb.client(0, 0).curl(&["-s", "-w", "\n%{http_code}", &format!("http://{addr}{path}")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Sum of the samples of `metric` whose labels contain every `(label, value)` of `with`.
fn metric_sum(text: &str, metric: &str, with: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && with.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `promtool check metrics` (Debian's prometheus package, scripts/bootstrap.sh) on `text`: names,
/// types, units, help texts.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/bootstrap.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

fn started(d: &imds_guard_tests::Daemon) -> Value {
    d.wait_event(T, |e| e["event"] == "guard_started").expect("guard_started")
}

#[test]
fn events_name_the_ancestors_even_of_a_process_that_is_gone() {
    let Some(sb) = Sandbox::new("rep_ancestry", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let prog = connect_prog();
    // sh → imdsg-connect: the connecting process exits at once; its parent is a shell.
    let out = sb
        .client(1000, 1000)
        .command("sh")
        .args(["-c", &format!("'{prog}' connect {IMDS} 80; exit 0")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("EPERM"), "{out:?}");
    let e = d.wait_event(T, |e| e["event"] == "connect_denied").expect("a denial");
    let anc = e["ancestors"].as_array().unwrap_or_else(|| panic!("ancestors: {e}"));
    assert_eq!(anc[0]["comm"], "sh", "{e}");
    assert!(anc.len() >= 2, "the test runner is above the shell: {e}");
    assert!(anc.iter().all(|a| a["pid"].as_u64().unwrap() > 0));
    assert_eq!(e["comm"], "imdsg-connect");
    // Gone before the daemon could look in /proc: the path the kernel read at the connect.
    assert_eq!(e["exe"], prog.as_str(), "{e}");
}

#[test]
fn a_flood_costs_a_bounded_number_of_lines_and_the_counts_add_up() {
    let Some(sb) = Sandbox::new("rep_flood", ImdsMode::Optional) else { return };
    // Root may connect and its tokenless GETs are reported (imdsv1 = "log").
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon_with(&policy, &["--aggregate-window", "2", "--metrics-addr", "127.0.0.1:0"]);
    let metrics = started(&d)["metrics"].as_str().expect("metrics address").to_owned();
    const N: u64 = 10_000;
    let t0 = std::time::Instant::now();
    let res = sb.client(0, 0).steps(
        &connect_prog(),
        None,
        &["get", IMDS, "80", "/latest/meta-data/", &N.to_string()],
    );
    assert_eq!(res[0]["get"]["200"], N, "every GET answered: {res:?}");
    let windows = (t0.elapsed().as_secs_f64() / 2.0).ceil() as usize + 1;
    // Let the windows close and the summaries come out.
    std::thread::sleep(Duration::from_millis(4000));
    let events = d.events();
    let (_, text) = http_get(&sb, &metrics, "/metrics");
    let single = events.iter().filter(|e| e["event"] == "imdsv1_request").count() as u64;
    let repeated: u64 = events
        .iter()
        .filter(|e| e["event"] == "imdsv1_request_repeated")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    let lines = events.iter().filter(|e| e["event"].as_str().unwrap().starts_with("imdsv1_request")).count();
    let kernel = |name: &str| metric_sum(&text, "imds_guard_kernel_total", &[("counter", name)]) as u64;
    let dropped = kernel("events_dropped");
    assert_eq!(kernel("imdsv1_requests"), N, "the kernel saw every request");
    assert_eq!(
        single + repeated + dropped,
        N,
        "delivered {single} + aggregated {repeated} + dropped {dropped}"
    );
    // At most a first occurrence and a summary per 2 s window.
    assert!(lines <= 2 * windows, "{lines} lines for {N} identical requests in {windows} windows");
    let by_metrics = metric_sum(&text, "imds_guard_requests_reported_total", &[("finding", "imdsv1")]) as u64;
    assert_eq!(by_metrics + dropped, N, "metrics count delivered and aggregated events");
}

#[test]
fn metrics_parse_and_match_the_events() {
    let Some(sb) = Sandbox::new("rep_metrics", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon_with(&policy, &["--aggregate-window", "0", "--metrics-addr", "127.0.0.1:0"]);
    let addr = started(&d)["metrics"].as_str().expect("metrics address").to_owned();
    assert_eq!(http_get(&sb, &addr, "/healthz").0, 200, "enforcing");
    let prog = connect_prog();
    let res = sb.client(1000, 1000).steps(&prog, None, &["repeat", IMDS, "80", "25"]);
    assert_eq!(res[0]["repeat"]["EPERM"], 25);
    let res = sb.client(0, 0).steps(&prog, None, &["repeat", IMDS, "80", "7"]);
    assert_eq!(res[0]["repeat"]["connected"], 7);
    for _ in 0..100 {
        if d.denials().len() >= 25 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let denials = d.denials();
    assert_eq!(denials.len(), 25);
    let (status, text) = http_get(&sb, &addr, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&text);
    let info = text.lines().find(|l| l.starts_with("imds_guard_build_info{")).expect("build info");
    assert!(info.contains(concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"")), "{info}");
    assert!(info.contains("kernel=\"") && info.ends_with("degraded=\"\"} 1"), "{info}");
    // A scraper that asks for OpenMetrics gets it.
    let om = sb.client(0, 0).curl(&[
        "-s",
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0",
        &format!("http://{addr}/metrics"),
    ]);
    assert!(String::from_utf8_lossy(&om.stdout).trim_end().ends_with("# EOF"), "{om:?}");
    let workload = format!("exe:{prog}");
    let denied = metric_sum(
        &text,
        "imds_guard_connects_denied_total",
        &[("workload", &workload), ("enforced", "true")],
    );
    assert_eq!(denied as usize, denials.len(), "{text}");
    let kernel = |name: &str| metric_sum(&text, "imds_guard_kernel_total", &[("counter", name)]) as u64;
    assert_eq!(kernel("denied"), 25);
    assert_eq!(kernel("allowed"), 7);
    assert_eq!(
        metric_sum(&text, "imds_guard_policy_generation", &[]) as u32,
        started(&d)["generation"].as_u64().unwrap() as u32
    );
    // A reload is counted.
    sb.write("policy.toml", "[[allow]]\nuid = 0\n\n[[allow]]\nuid = 1001\n");
    d.wait_event(T, |e| e["event"] == "policy_reloaded").expect("reloaded");
    let (_, text) = http_get(&sb, &addr, "/metrics");
    assert!(metric_sum(&text, "imds_guard_policy_reloads_total", &[("result", "ok")]) >= 1.0, "{text}");
    // Unloaded: the health check says so.
    assert!(sb.cli(&["unload", "--pin-dir", sb.pin_dir().to_str().unwrap()]).status.success());
    assert_eq!(http_get(&sb, &addr, "/healthz").0, 503);
}

#[test]
fn file_and_journal_sinks_get_every_event() {
    let Some(sb) = Sandbox::new("rep_sinks", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let journal = sb.dir.join("journal.sock");
    let jsock = std::os::unix::net::UnixDatagram::bind(&journal).unwrap();
    jsock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let file = sb.dir.join("log/events.jsonl");
    let d = sb.daemon_with(
        &policy,
        &[
            "--aggregate-window",
            "0",
            "--sink",
            "journald",
            "--journal-socket",
            journal.to_str().unwrap(),
            "--events-file",
            file.to_str().unwrap(),
            "--events-file-max-bytes",
            "4096",
            "--events-file-keep",
            "3",
        ],
    );
    // Nothing on stdout: the harness sees no guard_started there.
    let res = sb.client(1000, 1000).steps(&connect_prog(), None, &["repeat", IMDS, "80", "40"]);
    assert_eq!(res[0]["repeat"]["EPERM"], 40);
    let mut buf = vec![0u8; 65536];
    let mut denials = 0;
    let mut started = false;
    while denials < 40 {
        let n = jsock.recv(&mut buf).expect("a journal datagram");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let fields: std::collections::HashMap<&str, &str> =
            msg.lines().filter_map(|l| l.split_once('=')).collect();
        assert_eq!(fields["SYSLOG_IDENTIFIER"], "imds-guard");
        match fields["IMDS_GUARD_EVENT"] {
            "guard_started" => started = true,
            "connect_denied" => {
                denials += 1;
                assert_eq!(fields["PRIORITY"], "4");
                assert_eq!(fields["IMDS_GUARD_UID"], "1000");
                assert!(fields["MESSAGE"].contains("connect REFUSED: 169.254.169.254:80"), "{msg}");
                let _: Value = serde_json::from_str(fields["IMDS_GUARD_JSON"]).unwrap();
            }
            _ => {}
        }
    }
    assert!(started);
    assert!(d.events().is_empty(), "stdout is not a sink here");
    // The file, rotated at 4 KiB with 3 kept: whole JSON lines, newest last.
    std::thread::sleep(Duration::from_millis(300));
    let mut lines = Vec::new();
    for p in ["log/events.jsonl.3", "log/events.jsonl.2", "log/events.jsonl.1", "log/events.jsonl"] {
        let p = sb.dir.join(p);
        if let Ok(t) = std::fs::read_to_string(&p) {
            assert!(std::fs::metadata(&p).unwrap().len() <= 4096);
            lines.extend(t.lines().map(|l| serde_json::from_str::<Value>(l).expect("whole JSON lines")));
        }
    }
    assert!(sb.dir.join("log/events.jsonl.1").exists(), "rotated");
    assert!(!sb.dir.join("log/events.jsonl.4").exists(), "3 kept");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "connect_denied");
    assert!(lines.iter().filter(|e| e["event"] == "connect_denied").count() >= 10);
}

/// `--event-format ocsf` on the journal and the file, `ecs` on the file: every line the daemon
/// writes validates against the pinned schemas, the journal keeps its native fields, and the
/// event socket (`imds-guard events`) stays native.
#[test]
fn ocsf_and_ecs_reach_the_sinks_and_validate() {
    let Some(sb) = Sandbox::new("rep_siem", ImdsMode::Optional) else { return };
    // Root may connect, and its tokenless GETs are reported (imdsv1 = "log").
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let prog = connect_prog();
    for format in ["ocsf", "ecs"] {
        let journal = sb.dir.join(format!("journal-{format}.sock"));
        let jsock = std::os::unix::net::UnixDatagram::bind(&journal).unwrap();
        jsock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let file = sb.dir.join(format!("events-{format}.jsonl"));
        let d = sb.daemon_with(
            &policy,
            &[
                "--aggregate-window",
                "0",
                "--event-format",
                format,
                "--sink",
                "journald",
                "--journal-socket",
                journal.to_str().unwrap(),
                "--events-file",
                file.to_str().unwrap(),
            ],
        );
        sb.client(1000, 1000).steps(&prog, None, &["connect", IMDS, "80"]);
        sb.client(0, 0).steps(&prog, None, &["get", IMDS, "80", "/latest/meta-data/", "1"]);
        let socket = sb.events_socket();
        let native = |name: &str| {
            let out = sb.cli(&["events", "--json", "--socket", socket.to_str().unwrap()]);
            String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(&format!("\"event\":\"{name}\"")))
        };
        let deadline = std::time::Instant::now() + T;
        while !(native("connect_denied") && native("imdsv1_request")) {
            assert!(std::time::Instant::now() < deadline, "the socket's native events");
            std::thread::sleep(Duration::from_millis(100));
        }
        d.kill();
        let lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_owned).collect();
        let names: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let name =
                    if format == "ocsf" { &v["metadata"]["event_code"] } else { &v["event"]["action"] };
                name.as_str().unwrap_or_default().to_owned()
            })
            .collect();
        for want in ["guard_started", "connect_denied", "imdsv1_request"] {
            assert!(names.iter().any(|n| n == want), "{format}: no {want} in {names:?}");
        }
        let problems = imds_guard_tests::siem::validate(format, &lines);
        assert!(problems.is_empty(), "{format}:\n{}\n{}", problems.join("\n"), lines.join("\n"));
        // The journal: the format's line in IMDS_GUARD_JSON, the native fields beside it.
        let mut buf = vec![0u8; 65536];
        let n = jsock.recv(&mut buf).expect("a journal datagram");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let fields: std::collections::HashMap<&str, &str> =
            msg.lines().filter_map(|l| l.split_once('=')).collect();
        assert!(lines.iter().any(|l| l == fields["IMDS_GUARD_JSON"]), "{format}: {msg}");
        assert!(fields.contains_key("IMDS_GUARD_EVENT"), "{msg}");
    }
}

#[test]
fn events_command_shows_recent_and_follows_live() {
    let Some(sb) = Sandbox::new("rep_stream", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let socket = sb.events_socket();
    let socket = socket.to_str().unwrap();
    assert_eq!(started(&d)["events_socket"], socket);
    let mode =
        std::fs::metadata(socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o600, "owner-only socket");
    let prog = connect_prog();
    sb.client(1000, 1000).steps(&prog, None, &["connect", IMDS, "80"]);
    d.wait_event(T, |e| e["event"] == "connect_denied").unwrap();
    let recent = sb.cli(&["events", "--socket", socket, "--json"]);
    let recent: Vec<Value> =
        String::from_utf8_lossy(&recent.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(recent.iter().any(|e| e["event"] == "guard_started"));
    assert!(recent.iter().any(|e| e["event"] == "connect_denied" && e["uid"] == 1000));
    let human = sb.cli(&["events", "--socket", socket]);
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(human.contains("connect REFUSED: 169.254.169.254:80 by pid"), "{human}");
    assert!(human.contains("uid 1000"), "{human}");
    // --follow: a new event arrives on the stream as it happens.
    let mut follow = std::process::Command::new(imds_guard_tests::sandbox::guard_bin())
        .args(["events", "--follow", "--json", "--socket", socket])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    sb.client(1002, 1002).steps(&prog, None, &["connect", IMDS, "80"]);
    let got = loop {
        let line = rx.recv_timeout(T).expect("the live event");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "connect_denied" && v["uid"] == 1002 {
            break v;
        }
    };
    assert_eq!(got["dst"], IMDS);
    follow.kill().unwrap();
    follow.wait().unwrap();
}

/// Monitor mode, three workloads seen; `suggest` writes a policy; in enforce mode with it those
/// three are allowed and a new one is denied.
#[test]
fn suggest_allows_exactly_what_was_seen() {
    let Some(sb) = Sandbox::new("rep_suggest", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "mode = \"monitor\"\n\n[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let prog = connect_prog();
    // A copy of the client: its own executable.
    let agent = sb.dir.join("agent");
    imds_guard_tests::sandbox::copy_exe(&prog, &agent, 0o755);
    let agent = agent.to_str().unwrap();
    let seen = [
        sb.client(1000, 1000).steps(&prog, None, &["connect", IMDS, "80"]),
        sb.client(1001, 1001).steps(
            agent,
            None,
            &["connect", IMDS, "80", "get", IMDS, "80", "/latest/meta-data/", "1"],
        ),
    ];
    for s in &seen {
        assert_eq!(s[0]["result"], "connected", "monitor mode lets everything through: {s:?}");
    }
    d.wait_event(T, |e| e["event"] == "imdsv1_request" && e["uid"] == 1001).expect("v1 seen");
    assert_eq!(d.denials().len(), 3, "uid 1000 once, the agent twice");
    let out = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(suggested.contains("STILL USES IMDSv1"), "{suggested}");
    let path = sb.write("suggested.toml", &suggested);
    let check = sb.cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}\n{suggested}");
    d.kill();

    let d = sb.daemon(&path);
    assert_eq!(started(&d)["mode"], "enforce");
    let r = |uid: u32, p: &str| sb.client(uid, uid).results(p, None, &["connect", IMDS, "80"]);
    assert_eq!(r(0, &prog), ["connected"], "kept from the current policy");
    assert_eq!(r(1000, &prog), ["connected"], "seen: {suggested}");
    assert_eq!(r(1001, agent), ["connected"], "seen: {suggested}");
    assert_eq!(r(1002, &prog), ["EPERM"], "never seen");
    assert_eq!(r(1000, agent), ["EPERM"], "uid 1000 never ran the agent: {suggested}");
}

/// A tmpfs mounted on a directory of the sandbox for as long as it lives.
struct OwnMount(std::path::PathBuf);

impl OwnMount {
    fn tmpfs(at: &std::path::Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0755"))
            .expect("mounting a tmpfs");
        OwnMount(at.to_owned())
    }
}

impl Drop for OwnMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A short-lived process whose executable is on a filesystem of its own (a snap's squashfs, an
/// /opt of its own; here a tmpfs), gone by the time its event is read: the kernel's path stops at
/// the root of that filesystem (`/bin/agent`), and the event names the executable where it is
/// mounted. `suggest`'s rule for it then passes `check` and allows it, and only it.
#[test]
fn an_exited_process_s_executable_on_a_filesystem_of_its_own_is_named_where_it_is_mounted() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(sb) = Sandbox::new("rep_mounted", ImdsMode::Optional) else { return };
    let opt = sb.dir.join("opt");
    let _mount = OwnMount::tmpfs(&opt);
    std::fs::create_dir(opt.join("bin")).unwrap();
    let agent = opt.join("bin/agent");
    copy_exe(connect_bin(), &agent, 0o755);
    let agent = agent.to_str().unwrap();
    let policy = sb.write("policy.toml", "mode = \"monitor\"\n\n[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    // The daemon is stopped while the agent connects and exits, so it reads the event of a
    // process that is gone (as it does under load, or in a slow VM).
    let daemon = Pid::from_raw(d.pid() as i32);
    kill(daemon, Signal::SIGSTOP).unwrap();
    let r = sb.client(1000, 1000).results(agent, None, &["connect", IMDS, "80"]);
    kill(daemon, Signal::SIGCONT).unwrap();
    assert_eq!(r, ["connected"], "monitor mode");
    let e = d.wait_event(T, |e| e["event"] == "connect_denied" && e["uid"] == 1000).expect("the denial");
    assert_eq!(e["exe"], agent, "{e}");
    let out = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = sb.write("suggested.toml", &suggested);
    let check = sb.cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}\n{suggested}");
    d.kill();

    let d = sb.daemon(&path);
    let r = |uid: u32, p: &str| sb.client(uid, uid).results(p, None, &["connect", IMDS, "80"]);
    assert_eq!(r(1000, agent), ["connected"], "seen: {suggested}");
    assert_eq!(r(1000, &connect_prog()), ["EPERM"], "another executable: {suggested}");
    drop(d);
}
