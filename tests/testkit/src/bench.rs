//! What every benchmark writes: the machine's fingerprint and a results file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A benchmark parameter from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Proportional set size of a process in bytes (shared pages split among their users), from
/// `/proc/<pid>/smaps_rollup`; 0 when it is gone.
pub fn pss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The machine and software a result was measured on.
pub fn fingerprint() -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    serde_json::json!({
        "netready_version": env!("CARGO_PKG_VERSION"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_bytes": mem_kb * 1024,
        "containerd": version("containerd", "--version"),
        "runc": version("runc", "--version"),
        "cni_plugins": "Debian containernetworking-plugins (/usr/lib/cni)",
    })
}

/// Writes `bench/results/<name>-<unix time>.json` with `body`, the time and the fingerprint;
/// returns its path.
pub fn write(name: &str, mut body: serde_json::Value) -> anyhow::Result<PathBuf> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    body["benchmark"] = name.into();
    body["unix_time"] = now.into();
    body["fingerprint"] = fingerprint();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{name}-{now}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&body)?)?;
    Ok(file)
}
