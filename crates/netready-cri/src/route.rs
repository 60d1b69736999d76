//! Which side owns a call: netready itself (netperf pods) or the upstream runtime.
//!
//! `RunPodSandbox` and `PullImage` decide from the pod's labels; every later call names a
//! sandbox or container id, and the side that created it owns it. Calls netready must answer
//! itself or merge (`Version`, `Status`, `List*`) are listed here too, and the image calls
//! netready answers when there is no upstream; every other method, including ones this proto
//! does not know, goes upstream as raw bytes (with no upstream: `UNIMPLEMENTED`, see the
//! router).
//!
//! A request netready has to look into is decoded once, into a [`Call`], and that value is
//! what the router decides on and hands to netready's runtime: one table of methods instead of
//! one here and another in the runtime, which could disagree on what a method carries.

use k8s_cri::v1 as cri;
use prost::Message;
use tonic::Status;

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
) -> Result<Option<String>, Status> {
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
    Err(Status::invalid_argument(format!(
        "ambiguous {what} id {id:?}: it is a prefix of {names}"
    )))
}

/// What decides the owner of a [`Call`], borrowed from its request.
#[derive(Debug)]
pub enum Routing<'a> {
    /// netready answers or merges around upstream's reply (`Version`, `Status`, `List*`).
    Merged,
    /// A new sandbox, claimed or not by the labels of its config.
    NewSandbox(Option<&'a cri::PodSandboxConfig>),
    /// An image pull, claimed or not by the config of the pod it is for (none from `crictl
    /// pull`).
    Pull(Option<&'a cri::PodSandboxConfig>),
    /// A call on an existing sandbox: its id, mutable so that the full id a prefix stands for
    /// replaces it before netready's runtime sees it.
    Sandbox(&'a mut String),
    /// A call on an existing container: its id, as for a sandbox.
    Container(&'a mut String),
    /// An image call that carries no pod.
    Image,
}

/// The table of methods netready knows: each `Method(Request) => how it is routed`.
macro_rules! calls {
    ($(
        $service:literal {
            $($method:ident($req:ident) => $route:ident $(($field:ident))?,)*
        }
    )*) => {
        /// A decoded request of a method netready knows.
        #[derive(Clone, Debug, PartialEq)]
        // One per request, moved a few times on its way to whoever answers it: boxing the big
        // requests (CreateContainer's is over 2 KB) would add an allocation per call to save
        // copying a few KB.
        #[allow(clippy::large_enum_variant)]
        pub enum Call {
            $($(
                #[doc = concat!("`/", $service, "/", stringify!($method), "`.")]
                $method(cri::$req),
            )*)*
        }

        impl Call {
            /// Decodes the message of a call to `path`: `None` when netready does not know the
            /// method (it is forwarded untouched), `INVALID_ARGUMENT` when the message is not
            /// one of its requests.
            pub fn decode(path: &str, msg: &[u8]) -> Option<Result<Call, Status>> {
                Some(match path {
                    $($(
                        concat!("/", $service, "/", stringify!($method)) => {
                            cri::$req::decode(msg)
                                .map(Call::$method)
                                .map_err(|e| decode_error(stringify!($req), e))
                        }
                    )*)*
                    _ => return None,
                })
            }

            /// The gRPC method name, for logs and errors.
            pub fn method(&self) -> &'static str {
                match self {
                    $($(Call::$method(_) => stringify!($method),)*)*
                }
            }

            /// What decides who answers the call.
            pub fn routing(&mut self) -> Routing<'_> {
                match self {
                    $($(Call::$method(req) => calls!(@routing req, $route $($field)?),)*)*
                }
            }
        }

        /// Whether [`Call::decode`] knows `path` (without decoding anything).
        pub(crate) fn is_known(path: &str) -> bool {
            matches!(path, $($(concat!("/", $service, "/", stringify!($method)))|*)|*)
        }

        /// Whether `path` is an image call that carries no pod, upstream's alone when there is
        /// one: it is forwarded before anything is decoded.
        pub(crate) fn is_image_without_pod(path: &str) -> bool {
            match path {
                $($(concat!("/", $service, "/", stringify!($method)) => calls!(@image $route),)*)*
                _ => false,
            }
        }
    };
    (@routing $req:ident, merged) => {{
        let _ = $req;
        Routing::Merged
    }};
    (@routing $req:ident, new_sandbox $field:ident) => {
        Routing::NewSandbox($req.$field.as_ref())
    };
    (@routing $req:ident, pull $field:ident) => {
        Routing::Pull($req.$field.as_ref())
    };
    (@routing $req:ident, sandbox $field:ident) => {
        Routing::Sandbox(&mut $req.$field)
    };
    (@routing $req:ident, container $field:ident) => {
        Routing::Container(&mut $req.$field)
    };
    (@routing $req:ident, image) => {{
        let _ = $req;
        Routing::Image
    }};
    (@image image) => {
        true
    };
    (@image $other:ident) => {
        false
    };
}

calls! {
    "runtime.v1.RuntimeService" {
        Version(VersionRequest) => merged,
        Status(StatusRequest) => merged,
        ListPodSandbox(ListPodSandboxRequest) => merged,
        ListContainers(ListContainersRequest) => merged,
        ListPodSandboxStats(ListPodSandboxStatsRequest) => merged,
        ListContainerStats(ListContainerStatsRequest) => merged,
        RunPodSandbox(RunPodSandboxRequest) => new_sandbox(config),
        StopPodSandbox(StopPodSandboxRequest) => sandbox(pod_sandbox_id),
        RemovePodSandbox(RemovePodSandboxRequest) => sandbox(pod_sandbox_id),
        PodSandboxStatus(PodSandboxStatusRequest) => sandbox(pod_sandbox_id),
        PodSandboxStats(PodSandboxStatsRequest) => sandbox(pod_sandbox_id),
        PortForward(PortForwardRequest) => sandbox(pod_sandbox_id),
        CreateContainer(CreateContainerRequest) => sandbox(pod_sandbox_id),
        StartContainer(StartContainerRequest) => container(container_id),
        StopContainer(StopContainerRequest) => container(container_id),
        RemoveContainer(RemoveContainerRequest) => container(container_id),
        ContainerStatus(ContainerStatusRequest) => container(container_id),
        ContainerStats(ContainerStatsRequest) => container(container_id),
        UpdateContainerResources(UpdateContainerResourcesRequest) => container(container_id),
        ReopenContainerLog(ReopenContainerLogRequest) => container(container_id),
        ExecSync(ExecSyncRequest) => container(container_id),
        Exec(ExecRequest) => container(container_id),
        Attach(AttachRequest) => container(container_id),
        CheckpointContainer(CheckpointContainerRequest) => container(container_id),
    }
    "runtime.v1.ImageService" {
        PullImage(PullImageRequest) => pull(sandbox_config),
        ImageStatus(ImageStatusRequest) => image,
        ListImages(ListImagesRequest) => image,
        ImageFsInfo(ImageFsInfoRequest) => image,
        RemoveImage(RemoveImageRequest) => image,
    }
}

/// The status of a message that is not what its method takes.
pub(crate) fn decode_error(what: &str, e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("decoding {what}: {e}"))
}

/// The method name of a path (`/runtime.v1.RuntimeService/Version` → `Version`), for labels.
pub fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RT: &str = "/runtime.v1.RuntimeService/";
    const IMG: &str = "/runtime.v1.ImageService/";

    /// Which object a call routed by id names.
    #[derive(Debug, PartialEq)]
    enum Named {
        Sandbox,
        Container,
    }

    /// Every method routed by id, the object it names, and a request carrying `id` in its id
    /// field (and other strings in other fields where it has them, so that reading the wrong
    /// field cannot pass).
    fn requests_with_id(id: &str) -> Vec<(&'static str, Named, Vec<u8>)> {
        let s = || id.to_owned();
        let other = || "not-the-id".to_owned();
        use Named::{Container, Sandbox};
        vec![
            (
                "StopPodSandbox",
                Sandbox,
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: s(),
                }
                .encode_to_vec(),
            ),
            (
                "RemovePodSandbox",
                Sandbox,
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: s(),
                }
                .encode_to_vec(),
            ),
            (
                "PodSandboxStatus",
                Sandbox,
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: s(),
                    verbose: true,
                }
                .encode_to_vec(),
            ),
            (
                "PodSandboxStats",
                Sandbox,
                cri::PodSandboxStatsRequest {
                    pod_sandbox_id: s(),
                }
                .encode_to_vec(),
            ),
            (
                "PortForward",
                Sandbox,
                cri::PortForwardRequest {
                    pod_sandbox_id: s(),
                    port: vec![80],
                }
                .encode_to_vec(),
            ),
            (
                "CreateContainer",
                Sandbox,
                cri::CreateContainerRequest {
                    pod_sandbox_id: s(),
                    config: Some(cri::ContainerConfig {
                        working_dir: other(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "StartContainer",
                Container,
                cri::StartContainerRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "StopContainer",
                Container,
                cri::StopContainerRequest {
                    container_id: s(),
                    timeout: 3,
                }
                .encode_to_vec(),
            ),
            (
                "RemoveContainer",
                Container,
                cri::RemoveContainerRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "ContainerStatus",
                Container,
                cri::ContainerStatusRequest {
                    container_id: s(),
                    verbose: true,
                }
                .encode_to_vec(),
            ),
            (
                "ContainerStats",
                Container,
                cri::ContainerStatsRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "UpdateContainerResources",
                Container,
                cri::UpdateContainerResourcesRequest {
                    container_id: s(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "ReopenContainerLog",
                Container,
                cri::ReopenContainerLogRequest { container_id: s() }.encode_to_vec(),
            ),
            (
                "ExecSync",
                Container,
                cri::ExecSyncRequest {
                    container_id: s(),
                    cmd: vec![other()],
                    timeout: 1,
                }
                .encode_to_vec(),
            ),
            (
                "Exec",
                Container,
                cri::ExecRequest {
                    container_id: s(),
                    cmd: vec![other()],
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "Attach",
                Container,
                cri::AttachRequest {
                    container_id: s(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "CheckpointContainer",
                Container,
                cri::CheckpointContainerRequest {
                    container_id: s(),
                    location: other(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ]
    }

    /// The object and id a call is routed by, if any.
    fn id_of(call: &mut Call) -> Option<(Named, &mut String)> {
        match call.routing() {
            Routing::Sandbox(id) => Some((Named::Sandbox, id)),
            Routing::Container(id) => Some((Named::Container, id)),
            _ => None,
        }
    }

    #[test]
    fn every_call_routed_by_id_is_routed_by_its_id_field_which_a_full_id_replaces() {
        let full = "4f69c7c3bd0f".to_owned() + &"a".repeat(FULL_ID_LEN - 12);
        for (method, named, msg) in requests_with_id("4f69c7c3bd0f") {
            let path = format!("{RT}{method}");
            let mut call = Call::decode(&path, &msg)
                .unwrap_or_else(|| panic!("{method} must be known"))
                .unwrap();
            assert_eq!(call.method(), method);
            let (what, id) = id_of(&mut call).unwrap_or_else(|| panic!("{method}: not by id"));
            assert_eq!((what, id.as_str()), (named, "4f69c7c3bd0f"), "{method}");
            *id = full.clone();
            // What netready's runtime gets carries the full id, in that same field.
            assert_eq!(id_of(&mut call).unwrap().1, &full, "{method}");
            assert_ne!(
                call,
                Call::decode(&path, &msg).unwrap().unwrap(),
                "{method}"
            );
        }
    }

    #[test]
    fn every_known_method_decodes_to_its_own_call() {
        let runtime = [
            "Version",
            "Status",
            "ListPodSandbox",
            "ListContainers",
            "ListPodSandboxStats",
            "ListContainerStats",
            "RunPodSandbox",
        ]
        .into_iter()
        .chain(requests_with_id("").into_iter().map(|(m, _, _)| m))
        .map(|m| (RT, m));
        let image = [
            "PullImage",
            "ImageStatus",
            "ListImages",
            "ImageFsInfo",
            "RemoveImage",
        ]
        .into_iter()
        .map(|m| (IMG, m));
        let mut n = 0;
        for (service, method) in runtime.chain(image) {
            let path = format!("{service}{method}");
            assert!(is_known(&path), "{path}");
            // An empty message is any request with its defaults.
            let call = Call::decode(&path, &[]).unwrap().unwrap();
            assert_eq!(call.method(), method);
            assert_eq!(method_name(&path), method);
            n += 1;
        }
        assert_eq!(n, 29);
    }

    #[test]
    fn new_sandboxes_and_pulls_are_routed_by_their_pod() {
        let config = cri::PodSandboxConfig {
            hostname: "perf".into(),
            ..Default::default()
        };
        let mut run = Call::RunPodSandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        });
        assert!(matches!(run.routing(), Routing::NewSandbox(Some(c)) if *c == config));
        let mut pull = Call::PullImage(cri::PullImageRequest {
            sandbox_config: Some(config.clone()),
            ..Default::default()
        });
        assert!(matches!(pull.routing(), Routing::Pull(Some(c)) if *c == config));
        let mut bare = Call::PullImage(Default::default());
        assert!(matches!(bare.routing(), Routing::Pull(None)));
        for m in [
            "Version",
            "Status",
            "ListPodSandbox",
            "ListContainers",
            "ListPodSandboxStats",
            "ListContainerStats",
        ] {
            let mut call = Call::decode(&format!("{RT}{m}"), &[]).unwrap().unwrap();
            assert!(matches!(call.routing(), Routing::Merged), "{m}");
        }
    }

    #[test]
    fn image_calls_without_a_pod_are_known_from_their_path() {
        for m in ["ImageStatus", "ListImages", "ImageFsInfo", "RemoveImage"] {
            assert!(is_image_without_pod(&format!("{IMG}{m}")), "{m}");
            let mut call = Call::decode(&format!("{IMG}{m}"), &[]).unwrap().unwrap();
            assert!(matches!(call.routing(), Routing::Image), "{m}");
        }
        assert!(!is_image_without_pod(&format!("{IMG}PullImage")));
        assert!(!is_image_without_pod(&format!("{RT}Version")));
        assert!(!is_image_without_pod("/grpc.health.v1.Health/Check"));
    }

    #[test]
    fn a_message_that_is_not_the_request_is_an_invalid_argument() {
        // Field 1, a string whose length runs past the end.
        let e = Call::decode(&format!("{RT}StopPodSandbox"), &[0x0a, 0x05, b'a'])
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("decoding StopPodSandboxRequest: "),
            "{}",
            e.message()
        );
    }

    #[test]
    fn unknown_methods_are_not_decoded() {
        for path in [
            "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
            "/runtime.v1.ImageService/ImageFsInfoV2",
            "/grpc.health.v1.Health/Check",
            "/runtime.v1.RuntimeService/",
        ] {
            assert!(!is_known(path), "{path}");
            assert!(Call::decode(path, &[]).is_none(), "{path}");
        }
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
