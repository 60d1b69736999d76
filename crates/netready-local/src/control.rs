//! Control pods and the external target: what new pods' reachability checks talk to.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use netready_cni::{Attachment, Network};
use netready_netns::Netns;

/// An HTTP/1.1 server inside a namespace answering `200 ok` to every request; stops on drop.
pub struct HttpServer {
    task: tokio::task::JoinHandle<()>,
    listening_since: Arc<OnceLock<Instant>>,
}

impl HttpServer {
    /// Listens on `addr` inside `ns` (the socket is made there, then served from tokio).
    pub async fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = listen(ns, addr)?;
        Ok(HttpServer {
            listening_since: Arc::new(OnceLock::from(Instant::now())),
            task: tokio::spawn(serve(listener)),
        })
    }

    /// Like [`HttpServer::start`], but listens only from `delay` after now, as a target that
    /// comes up late: until then its address refuses connections. A bind that fails then is
    /// logged, and [`HttpServer::listening_since`] stays empty.
    pub async fn start_after(
        ns: &Netns,
        addr: SocketAddr,
        delay: Duration,
    ) -> anyhow::Result<Self> {
        let ns = Netns::open(ns.path())?;
        let listening_since = Arc::new(OnceLock::new());
        let since = listening_since.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let name = ns.name().to_owned();
            let bound = tokio::task::spawn_blocking(move || listen(&ns, addr))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            match bound {
                Ok(listener) => {
                    let _ = since.set(Instant::now());
                    serve(listener).await;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), netns = %name, "late HTTP server")
                }
            }
        });
        Ok(HttpServer {
            task,
            listening_since,
        })
    }

    /// When it began to accept connections; `None` before that.
    pub fn listening_since(&self) -> Option<Instant> {
        self.listening_since.get().copied()
    }
}

fn listen(ns: &Netns, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = ns
        .run(move || match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })?
        .context("socket")?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("{}: binding {addr}", ns.name()))?;
    // Pod bursts connect all at once: a listen backlog of kube-proxy-like depth.
    Ok(socket.listen(1024)?)
}

async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `fut` on a thread inside `ns`, so processes it spawns (CNI plugins) start there.
pub fn block_in<T, F>(ns: &Netns, fut: F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(fut)
    })?
}

/// Port the control pods serve HTTP on.
pub const HTTP_PORT: u16 = 8080;
/// Port of their first iperf3 server.
pub const IPERF3_PORT: u16 = 5201;
/// iperf3 servers per control pod, on [`IPERF3_PORT`] and the ports after it (netready's
/// `[netperf.traffic] pool`): one server runs one test at a time.
pub const IPERF3_POOL: u16 = 8;

/// A control pod: a netns attached with its node's own CNI config, as a real control pod is,
/// answering ICMP (the kernel), HTTP on [`HTTP_PORT`] and iperf3 on [`IPERF3_PORT`].
pub struct ControlPod {
    /// Its IP.
    pub ip: IpAddr,
    server: Option<HttpServer>,
    iperf3: Vec<Child>,
    netns: Option<Netns>,
    net: Network,
    lo: Network,
    att: Attachment,
    node_ns: PathBuf,
}

impl ControlPod {
    /// Creates the pod's netns under `dir`, runs the loopback plugin and `net`'s ADD inside
    /// `node` (so the host side lands there), and starts its servers; `iperf3` names the binary,
    /// `None` for no iperf3 server.
    pub async fn start(
        node: &Netns,
        dir: &Path,
        id: &str,
        net: Network,
        lo: Network,
        iperf3: Option<&str>,
    ) -> anyhow::Result<Self> {
        let netns = Netns::create(dir, id)?;
        let att = Attachment {
            container_id: id.to_owned(),
            netns: netns.path().display().to_string(),
            ifname: "eth0".into(),
            args: netready_cni::exec::k8s_args("netperf-control", id, id, id),
            capability_args: Default::default(),
        };
        let mut pod = ControlPod {
            ip: IpAddr::from([0, 0, 0, 0]),
            server: None,
            iperf3: Vec::new(),
            netns: None,
            net: net.clone(),
            lo: lo.clone(),
            att: att.clone(),
            node_ns: node.path().to_owned(),
        };
        let ns_path = netns.path().to_owned();
        pod.netns = Some(netns);
        let added = block_in(node, async move {
            lo.add(&Attachment {
                ifname: "lo".into(),
                ..att.clone()
            })
            .await?;
            Ok(net.add(&att).await?)
        });
        let added = match added {
            Ok(a) => a,
            Err(e) => {
                pod.teardown();
                return Err(e.context(format!("control pod {id}: CNI ADD")));
            }
        };
        let Some(ip) = added.result.ips.first().map(|i| i.address.addr()) else {
            pod.teardown();
            anyhow::bail!("control pod {id}: the CNI result has no IP");
        };
        pod.ip = ip;
        let ns = Netns::open(&ns_path)?;
        match HttpServer::start(&ns, SocketAddr::new(ip, HTTP_PORT)).await {
            Ok(s) => pod.server = Some(s),
            Err(e) => {
                pod.teardown();
                return Err(e);
            }
        }
        if let Some(bin) = iperf3 {
            if let Err(e) = pod.start_iperf3(bin).await {
                pod.teardown();
                return Err(e);
            }
        }
        Ok(pod)
    }

    /// Starts [`IPERF3_POOL`] `bin --server`s from [`IPERF3_PORT`] on in the pod and waits
    /// until each listens.
    pub async fn start_iperf3(&mut self, bin: &str) -> anyhow::Result<()> {
        let ns = Netns::open(self.netns.as_ref().context("control pod torn down")?.path())?;
        for port in IPERF3_PORT..IPERF3_PORT + IPERF3_POOL {
            let b = bin.to_owned();
            let child = ns
                .run(move || {
                    Command::new(&b)
                        .args(["--server", "--port", &port.to_string()])
                        // Out of the terminal's process group: Ctrl-C reaches `local`, which
                        // removes pods through them before stopping them.
                        .process_group(0)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                })?
                .with_context(|| format!("starting {bin} --server (Debian: apt install iperf3)"))?;
            self.iperf3.push(child);
        }
        for port in IPERF3_PORT..IPERF3_PORT + IPERF3_POOL {
            let addr = SocketAddr::new(self.ip, port);
            let mut up = false;
            for _ in 0..200 {
                up = ns.run(move || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                })?;
                if up {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::ensure!(
                up,
                "iperf3 in control pod {} did not listen on {addr}",
                self.att.container_id
            );
        }
        Ok(())
    }

    /// Its network namespace's path, while it is up.
    pub fn netns_path(&self) -> Option<&std::path::Path> {
        self.netns.as_ref().map(|n| n.path())
    }

    /// Stops its servers, runs the CNI DEL in the node's namespace and removes its netns.
    pub fn teardown(&mut self) {
        for mut c in std::mem::take(&mut self.iperf3) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.server.take();
        if let Some(ns) = self.netns.take() {
            let (net, lo, att) = (self.net.clone(), self.lo.clone(), self.att.clone());
            if let Ok(node) = Netns::open(&self.node_ns) {
                let del = block_in(&node, async move {
                    net.del(&att, None).await?;
                    lo.del(
                        &Attachment {
                            ifname: "lo".into(),
                            ..att
                        },
                        None,
                    )
                    .await?;
                    Ok(())
                });
                if let Err(e) = del {
                    tracing::warn!(error = %format!("{e:#}"), "control pod CNI DEL");
                }
            }
            if let Err(e) = ns.remove() {
                tracing::warn!(error = %e, "removing control pod netns");
            }
        }
    }
}

impl Drop for ControlPod {
    fn drop(&mut self) {
        self.teardown();
    }
}
