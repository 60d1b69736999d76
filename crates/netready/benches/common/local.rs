#![allow(dead_code)] // each benchmark uses part of it
//! Running `netready local` from a benchmark and reading what it wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The netready binary cargo built for this benchmark.
pub const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// Starts `netready local` with `args`, results under `out/<run_id>/`.
pub fn start(out: &Path, run_id: &str, args: &[String]) -> std::io::Result<Child> {
    Command::new(BIN)
        .arg("local")
        .arg("--out")
        .arg(out)
        .args(["--run-id", run_id])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Runs it to the end; fails with its output unless it exits 0 or 1 (1: some pod not ready).
pub fn run(out: &Path, run_id: &str, args: &[String]) -> anyhow::Result<PathBuf> {
    let o = start(out, run_id, args)?.wait_with_output()?;
    anyhow::ensure!(
        matches!(o.status.code(), Some(0 | 1)),
        "netready local {args:?}: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out.join(run_id))
}

/// JSON lines of a file.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Seconds since the epoch of an RFC 3339 stamp.
pub fn stamp(v: &serde_json::Value) -> Option<f64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The `p` percentile (0..=100) of `v`, as `netready report` computes it.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    netready_bench::stats::percentile(v, p)
}
