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
    let (netperf, metrics) = NetperfRuntime::start_with_metrics(cfg.netperf.clone()).await?;
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
    learn_control_pods(&router).await;
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

/// Learns the control pods containerd still runs from before a restart, so that this node's
/// same-node target is known before the first pod is served. When containerd does not answer
/// in time (not up yet), it is asked again in the background, 1 s doubling to 30 s apart,
/// until it does.
async fn learn_control_pods(router: &Router) {
    const FIRST_TRY: std::time::Duration = std::time::Duration::from_secs(5);
    let outcome = tokio::time::timeout(FIRST_TRY, router.learn_upstream_control_pods()).await;
    let error = match outcome {
        Ok(Ok(n)) => return log_learned(n),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {FIRST_TRY:?}"),
    };
    tracing::warn!(%error, "listing the upstream runtime's control pods; retrying in the background");
    let router = router.clone();
    tokio::spawn(async move {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            match router.learn_upstream_control_pods().await {
                Ok(n) => return log_learned(n),
                Err(e) => {
                    tracing::debug!(error = %e, "listing the upstream runtime's control pods")
                }
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(30));
        }
    });
}

fn log_learned(n: usize) {
    if n > 0 {
        tracing::info!(
            control_pods = n,
            "learned the control pods the upstream runtime runs"
        );
    }
}
