//! Traffic after network ready: an `iperf3` client run inside the pod's netns against a
//! control pod's `iperf3 -s`, for a short, fixed time; its throughput goes to the record and to
//! `netready_traffic_throughput_bytes_per_second`. Off by default (it adds load on purpose).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::state::TrafficOutcome;

/// `[netperf.traffic]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficConfig {
    /// Run traffic after a pod is network-ready (per pod: annotation `netready.io/traffic`).
    pub enabled: bool,
    /// The control pods' iperf3 server port.
    pub port: u16,
    /// How long each pod sends.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The iperf3 binary.
    pub iperf3: PathBuf,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            enabled: false,
            port: 5201,
            duration: Duration::from_secs(2),
            iperf3: "iperf3".into(),
        }
    }
}

/// One lock per target: an `iperf3 --server` runs one test at a time and turns the others
/// away ("the server is busy"), so this node's pods take turns.
fn target_lock(target: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(target.to_owned())
        .or_default()
        .clone()
}

/// Runs `iperf3 --client` in the netns at `netns` (entered by `nsenter` in the child process,
/// never on netready's threads) and reads its JSON report. Waits for its turn at the target,
/// and retries a few times while another node's client holds the server.
pub async fn run(cfg: &TrafficConfig, netns: &Path, target: IpAddr) -> TrafficOutcome {
    let lock = target_lock(&format!("{target}:{}", cfg.port));
    let _turn = lock.lock().await;
    let mut out = once(cfg, netns, target).await;
    for _ in 0..5 {
        if !out.error.as_deref().is_some_and(|e| e.contains("busy")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        out = once(cfg, netns, target).await;
    }
    out
}

async fn once(cfg: &TrafficConfig, netns: &Path, target: IpAddr) -> TrafficOutcome {
    let mut out = TrafficOutcome {
        target: format!("{target}:{}", cfg.port),
        bits_per_second: None,
        duration: cfg.duration,
        error: None,
    };
    let secs = cfg.duration.as_secs().max(1).to_string();
    let child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(&cfg.iperf3)
        .args([
            "--client",
            &target.to_string(),
            "--port",
            &cfg.port.to_string(),
        ])
        .args(["--time", &secs, "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let limit = cfg.duration + Duration::from_secs(10);
    let result = match tokio::time::timeout(limit, child).await {
        Err(_) => Err(format!("iperf3 did not finish within {limit:?}")),
        Ok(Err(e)) => Err(format!("running iperf3 in the pod netns: {e}")),
        Ok(Ok(o)) => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let end = &v["end"];
            match end["sum_received"]["bits_per_second"]
                .as_f64()
                .or_else(|| end["sum_sent"]["bits_per_second"].as_f64())
            {
                Some(bps) if o.status.success() => Ok(bps),
                _ => Err(v["error"].as_str().map(str::to_owned).unwrap_or_else(|| {
                    format!(
                        "iperf3 failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )
                })),
            }
        }
    };
    match result {
        Ok(bps) => out.bits_per_second = Some(bps),
        Err(e) => out.error = Some(e),
    }
    out
}
