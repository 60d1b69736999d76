//! Network readiness of a netperf pod: after its ADD succeeds, the checks run from inside the
//! pod's netns; when every required one has passed the pod is network-ready, and when the
//! deadline passes first it is not, with the failing check and its last error as the reason.
//! The verdict goes to the sandbox record, the container log, `ExecSync` and the results file.

use std::time::{Duration, Instant};

use netready_cni::Stamp;
use netready_metrics::{CheckLabels, ReasonLabels};
use netready_netns::Netns;
use netready_probe::plan::{self, CheckOutcome, Plan};
use serde::{Deserialize, Serialize};

use super::state::{ContainerPhase, SandboxPhase, SandboxRecord};
use super::{log, results, NetperfRuntime};

/// Starts an exec probe's answer once a pod's checks ended without network ready.
pub const FINAL_VERDICT: &str = "network checks ended";

/// Readiness of one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// The plan the checks follow (config and pod annotations).
    pub plan: Plan,
    /// End of the successful ADD: checks are timed from here.
    pub origin: Stamp,
    /// Outcomes, once the checks finished.
    pub checks: Vec<CheckOutcome>,
    /// When the checks finished.
    pub finished: Option<Stamp>,
    /// When the last required check passed (network ready).
    pub ready_at: Option<Stamp>,
    /// Why the pod is not network-ready (`<check>: <last error>`).
    pub not_ready_reason: Option<String>,
    /// Whether traffic runs once the pod is network-ready.
    #[serde(default)]
    pub traffic_wanted: bool,
    /// The traffic's outcome.
    #[serde(default)]
    pub traffic: Option<super::traffic::TrafficOutcome>,
}

impl Readiness {
    /// Whether the pod is network-ready.
    pub fn ready(&self) -> bool {
        self.ready_at.is_some()
    }
}

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

impl NetperfRuntime {
    /// Starts the checks of a sandbox that just became ready.
    pub(super) fn start_readiness(
        &self,
        id: &str,
        plan: Plan,
        origin: Stamp,
        netns: &std::path::Path,
    ) {
        let targets = self.targets();
        let rt = self.clone();
        let sid = id.to_owned();
        let netns = netns.to_owned();
        // The Instant matching `origin`, for the probe plan's monotonic arithmetic.
        let origin_instant = Instant::now()
            .checked_sub(Stamp::now().since(&origin))
            .unwrap_or_else(Instant::now);
        let task = tokio::spawn(async move {
            let outcomes = match Netns::open(&netns) {
                Ok(_) => plan::run(&netns, &plan, &targets, origin_instant).await,
                Err(e) => {
                    tracing::warn!(sandbox = %sid, error = %e, "pod netns gone before its checks");
                    Vec::new()
                }
            };
            if let Some(target) = rt.finish_readiness(&sid, outcomes) {
                let cfg = rt.cfg().traffic.clone();
                let outcome = match target {
                    Some(ip) => super::traffic::run(&cfg, &netns, ip).await,
                    None => super::traffic::TrafficOutcome {
                        target: String::new(),
                        bits_per_second: None,
                        duration: cfg.duration,
                        error: Some("no target: no control pod on this node".into()),
                    },
                };
                rt.finish_traffic(&sid, outcome);
            }
        });
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), task.abort_handle());
    }

    /// Stops a sandbox's checks or traffic (its network is going away). A pod stopped before
    /// they ended still gets its record, saying so: a pod deleted early is a result too.
    pub(super) fn stop_readiness(&self, id: &str) {
        let task = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let Some(t) = task else {
            return;
        };
        t.abort();
        let (rec, timing) = {
            let mut store = self.store();
            let Some(rec) = store.sandboxes.get_mut(id) else {
                return;
            };
            let Some(r) = rec.readiness.as_mut() else {
                return;
            };
            if r.finished.is_none() {
                r.finished = Some(Stamp::now());
                r.not_ready_reason =
                    Some("stopped: the pod was stopped before its checks ended".into());
            } else if r.traffic_wanted && r.traffic.is_none() {
                r.traffic = Some(super::traffic::TrafficOutcome {
                    target: String::new(),
                    bits_per_second: None,
                    duration: Duration::ZERO,
                    error: Some("the pod was stopped before its traffic run ended".into()),
                });
            } else {
                return;
            }
            let rec = rec.clone();
            let timing = store.pods.get(&rec.meta.uid).cloned();
            (rec, timing)
        };
        self.persist_sandbox(&rec);
        if let Some(t) = timing {
            self.send_record(&rec, &t);
        }
    }

    /// Records the checks' verdict; returns `Some(target)` when traffic is to run next (the
    /// record is then written after it).
    fn finish_readiness(
        &self,
        id: &str,
        checks: Vec<CheckOutcome>,
    ) -> Option<Option<std::net::IpAddr>> {
        let now = Stamp::now();
        let (rec, timing) = {
            let mut store = self.store();
            let rec = store.sandboxes.get_mut(id)?;
            if rec.phase != SandboxPhase::Ready {
                return None;
            }
            let r = rec.readiness.as_mut()?;
            let (ready_at, reason) = verdict(r.origin, &checks);
            r.checks = checks;
            r.finished = Some(now);
            r.ready_at = ready_at;
            r.not_ready_reason = reason;
            let rec = rec.clone();
            let timing = store.pods.get(&rec.meta.uid).cloned();
            (rec, timing)
        };
        self.persist_sandbox(&rec);
        let r = rec.readiness.as_ref().expect("set above");
        let lines = story(r);
        for c in rec
            .containers
            .iter()
            .filter(|c| c.phase == ContainerPhase::Running)
        {
            log::append(&c.log_path, &lines);
        }
        match &r.ready_at {
            Some(at) => {
                tracing::info!(sandbox = %id, after_add_ms = at.since(&r.origin).as_secs_f64() * 1e3, "network ready")
            }
            None => {
                tracing::warn!(sandbox = %id, reason = ?r.not_ready_reason, "not network ready")
            }
        }
        if let Some(m) = self.metrics() {
            for c in r.checks.iter() {
                if let Some(d) = c.passed_after {
                    m.check_duration
                        .get_or_create(&CheckLabels {
                            check: c.check.as_str(),
                        })
                        .observe(d.as_secs_f64());
                }
            }
            match (&r.ready_at, timing.as_ref()) {
                (Some(at), Some(t)) => {
                    // First RunPodSandbox to ready is in the record only: it adds to this
                    // netready's steps before the first ADD (netns, loopback: milliseconds),
                    // and kubelet's retry wait when a call failed before any ADD.
                    if let Some(first) = t.first_attempt {
                        m.network_ready.observe(at.secs_since(&first));
                    }
                }
                (Some(_), None) => {}
                (None, _) => {
                    let reason = r
                        .checks
                        .iter()
                        .find(|c| c.required && !c.passed())
                        .map_or("checks", |c| c.check.as_str());
                    m.network_ready_failures
                        .get_or_create(&ReasonLabels { reason })
                        .inc();
                }
            }
        }
        if r.ready() && r.traffic_wanted {
            return Some(self.targets().same_node.first().copied());
        }
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(t) = timing {
            self.send_record(&rec, &t);
        }
        None
    }

    fn send_record(&self, rec: &SandboxRecord, t: &super::state::PodTiming) {
        self.inner.results.send(results::record(
            &self.inner.identity,
            &self.fingerprint(),
            rec,
            t,
        ));
    }

    fn finish_traffic(&self, id: &str, outcome: super::traffic::TrafficOutcome) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let (rec, timing) = {
            let mut store = self.store();
            let Some(rec) = store.sandboxes.get_mut(id) else {
                return;
            };
            if let Some(r) = rec.readiness.as_mut() {
                r.traffic = Some(outcome.clone());
            }
            let rec = rec.clone();
            let timing = store.pods.get(&rec.meta.uid).cloned();
            (rec, timing)
        };
        self.persist_sandbox(&rec);
        let line = match (outcome.bits_per_second, &outcome.error) {
            (Some(bps), _) => format!(
                "netready: traffic to {} for {} s: {:.1} Mbit/s",
                outcome.target,
                outcome.duration.as_secs(),
                bps / 1e6
            ),
            (None, e) => format!(
                "netready: traffic failed: {}",
                e.as_deref().unwrap_or("unknown")
            ),
        };
        for c in rec
            .containers
            .iter()
            .filter(|c| c.phase == ContainerPhase::Running)
        {
            log::append(&c.log_path, std::slice::from_ref(&line));
        }
        if let (Some(m), Some(bps)) = (self.metrics(), outcome.bits_per_second) {
            m.traffic_throughput.observe(bps / 8.0);
        }
        if let Some(t) = timing {
            self.send_record(&rec, &t);
        }
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
            probes: 1,
            rtts: vec![],
            http: vec![],
            last_error: after.is_none().then(|| "no answer within 1s".into()),
            skipped: None,
            origins: vec!["containerd".into()],
        }
    }

    #[test]
    fn metric_labels_are_the_check_kinds() {
        assert_eq!(
            CheckKind::ALL.map(CheckKind::as_str),
            netready_metrics::CHECKS
        );
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
