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
pub(crate) struct Servers(Vec<tokio::task::JoinHandle<()>>);

impl Servers {
    /// Stops every server and waits until its sockets are closed: a socket left open would
    /// keep the pod's netns alive after its removal.
    pub(crate) async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.0);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for t in &self.0 {
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
                servers.0.push(tokio::spawn(async move {
                    while let Ok((stream, _)) = l.accept().await {
                        let (text, pod, created) = (text.clone(), pod.clone(), created.clone());
                        tokio::spawn(async move {
                            let svc = service_fn(move |_req| {
                                let (text, pod, created) =
                                    (text.clone(), pod.clone(), created.clone());
                                async move {
                                    let now =
                                        super::log::rfc3339(netready_cni::Stamp::now().wall_ns);
                                    Ok::<_, Infallible>(
                                        hyper::Response::builder()
                                            .header("x-netready-pod", pod)
                                            // A client through a VIP learns when this pod
                                            // was made and this node's clock (its skew).
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
                        });
                    }
                }));
            }
            "udp" => {
                let s = bind(ns, p.port, std::net::UdpSocket::bind::<SocketAddr>).await?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let s = tokio::net::UdpSocket::from_std(s).map_err(|e| e.to_string())?;
                servers.0.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok((n, from)) = s.recv_from(&mut buf).await {
                        let _ = s.send_to(&buf[..n], from).await;
                    }
                }));
            }
            _ => {}
        }
    }
    Ok(servers)
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
}
