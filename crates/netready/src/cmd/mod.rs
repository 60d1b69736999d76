//! One module per subcommand, each with `run(args)`.

pub mod collect;
pub mod compare;
pub mod drive;
pub mod local;
pub mod node;
pub mod preflight;
pub mod report;
pub mod serve;

/// Resolves to the name of the first SIGTERM or SIGINT received.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use anyhow::Context as _;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
