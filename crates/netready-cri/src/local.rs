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
    /// Whether a pod going upstream is one whose IPs netready wants to learn (a control pod).
    fn watches(&self, _config: &cri::PodSandboxConfig) -> bool {
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
