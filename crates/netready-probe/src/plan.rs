//! The network-ready checks of one pod: which targets, which checks are required, and running
//! them all at once until each passes or the pod's deadline ends.
//!
//! A check's time is measured from `origin` (the end of the successful CNI ADD) to its first
//! success; a check over several targets (other nodes' pods, N HTTP GETs) passes when the
//! last of them does. A check with no target is skipped — never counted as passed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::http::{self, HttpTiming};
use crate::icmp::IcmpSocket;
use crate::Result;
use std::sync::OnceLock;

/// The kinds of check, in DESIGN.md's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// ICMP to a control pod on the same node.
    SameNodePod,
    /// ICMP to control pods on up to N other nodes (all must answer).
    OtherNodePods,
    /// ICMP to the control service VIP.
    ServicePing,
    /// N HTTP GETs to the control service.
    ServiceHttp,
    /// ICMP to the external target.
    ExternalPing,
    /// One HTTP GET to the external target.
    ExternalHttp,
}

impl CheckKind {
    /// Every kind.
    pub const ALL: [CheckKind; 6] = [
        CheckKind::SameNodePod,
        CheckKind::OtherNodePods,
        CheckKind::ServicePing,
        CheckKind::ServiceHttp,
        CheckKind::ExternalPing,
        CheckKind::ExternalHttp,
    ];

    /// The name used in config, annotations, records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::SameNodePod => "same_node_pod",
            CheckKind::OtherNodePods => "other_node_pods",
            CheckKind::ServicePing => "service_ping",
            CheckKind::ServiceHttp => "service_http",
            CheckKind::ExternalPing => "external_ping",
            CheckKind::ExternalHttp => "external_http",
        }
    }
}

impl std::str::FromStr for CheckKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CheckKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown check {s:?} (one of {})",
                    CheckKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

/// An HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpTarget {
    /// Address to ping and connect to.
    pub ip: IpAddr,
    /// TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Request path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Host header (default: the IP).
    #[serde(default)]
    pub host: Option<String>,
}

fn default_port() -> u16 {
    80
}

fn default_path() -> String {
    "/".into()
}

/// Where a pod's checks go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Control pods on this node.
    pub same_node: Vec<IpAddr>,
    /// Control pods on other nodes: node name and its pods' IPs.
    pub other_nodes: Vec<(String, Vec<IpAddr>)>,
    /// The control service.
    pub service: Option<HttpTarget>,
    /// The control service's address for `service_ping` when there is no HTTP target for it
    /// (a Service without a port named `http`).
    #[serde(default)]
    pub service_ip: Option<IpAddr>,
    /// The external target.
    pub external: Option<HttpTarget>,
    /// Where each target's address came from (`containerd`, `api`, `targets_file`, `config`),
    /// for the record.
    #[serde(default)]
    pub origins: BTreeMap<IpAddr, String>,
    /// Why a check has no target, when more is known than "no target" (discovery not synced,
    /// no other-node control pod).
    #[serde(default)]
    pub no_target: BTreeMap<CheckKind, String>,
}

/// How a pod's checks run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Checks that must pass for the pod to be network-ready.
    pub required: BTreeSet<CheckKind>,
    /// Checks run but not required (recorded all the same).
    pub optional: BTreeSet<CheckKind>,
    /// Other nodes to pick (at random, distinct).
    pub other_nodes: usize,
    /// HTTP GETs to the service.
    pub http_count: u32,
    /// Timeout of one probe.
    pub probe_timeout: Duration,
    /// Wait between failed probes of one target.
    pub retry_interval: Duration,
    /// After this long from `origin`, checks stop and unpassed required ones fail the pod.
    pub deadline: Duration,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Which check.
    pub check: CheckKind,
    /// Whether the pod's readiness waits for it.
    pub required: bool,
    /// The targets probed (`ip` or `ip:port/path`, node names for other nodes).
    pub targets: Vec<String>,
    /// How many targets were available (other nodes: fewer than asked when fewer exist).
    pub available: usize,
    /// From origin to the first success (all targets); `None` if it never passed.
    pub passed_after: Option<Duration>,
    /// From origin to this check's first probe on the wire: netready's own lag before it
    /// measures anything (task start, sockets made inside the netns); `None` if none went.
    #[serde(default)]
    pub first_probe_after: Option<Duration>,
    /// Probes sent.
    pub probes: u32,
    /// Round-trip times of successful ICMP probes.
    pub rtts: Vec<Duration>,
    /// Timings of successful HTTP GETs.
    pub http: Vec<HttpTiming>,
    /// The last failure seen, if any.
    pub last_error: Option<String>,
    /// Why it did not run ("no target", or what more is known).
    pub skipped: Option<String>,
    /// Where each of `targets` came from (`containerd`, `api`, `targets_file`, `config`).
    /// Absent in records saved before it existed.
    #[serde(default)]
    pub origins: Vec<String>,
}

impl CheckOutcome {
    fn new(check: CheckKind, required: bool) -> Self {
        CheckOutcome {
            check,
            required,
            targets: Vec::new(),
            available: 0,
            passed_after: None,
            first_probe_after: None,
            probes: 0,
            rtts: Vec::new(),
            http: Vec::new(),
            last_error: None,
            skipped: None,
            origins: Vec::new(),
        }
    }

    /// Passed.
    pub fn passed(&self) -> bool {
        self.passed_after.is_some()
    }
}

/// Picks up to `n` distinct nodes at random, one control pod of each.
fn pick_other_nodes(nodes: &[(String, Vec<IpAddr>)], n: usize) -> Vec<(String, IpAddr)> {
    use rand::seq::IndexedRandom;
    let candidates: Vec<&(String, Vec<IpAddr>)> =
        nodes.iter().filter(|(_, ips)| !ips.is_empty()).collect();
    let mut rng = rand::rng();
    candidates
        .choose_multiple(&mut rng, n)
        .map(|(name, ips)| (name.clone(), *ips.choose(&mut rng).expect("non-empty")))
        .collect()
}

/// HTTP probes of one target waiting for their answer at once, at most: one, as an
/// application connects. TCP retransmits a lost SYN by itself (after 1 s, then 2 s more), which
/// is what an application would wait too; overlapping connects measured nothing an application
/// sees and, at a 200-pod burst, overflowed the control server's accept queue (readiness
/// bench: checks-only p50 from 1.2 s to 3.1 s).
const HTTP_IN_FLIGHT: usize = 1;

/// ICMP probes of one target waiting at once, at most: one per interval of the probe timeout
/// (an echo request costs a packet and a waiter, and nothing retransmits it), within a bound.
fn icmp_in_flight(plan: &Plan) -> usize {
    let per = plan.retry_interval.as_nanos().max(1);
    (plan.probe_timeout.as_nanos().div_ceil(per) as usize).clamp(1, 64)
}

/// A probe's answer.
enum Answer {
    Rtt(Duration),
    Http(HttpTiming),
}

enum Probe {
    Icmp(IpAddr),
    Http(SocketAddr, String, String),
}

impl Probe {
    fn ip(&self) -> IpAddr {
        match self {
            Probe::Icmp(ip) => *ip,
            Probe::Http(addr, _, _) => addr.ip(),
        }
    }
}

struct Ctx<'a> {
    ns: &'a Path,
    plan: &'a Plan,
    origin: Instant,
    v4: Option<IcmpSocket>,
    v6: Option<IcmpSocket>,
    /// TCP sockets made in the pod's netns with the ICMP ones, for the HTTP probes' first
    /// tries (IPv4, IPv6); a probe beyond them makes its own.
    tcp: std::sync::Mutex<(Vec<tokio::net::TcpSocket>, Vec<tokio::net::TcpSocket>)>,
}

impl Ctx<'_> {
    fn out_of_time(&self) -> bool {
        self.origin.elapsed() >= self.plan.deadline
    }

    /// One probe of `probe`; `first` takes the moment the first probe of the check goes out.
    async fn once(&self, probe: &Probe, seq: u16, first: &OnceLock<Duration>) -> Result<Answer> {
        let origin = self.origin;
        let sending = || {
            first.get_or_init(|| origin.elapsed());
        };
        match probe {
            Probe::Icmp(ip) => {
                let sock = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
                let Some(s) = sock else {
                    return Err(crate::Error::Socket(
                        "no ICMP socket for this family".into(),
                    ));
                };
                sending();
                s.ping(*ip, seq, self.plan.probe_timeout)
                    .await
                    .map(Answer::Rtt)
            }
            Probe::Http(addr, host, path) => {
                let made = {
                    let mut tcp = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
                    if addr.is_ipv4() {
                        tcp.0.pop()
                    } else {
                        tcp.1.pop()
                    }
                };
                http::get_on(
                    made,
                    self.ns,
                    *addr,
                    host,
                    path,
                    self.plan.probe_timeout,
                    sending,
                )
                .await
                .map(Answer::Http)
            }
        }
    }

    /// Probes one target until it answers or the deadline passes; true when it answered.
    ///
    /// Probes go out `retry_interval` apart while earlier ones still wait for their answer,
    /// the gap doubling with each unanswered one up to `probe_timeout`, as `ping -i` sends (at most [`icmp_in_flight`] pings or [`HTTP_IN_FLIGHT`] connect at
    /// once): a lost packet then delays the pass by one interval, not by a whole
    /// `probe_timeout`, so a pod's time to ready keeps the interval's resolution when the
    /// network drops packets.
    async fn until_success(&self, probe: &Probe, out: &mut CheckOutcome, seq: &mut u16) -> bool {
        use futures::stream::{FuturesUnordered, StreamExt};
        let first = OnceLock::new();
        let cap = match probe {
            Probe::Icmp(_) => icmp_in_flight(self.plan),
            Probe::Http(..) => HTTP_IN_FLIGHT,
        };
        let mut in_flight = FuturesUnordered::new();
        let mut next = tokio::time::Instant::now();
        // The gap to the next probe doubles while none is answered, up to the probe timeout:
        // a short outage costs about its own length, a long one is not flooded.
        let mut gap = self.plan.retry_interval;
        let passed = loop {
            let due = tokio::time::Instant::now() >= next;
            if due && !self.out_of_time() && in_flight.len() < cap {
                out.probes += 1;
                *seq = seq.wrapping_add(1);
                in_flight.push(self.once(probe, *seq, &first));
                next = tokio::time::Instant::now() + gap;
                gap = (gap * 2).min(self.plan.probe_timeout.max(self.plan.retry_interval));
            }
            if in_flight.is_empty() {
                if self.out_of_time() {
                    break false;
                }
                tokio::time::sleep_until(next).await;
                continue;
            }
            // Past the deadline no probe is sent; those out still get their answer.
            let wake = if self.out_of_time() || in_flight.len() >= cap {
                None
            } else {
                Some(next)
            };
            tokio::select! {
                Some(answer) = in_flight.next() => match answer {
                    Ok(Answer::Rtt(rtt)) => {
                        out.rtts.push(rtt);
                        break true;
                    }
                    Ok(Answer::Http(t)) => {
                        out.http.push(t);
                        break true;
                    }
                    Err(e) => out.last_error = Some(e.to_string()),
                },
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        };
        if let Some(at) = first.get() {
            out.first_probe_after = Some(match out.first_probe_after {
                Some(earlier) => earlier.min(*at),
                None => *at,
            });
        }
        passed
    }

    /// Runs one check over its probes (all must pass, in order for HTTP, together for ICMP).
    async fn check(
        &self,
        kind: CheckKind,
        required: bool,
        probes: Vec<(String, Probe)>,
        available: usize,
        no_target: Option<&String>,
    ) -> CheckOutcome {
        let mut out = CheckOutcome::new(kind, required);
        out.available = available;
        if probes.is_empty() {
            out.skipped = Some(no_target.cloned().unwrap_or_else(|| "no target".into()));
            return out;
        }
        out.targets = probes.iter().map(|(t, _)| t.clone()).collect();
        let concurrent = matches!(kind, CheckKind::OtherNodePods | CheckKind::ServiceHttp);
        let mut seq = 0u16;
        let all = if concurrent {
            // Each target (node, or GET) its own probe loop; the check passes when the last
            // one does.
            let outs = futures::future::join_all(probes.iter().map(|(_, p)| async {
                let mut o = CheckOutcome::new(kind, required);
                let mut s = 0u16;
                let ok = self.until_success(p, &mut o, &mut s).await;
                (ok, o)
            }))
            .await;
            let mut ok = true;
            for (passed, o) in outs {
                ok &= passed;
                out.first_probe_after = match (out.first_probe_after, o.first_probe_after) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                out.probes += o.probes;
                out.rtts.extend(o.rtts);
                out.http.extend(o.http);
                if o.last_error.is_some() && !passed {
                    out.last_error = o.last_error;
                }
            }
            ok
        } else {
            let mut ok = true;
            for (_, p) in &probes {
                if !self.until_success(p, &mut out, &mut seq).await {
                    ok = false;
                    break;
                }
            }
            ok
        };
        if all {
            out.passed_after = Some(self.origin.elapsed());
            out.last_error = None;
        }
        out
    }
}

fn http_probe(t: &HttpTarget) -> (String, Probe) {
    let addr = SocketAddr::new(t.ip, t.port);
    let host = t.host.clone().unwrap_or_else(|| t.ip.to_string());
    (
        format!("{addr}{}", t.path),
        Probe::Http(addr, host, t.path.clone()),
    )
}

/// Runs every enabled check of `plan` from inside `ns`, all at once, and returns their
/// outcomes in [`CheckKind::ALL`] order.
pub async fn run(ns: &Path, plan: &Plan, targets: &Targets, origin: Instant) -> Vec<CheckOutcome> {
    let enabled = |k: CheckKind| plan.required.contains(&k) || plan.optional.contains(&k);
    let mut ping_targets: Vec<IpAddr> = Vec::new();
    if enabled(CheckKind::SameNodePod) {
        ping_targets.extend(targets.same_node.iter().take(1));
    }
    if enabled(CheckKind::OtherNodePods) {
        ping_targets.extend(targets.other_nodes.iter().flat_map(|(_, ips)| ips.iter()));
    }
    let service_ip = targets
        .service
        .as_ref()
        .map(|s| s.ip)
        .or(targets.service_ip);
    if enabled(CheckKind::ServicePing) {
        ping_targets.extend(service_ip);
    }
    if enabled(CheckKind::ExternalPing) {
        ping_targets.extend(targets.external.iter().map(|s| s.ip));
    }
    // The HTTP probes' first tries: the service's GETs, then the external hosts'.
    let mut http_first: Vec<IpAddr> = Vec::new();
    if enabled(CheckKind::ServiceHttp) {
        if let Some(s) = &targets.service {
            http_first.extend(std::iter::repeat_n(s.ip, plan.http_count as usize));
        }
    }
    if enabled(CheckKind::ExternalHttp) {
        http_first.extend(targets.external.iter().map(|s| s.ip));
    }
    // Every socket the first tries need, made in one visit to the pod's netns (each visit
    // is a hand-off to a thread that enters it and back): the ICMP ones of the families some
    // target needs, and a TCP socket per first HTTP try.
    let (need4, need6) = (
        ping_targets.iter().any(IpAddr::is_ipv4),
        ping_targets.iter().any(IpAddr::is_ipv6),
    );
    let (tcp4, tcp6) = (
        http_first.iter().filter(|ip| ip.is_ipv4()).count(),
        http_first.iter().filter(|ip| ip.is_ipv6()).count(),
    );
    let handle = tokio::runtime::Handle::current();
    let made = crate::in_netns(ns, move || {
        let v4 = need4
            .then(|| IcmpSocket::here(&handle, false).ok())
            .flatten();
        let v6 = need6
            .then(|| IcmpSocket::here(&handle, true).ok())
            .flatten();
        let any4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
        let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
        // A socket that cannot be made here is made again by its probe, which reports why.
        let t4 = (0..tcp4)
            .filter_map(|_| http::socket_here(&any4).ok())
            .collect();
        let t6 = (0..tcp6)
            .filter_map(|_| http::socket_here(&any6).ok())
            .collect();
        (v4, v6, (t4, t6))
    })
    .await;
    let (v4, v6, tcp) = made.unwrap_or_default();
    let ctx = Ctx {
        ns,
        plan,
        origin,
        v4,
        v6,
        tcp: std::sync::Mutex::new(tcp),
    };
    let picked = pick_other_nodes(&targets.other_nodes, plan.other_nodes);
    let runs = CheckKind::ALL
        .into_iter()
        .filter(|k| plan.required.contains(k) || plan.optional.contains(k))
        .map(|kind| {
            let required = plan.required.contains(&kind);
            let (probes, available): (Vec<(String, Probe)>, usize) = match kind {
                CheckKind::SameNodePod => {
                    let p: Vec<_> = targets
                        .same_node
                        .iter()
                        .take(1)
                        .map(|ip| (ip.to_string(), Probe::Icmp(*ip)))
                        .collect();
                    (p, targets.same_node.len())
                }
                CheckKind::OtherNodePods => (
                    picked
                        .iter()
                        .map(|(n, ip)| (format!("{n}/{ip}"), Probe::Icmp(*ip)))
                        .collect(),
                    targets
                        .other_nodes
                        .iter()
                        .filter(|(_, ips)| !ips.is_empty())
                        .count(),
                ),
                CheckKind::ServicePing => {
                    let p: Vec<_> = service_ip
                        .iter()
                        .map(|ip| (ip.to_string(), Probe::Icmp(*ip)))
                        .collect();
                    let n = p.len();
                    (p, n)
                }
                CheckKind::ServiceHttp => {
                    let p: Vec<_> = targets
                        .service
                        .iter()
                        .flat_map(|s| (0..plan.http_count).map(move |_| http_probe(s)))
                        .collect();
                    (p, usize::from(targets.service.is_some()))
                }
                CheckKind::ExternalPing => {
                    let p: Vec<_> = targets
                        .external
                        .iter()
                        .map(|s| (s.ip.to_string(), Probe::Icmp(s.ip)))
                        .collect();
                    let n = p.len();
                    (p, n)
                }
                CheckKind::ExternalHttp => {
                    let p: Vec<_> = targets.external.iter().map(http_probe).collect();
                    let n = p.len();
                    (p, n)
                }
            };
            let origins: Vec<String> = probes
                .iter()
                .map(|(_, p)| targets.origins.get(&p.ip()).cloned().unwrap_or_default())
                .collect();
            let ctx = &ctx;
            async move {
                let mut out = ctx
                    .check(
                        kind,
                        required,
                        probes,
                        available,
                        targets.no_target.get(&kind),
                    )
                    .await;
                if out.skipped.is_none() {
                    out.origins = origins;
                }
                out
            }
        });
    futures::future::join_all(runs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_saved_before_origins_existed_still_load() {
        // Sandbox records on disk hold outcomes; a netready upgrade must still read them.
        let mut v = serde_json::to_value(CheckOutcome::new(CheckKind::SameNodePod, true)).unwrap();
        v.as_object_mut().unwrap().remove("origins");
        let back: CheckOutcome = serde_json::from_value(v).unwrap();
        assert!(back.origins.is_empty());
    }

    #[test]
    fn kinds_parse_by_name() {
        assert_eq!(
            "service_http".parse::<CheckKind>().unwrap(),
            CheckKind::ServiceHttp
        );
        assert!("ping"
            .parse::<CheckKind>()
            .unwrap_err()
            .contains("same_node_pod"));
    }

    #[test]
    fn other_nodes_are_distinct_and_capped() {
        let nodes: Vec<(String, Vec<IpAddr>)> = (0..8)
            .map(|i| {
                (
                    format!("n{i}"),
                    vec![format!("10.0.{i}.2").parse().unwrap()],
                )
            })
            .chain(std::iter::once(("empty".to_string(), vec![])))
            .collect();
        let picked = pick_other_nodes(&nodes, 5);
        assert_eq!(picked.len(), 5);
        let mut names: Vec<_> = picked.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 5);
        assert!(!names.contains(&"empty".to_string()));
        assert_eq!(
            pick_other_nodes(&nodes[..2], 5).len(),
            2,
            "fewer when fewer exist"
        );
    }
}
