//! `netready serve`: the CRI runtime kubelet talks to.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::builder::TypedValueParser as _;
use netready_cri::server::{self, ListenOptions};
use netready_cri::{NetperfRuntime, Router, Upstream};

use netready_cri::config::{self, Config, DEFAULT_CONFIG};

/// Flags of `netready serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file (every key optional; see --print-default-config).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the default configuration, with comments, and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Load the configuration (file and flags), report an error with its file and key, exit.
    #[arg(long)]
    pub check_config: bool,
    /// Unix socket to serve CRI on (overrides serve.socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// containerd's CRI socket (overrides serve.upstream); "" for none: netperf pods only.
    // Not PathBuf's own parser: it refuses the empty value, which means "no upstream".
    #[arg(long, value_name = "PATH", value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    pub upstream: Option<PathBuf>,
    /// No upstream runtime: netready runs netperf pods only (same as --upstream "").
    #[arg(long, conflicts_with = "upstream")]
    pub no_upstream: bool,
    /// CNI configuration directory (overrides netperf.cni.conf_dir).
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory, repeatable (overrides netperf.cni.bin_dirs).
    #[arg(long, value_name = "DIR")]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Directory for pod network namespaces (overrides netperf.netns_dir).
    #[arg(long, value_name = "DIR")]
    pub netns_dir: Option<PathBuf>,
    /// State directory (overrides netperf.state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// `host:port` for /metrics, empty for none (overrides serve.metrics_address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<String>,
    /// Log level or filter (overrides log.level; NETREADY_LOG overrides both).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// Loads the configuration a `serve` invocation asks for, flags applied.
pub fn effective_config(args: &Args) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => config::load(path)?,
        None => Config::default(),
    };
    if let Some(s) = &args.socket {
        cfg.serve.socket = s.clone();
    }
    if let Some(u) = &args.upstream {
        cfg.serve.upstream = u.clone();
    }
    if args.no_upstream {
        cfg.serve.upstream = PathBuf::new();
    }
    if let Some(d) = &args.cni_conf_dir {
        cfg.netperf.cni.conf_dir = d.clone();
    }
    if !args.cni_bin_dir.is_empty() {
        cfg.netperf.cni.bin_dirs = args.cni_bin_dir.clone();
    }
    if let Some(d) = &args.netns_dir {
        cfg.netperf.netns_dir = d.clone();
    }
    if let Some(d) = &args.state_dir {
        cfg.netperf.state_dir = d.clone();
    }
    if let Some(a) = &args.metrics_address {
        cfg.serve.metrics_address = a.clone();
    }
    if let Some(l) = &args.log_level {
        cfg.log.level = l.clone();
    }
    Ok(cfg)
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let cfg = effective_config(&args)?;
    if args.check_config {
        match &args.config {
            Some(path) => println!("{}: configuration OK", path.display()),
            None => println!("defaults: configuration OK"),
        }
        return Ok(());
    }
    crate::logging::init(&cfg.log)?;
    let opts = ListenOptions {
        socket: cfg.serve.socket.clone(),
        mode: cfg.serve.socket_mode,
        shutdown_grace: cfg.serve.shutdown_grace,
    };
    let listener = server::bind(&opts).await?;
    let upstream = Upstream::new(&cfg.serve.upstream, cfg.serve.upstream_connect_timeout);
    // This node's control pods that containerd still runs (netready restarted; kubelet does
    // not send their RunPodSandbox again) are known before the runtime resumes checks a
    // restart cut short, and before the first pod is served.
    let known = first_listing(&upstream, &cfg.netperf.targets.control_label).await;
    let metrics = netready_metrics::Metrics::new("netready");
    let netperf = NetperfRuntime::start_knowing(
        cfg.netperf.clone(),
        Some(metrics.clone()),
        known.clone().unwrap_or_default(),
    )
    .await?;
    let forwarder = match cfg.netperf.results_collector.as_str() {
        "" => None,
        url => Some(
            netready_collect::Forwarder::start(
                netready_collect::ForwardConfig::new(
                    url,
                    cfg.netperf.results_path(),
                    cfg.netperf.forwarded_path(),
                ),
                Some(metrics.clone()),
            )
            .context("netperf.results_collector")?,
        ),
    };
    let metrics_task = match cfg.serve.metrics_address.as_str() {
        "" | "off" => None,
        addr => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics address {addr}"))?;
            tracing::info!(address = %listener.local_addr()?, "serving /metrics");
            Some(tokio::spawn(netready_metrics::serve(
                listener,
                metrics.clone(),
                std::future::pending(),
            )))
        }
    };
    let router =
        Router::new(upstream, Arc::new(netperf)).idempotent_stop(cfg.serve.idempotent_stop);
    if known.is_none() {
        learn_in_background(router.clone());
    }
    let upstream_shown = if cfg.serve.upstream.as_os_str().is_empty() {
        "none (netperf pods only)".to_owned()
    } else {
        cfg.serve.upstream.display().to_string()
    };
    tracing::info!(
        socket = %cfg.serve.socket.display(),
        upstream = %upstream_shown,
        version = netready_cri::answers::NETREADY_VERSION,
        "serving CRI"
    );
    let signal = super::shutdown_signal()?;
    let stop = async move {
        let name = signal.await;
        tracing::info!("{name} received");
    };
    server::serve(listener, &opts, router, Some(metrics), stop)
        .await
        .context("serving CRI")?;
    if let Some(f) = forwarder {
        // A node pod's records go with its emptyDir: send the last ones now.
        f.stop(cfg.serve.shutdown_grace).await;
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long containerd may take to list its control pods at start-up, and each retry after.
const LISTING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The control pods the upstream runtime runs, asked once at start-up; `None` when the
/// listing failed (not up yet, an error, no answer in time), to be asked again in the
/// background.
async fn first_listing(
    upstream: &Upstream,
    control_label: &str,
) -> Option<Vec<(String, Vec<std::net::IpAddr>)>> {
    if !upstream.is_configured() || control_label.is_empty() {
        return Some(Vec::new());
    }
    let listing = netready_cri::router::upstream_control_pods(upstream, |labels| {
        netready_cri::netperf::checks::has_label(control_label, labels)
    });
    let error = match tokio::time::timeout(LISTING_WAIT, listing).await {
        Ok(Ok(pods)) => {
            log_learned(pods.len());
            return Some(pods);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {LISTING_WAIT:?}"),
    };
    tracing::warn!(%error, "listing the upstream runtime's control pods; asking again in the background");
    None
}

/// Asks the upstream runtime for its control pods 1 s, then 2 s... (at most 30 s) apart until
/// a listing succeeds.
fn learn_in_background(router: Router) {
    tokio::spawn(async move {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            match tokio::time::timeout(LISTING_WAIT, router.learn_upstream_control_pods()).await {
                Ok(Ok(n)) => return log_learned(n),
                Ok(Err(e)) => tracing::warn!(error = %e, "listing the upstream runtime's control pods"),
                Err(_) => tracing::warn!("listing the upstream runtime's control pods: no answer within {LISTING_WAIT:?}"),
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(30));
        }
    });
}

fn log_learned(n: usize) {
    tracing::info!(
        control_pods = n,
        "listed the control pods the upstream runtime runs"
    );
}
