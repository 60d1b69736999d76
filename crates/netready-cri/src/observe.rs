//! CRI call metrics: method, route, gRPC code and duration of every call, the code read from
//! the trailers as they pass through (forwarded replies are streamed, not buffered).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use netready_metrics::prometheus_client::encoding::EncodeLabelSet;
use netready_metrics::prometheus_client::metrics::counter::Counter;
use netready_metrics::prometheus_client::metrics::family::Family;
use netready_metrics::prometheus_client::metrics::histogram::Histogram;
use netready_metrics::prometheus_client::registry::Unit;
use netready_metrics::Metrics;
use tonic::body::Body;
use tonic::Code;

use crate::route::Owner;

/// `{method,route,code}` labels of CRI calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CriLabels {
    /// The CRI method (known names only; others are `unknown`).
    pub method: &'static str,
    /// `netperf` or `upstream`.
    pub route: &'static str,
    /// The gRPC code name (`OK`, `NotFound`, ...).
    pub code: &'static str,
}

/// `{route}` labels of CRI call durations. The method is left out: a latency histogram per
/// method and route would be 30-odd × 12 series on every node; calls per method are counted
/// in [`CriLabels`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CriRouteLabels {
    /// `netperf` or `upstream`.
    pub route: &'static str,
}

/// The CRI server's families.
#[derive(Debug)]
pub struct CriMetrics {
    /// CRI calls by method, route and code.
    pub requests: Family<CriLabels, Counter>,
    /// CRI call durations by route.
    pub request_duration: Family<CriRouteLabels, Histogram>,
}

impl CriMetrics {
    /// Registers the CRI server's families in `m`; every route's histogram exists from the
    /// start.
    pub fn register(m: &Metrics) -> Arc<Self> {
        let c = CriMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(netready_metrics::operation_histogram),
        };
        m.register(|r| {
            r.register(
                "cri_requests",
                "CRI calls answered, by method, route (netperf or upstream) and gRPC code",
                c.requests.clone(),
            );
            r.register_with_unit(
                "cri_request_duration",
                "CRI call duration as netready sees it, by route (netperf or upstream)",
                Unit::Seconds,
                c.request_duration.clone(),
            );
        });
        for owner in [Owner::Local, Owner::Upstream] {
            let _ = c.request_duration.get_or_create(&CriRouteLabels {
                route: owner.as_str(),
            });
        }
        Arc::new(c)
    }
}

/// Every CRI v1 method name, so the `method` label stays bounded: others are `unknown`.
const METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The bounded `method` label of a gRPC path.
pub fn method_label(path: &str) -> &'static str {
    let name = crate::route::method_name(path);
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("unknown")
}

/// The code's name as grpc-go prints it (the usual `grpc_code` label values).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// One call being observed; recorded once, when its code is known.
struct Call {
    metrics: Arc<CriMetrics>,
    method: &'static str,
    route: &'static str,
    start: Instant,
    done: bool,
}

impl Call {
    fn record(&mut self, code: Option<Code>) {
        if self.done {
            return;
        }
        self.done = true;
        let code = code.map(code_label).unwrap_or("Unknown");
        self.metrics
            .requests
            .get_or_create(&CriLabels {
                method: self.method,
                route: self.route,
                code,
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&CriRouteLabels { route: self.route })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// A reply body that records the call when its trailers (or its end) pass by.
pub struct Observed {
    inner: Body,
    call: Call,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(t).map(|s| s.code());
                    this.call.record(code);
                }
            }
            Poll::Ready(Some(Err(s))) => this.call.record(Some(s.code())),
            Poll::Ready(None) => this.call.record(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // A stream the client hung up on: its code is Cancelled as far as we know.
        self.call.record(Some(Code::Cancelled));
    }
}

/// Wraps a reply so the call is counted when it ends. A trailers-only reply (errors) carries
/// its code in the headers and is recorded at once.
pub fn observe(
    metrics: &Arc<CriMetrics>,
    path: &str,
    route: &'static str,
    start: Instant,
    resp: http::Response<Body>,
) -> http::Response<Body> {
    let mut call = Call {
        metrics: metrics.clone(),
        method: method_label(path),
        route,
        start,
        done: false,
    };
    if let Some(s) = tonic::Status::from_header_map(resp.headers()) {
        call.record(Some(s.code()));
    }
    resp.map(|inner| Body::new(Observed { inner, call }))
}
