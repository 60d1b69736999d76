//! `/metrics` on real traffic: values match what happened, `promtool check metrics` accepts
//! the text, and OpenMetrics is served when asked. (What the recording rules and the Grafana
//! dashboard read is checked against a scrape in `series.rs`.)

use std::io::Write;

use std::time::Duration;

use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::scrape::{get, value};
use netready_testkit::topology::TwoNodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_pods_and_satisfy_promtool() {
    let t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
    let mut cfg = t.a.netperf_config(None);
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
    cfg.targets.node_name = Some("node-a".into());
    cfg.targets.file = Some(t.targets_file(&t.a.path(""), &[]).unwrap());
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let wait = |id: String| {
        let nr = &nr;
        async move {
            for _ in 0..200 {
                if nr
                    .runtime()
                    .sandbox(&id)
                    .and_then(|s| s.readiness)
                    .is_some_and(|r| r.finished.is_some())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("checks did not finish");
        }
    };
    let mut ok = PodSpec::new("ok", &t.a.path("pods"), "");
    ok.labels.insert("netperf".into(), "true".into());
    let ok_id = pod::run_sandbox(&mut rt, &ok).await.unwrap();
    wait(ok_id.clone()).await;
    // The second pod cannot reach node B: not network-ready, reason other_node_pods.
    t.blackhole(t.control_b.ip).unwrap();
    let mut bad = PodSpec::new("bad", &t.a.path("pods"), "");
    bad.labels = ok.labels.clone();
    let bad_id = pod::run_sandbox(&mut rt, &bad).await.unwrap();
    wait(bad_id.clone()).await;

    let (head, text) = get(&nr.metrics_url(), None);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(value(&text, "netready_pods_created_total"), 2.0);
    assert_eq!(value(&text, "netready_pods{state=\"network_ready\"}"), 1.0);
    assert_eq!(
        value(&text, "netready_pods{state=\"not_network_ready\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "netready_network_ready_failures_total{reason=\"other_node_pods\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "netready_network_ready_seconds_count"), 1.0);
    assert_eq!(
        value(
            &text,
            "netready_cni_add_duration_seconds_count{result=\"success\"}"
        ),
        2.0
    );
    assert_eq!(value(&text, "netready_cni_add_attempts_count"), 2.0);
    assert_eq!(
        value(
            &text,
            "netready_check_duration_seconds_count{check=\"same_node_pod\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "netready_cri_requests_total{method=\"RunPodSandbox\",route=\"netperf\",code=\"OK\"}"
        ),
        2.0
    );
    // No pod names or UIDs in labels: cardinality stays bounded.
    assert!(
        !text.contains(&ok.uid) && !text.contains("\"ok\""),
        "{text}"
    );

    // promtool (Debian's prometheus package) accepts it.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // OpenMetrics when asked.
    let (head, om) = get(
        &nr.metrics_url(),
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(om.trim_end().ends_with("# EOF"));

    for id in [ok_id, bad_id] {
        pod::stop_remove(&mut rt, &id).await.unwrap();
    }
    let (_, text) = get(&nr.metrics_url(), None);
    assert_eq!(value(&text, "netready_pods_deleted_total"), 2.0);
    assert!(
        value(
            &text,
            "netready_cni_del_duration_seconds_count{result=\"success\"}"
        ) >= 2.0
    );
}
