//! Replies netready writes itself or amends: `Version`, `Status`, and merged lists.
//!
//! Amending keeps upstream's bytes: protobuf merges a message field that appears twice and
//! lets a later scalar win, so netready appends encoded fields to the upstream reply instead of
//! decoding and re-encoding it (which would drop fields this proto does not know).

use k8s_cri::v1 as cri;
use prost::Message;

/// netready's version, as reported in `Version` and in its `Status` condition.
pub const NETREADY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The runtime name kubelet sees (container ids become `netready://<id>`).
pub const RUNTIME_NAME: &str = "netready";

/// The condition type netready adds to `Status`.
pub const CONDITION: &str = "NetreadyReady";

/// Fields appended to upstream's `VersionResponse`: runtime name and a version naming both.
pub fn version_amendment(upstream: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    let up = cri::VersionResponse::decode(upstream)?;
    let amended = cri::VersionResponse {
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: format!(
            "{NETREADY_VERSION} (upstream {} {})",
            up.runtime_name, up.runtime_version
        ),
        ..Default::default()
    };
    Ok(amended.encode_to_vec())
}

/// The whole `VersionResponse` when upstream cannot be reached.
pub fn version_alone(request_version: &str, why: &str) -> Vec<u8> {
    cri::VersionResponse {
        version: if request_version.is_empty() {
            "0.1.0".into()
        } else {
            request_version.into()
        },
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: format!("{NETREADY_VERSION} (upstream unreachable: {why})"),
        runtime_api_version: "v1".into(),
    }
    .encode_to_vec()
}

fn condition(status: bool, reason: &str, message: String) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: CONDITION.into(),
        status,
        reason: reason.into(),
        message,
    }
}

/// An encoded `StatusResponse` holding only netready's condition; appended to upstream's reply
/// it adds the condition to `status.conditions`.
pub fn status_amendment(upstream_socket: &str) -> Vec<u8> {
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![condition(
                true,
                "",
                format!(
                    "netready {NETREADY_VERSION} serving; upstream {upstream_socket} reachable"
                ),
            )],
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The whole `StatusResponse` when upstream cannot be reached: the runtime is not ready (pods
/// that go upstream cannot run), and every condition says why.
pub fn status_alone(upstream_socket: &str, why: &str) -> Vec<u8> {
    let message = format!("upstream runtime at {upstream_socket} is unreachable: {why}");
    let down = |kind: &str| cri::RuntimeCondition {
        r#type: kind.into(),
        status: false,
        reason: "UpstreamUnavailable".into(),
        message: message.clone(),
    };
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                down("RuntimeReady"),
                down("NetworkReady"),
                condition(
                    true,
                    "UpstreamUnavailable",
                    format!("netready {NETREADY_VERSION} serving; {message}"),
                ),
            ],
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Status of a netready with no upstream runtime (netperf pods only, as `netready local`'s
/// nodes run): ready, and saying so.
pub fn status_netperf_only() -> Vec<u8> {
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                condition(true, "NetperfOnly", "no upstream runtime configured".into()),
                cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    ..Default::default()
                },
                cri::RuntimeCondition {
                    r#type: "RuntimeReady".into(),
                    status: true,
                    ..Default::default()
                },
            ],
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A `StatusResponse` holding only `conditions`, to append to another (repeated fields
/// concatenate); empty when there are none.
pub fn status_conditions(conditions: Vec<cri::RuntimeCondition>) -> Vec<u8> {
    if conditions.is_empty() {
        return Vec::new();
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Encodes entries of a list reply's repeated field 1 (`items`, `containers`, `stats`), ready
/// to append to the upstream reply.
pub fn list_entries<M: Message>(entries: &[M]) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in entries {
        prost::encoding::message::encode(1, e, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_version_fields_win_and_keep_the_rest() {
        let upstream = cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20".into(),
            runtime_api_version: "v1".into(),
        }
        .encode_to_vec();
        let mut merged = upstream.clone();
        merged.extend(version_amendment(&upstream).unwrap());
        let v = cri::VersionResponse::decode(&merged[..]).unwrap();
        assert_eq!(v.runtime_name, "netready");
        assert_eq!(
            v.runtime_version,
            format!("{NETREADY_VERSION} (upstream containerd 1.6.20)")
        );
        assert_eq!(v.version, "0.1.0");
        assert_eq!(v.runtime_api_version, "v1");
    }

    #[test]
    fn appended_condition_joins_upstream_conditions() {
        let upstream = cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cri::RuntimeCondition {
                    r#type: "RuntimeReady".into(),
                    status: true,
                    ..Default::default()
                }],
            }),
            info: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut merged = upstream;
        merged.extend(status_amendment("unix:///x.sock"));
        let s = cri::StatusResponse::decode(&merged[..]).unwrap();
        let types: Vec<_> = s
            .status
            .unwrap()
            .conditions
            .into_iter()
            .map(|c| c.r#type)
            .collect();
        assert_eq!(types, ["RuntimeReady", CONDITION]);
        assert_eq!(s.info["k"], "v");
    }

    #[test]
    fn status_alone_says_runtime_not_ready() {
        let s =
            cri::StatusResponse::decode(&status_alone("unix:///x.sock", "refused")[..]).unwrap();
        let conds = s.status.unwrap().conditions;
        let rt = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
        assert!(!rt.status);
        assert!(rt.message.contains("unix:///x.sock"), "{}", rt.message);
    }

    #[test]
    fn list_entries_append_to_repeated_field() {
        let upstream = cri::ListPodSandboxResponse {
            items: vec![cri::PodSandbox {
                id: "up".into(),
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let mut merged = upstream;
        merged.extend(list_entries(&[cri::PodSandbox {
            id: "local".into(),
            ..Default::default()
        }]));
        let l = cri::ListPodSandboxResponse::decode(&merged[..]).unwrap();
        let ids: Vec<_> = l.items.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["up", "local"]);
    }
}
