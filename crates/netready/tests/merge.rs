//! The routing seam and merged lists: a local runtime (the recording fake that netperf pods'
//! runtime will replace) beside a real containerd, behind one netready router.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use netready_cri::server::{self, ListenOptions};
use netready_cri::test_util::FakeLocal;
use netready_cri::{Router, Upstream};
use netready_testkit::pod::PodSpec;
use netready_testkit::{cri as client, Containerd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_merge_both_sides_and_ids_route_to_their_owner() {
    let ctd = Containerd::start().await.unwrap();
    let local = Arc::new(FakeLocal::default());
    let opts = ListenOptions {
        socket: ctd.scratch("nr").join("netready.sock"),
        mode: 0o660,
        shutdown_grace: Duration::from_secs(1),
    };
    let listener = server::bind(&opts).await.unwrap();
    let router = Router::new(
        Upstream::new(&ctd.socket(), Duration::from_secs(1)),
        local.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve_opts = opts.clone();
    let served = tokio::spawn(async move {
        server::serve(listener, &serve_opts, router, None, async {
            let _ = stopped.await;
        })
        .await
    });
    let (mut rt, _) = client::connect(&opts.socket).await.unwrap();

    // A real pod in containerd, through netready.
    let logs = ctd.scratch("pods");
    let real = PodSpec::new("real", &logs, ctd.cgroup_parent());
    let real_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(real.sandbox_config(0)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    // A netperf pod: the label sends it to the local runtime.
    let mut netperf = PodSpec::new("perf", &logs, ctd.cgroup_parent());
    netperf.labels.insert("netperf".into(), "true".into());
    let perf_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(netperf.sandbox_config(0)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert!(perf_id.starts_with("fake-"), "{perf_id}");
    assert_eq!(local.calls(), ["RunPodSandbox"]);

    // Each id's calls go to its owner.
    let s = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: perf_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status.unwrap().metadata.unwrap().name, "perf");
    let s = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: real_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let s = s.status.unwrap();
    assert_eq!(s.metadata.unwrap().name, "real");
    assert!(
        !s.network.unwrap().ip.is_empty(),
        "containerd's pod has a bridge IP"
    );
    assert_eq!(local.calls(), ["RunPodSandbox", "PodSandboxStatus"]);

    // The relist sees both; filters apply on both sides.
    let ids = |items: Vec<cri::PodSandbox>| {
        let mut v: Vec<_> = items.into_iter().map(|s| s.id).collect();
        v.sort();
        v
    };
    let all = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut both = vec![real_id.clone(), perf_id.clone()];
    both.sort();
    assert_eq!(ids(all.items), both);
    let by_uid = |uid: &str| cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
            ..Default::default()
        }),
    };
    let only_perf = rt
        .list_pod_sandbox(by_uid(&netperf.uid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(only_perf.items), std::slice::from_ref(&perf_id));
    let only_real = rt
        .list_pod_sandbox(by_uid(&real.uid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(only_real.items), std::slice::from_ref(&real_id));
    let ready = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(ready.items), both);

    // Containers and stats merge the same way.
    local.insert_container(cri::Container {
        id: "fake-c".into(),
        pod_sandbox_id: perf_id.clone(),
        state: cri::ContainerState::ContainerRunning as i32,
        ..Default::default()
    });
    let cs = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cs.containers
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["fake-c"]
    );
    let cs = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: real_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cs.containers.is_empty());
    let st = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let stat_ids: Vec<_> = st
        .stats
        .iter()
        .filter_map(|s| s.attributes.as_ref())
        .map(|a| a.id.as_str())
        .collect();
    assert!(
        stat_ids.contains(&perf_id.as_str()) && stat_ids.contains(&real_id.as_str()),
        "{stat_ids:?}"
    );
    let cst = rt
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cst.stats.len(), 1);

    // Tear down, each side its own.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: real_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: real_id.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: perf_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: perf_id.clone(),
    })
    .await
    .unwrap();
    let all = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.items.is_empty(), "{:?}", all.items);

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    assert!(!opts.socket.exists(), "socket removed at shutdown");
}
