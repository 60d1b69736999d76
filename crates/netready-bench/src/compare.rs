//! `netready compare BASE NEW`: a release gate. A timing regresses when its quantile in NEW
//! exceeds BASE by more than both a relative and an absolute threshold **and** a one-sided
//! Mann-Whitney U test says NEW's samples are larger (p < alpha): the thresholds keep tiny
//! shifts from failing a release, the rank test keeps noise from doing so.

use std::time::Duration;

use crate::records::Run;
use crate::stats::{mann_whitney_greater, summarize};

/// One gate: a timing, a quantile and how much worse it may get.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// Timing name (`network_ready`, `cni_add`, `check.service_http`, ...).
    pub metric: String,
    /// `p50`, `p90`, `p99`, `p99.9`, `max` or `mean`.
    pub quantile: String,
    /// Allowed relative increase (0.2 = 20 %).
    pub rel: f64,
    /// Allowed absolute increase.
    pub abs: Duration,
}

impl std::str::FromStr for Threshold {
    type Err = String;
    /// `metric:quantile:rel%:abs` (e.g. `network_ready:p99:20%:5ms`).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [metric, quantile, rel, abs] = parts[..] else {
            return Err(format!("threshold {s:?}: expected metric:quantile:rel%:abs, e.g. network_ready:p99:20%:5ms"));
        };
        if crate::stats::summarize(&[1.0]).get(quantile).is_none() {
            return Err(format!("threshold {s:?}: quantile {quantile:?} is not one of p50, p90, p99, p99.9, max, mean"));
        }
        let rel: f64 = rel
            .strip_suffix('%')
            .ok_or_else(|| format!("threshold {s:?}: relative part {rel:?} needs a %"))?
            .parse::<f64>()
            .map_err(|e| format!("threshold {s:?}: {e}"))?
            / 100.0;
        let abs =
            humantime::parse_duration(abs).map_err(|e| format!("threshold {s:?}: {abs:?}: {e}"))?;
        Ok(Threshold {
            metric: metric.into(),
            quantile: quantile.into(),
            rel,
            abs,
        })
    }
}

/// Comparison settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Gates.
    pub thresholds: Vec<Threshold>,
    /// Significance level of the rank test.
    pub alpha: f64,
    /// A run with a larger share of not-ready pods is invalid.
    pub max_failed: f64,
    /// A run whose `lag.checks_started` p99 is larger is invalid: it measured netready.
    pub max_lag: Duration,
    /// A run where the hypervisor stole a larger share of a node's CPU time is invalid (1.0,
    /// the default: never; the steal is shown either way).
    pub max_steal: f64,
}

impl Default for Options {
    fn default() -> Self {
        let t = |metric: &str, quantile: &str, rel: f64, ms: u64| Threshold {
            metric: metric.into(),
            quantile: quantile.into(),
            rel,
            abs: Duration::from_millis(ms),
        };
        Options {
            thresholds: vec![
                t("cni_add", "p50", 0.2, 5),
                t("cni_add", "p99", 0.5, 50),
                t("cni_add_first_to_success", "p50", 0.2, 5),
                t("network_ready", "p50", 0.2, 10),
                t("network_ready", "p90", 0.3, 20),
                t("network_ready", "p99", 0.5, 50),
            ],
            alpha: 0.01,
            max_failed: 0.05,
            max_lag: crate::records::DEFAULT_MAX_LAG,
            max_steal: 1.0,
        }
    }
}

/// One gate's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Timing.
    pub metric: String,
    /// Quantile.
    pub quantile: String,
    /// BASE's value, seconds.
    pub base: f64,
    /// NEW's value, seconds.
    pub new: f64,
    /// Relative change.
    pub change: f64,
    /// One-sided rank test p-value (NEW larger).
    pub p_value: f64,
    /// Whether this gate failed.
    pub regression: bool,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No gate failed.
    Pass,
    /// At least one gate failed.
    Regression,
    /// A run is not usable (too many failed pods, netready's own lag too large, or no samples).
    Invalid(String),
}

/// Compares two runs.
pub fn compare(base: &Run, new: &Run, opts: &Options) -> (Vec<Row>, Verdict) {
    for (name, run) in [("BASE", base), ("NEW", new)] {
        if run.records.is_empty() {
            return (
                Vec::new(),
                Verdict::Invalid(format!("{name} has no records")),
            );
        }
        let failed = run.failed_share();
        if failed > opts.max_failed {
            return (
                Vec::new(),
                Verdict::Invalid(format!(
                    "{name}: {:.1}% of pods not network-ready, more than the {:.1}% allowed",
                    failed * 100.0,
                    opts.max_failed * 100.0
                )),
            );
        }
        if let Some(why) = run.lag_problem(opts.max_lag) {
            return (Vec::new(), Verdict::Invalid(format!("{name}: {why}")));
        }
        if let Some(why) = run.steal_problem(opts.max_steal) {
            return (Vec::new(), Verdict::Invalid(format!("{name}: {why}")));
        }
    }
    let mut rows = Vec::new();
    for t in &opts.thresholds {
        let (b, n) = (base.samples(&t.metric), new.samples(&t.metric));
        if b.is_empty() || n.is_empty() {
            continue;
        }
        let bq = summarize(&b).get(&t.quantile).unwrap_or(f64::NAN);
        let nq = summarize(&n).get(&t.quantile).unwrap_or(f64::NAN);
        let p = mann_whitney_greater(&b, &n);
        let worse = nq - bq;
        let regression = worse > bq * t.rel && worse > t.abs.as_secs_f64() && p < opts.alpha;
        rows.push(Row {
            metric: t.metric.clone(),
            quantile: t.quantile.clone(),
            base: bq,
            new: nq,
            change: if bq > 0.0 { worse / bq } else { f64::NAN },
            p_value: p,
            regression,
        });
    }
    if rows.is_empty() {
        return (
            rows,
            Verdict::Invalid("no timing of the thresholds is in both runs".into()),
        );
    }
    let verdict = if rows.iter().any(|r| r.regression) {
        Verdict::Regression
    } else {
        Verdict::Pass
    };
    (rows, verdict)
}

/// The side-by-side table.
pub fn table(rows: &[Row], verdict: &Verdict) -> String {
    let mut out = format!(
        "{:<28} {:>6} {:>11} {:>11} {:>9} {:>9}  {}\n",
        "timing", "q", "base ms", "new ms", "change", "p", "verdict"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<28} {:>6} {:>11.2} {:>11.2} {:>8.1}% {:>9.4}  {}\n",
            r.metric,
            r.quantile,
            r.base * 1e3,
            r.new * 1e3,
            r.change * 100.0,
            r.p_value,
            if r.regression { "REGRESSION" } else { "ok" }
        ));
    }
    out.push_str(&match verdict {
        Verdict::Pass => "result: pass\n".to_string(),
        Verdict::Regression => "result: REGRESSION\n".to_string(),
        Verdict::Invalid(why) => format!("result: INVALID: {why}\n"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `n` ready pods whose last required check started `lag` after the ADD.
    fn run_with_lag(n: usize, lag: f64) -> Run {
        run_with(n, lag, 0.0)
    }

    /// The same on a host whose hypervisor stole `steal` of the CPU time.
    fn run_with(n: usize, lag: f64, steal: f64) -> Run {
        Run::from_values((0..n).map(|i| {
            serde_json::json!({"schema_version": 1, "run_id": "r", "node": "n",
                "netready_version": "0", "fingerprint": {"run_id": "r", "host_load": {
                    "since": "2026-12-02T00:00:00.000000000Z", "seconds": 10.0 + i as f64,
                    "cpu_s": 20.0, "steal_s": 20.0 * steal, "steal_share": steal,
                    "backlog_drops": 0, "cgroup": null}},
                "pod": {"namespace": "ns", "name": "p", "uid": "u", "attempt": 0},
                "sandbox_id": format!("s{i}"), "ips": [],
                "durations_s": {"cni_add": 0.01, "cni_add_first_to_success": 0.01,
                                "network_ready": 0.02 + lag, "sandbox_request_to_ready": 0.03 + lag},
                "cni_add_attempts": 1,
                "stamps": {"first_request": "2026-12-02T00:00:00.000000000Z", "first_attempt": null,
                           "cni_add_success_end": null, "network_ready": null},
                "attempts": [], "checks": [], "traffic": null,
                "lag_s": {"cni_queued": 0.0, "first_probe": lag, "checks_started": lag},
                "verdict": {"network_ready": true, "reason": null}})
        }))
        .unwrap()
    }

    #[test]
    fn a_run_on_a_host_whose_cpu_was_stolen_is_invalid() {
        let opts = Options {
            max_steal: 0.02,
            ..Options::default()
        };
        let (quiet, stolen) = (run_with(50, 0.002, 0.001), run_with(50, 0.002, 0.07));
        assert_eq!(
            compare(&quiet, &stolen, &Options::default()).1,
            Verdict::Pass,
            "off by default"
        );
        assert_eq!(compare(&quiet, &quiet, &opts).1, Verdict::Pass);
        let Verdict::Invalid(why) = compare(&quiet, &stolen, &opts).1 else {
            panic!("a run with 7% steal compared");
        };
        assert!(
            why.starts_with("NEW: the hypervisor stole 7.0% of r/n's CPU time"),
            "{why}"
        );
        assert_eq!(
            stolen.fingerprints.len(),
            1,
            "the load is not part of the run's identity"
        );
    }

    #[test]
    fn a_run_that_measured_netready_is_invalid() {
        let opts = Options::default();
        let (small, large) = (run_with_lag(50, 0.002), run_with_lag(50, 0.08));
        assert_eq!(compare(&small, &small, &opts).1, Verdict::Pass);
        for (base, new, who) in [(&large, &small, "BASE"), (&small, &large, "NEW")] {
            let Verdict::Invalid(why) = compare(base, new, &opts).1 else {
                panic!("a run with 80 ms of lag compared");
            };
            assert!(
                why.starts_with(&format!(
                    "{who}: netready's own lag lag.checks_started p99 80.0 ms"
                )),
                "{why}"
            );
        }
        let lenient = Options {
            max_lag: Duration::from_millis(100),
            ..Options::default()
        };
        let verdict = compare(&small, &large, &lenient).1;
        assert!(!matches!(verdict, Verdict::Invalid(_)), "{verdict:?}");
    }

    #[test]
    fn thresholds_parse_and_name_their_errors() {
        let t: Threshold = "network_ready:p99:20%:5ms".parse().unwrap();
        assert_eq!((t.rel, t.abs), (0.2, Duration::from_millis(5)));
        assert!("network_ready:p42:20%:5ms"
            .parse::<Threshold>()
            .unwrap_err()
            .contains("p42"));
        assert!("network_ready:p99:20:5ms"
            .parse::<Threshold>()
            .unwrap_err()
            .contains('%'));
        assert!("network_ready"
            .parse::<Threshold>()
            .unwrap_err()
            .contains("metric:quantile"));
    }
}
