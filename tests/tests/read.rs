//! `read`: who may read what. With `read = "no-secrets"` at the top of the policy, a process no
//! table admits may connect and read the harmless metadata, and is refused the secrets (the role's
//! name and credentials, the identity credentials, the user data) in the kernel, on the write that completes the request —
//! in every spelling, over IPv4, IPv6 and IPv4-mapped IPv6; a table's own `read` restricts it
//! likewise; the tables that keep `read = "all"` get everything.

use std::time::Duration;

use imds_guard_tests::{
    ImdsMode, Sandbox,
    fake_imds::{INSTANCE_ID, ROLE},
};
use serde_json::Value;

const NOBODY: u32 = 65534;
const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

fn denials(d: &imds_guard_tests::Daemon) -> Vec<Value> {
    d.events().into_iter().filter(|e| e["event"] == "request_denied").collect()
}

/// The `request_denied` events once there are `n` of them (or after 10 s: then what there is).
fn wait_denials(d: &imds_guard_tests::Daemon, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = denials(d);
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_others_read_all_but_the_secrets_in_any_spelling_on_every_address_family() {
    let Some(sb) = Sandbox::new("read_others", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "read = \"no-secrets\"\n\n[[allow]]\nname = \"root\"\nuid = 0\n");
    let d = sb.daemon(&policy);
    let hosts = ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"];
    for host in hosts {
        // Harmless: connected, answered.
        assert_eq!(
            sb.client(NOBODY, NOBODY).imdsv2_get(host, "/latest/meta-data/instance-id").as_deref(),
            Ok(INSTANCE_ID),
            "{host}"
        );
        for path in [
            format!("{CREDS}{ROLE}"),
            // The role list too: all of `security-credentials` is the role's.
            CREDS.to_owned(),
            format!("/latest/meta-data/iam/../iam/security-credentials/{ROLE}"),
            format!("/latest/meta-data/iam/%73ecurity-credentials/{ROLE}"),
            format!("/latest//meta-data/iam/security-credentials/{ROLE}"),
            format!("/LATEST/META-DATA/IAM/SECURITY-CREDENTIALS/{ROLE}"),
            format!("/2021-07-15/meta-data/iam/security-credentials/{ROLE}"),
            "/latest/user-data".to_owned(),
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance".to_owned(),
        ] {
            let r = sb.client(NOBODY, NOBODY).imdsv2_get(host, &path);
            assert!(r.is_err(), "{host}{path}: {r:?}");
        }
        // root's table keeps read = "all".
        assert!(
            sb.client(0, 0).imdsv2_get(host, &format!("{CREDS}{ROLE}")).unwrap().contains("AccessKeyId"),
            "{host}"
        );
    }
    // Nothing secret of nobody's reached the service: what it served nobody was harmless.
    let served: Vec<String> = sb.imds.requests().into_iter().map(|r| r.path).collect();
    let creds = format!("{CREDS}{ROLE}");
    assert_eq!(served.iter().filter(|p| **p == creds).count(), 3, "root's three: {served:?}");
    assert!(
        !served.iter().any(|p| p.contains("user-data") || p.contains("identity") || p.contains("..")),
        "{served:?}"
    );

    // Each refusal reported, with the path, its class and no rule (the others).
    let denied = wait_denials(&d, 9 * hosts.len());
    assert_eq!(denied.len(), 9 * hosts.len(), "{denied:#?}");
    let classes: Vec<&str> = denied.iter().take(9).map(|e| e["class"].as_str().unwrap()).collect();
    assert_eq!(
        classes,
        [
            "role-credentials",
            "role-credentials",
            "unreadable-path",
            "unreadable-path",
            "unreadable-path",
            "role-credentials",
            "role-credentials",
            "user-data",
            "identity-credentials"
        ]
    );
    for e in &denied {
        assert_eq!(
            (e["enforced"].as_bool(), e["uid"].as_u64(), e["comm"].as_str()),
            (Some(true), Some(65534), Some("curl")),
            "{e}"
        );
        assert!(e.get("rule").is_none(), "{e}");
    }
    assert_eq!(denied[0]["path"], format!("{CREDS}{ROLE}"));
    assert_eq!(denied[0]["method"], "GET");
    let st = sb.status_json();
    assert_eq!(st["counters"]["requests_denied"], 9 * hosts.len(), "{st}");
}

/// The same policy knows the other clouds' secrets on the same address: GCP service-account
/// tokens, Azure managed-identity tokens, OCI instance-principal keys, Alibaba RAM credentials;
/// their harmless facts go through (to the fake service, which answers 404 to them).
#[test]
fn every_clouds_credentials_are_secrets() {
    let Some(sb) = Sandbox::new("read_clouds", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "read = \"no-secrets\"\n\n[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    let ask = |path: &str, header: &str| {
        let out = nobody.curl(&["-H", header, &format!("http://169.254.169.254{path}")]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let secrets = [
        (
            "/computeMetadata/v1/instance/service-accounts/default/token",
            "Metadata-Flavor: Google",
            "service-account-token",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
            "Metadata: true",
            "managed-identity-token",
        ),
        ("/opc/v2/identity/key.pem", "Authorization: Bearer Oracle", "instance-principal"),
        (
            "/latest/meta-data/ram/security-credentials/role",
            "X-aliyun-ecs-metadata-token: t",
            "role-credentials",
        ),
    ];
    for (path, header, _) in secrets {
        assert!(ask(path, header).contains("Permission denied"), "{path}: refused at the write");
    }
    for (path, header) in [
        ("/computeMetadata/v1/instance/zone", "Metadata-Flavor: Google"),
        ("/metadata/instance?api-version=2021-02-01", "Metadata: true"),
        ("/opc/v2/instance/region", "Authorization: Bearer Oracle"),
    ] {
        assert_eq!(ask(path, header), "", "{path}: answered");
    }
    let served: Vec<String> = sb.imds.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(served.len(), 3, "only the harmless ones reached the service: {served:?}");
    let classes: Vec<String> = wait_denials(&d, secrets.len())
        .iter()
        .map(|e| e["class"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(classes, secrets.iter().map(|s| s.2).collect::<Vec<_>>());
}

#[test]
fn a_tables_read_restricts_it_and_the_sdk_cannot_fetch_credentials() {
    let Some(sb) = Sandbox::new("read_table", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        "[[allow]]\nname = \"agent\"\nuid = 65534\nread = \"no-secrets\"\n\n[[allow]]\nname = \"root\"\nuid = 0\n",
    );
    let d = sb.daemon(&policy);
    assert_eq!(
        sb.client(NOBODY, NOBODY).imdsv2_get("169.254.169.254", "/latest/meta-data/instance-id").as_deref(),
        Ok(INSTANCE_ID)
    );
    // botocore's credential fetch: the token PUT passes, the role list and credentials do not.
    assert_eq!(sb.botocore(NOBODY), "none");
    let e = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "request_denied" && e["comm"] == "python3")
        .expect("the SDK's fetch reported");
    assert_eq!(
        (e["class"].as_str(), e["rule"].as_u64(), e["enforced"].as_bool()),
        (Some("role-credentials"), Some(0), Some(true)),
        "{e}"
    );
    // A process no table admits is refused at connect, as before.
    let r = sb.client(1000, 1000).connect("169.254.169.254", 80).result;
    assert_eq!(r, "EPERM");
    // Root's table reads everything.
    assert!(
        sb.client(0, 0)
            .imdsv2_get("169.254.169.254", &format!("{CREDS}{ROLE}"))
            .unwrap()
            .contains("AccessKeyId")
    );
}

/// `read` as a list of path prefixes: the others may read only the instance id and the
/// placement, a table with `["/latest/meta-data/", ".../iam/security-credentials/"]` everything
/// under meta-data with the role's credentials (botocore fetches them) but not the other secrets
/// under it, and nothing else; on every address family, judged in the kernel at the write.
#[test]
fn a_list_lets_a_workload_read_only_the_paths_it_names() {
    let Some(sb) = Sandbox::new("read_lists", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        "read = [\"/latest/meta-data/instance-id\", \"/latest/meta-data/placement/\"]\n\n\
         [[allow]]\nname = \"agent\"\nuid = 1000\n\
         read = [\"/latest/meta-data/\", \"/latest/meta-data/iam/security-credentials/\"]\n\n\
         [[allow]]\nname = \"root\"\nuid = 0\n",
    );
    let d = sb.daemon(&policy);
    let hosts = ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"];
    let others_refused = [
        ("/latest/meta-data/", "unlisted-path"),
        ("/latest/meta-data/instance-idx", "unlisted-path"),
        ("/latest/meta-data/Instance-id", "unlisted-path"),
        ("/latest/meta-data/placement/../iam/security-credentials/", "unreadable-path"),
        ("/latest/meta-data/iam/security-credentials/", "role-credentials"),
        ("/latest/user-data", "user-data"),
    ];
    let agent_refused = [
        ("/latest/user-data", "user-data"),
        ("/latest/dynamic/instance-identity/document", "unlisted-path"),
        (
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            "identity-credentials",
        ),
    ];
    for host in hosts {
        let nobody = sb.client(NOBODY, NOBODY);
        assert_eq!(
            nobody.imdsv2_get(host, "/latest/meta-data/instance-id").as_deref(),
            Ok(INSTANCE_ID),
            "{host}"
        );
        for (path, _) in others_refused {
            let r = nobody.imdsv2_get(host, path);
            assert!(
                r.as_ref().is_err_and(|e| e.contains("Permission denied") || e.contains("Send failure")),
                "{host}{path}: {r:?}"
            );
        }
        let agent = sb.client(1000, 1000);
        assert!(agent.imdsv2_get(host, "/latest/meta-data/").unwrap().contains("instance-id"), "{host}");
        assert!(agent.imdsv2_get(host, &format!("{CREDS}{ROLE}")).unwrap().contains("AccessKeyId"), "{host}");
        for (path, _) in agent_refused {
            let r = agent.imdsv2_get(host, path);
            assert!(r.is_err(), "{host}{path}: {r:?}");
        }
        assert!(
            sb.client(0, 0).imdsv2_get(host, "/latest/user-data").is_err_and(|e| e.contains("404")),
            "root's table reads all: the request reaches the service (which has no user data)"
        );
    }
    // The SDK's credential fetch works for the table that lists the credentials.
    assert_eq!(sb.botocore(1000), "credentials");
    assert_eq!(sb.botocore(NOBODY), "none");

    // Nothing refused reached the service (what the agent and root read did: the meta-data
    // listing, the credentials, root's user-data request).
    let served: Vec<String> = sb.imds.requests().into_iter().map(|r| r.path).collect();
    let count = |path: &str| served.iter().filter(|p| *p == path).count();
    for (path, _) in others_refused.iter().chain(&agent_refused) {
        let (agent, root) = match *path {
            "/latest/meta-data/" => (hosts.len(), 0),
            "/latest/meta-data/iam/security-credentials/" => (1, 0), // botocore's role lookup
            "/latest/user-data" => (0, hosts.len()),
            _ => (0, 0),
        };
        assert_eq!(count(path), agent + root, "{path}: {served:?}");
    }
    // Each refusal reported with its class and rule.
    let per_host = others_refused.len() + agent_refused.len();
    // (botocore's refused credential fetch as nobody is reported too: one more.)
    let _ = wait_denials(&d, per_host * hosts.len() + 1);
    let denied: Vec<Value> = denials(&d).into_iter().filter(|e| e["comm"] == "curl").collect();
    assert_eq!(denied.len(), per_host * hosts.len(), "{denied:#?}");
    let seen: Vec<(&str, &str, Option<u64>)> = denied
        .iter()
        .take(per_host)
        .map(|e| (e["path"].as_str().unwrap_or(""), e["class"].as_str().unwrap(), e["rule"].as_u64()))
        .collect();
    let want: Vec<(&str, &str, Option<u64>)> = others_refused
        .iter()
        .map(|&(p, c)| (p, c, None))
        .chain(agent_refused.iter().map(|&(p, c)| (p, c, Some(0))))
        .collect();
    assert_eq!(seen, want);
    let out = sb.cli(&["check", "--config", policy.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("read [\"/latest/meta-data/\", \"/latest/meta-data/iam/security-credentials/\"]")
            && text.contains("the paths under [\"/latest/meta-data/instance-id\""),
        "{text}"
    );
}

/// `suggest` proposes the narrowest `read` each workload was seen using: in monitor mode the
/// requests of processes no table admits are read as if their `read` were `"no-secrets"`, each
/// secret is reported (not refused), and the suggested policy, enforced, lets the workload that
/// fetched credentials fetch them and refuses them to the one that only read the instance id —
/// which still reads it.
#[test]
fn suggest_proposes_the_narrowest_read_each_workload_was_seen_using() {
    let Some(sb) = Sandbox::new("read_suggest", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "mode = \"monitor\"\n\n[[allow]]\nname = \"root\"\nuid = 0\n");
    let d = sb.daemon(&policy);
    let started = d.wait_event(Duration::from_secs(5), |e| e["event"] == "guard_started").expect("started");
    assert_eq!(started["reports_reads"], true, "{started}");
    // Two workloads, each its own copy of curl (an executable of its own).
    let curl = which("curl");
    let (facts, creds) = (sb.dir.join("facts-curl"), sb.dir.join("creds-curl"));
    imds_guard_tests::sandbox::copy_exe(&curl, &facts, 0o755);
    imds_guard_tests::sandbox::copy_exe(&curl, &creds, 0o755);
    let (facts, creds) = (facts.to_str().unwrap(), creds.to_str().unwrap());
    let role = format!("{CREDS}{ROLE}");
    assert_eq!(
        sb.client(1000, 1000)
            .imdsv2_get_via(facts, "169.254.169.254", "/latest/meta-data/instance-id")
            .as_deref(),
        Ok(INSTANCE_ID)
    );
    // Monitor mode refuses nothing: the credentials are answered, and reported.
    let got = sb.client(1001, 1001).imdsv2_get_via(creds, "fd00:ec2::254", &role);
    assert!(got.as_deref().is_ok_and(|b| b.contains("AccessKeyId")), "{got:?}");
    let e = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "request_denied" && e["uid"] == 1001)
        .expect("the credentials fetch reported");
    assert_eq!(
        (e["class"].as_str(), e["enforced"].as_bool(), e.get("rule"), e["exe"].as_str()),
        (Some("role-credentials"), Some(false), None, Some(creds)),
        "{e}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(denials(&d).iter().all(|e| e["uid"] == 1001), "the instance id is no secret: {:#?}", denials(&d));

    let out = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed: toml::Value = toml::from_str(&suggested).expect(&suggested);
    let table = |exe: &str| {
        parsed["allow"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t.get("exe").and_then(|e| e.as_str()) == Some(exe))
            .cloned()
    };
    let (t_facts, t_creds) = (table(facts).expect(&suggested), table(creds).expect(&suggested));
    assert_eq!(t_facts.get("read").and_then(|r| r.as_str()), Some("no-secrets"), "{suggested}");
    assert!(t_creds.get("read").is_none(), "{suggested}");
    assert!(suggested.contains("#   read: role-credentials (so it may read all)"), "{suggested}");
    let path = sb.write("suggested.toml", &suggested);
    let check = sb.cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}\n{suggested}");
    d.kill();

    // Enforced: each workload reads what it read, and the one that read no secret gets none.
    let _d = sb.daemon(&path);
    let get =
        |uid: u32, exe: &str, path: &str| sb.client(uid, uid).imdsv2_get_via(exe, "169.254.169.254", path);
    assert_eq!(get(1000, facts, "/latest/meta-data/instance-id").as_deref(), Ok(INSTANCE_ID));
    assert!(get(1000, facts, &role).is_err(), "{suggested}");
    assert!(get(1001, creds, &role).is_ok_and(|b| b.contains("AccessKeyId")), "{suggested}");
    assert!(get(1002, facts, "/latest/meta-data/instance-id").is_err(), "never seen as uid 1002");
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|f| f.is_file()))
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}
