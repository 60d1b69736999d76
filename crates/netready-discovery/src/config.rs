//! `[netperf.discovery]`: where the API server is and which Service names the control pods.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[netperf.discovery]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Whether other-node and service targets come from the API.
    pub enabled: bool,
    /// The node's own kubeconfig (kubelet's); re-read when the credentials it names change.
    pub kubeconfig: PathBuf,
    /// Use the pod's service account instead of `kubeconfig`. Explicit only: in kubemark the
    /// pod's own API server is the admin cluster's, not the one the node registers with.
    pub in_cluster: bool,
    /// The control Service, `namespace/name`.
    pub service: String,
    /// This node's name; empty: the runtime's (`[netperf.targets] node_name`, `NODE_NAME`,
    /// the hostname). A library user without a runtime gets `NODE_NAME`, then the hostname.
    pub node_name: String,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: false,
            kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
            in_cluster: false,
            service: "netperf/netperf-control".into(),
            node_name: String::new(),
        }
    }
}

impl DiscoveryConfig {
    /// The Service's namespace and name.
    pub fn service_ref(&self) -> Result<(&str, &str), String> {
        match self.service.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns, name))
            }
            _ => Err(format!(
                "key `netperf.discovery.service`: {:?} is not namespace/name",
                self.service
            )),
        }
    }

    /// The node name to tell own endpoints from others': the key, `NODE_NAME`, the hostname.
    pub fn resolved_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        if let Ok(n) = std::env::var("NODE_NAME") {
            if !n.is_empty() {
                return n;
            }
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_is_namespace_slash_name() {
        let mut c = DiscoveryConfig::default();
        assert_eq!(c.service_ref().unwrap(), ("netperf", "netperf-control"));
        for bad in ["netperf-control", "/x", "x/", "a/b/c"] {
            c.service = bad.into();
            assert!(c
                .service_ref()
                .unwrap_err()
                .contains("netperf.discovery.service"));
        }
    }
}
