//! Containers of netperf pods: the CRI state machine (created → running → exited), a CRI log
//! file that tells what happened to the pod's network, `ExecSync` answered as a readiness
//! probe, and the container's command run once the pod is network-ready ([`super::process`];
//! a container without one runs no process).

use netready_cni::Stamp;
use serde_json::Value;
use tonic::Status;

use super::log;
use super::state::{ContainerPhase, ContainerRecord, PodTiming, SandboxPhase, SandboxRecord};
use super::{cri_time, image, new_id, NetperfRuntime};
use crate::cri;

/// Marks a running or created container exited.
pub(super) fn kill(c: &mut ContainerRecord, now: Stamp, code: i32, reason: &str, message: &str) {
    if c.phase != ContainerPhase::Exited {
        c.phase = ContainerPhase::Exited;
        c.finished = Some(now);
        c.exit_code = code;
        c.reason = reason.into();
        c.message = message.into();
    }
}

fn phase_cri(p: ContainerPhase) -> cri::ContainerState {
    match p {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited,
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.image.clone(),
        user_specified_image: c.user_image.clone(),
        ..Default::default()
    }
}

fn container_metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.name.clone(),
        attempt: c.attempt,
    }
}

/// The record as kubelet lists it.
pub(super) fn to_cri(s: &SandboxRecord, c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: s.id.clone(),
        metadata: Some(container_metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        state: phase_cri(c.phase) as i32,
        created_at: cri_time(&c.created),
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        ..Default::default()
    }
}

/// Zero CPU use, stamped `now`: netperf pods run no process.
pub(super) fn zero_cpu(now: i64) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: Some(cri::UInt64Value { value: 0 }),
        usage_nano_cores: Some(cri::UInt64Value { value: 0 }),
    }
}

/// Zero memory use, stamped `now`.
pub(super) fn zero_memory(now: i64) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: Some(cri::UInt64Value { value: 0 }),
        ..Default::default()
    }
}

/// Container stats: no process, so zero usage, stamped now.
pub(super) fn stats(_s: &SandboxRecord, c: &ContainerRecord) -> cri::ContainerStats {
    let now = Stamp::now().wall_ns as i64;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(container_metadata(c)),
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(zero_cpu(now)),
        memory: Some(zero_memory(now)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            used_bytes: Some(cri::UInt64Value { value: 0 }),
            inodes_used: Some(cri::UInt64Value { value: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Lines telling what happened to the pod's network so far.
/// The ADD attempts are the pod's: kubelet's retries of RunPodSandbox included.
fn network_story(s: &SandboxRecord, t: Option<&PodTiming>) -> Vec<String> {
    let mut lines = vec![format!(
        "netready: netperf pod {}/{} uid={} sandbox={}",
        s.meta.namespace, s.meta.name, s.meta.uid, s.id
    )];
    for (i, a) in t.iter().flat_map(|t| &t.attempts).enumerate() {
        let ms = a.duration().as_secs_f64() * 1e3;
        match &a.error {
            Some(f) => lines.push(format!(
                "netready: CNI ADD attempt {} failed after {ms:.1} ms: {}",
                i + 1,
                f.message
            )),
            None => lines.push(format!(
                "netready: CNI ADD attempt {} succeeded in {ms:.1} ms",
                i + 1
            )),
        }
    }
    if let Some(add) = &s.cni_add {
        lines.push(format!(
            "netready: this sandbox's CNI ADD took {:.1} ms",
            add.duration().as_secs_f64() * 1e3
        ));
    }
    lines.push(format!("netready: pod IPs {}", s.ips.join(", ")));
    if let Some(r) = &s.readiness {
        lines.extend(super::readiness::story(r));
    }
    lines
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("container {id:?} not found"))
}

// === impl NetperfRuntime: container verbs ===

impl NetperfRuntime {
    /// Runs `f` on a container and its sandbox under the store lock.
    fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxRecord, usize) -> Result<T, Status>,
    ) -> Result<(T, SandboxRecord), Status> {
        let mut store = self.store();
        let sid = store
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        let s = store.sandboxes.get_mut(&sid).ok_or_else(|| not_found(id))?;
        let i = s
            .containers
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| not_found(id))?;
        let out = f(s, i)?;
        Ok((out, s.clone()))
    }

    pub(super) async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config: missing"))?;
        let meta = config
            .metadata
            .ok_or_else(|| Status::invalid_argument("config.metadata: missing"))?;
        if meta.name.is_empty() {
            return Err(Status::invalid_argument("config.metadata.name: empty"));
        }
        let image = config.image.unwrap_or_default();
        if image.image.is_empty() {
            return Err(Status::invalid_argument("config.image.image: empty"));
        }
        // netready writes the container's log as root: a path from the request must not reach
        // outside the log directory the sandbox was given (`..`, or an absolute path, which
        // `join` would take whole). kubelet sends `<name>/<restart count>.log`.
        if !std::path::Path::new(&config.log_path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Status::invalid_argument(format!(
                "config.log_path: {:?} is not a relative path inside the sandbox's log directory",
                config.log_path
            )));
        }
        let security = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref());
        let command = super::command::CommandSpec {
            argv: config.command.iter().chain(&config.args).cloned().collect(),
            env: config
                .envs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            working_dir: config.working_dir.clone(),
            run_as_user: security
                .and_then(|sc| sc.run_as_user.as_ref())
                .map(|v| v.value),
            run_as_group: security
                .and_then(|sc| sc.run_as_group.as_ref())
                .map(|v| v.value),
        };
        if let Some((i, _)) = command
            .env
            .iter()
            .enumerate()
            .find(|(_, (k, _))| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(Status::invalid_argument(format!(
                "config.envs[{i}].key: {:?} cannot name a variable",
                command.env[i].0
            )));
        }
        if let Some(i) = command.argv.iter().position(|a| a.contains('\0')) {
            return Err(Status::invalid_argument(format!(
                "config.command/args[{i}]: contains a NUL byte"
            )));
        }
        let id = new_id();
        let sid = req.pod_sandbox_id;
        let rec = {
            let mut store = self.store();
            let s = store
                .sandboxes
                .get_mut(&sid)
                .ok_or_else(|| Status::not_found(format!("sandbox {sid:?} not found")))?;
            if s.phase != SandboxPhase::Ready {
                return Err(Status::failed_precondition(format!(
                    "sandbox {sid:?} is not ready"
                )));
            }
            let log_path = if s.log_directory.is_empty() || config.log_path.is_empty() {
                String::new()
            } else {
                std::path::Path::new(&s.log_directory)
                    .join(&config.log_path)
                    .display()
                    .to_string()
            };
            let image_ref = if image.image.starts_with("sha256:") {
                image.image.clone()
            } else {
                image::netperf_image_id(&image.image)
            };
            let c = ContainerRecord {
                id: id.clone(),
                name: meta.name,
                attempt: meta.attempt,
                user_image: if image.user_specified_image.is_empty() {
                    image.image.clone()
                } else {
                    image.user_specified_image.clone()
                },
                image: image.image,
                image_ref,
                labels: config.labels.into_iter().collect(),
                annotations: config.annotations.into_iter().collect(),
                log_path,
                phase: ContainerPhase::Created,
                created: Stamp::now(),
                started: None,
                finished: None,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                resources: config
                    .linux
                    .and_then(|l| l.resources)
                    .and_then(|r| serde_json::to_value(r).ok()),
                mounts: serde_json::to_value(&config.mounts).unwrap_or(Value::Null),
                command,
                iperf: None,
            };
            s.containers.push(c);
            let rec = s.clone();
            store.containers.insert(id.clone(), sid);
            rec
        };
        self.persist_sandbox(&rec);
        Ok(cri::CreateContainerResponse { container_id: id })
    }

    pub(super) async fn start_container(
        &self,
        req: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse, Status> {
        // Under the sandbox's log guard, as verdicts are written: the log then holds the
        // verdict once, after the lines that lead to it.
        let sandbox = self.store().containers.get(&req.container_id).cloned();
        let guards = sandbox.as_deref().map(|s| self.guards(s));
        let _log = match &guards {
            Some(g) => Some(g.log.lock().await),
            None => None,
        };
        let (log_path, rec) = self.with_container(&req.container_id, |s, i| {
            let c = &s.containers[i];
            if c.phase != ContainerPhase::Created {
                return Err(Status::failed_precondition(format!(
                    "container {:?} is in {:?} state, not created",
                    c.id,
                    phase_cri(c.phase)
                )));
            }
            let c = &mut s.containers[i];
            c.phase = ContainerPhase::Running;
            c.started = Some(Stamp::now());
            Ok(c.log_path.clone())
        })?;
        let story = network_story(&rec, self.store().pods.get(&rec.meta.uid));
        log::append(&log_path, &story);
        self.persist_sandbox(&rec);
        if let Some(c) = rec.containers.iter().find(|c| c.id == req.container_id) {
            if !c.command.checks_only() {
                self.start_command(&rec.id, &c.id, c.command.clone(), log_path);
            }
        }
        Ok(cri::StartContainerResponse {})
    }

    pub(super) async fn stop_container(
        &self,
        req: cri::StopContainerRequest,
    ) -> Result<cri::StopContainerResponse, Status> {
        // A command gets SIGTERM, then SIGKILL after the grace period, and its exit is the
        // container's. With no process it stops at once and cleanly, as a process that
        // handles SIGTERM would.
        self.with_container(&req.container_id, |_, _| Ok(()))?;
        self.stop_command(
            &req.container_id,
            std::time::Duration::from_secs(req.timeout.max(0) as u64),
        )
        .await;
        let (log_path, rec) = self.with_container(&req.container_id, |s, i| {
            let c = &mut s.containers[i];
            let was_running = c.phase == ContainerPhase::Running;
            kill(c, Stamp::now(), 0, "Completed", "");
            Ok(was_running.then(|| c.log_path.clone()))
        })?;
        self.persist_sandbox(&rec);
        if let Some(path) = log_path {
            log::append(
                &path,
                &[format!(
                    "netready: stopped (grace period {} s)",
                    req.timeout
                )],
            );
        }
        Ok(cri::StopContainerResponse {})
    }

    pub(super) async fn remove_container(
        &self,
        req: cri::RemoveContainerRequest,
    ) -> Result<cri::RemoveContainerResponse, Status> {
        // kubelet removes a running container only when forced: its command goes at once.
        self.stop_command(&req.container_id, std::time::Duration::ZERO)
            .await;
        let rec = {
            let mut store = self.store();
            let Some(sid) = store.containers.remove(&req.container_id) else {
                return Ok(cri::RemoveContainerResponse {});
            };
            store.sandboxes.get_mut(&sid).map(|s| {
                s.containers.retain(|c| c.id != req.container_id);
                s.clone()
            })
        };
        if let Some(rec) = rec {
            self.persist_sandbox(&rec);
        }
        Ok(cri::RemoveContainerResponse {})
    }

    pub(super) async fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, Status> {
        let (status, rec) = self.with_container(&req.container_id, |s, i| {
            let c = &s.containers[i];
            Ok(cri::ContainerStatus {
                id: c.id.clone(),
                metadata: Some(container_metadata(c)),
                state: phase_cri(c.phase) as i32,
                created_at: cri_time(&c.created),
                started_at: c.started.as_ref().map(cri_time).unwrap_or_default(),
                finished_at: c.finished.as_ref().map(cri_time).unwrap_or_default(),
                exit_code: c.exit_code,
                image: Some(image_spec(c)),
                image_ref: c.image_ref.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                labels: c.labels.clone().into_iter().collect(),
                annotations: c.annotations.clone().into_iter().collect(),
                mounts: serde_json::from_value(c.mounts.clone()).unwrap_or_default(),
                log_path: c.log_path.clone(),
                resources: c
                    .resources
                    .clone()
                    .and_then(|r| serde_json::from_value(r).ok())
                    .map(|linux| cri::ContainerResources {
                        linux: Some(linux),
                        ..Default::default()
                    }),
                ..Default::default()
            })
        })?;
        // verbose: what the container's iperf3 command measured, as JSON.
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let iperf = rec
                .containers
                .iter()
                .find(|c| c.id == req.container_id)
                .and_then(|c| c.iperf.as_ref());
            if let Some(Ok(v)) = iperf.map(serde_json::to_string) {
                info.insert("netready.iperf3".to_string(), v);
            }
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub(super) async fn container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, Status> {
        let (st, _) =
            self.with_container(&req.container_id, |s, i| Ok(stats(s, &s.containers[i])))?;
        Ok(cri::ContainerStatsResponse { stats: Some(st) })
    }

    pub(super) async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse, Status> {
        let (_, rec) = self.with_container(&req.container_id, |s, i| {
            if let Some(linux) = req.linux {
                s.containers[i].resources = serde_json::to_value(linux).ok();
            }
            Ok(())
        })?;
        self.persist_sandbox(&rec);
        Ok(cri::UpdateContainerResourcesResponse {})
    }

    pub(super) async fn reopen_container_log(
        &self,
        req: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse, Status> {
        // Lines are appended with a fresh open each time: a rotated file is picked up anyway.
        self.with_container(&req.container_id, |s, i| {
            let c = &s.containers[i];
            if c.phase != ContainerPhase::Running {
                return Err(Status::failed_precondition(format!(
                    "container {:?} is not running",
                    c.id
                )));
            }
            Ok(())
        })?;
        Ok(cri::ReopenContainerLogResponse {})
    }

    /// Answers an exec probe from the pod's network state, whatever the command: exit 0 when
    /// the pod's network is ready, 1 (with the reason on stderr) when not. A failed probe is
    /// an OK reply with a non-zero exit code, as kubelet expects.
    pub(super) async fn exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, Status> {
        let (answer, _) = self.with_container(&req.container_id, |s, i| {
            let c = &s.containers[i];
            Ok(if c.phase != ContainerPhase::Running {
                Err(format!("container is {:?}", phase_cri(c.phase)))
            } else if s.phase != SandboxPhase::Ready {
                Err("pod network is torn down".to_string())
            } else {
                NetperfRuntime::network_ready(s)
                    .map(|()| format!("network ready: {}", s.ips.join(", ")))
            })
        })?;
        Ok(match answer {
            Ok(out) => cri::ExecSyncResponse {
                stdout: format!("{out}\n").into_bytes(),
                stderr: Vec::new(),
                exit_code: 0,
            },
            Err(why) => cri::ExecSyncResponse {
                stdout: Vec::new(),
                stderr: format!("not ready: {why}\n").into_bytes(),
                exit_code: 1,
            },
        })
    }
}
