//! Test topologies for reachability checks: nodes routed to each other, control pods that
//! answer ICMP and HTTP, a service VIP (DNAT in the node netns, as kube-proxy does) and an
//! external target in a netns of its own. Every address lives in namespaces the test made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use netready_cni::{Network, PluginExec};
use netready_local::netlink::{link_pair, sysctl_ipv4, Nl};
use netready_local::service;
use netready_netns::Netns;

use crate::node::TestNode;
use crate::unique_name;

pub use netready_local::{ControlPod, HttpServer};

/// Attaches a control pod to `node` with the node's own conflist, as `netready local` does;
/// its servers run on the caller's tokio runtime.
pub async fn control_pod(node: &TestNode) -> anyhow::Result<ControlPod> {
    let conflist = netready_cni::conflist::load_dir(&node.path("net.d"))?;
    let exec = Arc::new(PluginExec {
        paths: vec!["/usr/lib/cni".into()],
        timeout: Duration::from_secs(30),
    });
    ControlPod::start(
        node.netns(),
        &node.path("netns"),
        &unique_name("ctl"),
        Network::new(conflist, exec.clone()),
        Network::loopback(exec),
        None,
    )
    .await
}

/// Two nodes routed to each other over a veth, control pods on both, a service VIP on node A
/// DNATed to node B's control pod, and an external host reachable from node A.
pub struct TwoNodes {
    // Fields drop in this order: pods and servers before the nodes they live on.
    /// Control pod on A.
    pub control_a: ControlPod,
    /// Control pod on B.
    pub control_b: ControlPod,
    /// The service VIP (port 80 → control B:8080).
    pub vip: IpAddr,
    /// The external host's address.
    pub external: IpAddr,
    external_ns: Option<Netns>,
    /// The external host's HTTP server (port 80), when started.
    pub external_server: Option<HttpServer>,
    /// Node A (where netready runs).
    pub a: TestNode,
    /// Node B.
    pub b: TestNode,
}

/// Subnet of node A's pods.
pub const SUBNET_A: &str = "10.201.0.0/24";
/// Subnet of node B's pods.
pub const SUBNET_B: &str = "10.202.0.0/24";

impl TwoNodes {
    /// Builds it; the external HTTP server starts `external_delay` from now (`None`: never).
    pub async fn start(external_delay: Option<Duration>) -> anyhow::Result<Self> {
        let a = TestNode::new()?;
        let b = TestNode::new()?;
        a.write_conflist(&a.bridge_conflist(SUBNET_A, vec![]))?;
        b.write_conflist(&b.bridge_conflist(SUBNET_B, vec![]))?;
        // Node-to-node link and routes.
        let (nl_a, nl_b) = (Nl::open(a.netns()).await?, Nl::open(b.netns()).await?);
        let pid = std::process::id() % 100000;
        let (ip_a, ip_b) = link_pair(
            (&nl_a, a.netns(), &format!("nra{pid}")),
            (&nl_b, b.netns(), &format!("nrb{pid}")),
            Ipv4Addr::new(172, 31, 250, 0),
        )
        .await?;
        for n in [&a, &b] {
            sysctl_ipv4(n.netns(), "ip_forward", "1")?;
        }
        let (net, prefix) = cidr(SUBNET_B)?;
        nl_a.add_route(net, prefix, ip_b).await?;
        let (net, prefix) = cidr(SUBNET_A)?;
        nl_b.add_route(net, prefix, ip_a).await?;
        let control_a = control_pod(&a).await?;
        let control_b = control_pod(&b).await?;
        // External host: its own netns behind node A.
        let ext = Netns::create("/run/netns", &unique_name("ext"))?;
        let nl_ext = Nl::open(&ext).await?;
        let (a_side, ext_side) = link_pair(
            (&nl_a, a.netns(), &format!("nre{pid}")),
            (&nl_ext, &ext, "eth0"),
            Ipv4Addr::new(172, 31, 251, 0),
        )
        .await?;
        let external = Ipv4Addr::new(198, 18, 0, 10);
        nl_ext.add_addr("lo", external, 32).await?;
        nl_ext.add_route(Ipv4Addr::UNSPECIFIED, 0, a_side).await?;
        nl_a.add_route(external, 32, ext_side).await?;
        let external_server = match external_delay {
            Some(d) => {
                Some(HttpServer::start_after(&ext, SocketAddr::new(external.into(), 80), d).await?)
            }
            None => None,
        };
        // Service VIP on node A, kube-proxy's way with one backend: TCP 80 → control B:8080,
        // ICMP → control B.
        let vip = Ipv4Addr::new(10, 96, 0, 20);
        service::install(
            a.netns(),
            &service::rules(vip, 80, &[control_b.ip], SUBNET_A),
        )?;
        Ok(TwoNodes {
            a,
            b,
            control_a,
            control_b,
            vip: vip.into(),
            external: external.into(),
            external_ns: Some(ext),
            external_server,
        })
    }

    /// Drops every packet node A forwards to `ip` (a blackholed target), silently, as a lost
    /// link would; what node A itself sends there fails at once.
    pub fn blackhole(&self, ip: IpAddr) -> anyhow::Result<()> {
        let ip = v4(ip)?;
        self.on_a(async move |nl| nl.add_blackhole(ip, 32).await)
    }

    /// Lets node A forward to `ip` again (undoes [`TwoNodes::blackhole`]).
    pub fn unblackhole(&self, ip: IpAddr) -> anyhow::Result<()> {
        let ip = v4(ip)?;
        self.on_a(async move |nl| nl.del_blackhole(ip, 32).await)
    }

    /// Runs `f` with a netlink handle in node A's namespace. Callers are sync and may be on a
    /// runtime's worker, where blocking on a future panics: it runs on a thread and runtime of
    /// its own.
    fn on_a(&self, f: impl AsyncFnOnce(&Nl) -> anyhow::Result<()> + Send) -> anyhow::Result<()> {
        let ns = self.a.netns();
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async { f(&Nl::open(ns).await?).await })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("netlink thread for {} panicked", ns.name()))?
        })
    }

    /// Writes a targets file (format version 1) for node A's netready; returns its path.
    pub fn targets_file(
        &self,
        dir: &Path,
        extra_nodes: &[(&str, IpAddr)],
    ) -> anyhow::Result<std::path::PathBuf> {
        let mut nodes = serde_json::Map::new();
        nodes.insert("node-a".into(), serde_json::json!([self.control_a.ip]));
        nodes.insert("node-b".into(), serde_json::json!([self.control_b.ip]));
        for (n, ip) in extra_nodes {
            nodes.insert((*n).into(), serde_json::json!([ip]));
        }
        let f = serde_json::json!({
            "version": 1,
            "nodes": nodes,
            "service": {"ip": self.vip, "port": 80, "path": "/"},
            "external": {"ip": self.external, "port": 80, "path": "/healthz", "host": "external.test"},
        });
        let path = dir.join("targets.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&f)?)?;
        Ok(path)
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        self.external_server.take();
        if let Some(ns) = self.external_ns.take() {
            let _ = ns.remove();
        }
    }
}

fn v4(ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => anyhow::bail!("{ip}: the topology is IPv4 only"),
    }
}

/// `a.b.c.d/n` as a route destination.
fn cidr(subnet: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (net, prefix) = subnet
        .split_once('/')
        .with_context(|| format!("{subnet}: not a.b.c.d/n"))?;
    Ok((net.parse()?, prefix.parse()?))
}
