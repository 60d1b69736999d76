//! The simulated cluster: its layout on disk, its namespaces and links, its `netready serve`s.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use netready_cni::{Network, PluginExec};
use netready_netns::Netns;
use serde_json::{json, Value};

use crate::control::{ControlPod, HttpServer};
use crate::netlink::{link_pair, sysctl_ipv4, Nl};
use crate::paths::{netns_prefix, run_dir};
// Still public here, where callers found them before the sweep needed them as well.
pub use crate::paths::{NETNS_DIR, RUN_ROOT};
use crate::service;

/// The service VIP every node load-balances to the control pods.
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The service's port.
pub const SERVICE_PORT: u16 = 80;
/// The external target (TEST-NET-2 benchmarking range, RFC 2544), in a namespace of its own.
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Most nodes: node `i` routes pod subnet `<base>.i.0/24` and uplink `172.30.i.0/30`.
pub const MAX_NODES: usize = 250;

/// The provider's main plugin, from Debian's containernetworking-plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainPlugin {
    /// A bridge per node, pods on it (kubenet, flannel's cni0).
    Bridge,
    /// A veth per pod routed by the node (calico-like).
    Ptp,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes.
    pub nodes: usize,
    /// Main plugin.
    pub main_plugin: MainPlugin,
    /// Plugins chained after it, by type (`portmap`, `firewall`, `bandwidth`, `tuning`).
    pub chain: Vec<String>,
    /// Plugin directories (CNI_PATH).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// First two octets of the pod network: node `i` gets `a.b.i.0/24`.
    pub pod_net: [u8; 2],
    /// The `netready` binary each node runs.
    pub netready: PathBuf,
    /// iperf3 binary for the control pods' servers; `None`: no iperf3 server.
    pub iperf3: Option<String>,
    /// Measure traffic (iperf3 to the same-node control pod) after network ready.
    pub traffic: bool,
    /// Run id stamped on every record.
    pub run_id: String,
    /// Copied into every record's fingerprint (`[netperf.run_info]`).
    pub run_info: serde_json::Map<String, Value>,
    /// Log level of the nodes' netready.
    pub log_level: String,
}

/// One simulated node.
pub struct Node {
    /// Its name (`node-<i>`), as in the targets file and its records.
    pub name: String,
    /// Its pod subnet.
    pub subnet: String,
    /// Its directory: config, conflist, socket, state, pod netns, IPAM, log, results.
    pub dir: PathBuf,
    /// Its namespace, once made.
    pub netns: Option<Netns>,
    /// Its control pod, once started.
    pub control: Option<ControlPod>,
    serve: Option<Child>,
}

impl Node {
    /// The CRI socket of its netready.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("netready.sock")
    }

    /// Its netready's configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("netready.toml")
    }

    /// Its netready's records (JSON lines).
    pub fn results(&self) -> PathBuf {
        self.dir.join("results.jsonl")
    }

    /// Its netready's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("netready.log")
    }

    /// Directory of its pods' network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }
}

/// The cluster. [`Cluster::teardown`] (also run on drop) removes all of it.
pub struct Cluster {
    /// Its directory.
    pub root: PathBuf,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// What it was built from.
    pub opts: Options,
    prefix: String,
    fabric: Option<Netns>,
    external: Option<Netns>,
    external_server: Option<HttpServer>,
}

fn pod_subnet(opts: &Options, i: usize) -> String {
    format!("{}.{}.{i}.0/24", opts.pod_net[0], opts.pod_net[1])
}

/// The node's network configuration: the main plugin with host-local IPAM on its subnet
/// (reservations kept in the node's directory, not the host's /var/lib/cni), then the chain.
pub fn conflist(opts: &Options, subnet: &str, ipam_dir: &Path) -> Value {
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir});
    let main = match opts.main_plugin {
        MainPlugin::Bridge => json!({"type": "bridge", "bridge": "cni0", "isGateway": true,
                                     "ipMasq": false, "hairpinMode": true, "ipam": ipam}),
        MainPlugin::Ptp => json!({"type": "ptp", "ipMasq": false, "ipam": ipam}),
    };
    let mut plugins = vec![main];
    for t in &opts.chain {
        plugins.push(match t.as_str() {
            "portmap" => json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            "bandwidth" => json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            other => json!({"type": other}),
        });
    }
    json!({"cniVersion": "1.0.0", "name": "netready-local", "plugins": plugins})
}

impl Cluster {
    /// Lays the cluster out on disk: a directory per node with its conflist and netready
    /// configuration. Nothing is running yet; [`Cluster::up`] builds the network.
    pub fn prepare(opts: Options) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=MAX_NODES).contains(&opts.nodes),
            "--nodes must be 1 to {MAX_NODES}"
        );
        let pid = std::process::id();
        let root = run_dir(pid);
        let mut cluster = Cluster {
            root: root.clone(),
            nodes: Vec::new(),
            prefix: netns_prefix(pid),
            fabric: None,
            external: None,
            external_server: None,
            opts,
        };
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        for i in 0..cluster.opts.nodes {
            let dir = root.join(format!("node-{i}"));
            let subnet = pod_subnet(&cluster.opts, i);
            for d in ["net.d", "netns", "state", "ipam"] {
                std::fs::create_dir_all(dir.join(d))?;
            }
            let node = Node {
                name: format!("node-{i}"),
                subnet: subnet.clone(),
                dir: dir.clone(),
                netns: None,
                control: None,
                serve: None,
            };
            std::fs::write(
                dir.join("net.d/10-netready-local.conflist"),
                serde_json::to_vec_pretty(&conflist(&cluster.opts, &subnet, &dir.join("ipam")))?,
            )?;
            std::fs::write(node.config(), cluster.node_config(&node)?)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn targets_file(&self) -> PathBuf {
        self.root.join("targets.json")
    }

    /// The node's `netready serve` configuration, as the file a user would write.
    fn node_config(&self, node: &Node) -> anyhow::Result<String> {
        let o = &self.opts;
        let mut cfg = netready_cri::config::Config::default();
        cfg.serve.socket = node.socket();
        // No containerd behind a simulated node: every pod here is a netperf pod.
        cfg.serve.upstream = PathBuf::new();
        cfg.serve.metrics_address = String::new();
        let n = &mut cfg.netperf;
        n.netns_dir = node.netns_dir();
        n.state_dir = node.dir.join("state");
        n.results_file = Some(node.results());
        n.run_id = Some(o.run_id.clone());
        n.run_info = o.run_info.clone().into_iter().collect();
        n.cni.conf_dir = node.dir.join("net.d");
        n.cni.bin_dirs = o.cni_bin_dirs.clone();
        n.targets.node_name = Some(node.name.clone());
        n.targets.file = Some(self.targets_file());
        n.traffic.enabled = o.traffic;
        // One node has no other node to reach: that check is left out rather than failed.
        if o.nodes == 1 {
            n.checks.required = vec!["same_node_pod".into(), "service_http".into()];
            n.checks.optional = ["service_ping", "external_ping", "external_http"]
                .map(String::from)
                .to_vec();
        }
        cfg.log.level = o.log_level.clone();
        Ok(toml::to_string(&cfg)?)
    }

    fn netns_name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// Builds the network: the fabric, the external target, each node's namespace and uplink,
    /// its control pod and the service VIP. On failure, what was made stays registered for
    /// [`Cluster::teardown`].
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let fabric = Netns::create(NETNS_DIR, &self.netns_name("fabric"))?;
        sysctl_ipv4(&fabric, "ip_forward", "1")?;
        let fab = Nl::open(&fabric).await?;
        self.fabric = Some(fabric);
        let fabric = self.fabric.as_ref().expect("just set");

        let external = Netns::create(NETNS_DIR, &self.netns_name("ext"))?;
        let ext = Nl::open(&external).await?;
        self.external = Some(external);
        let external = self.external.as_ref().expect("just set");
        let (fab_ip, ext_ip) = link_pair(
            (&fab, fabric, "ext"),
            (&ext, external, "eth0"),
            Ipv4Addr::new(172, 30, 255, 0),
        )
        .await?;
        ext.add_addr("lo", EXTERNAL, 32).await?;
        ext.add_route(Ipv4Addr::UNSPECIFIED, 0, fab_ip).await?;
        fab.add_route(EXTERNAL, 32, ext_ip).await?;
        self.external_server =
            Some(HttpServer::start(external, SocketAddr::new(EXTERNAL.into(), 80)).await?);

        let exec = Arc::new(PluginExec {
            paths: self.opts.cni_bin_dirs.clone(),
            timeout: Duration::from_secs(60),
        });
        for i in 0..self.nodes.len() {
            let ns = Netns::create(NETNS_DIR, &self.netns_name(&format!("n{i}")))?;
            self.nodes[i].netns = Some(ns);
            let node = &self.nodes[i];
            let ns = node.netns.as_ref().expect("just set");
            sysctl_ipv4(ns, "ip_forward", "1")?;
            let nl = Nl::open(ns).await?;
            let (fab_ip, node_ip) = link_pair(
                (&fab, fabric, &format!("n{i}")),
                (&nl, ns, "eth0"),
                Ipv4Addr::new(172, 30, i as u8, 0),
            )
            .await?;
            nl.add_route(Ipv4Addr::UNSPECIFIED, 0, fab_ip).await?;
            let (net, prefix) = node.subnet.split_once('/').expect("a.b.c.d/24");
            fab.add_route(net.parse()?, prefix.parse()?, node_ip)
                .await?;

            let conf = netready_cni::conflist::load_dir(&node.dir.join("net.d"))?;
            let pod = ControlPod::start(
                ns,
                &node.netns_dir(),
                &format!("control-{i}"),
                Network::new(conf, exec.clone()),
                Network::loopback(exec.clone()),
                self.opts.iperf3.as_deref(),
            )
            .await
            .with_context(|| format!("{}: control pod", node.name))?;
            self.nodes[i].control = Some(pod);
        }

        let mut nodes = serde_json::Map::new();
        let mut backends = Vec::new();
        for n in &self.nodes {
            let ip = n.control.as_ref().expect("started above").ip;
            backends.push(ip);
            nodes.insert(n.name.clone(), json!([ip]));
        }
        let targets = json!({
            "version": 1,
            "nodes": nodes,
            "service": {"ip": SERVICE_VIP, "port": SERVICE_PORT, "path": "/"},
            "external": {"ip": EXTERNAL, "port": 80, "path": "/healthz", "host": "external.netready.local"},
        });
        std::fs::write(self.targets_file(), serde_json::to_vec_pretty(&targets)?)?;
        for n in &self.nodes {
            let rules = service::rules(SERVICE_VIP, SERVICE_PORT, &backends, &n.subnet);
            service::install(n.netns.as_ref().expect("made above"), &rules)?;
        }
        Ok(())
    }

    /// The control pods' IPs by node.
    pub fn control_ips(&self) -> Vec<(String, IpAddr)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.control.as_ref()?.ip)))
            .collect()
    }

    /// Starts `netready serve` in every node's namespace and waits until each answers.
    pub async fn start_netready(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let ns = node
                .netns
                .as_ref()
                .context("node has no netns: run up() first")?;
            let log = std::fs::File::create(node.log())?;
            let (exe, config) = (self.opts.netready.clone(), node.config());
            // Spawned from a thread inside the node's namespace: the child starts there.
            // NETREADY_SERVE_WRAPPER (a profiler such as `heaptrack`) runs each serve under it.
            let wrapper = std::env::var_os("NETREADY_SERVE_WRAPPER").filter(|w| !w.is_empty());
            let child = ns.run(move || {
                let mut cmd = match wrapper {
                    Some(w) => {
                        let mut c = Command::new(w);
                        c.arg(exe);
                        c
                    }
                    None => Command::new(exe),
                };
                cmd.arg("serve")
                    // Out of the terminal's process group: Ctrl-C reaches `local`, which
                    // removes pods through them before stopping them.
                    .process_group(0)
                    .arg("--config")
                    .arg(config)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
            })??;
            node.serve = Some(child);
        }
        for node in &mut self.nodes {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if tokio::net::UnixStream::connect(node.socket()).await.is_ok() {
                    break;
                }
                let exited = node
                    .serve
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() > deadline {
                    let log = std::fs::read_to_string(node.log()).unwrap_or_default();
                    anyhow::bail!(
                        "{}: netready serve {} ({}):\n{}",
                        node.name,
                        match exited {
                            Some(s) => format!("exited with {s}"),
                            None => "did not listen within 15 s".into(),
                        },
                        node.log().display(),
                        log.lines()
                            .rev()
                            .take(20)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Stops every node's netready (SIGTERM, then SIGKILL after 10 s), so records are flushed.
    pub fn stop_netready(&mut self) {
        for node in &mut self.nodes {
            if let Some(c) = &node.serve {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut self.nodes {
            if let Some(mut c) = node.serve.take() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Removes everything: netready processes, control pods (CNI DEL), pods left behind,
    /// every namespace, the run directory. Idempotent; errors are logged, not returned, so
    /// one failure does not leave the rest behind.
    pub fn teardown(&mut self) {
        self.stop_netready();
        for node in &mut self.nodes {
            if let Some(mut pod) = node.control.take() {
                pod.teardown();
            }
        }
        self.external_server.take();
        let mut namespaces: Vec<PathBuf> = Vec::new();
        for node in &mut self.nodes {
            // Pods whose netready went away before deleting them: their netns go with a
            // lazy unmount; their veths vanish with them, the bridge with the node.
            if let Ok(dir) = std::fs::read_dir(node.netns_dir()) {
                namespaces.extend(dir.flatten().map(|e| e.path()));
            }
            if let Some(ns) = node.netns.take() {
                namespaces.push(ns.keep());
            }
        }
        namespaces.extend(self.external.take().map(Netns::keep));
        namespaces.extend(self.fabric.take().map(Netns::keep));
        crate::sweep::kill_in(&namespaces);
        for ns in &namespaces {
            if let Err(e) = netready_netns::remove_path(ns) {
                tracing::warn!(error = %e, "removing netns");
            }
        }
        if self.root.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.root) {
                tracing::warn!(error = %e, dir = %self.root.display(), "removing run directory");
            }
        }
        let _ = std::fs::remove_dir(RUN_ROOT);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
