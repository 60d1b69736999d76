//! Lossless passthrough: what netready's proto does not know reaches the upstream runtime and
//! comes back byte for byte; unknown methods and error statuses pass through as containerd
//! gives them.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use k8s_cri::v1 as cri;
use netready_testkit::netready::Netready;
use netready_testkit::raw::{self, RecordingUpstream};
use netready_testkit::Containerd;
use prost::Message;

const BIN: &str = env!("CARGO_BIN_EXE_netready");
const RT: &str = "/runtime.v1.RuntimeService/";

/// Appends field 99 (varint 1), a field number no CRI message uses.
fn with_unknown_field(mut msg: Vec<u8>) -> Vec<u8> {
    msg.extend_from_slice(&[0x98, 0x06, 0x01]);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_methods_pass_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let status_req = with_unknown_field(
        cri::PodSandboxStatusRequest {
            pod_sandbox_id: "abc".into(),
            verbose: false,
        }
        .encode_to_vec(),
    );
    let status_resp = with_unknown_field(
        cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: "abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let fs_resp = with_unknown_field(cri::ImageFsInfoResponse::default().encode_to_vec());
    let unknown_req = Bytes::from_static(b"\x0a\x03abc\xa2\x06\x02hi");
    let unknown_resp = Bytes::from_static(b"\x12\x05hello\xa8\x1f\x07");
    // A list item carrying a field this proto does not know, inside the repeated entry.
    let item = with_unknown_field(
        cri::PodSandbox {
            id: "up-1".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let mut list_resp = Vec::new();
    prost::encoding::bytes::encode(1, &item, &mut list_resp);
    let events: Vec<Bytes> = (0..3)
        .map(|i| {
            cri::ContainerEventResponse {
                container_id: format!("c{i}"),
                ..Default::default()
            }
            .encode_to_vec()
            .into()
        })
        .collect();
    let script: HashMap<String, Vec<Bytes>> = [
        (
            format!("{RT}PodSandboxStatus"),
            vec![status_resp.clone().into()],
        ),
        (
            "/runtime.v1.ImageService/ImageFsInfo".into(),
            vec![fs_resp.clone().into()],
        ),
        (
            format!("{RT}UpdatePodSandboxResources"),
            vec![unknown_resp.clone()],
        ),
        (
            format!("{RT}ListPodSandbox"),
            vec![list_resp.clone().into()],
        ),
        (format!("{RT}GetContainerEvents"), events.clone()),
    ]
    .into();
    let up = RecordingUpstream::start(&dir.path().join("up.sock"), script)
        .await
        .unwrap();
    let nr = Netready::start(Path::new(BIN), dir.path(), up.socket(), &[])
        .await
        .unwrap();

    // A routed method (decoded to find its owner) still forwards the original bytes.
    let r = raw::call(nr.socket(), &format!("{RT}PodSandboxStatus"), &status_req)
        .await
        .unwrap();
    assert_eq!(r.code, 0, "{}", r.message);
    assert_eq!(r.messages, [Bytes::from(status_resp)]);
    // An unrouted known method.
    let fs_req = with_unknown_field(Vec::new());
    let r = raw::call(nr.socket(), "/runtime.v1.ImageService/ImageFsInfo", &fs_req)
        .await
        .unwrap();
    assert_eq!(r.messages, [Bytes::from(fs_resp)]);
    // A method this proto does not have (added to CRI in Kubernetes 1.33).
    let r = raw::call(
        nr.socket(),
        &format!("{RT}UpdatePodSandboxResources"),
        &unknown_req,
    )
    .await
    .unwrap();
    assert_eq!(r.code, 0);
    assert_eq!(r.messages, [unknown_resp]);
    // A merged list keeps upstream's entries as they were.
    let r = raw::call(nr.socket(), &format!("{RT}ListPodSandbox"), &[])
        .await
        .unwrap();
    assert_eq!(r.messages, [Bytes::from(list_resp)]);
    // A server stream streams through.
    let r = raw::call(nr.socket(), &format!("{RT}GetContainerEvents"), &[])
        .await
        .unwrap();
    assert_eq!(r.code, 0);
    assert_eq!(r.messages, events);

    let received = up.received();
    let got = |path: &str| {
        received
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("{path} never reached upstream"))
    };
    assert_eq!(
        got(&format!("{RT}PodSandboxStatus")),
        raw::frame(&status_req)
    );
    assert_eq!(
        got("/runtime.v1.ImageService/ImageFsInfo"),
        raw::frame(&fs_req)
    );
    assert_eq!(
        got(&format!("{RT}UpdatePodSandboxResources")),
        raw::frame(&unknown_req)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_unknown_methods_are_containerds() {
    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::start(Path::new(BIN), &ctd.scratch("netready"), &ctd.socket(), &[])
        .await
        .unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "/runtime.v1.RuntimeService/PodSandboxStatus",
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: "no-such-sandbox".into(),
                verbose: false,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ContainerStatus",
            cri::ContainerStatusRequest {
                container_id: "no-such-container".into(),
                verbose: false,
            }
            .encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/NoSuchMethod",
            b"\x0a\x01x".to_vec(),
        ),
    ];
    for (path, msg) in cases {
        let direct = raw::call(&ctd.socket(), path, &msg).await.unwrap();
        let via = raw::call(nr.socket(), path, &msg).await.unwrap();
        assert_ne!(direct.code, 0, "{path}: containerd must refuse");
        assert_eq!(
            (via.code, &via.message),
            (direct.code, &direct.message),
            "{path}"
        );
    }
}

/// A full id (64 hex digits, as kubelet sends) that nobody has.
const GONE: &str = "60e0000000000000000000000000000000000000000000000000000000000000";

/// Calls on `id`, which nobody has, as containerd 1.6 answers each.
fn unknown_id_calls(id: &str) -> Vec<(&'static str, Vec<u8>)> {
    let id = || id.to_owned();
    vec![
        (
            "StopPodSandbox",
            cri::StopPodSandboxRequest {
                pod_sandbox_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            "StopContainer",
            cri::StopContainerRequest {
                container_id: id(),
                timeout: 1,
            }
            .encode_to_vec(),
        ),
        (
            "RemovePodSandbox",
            cri::RemovePodSandboxRequest {
                pod_sandbox_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            "RemoveContainer",
            cri::RemoveContainerRequest { container_id: id() }.encode_to_vec(),
        ),
        (
            "PodSandboxStatus",
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: id(),
                verbose: false,
            }
            .encode_to_vec(),
        ),
        (
            "ContainerStatus",
            cri::ContainerStatusRequest {
                container_id: id(),
                verbose: false,
            }
            .encode_to_vec(),
        ),
        (
            "StartContainer",
            cri::StartContainerRequest { container_id: id() }.encode_to_vec(),
        ),
    ]
}

/// Starts netready in `dir` before `upstream` with `serve.idempotent_stop = false`.
async fn idempotent_stop_off(dir: &Path, upstream: &Path) -> Netready {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("netready.toml");
    std::fs::write(&config, "[serve]\nidempotent_stop = false\n").unwrap();
    Netready::start(
        Path::new(BIN),
        dir,
        upstream,
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_what_is_gone_succeeds_unless_turned_off() {
    let ctd = Containerd::start().await.unwrap();
    let on = Netready::start(Path::new(BIN), &ctd.scratch("on"), &ctd.socket(), &[])
        .await
        .unwrap();
    let off = idempotent_stop_off(&ctd.scratch("off"), &ctd.socket()).await;
    // A full id as kubelet sends it, and a short one as an operator types it (maybe a typo).
    for id in [GONE, "deadbeef"] {
        for (method, msg) in unknown_id_calls(id) {
            let path = format!("{RT}{method}");
            let direct = raw::call(&ctd.socket(), &path, &msg).await.unwrap();
            let via_on = raw::call(on.socket(), &path, &msg).await.unwrap();
            let via_off = raw::call(off.socket(), &path, &msg).await.unwrap();
            assert_eq!(
                (via_off.code, &via_off.message, &via_off.messages),
                (direct.code, &direct.message, &direct.messages),
                "{method} {id}: turned off, containerd's answer"
            );
            if id == GONE && matches!(method, "StopPodSandbox" | "StopContainer") {
                // The CRI contract's answer, where containerd 1.6 says NOT_FOUND.
                assert_eq!(direct.code, 5, "{method}: {}", direct.message);
                assert_eq!(via_on.code, 0, "{method}: {}", via_on.message);
                assert_eq!(via_on.messages, [Bytes::new()], "{method}");
            } else {
                // A short id keeps containerd's NOT_FOUND: `crictl stopp deadbeef` is no
                // success.
                assert_eq!(
                    (via_on.code, &via_on.message, &via_on.messages),
                    (direct.code, &direct.message, &direct.messages),
                    "{method} {id}: containerd's answer"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_what_is_gone_without_upstream_succeeds_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let none = Path::new("");
    let on = Netready::start(Path::new(BIN), &dir.path().join("on"), none, &[])
        .await
        .unwrap();
    let off = idempotent_stop_off(&dir.path().join("off"), none).await;
    for id in [GONE, "deadbeef"] {
        for (method, msg) in unknown_id_calls(id) {
            let path = format!("{RT}{method}");
            let via_on = raw::call(on.socket(), &path, &msg).await.unwrap();
            let via_off = raw::call(off.socket(), &path, &msg).await.unwrap();
            // Nobody to ask: UNAVAILABLE saying none is configured.
            assert_eq!(via_off.code, 14, "{method} {id}: {}", via_off.message);
            assert!(
                via_off.message.contains("no upstream"),
                "{}",
                via_off.message
            );
            if id == GONE && matches!(method, "StopPodSandbox" | "StopContainer") {
                assert_eq!(via_on.code, 0, "{method}: {}", via_on.message);
                assert_eq!(via_on.messages, [Bytes::new()], "{method}");
            } else {
                assert_eq!(
                    (via_on.code, &via_on.message),
                    (via_off.code, &via_off.message),
                    "{method} {id}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_up_to_16_mib_pass_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    // A 12 MiB reply to a merged list (netready reads it whole) and to a forwarded call.
    let big_item = cri::PodSandbox {
        id: "big".into(),
        annotations: [("blob".to_string(), "x".repeat(12 << 20))].into(),
        ..Default::default()
    };
    let big_list = cri::ListPodSandboxResponse {
        items: vec![big_item],
    }
    .encode_to_vec();
    let script: HashMap<String, Vec<Bytes>> = [
        (format!("{RT}ListPodSandbox"), vec![big_list.clone().into()]),
        (
            format!("{RT}RunPodSandbox"),
            vec![Bytes::from_static(b"\x0a\x02id")],
        ),
    ]
    .into();
    let up = RecordingUpstream::start(&dir.path().join("up.sock"), script)
        .await
        .unwrap();
    let nr = Netready::start(Path::new(BIN), dir.path(), up.socket(), &[])
        .await
        .unwrap();

    let r = raw::call(nr.socket(), &format!("{RT}ListPodSandbox"), &[])
        .await
        .unwrap();
    assert_eq!(r.code, 0, "{}", r.message);
    assert_eq!(r.messages, [Bytes::from(big_list)]);

    // A 12 MiB request on a routed method (decoded for its labels, then forwarded).
    let big_req = |size: usize| {
        cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                annotations: [("blob".to_string(), "y".repeat(size))].into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        }
        .encode_to_vec()
    };
    let req = big_req(12 << 20);
    let r = raw::call(nr.socket(), &format!("{RT}RunPodSandbox"), &req)
        .await
        .unwrap();
    assert_eq!(r.code, 0, "{}", r.message);
    let (_, body) = up
        .received()
        .into_iter()
        .find(|(p, _)| p.ends_with("RunPodSandbox"))
        .unwrap();
    assert_eq!(body, raw::frame(&req));

    // Past kubelet's 16 MiB limit: refused with RESOURCE_EXHAUSTED, never forwarded.
    let r = raw::call(
        nr.socket(),
        &format!("{RT}RunPodSandbox"),
        &big_req(17 << 20),
    )
    .await
    .unwrap();
    assert_eq!(r.code, 8, "{}", r.message);
    assert!(r.message.contains("larger than"), "{}", r.message);
    assert_eq!(
        up.received()
            .iter()
            .filter(|(p, _)| p.ends_with("RunPodSandbox"))
            .count(),
        1
    );
}
