//! netready's per-pod record: one JSON object per line of the results file, written by the
//! runtime when a netperf pod's verdict is final and read by `netready report` and
//! `netready compare`. This type is the record; `pod-record.schema.json` beside this crate
//! describes it for other readers, and a test holds the two together.
//!
//! Durations are seconds (float, from the monotonic clock); stamps are RFC 3339 UTC with
//! nanoseconds. Absent values are `null`, never missing keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod command;
pub mod host_load;

pub use command::{CommandRecord, Iperf3};

/// Version of the record layout (`schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// One pod's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The run.
    pub run_id: String,
    /// The node that ran the pod.
    pub node: String,
    /// netready's version.
    pub netready_version: String,
    /// The run's identity and environment, the same on every record of a run and node.
    pub fingerprint: Value,
    /// The pod.
    pub pod: Pod,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Pod IPs, primary first.
    pub ips: Vec<String>,
    /// Timings.
    pub durations_s: Durations,
    /// ADD attempts until the first success (all attempts when none succeeded).
    pub cni_add_attempts: u32,
    /// When things happened.
    pub stamps: Stamps,
    /// Every ADD attempt of the pod's UID until the first success, across kubelet's retries.
    pub attempts: Vec<Attempt>,
    /// The reachability checks.
    pub checks: Vec<Check>,
    /// Traffic after network ready; `None` when it did not run.
    pub traffic: Option<Traffic>,
    /// Built-in constant-rate HTTP load after network ready (`netready.io/http-load`); absent
    /// when not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_load: Option<HttpLoad>,
    /// netready's own delays in this pod's timings (absent in records from before it was kept).
    #[serde(default)]
    pub lag_s: Lag,
    /// The verdict.
    pub verdict: Verdict,
}

/// netready's own delays, in seconds: time inside the measured intervals that was netready
/// queueing rather than the network getting ready. A run where these are large measured
/// netready, not the CNI (`netready report` flags it, `netready compare` refuses it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Waits for a place to run a plugin chain, summed over the ADD attempts (the first
    /// attempt's wait is before `first_attempt`, a retry's is inside `network_ready`); `None`
    /// with no attempt.
    pub cni_queued: Option<f64>,
    /// End of the successful ADD to the first probe of any check on the wire.
    pub first_probe: Option<f64>,
    /// End of the successful ADD to the first probe of the last required check to start:
    /// how late the slowest-starting check began measuring.
    pub checks_started: Option<f64>,
}

impl Lag {
    /// Every lag the record has, by name.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("cni_queued", self.cni_queued),
            ("first_probe", self.first_probe),
            ("checks_started", self.checks_started),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }
}

/// Pod identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// kubelet's sandbox attempt.
    pub attempt: u32,
}

/// Timings of the pod, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// This sandbox's successful ADD.
    pub cni_add: Option<f64>,
    /// First ADD attempt of the UID to the end of the first successful ADD.
    pub cni_add_first_to_success: Option<f64>,
    /// First ADD attempt to the moment every required check passed.
    pub network_ready: Option<f64>,
    /// First RunPodSandbox received for the UID to network ready.
    pub sandbox_request_to_ready: Option<f64>,
}

impl Durations {
    /// Every timing the record has, by name, in the schema's order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("cni_add", self.cni_add),
            ("cni_add_first_to_success", self.cni_add_first_to_success),
            ("network_ready", self.network_ready),
            ("sandbox_request_to_ready", self.sandbox_request_to_ready),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
    }
}

/// Stamps (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamps {
    /// The first RunPodSandbox received for the UID.
    pub first_request: String,
    /// Start of the first ADD attempt.
    pub first_attempt: Option<String>,
    /// End of the first successful ADD.
    pub cni_add_success_end: Option<String>,
    /// When the pod became network-ready.
    pub network_ready: Option<String>,
}

/// One ADD attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Start.
    pub start: String,
    /// End.
    pub end: String,
    /// End minus start.
    pub duration_s: f64,
    /// Its wait for a place to run, before `start` (absent in records from before it was kept).
    #[serde(default)]
    pub queued_s: f64,
    /// Why it failed.
    pub error: Option<AttemptError>,
}

/// A failed attempt's CNI error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// CNI error code (999: none).
    pub code: u32,
    /// Bounded class.
    pub reason: String,
    /// The whole message.
    pub message: String,
}

/// One reachability check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Its kind (`same_node_pod`, ...).
    pub check: String,
    /// Whether it holds readiness.
    pub required: bool,
    /// Its targets.
    pub targets: Vec<String>,
    /// Where each target came from, in the order of `targets` (absent in records of
    /// netready before discovery).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Targets that existed.
    pub available: usize,
    /// `passed`, `failed` or `skipped`.
    pub outcome: String,
    /// Why it was skipped.
    pub skipped: Option<String>,
    /// End of the successful ADD to its first success.
    pub duration_s: Option<f64>,
    /// End of the successful ADD to its first probe on the wire: its queueing in netready
    /// (absent in records from before it was kept).
    #[serde(default)]
    pub first_probe_s: Option<f64>,
    /// When it passed.
    pub passed_at: Option<String>,
    /// Probes sent.
    pub probes: u32,
    /// Round-trip times of answered pings.
    pub rtt_s: Vec<f64>,
    /// HTTP answers.
    pub http: Vec<Http>,
    /// The last error.
    pub last_error: Option<String>,
}

/// One HTTP answer's timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Http {
    /// Status code.
    pub status: u16,
    /// Connect time.
    pub connect_s: f64,
    /// Time to the first byte.
    pub first_byte_s: f64,
    /// Time to the end.
    pub total_s: f64,
}

/// Traffic after network ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// `ip:port` it went to.
    pub target: String,
    /// Throughput received.
    pub bits_per_second: Option<f64>,
    /// How long it sent.
    pub duration_s: f64,
    /// Why there is no throughput.
    pub error: Option<String>,
}

/// A constant-rate HTTP load run (wrk2's method): latency from each request's intended send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpLoad {
    /// `ip:port` it loaded.
    pub target: String,
    /// Requests per second asked for.
    pub rate: f64,
    /// Seconds of sending asked for.
    pub duration_s: f64,
    /// Connections.
    pub connections: usize,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Failures by kind (`connect`, `timeout`, `status`, `http`, `not_sent`).
    pub errors: BTreeMap<String, u64>,
    /// Answered per second over the run.
    pub achieved_rate: f64,
    /// Latency from the intended send, ms.
    pub latency_ms: Percentiles,
    /// Latency from the actual send (coordinated omission left in), ms, for comparison.
    pub uncorrected_latency_ms: Percentiles,
    /// Why it did not run (no target); `None` when it ran.
    #[serde(default)]
    pub error: Option<String>,
    /// The netperf pods that answered (through a VIP: the Service's endpoints as the client
    /// saw them), in order of their first reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
}

/// A netperf pod that answered a client's requests, and when it first did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// `namespace/name`.
    pub pod: String,
    /// Replies it gave.
    pub replies: u64,
    /// Its first reply, on the client's clock.
    pub first_reply: String,
    /// Its creation (its node's first RunPodSandbox for it), on its node's clock.
    pub created: String,
    /// Its node's clock minus the client's, estimated from that first reply (the server's
    /// time at the reply against the midpoint of send and receive).
    pub clock_skew_s: f64,
    /// Half the round trip of that reply: the estimate's uncertainty.
    pub clock_skew_uncertainty_s: f64,
    /// First reply minus creation, on one clock (the skew taken out): how long after the pod
    /// was created the client reached it through the target.
    pub reachable_after_s: f64,
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the pod became network-ready.
    pub network_ready: bool,
    /// Why not (`<check>: <last error>`, `stopped: ...`).
    pub reason: Option<String>,
}

impl PodRecord {
    /// Reads a record, refusing another schema version by name.
    pub fn from_value(v: Value) -> Result<Self, String> {
        match v.get("schema_version").and_then(Value::as_u64) {
            Some(n) if n == u64::from(SCHEMA_VERSION) => {}
            _ => {
                return Err(format!(
                    "not a netready pod record of schema_version {SCHEMA_VERSION}"
                ))
            }
        }
        serde_json::from_value(v).map_err(|e| format!("not a netready pod record: {e}"))
    }

    /// Every timing of the pod, by name: its durations, `check.<kind>` per passed check, then
    /// netready's own lag (`lag.<name>`, `lag.check.<kind>`) beside them.
    pub fn timings(&self) -> Vec<(String, f64)> {
        self.durations_s
            .named()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(
                self.checks
                    .iter()
                    .filter_map(|c| Some((format!("check.{}", c.check), c.duration_s?))),
            )
            .chain(self.lag_s.named().map(|(k, v)| (format!("lag.{k}"), v)))
            .chain(
                self.checks
                    .iter()
                    .filter_map(|c| Some((format!("lag.check.{}", c.check), c.first_probe_s?))),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../pod-record.schema.json");
    const STAMP: &str = "2026-12-02T04:13:44.123456789Z";

    fn full() -> PodRecord {
        PodRecord {
            schema_version: SCHEMA_VERSION,
            run_id: "run-1".into(),
            node: "node-a".into(),
            netready_version: "0.1.0".into(),
            fingerprint: serde_json::json!({
                "run_id": "run-1", "started_at": STAMP, "netready_version": "0.1.0",
                "node": "node-a", "kernel": "6.1.0", "run_info": {},
                "host_load": host_load::Sample::now().until_now(),
                "cni": {"file": "/etc/cni/net.d/10-bridge.conflist", "sha256": "0".repeat(64),
                        "cni_version": "1.0.0", "plugins": [{"type": "bridge", "version": null}]},
            }),
            pod: Pod {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
                attempt: 0,
            },
            sandbox_id: "ab".repeat(32),
            ips: vec!["10.0.0.5".into()],
            durations_s: Durations {
                cni_add: Some(0.02),
                cni_add_first_to_success: Some(0.3),
                network_ready: Some(0.35),
                sandbox_request_to_ready: Some(0.36),
            },
            cni_add_attempts: 2,
            stamps: Stamps {
                first_request: STAMP.into(),
                first_attempt: Some(STAMP.into()),
                cni_add_success_end: Some(STAMP.into()),
                network_ready: Some(STAMP.into()),
            },
            attempts: vec![
                Attempt {
                    start: STAMP.into(),
                    end: STAMP.into(),
                    duration_s: 0.01,
                    queued_s: 0.0,
                    error: Some(AttemptError {
                        code: 11,
                        reason: "plugin_error".into(),
                        message: "try again".into(),
                    }),
                },
                Attempt {
                    start: STAMP.into(),
                    end: STAMP.into(),
                    duration_s: 0.02,
                    queued_s: 0.001,
                    error: None,
                },
            ],
            checks: vec![Check {
                check: "same_node_pod".into(),
                required: true,
                targets: vec!["10.0.0.2".into()],
                origins: vec!["containerd".into()],
                available: 1,
                outcome: "passed".into(),
                skipped: None,
                duration_s: Some(0.004),
                first_probe_s: Some(0.0005),
                passed_at: Some(STAMP.into()),
                probes: 1,
                rtt_s: vec![0.0001],
                http: vec![Http {
                    status: 200,
                    connect_s: 0.001,
                    first_byte_s: 0.002,
                    total_s: 0.003,
                }],
                last_error: None,
            }],
            traffic: Some(Traffic {
                target: "10.0.0.2:5201".into(),
                bits_per_second: Some(1e9),
                duration_s: 2.0,
                error: None,
            }),
            http_load: Some(HttpLoad {
                target: "10.96.0.10:80".into(),
                rate: 100.0,
                duration_s: 2.0,
                connections: 2,
                ok: 200,
                errors: BTreeMap::from([("timeout".to_string(), 1)]),
                achieved_rate: 99.5,
                latency_ms: Percentiles {
                    p50: 0.4,
                    p99: 2.0,
                    p999: 3.1,
                    max: 3.5,
                },
                uncorrected_latency_ms: Percentiles {
                    p50: 0.4,
                    p99: 1.5,
                    p999: 2.0,
                    max: 2.2,
                },
                error: None,
                backends: vec![Backend {
                    pod: "default/server-1".into(),
                    replies: 120,
                    first_reply: "2026-12-02T10:00:01.000000000Z".into(),
                    created: "2026-12-02T10:00:00.250000000Z".into(),
                    clock_skew_s: 0.0001,
                    clock_skew_uncertainty_s: 0.0002,
                    reachable_after_s: 0.7501,
                }],
            }),
            lag_s: Lag {
                cni_queued: Some(0.001),
                first_probe: Some(0.0005),
                checks_started: Some(0.0005),
            },
            verdict: Verdict {
                network_ready: true,
                reason: None,
            },
        }
    }

    /// A pod whose ADD never succeeded: every optional value absent.
    fn bare() -> PodRecord {
        PodRecord {
            fingerprint: serde_json::json!({
                "run_id": "run-1", "started_at": STAMP, "netready_version": "0.1.0",
                "node": "node-a", "kernel": "", "run_info": {}, "cni": null,
            }),
            ips: vec![],
            durations_s: Durations::default(),
            stamps: Stamps {
                first_request: STAMP.into(),
                first_attempt: None,
                cni_add_success_end: None,
                network_ready: None,
            },
            attempts: vec![],
            checks: vec![],
            traffic: None,
            http_load: None,
            lag_s: Lag::default(),
            verdict: Verdict {
                network_ready: false,
                reason: Some("stopped: the pod was stopped before its checks ended".into()),
            },
            ..full()
        }
    }

    #[test]
    fn the_type_and_the_schema_agree() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        for rec in [full(), bare()] {
            let v = serde_json::to_value(&rec).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&v)
                .map(|e| format!("{}: {e}", e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{errors:#?}");
            assert_eq!(PodRecord::from_value(v).unwrap(), rec, "round trip");
        }
        // The schema is strict: a field the type does not write is refused, so the schema
        // cannot describe fields the type lost.
        let mut v = serde_json::to_value(full()).unwrap();
        v["durations_s"]["extra"] = 1.0.into();
        assert!(!validator.is_valid(&v));
        let mut v = serde_json::to_value(full()).unwrap();
        v.as_object_mut().unwrap().remove("traffic");
        assert!(!validator.is_valid(&v), "every key is required");
    }

    #[test]
    fn records_from_before_discovery_and_lag_still_read() {
        let mut v = serde_json::to_value(full()).unwrap();
        v["checks"][0].as_object_mut().unwrap().remove("origins");
        v["checks"][0]
            .as_object_mut()
            .unwrap()
            .remove("first_probe_s");
        v["attempts"][0].as_object_mut().unwrap().remove("queued_s");
        v.as_object_mut().unwrap().remove("lag_s");
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        assert!(jsonschema::validator_for(&schema).unwrap().is_valid(&v));
        let old = PodRecord::from_value(v).unwrap();
        assert!(old.checks[0].origins.is_empty());
        assert_eq!(old.lag_s, Lag::default());
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let mut v = serde_json::to_value(full()).unwrap();
        v["schema_version"] = 2.into();
        assert_eq!(
            PodRecord::from_value(v).unwrap_err(),
            "not a netready pod record of schema_version 1"
        );
        let e = PodRecord::from_value(serde_json::json!({"schema_version": 1})).unwrap_err();
        assert!(
            e.starts_with("not a netready pod record: missing field"),
            "{e}"
        );
    }

    #[test]
    fn timings_are_the_durations_then_the_passed_checks() {
        let t = full().timings();
        let names: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "cni_add",
                "cni_add_first_to_success",
                "network_ready",
                "sandbox_request_to_ready",
                "check.same_node_pod",
                "lag.cni_queued",
                "lag.first_probe",
                "lag.checks_started",
                "lag.check.same_node_pod"
            ]
        );
        assert!(bare().timings().is_empty());
    }
}
