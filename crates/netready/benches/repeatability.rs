//! Repeatability (issue 15, goal 4): identical `netready local` runs back to back, and how much
//! of their spread is the machine's.
//!
//! Runs `netready local` with its defaults NETREADY_BENCH_RUNS (4) times; extra flags from
//! NETREADY_BENCH_LOCAL_ARGS (whitespace-separated, e.g. `--pods 200`). Before each run it
//! times 200 execs of the bridge plugin's VERSION (nothing of netready's, no netns), a probe of
//! how fast this machine forks and execs a Go binary at that moment, since a CNI ADD is mostly
//! that. Prints network_ready p50 per run (from the run's records), the spread of consecutive
//! pairs (goal: within 10 %) and the probe's spread beside it. `cargo bench -p netready --bench
//! repeatability` (root); writes `bench/results/repeatability-<unix time>.json`.

#[path = "common/local.rs"]
mod local;

use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Milliseconds for 200 execs of `bridge` answering VERSION.
fn exec_probe() -> anyhow::Result<f64> {
    let t = Instant::now();
    for _ in 0..200 {
        let s = Command::new("/usr/lib/cni/bridge")
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(s.success(), "bridge VERSION: {s}");
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Relative spread of two values: |a - b| / min(a, b).
fn spread(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.min(b)
}

fn main() -> anyhow::Result<()> {
    let runs = netready_testkit::bench::env_or("NETREADY_BENCH_RUNS", 4usize);
    let extra: Vec<String> = std::env::var("NETREADY_BENCH_LOCAL_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let out = tempfile::tempdir()?;
    let mut rows = Vec::new();
    println!("run  exec probe (200 execs)  network_ready p50  p99  pods");
    for i in 0..runs {
        let probe = exec_probe()?;
        let dir = local::run(out.path(), &format!("repeat-{i}"), &extra)?;
        let mut ready: Vec<f64> = local::lines(&dir.join("records.jsonl"))
            .iter()
            .filter(|r| r["verdict"]["network_ready"] == true)
            .filter_map(|r| r["durations_s"]["network_ready"].as_f64())
            .map(|s| s * 1e3)
            .collect();
        let n = ready.len();
        let p50 = local::percentile(&mut ready, 50.0);
        let p99 = local::percentile(&mut ready, 99.0);
        println!("{i:>3}  {probe:>17.0} ms  {p50:>14.2} ms  {p99:>6.1} ms  {n:>4}");
        rows.push(json!({"exec_probe_ms": probe, "network_ready_ms": {"p50": p50, "p99": p99}, "pods": n}));
    }
    let p50s: Vec<f64> = rows
        .iter()
        .map(|r| r["network_ready_ms"]["p50"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let probes: Vec<f64> = rows
        .iter()
        .map(|r| r["exec_probe_ms"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let pairs: Vec<f64> = p50s.windows(2).map(|w| spread(w[0], w[1])).collect();
    let probe_pairs: Vec<f64> = probes.windows(2).map(|w| spread(w[0], w[1])).collect();
    let worst = pairs.iter().copied().fold(0.0, f64::max);
    let within = pairs.iter().filter(|p| **p <= 0.10).count();
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        (hi - lo) / lo
    };
    println!(
        "consecutive pairs within 10 %: {within} of {} (worst {:.0} %); range of p50 {:.0} %, of the exec probe {:.0} %",
        pairs.len(),
        worst * 1e2,
        range(&p50s) * 1e2,
        range(&probes) * 1e2
    );
    let file = netready_testkit::bench::write(
        "repeatability",
        json!({
            "params": {"runs": runs, "local_args": extra, "probe": "200 execs of /usr/lib/cni/bridge VERSION"},
            "runs": rows,
            "pair_spread": pairs,
            "probe_pair_spread": probe_pairs,
            "goals": {"consecutive_pairs_within_10pct": within == pairs.len()},
        }),
    )?;
    println!("results: {}", file.display());
    Ok(())
}
