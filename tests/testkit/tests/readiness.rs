//! Network readiness across two routed nodes with real plugins: control pods on both, a
//! service VIP, an external host; every check from inside the pod's netns.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use netready_cri::NetperfConfig;
use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::topology::TwoNodes;

const ALL: [&str; 6] = [
    "same_node_pod",
    "other_node_pods",
    "service_ping",
    "service_http",
    "external_ping",
    "external_http",
];

fn config(t: &TwoNodes, required: &[&str], deadline: Duration) -> NetperfConfig {
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required = required.iter().map(|s| s.to_string()).collect();
    cfg.checks.optional = ALL
        .iter()
        .filter(|k| !required.contains(k))
        .map(|s| s.to_string())
        .collect();
    cfg.checks.deadline = deadline;
    cfg.checks.probe_timeout = Duration::from_millis(300);
    cfg.checks.retry_interval = Duration::from_millis(50);
    cfg.checks.http_count = 3;
    cfg.targets.node_name = Some("node-a".into());
    cfg.targets.file = Some(t.targets_file(&t.a.path(""), &[]).unwrap());
    cfg.run_id = Some("readiness-test".into());
    cfg.run_info.insert("nodes".into(), serde_json::json!(2));
    cfg.run_info
        .insert("load".into(), serde_json::json!("one pod at a time"));
    cfg
}

async fn run_pod(nr: &InProcess, t: &TwoNodes, name: &str) -> (String, PodSpec) {
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let mut pod = PodSpec::new(name, &t.a.path("pods"), "");
    pod.labels.insert("netperf".into(), "true".into());
    (pod::run_sandbox(&mut rt, &pod).await.unwrap(), pod)
}

/// Waits until the sandbox's checks finished; returns its record.
async fn verdict(nr: &InProcess, id: &str) -> netready_cri::netperf::state::SandboxRecord {
    for _ in 0..400 {
        let rec = nr.runtime().sandbox(id).unwrap();
        if rec.readiness.as_ref().is_some_and(|r| r.finished.is_some()) {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("checks of {id} did not finish");
}

async fn teardown(nr: &InProcess, id: &str) {
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    pod::stop_remove(&mut rt, id).await.unwrap();
}

fn results(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_from_inside_the_pod() {
    let t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
    let cfg = config(&t, &ALL, Duration::from_secs(10));
    let results_path = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (id, pod) = run_pod(&nr, &t, "all-checks").await;
    let rec = verdict(&nr, &id).await;
    let r = rec.readiness.as_ref().unwrap();
    for c in &r.checks {
        assert!(c.passed(), "{:?}", c);
        for rtt in &c.rtts {
            assert!(
                *rtt > Duration::ZERO && *rtt < Duration::from_millis(100),
                "{:?}",
                c
            );
        }
    }
    let by = |k: &str| r.checks.iter().find(|c| c.check.as_str() == k).unwrap();
    assert_eq!(by("same_node_pod").targets, [t.control_a.ip.to_string()]);
    assert_eq!(
        by("other_node_pods").targets,
        [format!("node-b/{}", t.control_b.ip)]
    );
    assert_eq!(
        by("other_node_pods").available,
        1,
        "one other node exists, the record says so"
    );
    let http = &by("service_http").http;
    assert_eq!(http.len(), 3);
    assert!(http.iter().all(|h| h.status == 200 && h.connect <= h.total));
    assert!(
        !by("service_ping").rtts.is_empty(),
        "ICMP to the VIP reached the DNAT target"
    );
    assert!(r.ready(), "{:?}", r.not_ready_reason);
    let ready_after = r.ready_at.unwrap().since(&r.origin);
    let slowest = r
        .checks
        .iter()
        .filter_map(|c| c.passed_after)
        .max()
        .unwrap();
    assert_eq!(ready_after, slowest);

    // kubelet's readiness probe follows network readiness.
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let c = pod::start_container(&mut rt, &pod, &id).await.unwrap();
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exec.exit_code, 0);
    let log = std::fs::read_to_string(pod.log_directory.join("main/0.log")).unwrap();
    for k in ALL {
        assert!(
            log.contains(&format!("check {k} (required): passed")),
            "{k}:\n{log}"
        );
    }
    assert!(log.contains("rtt ms"), "{log}");
    assert!(log.contains("network ready"), "{log}");

    // The record: one line, with every timing.
    let recs = results(&results_path);
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec["schema_version"], 1);
    assert_eq!(rec["run_id"], "readiness-test");
    assert_eq!(rec["node"], "node-a");
    assert_eq!(rec["fingerprint"]["run_info"]["nodes"], 2);
    assert_eq!(
        rec["fingerprint"]["netready_version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(rec["pod"]["uid"], pod.uid.as_str());
    assert_eq!(rec["verdict"]["network_ready"], true);
    let d = &rec["durations_s"];
    let nr_s = d["network_ready"].as_f64().unwrap();
    assert!(nr_s >= d["cni_add_first_to_success"].as_f64().unwrap());
    assert!(d["sandbox_request_to_ready"].as_f64().unwrap() >= nr_s);
    assert_eq!(rec["checks"].as_array().unwrap().len(), 6);
    netready_testkit::record::assert_valid(rec);

    teardown(&nr, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_target_makes_the_pod_not_ready_with_that_check_named() {
    let t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
    t.blackhole(t.control_b.ip).unwrap();
    let cfg = config(
        &t,
        &["same_node_pod", "other_node_pods"],
        Duration::from_secs(2),
    );
    let results_path = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (id, _) = run_pod(&nr, &t, "blackholed").await;
    let started = Instant::now();
    let rec = verdict(&nr, &id).await;
    let r = rec.readiness.unwrap();
    assert!(!r.ready());
    let reason = r.not_ready_reason.unwrap();
    assert!(
        reason.starts_with("other_node_pods: no answer within 300ms"),
        "{reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up at the deadline"
    );
    let same = r
        .checks
        .iter()
        .find(|c| c.check.as_str() == "same_node_pod")
        .unwrap();
    assert!(same.passed(), "the other checks still ran and passed");
    let recs = results(&results_path);
    assert_eq!(recs[0]["verdict"]["network_ready"], false);
    assert_eq!(recs[0]["verdict"]["reason"], reason.as_str());
    assert!(recs[0]["durations_s"]["network_ready"].is_null());
    netready_testkit::record::assert_valid(&recs[0]);
    teardown(&nr, &id).await;
    // What remains on node A is the topology's own: its control pod and links.
    let left = t.a.leftovers();
    assert!(left.state_sandboxes.is_empty(), "{left:?}");
    assert_eq!(
        left.reservations.len(),
        1,
        "only the control pod's address: {left:?}"
    );
    assert!(left.netns.iter().all(|n| n.ends_with("-ctl")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_drops_packets_for_a_while_passes_an_interval_after_it_stops() {
    let t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
    t.blackhole(t.control_b.ip).unwrap();
    let mut cfg = config(&t, &["other_node_pods"], Duration::from_secs(10));
    // A probe waits 3 s for its answer; one goes out every 50 ms all the same.
    cfg.checks.probe_timeout = Duration::from_secs(3);
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (id, _) = run_pod(&nr, &t, "lossy").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    t.unblackhole(t.control_b.ip).unwrap();
    let rec = verdict(&nr, &id).await;
    let r = rec.readiness.unwrap();
    assert!(r.ready(), "{:?}", r.not_ready_reason);
    let c = r
        .checks
        .iter()
        .find(|c| c.check.as_str() == "other_node_pods")
        .unwrap();
    let passed = c.passed_after.unwrap();
    // Waiting out each probe's timeout would pass at 3 s at the earliest.
    assert!(
        passed >= Duration::from_millis(350) && passed < Duration::from_millis(1500),
        "passed {passed:?} after the ADD, {} probes",
        c.probes
    );
    assert!(c.probes >= 4, "probes kept going out: {}", c.probes);
    teardown(&nr, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_answers_late_is_measured_with_its_delay() {
    let delay = Duration::from_millis(1500);
    let t = TwoNodes::start(Some(delay)).await.unwrap();
    let mut cfg = config(&t, &["external_http"], Duration::from_secs(10));
    cfg.checks.optional.clear();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (id, _) = run_pod(&nr, &t, "late").await;
    let rec = verdict(&nr, &id).await;
    let r = rec.readiness.unwrap();
    assert!(r.ready(), "{:?}", r.not_ready_reason);
    let listening = t
        .external_server
        .as_ref()
        .unwrap()
        .listening_since()
        .unwrap();
    // Where the server started, in the ADD-end timeline: the check must pass just after it,
    // within one retry interval plus a probe's round trip.
    let now_i = Instant::now();
    let now_s = netready_cni::Stamp::now();
    let listening_after_origin = now_s.since(&r.origin).saturating_sub(now_i - listening);
    let passed = r.checks[0].passed_after.unwrap();
    assert!(
        passed >= listening_after_origin,
        "{passed:?} < {listening_after_origin:?}"
    );
    assert!(
        passed - listening_after_origin < Duration::from_millis(250),
        "{passed:?} vs {listening_after_origin:?}"
    );
    assert!(
        r.checks[0].probes > 1,
        "refused while the server was not up"
    );
    teardown(&nr, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_after_network_ready_is_measured_with_iperf3() {
    let mut t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
    t.control_a.start_iperf3("iperf3").await.unwrap();
    let mut cfg = config(&t, &["same_node_pod"], Duration::from_secs(5));
    cfg.checks.optional.clear();
    cfg.traffic.enabled = true;
    cfg.traffic.duration = Duration::from_secs(1);
    let results_path = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (id, _) = run_pod(&nr, &t, "traffic").await;
    let mut recs = Vec::new();
    for _ in 0..300 {
        recs = results(&results_path);
        if !recs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = &recs[0];
    netready_testkit::record::assert_valid(rec);
    let traffic = &rec["traffic"];
    assert_eq!(
        traffic["target"],
        format!("{}:5201", t.control_a.ip),
        "{traffic}"
    );
    let bps = traffic["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("{traffic}"));
    assert!(
        bps > 1e6,
        "veth over a bridge moves more than 1 Mbit/s: {bps}"
    );
    // Readiness came before the traffic, not after it.
    assert_eq!(rec["verdict"]["network_ready"], true);
    assert!(rec["durations_s"]["network_ready"].as_f64().unwrap() < 1.0);
    teardown(&nr, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_load_annotation_sends_at_its_rate_and_lands_in_the_record() {
    let t = TwoNodes::start(Some(Duration::ZERO)).await.unwrap();
    let cfg = config(&t, &["same_node_pod"], Duration::from_secs(5));
    let results_path = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let mut ids = Vec::new();
    for (name, target) in [("load-node", "same-node"), ("load-svc", "service")] {
        let mut pod = PodSpec::new(name, &t.a.path("pods"), "");
        pod.labels.insert("netperf".into(), "true".into());
        pod.annotations.insert(
            "netready.io/http-load".into(),
            format!("rate=100,duration=1s,connections=2,target={target}"),
        );
        ids.push((pod::run_sandbox(&mut rt, &pod).await.unwrap(), target));
    }
    // A bad value is refused before anything is made, naming the annotation and key.
    let mut bad = PodSpec::new("load-bad", &t.a.path("pods"), "");
    bad.labels.insert("netperf".into(), "true".into());
    bad.annotations.insert(
        "netready.io/http-load".into(),
        "rate=fast,duration=1s".into(),
    );
    let e = pod::run_sandbox(&mut rt, &bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("netready.io/http-load: rate"),
        "{}",
        e.message()
    );
    let mut recs = Vec::new();
    for _ in 0..400 {
        recs = results(&results_path);
        if recs.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for rec in &recs {
        netready_testkit::record::assert_valid(rec);
        assert_eq!(rec["verdict"]["network_ready"], true, "{rec}");
        let l = &rec["http_load"];
        let name = rec["pod"]["name"].as_str().unwrap();
        let want = if name == "load-node" {
            format!("{}:8080", t.control_a.ip)
        } else {
            format!("{}:80", t.vip)
        };
        assert_eq!(l["target"], want, "{l}");
        assert_eq!(l["ok"], 100, "{l}");
        assert_eq!(l["errors"], serde_json::json!({}), "{l}");
        assert!(l["error"].is_null(), "{l}");
        let p50 = l["latency_ms"]["p50"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 100.0, "{l}");
        assert!(l["latency_ms"]["max"].as_f64().unwrap() >= p50, "{l}");
        // One second of sending at 100/s: achieved close to it (the last answers may come
        // late on a loaded machine, never early).
        let achieved = l["achieved_rate"].as_f64().unwrap();
        assert!((60.0..=110.0).contains(&achieved), "{l}");
    }
    // The metrics count what the records say: every answered request in the latency
    // histogram, and as many as its p50 says within each decade bucket.
    let (_, text) = netready_testkit::scrape::get(&nr.metrics_url(), None);
    let value = |p: &str| netready_testkit::scrape::value(&text, p);
    let ok: f64 = recs
        .iter()
        .map(|r| r["http_load"]["ok"].as_f64().unwrap())
        .sum();
    assert_eq!(
        value("netready_http_load_requests_total{result=\"success\"}"),
        ok
    );
    assert_eq!(
        value("netready_http_load_latency_seconds_count"),
        ok,
        "{text}"
    );
    let within = |le: &str| {
        value(&format!(
            "netready_http_load_latency_seconds_bucket{{le=\"{le}\"}}"
        ))
    };
    assert_eq!(within("+Inf"), ok);
    // Both p50s are under 100 ms (asserted above): at least half the requests are in it.
    assert!(within("0.1") >= ok / 2.0, "{text}");
    for (id, _) in ids {
        teardown(&nr, &id).await;
    }
}
