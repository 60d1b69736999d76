//! Traffic after network ready: an `iperf3` client run inside the pod's netns against a
//! control pod's `iperf3 -s`, for a short, fixed time; its throughput goes to the record and to
//! `netready_traffic_throughput_bytes_per_second`. Off by default (it adds load on purpose).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::iperf::PortPool;
pub use super::state::TrafficOutcome;

/// `[netperf.traffic]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficConfig {
    /// Run traffic after a pod is network-ready (per pod: annotation `netready.io/traffic`).
    pub enabled: bool,
    /// The control pods' first iperf3 server port.
    pub port: u16,
    /// iperf3 servers each control pod runs, on `port`, `port + 1`, ...: a node's clients are
    /// spread over them (one server runs one test at a time).
    pub pool: u16,
    /// How long each pod sends.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The iperf3 binary.
    pub iperf3: PathBuf,
}

impl TrafficConfig {
    /// The ports of the control pods' iperf3 servers.
    pub fn ports(&self) -> Vec<u16> {
        (0..self.pool.max(1))
            .filter_map(|i| self.port.checked_add(i))
            .collect()
    }
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            enabled: false,
            port: 5201,
            pool: 8,
            duration: Duration::from_secs(2),
            iperf3: "iperf3".into(),
        }
    }
}

/// Runs `iperf3 --client` in the netns at `netns` (entered by `nsenter` in the child process,
/// never on netready's threads) and reads its JSON report. Takes the server of the pool with
/// the fewest of this node's clients, and retries a few times, on the next least-used server,
/// while another node's client holds it.
pub async fn run(
    cfg: &TrafficConfig,
    pool: &PortPool,
    netns: &Path,
    target: IpAddr,
) -> TrafficOutcome {
    let ports = cfg.ports();
    let host = target.to_string();
    let mut out = None;
    for attempt in 0..6 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(lease) = pool.take(&host, &ports) else {
            break;
        };
        let o = once(cfg, netns, target, lease.port()).await;
        let busy = o.error.as_deref().is_some_and(|e| e.contains("busy"));
        out = Some(o);
        if !busy {
            break;
        }
    }
    out.unwrap_or_else(|| {
        TrafficOutcome::failed(host.clone(), cfg.duration, "no iperf3 port configured")
    })
}

async fn once(cfg: &TrafficConfig, netns: &Path, target: IpAddr, port: u16) -> TrafficOutcome {
    let mut out = TrafficOutcome {
        target: format!("{target}:{port}"),
        bits_per_second: None,
        duration: cfg.duration,
        error: None,
    };
    let secs = cfg.duration.as_secs().max(1).to_string();
    let child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(&cfg.iperf3)
        .args(["--client", &target.to_string(), "--port", &port.to_string()])
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
