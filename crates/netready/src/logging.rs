//! Structured logs with `tracing`: level from the config, `NETREADY_LOG` overriding it.

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use netready_cri::config::{Log, LogFormat};

/// Installs the global subscriber (stderr, so stdout stays for command output).
pub fn init(cfg: &Log) -> anyhow::Result<()> {
    let directive = std::env::var("NETREADY_LOG").unwrap_or_else(|_| cfg.level.clone());
    let filter = EnvFilter::try_new(&directive)
        .with_context(|| format!("log level {directive:?} is not a valid level or filter"))?;
    // Colours only on a terminal: a node pod's log (kubectl logs, a CRI log file) would
    // otherwise carry escape codes.
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let installed = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing logger: {e}"))
}
