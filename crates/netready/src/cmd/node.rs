//! `netready node`: what a node pod's entrypoint needs from a CRI endpoint and has no other
//! tool for (the image carries no crictl): wait until a runtime answers, and tear every pod
//! down before the node goes away.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use netready_drive::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Wait until a CRI endpoint answers Version (kubelet's first call); exit 1 at the timeout.
    Wait(Target),
    /// Stop and remove every pod sandbox at a CRI endpoint, pod-network pods before
    /// host-network ones (a CNI agent outlives the pods whose IPs it hands back).
    Teardown(Target),
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The CRI endpoint, `unix:///run/netready/netready.sock` or a socket path.
    #[arg(long, value_name = "URL")]
    endpoint: String,
    /// Give up after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Target {
    fn socket(&self) -> PathBuf {
        PathBuf::from(
            self.endpoint
                .strip_prefix("unix://")
                .unwrap_or(&self.endpoint),
        )
    }
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    match args.command {
        Command::Wait(t) => wait(&t).await,
        Command::Teardown(t) => teardown(&t).await,
    }
}

async fn wait(t: &Target) -> anyhow::Result<u8> {
    let deadline = Instant::now() + t.timeout;
    loop {
        let last = match Client::connect(&t.socket()).await {
            Ok(c) => match c.version().await {
                Ok(v) => {
                    println!(
                        "{} answers: {} {} (CRI {})",
                        t.endpoint, v.runtime_name, v.runtime_version, v.runtime_api_version
                    );
                    return Ok(0);
                }
                Err(e) => format!("Version: {}: {}", e.code(), e.message()),
            },
            Err(e) => format!("connecting: {e}"),
        };
        if Instant::now() >= deadline {
            eprintln!(
                "netready node wait: {} did not answer within {}: {last}",
                t.endpoint,
                humantime::format_duration(t.timeout)
            );
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn teardown(t: &Target) -> anyhow::Result<u8> {
    let client = Client::connect(&t.socket())
        .await
        .with_context(|| format!("connecting to {}", t.endpoint))?;
    let removed = tokio::time::timeout(t.timeout, client.remove_all_sandboxes())
        .await
        .with_context(|| {
            format!(
                "tearing down pods at {}: not done within {}",
                t.endpoint,
                humantime::format_duration(t.timeout)
            )
        })?
        .map_err(|e| anyhow::anyhow!("tearing down pods at {}: {e}", t.endpoint))?;
    println!(
        "{}: {removed} pod sandboxes stopped and removed",
        t.endpoint
    );
    Ok(0)
}
