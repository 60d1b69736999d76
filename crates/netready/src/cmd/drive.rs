//! `netready drive`: pod flux from a kubelet-like client against any CRI endpoint.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use netready_bench::drive::{self, Client, Mode, Plan};
use netready_bench::{report, Run};

/// Arrival mode.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// `--pods` pods as fast as `--concurrency` allows.
    Burst,
    /// Open loop at `--rate` pods/s (`--arrivals`), `--pods` of them.
    Rate,
    /// `--population` pods alive at once for `--duration`.
    Churn,
}

/// Inter-arrival times in rate mode.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Arrivals {
    /// Fixed gaps.
    Uniform,
    /// Exponential gaps.
    Poisson,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Flags of `netready drive`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CRI endpoint (`unix:///run/netready/netready.sock`, or containerd's).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// Arrival mode.
    #[arg(long, value_enum, default_value = "burst")]
    pub mode: ModeArg,
    /// Pods to create (burst, rate).
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Pods in flight at most (burst).
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Pods per second (rate).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Arrivals (rate).
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrivals: Arrivals,
    /// Pods alive at once (churn).
    #[arg(long, default_value_t = 20)]
    pub population: usize,
    /// How long to churn.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    pub duration: Duration,
    /// Pod label, repeatable (default: netperf=true).
    #[arg(long = "label", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// Pod annotation, repeatable (e.g. netready.io/checks-required=same_node_pod).
    #[arg(long = "annotation", value_parser = key_value)]
    pub annotations: Vec<(String, String)>,
    /// Container image.
    #[arg(long, default_value = "registry.k8s.io/pause:3.9")]
    pub image: String,
    /// How long each pod lives once ready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub lifetime: Duration,
    /// Do not probe readiness with ExecSync (ready = container started).
    #[arg(long)]
    pub no_probe: bool,
    /// Give up waiting for readiness after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub ready_timeout: Duration,
    /// Wait before retrying a failed RunPodSandbox (kubelet waits 12–15 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "12s")]
    pub sandbox_backoff: Duration,
    /// RunPodSandbox calls per pod at most.
    #[arg(long, default_value_t = 5)]
    pub sandbox_attempts: u32,
    /// Pod log directories go here (default: a temporary directory removed at the end).
    #[arg(long, value_name = "DIR")]
    pub log_root: Option<PathBuf>,
    /// Write one JSON line per pod here (readable by `netready report`).
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Run id stamped on records.
    #[arg(long)]
    pub run_id: Option<String>,
    /// cgroup parent of the pods, as kubelet sets it (`/kubepods/besteffort`).
    #[arg(long, default_value = "")]
    pub cgroup_parent: String,
}

/// Drives the pods, prints progress and a summary.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let socket = PathBuf::from(
        args.endpoint
            .strip_prefix("unix://")
            .unwrap_or(&args.endpoint),
    );
    let client = Client::connect(&socket)
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let temp = tempfile::Builder::new()
        .prefix("netready-drive-")
        .tempdir()?;
    let mut labels: HashMap<String, String> = args.labels.into_iter().collect();
    if labels.is_empty() {
        labels.insert("netperf".into(), "true".into());
    }
    let mode = match args.mode {
        ModeArg::Burst => Mode::Burst,
        ModeArg::Rate => Mode::Rate {
            rate: args.rate,
            poisson: matches!(args.arrivals, Arrivals::Poisson),
        },
        ModeArg::Churn => Mode::Churn {
            population: args.population,
            duration: args.duration,
        },
    };
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    let run_id = args
        .run_id
        .unwrap_or_else(|| format!("drive-{}", std::process::id()));
    let plan = Arc::new(Plan {
        endpoint: socket,
        mode,
        pods: args.pods,
        concurrency: args.concurrency,
        labels,
        annotations: args.annotations.into_iter().collect(),
        image: args.image,
        log_root: args.log_root.unwrap_or_else(|| temp.path().to_owned()),
        lifetime: args.lifetime,
        probe: !args.no_probe,
        ready_timeout: args.ready_timeout,
        sandbox_backoff: args.sandbox_backoff,
        sandbox_attempts: args.sandbox_attempts,
        stop_grace: 2,
        run_id: run_id.clone(),
        cgroup_parent: args.cgroup_parent,
    });
    let params = serde_json::json!({
        "mode": format!("{:?}", plan.mode), "pods": plan.pods, "concurrency": plan.concurrency,
        "lifetime_s": plan.lifetime.as_secs_f64(), "labels": plan.labels, "endpoint": args.endpoint,
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(drive::run(plan.clone(), client, tx));
    let mut out = match &args.results {
        Some(p) => Some(
            std::fs::File::create(p).with_context(|| format!("results file {}", p.display()))?,
        ),
        None => None,
    };
    let mut records = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let expected = match plan.mode {
        Mode::Churn { .. } => None,
        _ => Some(plan.pods),
    };
    while let Some(mut rec) = rx.recv().await {
        rec["fingerprint"] = serde_json::json!({"run_id": run_id, "load": params, "netready_version": env!("CARGO_PKG_VERSION")});
        if let Some(f) = out.as_mut() {
            use std::io::Write as _;
            writeln!(f, "{rec}")?;
        }
        records.push(rec);
        if tty {
            let ready = records
                .iter()
                .filter(|r| r["verdict"]["network_ready"] == true)
                .count();
            let total = expected.map(|n| format!("/{n}")).unwrap_or_default();
            eprint!(
                "\r{}{total} pods done, {ready} ready, {} failed",
                records.len(),
                records.len() - ready
            );
        }
    }
    if tty {
        eprintln!();
    }
    driver.await.context("driver")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("r.jsonl");
    std::fs::write(
        &path,
        records.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )?;
    let run = Run::load(&[path])?;
    print!("{}", report::table(&report::build(&run)));
    Ok(())
}
