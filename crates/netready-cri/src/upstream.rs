//! The connection to the upstream runtime (containerd's CRI socket).
//!
//! One HTTP/2 connection over the unix socket, opened lazily and reopened after a failure, so
//! netready starts and keeps serving while containerd is down and recovers by itself when it
//! returns. Requests go through as raw HTTP/2: headers, frames and trailers are not re-encoded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tower::ServiceExt;

use crate::grpc::{self, Collected};

/// A handle on the upstream runtime; cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstream {
    channel: Channel,
    socket: Arc<PathBuf>,
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
    /// A lazily connecting handle on the CRI socket at `socket`.
    pub fn new(socket: &Path, connect_timeout: Duration) -> Self {
        let path = Arc::new(socket.to_owned());
        let connector_path = path.clone();
        // The URI is never dialled: the connector opens the unix socket whatever it says.
        let channel = Endpoint::from_static("http://upstream.invalid")
            .connect_timeout(connect_timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = connector_path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Upstream {
            channel,
            socket: path,
        }
    }

    /// The upstream socket path, for messages.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A typed client view, for callers that want decoded messages (tests, tools).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn unavailable(&self, err: impl std::fmt::Display) -> Status {
        Status::unavailable(format!(
            "upstream runtime at unix://{} is unreachable: {err}",
            self.socket.display()
        ))
    }

    /// Forwards a request as it is and returns the reply as it comes (streams stay streams).
    pub async fn forward<B>(&self, req: Request<B>) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let req = req.map(Body::new);
        self.channel
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| self.unavailable(source_chain(&e)))
    }

    /// Sends a buffered unary request and reads the whole reply.
    pub async fn unary(&self, parts: http::request::Parts, body: Bytes) -> Result<UnaryReply, Status> {
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

/// The error and its sources in one line: "transport error: connection refused".
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}
