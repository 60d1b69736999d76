//! What every benchmark writes: the machine's fingerprint and a results file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The host's load counters when the benchmark began: every benchmark reads a parameter
/// first ([`env_or`]), which takes them.
static HOST_AT_START: std::sync::OnceLock<netready_record::host_load::Sample> =
    std::sync::OnceLock::new();

/// A benchmark parameter from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    HOST_AT_START.get_or_init(netready_record::host_load::Sample::now);
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rusage_seconds(who: nix::sys::resource::UsageWho) -> f64 {
    let u = nix::sys::resource::getrusage(who).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// CPU time (user + system) this process has used, in seconds; plugin processes it ran are
/// not in it.
pub fn cpu_seconds() -> f64 {
    rusage_seconds(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

/// CPU time of this process's threads so far, by thread name with trailing digits and dashes
/// dropped (`netns-pool`, `tokio-runtime-worker`...): (user, system) seconds. Threads that
/// ended are not in it.
pub fn cpu_by_thread() -> std::collections::BTreeMap<String, (f64, f64)> {
    // /proc counts in USER_HZ clock ticks, 100 on every Linux ABI.
    let tick = 100.0;
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces and parentheses, so split at the last.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head
            .split_once('(')
            .map_or("", |(_, n)| n)
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the comm.
        let (Some(u), Some(s)) = (
            f.get(11).and_then(|v| v.parse::<f64>().ok()),
            f.get(12).and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        let e = out.entry(name).or_insert((0.0, 0.0));
        e.0 += u / tick;
        e.1 += s / tick;
    }
    out
}

/// [`cpu_seconds`] plus that of the child processes that ended (CNI plugins).
pub fn cpu_seconds_with_children() -> f64 {
    cpu_seconds() + rusage_seconds(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
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
        // CPU steal and cgroup throttling over the benchmark: a busy host shows.
        "host_load": HOST_AT_START.get_or_init(netready_record::host_load::Sample::now).until_now(),
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
    let fp = fingerprint();
    // Printed too, so that whoever reads the numbers above sees whether the host was busy.
    let load = &fp["host_load"];
    println!(
        "host over the run: CPU steal {:.1}% of {:.0} CPU-s, {} packets dropped at full input backlogs, cgroup throttled {} times",
        load["steal_share"].as_f64().unwrap_or_default() * 100.0,
        load["cpu_s"].as_f64().unwrap_or_default(),
        load["backlog_drops"],
        load["cgroup"]["nr_throttled"].as_u64().unwrap_or_default(),
    );
    body["fingerprint"] = fp;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{name}-{now}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&body)?)?;
    Ok(file)
}
