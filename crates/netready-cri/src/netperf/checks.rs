//! Check settings, targets and their sources: the config, a targets file re-read when it
//! changes (a mounted ConfigMap), control pods learned from what netready forwards to
//! containerd, and per-pod overrides in `netready.io/...` annotations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netready_probe::plan::{CheckKind, HttpTarget, Plan, Targets};
use serde::{Deserialize, Serialize};

/// `[netperf.checks]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksConfig {
    /// Checks that must pass before a pod is network-ready.
    pub required: Vec<String>,
    /// Checks that run and are recorded but do not hold readiness back.
    pub optional: Vec<String>,
    /// Other nodes whose control pods are pinged (chosen at random; fewer when fewer exist).
    pub other_nodes: usize,
    /// HTTP GETs to the control service.
    pub http_count: u32,
    /// Timeout of one probe.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Wait between failed probes of a target.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Required checks not passed this long after the ADD succeeded make the pod not ready.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            // ICMP to a ClusterIP gets no answer under kube-proxy's iptables mode, so the
            // service is required by HTTP and pinged only optionally.
            required: vec![
                "same_node_pod".into(),
                "other_node_pods".into(),
                "service_http".into(),
            ],
            optional: vec![
                "service_ping".into(),
                "external_ping".into(),
                "external_http".into(),
            ],
            other_nodes: 5,
            http_count: 3,
            probe_timeout: Duration::from_secs(1),
            retry_interval: Duration::from_millis(200),
            deadline: Duration::from_secs(60),
        }
    }
}

/// `[netperf.targets]`: static targets; the file and learned control pods add to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetsConfig {
    /// This node's name (its entry in `nodes` is its own; default: the hostname).
    pub node_name: Option<String>,
    /// Control pods on this node.
    pub same_node: Vec<IpAddr>,
    /// Control pods of other nodes: node name → IPs.
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    /// The control service.
    pub service: Option<HttpTarget>,
    /// The external target.
    pub external: Option<HttpTarget>,
    /// A targets file (format [`TargetsFile`]), re-read when it changes.
    pub file: Option<PathBuf>,
    /// Label (key=value) of control pods netready forwards to containerd; their IPs become
    /// same-node targets while they run.
    pub control_label: String,
}

impl Default for TargetsConfig {
    /// No static targets; control pods labelled `netperf-role=control`. The label is this
    /// type's own default, not only the whole config's: a `[netperf.targets]` table that
    /// leaves the key out keeps it.
    fn default() -> Self {
        TargetsConfig {
            node_name: None,
            same_node: Vec::new(),
            nodes: BTreeMap::new(),
            service: None,
            external: None,
            file: None,
            control_label: "netperf-role=control".into(),
        }
    }
}

/// The targets file, version 1 (JSON):
/// `{"version": 1, "nodes": {"node-a": ["10.1.0.5"]}, "service": {"ip": "10.96.0.20",
/// "port": 80, "path": "/"}, "external": {"ip": "192.0.2.1", "port": 80, "path": "/"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsFile {
    /// Format version: 1.
    pub version: u32,
    /// Control pods per node (this node's own entry gives same-node targets).
    #[serde(default)]
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    /// The control service.
    #[serde(default)]
    pub service: Option<HttpTarget>,
    /// The external target.
    #[serde(default)]
    pub external: Option<HttpTarget>,
}

/// Reads and checks a targets file.
pub fn read_targets_file(path: &Path) -> Result<TargetsFile, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("targets file {}: {e}", path.display()))?;
    let f: TargetsFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("targets file {}: {e}", path.display()))?;
    if f.version != 1 {
        return Err(format!(
            "targets file {}: key `version`: {} is not a version this netready reads (1)",
            path.display(),
            f.version
        ));
    }
    Ok(f)
}

/// The targets file as last read, and when.
#[derive(Debug, Default)]
pub struct FileCache {
    seen: Option<(std::time::SystemTime, u64)>,
    file: TargetsFile,
}

impl FileCache {
    /// The file's targets, read again if its mtime or size changed (a ConfigMap update swaps
    /// a symlink, which changes both).
    pub fn get(&mut self, path: &Path) -> &TargetsFile {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp != self.seen {
            self.seen = stamp;
            match read_targets_file(path) {
                Ok(f) => self.file = f,
                Err(e) => {
                    // Keep the last good file: a half-written update must not blank targets.
                    tracing::warn!(error = %e, "targets file not used");
                }
            }
        }
        &self.file
    }
}

/// Control pods learned from containerd: sandbox id → IPs.
pub type Learned = HashMap<String, Vec<IpAddr>>;

/// Whether `labels` carry the control label `spec` (`key=value`, or a bare `key` that only
/// has to be there; empty: none is).
pub fn has_label(spec: &str, labels: &HashMap<String, String>) -> bool {
    match spec.split_once('=') {
        Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
        None => !spec.is_empty() && labels.contains_key(spec),
    }
}

/// Where targets come from, besides the config.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    /// The targets file as last read.
    pub file: &'a TargetsFile,
    /// Control pods learned from containerd on this node.
    pub learned: &'a Learned,
    /// What discovery knows; `None` when it is off.
    pub discovered: Option<&'a netready_discovery::Snapshot>,
    /// The control Service discovery watches (`namespace/name`), for messages.
    pub service: &'a str,
}

/// Why a check has no target while discovery is not synced yet.
pub const DISCOVERY_NOT_SYNCED: &str = "no_target:discovery_not_synced";
/// Why `other_node_pods` has no target when discovery knows no other node's control pod.
pub const NO_OTHER_NODE_POD: &str = "no other-node control pod";

/// All targets for a pod on `node`, with where each came from. Same-node control pods are
/// local knowledge (containerd, this node's entry in the file, the config); other nodes' come
/// from the API, the targets file and the config together; the service from the config, else
/// the API, else the file; the external target from the config, else the file.
pub fn resolve(cfg: &TargetsConfig, node: &str, src: Sources<'_>) -> Targets {
    let mut origins: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut note = |ips: &mut dyn Iterator<Item = IpAddr>, from: &str| {
        for ip in ips {
            origins.entry(ip).or_insert_with(|| from.to_owned());
        }
    };
    // Precedence of origins: what an operator wrote, then what netready saw itself.
    note(&mut cfg.same_node.iter().copied(), "config");
    note(&mut cfg.nodes.values().flatten().copied(), "config");
    note(
        &mut src.file.nodes.values().flatten().copied(),
        "targets_file",
    );
    note(&mut src.learned.values().flatten().copied(), "containerd");
    let mut same: BTreeSet<IpAddr> = cfg.same_node.iter().copied().collect();
    same.extend(src.learned.values().flatten().copied());
    let mut nodes: BTreeMap<String, BTreeSet<IpAddr>> = cfg
        .nodes
        .iter()
        .map(|(n, ips)| (n.clone(), ips.iter().copied().collect()))
        .collect();
    for (n, ips) in &src.file.nodes {
        nodes
            .entry(n.clone())
            .or_default()
            .extend(ips.iter().copied());
    }
    if let Some(d) = src.discovered {
        for (n, ips) in d.other_nodes(node) {
            note(&mut ips.iter().copied(), "api");
            // A pod with no node name is on no node we know: keep it apart from a node
            // called "" in the file.
            let key = if n.is_empty() { "(no nodeName)" } else { n };
            nodes
                .entry(key.to_owned())
                .or_default()
                .extend(ips.iter().copied());
        }
    }
    if let Some(own) = nodes.remove(node) {
        same.extend(own);
    }
    let api_vip = src.discovered.and_then(|d| d.service.as_ref());
    let api_service = api_vip.and_then(|s| {
        Some(HttpTarget {
            ip: s.ip,
            port: s.http_port?,
            path: "/".into(),
            host: None,
        })
    });
    let service = match (&cfg.service, api_service, &src.file.service) {
        (Some(s), _, _) => {
            note(&mut std::iter::once(s.ip), "config");
            Some(s.clone())
        }
        (None, Some(s), _) => {
            note(&mut std::iter::once(s.ip), "api");
            Some(s)
        }
        (None, None, Some(s)) => {
            note(&mut std::iter::once(s.ip), "targets_file");
            Some(s.clone())
        }
        (None, None, None) => None,
    };
    let external = match (&cfg.external, &src.file.external) {
        (Some(e), _) => {
            note(&mut std::iter::once(e.ip), "config");
            Some(e.clone())
        }
        (None, Some(e)) => {
            note(&mut std::iter::once(e.ip), "targets_file");
            Some(e.clone())
        }
        (None, None) => None,
    };
    let other_nodes: Vec<(String, Vec<IpAddr>)> = nodes
        .into_iter()
        .filter(|(_, ips)| !ips.is_empty())
        .map(|(n, ips)| (n, ips.into_iter().collect()))
        .collect();
    // A Service without a port named http can still be pinged.
    let service_ip = match (&service, api_vip) {
        (None, Some(v)) => {
            note(&mut std::iter::once(v.ip), "api");
            Some(v.ip)
        }
        _ => None,
    };
    let mut no_target = BTreeMap::new();
    if let Some(d) = src.discovered {
        let why_other = if !d.synced {
            DISCOVERY_NOT_SYNCED.to_owned()
        } else {
            NO_OTHER_NODE_POD.to_owned()
        };
        if other_nodes.is_empty() {
            no_target.insert(CheckKind::OtherNodePods, why_other);
        }
        if service.is_none() {
            let why = if !d.synced {
                DISCOVERY_NOT_SYNCED.to_owned()
            } else {
                format!(
                    "no target: Service {} not found, or without a ClusterIP or a port named http",
                    src.service
                )
            };
            no_target.insert(CheckKind::ServiceHttp, why.clone());
            no_target.insert(CheckKind::ServicePing, why);
        }
    }
    Targets {
        same_node: same.into_iter().collect(),
        other_nodes,
        service,
        service_ip,
        external,
        origins,
        no_target,
    }
}

fn kinds(list: &[String], origin: &str) -> Result<BTreeSet<CheckKind>, String> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse::<CheckKind>().map_err(|e| format!("{origin}: {e}")))
        .collect()
}

/// Annotation prefix of per-pod overrides.
pub const ANNOTATION_PREFIX: &str = "netready.io/";

/// Longest error message about a pod's annotations: it goes to kubelet in a gRPC status (a
/// header) and into the pod's events, so a value megabytes long is not echoed whole.
pub const MAX_ERROR_LEN: usize = 512;

/// The pod's plan: the config, overridden by its `netready.io/...` annotations. Errors name
/// the annotation or key, in at most [`MAX_ERROR_LEN`] characters.
pub fn plan_for(
    cfg: &ChecksConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<Plan, String> {
    plan_unbounded(cfg, annotations).map_err(|e| match e.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => format!("{}... (cut)", &e[..cut]),
        None => e,
    })
}

fn plan_unbounded(
    cfg: &ChecksConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<Plan, String> {
    let ann = |k: &str| annotations.get(&format!("{ANNOTATION_PREFIX}{k}"));
    let list = |k: &str, default: &[String]| -> Result<BTreeSet<CheckKind>, String> {
        match ann(k) {
            Some(v) => kinds(
                &v.split(',').map(str::to_owned).collect::<Vec<_>>(),
                &format!("annotation {ANNOTATION_PREFIX}{k}"),
            ),
            None => kinds(
                default,
                &format!("netperf.checks.{}", k.trim_start_matches("checks-")),
            ),
        }
    };
    let dur = |k: &str, default: Duration| -> Result<Duration, String> {
        match ann(k) {
            Some(v) => humantime::parse_duration(v)
                .map_err(|e| format!("annotation {ANNOTATION_PREFIX}{k}: {v:?}: {e}")),
            None => Ok(default),
        }
    };
    let num = |k: &str, default: u64| -> Result<u64, String> {
        match ann(k) {
            Some(v) => v
                .parse()
                .map_err(|e| format!("annotation {ANNOTATION_PREFIX}{k}: {v:?}: {e}")),
            None => Ok(default),
        }
    };
    let required = list("checks-required", &cfg.required)?;
    let mut optional = list("checks-optional", &cfg.optional)?;
    optional.retain(|k| !required.contains(k));
    Ok(Plan {
        required,
        optional,
        other_nodes: num("other-nodes", cfg.other_nodes as u64)? as usize,
        http_count: num("http-count", u64::from(cfg.http_count))? as u32,
        probe_timeout: dur("probe-timeout", cfg.probe_timeout)?,
        retry_interval: dur("retry-interval", cfg.retry_interval)?,
        deadline: dur("check-deadline", cfg.deadline)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_override_and_bad_values_are_named() {
        let cfg = ChecksConfig::default();
        let plan = plan_for(&cfg, &BTreeMap::new()).unwrap();
        assert!(plan.required.contains(&CheckKind::ServiceHttp));
        assert!(
            !plan.required.contains(&CheckKind::ServicePing),
            "ICMP to a ClusterIP is optional"
        );
        let ann: BTreeMap<String, String> = [
            (
                "netready.io/checks-required".to_string(),
                "same_node_pod, external_http".to_string(),
            ),
            ("netready.io/http-count".to_string(), "7".to_string()),
            ("netready.io/check-deadline".to_string(), "5s".to_string()),
        ]
        .into();
        let plan = plan_for(&cfg, &ann).unwrap();
        assert_eq!(
            plan.required,
            [CheckKind::SameNodePod, CheckKind::ExternalHttp].into()
        );
        assert!(!plan.optional.contains(&CheckKind::ExternalHttp));
        assert_eq!(
            (plan.http_count, plan.deadline),
            (7, Duration::from_secs(5))
        );
        let bad: BTreeMap<String, String> =
            [("netready.io/probe-timeout".to_string(), "soon".to_string())].into();
        assert!(plan_for(&cfg, &bad)
            .unwrap_err()
            .contains("netready.io/probe-timeout"));
        let bad: BTreeMap<String, String> = [(
            "netready.io/checks-required".to_string(),
            "ping".to_string(),
        )]
        .into();
        assert!(plan_for(&cfg, &bad)
            .unwrap_err()
            .contains("netready.io/checks-required"));
    }

    #[test]
    fn targets_merge_sources_and_split_own_node() {
        let cfg = TargetsConfig {
            same_node: vec!["10.0.0.2".parse().unwrap()],
            ..Default::default()
        };
        let file = TargetsFile {
            version: 1,
            nodes: [
                ("me".to_string(), vec!["10.0.0.3".parse().unwrap()]),
                ("other".to_string(), vec!["10.0.1.2".parse().unwrap()]),
            ]
            .into(),
            ..Default::default()
        };
        let learned: Learned = [("sb".to_string(), vec!["10.0.0.4".parse().unwrap()])].into();
        let src = Sources {
            file: &file,
            learned: &learned,
            discovered: None,
            service: "",
        };
        let t = resolve(&cfg, "me", src);
        assert_eq!(t.same_node.len(), 3);
        assert_eq!(
            t.other_nodes,
            vec![("other".to_string(), vec!["10.0.1.2".parse().unwrap()])]
        );
    }

    #[test]
    fn discovered_targets_join_the_file_and_say_why_none() {
        let cfg = TargetsConfig::default();
        let file = TargetsFile {
            version: 1,
            nodes: [("outside".to_string(), vec!["192.0.2.7".parse().unwrap()])].into(),
            ..Default::default()
        };
        let learned: Learned = [("sb".to_string(), vec!["10.0.0.4".parse().unwrap()])].into();
        let mut snap = netready_discovery::Snapshot {
            synced: true,
            ..Default::default()
        };
        snap.endpoints
            .entry("me".into())
            .or_default()
            .insert("10.0.0.9".parse().unwrap());
        snap.endpoints
            .entry("n2".into())
            .or_default()
            .insert("10.0.2.2".parse().unwrap());
        snap.service = Some(netready_discovery::ServiceTarget {
            ip: "10.96.0.20".parse().unwrap(),
            http_port: Some(80),
        });
        let src = |d| Sources {
            file: &file,
            learned: &learned,
            discovered: d,
            service: "netperf/netperf-control",
        };
        let t = resolve(&cfg, "me", src(Some(&snap)));
        assert_eq!(
            t.same_node,
            vec!["10.0.0.4".parse::<IpAddr>().unwrap()],
            "same node stays local"
        );
        let names: Vec<_> = t.other_nodes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["n2", "outside"],
            "the file's entries are added to the API's"
        );
        assert_eq!(t.origins[&"10.0.2.2".parse().unwrap()], "api");
        assert_eq!(t.origins[&"192.0.2.7".parse().unwrap()], "targets_file");
        assert_eq!(t.origins[&"10.0.0.4".parse().unwrap()], "containerd");
        assert_eq!(
            t.service.as_ref().map(|s| (s.ip.to_string(), s.port)),
            Some(("10.96.0.20".into(), 80))
        );
        assert!(t.no_target.is_empty());

        let empty = TargetsFile::default();
        let waiting = netready_discovery::Snapshot::default();
        let t = resolve(
            &cfg,
            "me",
            Sources {
                file: &empty,
                ..src(Some(&waiting))
            },
        );
        assert_eq!(t.no_target[&CheckKind::OtherNodePods], DISCOVERY_NOT_SYNCED);
        assert_eq!(t.no_target[&CheckKind::ServiceHttp], DISCOVERY_NOT_SYNCED);
        let lonely = netready_discovery::Snapshot {
            synced: true,
            service: snap.service.clone(),
            ..Default::default()
        };
        let t = resolve(
            &cfg,
            "me",
            Sources {
                file: &empty,
                ..src(Some(&lonely))
            },
        );
        assert_eq!(t.no_target[&CheckKind::OtherNodePods], NO_OTHER_NODE_POD);
        assert!(!t.no_target.contains_key(&CheckKind::ServiceHttp));
    }

    #[test]
    fn targets_file_is_reread_when_it_changes_and_a_bad_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("targets.json");
        let mut cache = FileCache::default();
        assert!(cache.get(&p).nodes.is_empty(), "no file yet: no targets");
        std::fs::write(&p, r#"{"version": 1, "nodes": {"a": ["10.0.0.1"]}}"#).unwrap();
        assert_eq!(cache.get(&p).nodes["a"].len(), 1);
        // A ConfigMap update (new content, new size).
        std::fs::write(
            &p,
            r#"{"version": 1, "nodes": {"a": ["10.0.0.1", "10.0.0.2"], "b": []}}"#,
        )
        .unwrap();
        assert_eq!(cache.get(&p).nodes["a"].len(), 2);
        // A half-written update keeps the last good targets.
        std::fs::write(&p, r#"{"version": 1, "nod"#).unwrap();
        assert_eq!(cache.get(&p).nodes["a"].len(), 2);
    }

    #[test]
    fn targets_file_version_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        std::fs::write(&p, r#"{"version": 2}"#).unwrap();
        assert!(read_targets_file(&p).unwrap_err().contains("version"));
        std::fs::write(
            &p,
            r#"{"version": 1, "nodes": {"a": ["10.0.0.1"]}, "service": {"ip": "10.96.0.1"}}"#,
        )
        .unwrap();
        let f = read_targets_file(&p).unwrap();
        assert_eq!(f.service.unwrap().port, 80);
    }
}
