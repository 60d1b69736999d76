//! netperf pods against the real Debian CNI plugins (bridge, host-local, portmap, loopback)
//! inside a test node netns, and against the `nrtest-cni` fault plugin chained after them.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use netready_testkit::cri as client;
use netready_testkit::node::{InProcess, Leftovers, TestNode};
use netready_testkit::pod::{self, PodSpec};
use serde_json::json;
use tonic::transport::Channel;

const FAULT_PLUGIN: &str = env!("CARGO_BIN_EXE_nrtest-cni");

fn plugin_dir() -> &'static Path {
    Path::new(FAULT_PLUGIN).parent().unwrap()
}

fn netperf_pod(node: &TestNode, name: &str) -> PodSpec {
    let mut p = PodSpec::new(name, &node.path("pods"), "");
    p.labels.insert("netperf".into(), "true".into());
    p
}

async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &PodSpec,
) -> Result<String, tonic::Status> {
    pod::run_sandbox(rt, pod).await
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::PodSandboxStatusResponse {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The pod's address, from PodSandboxStatus.
async fn pod_ip(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> String {
    status(rt, id).await.status.unwrap().network.unwrap().ip
}

async fn stop_remove(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    pod::stop_remove(rt, id).await.unwrap();
}

/// No upstream runtime runs in these tests: netperf pods never need one.
fn no_upstream(node: &TestNode) -> std::path::PathBuf {
    node.path("no-containerd.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_gets_a_reachable_ip_and_leaves_nothing() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.89.0.0/16", vec![]))
        .unwrap();
    let nr = InProcess::start(&node, node.netperf_config(None), &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "one");

    let id = run(&mut rt, &pod).await.unwrap();
    let st = status(&mut rt, &id).await;
    let s = st.status.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.metadata.as_ref().unwrap().uid, pod.uid);
    assert_eq!(s.labels["netperf"], "true");
    let ip = s.network.unwrap().ip;
    assert!(ip.starts_with("10.89."), "{ip}");
    assert!(node.ping(&ip), "pod {ip} must answer ICMP from the node");
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let netns = info["netNamespacePath"].as_str().unwrap().to_owned();
    assert!(
        netns.starts_with(&node.path("netns").display().to_string()),
        "{netns}"
    );
    assert!(Path::new(&netns).exists());
    assert_eq!(
        node.leftovers().reservations.len(),
        1,
        "one host-local reservation while up"
    );

    // Listed as kubelet's relist sees it.
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await;
    assert_eq!(
        listed.unwrap_err().code(),
        tonic::Code::Unavailable,
        "no upstream: the list fails rather than hide pods"
    );

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!Path::new(&netns).exists(), "stop deletes the netns");
    assert!(!node.ping(&ip));
    let s = status(&mut rt, &id).await.status.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxNotready as i32);
    // kubelet stops again at its housekeeping tick, then removes, maybe twice.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let timing = nr.runtime().pod_timing(&pod.uid).unwrap();
    assert_eq!(timing.attempt_count, 1);
    assert!(timing.first_to_success().unwrap() > Duration::ZERO);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(nr.runtime().sandbox_count(), 0);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_pods_concurrently() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.90.0.0/16", vec![]))
        .unwrap();
    let nr = InProcess::start(&node, node.netperf_config(None), &no_upstream(&node)).unwrap();
    let (rt, _) = client::connect(nr.socket()).await.unwrap();
    let pods: Vec<PodSpec> = (0..100)
        .map(|i| netperf_pod(&node, &format!("p{i}")))
        .collect();
    let started = Instant::now();
    let ids: Vec<String> = futures::future::join_all(pods.iter().map(|p| {
        let mut rt = rt.clone();
        async move { run(&mut rt, p).await }
    }))
    .await
    .into_iter()
    .collect::<Result<_, _>>()
    .unwrap();
    eprintln!("100 concurrent RunPodSandbox: {:?}", started.elapsed());
    let mut ips = Vec::new();
    for id in &ids {
        let s = status(&mut rt.clone(), id).await.status.unwrap();
        ips.push(s.network.unwrap().ip);
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 100, "every pod has its own IP");
    let unreachable: Vec<_> = ips.iter().filter(|ip| !node.ping(ip)).collect();
    assert!(
        unreachable.is_empty(),
        "unreachable from the node: {unreachable:?}"
    );
    assert_eq!(node.leftovers().reservations.len(), 100);
    futures::future::join_all(ids.iter().map(|id| {
        let mut rt = rt.clone();
        async move { stop_remove(&mut rt, id).await }
    }))
    .await;
    assert_eq!(
        node.settled_leftovers(),
        Leftovers::default(),
        "DEL released every reservation and link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_timed_from_the_first_attempt() {
    let node = TestNode::new().unwrap();
    // bridge+host-local allocate first; the fault plugin then fails the first 2 ADDs, so each
    // failed chain holds an address until netready's DEL releases it.
    let faults =
        node.fault_plugin(json!({"failFirst": 2, "sleepMs": 50, "failMsg": "ipam not ready"}));
    node.write_conflist(&node.bridge_conflist("10.91.0.0/16", vec![faults]))
        .unwrap();
    let mut cfg = node.netperf_config(Some(plugin_dir()));
    cfg.retry.attempts = 5;
    cfg.retry.initial_backoff = Duration::from_millis(100);
    let nr = InProcess::start(&node, cfg, &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "retried");

    let t = Instant::now();
    let id = run(&mut rt, &pod).await.unwrap();
    let call = t.elapsed();
    let timing = nr.runtime().pod_timing(&pod.uid).unwrap();
    assert_eq!(timing.attempt_count, 3);
    assert_eq!(timing.attempts_to_success, Some(3));
    let failed: Vec<_> = timing
        .attempts
        .iter()
        .filter_map(|a| a.error.as_ref())
        .collect();
    assert_eq!(failed.len(), 2);
    for f in &failed {
        assert_eq!(f.code, 11);
        assert!(f.message.contains("ipam not ready"), "{}", f.message);
        assert!(f.message.contains("nrtest-cni"), "{}", f.message);
    }
    for a in &timing.attempts {
        assert!(
            a.duration() >= Duration::from_millis(50),
            "each ADD sleeps 50 ms: {:?}",
            a.duration()
        );
    }
    // 3 ADDs of ≥ 50 ms, 2 DELs, backoffs of 100 and 200 ms: the first-to-success time is
    // at least the injected 450 ms and no more than the whole call.
    let f2s = timing.first_to_success().unwrap();
    assert!(f2s >= Duration::from_millis(450), "{f2s:?}");
    assert!(f2s <= call, "{f2s:?} > {call:?}");
    assert!(
        f2s < Duration::from_millis(450) + Duration::from_secs(2),
        "{f2s:?}"
    );
    assert_eq!(
        node.leftovers().reservations.len(),
        1,
        "the failed chains' addresses were released"
    );
    stop_remove(&mut rt, &id).await;
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_retries_of_the_same_uid_count_from_the_first_attempt() {
    let node = TestNode::new().unwrap();
    let faults =
        node.fault_plugin(json!({"failFirst": 3, "failCode": 11, "failMsg": "no IPs left"}));
    node.write_conflist(&node.bridge_conflist("10.92.0.0/16", vec![faults]))
        .unwrap();
    let mut cfg = node.netperf_config(Some(plugin_dir()));
    cfg.retry.attempts = 2;
    cfg.retry.initial_backoff = Duration::from_millis(20);
    let nr = InProcess::start(&node, cfg, &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "kubelet-retry");

    // The first RunPodSandbox fails after 2 attempts, with the plugin's code and message.
    let err = run(&mut rt, &pod).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert!(
        err.message().contains("code 11") && err.message().contains("no IPs left"),
        "{}",
        err.message()
    );
    assert_eq!(
        node.settled_leftovers(),
        Leftovers::default(),
        "a failed RunPodSandbox leaves nothing"
    );
    // kubelet waits and retries the same pod with attempt 0 (traces: cni-failure).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = run(&mut rt, &pod).await.unwrap();
    let timing = nr.runtime().pod_timing(&pod.uid).unwrap();
    assert_eq!(timing.run_calls, 2);
    assert_eq!(timing.attempt_count, 4);
    let f2s = timing.first_to_success().unwrap();
    assert!(
        f2s >= Duration::from_millis(300),
        "spans kubelet's wait: {f2s:?}"
    );
    let first_call_start = timing.attempts[0].start;
    assert!(timing.first_request <= first_call_start);
    stop_remove(&mut rt, &id).await;
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_garbage_plugins_fail_cleanly() {
    let node = TestNode::new().unwrap();
    let mut cfg = node.netperf_config(Some(plugin_dir()));
    cfg.retry.attempts = 1;
    cfg.cni.exec_timeout = Duration::from_millis(500);
    let nr = InProcess::start(&node, cfg, &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();

    // Hung in a child, as a plugin waits for its IPAM plugin: the child goes too.
    node.write_conflist(&node.bridge_conflist(
        "10.93.0.0/16",
        vec![node.fault_plugin(json!({"hangInChild": true}))],
    ))
    .unwrap();
    let t = Instant::now();
    let err = run(&mut rt, &netperf_pod(&node, "hang")).await.unwrap_err();
    assert!(
        err.message().contains("timed out after 500ms"),
        "{}",
        err.message()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(node.settled_leftovers(), Leftovers::default());
    assert_eq!(
        node.plugin_processes(),
        Vec::<u32>::new(),
        "the hung plugin and its child were killed"
    );

    // A different conflist file name: the runtime notices the conf dir changed.
    std::fs::remove_file(node.path("net.d/10-nrtest.conflist")).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    node.write_conflist(&node.bridge_conflist(
        "10.93.0.0/16",
        vec![node.fault_plugin(json!({"garbage": true}))],
    ))
    .unwrap();
    let err = run(&mut rt, &netperf_pod(&node, "garbage"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("invalid result"),
        "{}",
        err.message()
    );
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_leaves_a_child_holding_its_output_still_gives_its_result() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist(
        "10.95.0.0/16",
        vec![node.fault_plugin(json!({"leaveChild": true}))],
    ))
    .unwrap();
    let nr = InProcess::start(
        &node,
        node.netperf_config(Some(plugin_dir())),
        &no_upstream(&node),
    )
    .unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let t = Instant::now();
    let id = run(&mut rt, &netperf_pod(&node, "parent")).await.unwrap();
    // The result is read although the pipe never ends, a second after the plugin exited
    // (not after exec_timeout).
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let ip = pod_ip(&mut rt, &id).await;
    assert!(node.ping(&ip), "{ip} answers");
    stop_remove(&mut rt, &id).await;
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_netready_still_tears_pods_down() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.94.0.0/16", vec![]))
        .unwrap();
    let mut nr = InProcess::start(&node, node.netperf_config(None), &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "survivor");
    let id = run(&mut rt, &pod).await.unwrap();
    let ip = pod_ip(&mut rt, &id).await;
    nr.stop().unwrap();

    let nr = InProcess::start(&node, node.netperf_config(None), &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let s = status(&mut rt, &id).await.status.unwrap();
    assert_eq!(s.network.unwrap().ip, ip);
    assert!(node.ping(&ip));
    assert_eq!(nr.runtime().pod_timing(&pod.uid).unwrap().attempt_count, 1);
    stop_remove(&mut rt, &id).await;
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_cut_short_by_shutdown_is_torn_down_at_next_start() {
    let node = TestNode::new().unwrap();
    // bridge + host-local allocate, then the fault plugin hangs: netready goes away mid-ADD.
    let hang = node.fault_plugin(json!({"hang": true}));
    node.write_conflist(&node.bridge_conflist("10.95.0.0/16", vec![hang]))
        .unwrap();
    let mut cfg = node.netperf_config(Some(plugin_dir()));
    cfg.cni.exec_timeout = Duration::from_secs(300);
    let mut nr = InProcess::start(&node, cfg.clone(), &no_upstream(&node)).unwrap();
    let (rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "cut-short");
    let pending = tokio::spawn({
        let mut rt = rt.clone();
        let pod = pod.clone();
        async move { run(&mut rt, &pod).await }
    });
    let log = node.path("plugin.log");
    for _ in 0..200 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ADD")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.leftovers().state_sandboxes.len(),
        1,
        "the record exists before ADD finishes"
    );
    assert_eq!(
        node.leftovers().reservations.len(),
        1,
        "bridge already holds an address"
    );
    nr.stop().unwrap();
    assert!(
        pending.await.unwrap().is_err(),
        "kubelet's call fails; it will retry"
    );

    // Next start: the interrupted sandbox is torn down (DEL releases the address).
    node.write_conflist(&node.bridge_conflist("10.95.0.0/16", vec![]))
        .unwrap();
    let nr = InProcess::start(&node, cfg, &no_upstream(&node)).unwrap();
    assert_eq!(nr.runtime().sandbox_count(), 0);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
    assert_eq!(
        node.plugin_processes(),
        Vec::<u32>::new(),
        "no plugin outlives netready"
    );
}

/// `netready_cni_failures_total{command, reason}` from the runtime's `/metrics` (0 if unseen).
fn cni_failures(nr: &InProcess, command: &str, reason: &str) -> f64 {
    let (_, text) = netready_testkit::scrape::get(&nr.metrics_url(), None);
    let series =
        format!("netready_cni_failures_total{{command=\"{command}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Every CNI fault class a plugin can show: kubelet gets a gRPC error naming the plugin and
/// what it said, the failure is counted under a bounded reason, and nothing is left (no
/// netns, veth, address, state or plugin process). IPAM runs out for real (host-local on a
/// /30), and a DEL failing at StopPodSandbox keeps the sandbox for kubelet's next stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cni_fault_class_is_named_counted_and_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt as _;
    let node = TestNode::new().unwrap();
    std::fs::create_dir_all(node.path("bin")).unwrap();
    let noexec = node.path("bin/nrtest-noexec");
    std::fs::copy(FAULT_PLUGIN, &noexec).unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = node.netperf_config(Some(plugin_dir()));
    cfg.cni.bin_dirs.push(node.path("bin"));
    cfg.retry.attempts = 1;
    cfg.cni.exec_timeout = Duration::from_millis(500);
    let nr = InProcess::start(&node, cfg, &no_upstream(&node)).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let alone =
        |p: serde_json::Value| json!({"cniVersion": "1.0.0", "name": "nrtest", "plugins": [p]});
    let cases: Vec<(&str, serde_json::Value, &[&str])> = vec![
        (
            "plugin_not_found",
            alone(json!({"type": "nrtest-not-installed"})),
            &["nrtest-not-installed", "not found in"],
        ),
        (
            "plugin_not_executable",
            alone(json!({"type": "nrtest-noexec"})),
            &["nrtest-noexec", "is not executable"],
        ),
        (
            "plugin_error",
            alone(
                node.fault_plugin(json!({"failFirst": 100, "failCode": 11, "failMsg": "no luck"})),
            ),
            &["nrtest-cni", "code 11", "no luck"],
        ),
        (
            "bad_result",
            alone(node.fault_plugin(json!({"garbage": true}))),
            &["nrtest-cni", "invalid result", "not JSON"],
        ),
        (
            "timeout",
            alone(node.fault_plugin(json!({"hang": true}))),
            &["nrtest-cni", "timed out after 500ms"],
        ),
        (
            "bad_result",
            alone(node.fault_plugin(json!({"noIp": true}))),
            &["nrtest-cni", "no IP address for eth0"],
        ),
    ];
    for (n, (reason, conflist, want)) in cases.iter().enumerate() {
        node.write_conflist(conflist).unwrap();
        let before = cni_failures(&nr, "add", reason);
        let err = run(&mut rt, &netperf_pod(&node, &format!("fault-{n}")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unknown, "{reason}: {err}");
        for w in *want {
            assert!(
                err.message().contains(w),
                "{reason}: {w:?} in {}",
                err.message()
            );
        }
        assert_eq!(cni_failures(&nr, "add", reason), before + 1.0, "{reason}");
        assert_eq!(node.settled_leftovers(), Leftovers::default(), "{reason}");
        assert_eq!(node.plugin_processes(), Vec::<u32>::new(), "{reason}");
    }

    // IPAM exhausted: a /30 holds one pod beside the bridge's gateway.
    node.write_conflist(&node.bridge_conflist("10.96.0.0/30", vec![]))
        .unwrap();
    let first = run(&mut rt, &netperf_pod(&node, "fills")).await.unwrap();
    let before = cni_failures(&nr, "add", "plugin_error");
    let err = run(&mut rt, &netperf_pod(&node, "no-room"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("type=\"bridge\"")
            && err.message().contains("no IP addresses available"),
        "{}",
        err.message()
    );
    assert_eq!(cni_failures(&nr, "add", "plugin_error"), before + 1.0);
    stop_remove(&mut rt, &first).await;
    assert_eq!(node.settled_leftovers(), Leftovers::default());

    // DEL failing at StopPodSandbox: an error naming the plugin; the sandbox stays, and once
    // the plugin is fixed kubelet's next stop goes through.
    let chain = |faults| node.bridge_conflist("10.96.0.0/30", vec![node.fault_plugin(faults)]);
    node.write_conflist(&chain(json!({"failDel": true})))
        .unwrap();
    let id = run(&mut rt, &netperf_pod(&node, "del-fails"))
        .await
        .unwrap();
    let before = cni_failures(&nr, "del", "plugin_error");
    let err = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap_err();
    for w in [
        "failed to destroy network",
        "nrtest-cni",
        "code 7",
        "injected DEL failure",
    ] {
        assert!(err.message().contains(w), "{w:?} in {}", err.message());
    }
    assert_eq!(cni_failures(&nr, "del", "plugin_error"), before + 1.0);
    assert_eq!(node.leftovers().netns.len(), 1, "kept for the next stop");
    node.write_conflist(&chain(json!({}))).unwrap();
    stop_remove(&mut rt, &id).await;
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}
