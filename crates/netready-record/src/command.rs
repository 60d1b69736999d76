//! The record of a netperf pod's container command: one line of the results file, beside the
//! pod's own record, written when the command ends. A pod's record is written at its network
//! verdict, before a traffic command (an `iperf3 -c` sending for ten seconds, say) has run,
//! so what the command measured goes in a record of its own: `"kind": "command"`, keyed by
//! sandbox and container. `command-record.schema.json` beside this crate describes it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Pod, SCHEMA_VERSION};

/// The `kind` of a command record.
pub const KIND: &str = "command";

/// One container command's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// [`KIND`].
    pub kind: String,
    /// The run.
    pub run_id: String,
    /// The node that ran it.
    pub node: String,
    /// netready's version.
    pub netready_version: String,
    /// The run's identity and environment, as on the pod's records.
    pub fingerprint: Value,
    /// The pod.
    pub pod: Pod,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Its container: with run, node and sandbox, what names the record (a collector keeps
    /// one record per name).
    pub container_id: String,
    /// The container's name and restart count.
    pub container: Container,
    /// The command as the pod gave it (netready's additions, `-J` and a pool port for
    /// iperf3, are not in it).
    pub argv: Vec<String>,
    /// When its process was started; `None` when it was never started (not allowed,
    /// missing).
    pub started: Option<String>,
    /// When it ended.
    pub finished: String,
    /// Start to end, seconds; `None` when it never started.
    pub duration_s: Option<f64>,
    /// The container's exit code (126: not allowed, 127: missing, 128+n: signal n).
    pub exit_code: i32,
    /// The container's reason (`Completed`, `Error`, `DeadlineExceeded`, `ContainerCannotRun`).
    pub reason: String,
    /// The container's message.
    pub message: String,
    /// What an iperf3 client measured; `None` for other commands and when its report could
    /// not be read (then `iperf3_error` says why).
    pub iperf3: Option<Iperf3>,
    /// Why an iperf3 client's report could not be read.
    pub iperf3_error: Option<String>,
}

impl CommandRecord {
    /// Reads a record, refusing another kind or schema version by name.
    pub fn from_value(v: Value) -> Result<Self, String> {
        if v.get("kind").and_then(Value::as_str) != Some(KIND)
            || v.get("schema_version").and_then(Value::as_u64) != Some(u64::from(SCHEMA_VERSION))
        {
            return Err(format!(
                "not a netready command record of schema_version {SCHEMA_VERSION}"
            ));
        }
        serde_json::from_value(v).map_err(|e| format!("not a netready command record: {e}"))
    }
}

/// The container whose command it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Name in the pod spec.
    pub name: String,
    /// kubelet's restart count.
    pub attempt: u32,
}

/// What an iperf3 client run measured, from its JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iperf3 {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `host:port` it sent to.
    pub target: String,
    /// Seconds it sent for.
    pub seconds: f64,
    /// Bits per second as the receiving side counted them.
    pub bits_per_second: f64,
    /// TCP retransmits by the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
    /// UDP jitter at the receiver, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// UDP datagrams lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_packets: Option<u64>,
    /// UDP datagrams sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
}

impl Iperf3 {
    /// One line for the container log.
    pub fn line(&self) -> String {
        let mut s = format!(
            "netready: iperf3 {} to {} for {:.1} s: {:.1} Mbit/s",
            self.protocol,
            self.target,
            self.seconds,
            self.bits_per_second / 1e6
        );
        if let Some(r) = self.retransmits {
            s.push_str(&format!(", {r} retransmits"));
        }
        if let (Some(j), Some(l), Some(p)) = (self.jitter_ms, self.lost_packets, self.packets) {
            s.push_str(&format!(", jitter {j:.3} ms, lost {l}/{p}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../command-record.schema.json");
    const STAMP: &str = "2026-12-02T04:13:44.123456789Z";

    fn udp() -> CommandRecord {
        CommandRecord {
            schema_version: SCHEMA_VERSION,
            kind: KIND.into(),
            run_id: "run-1".into(),
            node: "node-a".into(),
            netready_version: "0.1.0".into(),
            fingerprint: serde_json::json!({"run_id": "run-1"}),
            pod: Pod {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
                attempt: 0,
            },
            sandbox_id: "ab".repeat(32),
            container_id: "cd".repeat(32),
            container: Container {
                name: "client".into(),
                attempt: 0,
            },
            argv: vec!["iperf3".into(), "-c".into(), "10.0.0.2".into(), "-u".into()],
            started: Some(STAMP.into()),
            finished: STAMP.into(),
            duration_s: Some(1.02),
            exit_code: 0,
            reason: "Completed".into(),
            message: String::new(),
            iperf3: Some(Iperf3 {
                protocol: "udp".into(),
                target: "10.0.0.2:5203".into(),
                seconds: 1.0,
                bits_per_second: 1.05e6,
                retransmits: None,
                jitter_ms: Some(0.012),
                lost_packets: Some(0),
                packets: Some(91),
            }),
            iperf3_error: None,
        }
    }

    /// A command off the allowlist: never started, nothing measured.
    fn refused() -> CommandRecord {
        CommandRecord {
            argv: vec!["sh".into(), "-c".into(), "id".into()],
            started: None,
            duration_s: None,
            exit_code: 126,
            reason: "ContainerCannotRun".into(),
            message: "sh is not on netready's allowlist".into(),
            iperf3: None,
            ..udp()
        }
    }

    #[test]
    fn the_type_and_the_schema_agree() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let tcp = CommandRecord {
            iperf3: Some(Iperf3 {
                protocol: "tcp".into(),
                retransmits: Some(3),
                jitter_ms: None,
                lost_packets: None,
                packets: None,
                ..udp().iperf3.unwrap()
            }),
            ..udp()
        };
        for rec in [udp(), tcp, refused()] {
            let v = serde_json::to_value(&rec).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&v)
                .map(|e| format!("{}: {e}", e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{errors:#?}");
            assert_eq!(CommandRecord::from_value(v).unwrap(), rec, "round trip");
        }
        let mut v = serde_json::to_value(udp()).unwrap();
        v["container"]["id"] = "x".into();
        assert!(!validator.is_valid(&v), "the schema is strict");
        let mut v = serde_json::to_value(udp()).unwrap();
        v.as_object_mut().unwrap().remove("iperf3_error");
        assert!(!validator.is_valid(&v), "every key is required");
    }

    #[test]
    fn a_pod_record_is_not_a_command_record() {
        let e = CommandRecord::from_value(serde_json::json!({"schema_version": 1})).unwrap_err();
        assert_eq!(e, "not a netready command record of schema_version 1");
        let mut v = serde_json::to_value(udp()).unwrap();
        v["schema_version"] = 2.into();
        assert!(CommandRecord::from_value(v).is_err());
    }

    #[test]
    fn the_log_line_names_what_was_measured() {
        assert_eq!(
            udp().iperf3.unwrap().line(),
            "netready: iperf3 udp to 10.0.0.2:5203 for 1.0 s: 1.1 Mbit/s, jitter 0.012 ms, lost 0/91"
        );
    }
}
