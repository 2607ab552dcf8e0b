//! The demo behind `./x demo`: imds-guard on its embedded default policy, in a sandbox (child
//! cgroup, network namespace with a fake IMDS, private bpffs), with allowed and denied clients
//! making requests every few seconds and the daemon's events shown as they arrive. Nothing touches
//! the host's own cgroups or metadata service. Ctrl-C (or --rounds N) ends it and removes it all.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use imds_guard_tests::{ImdsMode, Sandbox, fake_imds::ROLE};

const POLICY: &str = r#"# imds-guard demo policy (embedded)
mode = "enforce"
endpoints = ["aws-imds"]

[[allow]]
name = "root, standing in for the SSM agent"
uid = 0
imdsv1 = "deny"

[[allow]]
name = "the daemon user, a legacy app still on IMDSv1"
user = "daemon"
imdsv1 = "log"
"#;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let mut rounds: u32 = 0;
    let mut interval = 3u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--interval" => interval = args.next().and_then(|v| v.parse().ok()).expect("--interval SECONDS"),
            "-h" | "--help" => {
                println!("imds-guard-demo [--rounds N (0: until Ctrl-C)] [--interval SECONDS]");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the demo creates a cgroup, a network namespace and loads eBPF programs: run it as root");
        std::process::exit(1);
    }
    let Some(sb) = Sandbox::new("demo", ImdsMode::Optional) else { std::process::exit(1) };
    say(&format!(
        "sandbox ready: cgroup {}, network namespace {} with a fake IMDS on 169.254.169.254 and fd00:ec2::254",
        sb.cgroup.display(),
        sb.name
    ));
    say(&format!("policy (embedded):\n{POLICY}"));
    let policy = sb.write("policy.toml", POLICY);
    let daemon = sb.daemon(&policy);
    let mut shown = 0;
    let mut show_events = |d: &imds_guard_tests::Daemon| {
        std::thread::sleep(Duration::from_millis(150));
        let evs = d.events();
        for e in &evs[shown..] {
            println!("{e}");
        }
        shown = evs.len();
    };
    show_events(&daemon);

    let creds = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    let mut round = 0;
    while !STOP.load(Ordering::Relaxed) && (rounds == 0 || round < rounds) {
        round += 1;
        say(&format!("--- round {round} ---"));
        match sb.client(0, 0).imdsv2_get("169.254.169.254", &creds) {
            Ok(body) => {
                say(&format!("ALLOWED  root (uid 0), IMDSv2 over IPv4: {} bytes of credentials", body.len()))
            }
            Err(e) => say(&format!("UNEXPECTED root failed: {e}")),
        }
        match sb.client(1, 1).imdsv2_get("fd00:ec2::254", "/latest/meta-data/instance-id") {
            Ok(body) => say(&format!("ALLOWED  daemon (uid 1), IMDSv2 over IPv6: instance-id {body}")),
            Err(e) => say(&format!("UNEXPECTED daemon failed: {e}")),
        }
        let out = sb.client(1, 1).curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "HTTP %{http_code}",
            "http://169.254.169.254/latest/meta-data/",
        ]);
        say(&format!(
            "REPORTED daemon (uid 1), tokenless IMDSv1 GET: {} (allowed by its policy, reported as imdsv1_request)",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
        let out = sb.client(0, 0).curl(&[&format!("http://169.254.169.254{creds}")]);
        say(&format!(
            "REFUSED  root (uid 0), tokenless IMDSv1 GET of credentials: {} (imdsv1 = \"deny\": the write fails, IMDSv2 works)",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        let out = sb.client(65534, 65534).curl(&[&format!("http://169.254.169.254{creds}")]);
        say(&format!(
            "DENIED   nobody (uid 65534), curl IMDSv1: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        let p = sb.client(65534, 65534).connect("::ffff:169.254.169.254", 80);
        say(&format!(
            "DENIED   nobody, python connect() to ::ffff:169.254.169.254: {} in {:?}",
            p.result, p.elapsed
        ));
        show_events(&daemon);
        for _ in 0..interval * 10 {
            if STOP.load(Ordering::Relaxed) || (rounds != 0 && round >= rounds) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let status = sb.cli(&["status", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    say(&format!("imds-guard status:\n{}", String::from_utf8_lossy(&status.stdout)));
    drop(daemon);
    drop(sb);
    say("sandbox removed (cgroup, namespace, pins, processes)");
}

fn say(s: &str) {
    eprintln!("[demo] {s}");
}
