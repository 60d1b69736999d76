//! What netready knows about its netperf pods, and how it survives a restart.
//!
//! One JSON file per sandbox (`sandboxes/<id>.json`, its containers inside) and one per pod
//! UID (`pods/<uid>.json`, the ADD attempts across kubelet's RunPodSandbox retries), each
//! replaced atomically (write to a temp file, rename). A sandbox's file is written before its
//! CNI ADD starts, so a netready killed mid-ADD finds it at start-up and tears it down.
//! Files are not fsynced: they must survive netready dying, not the machine.
//!
//! Plain data only: this module imports nothing of netready's runtime, so every other module
//! can build on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use netready_cni::{AttemptRecord, Failure, Stamp};
use netready_probe::plan::{CheckOutcome, Plan};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the on-disk layout; a file with another version is not loaded.
pub const STATE_VERSION: u32 = 1;

/// Lifecycle of a netperf sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxPhase {
    /// Record written, netns being made or made, CNI ADD running (never seen by kubelet); at
    /// start-up: torn down. Also a failed sandbox whose teardown failed, kept to try again.
    Adding,
    /// ADD succeeded: SANDBOX_READY.
    Ready,
    /// Stopped (DEL done, netns removed): SANDBOX_NOTREADY.
    Stopped,
}

/// Pod identity from `PodSandboxMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// kubelet's sandbox attempt.
    pub attempt: u32,
}

/// A DEL and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRecord {
    /// When it started.
    pub start: Stamp,
    /// When it ended.
    pub end: Stamp,
    /// Its error, if it failed.
    pub error: Option<Failure>,
}

/// A fake container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
}

/// A container of a netperf pod: no process, a state machine and a log file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Name and attempt (restart count).
    pub name: String,
    /// kubelet's attempt number.
    pub attempt: u32,
    /// The image as kubelet passed it (an image id).
    pub image: String,
    /// The image name the user wrote.
    pub user_image: String,
    /// `image_ref` reported in status.
    pub image_ref: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Absolute log path, empty when kubelet gave none.
    pub log_path: String,
    /// State.
    pub phase: ContainerPhase,
    /// Creation time.
    pub created: Stamp,
    /// Start time.
    pub started: Option<Stamp>,
    /// Exit time.
    pub finished: Option<Stamp>,
    /// Exit code.
    pub exit_code: i32,
    /// Reason (`Completed`, `Error`).
    pub reason: String,
    /// Message.
    pub message: String,
    /// Last resources from Create/UpdateContainerResources, as CRI JSON.
    pub resources: Option<Value>,
    /// Mounts as kubelet asked for them, as CRI JSON (echoed in status).
    pub mounts: Value,
}

/// A netperf sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Layout version.
    pub version: u32,
    /// Sandbox id.
    pub id: String,
    /// Pod identity.
    pub meta: PodMeta,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Runtime handler.
    pub runtime_handler: String,
    /// kubelet's pod log directory.
    pub log_directory: String,
    /// The pod netns path (`CNI_NETNS`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub cni_args: String,
    /// Capability args given to ADD, given to DEL again.
    pub capability_args: BTreeMap<String, Value>,
    /// State.
    pub phase: SandboxPhase,
    /// When RunPodSandbox for this sandbox arrived.
    pub created: Stamp,
    /// The last plugin's ADD result: the cache for DEL and CHECK.
    pub cni_result: Option<Value>,
    /// Pod IPs, primary first.
    pub ips: Vec<String>,
    /// This sandbox's successful ADD (every attempt of the pod is in its [`PodTiming`]).
    #[serde(default)]
    pub cni_add: Option<Span>,
    /// The DEL at stop.
    pub del: Option<DelRecord>,
    /// Containers.
    pub containers: Vec<ContainerRecord>,
    /// Reachability checks and the network verdict (absent until ADD succeeded).
    #[serde(default)]
    pub readiness: Option<Readiness>,
}

/// When something started and ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Start.
    pub start: Stamp,
    /// End.
    pub end: Stamp,
}

impl Span {
    /// End minus start.
    pub fn duration(&self) -> Duration {
        self.end.since(&self.start)
    }
}

/// Readiness of one sandbox: its checks, their verdict and the traffic after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// The plan the checks follow (config and pod annotations).
    pub plan: Plan,
    /// End of the successful ADD: checks are timed from here.
    pub origin: Stamp,
    /// Outcomes, once the checks finished.
    pub checks: Vec<CheckOutcome>,
    /// When the checks finished.
    pub finished: Option<Stamp>,
    /// When the last required check passed (network ready).
    pub ready_at: Option<Stamp>,
    /// Why the pod is not network-ready (`<check>: <last error>`).
    pub not_ready_reason: Option<String>,
    /// Whether traffic runs once the pod is network-ready.
    #[serde(default)]
    pub traffic_wanted: bool,
    /// The traffic's outcome.
    #[serde(default)]
    pub traffic: Option<TrafficOutcome>,
}

impl Readiness {
    /// Checks of a sandbox whose ADD ended at `origin`, not run yet.
    pub fn new(plan: Plan, origin: Stamp, traffic_wanted: bool) -> Self {
        Readiness {
            plan,
            origin,
            checks: Vec::new(),
            finished: None,
            ready_at: None,
            not_ready_reason: None,
            traffic_wanted,
            traffic: None,
        }
    }

    /// Whether the pod is network-ready.
    pub fn ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Whether nothing more will happen: the checks ended, and the traffic too when it was to
    /// run (only a network-ready pod sends). The pod's record is written then.
    pub fn complete(&self) -> bool {
        self.finished.is_some() && (!self.ready() || !self.traffic_wanted || self.traffic.is_some())
    }
}

/// What one pod's traffic achieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficOutcome {
    /// `ip:port` it sent to.
    pub target: String,
    /// Received throughput, bits per second.
    pub bits_per_second: Option<f64>,
    /// How long it sent.
    pub duration: Duration,
    /// Why there is no throughput.
    pub error: Option<String>,
}

impl TrafficOutcome {
    /// Traffic that did not run, and why.
    pub fn failed(target: String, duration: Duration, why: impl Into<String>) -> Self {
        TrafficOutcome {
            target,
            bits_per_second: None,
            duration,
            error: Some(why.into()),
        }
    }
}

impl SandboxRecord {
    /// The name containerd reserves for a sandbox: one per pod and attempt.
    pub fn reserved_name(meta: &PodMeta) -> String {
        format!(
            "{}_{}_{}_{}",
            meta.name, meta.namespace, meta.uid, meta.attempt
        )
    }
}

/// ADD timing of one pod UID, across every RunPodSandbox kubelet sent for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodTiming {
    /// Layout version.
    pub version: u32,
    /// Pod UID.
    pub uid: String,
    /// Namespace and name (for records; the UID identifies).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The first RunPodSandbox received for this UID.
    pub first_request: Stamp,
    /// RunPodSandbox calls received.
    pub run_calls: u32,
    /// Every ADD attempt until the first success (capped at [`MAX_ATTEMPTS_KEPT`]).
    pub attempts: Vec<AttemptRecord>,
    /// Attempts made in all (also those beyond the cap).
    pub attempt_count: u32,
    /// Start of the first attempt.
    pub first_attempt: Option<Stamp>,
    /// End of the first successful ADD.
    pub first_success: Option<Stamp>,
    /// Duration of that successful ADD.
    pub success_add: Option<Duration>,
    /// Attempts until the first success, that one included.
    pub attempts_to_success: Option<u32>,
    /// Last time anything happened to this pod (for forgetting pods that never succeed).
    pub last_seen: Stamp,
}

/// Attempt records kept per pod; a pod failing for hours keeps the first ones and a count.
pub const MAX_ATTEMPTS_KEPT: usize = 64;

impl PodTiming {
    /// A new record for the pod's first RunPodSandbox.
    pub fn new(meta: &PodMeta, now: Stamp) -> Self {
        PodTiming {
            version: STATE_VERSION,
            uid: meta.uid.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            first_request: now,
            run_calls: 0,
            attempts: Vec::new(),
            attempt_count: 0,
            first_attempt: None,
            first_success: None,
            success_add: None,
            attempts_to_success: None,
            last_seen: now,
        }
    }

    /// Records one ADD attempt.
    pub fn record(&mut self, a: &AttemptRecord) {
        self.last_seen = a.end;
        if self.first_success.is_some() {
            return;
        }
        self.attempt_count += 1;
        self.first_attempt.get_or_insert(a.start);
        if self.attempts.len() < MAX_ATTEMPTS_KEPT {
            self.attempts.push(a.clone());
        }
        if a.error.is_none() {
            self.first_success = Some(a.end);
            self.success_add = Some(a.duration());
            self.attempts_to_success = Some(self.attempt_count);
        }
    }

    /// First attempt start to first success end.
    pub fn first_to_success(&self) -> Option<Duration> {
        Some(self.first_success?.since(&self.first_attempt?))
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s != "."
        && s != ".."
}

impl StateDir {
    /// Opens (creating) the directory layout under `root`.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sandboxes"))?;
        std::fs::create_dir_all(root.join("pods"))?;
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(value).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }

    fn sandbox_path(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(format!("{id}.json"))
    }

    fn pod_path(&self, uid: &str) -> Option<PathBuf> {
        // A UID names a file: only characters a UID can have.
        safe_name(uid).then(|| self.root.join("pods").join(format!("{uid}.json")))
    }

    /// Writes a sandbox's record.
    pub fn save_sandbox(&self, s: &SandboxRecord) -> std::io::Result<()> {
        Self::write_atomic(&self.sandbox_path(&s.id), s)
    }

    /// Deletes a sandbox's record; already gone is fine.
    pub fn remove_sandbox(&self, id: &str) -> std::io::Result<()> {
        remove_file(&self.sandbox_path(id))
    }

    /// Writes a pod's timing.
    pub fn save_pod(&self, p: &PodTiming) -> std::io::Result<()> {
        match self.pod_path(&p.uid) {
            Some(path) => Self::write_atomic(&path, p),
            None => Ok(()),
        }
    }

    /// Deletes a pod's timing; already gone is fine.
    pub fn remove_pod(&self, uid: &str) -> std::io::Result<()> {
        match self.pod_path(uid) {
            Some(path) => remove_file(&path),
            None => Ok(()),
        }
    }

    /// Loads every record; unreadable files are reported and skipped, never fatal.
    pub fn load(&self) -> (Vec<SandboxRecord>, Vec<PodTiming>) {
        (self.load_dir("sandboxes"), self.load_dir("pods"))
    }

    fn load_dir<T: for<'de> Deserialize<'de> + Versioned>(&self, dir: &str) -> Vec<T> {
        let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                // A leftover .json.tmp from a write interrupted by a crash.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if r.version() == STATE_VERSION => out.push(r),
                Ok(r) => {
                    tracing::warn!(file = %path.display(), version = r.version(), "state file of another layout version, ignored")
                }
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "unreadable state file, ignored")
                }
            }
        }
        out
    }
}

/// Records that carry a layout version.
pub trait Versioned {
    /// The layout version.
    fn version(&self) -> u32;
}
impl Versioned for SandboxRecord {
    fn version(&self) -> u32 {
        self.version
    }
}
impl Versioned for PodTiming {
    fn version(&self) -> u32 {
        self.version
    }
}

fn remove_file(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
