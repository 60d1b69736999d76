//! `netready report` and `netready compare` on real results files: runs of real netperf pods
//! (Debian plugins in a test node), one of them with a slower plugin chain.

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::Duration;

use netready_testkit::cri as client;
use netready_testkit::node::{InProcess, TestNode};
use netready_testkit::pod::{self, PodSpec};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// One netready per name on `node` (the same plugin chain: bridge, then `extra`), their pods
/// created alternately so machine noise falls on every run alike (METHODOLOGY: interleave);
/// returns each run's results file once all its records are in.
async fn runs(
    node: &TestNode,
    names: &[&str],
    extra: &[Vec<serde_json::Value>],
    required: &[&str],
    pods: usize,
) -> Vec<PathBuf> {
    let mut servers = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut cfg = node.netperf_config(None);
        // Each run its own chain (its own conf dir), one bridge and subnet for all.
        let conf_dir = node.path(&format!("net.d-{name}"));
        std::fs::create_dir_all(&conf_dir).unwrap();
        let conflist =
            node.bridge_conflist("10.210.0.0/16", extra.get(k).cloned().unwrap_or_default());
        std::fs::write(conf_dir.join("10-nrtest.conflist"), conflist.to_string()).unwrap();
        cfg.cni.conf_dir = conf_dir;
        cfg.state_dir = node.path(&format!("state-{name}"));
        cfg.results_file = Some(node.path(&format!("{name}.jsonl")));
        cfg.run_id = Some((*name).into());
        cfg.checks.required = required.iter().map(|s| s.to_string()).collect();
        cfg.checks.deadline = Duration::from_millis(300);
        let path = cfg.results_path();
        let nr = InProcess::start(node, cfg, &node.path("no-upstream.sock")).unwrap();
        let (rt, _) = client::connect(nr.socket()).await.unwrap();
        servers.push((nr, rt, path, Vec::new()));
    }
    for i in 0..pods {
        for (k, (_, rt, _, ids)) in servers.iter_mut().enumerate() {
            let mut p = PodSpec::new(&format!("{}-{i}", names[k]), &node.path("pods"), "");
            p.labels.insert("netperf".into(), "true".into());
            ids.push(pod::run_sandbox(rt, &p).await.unwrap());
        }
    }
    let mut files = Vec::new();
    for (_nr, mut rt, path, ids) in servers {
        for _ in 0..300 {
            let lines = std::fs::read_to_string(&path)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if lines == pods {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for id in ids {
            pod::stop_remove(&mut rt, &id).await.unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            pods
        );
        files.push(path);
    }
    files
}

fn netready(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_compare_catch_a_regression_and_not_noise() {
    let node = TestNode::new().unwrap();
    // Two runs of one chain, and the "new release": the same chain plus the firewall plugin,
    // which programs iptables on every ADD — a real, slower chain. All three interleaved pod
    // by pod, so a busy machine slows every arm alike.
    let files = runs(
        &node,
        &["base", "again", "slow"],
        &[
            vec![],
            vec![],
            vec![json!({"type": "firewall", "backend": "iptables"})],
        ],
        &[],
        40,
    )
    .await;
    let (base, again, slow) = (files[0].clone(), files[1].clone(), files[2].clone());
    // A run where no pod gets network-ready (a required check has no target).
    let broken = runs(&node, &["broken"], &[], &["same_node_pod"], 10)
        .await
        .remove(0);

    let (code, table, err) = netready(&["report", s(&base)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("pods 40  network-ready 40 (100.0%)"),
        "{table}"
    );
    for t in [
        "cni_add ",
        "cni_add_first_to_success",
        "network_ready ",
        "sandbox_request_to_ready",
        "cni_add_attempts",
    ] {
        assert!(table.contains(t), "{t} missing:\n{table}");
    }
    assert!(table.contains("fingerprint"), "{table}");
    let (code, out, err) = netready(&["report", "--format", "json", s(&base), s(&again)]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["pods"], 80);
    assert_eq!(j["run_ids"], json!(["again", "base"]));
    let fp = &j["fingerprints"][0];
    assert_eq!(fp["cni"]["plugins"][0]["type"], "bridge");
    assert!(
        fp["cni"]["plugins"][0]["version"]
            .as_str()
            .unwrap_or("")
            .contains("bridge"),
        "{fp}"
    );
    assert_eq!(fp["cni"]["sha256"].as_str().unwrap().len(), 64);
    let (code, out, _) = netready(&["report", "--format", "perfdata", s(&base)]);
    assert_eq!(code, 0);
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["version"], "v1");
    let item = p["dataItems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["labels"]["Metric"] == "network_ready")
        .unwrap();
    assert_eq!(item["unit"], "ms");
    assert!(item["data"]["Perc99"].as_f64().unwrap() >= item["data"]["Perc50"].as_f64().unwrap());
    let (code, out, _) = netready(&["report", "--format", "table", s(&broken)]);
    assert_eq!(code, 0);
    assert!(
        out.contains("same_node_pod") && out.contains("network-ready 0 (0.0%)"),
        "{out}"
    );
    for plot in ["plots.svg", "plots.html"] {
        let f = node.path(plot);
        let (code, _, err) = netready(&["report", "--plot", s(&f), s(&base)]);
        assert_eq!(code, 0, "{err}");
        let body = std::fs::read_to_string(&f).unwrap();
        assert!(
            body.contains("<svg") && body.contains("network_ready"),
            "{plot}"
        );
    }
    let png = node.path("plots.png");
    let (code, _, err) = netready(&["report", "--plot", s(&png), s(&base)]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    assert!(
        bytes.len() > 10_000,
        "three charts with text: {} bytes",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("NETREADY_KEEP_PLOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    let (code, _, err) = netready(&["report", "--plot", s(&node.path("plots.gif")), s(&base)]);
    assert_ne!(code, 0);
    assert!(err.contains(".svg, .png or .html"), "{err}");

    // Same configuration twice: noise, not a regression.
    let (code, out, _) = netready(&["compare", s(&base), s(&again)]);
    assert_eq!(code, 0, "two runs of the same chain flagged:\n{out}");
    assert!(out.contains("result: pass"), "{out}");
    // The slower chain is caught.
    let (code, out, _) = netready(&["compare", s(&base), s(&slow)]);
    assert_eq!(code, 1, "slower chain not flagged:\n{out}");
    assert!(
        out.contains("REGRESSION") && out.contains("cni_add"),
        "{out}"
    );
    // The other way round it is an improvement, not a regression.
    let (code, out, _) = netready(&["compare", s(&slow), s(&base)]);
    assert_eq!(code, 0, "{out}");
    // A run with failed pods is invalid.
    let (code, out, _) = netready(&["compare", s(&base), s(&broken)]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("INVALID") && out.contains("not network-ready"),
        "{out}"
    );
    // Custom gates, and their errors.
    let (code, out, _) = netready(&[
        "compare",
        "--threshold",
        "cni_add:p50:1000%:1s",
        s(&base),
        s(&slow),
    ]);
    assert_eq!(code, 0, "a generous gate passes:\n{out}");
    let (code, _, err) = netready(&[
        "compare",
        "--threshold",
        "cni_add:p77:10%:1ms",
        s(&base),
        s(&slow),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("p77"), "{err}");
}
