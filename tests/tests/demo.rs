//! The README's demo command works: one round shows allowed and denied requests and the events.

use imds_guard_tests::sandbox::privileged_or_skip;

#[test]
fn demo_runs_one_round_and_cleans_up() {
    if !privileged_or_skip("demo") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imds-guard-demo"))
        .args(["--rounds", "1", "--interval", "0"])
        .output()
        .expect("run demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("ALLOWED").count(), 2, "{stderr}");
    assert_eq!(stderr.matches("DENIED").count(), 2, "{stderr}");
    assert!(!stderr.contains("UNEXPECTED"), "{stderr}");
    assert!(stderr.contains("EPERM"), "{stderr}");
    assert!(stderr.contains("sandbox removed"), "{stderr}");
    assert_eq!(stdout.matches("\"event\":\"connect_denied\"").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("\"event\":\"imdsv1_request\"").count(),
        2,
        "one reported, one refused: {stdout}"
    );
    assert!(stderr.contains("REPORTED") && stderr.contains("REFUSED"), "{stderr}");
    let name = stderr
        .split("network namespace ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("netns name");
    assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists(), "netns {name} left behind");
}
