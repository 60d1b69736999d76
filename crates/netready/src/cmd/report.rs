//! `netready report`: statistics of one or more results files.

use std::path::PathBuf;

use anyhow::Context as _;
use netready_bench::{plot, report, Run};

/// Output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// The whole report as JSON.
    Json,
    /// ClusterLoader2 PerfData (perfdash).
    Perfdata,
}

/// Flags of `netready report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Results files (JSON lines written by `netready serve`).
    #[arg(required = true, value_name = "RESULTS.jsonl")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Flag the run when netready's own lag (ADD end to the last required check's first
    /// probe, `lag.checks_started`) has a larger p99: its timings then include netready's
    /// queueing.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    pub max_lag: std::time::Duration,
    /// Also draw latency CDFs, a histogram and throughput to FILE (.svg or .html).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// Prints the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let run = Run::load(&args.files)?;
    anyhow::ensure!(!run.records.is_empty(), "no records in {:?}", args.files);
    let r = report::build_with(&run, args.max_lag);
    match args.format {
        Format::Table => print!("{}", report::table(&r)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report::json(&r))?),
        Format::Perfdata => println!("{}", serde_json::to_string_pretty(&report::perfdata(&r))?),
    }
    if let Some(p) = &args.plot {
        plot::write(&run, &r, p).with_context(|| format!("plot {}", p.display()))?;
        eprintln!("plots written to {}", p.display());
    }
    Ok(())
}
