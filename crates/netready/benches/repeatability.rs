//! Repeatability (issue 15, goal 4): identical `netready local` runs back to back, and how much
//! of their spread is the machine's.
//!
//! Runs `netready local` with its defaults NETREADY_BENCH_RUNS (8) times; extra flags from
//! NETREADY_BENCH_LOCAL_ARGS (whitespace-separated, e.g. `--pods 200`). Before each run it
//! times 200 execs of the bridge plugin's VERSION (nothing of netready's, no netns), a probe of
//! how fast this machine forks and execs a Go binary at that moment, since a CNI ADD is mostly
//! that. Prints network_ready p50 per run (from the run's records), the spread of consecutive
//! pairs (goal: within 10 %) and the probe's spread beside it.
//!
//! Then the same runs as two identical configurations interleaved (A B A B ...): the p50 of
//! the even runs' records pooled against the odd runs', and `netready compare` of the two
//! (its verdict, as a user comparing a CNI build against itself would get). As a control, the
//! first half of the runs pooled against the second half: same sizes, not interleaved, so
//! drift over the session falls between the halves instead of into both.
//!
//! `cargo bench -p netready --bench repeatability` (root); writes
//! `bench/results/repeatability-<unix time>.json`.

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
    let runs = netready_testkit::bench::env_or("NETREADY_BENCH_RUNS", 8usize);
    anyhow::ensure!(
        runs >= 4 && runs.is_multiple_of(2),
        "NETREADY_BENCH_RUNS: an even number >= 4"
    );
    let extra: Vec<String> = std::env::var("NETREADY_BENCH_LOCAL_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let out = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let mut ready_by_run: Vec<Vec<f64>> = Vec::new();
    let mut files = Vec::new();
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
        ready_by_run.push(ready.clone());
        files.push(dir.join("records.jsonl"));
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
    // Pooled halves: interleaved (even runs against odd) and, as the control, in blocks.
    let pooled = |pick: &dyn Fn(usize) -> bool| {
        let mut all: Vec<f64> = ready_by_run
            .iter()
            .enumerate()
            .filter(|(i, _)| pick(*i))
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        local::percentile(&mut all, 50.0)
    };
    let (even, odd) = (pooled(&|i| i.is_multiple_of(2)), pooled(&|i| i % 2 == 1));
    let (first, second) = (pooled(&|i| i < runs / 2), pooled(&|i| i >= runs / 2));
    let joined = |pick: &dyn Fn(usize) -> bool| {
        files
            .iter()
            .enumerate()
            .filter(|(i, _)| pick(*i))
            .map(|(_, f)| f.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let cmp = Command::new(local::BIN)
        .args(["compare", "--json"])
        .arg(joined(&|i| i.is_multiple_of(2)))
        .arg(joined(&|i| i % 2 == 1))
        .output()?;
    let verdict: serde_json::Value = serde_json::from_slice(&cmp.stdout)
        .unwrap_or_else(|_| json!({"unparsed": String::from_utf8_lossy(&cmp.stdout).to_string()}));
    let interleaved = spread(even, odd);
    let blocks = spread(first, second);
    println!(
        "interleaved halves ({} runs each): network_ready p50 {even:.2} vs {odd:.2} ms, {:.1} % apart; netready compare exit {:?}",
        runs / 2,
        interleaved * 1e2,
        cmp.status.code()
    );
    println!(
        "control, first half vs second half: {first:.2} vs {second:.2} ms, {:.1} % apart",
        blocks * 1e2
    );
    let file = netready_testkit::bench::write(
        "repeatability",
        json!({
            "params": {"runs": runs, "local_args": extra, "probe": "200 execs of /usr/lib/cni/bridge VERSION"},
            "runs": rows,
            "pair_spread": pairs,
            "probe_pair_spread": probe_pairs,
            "interleaved": {"even_p50_ms": even, "odd_p50_ms": odd, "spread": interleaved,
                            "compare_exit": cmp.status.code(), "compare": verdict},
            "blocks": {"first_p50_ms": first, "second_p50_ms": second, "spread": blocks},
            "goals": {"consecutive_pairs_within_10pct": within == pairs.len(),
                      "interleaved_halves_within_10pct": interleaved <= 0.10,
                      "compare_finds_no_regression": cmp.status.code() == Some(0)},
        }),
    )?;
    println!("results: {}", file.display());
    Ok(())
}
