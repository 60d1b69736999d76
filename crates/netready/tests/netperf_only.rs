//! `netready serve` with no upstream runtime (`--upstream ""`, `--no-upstream`).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1 as cri;
use netready_testkit::cri as client;
use netready_testkit::netready::Netready;
use netready_testkit::node::TestNode;

const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// netready in the node's netns, with no upstream, its CNI config a bridge on `subnet`.
async fn netperf_only(node: &TestNode, subnet: &str, upstream_args: &[&str]) -> Netready {
    let dir = node.path("nr");
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    std::fs::write(
        dir.join("net.d/10-nrtest.conflist"),
        node.bridge_conflist(subnet, vec![]).to_string(),
    )
    .unwrap();
    let (upstream, extra) = match upstream_args {
        ["--upstream", u] => (PathBuf::from(u), &[][..]),
        other => (PathBuf::new(), other),
    };
    Netready::start_in(
        Some(node.netns().path()),
        Path::new(BIN),
        &dir,
        &upstream,
        extra,
    )
    .await
    .unwrap()
}

fn netperf_only_condition(s: &cri::StatusResponse) -> bool {
    s.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .any(|c| c.r#type == "NetreadyReady" && c.status && c.reason == "NetperfOnly")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_upstream_and_no_upstream_both_mean_none() {
    let node = TestNode::new().unwrap();
    for (i, args) in [&["--upstream", ""][..], &["--no-upstream"][..]]
        .into_iter()
        .enumerate()
    {
        let nr = netperf_only(&node, &format!("10.93.{i}.0/24"), args).await;
        let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
        let s = rt
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        assert!(netperf_only_condition(&s), "{args:?}: {s:?}\n{}", nr.log());
        assert!(
            nr.log().contains("none (netperf pods only)"),
            "{}",
            nr.log()
        );
    }
}

#[test]
fn no_upstream_and_upstream_are_exclusive() {
    let out = Command::new(BIN)
        .args(["serve", "--no-upstream", "--upstream", "/run/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--no-upstream") && err.contains("--upstream"),
        "{err}"
    );
}
