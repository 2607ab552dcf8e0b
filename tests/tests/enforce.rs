//! Kernel enforcement by uid/gid, seen from real clients in the sandbox.

use std::time::Duration;

use imds_guard_tests::{ImdsMode, Sandbox, fake_imds::INSTANCE_ID};

const NOBODY: u32 = 65534;
const DAEMON: u32 = 1; // user and group "daemon"
const BIN: u32 = 2; // user and group "bin"

/// Every address form of the default endpoints.
const FORMS: [&str; 3] = ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"];

fn assert_denied_fast(p: &imds_guard_tests::Probe, what: &str) {
    assert_eq!(p.result, "EPERM", "{what}: expected EPERM, got {p:?}");
    assert!(p.elapsed < Duration::from_millis(100), "{what}: EPERM took {:?} (must fail at once)", p.elapsed);
}

#[test]
fn allowed_uid_reaches_imds_and_denied_uid_gets_eperm_on_every_address_form() {
    let Some(sb) = Sandbox::new("enforce_uid", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write("policy.toml", "mode = \"enforce\"\n[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);

    // Allowed: the full IMDSv2 flow over IPv4 and IPv6, and a plain connect on every form.
    let root = sb.client(0, 0);
    assert_eq!(root.imdsv2_get("169.254.169.254", "/latest/meta-data/instance-id").unwrap(), INSTANCE_ID);
    assert_eq!(root.imdsv2_get("fd00:ec2::254", "/latest/meta-data/instance-id").unwrap(), INSTANCE_ID);
    for f in FORMS {
        assert_eq!(root.connect(f, 80).result, "connected", "root to {f}");
    }

    // Denied: EPERM at once for every form, whatever the port.
    let nobody = sb.client(NOBODY, NOBODY);
    let probes = nobody.probe(&[(FORMS[0], 80), (FORMS[1], 80), (FORMS[2], 80), (FORMS[0], 8080)]);
    for (p, f) in probes.iter().zip([FORMS[0], FORMS[1], FORMS[2], "169.254.169.254:8080"]) {
        assert_denied_fast(p, f);
    }
    let curl = nobody.curl(&["http://169.254.169.254/latest/meta-data/"]);
    assert!(!curl.status.success());
    assert!(String::from_utf8_lossy(&curl.stderr).contains("Couldn't connect"), "{curl:?}");

    // One event per denied connect, naming who and where.
    let ev = d
        .wait_event(Duration::from_secs(5), |e| e["dst"] == "::ffff:169.254.169.254")
        .expect("event for the v4-mapped connect");
    assert_eq!(ev["event"], "connect_denied");
    assert_eq!(ev["enforced"], true);
    assert_eq!(ev["uid"], NOBODY);
    assert_eq!(ev["gid"], NOBODY);
    assert_eq!(ev["user"], "nobody");
    assert_eq!(ev["comm"], "python3");
    assert!(ev["exe"].as_str().unwrap().starts_with("/usr/bin/python3"), "{ev}");
    assert_eq!(ev["cgroup"], sb.cgroup_rel());
    assert_eq!(ev["port"], 80);
    assert_eq!(ev["family"], "ipv6");
    assert!(ev["pid"].as_u64().unwrap() > 1);
    assert!(ev["time"].as_str().unwrap().ends_with('Z'));
    d.wait_event(Duration::from_secs(5), |e| e["port"] == 8080).expect("event for port 8080");
    d.wait_event(Duration::from_secs(5), |e| e["comm"] == "curl").expect("event for curl");
    let denials = d.denials();
    assert_eq!(denials.len(), 5, "one event per denied connect: {denials:#?}");
    assert!(denials.iter().all(|e| e["uid"] == NOBODY), "no event for the allowed root connects");
    // The fake IMDS saw only root's requests.
    assert_eq!(sb.imds.requests().len(), 4);
}

#[test]
fn other_destinations_are_untouched() {
    let Some(sb) = Sandbox::new("enforce_other_dst", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    // A link-local neighbour and the loopback are not endpoints: refused by the stack (no
    // listener), not by the guard.
    for (addr, port) in [("169.254.169.253", 80), ("fd00:ec2::253", 80), ("127.0.0.1", 9), ("::1", 9)] {
        assert_eq!(nobody.connect(addr, port).result, "ECONNREFUSED", "{addr}");
    }
    // Sibling endpoints are not in the default set.
    assert_eq!(nobody.connect("169.254.170.2", 80).result, "ECONNREFUSED");
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.denials().is_empty(), "{:#?}", d.denials());
}

#[test]
fn user_group_and_combined_rules() {
    let Some(sb) = Sandbox::new("enforce_user_group", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write(
        "policy.toml",
        "[[allow]]\nuser = \"daemon\"\n\n[[allow]]\ngroup = \"nogroup\"\n\n[[allow]]\nuid = 2\ngid = 0\n",
    );
    let _d = sb.daemon(&policy);
    let ok = "connected";
    let cases = [
        ((DAEMON, DAEMON), ok, "user daemon"),
        ((NOBODY, NOBODY), ok, "group nogroup"),
        ((BIN, 0), ok, "uid 2 and gid 0 together"),
        ((BIN, BIN), "EPERM", "uid 2 without gid 0"),
        ((3, 0), "EPERM", "gid 0 without uid 2"),
        ((0, 0), "EPERM", "root is not special"),
    ];
    for ((uid, gid), want, what) in cases {
        let p = sb.client(uid, gid).connect("169.254.169.254", 80);
        assert_eq!(p.result, want, "{what} ({uid}:{gid})");
    }
}

#[test]
fn monitor_mode_allows_and_reports() {
    let Some(sb) = Sandbox::new("monitor", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write("policy.toml", "mode = \"monitor\"\n[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    let out = nobody.curl(&["-f", "http://169.254.169.254/latest/meta-data/instance-id"]);
    assert!(out.status.success(), "monitor mode lets it through: {out:?}");
    let ev = d.wait_event(Duration::from_secs(5), |e| e["event"] == "connect_denied").expect("reported");
    assert_eq!(ev["enforced"], false);
    assert_eq!(ev["comm"], "curl");
    assert_eq!(ev["uid"], NOBODY);
    // The allowed identity is not reported.
    assert_eq!(sb.client(0, 0).connect("fd00:ec2::254", 80).result, "connected");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.denials().len(), 1);
}

#[test]
fn endpoint_presets_and_literals() {
    let Some(sb) = Sandbox::new("presets", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write(
        "policy.toml",
        "endpoints = [\"aws-imds\", \"ecs-credentials\", \"eks-pod-identity\", \"169.254.169.253\"]\n[[allow]]\nuid = 0\n",
    );
    let _d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    for addr in [
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::23",
        "169.254.169.253",
        "::ffff:169.254.170.23",
    ] {
        assert_denied_fast(&nobody.connect(addr, 80), addr);
    }
    assert_eq!(nobody.connect("fd00:ec2::253", 80).result, "ECONNREFUSED");
}

#[test]
fn a_flood_of_identical_violations_gives_a_bounded_number_of_lines_that_add_up() {
    let Some(sb) = Sandbox::new("flood", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon_with(&policy, &["--aggregate-window", "1"]);
    let prog = imds_guard_tests::client::connect_bin();
    let out = sb.client(NOBODY, NOBODY).steps(
        prog.to_str().unwrap(),
        None,
        // 10,000 as fast as it goes, then 3 s more at a steady pace, across several 1 s windows.
        &["repeat", "169.254.169.254", "80", "10000", "storm", "169.254.169.254", "80", "3000"],
    );
    assert_eq!(out[0]["repeat"]["EPERM"], 10_000, "{out:?}");
    let total = 10_000 + out[1]["storm"]["EPERM"].as_u64().unwrap();
    // The window closes within a second or two; the kernel's counters say what was generated.
    let st = |sb: &Sandbox| -> serde_json::Value {
        let o = sb.cli(&["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let evs = d.events();
        let single = evs.iter().filter(|e| e["event"] == "connect_denied").count() as u64;
        let repeated: u64 = evs
            .iter()
            .filter(|e| e["event"] == "connect_denied_repeated")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        let s = st(&sb);
        let (denied, dropped) =
            (s["counters"]["denied"].as_u64().unwrap(), s["counters"]["events_dropped"].as_u64().unwrap());
        if single + repeated + dropped == denied {
            assert_eq!(denied, total);
            let lines =
                evs.iter().filter(|e| e["event"].as_str().unwrap().starts_with("connect_denied")).count();
            assert!(lines <= 30, "bounded: {lines} lines for 10,000 violations");
            eprintln!(
                "{total} denied connects: {single} delivered + {repeated} aggregated + {dropped} dropped, in {lines} lines"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counts never added up: {single} + {repeated} + {dropped} != {denied}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
