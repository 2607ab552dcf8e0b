//! A Kubernetes node in a sandbox: kubepods cgroup slices (systemd and cgroupfs drivers), kubelet's
//! pod and container log directories, pods on the node's network (hostNetwork) and in their own
//! network namespace, a host service, a pod that starts after the daemon — and pod rules that allow
//! exactly the system agents. Also: a policy mounted from a ConfigMap (kubelet's `..data` symlink
//! swap) is reloaded without a restart.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use imds_guard_tests::{ImdsMode, Sandbox, client::connect_bin, sandbox::run};

const IMDS: &str = "169.254.169.254";
const NOBODY: u32 = 65534;

/// The pod layout of one sandbox: cgroups below the sandbox cgroup, log directories in its dir.
struct Node<'a> {
    sb: &'a Sandbox,
    n: u32,
}

/// Where a pod's cgroup goes (kubelet's cgroup driver and the pod's QoS class).
#[derive(Clone, Copy)]
enum Layout {
    SystemdBurstable,
    SystemdGuaranteed,
    CgroupfsBestEffort,
}

struct Pod {
    /// The container's cgroup relative to the sandbox cgroup (where its processes run).
    container: String,
    /// The pod cgroup relative to the sandbox cgroup.
    pod: String,
    uid: String,
}

impl<'a> Node<'a> {
    fn new(sb: &'a Sandbox) -> Self {
        for d in ["logs/pods", "logs/containers"] {
            std::fs::create_dir_all(sb.dir.join(d)).unwrap();
        }
        // What kubelet makes when it starts: the kubepods roots and the QoS slices.
        for d in [
            "kubepods.slice/kubepods-burstable.slice",
            "kubepods.slice/kubepods-besteffort.slice",
            "kubepods/besteffort",
            "kubepods/burstable",
        ] {
            std::fs::create_dir_all(sb.cgroup.join(d)).unwrap();
        }
        Node { sb, n: 0 }
    }

    /// Makes a pod with one container as kubelet and containerd would: the pod's log directory and
    /// container log symlink, the pod cgroup and the container's cgroup.
    fn pod(&mut self, namespace: &str, name: &str, container: &str, layout: Layout) -> Pod {
        self.n += 1;
        let uid = format!("{:08x}-{:04x}-4000-8000-{:012x}", std::process::id(), self.n, self.n);
        let cid = format!("{:064x}", u128::from(self.n) << 64 | u128::from(std::process::id()));
        let u = uid.replace('-', "_");
        let (pod, ctr) = match layout {
            Layout::SystemdBurstable => {
                let p = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
                (p.clone(), format!("{p}/cri-containerd-{cid}.scope"))
            }
            Layout::SystemdGuaranteed => {
                let p = format!("kubepods.slice/kubepods-pod{u}.slice");
                (p.clone(), format!("{p}/cri-containerd-{cid}.scope"))
            }
            Layout::CgroupfsBestEffort => {
                let p = format!("kubepods/besteffort/pod{uid}");
                (p.clone(), format!("{p}/{cid}"))
            }
        };
        let log_dir = self.sb.dir.join(format!("logs/pods/{namespace}_{name}_{uid}/{container}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        std::os::unix::fs::symlink(
            log_dir.join("0.log"),
            self.sb.dir.join(format!("logs/containers/{name}_{namespace}_{container}-{cid}.log")),
        )
        .unwrap();
        std::fs::create_dir_all(self.sb.cgroup.join(&ctr)).unwrap();
        Pod { container: ctr, pod, uid }
    }

    fn kubernetes_table(&self) -> String {
        format!(
            "[kubernetes]\npod_logs = \"{}\"\ncontainer_logs = \"{}\"\npod_cgroups = [\"{r}/kubepods.slice\", \"{r}/kubepods\"]\n",
            self.sb.dir.join("logs/pods").display(),
            self.sb.dir.join("logs/containers").display(),
            r = self.sb.cgroup_rel(),
        )
    }
}

/// A network namespace of a pod that is not on the host network: only `lo`, no route to the
/// metadata service. Removed on drop.
struct PodNetns {
    name: String,
    fd: OwnedFd,
}

impl PodNetns {
    fn new(sb: &Sandbox) -> Self {
        let name = format!("{}-pod", sb.name);
        run(Command::new("ip").args(["netns", "add", &name]));
        let guard = PodNetns { fd: std::fs::File::open(format!("/run/netns/{name}")).unwrap().into(), name };
        run(Command::new("ip").args(["-n", &guard.name, "link", "set", "lo", "up"]));
        guard
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pod_rules_allow_the_system_agents_and_deny_every_other_pod() {
    let Some(sb) = Sandbox::new("k8s_pods", ImdsMode::Optional) else { return };
    let mut node = Node::new(&sb);
    let aws_node = node.pod("kube-system", "aws-node-x7k2p", "aws-node", Layout::SystemdBurstable);
    let cni_init =
        node.pod("kube-system", "aws-node-x7k2p-init", "aws-vpc-cni-init", Layout::SystemdBurstable);
    let exporter = node.pod("monitoring", "node-exporter-4hj9q", "node-exporter", Layout::SystemdBurstable);
    let web = node.pod("default", "web-6d4cf56db6-abcde", "web", Layout::SystemdGuaranteed);
    let impostor = node.pod("default", "aws-node-fake", "aws-node", Layout::SystemdBurstable);
    let cgroupfs = node.pod("kube-system", "ebs-csi-node-q2w3e", "ebs-plugin", Layout::CgroupfsBestEffort);
    let kubelet = "system.slice/kubelet.service";
    std::fs::create_dir_all(sb.cgroup.join(kubelet)).unwrap();
    let policy = sb.write(
        "policy.toml",
        &format!(
            "mode = \"enforce\"\n\n\
             [[allow]]\nname = \"aws-node\"\npod = \"kube-system/aws-node-\"\ncontainer = \"aws-node\"\n\n\
             [[allow]]\nname = \"pod identity agent\"\npod = \"kube-system/eks-pod-identity-agent-\"\n\n\
             [[allow]]\nname = \"ebs csi\"\npod = \"kube-system/ebs-csi-node-\"\n\n\
             [[allow]]\nname = \"node services\"\ncgroup = \"{}/system.slice\"\n\n{}",
            sb.cgroup_rel(),
            node.kubernetes_table()
        ),
    );
    let check = sb.cli(&["check", "--config", s(&policy)]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(out.contains("container aws-node of pod kube-system/aws-node-*: aws-node-x7k2p ("), "{out}");
    assert!(out.contains("pod kube-system/eks-pod-identity-agent-*: none running now"), "{out}");
    assert!(out.contains("no pod it selects runs on this node now"), "{out}");

    let d = sb.daemon(&policy);
    let prog = connect_bin();
    let prog = s(&prog);
    let once = ["connect", IMDS, "80"];
    let pod_netns = PodNetns::new(&sb);
    // hostNetwork pods run in the node's network namespace (the sandbox's); the others in their own.
    let host_net = |p: &Pod, uid| sb.client(uid, uid).in_cgroup(&p.container).results(prog, None, &once);
    let own_net = |p: &Pod, uid| {
        sb.client(uid, uid).in_cgroup(&p.container).in_netns(&pod_netns.fd).results(prog, None, &once)
    };

    assert_eq!(host_net(&aws_node, 0), ["connected"], "aws-node (hostNetwork) is a system agent");
    assert_eq!(host_net(&aws_node, NOBODY), ["connected"], "whatever its uid");
    assert_eq!(host_net(&cni_init, 0), ["EPERM"], "another container of an aws-node pod is not aws-node");
    assert_eq!(host_net(&exporter, 0), ["EPERM"], "a hostNetwork pod is judged like any pod: denied");
    assert_eq!(own_net(&web, NOBODY), ["EPERM"], "a pod on the pod network: denied at connect()");
    assert_eq!(host_net(&impostor, 0), ["EPERM"], "the name in another namespace is not the agent");
    assert_eq!(host_net(&cgroupfs, 0), ["connected"], "kubelet's cgroupfs driver layout");
    assert_eq!(
        sb.client(NOBODY, NOBODY).in_cgroup(kubelet).results(prog, None, &once),
        ["connected"],
        "a host service"
    );
    assert_eq!(sb.client(0, 0).results(prog, None, &once), ["EPERM"], "the node's root cgroup, even as root");
    // The agent really gets credentials over IMDSv2 (the fake IMDS behind the node's address).
    let creds =
        sb.client(0, 0).in_cgroup(&aws_node.container).imdsv2_get(IMDS, "/latest/meta-data/instance-id");
    assert!(creds.is_ok(), "{creds:?}");

    // The denial names the pod's cgroup, from which attribution finds the pod.
    let ev = d
        .wait_event(Duration::from_secs(5), |e| {
            e["event"] == "connect_denied" && e["cgroup"].as_str().is_some_and(|c| c.contains(&exporter.pod))
        })
        .unwrap_or_else(|| panic!("no denial for the node-exporter pod: {:#?}", d.denials()));
    let w = imds_guard::host::workload::classify(ev["cgroup"].as_str().unwrap());
    assert_eq!(w.pod_uid.as_deref(), Some(exporter.uid.as_str()), "{ev}");
    let dir = imds_guard::host::workload::PodDirectory::new(
        sb.dir.join("logs/pods"),
        sb.dir.join("logs/containers"),
    );
    let who = dir.identify(&w).expect("the pod behind the event");
    assert_eq!(
        (who.namespace.as_str(), who.pod.as_str(), who.container.as_deref()),
        ("monitoring", "node-exporter-4hj9q", Some("node-exporter"))
    );

    // explain names the reason for a pod's process.
    let mut sleeper =
        sb.client(0, 0).in_cgroup(&exporter.container).command(prog).args(["sleep", "5000"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
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
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("DENIED"), "{explain:?}");
    assert!(text.contains("aws-node (line 3): no: cgroup "), "{text}");
    assert!(text.contains("is not inside any of the 1 pod cgroups the rule selects now"), "{text}");

    // A pod that starts after the daemon: kubelet makes its cgroup and log directory, the rule
    // follows without a restart.
    let generation = |e: &serde_json::Value| e["generation"].as_u64().unwrap_or(0);
    let before = d.events().iter().map(generation).max().unwrap_or(1);
    let agent = node.pod(
        "kube-system",
        "eks-pod-identity-agent-9zt8v",
        "eks-pod-identity-agent",
        Layout::SystemdBurstable,
    );
    d.wait_event(Duration::from_secs(5), |e| {
        e["event"] == "policy_reloaded" && e["reason"] == "identity_changed" && generation(e) > before
    })
    .unwrap_or_else(|| panic!("no reload when the pod appeared: {:#?}\n{}", d.events(), d.stderr()));
    assert_eq!(host_net(&agent, 0), ["connected"], "the pod identity agent, started later");

    // The aws-node pod is replaced (a DaemonSet rollout): new uid, new cgroups; the old pod's go.
    let replaced = node.pod("kube-system", "aws-node-m3n4b", "aws-node", Layout::SystemdGuaranteed);
    std::fs::remove_dir(sb.cgroup.join(&aws_node.container)).unwrap();
    std::fs::remove_dir(sb.cgroup.join(&aws_node.pod)).unwrap();
    // The reload follows within moments (one or two, as the changes land); poll for it.
    let mut result = Vec::new();
    for _ in 0..50 {
        result = host_net(&replaced, 0);
        if result == ["connected"] {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(result, ["connected"], "the new aws-node pod (guaranteed QoS: another depth)");
}

/// kubelet's AtomicWriter: the files of a ConfigMap volume are symlinks through `..data`, which is
/// swapped to a new timestamped directory with one rename.
struct ConfigMapVolume {
    dir: PathBuf,
    n: u32,
}

impl ConfigMapVolume {
    fn new(dir: PathBuf, policy: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = ConfigMapVolume { dir, n: 0 };
        v.update(policy);
        std::os::unix::fs::symlink("..data/policy.toml", v.dir.join("policy.toml")).unwrap();
        v
    }

    fn update(&mut self, policy: &str) {
        self.n += 1;
        let ts = format!("..2026_11_23_10_00_00.{:09}", self.n);
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("policy.toml"), policy).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        std::os::unix::fs::symlink(&ts, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

#[test]
fn a_configmap_update_is_installed_without_a_restart() {
    let Some(sb) = Sandbox::new("k8s_configmap", ImdsMode::Optional) else { return };
    let mut cm = ConfigMapVolume::new(sb.dir.join("etc-imds-guard"), "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&cm.dir.join("policy.toml"));
    let prog = connect_bin();
    let nobody = || sb.client(NOBODY, NOBODY).results(s(&prog), None, &["connect", IMDS, "80"]);
    assert_eq!(nobody(), ["EPERM"]);

    cm.update("[[allow]]\nuid = 0\n[[allow]]\nuid = 65534\n");
    let ev = d
        .wait_event(Duration::from_secs(5), |e| {
            e["event"] == "policy_reloaded" && e["reason"] == "file_changed"
        })
        .unwrap_or_else(|| panic!("the ..data swap was not seen: {:#?}\n{}", d.events(), d.stderr()));
    assert_eq!(ev["rules"], 2);
    assert_eq!(nobody(), ["connected"]);

    // A broken ConfigMap is refused; what was enforced stays.
    cm.update("[[allow]]\nuid = \"nobody\"\n");
    let ev = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reload_failed")
        .expect("the bad policy is reported");
    assert!(ev["error"].as_str().unwrap().contains("policy.toml:2:7"), "{ev}");
    assert_eq!(nobody(), ["connected"], "the previous policy stays enforced");
}

#[test]
fn the_health_probe_reflects_enforcement() {
    let Some(sb) = Sandbox::new("k8s_probe", ImdsMode::Optional) else { return };
    let pin = sb.pin_dir();
    let probe = || sb.cli(&["status", "--check", "--pin-dir", s(&pin)]);
    let before = probe();
    assert!(!before.status.success(), "nothing attached yet: {before:?}");
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let ok = probe();
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).starts_with("enforcing: generation 1, mode enforce, 1 rules"),
        "{ok:?}"
    );
    // The daemon exits: enforcement stays pinned, and so does the probe's answer.
    d.kill();
    assert!(probe().status.success());
    let unload = sb.cli(&["unload", "--pin-dir", s(&pin)]);
    assert!(unload.status.success(), "{unload:?}");
    let after = probe();
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("not enforcing"), "{after:?}");
}

#[test]
fn a_cgroup_namespace_view_of_the_hierarchy_is_refused() {
    // An unprivileged container on a cgroup v2 node: its own cgroup namespace and a cgroup2 mount
    // that shows only its subtree. Made here with unshare in the sandbox cgroup (the namespaces die
    // with the process).
    let Some(sb) = Sandbox::new("k8s_cgroupns", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let mnt = sb.dir.join("container-cgroupfs");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t cgroup2 none {mnt} && exec {bin} check --config {policy}",
        mnt = s(&mnt),
        bin = s(&imds_guard_tests::sandbox::guard_bin()),
        policy = s(&policy),
    );
    let out = sb
        .client(0, 0)
        .in_cgroup("container")
        .command("unshare")
        .args(["--cgroup", "--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("cgroup namespace's view of a subtree") && err.contains("privileged"), "{err}");
    // The same check from the host's namespaces passes.
    let ok = sb.cli(&["check", "--config", s(&policy)]);
    assert!(ok.status.success(), "{ok:?}");
}

/// Events name the systemd unit, the container and the pod (issue: "an event from a process in a
/// cgroup laid out like a systemd service, a containerd container and a Kubernetes pod carries the
/// unit, container id and pod namespace/name"); `suggest` turns what monitor mode saw into pod and
/// unit rules that, enforced, allow exactly those workloads.
#[test]
fn events_name_the_unit_container_and_pod_and_suggest_turns_them_into_rules() {
    let Some(sb) = Sandbox::new("k8s_attrib", ImdsMode::Optional) else { return };
    let mut node = Node::new(&sb);
    let agent = node.pod("kube-system", "metrics-agent-7f9c", "agent", Layout::SystemdBurstable);
    let unit = "system.slice/report.service";
    let docker_id = format!("{:064x}", 0xd0c4e2u128 << 64 | u128::from(std::process::id()));
    let docker = format!("system.slice/docker-{docker_id}.scope");
    for d in [unit, &docker] {
        std::fs::create_dir_all(sb.cgroup.join(d)).unwrap();
    }
    let policy = sb.write("policy.toml", &format!("mode = \"monitor\"\n\n{}", node.kubernetes_table()));
    let d = sb.daemon(&policy);
    let prog = connect_bin();
    let prog = s(&prog);
    let connect = |cg: &str, uid: u32| {
        let r = sb.client(uid, uid).in_cgroup(cg).results(prog, None, &["connect", IMDS, "80"]);
        assert_eq!(r, ["connected"], "monitor mode");
    };
    connect(&agent.container, NOBODY);
    connect(unit, 1000);
    connect(&docker, 1001);
    let by_uid = |uid: u32| {
        d.wait_event(Duration::from_secs(10), |e| e["event"] == "connect_denied" && e["uid"] == uid)
            .unwrap_or_else(|| panic!("no event for uid {uid}: {:#?}", d.events()))
    };
    let pod = by_uid(NOBODY);
    assert_eq!(pod["pod"]["namespace"], "kube-system", "{pod}");
    assert_eq!(pod["pod"]["name"], "metrics-agent-7f9c");
    assert_eq!(pod["pod"]["uid"], agent.uid.as_str());
    assert_eq!(pod["pod"]["container"], "agent");
    assert_eq!(pod["container_runtime"], "containerd");
    assert_eq!(pod["container_id"].as_str().map(str::len), Some(64));
    let svc = by_uid(1000);
    assert_eq!(svc["unit"], "report.service", "{svc}");
    assert!(svc.get("pod").is_none() && svc.get("container_id").is_none());
    let ctr = by_uid(1001);
    assert_eq!(ctr["container_id"], docker_id.as_str(), "{ctr}");
    assert_eq!(ctr["container_runtime"], "docker");

    // suggest → enforce: the pod and the unit are allowed by name; the Docker container (no pod,
    // no unit of its own) by executable and uid; anything else is denied.
    let out = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(suggested.contains("pod = \"kube-system/metrics-agent-7f9c\""), "{suggested}");
    assert!(suggested.contains(&format!("cgroup = \"{}/{unit}\"", sb.cgroup_rel())), "{suggested}");
    d.kill();
    let path = sb.write("suggested.toml", &suggested);
    let d = sb.daemon(&path);
    let r =
        |cg: &str, uid: u32| sb.client(uid, uid).in_cgroup(cg).results(prog, None, &["connect", IMDS, "80"]);
    assert_eq!(r(&agent.container, NOBODY), ["connected"], "{suggested}");
    assert_eq!(r(unit, 1000), ["connected"]);
    assert_eq!(r(&docker, 1001), ["connected"]);
    let other = node.pod("default", "web-1", "web", Layout::SystemdBurstable);
    assert_eq!(r(&other.container, NOBODY), ["EPERM"], "a pod never seen");
    assert_eq!(r(unit, 1002), ["connected"], "the unit's rule covers the unit, whoever runs in it");
    assert_eq!(r("system.slice/other.service", 1000), ["EPERM"], "another unit");
    drop(d);
}

/// Issue 17, item 1: uid 1000 holds delegated cgroups (an LXC-style `lxc.payload.*` inside a QoS
/// slice, and a directory at a pod's position whose name carries the aws-node pod's uid, which
/// sorts before the real pod's) and makes in them, as itself, a cgroup tree that looks like the
/// aws-node pod and its container. The pod rule must still select the real pod: the attacker is
/// refused, the real aws-node connects, and `check` shows the real cgroup.
#[test]
fn a_delegated_cgroup_cannot_pass_for_a_pod() {
    let Some(sb) = Sandbox::new("k8s_hijack", ImdsMode::Optional) else { return };
    const ATTACKER: u32 = 1000;
    let mut node = Node::new(&sb);
    let aws_node = node.pod("kube-system", "aws-node-x7k2p", "aws-node", Layout::SystemdBurstable);
    let cid = aws_node.container.rsplit_once("cri-containerd-").unwrap().1.trim_end_matches(".scope");
    // Delegated to the attacker by root (as a container manager or systemd's Delegate= does).
    let at_pod_position = format!("kubepods/besteffort/pod{}", aws_node.uid);
    let lxc = "kubepods.slice/kubepods-besteffort.slice/lxc.payload.c1";
    for d in [&at_pod_position, lxc] {
        std::fs::create_dir_all(sb.cgroup.join(d)).unwrap();
        std::os::unix::fs::chown(sb.cgroup.join(d), Some(ATTACKER), Some(ATTACKER)).unwrap();
    }
    // What the attacker makes there itself.
    let fake_ctr = format!("{at_pod_position}/{cid}");
    let nested = format!("{lxc}/kubepods/besteffort/pod{}/{cid}", aws_node.uid);
    for d in [&fake_ctr, &nested] {
        let out =
            sb.client(ATTACKER, ATTACKER).command("mkdir").arg("-p").arg(sb.cgroup.join(d)).output().unwrap();
        assert!(out.status.success(), "mkdir as {ATTACKER}: {out:?}");
    }
    let policy = sb.write(
        "policy.toml",
        &format!(
            "mode = \"enforce\"\n\n[[allow]]\nname = \"aws-node\"\npod = \"kube-system/aws-node-\"\ncontainer = \"aws-node\"\n\n{}",
            node.kubernetes_table()
        ),
    );
    let check = sb.cli(&["check", "--config", s(&policy)]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        out.contains(&format!("({}/{}, id ", sb.cgroup_rel(), aws_node.container)),
        "the real container: {out}"
    );
    assert!(!out.contains("lxc.payload") && !out.contains("kubepods/besteffort/pod"), "{out}");

    let _d = sb.daemon(&policy);
    let prog = connect_bin();
    let once = ["connect", IMDS, "80"];
    let r = |cg: &str, uid| sb.client(uid, uid).in_cgroup(cg).results(s(&prog), None, &once);
    assert_eq!(r(&fake_ctr, ATTACKER), ["EPERM"], "the attacker's directory at a pod's position");
    assert_eq!(r(&nested, ATTACKER), ["EPERM"], "the attacker's tree in its delegated cgroup");
    assert_eq!(r(&aws_node.container, 0), ["connected"], "the real aws-node keeps its access");
}
