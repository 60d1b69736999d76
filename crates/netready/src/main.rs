//! `netready`: a container runtime for not-so-hollow kubemark nodes that measures how fast a
//! CNI provider makes new pods reachable.

mod cmd;
mod logging;

// glibc malloc keeps freed memory in per-thread arenas: over 30,000 pod lifecycles `serve`'s
// RSS crept by ~54 KiB per 1,000 pods with nothing leaked (local_soak, heaptrack). jemalloc
// returns dirty pages to the kernel after a decay time, so RSS follows what is live.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "netready", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve CRI on a unix socket for kubelet; netperf pods are run here, the rest go to containerd.
    Serve(cmd::serve::Args),
    /// Statistics of results files: percentiles, failures, throughput; table, JSON, perfdata, plots.
    Report(cmd::report::Args),
    /// Compare two runs; exit 1 on a regression, 2 if a run is invalid.
    Compare(cmd::compare::Args),
    /// Pod flux against a CRI endpoint, the way kubelet drives pods: burst, open-loop rate, churn.
    Drive(cmd::drive::Args),
    /// The whole benchmark on this machine: simulated nodes with real CNI plugins, pod flux, report.
    Local(cmd::local::Args),
    /// Check this node before a run (CNI config and plugins, sysctls, limits, IPAM, containerd).
    Preflight(cmd::preflight::Args),
    /// A node pod's helpers: wait for a CRI endpoint, tear every pod down at shutdown.
    Node(cmd::node::Args),
    /// The central collector of per-pod records: every node's `serve` POSTs them here.
    Collect(cmd::collect::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // compare's exit codes are a contract (1 = regression): its errors are "invalid", 2.
    let error_code = if matches!(cli.command, Command::Compare(_)) {
        2
    } else {
        1
    };
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args).await.map(|()| 0),
        Command::Report(args) => cmd::report::run(args).await.map(|()| 0),
        Command::Compare(args) => cmd::compare::run(args).await,
        Command::Preflight(args) => cmd::preflight::run(args).await,
        Command::Drive(args) => cmd::drive::run(args).await,
        Command::Local(args) => cmd::local::run(args).await,
        Command::Node(args) => cmd::node::run(args).await,
        Command::Collect(args) => cmd::collect::run(args).await.map(|()| 0),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("netready: {e:#}");
            std::process::ExitCode::from(error_code)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
