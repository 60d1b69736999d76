//! A recording in-memory [`LocalRuntime`] for routing and merge tests.
//!
//! It claims pods labelled `netperf: "true"`, answers the sandbox calls a kubelet makes, and
//! records every call it got, so tests can assert which side answered what.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prost::Message;
use tonic::Status;

use crate::cri;
use crate::filter;
use crate::local::{LocalRuntime, Reply};
use crate::route::Call;

/// In-memory sandboxes and containers, and the log of calls it answered.
#[derive(Debug, Default)]
pub struct FakeLocal {
    sandboxes: Mutex<Vec<cri::PodSandbox>>,
    containers: Mutex<Vec<cri::Container>>,
    calls: Mutex<Vec<String>>,
    next: AtomicU64,
    /// Upstream sandboxes learned as control pods (label `role=control`): id → IPs.
    learned: Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>,
}

impl FakeLocal {
    /// Adds a sandbox as if netready had created it.
    pub fn insert_sandbox(&self, s: cri::PodSandbox) {
        self.sandboxes.lock().unwrap().push(s);
    }

    /// Adds a container as if netready had created it.
    pub fn insert_container(&self, c: cri::Container) {
        self.containers.lock().unwrap().push(c);
    }

    /// The ids of the upstream control pods learned and not forgotten.
    pub fn learned(&self) -> Vec<String> {
        self.learned.lock().unwrap().keys().cloned().collect()
    }

    /// The methods answered so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn answer(&self, call: Call) -> Result<Vec<u8>, Status> {
        match call {
            Call::RunPodSandbox(req) => {
                let config = req.config.unwrap_or_default();
                let id = format!("fake-{}", self.next.fetch_add(1, Ordering::Relaxed));
                self.insert_sandbox(cri::PodSandbox {
                    id: id.clone(),
                    metadata: config.metadata,
                    state: cri::PodSandboxState::SandboxReady as i32,
                    created_at: 1,
                    labels: config.labels,
                    annotations: config.annotations,
                    runtime_handler: req.runtime_handler,
                });
                Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id }.encode_to_vec())
            }
            Call::PodSandboxStatus(req) => {
                let sandboxes = self.sandboxes.lock().unwrap();
                let s = sandboxes
                    .iter()
                    .find(|s| s.id == req.pod_sandbox_id)
                    .ok_or_else(|| Status::not_found(format!("sandbox {}", req.pod_sandbox_id)))?;
                Ok(cri::PodSandboxStatusResponse {
                    status: Some(cri::PodSandboxStatus {
                        id: s.id.clone(),
                        metadata: s.metadata.clone(),
                        state: s.state,
                        created_at: s.created_at,
                        labels: s.labels.clone(),
                        annotations: s.annotations.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec())
            }
            Call::StopPodSandbox(_) => Ok(cri::StopPodSandboxResponse {}.encode_to_vec()),
            Call::RemovePodSandbox(req) => {
                self.sandboxes
                    .lock()
                    .unwrap()
                    .retain(|s| s.id != req.pod_sandbox_id);
                Ok(cri::RemovePodSandboxResponse {}.encode_to_vec())
            }
            Call::PullImage(_) => Ok(cri::PullImageResponse {
                image_ref: "sha256:fake".into(),
            }
            .encode_to_vec()),
            other => Err(Status::unimplemented(format!(
                "fake local runtime: {}",
                other.method()
            ))),
        }
    }
}

impl LocalRuntime for FakeLocal {
    fn claims(&self, config: &cri::PodSandboxConfig) -> bool {
        config.labels.get("netperf").map(String::as_str) == Some("true")
    }
    fn owns_sandbox(&self, id: &str) -> bool {
        self.sandboxes.lock().unwrap().iter().any(|s| s.id == id)
    }
    fn owns_container(&self, id: &str) -> bool {
        self.containers.lock().unwrap().iter().any(|c| c.id == id)
    }
    fn sandboxes_with_prefix(&self, prefix: &str) -> Vec<String> {
        let all = self.sandboxes.lock().unwrap();
        all.iter()
            .filter(|s| s.id.starts_with(prefix))
            .map(|s| s.id.clone())
            .collect()
    }
    fn containers_with_prefix(&self, prefix: &str) -> Vec<String> {
        let all = self.containers.lock().unwrap();
        all.iter()
            .filter(|c| c.id.starts_with(prefix))
            .map(|c| c.id.clone())
            .collect()
    }
    fn watches(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        labels.get("role").map(String::as_str) == Some("control")
    }
    fn upstream_sandbox_up(&self, id: &str, ips: Vec<std::net::IpAddr>) {
        self.learned.lock().unwrap().insert(id.to_owned(), ips);
    }
    fn upstream_sandbox_down(&self, id: &str) {
        self.learned.lock().unwrap().remove(id);
    }
    fn call(&self, call: Call) -> Reply {
        self.calls.lock().unwrap().push(call.method().to_owned());
        let result = self.answer(call);
        Box::pin(async move { result })
    }
    fn pod_sandboxes(&self, f: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let all = self.sandboxes.lock().unwrap();
        all.iter()
            .filter(|s| filter::pod_sandbox(s, f))
            .cloned()
            .collect()
    }
    fn containers(&self, f: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        let all = self.containers.lock().unwrap();
        all.iter()
            .filter(|c| filter::container(c, f))
            .cloned()
            .collect()
    }
    fn pod_sandbox_stats(
        &self,
        f: Option<&cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        self.sandboxes
            .lock()
            .unwrap()
            .iter()
            .map(|s| cri::PodSandboxStats {
                attributes: Some(cri::PodSandboxAttributes {
                    id: s.id.clone(),
                    metadata: s.metadata.clone(),
                    labels: s.labels.clone(),
                    annotations: s.annotations.clone(),
                }),
                ..Default::default()
            })
            .filter(|st| filter::pod_sandbox_stats(st, f))
            .collect()
    }
    fn container_stats(&self, f: Option<&cri::ContainerStatsFilter>) -> Vec<cri::ContainerStats> {
        self.containers
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let st = cri::ContainerStats {
                    attributes: Some(cri::ContainerAttributes {
                        id: c.id.clone(),
                        metadata: c.metadata.clone(),
                        labels: c.labels.clone(),
                        annotations: c.annotations.clone(),
                    }),
                    ..Default::default()
                };
                (st, c.pod_sandbox_id.clone())
            })
            .filter(|(st, sb)| filter::container_stats(st, sb, f))
            .map(|(st, _)| st)
            .collect()
    }
}
