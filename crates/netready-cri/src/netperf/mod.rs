//! netperf pods: netready's own runtime for pods labelled `netperf: "true"`.
//!
//! They never get a real sandbox or container. netready makes their network namespace, runs
//! the node's CNI chain exactly as a container runtime does (timed, retried), and shows kubelet
//! a sandbox and containers that behave like real ones: a state machine, a CRI log file, exec
//! probes answered from the pod's network state.

pub mod checks;
pub mod command;
mod container;
pub mod crash;
mod image;
pub mod iperf;
mod log;
pub mod metrics;
pub mod namespaces;
mod process;
pub mod readiness;
pub mod results;
mod rollback;
mod sandbox;
pub mod serve;
pub mod state;
pub mod traffic;

#[cfg(test)]
mod lifecycle_tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use netready_cni::{Conflist, Exec, Network, PluginExec, RetryPolicy};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::cri;
use crate::filter;
use crate::local::{LocalRuntime, Reply};
use crate::route::Call;
use state::{PodTiming, SandboxRecord, StateDir};

pub use image::netperf_image_id;
pub use log::rfc3339;

/// `[netperf]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetperfConfig {
    /// Pods whose labels have this key with [`NetperfConfig::label_value`] are netperf pods.
    pub label: String,
    /// The label value that selects them.
    pub label_value: String,
    /// Where pod network namespaces are mounted (`cni-<random>`), as containerd does.
    pub netns_dir: PathBuf,
    /// Namespaces made ahead of time, off RunPodSandbox's path (0: each pod's is made in its
    /// RunPodSandbox, as containerd does; see [`namespaces::Spares`]).
    pub netns_pool: usize,
    /// Where sandbox and pod records are kept across restarts.
    pub state_dir: PathBuf,
    /// Pods whose RunPodSandbox never succeeded are forgotten after this long without a retry.
    #[serde(with = "humantime_serde")]
    pub forget_failed_after: Duration,
    /// How CNI plugins are found and run.
    pub cni: CniConfig,
    /// How a failing ADD is retried inside one RunPodSandbox.
    pub retry: RetryConfig,
    /// Reachability checks after ADD.
    pub checks: checks::ChecksConfig,
    /// Where checks go.
    pub targets: checks::TargetsConfig,
    /// Other-node and service targets from the Kubernetes API.
    pub discovery: netready_discovery::DiscoveryConfig,
    /// Traffic after network ready.
    pub traffic: traffic::TrafficConfig,
    /// Containers' commands: what may run and with which limits.
    pub commands: command::CommandsConfig,
    /// Per-pod records, one JSON line each (default: `<state_dir>/results.jsonl`).
    pub results_file: Option<PathBuf>,
    /// A `netready collect` (`http://host:port`) the results file is forwarded to; empty:
    /// none. The forwarder runs beside the runtime (`netready serve`), not in it.
    pub results_collector: String,
    /// Run id stamped on every record (default: generated at start).
    pub run_id: Option<String>,
    /// What netready cannot know about the run, given by whoever starts it (node count, load
    /// parameters, CNI release...): copied into every record's fingerprint.
    pub run_info: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `[netperf.cni]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory of network configurations; the lexically first one is used.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Longest one plugin run may take before it is killed.
    #[serde(with = "humantime_serde")]
    pub exec_timeout: Duration,
    /// Interface name inside the pod.
    pub ifname: String,
    /// How `lo` comes up in each pod before the ADD (untimed: the provider's ADD is what is
    /// measured): see [`Loopback`].
    pub loopback: Loopback,
    /// Plugin chains (ADD or DEL) run at once at most, waiting DELs first; 0: four per CPU.
    /// Past what the cores run, more at once only makes each slower (see netready-cni's gate).
    pub max_parallel: usize,
}

/// `[netperf.retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// ADD attempts per RunPodSandbox (1: no retry; kubelet retries the call anyway).
    pub attempts: u32,
    /// Wait after the first failure, doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// No attempt starts later than this after the first.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for NetperfConfig {
    fn default() -> Self {
        NetperfConfig {
            label: "netperf".into(),
            label_value: "true".into(),
            netns_dir: "/var/run/netns".into(),
            netns_pool: 0,
            state_dir: "/var/lib/netready".into(),
            forget_failed_after: Duration::from_secs(3600),
            cni: CniConfig::default(),
            retry: RetryConfig::default(),
            checks: checks::ChecksConfig::default(),
            targets: checks::TargetsConfig::default(),
            discovery: netready_discovery::DiscoveryConfig::default(),
            traffic: traffic::TrafficConfig::default(),
            commands: command::CommandsConfig::default(),
            results_file: None,
            results_collector: String::new(),
            run_id: None,
            run_info: Default::default(),
        }
    }
}

impl NetperfConfig {
    /// Where the forwarder keeps how far the collector has the results file.
    pub fn forwarded_path(&self) -> PathBuf {
        self.state_dir.join("results.forwarded")
    }

    /// Where per-pod records go.
    pub fn results_path(&self) -> PathBuf {
        self.results_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("results.jsonl"))
    }
}

/// How `lo` comes up in a netperf pod: `netlink` (default), `plugin` or `off`.
///
/// containerd runs the CNI `loopback` plugin for it. That plugin belongs to no provider and
/// its result is discarded, so its fork and exec (milliseconds, on every pod) measure nothing
/// but netready: by default the thread that creates the netns sets `lo` up over rtnetlink,
/// which leaves the pod the same (`lo` UP with 127.0.0.1/8 and ::1). `plugin` keeps
/// containerd's way, for a provider whose ADD depends on the plugin having run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loopback {
    /// Set up by netready over rtnetlink, while the netns is made.
    Netlink,
    /// The CNI `loopback` plugin's ADD, as containerd does.
    Plugin,
    /// Left down.
    Off,
}

impl<'de> Deserialize<'de> for Loopback {
    // Configs written before the choice existed say `true` (the plugin) or `false`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Loopback;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one of \"netlink\", \"plugin\", \"off\" (or true: plugin, false: off)")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Loopback, E> {
                Ok(if v { Loopback::Plugin } else { Loopback::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Loopback, E> {
                match v {
                    "netlink" => Ok(Loopback::Netlink),
                    "plugin" => Ok(Loopback::Plugin),
                    "off" => Ok(Loopback::Off),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            exec_timeout: Duration::from_secs(60),
            ifname: "eth0".into(),
            loopback: Loopback::Netlink,
            max_parallel: 0,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            attempts: p.attempts,
            initial_backoff: p.initial_backoff,
            max_backoff: p.max_backoff,
            deadline: p.deadline,
        }
    }
}

impl RetryConfig {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            deadline: self.deadline,
        }
    }
}

/// Everything netready knows about its pods, under one short-held lock.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub sandboxes: HashMap<String, SandboxRecord>,
    /// Container id → sandbox id.
    pub containers: HashMap<String, String>,
    /// Reserved sandbox names (`name_namespace_uid_attempt`) → sandbox id.
    pub names: HashMap<String, String>,
    pub pods: HashMap<String, PodTiming>,
    /// Images netperf pods "pulled": name as pulled → its stable id.
    pub images: HashMap<String, String>,
    /// When pods that never got a sandbox were last looked for.
    pub last_prune: u64,
}

impl Store {
    /// Drops timing of pods that have no sandbox and saw no RunPodSandbox for `ttl` (kubelet
    /// gave up on them, or they were deleted while failing); returns their UIDs.
    pub fn prune(&mut self, now: netready_cni::Stamp, ttl: Duration) -> Vec<String> {
        // At most once a minute: it walks every pod.
        if now.mono_ns.saturating_sub(self.last_prune) < 60_000_000_000 {
            return Vec::new();
        }
        self.last_prune = now.mono_ns;
        let live: std::collections::HashSet<&str> = self
            .sandboxes
            .values()
            .map(|s| s.meta.uid.as_str())
            .collect();
        let stale: Vec<String> = self
            .pods
            .values()
            .filter(|p| !live.contains(p.uid.as_str()) && now.since(&p.last_seen) > ttl)
            .map(|p| p.uid.clone())
            .collect();
        for uid in &stale {
            self.pods.remove(uid);
        }
        stale
    }
}

/// The conflist in use, reloaded when the conf dir changes.
#[derive(Default)]
struct NetworkCache {
    loaded: Option<(netready_cni::conflist::DirStamp, Network)>,
    /// The run's fingerprint with the loaded conflist's (file, hash, plugins and their
    /// versions), built on first use after each (re)load.
    fingerprint: Arc<tokio::sync::OnceCell<serde_json::Value>>,
}

pub(crate) struct Inner {
    pub cfg: NetperfConfig,
    pub state: StateDir,
    pub store: Mutex<Store>,
    network: Mutex<NetworkCache>,
    exec: Arc<dyn Exec>,
    /// Bounds the plugin chains run at once.
    pub gate: netready_cni::Gate,
    pub namespaces: Arc<dyn namespaces::Namespaces>,
    /// Namespaces made ahead (`netns_pool` > 0).
    pub spares: Option<namespaces::Spares>,
    pub loopback: Network,
    /// Each ready sandbox's readiness task, until it ends.
    pub tasks: Mutex<HashMap<String, readiness::Task>>,
    /// Each started container's command task, by container id, until it ends.
    pub commands: Mutex<HashMap<String, process::Handle>>,
    /// Each ready sandbox's servers of its declared ports.
    pub(crate) servers: Mutex<HashMap<String, serve::Servers>>,
    /// This node's iperf3 clients per control pod server.
    pub iperf_pool: iperf::PortPool,
    /// Per-sandbox locks held across awaits (see [`SandboxGuards`]).
    pub(crate) guards: Mutex<HashMap<String, Arc<SandboxGuards>>>,
    pub results: results::Writer,
    pub identity: results::Identity,
    pub targets_file: Mutex<checks::FileCache>,
    pub learned: Mutex<checks::Learned>,
    /// Targets from the API, when `[netperf.discovery] enabled`.
    pub discovery: Option<netready_discovery::Discovery>,
    /// The discovery snapshot last checked against this node's name (its address).
    node_checked: std::sync::atomic::AtomicUsize,
    pub metrics: Option<Arc<metrics::NetperfMetrics>>,
    pub started: netready_cni::Stamp,
    /// The host's load counters at start, for each record's `fingerprint.host_load`.
    pub host_at_start: netready_record::host_load::Sample,
    /// The load since start as last read, and when: records written within
    /// [`HOST_LOAD_MAX_AGE`] of it share it.
    host_load: Mutex<Option<(std::time::Instant, serde_json::Value)>>,
}

/// How stale a record's `host_load` may be. Reading it is three files under /proc and the
/// cgroup; at hundreds of records a second that was 2 % of netready's own CPU samples in a
/// profile of the `netperf` benchmark, for a figure that describes minutes.
const HOST_LOAD_MAX_AGE: Duration = Duration::from_secs(1);

/// What must happen one at a time for one sandbox, across awaits (the store's lock is never
/// held across one).
#[derive(Debug, Default)]
pub(crate) struct SandboxGuards {
    /// StopPodSandbox and RemovePodSandbox.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// Writes to the containers' logs and what they tell: a verdict, a container's start.
    pub log: tokio::sync::Mutex<()>,
}

/// netready's runtime for netperf pods; cheap to clone.
#[derive(Clone)]
pub struct NetperfRuntime {
    pub(crate) inner: Arc<Inner>,
}

/// Errors starting the netperf runtime.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[netperf.discovery]` cannot work as configured.
    #[error("netperf.discovery: {0}")]
    Discovery(String),
    /// The state directory cannot be used.
    #[error("netperf state dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What the runtime acts on the host with: how plugins run, how namespaces are made. Real by
/// default; tests give stand-ins to drive the lifecycle without root.
pub struct Seams {
    /// Runs CNI plugins.
    pub exec: Arc<dyn Exec>,
    /// Makes and removes pod network namespaces.
    pub namespaces: Arc<dyn namespaces::Namespaces>,
}

impl Seams {
    /// Plugin binaries from `[netperf.cni] bin_dirs`, the kernel's namespaces.
    pub fn real(cfg: &NetperfConfig) -> Self {
        Seams {
            exec: Arc::new(PluginExec {
                paths: cfg.cni.bin_dirs.clone(),
                timeout: cfg.cni.exec_timeout,
            }),
            namespaces: Arc::new(namespaces::Kernel),
        }
    }
}

// === impl NetperfRuntime ===

impl NetperfRuntime {
    /// Opens the state directory, loads what a previous run left, and tears down sandboxes
    /// whose ADD was cut short by a crash (kubelet never learned their ids). With `metrics`,
    /// the runtime (and its discovery) register their families there.
    pub async fn start(
        cfg: NetperfConfig,
        metrics: Option<Arc<netready_metrics::Metrics>>,
    ) -> Result<Self, StartError> {
        Self::start_knowing(cfg, metrics, Vec::new()).await
    }

    /// [`NetperfRuntime::start`] knowing this node's control pods (sandbox id and IPs) that
    /// the upstream runtime runs: checks a restart cut short run again with them as targets.
    pub async fn start_knowing(
        cfg: NetperfConfig,
        metrics: Option<Arc<netready_metrics::Metrics>>,
        control_pods: Vec<(String, Vec<std::net::IpAddr>)>,
    ) -> Result<Self, StartError> {
        let seams = Seams::real(&cfg);
        Self::start_with(cfg, metrics, seams, control_pods).await
    }

    /// [`NetperfRuntime::start_knowing`] with the given [`Seams`].
    pub async fn start_with(
        cfg: NetperfConfig,
        metrics: Option<Arc<netready_metrics::Metrics>>,
        Seams { exec, namespaces }: Seams,
        control_pods: Vec<(String, Vec<std::net::IpAddr>)>,
    ) -> Result<Self, StartError> {
        let gate_limit = match cfg.cni.max_parallel {
            0 => 4 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let slot = metrics::RuntimeSlot::default();
        let netperf_metrics = metrics
            .as_ref()
            .map(|m| metrics::NetperfMetrics::register(m, slot.clone()));
        let state = StateDir::open(&cfg.state_dir).map_err(|source| StartError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let results = results::Writer::start(Some(cfg.results_path()));
        let identity = results::Identity {
            run_id: cfg
                .run_id
                .clone()
                .unwrap_or_else(|| format!("run-{}", &new_id()[..12])),
            node: node_name(&cfg),
        };
        let discovery = if cfg.discovery.enabled {
            let mut d = cfg.discovery.clone();
            d.node_name = identity.node.clone();
            let started = netready_discovery::Discovery::start(d, metrics.clone())
                .map_err(|e| StartError::Discovery(e.to_string()))?;
            tracing::info!(service = %cfg.discovery.service, node = %identity.node, "discovery: watching the control Service");
            Some(started)
        } else {
            None
        };
        let spares = (cfg.netns_pool > 0).then(|| {
            let claimed = state.load().0.into_iter().map(|s| s.netns).collect();
            namespaces::Spares::start(
                namespaces.clone(),
                state.clone(),
                &cfg.netns_dir,
                &claimed,
                cfg.cni.loopback == Loopback::Netlink,
                cfg.netns_pool,
            )
        });
        let rt = NetperfRuntime {
            inner: Arc::new(Inner {
                cfg,
                state,
                store: Mutex::new(Store::default()),
                network: Mutex::new(NetworkCache::default()),
                loopback: Network::loopback(exec.clone()),
                exec,
                gate: netready_cni::Gate::new(gate_limit),
                namespaces,
                spares,
                tasks: Mutex::new(HashMap::new()),
                commands: Mutex::new(HashMap::new()),
                iperf_pool: iperf::PortPool::default(),
                servers: Mutex::new(HashMap::new()),
                guards: Mutex::new(HashMap::new()),
                results,
                identity,
                targets_file: Mutex::new(checks::FileCache::default()),
                learned: Mutex::new(HashMap::new()),
                discovery,
                node_checked: Default::default(),
                metrics: netperf_metrics,
                started: netready_cni::Stamp::now(),
                host_at_start: netready_record::host_load::Sample::now(),
                host_load: Mutex::new(None),
            }),
        };
        let _ = slot.set(Arc::downgrade(&rt.inner));
        for (id, ips) in control_pods {
            rt.control_pod_up(&id, ips);
        }
        rt.recover().await;
        Ok(rt)
    }

    /// Starts the runtime with a new registry (prefix `netready`) holding its families.
    pub async fn start_with_metrics(
        cfg: NetperfConfig,
    ) -> Result<(Self, Arc<netready_metrics::Metrics>), StartError> {
        let metrics = netready_metrics::Metrics::new("netready");
        let rt = Self::start(cfg, Some(metrics.clone())).await?;
        Ok((rt, metrics))
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn guards(&self, id: &str) -> Arc<SandboxGuards> {
        self.inner
            .guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    pub(crate) fn forget_guards(&self, id: &str) {
        self.inner
            .guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) fn cfg(&self) -> &NetperfConfig {
        &self.inner.cfg
    }

    /// The network to run, loading the conf dir again when it changed since last time.
    ///
    /// Called on every RunPodSandbox, so the check is a stamp of the conf dir's candidate
    /// files (name, inode, size, mtime and ctime in ns of each, and of what each symlink
    /// resolves to; see [`netready_cni::conflist::DirStamp`]), not the directory's mtime:
    /// that one misses a file fixed in place, and a pod whose ADD failed on the old file
    /// would then fail forever while kubelet retries it. The stamp is taken before loading,
    /// so a change racing the load is seen on the next call.
    pub(crate) fn network(&self) -> Result<Network, netready_cni::Error> {
        let dir = &self.inner.cfg.cni.conf_dir;
        let stamp = netready_cni::conflist::stamp_dir(dir)?;
        let mut cache = self.inner.network.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, net)) = &cache.loaded {
            if *at == stamp {
                return Ok(net.clone());
            }
        }
        let conflist: Conflist = netready_cni::conflist::load_dir(dir)?;
        tracing::info!(file = %conflist.source.display(), plugins = ?conflist.plugin_types(), "loaded CNI network config");
        cache.fingerprint = Default::default();
        let net = Network::new(conflist, self.inner.exec.clone());
        cache.loaded = Some((stamp, net.clone()));
        Ok(net)
    }

    /// The run's fingerprint, stamped on every record: who, where, which CNI config and the
    /// plugins' own versions, and the host's load from netready's start until now (CPU steal,
    /// cgroup throttling). The identity is built once per conflist (re)load, when the first
    /// record needs it: asking each plugin its version runs it, which has no place on the
    /// CRI path. The load is read again when the last reading is [`HOST_LOAD_MAX_AGE`] old.
    pub async fn fingerprint(&self) -> serde_json::Value {
        let mut fp = self.identity_fingerprint().await;
        let now = std::time::Instant::now();
        let mut cached = self
            .inner
            .host_load
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let load = match &*cached {
            Some((at, load)) if now.duration_since(*at) < HOST_LOAD_MAX_AGE => load.clone(),
            _ => {
                let load = serde_json::to_value(self.inner.host_at_start.until_now())
                    .unwrap_or(serde_json::Value::Null);
                *cached = Some((now, load.clone()));
                load
            }
        };
        drop(cached);
        if !load.is_null() {
            fp["host_load"] = load;
        }
        fp
    }

    async fn identity_fingerprint(&self) -> serde_json::Value {
        let (cell, net) = {
            let cache = self.inner.network.lock().unwrap_or_else(|p| p.into_inner());
            let net = cache.loaded.as_ref().map(|(_, n)| n.clone());
            (cache.fingerprint.clone(), net)
        };
        cell.get_or_init(|| async {
            let cni = match net.as_ref().map(Network::conflist) {
                None => serde_json::Value::Null,
                Some(c) => {
                    let mut plugins = Vec::new();
                    for t in c.plugin_types() {
                        let version = self.inner.exec.version(t).await;
                        plugins.push(serde_json::json!({"type": t, "version": version}));
                    }
                    serde_json::json!({
                        "file": c.source,
                        "sha256": c.sha256,
                        "cni_version": c.cni_version,
                        "plugins": plugins,
                    })
                }
            };
            serde_json::json!({
                "run_id": self.inner.identity.run_id,
                "started_at": log::rfc3339(self.inner.started.wall_ns),
                "netready_version": env!("CARGO_PKG_VERSION"),
                "node": self.inner.identity.node,
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|k| k.trim().to_owned())
                    .unwrap_or_default(),
                "cni": cni,
                "run_info": self.inner.cfg.run_info,
            })
        })
        .await
        .clone()
    }

    /// Targets for a pod starting now: config, targets file, learned control pods.
    pub(crate) fn targets(&self) -> netready_probe::plan::Targets {
        let t = &self.inner.cfg.targets;
        let file = match &t.file {
            Some(path) => self
                .inner
                .targets_file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(path)
                .clone(),
            None => checks::TargetsFile::default(),
        };
        let learned = self.inner.learned.lock().unwrap_or_else(|p| p.into_inner());
        let discovered = self.inner.discovery.as_ref().map(|d| d.snapshot());
        if let Some(snap) = &discovered {
            self.check_node_name(snap, &learned);
        }
        checks::resolve(
            t,
            &self.inner.identity.node,
            checks::Sources {
                file: &file,
                learned: &learned,
                discovered: discovered.as_deref(),
                service: &self.inner.cfg.discovery.service,
            },
        )
    }

    /// Warns, once per snapshot, when a control pod containerd runs here appears in the API
    /// under another node's name: netready's node name is not the Node's (a kubelet
    /// `--hostname-override`), and this node's own control pod would count as another node's.
    fn check_node_name(
        &self,
        snap: &std::sync::Arc<netready_discovery::Snapshot>,
        learned: &checks::Learned,
    ) {
        use std::sync::atomic::Ordering;
        let key = std::sync::Arc::as_ptr(snap) as usize;
        if self.inner.node_checked.swap(key, Ordering::Relaxed) == key {
            return;
        }
        let me = &self.inner.identity.node;
        for ip in learned.values().flatten() {
            if let Some((node, _)) = snap
                .endpoints
                .iter()
                .find(|(n, eps)| *n != me && eps.contains(ip))
            {
                tracing::warn!(
                    %ip, api_node = %node, netready_node = %me,
                    "this node's control pod is on node {node:?} in the API: set [netperf.discovery] node_name (or NODE_NAME) to the Node's name"
                );
                return;
            }
        }
    }

    /// Records a control pod containerd runs on this node (its IPs become same-node targets).
    pub fn control_pod_up(&self, sandbox_id: &str, ips: Vec<std::net::IpAddr>) {
        tracing::info!(sandbox = %sandbox_id, ?ips, "learned control pod");
        self.inner
            .learned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sandbox_id.to_owned(), ips);
    }

    /// Forgets a control pod (stopped or removed), also when an operator named it by a unique
    /// prefix (containerd resolves it; netready must forget the same pod).
    pub fn control_pod_down(&self, sandbox_id: &str) {
        let mut learned = self.inner.learned.lock().unwrap_or_else(|p| p.into_inner());
        let id = if learned.contains_key(sandbox_id) {
            sandbox_id.to_owned()
        } else {
            // An id that is no unique prefix of a learned one names no control pod; an
            // ambiguous one containerd refuses too.
            match crate::route::resolve_prefix(sandbox_id, "sandbox", |p| {
                with_prefix(learned.keys(), p)
            }) {
                Ok(Some(full)) => full,
                Ok(None) | Err(_) => return,
            }
        };
        if learned.remove(&id).is_some() {
            tracing::info!(sandbox = %id, "forgot control pod");
        }
    }

    /// Discovery, when `[netperf.discovery] enabled`.
    pub fn discovery(&self) -> Option<&netready_discovery::Discovery> {
        self.inner.discovery.as_ref()
    }

    /// The sandbox's record (for tests and reports).
    pub fn sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.store().sandboxes.get(id).cloned()
    }

    /// The run and node identity stamped on records.
    pub fn identity(&self) -> &results::Identity {
        &self.inner.identity
    }

    /// Pod timing records (for tests and reports).
    pub fn pod_timing(&self, uid: &str) -> Option<PodTiming> {
        self.store().pods.get(uid).cloned()
    }

    /// Pod counts by state, for `netready_pods{state}`.
    pub fn pod_state_counts(&self) -> Vec<(&'static str, i64)> {
        let mut c = [0i64; 5];
        for s in self.store().sandboxes.values() {
            let i = match (s.phase, &s.readiness) {
                (state::SandboxPhase::Adding, _) => 0,
                (state::SandboxPhase::Stopped, _) => 4,
                (state::SandboxPhase::Ready, Some(r)) if r.finished.is_none() => 1,
                (state::SandboxPhase::Ready, Some(r)) if !r.ready() => 3,
                (state::SandboxPhase::Ready, _) => 2,
            };
            c[i] += 1;
        }
        [
            "adding",
            "checking",
            "network_ready",
            "not_network_ready",
            "stopped",
        ]
        .into_iter()
        .zip(c)
        .collect()
    }

    pub(crate) fn metrics(&self) -> Option<&metrics::NetperfMetrics> {
        self.inner.metrics.as_deref()
    }

    /// Number of sandboxes netready holds.
    pub fn sandbox_count(&self) -> usize {
        self.store().sandboxes.len()
    }

    pub(crate) fn persist_sandbox(&self, rec: &SandboxRecord) {
        if let Err(e) = self.inner.state.save_sandbox(rec) {
            tracing::error!(sandbox = %rec.id, error = %e, "saving sandbox state");
        }
    }

    pub(crate) fn persist_pod(&self, rec: &PodTiming) {
        if let Err(e) = self.inner.state.save_pod(rec) {
            tracing::error!(uid = %rec.uid, error = %e, "saving pod timing");
        }
    }

    async fn recover(&self) {
        let (sandboxes, pods) = self.inner.state.load();
        {
            let mut store = self.store();
            for p in pods {
                store.pods.insert(p.uid.clone(), p);
            }
        }
        // A record is appended before its verdict is saved: a netready killed between the two
        // finds the verdict in the results file, not in the state.
        let unfinished: std::collections::HashSet<String> = sandboxes
            .iter()
            .filter(|s| s.phase == state::SandboxPhase::Ready)
            .filter(|s| s.readiness.as_ref().is_some_and(|r| !r.complete()))
            .map(|s| s.id.clone())
            .collect();
        let mut written = results::written(&self.cfg().results_path(), &unfinished);
        // The killed netready's plugins may still be adding: DEL after them, not under them,
        // or the ADD finishing late keeps its veth and address. Killed, not waited for: a
        // hung one would keep the node's runtime from answering kubelet for an exec_timeout.
        let interrupted: Vec<String> = sandboxes
            .iter()
            .filter(|s| s.phase == state::SandboxPhase::Adding)
            .map(|s| s.id.clone())
            .collect();
        if !interrupted.is_empty() {
            let killed = tokio::task::spawn_blocking(move || {
                netready_cni::exec::kill_plugins_of(&interrupted)
            })
            .await
            .unwrap_or(0);
            if killed > 0 {
                tracing::warn!(
                    plugins = killed,
                    "killed the plugins the interrupted ADDs left running"
                );
            }
        }
        for mut rec in sandboxes {
            if rec.phase == state::SandboxPhase::Adding {
                tracing::warn!(sandbox = %rec.id, "ADD was interrupted by a restart: tearing down");
                self.teardown_interrupted(rec).await;
                continue;
            }
            if let (Some(r), Some(done)) = (rec.readiness.as_mut(), written.remove(&rec.id)) {
                readiness::restore(r, &done);
                self.persist_sandbox(&rec);
            }
            // Checks (or traffic) cut short by the restart run again, still timed from the ADD's
            // end: the pod still gets its one record.
            let rerun = rec.phase == state::SandboxPhase::Ready
                && rec.readiness.as_ref().is_some_and(|r| !r.complete());
            // A command dies with the netready that started it (its parent-death signal).
            let now = netready_cni::Stamp::now();
            let mut killed = false;
            for c in rec.containers.iter_mut() {
                if c.phase == state::ContainerPhase::Running && !c.command.checks_only() {
                    container::kill(
                        c,
                        now,
                        137,
                        "Error",
                        "netready restarted; the command died with it",
                    );
                    killed = true;
                }
            }
            if killed {
                self.persist_sandbox(&rec);
            }
            {
                let mut store = self.store();
                store
                    .names
                    .insert(SandboxRecord::reserved_name(&rec.meta), rec.id.clone());
                for c in &rec.containers {
                    store.containers.insert(c.id.clone(), rec.id.clone());
                    // Images are not kept on disk: those of live containers were pulled.
                    if !c.user_image.is_empty() && c.image_ref.starts_with("sha256:") {
                        store
                            .images
                            .entry(c.user_image.clone())
                            .or_insert_with(|| c.image_ref.clone());
                    }
                }
                store.sandboxes.insert(rec.id.clone(), rec.clone());
            }
            if rerun {
                self.start_readiness(&rec);
            }
            // Its servers died with the netready that ran them.
            if rec.phase == state::SandboxPhase::Ready {
                self.start_servers(&rec).await;
            }
        }
        let n = self.sandbox_count();
        if n > 0 {
            tracing::info!(sandboxes = n, "recovered netperf sandboxes");
        }
    }

    async fn dispatch(self, call: Call) -> Result<Vec<u8>, Status> {
        fn encoded<M: Message>(reply: Result<M, Status>) -> Result<Vec<u8>, Status> {
            reply.map(|r| r.encode_to_vec())
        }
        let method = call.method();
        match call {
            Call::RunPodSandbox(req) => encoded(self.run_pod_sandbox(req).await),
            Call::StopPodSandbox(req) => encoded(self.stop_pod_sandbox(req).await),
            Call::RemovePodSandbox(req) => encoded(self.remove_pod_sandbox(req).await),
            Call::PodSandboxStatus(req) => encoded(self.pod_sandbox_status(req).await),
            Call::PodSandboxStats(req) => encoded(self.pod_sandbox_stats(req).await),
            Call::CreateContainer(req) => encoded(self.create_container(req).await),
            Call::StartContainer(req) => encoded(self.start_container(req).await),
            Call::StopContainer(req) => encoded(self.stop_container(req).await),
            Call::RemoveContainer(req) => encoded(self.remove_container(req).await),
            Call::ContainerStatus(req) => encoded(self.container_status(req).await),
            Call::ContainerStats(req) => encoded(self.container_stats(req).await),
            Call::UpdateContainerResources(req) => {
                encoded(self.update_container_resources(req).await)
            }
            Call::ReopenContainerLog(req) => encoded(self.reopen_container_log(req).await),
            Call::ExecSync(req) => encoded(self.exec_sync(req).await),
            Call::PullImage(req) => encoded(self.pull_image(req).await),
            Call::ImageStatus(req) => encoded(self.image_status(req).await),
            Call::ListImages(req) => encoded(self.list_images(req).await),
            Call::RemoveImage(req) => encoded(self.remove_image(req).await),
            Call::ImageFsInfo(req) => encoded(self.image_fs_info(req).await),
            Call::Exec(_)
            | Call::Attach(_)
            | Call::PortForward(_)
            | Call::CheckpointContainer(_) => Err(Status::unimplemented(format!(
                "{method}: netperf pods run no processes; netready offers no {} for them",
                method.to_lowercase()
            ))),
            // The router answers these itself, around upstream's reply.
            Call::Version(_)
            | Call::Status(_)
            | Call::ListPodSandbox(_)
            | Call::ListContainers(_)
            | Call::ListPodSandboxStats(_)
            | Call::ListContainerStats(_) => Err(Status::internal(format!(
                "{method} reached the netperf runtime: the router answers it"
            ))),
        }
    }
}

impl LocalRuntime for NetperfRuntime {
    fn conditions(&self) -> Vec<cri::RuntimeCondition> {
        let Some(d) = &self.inner.discovery else {
            return Vec::new();
        };
        let snap = d.snapshot();
        let service = &self.inner.cfg.discovery.service;
        let (status, reason, message) = match (snap.synced, &snap.unreachable_since, &snap.last_error) {
            (true, None, _) => (
                true,
                "Synced",
                format!(
                    "control Service {service}: {} other-node control pods, service {}",
                    snap.other_node_pods(d.node()),
                    snap.service.as_ref().map_or("none".into(), |s| s.ip.to_string())
                ),
            ),
            (true, Some(since), e) => (
                true,
                "APIUnreachable",
                format!(
                    "keeping the last known targets of {service}; API unreachable since {}: {}",
                    log::rfc3339(since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)),
                    e.as_deref().unwrap_or("")
                ),
            ),
            (false, _, e) => (
                false,
                "DiscoveryNotSynced",
                format!(
                    "control Service {service} not listed yet; checks without targets fail with {}: {}",
                    checks::DISCOVERY_NOT_SYNCED,
                    e.as_deref().unwrap_or("waiting for the API server")
                ),
            ),
        };
        vec![cri::RuntimeCondition {
            r#type: "NetreadyDiscoverySynced".into(),
            status,
            reason: reason.into(),
            message,
        }]
    }

    fn claims(&self, config: &cri::PodSandboxConfig) -> bool {
        config.labels.get(&self.inner.cfg.label) == Some(&self.inner.cfg.label_value)
    }

    fn owns_sandbox(&self, id: &str) -> bool {
        self.store().sandboxes.contains_key(id)
    }

    fn watches(&self, labels: &HashMap<String, String>) -> bool {
        checks::has_label(&self.inner.cfg.targets.control_label, labels)
    }

    fn upstream_sandbox_up(&self, id: &str, ips: Vec<std::net::IpAddr>) {
        self.control_pod_up(id, ips);
    }

    fn upstream_sandbox_down(&self, id: &str) {
        self.control_pod_down(id);
    }

    fn owns_container(&self, id: &str) -> bool {
        self.store().containers.contains_key(id)
    }

    fn sandboxes_with_prefix(&self, prefix: &str) -> Vec<String> {
        with_prefix(self.store().sandboxes.keys(), prefix)
    }

    fn containers_with_prefix(&self, prefix: &str) -> Vec<String> {
        with_prefix(self.store().containers.keys(), prefix)
    }

    fn call(&self, call: Call) -> Reply {
        let method = call.method();
        // A task of its own, not a future the connection drops when the client hangs up: a
        // RunPodSandbox dropped mid-ADD would keep its name reserved (kubelet's retries refused)
        // and leave a netns and a half-done ADD that only a restart tears down. containerd, too,
        // runs its cleanups when kubelet's context is cancelled.
        let task = tokio::spawn(self.clone().dispatch(call));
        Box::pin(async move {
            task.await
                .map_err(|e| Status::internal(format!("{method}: {e}")))?
        })
    }

    fn pod_sandboxes(&self, f: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let store = self.store();
        store
            .sandboxes
            .values()
            .filter(|s| s.phase != state::SandboxPhase::Adding)
            .map(sandbox::to_cri)
            .filter(|s| filter::pod_sandbox(s, f))
            .collect()
    }

    fn containers(&self, f: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        let store = self.store();
        store
            .sandboxes
            .values()
            .flat_map(|s| s.containers.iter().map(move |c| container::to_cri(s, c)))
            .filter(|c| filter::container(c, f))
            .collect()
    }

    fn pod_sandbox_stats(
        &self,
        f: Option<&cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let store = self.store();
        store
            .sandboxes
            .values()
            .filter(|s| s.phase == state::SandboxPhase::Ready)
            .map(sandbox::stats)
            .filter(|s| filter::pod_sandbox_stats(s, f))
            .collect()
    }

    fn container_stats(&self, f: Option<&cri::ContainerStatsFilter>) -> Vec<cri::ContainerStats> {
        let store = self.store();
        store
            .sandboxes
            .values()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .map(move |c| (s.id.as_str(), container::stats(s, c)))
            })
            .filter(|(sb, st)| filter::container_stats(st, sb, f))
            .map(|(_, st)| st)
            .collect()
    }
}

fn with_prefix<'a>(ids: impl Iterator<Item = &'a String>, prefix: &str) -> Vec<String> {
    ids.filter(|id| id.starts_with(prefix)).cloned().collect()
}

/// This node's name: `[netperf.discovery] node_name`, `[netperf.targets] node_name`,
/// `NODE_NAME` (kubemark and DaemonSets set it from the pod's spec), then the hostname.
fn node_name(cfg: &NetperfConfig) -> String {
    if !cfg.discovery.node_name.is_empty() {
        return cfg.discovery.node_name.clone();
    }
    if let Some(n) = &cfg.targets.node_name {
        return n.clone();
    }
    if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A random 64-hex-digit id, the form containerd uses for sandboxes and containers.
pub(crate) fn new_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// CRI timestamps are nanoseconds since the epoch.
pub(crate) fn cri_time(s: &netready_cni::Stamp) -> i64 {
    s.wall_ns as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn runtime(dir: &std::path::Path) -> NetperfRuntime {
        let cfg = NetperfConfig {
            state_dir: dir.join("state"),
            netns_dir: dir.join("netns"),
            ..Default::default()
        };
        NetperfRuntime::start(cfg, None).await.unwrap()
    }

    #[tokio::test]
    async fn a_control_pod_stopped_by_a_unique_prefix_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path()).await;
        let ip = || vec!["10.88.0.5".parse().unwrap()];
        let (a, b) = ("ab".repeat(32), format!("abcd{}", "0".repeat(60)));
        rt.control_pod_up(&a, ip());
        rt.control_pod_up(&b, ip());
        let learned = || rt.inner.learned.lock().unwrap().len();
        // Ambiguous or unknown: containerd refuses it too, nothing is forgotten.
        rt.control_pod_down("ab");
        rt.control_pod_down("ff");
        rt.control_pod_down("");
        assert_eq!(learned(), 2);
        rt.control_pod_down(&a[..12]);
        assert_eq!(learned(), 1);
        rt.control_pod_down(&b);
        assert_eq!(learned(), 0);
    }
}
