//! Discovery end to end: two routed nodes with real plugins and control pods, where netready
//! on node-a knows other nodes' control pods and the control Service only through a fake API
//! server that serves the recorded v1.28.4 objects with this topology's addresses.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use netready_cri::NetperfConfig;
use netready_testkit::cri as client;
use netready_testkit::fake_api::{self, Ep, FakeApi, Reply, Resource, Verb};
use netready_testkit::node::InProcess;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::topology::TwoNodes;

/// node-a's netready: its own control pod from the config (same-node targets are local), no
/// targets file, discovery against `api`.
fn config(t: &TwoNodes, kubeconfig: &Path) -> NetperfConfig {
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required = ["same_node_pod", "other_node_pods", "service_http"]
        .map(String::from)
        .to_vec();
    cfg.checks.optional = Vec::new();
    cfg.checks.deadline = Duration::from_secs(3);
    cfg.checks.probe_timeout = Duration::from_millis(300);
    cfg.checks.retry_interval = Duration::from_millis(50);
    cfg.targets.same_node = vec![t.control_a.ip];
    cfg.discovery.enabled = true;
    cfg.discovery.kubeconfig = kubeconfig.to_owned();
    cfg.discovery.node_name = "node-a".into();
    cfg
}

/// The recorded objects with this topology's control pods and VIP.
fn serve_topology(api: &FakeApi, t: &TwoNodes) {
    let slice = fake_api::slice_with(
        &[
            Ep::ready(&t.control_a.ip.to_string(), "node-a"),
            Ep::ready(&t.control_b.ip.to_string(), "node-b"),
        ],
        500,
    );
    api.fallback(
        Resource::EndpointSlices,
        Verb::List,
        Reply::ok(fake_api::slice_list(vec![slice], 500)),
    );
    api.fallback(
        Resource::Services,
        Verb::List,
        Reply::ok(fake_api::service_list(&t.vip.to_string(), 500)),
    );
}

async fn pod_record(
    nr: &InProcess,
    t: &TwoNodes,
    name: &str,
) -> (String, netready_cri::netperf::state::SandboxRecord) {
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let mut pod = PodSpec::new(name, &t.a.path("pods"), "");
    pod.labels.insert("netperf".into(), "true".into());
    let id = pod::run_sandbox(&mut rt, &pod).await.unwrap();
    for _ in 0..400 {
        let rec = nr.runtime().sandbox(&id).unwrap();
        if rec.readiness.as_ref().is_some_and(|r| r.finished.is_some()) {
            pod::stop_remove(&mut rt, &id).await.unwrap();
            return (id, rec);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("checks of {id} did not finish");
}

fn check<'a>(
    rec: &'a netready_cri::netperf::state::SandboxRecord,
    kind: &str,
) -> &'a netready_probe::plan::CheckOutcome {
    rec.readiness
        .as_ref()
        .unwrap()
        .checks
        .iter()
        .find(|c| c.check.as_str() == kind)
        .unwrap_or_else(|| panic!("no {kind} check"))
}

fn ready(rec: &netready_cri::netperf::state::SandboxRecord) -> bool {
    rec.readiness.as_ref().is_some_and(|r| r.ready_at.is_some())
}

async fn discovery_condition(nr: &InProcess) -> cri::RuntimeCondition {
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    s.status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetreadyDiscoverySynced")
        .expect("a discovery condition in Status")
}

async fn wait_synced(nr: &InProcess, ok: impl Fn(&netready_discovery::Snapshot) -> bool) {
    let d = nr.runtime().discovery().expect("discovery on");
    let mut rx = d.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !ok(&rx.borrow_and_update()) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("discovery never reached the state: {:?}", d.snapshot()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_sync_checks_fail_named_and_after_it_targets_come_from_the_api() {
    let t = TwoNodes::start(None).await.unwrap();
    let mut api = FakeApi::start_in(t.a.netns()).await.unwrap();
    serve_topology(&api, &t);
    let kubeconfig = api.kubeconfig(&t.a.path(""), "node-a", "token-a").unwrap();
    api.stop();
    let nr =
        InProcess::start(&t.a, config(&t, &kubeconfig), &t.a.path("no-upstream.sock")).unwrap();

    // The API is unreachable: CRI is served, Status says discovery is not synced, and checks
    // that lack targets fail with a reason that says so.
    let cond = discovery_condition(&nr).await;
    assert!(
        !cond.status && cond.reason == "DiscoveryNotSynced",
        "{cond:?}"
    );
    let (_, rec) = pod_record(&nr, &t, "early").await;
    assert!(!ready(&rec));
    assert_eq!(
        check(&rec, "other_node_pods").skipped.as_deref(),
        Some("no_target:discovery_not_synced")
    );
    assert_eq!(
        check(&rec, "service_http").skipped.as_deref(),
        Some("no_target:discovery_not_synced")
    );
    assert!(
        check(&rec, "same_node_pod").passed(),
        "same node needs no API"
    );

    // The API comes back: the pods that start afterwards are network-ready, with other-node
    // and service targets the API gave.
    api.restart_in(t.a.netns()).await.unwrap();
    wait_synced(&nr, |s| s.synced && s.unreachable_since.is_none()).await;
    let cond = discovery_condition(&nr).await;
    assert!(cond.status && cond.reason == "Synced", "{cond:?}");
    let (_, rec) = pod_record(&nr, &t, "late").await;
    assert!(ready(&rec), "{:#?}", rec.readiness);
    let other = check(&rec, "other_node_pods");
    assert_eq!(other.targets, [format!("node-b/{}", t.control_b.ip)]);
    assert_eq!(other.origins, ["api"]);
    let svc = check(&rec, "service_http");
    assert!(
        svc.targets
            .iter()
            .all(|s| s.starts_with(&format!("{}:80", t.vip))),
        "{:?}",
        svc.targets
    );
    assert!(svc.origins.iter().all(|o| o == "api"), "{:?}", svc.origins);
    assert_eq!(check(&rec, "same_node_pod").origins, ["config"]);
    // And Prometheus sees it.
    let (_, text) = netready_testkit::scrape::get(&nr.metrics_url(), None);
    use netready_testkit::scrape::value;
    assert_eq!(value(&text, "netready_discovery_synced "), 1.0);
    assert_eq!(
        value(
            &text,
            "netready_discovery_targets{kind=\"other_node_pod\"} "
        ),
        1.0
    );
    assert_eq!(
        value(&text, "netready_discovery_targets{kind=\"service\"} "),
        1.0
    );
    assert!(
        value(
            &text,
            "netready_discovery_events_total{resource=\"endpointslice\",type=\"init_done\"} "
        ) >= 1.0
    );
    assert_eq!(
        value(
            &text,
            "netready_discovery_unreachable_since_timestamp_seconds "
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_pod_that_moves_changes_the_next_pods_targets() {
    let t = TwoNodes::start(None).await.unwrap();
    let mut api = FakeApi::start_in(t.a.netns()).await.unwrap();
    serve_topology(&api, &t);
    // After the list, the watch moves node-b's control pod: first it terminates (no other-node
    // control pod left), then it is back, ready.
    let (a, b) = (t.control_a.ip.to_string(), t.control_b.ip.to_string());
    let gone = fake_api::slice_with(
        &[
            Ep::ready(&a, "node-a"),
            Ep {
                ip: b.clone(),
                node: Some("node-b".into()),
                ready: Some(false),
                terminating: true,
            },
        ],
        501,
    );
    let back = fake_api::slice_with(&[Ep::ready(&a, "node-a"), Ep::ready(&b, "node-b")], 502);
    let (tx_gone, tx_back) = (
        fake_api::event("MODIFIED", gone),
        fake_api::event("MODIFIED", back),
    );
    api.push(
        Resource::EndpointSlices,
        Verb::Watch,
        Reply::Watch {
            lines: vec![(Duration::from_millis(300), tx_gone)],
            close: false,
        },
    );
    let kubeconfig = api.kubeconfig(&t.a.path(""), "node-a", "token-a").unwrap();
    let nr =
        InProcess::start(&t.a, config(&t, &kubeconfig), &t.a.path("no-upstream.sock")).unwrap();

    wait_synced(&nr, |s| s.synced && s.other_node_pods("node-a") == 0).await;
    let (_, rec) = pod_record(&nr, &t, "alone").await;
    assert!(!ready(&rec));
    assert_eq!(
        check(&rec, "other_node_pods").skipped.as_deref(),
        Some("no other-node control pod")
    );

    // The watch ends (the server's timeout); the next watch brings the pod back.
    api.push(
        Resource::EndpointSlices,
        Verb::Watch,
        Reply::Watch {
            lines: vec![(Duration::from_millis(10), tx_back)],
            close: false,
        },
    );
    api.stop();
    api.restart_in(t.a.netns()).await.unwrap();
    wait_synced(&nr, |s| s.other_node_pods("node-a") == 1).await;
    let (_, rec) = pod_record(&nr, &t, "paired").await;
    assert!(ready(&rec), "{:#?}", rec.readiness);

    // The API goes away: the last known targets still serve the next pod.
    api.stop();
    wait_synced(&nr, |s| s.unreachable_since.is_some()).await;
    let cond = discovery_condition(&nr).await;
    assert!(cond.status && cond.reason == "APIUnreachable", "{cond:?}");
    let (_, rec) = pod_record(&nr, &t, "cached").await;
    assert!(ready(&rec), "{:#?}", rec.readiness);
}
