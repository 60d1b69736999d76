//! `netready serve` with no upstream runtime (`--upstream ""`, `--no-upstream`): the image
//! service a kubelet and crictl need, and ids typed truncated, as operators type them.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use netready_testkit::cri as client;
use netready_testkit::netready::Netready;
use netready_testkit::node::TestNode;
use netready_testkit::pod::{self, PodSpec, Rt};
use netready_testkit::raw;

const BIN: &str = env!("CARGO_BIN_EXE_netready");

type Img = ImageServiceClient<tonic::transport::Channel>;

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

/// A netperf pod that needs no reachability target, its image one nobody can pull.
fn netperf_pod(node: &TestNode, name: &str) -> PodSpec {
    let mut spec = PodSpec::netperf(name, &node.path("pods"), "");
    spec.image = "registry.invalid/netperf/pause:never-pulled".into();
    spec
}

fn image(name: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: name.into(),
        ..Default::default()
    })
}

/// ImageStatus of `name`: the image, `None` when it is not there.
async fn image_status(img: &mut Img, name: &str) -> Option<cri::Image> {
    img.image_status(cri::ImageStatusRequest {
        image: image(name),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .image
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
async fn image_service_of_a_netperf_only_node() {
    let node = TestNode::new().unwrap();
    // The empty value on the command line, as the README shows it.
    let nr = netperf_only(&node, "10.91.0.0/24", &["--upstream", ""]).await;
    let (mut rt, mut img) = client::connect(nr.socket()).await.unwrap();
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(netperf_only_condition(&s), "{s:?}\n{}", nr.log());

    // kubelet ≥ 1.30 and crictl validate the image service with ImageFsInfo.
    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()))
        .into_inner();
    let [usage] = fs.image_filesystems.as_slice() else {
        panic!("one image filesystem: {fs:?}");
    };
    assert_eq!(usage.used_bytes.as_ref().unwrap().value, 0);
    assert_eq!(usage.inodes_used.as_ref().unwrap().value, 0);
    assert!(usage.timestamp > 0);
    let mountpoint = &usage.fs_id.as_ref().unwrap().mountpoint;
    assert!(Path::new(mountpoint).is_dir(), "{mountpoint}");

    // An image nobody pulled: OK with no image, which is what makes kubelet pull.
    assert_eq!(image_status(&mut img, "busybox:1.36").await, None);
    assert!(img
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .is_empty());

    // crictl pull: no pod config, and no one else to pull it.
    let pulled = img
        .pull_image(cri::PullImageRequest {
            image: image("busybox:1.36"),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    for by in ["busybox:1.36", pulled.as_str()] {
        let got = image_status(&mut img, by)
            .await
            .unwrap_or_else(|| panic!("ImageStatus by {by}"));
        assert_eq!(got.id, pulled);
        assert_eq!(got.repo_tags, ["busybox:1.36"]);
    }

    // A netperf pod as kubelet runs it: ImageStatus finds nothing, PullImage (with the pod's
    // config) "pulls" it, and then the image is listed.
    let spec = netperf_pod(&node, "perf");
    let (o, t) = pod::lifecycle(&mut rt, &mut img, &spec)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", nr.log()));
    assert!(t.steps.iter().any(|(s, _)| *s == "PullImage"), "{t:?}");
    assert!(o.image_id_is_digest && o.removed, "{o:?}");
    let listed = img
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    let mut tags: Vec<_> = listed.iter().flat_map(|i| i.repo_tags.clone()).collect();
    tags.sort();
    assert_eq!(tags, ["busybox:1.36", spec.image.as_str()]);
    let filtered = img
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: image(&spec.image),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].repo_tags, [spec.image.as_str()]);

    // kubelet's image GC removes by id; removing again is no error.
    for _ in 0..2 {
        img.remove_image(cri::RemoveImageRequest {
            image: image(&pulled),
        })
        .await
        .unwrap();
    }
    assert_eq!(image_status(&mut img, "busybox:1.36").await, None);
    assert_eq!(
        img.list_images(cri::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .len(),
        1
    );
    assert!(!nr.log().contains("panicked"), "{}", nr.log());
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
        // What a runtime without the method answers: kubelet ≥ 1.31 asks RuntimeConfig for
        // the cgroup driver and falls back on UNIMPLEMENTED only.
        for method in ["RuntimeConfig", "UpdatePodSandboxResources"] {
            let r = raw::call(
                nr.socket(),
                &format!("/runtime.v1.RuntimeService/{method}"),
                &[],
            )
            .await
            .unwrap();
            assert_eq!(r.code, tonic::Code::Unimplemented as i32, "{method}: {r:?}");
            assert_eq!(
                r.message,
                format!("unknown method {method} for service runtime.v1.RuntimeService")
            );
        }
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

async fn sandbox_status(rt: &mut Rt, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .map(|r| r.into_inner().status.unwrap())
}

async fn container_status(rt: &mut Rt, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .map(|r| r.into_inner().status.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_ids_name_netperf_pods() {
    let node = TestNode::new().unwrap();
    let nr = netperf_only(&node, "10.92.0.0/24", &["--no-upstream"]).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(netperf_only_condition(&s), "{s:?}");

    let spec = netperf_pod(&node, "perf");
    let sandbox = pod::run_sandbox(&mut rt, &spec)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()));
    let container = pod::start_container(&mut rt, &spec, &sandbox)
        .await
        .unwrap();
    // As `crictl inspectp 4f69c7c3bd0f`, `crictl stop <prefix>`, `crictl stopp`, `crictl rmp`.
    let status = sandbox_status(&mut rt, &sandbox[..12]).await.unwrap();
    assert_eq!(status.id, sandbox);
    assert_eq!(
        container_status(&mut rt, &container[..12])
            .await
            .unwrap()
            .id,
        container
    );
    rt.stop_container(cri::StopContainerRequest {
        container_id: container[..12].into(),
        timeout: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        container_status(&mut rt, &container).await.unwrap().state,
        cri::ContainerState::ContainerExited as i32
    );

    // Enough containers that two share a first digit: that digit is ambiguous.
    let mut ids = vec![container.clone()];
    for i in 0..16 {
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox[..12].into(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: format!("c{i}"),
                        attempt: 0,
                    }),
                    image: image(&format!("sha256:{}", "0".repeat(64))),
                    ..Default::default()
                }),
                sandbox_config: Some(spec.sandbox_config(0)),
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()))
            .into_inner()
            .container_id;
        ids.push(id);
    }
    let digit = (b'0'..=b'f')
        .map(|d| d as char)
        .find(|d| ids.iter().filter(|id| id.starts_with(*d)).count() > 1)
        .unwrap();
    let mut candidates: Vec<_> = ids.iter().filter(|id| id.starts_with(digit)).collect();
    candidates.sort();
    let err = container_status(&mut rt, &digit.to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("ambiguous"), "{}", err.message());
    for c in &candidates {
        assert!(
            err.message().contains(c.as_str()),
            "{c} in {}",
            err.message()
        );
    }

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox[..12].into(),
    })
    .await
    .unwrap();
    assert_eq!(
        sandbox_status(&mut rt, &sandbox).await.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox[..12].into(),
    })
    .await
    .unwrap();
    // Gone: the prefix now names nothing of netready's and goes upstream, of which there is
    // none.
    let err = sandbox_status(&mut rt, &sandbox[..12]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.items.is_empty(), "{listed:?}");
    assert_eq!(std::fs::read_dir(node.path("nr/netns")).unwrap().count(), 0);
}
