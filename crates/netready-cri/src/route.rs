//! Which side owns a call: netready itself (netperf pods) or the upstream runtime.
//!
//! `RunPodSandbox` and `PullImage` decide from the pod's labels; every later call names a
//! sandbox or container id, and the side that created it owns it. Calls netready must answer
//! itself or merge (`Version`, `Status`, `List*`) are listed here too, and the image calls
//! netready answers when there is no upstream; every other method, including ones this proto
//! does not know, goes upstream as raw bytes (with no upstream: `UNIMPLEMENTED`, see the
//! router).

use k8s_cri::v1 as cri;
use prost::Message;

/// Who answers a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// netready's own runtime (netperf sandboxes and their containers).
    Local,
    /// The upstream runtime, reached as raw HTTP/2.
    Upstream,
}

impl Owner {
    /// The metric/log label of this owner.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Local => "netperf",
            Owner::Upstream => "upstream",
        }
    }
}

type IdOf = fn(&[u8]) -> Result<String, prost::DecodeError>;

/// How the router treats a method it knows.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// netready answers from the upstream reply plus its own facts.
    Version,
    /// netready adds its condition to the upstream status.
    Status,
    /// Merged list replies.
    ListPodSandbox,
    ListContainers,
    ListPodSandboxStats,
    ListContainerStats,
    /// A new sandbox: routed by its labels.
    RunPodSandbox,
    /// An image pull: routed by the sandbox config it carries.
    PullImage,
    /// A call on an existing sandbox.
    BySandbox(IdOf),
    /// A call on an existing container.
    ByContainer(IdOf),
    /// An image call that carries no pod: upstream's alone when there is one (untouched), else
    /// netready's (the images netperf pods "pulled").
    Image,
}

/// The field number of the sandbox or container id in every request routed by id (checked
/// for each of them in this module's tests), so an id can be replaced without decoding.
const ID_FIELD: u32 = 1;

/// Length of a full sandbox or container id (64 hex digits, as containerd makes them). kubelet
/// always sends full ids; a shorter one is an operator's prefix.
pub(crate) const FULL_ID_LEN: usize = 64;

/// Whether `id` is a full sandbox or container id: [`FULL_ID_LEN`] hex digits.
pub(crate) fn is_full_id(id: &str) -> bool {
    id.len() == FULL_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves a truncated id, as containerd resolves its own: `candidates(id)` gives the ids
/// it is a prefix of; the result is the one id, `None` when there is none, or
/// `INVALID_ARGUMENT` naming the candidates (at most 10) when there are several. An empty id is
/// nobody's, and a full-length id is no prefix (kubelet always sends full ids: they cost no
/// lookup).
pub(crate) fn resolve_prefix(
    id: &str,
    what: &str,
    candidates: impl FnOnce(&str) -> Vec<String>,
) -> Result<Option<String>, tonic::Status> {
    if id.is_empty() || id.len() >= FULL_ID_LEN {
        return Ok(None);
    }
    let mut found = candidates(id);
    if found.len() <= 1 {
        return Ok(found.pop());
    }
    found.sort();
    const SHOWN: usize = 10;
    let more = found.len().saturating_sub(SHOWN);
    found.truncate(SHOWN);
    let mut names = found.join(", ");
    if more > 0 {
        names.push_str(&format!(" and {more} more"));
    }
    Err(tonic::Status::invalid_argument(format!(
        "ambiguous {what} id {id:?}: it is a prefix of {names}"
    )))
}

/// The request `msg` with its id replaced by `id`: protobuf lets the last occurrence of a
/// scalar field win, so the field is appended rather than the message re-encoded.
pub(crate) fn with_id(msg: &[u8], id: &str) -> bytes::Bytes {
    let mut buf = Vec::with_capacity(msg.len() + id.len() + 3);
    buf.extend_from_slice(msg);
    prost::encoding::string::encode(ID_FIELD, &id.to_owned(), &mut buf);
    buf.into()
}

macro_rules! id_of {
    ($ty:ty, $field:ident) => {
        (|b: &[u8]| <$ty>::decode(b).map(|m| m.$field)) as IdOf
    };
}

const RT: &str = "/runtime.v1.RuntimeService/";
const IMG: &str = "/runtime.v1.ImageService/";

/// Classifies a gRPC path; `None` means "forward untouched".
pub(crate) fn classify(path: &str) -> Option<Kind> {
    if let Some(method) = path.strip_prefix(RT) {
        return Some(match method {
            "Version" => Kind::Version,
            "Status" => Kind::Status,
            "ListPodSandbox" => Kind::ListPodSandbox,
            "ListContainers" => Kind::ListContainers,
            "ListPodSandboxStats" => Kind::ListPodSandboxStats,
            "ListContainerStats" => Kind::ListContainerStats,
            "RunPodSandbox" => Kind::RunPodSandbox,
            "StopPodSandbox" => Kind::BySandbox(id_of!(cri::StopPodSandboxRequest, pod_sandbox_id)),
            "RemovePodSandbox" => {
                Kind::BySandbox(id_of!(cri::RemovePodSandboxRequest, pod_sandbox_id))
            }
            "PodSandboxStatus" => {
                Kind::BySandbox(id_of!(cri::PodSandboxStatusRequest, pod_sandbox_id))
            }
            "PodSandboxStats" => {
                Kind::BySandbox(id_of!(cri::PodSandboxStatsRequest, pod_sandbox_id))
            }
            "PortForward" => Kind::BySandbox(id_of!(cri::PortForwardRequest, pod_sandbox_id)),
            "CreateContainer" => {
                Kind::BySandbox(id_of!(cri::CreateContainerRequest, pod_sandbox_id))
            }
            "StartContainer" => Kind::ByContainer(id_of!(cri::StartContainerRequest, container_id)),
            "StopContainer" => Kind::ByContainer(id_of!(cri::StopContainerRequest, container_id)),
            "RemoveContainer" => {
                Kind::ByContainer(id_of!(cri::RemoveContainerRequest, container_id))
            }
            "ContainerStatus" => {
                Kind::ByContainer(id_of!(cri::ContainerStatusRequest, container_id))
            }
            "ContainerStats" => Kind::ByContainer(id_of!(cri::ContainerStatsRequest, container_id)),
            "UpdateContainerResources" => {
                Kind::ByContainer(id_of!(cri::UpdateContainerResourcesRequest, container_id))
            }
            "ReopenContainerLog" => {
                Kind::ByContainer(id_of!(cri::ReopenContainerLogRequest, container_id))
            }
            "ExecSync" => Kind::ByContainer(id_of!(cri::ExecSyncRequest, container_id)),
            "Exec" => Kind::ByContainer(id_of!(cri::ExecRequest, container_id)),
            "Attach" => Kind::ByContainer(id_of!(cri::AttachRequest, container_id)),
            "CheckpointContainer" => {
                Kind::ByContainer(id_of!(cri::CheckpointContainerRequest, container_id))
            }
            _ => return None,
        });
    }
    match path.strip_prefix(IMG)? {
        "PullImage" => Some(Kind::PullImage),
        "ImageStatus" | "ListImages" | "ImageFsInfo" | "RemoveImage" => Some(Kind::Image),
        _ => None,
    }
}

/// The method name of a path (`/runtime.v1.RuntimeService/Version` → `Version`), for labels.
pub fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_routes_are_the_owners() {
        assert_eq!(
            [Owner::Local.as_str(), Owner::Upstream.as_str()],
            netready_metrics::ROUTES
        );
    }

    #[test]
    fn ids_are_read_from_the_right_field() {
        let Some(Kind::ByContainer(f)) = classify("/runtime.v1.RuntimeService/ExecSync") else {
            panic!("ExecSync must be routed by container");
        };
        let req = cri::ExecSyncRequest {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            timeout: 1,
        };
        assert_eq!(f(&req.encode_to_vec()).unwrap(), "c1");
        let Some(Kind::BySandbox(f)) = classify("/runtime.v1.RuntimeService/CreateContainer")
        else {
            panic!("CreateContainer must be routed by sandbox");
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: "s1".into(),
            ..Default::default()
        };
        assert_eq!(f(&req.encode_to_vec()).unwrap(), "s1");
    }

    /// Every method routed by id, with a request carrying `id` in its id field.
    fn requests_with_id(id: &str) -> Vec<(&'static str, Vec<u8>)> {
        let s = || id.to_owned();
        vec![
            (
                "StopPodSandbox",
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: s(),
                }
                .encode_to_vec(),
            ),
            (
                "RemovePodSandbox",
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: s(),
                }
                .encode_to_vec(),
            ),
            (
                "PodSandboxStatus",
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: s(),
                    verbose: true,
                }
                .encode_to_vec(),
            ),
            (
                "PodSandboxStats",
                cri::PodSandboxStatsRequest {
                    pod_sandbox_id: s(),
                }
                .encode_to_vec(),
            ),
            (
                "PortForward",
                cri::PortForwardRequest {
                    pod_sandbox_id: s(),
                    port: vec![80],
                }
                .encode_to_vec(),
            ),
            (
                "CreateContainer",
                cri::CreateContainerRequest {
                    pod_sandbox_id: s(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "StartContainer",
                cri::StartContainerRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "StopContainer",
                cri::StopContainerRequest {
                    container_id: s(),
                    timeout: 3,
                }
                .encode_to_vec(),
            ),
            (
                "RemoveContainer",
                cri::RemoveContainerRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "ContainerStatus",
                cri::ContainerStatusRequest {
                    container_id: s(),
                    verbose: true,
                }
                .encode_to_vec(),
            ),
            (
                "ContainerStats",
                cri::ContainerStatsRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "UpdateContainerResources",
                cri::UpdateContainerResourcesRequest {
                    container_id: s(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "ReopenContainerLog",
                cri::ReopenContainerLogRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "ExecSync",
                cri::ExecSyncRequest {
                    container_id: s(),
                    cmd: vec!["true".into()],
                    timeout: 1,
                }
                .encode_to_vec(),
            ),
            (
                "Exec",
                cri::ExecRequest {
                    container_id: s(),
                    cmd: vec!["sh".into()],
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "Attach",
                cri::AttachRequest {
                    container_id: s(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "CheckpointContainer",
                cri::CheckpointContainerRequest {
                    container_id: s(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ]
    }

    #[test]
    fn an_appended_id_replaces_the_id_of_every_request_routed_by_id() {
        for (method, msg) in requests_with_id("4f69c7c3bd0f") {
            let (Some(Kind::BySandbox(f)) | Some(Kind::ByContainer(f))) =
                classify(&format!("{RT}{method}"))
            else {
                panic!("{method} must be routed by id");
            };
            assert_eq!(f(&msg).unwrap(), "4f69c7c3bd0f", "{method}");
            let full = "4f69c7c3bd0f".to_owned() + &"a".repeat(FULL_ID_LEN - 12);
            assert_eq!(f(&with_id(&msg, &full)).unwrap(), full, "{method}");
        }
    }

    #[test]
    fn image_calls_without_a_pod_are_classified() {
        for m in ["ImageStatus", "ListImages", "ImageFsInfo", "RemoveImage"] {
            assert!(
                matches!(classify(&format!("{IMG}{m}")), Some(Kind::Image)),
                "{m}"
            );
        }
        assert!(matches!(
            classify(&format!("{IMG}PullImage")),
            Some(Kind::PullImage)
        ));
    }

    #[test]
    fn unknown_methods_are_not_classified() {
        assert!(classify("/runtime.v1.RuntimeService/UpdatePodSandboxResources").is_none());
        assert!(classify("/runtime.v1.ImageService/ImageFsInfoV2").is_none());
        assert!(classify("/grpc.health.v1.Health/Check").is_none());
        assert_eq!(method_name("/runtime.v1.RuntimeService/Version"), "Version");
    }

    #[test]
    fn prefixes_resolve_to_one_id_none_or_an_error_naming_them() {
        let ids: Vec<String> = (0..13)
            .map(|i| format!("ab{i:02}"))
            .chain(["cd".into()])
            .collect();
        let with =
            |p: &str| -> Vec<String> { ids.iter().filter(|i| i.starts_with(p)).cloned().collect() };
        assert_eq!(
            resolve_prefix("c", "sandbox", with).unwrap(),
            Some("cd".into())
        );
        assert_eq!(resolve_prefix("ef", "sandbox", with).unwrap(), None);
        // Neither the empty id nor a full one is looked up.
        let never = |_: &str| -> Vec<String> { panic!("looked up") };
        assert_eq!(resolve_prefix("", "sandbox", never).unwrap(), None);
        assert_eq!(
            resolve_prefix(&"a".repeat(FULL_ID_LEN), "sandbox", never).unwrap(),
            None
        );
        let e = resolve_prefix("ab", "container", with).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "ambiguous container id \"ab\": it is a prefix of ab00, ab01, ab02, ab03, ab04, ab05, \
             ab06, ab07, ab08, ab09 and 3 more"
        );
    }
}
