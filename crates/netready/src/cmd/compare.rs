//! `netready compare BASE NEW`: exits 1 on a regression, 2 when a run is invalid.

use std::path::PathBuf;

use netready_bench::compare::{self, Options, Threshold, Verdict};
use netready_bench::Run;

/// Flags of `netready compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The baseline results file(s), comma-separated.
    #[arg(
        value_name = "BASE",
        value_delimiter = ',',
        num_args = 1,
        required = true
    )]
    pub base: Vec<PathBuf>,
    /// The new results file(s), comma-separated.
    #[arg(
        value_name = "NEW",
        value_delimiter = ',',
        num_args = 1,
        required = true
    )]
    pub new: Vec<PathBuf>,
    /// A gate `metric:quantile:rel%:abs`, repeatable; replaces the defaults
    /// (cni_add p50 20%/5ms and p99 50%/50ms, cni_add_first_to_success p50 20%/5ms,
    /// network_ready p50 20%/10ms, p90 30%/20ms, p99 50%/50ms).
    #[arg(long = "threshold", value_name = "GATE")]
    pub thresholds: Vec<Threshold>,
    /// Significance level of the Mann-Whitney U test.
    #[arg(long, default_value_t = 0.01)]
    pub alpha: f64,
    /// Largest share of not-ready pods a valid run may have.
    #[arg(long, default_value_t = 0.05)]
    pub max_failed: f64,
    /// Largest p99 of netready's own lag (ADD end to the last required check's first probe,
    /// `lag.checks_started`) a valid run may have: above it the run measured netready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    pub max_lag: std::time::Duration,
    /// Largest share of a node's CPU time the hypervisor may steal in a valid run
    /// (`fingerprint.host_load.steal_share`, 0.02 = 2 %): above it the host, not the CNI, set
    /// the pace. Default 1: never invalid, as a CI machine's steal is not the CNI's fault;
    /// `report` shows it either way.
    #[arg(long, default_value_t = 1.0)]
    pub max_steal: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Compares and returns the exit code (0 pass, 1 regression, 2 invalid).
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let base = Run::load(&args.base)?;
    let new = Run::load(&args.new)?;
    let mut opts = Options {
        alpha: args.alpha,
        max_failed: args.max_failed,
        max_lag: args.max_lag,
        max_steal: args.max_steal,
        ..Options::default()
    };
    if !args.thresholds.is_empty() {
        opts.thresholds = args.thresholds;
    }
    let (rows, verdict) = compare::compare(&base, &new, &opts);
    if args.json {
        let v = serde_json::json!({
            "rows": rows,
            "verdict": match &verdict { Verdict::Pass => "pass".to_string(), Verdict::Regression => "regression".into(), Verdict::Invalid(w) => format!("invalid: {w}") },
            "base_fingerprints": base.fingerprints, "new_fingerprints": new.fingerprints,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", compare::table(&rows, &verdict));
    }
    Ok(match verdict {
        Verdict::Pass => 0,
        Verdict::Regression => 1,
        Verdict::Invalid(_) => 2,
    })
}
