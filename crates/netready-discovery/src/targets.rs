//! From the watched Service and EndpointSlices to check targets.
//!
//! An endpoint is a target when it is ready and not terminating, as kube-proxy reads the
//! conditions: `ready` unset means ready, `terminating` unset means not terminating. The same
//! address may appear in two slices of one Service while the controller moves it; targets are
//! sets. An endpoint without `nodeName` is on no known node, so never "this node".

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Where discovered control pods run: a node name (`""` for endpoints with none).
pub type ByNode = BTreeMap<String, BTreeSet<IpAddr>>;

/// The control Service as a check target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    /// Its ClusterIP.
    pub ip: IpAddr,
    /// The port named `http`, if the Service has one.
    pub http_port: Option<u16>,
}

/// What discovery knows, published whole on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The initial lists of both resources completed at least once: the targets below are
    /// the API's, not just "none yet".
    pub synced: bool,
    /// Since when the API has been unreachable or refusing (targets are the last known).
    pub unreachable_since: Option<SystemTime>,
    /// The last error seen, for `Status` and logs.
    pub last_error: Option<String>,
    /// Ready, non-terminating control pods, by node.
    pub endpoints: ByNode,
    /// The Service, when it exists and has a ClusterIP.
    pub service: Option<ServiceTarget>,
}

impl Snapshot {
    /// Control pods on nodes other than `node` (endpoints with no node name included).
    pub fn other_nodes<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a BTreeSet<IpAddr>)> + 'a {
        self.endpoints
            .iter()
            .filter(move |(n, _)| n.is_empty() || n.as_str() != node)
            .map(|(n, ips)| (n.as_str(), ips))
    }

    /// How many other-node control pods there are.
    pub fn other_node_pods(&self, node: &str) -> usize {
        self.other_nodes(node).map(|(_, ips)| ips.len()).sum()
    }
}

/// The Service named `name` among `services`, as a target.
pub fn service_target(services: &[Arc<Service>], name: &str) -> Option<ServiceTarget> {
    let svc = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))?;
    let spec = svc.spec.as_ref()?;
    let ip: IpAddr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let http_port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| u16::try_from(p.port).ok());
    Some(ServiceTarget { ip, http_port })
}

/// Ready, non-terminating endpoints of `slices`, by node.
pub fn endpoints(slices: &[Arc<EndpointSlice>]) -> ByNode {
    let mut by_node = ByNode::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            let node = ep.node_name.clone().unwrap_or_default();
            let ips = ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok());
            by_node.entry(node).or_default().extend(ips);
        }
    }
    by_node.retain(|_, ips| !ips.is_empty());
    by_node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn conditions_read_as_kube_proxy_reads_them() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "a"}, "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.1.2"], "nodeName": "n1"},
                {"addresses": ["10.0.1.3"], "conditions": {"ready": false}, "nodeName": "n1"},
                {"addresses": ["10.0.2.2"], "conditions": {"ready": true, "terminating": true}, "nodeName": "n2"},
                {"addresses": ["10.0.3.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.2.3"], "conditions": {"ready": true, "terminating": false}, "nodeName": "n2"}
            ]
        }));
        let dup = slice(serde_json::json!({
            "metadata": {"name": "b"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.1.2"], "conditions": {"ready": true}, "nodeName": "n1"}]
        }));
        let fqdn = slice(serde_json::json!({
            "metadata": {"name": "c"}, "addressType": "FQDN",
            "endpoints": [{"addresses": ["control.example"], "nodeName": "n3"}]
        }));
        let by = endpoints(&[s, dup, fqdn]);
        let ips = |n: &str| by[n].iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ips("n1"),
            ["10.0.1.2"],
            "unset ready is ready, duplicates merge"
        );
        assert_eq!(ips("n2"), ["10.0.2.3"], "terminating is out");
        assert_eq!(ips(""), ["10.0.3.2"], "no nodeName: a node of its own");
        assert!(!by.contains_key("n3"));
        let snap = Snapshot {
            endpoints: by,
            ..Default::default()
        };
        let others: Vec<_> = snap.other_nodes("n1").map(|(n, _)| n.to_owned()).collect();
        assert_eq!(others, ["", "n2"], "an empty nodeName is never this node");
        assert_eq!(
            snap.other_node_pods(""),
            3,
            "not even for a node whose own name is empty: every endpoint is another node's"
        );
    }

    #[test]
    fn service_gives_cluster_ip_and_the_port_named_http() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "netperf-control"},
            "spec": {"clusterIP": "10.96.171.186",
                     "ports": [{"name": "iperf3", "port": 5201}, {"name": "http", "port": 80}]}
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "netperf-control"}, "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        let t = service_target(&[Arc::new(svc)], "netperf-control").unwrap();
        assert_eq!(
            (t.ip.to_string(), t.http_port),
            ("10.96.171.186".into(), Some(80))
        );
        assert!(service_target(&[Arc::new(headless)], "netperf-control").is_none());
    }
}
