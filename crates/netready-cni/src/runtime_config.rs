//! What a runtime hands the plugins besides the conflist, built as containerd builds it:
//! capability args (libcni's `runtimeConfig`) from the pod's spec, and the pod's IPs read back
//! from an ADD result. Kept here, with the rest of what libcni does, so the CRI side only
//! translates its types.

use std::collections::{BTreeMap, HashMap};

use rscni_types::types::CNIResult;
use serde_json::Value;

use crate::quantity;

/// A port mapping of the pod spec.
#[derive(Debug, Clone)]
pub struct PortMapping {
    /// Host port; 0 for none (kubelet sends those for every `containerPort`).
    pub host_port: i32,
    /// Container port.
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// Host IP to bind, empty for all.
    pub host_ip: String,
}

/// The pod's DNS settings.
#[derive(Debug, Clone)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// What of a pod's spec reaches the plugins.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// Port mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Pod annotations (the bandwidth ones are read).
    pub annotations: &'a HashMap<String, String>,
    /// DNS settings.
    pub dns: Option<Dns>,
}

/// A bandwidth annotation containerd would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {shown} is {why}")]
pub struct BadAnnotation {
    /// The annotation.
    pub annotation: &'static str,
    /// Its value, quoted, cut when too long to be a quantity.
    pub shown: String,
    /// What is wrong with it.
    pub why: String,
}

/// The pod annotations kubelet passes through that set the bandwidth plugin's rates.
const BANDWIDTH_ANNOTATIONS: [(&str, &str, &str); 2] = [
    (
        "kubernetes.io/ingress-bandwidth",
        "ingressRate",
        "ingressBurst",
    ),
    (
        "kubernetes.io/egress-bandwidth",
        "egressRate",
        "egressBurst",
    ),
];

/// Capability args under libcni's capability names: `portMappings` (host ports only),
/// `bandwidth` in bits/s as containerd's `toCNIBandWidth` fills it (the rate is the quantity's
/// `Value()`, the burst math.MaxUint32), `dns`.
pub fn capability_args(spec: &PodSpec<'_>) -> Result<BTreeMap<String, Value>, BadAnnotation> {
    let mut caps = BTreeMap::new();
    let ports: Vec<Value> = spec
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            serde_json::json!({"hostPort": p.host_port, "containerPort": p.container_port,
                               "protocol": p.protocol, "hostIP": p.host_ip})
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    let mut bw = serde_json::Map::new();
    for (annotation, rate, burst) in BANDWIDTH_ANNOTATIONS {
        let Some(v) = spec.annotations.get(annotation) else {
            continue;
        };
        let bits = quantity::bandwidth(v).map_err(|why| BadAnnotation {
            annotation,
            // A value too long to be a quantity is shown cut, not echoed whole into the reply.
            shown: match v.char_indices().nth(quantity::MAX_LEN) {
                Some((cut, _)) => format!("{:?}...", &v[..cut]),
                None => format!("{v:?}"),
            },
            why,
        })?;
        bw.insert(rate.into(), bits.into());
        bw.insert(burst.into(), u64::from(u32::MAX).into());
    }
    if !bw.is_empty() {
        caps.insert("bandwidth".into(), Value::Object(bw));
    }
    if let Some(dns) = &spec.dns {
        caps.insert(
            "dns".into(),
            serde_json::json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    Ok(caps)
}

/// Pod IPs from an ADD result: the pod interface's addresses, IPv4 first as containerd
/// orders them; all addresses when the result names no interface.
pub fn pod_ips(result: &CNIResult, netns: &str, ifname: &str) -> Vec<String> {
    let in_pod: Vec<usize> = result
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            i.sandbox.as_deref() == Some(netns) || i.name == ifname && i.sandbox.is_some()
        })
        .map(|(n, _)| n)
        .collect();
    let mut ips: Vec<std::net::IpAddr> = result
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) if !in_pod.is_empty() => in_pod.contains(&(i as usize)),
            _ => true,
        })
        .map(|ip| ip.address.addr())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.dedup();
    ips.into_iter().map(|ip| ip.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_pick_the_pod_interface_v4_first() {
        let r: CNIResult = serde_json::from_value(serde_json::json!({
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/ns"}],
            "ips": [{"address": "fd00::5/64", "interface": 2},
                    {"address": "10.0.0.1/24", "interface": 0},
                    {"address": "10.0.0.5/24", "interface": 2}]
        }))
        .unwrap();
        assert_eq!(pod_ips(&r, "/ns", "eth0"), ["10.0.0.5", "fd00::5"]);
        let bare: CNIResult =
            serde_json::from_value(serde_json::json!({"ips": [{"address": "10.9.0.2/16"}]}))
                .unwrap();
        assert_eq!(pod_ips(&bare, "/ns", "eth0"), ["10.9.0.2"]);
    }
}
