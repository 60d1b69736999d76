//! `netready collect`: the central collector every node's `netready serve` forwards its
//! per-pod records to (`[netperf] results_collector`), one file per run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use netready_cri::config::{Log, LogFormat};

/// How long requests in flight may finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Flags of `netready collect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `host:port` to serve HTTP on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Directory of the runs' files (`<run id>.jsonl`), created if missing; what it holds is
    /// indexed at start, so records sent again after a restart are still dropped.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/netready-collector"
    )]
    pub dir: PathBuf,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = netready_collect::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Log level or filter (NETREADY_LOG overrides it).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: Format,
}

/// Log format of `netready collect`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How many connections may wait to be accepted: after a collector restart thousands of
/// nodes connect within seconds, and the kernel caps this at `net.core.somaxconn` (4096 by
/// default); tokio's default is 1024.
const BACKLOG: u32 = 8192;

fn listen(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let addr = addr
        .to_socket_addrs()?
        .next()
        .context("no address to listen on")?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(BACKLOG)?)
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::logging::init(&Log {
        level: args.log_level.clone(),
        format: match args.log_format {
            Format::Text => LogFormat::Text,
            Format::Json => LogFormat::Json,
        },
    })?;
    // Every node keeps a connection open: thousands of them.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((soft, hard));
        if soft < 16384 {
            tracing::warn!(
                limit = soft,
                "open-file limit is low for thousands of nodes (one connection each)"
            );
        }
    }
    let started = Instant::now();
    let (dir, max_body) = (args.dir.clone(), args.max_body);
    let (collector, loaded) =
        tokio::task::spawn_blocking(move || netready_collect::Collector::open(&dir, max_body))
            .await??;
    tracing::info!(
        dir = %args.dir.display(),
        runs = loaded.runs,
        records = loaded.records,
        invalid_lines = loaded.invalid_lines,
        truncated_bytes = loaded.truncated_bytes,
        took = ?started.elapsed(),
        "indexed the records already kept"
    );
    let listener = listen(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "collector listening");
    let signal = super::shutdown_signal()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(netready_collect::serve(listener, collector, async move {
        let _ = stop_rx.await;
    }));
    let name = signal.await;
    tracing::info!("{name} received");
    let _ = stop_tx.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at the end of the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}
