//! IMDSv1 visibility and per-workload IMDSv2 enforcement: what a process writes to the metadata
//! service is classified in the kernel, tokenless requests are reported with the sending process,
//! and refused where the workload's policy says `imdsv1 = "deny"`.

use std::{
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant},
};

use imds_guard_tests::{ImdsMode, Sandbox, fake_imds::ROLE};
use serde_json::Value;

const NOBODY: u32 = 65534;
const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

fn url(path: &str) -> String {
    format!("http://169.254.169.254{path}")
}

/// An IMDSv2 session token, fetched by root with curl.
fn token(sb: &Sandbox) -> String {
    let out = sb.client(0, 0).curl(&[
        "-f",
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        &url("/latest/api/token"),
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The request findings (not the credentials a request fetched: `credentials_fetched`).
fn requests(d: &imds_guard_tests::Daemon) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(300));
    d.events()
        .into_iter()
        .filter(|e| {
            e["event"] != "connect_denied" && e["event"] != "credentials_fetched" && e["pid"].is_number()
        })
        .collect()
}

#[test]
fn a_tokenless_get_is_reported_once_with_the_process_that_sent_it() {
    let Some(sb) = Sandbox::new("v1_report", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    // Another process keeps the same CPU busy, so "whoever runs when the packet leaves" would be
    // the wrong answer.
    let mut hog = sb
        .client(0, 0)
        .command("taskset")
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let path = format!("{CREDS}{ROLE}");
    let curl = sb
        .client(0, 0)
        .command("taskset")
        .args(["-c", "0", "curl", "-sS", "--max-time", "5", &url(&path)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let curl_pid = curl.id();
    let out = curl.wait_with_output().unwrap();
    hog.kill().unwrap();
    hog.wait().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("AccessKeyId"),
        "log mode lets it through: {out:?}"
    );

    let reqs = requests(&d);
    assert_eq!(reqs.len(), 1, "exactly one event: {reqs:#?}");
    let e = &reqs[0];
    assert_eq!(e["event"], "imdsv1_request");
    assert_eq!(e["pid"], curl_pid, "the sender, not the CPU hog: {e}");
    assert_eq!(e["comm"], "curl");
    assert_eq!(e["uid"], 0);
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], path.as_str());
    assert_eq!(e["credentials"], true);
    assert_eq!(e["enforced"], false);
    assert_eq!(e["rule"], 0);
    assert_eq!(e["dst"], "169.254.169.254");
    assert_eq!(e["port"], 80);
    assert_eq!(e["cgroup"], sb.cgroup_rel());

    // IPv6 endpoint and a HEAD request too.
    let out = sb.client(0, 0).curl(&["-I", "http://[fd00:ec2::254]/latest/meta-data/"]);
    assert!(out.status.success(), "{out:?}");
    let e = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "imdsv1_request" && e["family"] == "ipv6")
        .expect("v6");
    assert_eq!(e["method"], "HEAD");
    assert_eq!(e["credentials"], false);
}

#[test]
fn imdsv2_requests_and_token_puts_are_not_findings_but_forwarded_puts_are() {
    let Some(sb) = Sandbox::new("v2_quiet", ImdsMode::Required) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let root = sb.client(0, 0);
    let tok = root.curl(&[
        "-f",
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        &url("/latest/api/token"),
    ]);
    assert!(tok.status.success(), "{tok:?}");
    let token = String::from_utf8_lossy(&tok.stdout).into_owned();
    for header in ["X-aws-ec2-metadata-token", "x-aws-ec2-metadata-token", "X-AWS-EC2-METADATA-TOKEN"] {
        let out =
            root.curl(&["-f", "-H", &format!("{header}: {token}"), &url("/latest/meta-data/instance-id")]);
        assert!(out.status.success(), "{header}: {out:?}");
    }
    // A token PUT without the TTL header is not IMDSv1 either (IMDS answers 400).
    let _ = root.curl(&["-X", "PUT", &url("/latest/api/token")]);
    assert_eq!(requests(&d), Vec::<Value>::new(), "no findings");

    let fwd = root.curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "-H",
        "X-Forwarded-For: 203.0.113.7",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url("/latest/api/token"),
    ]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout), "403", "IMDS refuses it");
    let e = d.wait_event(Duration::from_secs(5), |e| e["event"] == "token_put_forwarded").expect("reported");
    assert_eq!(
        (e["comm"].as_str(), e["method"].as_str(), e["path"].as_str()),
        (Some("curl"), Some("PUT"), Some("/latest/api/token"))
    );
    assert_eq!(requests(&d).len(), 1);
}

#[test]
fn imdsv1_deny_refuses_tokenless_requests_at_once_while_imdsv2_works() {
    let Some(sb) = Sandbox::new("v1_deny", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        "[[allow]]\nname = \"app\"\nuid = 0\nimdsv1 = \"deny\"\n\n[[allow]]\nname = \"legacy\"\nuid = 65534\n",
    );
    let d = sb.daemon(&policy);
    let root = sb.client(0, 0);
    let t = Instant::now();
    let v1 = root.curl(&[&url(&format!("{CREDS}{ROLE}"))]);
    let took = t.elapsed();
    assert!(!v1.status.success(), "{v1:?}");
    // At once: curl's own --max-time (5 s) is what a dropped, unanswered request would end on.
    // (Not a benchmark: curl starts in ~10 ms on the host, and in ~1 s in a QEMU (TCG) guest.)
    assert!(took < Duration::from_millis(2500), "fails at once, not on a timeout: {took:?}");
    assert!(!String::from_utf8_lossy(&v1.stdout).contains("AccessKeyId"));
    // The same identity's IMDSv2 flow works, over IPv4 and IPv6.
    assert!(root.imdsv2_get("169.254.169.254", &format!("{CREDS}{ROLE}")).unwrap().contains("AccessKeyId"));
    assert_eq!(
        root.imdsv2_get("fd00:ec2::254", "/latest/meta-data/instance-id").unwrap(),
        imds_guard_tests::fake_imds::INSTANCE_ID
    );
    // Another workload's policy is its own: "legacy" may still use IMDSv1 (and is reported).
    let legacy = sb.client(NOBODY, NOBODY).curl(&["-f", &url("/latest/meta-data/instance-id")]);
    assert!(legacy.status.success(), "{legacy:?}");

    let e = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "imdsv1_request" && e["enforced"] == true)
        .expect("refusal reported");
    assert_eq!(
        (e["uid"].as_u64(), e["credentials"].as_bool(), e["rule"].as_u64()),
        (Some(0), Some(true), Some(0))
    );
    d.wait_event(Duration::from_secs(5), |e| {
        e["event"] == "imdsv1_request" && e["uid"] == NOBODY && e["enforced"] == false
    })
    .expect("legacy reported, not refused");
    // Nothing tokenless from root ever reached the service.
    let served: Vec<_> =
        sb.imds.requests().into_iter().filter(|r| r.method == "GET" && !r.had_token).collect();
    assert_eq!(served.len(), 1, "only legacy's: {served:?}");
}

#[test]
fn requests_split_across_writes_are_judged_once_complete() {
    let Some(sb) = Sandbox::new("v1_split", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n");
    let d = sb.daemon(&policy);
    let token = token(&sb);
    // Python writes the request in pieces, with pauses, the token header in the last piece.
    let script = sb.write(
        "split.py",
        r#"
import socket, sys, time
s = socket.create_connection(("169.254.169.254", 80))
parts = sys.argv[1:]
try:
    for p in parts:
        s.sendall(p.encode().replace(b"|", b"\r\n"))
        time.sleep(0.05)
    print(s.recv(4096).split(b"\r\n")[0].decode())
except OSError as e:
    print("error", e.errno)
"#,
    );
    let run = |parts: &[&str]| {
        let out = sb.client(0, 0).command("/usr/bin/python3").arg(&script).args(parts).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let v2 = run(&[
        "GET /latest/meta-data/instance-id HTTP/1.1|Ho",
        "st: x|X-aws-ec2-",
        &format!("metadata-token: {token}||"),
    ]);
    assert_eq!(v2, "HTTP/1.1 200 OK", "a split IMDSv2 request goes through");
    assert_eq!(requests(&d), Vec::<Value>::new(), "and is no finding");
    let v1 = run(&["GET /latest/meta-data/instance-id HTTP/1.1|", "Host: x|", "|"]);
    assert_eq!(v1, "error 13", "the write that completes a tokenless request fails (EACCES)");
    let e = d.wait_event(Duration::from_secs(5), |e| e["event"] == "imdsv1_request").expect("reported");
    assert_eq!(e["enforced"], true);
    assert!(
        !sb.imds.requests().iter().any(|r| !r.had_token && r.method == "GET"),
        "{:?}",
        sb.imds.requests()
    );
}

#[test]
fn the_aws_sdk_gets_credentials_over_imdsv2_and_cannot_fall_back_to_v1() {
    for (mode, name) in [
        (ImdsMode::Optional, "optional"),
        (ImdsMode::Required, "required"),
        (ImdsMode::TokenForbidden, "token_forbidden"),
    ] {
        let Some(sb) = Sandbox::new(&format!("sdk_{name}"), mode) else { return };
        let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n");
        let d = sb.daemon(&policy);
        let got = sb.botocore(0);
        let v1_served = sb.imds.requests().into_iter().filter(|r| r.method == "GET" && !r.had_token).count();
        assert_eq!(v1_served, 0, "{name}: nothing reached IMDS over v1: {:?}", sb.imds.requests());
        if mode == ImdsMode::TokenForbidden {
            // The SDK's fallback to v1 is refused in the kernel: no credentials, and it is reported.
            assert_eq!(got, "none", "{name}");
            let e = d
                .wait_event(Duration::from_secs(5), |e| e["event"] == "imdsv1_request")
                .expect("fallback reported");
            assert_eq!((e["enforced"].as_bool(), e["comm"].as_str()), (Some(true), Some("python3")));
        } else {
            assert_eq!(got, "credentials", "{name}");
            assert_eq!(requests(&d), Vec::<Value>::new(), "{name}: the SDK used IMDSv2 only");
        }
    }
}

#[test]
fn a_tokenless_request_cannot_hide_behind_4096_bytes_of_valid_ones_in_one_write() {
    let Some(sb) = Sandbox::new("v1_hide", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n");
    let d = sb.daemon(&policy);
    let token = token(&sb);
    // Pipelined IMDSv2 requests filling the first 4096 bytes exactly, then a tokenless one, in a
    // single write.
    let script = sb.write(
        "hide.py",
        r#"
import socket, sys
v2 = ("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: %s\r\nX-Pad: " % sys.argv[1]).encode()
one = v2 + b"a" * (512 - len(v2) - 4) + b"\r\n\r\n"
assert len(one) == 512
payload = one * 8 + b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n\r\n"
s = socket.create_connection(("169.254.169.254", 80))
try:
    s.sendall(payload)
    print("sent")
except OSError as e:
    print("error", e.errno)
"#,
    );
    let out = sb.client(0, 0).command("/usr/bin/python3").arg(&script).arg(token.trim()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "error 13", "{out:?}");
    let e = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "imds_request_unclassified")
        .expect("reported");
    assert_eq!(e["enforced"], true);
    assert_eq!(e["unclassified"], "trailing", "{e}");
    assert!(
        !sb.imds.requests().iter().any(|r| r.path.contains("security-credentials")),
        "{:?}",
        sb.imds.requests()
    );
}

/// Connects to the endpoint, says so, waits for a line on stdin, then writes a tokenless GET on
/// that same connection and prints what became of it: `answered`, `closed` or the errno's name.
const KEPT_CONNECTION_PY: &str = r#"
import errno, socket, sys
s = socket.create_connection(("169.254.169.254", 80), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
    print("answered" if s.recv(100) else "closed", flush=True)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"#;

#[test]
fn imdsv1_deny_holds_on_a_connection_kept_across_restarts_on_both_attach_paths() {
    use std::io::BufRead as _;
    // `link`: the message hook is a bpf_link (6.10+); `map`: attached through its socket map,
    // the only way before 6.10 (forced here on a newer kernel).
    for attach in ["link", "map"] {
        let Some(sb) = Sandbox::new(&format!("v1_kept_{attach}"), ImdsMode::Optional) else { return };
        let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n");
        let env = [("IMDS_GUARD_SK_MSG_ATTACH", attach)];
        let d = sb.daemon_env(&policy, &[], &env);
        // Two connections made under the first daemon: one is used after a SIGKILL and a new
        // daemon, the other after that daemon's SIGTERM, with no daemon running.
        let spawn = || {
            let mut c = sb
                .client(0, 0)
                .command("python3")
                .args(["-c", KEPT_CONNECTION_PY])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3");
            let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "connected", "{attach}");
            (c, out)
        };
        let outcome =
            |(mut c, mut out): (std::process::Child, std::io::BufReader<std::process::ChildStdout>)| {
                c.stdin.take().unwrap().write_all(b"go\n").unwrap();
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                c.wait().unwrap();
                line.trim().to_owned()
            };
        let first = spawn();
        let second = spawn();
        d.kill();
        let d = sb.daemon_env(&policy, &[], &env);
        d.wait_event(Duration::from_secs(5), |e| e["event"] == "guard_started").expect("restarted");
        assert_eq!(outcome(first), "EACCES", "{attach}: a connection from before the restart");
        d.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(d.wait_exit(Duration::from_secs(10)).success());
        assert_eq!(outcome(second), "EACCES", "{attach}: with no daemon running");
        let served: Vec<_> = sb.imds.requests().into_iter().filter(|r| !r.had_token).collect();
        assert!(served.is_empty(), "{attach}: {served:?}");
        let out = sb.cli(&["unload", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn writes_the_classifier_cannot_vouch_for_are_refused_where_imdsv1_is_and_say_why() {
    let Some(sb) = Sandbox::new("v1_vouch", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n");
    let d = sb.daemon(&policy);
    let token = token(&sb);
    // Each case one write on its own connection; each would reach a tokenless request to a server
    // that skips a leading empty line or reads a body and then the next request.
    let script = sb.write(
        "vouch.py",
        r#"
import socket, sys
creds = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
v2 = ("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: %s\r\n\r\n" % sys.argv[2]).encode()
put = b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 5\r\n\r\nabcde"
payload = {"not_http": b"\r\n" + creds, "trailing": v2 + creds, "body": put + creds, "v2": v2}[sys.argv[1]]
s = socket.create_connection(("169.254.169.254", 80))
try:
    s.sendall(payload)
    s.settimeout(3)
    print("answered" if s.recv(100) else "closed")
except OSError as e:
    print("error", e.errno)
"#,
    );
    let run = |case: &str| {
        let out = sb
            .client(0, 0)
            .command("/usr/bin/python3")
            .arg(&script)
            .arg(case)
            .arg(token.trim())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for (case, reason) in [("not_http", "not_http"), ("trailing", "trailing"), ("body", "trailing")] {
        assert_eq!(run(case), "error 13", "{case}: refused at once (EACCES)");
        let e = d
            .wait_event(Duration::from_secs(5), |e| {
                e["event"] == "imds_request_unclassified"
                    && e["unclassified"] == reason
                    && e["enforced"] == true
            })
            .unwrap_or_else(|| panic!("{case}: reported as unclassified ({reason})"));
        assert_eq!(e["uid"], 0, "{e}");
    }
    // The same workload's ordinary IMDSv2 request goes through.
    assert_eq!(run("v2"), "answered");
    assert!(
        !sb.imds.requests().iter().any(|r| r.path.contains("security-credentials")),
        "{:?}",
        sb.imds.requests()
    );
}

/// Issue 21: 169.254.169.254 is also GCP's, Azure's and OCI's metadata address, and agents probe
/// them all. A GCP, Azure or OCI v2 request carries no AWS token, but those services refuse it
/// without their own header: it is not an IMDSv1 request — neither refused under
/// `imdsv1 = "deny"` nor reported. OCI's legacy `/opc/v1/` is tokenless, and a path the AWS
/// service might resolve into its own (`/metadata/../latest/…`) is not taken for another cloud's.
#[test]
fn other_clouds_requests_are_not_imdsv1() {
    let Some(sb) = Sandbox::new("v1_clouds", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n");
    let d = sb.daemon(&policy);
    let root = sb.client(0, 0);
    let ask = |path: &str, header: &str| {
        let out = root.curl(&["--path-as-is", "-H", header, &url(path)]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (path, header) in [
        ("/computeMetadata/v1/instance/zone", "Metadata-Flavor: Google"),
        ("/metadata/instance?api-version=2021-02-01", "Metadata: true"),
        ("/opc/v2/instance/region", "Authorization: Bearer Oracle"),
    ] {
        assert_eq!(ask(path, header), "", "{path}: answered");
    }
    for (path, header) in [
        ("/opc/v1/instance/region", "X-Probe: 1"),
        ("/metadata/../latest/meta-data/iam/security-credentials/", "Metadata: true"),
        ("/latest/meta-data/instance-id", "Metadata-Flavor: Google"),
    ] {
        assert!(ask(path, header).contains("Permission denied"), "{path}: refused as IMDSv1");
    }
    let served: Vec<String> = sb.imds.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(served.len(), 3, "{served:?}");
    let reported: Vec<Value> = requests(&d);
    let paths: Vec<&str> = reported.iter().map(|e| e["path"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        paths,
        [
            "/opc/v1/instance/region",
            "/metadata/../latest/meta-data/iam/security-credentials/",
            "/latest/meta-data/instance-id"
        ],
        "only the IMDSv1 ones reported: {reported:#?}"
    );
}

/// Alibaba Cloud's requests are judged by its own token header (issue 21): at `100.100.100.200`
/// a request with `X-aliyun-ecs-metadata-token` carries a token and one with only AWS's header
/// is tokenless; at `169.254.169.254` the other way round — over IPv4 and IPv4-mapped IPv6, for
/// a workload whose `imdsv1 = "deny"`.
#[test]
fn alibaba_s_token_counts_at_its_own_endpoint_only() {
    let Some(sb) = Sandbox::new("v1_alibaba", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        "endpoints = [\"aws-imds\", \"alibaba-imds\"]\n\n[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n",
    );
    let d = sb.daemon(&policy);
    let aws_token = format!("X-aws-ec2-metadata-token: {}", token(&sb));
    let root = sb.client(0, 0);
    // curl's complaint, empty when answered.
    let ask = |base: &str, header: &str| {
        let out = root.curl(&["-H", header, &format!("{base}/latest/meta-data/instance-id")]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ali_token = "X-aliyun-ecs-metadata-token: a-session-token";
    for base in ["http://100.100.100.200", "http://[::ffff:100.100.100.200]"] {
        assert_eq!(ask(base, ali_token), "", "{base}: Alibaba's token at its endpoint");
        assert!(ask(base, &aws_token).contains("Permission denied"), "{base}: AWS's token is none there");
        assert!(ask(base, "X-Probe: 1").contains("Permission denied"), "{base}: tokenless");
    }
    assert!(
        ask("http://169.254.169.254", ali_token).contains("Permission denied"),
        "Alibaba's token at AWS's"
    );
    assert_eq!(ask("http://169.254.169.254", &aws_token), "");
    let reported: Vec<(String, bool)> = requests(&d)
        .iter()
        .filter(|e| e["event"] == "imdsv1_request")
        .map(|e| (e["dst"].as_str().unwrap_or_default().to_owned(), e["enforced"] == true))
        .collect();
    let want: Vec<(String, bool)> = [
        "100.100.100.200",
        "100.100.100.200",
        "::ffff:100.100.100.200",
        "::ffff:100.100.100.200",
        "169.254.169.254",
    ]
    .iter()
    .map(|d| ((*d).to_owned(), true))
    .collect();
    assert_eq!(reported, want);
}
