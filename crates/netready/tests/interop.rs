//! Clients nobody here wrote, against the `netready serve` binary: grpc-go from Debian dialing
//! the socket path as kubelet v1.28 does (its `:authority` is the path), Python grpcio (the
//! path %-encoded), and HTTP/2 built with python-hyper's hpack and hyperframe to trip the
//! `:authority` adapter (Huffman, dynamic-table reuse, size updates, padding, CONTINUATION).

use std::path::Path;
use std::process::Command;

use k8s_cri::v1 as cri;
use netready_testkit::interop::{self, LineClient, Reply};
use netready_testkit::netready::Netready;
use netready_testkit::pod::PodSpec;
use netready_testkit::{images, Containerd};
use prost::Message;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_netready");
const RT: &str = "/runtime.v1.RuntimeService/";
const IMG: &str = "/runtime.v1.ImageService/";

fn call<M: Message>(c: &mut LineClient, method: &str, req: &M) -> Reply {
    c.call(method, &req.encode_to_vec())
        .unwrap_or_else(|e| panic!("{method}: {e:#}"))
}

fn ok<R: Message + Default>(r: Reply, what: &str) -> R {
    assert_eq!(r.code, Code::Ok, "{what}: {}", r.message);
    R::decode(&r.resp[..]).unwrap_or_else(|e| panic!("{what} reply: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_dialing_like_kubelet_runs_a_netperf_pod() {
    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::beside(&ctd, Path::new(BIN)).await.unwrap();
    let mut go = LineClient::go(nr.socket()).unwrap();
    let v: cri::VersionResponse = ok(
        call(
            &mut go,
            &format!("{RT}Version"),
            &cri::VersionRequest {
                version: "0.1.0".into(),
            },
        ),
        "Version",
    );
    assert_eq!(v.runtime_name, "netready", "{}", nr.log());
    let s: cri::StatusResponse = ok(
        call(
            &mut go,
            &format!("{RT}Status"),
            &cri::StatusRequest { verbose: false },
        ),
        "Status",
    );
    let conditions = s.status.unwrap_or_default().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status),
        "{conditions:?}"
    );
    let spec = PodSpec::netperf("perf", &ctd.scratch("pods"), ctd.cgroup_parent());
    let run: cri::RunPodSandboxResponse = ok(
        call(
            &mut go,
            &format!("{RT}RunPodSandbox"),
            &cri::RunPodSandboxRequest {
                config: Some(spec.sandbox_config(0)),
                runtime_handler: String::new(),
            },
        ),
        "RunPodSandbox",
    );
    let id = run.pod_sandbox_id;
    let st: cri::PodSandboxStatusResponse = ok(
        call(
            &mut go,
            &format!("{RT}PodSandboxStatus"),
            &cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            },
        ),
        "PodSandboxStatus",
    );
    let status = st.status.unwrap_or_default();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = status.network.unwrap_or_default().ip;
    assert!(ip.starts_with("10.89."), "pod IP {ip:?}");
    let list = |go: &mut LineClient| -> Vec<String> {
        let l: cri::ListPodSandboxResponse = ok(
            call(
                go,
                &format!("{RT}ListPodSandbox"),
                &cri::ListPodSandboxRequest::default(),
            ),
            "ListPodSandbox",
        );
        l.items.into_iter().map(|p| p.id).collect()
    };
    assert!(list(&mut go).contains(&id));
    for method in ["StopPodSandbox", "RemovePodSandbox"] {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        let r = call(&mut go, &format!("{RT}{method}"), &req);
        assert_eq!(r.code, Code::Ok, "{method}: {}", r.message);
    }
    assert!(!list(&mut go).contains(&id));
    assert_eq!(
        std::fs::read_dir(nr.netns_dir()).unwrap().count(),
        0,
        "netns left"
    );
}

/// kubelet v1.28's first calls at start-up, in order, as `traces/kubelet-1.28/startup.jsonl`
/// recorded them against containerd 1.6.
fn kubelet_startup() -> Vec<(String, Vec<u8>)> {
    let pause = cri::ImageSpec {
        image: images::PAUSE.into(),
        ..Default::default()
    };
    vec![
        (
            format!("{RT}Version"),
            cri::VersionRequest {
                version: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{IMG}ImageFsInfo"),
            cri::ImageFsInfoRequest {}.encode_to_vec(),
        ),
        (
            format!("{RT}Version"),
            cri::VersionRequest {
                version: "0.1.0".into(),
            }
            .encode_to_vec(),
        ),
        (
            format!("{RT}ListContainers"),
            cri::ListContainersRequest {
                filter: Some(Default::default()),
            }
            .encode_to_vec(),
        ),
        (
            format!("{IMG}ImageStatus"),
            cri::ImageStatusRequest {
                image: Some(pause),
                verbose: false,
            }
            .encode_to_vec(),
        ),
        (
            format!("{IMG}ListImages"),
            cri::ListImagesRequest::default().encode_to_vec(),
        ),
        (
            format!("{RT}ListPodSandbox"),
            cri::ListPodSandboxRequest::default().encode_to_vec(),
        ),
        (
            format!("{RT}Status"),
            cri::StatusRequest { verbose: false }.encode_to_vec(),
        ),
        (
            format!("{RT}ListContainerStats"),
            cri::ListContainerStatsRequest {
                filter: Some(Default::default()),
            }
            .encode_to_vec(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_startup_gets_containerds_codes_through_netready() {
    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::beside(&ctd, Path::new(BIN)).await.unwrap();
    let mut direct = LineClient::go(&ctd.socket()).unwrap();
    let mut through = LineClient::go(nr.socket()).unwrap();
    for (method, req) in kubelet_startup() {
        let a = direct.call(&method, &req).unwrap();
        let b = through.call(&method, &req).unwrap();
        assert_eq!(
            (a.code, b.code),
            (Code::Ok, Code::Ok),
            "{method}: containerd {:?} {:?}, netready {:?} {:?}",
            a.code,
            a.message,
            b.code,
            b.message
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_startup_succeeds_on_a_netperf_only_node() {
    let dir = tempfile::tempdir().unwrap();
    let nr = Netready::start(Path::new(BIN), dir.path(), Path::new(""), &[])
        .await
        .unwrap();
    let mut go = LineClient::go(nr.socket()).unwrap();
    for (method, req) in kubelet_startup() {
        let r = go.call(&method, &req).unwrap();
        assert_eq!(r.code, Code::Ok, "{method}: {}\n{}", r.message, nr.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sends_the_encoded_socket_path_and_is_served() {
    // What grpcio puts on the wire, seen by python-hyper's h2 on a socket of the test's own.
    let probe = Command::new(interop::python())
        .arg(interop::dir().join("grpcio_client.py"))
        .arg("--probe-authority")
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let authority = seen["authority"].as_str().unwrap_or_default();
    assert!(
        authority.contains("%2F"),
        "grpcio sent {seen}: not the encoded path this test is for"
    );

    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::beside(&ctd, Path::new(BIN)).await.unwrap();
    let mut py = LineClient::grpcio(nr.socket()).unwrap();
    let v: cri::VersionResponse = ok(
        call(
            &mut py,
            &format!("{RT}Version"),
            &cri::VersionRequest::default(),
        ),
        "Version",
    );
    assert_eq!(v.runtime_name, "netready");
    let _: cri::StatusResponse = ok(
        call(
            &mut py,
            &format!("{RT}Status"),
            &cri::StatusRequest::default(),
        ),
        "Status",
    );
    let _: cri::ListPodSandboxResponse = ok(
        call(
            &mut py,
            &format!("{RT}ListPodSandbox"),
            &cri::ListPodSandboxRequest::default(),
        ),
        "ListPodSandbox",
    );
    let _: cri::ImageFsInfoResponse = ok(
        call(
            &mut py,
            &format!("{IMG}ImageFsInfo"),
            &cri::ImageFsInfoRequest {},
        ),
        "ImageFsInfo",
    );
}

/// Which call a reply answers, from its content: a misrouted call shows here.
fn answered(path: &str, grpc_body: &[u8]) -> Result<(), String> {
    let msg = grpc_body.get(5..).ok_or("no gRPC message")?;
    let has = |needle: &[u8]| msg.windows(needle.len()).any(|w| w == needle);
    match path.rsplit('/').next().unwrap_or_default() {
        "Version" => match cri::VersionResponse::decode(msg) {
            Ok(v) if v.runtime_name == "netready" => Ok(()),
            other => Err(format!("not a Version reply: {other:?}")),
        },
        "Status" => match cri::StatusResponse::decode(msg) {
            Ok(s)
                if s.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "RuntimeReady")) =>
            {
                Ok(())
            }
            other => Err(format!("not a Status reply: {other:?}")),
        },
        "ListPodSandbox" if !has(b"netready") && !has(b"RuntimeReady") => {
            cri::ListPodSandboxResponse::decode(msg)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("unexpected reply for {other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_http2_is_answered_call_by_call() {
    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::beside(&ctd, Path::new(BIN)).await.unwrap();
    let out = Command::new(interop::python())
        .arg(interop::dir().join("h2_adversarial.py"))
        .arg(nr.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 16, "{lines:?}");
    for l in &lines {
        assert!(
            l.get("goaway").is_none(),
            "connection ended: {l}\n{}",
            nr.log()
        );
        let name = l["name"].as_str().unwrap();
        if name == "reset_by_h2" {
            // A connection-specific header: h2 resets that stream (PROTOCOL_ERROR)...
            assert_eq!(l["reset"], 1, "{l}");
            continue;
        }
        // ...and every other call, before and after it, is answered as itself.
        assert_eq!(l["grpc_status"], 0, "{l}");
        let body = interop::unhex(l["body"].as_str().unwrap()).unwrap();
        if let Err(e) = answered(l["path"].as_str().unwrap(), &body) {
            panic!("{name}: {e}");
        }
    }
}
