//! The per-pod results file: one [`PodRecord`] per line, appended when a pod's network verdict
//! is final by a task of its own, which batches the records that queue up while it writes.

use std::io::Write as _;
use std::path::PathBuf;

use netready_cni::Stamp;
use netready_record::PodRecord;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::log::rfc3339;
use super::state::{PodTiming, SandboxRecord};

/// Who wrote the records: the run and the node.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Run id (config `netperf.run_id`, or generated at start).
    pub run_id: String,
    /// This node's name.
    pub node: String,
}

/// One record (a JSON line, without its newline) for the writer, and who waits for it to be
/// written.
type Queued = (Vec<u8>, oneshot::Sender<()>);

/// Sends records to the writer task.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: Option<mpsc::UnboundedSender<Queued>>,
}

impl Writer {
    /// Starts the writer appending to `path` (none: records are dropped). Needs a runtime.
    pub fn start(path: Option<PathBuf>) -> Self {
        let Some(path) = path else {
            return Writer { tx: None };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Records that queued up while the last batch was written go out in one write.
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let (records, waiting): (Vec<Vec<u8>>, Vec<_>) = batch.into_iter().unzip();
                let path = path.clone();
                let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    let mut buf = Vec::new();
                    for r in records {
                        buf.extend_from_slice(&r);
                        buf.push(b'\n');
                    }
                    f.write_all(&buf)
                })
                .await;
                if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                    tracing::error!(error = %e, "writing pod results");
                }
                for w in waiting {
                    let _ = w.send(());
                }
            }
        });
        Writer { tx: Some(tx) }
    }

    /// Appends a record (a pod's or a command's); returns once it is written (or could not
    /// be: the error is logged).
    pub async fn write(&self, r: &impl serde::Serialize) {
        if let Some(tx) = &self.tx {
            let line = match serde_json::to_vec(r) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "encoding a record");
                    return;
                }
            };
            let (done, written) = oneshot::channel();
            if tx.send((line, done)).is_ok() {
                let _ = written.await;
            }
        }
    }
}

/// The records of `sandboxes` already in the results file at `path`. Only lines naming one
/// of them are parsed: the file may hold a long run.
pub fn written(
    path: &std::path::Path,
    sandboxes: &std::collections::HashSet<String>,
) -> std::collections::HashMap<String, PodRecord> {
    let mut found = std::collections::HashMap::new();
    if sandboxes.is_empty() {
        return found;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return found;
    };
    for line in text.lines() {
        let Some(id) = sandboxes.iter().find(|id| line.contains(id.as_str())) else {
            continue;
        };
        // A command's record names the sandbox too, and is not a pod record.
        match serde_json::from_str::<PodRecord>(line) {
            Ok(r) if &r.sandbox_id == id => {
                found.entry(id.clone()).or_insert(r);
            }
            _ => {}
        }
    }
    found
}

/// netready's own delays in the pod's timings: the plugin gate's waits, and how long after
/// the ADD the checks' first probes went out.
fn lag(t: &PodTiming, r: Option<&super::state::Readiness>) -> netready_record::Lag {
    let firsts = || {
        r.into_iter()
            .flat_map(|r| r.checks.iter())
            .filter_map(|c| Some((c.required, c.first_probe_after?)))
    };
    netready_record::Lag {
        cni_queued: (!t.attempts.is_empty())
            .then(|| t.attempts.iter().map(|a| a.queued.as_secs_f64()).sum()),
        first_probe: firsts().map(|(_, d)| d).min().map(|d| d.as_secs_f64()),
        checks_started: firsts()
            .filter(|(required, _)| *required)
            .map(|(_, d)| d)
            .max()
            .map(|d| d.as_secs_f64()),
    }
}

fn stamp(s: &Stamp) -> String {
    rfc3339(s.wall_ns)
}

fn pod(s: &SandboxRecord) -> netready_record::Pod {
    netready_record::Pod {
        namespace: s.meta.namespace.clone(),
        name: s.meta.name.clone(),
        uid: s.meta.uid.clone(),
        attempt: s.meta.attempt,
    }
}

/// How a container's command ended, for its record.
#[derive(Debug)]
pub struct CommandEnd<'a> {
    /// The command as the pod gave it.
    pub argv: &'a [String],
    /// Its process's start (the first, when it was started again for a busy server).
    pub started: Option<Stamp>,
    /// Its end.
    pub finished: Stamp,
    /// Exit code, reason and message, as ContainerStatus tells them.
    pub exit: (i32, &'a str, &'a str),
    /// An iperf3 client's report, or why it could not be read.
    pub iperf3: Option<&'a Result<netready_record::Iperf3, String>>,
}

/// The record of container `c`'s command in sandbox `s`, after it ended.
pub fn command_record(
    id: &Identity,
    fingerprint: &Value,
    s: &SandboxRecord,
    c: &super::state::ContainerRecord,
    end: &CommandEnd<'_>,
) -> netready_record::CommandRecord {
    let (exit_code, reason, message) = end.exit;
    netready_record::CommandRecord {
        schema_version: netready_record::SCHEMA_VERSION,
        kind: netready_record::command::KIND.into(),
        run_id: id.run_id.clone(),
        node: id.node.clone(),
        netready_version: env!("CARGO_PKG_VERSION").into(),
        fingerprint: fingerprint.clone(),
        pod: pod(s),
        sandbox_id: s.id.clone(),
        container_id: c.id.clone(),
        container: netready_record::command::Container {
            name: c.name.clone(),
            attempt: c.attempt,
        },
        argv: end.argv.to_vec(),
        started: end.started.as_ref().map(stamp),
        finished: stamp(&end.finished),
        duration_s: end.started.map(|s| end.finished.secs_since(&s)),
        exit_code,
        reason: reason.into(),
        message: message.into(),
        iperf3: end.iperf3.and_then(|r| r.as_ref().ok()).cloned(),
        iperf3_error: end.iperf3.and_then(|r| r.as_ref().err()).cloned(),
    }
}

/// The record of one pod's sandbox, after its verdict.
pub fn record(id: &Identity, fingerprint: &Value, s: &SandboxRecord, t: &PodTiming) -> PodRecord {
    let r = s.readiness.as_ref();
    let ready_at = r.and_then(|r| r.ready_at);
    let checks = r
        .map(|r| {
            r.checks
                .iter()
                .map(|c| netready_record::Check {
                    check: c.check.as_str().into(),
                    required: c.required,
                    targets: c.targets.clone(),
                    origins: c.origins.clone(),
                    available: c.available,
                    outcome: match (&c.skipped, c.passed_after) {
                        (Some(_), _) => "skipped",
                        (None, Some(_)) => "passed",
                        (None, None) => "failed",
                    }
                    .into(),
                    skipped: c.skipped.clone(),
                    duration_s: c.passed_after.map(|d| d.as_secs_f64()),
                    first_probe_s: c.first_probe_after.map(|d| d.as_secs_f64()),
                    passed_at: c
                        .passed_after
                        .map(|d| rfc3339(r.origin.wall_ns + d.as_nanos() as u64)),
                    probes: c.probes,
                    rtt_s: c.rtts.iter().map(|d| d.as_secs_f64()).collect(),
                    http: c
                        .http
                        .iter()
                        .map(|h| netready_record::Http {
                            status: h.status,
                            connect_s: h.connect.as_secs_f64(),
                            first_byte_s: h.first_byte.as_secs_f64(),
                            total_s: h.total.as_secs_f64(),
                        })
                        .collect(),
                    last_error: c.last_error.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    PodRecord {
        schema_version: netready_record::SCHEMA_VERSION,
        run_id: id.run_id.clone(),
        node: id.node.clone(),
        netready_version: env!("CARGO_PKG_VERSION").into(),
        fingerprint: fingerprint.clone(),
        pod: pod(s),
        sandbox_id: s.id.clone(),
        ips: s.ips.clone(),
        durations_s: netready_record::Durations {
            cni_add: s.cni_add.map(|a| a.duration().as_secs_f64()),
            cni_add_first_to_success: t.first_to_success().map(|d| d.as_secs_f64()),
            network_ready: t.first_attempt.zip(ready_at).map(|(f, e)| e.secs_since(&f)),
            sandbox_request_to_ready: ready_at.map(|e| e.secs_since(&t.first_request)),
        },
        cni_add_attempts: t.attempts_to_success.unwrap_or(t.attempt_count),
        stamps: netready_record::Stamps {
            first_request: stamp(&t.first_request),
            first_attempt: t.first_attempt.as_ref().map(stamp),
            cni_add_success_end: t.first_success.as_ref().map(stamp),
            network_ready: ready_at.as_ref().map(stamp),
        },
        attempts: t
            .attempts
            .iter()
            .map(|a| netready_record::Attempt {
                start: stamp(&a.start),
                end: stamp(&a.end),
                duration_s: a.duration().as_secs_f64(),
                queued_s: a.queued.as_secs_f64(),
                error: a.error.as_ref().map(|e| netready_record::AttemptError {
                    code: e.code,
                    reason: e.reason.clone(),
                    message: e.message.clone(),
                }),
            })
            .collect(),
        checks,
        traffic: r
            .and_then(|r| r.traffic.as_ref())
            .map(|t| netready_record::Traffic {
                target: t.target.clone(),
                bits_per_second: t.bits_per_second,
                duration_s: t.duration.as_secs_f64(),
                error: t.error.clone(),
            }),
        http_load: r.and_then(|r| r.http_load.clone()),
        lag_s: lag(t, r),
        verdict: netready_record::Verdict {
            network_ready: ready_at.is_some(),
            reason: r.and_then(|r| r.not_ready_reason.clone()),
        },
    }
}
