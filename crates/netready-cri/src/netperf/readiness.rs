//! Network readiness of a netperf pod: after its ADD succeeds, one task per pod runs the
//! checks from inside the pod's netns, then the traffic when it is wanted. When every required
//! check has passed the pod is network-ready; when the deadline passes first it is not, with
//! the failing check and its last error as the reason.
//!
//! The task's conclusions are [`Verdict`]s, and [`NetperfRuntime::apply`] is the one place
//! that applies them: the pod's record written, then the sandbox record, the container log and
//! the metrics. A stop reaches the task as a signal and the task applies that too, so a pod
//! has one writer of its verdict and one record.

use std::time::{Duration, Instant};

use super::metrics::CheckLabels;
use netready_cni::Stamp;
use netready_netns::Netns;
use netready_probe::plan::{self, CheckOutcome};
use tokio::sync::oneshot;

use super::state::{ContainerPhase, Readiness, SandboxPhase, SandboxRecord, TrafficOutcome};
use super::{log, traffic, NetperfRuntime};

/// Starts an exec probe's answer once a pod's checks ended without network ready.
pub const FINAL_VERDICT: &str = "network checks ended";

/// Verdict from outcomes: ready at the latest required pass, or the first required failure.
fn verdict(origin: Stamp, checks: &[CheckOutcome]) -> (Option<Stamp>, Option<String>) {
    let mut latest = Duration::ZERO;
    for c in checks.iter().filter(|c| c.required) {
        match c.passed_after {
            Some(d) => latest = latest.max(d),
            None => {
                let why = c
                    .skipped
                    .clone()
                    .map(|s| format!("skipped: {s}"))
                    .or_else(|| c.last_error.clone())
                    .unwrap_or_else(|| "did not pass".into());
                return (None, Some(format!("{}: {why}", c.check.as_str())));
            }
        }
    }
    let ns = latest.as_nanos() as u64;
    (
        Some(Stamp {
            mono_ns: origin.mono_ns + ns,
            wall_ns: origin.wall_ns + ns,
        }),
        None,
    )
}

/// Log lines for the checks' outcomes.
pub(super) fn story(r: &Readiness) -> Vec<String> {
    if r.finished.is_none() {
        return vec!["netready: reachability checks running".into()];
    }
    let mut lines = Vec::new();
    for c in &r.checks {
        let req = if c.required { "required" } else { "optional" };
        let line = match (&c.skipped, c.passed_after) {
            (Some(s), _) => format!("netready: check {} ({req}): skipped: {s}", c.check.as_str()),
            (None, Some(after)) => {
                let rtts: Vec<String> = c
                    .rtts
                    .iter()
                    .map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
                    .collect();
                let http: Vec<String> = c
                    .http
                    .iter()
                    .map(|h| {
                        format!(
                            "{} connect {:.3} ms first byte {:.3} ms",
                            h.status,
                            h.connect.as_secs_f64() * 1e3,
                            h.first_byte.as_secs_f64() * 1e3
                        )
                    })
                    .collect();
                let mut l = format!(
                    "netready: check {} ({req}): passed {:.1} ms after ADD; targets {}; probes {}",
                    c.check.as_str(),
                    after.as_secs_f64() * 1e3,
                    c.targets.join(" "),
                    c.probes
                );
                if !rtts.is_empty() {
                    l.push_str(&format!("; rtt ms {}", rtts.join(" ")));
                }
                if !http.is_empty() {
                    l.push_str(&format!("; http {}", http.join(", ")));
                }
                l
            }
            (None, None) => format!(
                "netready: check {} ({req}): FAILED after {} probes to {}: {}",
                c.check.as_str(),
                c.probes,
                c.targets.join(" "),
                c.last_error.as_deref().unwrap_or("no answer")
            ),
        };
        lines.push(line);
    }
    match (&r.ready_at, &r.not_ready_reason) {
        (Some(at), _) => lines.push(format!(
            "netready: network ready {:.1} ms after ADD",
            at.since(&r.origin).as_secs_f64() * 1e3
        )),
        (None, reason) => lines.push(format!(
            "netready: NOT network ready: {}",
            reason.as_deref().unwrap_or("unknown")
        )),
    }
    lines
}

/// What a pod's readiness task concluded.
#[derive(Debug)]
pub(super) enum Verdict {
    /// The checks ended with these outcomes.
    Checked(Vec<CheckOutcome>),
    /// The traffic after network ready ended.
    Sent(TrafficOutcome),
    /// The HTTP load after it ended.
    Loaded(netready_record::HttpLoad),
    /// The pod was stopped before the checks, or the traffic, ended.
    Stopped,
}

/// A pod's running readiness task and the signal that stops it.
pub(crate) struct Task {
    handle: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Verdict {
    /// Applies the verdict to the pod's readiness; `false` when it changes nothing.
    fn apply_to(self, r: &mut Readiness, now: Stamp) -> bool {
        match self {
            Verdict::Checked(checks) => {
                let (ready_at, reason) = verdict(r.origin, &checks);
                r.checks = checks;
                r.finished = Some(now);
                r.ready_at = ready_at;
                r.not_ready_reason = reason;
            }
            Verdict::Sent(t) => r.traffic = Some(t),
            Verdict::Loaded(l) => r.http_load = Some(l),
            // A pod stopped early is a result too: its record says so.
            Verdict::Stopped if r.finished.is_none() => {
                r.finished = Some(now);
                r.not_ready_reason =
                    Some("stopped: the pod was stopped before its checks ended".into());
            }
            Verdict::Stopped if !r.complete() => {
                if r.traffic_due() {
                    r.traffic = Some(TrafficOutcome::failed(
                        String::new(),
                        Duration::ZERO,
                        "the pod was stopped before its traffic run ended",
                    ));
                }
                if let (true, Some(plan)) = (r.http_load_due(), &r.http_load_wanted) {
                    r.http_load = Some(load_failed(
                        plan,
                        String::new(),
                        "the pod was stopped before its HTTP load ended",
                    ));
                }
            }
            Verdict::Stopped => return false,
        }
        true
    }
}

/// Takes a pod's verdict back from its record, for a netready killed after writing the record
/// and before saving the verdict: the pod is not checked again, nor recorded twice. Only what
/// netready's answers read comes back (verdict, traffic); the check outcomes stay in the record.
pub(super) fn restore(r: &mut Readiness, rec: &netready_record::PodRecord) {
    let at = |s: &str| -> Option<Stamp> {
        let wall = humantime::parse_rfc3339(s)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as u64;
        Some(Stamp {
            mono_ns: (r.origin.mono_ns + wall).saturating_sub(r.origin.wall_ns),
            wall_ns: wall,
        })
    };
    r.ready_at = rec.stamps.network_ready.as_deref().and_then(at);
    r.finished = Some(r.ready_at.unwrap_or_else(Stamp::now));
    r.not_ready_reason = rec.verdict.reason.clone();
    if r.ready() && r.traffic_wanted {
        r.traffic = Some(match &rec.traffic {
            Some(t) => TrafficOutcome {
                target: t.target.clone(),
                bits_per_second: t.bits_per_second,
                duration: Duration::from_secs_f64(t.duration_s),
                error: t.error.clone(),
            },
            None => TrafficOutcome::failed(String::new(), Duration::ZERO, "not in the record"),
        });
    }
    if let (true, Some(plan)) = (r.ready(), &r.http_load_wanted) {
        r.http_load = Some(
            rec.http_load
                .clone()
                .unwrap_or_else(|| load_failed(plan, String::new(), "not in the record")),
        );
    }
}

/// An HTTP load that did not run, and why.
fn load_failed(
    plan: &netready_probe::load::LoadPlan,
    target: String,
    why: &str,
) -> netready_record::HttpLoad {
    netready_record::HttpLoad {
        target,
        rate: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        connections: plan.connections,
        ok: 0,
        errors: Default::default(),
        achieved_rate: 0.0,
        latency_ms: Default::default(),
        uncorrected_latency_ms: Default::default(),
        error: Some(why.into()),
        backends: Vec::new(),
    }
}

impl NetperfRuntime {
    /// Starts the checks of a sandbox that just became ready, or what a restart cut short of
    /// them or of the traffic after them (still timed from the ADD's end).
    pub(super) fn start_readiness(&self, rec: &SandboxRecord) {
        let Some(r) = rec.readiness.clone() else {
            return;
        };
        let targets = self.targets();
        let rt = self.clone();
        let sid = rec.id.clone();
        let netns = rec.netns.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        // The Instant matching `origin`, for the probe plan's monotonic arithmetic.
        let origin_instant = Instant::now()
            .checked_sub(Stamp::now().since(&r.origin))
            .unwrap_or_else(Instant::now);
        // The map's lock is held until the task is in it: a task that ends at once must find
        // itself there to remove.
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let handle = tokio::spawn(async move {
            let r = if r.finished.is_some() {
                r
            } else {
                let checks = async {
                    match Netns::open(&netns) {
                        Ok(_) => plan::run(&netns, &r.plan, &targets, origin_instant).await,
                        Err(e) => {
                            tracing::warn!(sandbox = %sid, error = %e, "pod netns gone before its checks");
                            Vec::new()
                        }
                    }
                };
                let checked = tokio::select! {
                    c = checks => Verdict::Checked(c),
                    _ = &mut stopped => Verdict::Stopped,
                };
                match rt.apply(&sid, checked).await {
                    Some(r) => r,
                    None => return rt.task_ended(&sid),
                }
            };
            let mut r = r;
            if r.traffic_due() {
                let cfg = rt.cfg().traffic.clone();
                let send = async {
                    match targets.same_node.first() {
                        Some(ip) => traffic::run(&cfg, &rt.inner.iperf_pool, &netns, *ip).await,
                        None => TrafficOutcome::failed(
                            String::new(),
                            cfg.duration,
                            "no target: no control pod on this node",
                        ),
                    }
                };
                let sent = tokio::select! {
                    t = send => Verdict::Sent(t),
                    _ = &mut stopped => Verdict::Stopped,
                };
                match rt.apply(&sid, sent).await {
                    Some(now) => r = now,
                    None => return rt.task_ended(&sid),
                }
            }
            if let (true, Some(plan)) = (r.http_load_due(), r.http_load_wanted.clone()) {
                let load = async {
                    match load_target(&plan, &targets) {
                        Ok(target) => {
                            let spec = netready_probe::load::LoadSpec {
                                target,
                                host: target.ip().to_string(),
                                path: plan.path.clone(),
                                rate: plan.rate,
                                duration: plan.duration,
                                connections: plan.connections,
                                timeout: plan.timeout,
                            };
                            let report = netready_probe::load::run(Some(&netns), &spec).await;
                            rt.observe_load_latency(&report);
                            report.summary(&spec)
                        }
                        Err(why) => load_failed(&plan, String::new(), &why),
                    }
                };
                let loaded = tokio::select! {
                    l = load => Verdict::Loaded(l),
                    _ = &mut stopped => Verdict::Stopped,
                };
                rt.apply(&sid, loaded).await;
            }
            rt.task_ended(&sid);
        });
        tasks.insert(rec.id.clone(), Task { handle, stop });
    }

    fn task_ended(&self, id: &str) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Stops a sandbox's checks or traffic (its network is going away) and waits until the
    /// task has applied what it has: a pod stopped early still gets its record.
    pub(super) async fn stop_readiness(&self, id: &str) {
        let task = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(Task { handle, stop }) = task {
            let _ = stop.send(());
            if let Err(e) = handle.await {
                tracing::error!(sandbox = %id, error = %e, "readiness task");
            }
        }
    }

    /// Applies one verdict of a pod: its record is written first (complete pods only), so
    /// whoever sees the verdict in netready's answers finds the record in the results file;
    /// then the sandbox record, the container log and the metrics. Returns the readiness as
    /// it now is; `None` when the sandbox is gone or no longer ready.
    async fn apply(&self, id: &str, v: Verdict) -> Option<Readiness> {
        let now = Stamp::now();
        let (checked, sent, loaded) = (
            matches!(v, Verdict::Checked(_)),
            matches!(v, Verdict::Sent(_)),
            matches!(v, Verdict::Loaded(_)),
        );
        let (rec, timing) = {
            let store = self.store();
            let rec = store
                .sandboxes
                .get(id)
                .filter(|s| s.phase == SandboxPhase::Ready)?;
            (rec.clone(), store.pods.get(&rec.meta.uid).cloned())
        };
        let mut r = rec.readiness.clone()?;
        if !v.apply_to(&mut r, now) {
            return Some(r);
        }
        if r.complete() {
            match &timing {
                Some(t) => {
                    let mut with = rec.clone();
                    with.readiness = Some(r.clone());
                    self.write_record(&with, t).await;
                }
                None => {
                    tracing::error!(sandbox = %id, "no ADD timing kept for this pod: its record cannot be written")
                }
            }
        }
        let lines = if checked {
            self.observe_checks(id, &r, timing.as_ref());
            story(&r)
        } else if sent {
            self.observe_traffic(&r)
        } else if loaded {
            self.observe_http_load(&r)
        } else {
            Vec::new()
        };
        // The lines reach the log before the verdict shows (whoever sees it in ExecSync finds
        // it in `kubectl logs`), and no container starts in between (its story would miss
        // them): StartContainer takes the same guard.
        let guards = self.guards(id);
        let _log = guards.log.lock().await;
        let running: Vec<String> = self
            .store()
            .sandboxes
            .get(id)?
            .containers
            .iter()
            .filter(|c| c.phase == ContainerPhase::Running)
            .map(|c| c.log_path.clone())
            .collect();
        for path in &running {
            log::append(path, &lines);
        }
        let rec = {
            let mut store = self.store();
            let s = store.sandboxes.get_mut(id)?;
            s.readiness = Some(r.clone());
            s.clone()
        };
        self.persist_sandbox(&rec);
        Some(r)
    }

    async fn write_record(&self, rec: &SandboxRecord, t: &super::state::PodTiming) {
        let fingerprint = self.fingerprint().await;
        let record = super::results::record(&self.inner.identity, &fingerprint, rec, t);
        self.inner.results.write(&record).await;
    }

    fn observe_checks(&self, id: &str, r: &Readiness, timing: Option<&super::state::PodTiming>) {
        match &r.ready_at {
            Some(at) => {
                tracing::info!(sandbox = %id, after_add_ms = at.since(&r.origin).as_secs_f64() * 1e3, "network ready")
            }
            None => {
                tracing::warn!(sandbox = %id, reason = ?r.not_ready_reason, "not network ready")
            }
        }
        let Some(m) = self.metrics() else {
            return;
        };
        for c in &r.checks {
            if let Some(d) = c.passed_after {
                m.check_duration
                    .get_or_create(&CheckLabels {
                        check: c.check.as_str(),
                    })
                    .observe(d.as_secs_f64());
            }
        }
        match &r.ready_at {
            // First RunPodSandbox to ready is in the record only: it adds to this netready's
            // steps before the first ADD (netns, loopback: milliseconds), and kubelet's retry
            // wait when a call failed before any ADD.
            Some(at) => {
                if let Some(first) = timing.and_then(|t| t.first_attempt) {
                    m.network_ready.observe(at.secs_since(&first));
                }
            }
            None => self.count_failure(
                r.checks
                    .iter()
                    .find(|c| c.required && !c.passed())
                    .map_or("checks", |c| c.check.as_str()),
            ),
        }
    }

    /// The HTTP load's log line, and its outcome in the metrics.
    /// Each answered request's latency from its intended send into the metric's coarse
    /// buckets (prometheus-client observes one value at a time).
    fn observe_load_latency(&self, report: &netready_probe::load::LoadReport) {
        let Some(m) = self.metrics() else {
            return;
        };
        for (secs, n) in report.corrected_latencies() {
            for _ in 0..n {
                m.http_load_latency.observe(secs);
            }
        }
    }

    fn observe_http_load(&self, r: &Readiness) -> Vec<String> {
        let Some(l) = &r.http_load else {
            return Vec::new();
        };
        if let Some(m) = self.metrics() {
            m.http_load_requests
                .get_or_create(&super::metrics::LoadLabels { result: "success" })
                .inc_by(l.ok);
            let failed: u64 = l.errors.values().sum();
            m.http_load_requests
                .get_or_create(&super::metrics::LoadLabels { result: "failure" })
                .inc_by(failed);
        }
        vec![match &l.error {
            None => format!(
                "netready: HTTP load to {} at {} req/s for {} s over {} connections: {} ok, {} failed ({:?}); latency from intended send p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (from actual send: p99 {:.2} ms)",
                l.target, l.rate, l.duration_s, l.connections, l.ok,
                l.errors.values().sum::<u64>(), l.errors,
                l.latency_ms.p50, l.latency_ms.p99, l.latency_ms.p999, l.latency_ms.max,
                l.uncorrected_latency_ms.p99
            ),
            Some(e) => format!("netready: HTTP load did not run: {e}"),
        }]
    }

    /// The traffic's log line, and its throughput in the metrics.
    fn observe_traffic(&self, r: &Readiness) -> Vec<String> {
        let Some(t) = &r.traffic else {
            return Vec::new();
        };
        if let (Some(m), Some(bps)) = (self.metrics(), t.bits_per_second) {
            m.traffic_throughput.observe(bps / 8.0);
        }
        vec![match (t.bits_per_second, &t.error) {
            (Some(bps), _) => format!(
                "netready: traffic to {} for {} s: {:.1} Mbit/s",
                t.target,
                t.duration.as_secs(),
                bps / 1e6
            ),
            (None, e) => format!(
                "netready: traffic failed: {}",
                e.as_deref().unwrap_or("unknown")
            ),
        }]
    }

    /// Whether the sandbox's network is ready; `Err(reason)` otherwise.
    pub(super) fn network_ready(s: &SandboxRecord) -> Result<(), String> {
        match &s.readiness {
            None => Ok(()),
            Some(r) if r.ready() => Ok(()),
            Some(r) if r.finished.is_none() => Err("reachability checks still running".into()),
            // "checks ended" tells a driver the verdict is final (kubelet would probe on).
            Some(r) => Err(format!(
                "{FINAL_VERDICT}: {}",
                r.not_ready_reason.as_deref().unwrap_or("not network ready")
            )),
        }
    }
}

/// The address a pod's HTTP load goes to; `Err` says why there is none.
fn load_target(
    plan: &netready_probe::load::LoadPlan,
    targets: &netready_probe::plan::Targets,
) -> Result<std::net::SocketAddr, String> {
    use netready_probe::load::LoadTarget;
    match &plan.target {
        LoadTarget::Addr(a) => Ok(*a),
        LoadTarget::Service => targets
            .service
            .as_ref()
            .map(|s| std::net::SocketAddr::new(s.ip, s.port))
            .ok_or_else(|| "no target: no control service known".into()),
        LoadTarget::SameNode { port } => targets
            .same_node
            .first()
            .map(|ip| std::net::SocketAddr::new(*ip, *port))
            .ok_or_else(|| "no target: no control pod on this node".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netready_probe::plan::CheckKind;

    fn outcome(check: CheckKind, required: bool, after: Option<u64>) -> CheckOutcome {
        CheckOutcome {
            check,
            required,
            targets: vec!["10.0.0.2".into()],
            available: 1,
            passed_after: after.map(Duration::from_millis),
            first_probe_after: Some(Duration::from_micros(300)),
            probes: 1,
            rtts: vec![],
            http: vec![],
            last_error: after.is_none().then(|| "no answer within 1s".into()),
            skipped: None,
            origins: vec!["containerd".into()],
        }
    }

    #[test]
    fn ready_at_the_last_required_pass() {
        let origin = Stamp {
            mono_ns: 1_000,
            wall_ns: 5_000,
        };
        let checks = [
            outcome(CheckKind::SameNodePod, true, Some(3)),
            outcome(CheckKind::ServiceHttp, true, Some(40)),
            outcome(CheckKind::ExternalPing, false, None),
        ];
        let (at, reason) = verdict(origin, &checks);
        assert_eq!(at.unwrap().since(&origin), Duration::from_millis(40));
        assert!(
            reason.is_none(),
            "optional failures do not hold readiness back"
        );
    }

    #[test]
    fn a_failed_or_skipped_required_check_is_the_reason() {
        let origin = Stamp {
            mono_ns: 0,
            wall_ns: 0,
        };
        let (at, reason) = verdict(origin, &[outcome(CheckKind::OtherNodePods, true, None)]);
        assert!(at.is_none());
        assert_eq!(reason.unwrap(), "other_node_pods: no answer within 1s");
        let mut skipped = outcome(CheckKind::ServiceHttp, true, None);
        skipped.skipped = Some("no target".into());
        let (_, reason) = verdict(origin, &[skipped]);
        assert_eq!(reason.unwrap(), "service_http: skipped: no target");
    }
}
