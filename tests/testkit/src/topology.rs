//! Test topologies for reachability checks: nodes routed to each other, control pods that
//! answer ICMP and HTTP, a service VIP (DNAT in the node netns, as kube-proxy does) and an
//! external target in a netns of its own. Every address lives in namespaces the test made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use netready_cni::{Network, PluginExec};
use netready_netns::Netns;

use crate::node::TestNode;
use crate::unique_name;

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs a command inside a netns (by path), failing with its stderr.
pub fn in_netns(ns: &Netns, cmd: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .args(cmd)
        .output()
        .context("running nsenter")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A minimal HTTP/1.1 server on a thread inside a netns, answering `200 ok` to every request.
/// Unlike `netready_local::HttpServer` it may start listening only after a delay (the late
/// target tests) and records when it did; it stops (and releases the netns) on drop.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<netready_netns::Result<()>>>,
    /// When it started accepting connections.
    pub listening_since: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl HttpServer {
    /// Serves on `addr` inside `ns`, from `delay` after now.
    pub fn start(ns: &Netns, addr: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let since = Arc::new(std::sync::Mutex::new(None));
        let (s, l) = (stop.clone(), since.clone());
        let thread = ns.spawn("test-http", move || {
            let start = Instant::now();
            while start.elapsed() < delay {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let Ok(listener) = TcpListener::bind(addr) else {
                return;
            };
            let _ = listener.set_nonblocking(true);
            *l.lock().unwrap() = Some(Instant::now());
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        // One thread per connection: a slow client must not hold up the rest.
                        std::thread::spawn(move || {
                            use std::io::{Read, Write};
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                            let mut buf = [0u8; 2048];
                            let _ = conn.read(&mut buf);
                            let _ = conn.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                            );
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })?;
        Ok(HttpServer {
            stop,
            thread: Some(thread),
            listening_since: since,
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub use netready_local::ControlPod;

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
        let (va, vb) = (
            format!("nra{}", std::process::id() % 100000),
            format!("nrb{}", std::process::id() % 100000),
        );
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            a.netns().name(),
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.netns().name(),
        ])?;
        for (n, dev, addr) in [(&a, &va, "172.31.250.1/30"), (&b, &vb, "172.31.250.2/30")] {
            ip(&["-n", n.netns().name(), "addr", "add", addr, "dev", dev])?;
            ip(&["-n", n.netns().name(), "link", "set", dev, "up"])?;
            ip(&["-n", n.netns().name(), "link", "set", "lo", "up"])?;
            in_netns(n.netns(), &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        ip(&[
            "-n",
            a.netns().name(),
            "route",
            "add",
            SUBNET_B,
            "via",
            "172.31.250.2",
        ])?;
        ip(&[
            "-n",
            b.netns().name(),
            "route",
            "add",
            SUBNET_A,
            "via",
            "172.31.250.1",
        ])?;
        let control_a = control_pod(&a).await?;
        let control_b = control_pod(&b).await?;
        // External host: its own netns behind node A.
        let ext = Netns::create("/run/netns", &unique_name("ext"))?;
        let (ea, ee) = (
            format!("nre{}", std::process::id() % 100000),
            "eth0".to_string(),
        );
        ip(&[
            "link",
            "add",
            &ea,
            "netns",
            a.netns().name(),
            "type",
            "veth",
            "peer",
            "name",
            &ee,
            "netns",
            ext.name(),
        ])?;
        ip(&[
            "-n",
            a.netns().name(),
            "addr",
            "add",
            "172.31.251.1/30",
            "dev",
            &ea,
        ])?;
        ip(&["-n", a.netns().name(), "link", "set", &ea, "up"])?;
        ip(&[
            "-n",
            ext.name(),
            "addr",
            "add",
            "172.31.251.2/30",
            "dev",
            &ee,
        ])?;
        ip(&[
            "-n",
            ext.name(),
            "addr",
            "add",
            "198.18.0.10/32",
            "dev",
            "lo",
        ])?;
        ip(&["-n", ext.name(), "link", "set", &ee, "up"])?;
        ip(&["-n", ext.name(), "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ext.name(),
            "route",
            "add",
            "default",
            "via",
            "172.31.251.1",
        ])?;
        ip(&[
            "-n",
            a.netns().name(),
            "route",
            "add",
            "198.18.0.10/32",
            "via",
            "172.31.251.2",
        ])?;
        let external: IpAddr = Ipv4Addr::new(198, 18, 0, 10).into();
        let external_server = match external_delay {
            Some(d) => Some(HttpServer::start(&ext, SocketAddr::new(external, 80), d)?),
            None => None,
        };
        // Service VIP on node A: DNAT (TCP 80 → control B:8080, ICMP → control B).
        let vip: IpAddr = Ipv4Addr::new(10, 96, 0, 20).into();
        let to = format!("{}:8080", control_b.ip);
        let to_pod = control_b.ip.to_string();
        for (proto, extra, dest) in [
            ("tcp", ["--dport", "80"].as_slice(), to.as_str()),
            ("icmp", [].as_slice(), to_pod.as_str()),
        ] {
            let mut rule = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                "10.96.0.20",
                "-p",
                proto,
            ];
            rule.extend_from_slice(extra);
            rule.extend_from_slice(&["-j", "DNAT", "--to-destination", dest]);
            in_netns(a.netns(), &rule)?;
        }
        Ok(TwoNodes {
            a,
            b,
            control_a,
            control_b,
            vip,
            external,
            external_ns: Some(ext),
            external_server,
        })
    }

    /// Drops every packet node A forwards to `ip` (a blackholed target).
    pub fn blackhole(&self, ip: IpAddr) -> anyhow::Result<()> {
        in_netns(
            self.a.netns(),
            &[
                "iptables",
                "-I",
                "FORWARD",
                "-d",
                &ip.to_string(),
                "-j",
                "DROP",
            ],
        )
    }

    /// Lets node A forward to `ip` again (undoes [`TwoNodes::blackhole`]).
    pub fn unblackhole(&self, ip: IpAddr) -> anyhow::Result<()> {
        in_netns(
            self.a.netns(),
            &[
                "iptables",
                "-D",
                "FORWARD",
                "-d",
                &ip.to_string(),
                "-j",
                "DROP",
            ],
        )
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
