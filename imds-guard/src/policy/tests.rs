//! Resolution of policies, end to end: text in, rules and kernel tables out.

use std::path::PathBuf;

use imds_guard_common::{config::MAX_RULES, rule::field};

use super::*;

fn policy(text: &str) -> Result<Policy, ConfigError> {
    let host = Host { cgroup_root: PathBuf::from("/nonexistent-cgroup-root"), waiting_names: false };
    Policy::from_source(&Source { name: "p.toml".into(), text: text.into() }, &host)
}

#[test]
fn imdsv1_treatment() {
    let p =
        policy("imdsv1 = \"deny\"\n[[allow]]\nuid = 0\nimdsv1 = \"allow\"\n[[allow]]\nuid = 1\n").unwrap();
    assert_eq!(p.default_imdsv1, Imdsv1Action::Deny);
    assert_eq!((p.rules[0].imdsv1, p.rules[1].imdsv1), (Imdsv1Action::Allow, Imdsv1Action::Deny));
    let (cfg, entries) = p.kernel_tables(1);
    assert_eq!(cfg.default_imdsv1, Imdsv1Action::Deny as u32);
    assert_eq!(entries[0].1.imdsv1, Imdsv1Action::Allow as u32);
    let e = policy("[[allow]]\nuid = 0\nimdsv1 = \"block\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:3:10");
    assert_ne!(policy("").unwrap().digest, policy("imdsv1 = \"deny\"\n").unwrap().digest);
}

#[test]
fn preexisting_treatment() {
    assert_eq!(policy("").unwrap().preexisting, Preexisting::Report);
    assert_eq!(policy("preexisting = \"report\"\n").unwrap().preexisting, Preexisting::Report);
    assert_eq!(policy("preexisting = \"close\"\n").unwrap().preexisting, Preexisting::Close);
    let e = policy("mode = \"enforce\"\npreexisting = \"kill\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:2:15");
    assert!(e.message.contains("unknown preexisting treatment `kill`"), "{e}");
}

#[test]
fn exe_cgroup_and_comm_rules() {
    let p = policy("[[allow]]\nexe = \"/bin/sh\"\nuid = 0\n[[allow]]\ncgroup = \"/system.slice/ssm.service\"\n[[allow]]\ncomm = \"aws\"\n").unwrap();
    assert!(p.needs_exe());
    assert!(p.rules[1].is_pending(), "cgroup not there");
    assert!(p.warnings.iter().any(|w| w.contains("does not exist yet")), "{:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("prctl")), "{:?}", p.warnings);
    let (cfg, entries) = p.kernel_tables(1);
    assert_eq!(entries.len(), 2, "the pending cgroup rule is not installed");
    assert_eq!(cfg.needs_exe, 1);
    let e = policy("[[allow]]\nexe = \"/no/such/binary\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:2:7");
    assert!(
        policy("[[allow]]\ncomm = \"a-name-longer-than-15\"\n").unwrap_err().message.contains("15 bytes")
    );
    assert!(policy("[[allow]]\ncgroup = \"/\"\n").unwrap_err().message.contains("every process"));
}

#[test]
fn defaults() {
    let p = policy("[[allow]]\nuid = 0\n").unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.endpoints.v4, vec!["169.254.169.254".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(p.endpoints.v6, vec!["fd00:ec2::254".parse::<std::net::Ipv6Addr>().unwrap()]);
    assert_eq!(p.digest.len(), 64);
}

#[test]
fn an_empty_policy_allows_nobody() {
    let p = policy("").unwrap();
    assert!(p.rules.is_empty());
    let (cfg, entries) = p.kernel_tables(1);
    assert_eq!(cfg.probe_count, 0);
    assert!(entries.is_empty());
}

#[test]
fn user_and_group_resolve() {
    let p = policy("[[allow]]\nuser = \"root\"\ngroup = \"root\"\n").unwrap();
    assert_eq!((p.rules[0].uid, p.rules[0].gid), (Some(0), Some(0)));
    assert_eq!(p.rules[0].resolved(), ["user \"root\" = uid 0", "group \"root\" = gid 0"]);
}

#[test]
fn unknown_user_names_line_and_value() {
    let e = policy("mode = \"enforce\"\n\n[[allow]]\nuser = \"no-such-user-xyz\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:4:8");
    assert!(e.message.contains("unknown user `no-such-user-xyz`"), "{e}");
}

#[test]
fn unknown_group_and_mode_and_endpoint() {
    assert!(
        policy("[[allow]]\ngroup = \"no-such-group-xyz\"\n").unwrap_err().message.contains("unknown group")
    );
    let e = policy("mode = \"enforcing\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:1:8");
    let e = policy("endpoints = [\"aws-imds\", \"imds\"]\n").unwrap_err();
    assert_eq!(e.location, "p.toml:1:26");
    assert!(policy("endpoints = []\n").is_err());
}

#[test]
fn empty_table_and_conflicts_are_refused() {
    assert!(policy("[[allow]]\nname = \"x\"\n").unwrap_err().message.contains("no identity keys"));
    assert!(policy("[[allow]]\nuid = 0\nuser = \"root\"\n").unwrap_err().message.contains("keep one"));
    assert!(policy("[[allow]]\ngid = 0\ngroup = \"root\"\n").unwrap_err().message.contains("keep one"));
}

/// A node in a temporary directory: pod log directories and a kubepods tree (plain
/// directories: resolution only reads and stats them).
struct FakeNode(PathBuf);

const UID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const UID_C: &str = "cccccccc-0000-4000-8000-000000000003";

impl FakeNode {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("imdsg-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("logs/pods")).unwrap();
        std::fs::create_dir_all(root.join("logs/containers")).unwrap();
        std::fs::create_dir_all(root.join("cg/kubepods.slice/kubepods-besteffort.slice")).unwrap();
        FakeNode(root)
    }
    fn pod(&self, ns: &str, name: &str, uid: &str, qos: &str) -> String {
        std::fs::create_dir_all(self.0.join(format!("logs/pods/{ns}_{name}_{uid}/main"))).unwrap();
        let u = uid.replace('-', "_");
        let cg = if qos.is_empty() {
            format!("/kubepods.slice/kubepods-pod{u}.slice")
        } else {
            format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice")
        };
        std::fs::create_dir_all(self.0.join("cg").join(&cg[1..])).unwrap();
        cg
    }
    fn policy(&self, text: &str) -> Result<Policy, ConfigError> {
        let host = Host { cgroup_root: self.0.join("cg"), waiting_names: false };
        let text = format!(
            "{text}\n[kubernetes]\npod_logs = \"{}\"\ncontainer_logs = \"{}\"\n",
            self.0.join("logs/pods").display(),
            self.0.join("logs/containers").display()
        );
        Policy::from_source(&Source { name: "p.toml".into(), text }, &host)
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pod_and_namespace_rules_resolve_to_pod_cgroups() {
    let n = FakeNode::new("pods");
    let a = n.pod("kube-system", "aws-node-x1", UID_A, "burstable");
    n.pod("kube-system", "coredns-5d", UID_B, "");
    n.pod("default", "aws-node-fake", UID_C, "besteffort");
    let p = n
        .policy("[[allow]]\npod = \"kube-system/aws-node-\"\n[[allow]]\nnamespace = \"kube-system\"\nuid = 0\n[[allow]]\nnamespace = \"kube-system\"\n")
        .unwrap();
    let m = &p.rules[0].pods.as_ref().unwrap().matches;
    assert_eq!(m.len(), 1, "only kube-system's aws-node: {m:?}");
    assert_eq!((m[0].pod.uid.as_str(), m[0].cgroup.path.as_str(), m[0].cgroup.level), (UID_A, a.as_str(), 3));
    assert!(
        p.rules[0].resolved()[0].starts_with("pod kube-system/aws-node-*: aws-node-x1 ("),
        "{:?}",
        p.rules[0].resolved()
    );
    assert_eq!(p.rules[2].pods.as_ref().unwrap().matches.len(), 2);
    assert!(p.rules.iter().all(|r| r.duplicate_of.is_none()), "selectors are never duplicates");
    let (cfg, entries) = p.kernel_tables(1);
    // aws-node is in all three rules: its plain cgroup key belongs to the first one.
    let a_id = p.rules[0].pods.as_ref().unwrap().matches[0].cgroup.id.unwrap();
    let owners: Vec<u32> = entries
        .iter()
        .filter(|(k, _)| k.cgroup_id == a_id && k.uid == 0 && k.shape == field::CGROUP)
        .map(|(_, v)| v.rule_index)
        .collect();
    assert_eq!(owners, [0]);
    assert_eq!(entries.len(), 1 + 2 + 1, "{entries:?}");
    assert_eq!(cfg.probe_count, 2 * 2, "two shapes at two pod depths (guaranteed pods have no QoS slice)");
    assert!(p.pod_watch.contains(&n.0.join("logs/pods")));
    assert!(p.pod_watch.contains(&n.0.join("cg/kubepods.slice/kubepods-besteffort.slice")));

    // A new pod changes the resolution (and so the digest the reloader compares).
    let before = p.digest.clone();
    n.pod("kube-system", "aws-node-y2", "dddddddd-0000-4000-8000-000000000004", "besteffort");
    let q = n.policy("[[allow]]\npod = \"kube-system/aws-node-\"\n[[allow]]\nnamespace = \"kube-system\"\nuid = 0\n[[allow]]\nnamespace = \"kube-system\"\n").unwrap();
    assert_eq!(q.rules[0].pods.as_ref().unwrap().matches.len(), 2);
    assert_ne!(before, q.digest);
}

#[test]
fn ids_and_names_resolve_and_may_not_be_given_twice() {
    let p = policy("[[allow]]\nuid = 7\ngid = 8\n[[allow]]\nuser = \"root\"\n").unwrap();
    assert_eq!(p.rules[0].resolved(), ["uid 7", "gid 8"]);
    assert_eq!(
        (p.rules[0].uid, p.rules[0].gid, p.rules[0].name.to_string().as_str()),
        (Some(7), Some(8), "allow[0]")
    );
    assert_eq!(p.rules[1].resolved(), ["user \"root\" = uid 0"]);
    let e = policy("[[allow]]\nuid = 0\nuser = \"root\"\n").unwrap_err();
    assert!(e.message.contains("`uid` and `user` in one [[allow]] table both name the user"), "{e}");
    assert_eq!(e.location, "p.toml:3:8", "{e}");
    let e = policy("[[allow]]\ngroup = \"root\"\ngid = 0\n").unwrap_err();
    assert!(e.message.contains("`gid` and `group` in one [[allow]] table both name the group"), "{e}");
}

/// `check --json`: names and resolved keys are rendered, the fields kept for them are not shown.
#[test]
fn rules_serialize_with_rendered_names_and_resolved_keys() {
    let p = policy("[[allow]]\nuser = \"root\"\ngid = 8\n[[allow]]\nname = \"ssm\"\ncomm = \"ssm-agent\"\n")
        .unwrap();
    let j = serde_json::to_value(&p).unwrap();
    let r0 = j["rules"][0].as_object().unwrap();
    let mut keys: Vec<&str> = r0.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["cgroup", "comm", "exe", "gid", "imdsv1", "index", "line", "name", "read", "resolved", "uid"]
    );
    assert_eq!(r0["name"], "allow[0]");
    assert_eq!(r0["resolved"], serde_json::json!(["user \"root\" = uid 0", "gid 8"]));
    assert_eq!((&r0["uid"], &r0["imdsv1"]), (&serde_json::json!(0), &serde_json::json!("log")));
    assert_eq!(j["rules"][1]["name"], "ssm");
    assert_eq!(j["rules"][1]["resolved"], serde_json::json!(["comm \"ssm-agent\" (spoofable)"]));
}

#[test]
fn every_depth_of_a_pod_rule_counts_toward_the_lookup_limit() {
    // One selector, pods at two depths (burstable below a QoS slice, guaranteed not): every
    // key set with a cgroup costs two lookups. Sixteen such key sets are the 32 allowed; a
    // further key set without a cgroup is one too many, which must be refused here, where the
    // table is named (it used to pass here and trip an assertion when the maps were written).
    let n = FakeNode::new("depths");
    n.pod("kube-system", "a", UID_A, "burstable");
    n.pod("kube-system", "b", UID_B, "");
    let mut text = String::new();
    for bits in 0..16u32 {
        text.push_str("[[allow]]\nnamespace = \"kube-system\"\n");
        for (bit, key) in
            [(1, "uid = 1\n"), (2, "gid = 1\n"), (4, "comm = \"c\"\n"), (8, "exe = \"/proc/self/exe\"\n")]
        {
            if bits & bit != 0 {
                text.push_str(key);
            }
        }
    }
    let p = n.policy(&text).unwrap();
    assert_eq!(p.kernel_tables(1).0.probe_count, 32);
    text.push_str("[[allow]]\nuid = 5\n");
    let e = n.policy(&text).unwrap_err();
    assert!(e.message.contains("33 lookups per connect; at most 32"), "{e}");
}

#[test]
fn pod_rules_without_pods_wait() {
    let n = FakeNode::new("nopods");
    // A log directory without a cgroup (a pod that is gone) selects nothing.
    std::fs::create_dir_all(n.0.join(format!("logs/pods/kube-system_aws-node-old_{UID_A}"))).unwrap();
    let p = n.policy("[[allow]]\npod = \"kube-system/aws-node-\"\n").unwrap();
    assert!(p.rules[0].is_pending());
    assert!(p.warnings.iter().any(|w| w.contains("no pod it selects runs")), "{:?}", p.warnings);
    assert!(p.kernel_tables(1).1.is_empty());
}

#[test]
fn container_rules_resolve_to_the_container_cgroup() {
    let n = FakeNode::new("containers");
    let pod = n.pod("kube-system", "aws-node-x1", UID_A, "burstable");
    let id = "ab".repeat(32);
    std::fs::create_dir_all(n.0.join(format!("cg{pod}/cri-containerd-{id}.scope"))).unwrap();
    std::os::unix::fs::symlink(
        n.0.join(format!("logs/pods/kube-system_aws-node-x1_{UID_A}/aws-node/0.log")),
        n.0.join(format!("logs/containers/aws-node-x1_kube-system_aws-node-{id}.log")),
    )
    .unwrap();
    let p = n.policy("[[allow]]\npod = \"kube-system/aws-node-\"\ncontainer = \"aws-node\"\n[[allow]]\nnamespace = \"kube-system\"\ncontainer = \"other\"\n").unwrap();
    let m = &p.rules[0].pods.as_ref().unwrap().matches;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].container_id.as_deref(), Some(id.as_str()));
    assert_eq!(m[0].cgroup.level, 4);
    assert!(p.rules[1].is_pending());
    assert!(p.pod_watch.contains(&n.0.join("logs/containers")));
    assert!(p.pod_watch.contains(&n.0.join(format!("cg{pod}"))), "container cgroups appear in the pod's");
}

#[test]
fn pod_key_errors_name_the_value() {
    let n = FakeNode::new("errors");
    let e = n.policy("[[allow]]\npod = \"aws-node\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:2:7");
    assert!(e.message.contains("<namespace>/<pod name prefix>"), "{e}");
    let e =
        n.policy("[[allow]]\npod = \"kube-system/aws-node-\"\nnamespace = \"kube-system\"\n").unwrap_err();
    assert!(e.message.contains("keep `pod` or `namespace`"), "{e}");
    let e = n.policy("[[allow]]\ncgroup = \"/a\"\nnamespace = \"kube-system\"\n").unwrap_err();
    assert!(e.message.contains("both name the cgroup"), "{e}");
    let e = n.policy("[[allow]]\ncontainer = \"aws-node\"\nuid = 0\n").unwrap_err();
    assert!(e.message.contains("needs `pod` or `namespace`"), "{e}");
    let e = n.policy("[[allow]]\nnamespace = \"Kube_System\"\n").unwrap_err();
    assert_eq!(e.location, "p.toml:2:13");
    let e = policy("[kubernetes]\npod_logs = \"var/log/pods\"\n").unwrap_err();
    assert!(e.message.contains("absolute"), "{e}");
    let e = policy("[kubernetes]\npod_cgroups = []\n").unwrap_err();
    assert!(e.message.contains("empty"), "{e}");
    let e = policy("[kubernetes]\npod_cgroups = [\"kubepods\"]\n").unwrap_err();
    assert!(e.message.contains("starting with `/`"), "{e}");
}

#[test]
fn limits_are_errors_at_the_table_that_exceeds_them() {
    let many: String = (0..=MAX_RULES).map(|i| format!("[[allow]]\nuid = {i}\n")).collect();
    let e = policy(&many).unwrap_err();
    assert_eq!(e.location, format!("p.toml:{}:1", 2 * MAX_RULES + 1));
    assert!(e.message.contains("at most 16384"), "{e}");
    assert!(policy(&many[..many.rfind("[[allow]]").unwrap()]).is_ok(), "16384 tables are fine");

    // Four key sets with a cgroup, at 12 depths: 4 * 12 lookups > 32.
    let root = std::env::temp_dir().join(format!("imdsg-probes-{}", std::process::id()));
    let deep: Vec<String> = (1..=12).map(|d| vec!["x"; d].join("/")).collect();
    std::fs::create_dir_all(root.join(&deep[11])).unwrap();
    let mut text = String::new();
    for d in &deep {
        for extra in ["", "uid = 1\n", "gid = 1\n", "comm = \"c\"\n"] {
            text.push_str(&format!("[[allow]]\ncgroup = \"/{d}\"\n{extra}"));
        }
    }
    let host = Host { cgroup_root: root.clone(), waiting_names: false };
    let e = Policy::from_source(&Source { name: "p.toml".into(), text }, &host).unwrap_err();
    std::fs::remove_dir_all(&root).unwrap();
    // Depths 1 to 8 take 4 * 8 = 32 lookups (11 lines each); the first table at depth 9 adds 4.
    assert!(e.message.contains("36 lookups per connect; at most 32"), "{e}");
    assert_eq!(e.location, "p.toml:89:1", "{e}");
}

#[test]
fn kernel_tables() {
    let p = policy("mode = \"monitor\"\n[[allow]]\nuid = 0\n[[allow]]\ngid = 5\n[[allow]]\nuid = 7\ngid = 8\n[[allow]]\nuid = 0\n").unwrap();
    assert_eq!(p.rules[3].duplicate_of, Some(0));
    let (cfg, entries) = p.kernel_tables(9);
    assert_eq!(cfg.generation, 9);
    assert_eq!(cfg.mode, Mode::Monitor as u32);
    assert_eq!(cfg.probe_count, 3);
    assert_eq!(cfg.probes[0].shape, (field::UID | field::GID) as u8);
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|(k, _)| k.generation == 9));
    assert_eq!(cfg.v4_count, 1);
    assert_eq!(cfg.v4[0], u32::from_ne_bytes([169, 254, 169, 254]));
    // The digest changes with the policy.
    let q = policy("mode = \"monitor\"\n[[allow]]\nuid = 1\n").unwrap();
    assert_ne!(p.digest, q.digest);
}

#[test]
fn the_rule_that_denies_imdsv1_is_named() {
    let p = policy(
        "mode = \"enforce\"\n[[allow]]\nuid = 0\n[[allow]]\nname = \"legacy\"\nuid = 1\nimdsv1 = \"deny\"\n",
    )
    .unwrap();
    assert_eq!(
        p.imdsv1_denial().as_deref(),
        Some("allow[1] \"legacy\" (p.toml line 4) sets imdsv1 = \"deny\"")
    );
    let p = policy("imdsv1 = \"deny\"\n[[allow]]\nuid = 0\nimdsv1 = \"log\"\n").unwrap();
    assert_eq!(p.imdsv1_denial().as_deref(), Some("p.toml sets imdsv1 = \"deny\" for every workload"));
    assert_eq!(policy("[[allow]]\nuid = 0\n").unwrap().imdsv1_denial(), None);
}

#[test]
fn the_strictest_imdsv1_treatment_covers_the_default_and_every_table() {
    let p = policy("imdsv1 = \"allow\"\n[[allow]]\nuid = 0\n").unwrap();
    assert_eq!(p.strictest_imdsv1(), Imdsv1Action::Allow);
    let p = policy("[[allow]]\nuid = 0\n[[allow]]\nuid = 1\nimdsv1 = \"deny\"\n").unwrap();
    assert_eq!(p.strictest_imdsv1(), Imdsv1Action::Deny);
    assert_eq!(p.kernel_tables(1).0.strictest_imdsv1, Imdsv1Action::Deny as u32);
    let p = policy("imdsv1 = \"deny\"\n[[allow]]\nuid = 0\nimdsv1 = \"allow\"\n").unwrap();
    assert_eq!(p.strictest_imdsv1(), Imdsv1Action::Deny);
}

#[test]
fn read_is_one_line_for_the_others_and_a_key_of_any_table() {
    use imds_guard_common::{config::GenConfig, rule::Read};
    // The default stays as safe as before: the others are refused at connect, tables read all.
    let p = policy("[[allow]]\nuid = 0\n").unwrap();
    assert_eq!((p.others_read, p.rules[0].read, p.strictest_read()), (Read::Nothing, Read::All, Read::All));
    let p = policy("read = \"no-secrets\"\n[[allow]]\nuid = 0\n[[allow]]\nuid = 1\nread = \"no-secrets\"\n")
        .unwrap();
    assert_eq!(
        (p.others_read, p.rules[0].read, p.rules[1].read),
        (Read::NoSecrets, Read::All, Read::NoSecrets)
    );
    assert_eq!(p.strictest_read(), Read::NoSecrets);
    let (cfg, entries): (GenConfig, _) = p.kernel_tables(7);
    assert_eq!((cfg.others_read, cfg.strictest_read), (Read::NoSecrets as u32, Read::NoSecrets as u32));
    let mut values: Vec<_> = entries.into_iter().map(|(_, v)| v).collect();
    values.sort_by_key(|v| v.rule_index);
    assert_eq!(values.iter().map(|v| v.read).collect::<Vec<_>>(), [Read::All as u32, Read::NoSecrets as u32]);
    assert_eq!(
        p.imdsv1_denial().as_deref(),
        Some("allow[1] \"allow[1]\" (p.toml line 4) sets read = \"no-secrets\""),
        "a restricted table needs the request inspector"
    );
    // It is part of what is enforced.
    let other = policy("[[allow]]\nuid = 0\n[[allow]]\nuid = 1\n").unwrap();
    let restricted = policy("[[allow]]\nuid = 0\n[[allow]]\nuid = 1\nread = \"no-secrets\"\n").unwrap();
    assert_ne!(other.digest, restricted.digest);
    // Each place takes only what makes sense there, and says so.
    let e = policy("read = \"all\"\n[[allow]]\nuid = 0\n").unwrap_err().to_string();
    assert!(
        e.contains("p.toml:1:8") && e.contains("unknown read `all` for processes no table admits"),
        "{e}"
    );
    assert!(e.contains("expected \"none\", \"no-secrets\" or a list of path prefixes"), "{e}");
    let e = policy("[[allow]]\nuid = 0\nread = \"none\"\n").unwrap_err().to_string();
    assert!(e.contains("p.toml:3:8") && e.contains("expected \"all\", \"no-secrets\" or a list"), "{e}");
    let e = policy("[[allow]]\nuid = 0\nread = \"secrets\"\n").unwrap_err().to_string();
    assert!(e.contains("unknown read `secrets` for a table"), "{e}");
}

#[test]
fn read_lists_are_checked_shared_and_compiled() {
    use imds_guard_common::{
        lists::{ReadLists, grant, walk},
        rule::{Read, list_of, listed},
    };
    let text = "read = [\"/latest/meta-data/placement/\", \"/latest/meta-data/instance-id\"]\n\
                [[allow]]\nuid = 0\n\
                [[allow]]\nuid = 1\nread = [\"/latest/meta-data/\", \"/latest/meta-data/iam/security-credentials/\"]\n\
                [[allow]]\nuid = 2\nread = [\"/latest/meta-data/\", \"/latest/meta-data/iam/security-credentials/\"]\n";
    // The same with a table the fast parser leaves to the toml crate: both read lists alike.
    for text in [text.to_owned(), format!("{text}[netfilter]\nforward = true\n")] {
        let p = policy(&text).unwrap();
        assert_eq!(
            (p.others_read, p.rules[0].read, p.rules[1].read),
            (Read::Listed, Read::All, Read::Listed)
        );
        assert_eq!(
            p.strictest_read(),
            Read::Nothing,
            "lists are not ordered: a connection nobody judged reads nothing"
        );
        let lists = p.read_lists();
        assert_eq!(lists.len(), 2, "the two tables share their list");
        let (cfg, entries) = p.kernel_tables(3);
        assert_eq!(cfg.others_read, listed(0));
        let mut values: Vec<_> = entries.into_iter().map(|(_, v)| v.read).collect();
        values.sort_unstable();
        assert_eq!(values, [Read::All as u32, listed(1), listed(1)]);
        let t = ReadLists::build(3, &lists).unwrap();
        let mut path = [0u8; imds_guard_common::http::PATH_MAX];
        let creds = b"/latest/meta-data/iam/security-credentials/role";
        path[..creds.len()].copy_from_slice(creds);
        let found = walk(&t, &path, creds.len() as u32);
        assert_eq!((grant(found, list_of(cfg.others_read)), grant(found, 1)), (0, 3));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["read_prefixes"][1], "/latest/meta-data/instance-id", "{json}");
        assert_eq!(json["rules"][1]["read"][0], "/latest/meta-data/", "{json}");
        assert_eq!(
            p.imdsv1_denial().as_deref(),
            Some("allow[1] \"allow[1]\" (p.toml line 4) sets read = [...] (a list of path prefixes)")
        );
        // The others' read, as the refusal on a kernel without the inspector names it.
        assert_eq!(p.others_read, Read::Listed);
        assert_eq!(super::read_setting(p.others_read), "read = [...] (a list of path prefixes)");
        assert_eq!(super::read_setting(Read::NoSecrets), "read = \"no-secrets\"");
    }
    // A list is part of what is enforced.
    let a = policy("[[allow]]\nuid = 0\nread = [\"/a/\"]\n").unwrap();
    let b = policy("[[allow]]\nuid = 0\nread = [\"/b/\"]\n").unwrap();
    assert_ne!(a.digest, b.digest);
    // What cannot be compared as the service reads it is refused, at the prefix.
    for (bad, why) in [
        ("[\"latest/\"]", "starts with `/`"),
        ("[\"/latest/../user-data\"]", "no empty, `.` or `..` segment"),
        ("[\"/latest//meta-data/\"]", "no empty, `.` or `..` segment"),
        ("[\"/metadata/instance?api-version=1\"]", "printable ASCII"),
        ("[\"/latest/%75ser-data\"]", "printable ASCII"),
        ("[\"/ok/\", \"/a b\"]", "printable ASCII"),
    ] {
        let e = policy(&format!("[[allow]]\nuid = 0\nread = {bad}\n")).unwrap_err().to_string();
        assert!(e.contains("p.toml:3:") && e.contains("`read` prefix") && e.contains(why), "{bad}: {e}");
    }
    let e = policy("[[allow]]\nuid = 0\nread = []\n").unwrap_err().to_string();
    assert!(e.contains("p.toml:3:8") && e.contains("an empty `read` list"), "{e}");
    let e = policy("[[allow]]\nuid = 0\nread = [1]\n").unwrap_err().to_string();
    assert!(e.contains("p.toml:3"), "{e}");
    // The kernel's limits: distinct lists, and what the prefixes add up to.
    let many: String = (0..33).map(|i| format!("[[allow]]\nuid = {i}\nread = [\"/p{i}/\"]\n")).collect();
    let e = policy(&many).unwrap_err().to_string();
    assert!(e.contains("33 distinct `read` lists; at most 32"), "{e}");
    let long: Vec<String> = (0..16).map(|i| format!("\"/{i:02}{}\"", "x".repeat(40))).collect();
    let e = policy(&format!("read = [{}]\n", long.join(", "))).unwrap_err().to_string();
    assert!(e.contains("too many or too long"), "{e}");
}
