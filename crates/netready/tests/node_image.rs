//! The not-so-hollow node image, built here with mmdebstrap + buildah around this netready, run
//! as kubelet runs a kubemark node pod (CRI on a real containerd, privileged, its own netns and
//! emptyDir) in stand-in mode: its netready runs netperf pods with the image's CNI plugins,
//! records come out, SIGTERM tears every pod down and stops it all, and nothing is left.

use std::path::Path;
use std::time::Duration;

use netready_testkit::node_image::{self, NodePod, NodeSpec};
use netready_testkit::Containerd;

const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// Held pods in the stand-in run.
const PODS: usize = 4;

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .map(str::to_owned)
        .collect()
}

/// Host-local reservations (one file per IP) in a node pod's `/var/lib/cni`.
fn reserved_ips(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("cni/networks/nodepod"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

fn build_dirs_left() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("netready-node-image."))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_image_runs_netperf_pods_in_standin_mode_and_stops_clean() {
    let build_dirs_before = build_dirs_left();
    let work = tempfile::Builder::new()
        .prefix("nrtest-node-image-")
        .tempdir()
        .unwrap();
    let archive = node_image::build(work.path(), Path::new(BIN)).unwrap();
    assert_eq!(
        build_dirs_left(),
        build_dirs_before,
        "the build left its buildah storage behind"
    );
    let ctd = Containerd::start().await.unwrap();
    node_image::import(&ctd, &archive).unwrap();
    let images_before = node_image::active_snapshots(&ctd).unwrap();

    // What a kubemark deployment mounts: images to preload (busybox, built here) and a
    // registry mirror's hosts.toml.
    let preload = work.path().join("preload");
    std::fs::create_dir_all(&preload).unwrap();
    let (_, busybox) = netready_testkit::images::build(&preload).unwrap();
    let registries = work.path().join("registries");
    std::fs::create_dir_all(&registries).unwrap();
    std::fs::write(
        registries.join("docker.io.toml"),
        "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.invalid\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    )
    .unwrap();

    // Stand-in mode: `netready drive` holds PODS netperf pods through the image's netready.
    let spec = NodeSpec {
        name: "node-a".into(),
        env: vec![
            ("KUBELET_MODE".into(), "standin".into()),
            (
                "STANDIN_ARGS".into(),
                format!("--mode churn --population {PODS} --lifetime 1h --duration 1h"),
            ),
        ],
        netready_toml: Some(node_image::bridge_target_config()),
        mounts: vec![
            (busybox.parent().unwrap().to_owned(), "/preload".into()),
            (registries, "/etc/not-so-hollow-node/registries".into()),
        ],
    };
    let mut node = NodePod::run(&ctd, &spec).await.unwrap();
    let records = node
        .wait_records(PODS, Duration::from_secs(120))
        .await
        .unwrap();
    let log = node.log();
    assert!(log.contains("STAND-IN MODE"), "no stand-in banner:\n{log}");
    assert!(
        log.contains("containerd answers") && log.contains("netready answers"),
        "components not started in order:\n{log}"
    );
    let containerd_at = log.find("containerd answers").unwrap();
    let netready_start = log.find("starting netready").unwrap();
    assert!(
        containerd_at < netready_start,
        "netready started before containerd answered:\n{log}"
    );
    for r in &records {
        assert_eq!(r["node"], "node-a", "{r}");
        assert_eq!(r["verdict"]["network_ready"], true, "{r}");
        let ip = r["ips"][0].as_str().unwrap_or_default();
        assert!(
            ip.starts_with("10.89.0."),
            "pod IP {ip} not from the node's CNI config: {r}"
        );
        assert_eq!(r["checks"][0]["outcome"], "passed", "{r}");
    }
    assert_eq!(
        reserved_ips(&node.state).len(),
        PODS,
        "host-local in the node pod should hold one IP per pod"
    );
    assert!(
        log.contains(&format!(
            "preloaded /preload/{}",
            busybox.file_name().unwrap().to_string_lossy()
        )),
        "busybox not preloaded:\n{log}"
    );
    assert!(log.contains("registry docker.io: hosts.toml"), "{log}");
    // The cgroup namespace is private: the node sees its own cgroup as the root.
    assert!(
        log.contains("private namespace"),
        "no cgroup namespace set up:\n{log}"
    );

    // The stand-in learns a pod is ready from its own probe, 1 s apart as kubelet's shortest
    // period, so it can be up to a period behind netready's records: a SIGTERM before its next
    // probe counts that pod as interrupted (seen once in CI when the records came fast).
    tokio::time::sleep(Duration::from_secs(3)).await;
    // kubelet deleting the node pod: SIGTERM, 60 s of grace.
    let code = node.stop(Duration::from_secs(60)).await.unwrap();
    let log = node.log();
    eprintln!("node-a's log:\n{log}");
    assert_eq!(
        code, 0,
        "the entrypoint did not exit cleanly on SIGTERM:\n{log}"
    );
    // The stand-in deletes its own pods at SIGTERM, as kubelet's pods are deleted with the
    // node: the teardown after it finds none left (it is for a kubelet that did not).
    assert!(
        log.contains("[standin] SIGTERM: starting no more pods; deleting those made")
            && log.contains(&format!("network-ready {PODS} (100.0%)")),
        "the stand-in did not delete its pods at SIGTERM:\n{log}"
    );
    assert!(
        log.contains("0 pod sandboxes stopped and removed"),
        "pods left for the teardown:\n{log}"
    );
    let order: Vec<_> = [
        "stopping standin",
        "stopped and removed",
        "stopping netready",
        "stopping containerd",
    ]
    .iter()
    .map(|s| log.find(s).unwrap_or_else(|| panic!("no '{s}' in:\n{log}")))
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "not stopped in reverse order:\n{log}"
    );
    assert_eq!(
        reserved_ips(&node.state),
        Vec::<String>::new(),
        "IPs still reserved after the teardown (CNI DEL not run)"
    );
    let state = node.state.clone();
    node.remove().await.unwrap();
    assert_eq!(
        node_image::active_snapshots(&ctd).unwrap(),
        images_before,
        "containerd kept the node's writable layer"
    );
    assert_eq!(mounts_under(&state), Vec::<String>::new(), "mounts left");

    // Without a kubelet and without stand-in mode, the node refuses to start and says why.
    let mut bare = NodePod::run(
        &ctd,
        &NodeSpec {
            name: "node-b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let code = bare.wait_exit(Duration::from_secs(60)).await.unwrap();
    let log = bare.log();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("this image has no kubelet") && log.contains("KUBELET_MODE=standin"),
        "{log}"
    );
    bare.remove().await.unwrap();
    drop(ctd);
    assert_eq!(mounts_under(work.path()), Vec::<String>::new());
}
