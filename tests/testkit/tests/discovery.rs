//! Discovery against what a real kube-apiserver v1.28.4 sends (the recorded lists, watch
//! events, 410 and 403 of `tests/fixtures/apiserver-1.28`) and variations built from it.

use std::sync::Arc;
use std::time::Duration;

use netready_discovery::{Discovery, DiscoveryConfig, Snapshot};
use netready_testkit::fake_api::{self, Ep, FakeApi, Reply, Resource, Verb};

fn config(kubeconfig: std::path::PathBuf, node: &str) -> DiscoveryConfig {
    DiscoveryConfig {
        enabled: true,
        kubeconfig,
        node_name: node.into(),
        ..Default::default()
    }
}

/// Waits up to 20 s for a snapshot that satisfies `ok`.
async fn until(d: &Discovery, what: &str, ok: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let mut rx = d.subscribe();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let s = rx.borrow_and_update().clone();
            if ok(&s) {
                return s;
            }
            if rx.changed().await.is_err() {
                panic!("discovery stopped");
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("no snapshot with {what} within 20 s: {:?}", d.snapshot()))
}

fn ips(s: &Snapshot, node: &str) -> Vec<String> {
    s.endpoints
        .get(node)
        .map(|v| v.iter().map(|i| i.to_string()).collect())
        .unwrap_or_default()
}

/// The recorded watch lines, 5 ms apart (the real ones were seconds apart).
fn recorded_watch(name: &str) -> Reply {
    let lines = fake_api::recorded_events(name)
        .into_iter()
        .map(|e| {
            let mut l = serde_json::to_vec(&e).unwrap();
            l.push(b'\n');
            bytes::Bytes::from(l)
        })
        .collect();
    Reply::watch(lines, Duration::from_millis(5))
}

#[tokio::test]
async fn recorded_lists_and_watch_become_targets_with_one_watch_per_resource() {
    let api = FakeApi::start().await.unwrap();
    api.push(
        Resource::EndpointSlices,
        Verb::Watch,
        recorded_watch("eps-watch.http"),
    );
    api.push(
        Resource::Services,
        Verb::Watch,
        recorded_watch("svc-watch.http"),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::start(
        config(api.kubeconfig(dir.path(), "node1", "t1").unwrap(), "node1"),
        None,
    )
    .unwrap();
    let s = until(&d, "the listed endpoints", |s| s.synced).await;
    // The Service's ClusterIP and its port named `http`.
    let svc = s.service.clone().expect("service target");
    assert_eq!(
        (svc.ip.to_string(), svc.http_port),
        ("10.96.171.186".into(), Some(80))
    );
    // The end of the recorded watch: scaled to one pod, on node1; pods that were not ready or
    // terminating on the way never counted.
    let s = until(&d, "the watch's last state", |s| {
        ips(s, "node1") == ["10.244.1.2"] && !s.endpoints.contains_key("node2")
    })
    .await;
    assert_eq!(s.other_node_pods("node1"), 0);
    assert_eq!(s.other_node_pods("node2"), 1);
    let reqs = api.requests();
    for r in [Resource::Services, Resource::EndpointSlices] {
        let lists: Vec<_> = reqs
            .iter()
            .filter(|q| q.resource == r && q.verb == Verb::List)
            .collect();
        assert_eq!(
            lists.len(),
            1,
            "one list of {r:?}, then watches only: {reqs:#?}"
        );
        assert!(
            lists[0].query.contains("resourceVersion=0"),
            "served from the watch cache: {}",
            lists[0].query
        );
        let watch = reqs
            .iter()
            .find(|q| q.resource == r && q.verb == Verb::Watch)
            .unwrap();
        assert!(
            watch.query.contains("allowWatchBookmarks=true"),
            "{}",
            watch.query
        );
        assert!(
            watch.authorization == "Bearer t1",
            "{}",
            watch.authorization
        );
    }
    assert!(reqs.iter().any(|q| q
        .query
        .contains("fieldSelector=metadata.name=netperf-control")));
    assert!(reqs.iter().any(|q| q
        .query
        .contains("labelSelector=kubernetes.io/service-name=netperf-control")));
}

#[tokio::test]
async fn an_expired_watch_relists() {
    let api = FakeApi::start().await.unwrap();
    // The watch from the first list gets the watch cache's 410 ERROR; the relist sees a moved
    // control pod.
    api.push(
        Resource::EndpointSlices,
        Verb::Watch,
        Reply::watch(vec![fake_api::expired_event()], Duration::from_millis(50)),
    );
    api.push(
        Resource::EndpointSlices,
        Verb::List,
        Reply::recorded("eps-list.http"),
    );
    let moved = fake_api::slice_with(
        &[
            Ep::ready("10.244.1.2", "node1"),
            Ep::ready("10.244.3.7", "node3"),
        ],
        600,
    );
    api.push(
        Resource::EndpointSlices,
        Verb::List,
        Reply::ok(fake_api::slice_list(vec![moved], 600)),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::start(
        config(api.kubeconfig(dir.path(), "node1", "t").unwrap(), "node1"),
        None,
    )
    .unwrap();
    let s = until(&d, "the relisted pod on node3", |s| {
        ips(s, "node3") == ["10.244.3.7"]
    })
    .await;
    assert!(
        !s.endpoints.contains_key("node2"),
        "the relist replaced the old state: {s:?}"
    );
    let lists = api
        .requests()
        .iter()
        .filter(|q| q.resource == Resource::EndpointSlices && q.verb == Verb::List)
        .count();
    assert_eq!(lists, 2);
    assert!(
        d.snapshot().unreachable_since.is_none(),
        "a 410 is a relist, not an outage"
    );
}

#[tokio::test]
async fn forbidden_names_the_permission_and_is_retried() {
    let api = FakeApi::start().await.unwrap();
    api.push(
        Resource::EndpointSlices,
        Verb::List,
        Reply::recorded("eps-forbidden.http"),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::start(
        config(api.kubeconfig(dir.path(), "node1", "t").unwrap(), "node1"),
        None,
    )
    .unwrap();
    let s = until(&d, "the refusal", |s| s.last_error.is_some()).await;
    let e = s.last_error.clone().unwrap();
    assert!(!s.synced);
    assert!(
        e.contains("endpointslices") && e.contains("system:nodes") && e.contains("cannot list"),
        "{e}"
    );
    // Granted meanwhile: the retry (backoff with jitter, under 2 s the first time) syncs.
    until(&d, "a sync after the retry", |s| {
        s.synced && s.unreachable_since.is_none()
    })
    .await;
}

#[tokio::test]
async fn api_going_away_keeps_last_targets_and_coming_back_clears_it() {
    let mut api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::start(
        config(api.kubeconfig(dir.path(), "node1", "t").unwrap(), "node1"),
        None,
    )
    .unwrap();
    until(&d, "sync", |s| s.synced).await;
    api.stop();
    let s = until(&d, "unreachable", |s| s.unreachable_since.is_some()).await;
    assert_eq!(ips(&s, "node2"), ["10.244.2.2"], "last known targets kept");
    assert!(s.service.is_some());
    // Back, with nothing changed meanwhile (no watch event to say so): the reconnection
    // lists again, from the watch cache, and that clears the outage.
    let lists_before = api
        .requests()
        .iter()
        .filter(|q| q.resource == Resource::EndpointSlices && q.verb == Verb::List)
        .count();
    api.restart().await.unwrap();
    let s = until(&d, "the API answering again", |s| {
        s.unreachable_since.is_none()
    })
    .await;
    assert!(s.synced && s.last_error.is_none());
    assert_eq!(ips(&s, "node2"), ["10.244.2.2"]);
    let lists_after = api
        .requests()
        .iter()
        .filter(|q| q.resource == Resource::EndpointSlices && q.verb == Verb::List)
        .count();
    assert!(lists_after > lists_before, "relisted on reconnect");
}

#[tokio::test]
async fn unreachable_at_start_is_not_synced() {
    let mut api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), "node1", "t").unwrap();
    api.stop();
    let d = Discovery::start(config(kubeconfig, "node1"), None).unwrap();
    let s = until(&d, "an error", |s| s.last_error.is_some()).await;
    assert!(!s.synced && s.unreachable_since.is_some() && s.endpoints.is_empty());
}

#[tokio::test]
async fn slow_and_dropped_watches_still_converge() {
    let api = FakeApi::start().await.unwrap();
    // A slow first list, then a watch the server drops after one event: kube-rs watches
    // again from the last resourceVersion it saw.
    api.push(
        Resource::EndpointSlices,
        Verb::List,
        Reply::Body {
            status: 200,
            body: fake_api::recorded("eps-list.http").body,
            delay: Duration::from_millis(1500),
        },
    );
    let one = fake_api::slice_with(
        &[
            Ep::ready("10.244.1.2", "node1"),
            Ep {
                ip: "10.244.5.5".into(),
                node: None,
                ready: None,
                terminating: false,
            },
        ],
        800,
    );
    api.push(
        Resource::EndpointSlices,
        Verb::Watch,
        Reply::Watch {
            lines: vec![(Duration::from_millis(10), fake_api::event("MODIFIED", one))],
            close: true,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::start(
        config(api.kubeconfig(dir.path(), "node1", "t").unwrap(), "node1"),
        None,
    )
    .unwrap();
    let s = until(&d, "the endpoint with no node", |s| {
        ips(s, "") == ["10.244.5.5"]
    })
    .await;
    assert_eq!(
        s.other_node_pods("node1"),
        1,
        "no nodeName is another node: {s:?}"
    );
    let watches = || {
        api.requests()
            .iter()
            .filter(|q| q.resource == Resource::EndpointSlices && q.verb == Verb::Watch)
            .count()
    };
    for _ in 0..100 {
        if watches() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        watches() >= 2,
        "the dropped watch was not resumed: {:#?}",
        api.requests()
    );
    let lists = api
        .requests()
        .iter()
        .filter(|q| q.resource == Resource::EndpointSlices && q.verb == Verb::List)
        .count();
    assert_eq!(lists, 1, "a watch that ends is resumed, not relisted");
}

#[tokio::test]
async fn a_rotated_credential_makes_a_new_client() {
    // kubelet rotates its client certificate by swapping the file the kubeconfig names; here
    // the credential is a token file, the mechanism the same: the files are re-read.
    let api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), "node1", "old-token").unwrap();
    let d = Discovery::start_checking_credentials(
        config(kubeconfig, "node1"),
        None,
        Duration::from_millis(100),
    )
    .unwrap();
    until(&d, "sync", |s| s.synced).await;
    let replacement = dir.path().join("token.new");
    std::fs::write(&replacement, "new-token").unwrap();
    std::fs::rename(&replacement, dir.path().join("token")).unwrap();
    let seen = |token: &str| {
        api.requests()
            .iter()
            .any(|r| r.authorization == format!("Bearer {token}"))
    };
    for _ in 0..100 {
        if seen("new-token") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen("old-token") && seen("new-token"),
        "{:#?}",
        api.requests()
    );
    assert!(d.snapshot().synced, "targets kept across the reconnect");
}
