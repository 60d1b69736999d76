//! Control targets of netready's checks from the Kubernetes API: one control Service and its
//! EndpointSlices, watched once per node.
//!
//! Shaped for 5,000 nodes, as kube-proxy and CoreDNS are: one watch per resource per node
//! (the Service by field selector on its name, its slices by `kubernetes.io/service-name`), the
//! initial lists served from the API server's watch cache (`resourceVersion=0`, as informers
//! list), backoff with jitter after errors, no polling and no per-pod API call. Memory is the
//! watched objects plus one [`Snapshot`]. The Service's endpoints are a spread set of control
//! pods (a Deployment of ~100–250 replicas), not one per node: every endpoint change is sent to
//! every watcher.
//!
//! ```no_run
//! # async fn f() -> Result<(), netready_discovery::Error> {
//! let cfg = netready_discovery::DiscoveryConfig { enabled: true, ..Default::default() };
//! let discovery = netready_discovery::Discovery::start(cfg, None)?;
//! let snap = discovery.snapshot();
//! println!("synced {} service {:?}", snap.synced, snap.service);
//! # Ok(()) }
//! ```

mod client;
mod config;
mod error;
pub mod metrics;
mod targets;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use metrics::{DiscoveryMetrics, TargetKindLabels, WatchEventLabels};
use netready_metrics::Metrics;
use tokio::sync::watch;

pub use config::DiscoveryConfig;
pub use error::{Error, Result};
pub use targets::{ByNode, ServiceTarget, Snapshot};

/// How often the credential files are looked at (a `stat` each, no API traffic): kubelet
/// rotates its client certificate long before it expires, so a minute late is harmless.
const CREDENTIAL_CHECK: Duration = Duration::from_secs(30);

/// Reconnection backoff after an error: doubling, with jitter so that thousands of nodes do
/// not retry in step after an API server restart.
const RETRY_MIN: Duration = Duration::from_millis(800);
const RETRY_MAX: Duration = Duration::from_secs(30);

fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    // 50% to 100% of `d`.
    d / 2 + d.mul_f64((h.finish() % 1000) as f64 / 2000.0)
}

/// Why one connection's watches ended.
enum Ended {
    /// The credential files changed.
    CredentialsChanged,
    /// A 410: the resourceVersion is gone from the watch cache.
    Expired,
    /// An error: unreachable, refused, or a broken stream; whether this connection had
    /// listed both resources first (then the backoff starts over).
    Failed(String, bool),
}

/// The API server's Status in a watcher error, if it answered with one.
fn api_status(e: &watcher::Error) -> Option<&kube::core::Status> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s),
        _ => None,
    }
}

fn is_expired(e: &watcher::Error) -> bool {
    api_status(e).is_some_and(|s| s.code == 410)
}

/// The running discovery: a task that keeps a [`Snapshot`] current.
#[derive(Debug)]
pub struct Discovery {
    rx: watch::Receiver<Arc<Snapshot>>,
    node: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Discovery ===

impl Discovery {
    /// Starts watching (in a task on the current runtime). Fails only on a configuration that
    /// can never work; an unreachable API is retried, and meanwhile the snapshot is not synced.
    pub fn start(cfg: DiscoveryConfig, metrics: Option<Arc<Metrics>>) -> Result<Self> {
        Self::start_checking_credentials(cfg, metrics, CREDENTIAL_CHECK)
    }

    /// As [`Discovery::start`], looking at the credential files every `every` (tests rotate
    /// a credential and should not wait half a minute).
    pub fn start_checking_credentials(
        cfg: DiscoveryConfig,
        metrics: Option<Arc<Metrics>>,
        every: Duration,
    ) -> Result<Self> {
        let (ns, name) = cfg.service_ref().map_err(Error::Invalid)?;
        let (ns, name) = (ns.to_owned(), name.to_owned());
        let node = cfg.resolved_node_name();
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let watched = Watched {
            cfg,
            ns,
            name,
            node: node.clone(),
            tx,
            metrics: metrics.map(|m| DiscoveryMetrics::register(&m)),
            every,
        };
        let task = tokio::spawn(watched.run());
        Ok(Discovery { rx, node, task })
    }

    /// What is known now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// The node name endpoints are compared with.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A receiver that sees every new snapshot (tests and status wait on it).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Service,
    EndpointSlice,
}

impl Resource {
    fn label(self) -> &'static str {
        match self {
            Resource::Service => "service",
            Resource::EndpointSlice => "endpointslice",
        }
    }
}

struct Watched {
    cfg: DiscoveryConfig,
    ns: String,
    name: String,
    node: String,
    tx: watch::Sender<Arc<Snapshot>>,
    metrics: Option<Arc<DiscoveryMetrics>>,
    every: Duration,
}

type Events = std::pin::Pin<
    Box<dyn Stream<Item = (Resource, Result<(), watcher::Error>, &'static str)> + Send>,
>;

/// One resource's watch, kept in `writer`'s store, as (resource, outcome, event type).
fn events<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    resource: Resource,
) -> impl Stream<Item = (Resource, Result<(), watcher::Error>, &'static str)> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .map(move |r| {
            let t = r.as_ref().map(event_type).unwrap_or("error");
            (resource, r.map(drop), t)
        })
}

fn event_type<K>(e: &watcher::Event<K>) -> &'static str {
    match e {
        watcher::Event::Init => "init",
        watcher::Event::InitApply(_) => "init_apply",
        watcher::Event::InitDone => "init_done",
        watcher::Event::Apply(_) => "apply",
        watcher::Event::Delete(_) => "delete",
    }
}

impl Watched {
    async fn run(self) {
        let mut retry = RETRY_MIN;
        loop {
            // Stamped before the client reads the files: a rotation in between is seen.
            let stamp = client::credentials_stamp(&self.cfg);
            let ended = match client::build(&self.cfg).await {
                Ok(client) => self.watch(client, stamp).await,
                Err(e) => Ended::Failed(e.to_string(), false),
            };
            match ended {
                Ended::CredentialsChanged => {
                    tracing::info!(
                        "discovery: credentials changed, reconnecting with the new ones"
                    );
                    retry = RETRY_MIN;
                }
                // The watch cache dropped our resourceVersion: list again at once (from the
                // cache), as informers do. Not an outage.
                Ended::Expired => {
                    tracing::debug!("discovery: resourceVersion expired (410), relisting");
                }
                Ended::Failed(error, had_synced) => {
                    if had_synced {
                        retry = RETRY_MIN;
                    }
                    self.unreachable(&error);
                    tokio::time::sleep(jittered(retry)).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Watches until the credentials change or the first error. Every (re)connection lists
    /// both resources again (from the watch cache), so coming back is an event even when
    /// nothing changed meanwhile: kube-rs resumes a broken watch silently, and a flag set on
    /// its error would never clear. The last snapshot stays published until both are listed.
    async fn watch(&self, client: kube::Client, stamp: client::Stamp) -> Ended {
        let (services, svc_writer) = reflector::store::<Service>();
        // Lists with resourceVersion=0 are served from the API server's watch cache, as
        // informers list; kube-rs sends rv=0 only without a page size (the cache ignores one).
        let listing = |c: watcher::Config| watcher::Config {
            page_size: None,
            ..c.any_semantic()
        };
        let (slices, eps_writer) = reflector::store::<EndpointSlice>();
        let svc = events(
            Api::<Service>::namespaced(client.clone(), &self.ns),
            listing(watcher::Config::default().fields(&format!("metadata.name={}", self.name))),
            svc_writer,
            Resource::Service,
        );
        let eps = events(
            Api::<EndpointSlice>::namespaced(client, &self.ns),
            listing(
                watcher::Config::default()
                    .labels(&format!("kubernetes.io/service-name={}", self.name)),
            ),
            eps_writer,
            Resource::EndpointSlice,
        );
        let mut events: Events = Box::pin(futures::stream::select(svc, eps));
        let mut listed = (false, false);
        let mut check = tokio::time::interval(self.every);
        check.tick().await;
        loop {
            tokio::select! {
                next = events.next() => {
                    let Some((resource, result, kind)) = next else {
                        return Ended::Failed("watch streams ended".into(), listed == (true, true));
                    };
                    if let Some(m) = &self.metrics {
                        m.events
                            .get_or_create(&WatchEventLabels { resource: resource.label(), r#type: kind })
                            .inc();
                    }
                    match result {
                        Ok(()) => {
                            if kind == "init_done" {
                                match resource {
                                    Resource::Service => listed.0 = true,
                                    Resource::EndpointSlice => listed.1 = true,
                                }
                            }
                            if listed == (true, true) && kind != "init" && kind != "init_apply" {
                                self.publish(&services, &slices);
                            }
                        }
                        Err(e) if is_expired(&e) => return Ended::Expired,
                        Err(e) => {
                            return Ended::Failed(
                                describe(&e, resource, &self.ns),
                                listed == (true, true),
                            )
                        }
                    }
                }
                _ = check.tick() => {
                    if client::credentials_stamp(&self.cfg) != stamp {
                        return Ended::CredentialsChanged;
                    }
                }
            }
        }
    }

    fn publish(&self, services: &Store<Service>, slices: &Store<EndpointSlice>) {
        let snap = Snapshot {
            synced: true,
            unreachable_since: None,
            last_error: None,
            endpoints: targets::endpoints(&slices.state()),
            service: targets::service_target(&services.state(), &self.name),
        };
        let before = self.tx.borrow().clone();
        if before.unreachable_since.is_some() {
            tracing::info!("discovery: the API server answers again");
        } else if !before.synced {
            tracing::info!(
                other_node_pods = snap.other_node_pods(&self.node),
                service = ?snap.service,
                "discovery: synced"
            );
        }
        if let Some(m) = &self.metrics {
            m.synced.set(1);
            m.unreachable_since.set(0);
            let pods = i64::try_from(snap.other_node_pods(&self.node)).unwrap_or(i64::MAX);
            m.targets
                .get_or_create(&TargetKindLabels {
                    kind: "other_node_pod",
                })
                .set(pods);
            m.targets
                .get_or_create(&TargetKindLabels { kind: "service" })
                .set(i64::from(snap.service.is_some()));
        }
        self.tx.send_replace(Arc::new(snap));
    }

    /// The API is unreachable or refusing: keep the last known targets and say since when.
    fn unreachable(&self, error: &str) {
        let mut snap = (*self.tx.borrow().clone()).clone();
        let new = snap.unreachable_since.is_none() || snap.last_error.as_deref() != Some(error);
        let since = *snap.unreachable_since.get_or_insert_with(SystemTime::now);
        let secs = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let what = if snap.synced {
            "keeping the last known targets"
        } else {
            "no targets from the API yet"
        };
        // Every node of a large cluster logs this: once per outage (and per new error), the
        // retries at debug.
        if new {
            tracing::warn!(since = %humantime_since(since), synced = snap.synced, "discovery: {error}; {what}");
        } else {
            tracing::debug!(since = %humantime_since(since), "discovery: {error}; {what}");
        }
        snap.last_error = Some(error.to_owned());
        if let Some(m) = &self.metrics {
            m.unreachable_since
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
        self.tx.send_replace(Arc::new(snap));
    }
}

fn humantime_since(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    format!("{secs} s ago")
}

/// A watcher error as an operator needs it: a refusal names the permission to grant.
fn describe(e: &watcher::Error, resource: Resource, ns: &str) -> String {
    let what = match resource {
        Resource::Service => "services",
        Resource::EndpointSlice => "endpointslices",
    };
    match api_status(e) {
        Some(s) if s.code == 403 => format!(
            "the API server refused to list/watch {what} in namespace {ns}: {}; grant get, list and watch on {what} in {ns} to the node (for endpointslices: the Role and RoleBinding to group system:nodes in kubemark-templates/netperf-control.yaml)",
            s.message
        ),
        Some(s) if s.code == 401 => format!(
            "the API server did not accept the node's credentials for {what}: {}",
            s.message
        ),
        _ => format!("{what}: {e}"),
    }
}
