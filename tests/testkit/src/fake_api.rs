//! A fake kube-apiserver for discovery tests: it serves what a real kube-apiserver v1.28.4
//! sent a node identity (`tests/fixtures/apiserver-1.28/*.http`, recorded) and variations
//! built from those bytes (other IPs and nodes, an ERROR 410 mid-watch, a 403, dropped
//! connections, a slow answer), so kube-rs meets what the real server sends. No API server
//! runs here: this is the one place a fake stands in, and it keeps the real one's semantics
//! for what netready uses (list then watch from the list's resourceVersion, one JSON event
//! per line, the stream closed at its timeout, Status bodies on errors).
//!
//! Plain HTTP on 127.0.0.1: the kubeconfig it writes names `http://127.0.0.1:<port>` and a
//! bearer token file, so a rotated token is a rotated credential the fake can see.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

/// A response as recorded: status, content type, body.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The HTTP status.
    pub status: u16,
    /// The body, as sent.
    pub body: Bytes,
}

/// `tests/fixtures/apiserver-1.28`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/apiserver-1.28")
}

/// Reads a recorded `.http` file: status line, headers, a blank line, the body.
pub fn recorded(name: &str) -> Recorded {
    let raw = std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Recorded as sent: CRLF after the status line and headers.
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{name}: no blank line after the headers"));
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no status"));
    Recorded {
        status,
        body: Bytes::copy_from_slice(&raw[split + 4..]),
    }
}

/// The recorded watch events of `name`, one JSON value per line.
pub fn recorded_events(name: &str) -> Vec<Value> {
    String::from_utf8_lossy(&recorded(name).body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One endpoint of a control pod in a built slice.
#[derive(Debug, Clone)]
pub struct Ep {
    /// Its address.
    pub ip: String,
    /// `nodeName`; `None` leaves the field out.
    pub node: Option<String>,
    /// `conditions.ready`; `None` leaves it out (which means ready).
    pub ready: Option<bool>,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Ep {
    /// A ready endpoint on `node`.
    pub fn ready(ip: &str, node: &str) -> Self {
        Ep {
            ip: ip.into(),
            node: Some(node.into()),
            ready: Some(true),
            terminating: false,
        }
    }
}

/// The recorded EndpointSlice with `eps` as its endpoints and `rv` as its resourceVersion.
pub fn slice_with(eps: &[Ep], rv: u64) -> Value {
    let list: Value = serde_json::from_slice(&recorded("eps-list.http").body).unwrap();
    let mut slice = list["items"][0].clone();
    let template = slice["endpoints"][0].clone();
    slice["metadata"]["resourceVersion"] = rv.to_string().into();
    slice["endpoints"] = eps
        .iter()
        .map(|e| {
            let mut t = template.clone();
            t["addresses"] = serde_json::json!([e.ip]);
            match &e.node {
                Some(n) => t["nodeName"] = n.clone().into(),
                None => {
                    t.as_object_mut().unwrap().remove("nodeName");
                }
            }
            let c = t["conditions"].as_object_mut().unwrap();
            match e.ready {
                Some(r) => {
                    c.insert("ready".into(), r.into());
                    c.insert("serving".into(), r.into());
                }
                None => {
                    c.remove("ready");
                }
            }
            c.insert("terminating".into(), e.terminating.into());
            t
        })
        .collect();
    slice
}

/// The recorded EndpointSliceList holding `slices`, at list resourceVersion `rv`.
pub fn slice_list(slices: Vec<Value>, rv: u64) -> Bytes {
    let mut list: Value = serde_json::from_slice(&recorded("eps-list.http").body).unwrap();
    list["metadata"]["resourceVersion"] = rv.to_string().into();
    list["items"] = Value::Array(slices);
    Bytes::from(serde_json::to_vec(&list).unwrap())
}

/// The recorded ServiceList with the Service's ClusterIP set to `ip`.
pub fn service_list(ip: &str, rv: u64) -> Bytes {
    let mut list: Value = serde_json::from_slice(&recorded("svc-list.http").body).unwrap();
    list["metadata"]["resourceVersion"] = rv.to_string().into();
    list["items"][0]["spec"]["clusterIP"] = ip.into();
    list["items"][0]["spec"]["clusterIPs"] = serde_json::json!([ip]);
    Bytes::from(serde_json::to_vec(&list).unwrap())
}

/// A watch event line.
pub fn event(kind: &str, object: Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&serde_json::json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// The ERROR event a watch gets when its resourceVersion is too old (the recorded 410
/// Status, as the watch cache sends it in-stream).
pub fn expired_event() -> Bytes {
    let status: Value = serde_json::from_slice(&recorded("eps-list-410.http").body).unwrap();
    event("ERROR", status)
}

/// Which collection a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `/api/v1/namespaces/<ns>/services`.
    Services,
    /// `/apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices`.
    EndpointSlices,
}

/// List or watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// A list (no `watch` parameter).
    List,
    /// `watch=true`.
    Watch,
}

/// What the fake answers one request with.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole response (a list, or an error Status).
    Body {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: Bytes,
        /// Wait this long before answering (a slow server).
        delay: Duration,
    },
    /// A watch stream: each line after its delay, then the stream ends (`close`) as the real
    /// server ends it at `timeoutSeconds`, or stays open with no events.
    Watch {
        /// Event lines and the pause before each.
        lines: Vec<(Duration, Bytes)>,
        /// Close after the last line instead of staying open.
        close: bool,
    },
}

impl Reply {
    /// A 200 with `body`, at once.
    pub fn ok(body: Bytes) -> Self {
        Reply::Body {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }

    /// A recorded response, at once.
    pub fn recorded(name: &str) -> Self {
        let r = recorded(name);
        Reply::Body {
            status: r.status,
            body: r.body,
            delay: Duration::ZERO,
        }
    }

    /// A watch that sends `lines` `gap` apart and stays open.
    pub fn watch(lines: Vec<Bytes>, gap: Duration) -> Self {
        Reply::Watch {
            lines: lines.into_iter().map(|l| (gap, l)).collect(),
            close: false,
        }
    }
}

#[derive(Default)]
struct State {
    script: HashMap<(Resource, Verb), VecDeque<Reply>>,
    fallback: HashMap<(Resource, Verb), Reply>,
    requests: Vec<Request>,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which collection.
    pub resource: Resource,
    /// List or watch.
    pub verb: Verb,
    /// The query string, decoded.
    pub query: String,
    /// The `Authorization` header.
    pub authorization: String,
}

/// The fake API server; it stops (dropping every connection) when dropped or [`stop`]ped.
///
/// [`stop`]: FakeApi::stop
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").field("addr", &self.addr).finish()
    }
}

impl FakeApi {
    /// Listens on 127.0.0.1 (a free port). Until told otherwise, lists answer with the
    /// recorded ones and watches stay open with no events.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0")?).await
    }

    /// As [`FakeApi::start`], on 127.0.0.1 inside `ns` (a node's): what a netready running in
    /// that node reaches. A socket made inside a namespace stays there.
    pub async fn start_in(ns: &netready_netns::Netns) -> anyhow::Result<Self> {
        let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
        Self::start_on(listener).await
    }

    async fn start_on(listener: std::net::TcpListener) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let mut me = FakeApi {
            addr,
            state: Arc::new(Mutex::new(State::default())),
            task: None,
            conns: Arc::default(),
        };
        me.fallback(
            Resource::Services,
            Verb::List,
            Reply::recorded("svc-list.http"),
        );
        me.fallback(
            Resource::EndpointSlices,
            Verb::List,
            Reply::recorded("eps-list.http"),
        );
        for r in [Resource::Services, Resource::EndpointSlices] {
            me.fallback(r, Verb::Watch, Reply::watch(Vec::new(), Duration::ZERO));
        }
        me.listen(listener);
        Ok(me)
    }

    fn listen(&mut self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let conns = self.conns.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let svc = hyper::service::service_fn(move |req| answer(state.clone(), req));
                let conn = tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        }));
    }

    /// Stops listening and drops every connection: the API "goes away".
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Listens again on the same port: the API "comes back".
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let addr = self.addr;
        let listener = rebind(move || std::net::TcpListener::bind(addr)).await?;
        self.listen(listener);
        Ok(())
    }

    /// As [`FakeApi::restart`], for a server started with [`FakeApi::start_in`] `ns`.
    pub async fn restart_in(&mut self, ns: &netready_netns::Netns) -> anyhow::Result<()> {
        self.stop();
        let addr = self.addr;
        let listener = rebind(|| {
            ns.run(move || std::net::TcpListener::bind(addr))
                .map_err(std::io::Error::other)?
        })
        .await?;
        self.listen(listener);
        Ok(())
    }

    /// The next request for `(resource, verb)` gets `reply` (in the order pushed).
    pub fn push(&self, resource: Resource, verb: Verb, reply: Reply) {
        let mut s = self.state.lock().unwrap();
        s.script
            .entry((resource, verb))
            .or_default()
            .push_back(reply);
    }

    /// What `(resource, verb)` gets once its pushed replies are used up.
    pub fn fallback(&self, resource: Resource, verb: Verb, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .fallback
            .insert((resource, verb), reply);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (user `system:node:<node>`, a bearer token read
    /// from `<dir>/token`, which it also writes) and returns its path.
    pub fn kubeconfig(&self, dir: &Path, node: &str, token: &str) -> anyhow::Result<PathBuf> {
        std::fs::write(dir.join("token"), token)?;
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 users:\n- name: system:node:{node}\n  user:\n    tokenFile: token\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: system:node:{node}\n\
                 current-context: fake\n",
                self.url()
            ),
        )?;
        Ok(path)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds the stopped server's port again: the aborted listener task drops its socket
/// asynchronously, so the port may be busy for a moment.
async fn rebind(
    bind: impl Fn() -> std::io::Result<std::net::TcpListener>,
) -> anyhow::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match bind() {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(tokio::net::TcpListener::from_std(l)?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    state: Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req
        .uri()
        .query()
        .map(|q| q.replace("%3D", "=").replace("%2F", "/"))
        .unwrap_or_default();
    let resource = if path.ends_with("/services") {
        Some(Resource::Services)
    } else if path.ends_with("/endpointslices") {
        Some(Resource::EndpointSlices)
    } else {
        None
    };
    let Some(resource) = resource else {
        let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
        return Ok(response(404, Bytes::from_static(status.as_bytes())));
    };
    let verb = if query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
    {
        Verb::Watch
    } else {
        Verb::List
    };
    let reply = {
        let mut s = state.lock().unwrap();
        s.requests.push(Request {
            resource,
            verb,
            query,
            authorization: req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        });
        match s
            .script
            .get_mut(&(resource, verb))
            .and_then(VecDeque::pop_front)
        {
            Some(r) => r,
            None => s.fallback[&(resource, verb)].clone(),
        }
    };
    Ok(match reply {
        Reply::Body {
            status,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            response(status, body)
        }
        Reply::Watch { lines, close } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for (gap, line) in lines {
                    tokio::time::sleep(gap).await;
                    if tx.send(Ok(Frame::data(line))).await.is_err() {
                        return;
                    }
                }
                if !close {
                    tx.closed().await;
                }
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            let mut resp = hyper::Response::new(BodyExt::boxed(body));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
    })
}

fn response(status: u16, body: Bytes) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(BodyExt::boxed(Full::new(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
