//! The netfilter layer (issue #8): forwarded packets to the metadata endpoints are dropped and
//! reported while the host's own allowed processes still get through; `unload` removes the table
//! and nothing else; reduced mode enforces uid rules with nftables when the cgroup programs are
//! not attached. Three network namespaces per test (see `imds_guard_tests::topology`).

use std::time::{Duration, Instant};

use imds_guard_tests::{
    ImdsMode, Topology,
    fake_imds::INSTANCE_ID,
    topology::{CLIENT_V4, CLIENT_V6, ROUTER_CLIENT_IF},
};
use nix::sys::signal::Signal;
use serde_json::Value;

const NOBODY: u32 = 65534;
const V4_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";
const V6_URL: &str = "http://[fd00:ec2::254]/latest/meta-data/instance-id";

/// curl from a client; `Ok(body)` or `Err(exit code)`. A dropped SYN is a connect timeout (28).
fn get(client: &imds_guard_tests::Client<'_>, url: &str) -> Result<String, i32> {
    let out = client.curl(&["-f", "-g", "--connect-timeout", "2", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

fn status(topo: &Topology) -> Value {
    let pin = topo.sb.pin_dir();
    let out = topo.sb.cli_in(&topo.router.fd, &["status", "--json", "--pin-dir", pin.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn is_forward_denied(e: &Value, src: &str, dst: &str, enforced: bool) -> bool {
    e["event"] == "forward_denied" && e["src"] == src && e["dst"] == dst && e["enforced"] == enforced
}

#[test]
fn forwarded_requests_are_dropped_and_reported_while_the_host_s_allowed_process_gets_through() {
    let Some(topo) = Topology::new("nft_forward", ImdsMode::Optional) else { return };
    let r = &topo.router;
    // Decoys that imds-guard must leave alone: another inet table hooked on forward, and a table
    // with our name in another family.
    r.nft(&["add", "table", "inet", "decoy"]);
    r.nft(&[
        "add",
        "chain",
        "inet",
        "decoy",
        "pass",
        "{ type filter hook forward priority 10; policy accept; }",
    ]);
    r.nft(&["add", "rule", "inet", "decoy", "pass", "counter"]);
    r.nft(&["add", "table", "ip", "imds_guard"]);
    r.nft(&["add", "chain", "ip", "imds_guard", "keep"]);
    let decoys = |ruleset: &str| {
        assert!(
            ruleset.contains("table inet decoy") && ruleset.contains("hook forward priority filter + 10"),
            "{ruleset}"
        );
        assert!(ruleset.contains("table ip imds_guard") && ruleset.contains("chain keep"), "{ruleset}");
    };

    // Before the guard: the VM reaches the metadata service through the router.
    assert_eq!(get(&topo.vm(0), V4_URL).as_deref(), Ok(INSTANCE_ID), "the topology routes");
    assert_eq!(get(&topo.vm(0), V6_URL).as_deref(), Ok(INSTANCE_ID), "the topology routes IPv6");

    let policy = topo.sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = topo.sb.daemon_in(&r.fd, &policy);
    let started = d.wait_event(Duration::from_secs(1), |e| e["event"] == "guard_started").unwrap();
    assert_eq!(started["enforcement"], "cgroup", "{started}");
    assert_eq!(started["netfilter"]["table"], "inet imds_guard", "{started}");
    assert_eq!(started["netfilter"]["forward"], true);
    assert_eq!(started["netfilter"]["reduced"], false);
    let generation = started["generation"].clone();

    // The host's own allowed process still gets the answer, over IPv4 and IPv6; its denied one
    // is refused by the cgroup hook, as before.
    let host = topo.host(0);
    assert_eq!(
        host.imdsv2_get("169.254.169.254", "/latest/meta-data/instance-id").as_deref(),
        Ok(INSTANCE_ID)
    );
    assert_eq!(host.imdsv2_get("fd00:ec2::254", "/latest/meta-data/instance-id").as_deref(), Ok(INSTANCE_ID));
    assert_eq!(topo.host(NOBODY).connect("169.254.169.254", 80).result, "EPERM");

    // The VM's requests, root or not, never arrive: the SYN is dropped in the router.
    let served_before = topo.sb.imds.requests().len();
    assert_eq!(get(&topo.vm(0), V4_URL), Err(28), "v4 connect times out");
    assert_eq!(get(&topo.vm(NOBODY), V6_URL), Err(28), "v6 connect times out");
    assert_eq!(topo.sb.imds.requests().len(), served_before, "nothing reached the metadata host");
    let v4 = d
        .wait_event(Duration::from_secs(5), |e| is_forward_denied(e, CLIENT_V4, "169.254.169.254", true))
        .unwrap_or_else(|| panic!("forward_denied for v4; events: {:?}", d.events()));
    assert_eq!(v4["port"], 80);
    assert_eq!(v4["protocol"], "tcp");
    assert_eq!(v4["family"], "ipv4");
    assert_eq!(v4["in_interface"], ROUTER_CLIENT_IF);
    assert_eq!(v4["generation"], generation);
    assert!(v4["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v4}");
    let v6 = d
        .wait_event(Duration::from_secs(5), |e| is_forward_denied(e, CLIENT_V6, "fd00:ec2::254", true))
        .expect("forward_denied for v6");
    assert_eq!((v6["family"].as_str(), v6["port"].as_u64()), (Some("ipv6"), Some(80)));
    // Only the endpoints: the VM still reaches a neighbour on the metadata host (nothing listens
    // there, so the connect is refused by that host, not dropped by the router).
    assert_eq!(topo.vm(0).connect("169.254.169.253", 80).result, "ECONNREFUSED");

    let st = status(&topo);
    assert_eq!(st["netfilter"]["table"], "inet imds_guard", "{st}");
    assert_eq!(st["netfilter"]["forward"], true);
    assert_eq!(st["netfilter"]["reduced"], false);
    assert!(st["netfilter"]["counters"]["forward_denied"][0].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["enforcement"], "cgroup");
    let counted = st["netfilter"]["counters"]["forward_denied"][0].as_u64().unwrap();

    // An allowed interface: the VM's packets pass (its requests are for the guard of whatever runs
    // behind that interface); the reload keeps the counters.
    topo.sb.write(
        "policy.toml",
        &format!("[[allow]]\nuid = 0\n[netfilter]\nforward_allow_interfaces = [\"{ROUTER_CLIENT_IF}\"]\n"),
    );
    d.signal(Signal::SIGHUP);
    d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded").expect("reloaded");
    assert_eq!(get(&topo.vm(0), V4_URL).as_deref(), Ok(INSTANCE_ID));
    assert_eq!(status(&topo)["netfilter"]["counters"]["forward_denied"][0].as_u64().unwrap(), counted);

    // Monitor mode: the VM gets through, and is reported with "enforced": false.
    topo.sb.write("policy.toml", "mode = \"monitor\"\n[[allow]]\nuid = 0\n");
    d.signal(Signal::SIGHUP);
    let monitor = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded" && e["mode"] == "monitor")
        .expect("reloaded");
    std::thread::sleep(Duration::from_millis(300)); // the file watch may reload once more
    assert_eq!(get(&topo.vm(0), V4_URL).as_deref(), Ok(INSTANCE_ID));
    d.wait_event(Duration::from_secs(5), |e| is_forward_denied(e, CLIENT_V4, "169.254.169.254", false))
        .expect("forward_denied, enforced false");

    // Back to enforce; the table outlives the daemon like the pinned programs do. (wait_event
    // looks at every event since the start, so the reload is told apart from the earlier
    // enforce-mode one by its generation.)
    topo.sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    d.signal(Signal::SIGHUP);
    d.wait_event(Duration::from_secs(5), |e| {
        e["event"] == "policy_reloaded"
            && e["mode"] == "enforce"
            && e["generation"].as_u64() > monitor["generation"].as_u64()
    })
    .expect("reloaded");
    std::thread::sleep(Duration::from_millis(300));
    d.kill();
    assert_eq!(get(&topo.vm(0), V4_URL), Err(28), "still dropped after SIGKILL");
    let ruleset = r.nft(&["list", "ruleset"]);
    assert!(ruleset.contains("table inet imds_guard"), "{ruleset}");
    decoys(&ruleset);

    // unload: the table goes, and nothing else.
    let pin = topo.sb.pin_dir();
    let out = topo.sb.cli_in(&r.fd, &["unload", "--pin-dir", pin.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nftables table inet imds_guard"), "{out:?}");
    let ruleset = r.nft(&["list", "ruleset"]);
    assert!(!ruleset.contains("table inet imds_guard"), "{ruleset}");
    decoys(&ruleset);
    assert!(ruleset.contains("counter packets"), "the decoy rule is still there: {ruleset}");
    assert_eq!(get(&topo.vm(0), V4_URL).as_deref(), Ok(INSTANCE_ID), "unload stops the dropping");
    // Unloading again finds nothing and still leaves the decoys.
    let out = topo.sb.cli_in(&r.fd, &["unload", "--pin-dir", pin.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to unload"), "{out:?}");
    decoys(&r.nft(&["list", "ruleset"]));
}

#[test]
fn reduced_mode_enforces_uid_rules_with_nftables_when_the_programs_are_not_attached() {
    let Some(topo) = Topology::new("nft_reduced", ImdsMode::Optional) else { return };
    let policy = topo.sb.write(
        "policy.toml",
        "[netfilter]\nreduced_mode = \"on\"\n\n[[allow]]\nname = \"daemon user\"\nuid = 1\n\n\
         [[allow]]\nname = \"curl\"\nexe = \"/usr/bin/curl\"\n",
    );
    let d = topo.sb.daemon_in(&topo.router.fd, &policy);
    let started = d.wait_event(Duration::from_secs(1), |e| e["event"] == "guard_started").unwrap();
    assert_eq!(started["enforcement"], "reduced", "{started}");
    assert_eq!(started["attachment"], "not_attached");
    assert_eq!(started["netfilter"]["reduced"], true);
    let ne = started["netfilter"]["not_enforced"].as_array().expect("not_enforced list");
    assert_eq!(ne.len(), 1, "{started}");
    assert_eq!((ne[0]["rule"].as_u64(), ne[0]["name"].as_str()), (Some(1), Some("curl")));
    assert!(ne[0]["reason"].as_str().unwrap().starts_with("exe"), "{started}");
    assert!(d.wait_stderr("REDUCED MODE"), "{}", d.stderr());
    assert!(!topo.sb.attached_programs().contains("imdsg"), "{}", topo.sb.attached_programs());

    // uid 1 is allowed by nftables' output rule; nobody is refused at once (ICMP admin-prohibited,
    // not a timeout), and so is curl: its exe rule cannot be enforced, and is not widened.
    assert_eq!(
        topo.host(1).imdsv2_get("169.254.169.254", "/latest/meta-data/instance-id").as_deref(),
        Ok(INSTANCE_ID)
    );
    assert_eq!(
        topo.host(1).imdsv2_get("fd00:ec2::254", "/latest/meta-data/instance-id").as_deref(),
        Ok(INSTANCE_ID)
    );
    let t = Instant::now();
    let p = topo.host(NOBODY).connect("169.254.169.254", 80);
    // ICMP "administratively prohibited" is EHOSTUNREACH for IPv4 and EACCES for IPv6.
    assert_eq!(p.result, "EHOSTUNREACH");
    assert!(t.elapsed() < Duration::from_secs(2), "refused, not timed out: {p:?}");
    assert_eq!(topo.host(NOBODY).connect("fd00:ec2::254", 80).result, "EACCES");
    let curl = get(&topo.host(NOBODY), V4_URL);
    assert!(curl.is_err(), "{curl:?}");
    let ev = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "output_denied" && e["uid"] == NOBODY)
        .unwrap_or_else(|| panic!("output_denied; events: {:?}", d.events()));
    assert_eq!((ev["dst"].as_str(), ev["port"].as_u64()), (Some("169.254.169.254"), Some(80)), "{ev}");
    assert_eq!((ev["enforced"].as_bool(), ev["user"].as_str()), (Some(true), Some("nobody")), "{ev}");
    assert!(ev.get("in_interface").is_none(), "{ev}");
    assert!(
        d.wait_event(Duration::from_secs(5), |e| e["event"] == "output_denied" && e["family"] == "ipv6")
            .is_some(),
        "the v6 refusal is reported"
    );
    assert!(
        !d.events().iter().any(|e| e["event"] == "output_denied" && e["uid"] == 1),
        "uid 1 is never refused"
    );

    let st = status(&topo);
    assert_eq!(st["enforcement"], "reduced", "{st}");
    assert_eq!(st["enforcing"], false, "no program is attached");
    assert_eq!(st["netfilter"]["reduced"], true);
    assert!(st["netfilter"]["counters"]["output_denied"][0].as_u64().unwrap() >= 2, "{st}");

    // A reload cannot switch reduced mode off under a running daemon: refused, old rules stay.
    topo.sb.write("policy.toml", "[netfilter]\nreduced_mode = \"off\"\n[[allow]]\nuid = 1\n");
    d.signal(Signal::SIGHUP);
    let failed =
        d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reload_failed").expect("refused");
    assert!(failed["error"].as_str().unwrap().contains("restart"), "{failed}");
    assert_ne!(topo.host(NOBODY).connect("169.254.169.254", 80).result, "connected");

    d.kill();
    let pin = topo.sb.pin_dir();
    let out = topo.sb.cli_in(&topo.router.fd, &["unload", "--pin-dir", pin.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(!topo.router.nft(&["list", "ruleset"]).contains("imds_guard"));
    assert_eq!(topo.host(NOBODY).connect("169.254.169.254", 80).result, "connected", "unload stops it");
}

/// Issue 19: a host or image without the `nft` program (Bottlerocket, the container image) runs
/// the guard when the policy turns the netfilter layer off, and says what to do when it does not.
#[test]
fn run_needs_no_nft_when_the_netfilter_layer_is_off() {
    let Some(sb) = imds_guard_tests::Sandbox::new("nf_no_nft", ImdsMode::Optional) else { return };
    let no_nft = [("PATH", "/nonexistent")];
    let off = sb
        .write("policy.toml", "[[allow]]\nuid = 0\n\n[netfilter]\nforward = false\nreduced_mode = \"off\"\n");
    let d = sb.daemon_wrapped(&off, &[], &no_nft);
    assert_eq!(
        sb.client(65534, 65534).connect("169.254.169.254", 80).result,
        "EPERM",
        "enforcing without nft: {}",
        d.stderr()
    );
    d.kill();
    let status = sb.cli(&["status", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    assert!(status.status.success(), "{status:?}");

    // The default policy wants the forward table: refused, saying why and what to do.
    let on = sb.write("policy-on.toml", "[[allow]]\nuid = 0\n");
    let mut run = std::process::Command::new(imds_guard_tests::sandbox::guard_bin());
    run.env("PATH", "/nonexistent")
        .args(["run", "--config", on.to_str().unwrap(), "--pin-dir", sb.pin_dir().to_str().unwrap()])
        .args(["--cgroup", sb.cgroup.to_str().unwrap(), "--events-socket", "none", "--sink", "none"]);
    imds_guard_tests::sandbox::enter_netns(&mut run, &sb.netns_fd);
    let out = run.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the `nft` program (nft) is not installed") && err.contains("forward = false"),
        "{err}"
    );
}
