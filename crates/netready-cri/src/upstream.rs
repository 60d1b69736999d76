//! The connection to the upstream runtime (containerd's CRI socket).
//!
//! One HTTP/2 connection over the unix socket, opened on first use and reopened after it
//! breaks, so netready starts and keeps serving while containerd is down and recovers by
//! itself when it returns. Requests go through as raw HTTP/2: headers, frames and trailers are
//! not re-encoded.
//!
//! This is hyper's connection handle used directly rather than tonic's `Channel`: the channel
//! queues every request through a buffer task, which cost ~100 µs per call on 2 cores (see
//! `benches/passthrough.rs`), and it rewrites `user-agent`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;
use tonic::Status;

use crate::grpc::{self, Collected};

/// A handle on the upstream runtime; cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    connect_timeout: Duration,
    /// The live connection, if any; cloned out for each request (HTTP/2 multiplexes them).
    conn: Mutex<Option<SendRequest<Body>>>,
    /// Serializes reconnects so a burst of calls after an outage opens one connection.
    connecting: tokio::sync::Mutex<()>,
}

/// A unary reply read to its end.
#[derive(Debug)]
pub struct UnaryReply {
    /// Response headers as upstream sent them.
    pub headers: HeaderMap,
    /// Body and trailers.
    pub body: Collected,
    /// The call's gRPC status.
    pub status: Status,
}

// === impl Upstream ===

impl Upstream {
    /// A handle on the CRI socket at `socket`; nothing is connected until the first call.
    pub fn new(socket: &Path, connect_timeout: Duration) -> Self {
        Upstream {
            inner: Arc::new(Inner {
                socket: socket.to_owned(),
                connect_timeout,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The upstream socket path, for messages.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// Whether there is an upstream runtime at all (an empty socket path: netperf pods only).
    pub fn is_configured(&self) -> bool {
        !self.inner.socket.as_os_str().is_empty()
    }

    fn unavailable(&self, err: impl std::fmt::Display) -> Status {
        Status::unavailable(format!(
            "upstream runtime at unix://{} is unreachable: {err}",
            self.inner.socket.display()
        ))
    }

    fn live(&self) -> Option<SendRequest<Body>> {
        let guard = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    async fn connection(&self) -> Result<SendRequest<Body>, Status> {
        if !self.is_configured() {
            return Err(Status::unavailable(
                "no upstream runtime configured (serve.upstream is empty): this netready runs netperf pods only",
            ));
        }
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let connect = async {
            let stream = tokio::net::UnixStream::connect(&self.inner.socket).await?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_connection_window_size(4 * 1024 * 1024)
                .initial_stream_window_size(2 * 1024 * 1024)
                .max_header_list_size(1024 * 1024)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((send, conn))
        };
        let (send, conn) = tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| {
                self.unavailable(format!(
                    "connect timed out after {:?}",
                    self.inner.connect_timeout
                ))
            })?
            .map_err(|e| self.unavailable(e))?;
        let socket = self.inner.socket.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(upstream = %socket.display(), error = %e, "upstream connection ended");
            }
        });
        tracing::info!(upstream = %self.inner.socket.display(), "connected to upstream runtime");
        *self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(send.clone());
        Ok(send)
    }

    /// Forwards a request as it is and returns the reply as it comes (streams stay streams).
    pub async fn forward<B>(&self, req: Request<B>) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut req = req.map(Body::new);
        // hyper's HTTP/2 client needs an absolute URI for :scheme and :authority.
        if req.uri().scheme().is_none() {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_owned();
            *req.uri_mut() = http::Uri::builder()
                .scheme("http")
                .authority("localhost")
                .path_and_query(pq)
                .build()
                .map_err(|e| Status::invalid_argument(format!("request path: {e}")))?;
        }
        let mut conn = self.connection().await?;
        conn.ready().await.map_err(|e| self.unavailable(e))?;
        let resp = conn.send_request(req).await.map_err(|e| {
            if conn.is_closed() {
                self.unavailable(e)
            } else {
                Status::unavailable(format!("upstream call failed: {e}"))
            }
        })?;
        Ok(resp.map(Body::new))
    }

    /// One unary call of netready's own (not a forwarded one) to the upstream runtime's
    /// `RuntimeService`, decoded.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let (parts, _) = Request::post(format!(
            "http://localhost/runtime.v1.RuntimeService/{method}"
        ))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| Status::internal(e.to_string()))?
        .into_parts();
        let reply = self
            .unary(parts, grpc::frame(&[&req.encode_to_vec()]))
            .await?;
        if reply.status.code() != tonic::Code::Ok {
            return Err(reply.status);
        }
        Resp::decode(grpc::unframe(&reply.body.data)?)
            .map_err(|e| crate::route::decode_error(&format!("{method} response"), e))
    }

    /// Sends a buffered unary request and reads the whole reply.
    pub async fn unary(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<UnaryReply, Status> {
        let req = Request::from_parts(parts, Full::new(body));
        let resp = self.forward(req).await?;
        let (head, body) = resp.into_parts();
        let body = grpc::collect(body, grpc::MAX_MESSAGE_BYTES + 5).await?;
        let status = grpc::status_of(&head.headers, body.trailers.as_ref());
        Ok(UnaryReply {
            headers: head.headers,
            body,
            status,
        })
    }
}
