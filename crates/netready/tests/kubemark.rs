//! The kubemark deployment: every object `scripts/start-kubemark-netperf.sh` would apply,
//! rendered with all knobs on, validates strictly against Kubernetes 1.28 and 1.33 (built-in
//! kinds), the Prometheus Operator's schema (PodMonitor) and promtool (scrape config); the
//! scripts run against a stand-in `kubectl` on PATH (no cluster is reachable here) that
//! records what it is asked, so the tests check what reaches each cluster, in which order,
//! and that `cni-regression.sh` exits with `netready compare`'s verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use netready_testkit::manifests::{self, Doc};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

use netready_testkit::repo;

/// A scratch dir with a stand-in kubectl log and a master kubeconfig file.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        netready_testkit::ensure_packages().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("nrtest-kubemark-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("kubectl-log")).unwrap();
        // The stand-in answers `config view` itself; the file only has to exist.
        std::fs::write(dir.path().join("master.kubeconfig"), "apiVersion: v1\n").unwrap();
        Env { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs a script with every knob on, the stand-in kubectl first on PATH.
    fn script(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            repo().join("tests/kubemark/stand-in").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(repo().join("scripts").join(name));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("KUBECTL_LOG", self.path("kubectl-log"))
            .env("KUBEMARK_MASTER_KUBECONFIG", self.path("master.kubeconfig"))
            .env("NUM_NODES", "3")
            .env("KUBEMARK_IMAGE_REGISTRY", "registry.example.com/netready")
            .env("KUBEMARK_IMAGE_TAG", "v0.1.0")
            .env("NODE_TAINTS", "netready.io/not-so-hollow=true:NoSchedule")
            .env("REGISTRY_MIRROR", "https://mirror.example.com")
            .env("DEPLOY_KUBE_PROXY", "true")
            .env("CLUSTER_CIDR", "10.64.0.0/10")
            .env("CLUSTER_DNS", "10.96.0.10")
            .env("CNI_RELEASE", "v1.2.3")
            .env("NETREADY", BIN);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// What the stand-in kubectl was asked, in order: arguments and stdin.
    fn calls(&self) -> Vec<(Vec<String>, String)> {
        let log = self.path("kubectl-log");
        let mut ids: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".args")
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let args = std::fs::read_to_string(log.join(format!("{id}.args"))).unwrap();
                let stdin =
                    std::fs::read_to_string(log.join(format!("{id}.stdin"))).unwrap_or_default();
                (args.lines().map(str::to_owned).collect(), stdin)
            })
            .collect()
    }
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A small CNI manifest as a vendor ships one (a DaemonSet and its service account).
const CNI_MANIFEST: &str = "apiVersion: v1
kind: ServiceAccount
metadata:
  name: example-cni
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: example-cni
  namespace: kube-system
spec:
  selector:
    matchLabels: {app: example-cni}
  template:
    metadata:
      labels: {app: example-cni}
    spec:
      serviceAccountName: example-cni
      hostNetwork: true
      tolerations: [{operator: Exists}]
      containers:
        - name: agent
          image: registry.example.com/example-cni:v1.2.3
          securityContext: {privileged: true}
";

/// Checks every object as its users' tools would, and returns them by `cluster/kind/name`.
fn validate(docs: &[Doc], dir: &Path, operator: bool) -> BTreeMap<String, Doc> {
    let (monitoring, builtin): (Vec<_>, Vec<_>) = docs
        .iter()
        .cloned()
        .partition(|d| matches!(d.kind(), Some("PodMonitor" | "PrometheusRule")));
    manifests::kubernetes_validate(&builtin, dir).unwrap();
    if operator {
        let out = manifests::validate_monitoring(&monitoring, dir).unwrap();
        assert!(out.contains("2 object(s), 0 problem(s)"), "{out}");
    } else {
        assert!(
            monitoring.is_empty(),
            "Prometheus Operator objects without its CRDs"
        );
    }
    docs.iter()
        .map(|d| {
            (
                format!(
                    "{}/{}/{}",
                    d.cluster,
                    d.kind().unwrap_or("?"),
                    d.name().unwrap_or("?")
                ),
                d.clone(),
            )
        })
        .collect()
}

#[test]
fn start_dry_run_prints_objects_that_validate_on_1_28_and_1_33() {
    let env = Env::new();
    std::fs::write(env.path("cni.yaml"), CNI_MANIFEST).unwrap();
    let cni = env.path("cni.yaml");
    let template = env.path("conflist.template");
    std::fs::write(
        &template,
        r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge",
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "{{.PodCIDR}}"}]]}}]}"#,
    )
    .unwrap();
    let out = env.script(
        "start-kubemark-netperf.sh",
        &["--dry-run", "--examples"],
        &[
            ("CNI_MANIFEST", cni.to_str().unwrap()),
            ("CNI_CONF_TEMPLATE_FILE", template.to_str().unwrap()),
        ],
    );
    let printed = ok(&out, "start --dry-run");
    let objects = validate(&manifests::split(&printed), env.dir.path(), true);
    for expected in [
        "master/Secret/bootstrap-token-",
        "master/ClusterRoleBinding/netready-kubemark:kubelet-bootstrap",
        "master/ClusterRoleBinding/netready-kubemark:node-autoapprove-bootstrap",
        "master/ClusterRoleBinding/netready-kubemark:node-autoapprove-certificate-rotation",
        "master/Deployment/netperf-control",
        "master/DaemonSet/netperf-control-local",
        "master/RoleBinding/netready-discovery",
        "master/DaemonSet/netready-kube-proxy",
        "master/DaemonSet/example-cni",
        "master/Deployment/netperf",
        "master/Job/netperf-burst",
        "master/Service/netperf-model",
        "master/Deployment/netperf-model-server",
        "master/Deployment/netperf-model-client",
        "admin/Namespace/kubemark",
        "admin/Secret/kubeconfig",
        "admin/ConfigMap/node-registries",
        "admin/ConfigMap/cni-conf-template",
        "admin/ConfigMap/netready-config",
        "admin/StatefulSet/netready-collector",
        "admin/ReplicationController/not-so-hollow-node",
        "admin/Service/not-so-hollow-nodes",
        "admin/PodMonitor/netready",
        "admin/PrometheusRule/netready",
    ] {
        assert!(
            objects.keys().any(|k| k.starts_with(expected)),
            "{expected} not printed; got {:?}",
            objects.keys().collect::<Vec<_>>()
        );
    }
    // The application model: the clients load the servers' Service through its fixed VIP.
    let svc = &objects["master/Service/netperf-model"].text;
    assert!(svc.contains("clusterIP: 10.96.0.201"), "{svc}");
    let clients = &objects["master/Deployment/netperf-model-client"].text;
    assert!(
        clients.contains(
            "netready.io/http-load: \"rate=50,duration=5m,connections=4,target=10.96.0.201:80\""
        ),
        "{clients}"
    );
    // The knobs reached the node pods.
    let rc = &objects["admin/ReplicationController/not-so-hollow-node"].text;
    for knob in [
        "replicas: 3",
        "image: registry.example.com/netready/not-so-hollow-node:v0.1.0",
        "netready.io/not-so-hollow=true:NoSchedule",
        "privileged: true",
        "containerPort: 10250",
        "containerPort: 9153",
        "emptyDir: {}",
        "secretName: kubeconfig",
        "fs.inotify.max_user_instances",
    ] {
        assert!(
            rc.contains(knob),
            "{knob} missing from the node template:\n{rc}"
        );
    }
    let conf_template = &objects["admin/ConfigMap/cni-conf-template"].text;
    assert!(
        conf_template.contains(r#""subnet": "{{.PodCIDR}}""#),
        "{conf_template}"
    );
    let config = &objects["admin/ConfigMap/netready-config"].text;
    assert!(
        config.contains("results_collector = \"http://netready-collector.kubemark.svc:8080\"")
            && config.contains("nodes = 3")
            && config.contains("cni_release = \"v1.2.3\""),
        "{config}"
    );
    // netready in the node pods accepts its configuration (an unknown key would stop them).
    let toml: Vec<&str> = config
        .lines()
        .skip_while(|l| !l.contains("netready.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let file = env.path("netready.toml");
    std::fs::write(&file, toml.join("\n")).unwrap();
    let check = Command::new(BIN)
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{}",
        toml.join("\n"),
        String::from_utf8_lossy(&check.stderr)
    );
    // The bootstrap kubeconfig names the master and carries the token the master accepts.
    let secret = &objects["admin/Secret/kubeconfig"].text;
    let b64 = secret
        .lines()
        .find_map(|l| l.trim().strip_prefix("bootstrap.kubeconfig: "))
        .unwrap();
    let kubeconfig = String::from_utf8(
        Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(b64.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        kubeconfig.contains("server: https://kubemark-master.test:6443"),
        "{kubeconfig}"
    );
    let token_secret = objects
        .iter()
        .find(|(k, _)| k.starts_with("master/Secret/bootstrap-token-"))
        .unwrap()
        .1;
    let id = token_secret
        .name()
        .unwrap()
        .trim_start_matches("bootstrap-token-");
    assert_eq!(id.len(), 6);
    assert!(
        kubeconfig.contains(&format!("token: {id}.")),
        "{kubeconfig}"
    );
    // Nothing was sent to a cluster: only the two local `config view` reads.
    let calls = env.calls();
    assert!(
        calls.iter().all(|(a, _)| a.contains(&"config".to_string())),
        "dry run called kubectl: {calls:?}"
    );

    // The scrape configuration for a Prometheus without the Operator.
    let scrape = Command::new("perl")
        .args(["-pe", r"s/\$\{([A-Z0-9_]+)\}/$ENV{$1}/ge"])
        .arg(repo().join("kubemark-templates/prometheus/scrape-config.yaml"))
        .env("SCRAPE_INTERVAL", "30s")
        .env("KUBEMARK_NAMESPACE", "kubemark")
        .output()
        .unwrap();
    let prom = env.path("prometheus.yml");
    std::fs::write(&prom, &scrape.stdout).unwrap();
    std::fs::copy(
        repo().join("kubemark-templates/prometheus/netready-rules.yaml"),
        env.path("netready-rules.yaml"),
    )
    .unwrap();
    let checked = manifests::promtool_check_config(&prom).unwrap();
    assert!(checked.contains("rules found"), "{checked}");
}

#[test]
fn start_applies_the_same_objects_to_the_right_cluster_then_waits_for_the_nodes() {
    let env = Env::new();
    let out = env.script(
        "start-kubemark-netperf.sh",
        &[],
        &[("STAND_IN_PODMONITOR_CRD", "1")],
    );
    ok(&out, "start");
    let calls = env.calls();
    let master = env.path("master.kubeconfig").display().to_string();
    let mut applied = Vec::new();
    for (args, stdin) in &calls {
        if !args.contains(&"apply".to_string()) {
            continue;
        }
        // Server-side and strict, so a field the API server does not know fails the apply.
        assert!(
            args.contains(&"--server-side".to_string())
                && args.contains(&"--validate=strict".to_string()),
            "{args:?}"
        );
        let cluster = if args.contains(&master) {
            "master"
        } else {
            "admin"
        };
        for mut d in manifests::split(stdin) {
            d.cluster = cluster.into();
            applied.push(d);
        }
    }
    let objects = validate(&applied, env.dir.path(), true);
    // The master gets credentials and control pods before the node pods exist.
    let order: Vec<Vec<String>> = calls
        .iter()
        .filter(|(a, _)| a.contains(&"apply".to_string()))
        .map(|(_, s)| {
            manifests::split(s)
                .iter()
                .filter_map(|d| Some(format!("{}/{}", d.kind()?, d.name()?)))
                .collect()
        })
        .collect();
    let pos = |k: &str| {
        order
            .iter()
            .position(|o| o.iter().any(|x| x.starts_with(k)))
            .unwrap_or_else(|| panic!("{k} never applied: {order:?}"))
    };
    assert!(
        pos("Secret/bootstrap-token-") < pos("ReplicationController/not-so-hollow-node"),
        "{order:?}"
    );
    assert!(
        pos("Deployment/netperf-control") < pos("ReplicationController/not-so-hollow-node"),
        "{order:?}"
    );
    assert!(objects.contains_key("admin/ReplicationController/not-so-hollow-node"));
    // The last call waits for the nodes on the master.
    let (last, _) = calls.last().unwrap();
    assert!(
        last.contains(&master) && last.contains(&"nodes".to_string()),
        "{last:?}"
    );
}

#[test]
fn start_refuses_without_the_master_and_applies_nothing_half_rendered() {
    let env = Env::new();
    let out = env.script(
        "start-kubemark-netperf.sh",
        &[],
        &[(
            "KUBEMARK_MASTER_KUBECONFIG",
            "/nonexistent/master.kubeconfig",
        )],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KUBEMARK_MASTER_KUBECONFIG=/nonexistent/master.kubeconfig"),
        "{err}"
    );
    assert!(env.calls().is_empty());

    // A template naming a knob nobody set: an error naming it, and no apply.
    let template = env.path("broken.yaml");
    std::fs::write(
        &template,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: ${NO_SUCH_KNOB}\n",
    )
    .unwrap();
    let lib = repo().join("scripts/lib/kubemark.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            // Called from an || list, where errexit does not hold: the check must be explicit.
            "set -euo pipefail; source {}; DRY_RUN=0; false || apply_template admin {}",
            lib.display(),
            template.display()
        ))
        .env(
            "PATH",
            format!(
                "{}:{}",
                repo().join("tests/kubemark/stand-in").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("KUBECTL_LOG", env.path("kubectl-log"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("NO_SUCH_KNOB") && err.contains("broken.yaml"),
        "{err}"
    );
    assert!(env.calls().is_empty(), "a half-rendered object was applied");
}

#[test]
fn stop_scales_the_node_pods_down_before_it_deletes_their_nodes() {
    let env = Env::new();
    let dry = ok(
        &env.script("stop-kubemark-netperf.sh", &["--dry-run"], &[]),
        "stop --dry-run",
    );
    assert!(
        dry.contains("scale rc not-so-hollow-node --replicas=0"),
        "{dry}"
    );
    assert!(env.calls().is_empty());
    ok(&env.script("stop-kubemark-netperf.sh", &[], &[]), "stop");
    let calls: Vec<String> = env.calls().into_iter().map(|(a, _)| a.join(" ")).collect();
    let pos = |needle: &str| {
        calls
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {calls:#?}"))
    };
    assert!(pos("scale rc not-so-hollow-node --replicas=0") < pos("wait --for=delete pod"));
    assert!(pos("wait --for=delete pod") < pos("delete nodes -l netready.io/not-so-hollow=true"));
    assert!(pos("delete nodes") < pos("delete clusterrolebinding -l"));
    assert!(pos("delete clusterrolebinding -l") < pos("delete namespace kubemark"));
}

/// netready's per-pod records of a real run: `netready local` with one simulated node.
fn real_records(dir: &Path) -> PathBuf {
    let out = Command::new(BIN)
        .args([
            "local",
            "--nodes",
            "1",
            "--pods",
            "30",
            "--rate",
            "20",
            "--lifetime",
            "0s",
        ])
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n == "records.jsonl"))
        .unwrap();
    file
}

/// The same records, every duration `factor` times as long (a slower CNI).
fn slowed(records: &Path, factor: f64, to: &Path) {
    let text = std::fs::read_to_string(records).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(d) = v["durations_s"].as_object_mut() {
            for x in d.values_mut() {
                if let Some(f) = x.as_f64() {
                    *x = serde_json::json!(f * factor);
                }
            }
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(to, out).unwrap();
}

#[test]
fn cni_regression_exits_with_compare_s_verdict_from_the_collector_s_records() {
    netready_testkit::require_root();
    let env = Env::new();
    std::fs::write(env.path("cni.yaml"), CNI_MANIFEST).unwrap();
    let records = real_records(&env.path("local"));
    let slower = env.path("slower.jsonl");
    slowed(&records, 3.0, &slower);

    let dry = ok(
        &env.script(
            "cni-regression.sh",
            &["--cni-manifest", "cni.yaml", "--dry-run"],
            &[],
        ),
        "cni-regression --dry-run",
    );
    assert!(dry.contains("exec statefulset/netready-collector"), "{dry}");
    validate(
        &manifests::split(&dry)
            .into_iter()
            .filter(|d| d.cluster == "admin" || d.cluster == "master")
            .collect::<Vec<_>>(),
        env.dir.path(),
        true,
    );
    assert!(env
        .calls()
        .iter()
        .all(|(a, _)| a.contains(&"config".to_string())));

    // The collector hands back the same run as the baseline: no regression, exit 0.
    // A run against the baseline, the collector serving `served`, results in `out`.
    let regression = |out: &str, served: &Path| {
        let baseline = records.to_str().unwrap();
        // The records come from a run on this (maybe busy) machine: its own lag could make
        // the run invalid, which is compare's gate working (tested with `netready local`),
        // not the verdict passthrough this checks.
        let args = [
            "--cni-manifest",
            "cni.yaml",
            "--max-lag",
            "10s",
            "--baseline",
            baseline,
            "--out",
            out,
        ];
        env.script(
            "cni-regression.sh",
            &args,
            &[("STAND_IN_RECORDS", served.to_str().unwrap())],
        )
    };
    let out = regression("same", &records);
    let stdout = ok(&out, "cni-regression (same)");
    assert!(env.path("same/records.jsonl").exists() && env.path("same/report.txt").exists());
    assert_eq!(
        std::fs::read_to_string(env.path("same/records.jsonl")).unwrap(),
        std::fs::read_to_string(&records).unwrap()
    );
    assert!(stdout.contains("network_ready"), "{stdout}");
    // Records came from one exec into the collector, and the cluster was stopped after.
    let calls: Vec<String> = env.calls().into_iter().map(|(a, _)| a.join(" ")).collect();
    assert_eq!(calls.iter().filter(|c| c.contains("exec")).count(), 1);
    let exec = calls.iter().position(|c| c.contains("exec")).unwrap();
    let stop = calls
        .iter()
        .position(|c| c.contains("scale rc not-so-hollow-node --replicas=0"))
        .expect("the cluster was not stopped");
    assert!(exec < stop, "{calls:#?}");

    // A CNI three times slower: compare finds the regression, the script exits 1.
    let out = regression("slow", &slower);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
