//! Constant-rate HTTP load from inside a pod's netns, latency measured as wrk2 measures it.
//!
//! Request `n` is *intended* at `start + n / rate`, whatever happened before it. `connections`
//! keep-alive HTTP/1.1 connections carry them, request `n` on connection `n % connections`,
//! one outstanding per connection, as an application's client pool would. A request's latency
//! is counted from its intended time, not from when it could be sent: a server that stalls
//! for S seconds holds back every request intended during the stall, and each of those waited.
//! Counting from the actual send (the *uncorrected* histogram, kept beside it to show the
//! difference) records only the few requests in flight when the stall began as slow: the
//! coordinated-omission error wrk2 corrects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where.
    pub target: SocketAddr,
    /// `Host` header.
    pub host: String,
    /// Request path.
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    /// For how long.
    pub duration: Duration,
    /// Connections carrying them.
    pub connections: usize,
    /// A request not answered this long after it was sent fails (and its connection closes).
    pub timeout: Duration,
}

/// What came back: both histograms in microseconds.
#[derive(Debug)]
pub struct LoadReport {
    /// Latency from each request's intended send time (successes only).
    pub corrected: Histogram<u64>,
    /// Latency from each request's actual send (successes only).
    pub uncorrected: Histogram<u64>,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Failed requests by kind (`connect`, `timeout`, `status`, `http`), including those
    /// never sent because the run ended.
    pub errors: BTreeMap<String, u64>,
    /// First intended send to the last answer.
    pub elapsed: Duration,
    /// netperf pods that answered (`x-netready-pod`), by name.
    pub backends: BTreeMap<String, Seen>,
}

/// A backend as the client first saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Replies.
    pub replies: u64,
    /// The first reply, client's clock.
    pub first_reply: SystemTime,
    /// Its creation as it said (`x-netready-created`), its clock, RFC 3339.
    pub created: String,
    /// Its clock minus the client's at that reply, seconds.
    pub skew_s: f64,
    /// Half that reply's round trip, seconds.
    pub uncertainty_s: f64,
}

/// Seconds since the epoch.
fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn merge(into: &mut BTreeMap<String, Seen>, from: BTreeMap<String, Seen>) {
    for (pod, s) in from {
        match into.get_mut(&pod) {
            Some(had) => {
                let replies = had.replies + s.replies;
                if s.first_reply < had.first_reply {
                    *had = s;
                }
                had.replies = replies;
            }
            None => {
                into.insert(pod, s);
            }
        }
    }
}

/// A [`LoadReport`] as records, logs and metrics carry it.
pub use netready_record::{HttpLoad as LoadSummary, Percentiles};

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1e3;
    Percentiles {
        p50: ms(h.value_at_quantile(0.5)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

impl LoadReport {
    /// Each distinct latency from intended send (seconds, at the histogram's precision) with
    /// how many answered requests had it: for coarser histograms (Prometheus').
    pub fn corrected_latencies(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.corrected
            .iter_recorded()
            .map(|v| (v.value_iterated_to() as f64 / 1e6, v.count_at_value()))
    }

    /// The summary of this run of `spec`.
    pub fn summary(&self, spec: &LoadSpec) -> LoadSummary {
        let secs = self.elapsed.as_secs_f64();
        LoadSummary {
            target: spec.target.to_string(),
            rate: spec.rate,
            duration_s: spec.duration.as_secs_f64(),
            connections: spec.connections,
            ok: self.ok,
            errors: self.errors.clone(),
            achieved_rate: if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            latency_ms: percentiles(&self.corrected),
            uncorrected_latency_ms: percentiles(&self.uncorrected),
            error: None,
            backends: self.backend_list(),
        }
    }

    fn backend_list(&self) -> Vec<netready_record::Backend> {
        let mut v: Vec<(&String, &Seen)> = self.backends.iter().collect();
        v.sort_by_key(|(_, s)| s.first_reply);
        v.into_iter()
            .map(|(pod, s)| {
                let created = humantime::parse_rfc3339(&s.created)
                    .map(epoch_s)
                    .unwrap_or(f64::NAN);
                netready_record::Backend {
                    pod: pod.clone(),
                    replies: s.replies,
                    first_reply: humantime::format_rfc3339_nanos(s.first_reply).to_string(),
                    created: s.created.clone(),
                    clock_skew_s: s.skew_s,
                    clock_skew_uncertainty_s: s.uncertainty_s,
                    // The creation on the client's clock is `created - skew`.
                    reachable_after_s: epoch_s(s.first_reply) - created + s.skew_s,
                }
            })
            .collect()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant digits: what wrk2 keeps.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(ns: Option<&Path>, addr: SocketAddr) -> Result<Sender, String> {
    let make = move || {
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    };
    let socket = match ns {
        Some(ns) => crate::in_netns(ns, make).await.map_err(|e| e.to_string())?,
        None => make(),
    }
    .map_err(|e| e.to_string())?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends `spec`'s load from inside the netns at `ns` (`None`: this process's own).
pub async fn run(ns: Option<&Path>, spec: &LoadSpec) -> LoadReport {
    let total = (spec.rate * spec.duration.as_secs_f64()).round().max(0.0) as u64;
    let conns = spec.connections.max(1) as u64;
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / spec.rate.max(1e-9));
    // The run ends a timeout after the last intended send: what is not answered by then fails.
    let end = start + gap.mul_f64(total as f64) + spec.timeout;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let spec = spec.clone();
        let ns: Option<PathBuf> = ns.map(Path::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut corrected = histogram();
            let mut uncorrected = histogram();
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut last = start;
            let mut sender: Option<Sender> = None;
            let mut backends: BTreeMap<String, Seen> = BTreeMap::new();
            let mut n = c;
            while n < total {
                let intended = start + gap.mul_f64(n as f64);
                n += conns;
                tokio::time::sleep_until(intended).await;
                if Instant::now() >= end {
                    *errors.entry("not_sent".into()).or_default() += 1;
                    continue;
                }
                let mut s = match sender.take() {
                    Some(s) if !s.is_closed() => s,
                    _ => match connect(ns.as_deref(), spec.target).await {
                        Ok(s) => s,
                        Err(_) => {
                            *errors.entry("connect".into()).or_default() += 1;
                            continue;
                        }
                    },
                };
                let req = http::Request::get(spec.path.as_str())
                    .header(http::header::HOST, spec.host.as_str())
                    .header(http::header::USER_AGENT, "netready-load")
                    .body(Empty::<Bytes>::new())
                    .expect("a GET with valid headers");
                let sent = Instant::now();
                let sent_wall = SystemTime::now();
                let exchange = async {
                    s.ready().await.map_err(|_| "http")?;
                    let resp = s.send_request(req).await.map_err(|_| "http")?;
                    let status = resp.status();
                    let header = |name: &str| {
                        resp.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let backend = header("x-netready-pod").map(|pod| {
                        (
                            pod,
                            header("x-netready-created").unwrap_or_default(),
                            header("x-netready-time")
                                .and_then(|t| humantime::parse_rfc3339(&t).ok()),
                        )
                    });
                    resp.into_body().collect().await.map_err(|_| "http")?;
                    if status.is_success() {
                        Ok(backend)
                    } else {
                        Err("status")
                    }
                };
                match tokio::time::timeout(spec.timeout, exchange).await {
                    Ok(Ok(backend)) => {
                        let done = Instant::now();
                        if let Some((pod, created, at)) = backend {
                            let got = SystemTime::now();
                            match backends.get_mut(&pod) {
                                Some(seen) => seen.replies += 1,
                                None => {
                                    let mid = epoch_s(sent_wall)
                                        + (epoch_s(got) - epoch_s(sent_wall)) / 2.0;
                                    backends.insert(
                                        pod,
                                        Seen {
                                            replies: 1,
                                            first_reply: got,
                                            created,
                                            skew_s: at.map_or(0.0, |t| epoch_s(t) - mid),
                                            uncertainty_s: (epoch_s(got) - epoch_s(sent_wall))
                                                / 2.0,
                                        },
                                    );
                                }
                            }
                        }
                        let us = |d: Duration| (d.as_micros() as u64).clamp(1, 3_600_000_000);
                        let _ = corrected.record(us(done - intended));
                        let _ = uncorrected.record(us(done - sent));
                        ok += 1;
                        last = last.max(done);
                        sender = Some(s);
                    }
                    Ok(Err(kind)) => {
                        *errors.entry(kind.into()).or_default() += 1;
                        if kind == "status" {
                            sender = Some(s);
                        }
                    }
                    Err(_) => *errors.entry("timeout".into()).or_default() += 1,
                }
            }
            (corrected, uncorrected, ok, errors, last, backends)
        }));
    }
    let mut report = LoadReport {
        corrected: histogram(),
        uncorrected: histogram(),
        ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        backends: BTreeMap::new(),
    };
    for t in tasks {
        if let Ok((c, u, ok, errors, last, backends)) = t.await {
            merge(&mut report.backends, backends);
            let _ = report.corrected.add(&c);
            let _ = report.uncorrected.add(&u);
            report.ok += ok;
            for (k, v) in errors {
                *report.errors.entry(k).or_default() += v;
            }
            report.elapsed = report.elapsed.max(last - start);
        }
    }
    report
}

/// Where a pod's load goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadTarget {
    /// The control Service's HTTP target.
    Service,
    /// A control pod on the pod's node, on `port`.
    SameNode {
        /// Its HTTP port.
        port: u16,
    },
    /// An address.
    Addr(SocketAddr),
}

/// A pod's load as its annotation asks for it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadPlan {
    /// Where.
    pub target: LoadTarget,
    /// Requests per second.
    pub rate: f64,
    /// For how long.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Connections.
    pub connections: usize,
    /// Request path.
    pub path: String,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Bounds on what one pod may ask for: the load is a model, not a flood.
pub const MAX_RATE: f64 = 100_000.0;
/// See [`MAX_RATE`].
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// See [`MAX_RATE`].
pub const MAX_CONNECTIONS: usize = 1000;

impl LoadPlan {
    /// Parses `rate=100,duration=10s[,connections=4][,target=service|same-node|<ip:port>]
    /// [,path=/][,timeout=2s]`; `same_node_port` is the control pods' HTTP port. Errors name
    /// the key.
    pub fn parse(value: &str, same_node_port: u16) -> Result<Self, String> {
        let mut plan = LoadPlan {
            target: LoadTarget::Service,
            rate: 0.0,
            duration: Duration::ZERO,
            connections: 4,
            path: "/".into(),
            timeout: Duration::from_secs(2),
        };
        let (mut rate, mut duration) = (false, false);
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{k}: {v:?}: {e}");
            match k {
                "rate" => {
                    plan.rate = v.parse().map_err(|e| bad(&e))?;
                    if !(plan.rate > 0.0 && plan.rate <= MAX_RATE) {
                        return Err(bad(&format!("must be above 0 and at most {MAX_RATE}")));
                    }
                    rate = true;
                }
                "duration" => {
                    plan.duration = humantime::parse_duration(v).map_err(|e| bad(&e))?;
                    if plan.duration.is_zero() || plan.duration > MAX_DURATION {
                        return Err(bad(&"must be above 0 and at most 1h"));
                    }
                    duration = true;
                }
                "connections" => {
                    plan.connections = v.parse().map_err(|e| bad(&e))?;
                    if plan.connections == 0 || plan.connections > MAX_CONNECTIONS {
                        return Err(bad(&format!("must be 1 to {MAX_CONNECTIONS}")));
                    }
                }
                "target" => {
                    plan.target = match v {
                        "service" => LoadTarget::Service,
                        "same-node" => LoadTarget::SameNode {
                            port: same_node_port,
                        },
                        addr => LoadTarget::Addr(addr.parse().map_err(|e| bad(&e))?),
                    }
                }
                "path" if v.starts_with('/') && v.len() <= 256 => plan.path = v.into(),
                "path" => return Err(bad(&"must start with / (at most 256 characters)")),
                "timeout" => {
                    plan.timeout = humantime::parse_duration(v).map_err(|e| bad(&e))?;
                }
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (rate, duration, connections, target, path, timeout)"
                    ))
                }
            }
        }
        if !rate || !duration {
            return Err("rate and duration are required (rate=100,duration=10s)".into());
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_keys_are_named() {
        let p =
            LoadPlan::parse("rate=50, duration=2s,connections=2,target=same-node", 8080).unwrap();
        assert_eq!(
            (p.rate, p.duration, p.connections),
            (50.0, Duration::from_secs(2), 2)
        );
        assert_eq!(p.target, LoadTarget::SameNode { port: 8080 });
        let p = LoadPlan::parse("rate=1,duration=1s,target=10.0.0.1:80,path=/x", 8080).unwrap();
        assert_eq!(p.target, LoadTarget::Addr("10.0.0.1:80".parse().unwrap()));
        assert_eq!(p.path, "/x");
        for (bad, names) in [
            ("rate=0,duration=1s", "rate"),
            ("rate=1e9,duration=1s", "rate"),
            ("rate=1,duration=soon", "duration"),
            ("rate=1,duration=1s,connections=0", "connections"),
            ("rate=1,duration=1s,target=nowhere", "target"),
            ("rate=1,duration=1s,path=x", "path"),
            ("rate=1,duration=1s,speed=9", "speed"),
            ("rate=1", "duration"),
        ] {
            let e = LoadPlan::parse(bad, 80).unwrap_err();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }
}
