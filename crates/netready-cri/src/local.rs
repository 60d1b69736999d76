//! The seam between the router and netready's own runtime.
//!
//! The router asks a [`LocalRuntime`] whether it takes a new sandbox and whether it owns an id;
//! everything it does not own goes upstream. Merged `List*` replies append what it lists.

use std::future::Future;
use std::pin::Pin;

use k8s_cri::v1 as cri;
use tonic::Status;

use crate::route::Call;

/// A boxed future answering one local call with an encoded reply message.
pub type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send>>;

/// netready's own runtime, as the router sees it.
pub trait LocalRuntime: Send + Sync + 'static {
    /// Whether netready runs this new sandbox itself (decided once, at `RunPodSandbox` and
    /// `PullImage`, from the pod's labels).
    fn claims(&self, config: &cri::PodSandboxConfig) -> bool;
    /// Whether this sandbox id was created here.
    fn owns_sandbox(&self, id: &str) -> bool;
    /// Whether this container id was created here.
    fn owns_container(&self, id: &str) -> bool;
    /// Own sandbox ids starting with `prefix` (asked only for ids shorter than a full one,
    /// which operators type and kubelet never sends).
    fn sandboxes_with_prefix(&self, _prefix: &str) -> Vec<String> {
        Vec::new()
    }
    /// Own container ids starting with `prefix` (as for sandboxes).
    fn containers_with_prefix(&self, _prefix: &str) -> Vec<String> {
        Vec::new()
    }
    /// Answers a call it owns, decoded once by the router (with the full id where the caller
    /// gave a prefix).
    fn call(&self, call: Call) -> Reply;
    /// Own sandboxes that pass the filter.
    fn pod_sandboxes(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox>;
    /// Own containers that pass the filter.
    fn containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container>;
    /// Stats of own sandboxes that pass the filter.
    fn pod_sandbox_stats(
        &self,
        filter: Option<&cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats>;
    /// Stats of own containers that pass the filter.
    fn container_stats(
        &self,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats>;
    /// Whether a pod going upstream, by its labels, is one whose IPs netready wants to learn
    /// (a control pod).
    fn watches(&self, _labels: &std::collections::HashMap<String, String>) -> bool {
        false
    }
    /// Conditions netready adds to `Status` (e.g. whether discovery is synced).
    fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        Vec::new()
    }
    /// A watched upstream sandbox is up with these IPs.
    fn upstream_sandbox_up(&self, _id: &str, _ips: Vec<std::net::IpAddr>) {}
    /// An upstream sandbox is being stopped or removed.
    fn upstream_sandbox_down(&self, _id: &str) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message;

    use super::*;
    use crate::netperf::{NetperfConfig, NetperfRuntime};

    async fn netperf(dir: &std::path::Path) -> NetperfRuntime {
        let cfg = NetperfConfig {
            state_dir: dir.join("state"),
            netns_dir: dir.join("netns"),
            ..Default::default()
        };
        NetperfRuntime::start(cfg, None).await.unwrap()
    }

    fn busybox() -> Option<cri::ImageSpec> {
        Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_netperf_call_whose_caller_hung_up_still_runs_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let rt = netperf(dir.path()).await;
        drop(rt.call(Call::PullImage(cri::PullImageRequest {
            image: busybox(),
            ..Default::default()
        })));
        let pulled = async {
            loop {
                let status = rt
                    .call(Call::ImageStatus(cri::ImageStatusRequest {
                        image: busybox(),
                        verbose: false,
                    }))
                    .await
                    .unwrap();
                if cri::ImageStatusResponse::decode(&status[..])
                    .unwrap()
                    .image
                    .is_some()
                {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), pulled)
            .await
            .expect("the pull whose reply nobody awaited never ran");
    }

    #[tokio::test]
    async fn netperf_refuses_the_calls_it_cannot_serve_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let rt = netperf(dir.path()).await;
        let e = rt
            .call(Call::Exec(cri::ExecRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert_eq!(
            e.message(),
            "Exec: netperf pods run no processes; netready offers no exec for them"
        );
        let e = rt
            .call(Call::PortForward(cri::PortForwardRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(
            e.message(),
            "PortForward: netperf pods run no processes; netready offers no portforward for them"
        );
        // The router answers these itself: reaching netperf is a bug, said as one.
        let e = rt
            .call(Call::ListPodSandbox(Default::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("ListPodSandbox"), "{}", e.message());
    }
}
