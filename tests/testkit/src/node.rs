//! A test "node": its own network namespace holding the CNI bridge, its own CNI config,
//! netns, state and IPAM directories, and netready's netperf runtime serving CRI from inside it.
//!
//! Everything lives in the node's temp dir and netns, so a test touches nothing of the machine
//! and can count what it leaves: netns files, host-local reservations, links.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context as _};
use netready_cri::server::{self, ListenOptions};
use netready_cri::{NetperfConfig, NetperfRuntime, Router, Upstream};
use netready_netns::Netns;
use serde_json::{json, Value};

use crate::unique_name;

/// A node netns and its directories; removed with everything in them on drop.
pub struct TestNode {
    dir: tempfile::TempDir,
    netns: Option<Netns>,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// What a node still holds (after a test: should be nothing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Pod netns files in the node's netns dir.
    pub netns: Vec<String>,
    /// host-local reservations (files named after IPs).
    pub reservations: Vec<String>,
    /// veth links in the node netns.
    pub veths: Vec<String>,
    /// Sandboxes netready's state still holds (what a restart would find).
    pub state_sandboxes: Vec<String>,
}

fn files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p, keep));
        } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
            if keep(n) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

impl TestNode {
    /// A new node with an empty CNI config dir.
    pub fn new() -> anyhow::Result<Self> {
        crate::require_root();
        crate::ensure_packages()?;
        let dir = tempfile::Builder::new().prefix("nrtest-node-").tempdir()?;
        for d in ["net.d", "netns", "state", "ipam", "plugin-state", "pods"] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        let netns = Netns::create("/run/netns", &unique_name("node"))?;
        Ok(TestNode {
            dir,
            netns: Some(netns),
        })
    }

    /// The node's netns.
    pub fn netns(&self) -> &Netns {
        self.netns.as_ref().expect("lives until drop")
    }

    /// A path inside the node's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A bridge + host-local (+ portmap) conflist on `subnet`, with `extra` plugins chained
    /// after; host-local keeps its reservations in the node's `ipam/`.
    pub fn bridge_conflist(&self, subnet: &str, extra: Vec<Value>) -> Value {
        let mut plugins = vec![
            json!({"type": "bridge", "bridge": "nrbr0", "isGateway": true, "ipMasq": false,
                   "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": self.path("ipam")}}),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ];
        plugins.extend(extra);
        json!({"cniVersion": "1.0.0", "name": "nrtest", "plugins": plugins})
    }

    /// The `nrtest-cni` fault plugin's config, chained or alone.
    pub fn fault_plugin(&self, faults: Value) -> Value {
        let mut p = json!({"type": "nrtest-cni", "stateDir": self.path("plugin-state"),
                           "log": self.path("plugin.log")});
        if let (Some(p), Some(f)) = (p.as_object_mut(), faults.as_object()) {
            p.extend(f.clone());
        }
        p
    }

    /// A CNI plugin `name` in the node's `bin` directory: a shell script running `body` (a
    /// real plugin wrapped to be slow or to fail); its path.
    pub fn script_plugin(&self, name: &str, body: &str) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(self.path("bin"))?;
        let path = self.path(&format!("bin/{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// Writes the node's only conflist.
    pub fn write_conflist(&self, conflist: &Value) -> anyhow::Result<()> {
        std::fs::write(
            self.path("net.d/10-nrtest.conflist"),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        Ok(())
    }

    /// A netperf config pointing at this node's directories, plugins from `/usr/lib/cni` and
    /// `extra_bin_dir` (where `nrtest-cni` is).
    pub fn netperf_config(&self, extra_bin_dir: Option<&Path>) -> NetperfConfig {
        let mut cfg = NetperfConfig {
            netns_dir: self.path("netns"),
            state_dir: self.path("state"),
            ..Default::default()
        };
        cfg.cni.conf_dir = self.path("net.d");
        // No reachability checks unless a test asks for them (they need targets).
        cfg.checks.required.clear();
        cfg.checks.optional.clear();
        cfg.cni.bin_dirs = vec!["/usr/lib/cni".into()];
        if let Some(d) = extra_bin_dir {
            cfg.cni.bin_dirs.push(d.to_owned());
        }
        cfg
    }

    /// `busybox ping` of `ip` from inside the node: real ICMP over the bridge.
    pub fn ping(&self, ip: &str) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns().path().display()))
            .args(["busybox", "ping", "-c", "1", "-W", "2", ip])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// PIDs of CNI plugin processes working on this node's pods (their `CNI_NETNS` is in
    /// the node's netns dir).
    pub fn plugin_processes(&self) -> Vec<u32> {
        let needle = format!("CNI_NETNS={}", self.path("netns").display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| {
                        env.split(|b| *b == 0)
                            .any(|kv| kv.starts_with(needle.as_bytes()))
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// What the node holds once the kernel has finished tearing down deleted namespaces: a
    /// netns is destroyed asynchronously after its last mount goes, and the host end of its
    /// veth with it, so this waits up to 5 s for the node to come back to empty.
    pub fn settled_leftovers(&self) -> Leftovers {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left == Leftovers::default() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the node still holds.
    pub fn leftovers(&self) -> Leftovers {
        let veths = Command::new("ip")
            .args([
                "-n",
                self.netns().name(),
                "-o",
                "link",
                "show",
                "type",
                "veth",
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Leftovers {
            netns: files(&self.path("netns"), &|_| true),
            reservations: files(&self.path("ipam"), &|n| {
                n != "lock" && !n.starts_with("last_reserved_ip")
            }),
            veths,
            state_sandboxes: netready_cri::netperf::state::StateDir::peek(&self.path("state"))
                .0
                .into_iter()
                .map(|s| s.id)
                .collect(),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Pod netns a failed test left: unmount before the temp dir goes.
        for f in files(&self.path("netns"), &|_| true) {
            let _ = netready_netns::remove_path(Path::new(&f));
        }
        if let Some(ns) = self.netns.take() {
            let _ = ns.remove();
        }
    }
}

/// netready's CRI server with the netperf runtime, in this process, on threads inside a
/// node's netns (so the plugins it runs create the bridge there).
pub struct InProcess {
    socket: PathBuf,
    runtime: NetperfRuntime,
    metrics_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<netready_netns::Result<anyhow::Result<()>>>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("socket", &self.socket)
            .finish()
    }
}

impl InProcess {
    /// Starts serving on `<node>/netready.sock`, forwarding non-netperf calls to `upstream`.
    pub fn start(node: &TestNode, cfg: NetperfConfig, upstream: &Path) -> anyhow::Result<Self> {
        let socket = node.path(&format!("{}.sock", unique_name("netready")));
        let opts = ListenOptions {
            socket: socket.clone(),
            mode: 0o660,
            shutdown_grace: Duration::from_secs(2),
        };
        let upstream = upstream.to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Bound here, in the test's namespace, so the test can scrape it on its loopback.
        let metrics_std = std::net::TcpListener::bind("127.0.0.1:0")?;
        let thread = node
            .netns()
            .spawn("netready-node", move || -> anyhow::Result<()> {
                // Named, so that a benchmark can tell netready's CPU from its client's.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("netready-rt")
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let started = async {
                        let (runtime, metrics) = NetperfRuntime::start_with_metrics(cfg).await?;
                        let listener = server::bind(&opts).await?;
                        metrics_std.set_nonblocking(true)?;
                        let metrics_listener = tokio::net::TcpListener::from_std(metrics_std)?;
                        anyhow::Ok((runtime, listener, metrics, metrics_listener))
                    }
                    .await;
                    let (runtime, listener, metrics, metrics_listener) = match started {
                        Ok(x) => x,
                        Err(e) => {
                            let msg = format!("{e:#}");
                            let _ = ready_tx.send(Err(e));
                            bail!(msg);
                        }
                    };
                    let _ = ready_tx.send(Ok((runtime.clone(), metrics_listener.local_addr()?)));
                    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
                    tokio::spawn(netready_metrics::serve(
                        metrics_listener,
                        metrics.clone(),
                        async {
                            let _ = metrics_stopped.await;
                        },
                    ));
                    let router = Router::new(
                        Upstream::new(&upstream, Duration::from_secs(1)),
                        Arc::new(runtime),
                    );
                    server::serve(listener, &opts, router, Some(metrics), async {
                        let _ = stopped.await;
                    })
                    .await?;
                    let _ = metrics_stop.send(());
                    Ok(())
                })
            })?;
        let (runtime, metrics_addr) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .context("netready did not start within 30 s")??;
        Ok(InProcess {
            socket,
            runtime,
            metrics_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// The netperf runtime (to read its records).
    pub fn runtime(&self) -> &NetperfRuntime {
        &self.runtime
    }

    /// Stops serving and waits for the server thread.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))???;
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
