//! `netready drive`: pod flux from a kubelet-like client against any CRI endpoint.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use netready_bench::{report, Run};
use netready_drive::{Client, Mode, Plan};

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

/// How pods arrive and live: the flags `drive` and `local` share. Unset flags take the
/// command's own defaults ([`LoadDefaults`]).
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Arrival mode [default: burst for drive, rate for local].
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Pods to create (burst, rate) [default: 100 for drive, 40 per node for local].
    #[arg(long)]
    pub pods: Option<usize>,
    /// Pods in flight at most (burst).
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Pods per second (rate) [default: 10 for drive, 4 per node for local].
    #[arg(long)]
    pub rate: Option<f64>,
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
    /// How long each pod lives once ready [default: 0s for drive, 5s for local].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lifetime: Option<Duration>,
    /// Do not probe readiness with ExecSync (ready = container started).
    #[arg(long)]
    pub no_probe: bool,
    /// Wait between readiness probes of a pod: kubelet's shortest `periodSeconds` (1 s), its
    /// first probe as the container starts. Shorter probes a pod's readiness more finely at
    /// the price of ExecSync calls competing with the node's work (netready's own records
    /// time network readiness exactly either way).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub probe_period: Duration,
    /// Give up waiting for readiness after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub ready_timeout: Duration,
    /// Wait before retrying a failed RunPodSandbox (kubelet waits 12–15 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "12s")]
    pub sandbox_backoff: Duration,
    /// RunPodSandbox calls per pod at most.
    #[arg(long, default_value_t = 5)]
    pub sandbox_attempts: u32,
    /// cgroup parent of the pods, as kubelet sets it (`/kubepods/besteffort`).
    #[arg(long, default_value = "")]
    pub cgroup_parent: String,
    /// Pods alive on one node at most, as kubelet's maxPods: a scheduler places no more, so
    /// arrivals beyond it wait (their wait is in `start_lag`); 0: no bound.
    #[arg(long, default_value_t = 110)]
    pub max_pods: usize,
    /// Seed of the Poisson arrivals: the same seed offers the same schedule, so two runs with
    /// the same flags get the same load (`netready local` gives node i the seed plus i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The container's command line, split at whitespace (netperf pods run it in the pod's
    /// netns once network-ready, if netready allows the binary: `--command "ping -c 3
    /// 10.244.0.2"`). Default: `sleep infinity` for netperf pods (checks only), else a shell
    /// loop that ends on SIGTERM.
    #[arg(long)]
    pub command: Option<String>,
}

/// A command's defaults for the [`LoadArgs`] it leaves unset.
#[derive(Debug, Clone, Copy)]
pub struct LoadDefaults {
    /// Arrival mode.
    pub mode: ModeArg,
    /// Pods.
    pub pods: usize,
    /// Pods per second.
    pub rate: f64,
    /// Pod lifetime once ready.
    pub lifetime: Duration,
}

impl LoadArgs {
    /// The driver's plan against `socket`.
    pub fn plan(
        &self,
        defaults: LoadDefaults,
        socket: PathBuf,
        log_root: PathBuf,
        run_id: String,
    ) -> anyhow::Result<Plan> {
        let rate = self.rate.unwrap_or(defaults.rate);
        anyhow::ensure!(rate > 0.0, "--rate must be above 0");
        let mut labels: HashMap<String, String> = self.labels.iter().cloned().collect();
        if labels.is_empty() {
            labels.insert("netperf".into(), "true".into());
        }
        let labels_are_netperf = labels.get("netperf").is_some_and(|v| v == "true");
        let mode = match self.mode.unwrap_or(defaults.mode) {
            ModeArg::Burst => Mode::Burst,
            ModeArg::Rate => Mode::Rate {
                rate,
                poisson: matches!(self.arrivals, Arrivals::Poisson),
            },
            ModeArg::Churn => Mode::Churn {
                population: self.population,
                duration: self.duration,
            },
        };
        Ok(Plan {
            endpoint: socket,
            mode,
            pods: self.pods.unwrap_or(defaults.pods),
            concurrency: self.concurrency,
            labels,
            annotations: self.annotations.iter().cloned().collect(),
            image: self.image.clone(),
            log_root,
            lifetime: self.lifetime.unwrap_or(defaults.lifetime),
            probe: !self.no_probe,
            probe_period: self.probe_period,
            ready_timeout: self.ready_timeout,
            sandbox_backoff: self.sandbox_backoff,
            sandbox_attempts: self.sandbox_attempts,
            stop_grace: 2,
            run_id,
            cgroup_parent: self.cgroup_parent.clone(),
            max_pods: self.max_pods,
            seed: self.seed,
            command: match &self.command {
                Some(c) => c.split_whitespace().map(String::from).collect(),
                None if labels_are_netperf => vec!["sleep".into(), "infinity".into()],
                None => Vec::new(),
            },
        })
    }
}

/// The load parameters stamped into every record's fingerprint.
pub fn load_params(plan: &Plan, endpoint: &str) -> serde_json::Value {
    serde_json::json!({
        "mode": format!("{:?}", plan.mode), "pods": plan.pods, "concurrency": plan.concurrency,
        "max_pods": plan.max_pods, "seed": plan.seed, "command": plan.command, "probe_period_s": plan.probe_period.as_secs_f64(),
        "lifetime_s": plan.lifetime.as_secs_f64(), "labels": plan.labels, "endpoint": endpoint,
    })
}

/// Flags of `netready drive`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CRI endpoint (`unix:///run/netready/netready.sock`, or containerd's).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Pod log directories go here (default: a temporary directory removed at the end).
    #[arg(long, value_name = "DIR")]
    pub log_root: Option<PathBuf>,
    /// Write one JSON line per pod here (readable by `netready report`).
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Run id stamped on records.
    #[arg(long)]
    pub run_id: Option<String>,
}

const DRIVE_DEFAULTS: LoadDefaults = LoadDefaults {
    mode: ModeArg::Burst,
    pods: 100,
    rate: 10.0,
    lifetime: Duration::ZERO,
};

/// Drives the pods, prints progress and a summary; the exit code.
///
/// SIGINT or SIGTERM stops arrivals and deletes the pods made, as kubelet would (a drive
/// that left them would leave their sandboxes, namespaces and addresses on the node), then
/// prints the report so far and what could not be deleted, and exits 128 + the signal. A
/// second signal leaves at once.
pub async fn run(args: Args) -> anyhow::Result<u8> {
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
    let run_id = args
        .run_id
        .unwrap_or_else(|| format!("drive-{}", std::process::id()));
    let plan = Arc::new(args.load.plan(
        DRIVE_DEFAULTS,
        socket,
        args.log_root.unwrap_or_else(|| temp.path().to_owned()),
        run_id.clone(),
    )?);
    let params = load_params(&plan, &args.endpoint);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut signals = super::Signals::new()?;
    let stopped_by = Arc::new(std::sync::OnceLock::new());
    let watcher = tokio::spawn({
        let (stop, stopped_by) = (stop.clone(), stopped_by.clone());
        async move {
            let name = signals.next().await;
            eprintln!(
                "{name}: starting no more pods; deleting those made ({name} again leaves them)"
            );
            let _ = stopped_by.set(name);
            stop.cancel();
            let again = signals.next().await;
            eprintln!("{again}: leaving the pods not deleted yet (crictl pods lists them)");
            std::process::exit(super::exit_code(again).into());
        }
    });
    let driver = tokio::spawn(netready_drive::run_until(plan.clone(), client, tx, stop));
    let expected = match plan.mode {
        Mode::Churn { .. } => None,
        _ => Some(plan.pods),
    };
    let fingerprint = serde_json::json!({"run_id": run_id, "load": params, "netready_version": env!("CARGO_PKG_VERSION")});
    let mut collector = Collector::new(args.results.as_deref(), expected, fingerprint)?;
    while let Some(rec) = rx.recv().await {
        collector.add(rec)?;
    }
    driver.await.context("driver")?;
    watcher.abort();
    let records = collector.finish();
    let left = not_deleted(&records);
    let run = Run::from_values(records).map_err(anyhow::Error::msg);
    if let Ok(run) = &run {
        print!("{}", report::table(&report::build(run)));
    }
    if !left.is_empty() {
        eprintln!("could not delete {} pods:", left.len());
        for l in &left {
            eprintln!("  {l}");
        }
    }
    run?;
    Ok(stopped_by.get().map_or(0, |s| super::exit_code(s)))
}

/// The pods whose StopPodSandbox or RemovePodSandbox failed: `<sandbox id> <pod>: <error>`.
fn not_deleted(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| {
            let errors = r["errors"].as_array()?;
            let failed: Vec<&str> = errors
                .iter()
                .filter_map(|e| e.as_str())
                .filter(|e| e.starts_with("StopPodSandbox") || e.starts_with("RemovePodSandbox"))
                .collect();
            (!failed.is_empty()).then(|| {
                format!(
                    "{} {}/{}: {}",
                    r["sandbox_id"].as_str().unwrap_or("?"),
                    r["pod"]["namespace"].as_str().unwrap_or(""),
                    r["pod"]["name"].as_str().unwrap_or(""),
                    failed.join("; ")
                )
            })
        })
        .collect()
}

/// Takes the drivers' records as pods finish: stamps the fingerprint, appends each to the
/// results file at once (a run cut short keeps what it did), and shows progress on a terminal.
pub struct Collector {
    out: Option<std::fs::File>,
    records: Vec<serde_json::Value>,
    ready: usize,
    bar: indicatif::ProgressBar,
    fingerprint: serde_json::Value,
}

impl Collector {
    /// `expected` pods (`None`: unknown, churn); records go to `results` when given.
    pub fn new(
        results: Option<&Path>,
        expected: Option<usize>,
        fingerprint: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let out = match results {
            Some(p) => Some(
                std::fs::File::create(p)
                    .with_context(|| format!("results file {}", p.display()))?,
            ),
            None => None,
        };
        // indicatif draws on stderr only when it is a terminal.
        let bar = match expected {
            Some(n) => indicatif::ProgressBar::new(n as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} pods, {msg} ({per_sec})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} {spinner} {pos} pods, {msg} ({per_sec})",
                )
                .expect("valid template"),
            ),
        };
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Ok(Collector {
            out,
            records: Vec::new(),
            ready: 0,
            bar,
            fingerprint,
        })
    }

    /// One finished pod.
    pub fn add(&mut self, mut rec: serde_json::Value) -> anyhow::Result<()> {
        rec["fingerprint"] = self.fingerprint.clone();
        if let Some(f) = self.out.as_mut() {
            use std::io::Write as _;
            writeln!(f, "{rec}")?;
        }
        if rec["verdict"]["network_ready"] == true {
            self.ready += 1;
        }
        self.records.push(rec);
        self.bar.inc(1);
        self.bar.set_message(format!(
            "{} ready, {} failed",
            self.ready,
            self.records.len() - self.ready
        ));
        Ok(())
    }

    /// Ends the progress display; returns every record.
    pub fn finish(self) -> Vec<serde_json::Value> {
        self.bar.finish_and_clear();
        self.records
    }
}
