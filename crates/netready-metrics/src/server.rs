//! The `/metrics` endpoint: Prometheus text by default, OpenMetrics when the scraper asks.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

use crate::Metrics;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let m = metrics.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let m = m.clone();
            async move { Ok::<_, Infallible>(answer(&m, &req)) }
        });
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics connection");
            }
        });
    }
}

fn answer<B>(m: &Metrics, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return http::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"netready serves /metrics\n")))
            .expect("static response");
    }
    m.scrape(req)
}

/// The answer to a scrape of `registry`: Prometheus text by default, OpenMetrics when the
/// request's `Accept` asks for it.
pub fn scrape<B>(registry: &Registry, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let openmetrics = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, ctype) = if openmetrics {
        (
            crate::encode_openmetrics(registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            crate::encode_prometheus(registry),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
