//! netperf pods serve the ports they declare, so a Service can have them as endpoints.
//!
//! kubelet passes a pod's container ports to the runtime only as
//! `PodSandboxConfig.port_mappings` (`host_port` 0 included). For each, netready listens
//! inside the pod's netns once its ADD succeeded: TCP answers HTTP/1.1 with a short body naming
//! the pod (and header `x-netready-pod`), so a client going through a VIP sees which backend
//! answered; UDP echoes each datagram. ICMP needs nothing: the pod's kernel answers it. The
//! sockets are made on a thread inside the netns and served by netready's tokio runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// A port the pod declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedPort {
    /// `tcp`, `udp` or `sctp` (not served).
    pub protocol: String,
    /// The container port.
    pub port: u16,
}

/// A pod's servers; dropping it stops them.
#[derive(Debug, Default)]
pub(crate) struct Servers(Vec<(ServedPort, tokio::task::JoinHandle<()>)>);

impl Servers {
    /// Stops every server and waits until its sockets are closed: a socket left open would
    /// keep the pod's netns alive after its removal.
    pub(crate) async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.0);
        for (_, t) in &tasks {
            t.abort();
        }
        for (_, t) in tasks {
            let _ = t.await;
        }
    }

    /// Stops serving `port` (the pod's own command listens there) and waits until it is free.
    pub(crate) async fn release(&mut self, port: &ServedPort) {
        let (gone, kept) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(p, _)| p == port);
        self.0 = kept;
        Servers(gone).stop().await;
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, t) in &self.0 {
            t.abort();
        }
    }
}

/// What a pod's HTTP server answers: `netready netperf pod <namespace>/<name> <ip>`.
pub fn body(pod: &str, ips: &[String]) -> String {
    format!("netready netperf pod {pod} {}\n", ips.join(","))
}

/// Binds `port` in the netns at `ns` on every address of the pod: `[::]` (both families), or
/// `0.0.0.0` where IPv6 is off.
async fn bind<T: Send + 'static>(
    ns: &Path,
    port: u16,
    f: fn(SocketAddr) -> std::io::Result<T>,
) -> Result<T, String> {
    netready_probe::in_netns(ns, move || {
        f(SocketAddr::from(([0u16; 8], port))).or_else(|_| f(SocketAddr::from(([0u8; 4], port))))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("binding port {port}: {e}"))
}

/// Starts serving `ports` in the netns at `ns` for pod `pod` (`namespace/name`) at `ips`.
/// SCTP is skipped. Errors name the port.
pub(crate) async fn start(
    ns: &Path,
    ports: &[ServedPort],
    pod: String,
    ips: Vec<String>,
    created: String,
) -> Result<Servers, String> {
    let mut servers = Servers::default();
    let text = Bytes::from(body(&pod, &ips));
    for p in ports {
        match p.protocol.as_str() {
            "tcp" => {
                let l = bind(ns, p.port, std::net::TcpListener::bind::<SocketAddr>).await?;
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
                let (text, pod, created) = (text.clone(), pod.clone(), created.clone());
                servers.0.push((
                    p.clone(),
                    tokio::spawn(async move {
                        // Connections live in this task's set: stopping the server aborts
                        // them too (a client's idle keep-alive connection to a deleted pod
                        // would otherwise hold its socket, and so its netns, for ever).
                        let mut conns = tokio::task::JoinSet::new();
                        loop {
                            tokio::select! {
                                a = l.accept() => {
                                    let Ok((stream, _)) = a else { break };
                                    let (text, pod, created) =
                                        (text.clone(), pod.clone(), created.clone());
                                    conns.spawn(serve_http(stream, text, pod, created));
                                }
                                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                            }
                        }
                    }),
                ));
            }
            "udp" => {
                let s = bind(ns, p.port, std::net::UdpSocket::bind::<SocketAddr>).await?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let s = tokio::net::UdpSocket::from_std(s).map_err(|e| e.to_string())?;
                servers.0.push((
                    p.clone(),
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok((n, from)) = s.recv_from(&mut buf).await {
                            let _ = s.send_to(&buf[..n], from).await;
                        }
                    }),
                ));
            }
            _ => {}
        }
    }
    Ok(servers)
}

/// One HTTP/1.1 connection: every request answered with the pod's name, its creation and
/// this node's time.
async fn serve_http(stream: tokio::net::TcpStream, text: Bytes, pod: String, created: String) {
    let svc = service_fn(move |_req| {
        let (text, pod, created) = (text.clone(), pod.clone(), created.clone());
        async move {
            let now = super::log::rfc3339(netready_cni::Stamp::now().wall_ns);
            Ok::<_, Infallible>(
                hyper::Response::builder()
                    .header("x-netready-pod", pod)
                    // A client through a VIP learns when this pod was made and this node's
                    // clock (its skew).
                    .header("x-netready-created", created)
                    .header("x-netready-time", now)
                    .header("content-type", "text/plain")
                    .body(Full::new(text))
                    .expect("a valid response"),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

impl super::NetperfRuntime {
    /// Serves the ports a ready sandbox declared; a port that cannot be bound is logged, as a
    /// container failing to listen would be its own failure, not the sandbox's.
    pub(super) async fn start_servers(&self, rec: &super::state::SandboxRecord) {
        if rec.ports.is_empty() {
            return;
        }
        let pod = format!("{}/{}", rec.meta.namespace, rec.meta.name);
        // Created when kubelet first asked for it (across its retries), else this sandbox.
        let first = self
            .store()
            .pods
            .get(&rec.meta.uid)
            .map_or(rec.created, |t| t.first_request);
        let created = super::log::rfc3339(first.wall_ns);
        match start(&rec.netns, &rec.ports, pod, rec.ips.clone(), created).await {
            Ok(servers) => {
                self.inner
                    .servers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rec.id.clone(), servers);
            }
            Err(e) => {
                tracing::warn!(sandbox = %rec.id, error = %e, "serving the pod's declared ports")
            }
        }
    }

    /// Hands TCP `port` of sandbox `sid` to the pod's own command (an `iperf3 -s`): netready
    /// stops serving it first, else the command would find it taken.
    pub(super) async fn release_port(&self, sid: &str, port: u16) {
        let taken = self
            .inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
        let Some(mut servers) = taken else { return };
        servers
            .release(&ServedPort {
                protocol: "tcp".into(),
                port,
            })
            .await;
        self.inner
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid.to_owned(), servers);
    }
}
