//! What netready knows about its netperf pods, and how it survives a restart.
//!
//! One JSON file per sandbox (`sandboxes/<id>.<gen>.json`, its containers inside) and one per
//! pod UID (`pods/<uid>.<gen>.json`, the ADD attempts across kubelet's RunPodSandbox retries).
//! A sandbox's file is written before its CNI ADD starts, so a netready killed mid-ADD finds it
//! at start-up and tears it down. Files are not fsynced: they must survive netready dying, not
//! the machine.
//!
//! Each save writes a new generation under a name that does not exist yet (temp file, rename),
//! then unlinks the previous one; the highest generation wins at start-up. Renaming over an
//! existing file would be simpler, but ext4 (`auto_da_alloc`, on by default) starts writeback
//! of the new file's data on every rename that replaces one, and a lifecycle saves its sandbox
//! about five times: the `netperf` bench's no-op arm ran at 0.70 of direct on ext4 against 0.82
//! with the state on tmpfs.
//!
//! Plain data only: this module imports nothing of netready's runtime, so every other module
//! can build on it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// The command to run once the pod is network-ready (empty: checks only).
    #[serde(default)]
    pub command: super::command::CommandSpec,
    /// What its iperf3 client command measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iperf: Option<netready_record::Iperf3>,
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
    /// Ports the pod declared (`port_mappings`), served once its network is up.
    #[serde(default)]
    pub ports: Vec<super::serve::ServedPort>,
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
    /// The built-in HTTP load to send once network-ready (`netready.io/http-load`).
    #[serde(default)]
    pub http_load_wanted: Option<netready_probe::load::LoadPlan>,
    /// What it measured.
    #[serde(default)]
    pub http_load: Option<netready_record::HttpLoad>,
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
            http_load_wanted: None,
            http_load: None,
        }
    }

    /// Whether the traffic run is still to happen.
    pub fn traffic_due(&self) -> bool {
        self.ready() && self.traffic_wanted && self.traffic.is_none()
    }

    /// Whether the HTTP load is still to happen.
    pub fn http_load_due(&self) -> bool {
        self.ready() && self.http_load_wanted.is_some() && self.http_load.is_none()
    }

    /// Whether the pod is network-ready.
    pub fn ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Whether nothing more will happen: the checks ended, and the traffic and HTTP load too
    /// when they were to run (only a network-ready pod sends). The pod's record is written then.
    pub fn complete(&self) -> bool {
        self.finished.is_some() && !self.traffic_due() && !self.http_load_due()
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
    /// Current generation of each file, by (directory, key). Saves and removals of one store
    /// hold the lock for their few syscalls, so two saves of one record cannot interleave
    /// their rename and unlink.
    gens: Arc<Mutex<HashMap<(&'static str, String), u64>>>,
}

const SANDBOXES: &str = "sandboxes";
const PODS: &str = "pods";

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s != "."
        && s != ".."
}

/// `<key>.<gen>.json` → (key, gen); a file of an older layout, `<key>.json`, is generation 0.
fn parse_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(".json")?;
    match stem.rsplit_once('.') {
        Some((key, gen)) if !gen.is_empty() && gen.bytes().all(|b| b.is_ascii_digit()) => {
            Some((key, gen.parse().ok()?))
        }
        _ => Some((stem, 0)),
    }
}

fn file_name(key: &str, gen: u64) -> String {
    if gen == 0 {
        format!("{key}.json")
    } else {
        format!("{key}.{gen}.json")
    }
}

impl StateDir {
    /// Opens (creating) the directory layout under `root`, and tidies what a crash can leave:
    /// temp files, and generations a later one replaced.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let mut gens = HashMap::new();
        for dir in [SANDBOXES, PODS] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)?;
            for e in std::fs::read_dir(&path)?.flatten() {
                let name = e.file_name();
                let Some((key, gen)) = name.to_str().and_then(parse_name) else {
                    // A temp file of a write a crash interrupted.
                    let _ = std::fs::remove_file(e.path());
                    continue;
                };
                let current = gens.entry((dir, key.to_owned())).or_insert(gen);
                let stale = if gen > *current {
                    std::mem::replace(current, gen)
                } else if gen < *current {
                    gen
                } else {
                    continue;
                };
                let _ = std::fs::remove_file(path.join(file_name(key, stale)));
            }
        }
        Ok(StateDir {
            root: root.to_owned(),
            gens: Arc::new(Mutex::new(gens)),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write(&self, dir: &'static str, key: &str, value: &impl Serialize) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        let base = self.root.join(dir);
        let mut gens = self.gens.lock().unwrap_or_else(|p| p.into_inner());
        let current = gens.get(&(dir, key.to_owned())).copied();
        let next = current.map_or(1, |g| g + 1);
        let tmp = base.join(format!("{key}.{next}.tmp"));
        std::fs::write(&tmp, bytes)?;
        if let Err(e) = std::fs::rename(&tmp, base.join(file_name(key, next))) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        gens.insert((dir, key.to_owned()), next);
        match current {
            Some(old) => remove_file(&base.join(file_name(key, old))),
            None => Ok(()),
        }
    }

    fn remove(&self, dir: &'static str, key: &str) -> std::io::Result<()> {
        let mut gens = self.gens.lock().unwrap_or_else(|p| p.into_inner());
        match gens.remove(&(dir, key.to_owned())) {
            Some(gen) => remove_file(&self.root.join(dir).join(file_name(key, gen))),
            None => Ok(()),
        }
    }

    /// Writes a sandbox's record.
    pub fn save_sandbox(&self, s: &SandboxRecord) -> std::io::Result<()> {
        if !safe_name(&s.id) {
            return Err(std::io::Error::other(format!(
                "sandbox id {:?} cannot name a file",
                s.id
            )));
        }
        self.write(SANDBOXES, &s.id, s)
    }

    /// Deletes a sandbox's record; already gone is fine.
    pub fn remove_sandbox(&self, id: &str) -> std::io::Result<()> {
        self.remove(SANDBOXES, id)
    }

    /// Writes a pod's timing.
    pub fn save_pod(&self, p: &PodTiming) -> std::io::Result<()> {
        // A UID names a file: only characters a UID can have.
        if !safe_name(&p.uid) {
            return Ok(());
        }
        self.write(PODS, &p.uid, p)
    }

    /// Deletes a pod's timing; already gone is fine.
    pub fn remove_pod(&self, uid: &str) -> std::io::Result<()> {
        self.remove(PODS, uid)
    }

    /// Loads every record (the current generation of each); unreadable files are reported and
    /// skipped, never fatal.
    pub fn load(&self) -> (Vec<SandboxRecord>, Vec<PodTiming>) {
        (self.load_dir(SANDBOXES), self.load_dir(PODS))
    }

    fn load_dir<T: for<'de> Deserialize<'de> + Versioned>(&self, dir: &'static str) -> Vec<T> {
        let files: Vec<PathBuf> = {
            let gens = self.gens.lock().unwrap_or_else(|p| p.into_inner());
            gens.iter()
                .filter(|((d, _), _)| *d == dir)
                .map(|((_, key), gen)| self.root.join(dir).join(file_name(key, *gen)))
                .collect()
        };
        let mut out = Vec::new();
        for path in files {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, run_calls: u32) -> PodTiming {
        let meta = PodMeta {
            name: "p".into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        };
        let mut p = PodTiming::new(&meta, Stamp::now());
        p.run_calls = run_calls;
        p
    }

    fn files(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(PODS))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn each_save_leaves_one_file_and_a_reopened_store_reads_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        for n in 1..=3 {
            s.save_pod(&pod("u1", n)).unwrap();
        }
        assert_eq!(files(dir.path()), ["u1.3.json"]);
        let (_, pods) = StateDir::open(dir.path()).unwrap().load();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].run_calls, 3);
        // Another handle on the same directory (a test, a restart) continues the count.
        let again = StateDir::open(dir.path()).unwrap();
        again.save_pod(&pod("u1", 4)).unwrap();
        assert_eq!(files(dir.path()), ["u1.4.json"]);
        again.remove_pod("u1").unwrap();
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn what_a_crash_leaves_is_tidied_at_open_and_the_newest_generation_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.save_pod(&pod("u1", 1)).unwrap();
        s.save_pod(&pod("u1", 2)).unwrap();
        let pods = dir.path().join(PODS);
        // Killed between rename and unlink: two generations. Killed mid-write: a temp file.
        // An older netready's layout: no generation in the name.
        std::fs::write(pods.join("u1.1.json"), b"{}").unwrap();
        std::fs::write(pods.join("u1.3.tmp"), b"{\"trunc").unwrap();
        std::fs::write(
            pods.join("u2.json"),
            serde_json::to_vec(&pod("u2", 7)).unwrap(),
        )
        .unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(files(dir.path()), ["u1.2.json", "u2.json"]);
        let (_, mut loaded) = s.load();
        loaded.sort_by(|a, b| a.uid.cmp(&b.uid));
        let got: Vec<(&str, u32)> = loaded.iter().map(|p| (&*p.uid, p.run_calls)).collect();
        assert_eq!(got, [("u1", 2), ("u2", 7)]);
        s.save_pod(&pod("u2", 8)).unwrap();
        assert_eq!(files(dir.path()), ["u1.2.json", "u2.1.json"]);
    }

    #[test]
    fn a_key_that_cannot_name_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.save_pod(&pod("../x", 1)).unwrap();
        assert!(files(dir.path()).is_empty());
        assert!(!dir.path().join("x.1.json").exists());
    }
}
