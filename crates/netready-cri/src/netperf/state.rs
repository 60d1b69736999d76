//! What netready knows about its netperf pods, and how it survives a restart.
//!
//! One journal, `state.jsonl`: each save of a sandbox (its containers inside) or of a pod
//! UID's timing (the ADD attempts across kubelet's RunPodSandbox retries) appends a line with
//! the whole record, a removal a line saying so; the last line of a key wins. A sandbox's line
//! is written before its CNI ADD starts, so a netready killed mid-ADD finds it at start-up and
//! tears it down. Lines are not fsynced: they must survive netready dying, not the machine.
//!
//! Why a journal and not a file per record: a lifecycle saves its sandbox about five times, and
//! each file save (create a new inode, write, rename, unlink the old one; renaming over the old
//! one made ext4 start writeback each time) was a quarter of netready's own CPU per lifecycle
//! in a `perf` profile of the `netperf` bench's no-op arm. An append is one `write`. A line a
//! kill cuts short is dropped at start-up, where the journal is rewritten with its live lines;
//! while running it is compacted the same way once dead lines outweigh live ones.
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
    /// When the RunPodSandbox whose ADD first succeeded was done, its answer about to be
    /// sent. In memory only: it comes after the timing is saved, and only the netperf
    /// benchmark reads it (netready's part of the time from the ADD's end to kubelet's answer).
    #[serde(skip)]
    pub answered: Option<Stamp>,
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
            answered: None,
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
    journal: Arc<Mutex<Journal>>,
}

/// The journal's file name under the state directory.
const JOURNAL: &str = "state.jsonl";
/// The journal is rewritten with only its live lines once it is larger than this and than
/// `COMPACT_RATIO` times the live lines.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
const COMPACT_RATIO: u64 = 4;

/// What a journal line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Sandbox,
    Pod,
    /// A namespace made ahead of time (`netperf.netns_pool`), keyed by its path: noted before
    /// it is made, so a restart finds the ones a killed netready left.
    Spare,
}

/// A record in the journal: what it is and its id or UID.
type Key = (Kind, String);

/// One journal line: a record's new value, or its removal.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default)]
    put: Option<Kind>,
    #[serde(default)]
    del: Option<Kind>,
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<&'a serde_json::value::RawValue>,
}

/// The open journal: an append-only file, and where each live record's last line is in it.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    live: HashMap<Key, (u64, usize)>,
    live_bytes: u64,
    /// No compaction below this length: after one failed, the next try waits until the
    /// journal has doubled, so a full disk does not turn every save into a rewrite.
    compact_from: u64,
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s != "."
        && s != ".."
}

/// The last complete line of each live record in `bytes`, in the order they were written: a
/// removal drops the record, and a line without its newline (a write cut short by a kill) or
/// one that does not parse is skipped.
fn fold(bytes: &[u8]) -> Vec<(Key, &[u8])> {
    let mut last: HashMap<Key, (usize, &[u8])> = HashMap::new();
    let mut at = 0;
    for (n, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        at += line.len();
        let Some(body) = line.strip_suffix(b"\n") else {
            tracing::warn!(
                offset = at - line.len(),
                "state journal ends in a cut-short line, ignored"
            );
            break;
        };
        match serde_json::from_slice::<Line<'_>>(body) {
            Ok(Line {
                put: Some(kind),
                key,
                value: Some(_),
                ..
            }) => {
                last.insert((kind, key.into_owned()), (n, line));
            }
            Ok(Line {
                del: Some(kind),
                key,
                ..
            }) => {
                last.remove(&(kind, key.into_owned()));
            }
            _ => tracing::warn!(
                offset = at - line.len(),
                "unreadable state journal line, ignored"
            ),
        }
    }
    let mut out: Vec<_> = last.into_iter().collect();
    out.sort_by_key(|(_, (n, _))| *n);
    out.into_iter().map(|(k, (_, line))| (k, line)).collect()
}

/// Reads the records a netready before the journal left as one file per record
/// (`<dir>/<key>.<generation>.json`, the highest generation current).
fn old_layout(root: &Path) -> (Vec<(Key, Vec<u8>)>, Vec<PathBuf>) {
    let (mut records, mut dirs) = (Vec::new(), Vec::new());
    for (kind, dir) in [(Kind::Sandbox, "sandboxes"), (Kind::Pod, "pods")] {
        let dir = root.join(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut newest: HashMap<String, (u64, PathBuf)> = HashMap::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let (key, gen) = match stem.rsplit_once('.') {
                Some((key, gen)) if gen.bytes().all(|b| b.is_ascii_digit()) => {
                    (key, gen.parse().unwrap_or(0))
                }
                _ => (stem, 0),
            };
            let seen = newest.entry(key.to_owned()).or_insert((gen, e.path()));
            if gen > seen.0 {
                *seen = (gen, e.path());
            }
        }
        for (key, (_, path)) in newest {
            match std::fs::read(&path) {
                Ok(value) if safe_name(&key) => records.push(((kind, key), value)),
                _ => tracing::warn!(file = %path.display(), "unreadable state file, ignored"),
            }
        }
        dirs.push(dir);
    }
    (records, dirs)
}

fn put_line(kind: Kind, key: &str, value: &[u8]) -> Vec<u8> {
    let head = serde_json::json!({ "put": kind, "key": key }).to_string();
    let mut line = Vec::with_capacity(head.len() + value.len() + 10);
    line.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    line.extend_from_slice(b",\"value\":");
    line.extend_from_slice(value);
    line.extend_from_slice(b"}\n");
    line
}

impl Journal {
    /// Writes `lines` as the whole journal (a temp file renamed over it) and reopens it for
    /// appends.
    fn rewrite(path: &Path, lines: Vec<(Key, &[u8])>) -> std::io::Result<Journal> {
        let tmp = path.with_extension("jsonl.tmp");
        let mut live = HashMap::new();
        let mut all = Vec::new();
        for (key, line) in lines {
            live.insert(key, (all.len() as u64, line.len()));
            all.extend_from_slice(line);
        }
        std::fs::write(&tmp, &all)?;
        // Opened before the rename (the descriptor follows the file): nothing can fail after
        // the new journal replaced the old one.
        let file = match std::fs::OpenOptions::new().append(true).open(&tmp) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Journal {
            path: path.to_owned(),
            file,
            len: all.len() as u64,
            live_bytes: all.len() as u64,
            live,
            compact_from: COMPACT_MIN_BYTES,
        })
    }

    /// Appends a record's new line (`None`: its removal) in one write, and compacts when the
    /// dead lines outweigh the live ones.
    fn append(&mut self, key: Key, line: Option<Vec<u8>>) -> std::io::Result<()> {
        use std::io::Write;
        let bytes = match &line {
            Some(l) => l.as_slice(),
            None => &del_line(key.0, &key.1),
        };
        if let Err(e) = (&self.file).write_all(bytes) {
            // A line cut short would swallow the next one: cut the file back to whole lines.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        let at = self.len;
        self.len += bytes.len() as u64;
        let old = match &line {
            Some(l) => {
                self.live_bytes += l.len() as u64;
                self.live.insert(key, (at, l.len()))
            }
            None => self.live.remove(&key),
        };
        if let Some((_, n)) = old {
            self.live_bytes -= n as u64;
        }
        if self.len > self.compact_from && self.len > COMPACT_RATIO * self.live_bytes {
            // The line is written: a failed compaction is reported, not the save.
            if let Err(e) = self.compact() {
                tracing::warn!(file = %self.path.display(), error = %e, "compacting the state journal");
                self.compact_from = self.len * 2;
            }
        }
        Ok(())
    }

    /// Rewrites the journal with only the live lines, read back from the file by their
    /// offsets (nothing is parsed).
    fn compact(&mut self) -> std::io::Result<()> {
        let all = std::fs::read(&self.path)?;
        let mut live: Vec<_> = self.live.iter().map(|(k, &(at, n))| (at, n, k)).collect();
        live.sort_unstable_by_key(|(at, _, _)| *at);
        let mut lines = Vec::with_capacity(live.len());
        for (at, n, k) in live {
            let line = all
                .get(at as usize..at as usize + n)
                .ok_or_else(|| std::io::Error::other("state journal shorter than its index"))?;
            lines.push((k.clone(), line));
        }
        *self = Journal::rewrite(&self.path, lines)?;
        Ok(())
    }
}

fn del_line(kind: Kind, key: &str) -> Vec<u8> {
    let mut line = serde_json::json!({ "del": kind, "key": key })
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

impl StateDir {
    /// Opens (creating) the journal under `root`. It is rewritten with its live lines only,
    /// which also drops a line a kill cut short; records a netready before the journal kept
    /// one file each are moved into it.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let path = root.join(JOURNAL);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (old, old_dirs) = old_layout(root);
        let old_lines: Vec<_> = old
            .into_iter()
            .map(|((kind, key), value)| {
                let line = put_line(kind, &key, &value);
                ((kind, key), line)
            })
            .collect();
        let mut lines = fold(&bytes);
        for (key, line) in &old_lines {
            if !lines.iter().any(|(k, _)| k == key) {
                lines.push((key.clone(), line.as_slice()));
            }
        }
        let journal = Journal::rewrite(&path, lines)?;
        for dir in old_dirs {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(StateDir {
            root: root.to_owned(),
            journal: Arc::new(Mutex::new(journal)),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, kind: Kind, key: &str, value: &impl Serialize) -> std::io::Result<()> {
        let value = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        let line = put_line(kind, key, &value);
        self.journal().append((kind, key.to_owned()), Some(line))
    }

    fn remove(&self, kind: Kind, key: &str) -> std::io::Result<()> {
        let mut journal = self.journal();
        let key = (kind, key.to_owned());
        if !journal.live.contains_key(&key) {
            return Ok(());
        }
        journal.append(key, None)
    }

    /// Writes a sandbox's record.
    pub fn save_sandbox(&self, s: &SandboxRecord) -> std::io::Result<()> {
        if !safe_name(&s.id) {
            return Err(std::io::Error::other(format!(
                "sandbox id {:?} is not a valid id",
                s.id
            )));
        }
        self.write(Kind::Sandbox, &s.id, s)
    }

    /// Deletes a sandbox's record; already gone is fine.
    pub fn remove_sandbox(&self, id: &str) -> std::io::Result<()> {
        self.remove(Kind::Sandbox, id)
    }

    /// Writes a pod's timing.
    pub fn save_pod(&self, p: &PodTiming) -> std::io::Result<()> {
        // Only characters a UID can have, as for sandbox ids.
        if !safe_name(&p.uid) {
            return Ok(());
        }
        self.write(Kind::Pod, &p.uid, p)
    }

    /// Deletes a pod's timing; already gone is fine.
    pub fn remove_pod(&self, uid: &str) -> std::io::Result<()> {
        self.remove(Kind::Pod, uid)
    }

    /// Notes a spare namespace at `path` before it is made.
    pub fn save_spare(&self, path: &Path) -> std::io::Result<()> {
        self.write(Kind::Spare, &path.to_string_lossy(), &true)
    }

    /// Forgets a spare: removed, or named by the sandbox record that took it.
    pub fn remove_spare(&self, path: &Path) -> std::io::Result<()> {
        self.remove(Kind::Spare, &path.to_string_lossy())
    }

    /// The spares noted and not forgotten: at start, those a previous run left.
    pub fn spares(&self) -> Vec<PathBuf> {
        let mut out: Vec<_> = self
            .journal()
            .live
            .keys()
            .filter(|(kind, _)| *kind == Kind::Spare)
            .map(|(_, key)| PathBuf::from(key))
            .collect();
        out.sort();
        out
    }

    /// Loads every live record; unreadable ones are reported and skipped, never fatal.
    pub fn load(&self) -> (Vec<SandboxRecord>, Vec<PodTiming>) {
        Self::peek(&self.root)
    }

    /// The live records under `root` without opening the journal for writing (a running
    /// netready may hold it): what a restart would find.
    pub fn peek(root: &Path) -> (Vec<SandboxRecord>, Vec<PodTiming>) {
        let path = root.join(JOURNAL);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "state journal unreadable");
                }
                Vec::new()
            }
        };
        let (mut sandboxes, mut pods) = (Vec::new(), Vec::new());
        for ((kind, key), line) in fold(&bytes) {
            let value =
                serde_json::from_slice::<Line<'_>>(line.strip_suffix(b"\n").unwrap_or(line))
                    .ok()
                    .and_then(|l| l.value);
            let Some(value) = value else { continue };
            match kind {
                Kind::Sandbox => sandboxes.extend(parse::<SandboxRecord>(&key, value)),
                Kind::Pod => pods.extend(parse::<PodTiming>(&key, value)),
                Kind::Spare => {}
            }
        }
        (sandboxes, pods)
    }
}

fn parse<T: for<'de> Deserialize<'de> + Versioned>(
    key: &str,
    value: &serde_json::value::RawValue,
) -> Option<T> {
    match serde_json::from_str::<T>(value.get()) {
        Ok(r) if r.version() == STATE_VERSION => Some(r),
        Ok(r) => {
            tracing::warn!(
                key,
                version = r.version(),
                "state record of another layout version, ignored"
            );
            None
        }
        Err(err) => {
            tracing::warn!(key, error = %err, "unreadable state record, ignored");
            None
        }
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

    fn journal_lines(root: &Path) -> usize {
        std::fs::read(root.join(JOURNAL))
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    }

    fn loaded_pods(s: &StateDir) -> Vec<(String, u32)> {
        let mut v: Vec<_> = s
            .load()
            .1
            .into_iter()
            .map(|p| (p.uid, p.run_calls))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_last_save_wins_and_a_reopened_store_keeps_only_live_lines() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        for n in 1..=3 {
            s.save_pod(&pod("u1", n)).unwrap();
        }
        s.save_pod(&pod("u2", 1)).unwrap();
        s.remove_pod("u2").unwrap();
        // Already gone is fine, and writes nothing.
        s.remove_pod("u2").unwrap();
        assert_eq!(journal_lines(dir.path()), 5);
        assert_eq!(loaded_pods(&s), [("u1".to_owned(), 3)]);
        let again = StateDir::open(dir.path()).unwrap();
        assert_eq!(journal_lines(dir.path()), 1);
        assert_eq!(loaded_pods(&again), [("u1".to_owned(), 3)]);
        again.save_pod(&pod("u1", 4)).unwrap();
        again.remove_pod("u1").unwrap();
        assert!(loaded_pods(&again).is_empty());
        assert_eq!(journal_lines(StateDir::open(dir.path()).unwrap().root()), 0);
    }

    #[test]
    fn a_line_a_kill_cut_short_is_dropped_and_what_follows_the_restart_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.save_pod(&pod("u1", 1)).unwrap();
        s.save_pod(&pod("u2", 1)).unwrap();
        drop(s);
        // Killed in the middle of writing u1's next line; a stray line of nonsense before it.
        let full = std::fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        let cut = String::from_utf8(put_line(
            Kind::Pod,
            "u1",
            &serde_json::to_vec(&pod("u1", 2)).unwrap(),
        ))
        .unwrap();
        std::fs::write(
            dir.path().join(JOURNAL),
            format!("{full}not json\n{}", &cut[..cut.len() / 2]),
        )
        .unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(
            loaded_pods(&s),
            [("u1".to_owned(), 1), ("u2".to_owned(), 1)]
        );
        s.save_pod(&pod("u1", 3)).unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(
            loaded_pods(&s),
            [("u1".to_owned(), 3), ("u2".to_owned(), 1)]
        );
        assert!(!dir.path().join("state.jsonl.tmp").exists());
    }

    #[test]
    fn records_of_the_file_per_record_layout_move_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        let old = |uid: &str, n: u32| serde_json::to_vec(&pod(uid, n)).unwrap();
        // Two generations of u1 (killed between write and unlink), u2 from before generations.
        std::fs::write(pods.join("u1.1.json"), old("u1", 1)).unwrap();
        std::fs::write(pods.join("u1.2.json"), old("u1", 2)).unwrap();
        std::fs::write(pods.join("u2.json"), old("u2", 7)).unwrap();
        std::fs::write(pods.join("u3.4.tmp"), b"{\"trunc").unwrap();
        std::fs::create_dir_all(dir.path().join("sandboxes")).unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(
            loaded_pods(&s),
            [("u1".to_owned(), 2), ("u2".to_owned(), 7)]
        );
        assert!(!pods.exists() && !dir.path().join("sandboxes").exists());
        assert_eq!(
            loaded_pods(&StateDir::open(dir.path()).unwrap()),
            [("u1".to_owned(), 2), ("u2".to_owned(), 7)]
        );
    }

    #[test]
    fn a_running_journal_is_compacted_when_dead_lines_outweigh_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let line = put_line(Kind::Pod, "u0", &serde_json::to_vec(&pod("u0", 0)).unwrap());
        let saves = 3 * COMPACT_RATIO as usize * COMPACT_MIN_BYTES as usize / line.len();
        for n in 0..saves {
            // Ten pods live; each saved over and over.
            s.save_pod(&pod(&format!("u{}", n % 10), n as u32)).unwrap();
        }
        let size = std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
        assert!(
            size <= COMPACT_MIN_BYTES + line.len() as u64 + 64,
            "journal {size} bytes after {saves} saves"
        );
        let expected: Vec<(String, u32)> = {
            let mut v: Vec<_> = (saves - 10..saves)
                .map(|n| (format!("u{}", n % 10), n as u32))
                .collect();
            v.sort();
            v
        };
        assert_eq!(loaded_pods(&s), expected);
        assert_eq!(loaded_pods(&StateDir::open(dir.path()).unwrap()), expected);
    }

    #[test]
    fn a_compaction_that_fails_loses_no_save_and_is_tried_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        // The temp file cannot be made: a directory holds its name.
        std::fs::create_dir(dir.path().join("state.jsonl.tmp")).unwrap();
        let line = put_line(Kind::Pod, "u0", &serde_json::to_vec(&pod("u0", 0)).unwrap());
        let saves = 2 * COMPACT_MIN_BYTES as usize / line.len();
        for n in 0..saves {
            s.save_pod(&pod(&format!("u{}", n % 10), n as u32)).unwrap();
        }
        let size = || std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
        assert!(size() > COMPACT_MIN_BYTES, "not compacted: {}", size());
        assert_eq!(loaded_pods(&s).len(), 10);
        let last_u0 = |end: usize| (0..end).rev().find(|n| n.is_multiple_of(10)).unwrap() as u32;
        assert_eq!(loaded_pods(&s)[0], ("u0".to_owned(), last_u0(saves)));
        std::fs::remove_dir(dir.path().join("state.jsonl.tmp")).unwrap();
        for n in saves..3 * saves {
            s.save_pod(&pod(&format!("u{}", n % 10), n as u32)).unwrap();
        }
        assert!(
            size() < 2 * COMPACT_MIN_BYTES,
            "compacted again: {}",
            size()
        );
        assert_eq!(loaded_pods(&s)[0], ("u0".to_owned(), last_u0(3 * saves)));
    }

    #[test]
    fn a_key_that_is_not_an_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        s.save_pod(&pod("../x", 1)).unwrap();
        assert_eq!(journal_lines(dir.path()), 0);
        assert!(loaded_pods(&s).is_empty());
    }
}
