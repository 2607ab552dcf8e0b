//! Issue 17: what the events say a process is, and what `suggest` makes of it, cannot be turned by
//! a local user. Uid 1000 holds a delegated cgroup (systemd's `user@1000.service`, and an
//! LXC-style directory in a QoS slice) and names what it makes there after the node's system
//! services and its aws-node pod; it runs programs whose file names carry line breaks, whole
//! events and terminal escapes. Each test does what the attacker did, on the simulated node of
//! `k8s.rs`, and shows the result attributed truthfully or refused.

use std::{
    collections::BTreeMap,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use imds_guard_tests::{ImdsMode, Sandbox, client::connect_bin};
use serde_json::{Value, json};

const IMDS: &str = "169.254.169.254";
const ATTACKER: u32 = 1000;
const T: Duration = Duration::from_secs(10);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The aws-node pod as kubelet and containerd make it (systemd driver, burstable), with its log
/// directory and container log link: (pod uid, container id, container cgroup below the sandbox).
fn aws_node(sb: &Sandbox) -> (String, String, String) {
    let uid = format!("{:08x}-0001-4000-8000-000000000001", std::process::id());
    let cid = format!("{:064x}", 0xa75u128 << 64 | u128::from(std::process::id()));
    let u = uid.replace('-', "_");
    let ctr = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{cid}.scope"
    );
    let log_dir = sb.dir.join(format!("logs/pods/kube-system_aws-node-x7k2p_{uid}/aws-node"));
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::create_dir_all(sb.dir.join("logs/containers")).unwrap();
    std::os::unix::fs::symlink(
        log_dir.join("0.log"),
        sb.dir.join(format!("logs/containers/aws-node-x7k2p_kube-system_aws-node-{cid}.log")),
    )
    .unwrap();
    std::fs::create_dir_all(sb.cgroup.join(&ctr)).unwrap();
    (uid, cid, ctr)
}

fn kubernetes_table(sb: &Sandbox) -> String {
    format!(
        "[kubernetes]\npod_logs = \"{}\"\ncontainer_logs = \"{}\"\npod_cgroups = [\"{r}/kubepods.slice\", \"{r}/kubepods\"]\n",
        sb.dir.join("logs/pods").display(),
        sb.dir.join("logs/containers").display(),
        r = sb.cgroup_rel(),
    )
}

/// `dir` (below the sandbox cgroup) made by root and handed to `uid`, as systemd's `Delegate=`
/// does for `user@UID.service`.
fn delegate(sb: &Sandbox, dir: &str, uid: u32) {
    std::fs::create_dir_all(sb.cgroup.join(dir)).unwrap();
    std::os::unix::fs::chown(sb.cgroup.join(dir), Some(uid), Some(uid)).unwrap();
}

/// `dir` made by `uid` itself (mkdir -p as that user).
fn mkdir_as(sb: &Sandbox, uid: u32, dir: &str) {
    let out = sb.client(uid, uid).command("mkdir").arg("-p").arg(sb.cgroup.join(dir)).output().unwrap();
    assert!(out.status.success(), "mkdir {dir} as {uid}: {out:?}");
}

const MANAGER: &str = "user.slice/user-1000.slice/user@1000.service";

/// The attacker's cgroups: below its manager a `kubelet.service`, an `amazon-ssm-agent.service`
/// and a copy of the aws-node pod; in an LXC-style delegation inside a QoS slice, another copy.
fn attacker_tree(sb: &Sandbox, pod_uid: &str, cid: &str) -> [String; 4] {
    delegate(sb, MANAGER, ATTACKER);
    let lxc = "kubepods.slice/kubepods-besteffort.slice/lxc.payload.c1";
    delegate(sb, lxc, ATTACKER);
    let u = pod_uid.replace('-', "_");
    let tree = [
        format!("{MANAGER}/app.slice/kubelet.service"),
        format!("{MANAGER}/amazon-ssm-agent.service"),
        format!(
            "{MANAGER}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{cid}.scope"
        ),
        format!("{lxc}/kubepods/besteffort/pod{pod_uid}/{cid}"),
    ];
    for d in &tree {
        mkdir_as(sb, ATTACKER, d);
    }
    tree
}

/// `text` (a suggested policy) parsed by Python's `tomllib` (an independent TOML parser), as JSON.
fn parse_toml(sb: &Sandbox, text: &str) -> Value {
    let file = sb.write("parse.toml", text);
    let script = sb.write(
        "parse_toml.py",
        "import json, sys, tomllib\nprint(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))\n",
    );
    let out = Command::new("/usr/bin/python3").arg(&script).arg(&file).output().unwrap();
    assert!(out.status.success(), "tomllib: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn http_get(sb: &Sandbox, addr: &str, path: &str) -> String {
    let out = sb.client(0, 0).curl(&["-s", &format!("http://{addr}{path}")]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the `imds_guard_connects_denied_total` sample of `workload` (0 when absent).
fn denied_metric(text: &str, workload: &str) -> u64 {
    let needle = format!("workload=\"{workload}\"");
    text.lines()
        .filter(|l| l.starts_with("imds_guard_connects_denied_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Items 2 and 3, as the issue describes them. In monitor mode, uid 1000 connects from its
/// `…/user@1000.service/app.slice/kubelet.service` (first), `…/amazon-ssm-agent.service` and two
/// copies of the aws-node pod's cgroups; then the real kubelet, the real SSM agent and the real
/// aws-node connect. Every event of the attacker names its delegation (`delegated_to: 1000`, unit
/// `user@1000.service`) and no pod; the pod's metrics count the real pod only; `suggest` writes
/// one table per cgroup and says which is the user's; installed, the real kubelet and SSM agent
/// connect.
#[test]
fn a_delegated_user_cannot_pass_for_a_pod_or_a_system_unit() {
    let Some(sb) = Sandbox::new("attr_spoof", ImdsMode::Optional) else { return };
    let (pod_uid, cid, real_pod) = aws_node(&sb);
    let kubelet = "system.slice/kubelet.service";
    let ssm = "system.slice/amazon-ssm-agent.service";
    for d in [kubelet, ssm] {
        std::fs::create_dir_all(sb.cgroup.join(d)).unwrap();
    }
    let [fake_kubelet, fake_ssm, fake_pod, lxc_pod] = attacker_tree(&sb, &pod_uid, &cid);
    let policy = sb.write("policy.toml", &format!("mode = \"monitor\"\n\n{}", kubernetes_table(&sb)));
    let d = sb.daemon_env(&policy, &["--metrics-addr", "127.0.0.1:0"], &[]);
    let prog = connect_bin();
    let connect = |cg: &str, uid: u32| {
        let r = sb.client(uid, uid).in_cgroup(cg).results(
            s(&prog),
            None,
            &["connect", IMDS, "80", "sleep", "300"],
        );
        assert_eq!(r, ["connected"], "monitor mode");
    };
    for cg in [&fake_kubelet, &fake_ssm, &fake_pod, &lxc_pod] {
        connect(cg, ATTACKER);
    }
    connect(kubelet, 0);
    connect(ssm, 0);
    connect(&real_pod, 0);
    let event_in = |cg: &str| {
        let full = format!("{}/{cg}", sb.cgroup_rel());
        d.wait_event(T, |e| e["event"] == "connect_denied" && e["cgroup"] == full.as_str())
            .unwrap_or_else(|| panic!("no event from {full}: {:#?}", d.events()))
    };
    for cg in [&fake_kubelet, &fake_ssm, &fake_pod] {
        let e = event_in(cg);
        assert_eq!(e["delegated_to"], ATTACKER, "{e}");
        assert_eq!(e["unit"], "user@1000.service", "the user's manager, not the name inside: {e}");
        assert!(e.get("pod").is_none() && e.get("container_id").is_none(), "{e}");
    }
    let e = event_in(&lxc_pod);
    assert_eq!(e["delegated_to"], ATTACKER, "{e}");
    assert!(e.get("pod").is_none() && e.get("container_id").is_none() && e.get("unit").is_none(), "{e}");
    let real = event_in(&real_pod);
    assert_eq!(
        (real["pod"]["namespace"].as_str(), real["pod"]["name"].as_str()),
        (Some("kube-system"), Some("aws-node-x7k2p"))
    );
    assert_eq!(real["pod"]["container"], "aws-node");
    assert!(real.get("delegated_to").is_none(), "{real}");
    for cg in [kubelet, ssm] {
        let e = event_in(cg);
        assert_eq!(e["unit"], cg.rsplit_once('/').unwrap().1, "{e}");
        assert!(e.get("delegated_to").is_none(), "{e}");
    }

    // The metrics: the pod counts its own connect only.
    let started = d.events().into_iter().find(|e| e["event"] == "guard_started").unwrap();
    let metrics = http_get(&sb, started["metrics"].as_str().unwrap(), "/metrics");
    let pod_count = denied_metric(&metrics, "pod:kube-system/aws-node-x7k2p");
    let user_count = denied_metric(&metrics, "unit:user@1000.service");
    eprintln!("metrics: pod:kube-system/aws-node-x7k2p {pod_count}, unit:user@1000.service {user_count}");
    assert_eq!((pod_count, user_count), (1, 3), "{metrics}");
    assert_eq!(denied_metric(&metrics, "unit:kubelet.service"), 1, "the real kubelet only: {metrics}");

    // The readable line says so too.
    let out = sb.cli(&["events", "--socket", sb.events_socket().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("app.slice/kubelet.service")).expect(&text);
    assert!(line.contains(" unit user@1000.service delegated to uid 1000 cgroup "), "{line}");
    assert!(!line.contains(" pod "), "{line}");

    // suggest: one table per cgroup, each saying what it covers.
    let out = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = parse_toml(&sb, &suggested);
    let mut cgroups: Vec<&str> =
        parsed["allow"].as_array().unwrap().iter().filter_map(|t| t["cgroup"].as_str()).collect();
    cgroups.sort_unstable();
    let r = sb.cgroup_rel();
    assert_eq!(
        cgroups,
        [
            format!("{r}/system.slice/amazon-ssm-agent.service"),
            format!("{r}/system.slice/kubelet.service"),
            format!("{r}/{MANAGER}")
        ],
        "{suggested}"
    );
    let pods: Vec<&str> =
        parsed["allow"].as_array().unwrap().iter().filter_map(|t| t["pod"].as_str()).collect();
    assert_eq!(pods, ["kube-system/aws-node-x7k2p"], "{suggested}");
    assert!(
        suggested.contains(&format!(
            "# covers every process in cgroup {r}/{MANAGER} and below: unit user@1000.service, delegated to uid 1000"
        )),
        "{suggested}"
    );
    assert!(
        suggested.contains(&format!(
            "# covers every process in cgroup {r}/{kubelet} and below (unit kubelet.service)"
        )),
        "{suggested}"
    );
    assert!(
        !suggested.contains("app.slice/kubelet.service\""),
        "no table takes the user's path: {suggested}"
    );
    d.kill();

    // Installed: the real kubelet and SSM agent connect (the attacker's table is its own, and says so).
    let path = sb.write("suggested.toml", &suggested);
    let _d = sb.daemon(&path);
    let once = ["connect", IMDS, "80"];
    let r = |cg: &str, uid: u32| sb.client(uid, uid).in_cgroup(cg).results(s(&prog), None, &once);
    assert_eq!(r(kubelet, 0), ["connected"], "the real kubelet: {suggested}");
    assert_eq!(r(ssm, 0), ["connected"], "the real SSM agent");
    assert_eq!(r(&real_pod, 0), ["connected"], "the real aws-node");
    assert_eq!(r(&lxc_pod, ATTACKER), ["connected"], "seen by exe and uid, allowed as such");
    assert_eq!(r("system.slice/other.service", 65534), ["EPERM"], "nothing else");
}

/// Item 4: against an enforcing daemon, uid 1000 tries from its `…/app.slice/kubelet.service` and
/// its `…/amazon-ssm-agent.service`, and a tokenless GET is refused under `imdsv1 = "deny"`.
/// `suggest` (from the daemon and from the event file) writes no table for any of it: the refused
/// workloads appear commented out and marked REFUSED; installed, they are still refused.
#[test]
fn refused_attempts_are_not_suggested_as_allowed() {
    let Some(sb) = Sandbox::new("attr_refused", ImdsMode::Optional) else { return };
    delegate(&sb, MANAGER, ATTACKER);
    let fake_kubelet = format!("{MANAGER}/app.slice/kubelet.service");
    let fake_ssm = format!("{MANAGER}/amazon-ssm-agent.service");
    for d in [&fake_kubelet, &fake_ssm] {
        mkdir_as(&sb, ATTACKER, d);
    }
    let legacy = "system.slice/legacy.service";
    std::fs::create_dir_all(sb.cgroup.join(legacy)).unwrap();
    let policy = sb.write(
        "policy.toml",
        "mode = \"enforce\"\n\n[[allow]]\nname = \"root\"\nuid = 0\n\n[[allow]]\nname = \"legacy\"\nuid = 1001\nimdsv1 = \"deny\"\n",
    );
    let file = sb.dir.join("events.jsonl");
    let d = sb.daemon_env(&policy, &["--events-file", s(&file)], &[]);
    let prog = connect_bin();
    let once = ["connect", IMDS, "80", "sleep", "300"];
    for cg in [&fake_kubelet, &fake_ssm] {
        let r = sb.client(ATTACKER, ATTACKER).in_cgroup(cg).results(s(&prog), None, &once);
        assert_eq!(r, ["EPERM"], "refused");
    }
    let get = sb.client(1001, 1001).in_cgroup(legacy).steps(
        s(&prog),
        None,
        &["get", IMDS, "80", "/latest/meta-data/", "1", "sleep", "300"],
    );
    assert!(
        get[0]["get"].as_object().is_some_and(|g| !g.contains_key("200")),
        "tokenless GET refused: {get:?}"
    );
    let refused = d
        .wait_event(T, |e| e["event"] == "imdsv1_request" && e["enforced"] == true)
        .unwrap_or_else(|| panic!("no refused request: {:#?}", d.events()));
    assert_eq!(refused["uid"], 1001);
    for cg in [&fake_kubelet, &fake_ssm] {
        let full = format!("{}/{cg}", sb.cgroup_rel());
        let e = d
            .wait_event(T, |e| e["event"] == "connect_denied" && e["cgroup"] == full.as_str())
            .unwrap_or_else(|| panic!("no event from {full}"));
        assert_eq!((e["enforced"].as_bool(), e["delegated_to"].as_u64()), (Some(true), Some(1000)), "{e}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let from_daemon = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    let from_file = sb.cli(&["suggest", "--events", s(&file), "--config", s(&policy)]);
    for out in [&from_daemon, &from_file] {
        assert!(out.status.success(), "{out:?}");
        let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
        let parsed = parse_toml(&sb, &suggested);
        let names: Vec<&str> =
            parsed["allow"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(names, ["root", "legacy"], "only the policy's own tables are active: {suggested}");
        let refused = suggested.lines().filter(|l| l.starts_with("# REFUSED: ")).count();
        assert_eq!(refused, 2, "the user's manager and the legacy uid, marked: {suggested}");
        assert!(
            suggested.contains("seen reaching the metadata service\n# without a rule")
                && suggested.contains("from 0 workload(s)"),
            "{suggested}"
        );
        assert!(suggested.contains(&format!("# cgroup = \"{}/{MANAGER}\"", sb.cgroup_rel())), "{suggested}");
        let path = sb.write("suggested.toml", &suggested);
        let check = sb.cli(&["check", "--config", s(&path)]);
        assert!(check.status.success(), "{check:?}");
    }
    d.kill();
    let path = sb.dir.join("suggested.toml");
    let _d = sb.daemon(&path);
    let r = sb.client(ATTACKER, ATTACKER).in_cgroup(&fake_kubelet).results(
        s(&prog),
        None,
        &["connect", IMDS, "80"],
    );
    assert_eq!(r, ["EPERM"], "still refused under the suggestion");
}

/// The fields of one datagram of the journal's native protocol (`KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value, `\n`), as journald stores them.
fn journal_fields(mut b: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut fields = BTreeMap::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').expect("a field ends in a newline");
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            fields.insert(String::from_utf8(line[..eq].to_vec()).unwrap(), line[eq + 1..].to_vec());
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8(line.to_vec()).unwrap();
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
            fields.insert(key, b[nl + 9..nl + 9 + len].to_vec());
            b = &b[nl + 9 + len + 1..];
        }
    }
    fields
}

/// An entry as `journalctl -o json` prints it: the trusted fields journald adds, each field a
/// string when it is printable UTF-8 (newlines included), else an array of its bytes.
fn journal_json(fields: &BTreeMap<String, Vec<u8>>, transport: &str, uid: u32, n: usize) -> String {
    let mut o = json!({"__CURSOR": format!("s=0;i={n}"), "_TRANSPORT": transport, "_UID": uid.to_string()});
    for (k, v) in fields {
        o[k] = match std::str::from_utf8(v) {
            Ok(t) if !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => json!(t),
            _ => json!(v),
        };
    }
    o.to_string()
}

/// A copy of the test client at `dir/name`, runnable by anyone.
fn copy_client(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    imds_guard_tests::sandbox::copy_exe(connect_bin(), &p, 0o755);
    imds_guard_tests::sandbox::run(Command::new("chmod").arg("-R").arg("a+rx").arg(dir));
    p
}

/// A whole native event (no `/`: it is a file name) that, taken for an event, would make
/// `suggest` allow uid 4242.
const FORGED: &str = r#"{"schema":1,"event":"connect_denied","enforced":false,"uid":4242,"gid":0,"comm":"forged","cgroup_id":1,"dst":"169.254.169.254","port":80,"family":"ipv4","generation":1}"#;

/// Items 5 and 10. Uid 1000 runs a program whose path carries `\n<a whole event>\n` and terminal
/// escapes, named (comm) with an escape sequence and a line break. The journal gets it from the
/// daemon (native protocol, to the test's socket); `journalctl -o json` of that — plus what else
/// the journal could hold: the forged event as a log stream line and as IMDS_GUARD_JSON sent by
/// uid 1000 — makes `suggest --events` allow the program and nothing forged. `journalctl -o cat`
/// (MESSAGE) yields no event at all. `imds-guard events` and `explain` print one escaped line per
/// event / fact, and the CLI's log lines on a pipe carry no colour.
#[test]
fn names_cannot_forge_events_or_lines() {
    let Some(sb) = Sandbox::new("attr_forge", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "mode = \"monitor\"\n\n[[allow]]\nuid = 0\n");
    let journal = sb.dir.join("journal.sock");
    let jsock = UnixDatagram::bind(&journal).unwrap();
    jsock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _d = sb.daemon_env(&policy, &["--sink", "journald", "--journal-socket", s(&journal)], &[]);
    let evil = copy_client(&sb.dir.join("evil"), &format!("x\n{FORGED}\n\u{1b}]0;owned\u{7}\u{1b}[2J"));
    let comm = "\u{1b}[31m\nfake ok";
    let r = sb.client(ATTACKER, ATTACKER).results(
        s(&evil),
        None,
        &["comm", comm, "connect", IMDS, "80", "sleep", "300"],
    );
    assert_eq!(r, ["connected"], "monitor mode");

    // What the daemon sent to the journal.
    let mut buf = vec![0u8; 65536];
    let fields = loop {
        let n = jsock.recv(&mut buf).expect("the connect_denied datagram");
        let f = journal_fields(&buf[..n]);
        if f.get("IMDS_GUARD_EVENT").map(Vec::as_slice) == Some(b"connect_denied") {
            break f;
        }
    };
    let message = String::from_utf8(fields["MESSAGE"].clone()).unwrap();
    assert!(!message.contains('\n') && !message.chars().any(imds_guard::escape::is_unsafe), "{message:?}");
    assert!(message.contains("x\\n{\"schema\":1,"), "the path, escaped: {message}");
    assert_eq!(fields["IMDS_GUARD_EXE"], s(&evil).as_bytes(), "the field keeps the path as it is");

    // `journalctl -o json`: the daemon's entry; a log stream line that is the forged event (what a
    // raw name in a log line would have made); uid 1000's own native entry with IMDS_GUARD_JSON.
    let mut stream = BTreeMap::new();
    stream.insert("MESSAGE".to_owned(), FORGED.as_bytes().to_vec());
    stream.insert("SYSLOG_IDENTIFIER".to_owned(), b"imds-guard".to_vec());
    let mut theirs = BTreeMap::new();
    theirs.insert("MESSAGE".to_owned(), b"hello".to_vec());
    theirs.insert("IMDS_GUARD_JSON".to_owned(), FORGED.as_bytes().to_vec());
    theirs.insert("SYSLOG_IDENTIFIER".to_owned(), b"imds-guard".to_vec());
    let export = [
        journal_json(&fields, "journal", 0, 1),
        journal_json(&stream, "stdout", 0, 2),
        journal_json(&theirs, "journal", ATTACKER, 3),
    ]
    .join("\n");
    let export_file = sb.write("journal.json", &export);
    let out = sb.cli(&["suggest", "--events", s(&export_file), "--config", s(&policy)]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = parse_toml(&sb, &suggested);
    let tables = parsed["allow"].as_array().unwrap();
    assert_eq!(tables.len(), 2, "uid 0 and the program seen, nothing forged: {suggested}");
    assert_eq!((tables[1]["exe"].as_str(), tables[1]["uid"].as_i64()), (Some(s(&evil)), Some(1000)));
    assert!(!tables.iter().any(|t| t["uid"].as_i64() == Some(4242)), "{suggested}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("skipped").count(), 2, "the stream line and uid 1000's entry: {err}");
    assert!(!err.contains('\u{1b}'), "no colour on a pipe: {err:?}");

    // `journalctl -o cat`: MESSAGE lines only, which are readable text, not events.
    let cat = sb.write("journal.txt", &format!("{message}\nhello\n"));
    let out = sb.cli(&["suggest", "--events", s(&cat), "--config", s(&policy)]);
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = parse_toml(&sb, &suggested);
    assert_eq!(parsed["allow"].as_array().unwrap().len(), 1, "uid 0 only: {suggested}");

    // `imds-guard events`: one line per event, escaped; JSON lines keep the names as they are.
    let out = sb.cli(&["events", "--socket", sb.events_socket().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = sb.cli(&["events", "--json", "--socket", sb.events_socket().to_str().unwrap()]);
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    assert_eq!(text.lines().count(), json.lines().count(), "{text}\n{json}");
    assert!(!text.chars().any(|c| c != '\n' && imds_guard::escape::is_unsafe(c)), "{text:?}");
    let line = text.lines().find(|l| l.contains("connect reported")).expect(&text);
    assert!(line.contains("(\\u{1b}[31m\\nfake ok)") && line.contains("\\u{1b}]0;owned\\u{7}"), "{line}");
    assert!(!text.lines().any(|l| l.starts_with("fake ok") || l.starts_with("{\"schema\"")), "{text}");

    // `explain` of a process with those names: every line its own, nothing raw.
    let mut sleeper = sb
        .client(ATTACKER, ATTACKER)
        .command(s(&evil))
        .args(["comm", comm, "sleep", "5000"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let explain = sb.cli(&[
        "explain",
        "--pid",
        &sleeper.id().to_string(),
        "--pin-dir",
        s(&sb.pin_dir()),
        "--config",
        s(&policy),
    ]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(explain.status.success(), "{explain:?}");
    assert!(!text.chars().any(|c| c != '\n' && imds_guard::escape::is_unsafe(c)), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "process, verdict, one rule: {text}");
    assert!(lines[0].starts_with("process ") && lines[0].contains("(\\u{1b}[31m\\nfake ok)"), "{text}");
    assert!(lines[0].contains("x\\n{\"schema\":1,"), "{text}");
    assert!(lines[1].starts_with("NOT ALLOWED"), "{text}");
}
