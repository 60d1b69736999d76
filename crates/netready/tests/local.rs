//! `netready local` end to end: simulated nodes with the real Debian plugins, pods driven
//! through each node's netready, every check passing against the control pods, the VIP and the
//! external target; and nothing left afterwards — after a clean run, after Ctrl-C, and after
//! a SIGKILL (the next run sweeps it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

fn local(out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("local").arg("--out").arg(out).args(args);
    c
}

/// Runs `netready local` to its end; its pid and output, after checking it exited 0.
fn run_ok(out: &Path, args: &[&str]) -> (u32, String) {
    let child = local(out, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    (pid, text)
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Namespaces, run directory and node netready processes of the run with process id `pid`.
fn leftovers(pid: u32) -> Vec<String> {
    let mut left = Vec::new();
    let prefix = format!("nrl{pid}-");
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) {
            left.push(format!("netns {n}"));
        }
    }
    let root = PathBuf::from(format!("/run/netready-local/{pid}"));
    if root.exists() {
        left.push(format!("directory {}", root.display()));
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&root.display().to_string()) {
                left.push(format!("process {:?}", e.file_name()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts
        .lines()
        .filter(|l| l.contains(&root.display().to_string()))
    {
        left.push(format!("mount {m}"));
    }
    left
}

fn settled_leftovers(pid: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(pid);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_nodes_every_check_passes_and_nothing_is_left() {
    let out = tempfile::tempdir().unwrap();
    let (pid, text) = run_ok(
        out.path(),
        &[
            "--nodes",
            "2",
            "--pods",
            "6",
            "--rate",
            "6",
            "--lifetime",
            "0s",
            "--plot",
            "--run-id",
            "t",
        ],
    );
    assert!(text.contains("network-ready 12 (100.0%)"), "{text}");
    let dir = out.path().join("t");
    let recs = records(&dir.join("records.jsonl"));
    assert_eq!(recs.len(), 12, "{text}");
    for r in &recs {
        let node = r["node"].as_str().unwrap();
        let i: u8 = node.strip_prefix("node-").unwrap().parse().unwrap();
        let other = 1 - i;
        let ip = r["ips"][0].as_str().unwrap();
        assert!(
            ip.starts_with(&format!("10.244.{i}.")),
            "{node} pod got {ip}"
        );
        let checks = r["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 6, "{r}");
        for c in checks {
            assert_eq!(c["outcome"], "passed", "{node}: {c}");
        }
        let targets =
            |kind: &str| checks.iter().find(|c| c["check"] == kind).unwrap()["targets"].to_string();
        assert!(
            targets("same_node_pod").contains(&format!("10.244.{i}.")),
            "{r}"
        );
        assert!(
            targets("other_node_pods").contains(&format!("node-{other}/10.244.{other}.")),
            "{r}"
        );
        assert!(targets("service_http").contains("10.96.0.10:80"), "{r}");
        assert!(targets("external_http").contains("198.18.0.10"), "{r}");
        // The node netready's own timing: first ADD attempt to the last required check.
        assert!(
            r["durations_s"]["network_ready"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert_eq!(
            r["fingerprint"]["run_info"]["mode"], "netready local",
            "{r}"
        );
        // netready's own lag, beside the timings it sits inside: no check measured before
        // its first probe went out, and the last required check began after the first probe.
        let lag = &r["lag_s"];
        let secs = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("{r}"));
        let (first, started) = (secs(&lag["first_probe"]), secs(&lag["checks_started"]));
        assert!(0.0 < first && first <= started, "{r}");
        for c in checks {
            assert!(secs(&c["first_probe_s"]) <= secs(&c["duration_s"]), "{c}");
        }
        assert!(secs(&lag["cni_queued"]) >= 0.0, "{r}");
        let load = &r["fingerprint"]["host_load"];
        assert!(secs(&load["cpu_s"]) > 0.0, "{r}");
        assert!((0.0..=1.0).contains(&secs(&load["steal_share"])), "{r}");
    }
    assert!(
        text.contains("lag.checks_started") && text.contains("host load"),
        "{text}"
    );
    // A lag bound below what any run has: report flags the run, compare refuses it.
    let recs_file = dir.join("records.jsonl");
    let f = recs_file.to_str().unwrap();
    let o = Command::new(BIN)
        .args(["report", "--max-lag", "1us", f])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("INSTRUMENT LAG: netready's own lag lag.checks_started p99"),
        "{table}"
    );
    let o = Command::new(BIN)
        .args(["compare", "--max-lag", "1us", f, f])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("INVALID: BASE: netready's own lag"), "{out}");
    let o = Command::new(BIN).args(["compare", f, f]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(records(&dir.join("drive.jsonl")).len(), 12);
    for f in ["report.json", "report.html", "network-ready.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(settled_leftovers(pid), Vec::<String>::new());
}

#[test]
fn the_application_model_loads_servers_through_a_vip_and_leaves_nothing() {
    let out = tempfile::tempdir().unwrap();
    let (pid, text) = run_ok(
        out.path(),
        &[
            "--nodes",
            "2",
            "--pods",
            "3",
            "--model",
            "rate=20,duration=1s,connections=2",
            "--model-servers",
            "3",
            "--run-id",
            "m",
        ],
    );
    let recs = records(&out.path().join("m/records.jsonl"));
    let servers: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["pod"]["namespace"] == "netready-model")
        .collect();
    assert_eq!(servers.len(), 3, "{text}");
    let clients: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["http_load"].is_object()).collect();
    assert_eq!(clients.len(), 6, "{text}");
    for c in &clients {
        let l = &c["http_load"];
        assert_eq!(l["target"], "10.96.0.40:80", "{l}");
        assert_eq!(l["ok"], 20, "{l}");
        // Every request went through the VIP to one of the servers, and says which.
        let replies: u64 = l["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["replies"].as_u64().unwrap())
            .sum();
        assert_eq!(replies, 20, "{l}");
        for b in l["backends"].as_array().unwrap() {
            assert!(
                b["pod"]
                    .as_str()
                    .unwrap()
                    .starts_with("netready-model/model-server-"),
                "{b}"
            );
        }
    }
    assert!(text.contains("HTTP load by target"), "{text}");
    assert!(text.contains("10.96.0.40:80"), "{text}");
    assert_eq!(settled_leftovers(pid), Vec::<String>::new(), "{text}");
}

fn wait_for_pods(pid: u32, nodes: usize) {
    // Interrupt once every node's netready lists a pod: a RunPodSandbox still in its ADD is
    // not listed yet, and a slow machine would interrupt before any pod exists.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = (0..nodes)
            .filter(|i| {
                let socket =
                    PathBuf::from(format!("/run/netready-local/{pid}/node-{i}/netready.sock"));
                rt.block_on(async {
                    let Ok((mut c, _)) = netready_testkit::cri::connect(&socket).await else {
                        return false;
                    };
                    c.list_pod_sandbox(netready_testkit::cri::v1::ListPodSandboxRequest::default())
                        .await
                        .is_ok_and(|r| !r.into_inner().items.is_empty())
                })
            })
            .count();
        if running == nodes {
            return;
        }
        assert!(Instant::now() < deadline, "no pods after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(out: &Path, args: &[&str]) -> Child {
    local(out, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn ctrl_c_removes_pods_and_cluster() {
    let out = tempfile::tempdir().unwrap();
    let child = start(
        out.path(),
        &[
            "--nodes",
            "2",
            "--pods",
            "400",
            "--rate",
            "20",
            "--lifetime",
            "30s",
        ],
    );
    let pid = child.id();
    wait_for_pods(pid, 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // Pods were deleted through the nodes' netready (so their CNI DEL ran), not just swept.
    assert!(err.contains("pods left running"), "{err}");
    assert_eq!(settled_leftovers(pid), Vec::<String>::new(), "{err}");
}

#[test]
fn a_killed_run_is_swept_by_the_next() {
    let out = tempfile::tempdir().unwrap();
    let mut child = start(
        out.path(),
        &[
            "--nodes",
            "1",
            "--pods",
            "400",
            "--rate",
            "20",
            "--lifetime",
            "30s",
        ],
    );
    let pid = child.id();
    wait_for_pods(pid, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!leftovers(pid).is_empty(), "SIGKILL left nothing to sweep?");
    let o = local(
        out.path(),
        &[
            "--nodes",
            "1",
            "--pods",
            "1",
            "--lifetime",
            "0s",
            "--run-id",
            "next",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(settled_leftovers(pid), Vec::<String>::new(), "{err}");
}
