//! `netready drive` against netready (netperf pods on a test node) and against containerd
//! (real pods), in every arrival mode; its results feed `netready report`.

use std::path::{Path, PathBuf};
use std::process::Command;

use netready_testkit::node::{InProcess, TestNode};
use netready_testkit::{images, Containerd};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

fn drive(endpoint: &Path, results: &Path, args: &[&str]) -> (i32, String, Vec<serde_json::Value>) {
    let out = Command::new(BIN)
        .args(["drive", "--endpoint"])
        .arg(format!("unix://{}", endpoint.display()))
        .arg("--results")
        .arg(results)
        .args(args)
        .output()
        .unwrap();
    let recs = std::fs::read_to_string(results)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        recs,
    )
}

fn all_ready(recs: &[serde_json::Value]) -> bool {
    recs.iter().all(|r| r["verdict"]["network_ready"] == true)
}

/// A test node with netready in process, its bridge on `subnet`, no upstream.
fn netperf_node(subnet: &str) -> (TestNode, InProcess) {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist(subnet, vec![]))
        .unwrap();
    let nr = InProcess::start(
        &node,
        node.netperf_config(None),
        &node.path("no-upstream.sock"),
    )
    .unwrap();
    (node, nr)
}

#[test]
fn drive_netperf_pods_in_every_mode() {
    let (node, nr) = netperf_node("10.230.0.0/16");
    let results: PathBuf = node.path("burst.jsonl");

    let (code, out, recs) = drive(
        nr.socket(),
        &results,
        &["--mode", "burst", "--pods", "12", "--concurrency", "4"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(recs.len(), 12);
    assert!(all_ready(&recs), "{recs:#?}");
    assert!(recs
        .iter()
        .all(|r| r["ips"][0].as_str().unwrap().starts_with("10.230.")));
    assert!(
        out.contains("pods 12  network-ready 12 (100.0%)"),
        "summary:\n{out}"
    );
    assert!(
        out.contains("pod_ready") && out.contains("run_pod_sandbox"),
        "{out}"
    );

    // Open loop at 20 pods/s: latency counts from the intended start; 10 pods take ~0.5 s.
    let rate = node.path("rate.jsonl");
    let (code, out, recs) = drive(
        nr.socket(),
        &rate,
        &[
            "--mode",
            "rate",
            "--rate",
            "20",
            "--arrivals",
            "uniform",
            "--pods",
            "10",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(recs.len(), 10);
    assert!(all_ready(&recs));
    let mut intended: Vec<String> = recs
        .iter()
        .map(|r| r["stamps"]["intended_start"].as_str().unwrap().to_owned())
        .collect();
    intended.sort();
    intended.dedup();
    assert_eq!(intended.len(), 10, "one intended start per pod");
    for r in &recs {
        let d = &r["durations_s"];
        assert!(d["pod_ready"].as_f64().unwrap() >= d["run_pod_sandbox"].as_f64().unwrap());
    }

    // Churn: 3 pods alive at once for 1.5 s, each replaced as it ends.
    let churn = node.path("churn.jsonl");
    let (code, out, recs) = drive(
        nr.socket(),
        &churn,
        &[
            "--mode",
            "churn",
            "--population",
            "3",
            "--duration",
            "1500ms",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        recs.len() > 3,
        "pods replaced during the churn: {}",
        recs.len()
    );
    assert!(all_ready(&recs));

    // A pod whose required check cannot pass: netready's probe answer says the verdict is
    // final and the driver stops waiting, long before --ready-timeout.
    let failing = node.path("failing.jsonl");
    let t = std::time::Instant::now();
    let (code, out, recs) = drive(
        nr.socket(),
        &failing,
        &[
            "--pods",
            "1",
            "--annotation",
            "netready.io/checks-required=same_node_pod",
            "--ready-timeout",
            "60s",
        ],
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["verdict"]["network_ready"], false, "{recs:#?}");
    let reason = recs[0]["verdict"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("network checks ended") && reason.contains("same_node_pod"),
        "{reason}"
    );

    // The results are report's input.
    let out = Command::new(BIN)
        .args(["report", "--format", "json"])
        .arg(&results)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["pods"], 12);
    assert_eq!(j["fingerprints"][0]["load"]["pods"], 12);
    assert_eq!(nr.runtime().sandbox_count(), 0, "every pod was removed");
    drop(nr);
    assert_eq!(
        node.settled_leftovers(),
        netready_testkit::node::Leftovers::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_real_pods_against_containerd() {
    let ctd = Containerd::start().await.unwrap();
    let results = ctd.scratch("drive").join("r.jsonl");
    let (code, out, recs) = tokio::task::spawn_blocking({
        let socket = ctd.socket();
        let results = results.clone();
        let cgroup = ctd.cgroup_parent().to_owned();
        move || {
            drive(
                &socket,
                &results,
                &[
                    "--mode",
                    "burst",
                    "--pods",
                    "2",
                    "--concurrency",
                    "2",
                    "--label",
                    "app=plain",
                    "--image",
                    images::BUSYBOX,
                    "--cgroup-parent",
                    &cgroup,
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{}", ctd.log_tail());
    assert_eq!(recs.len(), 2);
    assert!(
        all_ready(&recs),
        "busybox answers the exec probe: {recs:#?}"
    );
    assert!(
        recs.iter()
            .all(|r| r["ips"][0].as_str().unwrap().starts_with("10.88.")),
        "containerd's bridge"
    );
}

#[test]
fn netperf_pods_from_a_netns_pool_run_and_no_spare_outlives_netready() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.231.0.0/16", vec![]))
        .unwrap();
    let mut cfg = node.netperf_config(None);
    cfg.netns_pool = 4;
    let nr = InProcess::start(&node, cfg, &node.path("no-upstream.sock")).unwrap();
    // With no pod running, every namespace on the node is a spare, named as a pod's would be.
    let spares = || -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s: Vec<String> = node.leftovers().netns;
            assert!(s.iter().all(|n| n.contains("cni-")), "{s:?}");
            if s.len() == 4 || std::time::Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let before = spares();
    assert_eq!(before.len(), 4, "{:?}", node.leftovers());
    let results = node.path("pooled.jsonl");
    let (code, out, recs) = drive(
        nr.socket(),
        &results,
        &["--mode", "burst", "--pods", "12", "--concurrency", "4"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(recs.len(), 12);
    assert!(all_ready(&recs), "{recs:#?}");
    let after = spares();
    assert_eq!(after.len(), 4, "the pool refilled");
    assert!(
        before.iter().all(|b| !after.contains(b)),
        "pods took the spares: {before:?} {after:?}"
    );
    drop(nr);
    assert_eq!(
        node.settled_leftovers(),
        Default::default(),
        "pods and spares gone"
    );
}

/// Ctrl-C on a drive whose pods would live ten minutes: it starts no more, deletes the ones
/// it made as kubelet would, prints the report so far and exits 130; nothing stays on the
/// node. A second run is stopped by SIGTERM (143) before every pod has arrived.
#[test]
fn drive_stopped_by_a_signal_deletes_its_pods_and_reports() {
    use nix::sys::signal::{kill, Signal};
    let (node, nr) = netperf_node("10.232.0.0/16");
    let ready = || {
        std::fs::read_to_string(node.path("state").join("results.jsonl"))
            .map_or(0, |s| s.lines().count())
    };
    let stop_after = |signal: Signal, sandboxes: usize, args: &[&str], results: &Path| {
        let before = ready();
        let child = Command::new(BIN)
            .args(["drive", "--endpoint"])
            .arg(format!("unix://{}", nr.socket().display()))
            .arg("--results")
            .arg(results)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // netready writes a pod's record once it is network-ready (no checks here); the
        // drive's probes, 100 ms apart, see it shortly after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ready() - before < sandboxes {
            assert!(std::time::Instant::now() < deadline, "pods never got ready");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let made = nr.runtime().sandbox_count();
        kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let t = std::time::Instant::now();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let recs: Vec<serde_json::Value> = std::fs::read_to_string(results)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out.status.code(), t.elapsed(), made, text, recs)
    };

    let burst = node.path("burst.jsonl");
    let (code, took, made, out, recs) = stop_after(
        Signal::SIGINT,
        20,
        &[
            "--mode",
            "burst",
            "--pods",
            "40",
            "--concurrency",
            "40",
            "--lifetime",
            "10m",
        ],
        &burst,
    );
    assert_eq!(code, Some(130), "{out}");
    assert!(took < std::time::Duration::from_secs(30), "{took:?}\n{out}");
    assert!(out.contains("SIGINT: starting no more pods"), "{out}");
    assert!(out.contains("network-ready"), "the report so far:\n{out}");
    assert!(!out.contains("could not delete"), "{out}");
    assert_eq!(nr.runtime().sandbox_count(), 0, "every pod deleted\n{out}");
    // One record per pod made, each deleted without error; the pods the signal caught
    // before readiness say so.
    assert!(
        recs.len() >= made,
        "{} records, {made} sandboxes",
        recs.len()
    );
    for r in &recs {
        assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
        if r["verdict"]["network_ready"] != true {
            assert_eq!(r["verdict"]["reason"], netready_drive::INTERRUPTED, "{r:#}");
        }
    }
    assert!(
        recs.iter().any(|r| r["verdict"]["network_ready"] == true),
        "{recs:#?}"
    );

    // Open loop at 5 pods/s for 100 pods: SIGTERM after a few; the rest never start.
    let rate = node.path("rate.jsonl");
    let (code, _, _, out, recs) = stop_after(
        Signal::SIGTERM,
        3,
        &[
            "--mode",
            "rate",
            "--rate",
            "5",
            "--pods",
            "100",
            "--lifetime",
            "10m",
        ],
        &rate,
    );
    assert_eq!(code, Some(143), "{out}");
    assert!(recs.len() < 20, "arrivals stopped: {} records", recs.len());
    assert_eq!(nr.runtime().sandbox_count(), 0, "{out}");
    drop(nr);
    assert_eq!(
        node.settled_leftovers(),
        netready_testkit::node::Leftovers::default()
    );
}

/// A pod whose StopPodSandbox fails (a DEL failing): drive says which pod it could not delete,
/// with the sandbox id and the runtime's error, so the user can finish the job.
#[test]
fn drive_names_the_pods_it_could_not_delete() {
    let node = TestNode::new().unwrap();
    // `bridge`, failing every DEL with a CNI error.
    node.script_plugin(
        "delfails",
        "if [ \"$CNI_COMMAND\" = DEL ]; then\n  echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"injected DEL failure\"}'\n  exit 1\nfi\nexec /usr/lib/cni/bridge",
    )
    .unwrap();
    let mut conflist = node.bridge_conflist("10.233.0.0/16", vec![]);
    conflist["plugins"][0]["type"] = "delfails".into();
    node.write_conflist(&conflist).unwrap();
    let mut cfg = node.netperf_config(Some(&node.path("bin")));
    cfg.retry.attempts = 1;
    let nr = InProcess::start(&node, cfg, &node.path("no-upstream.sock")).unwrap();
    let results = node.path("r.jsonl");
    let (code, out, recs) = drive(
        nr.socket(),
        &results,
        &["--pods", "2", "--concurrency", "2"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("could not delete 2 pods:"), "{out}");
    for r in &recs {
        let id = r["sandbox_id"].as_str().unwrap();
        assert!(
            out.lines()
                .any(|l| l.contains(id) && l.contains("injected DEL failure")),
            "{id} in:\n{out}"
        );
    }
    // Fixed, the pods go as kubelet would finally delete them.
    conflist["plugins"][0]["type"] = "bridge".into();
    node.write_conflist(&conflist).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut c, _) = netready_testkit::cri::connect(nr.socket()).await.unwrap();
        for r in &recs {
            netready_testkit::pod::stop_remove(&mut c, r["sandbox_id"].as_str().unwrap())
                .await
                .unwrap();
        }
    });
    drop(nr);
    assert_eq!(
        node.settled_leftovers(),
        netready_testkit::node::Leftovers::default()
    );
}
