//! The per-pod results file: one JSON object per line, appended when a pod's network verdict
//! is final, by a task of its own so the CRI path never waits on the disk. The schema is
//! versioned (`schema_version`) and written down in `pod-record.schema.json` beside this crate.

use std::io::Write as _;
use std::path::PathBuf;

use netready_cni::Stamp;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::log::rfc3339;
use super::state::{PodTiming, SandboxRecord};

/// Version of the record layout.
pub const SCHEMA_VERSION: u32 = 1;

/// Who wrote the records: the run and the node.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Run id (config `netperf.run_id`, or generated at start).
    pub run_id: String,
    /// This node's name.
    pub node: String,
}

/// Sends records to the writer task; sending never blocks.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: Option<mpsc::UnboundedSender<Value>>,
}

impl Writer {
    /// Starts the writer appending to `path` (none: records are dropped). Needs a runtime.
    pub fn start(path: Option<PathBuf>) -> Self {
        let Some(path) = path else {
            return Writer { tx: None };
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
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
                    for v in batch {
                        serde_json::to_writer(&mut buf, &v)?;
                        buf.push(b'\n');
                    }
                    f.write_all(&buf)
                })
                .await;
                if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                    tracing::error!(error = %e, "writing pod results");
                }
            }
        });
        Writer { tx: Some(tx) }
    }

    /// Queues a record.
    pub fn send(&self, v: Value) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(v);
        }
    }
}

fn stamp(s: &Stamp) -> Value {
    Value::String(rfc3339(s.wall_ns))
}

fn secs(from: &Stamp, to: &Stamp) -> f64 {
    to.secs_since(from)
}

/// The record of one pod's sandbox, after its verdict.
pub fn record(id: &Identity, fingerprint: &Value, s: &SandboxRecord, t: &PodTiming) -> Value {
    let r = s.readiness.as_ref();
    let success = s.attempts.iter().find(|a| a.error.is_none());
    let first_attempt = t.first_attempt;
    let ready_at = r.and_then(|r| r.ready_at);
    let checks: Vec<Value> = r
        .map(|r| {
            r.checks
                .iter()
                .map(|c| {
                    json!({
                        "check": c.check.as_str(),
                        "required": c.required,
                        "targets": c.targets,
                        "origins": c.origins,
                        "available": c.available,
                        "outcome": if c.skipped.is_some() { "skipped" } else if c.passed_after.is_some() { "passed" } else { "failed" },
                        "skipped": c.skipped,
                        "duration_s": c.passed_after.map(|d| d.as_secs_f64()),
                        "passed_at": c.passed_after.map(|d| rfc3339(r.origin.wall_ns + d.as_nanos() as u64)),
                        "probes": c.probes,
                        "rtt_s": c.rtts.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
                        "http": c.http.iter().map(|h| json!({"status": h.status, "connect_s": h.connect.as_secs_f64(), "first_byte_s": h.first_byte.as_secs_f64(), "total_s": h.total.as_secs_f64()})).collect::<Vec<_>>(),
                        "last_error": c.last_error,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "schema_version": SCHEMA_VERSION,
        "run_id": id.run_id,
        "node": id.node,
        "netready_version": env!("CARGO_PKG_VERSION"),
        "fingerprint": fingerprint,
        "pod": {"namespace": s.meta.namespace, "name": s.meta.name, "uid": s.meta.uid, "attempt": s.meta.attempt},
        "sandbox_id": s.id,
        "ips": s.ips,
        "durations_s": {
            "cni_add": success.map(|a| a.duration().as_secs_f64()),
            "cni_add_first_to_success": t.first_to_success().map(|d| d.as_secs_f64()),
            "network_ready": match (first_attempt, ready_at) { (Some(f), Some(e)) => Some(secs(&f, &e)), _ => None },
            "sandbox_request_to_ready": ready_at.map(|e| secs(&t.first_request, &e)),
        },
        "cni_add_attempts": t.attempts_to_success.unwrap_or(t.attempt_count),
        "stamps": {
            "first_request": stamp(&t.first_request),
            "first_attempt": first_attempt.as_ref().map(stamp),
            "cni_add_success_end": t.first_success.as_ref().map(stamp),
            "network_ready": ready_at.as_ref().map(stamp),
        },
        "attempts": t.attempts.iter().map(|a| json!({
            "start": stamp(&a.start), "end": stamp(&a.end), "duration_s": a.duration().as_secs_f64(),
            "error": a.error.as_ref().map(|e| json!({"code": e.code, "reason": e.reason, "message": e.message})),
        })).collect::<Vec<_>>(),
        "checks": checks,
        "traffic": r.and_then(|r| r.traffic.as_ref()).map(|t| json!({
            "target": t.target, "bits_per_second": t.bits_per_second,
            "duration_s": t.duration.as_secs_f64(), "error": t.error,
        })),
        "verdict": {"network_ready": ready_at.is_some(), "reason": r.and_then(|r| r.not_ready_reason.clone())},
    })
}
