//! The request handler: decode a call, pick its owner, and forward, answer or merge.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use k8s_cri::v1 as cri;
use prost::Message;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::answers;
use crate::grpc;
use crate::local::LocalRuntime;
use crate::route::{self, decode_error, Call, Owner, Routing};
use crate::upstream::Upstream;

/// Routes every CRI call to netready's own runtime or to the upstream runtime.
#[derive(Clone)]
pub struct Router {
    upstream: Upstream,
    local: Arc<dyn LocalRuntime>,
    idempotent_stop: bool,
    /// While a listing of the upstream's control pods is in flight: the sandboxes stopped or
    /// removed meanwhile, which its answer must not bring back.
    ended_while_listing: Arc<std::sync::Mutex<Option<Vec<String>>>>,
}

/// Where one call goes, as [`Router::owner`] decided it.
struct Route {
    owner: Owner,
    /// A RunPodSandbox going upstream for a control pod, whose IPs are to be learned.
    watched: bool,
}

/// What happened to one call, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Who answered.
    pub owner: Owner,
    /// The gRPC code netready knows of (`None` when a forwarded reply's status arrives later,
    /// in trailers netready does not wait for).
    pub code: Option<Code>,
}

// === impl Router ===

impl Router {
    /// A router in front of `upstream`, with `local` owning netready's own sandboxes.
    pub fn new(upstream: Upstream, local: Arc<dyn LocalRuntime>) -> Self {
        Router {
            upstream,
            local,
            idempotent_stop: true,
            ended_while_listing: Default::default(),
        }
    }

    /// Whether `StopPodSandbox` and `StopContainer` of a full id (64 hex digits, what kubelet
    /// sends) that nobody has answer OK (on by default): upstream's `NOT_FOUND` becomes OK, and
    /// with no upstream such a stop is OK. The CRI contract says stopping what is already gone
    /// must succeed; containerd 1.6 answers `NOT_FOUND`, which kubelet takes for a failed stop.
    /// A shorter id is an operator's prefix (maybe a typo): it keeps upstream's answer.
    pub fn idempotent_stop(mut self, on: bool) -> Self {
        self.idempotent_stop = on;
        self
    }

    /// Answers one HTTP/2 request.
    pub async fn handle<B>(&self, req: Request<B>) -> (Response<Body>, Outcome)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if !route::is_known(path) {
            return self.unknown(req).await;
        }
        if route::is_image_without_pod(path) && self.upstream.is_configured() {
            return self.forward(req).await;
        }
        let (parts, body) = req.into_parts();
        let framed = match grpc::collect(body, grpc::MAX_MESSAGE_BYTES + 5).await {
            Ok(c) => c.data,
            Err(s) => return error(Owner::Upstream, s),
        };
        let msg = match grpc::unframe(&framed) {
            Ok(m) => m,
            Err(s) => return error(Owner::Upstream, s),
        };
        let mut call = match Call::decode(parts.uri.path(), &msg) {
            Some(Ok(c)) => c,
            Some(Err(s)) => return error(Owner::Upstream, s),
            None => {
                return self
                    .unknown(Request::from_parts(parts, Full::new(framed)))
                    .await
            }
        };
        let Route { owner, watched } = match self.owner(&mut call) {
            Ok(o) => o,
            Err(s) => return error(Owner::Upstream, s),
        };
        if owner == Owner::Local {
            return match self.local.call(call).await {
                Ok(reply) => (
                    grpc::ok_reply(HeaderMap::new(), &[&reply]),
                    Outcome {
                        owner,
                        code: Some(Code::Ok),
                    },
                ),
                Err(s) => error(owner, s),
            };
        }
        // Forgotten again once upstream has answered: a listing whose answer predates the
        // stop may have learned the pod back while the stop was on its way (see
        // `upstream_sandbox_ended`).
        let ends_upstream = match &call {
            Call::StopPodSandbox(cri::StopPodSandboxRequest { pod_sandbox_id, .. })
            | Call::RemovePodSandbox(cri::RemovePodSandboxRequest { pod_sandbox_id, .. }) => {
                Some(pod_sandbox_id.clone())
            }
            _ => None,
        };
        // Upstream gets the bytes kubelet sent, never `call` re-encoded: that would drop the
        // fields this proto does not know.
        let answer = match call {
            Call::Version(req) => self.version(parts, framed, &req).await,
            Call::RunPodSandbox(_) => self.run_upstream(parts, framed, watched).await,
            Call::Status(_) => self.status(parts, framed).await,
            Call::ListPodSandbox(req) => {
                self.merged(parts, framed, |l| {
                    answers::list_entries(&l.pod_sandboxes(req.filter.as_ref()))
                })
                .await
            }
            Call::ListContainers(req) => {
                self.merged(parts, framed, |l| {
                    answers::list_entries(&l.containers(req.filter.as_ref()))
                })
                .await
            }
            Call::ListPodSandboxStats(req) => {
                self.merged(parts, framed, |l| {
                    answers::list_entries(&l.pod_sandbox_stats(req.filter.as_ref()))
                })
                .await
            }
            Call::ListContainerStats(req) => {
                self.merged(parts, framed, |l| {
                    answers::list_entries(&l.container_stats(req.filter.as_ref()))
                })
                .await
            }
            Call::StopPodSandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id, ..
            })
            | Call::StopContainer(cri::StopContainerRequest {
                container_id: id, ..
            }) if self.idempotent_stop && route::is_full_id(&id) => {
                self.stop_upstream(parts, framed).await
            }
            _ => {
                self.forward(Request::from_parts(parts, Full::new(framed)))
                    .await
            }
        };
        if let Some(id) = ends_upstream {
            self.upstream_sandbox_ended(&id);
        }
        answer
    }

    /// An upstream sandbox (`id` or a prefix of it) is being or has been stopped or removed:
    /// it is no control pod any more, and a listing in flight must not bring it back. Called
    /// when the call is routed and again once upstream has answered it. Between the two, a
    /// listing may start and get its answer from before upstream handled the stop: either it
    /// applies that answer before the second call (which then forgets the pod) or after it
    /// (which recorded the id for the listing to skip); both happen under the listing's lock.
    fn upstream_sandbox_ended(&self, id: &str) {
        let mut listing = self
            .ended_while_listing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ended) = listing.as_mut() {
            ended.push(id.to_owned());
        }
        drop(listing);
        self.local.upstream_sandbox_down(id);
    }

    /// A method netready does not know: upstream's, as it came; with no upstream nobody
    /// answers it.
    async fn unknown<B>(&self, req: Request<B>) -> (Response<Body>, Outcome)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !self.upstream.is_configured() {
            return error(Owner::Upstream, unimplemented(req.uri().path()));
        }
        self.forward(req).await
    }

    /// A stop of a full id netready does not own, with upstream's `NOT_FOUND` answered as OK
    /// (see [`Router::idempotent_stop`]); every other reply is upstream's, unchanged. With no
    /// upstream nobody has the object: OK.
    async fn stop_upstream(
        &self,
        parts: http::request::Parts,
        framed: Bytes,
    ) -> (Response<Body>, Outcome) {
        if !self.upstream.is_configured() {
            tracing::debug!(
                "stop of an object nobody has, with no upstream: answered OK (serve.idempotent_stop)"
            );
            return ok(grpc::ok_reply(HeaderMap::new(), &[]));
        }
        let reply = match self.upstream.unary(parts, framed).await {
            Ok(r) => r,
            Err(s) => return error(Owner::Upstream, s),
        };
        if reply.status.code() != Code::NotFound {
            return replayed(reply);
        }
        tracing::debug!(
            upstream = %reply.status.message(),
            "stop of an object upstream does not know: answered OK (serve.idempotent_stop)"
        );
        // Both stop replies are empty messages; containerd's error headers are not kept, they
        // carry its grpc-status.
        ok(grpc::ok_reply(HeaderMap::new(), &[]))
    }

    /// Who answers the call, and whether a RunPodSandbox going upstream is a control pod whose
    /// IPs are to be learned. A prefix of netready's own sandbox or container is replaced in
    /// `call` by the full id, which is all netready's runtime looks up.
    fn owner(&self, call: &mut Call) -> Result<Route, Status> {
        let ends_sandbox = matches!(call, Call::StopPodSandbox(_) | Call::RemovePodSandbox(_));
        let mut watched = false;
        let local = match call.routing() {
            Routing::Merged => false,
            Routing::NewSandbox(config) => {
                let claimed = config.is_some_and(|c| self.local.claims(c));
                watched = !claimed && config.is_some_and(|c| self.local.watches(&c.labels));
                claimed
            }
            // With no upstream every pull is netready's, also one with no pod (crictl pull):
            // there is nobody else to pull it.
            Routing::Pull(config) => {
                !self.upstream.is_configured() || config.is_some_and(|c| self.local.claims(c))
            }
            Routing::Sandbox(id) => {
                if self.local.owns_sandbox(id) {
                    true
                } else if let Some(full) =
                    route::resolve_prefix(id, "sandbox", |p| self.local.sandboxes_with_prefix(p))?
                {
                    *id = full;
                    true
                } else {
                    if ends_sandbox {
                        self.upstream_sandbox_ended(id);
                    }
                    false
                }
            }
            Routing::Container(id) => {
                if self.local.owns_container(id) {
                    true
                } else if let Some(full) = route::resolve_prefix(id, "container", |p| {
                    self.local.containers_with_prefix(p)
                })? {
                    *id = full;
                    true
                } else {
                    false
                }
            }
            // Only without an upstream: with one, these were forwarded before decoding.
            Routing::Image => true,
        };
        let owner = if local { Owner::Local } else { Owner::Upstream };
        Ok(Route { owner, watched })
    }

    async fn forward<B>(&self, req: Request<B>) -> (Response<Body>, Outcome)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.upstream.forward(req).await {
            Ok(resp) => {
                let code = Status::from_header_map(resp.headers()).map(|s| s.code());
                (
                    resp,
                    Outcome {
                        owner: Owner::Upstream,
                        code,
                    },
                )
            }
            Err(s) => error(Owner::Upstream, s),
        }
    }

    /// RunPodSandbox that goes upstream; for a watched (control) pod, its IPs are learned from
    /// containerd's PodSandboxStatus once the sandbox is up.
    async fn run_upstream(
        &self,
        parts: http::request::Parts,
        framed: Bytes,
        watched: bool,
    ) -> (Response<Body>, Outcome) {
        if !watched {
            return self
                .forward(Request::from_parts(parts, Full::new(framed)))
                .await;
        }
        let reply = match self.upstream.unary(parts, framed).await {
            Ok(r) => r,
            Err(s) => return error(Owner::Upstream, s),
        };
        if reply.status.code() == Code::Ok {
            let id = grpc::unframe(&reply.body.data)
                .ok()
                .and_then(|m| cri::RunPodSandboxResponse::decode(m).ok())
                .map(|r| r.pod_sandbox_id);
            if let Some(id) = id {
                match ready_sandbox_ips(&self.upstream, &id).await {
                    Ok(Some(ips)) => self.local.upstream_sandbox_up(&id, ips),
                    Ok(None) => {}
                    Err(s) => tracing::warn!(sandbox = %id, error = %s, "control pod status"),
                }
            }
        }
        replayed(reply)
    }

    /// Learns the control pods the upstream runtime runs now (see [`upstream_control_pods`]),
    /// for a netready that could not ask at start-up; how many were learned.
    /// Calls may run meanwhile: a pod stopped or removed while the listing is in flight (by
    /// its id or a prefix of it) is not learned from its answer.
    pub async fn learn_upstream_control_pods(&self) -> Result<usize, Status> {
        let lock = || {
            self.ended_while_listing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        *lock() = Some(Vec::new());
        let listed = upstream_control_pods(&self.upstream, |l| self.local.watches(l)).await;
        // Stops record themselves under this lock before they forget: each is either seen
        // here, or forgets what this learns.
        let mut listing = lock();
        let ended = listing.take().unwrap_or_default();
        let pods = listed?;
        let mut n = 0;
        for (id, ips) in pods {
            if !ended
                .iter()
                .any(|e| !e.is_empty() && id.starts_with(e.as_str()))
            {
                self.local.upstream_sandbox_up(&id, ips);
                n += 1;
            }
        }
        drop(listing);
        Ok(n)
    }

    fn upstream_uri(&self) -> String {
        format!("unix://{}", self.upstream.socket().display())
    }

    async fn version(
        &self,
        parts: http::request::Parts,
        framed: Bytes,
        req: &cri::VersionRequest,
    ) -> (Response<Body>, Outcome) {
        match self.upstream.unary(parts, framed).await {
            Ok(reply) if reply.status.code() == Code::Ok => {
                let up = match grpc::unframe(&reply.body.data) {
                    Ok(m) => m,
                    Err(s) => return error(Owner::Upstream, s),
                };
                match answers::version_amendment(&up) {
                    Ok(extra) => ok(grpc::ok_reply(reply.headers, &[&up, &extra])),
                    Err(e) => error(Owner::Upstream, decode_error("upstream VersionResponse", e)),
                }
            }
            Ok(reply) => replayed(reply),
            Err(s) if s.code() == Code::Unavailable => {
                let body = answers::version_alone(&req.version, s.message());
                ok(grpc::ok_reply(HeaderMap::new(), &[&body]))
            }
            Err(s) => error(Owner::Upstream, s),
        }
    }

    async fn status(
        &self,
        parts: http::request::Parts,
        framed: Bytes,
    ) -> (Response<Body>, Outcome) {
        // netready's own conditions (discovery), appended like the amendment.
        let own = answers::status_conditions(self.local.conditions());
        if !self.upstream.is_configured() {
            return ok(grpc::ok_reply(
                HeaderMap::new(),
                &[&answers::status_netperf_only(), &own],
            ));
        }
        match self.upstream.unary(parts, framed).await {
            Ok(reply) if reply.status.code() == Code::Ok => {
                let up = match grpc::unframe(&reply.body.data) {
                    Ok(m) => m,
                    Err(s) => return error(Owner::Upstream, s),
                };
                let extra = answers::status_amendment(&self.upstream_uri());
                ok(grpc::ok_reply(reply.headers, &[&up, &extra, &own]))
            }
            Ok(reply) => replayed(reply),
            Err(s) if s.code() == Code::Unavailable => {
                let body = answers::status_alone(&self.upstream_uri(), s.message());
                ok(grpc::ok_reply(HeaderMap::new(), &[&body, &own]))
            }
            Err(s) => error(Owner::Upstream, s),
        }
    }

    /// Forwards a list call and appends netready's own entries to upstream's reply.
    ///
    /// When upstream is unreachable the call fails: a list with only netready's pods would make
    /// kubelet believe every upstream pod had vanished. With no upstream configured at all,
    /// netready's pods are the whole list.
    async fn merged<F>(
        &self,
        parts: http::request::Parts,
        framed: Bytes,
        local_entries: F,
    ) -> (Response<Body>, Outcome)
    where
        F: FnOnce(&dyn LocalRuntime) -> Vec<u8>,
    {
        if !self.upstream.is_configured() {
            let mine = local_entries(self.local.as_ref());
            return ok(grpc::ok_reply(HeaderMap::new(), &[&mine]));
        }
        match self.upstream.unary(parts, framed).await {
            Ok(reply) if reply.status.code() == Code::Ok => {
                let up = match grpc::unframe(&reply.body.data) {
                    Ok(m) => m,
                    Err(s) => return error(Owner::Upstream, s),
                };
                let extra = local_entries(self.local.as_ref());
                ok(grpc::ok_reply(reply.headers, &[&up, &extra]))
            }
            Ok(reply) => replayed(reply),
            Err(s) => error(Owner::Upstream, s),
        }
    }
}

/// What a gRPC server answers for a method it does not have (grpc-go's wording, as containerd
/// answers), for the calls nobody answers when there is no upstream: kubelet falls back on
/// `UNIMPLEMENTED` only (e.g. `RuntimeConfig`, asked for the cgroup driver since v1.31).
fn unimplemented(path: &str) -> Status {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) => {
            Status::unimplemented(format!("unknown method {method} for service {service}"))
        }
        None => Status::unimplemented(format!("unknown service {path}")),
    }
}

fn ok(resp: Response<Body>) -> (Response<Body>, Outcome) {
    (
        resp,
        Outcome {
            owner: Owner::Upstream,
            code: Some(Code::Ok),
        },
    )
}

fn replayed(reply: crate::upstream::UnaryReply) -> (Response<Body>, Outcome) {
    let code = reply.status.code();
    (
        grpc::replay(reply.headers, reply.body),
        Outcome {
            owner: Owner::Upstream,
            code: Some(code),
        },
    )
}

/// The ready sandboxes of the upstream runtime whose labels are `wanted`, with their IPs:
/// the control pods a restarted netready would otherwise not know until they are recreated
/// (they outlive it in containerd, and kubelet does not send their RunPodSandbox again).
/// Ready ones only, as kubelet relists; one gone or stopped since the list is skipped.
pub async fn upstream_control_pods(
    upstream: &Upstream,
    wanted: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) -> Result<Vec<(String, Vec<std::net::IpAddr>)>, Status> {
    if !upstream.is_configured() {
        return Ok(Vec::new());
    }
    let req = cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }),
    };
    let listed: cri::ListPodSandboxResponse = upstream.call("ListPodSandbox", &req).await?;
    let mut pods = Vec::new();
    for pod in listed.items.into_iter().filter(|p| wanted(&p.labels)) {
        match ready_sandbox_ips(upstream, &pod.id).await {
            Ok(Some(ips)) => pods.push((pod.id, ips)),
            Ok(None) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(s),
        }
    }
    Ok(pods)
}

/// The IPs of an upstream sandbox while it is ready; `None` once it is not.
async fn ready_sandbox_ips(
    upstream: &Upstream,
    id: &str,
) -> Result<Option<Vec<std::net::IpAddr>>, Status> {
    let req = cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.to_owned(),
        verbose: false,
    };
    let status: cri::PodSandboxStatusResponse = upstream.call("PodSandboxStatus", &req).await?;
    let Some(status) = status.status else {
        return Ok(None);
    };
    if status.state != cri::PodSandboxState::SandboxReady as i32 {
        return Ok(None);
    }
    let net = status.network.unwrap_or_default();
    Ok(Some(
        std::iter::once(net.ip)
            .chain(net.additional_ips.into_iter().map(|p| p.ip))
            .filter_map(|ip| ip.parse().ok())
            .collect(),
    ))
}

fn error(owner: Owner, status: Status) -> (Response<Body>, Outcome) {
    let code = status.code();
    (
        grpc::error_reply(status),
        Outcome {
            owner,
            code: Some(code),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::test_util::FakeLocal;

    fn router(upstream: &str, local: &Arc<FakeLocal>) -> Router {
        Router::new(
            Upstream::new(Path::new(upstream), Duration::from_secs(1)),
            local.clone(),
        )
    }

    async fn call(r: &Router, method: &str, msg: Vec<u8>) -> (Status, Bytes) {
        let req = Request::post(format!("http://localhost{method}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Full::new(grpc::frame(&[&msg])))
            .unwrap();
        let (resp, _) = r.handle(req).await;
        let (head, body) = resp.into_parts();
        let body = grpc::collect(body, 1 << 20).await.unwrap();
        let status = grpc::status_of(&head.headers, body.trailers.as_ref());
        (status, body.data)
    }

    fn sandbox(id: &str) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            ..Default::default()
        }
    }

    const STATUS: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";

    fn status_of(id: &str) -> Vec<u8> {
        cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn a_unique_prefix_of_an_own_sandbox_reaches_it_with_the_full_id() {
        let local = Arc::new(FakeLocal::default());
        local.insert_sandbox(sandbox("4f69c7c3bd0f51"));
        local.insert_sandbox(sandbox("4f6a00000000"));
        let r = router("", &local);
        let (st, data) = call(&r, STATUS, status_of("4f69c")).await;
        assert_eq!(st.code(), Code::Ok, "{st:?}");
        let reply = cri::PodSandboxStatusResponse::decode(grpc::unframe(&data).unwrap()).unwrap();
        assert_eq!(reply.status.unwrap().id, "4f69c7c3bd0f51");

        let (st, _) = call(&r, STATUS, status_of("4f6")).await;
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(
            st.message().contains("4f69c7c3bd0f51") && st.message().contains("4f6a00000000"),
            "the candidates are named: {}",
            st.message()
        );
        assert_eq!(local.calls(), ["PodSandboxStatus"]);

        // No own id starts with it, or it is empty: upstream's to resolve (here: none).
        for id in ["5", ""] {
            let (st, _) = call(&r, STATUS, status_of(id)).await;
            assert_eq!(st.code(), Code::Unavailable, "{id:?}: {st:?}");
        }
        assert_eq!(local.calls(), ["PodSandboxStatus"]);
    }

    #[tokio::test]
    async fn container_prefixes_resolve_among_own_containers() {
        let local = Arc::new(FakeLocal::default());
        for id in ["c0ffee01", "c0ffee02", "d00d"] {
            local.insert_container(cri::Container {
                id: id.into(),
                ..Default::default()
            });
        }
        let r = router("", &local);
        let stop = |id: &str| {
            cri::StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            }
            .encode_to_vec()
        };
        let (st, _) = call(&r, "/runtime.v1.RuntimeService/StopContainer", stop("d0")).await;
        // The fake answers no container call: reaching it is what counts.
        assert_eq!(st.code(), Code::Unimplemented, "{st:?}");
        assert_eq!(local.calls(), ["StopContainer"]);
        let (st, _) = call(
            &r,
            "/runtime.v1.RuntimeService/StopContainer",
            stop("c0ffee"),
        )
        .await;
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(
            st.message().contains("c0ffee01, c0ffee02"),
            "{}",
            st.message()
        );
    }

    #[tokio::test]
    async fn image_calls_are_netreadys_only_without_upstream() {
        let status = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            verbose: false,
        }
        .encode_to_vec();
        let pull = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let local = Arc::new(FakeLocal::default());
        let alone = router("", &local);
        let (st, _) = call(
            &alone,
            "/runtime.v1.ImageService/ImageStatus",
            status.clone(),
        )
        .await;
        assert_eq!(st.code(), Code::Unimplemented, "{st:?}");
        // A pull with no pod (crictl pull) has nobody else to go to.
        let (st, _) = call(&alone, "/runtime.v1.ImageService/PullImage", pull.clone()).await;
        assert_eq!(st.code(), Code::Ok, "{st:?}");
        assert_eq!(local.calls(), ["ImageStatus", "PullImage"]);

        let local = Arc::new(FakeLocal::default());
        let fronting = router("/nonexistent/containerd.sock", &local);
        for (method, msg) in [("ImageStatus", status), ("PullImage", pull)] {
            let (st, _) = call(
                &fronting,
                &format!("/runtime.v1.ImageService/{method}"),
                msg,
            )
            .await;
            assert_eq!(st.code(), Code::Unavailable, "{method}: {st:?}");
            assert!(st.message().contains("/nonexistent/containerd.sock"));
        }
        assert!(local.calls().is_empty());
    }

    #[tokio::test]
    async fn without_upstream_unknown_methods_are_unimplemented() {
        let local = Arc::new(FakeLocal::default());
        let (st, _) = call(
            &router("", &local),
            "/runtime.v1.RuntimeService/RuntimeConfig",
            vec![],
        )
        .await;
        assert_eq!(st.code(), Code::Unimplemented, "{st:?}");
        assert_eq!(
            st.message(),
            "unknown method RuntimeConfig for service runtime.v1.RuntimeService"
        );
        // With an upstream it is upstream's to answer (here: unreachable).
        let (st, _) = call(
            &router("/nonexistent/containerd.sock", &local),
            "/runtime.v1.RuntimeService/RuntimeConfig",
            vec![],
        )
        .await;
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        assert!(local.calls().is_empty());
    }

    #[tokio::test]
    async fn without_upstream_stopping_a_full_unknown_id_is_ok() {
        let stop = |id: &str| {
            cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }
            .encode_to_vec()
        };
        let full = "ab".repeat(32);
        let local = Arc::new(FakeLocal::default());
        let on = router("", &local);
        let off = router("", &local).idempotent_stop(false);
        const STOP: &str = "/runtime.v1.RuntimeService/StopPodSandbox";
        let (st, _) = call(&on, STOP, stop(&full)).await;
        assert_eq!(st.code(), Code::Ok, "{st:?}");
        // A short id (a typo?) and 64 characters that are no id are not reported stopped.
        for id in ["deadbeef", &"x".repeat(64)] {
            let (st, _) = call(&on, STOP, stop(id)).await;
            assert_eq!(st.code(), Code::Unavailable, "{id}: {st:?}");
        }
        let (st, _) = call(&off, STOP, stop(&full)).await;
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    }

    /// An upstream on a unix socket that records each request's path and body bytes as they
    /// arrived and answers OK with `replies[path]` (an empty message for other paths).
    async fn recording_upstream(
        socket: &Path,
        replies: Vec<(&'static str, Vec<u8>)>,
    ) -> Arc<std::sync::Mutex<Vec<(String, Bytes)>>> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let replies = Arc::new(replies);
        let rec = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rec, replies) = (rec.clone(), replies.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (rec, replies) = (rec.clone(), replies.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = grpc::collect(req.into_body(), 1 << 20).await?.data;
                        rec.lock().unwrap().push((path.clone(), body));
                        let reply = replies
                            .iter()
                            .find(|(p, _)| *p == path)
                            .map_or(&[][..], |(_, r)| r);
                        Ok::<_, Status>(grpc::ok_reply(HeaderMap::new(), &[reply]))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        received
    }

    /// An upstream running one ready control pod `id` (10.88.0.7) that answers calls of
    /// method `held` only once `release` is notified; `asked` is notified when one comes.
    async fn held_upstream(
        socket: &Path,
        id: &'static str,
        held: &'static str,
        asked: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
    ) {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (asked, release) = (asked.clone(), release.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (asked, release) = (asked.clone(), release.clone());
                    async move {
                        if req.uri().path() == held {
                            asked.notify_one();
                            release.notified().await;
                        }
                        let reply = match req.uri().path() {
                            "/runtime.v1.RuntimeService/ListPodSandbox" => {
                                cri::ListPodSandboxResponse {
                                    items: vec![cri::PodSandbox {
                                        id: id.into(),
                                        state: cri::PodSandboxState::SandboxReady as i32,
                                        labels: [("role".to_owned(), "control".to_owned())].into(),
                                        ..Default::default()
                                    }],
                                }
                                .encode_to_vec()
                            }
                            "/runtime.v1.RuntimeService/PodSandboxStatus" => {
                                cri::PodSandboxStatusResponse {
                                    status: Some(cri::PodSandboxStatus {
                                        id: id.into(),
                                        state: cri::PodSandboxState::SandboxReady as i32,
                                        network: Some(cri::PodSandboxNetworkStatus {
                                            ip: "10.88.0.7".into(),
                                            ..Default::default()
                                        }),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }
                                .encode_to_vec()
                            }
                            _ => Vec::new(),
                        };
                        Ok::<_, Status>(grpc::ok_reply(HeaderMap::new(), &[&reply]))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
    }

    /// A control pod stopped (here by a prefix of its id, as an operator types it) while a
    /// listing of the upstream is in flight is not learned from the listing's answer; with no
    /// stop it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_pod_stopped_while_the_upstream_is_listed_is_not_learned() {
        for stop_meanwhile in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("containerd.sock");
            let (asked, release) = (
                Arc::new(tokio::sync::Notify::new()),
                Arc::new(tokio::sync::Notify::new()),
            );
            held_upstream(&socket, "ctl-1", STATUS, asked.clone(), release.clone()).await;
            let local = Arc::new(FakeLocal::default());
            let r = router(socket.to_str().unwrap(), &local);
            let learning = tokio::spawn({
                let r = r.clone();
                async move { r.learn_upstream_control_pods().await }
            });
            asked.notified().await;
            if stop_meanwhile {
                let req = cri::StopPodSandboxRequest {
                    pod_sandbox_id: "ctl".into(),
                };
                let (st, _) = call(
                    &r,
                    "/runtime.v1.RuntimeService/StopPodSandbox",
                    req.encode_to_vec(),
                )
                .await;
                assert_eq!(st.code(), Code::Ok, "{st:?}");
            }
            release.notify_one();
            let learned = learning.await.unwrap().unwrap();
            let expected: Vec<String> = if stop_meanwhile {
                vec![]
            } else {
                vec!["ctl-1".into()]
            };
            assert_eq!((learned, local.learned()), (expected.len(), expected));
        }
    }

    /// A stop routed before a listing starts but handled by upstream after the listing's
    /// answer: the listing learns the pod back, and the stop's answer must forget it again.
    /// Both ways a stop goes upstream: forwarded as it came (an id that is not a full one) and
    /// through the idempotent stop (a full id, whose NOT_FOUND would be answered OK).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_pod_whose_stop_upstream_answers_after_a_listing_is_forgotten() {
        const FULL: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
        for id in ["ctl-1", FULL] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("containerd.sock");
            let (asked, release) = (
                Arc::new(tokio::sync::Notify::new()),
                Arc::new(tokio::sync::Notify::new()),
            );
            let stop = "/runtime.v1.RuntimeService/StopPodSandbox";
            held_upstream(&socket, id, stop, asked.clone(), release.clone()).await;
            let local = Arc::new(FakeLocal::default());
            let r = router(socket.to_str().unwrap(), &local);
            let stopping = tokio::spawn({
                let r = r.clone();
                let req = cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.into(),
                };
                async move { call(&r, stop, req.encode_to_vec()).await.0 }
            });
            asked.notified().await;
            assert_eq!(r.learn_upstream_control_pods().await.unwrap(), 1, "{id}");
            assert_eq!(local.learned(), vec![id.to_owned()], "listed ready");
            release.notify_one();
            let st = stopping.await.unwrap();
            assert_eq!(st.code(), Code::Ok, "{st:?}");
            assert!(local.learned().is_empty(), "{id}: {:?}", local.learned());
        }
    }

    /// Appends field 99 (varint 1), which no CRI request has.
    fn with_unknown_field(mut msg: Vec<u8>) -> Vec<u8> {
        msg.extend_from_slice(&[0x98, 0x06, 0x01]);
        msg
    }

    #[tokio::test]
    async fn upstream_gets_the_bytes_kubelet_sent_and_merged_lists_use_the_decoded_filter() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let upstream_sandbox = cri::PodSandbox {
            id: "up-1".into(),
            ..Default::default()
        };
        let received = recording_upstream(
            &socket,
            vec![
                (
                    "/runtime.v1.RuntimeService/ListPodSandbox",
                    cri::ListPodSandboxResponse {
                        items: vec![upstream_sandbox.clone()],
                    }
                    .encode_to_vec(),
                ),
                (
                    "/runtime.v1.RuntimeService/RunPodSandbox",
                    cri::RunPodSandboxResponse {
                        pod_sandbox_id: "up-2".into(),
                    }
                    .encode_to_vec(),
                ),
            ],
        )
        .await;
        let local = Arc::new(FakeLocal::default());
        local.insert_sandbox(sandbox("mine-1"));
        local.insert_sandbox(sandbox("mine-2"));
        let r = router(socket.to_str().unwrap(), &local);

        let list = with_unknown_field(
            cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: "mine-2".into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        );
        let run = with_unknown_field(
            cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    hostname: "not-netperf".into(),
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            }
            .encode_to_vec(),
        );
        // A prefix of none of netready's ids is upstream's to resolve, as it was sent.
        let status = with_unknown_field(status_of("4f69c"));
        let sent = [
            ("/runtime.v1.RuntimeService/ListPodSandbox", list),
            ("/runtime.v1.RuntimeService/RunPodSandbox", run),
            (STATUS, status),
        ];
        let mut replies = Vec::new();
        for (path, msg) in &sent {
            let (st, data) = call(&r, path, msg.clone()).await;
            assert_eq!(st.code(), Code::Ok, "{path}: {st:?}");
            replies.push(data);
        }
        let received = received.lock().unwrap().clone();
        let expected: Vec<(String, Bytes)> = sent
            .iter()
            .map(|(p, m)| (p.to_string(), grpc::frame(&[m])))
            .collect();
        assert_eq!(received, expected);
        assert!(local.calls().is_empty(), "{:?}", local.calls());

        let merged =
            cri::ListPodSandboxResponse::decode(grpc::unframe(&replies[0]).unwrap()).unwrap();
        assert_eq!(merged.items, [upstream_sandbox, sandbox("mine-2")]);
    }

    #[tokio::test]
    async fn a_request_that_does_not_decode_is_refused_before_anyone_sees_it() {
        let local = Arc::new(FakeLocal::default());
        let (st, _) = call(
            &router("", &local),
            "/runtime.v1.RuntimeService/RunPodSandbox",
            vec![0x0a, 0x09, 0x01],
        )
        .await;
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(
            st.message().starts_with("decoding RunPodSandboxRequest: "),
            "{}",
            st.message()
        );
        assert!(local.calls().is_empty());
    }

    #[tokio::test]
    async fn without_upstream_version_answers_the_version_asked_for() {
        let local = Arc::new(FakeLocal::default());
        let req = cri::VersionRequest {
            version: "0.1.0-kubelet".into(),
        };
        let (st, data) = call(
            &router("", &local),
            "/runtime.v1.RuntimeService/Version",
            req.encode_to_vec(),
        )
        .await;
        assert_eq!(st.code(), Code::Ok, "{st:?}");
        let reply = cri::VersionResponse::decode(grpc::unframe(&data).unwrap()).unwrap();
        assert_eq!(reply.version, "0.1.0-kubelet");
        assert_eq!(reply.runtime_name, answers::RUNTIME_NAME);
    }
}
