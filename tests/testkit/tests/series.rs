//! How many series one netready exports: what a Prometheus scraping 5,000 not-so-hollow nodes
//! holds per node. A real netready runs netperf pods through every check kind and failure path
//! (network ready; a required check failing; an ADD failing then retried; an ADD given up; DEL)
//! with kubelet's calls on both routes. The test prints the series per family and in total,
//! asserts the total is within [`SERIES_BUDGET`], that no label value names a pod, sandbox,
//! container or address, and that nothing grows with the number of pods: after N pods and
//! after 2N the series are the same.
//!
//! Against what this node exported, it then checks the Prometheus files: every metric the
//! recording rules read exists (and the unit tests' input series look like it), and every
//! query of the Grafana dashboard reads recorded series only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use netready_metrics::SERIES_BUDGET;
use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::{self, PodSpec, Rt};
use netready_testkit::prometheus::{
    dashboard_file, dashboard_queries, family_of, recording_rules, rules_dir, rules_file,
    series_names, yaml,
};
use netready_testkit::scrape::{get, parse_series, samples, series_per_family, Sample};
use netready_testkit::topology::{TwoNodes, SUBNET_A};
use serde_json::json;
use tonic::transport::Channel;

const FAULT_PLUGIN: &str = env!("CARGO_BIN_EXE_nrtest-cni");

/// Network-ready pods per round; two rounds make 2N.
const N: usize = 3;

/// Series a node exports that this test cannot make: discovery's watch events (2 resources
/// × 6 event types), counted only with discovery on (`tests/discovery_topology.rs` runs it).
const NOT_EXERCISED: usize = 2 * 6;

/// What pods put in the world: none of it may appear in a label value.
#[derive(Default)]
struct Seen(BTreeSet<String>);

struct Node {
    t: TwoNodes,
    nr: InProcess,
    rt: Rt,
    img: ImageServiceClient<Channel>,
    seen: Seen,
    round: usize,
}

impl Node {
    async fn start() -> Node {
        let t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
        let mut cfg =
            t.a.netperf_config(Some(Path::new(FAULT_PLUGIN).parent().unwrap()));
        cfg.checks.required = vec![
            "same_node_pod".into(),
            "other_node_pods".into(),
            "service_http".into(),
        ];
        cfg.checks.optional = vec![
            "service_ping".into(),
            "external_ping".into(),
            "external_http".into(),
        ];
        cfg.checks.deadline = Duration::from_secs(1);
        cfg.checks.probe_timeout = Duration::from_millis(200);
        cfg.retry.attempts = 2;
        cfg.retry.initial_backoff = Duration::from_millis(20);
        cfg.targets.node_name = Some("node-a".into());
        cfg.targets.file = Some(t.targets_file(&t.a.path(""), &[]).unwrap());
        // Every pod's first ADD fails and is retried: failed attempts, 2 attempts to success.
        Node::conflist(&t, 1);
        // An upstream socket nobody serves: calls for containerd's side are counted as a
        // node with containerd counts them, with `Unavailable` where it would say OK.
        let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
        let (rt, img) = client::connect(nr.socket()).await.unwrap();
        Node {
            t,
            nr,
            rt,
            img,
            seen: Seen::default(),
            round: 0,
        }
    }

    /// bridge + host-local + portmap, then the fault plugin failing each pod's first
    /// `fail_first` ADDs.
    fn conflist(t: &TwoNodes, fail_first: u64) {
        let faults = t.a.fault_plugin(json!({"failFirst": fail_first}));
        t.a.write_conflist(&t.a.bridge_conflist(SUBNET_A, vec![faults]))
            .unwrap();
    }

    async fn wait_checks(&self, id: &str) {
        for _ in 0..300 {
            if self
                .nr
                .runtime()
                .sandbox(id)
                .and_then(|s| s.readiness)
                .is_some_and(|r| r.finished.is_some())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("checks of {id} did not finish");
    }

    fn pod(&mut self, what: &str) -> PodSpec {
        let mut p = PodSpec::new(
            &format!("{what}-{}-{}", self.round, self.seen.0.len()),
            &self.t.a.path("pods"),
            "",
        );
        p.labels.insert("netperf".into(), "true".into());
        self.seen.0.insert(p.name.clone());
        self.seen.0.insert(p.uid.clone());
        p
    }

    /// A netperf pod as kubelet runs it, up to its readiness probe once its checks ended:
    /// RunPodSandbox, PodSandboxStatus, ImageStatus, PullImage, CreateContainer,
    /// StartContainer, ContainerStatus, ExecSync. Its sandbox and container ids.
    async fn kubelet_pod(&mut self, pod: &PodSpec) -> (String, String) {
        let id = pod::run_sandbox(&mut self.rt, pod).await.unwrap();
        self.wait_checks(&id).await;
        let status = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(n) = status.status.and_then(|s| s.network) {
            self.seen.0.insert(n.ip);
        }
        let image = cri::ImageSpec {
            image: pod.image.clone(),
            ..Default::default()
        };
        let _ = self
            .img
            .image_status(cri::ImageStatusRequest {
                image: Some(image.clone()),
                verbose: false,
            })
            .await;
        self.img
            .pull_image(cri::PullImageRequest {
                image: Some(image),
                auth: None,
                sandbox_config: Some(pod.sandbox_config(0)),
            })
            .await
            .unwrap();
        let ctr = pod::start_container(&mut self.rt, pod, &id).await.unwrap();
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: ctr.clone(),
                verbose: false,
            })
            .await
            .unwrap();
        let _ = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["true".into()],
                timeout: 1,
            })
            .await
            .unwrap();
        self.seen.0.insert(id.clone());
        self.seen.0.insert(ctr.clone());
        (id, ctr)
    }

    /// kubelet ending a pod: StopContainer, StopPodSandbox, RemoveContainer,
    /// RemovePodSandbox.
    async fn kubelet_end(&mut self, id: &str, ctr: &str) {
        self.rt
            .stop_container(cri::StopContainerRequest {
                container_id: ctr.into(),
                timeout: 0,
            })
            .await
            .unwrap();
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: ctr.into(),
            })
            .await
            .unwrap();
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// kubelet's node-level calls (relist, status, stats, image filesystem) and calls that
    /// belong to containerd's side: a pod without the netperf label, ids netready does not
    /// know. Answers are ignored: their codes are what is counted.
    async fn kubelet_node_calls(&mut self) {
        let rt = &mut self.rt;
        let img = &mut self.img;
        let _ = rt
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await;
        let _ = rt.status(cri::StatusRequest { verbose: false }).await;
        let _ = rt.runtime_config(cri::RuntimeConfigRequest {}).await;
        let _ = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await;
        let _ = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await;
        let _ = rt
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await;
        let _ = rt
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await;
        let _ = img.image_fs_info(cri::ImageFsInfoRequest {}).await;
        let _ = img
            .list_images(cri::ListImagesRequest { filter: None })
            .await;
        let other = "f".repeat(64);
        let _ = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: other.clone(),
                verbose: false,
            })
            .await;
        let _ = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: other.clone(),
                verbose: false,
            })
            .await;
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: other.clone(),
            })
            .await;
        // What kubelet sends for the pods containerd runs (control pods, DaemonSets).
        let plain = PodSpec::new("not-netperf", &self.t.a.path("pods"), "");
        let _ = pod::run_sandbox(rt, &plain).await;
        let _ = img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: plain.image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: Some(plain.sandbox_config(0)),
            })
            .await;
        let _ = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: other.clone(),
                config: Some(cri::ContainerConfig::default()),
                sandbox_config: Some(plain.sandbox_config(0)),
            })
            .await;
        let _ = rt
            .start_container(cri::StartContainerRequest {
                container_id: other.clone(),
            })
            .await;
        let _ = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: other.clone(),
                cmd: vec!["true".into()],
                timeout: 1,
            })
            .await;
        let _ = rt
            .exec(cri::ExecRequest {
                container_id: other.clone(),
                cmd: vec!["sh".into()],
                ..Default::default()
            })
            .await;
        let _ = rt
            .stop_container(cri::StopContainerRequest {
                container_id: other.clone(),
                timeout: 0,
            })
            .await;
        let _ = rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: other.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: other,
            })
            .await;
    }

    /// One round: N network-ready pods, one whose required other-node check fails, one whose
    /// ADD is given up, kubelet's node calls, then every pod ended.
    async fn round(&mut self) {
        self.round += 1;
        let mut live = Vec::new();
        for _ in 0..N {
            let p = self.pod("ready");
            live.push(self.kubelet_pod(&p).await);
        }
        self.t.blackhole(self.t.control_b.ip).unwrap();
        let p = self.pod("unreachable");
        live.push(self.kubelet_pod(&p).await);
        self.t.unblackhole(self.t.control_b.ip).unwrap();
        Node::conflist(&self.t, 99);
        let p = self.pod("no-ip");
        let err = pod::run_sandbox(&mut self.rt, &p).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
        Node::conflist(&self.t, 1);
        self.kubelet_node_calls().await;
        for (id, ctr) in live {
            self.kubelet_end(&id, &ctr).await;
        }
    }

    fn scrape(&self) -> (String, Vec<Sample>) {
        let (_, text) = get(&self.nr.metrics_url(), None);
        let s = samples(&text);
        (text, s)
    }
}

/// The table the test prints: series per family, largest first, with its labels.
fn table(text: &str, samples: &[Sample]) -> String {
    let per = series_per_family(text);
    let mut labels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in samples {
        labels
            .entry(&s.family)
            .or_default()
            .extend(s.labels.keys().map(String::as_str));
    }
    let mut rows: Vec<_> = per.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut out = String::from("series  family {labels}\n");
    for (family, n) in rows {
        let l: Vec<_> = labels[family.as_str()].iter().copied().collect();
        out.push_str(&format!("{n:>6}  {family} {{{}}}\n", l.join(",")));
    }
    out.push_str(&format!(
        "{:>6}  total per node\n",
        per.values().sum::<usize>()
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_per_node_are_bounded_and_do_not_grow_with_pods() {
    let mut node = Node::start().await;
    node.round().await;
    let (text_n, first) = node.scrape();
    node.round().await;
    let (text_2n, second) = node.scrape();

    // The pods really went through every path.
    let sample = |s: &[Sample], name: &str, label: Option<(&str, &str)>| -> f64 {
        s.iter()
            .find(|x| {
                x.name == name
                    && label.is_none_or(|(k, v)| x.labels.get(k).map(String::as_str) == Some(v))
            })
            .unwrap_or_else(|| panic!("no {name} {label:?}"))
            .value
    };
    let ready = 2.0 * N as f64;
    assert_eq!(
        sample(&second, "netready_network_ready_seconds_count", None),
        ready
    );
    assert_eq!(
        sample(
            &second,
            "netready_network_ready_failures_total",
            Some(("reason", "other_node_pods"))
        ),
        2.0
    );
    assert_eq!(
        sample(
            &second,
            "netready_network_ready_failures_total",
            Some(("reason", "cni_add"))
        ),
        2.0
    );
    assert!(
        sample(
            &second,
            "netready_cni_add_duration_seconds_count",
            Some(("result", "failure"))
        ) >= ready + 2.0
    );

    println!(
        "series one netready exports after {N} network-ready pods:\n{}",
        table(&text_n, &first)
    );
    println!("after {}:\n{}", 2 * N, table(&text_2n, &second));
    let cri: Vec<String> = second
        .iter()
        .filter(|s| s.name == "netready_cri_requests_total")
        .map(|s| {
            format!(
                "{}/{}/{}",
                s.labels["method"], s.labels["route"], s.labels["code"]
            )
        })
        .collect();
    println!("CRI calls seen (method/route/code): {}", cri.join(" "));
    // This node runs without discovery and without a collector; a kubemark node has both,
    // and their families (registered by each subsystem only when it runs) count too.
    let others = netready_metrics::Metrics::new("netready");
    netready_discovery::metrics::DiscoveryMetrics::register(&others);
    netready_collect::metrics::ForwardMetrics::register(&others);
    let others_text = others.encode_prometheus();
    let others_total: usize = series_per_family(&others_text).values().sum();
    println!(
        "families of discovery and the results forwarder (not running here):\n{}",
        table(&others_text, &samples(&others_text))
    );
    let total: usize = series_per_family(&text_2n).values().sum::<usize>() + others_total;
    println!(
        "worst case per node: {total} + {NOT_EXERCISED} (discovery's watch events) = {} \
         of a budget of {SERIES_BUDGET}; 5,000 nodes: {} series",
        total + NOT_EXERCISED,
        5_000 * (total + NOT_EXERCISED)
    );
    assert!(
        total + NOT_EXERCISED <= SERIES_BUDGET,
        "{} series per node exceed the budget of {SERIES_BUDGET}",
        total + NOT_EXERCISED
    );

    // Nothing keyed by a pod: the same series after N and 2N pods.
    let keys = |s: &[Sample]| -> BTreeSet<(String, Vec<(String, String)>)> {
        s.iter()
            .map(|x| (x.name.clone(), x.labels.clone().into_iter().collect()))
            .collect()
    };
    let (k1, k2) = (keys(&first), keys(&second));
    let grew: Vec<_> = k2.difference(&k1).collect();
    assert!(
        grew.is_empty(),
        "series that appeared with more pods: {grew:#?}"
    );
    assert_eq!(series_per_family(&text_n), series_per_family(&text_2n));

    // Label values are enumerations or bucket bounds: no names, ids, addresses or error text.
    for s in &second {
        for (k, v) in &s.labels {
            let bounded = if k == "le" {
                v == "+Inf" || v.parse::<f64>().is_ok()
            } else {
                !v.is_empty()
                    && v.len() <= 32
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            assert!(
                bounded,
                "{}{{{k}={v:?}}} is not a bounded label value",
                s.name
            );
            assert!(
                !node.seen.0.iter().any(|p| v.contains(p.as_str())),
                "{}{{{k}={v:?}}} names a pod, sandbox, container or address",
                s.name
            );
        }
    }

    let mut exported = second.clone();
    exported.extend(samples(&others_text));
    prometheus_files_read_what_a_node_exports(&exported);
}

/// The recording rules read metrics this node exports, their unit tests feed series shaped
/// like them, and the dashboard reads recorded series only.
fn prometheus_files_read_what_a_node_exports(exported: &[Sample]) {
    let families: BTreeSet<String> = exported.iter().map(|s| s.family.clone()).collect();
    // Label names per sample name, plus the target labels Prometheus adds when scraping.
    let mut label_names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in exported {
        label_names
            .entry(&s.name)
            .or_insert_with(|| ["job", "instance", "pod", "node"].into())
            .extend(s.labels.keys().map(String::as_str));
    }

    let rules = recording_rules(&yaml(&rules_file()).unwrap());
    let recorded: BTreeSet<&str> = rules.iter().map(|r| r.record.as_str()).collect();
    for r in &rules {
        for name in series_names(&r.expr) {
            if name.contains(':') {
                assert!(
                    recorded.contains(name.as_str()),
                    "rule {} reads {name}, which no rule records",
                    r.record
                );
            } else {
                assert!(
                    family_of(&name, &families).is_some(),
                    "rule {} reads {name}, which netready does not export",
                    r.record
                );
            }
        }
    }
    let tests = yaml(&rules_dir().join("netready-rules.test.yaml")).unwrap();
    for input in tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["input_series"].as_array().into_iter().flatten())
    {
        let (name, labels) = parse_series(input["series"].as_str().unwrap());
        let known = label_names.get(name).unwrap_or_else(|| {
            panic!("the rules' unit tests feed {name}, which netready does not export")
        });
        for l in labels.keys() {
            assert!(
                known.contains(l.as_str()),
                "the rules' unit tests give {name} a label {l} it does not have"
            );
        }
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = series_names(expr);
        assert!(
            !names.is_empty(),
            "{title}: {expr} reads no netready series"
        );
        for name in names {
            if name.contains(':') {
                assert!(
                    recorded.contains(name.as_str()),
                    "{title}: {expr} reads {name}, which no recording rule records"
                );
                used.insert(name);
            } else {
                assert!(
                    family_of(&name, &families).is_some(),
                    "{title}: {expr} reads {name}, which netready does not export"
                );
                panic!(
                    "{title}: {expr} reads {name} from every node: at 5,000 nodes the \
                     dashboard reads recorded series only (add a rule)"
                );
            }
        }
    }
    // Every rule feeds the dashboard or another rule.
    let read_by_rules: BTreeSet<String> =
        rules.iter().flat_map(|r| series_names(&r.expr)).collect();
    let unused: Vec<_> = recorded
        .iter()
        .filter(|r| !used.contains(**r) && !read_by_rules.contains(**r))
        .collect();
    assert!(unused.is_empty(), "rules nothing reads: {unused:?}");
}
