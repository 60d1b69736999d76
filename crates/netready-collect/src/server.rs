//! The collector's HTTP/1.1 API.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/records`, body: records, one JSON object a line | 204, headers `netready-records` (written) and `netready-duplicates` (dropped); 400 naming the first bad line and field, nothing kept; 413 over the body limit |
//! | `GET /v1/records?run_id=X` | 200, the run's file (`application/x-ndjson`); 404 for an unknown run |
//! | `GET /v1/runs` | 200, `{"runs":[{"run_id","records","bytes"}]}` |
//! | `GET /healthz` | 200 once the index is built |
//! | `GET /metrics` | Prometheus text (OpenMetrics when asked) |

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{CollectorMetrics, RejectLabels};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;

use crate::batch;
use crate::error::Result;
use crate::store::{Loaded, Store};

/// Default limit of a `POST /v1/records` body: 8 MiB (a forwarder's batch of 256 records of
/// 4 KB is 1 MiB).
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

/// Bodies up to this size are parsed and written on the async worker that read them.
const INLINE_BODY: usize = 64 << 10;

/// How long the rest of an oversized body may take to be read and thrown away.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A request's headers must arrive within this (a slow or stuck client holds no slot longer).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, std::io::Error>;

/// The collector: its store, its metrics, its limits.
#[derive(Debug)]
pub struct Collector {
    store: Store,
    metrics: CollectorMetrics,
    max_body: usize,
    log_gate: LogGate,
}

/// At most one log line a second about refused batches: thousands of nodes sending the same
/// bad batch, or a full disk, would otherwise write thousands a second. The metrics count
/// every one.
#[derive(Debug, Default)]
struct LogGate {
    /// Since when, and how many were left out since the last line.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogGate {
    /// `Some(lines left out since the last one)` when a line may be written now.
    fn open(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(last) if last.elapsed() < Duration::from_secs(1) => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(std::time::Instant::now()), 0);
                Some(suppressed)
            }
        }
    }
}

// === impl Collector ===

impl Collector {
    /// Opens the store in `dir` (indexing what it holds) with a body limit of `max_body`.
    pub fn open(dir: &Path, max_body: usize) -> Result<(Arc<Self>, Loaded)> {
        let (store, loaded) = Store::open(dir)?;
        Ok((
            Arc::new(Collector {
                store,
                metrics: CollectorMetrics::new(),
                max_body,
                log_gate: LogGate::default(),
            }),
            loaded,
        ))
    }

    /// Its store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Its metrics.
    pub fn metrics(&self) -> &CollectorMetrics {
        &self.metrics
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::POST, "/v1/records") => self.post_records(req).await,
            (&Method::GET, "/v1/records") => self.get_records(&req).await,
            (&Method::GET, "/v1/runs") => {
                let body = serde_json::json!({ "runs": self.store.runs() }).to_string();
                reply(StatusCode::OK, "application/json", body)
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/metrics") => self
                .metrics
                .scrape(&req)
                .map(|b| b.map_err(|never| match never {}).boxed()),
            (_, "/v1/records") => allow("GET, POST"),
            (_, "/v1/runs" | "/healthz" | "/metrics") => allow("GET"),
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown path; the collector serves POST and GET /v1/records, GET /v1/runs, /healthz, /metrics",
            ),
        }
    }

    async fn post_records(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let max = self.max_body;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > max as u64) {
            let why = format!("body of {n} bytes is over the limit of {max} bytes");
            return self.too_large(why, req.into_body(), max).await;
        }
        let mut body = req.into_body();
        let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    self.reject("invalid");
                    return text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"));
                }
            };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > max {
                    let why = format!("body is over the limit of {max} bytes");
                    return self.too_large(why, body, max).await;
                }
            }
        }
        let body = buf.freeze();
        self.metrics.received_bytes.inc_by(body.len() as u64);
        let keep = |c: &Collector, body: &[u8]| {
            batch::parse(body)
                .map_err(Refused::Invalid)
                .and_then(|lines| {
                    c.store
                        .append(&lines)
                        .map_err(|e| Refused::NotKept(e.to_string()))
                })
        };
        // A forwarder's usual batch (a few records: tens of µs of parsing and one small
        // write) is kept right here: handing it to another thread would cost more. A big one
        // (a backlog after an outage) goes off the async workers.
        let kept = if body.len() <= INLINE_BODY {
            keep(&self, &body)
        } else {
            let me = self.clone();
            let parsed = body.clone();
            tokio::task::spawn_blocking(move || keep(&me, &parsed))
                .await
                .unwrap_or_else(|e| Err(Refused::NotKept(e.to_string())))
        };
        match kept {
            Ok(done) => {
                self.metrics.batches.inc();
                self.metrics.records.inc_by(done.records);
                self.metrics.duplicate_records.inc_by(done.duplicates);
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .header("netready-records", done.records)
                    .header("netready-duplicates", done.duplicates)
                    .body(empty())
                    .expect("valid response")
            }
            Err(Refused::Invalid(invalid)) => {
                self.reject("invalid");
                if let Some(suppressed) = self.log_gate.open() {
                    tracing::warn!(%invalid, bytes = body.len(), suppressed, "batch refused");
                }
                text(StatusCode::BAD_REQUEST, &invalid.to_string())
            }
            Err(Refused::NotKept(e)) => {
                self.reject("write_failed");
                if let Some(suppressed) = self.log_gate.open() {
                    tracing::error!(error = %e, suppressed, "batch not kept");
                }
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("batch not kept: {e}"),
                )
            }
        }
    }

    /// Answers 413 once the rest of the body is read and thrown away, up to four limits'
    /// worth and 10 s (a lingering close: a client still sending would otherwise get a reset,
    /// and could lose the answer); past that the connection is closed.
    async fn too_large(&self, why: String, mut body: Incoming, max: usize) -> Response<Body> {
        self.reject("too_large");
        if let Some(suppressed) = self.log_gate.open() {
            tracing::warn!(%why, suppressed, "batch refused");
        }
        let budget = 4 * max as u64;
        // A declared length past the budget is not worth reading.
        let drained = hyper::body::Body::size_hint(&body).lower() <= budget
            && tokio::time::timeout(DRAIN_TIME, async move {
                let mut read = 0u64;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return false };
                    if let Ok(data) = frame.into_data() {
                        read += data.len() as u64;
                        if read > budget {
                            return false;
                        }
                    }
                }
                true
            })
            .await
            .unwrap_or(false);
        let mut r = text(StatusCode::PAYLOAD_TOO_LARGE, &why);
        if !drained {
            // The body is not read: this connection cannot carry another request.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }

    fn reject(&self, reason: &'static str) {
        self.metrics
            .rejected_batches
            .get_or_create(&RejectLabels { reason })
            .inc();
    }

    async fn get_records(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(run_id) = query_param(req.uri().query().unwrap_or(""), "run_id") else {
            return text(
                StatusCode::BAD_REQUEST,
                "query parameter run_id is required: /v1/records?run_id=<run id>",
            );
        };
        if let Err(why) = batch::check_run_id(&run_id) {
            return text(StatusCode::BAD_REQUEST, &format!("run_id: {why}"));
        }
        let Some((path, len)) = self.store.snapshot(&run_id) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no records of run {run_id:?}"),
            );
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("opening {}: {e}", path.display()),
                )
            }
        };
        // Only complete batches: what lies past `len` may be one being written.
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 << 10)
            .map(|chunk| chunk.map(Frame::data));
        Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::CONTENT_LENGTH, len)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("valid response")
    }
}

/// Why a batch was not kept.
enum Refused {
    Invalid(batch::Invalid),
    /// The store failed to write it, or the worker parsing it panicked.
    NotKept(String),
}

/// Serves the collector on `listener` until `shutdown` resolves, then lets requests in
/// flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    collector: Arc<Collector>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let c = collector.clone();
        let svc = hyper::service::service_fn(move |req| {
            let c = c.clone();
            async move { Ok::<_, Infallible>(c.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "collector connection");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("valid response")
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    reply(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

fn allow(methods: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(methods));
    r
}

/// The value of `name` in a query string, `+` and `%XX` decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k)? == name).then(|| decode(v)).flatten()
    })
}

fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [it.next()?, it.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let gate = LogGate::default();
        assert_eq!(gate.open(), Some(0));
        assert_eq!(gate.open(), None);
        assert_eq!(gate.open(), None);
        gate.state.lock().unwrap().0 = Some(std::time::Instant::now() - Duration::from_secs(2));
        assert_eq!(gate.open(), Some(2));
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("a=1&run_id=cni%20v1+x", "run_id").as_deref(),
            Some("cni v1 x")
        );
        assert_eq!(
            query_param("run_id=..%2Fx", "run_id").as_deref(),
            Some("../x")
        );
        assert_eq!(query_param("other=1", "run_id"), None);
        assert_eq!(query_param("run_id=%zz", "run_id"), None);
    }
}
