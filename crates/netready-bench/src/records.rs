//! The results files (`results.jsonl`, schema version 1): one record per pod. netready's
//! records are [`PodRecord`]s, and beside them one [`CommandRecord`] per container command
//! that ended (`"kind": "command"`: an iperf3 client's measures); `netready drive` writes its
//! own per-pod records too (`"kind": "drive"`: what the driver saw from outside over CRI),
//! read here by their keys.

use std::path::{Path, PathBuf};

use netready_record::host_load::HostLoad;
use netready_record::{CommandRecord, PodRecord};
use serde_json::Value;

/// A failure reading records, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A line is not a record of a schema version this reads.
    #[error("{path}:{line}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The lag that gates a run: how late after the ADD the last required check began.
pub const LAG_GATED: &str = "lag.checks_started";

/// Default largest `lag.checks_started` p99 of a valid run: as large as the smallest
/// `network_ready` p99 change `compare` gates on (50 ms), so lag alone could fail a release.
pub const DEFAULT_MAX_LAG: std::time::Duration = std::time::Duration::from_millis(50);

/// One pod's record, with the fields reports use pulled out.
#[derive(Debug, Clone)]
pub struct Record {
    /// Node name.
    pub node: String,
    /// Run id.
    pub run_id: String,
    /// Timings in seconds by name (`cni_add`, `network_ready`, `check.same_node_pod`, ...).
    pub timings: Vec<(String, f64)>,
    /// ADD attempts until success (netready's records: a driver has none to count).
    pub attempts: Option<u32>,
    /// Whether the pod became network-ready.
    pub ready: bool,
    /// Failure class when not ready: the failing check, or `cni_add`.
    pub reason: Option<String>,
    /// When it became network-ready, seconds since the epoch.
    pub ready_at: Option<f64>,
    /// Its built-in HTTP load, when it ran one (netready's records).
    pub http_load: Option<netready_record::HttpLoad>,
}

/// Records of one or more files, with the runs' identities.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Every pod's record.
    pub records: Vec<Record>,
    /// Every container command's record.
    pub commands: Vec<CommandRecord>,
    /// Distinct fingerprints seen (run id, versions, conflist hash, kernel...), without the
    /// host's load, which changes from record to record.
    pub fingerprints: Vec<Value>,
    /// The host's load over each node's run: (run id, node, load), the latest record's.
    pub host_loads: Vec<(String, String, HostLoad)>,
    /// Records read so far (run, node, sandbox id or `sandbox/container` for a command):
    /// netready writes a record at least once.
    seen: std::collections::HashSet<(String, String, String)>,
    /// Records left out because their sandbox's was read already.
    pub duplicates: usize,
}

fn stamp_secs(v: &Value) -> Option<f64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The failure class of a verdict's reason: what comes before the first `:`.
fn class(reason: Option<&str>) -> Option<String> {
    reason.map(|r| r.split(':').next().unwrap_or(r).to_owned())
}

fn parse(v: Value) -> Result<Record, String> {
    if v.get("kind").and_then(Value::as_str) == Some("drive") {
        return parse_drive(v);
    }
    let r = PodRecord::from_value(v)?;
    Ok(Record {
        timings: r.timings(),
        attempts: Some(r.cni_add_attempts),
        ready: r.verdict.network_ready,
        reason: class(r.verdict.reason.as_deref()),
        ready_at: r
            .stamps
            .network_ready
            .as_ref()
            .and_then(|s| stamp_secs(&Value::String(s.clone()))),
        http_load: r.http_load,
        node: r.node,
        run_id: r.run_id,
    })
}

/// A driver's record: its durations (`run_pod_sandbox`, `pod_ready`, ...) and verdict.
fn parse_drive(v: Value) -> Result<Record, String> {
    if v.get("schema_version").and_then(Value::as_u64) != Some(1) {
        return Err("not a netready drive record of schema_version 1".into());
    }
    Ok(Record {
        node: v["node"].as_str().unwrap_or_default().to_owned(),
        run_id: v["run_id"].as_str().unwrap_or_default().to_owned(),
        timings: v["durations_s"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
            .collect(),
        attempts: None,
        ready: v["verdict"]["network_ready"].as_bool().unwrap_or(false),
        reason: class(v["verdict"]["reason"].as_str()),
        ready_at: stamp_secs(&v["stamps"]["ready"]),
        http_load: None,
    })
}

impl Run {
    /// Reads every record of `paths`.
    pub fn load(paths: &[PathBuf]) -> Result<Self, Error> {
        let mut run = Run::default();
        for path in paths {
            run.add_file(path)?;
        }
        Ok(run)
    }

    /// Records already in memory (a driver's, say); the error names the record's position.
    pub fn from_values(values: impl IntoIterator<Item = Value>) -> Result<Self, String> {
        let mut run = Run::default();
        for (i, v) in values.into_iter().enumerate() {
            run.push(v).map_err(|e| format!("record {}: {e}", i + 1))?;
        }
        Ok(run)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        if v.get("kind").and_then(Value::as_str) == Some(netready_record::command::KIND) {
            let c = CommandRecord::from_value(v)?;
            let key = (
                c.run_id.clone(),
                c.node.clone(),
                format!("{}/{}", c.sandbox_id, c.container_id),
            );
            if self.seen.insert(key) {
                self.commands.push(c);
            } else {
                self.duplicates += 1;
            }
            return Ok(());
        }
        // A netready killed between appending a record and saving that it did writes it again
        // after the restart (the collector drops such duplicates the same way): the first
        // counts.
        if let (Some(run), Some(node), Some(sandbox)) = (
            v.get("run_id").and_then(Value::as_str),
            v.get("node").and_then(Value::as_str),
            v.get("sandbox_id").and_then(Value::as_str),
        ) {
            let key = (run.to_owned(), node.to_owned(), sandbox.to_owned());
            if !self.seen.insert(key) {
                self.duplicates += 1;
                return Ok(());
            }
        }
        let mut fp = v.get("fingerprint").cloned().unwrap_or(Value::Null);
        let load = fp
            .as_object_mut()
            .and_then(|o| o.remove("host_load"))
            .and_then(|l| serde_json::from_value::<HostLoad>(l).ok());
        if let Some(load) = load {
            let (run, node) = (
                v["run_id"].as_str().unwrap_or_default(),
                v["node"].as_str().unwrap_or_default(),
            );
            match self
                .host_loads
                .iter_mut()
                .find(|(r, n, _)| r == run && n == node)
            {
                // Each record's load runs from netready's start: the longest covers the others.
                Some((_, _, kept)) if kept.seconds < load.seconds => *kept = load,
                Some(_) => {}
                None => self.host_loads.push((run.into(), node.into(), load)),
            }
        }
        if !fp.is_null() && !self.fingerprints.contains(&fp) {
            self.fingerprints.push(fp);
        }
        self.records.push(parse(v)?);
        Ok(())
    }

    fn add_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
            path: path.to_owned(),
            error,
        })?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = |reason: String| Error::Record {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            self.push(v).map_err(bad)?;
        }
        Ok(())
    }

    /// Samples of one timing, in seconds.
    pub fn samples(&self, name: &str) -> Vec<f64> {
        self.records
            .iter()
            .flat_map(|r| r.timings.iter().filter(|(k, _)| k == name).map(|(_, v)| *v))
            .collect()
    }

    /// Timing names present, in a stable order (pod timings first, then checks).
    pub fn timing_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in &self.records {
            for (k, _) in &r.timings {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        let order = |k: &str| match k {
            "cni_add" => 0,
            "cni_add_first_to_success" => 1,
            "network_ready" => 2,
            "sandbox_request_to_ready" => 3,
            k if k.starts_with("check.") => 5,
            k if k.starts_with("lag.") => 6,
            _ => 4,
        };
        names.sort_by(|a, b| order(a).cmp(&order(b)).then(a.cmp(b)));
        names
    }

    /// Why netready's own lag makes the run a measurement of netready rather than of the
    /// network: `lag.checks_started` (ADD end to the last required check's first probe) has
    /// a p99 above `max`. `None` when it does not, or no record says.
    pub fn lag_problem(&self, max: std::time::Duration) -> Option<String> {
        let lag = self.samples(LAG_GATED);
        if lag.is_empty() {
            return None;
        }
        let p99 = crate::stats::summarize(&lag).p99;
        (p99 > max.as_secs_f64()).then(|| {
            format!(
                "netready's own lag {LAG_GATED} p99 {:.1} ms exceeds {:.1} ms: the checks started late, so the timings include netready's queueing",
                p99 * 1e3,
                max.as_secs_f64() * 1e3
            )
        })
    }

    /// Why the host itself made the run unlike others: a node whose CPU time the hypervisor
    /// stole more than `max` of (the plugins and probes ran slower for reasons outside the
    /// run). `None` when no node's did, or no record says.
    pub fn steal_problem(&self, max: f64) -> Option<String> {
        let (run, node, worst) = self
            .host_loads
            .iter()
            .max_by(|a, b| a.2.steal_share.total_cmp(&b.2.steal_share))?;
        (worst.steal_share > max).then(|| {
            format!(
                "the hypervisor stole {:.1}% of {run}/{node}'s CPU time, more than the {:.1}% allowed: the host, not the CNI, slowed the run",
                worst.steal_share * 100.0,
                max * 100.0
            )
        })
    }

    /// Share of pods that did not become network-ready.
    pub fn failed_share(&self) -> f64 {
        if self.records.is_empty() {
            return 0.0;
        }
        self.records.iter().filter(|r| !r.ready).count() as f64 / self.records.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_written_twice_counts_once() {
        let rec = |sandbox: &str, ready: bool| {
            serde_json::json!({"schema_version": 1, "run_id": "r", "node": "n",
                "netready_version": "0", "fingerprint": null,
                "pod": {"namespace": "ns", "name": "p", "uid": "u", "attempt": 0},
                "sandbox_id": sandbox, "ips": [],
                "durations_s": {"cni_add": null, "cni_add_first_to_success": null,
                                "network_ready": null, "sandbox_request_to_ready": null},
                "cni_add_attempts": 1,
                "stamps": {"first_request": "2026-12-02T00:00:00.000000000Z", "first_attempt": null,
                           "cni_add_success_end": null, "network_ready": null},
                "attempts": [], "checks": [], "traffic": null,
                "verdict": {"network_ready": ready, "reason": null}})
        };
        let run = Run::from_values([rec("a", true), rec("a", false), rec("b", false)]).unwrap();
        assert_eq!(run.records.len(), 2);
        assert_eq!(run.duplicates, 1);
        assert!(run.records[0].ready, "the first record of a sandbox counts");
    }

    #[test]
    fn stamps_convert_to_epoch_seconds() {
        let s = stamp_secs(&Value::String("2026-11-22T06:32:56.316000000Z".into())).unwrap();
        assert!((s - 1_795_329_176.316).abs() < 1e-6, "{s}");
        assert_eq!(
            stamp_secs(&Value::String("1970-01-01T00:00:00.000000000Z".into())),
            Some(0.0)
        );
    }
}
