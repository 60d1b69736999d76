//! The CNI config and bandwidth annotations as a real kubelet ran into them, through the
//! `netready serve` binary in a test node netns with the real Debian CNI plugins: a conflist
//! fixed in place or by a ConfigMap update is picked up by kubelet's next RunPodSandbox
//! retry; a bandwidth annotation that is not a quantity is refused before anything is made,
//! and every quantity form reaches the real bandwidth plugin in bits per second.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use netready_cni::test_util::configmap_update;
use netready_testkit::cri as client;
use netready_testkit::netready::Netready;
use netready_testkit::node::{Leftovers, TestNode};
use netready_testkit::pod::{self, PodSpec, Rt};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// netready serving netperf pods in the node's netns (no upstream runtime: netperf pods never
/// reach it), with one ADD attempt per RunPodSandbox (kubelet's retry is the one under test)
/// and no reachability checks.
async fn serve(node: &TestNode) -> Netready {
    let cfg = node.path("netready.toml");
    std::fs::write(
        &cfg,
        "[netperf.retry]\nattempts = 1\n[netperf.checks]\nrequired = []\noptional = []\n",
    )
    .unwrap();
    let upstream = node.path("no-containerd.sock");
    Netready::start_in(
        Some(node.netns().path()),
        Path::new(BIN),
        &node.path(""),
        &upstream,
        &["--config", cfg.to_str().unwrap()],
    )
    .await
    .unwrap()
}

fn netperf_pod(node: &TestNode, name: &str) -> PodSpec {
    PodSpec::netperf(name, &node.path("pods"), "")
}

/// The node's bridge conflist with a plugin no CNI path has chained after it.
fn with_missing_plugin(node: &TestNode) -> Value {
    node.bridge_conflist(
        "10.89.0.0/16",
        vec![json!({"type": "nrtest-not-installed"})],
    )
}

async fn sandbox_ip(rt: &mut Rt, id: &str) -> String {
    rt.pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .network
    .unwrap()
    .ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflist_fixed_in_place_is_used_on_kubelets_retry() {
    let node = TestNode::new().unwrap();
    let file = node.path("net.d/10-nrtest.conflist");
    // The fix must be the same length as the broken file, so padding, not size, cannot tell.
    let broken = serde_json::to_string(&with_missing_plugin(&node)).unwrap();
    let fixed = serde_json::to_string(&node.bridge_conflist("10.89.0.0/16", vec![])).unwrap();
    let fixed = format!("{fixed:<width$}", width = broken.len());
    std::fs::write(&file, &broken).unwrap();
    let nr = serve(&node).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "fixed-in-place");

    let err = pod::run_sandbox(&mut rt, &pod).await.unwrap_err();
    assert!(
        err.message().contains("nrtest-not-installed"),
        "{err:?}\n{}",
        nr.log()
    );
    assert_eq!(node.settled_leftovers(), Leftovers::default());

    // Fixed in place, as an editor or `kubectl cp` does: same inode, same size, and the
    // directory's mtime does not move (what netready used to look at).
    let dir = node.path("net.d");
    let (ino, dir_mtime) = (
        file.metadata().unwrap().ino(),
        dir.metadata().unwrap().modified().unwrap(),
    );
    std::fs::write(&file, &fixed).unwrap();
    assert_eq!(file.metadata().unwrap().ino(), ino);
    assert_eq!(file.metadata().unwrap().len(), broken.len() as u64);
    assert_eq!(dir.metadata().unwrap().modified().unwrap(), dir_mtime);

    // kubelet retries the same pod with attempt 0: now it succeeds.
    let id = pod::run_sandbox(&mut rt, &pod)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", nr.log()));
    let ip = sandbox_ip(&mut rt, &id).await;
    assert!(ip.starts_with("10.89."), "{ip}");
    assert!(node.ping(&ip), "pod {ip} must answer ICMP from the node");
    pod::stop_remove(&mut rt, &id).await.unwrap();
    drop(nr);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_used_on_kubelets_retry() {
    let node = TestNode::new().unwrap();
    let dir = node.path("net.d");
    configmap_update(
        &dir,
        "..2026_12_01_00_00_00.1",
        &with_missing_plugin(&node).to_string(),
    )
    .unwrap();
    let nr = serve(&node).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let pod = netperf_pod(&node, "configmap");
    let err = pod::run_sandbox(&mut rt, &pod).await.unwrap_err();
    assert!(err.message().contains("nrtest-not-installed"), "{err:?}");

    // The update also moves the pods to another bridge and subnet (the bridge plugin keeps
    // one gateway address per bridge): the new file is really the one run.
    let mut moved = node.bridge_conflist("10.90.0.0/16", vec![]);
    moved["plugins"][0]["bridge"] = json!("nrbr1");
    configmap_update(&dir, "..2026_12_01_00_01_00.2", &moved.to_string()).unwrap();
    let id = pod::run_sandbox(&mut rt, &pod)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", nr.log()));
    let ip = sandbox_ip(&mut rt, &id).await;
    assert!(ip.starts_with("10.90."), "{ip}");
    pod::stop_remove(&mut rt, &id).await.unwrap();
    drop(nr);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bandwidth_annotation_is_refused_before_anything_is_made() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.89.0.0/16", vec![]))
        .unwrap();
    let nr = serve(&node).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    for (annotation, value, why) in [
        (
            "kubernetes.io/ingress-bandwidth",
            "10 M",
            "is not a Kubernetes quantity",
        ),
        (
            "kubernetes.io/egress-bandwidth",
            "1Mbit",
            "is not a Kubernetes quantity",
        ),
        ("kubernetes.io/egress-bandwidth", "-5M", "is negative"),
        (
            "kubernetes.io/ingress-bandwidth",
            "100m",
            "is unreasonably small",
        ),
    ] {
        let mut pod = netperf_pod(&node, "shaped");
        pod.annotations.insert(annotation.into(), value.into());
        let err = pod::run_sandbox(&mut rt, &pod).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .contains(&format!("annotation {annotation}: {value:?} {why}")),
            "{err:?}"
        );
        // Refused before the netns, the record or any plugin: nothing to clean up.
        assert_eq!(node.leftovers(), Leftovers::default());
        assert_eq!(std::fs::read_dir(node.path("netns")).unwrap().count(), 0);
        assert!(!node.path("ipam/nrtest").exists(), "no plugin ran");

        // The name was not kept: the pod, fixed, runs (kubelet would retry it unchanged and
        // fail again; a fixed pod is a new pod with the same name).
        pod.annotations.insert(annotation.into(), "1.5M".into());
        let id = pod::run_sandbox(&mut rt, &pod)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", nr.log()));
        pod::stop_remove(&mut rt, &id).await.unwrap();
        std::fs::remove_dir_all(node.path("ipam/nrtest")).unwrap();
    }
    drop(nr);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantity_forms_reach_the_bandwidth_plugin_in_bits_per_second() {
    let node = TestNode::new().unwrap();
    let shaped = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
    node.write_conflist(&node.bridge_conflist("10.89.0.0/16", vec![shaped]))
        .unwrap();
    let nr = serve(&node).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let mut pod = netperf_pod(&node, "shaped");
    // A decimal fraction and an exponent: forms the old parser dropped.
    pod.annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "1.5M".into());
    pod.annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "25e5".into());
    let id = pod::run_sandbox(&mut rt, &pod)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", nr.log()));
    // The plugin shapes with tbf on the host veth (ingress) and an ifb device (egress).
    let out = std::process::Command::new("tc")
        .args(["-n", node.netns().name(), "qdisc", "show"])
        .output()
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&out.stdout);
    assert!(qdiscs.contains("rate 1500Kbit"), "{qdiscs}");
    assert!(qdiscs.contains("rate 2500Kbit"), "{qdiscs}");
    pod::stop_remove(&mut rt, &id).await.unwrap();
    drop(nr);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}
