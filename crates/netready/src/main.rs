//! `netready`: a container runtime for not-so-hollow kubemark nodes that measures how fast a
//! CNI provider makes new pods reachable.

mod cmd;
mod config;
mod logging;

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
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netready: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
