//! netperf pods through the `netready serve` binary, beside a real containerd: the whole
//! kubelet-like lifecycle, images never pulled, logs kubelet can read, merged lists.

use std::path::Path;

use k8s_cri::v1 as cri;
use netready_testkit::netready::Netready;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::{cri as client, Containerd};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

async fn netready_beside(ctd: &Containerd) -> Netready {
    Netready::beside(ctd, Path::new(BIN)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netperf_pod_lifecycle_as_kubelet_drives_it() {
    let ctd = Containerd::start().await.unwrap();
    let nr = netready_beside(&ctd).await;
    let (mut rt, mut img) = client::connect(nr.socket()).await.unwrap();
    // No control pods run here: this test is about the CRI lifecycle, not reachability.
    let mut spec = PodSpec::netperf("perf", &ctd.scratch("pods"), ctd.cgroup_parent());
    // An image containerd does not have: kubelet's ImageStatus finds nothing, PullImage
    // (which carries the sandbox config) is answered by netready without a registry.
    spec.image = "registry.invalid/netperf/pause:never-pulled".into();

    let (o, t) = pod::lifecycle(&mut rt, &mut img, &spec)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", nr.log()));
    assert!(
        t.steps.iter().any(|(s, _)| *s == "PullImage"),
        "{:?}",
        t.steps
    );
    assert_eq!(o.sandbox_state, cri::PodSandboxState::SandboxReady as i32);
    assert!(o.has_ip);
    assert!(o.image_id_is_digest);
    assert_eq!(
        o.running_state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(o.exec.0, 0);
    assert!(
        o.exec.1.starts_with("network ready: 10.89."),
        "{:?}",
        o.exec
    );
    assert_eq!(
        o.exited,
        (
            cri::ContainerState::ContainerExited as i32,
            0,
            "Completed".to_string()
        )
    );
    let log = o.log.join("\n");
    assert!(
        log.contains(&format!(
            "stdout F netready: netperf pod default/perf uid={}",
            spec.uid
        )),
        "{log}"
    );
    assert!(log.contains("CNI ADD attempt 1 succeeded in"), "{log}");
    assert!(log.contains("pod IPs 10.89."), "{log}");
    assert!(log.contains("netready: stopped"), "{log}");
    assert_eq!(
        o.stopped_state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(o.removed);
    // Nothing of the pod is left: no netns file, no host-local reservation.
    let dir = ctd.scratch("netready");
    assert_eq!(std::fs::read_dir(dir.join("netns")).unwrap().count(), 0);
    let reservations = std::fs::read_dir(dir.join("ipam/netperf"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(reservations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netperf_and_real_pods_share_one_node() {
    let ctd = Containerd::start().await.unwrap();
    let nr = netready_beside(&ctd).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let logs = ctd.scratch("pods");
    let real = PodSpec::new("real", &logs, ctd.cgroup_parent());
    let mut perf = PodSpec::new("perf", &logs, ctd.cgroup_parent());
    perf.labels.insert("netperf".into(), "true".into());
    let mut ids = Vec::new();
    for p in [&real, &perf] {
        ids.push(
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p.sandbox_config(0)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()))
            .into_inner()
            .pod_sandbox_id,
        );
    }
    let mut ips = Vec::new();
    for id in &ids {
        ips.push(pod::sandbox_ip(&mut rt, id).await.unwrap());
    }
    assert!(ips[0].starts_with("10.88."), "containerd's bridge: {ips:?}");
    assert!(ips[1].starts_with("10.89."), "netready's bridge: {ips:?}");
    // Truncated ids, as operators type them: each side resolves its own.
    for id in &ids {
        let s = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id[..12].into(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()))
            .into_inner();
        assert_eq!(&s.status.unwrap().id, id);
    }
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<_> = listed.items.iter().map(|s| s.id.clone()).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "kubelet's relist sees both");
    // Each side answers for its own: containerd knows nothing of the netperf pod.
    let (mut direct, _) = client::connect(&ctd.socket()).await.unwrap();
    let err = direct
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: ids[1].clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    for id in &ids {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.items.is_empty());
}

use netready_testkit::pod::Rt;

/// Runs a netperf pod with one started container, as kubelet would; returns both ids.
async fn start_pod(rt: &mut Rt, pod: &PodSpec) -> (String, String) {
    let sandbox = pod::run_sandbox(rt, pod).await.unwrap();
    let container = pod::start_container(rt, pod, &sandbox).await.unwrap();
    (sandbox, container)
}

/// kubelet's exec readiness probe until it reports `want` (or 10 s pass).
async fn probe_until(rt: &mut Rt, container: &str, want: i32) -> cri::ExecSyncResponse {
    let r = pod::probe_until(
        rt,
        container,
        &["cat", "/tmp/ready"],
        want,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, want, "probe never returned {want}: {r:?}");
    r
}

/// A pod labelled as this node's control pod (kubemark's control workloads label them so),
/// for containerd.
fn control_pod(logs: &Path, ctd: &Containerd) -> PodSpec {
    let mut control = PodSpec::new("control", logs, ctd.cgroup_parent());
    control
        .labels
        .insert("netperf-role".into(), "control".into());
    control
}

/// A netperf pod that requires only `same_node_pod`, and gives up after 3 s.
fn needs_same_node_pod(name: &str, logs: &Path, ctd: &Containerd) -> PodSpec {
    let mut perf = PodSpec::new(name, logs, ctd.cgroup_parent());
    perf.labels.insert("netperf".into(), "true".into());
    perf.annotations
        .insert("netready.io/checks-required".into(), "same_node_pod".into());
    perf.annotations
        .insert("netready.io/checks-optional".into(), String::new());
    perf.annotations
        .insert("netready.io/check-deadline".into(), "3s".into());
    perf
}

/// A config whose external target nobody answers (no route leaves the node's namespace), so
/// that a pod's optional `external_ping` check keeps it checking until its deadline.
fn silent_external(ctd: &Containerd) -> std::path::PathBuf {
    let path = ctd.scratch("config").join("netready.toml");
    std::fs::write(
        &path,
        "[netperf.targets]\nexternal = { ip = \"192.0.2.10\", port = 80, path = \"/\" }\n",
    )
    .unwrap();
    path
}

/// netready killed (a crash, or an upgrade's restart) beside a containerd that still runs the
/// node's control pod: kubelet does not send that pod's RunPodSandbox again, so the restarted
/// netready learns it from containerd before it resumes the checks the kill cut short and
/// before it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_netready_learns_the_control_pods_containerd_still_runs() {
    let ctd = Containerd::start().await.unwrap();
    let config = silent_external(&ctd);
    let args = ["-c", config.to_str().unwrap()];
    let mut nr = Netready::beside_with(&ctd, Path::new(BIN), &ctd.socket(), &args)
        .await
        .unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let logs = ctd.scratch("pods");
    let control = control_pod(&logs, &ctd);
    let control_id = pod::run_sandbox(&mut rt, &control).await.unwrap();
    let control_ip = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: control_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap();
    // Still checking when killed: its optional external_ping waits for its 4 s deadline.
    let mut cut = needs_same_node_pod("cut-short", &logs, &ctd);
    cut.annotations
        .insert("netready.io/checks-optional".into(), "external_ping".into());
    cut.annotations
        .insert("netready.io/check-deadline".into(), "4s".into());
    let (cut_sandbox, cut_container) = start_pod(&mut rt, &cut).await;
    drop(rt);
    nr.kill().unwrap();

    let nr = Netready::beside_with(&ctd, Path::new(BIN), &ctd.socket(), &args)
        .await
        .unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    // The checks the kill cut short ran again, with the control pod as target.
    let resumed = probe_until(&mut rt, &cut_container, 0).await;
    assert!(
        String::from_utf8_lossy(&resumed.stdout).starts_with("network ready: 10.89."),
        "{resumed:?}\n{}",
        nr.log()
    );
    // And a pod created after the restart.
    let perf = needs_same_node_pod("perf", &logs, &ctd);
    let (sandbox, container) = start_pod(&mut rt, &perf).await;
    let ok = probe_until(&mut rt, &container, 0).await;
    assert!(
        String::from_utf8_lossy(&ok.stdout).starts_with("network ready: 10.89."),
        "{ok:?}\n{}",
        nr.log()
    );
    let log = pod::read_log(&perf.log_directory.join("main/0.log"))
        .unwrap()
        .join("\n");
    assert!(
        log.contains("check same_node_pod (required): passed")
            && log.contains(&format!("targets {control_ip}")),
        "the control pod containerd runs, {control_ip}: {log}"
    );
    for id in [&sandbox, &cut_sandbox, &control_id] {
        pod::stop_remove(&mut rt, id).await.unwrap();
    }
}

/// netready started while containerd is not there yet (a node booting): it serves all the
/// same, and asks again until containerd answers, learning then the control pod it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netready_started_before_containerd_learns_its_control_pods_once_it_answers() {
    let ctd = Containerd::start().await.unwrap();
    let logs = ctd.scratch("pods");
    let (mut direct, _) = client::connect(&ctd.socket()).await.unwrap();
    let control = control_pod(&logs, &ctd);
    let control_id = pod::run_sandbox(&mut direct, &control).await.unwrap();
    // containerd's socket appears at netready's upstream path only later.
    let upstream = ctd.scratch("later").join("containerd.sock");
    let nr = Netready::beside_with(&ctd, Path::new(BIN), &upstream, &[])
        .await
        .unwrap();
    let wait_for = |line: &'static str| {
        let nr = &nr;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while !nr.log().contains(line) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no {line:?} in netready's log:\n{}",
                    nr.log()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    wait_for("asking again in the background").await;
    std::os::unix::fs::symlink(ctd.socket(), &upstream).unwrap();
    wait_for("control_pods=1").await;

    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let perf = needs_same_node_pod("perf", &logs, &ctd);
    let (sandbox, container) = start_pod(&mut rt, &perf).await;
    let ok = probe_until(&mut rt, &container, 0).await;
    let log = pod::read_log(&perf.log_directory.join("main/0.log"))
        .unwrap()
        .join("\n");
    assert!(
        String::from_utf8_lossy(&ok.stdout).starts_with("network ready: 10.89.")
            && log.contains("targets 10.88."),
        "{ok:?}: {log}"
    );
    pod::stop_remove(&mut rt, &sandbox).await.unwrap();
    pod::stop_remove(&mut rt, &control_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_pods_run_by_containerd_become_same_node_targets() {
    let ctd = Containerd::start().await.unwrap();
    let nr = netready_beside(&ctd).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let logs = ctd.scratch("pods");
    // A control pod: a real pod in containerd, labelled as kubemark's DaemonSet labels it.
    let control = control_pod(&logs, &ctd);
    let control_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(control.sandbox_config(0)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;

    let perf = needs_same_node_pod("perf", &logs, &ctd);
    let (sandbox, container) = start_pod(&mut rt, &perf).await;
    let ok = probe_until(&mut rt, &container, 0).await;
    assert!(
        String::from_utf8_lossy(&ok.stdout).starts_with("network ready: 10.89."),
        "{ok:?}"
    );
    let log = pod::read_log(&perf.log_directory.join("main/0.log"))
        .unwrap()
        .join("\n");
    assert!(
        log.contains("check same_node_pod (required): passed"),
        "{log}"
    );
    assert!(
        log.contains("targets 10.88."),
        "the control pod's containerd IP: {log}"
    );
    for id in [&sandbox, &control_id] {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }

    // The control pod is gone, and forgotten: the next pod has no same-node target.
    let later = needs_same_node_pod("later", &logs, &ctd);
    let (sandbox, container) = start_pod(&mut rt, &later).await;
    let not = probe_until(&mut rt, &container, 1).await;
    let why = String::from_utf8_lossy(&not.stderr).into_owned();
    assert!(why.contains("same_node_pod: skipped: no target"), "{why}");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await
    .unwrap();
}
