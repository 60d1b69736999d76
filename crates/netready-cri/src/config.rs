//! The TOML configuration of `netready serve`: every key has a default, and a bad file is
//! reported with its path, the key and what was expected there. A library type, so whoever
//! starts a netready (`netready local`, tests) writes its file by serialising it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The default configuration, with a comment on every key (`serve --print-default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CRI server.
    pub serve: Serve,
    /// netperf pods: label, netns and state directories, CNI, retries.
    pub netperf: crate::NetperfConfig,
    /// Logging.
    pub log: Log,
}

/// `[serve]`: where kubelet connects and where other pods go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Serve {
    /// The unix socket kubelet connects to.
    pub socket: PathBuf,
    /// The socket's file mode.
    pub socket_mode: u32,
    /// containerd's CRI socket.
    pub upstream: PathBuf,
    /// Connect timeout towards the upstream socket.
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// Grace period for calls in flight at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `host:port` of the `/metrics` endpoint; empty: none.
    pub metrics_address: String,
    /// Answer OK where upstream says `NOT_FOUND` to `StopPodSandbox`/`StopContainer`, as the
    /// CRI contract wants and containerd 1.6 does not.
    pub idempotent_stop: bool,
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            socket: "/run/netready/netready.sock".into(),
            socket_mode: 0o660,
            upstream: "/run/containerd/containerd.sock".into(),
            upstream_connect_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            metrics_address: "127.0.0.1:9153".into(),
            idempotent_stop: true,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A level or a tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses configuration text; errors name `origin`, the key path and the expectation.
pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Config> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        anyhow::anyhow!("config {}: {}", origin.display(), e.to_string().trim_end())
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // toml's message carries a source excerpt after the first line; the key path says where.
        let what = inner.message().trim_end().to_owned();
        anyhow::anyhow!("config {}: key `{key}`: {what}", origin.display())
    })
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}: cannot read", path.display()))?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_default_is_the_default() {
        assert_eq!(
            parse(DEFAULT_CONFIG, Path::new("default")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("", Path::new("empty")).unwrap(), Config::default());
    }

    /// A table written with none of its keys is the default too: each section's own default
    /// agrees with the whole config's (a `[netperf.targets]` holding only `external` once lost
    /// the control label, and with it every same-node target).
    #[test]
    fn every_table_without_keys_is_the_default() {
        let tables: Vec<&str> = DEFAULT_CONFIG
            .lines()
            .filter(|l| l.starts_with('['))
            .collect();
        assert!(tables.len() > 5, "{tables:?}");
        for table in tables {
            assert_eq!(
                parse(table, Path::new("one-table")).unwrap(),
                Config::default(),
                "{table} alone"
            );
        }
    }

    #[test]
    fn wrong_type_names_file_key_and_type() {
        let err = parse("[serve]\nsocket_mode = \"rw\"\n", Path::new("/etc/n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/n.toml"), "{err}");
        assert!(err.contains("serve.socket_mode"), "{err}");
        assert!(err.contains("u32"), "{err}");
    }

    #[test]
    fn bad_duration_and_unknown_key_are_named() {
        let err = parse("[serve]\nshutdown_grace = \"soon\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve.shutdown_grace"), "{err}");
        let err = parse("[serve]\nsockett = \"/x\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sockett"), "{err}");
        let err = parse("[log]\nformat = \"xml\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.format") && err.contains("text"), "{err}");
    }

    #[test]
    fn loopback_takes_a_way_or_the_old_bool_and_names_a_wrong_one() {
        use crate::netperf::Loopback;
        let lo = |v: &str| {
            parse(
                &format!("[netperf.cni]\nloopback = {v}\n"),
                Path::new("c.toml"),
            )
        };
        assert_eq!(
            lo("\"plugin\"").unwrap().netperf.cni.loopback,
            Loopback::Plugin
        );
        assert_eq!(lo("true").unwrap().netperf.cni.loopback, Loopback::Plugin);
        assert_eq!(lo("false").unwrap().netperf.cni.loopback, Loopback::Off);
        let err = lo("\"ioctl\"").unwrap_err().to_string();
        assert!(
            err.contains("netperf.cni.loopback")
                && err.contains("netlink")
                && err.contains("ioctl"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_file() {
        let err = parse("[serve\n", Path::new("broken.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }
}
