//! The sandbox verbs of a netperf pod. RunPodSandbox follows containerd's
//! `internal/cri/server/sandbox_run.go` and reads top to bottom in one function; its undo
//! steps are in `rollback.rs`.

use std::collections::BTreeMap;

use netready_cni::{retry, runtime_config, Attachment, Stamp};
use netready_metrics::{Outcome, ReasonLabels, ResultLabels};
use serde_json::Value;
use tonic::Status;

use super::rollback::{self, Rollback, Undo};
use super::state::{
    DelRecord, PodMeta, PodTiming, Readiness, SandboxPhase, SandboxRecord, Span, STATE_VERSION,
};
use super::{container, cri_time, new_id, Loopback, NetperfRuntime};
use crate::cri;

fn invalid(field: &str, what: &str) -> Status {
    Status::invalid_argument(format!("{field}: {what}"))
}

/// Capability args for CNI from the sandbox config, under libcni's capability names (built
/// by netready-cni, as libcni's caller builds them).
///
/// Fails (INVALID_ARGUMENT, naming the annotation and its value) on a bandwidth annotation
/// containerd would refuse: not a Kubernetes quantity, negative, or outside 1 kbit/s–1 Pbit/s.
/// Dropping it instead would run the pod unshaped and measure the wrong thing.
fn capability_args(config: &cri::PodSandboxConfig) -> Result<BTreeMap<String, Value>, Status> {
    let spec = runtime_config::PodSpec {
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| runtime_config::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp",
                    Ok(cri::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                },
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        annotations: &config.annotations,
        dns: config.dns_config.as_ref().map(|d| runtime_config::Dns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
    };
    runtime_config::capability_args(&spec)
        .map_err(|e| Status::invalid_argument(format!("config.annotations: {e}")))
}

/// The record as kubelet lists it.
pub(super) fn to_cri(s: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: s.id.clone(),
        metadata: Some(metadata(&s.meta)),
        state: state_of(s) as i32,
        created_at: cri_time(&s.created),
        labels: s.labels.clone().into_iter().collect(),
        annotations: s.annotations.clone().into_iter().collect(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

fn metadata(m: &PodMeta) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn state_of(s: &SandboxRecord) -> cri::PodSandboxState {
    match s.phase {
        SandboxPhase::Ready => cri::PodSandboxState::SandboxReady,
        _ => cri::PodSandboxState::SandboxNotready,
    }
}

/// Sandbox stats: netperf pods use no CPU or memory of their own.
pub(super) fn stats(s: &SandboxRecord) -> cri::PodSandboxStats {
    let now = Stamp::now().wall_ns as i64;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: Some(metadata(&s.meta)),
            labels: s.labels.clone().into_iter().collect(),
            annotations: s.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(container::zero_cpu(now)),
            memory: Some(container::zero_memory(now)),
            containers: s
                .containers
                .iter()
                .map(|c| container::stats(s, c))
                .collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The pod annotation asking for the built-in HTTP load after network ready:
/// `rate=100,duration=10s[,connections=4][,target=service|same-node|<ip:port>][,path=/][,timeout=2s]`.
pub const HTTP_LOAD_ANNOTATION: &str = "netready.io/http-load";

/// The control pods' HTTP port (`target=same-node`), as the kubemark templates and
/// `netready local` run them.
pub const CONTROL_HTTP_PORT: u16 = 8080;

/// A RunPodSandbox request that passed validation: everything the lifecycle needs from it.
struct Validated {
    meta: PodMeta,
    config: cri::PodSandboxConfig,
    runtime_handler: String,
    plan: netready_probe::plan::Plan,
    traffic_wanted: bool,
    http_load: Option<netready_probe::load::LoadPlan>,
    ports: Vec<super::serve::ServedPort>,
    capability_args: BTreeMap<String, Value>,
}

/// Checks a RunPodSandbox before anything is made, so a refusal leaves nothing to undo.
/// kubelet always sends these fields; a client that does not is told which.
fn validate(
    req: cri::RunPodSandboxRequest,
    cfg: &super::NetperfConfig,
) -> Result<Validated, Status> {
    let config = req.config.ok_or_else(|| invalid("config", "missing"))?;
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "missing"))?;
    for (field, v) in [
        ("name", &m.name),
        ("uid", &m.uid),
        ("namespace", &m.namespace),
    ] {
        if v.is_empty() {
            return Err(invalid(&format!("config.metadata.{field}"), "empty"));
        }
    }
    let meta = PodMeta {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    };
    let annotations: BTreeMap<String, String> = config.annotations.clone().into_iter().collect();
    let plan = super::checks::plan_for(&cfg.checks, &annotations)
        .map_err(|e| Status::invalid_argument(format!("config.annotations: {e}")))?;
    let traffic_wanted = match annotations.get("netready.io/traffic").map(String::as_str) {
        None => cfg.traffic.enabled,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            let shown: String = other.chars().take(64).collect();
            return Err(Status::invalid_argument(format!(
                "config.annotations: annotation netready.io/traffic: {shown:?}{} is not true or false",
                if shown.len() < other.len() { "..." } else { "" }
            )));
        }
    };
    let http_load = match annotations.get(HTTP_LOAD_ANNOTATION) {
        None => None,
        Some(v) => Some(
            netready_probe::load::LoadPlan::parse(v, CONTROL_HTTP_PORT).map_err(|e| {
                let msg = format!("config.annotations: annotation {HTTP_LOAD_ANNOTATION}: {e}");
                let cut: String = msg.chars().take(super::checks::MAX_ERROR_LEN).collect();
                Status::invalid_argument(cut)
            })?,
        ),
    };
    // Read again when the command starts; refused here so that a typo fails the pod at once,
    // as kubelet shows it, instead of each container exiting 126 after the checks.
    // The error shows at most 64 characters of the value: no cut needed.
    super::command::timeout(&annotations)
        .map_err(|e| Status::invalid_argument(format!("config.annotations: {e}")))?;
    let mut ports = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                invalid(
                    &format!("config.port_mappings[{i}].container_port"),
                    &format!("{} is not a port (1-65535)", p.container_port),
                )
            })?;
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            _ => "tcp",
        };
        let served = super::serve::ServedPort {
            protocol: protocol.into(),
            port,
        };
        // hostPort mappings repeat a container port per host port: served once.
        if !ports.contains(&served) {
            ports.push(served);
        }
    }
    let capability_args = capability_args(&config)?;
    Ok(Validated {
        meta,
        config,
        runtime_handler: req.runtime_handler,
        plan,
        traffic_wanted,
        http_load,
        ports,
        capability_args,
    })
}

// === impl NetperfRuntime: sandbox verbs ===

impl NetperfRuntime {
    /// RunPodSandbox, in containerd's order (`sandbox_run.go`): validate, reserve the name,
    /// record, netns, loopback, ADD (timed, retried), ready. Each step's undo is registered
    /// with `undo` as soon as the step is done; on any error they run in reverse, so a failed
    /// call leaves nothing and kubelet simply retries it (traces: cni-failure).
    ///
    /// The record is written before the netns exists (containerd makes the netns first): a
    /// netready killed between the two then still finds, at start-up, the record naming the
    /// netns it may have made, and tears both down.
    pub(super) async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, Status> {
        let received = Stamp::now();
        let _busy = self.inner.spares.as_ref().map(|s| s.busy());
        // 1. Validate.
        let v = validate(req, self.cfg())?;
        let id = new_id();
        let mut undo = Rollback::default();
        let outcome = async {
            // 2. Reserve the name, and count the call against the pod's UID.
            let name = SandboxRecord::reserved_name(&v.meta);
            let forgotten = {
                let mut store = self.store();
                if let Some(other) = store.names.get(&name) {
                    return Err(Status::already_exists(format!(
                        "sandbox name {name:?} is reserved for {other:?}"
                    )));
                }
                store.names.insert(name.clone(), id.clone());
                let pod = store
                    .pods
                    .entry(v.meta.uid.clone())
                    .or_insert_with(|| PodTiming::new(&v.meta, received));
                pod.run_calls += 1;
                pod.last_seen = received;
                store.prune(received, self.cfg().forget_failed_after)
            };
            undo.push(Undo::ReleaseName(name));
            for uid in forgotten {
                let _ = self.inner.state.remove_pod(&uid);
            }
            let net = self.network().map_err(|e| {
                Status::unknown(format!("failed to setup network for sandbox {id:?}: {e}"))
            })?;
            // 3. The record, naming the netns to be made (`cni-<uuid>`, as containerd names it)
            // or the spare taken from the pool.
            let lo = self.cfg().cni.loopback;
            let spare = self.inner.spares.as_ref().and_then(|s| s.take());
            let netns = match &spare {
                Some(s) => s.path().to_owned(),
                None => self.cfg().netns_dir.join(format!("cni-{}", uuid_like())),
            };
            let mut rec = SandboxRecord {
                version: STATE_VERSION,
                id: id.clone(),
                labels: v.config.labels.clone().into_iter().collect(),
                annotations: v.config.annotations.clone().into_iter().collect(),
                runtime_handler: v.runtime_handler.clone(),
                log_directory: v.config.log_directory.clone(),
                netns,
                ifname: self.cfg().cni.ifname.clone(),
                cni_args: netready_cni::exec::k8s_args(
                    &v.meta.namespace,
                    &v.meta.name,
                    &id,
                    &v.meta.uid,
                ),
                capability_args: v.capability_args.clone(),
                ports: v.ports.clone(),
                meta: v.meta.clone(),
                phase: SandboxPhase::Adding,
                created: received,
                cni_result: None,
                ips: Vec::new(),
                cni_add: None,
                del: None,
                containers: Vec::new(),
                readiness: None,
            };
            self.inner.state.save_sandbox(&rec).map_err(|e| {
                Status::internal(format!("failed to save sandbox {id:?} state: {e}"))
            })?;
            self.store().sandboxes.insert(id.clone(), rec.clone());
            undo.push(Undo::ForgetRecord(id.clone()));
            super::crash::reached("run:recorded");
            // 4. The netns, and 5. loopback, untimed (its undo is the netns's): set up over
            // netlink by the thread making the netns, or by the `loopback` plugin. A spare
            // (made the same way) is the pod's once its record names it.
            match spare {
                Some(spare) => spare.claim(),
                None => {
                    let (ns, path) = (self.inner.namespaces.clone(), rec.netns.clone());
                    tokio::task::spawn_blocking(move || ns.create(&path, lo == Loopback::Netlink))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)
                        .map_err(|e| {
                            Status::internal(format!(
                                "failed to create network namespace for sandbox {id:?}: {e}"
                            ))
                        })?;
                }
            }
            undo.push(Undo::RemoveNetns(rec.netns.clone()));
            let att = rollback::attachment(&rec);
            if lo == Loopback::Plugin {
                let lo = Attachment {
                    ifname: "lo".into(),
                    ..att.clone()
                };
                self.inner.loopback.add(&lo).await.map_err(|e| {
                    Status::unknown(format!("failed to set up loopback for sandbox {id:?}: {e}"))
                })?;
            }
            super::crash::reached("run:netns");
            // 6. CNI ADD, retried, every attempt counted against the pod. Its undo comes first:
            // an ADD that fails half-way holds what the plugins before the failing one made.
            undo.push(Undo::Del(att.clone()));
            let mut last = None;
            let policy = self.cfg().retry.policy();
            let added = retry::add_with_retry(&net, &att, &policy, &self.inner.gate, |a| {
                last = Some(Span {
                    start: a.start,
                    end: a.end,
                });
                self.attempt_made(&rec.meta.uid, a);
            })
            .await
            .map_err(|e| {
                tracing::warn!(sandbox = %id, error = %e, "netperf sandbox failed");
                self.count_failure(super::metrics::CNI_ADD);
                Status::unknown(format!("failed to setup network for sandbox {id:?}: {e}"))
            })?;
            // 7. Ready: checks start, timed from the ADD's end.
            super::crash::reached("run:added");
            let span = last.expect("an ADD that succeeded made an attempt");
            rec.ips = runtime_config::pod_ips(&added.result, &att.netns, &att.ifname);
            rec.cni_result = Some(added.raw);
            rec.cni_add = Some(span);
            rec.phase = SandboxPhase::Ready;
            let mut readiness = Readiness::new(v.plan.clone(), span.end, v.traffic_wanted);
            readiness.http_load_wanted = v.http_load.clone();
            rec.readiness = Some(readiness);
            // The pod's timing before the ready record: a restart that finds the sandbox
            // ready finds what its record is written from.
            let timing = self.store().pods.get(&v.meta.uid).cloned();
            if let Some(t) = timing {
                self.persist_pod(&t);
            }
            self.persist_sandbox(&rec);
            self.store().sandboxes.insert(id.clone(), rec.clone());
            tracing::info!(sandbox = %id, pod = %format!("{}/{}", rec.meta.namespace, rec.meta.name),
                ips = ?rec.ips, add_ms = span.duration().as_secs_f64() * 1e3, "netperf sandbox ready");
            self.start_readiness(&rec);
            self.start_servers(&rec).await;
            if let Some(m) = self.metrics() {
                m.pods_created.inc();
            }
            super::crash::reached("run:ready");
            if let Some(p) = self.store().pods.get_mut(&v.meta.uid) {
                p.answered.get_or_insert_with(Stamp::now);
            }
            Ok(())
        }
        .await;
        match &outcome {
            // The pod's attempts were saved with its ready record.
            Ok(()) => undo.disarm(),
            Err(_) => {
                undo.run(self, &id).await;
                // The failed call's attempts, for kubelet's retry to count from the first: a
                // crash mid-call loses that call's attempts, never a sandbox.
                let timing = self.store().pods.get(&v.meta.uid).cloned();
                if let Some(t) = timing {
                    self.persist_pod(&t);
                }
            }
        }
        outcome.map(|()| cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    /// Counts one ADD attempt against its pod, and in the metrics.
    fn attempt_made(&self, uid: &str, a: &netready_cni::AttemptRecord) {
        let first_success = self.store().pods.get_mut(uid).and_then(|p| {
            let before = p.first_success;
            p.record(a);
            (before.is_none() && p.first_success.is_some())
                .then(|| (p.first_to_success(), p.attempts_to_success))
        });
        let Some(m) = self.metrics() else {
            return;
        };
        m.cni_add_duration
            .get_or_create(&ResultLabels {
                result: Outcome::of(a.error.is_none()),
            })
            .observe(a.duration().as_secs_f64());
        let del_failure = a.cleanup.as_ref().and_then(|(_, e)| e.as_ref());
        for (command, failure) in [("add", a.error.as_ref()), ("del", del_failure)] {
            if let Some(f) = failure {
                m.cni_failures
                    .get_or_create(&super::metrics::CniFailureLabels {
                        command,
                        reason: netready_cni::error::bounded_reason(&f.reason),
                    })
                    .inc();
            }
        }
        if let Some((f2s, n)) = first_success {
            m.cni_add_first_to_success
                .observe(f2s.unwrap_or_default().as_secs_f64());
            m.cni_add_attempts.observe(f64::from(n.unwrap_or(1)));
        }
    }

    /// Counts a pod that will not become network-ready, by a bounded reason.
    pub(super) fn count_failure(&self, reason: &'static str) {
        if let Some(m) = self.metrics() {
            m.network_ready_failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
    }

    /// Observes one DEL of a chain.
    pub(super) fn observe_del(&self, span: Span, error: Option<&netready_cni::Error>) {
        if let Some(m) = self.metrics() {
            m.cni_del_duration
                .get_or_create(&ResultLabels {
                    result: Outcome::of(error.is_none()),
                })
                .observe(span.duration().as_secs_f64());
            if let Some(e) = error {
                m.cni_failures
                    .get_or_create(&super::metrics::CniFailureLabels {
                        command: "del",
                        reason: e.reason(),
                    })
                    .inc();
            }
        }
    }

    /// Tears down a sandbox found in the `Adding` phase at start-up: kubelet never learned
    /// its id. The undo steps are RunPodSandbox's own, rebuilt from the record.
    pub(super) async fn teardown_interrupted(&self, rec: SandboxRecord) {
        self.store()
            .names
            .insert(SandboxRecord::reserved_name(&rec.meta), rec.id.clone());
        self.store().sandboxes.insert(rec.id.clone(), rec.clone());
        Rollback::for_record(&rec).run(self, &rec.id).await;
    }

    pub(super) async fn stop_pod_sandbox(
        &self,
        req: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse, Status> {
        let id = req.pod_sandbox_id;
        // One stop or remove of a sandbox at a time: kubelet retries a stop whose DEL outlives
        // its deadline, and a second DEL beside the first, or a remove under it, would leave a
        // record written back after its removal.
        let guards = self.guards(&id);
        let _one = guards.lifecycle.lock().await;
        let stopped = self.stop_locked(&id).await;
        if !self.store().sandboxes.contains_key(&id) {
            // A stop that came after the remove (kubelet's pod worker racing its garbage
            // collector) made the guards again: nothing removes them later.
            self.forget_guards(&id);
        }
        stopped?;
        Ok(cri::StopPodSandboxResponse {})
    }

    /// StopPodSandbox with the sandbox's lifecycle lock held: the checks stopped (their
    /// record written), containers killed, CNI DEL, then the netns removed. A failing DEL or
    /// netns removal leaves the sandbox up for kubelet to stop again (traces:
    /// cni-failure-missing-plugin); DEL again is harmless.
    async fn stop_locked(&self, id: &str) -> Result<(), Status> {
        self.stop_readiness(id).await;
        // Commands go before the network they use, killed at once, as containerd kills a
        // sandbox's containers.
        let running: Vec<String> = self
            .store()
            .sandboxes
            .get(id)
            .map(|s| s.containers.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        for cid in running {
            self.stop_command(&cid, std::time::Duration::ZERO).await;
        }
        let servers = self
            .inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(s) = servers {
            s.stop().await;
        }
        let rec = {
            let mut store = self.store();
            let rec = store
                .sandboxes
                .get_mut(id)
                .ok_or_else(|| Status::not_found(format!("sandbox {id:?} not found")))?;
            // Containers still running are killed with the sandbox, as containerd does.
            let now = Stamp::now();
            for c in rec.containers.iter_mut() {
                container::kill(c, now, 137, "Error", "sandbox stopped");
            }
            rec.clone()
        };
        if rec.phase == SandboxPhase::Stopped {
            self.persist_sandbox(&rec);
            return Ok(());
        }
        let net = self.network().map_err(|e| {
            Status::unknown(format!("failed to destroy network for sandbox {id:?}: {e}"))
        })?;
        let mut att = rollback::attachment(&rec);
        // A netns gone, or left a plain file by a netready killed between its unmount and
        // its removal: DEL with an empty CNI_NETNS, as libcni allows, so the plugins still
        // release what they hold instead of failing on the path.
        if !self.inner.namespaces.exists(&rec.netns) {
            att.netns.clear();
        }
        let permit = self.inner.gate.enter(netready_cni::Work::Del).await;
        let start = Stamp::now();
        let del = net.del(&att, rec.cni_result.as_ref()).await;
        drop(permit);
        let record = DelRecord {
            start,
            end: Stamp::now(),
            error: del.as_ref().err().map(netready_cni::Failure::from),
        };
        self.observe_del(
            Span {
                start: record.start,
                end: record.end,
            },
            del.as_ref().err(),
        );
        super::crash::reached("stop:deleted");
        let removed = match &del {
            Ok(()) => {
                let (ns, path) = (self.inner.namespaces.clone(), rec.netns.clone());
                tokio::task::spawn_blocking(move || ns.remove(&path))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
            }
            Err(_) => Ok(()),
        };
        super::crash::reached("stop:netns-removed");
        let updated = {
            let mut store = self.store();
            let Some(r) = store.sandboxes.get_mut(id) else {
                return Ok(());
            };
            r.del = Some(record);
            if del.is_ok() && removed.is_ok() {
                r.phase = SandboxPhase::Stopped;
            }
            r.clone()
        };
        self.persist_sandbox(&updated);
        if let Err(e) = del {
            return Err(Status::unknown(format!(
                "failed to destroy network for sandbox {id:?}: {e}"
            )));
        }
        removed.map_err(|e| {
            Status::unknown(format!(
                "failed to remove network namespace {} of sandbox {id:?}: {e}",
                updated.netns.display()
            ))
        })
    }

    pub(super) async fn remove_pod_sandbox(
        &self,
        req: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse, Status> {
        let id = req.pod_sandbox_id;
        let guards = self.guards(&id);
        let _one = guards.lifecycle.lock().await;
        let ready = self
            .store()
            .sandboxes
            .get(&id)
            .map(|s| s.phase != SandboxPhase::Stopped);
        match ready {
            None => {
                self.forget_guards(&id);
                return Ok(cri::RemovePodSandboxResponse {});
            }
            // Remove of a sandbox still up stops it first (containerd force-stops too).
            Some(true) => self.stop_locked(&id).await?,
            Some(false) => {}
        }
        let (rec, forget_pod) = {
            let mut store = self.store();
            let Some(rec) = store.sandboxes.remove(&id) else {
                return Ok(cri::RemovePodSandboxResponse {});
            };
            store.names.remove(&SandboxRecord::reserved_name(&rec.meta));
            for c in &rec.containers {
                store.containers.remove(&c.id);
            }
            let uid = rec.meta.uid.clone();
            let others = store.sandboxes.values().any(|s| s.meta.uid == uid);
            if !others {
                store.pods.remove(&uid);
            }
            (rec, !others)
        };
        if let Err(e) = self.inner.state.remove_sandbox(&id) {
            tracing::error!(sandbox = %id, error = %e, "removing sandbox state");
        }
        if let Some(m) = self.metrics() {
            m.pods_deleted.inc();
        }
        super::crash::reached("remove:sandbox-removed");
        if forget_pod {
            let _ = self.inner.state.remove_pod(&rec.meta.uid);
        }
        self.forget_guards(&id);
        Ok(cri::RemovePodSandboxResponse {})
    }

    pub(super) async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, Status> {
        let store = self.store();
        let s = store.sandboxes.get(&req.pod_sandbox_id).ok_or_else(|| {
            Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        let mut ips = s.ips.iter();
        let network = if s.phase == SandboxPhase::Ready {
            Some(cri::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            })
        } else {
            Some(cri::PodSandboxNetworkStatus::default())
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let timing = store.pods.get(&s.meta.uid);
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "netNamespacePath": s.netns,
                    "cniResult": s.cni_result,
                    "attempts": timing.map(|t| &t.attempts),
                    "cniAdd": s.cni_add,
                    "del": s.del,
                    "podTiming": timing,
                })
                .to_string(),
            );
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: s.id.clone(),
                metadata: Some(metadata(&s.meta)),
                state: state_of(s) as i32,
                created_at: cri_time(&s.created),
                network,
                linux: Some(cri::LinuxPodSandboxStatus {
                    namespaces: Some(cri::Namespace {
                        options: Some(cri::NamespaceOption {
                            network: cri::NamespaceMode::Pod as i32,
                            pid: cri::NamespaceMode::Container as i32,
                            ipc: cri::NamespaceMode::Pod as i32,
                            ..Default::default()
                        }),
                    }),
                }),
                labels: s.labels.clone().into_iter().collect(),
                annotations: s.annotations.clone().into_iter().collect(),
                runtime_handler: s.runtime_handler.clone(),
            }),
            info,
            ..Default::default()
        })
    }

    pub(super) async fn pod_sandbox_stats(
        &self,
        req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, Status> {
        let store = self.store();
        let s = store.sandboxes.get(&req.pod_sandbox_id).ok_or_else(|| {
            Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(stats(s)),
        })
    }
}

/// A random UUID-shaped name, as containerd's `cni-<uuid>` netns names.
pub(super) fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_args_follow_libcni_names() {
        let config = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                // No host port: nothing to map (kubelet sends these for containerPort only).
                cri::PortMapping {
                    container_port: 80,
                    ..Default::default()
                },
            ],
            annotations: [(
                "kubernetes.io/ingress-bandwidth".to_string(),
                "10M".to_string(),
            )]
            .into(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        let caps = capability_args(&config).unwrap();
        assert_eq!(
            caps["portMappings"],
            serde_json::json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}])
        );
        assert_eq!(caps["bandwidth"]["ingressRate"], 10_000_000);
        assert!(caps["bandwidth"].get("egressRate").is_none());
        assert_eq!(caps["dns"]["servers"][0], "10.96.0.10");
    }

    #[test]
    fn pods_without_sandboxes_are_forgotten_after_ttl() {
        use super::super::Store;
        let meta = PodMeta {
            name: "p".into(),
            uid: "u1".into(),
            namespace: "ns".into(),
            attempt: 0,
        };
        let t0 = Stamp {
            mono_ns: 1_000_000_000_000,
            wall_ns: 0,
        };
        let mut store = Store::default();
        store.pods.insert("u1".into(), PodTiming::new(&meta, t0));
        let soon = Stamp {
            mono_ns: t0.mono_ns + 61_000_000_000,
            ..t0
        };
        assert!(store
            .prune(soon, std::time::Duration::from_secs(3600))
            .is_empty());
        let later = Stamp {
            mono_ns: t0.mono_ns + 3_700_000_000_000,
            ..t0
        };
        assert_eq!(
            store.prune(later, std::time::Duration::from_secs(3600)),
            ["u1"]
        );
        assert!(store.pods.is_empty());
    }

    #[test]
    fn bandwidth_annotations_reach_runtime_config_in_bits_per_second() {
        let config = |ingress: &str, egress: &str| cri::PodSandboxConfig {
            annotations: [
                (
                    "kubernetes.io/ingress-bandwidth".to_string(),
                    ingress.to_string(),
                ),
                (
                    "kubernetes.io/egress-bandwidth".to_string(),
                    egress.to_string(),
                ),
            ]
            .into(),
            ..Default::default()
        };
        for (ingress, egress, want_in, want_eg) in [
            ("1.5M", "1T", 1_500_000u64, 1_000_000_000_000u64),
            ("10Mi", "1e6", 10 << 20, 1_000_000),
            ("1500000000m", "2.5k", 1_500_000, 2_500),
            ("0.1Gi", "1E3", 107_374_183, 1_000), // 107374182.4, rounded up
        ] {
            let caps = capability_args(&config(ingress, egress)).unwrap();
            assert_eq!(
                caps["bandwidth"],
                serde_json::json!({"ingressRate": want_in, "ingressBurst": u32::MAX,
                                   "egressRate": want_eg, "egressBurst": u32::MAX}),
                "{ingress} {egress}"
            );
        }
        for (bad, why) in [
            ("fast", "not a Kubernetes quantity"),
            ("10 M", "not a Kubernetes quantity"),
            ("-1M", "negative"),
            ("100m", "unreasonably small"),
            ("2P", "unreasonably large"),
        ] {
            let e = capability_args(&config("1M", bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().contains(&format!(
                    "annotation kubernetes.io/egress-bandwidth: {bad:?} is {why}"
                )),
                "{}",
                e.message()
            );
        }
        // An annotation as long as a CRI message allows: refused at once, its value cut.
        let long = "1".repeat(16 << 20);
        let e = capability_args(&config("1M", &long)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            format!(
                "config.annotations: annotation kubernetes.io/egress-bandwidth: {:?}... is not a \
                 Kubernetes quantity: 16777216 bytes long (at most 64)",
                "1".repeat(64)
            )
        );
        assert!(e.message().len() < 300, "{}", e.message().len());
        let none = capability_args(&cri::PodSandboxConfig::default()).unwrap();
        assert!(!none.contains_key("bandwidth"));
    }
}
