//! `netready serve` as a process: its own answers, the socket, signals, bad config, and an
//! upstream that comes and goes.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use netready_testkit::netready::Netready;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::{cri as client, Containerd};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

fn condition<'a>(s: &'a cri::StatusResponse, kind: &str) -> &'a cri::RuntimeCondition {
    s.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_status_name_netready_and_containerd() {
    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::start(Path::new(BIN), &ctd.scratch("nr"), &ctd.socket(), &[])
        .await
        .unwrap();
    let (mut direct, _) = client::connect(&ctd.socket()).await.unwrap();
    let (mut via, _) = client::connect(nr.socket()).await.unwrap();
    // kubelet's first call (startup trace): Version with an empty version.
    let req = cri::VersionRequest { version: "".into() };
    let up = direct.version(req.clone()).await.unwrap().into_inner();
    let v = via.version(req).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "netready");
    assert!(
        v.runtime_version.contains(env!("CARGO_PKG_VERSION")),
        "{v:?}"
    );
    assert!(
        v.runtime_version
            .contains(&format!("{} {}", up.runtime_name, up.runtime_version)),
        "{v:?}"
    );
    assert_eq!(
        (v.version, v.runtime_api_version),
        (up.version, up.runtime_api_version)
    );

    let up = direct
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let s = via
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    for kind in ["RuntimeReady", "NetworkReady"] {
        assert_eq!(
            condition(&s, kind),
            condition(&up, kind),
            "{kind} as containerd reports it"
        );
    }
    assert!(condition(&s, "RuntimeReady").status);
    let own = condition(&s, "NetreadyReady");
    assert!(own.status);
    assert!(
        own.message.contains(&ctd.socket().display().to_string()),
        "{own:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_unavailable_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // netready points at a path that does not exist yet; containerd appears behind it later.
    let upstream = dir.path().join("upstream.sock");
    let nr = Netready::start(Path::new(BIN), dir.path(), &upstream, &[])
        .await
        .unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();

    let err = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains(&upstream.display().to_string()),
        "{}",
        err.message()
    );
    let err = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    // Status answers, and says why the runtime is not ready.
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let ready = condition(&s, "RuntimeReady");
    assert!(!ready.status);
    assert_eq!(ready.reason, "UpstreamUnavailable");
    assert!(
        ready.message.contains(&upstream.display().to_string()),
        "{}",
        ready.message
    );
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.runtime_version.contains("upstream unreachable"), "{v:?}");

    // containerd comes up: the same connection to netready now reaches it.
    let ctd = Containerd::start().await.unwrap();
    std::os::unix::fs::symlink(ctd.socket(), &upstream).unwrap();
    let mut recovered = None;
    for _ in 0..100 {
        match rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
        {
            Ok(r) => {
                recovered = Some(r.into_inner());
                break;
            }
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered.is_some(),
        "netready did not reconnect:\n{}",
        nr.log()
    );
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status);

    // And goes away again: calls fail cleanly, netready keeps serving.
    drop(ctd);
    std::fs::remove_file(&upstream).unwrap();
    let err = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .is_ok());
    assert!(!nr.log().contains("panicked"), "{}", nr.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_created_replaced_refused_and_removed() {
    netready_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    // A stale socket file (its server died) is replaced.
    std::fs::create_dir_all(&nested).unwrap();
    drop(std::os::unix::net::UnixListener::bind(nested.join("netready.sock")).unwrap());
    let mut nr = Netready::start(Path::new(BIN), &nested, &dir.path().join("none.sock"), &[])
        .await
        .unwrap();
    let meta = std::fs::metadata(nr.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // A live one is refused, with the path in the error, and the first server keeps it.
    let out = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(nr.socket())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") && err.contains(&nr.socket().display().to_string()),
        "{err}"
    );
    assert!(tokio::net::UnixStream::connect(nr.socket()).await.is_ok());

    // SIGTERM: a clean exit that removes the socket.
    let socket = nr.socket().to_owned();
    let status = nr.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists());

    // A regular file in the way is never deleted.
    std::fs::write(&socket, "keep me").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a unix socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "keep me");
}

#[test]
fn invalid_config_names_file_key_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netready.toml");
    std::fs::write(&cfg, "[serve]\nshutdown_grace = 10\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cfg.display().to_string()), "{err}");
    assert!(err.contains("serve.shutdown_grace"), "{err}");
    assert!(err.contains("integer"), "{err}");

    let out = Command::new(BIN)
        .args(["serve", "--print-default-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("socket = \"/run/netready/netready.sock\""),
        "{text}"
    );
    assert!(text.contains("\nidempotent_stop = true\n"), "{text}");
    // The printed default is a valid config file.
    std::fs::write(&cfg, &text).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--socket", "/dev/null/x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("config"),
        "the default config must parse: {err}"
    );
}

/// containerd killed and started again while netperf pods churn through netready: the netperf
/// pods never fail (they need no containerd), passthrough calls are `UNAVAILABLE` while it is
/// down and work again by themselves once it is back, on the same connection to netready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_down_and_back_during_netperf_churn() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut ctd = Containerd::start().await.unwrap();
    let nr = Netready::beside(&ctd, Path::new(BIN)).await.unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let logs = ctd.scratch("pods");
    let churn: Vec<_> = (0..4)
        .map(|w| {
            let (mut rt, stop, done, failed, logs) = (
                rt.clone(),
                stop.clone(),
                done.clone(),
                failed.clone(),
                logs.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                let mut errors = Vec::new();
                while !stop.is_cancelled() {
                    n += 1;
                    let mut pod = PodSpec::new(&format!("churn-{w}-{n}"), &logs, "");
                    pod.labels.insert("netperf".into(), "true".into());
                    let lifecycle = async {
                        let id = pod::run_sandbox(&mut rt, &pod).await?;
                        pod::stop_remove(&mut rt, &id).await
                    };
                    match lifecycle.await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push(e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    let passthrough = |mut rt: RuntimeServiceClient<tonic::transport::Channel>| async move {
        rt.list_containers(cri::ListContainersRequest::default())
            .await
            .map(|_| ())
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    passthrough(rt.clone()).await.unwrap();

    ctd.kill();
    let before = done.load(Ordering::Relaxed);
    let err = passthrough(rt.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let err = passthrough(rt.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let while_down = done.load(Ordering::Relaxed) - before;
    assert!(while_down > 0, "netperf pods stopped with containerd");

    ctd.start_again().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = passthrough(rt.clone()).await {
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        assert!(
            std::time::Instant::now() < deadline,
            "passthrough never came back:\n{}",
            nr.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let mut errors = Vec::new();
    for c in churn {
        errors.extend(c.await.unwrap());
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{errors:#?}\n{}",
        nr.log()
    );
    eprintln!(
        "netperf lifecycles: {} in all, {while_down} while containerd was down",
        done.load(Ordering::Relaxed)
    );
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&s, "RuntimeReady").status);
    assert_eq!(
        std::fs::read_dir(nr.netns_dir()).unwrap().count(),
        0,
        "netns left"
    );
}
