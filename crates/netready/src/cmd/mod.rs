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
    let mut s = Signals::new()?;
    Ok(async move { s.next().await })
}

/// SIGTERM and SIGINT, handled from now on instead of ending the process.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// The name of the next signal received.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// A process ended by `signal` exits 128 + its number, as a shell reports it.
pub fn exit_code(signal: &str) -> u8 {
    match signal {
        "SIGINT" => 130,
        _ => 143,
    }
}
