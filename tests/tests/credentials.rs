//! Credential attribution: a process that receives role credentials from the metadata service is
//! reported (`credentials_fetched`) with the access key id the response named, read in the kernel
//! by a stream verdict program on the metadata connections' sockhash, never with the secret access
//! key or the session token. And that hook on the receive path changes nothing a client gets:
//! every byte arrives, in order, however the response is cut, framed or sized, on every address
//! form; other sockets never meet it.

use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use imds_guard_tests::{
    Daemon, ImdsMode, Sandbox,
    fake_imds::{self, EXPIRATION, INSTANCE_ID, Options, ROLE, SECRET_ACCESS_KEY, SESSION_TOKEN},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

fn creds_events(d: &Daemon) -> Vec<Value> {
    d.events().into_iter().filter(|e| e["event"] == "credentials_fetched").collect()
}

/// Waits for `n` credentials events, then a little longer to see that no more come.
fn wait_creds(d: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + T;
    while creds_events(d).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    creds_events(d)
}

/// Neither the secret access key nor the session token (nor a good part of either) is in `text`.
fn assert_no_secret(what: &str, text: &[u8]) {
    for mark in [SECRET_ACCESS_KEY, SESSION_TOKEN] {
        for part in [mark, &mark[..12], &mark[mark.len() - 12..]] {
            assert!(!text.windows(part.len()).any(|w| w == part.as_bytes()), "{what} holds {part:?}");
        }
    }
}

/// Every event the daemon printed, its log, and what its event socket serves (native lines and
/// readable ones): no secret anywhere.
fn assert_no_secret_anywhere(sb: &Sandbox, d: &Daemon) {
    for e in d.events() {
        assert_no_secret("an event", serde_json::to_string(&e).unwrap().as_bytes());
    }
    assert_no_secret("the daemon's stderr", d.stderr().as_bytes());
    let socket = sb.events_socket();
    for args in [&["events", "--json", "--socket"][..], &["events", "--socket"]] {
        let out = sb.cli(&[args, &[socket.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{out:?}");
        assert_no_secret("imds-guard events", &out.stdout);
    }
}

/// botocore's InstanceMetadataFetcher (the AWS SDK for Python): its pid, then the access key it got.
const BOTOCORE_PY: &str = r#"
import os
from botocore.utils import InstanceMetadataFetcher
print(os.getpid(), flush=True)
creds = InstanceMetadataFetcher(timeout=2, num_attempts=1).retrieve_iam_role_credentials()
print(creds.get("access_key") or "none", flush=True)
"#;

fn botocore(sb: &Sandbox) -> (u32, String) {
    let script = sb.write("sdk.py", BOTOCORE_PY);
    let mut cmd = sb.client(0, 0).command("/usr/bin/python3");
    cmd.arg(&script).env_remove("AWS_EC2_METADATA_DISABLED").env("HOME", "/nonexistent");
    let out = cmd.output().unwrap();
    let _ = std::io::stderr().write_all(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("{out:?}"));
    (pid, lines.next().unwrap_or("").trim().to_owned())
}

/// The map-attached (before 6.10) or linked response hook is pinned.
fn response_hook_pinned(sb: &Sandbox) -> bool {
    ["links/resp", "links/resp_prog"].iter().any(|p| sb.pin_dir().join(p).exists())
}

#[test]
fn the_aws_sdk_s_credential_fetch_is_attributed_once_with_its_key_and_never_its_secret() {
    // `link`: the hooks are bpf_links (6.10+); `map`: attached through the sockhash, the only way
    // before 6.10 (forced here on a newer kernel). The second also keeps the connection alive
    // across the SDK's three requests (token, role list, credentials).
    for (attach, keep_alive) in [("link", false), ("map", true)] {
        let Some(sb) = Sandbox::new(&format!("creds_sdk_{attach}"), ImdsMode::Required) else { return };
        let key = format!("ASIAIMDSG{}SDK0001", attach.to_uppercase());
        sb.imds.configure(|o| {
            o.access_key_id = key.clone();
            o.keep_alive = keep_alive;
        });
        let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
        let d = sb.daemon_env(&policy, &[], &[("IMDS_GUARD_SK_MSG_ATTACH", attach)]);
        assert!(response_hook_pinned(&sb), "{attach}");
        let (pid, got) = botocore(&sb);
        assert_eq!(got, key, "{attach}: the SDK got its credentials");
        if keep_alive {
            let paths: Vec<String> = sb.imds.requests().into_iter().map(|r| r.path).collect();
            assert_eq!(paths.len(), 3, "{attach}: {paths:?}");
        }
        let events = wait_creds(&d, 1);
        assert_eq!(events.len(), 1, "{attach}: exactly one event: {events:#?}");
        let e = &events[0];
        assert_eq!(e["pid"], pid, "{attach}: {e}");
        assert_eq!(
            (e["comm"].as_str(), e["uid"].as_u64(), e["gid"].as_u64()),
            (Some("python3"), Some(0), Some(0))
        );
        assert!(e["exe"].as_str().is_some_and(|x| x.contains("python")), "{e}");
        assert_eq!(e["cgroup"], sb.cgroup_rel(), "{e}");
        assert_eq!(e["source"], "instance_role", "{e}");
        assert_eq!(e["role"], ROLE, "{e}");
        assert_eq!(e["path"], format!("{CREDS}{ROLE}"), "{e}");
        assert_eq!(e["access_key_id"], key.as_str(), "{e}");
        assert_eq!(e["expiration"], EXPIRATION, "{e}");
        assert_eq!(e["complete"], true, "{e}");
        assert_eq!(
            (e["dst"].as_str(), e["port"].as_u64(), e["family"].as_str()),
            (Some("169.254.169.254"), Some(80), Some("ipv4"))
        );
        assert_eq!(e["rule"], 0, "{e}");
        // The SDK's IMDSv2 requests are no findings.
        assert!(!d.events().iter().any(|e| e["event"] == "imdsv1_request"), "{:#?}", d.events());
        assert_no_secret_anywhere(&sb, &d);
        // An operator's question, answered from the live stream.
        let out = sb.cli(&["events", "--json", "--socket", sb.events_socket().to_str().unwrap()]);
        let found: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "credentials_fetched" && e["access_key_id"] == key.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{attach}: {found:?}");
        assert_eq!(found[0]["pid"], pid);
        let s = sb.status_json();
        assert_eq!(s["counters"]["credentials_fetched"], 1, "{s}");
        assert_eq!(s["counters"]["credentials_unwatched"], 0, "{s}");
        assert_eq!(s["enforcing"], true, "{s}");
        drop(d);
        let out = sb.cli(&["unload", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        assert!(!response_hook_pinned(&sb), "{attach}: unload removes the response hook");
    }
}

#[test]
fn requests_for_anything_but_credentials_yield_no_event() {
    let Some(sb) = Sandbox::new("creds_other", ImdsMode::Required) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let root = sb.client(0, 0);
    let tok = root.curl(&[
        "-f",
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ]);
    assert!(tok.status.success(), "{tok:?}");
    let token = String::from_utf8_lossy(&tok.stdout).into_owned();
    let header = format!("X-aws-ec2-metadata-token: {token}");
    for (path, head) in [
        ("/latest/meta-data/instance-id", false),
        ("/latest/meta-data/placement/availability-zone", false),
        ("/latest/meta-data/", false),
        // The role list: its response is read (the path names credentials), and holds no key.
        (CREDS, false),
        // A HEAD of the credentials: no body.
        (&format!("{CREDS}{ROLE}"), true),
        // A role that does not exist: 404.
        (&format!("{CREDS}no-such-role"), false),
    ] {
        let url = format!("http://169.254.169.254{path}");
        let out =
            if head { root.curl(&["-I", "-H", &header, &url]) } else { root.curl(&["-H", &header, &url]) };
        assert!(out.status.success(), "{path}: {out:?}");
    }
    assert_eq!(wait_creds(&d, 0), Vec::<Value>::new());

    // What does fetch credentials is reported: the role's, and the instance identity's.
    let body = root.imdsv2_get("169.254.169.254", &format!("{CREDS}{ROLE}")).unwrap();
    assert!(body.contains(fake_imds::ACCESS_KEY_ID), "{body}");
    let body = root
        .imdsv2_get(
            "fd00:ec2::254",
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        )
        .unwrap();
    assert!(body.contains(SESSION_TOKEN), "the client still gets everything: {body}");
    let events = wait_creds(&d, 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!((events[0]["comm"].as_str(), events[0]["role"].as_str()), (Some("curl"), Some(ROLE)));
    assert_eq!(events[1]["source"], "instance_identity", "{}", events[1]);
    assert_eq!(events[1]["role"], Value::Null);
    assert_eq!(events[1]["family"], "ipv6");
    assert!(events.iter().all(|e| e["access_key_id"] == fake_imds::ACCESS_KEY_ID));
    assert_no_secret_anywhere(&sb, &d);
}

/// Opens one keep-alive connection to `argv[1]` (`argv[2]`: 4, 6, or 6 for a v4-mapped address),
/// fetches a token on it, then GETs each path with it, and prints one JSON line per response: the
/// status, the body's length and SHA-256, and its access key id when it has one.
const KEPT_CLIENT_PY: &str = r#"
import hashlib, http.client, json, socket, sys
host, fam, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect((host, 80))
c = C("[%s]" % host if ":" in host else host)
c.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
r = c.getresponse()
token = r.read().decode()
socks = {id(c.sock)}
for p in paths:
    c.request("GET", p, headers={"X-aws-ec2-metadata-token": token})
    r = c.getresponse()
    body = r.read()
    socks.add(id(c.sock))
    key = None
    try:
        key = json.loads(body).get("AccessKeyId")
    except Exception:
        pass
    print(json.dumps({"path": p, "status": r.status, "len": len(body), "sha": hashlib.sha256(body).hexdigest(), "key": key}), flush=True)
print(json.dumps({"connections": len(socks)}), flush=True)
"#;

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn responses_in_pieces_chunked_and_on_kept_connections_reach_clients_whole() {
    let Some(sb) = Sandbox::new("creds_intact", ImdsMode::Required) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let script = sb.write("kept.py", KEPT_CLIENT_PY);
    let creds_path = format!("{CREDS}{ROLE}");
    let large = "/latest/meta-data/large?300000";
    let mut expected_events = 0;
    for (i, (pieces, chunked)) in
        [(None, None), (Some(7), None), (None, Some(5)), (Some(1000), Some(333))].into_iter().enumerate()
    {
        let key = format!("ASIAIMDSGINTACT{i:04}");
        sb.imds.configure(|o| {
            *o = Options {
                keep_alive: true,
                access_key_id: key.clone(),
                pieces,
                chunked,
                ..Options::default()
            };
        });
        let options = Options { access_key_id: key.clone(), ..Options::default() };
        let want: Vec<(&str, Vec<u8>)> = vec![
            ("/latest/meta-data/instance-id", INSTANCE_ID.as_bytes().to_vec()),
            (&creds_path, fake_imds::credentials_body(&options)),
            (CREDS, ROLE.as_bytes().to_vec()),
            (large, fake_imds::large_body(300_000)),
            (&creds_path, fake_imds::credentials_body(&options)),
        ];
        // Two credentials responses per connection (pieces: one write of 7 bytes at a time would
        // take long for the large body, so that case skips it).
        let want: Vec<_> = want.into_iter().filter(|(p, _)| pieces != Some(7) || *p != large).collect();
        for (host, fam) in [("169.254.169.254", "4"), ("fd00:ec2::254", "6"), ("::ffff:169.254.169.254", "6")]
        {
            let paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
            let out = sb
                .client(0, 0)
                .command("/usr/bin/python3")
                .arg(&script)
                .arg(host)
                .arg(fam)
                .args(&paths)
                .output()
                .unwrap();
            assert!(out.status.success(), "{pieces:?} {chunked:?} {host}: {out:?}");
            let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), want.len() + 1, "{lines:?}");
            for ((path, body), got) in want.iter().zip(&lines) {
                let what = format!("{path} with pieces {pieces:?}, chunked {chunked:?}, to {host}");
                assert_eq!(got["status"], 200, "{what}: {got}");
                assert_eq!(got["len"], body.len(), "{what}: {got}");
                assert_eq!(got["sha"], sha256(body), "{what}: every byte, in order");
            }
            assert_eq!(lines[want.len()]["connections"], 1, "one kept connection: {lines:?}");
            expected_events += 2;
            let events = wait_creds(&d, expected_events);
            assert_eq!(events.len(), expected_events, "{pieces:?} {chunked:?} {host}: {events:#?}");
            for e in &events[expected_events - 2..] {
                assert_eq!(e["access_key_id"], key.as_str(), "{e}");
                assert_eq!(
                    (e["complete"].as_bool(), e["expiration"].as_str()),
                    (Some(true), Some(EXPIRATION)),
                    "{e}"
                );
                assert_eq!(
                    e["dst"],
                    if host.contains("::ffff:") { "::ffff:169.254.169.254" } else { host },
                    "{e}"
                );
            }
        }
    }
    assert_no_secret_anywhere(&sb, &d);
}

#[test]
fn large_responses_reach_clients_whole_and_a_long_credentials_response_is_still_attributed() {
    let Some(sb) = Sandbox::new("creds_large", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let root = sb.client(0, 0);
    // Four MiB through a metadata connection (not a credentials request: not read, but on the
    // hook's path all the same).
    for host in ["169.254.169.254", "[fd00:ec2::254]"] {
        let n = 4 << 20;
        let out = root
            .command("curl")
            .args(["-sS", "--max-time", "60", &format!("http://{host}/latest/meta-data/large?{n}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout.len(), n, "{host}");
        assert!(out.stdout == fake_imds::large_body(n), "{host}: every byte, in order");
    }
    // A credentials response of 200 KB (its token padded): the client gets all of it; the kernel
    // reads it only so far (16 KiB), past the access key id, and says it did not read to the end.
    sb.imds.configure(|o| o.token_padding = 200_000);
    let out = root
        .command("curl")
        .args(["-sS", "--max-time", "20", &format!("http://169.254.169.254{CREDS}{ROLE}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("the whole document");
    assert_eq!(doc["Token"].as_str().map(str::len), Some(SESSION_TOKEN.len() + 200_000));
    let events = wait_creds(&d, 1);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(
        (e["access_key_id"].as_str(), e["complete"].as_bool()),
        (Some(fake_imds::ACCESS_KEY_ID), Some(false)),
        "{e}"
    );
    assert_eq!(e["expiration"], Value::Null, "{e}");
    assert_no_secret_anywhere(&sb, &d);
}

/// Writes `GET <path> HTTP/1.1` (any bytes but blanks and line ends in the path) on a connection
/// of its own and prints how many bytes of response it read.
const RAW_GET_PY: &str = r#"
import socket, sys
path = bytes.fromhex(sys.argv[1])
s = socket.create_connection(("169.254.169.254", 80), timeout=5)
s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n")
got = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
print(len(got), flush=True)
"#;

#[test]
fn a_hostile_role_name_and_hostile_values_are_bounded_and_escaped() {
    let Some(sb) = Sandbox::new("creds_hostile", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    // Control characters in the values (as JSON escapes, which decode to them), and lengths past
    // what is kept.
    sb.imds.configure(|o| {
        o.any_role = true;
        o.access_key_id = format!("ASIA\\u001b[31mHOSTILE\\n{}", "K".repeat(200));
        o.expiration = format!("\\u0007{}", "9".repeat(100));
    });
    let mut role = b"evil\x1b[2J\x07\x7f\xff".to_vec();
    role.extend(std::iter::repeat_n(b'R', 150));
    let path = [CREDS.as_bytes(), &role].concat();
    let hex: String = path.iter().map(|b| format!("{b:02x}")).collect();
    let script = sb.write("raw.py", RAW_GET_PY);
    let out = sb.client(0, 0).command("/usr/bin/python3").arg(&script).arg(&hex).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let events = wait_creds(&d, 1);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    let key = e["access_key_id"].as_str().unwrap();
    // The kernel keeps 128 bytes of the two values: the key takes them all, cut.
    assert!(key.starts_with("ASIA\u{1b}[31mHOSTILE\nKKK") && key.ends_with('…'), "{key:?}");
    assert!(key.chars().count() <= 128, "{key:?}");
    assert_eq!(e["expiration"], Value::Null, "no room left for it: {e}");
    let r = e["role"].as_str().unwrap();
    assert!(r.starts_with("evil\u{1b}[2J\u{7}\u{7f}\u{fffd}RRR") && r.ends_with('…'), "{r:?}");
    assert!(r.chars().count() < 100, "{r:?}");
    assert!(e["path"].as_str().unwrap().len() <= 128 + 3, "{e}");
    // The lines as written: the native ones carry control characters as JSON escapes, the
    // readable ones escaped as names a process chose.
    let socket = sb.events_socket();
    let native = sb.cli(&["events", "--json", "--socket", socket.to_str().unwrap()]).stdout;
    let line = String::from_utf8_lossy(&native)
        .lines()
        .find(|l| l.contains("credentials_fetched"))
        .unwrap()
        .to_owned();
    assert!(line.contains("\\u001b[31mHOSTILE\\n") && line.contains("evil\\u001b[2J\\u0007"), "{line}");
    // (JSON escapes what it must, the C0 controls; DEL stays as it is in every native field.)
    assert!(!line.bytes().any(|b| b < 0x20), "{line:?}");
    let human = sb.cli(&["events", "--socket", socket.to_str().unwrap()]).stdout;
    let human = String::from_utf8_lossy(&human);
    let line = human.lines().find(|l| l.contains("credentials fetched")).unwrap_or_else(|| panic!("{human}"));
    assert!(
        line.contains("ASIA\\u{1b}[31mHOSTILE\\nKKK") && line.contains("evil\\u{1b}[2J\\u{7}\\u{7f}"),
        "{line}"
    );
    assert!(!line.chars().any(|c| c.is_control()), "{line:?}");

    // A short key, and a hostile expiry that takes the rest of the room: cut too.
    sb.imds.configure(|o| {
        o.access_key_id = "ASIA\\u001b[2J".into();
        o.expiration = format!("\\u0007{}", "9".repeat(300));
    });
    let out = sb.client(0, 0).command("/usr/bin/python3").arg(&script).arg(&hex).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let events = wait_creds(&d, 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    let e = &events[1];
    assert_eq!(e["access_key_id"], "ASIA\u{1b}[2J", "{e}");
    let exp = e["expiration"].as_str().unwrap();
    assert!(exp.starts_with("\u{7}999") && exp.ends_with('…') && exp.chars().count() <= 128, "{exp:?}");
    assert_no_secret_anywhere(&sb, &d);
}

/// The bytes of every entry of the pinned map `name` (`bpftool map dump`), one `Vec` per entry.
fn map_entries(sb: &Sandbox, name: &str) -> Vec<Vec<u8>> {
    let dir = std::fs::read_dir(sb.pin_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("maps-")))
        .expect("the maps' directory");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(dir.join(name))
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let bytes = |a: &Value| -> Vec<u8> {
        a.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| {
                        h.as_str().and_then(|h| u8::from_str_radix(h.trim_start_matches("0x"), 16).ok())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    v.as_array().map(|es| es.iter().map(|e| bytes(&e["value"])).collect()).unwrap_or_default()
}

#[test]
fn the_secret_is_in_no_map_while_a_response_is_read() {
    let Some(sb) = Sandbox::new("creds_maps", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    // The response in 16-byte pieces with pauses, and a long token: its reading takes a second,
    // during which the watch is in the map, part read.
    sb.imds.configure(|o| {
        o.pieces = Some(16);
        o.token_padding = 3000;
    });
    let mut curl = sb
        .client(0, 0)
        .command("curl")
        .args(["-sS", "--max-time", "20", &format!("http://169.254.169.254{CREDS}{ROLE}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut dumps, mut with_key) = (0, 0);
    while curl.try_wait().unwrap().is_none() {
        for entry in map_entries(&sb, "IMDSG_CREDS") {
            assert_no_secret("the watch in IMDSG_CREDS", &entry);
            dumps += 1;
            if entry.windows(fake_imds::ACCESS_KEY_ID.len()).any(|w| w == fake_imds::ACCESS_KEY_ID.as_bytes())
            {
                with_key += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = curl.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(SESSION_TOKEN), "the client got it all: {out:?}");
    assert!(
        dumps > 0 && with_key > 0,
        "the watch was seen part read ({dumps} dumps, {with_key} with the key id)"
    );
    assert_eq!(wait_creds(&d, 1).len(), 1);
    assert!(map_entries(&sb, "IMDSG_CREDS").is_empty(), "the watch is gone once the response was read");
    assert_no_secret_anywhere(&sb, &d);
}

/// The kernel's run count of the response hook of `pin_dir` (with run statistics on).
fn response_hook_runs(pin_dir: &Path) -> u64 {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let bpf = |cmd: libc::c_long, attr: &mut [u8; 128]| {
        // SAFETY: the bpf syscall with a zeroed attribute block of 128 bytes that it may read and write.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) }
    };
    let info = |fd: i64, buf: &mut [u8; 256]| {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
        assert_eq!(bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr), 0, "{}", std::io::Error::last_os_error());
    };
    let get = |path: &Path| {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
        let fd = bpf(BPF_OBJ_GET, &mut attr);
        assert!(fd >= 0, "{}: {}", path.display(), std::io::Error::last_os_error());
        // SAFETY: a new descriptor the call returned.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    };
    let prog = if pin_dir.join("links/resp_prog").exists() {
        get(&pin_dir.join("links/resp_prog"))
    } else {
        // struct bpf_link_info: type, id, prog_id.
        let link = get(&pin_dir.join("links/resp"));
        let mut buf = [0u8; 256];
        info(i64::from(link.as_raw_fd()), &mut buf);
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&buf[8..12]);
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor the call returned.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    };
    let mut buf = [0u8; 256];
    info(i64::from(prog.as_raw_fd()), &mut buf);
    // struct bpf_prog_info: name at 64, run_cnt at 200.
    assert_eq!(&buf[64..74], b"imdsg_resp", "the response hook's program");
    u64::from_ne_bytes(buf[200..208].try_into().unwrap())
}

/// BPF run statistics, on while the descriptor lives (BPF_ENABLE_STATS, Linux 5.8+: no sysctl to
/// restore, and other tests' programs are unaffected).
fn run_stats() -> OwnedFd {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let mut attr = [0u8; 128]; // type 0: BPF_STATS_RUN_TIME
    // SAFETY: the bpf syscall with a zeroed attribute block.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_mut_ptr(), 128usize) };
    assert!(fd >= 0, "BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor the call returned.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[test]
fn the_response_hook_runs_for_metadata_connections_only() {
    let Some(sb) = Sandbox::new("creds_only", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let _d = sb.daemon(&policy);
    let _stats = run_stats();
    // A web server on loopback in the sandbox, and a megabyte from it: another socket.
    let www = sb.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let file = fake_imds::large_body(1 << 20);
    std::fs::write(www.join("big"), &file).unwrap();
    let mut server = sb
        .client(0, 0)
        .command("/usr/bin/python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "8080", "--directory"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    let got = loop {
        let out = sb.client(0, 0).curl(&["http://127.0.0.1:8080/big"]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let before = response_hook_runs(&sb.pin_dir());
    for _ in 0..3 {
        let out = sb.client(0, 0).curl(&["http://127.0.0.1:8080/big"]);
        assert!(out.stdout == file, "a megabyte over another connection, whole");
    }
    let after = response_hook_runs(&sb.pin_dir());
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(got.status.success(), "{got:?}");
    assert_eq!(after, before, "the response hook never ran for the other socket");
    // And it does run for metadata connections.
    let out = sb.client(0, 0).curl(&["-f", "http://169.254.169.254/latest/meta-data/instance-id"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), INSTANCE_ID);
    assert!(response_hook_runs(&sb.pin_dir()) > after, "it runs for metadata connections");
}

#[test]
fn a_kernel_without_sk_skb_runs_without_credential_attribution_and_says_so() {
    let Some(sb) = Sandbox::new("creds_degraded", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon_env(&policy, &[], &[("IMDS_GUARD_PRETEND_MISSING", "sk_skb")]);
    let g = d.events().into_iter().find(|e| e["event"] == "guard_started").unwrap();
    assert_eq!(g["degraded"].as_array().map(Vec::len), Some(1), "{g}");
    assert_eq!(g["degraded"][0]["feature"], "credential_attribution", "{g}");
    assert_eq!(g["degraded"][0]["missing"], serde_json::json!(["sk_skb"]), "{g}");
    assert!(d.wait_stderr("Credential attribution is off because this kernel has no sk_skb programs"));
    assert!(!response_hook_pinned(&sb));
    // The rest runs: IMDSv1 is reported, and the fetch gets its credentials, unreported.
    let out = sb.client(0, 0).curl(&["-f", &format!("http://169.254.169.254{CREDS}{ROLE}")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(fake_imds::ACCESS_KEY_ID), "{out:?}");
    d.wait_event(T, |e| e["event"] == "imdsv1_request").expect("IMDSv1 still reported");
    assert_eq!(wait_creds(&d, 0), Vec::<Value>::new());
    let mut cmd = std::process::Command::new(imds_guard_tests::sandbox::guard_bin());
    imds_guard_tests::sandbox::enter_netns(&mut cmd, &sb.netns_fd);
    let s = cmd
        .env("IMDS_GUARD_PRETEND_MISSING", "sk_skb")
        .args(["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()])
        .output()
        .unwrap();
    let s: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(s["enforcing"], true, "{s}");
    assert_eq!(s["degraded"][0]["feature"], "credential_attribution", "{s}");
}
