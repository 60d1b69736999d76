//! The host's own load over a run: CPU time the hypervisor stole (`/proc/stat`), in a cgroup
//! with a CPU limit (netready inside a kubemark node pod) CFS throttling (`cpu.stat`), and
//! packets the kernel dropped because a CPU's input backlog was full
//! (`/proc/net/softnet_stat`). They slow netready down or lose its probes without showing in
//! its own timings, so every run's fingerprint carries them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `/proc/stat` counts in USER_HZ, which the kernel fixes at 100 for user space on the
/// architectures netready runs on (x86-64, arm64), whatever the kernel's own HZ.
const USER_HZ: f64 = 100.0;

/// Counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: SystemTime,
    cpu_ticks: u64,
    steal_ticks: u64,
    backlog_drops: u64,
    cgroup: Option<(PathBuf, CpuStat)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuStat {
    nr_periods: u64,
    nr_throttled: u64,
    throttled_ns: u64,
}

/// The load between two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    /// The first sample (RFC 3339).
    pub since: String,
    /// Wall time between the samples.
    pub seconds: f64,
    /// Time of all CPUs between them.
    pub cpu_s: f64,
    /// Of it, stolen by the hypervisor.
    pub steal_s: f64,
    /// `steal_s / cpu_s` (0 when no CPU time passed).
    pub steal_share: f64,
    /// Packets dropped because a CPU's input backlog (`net.core.netdev_max_backlog`) was
    /// full: every veth and bridge of the host queues there, so a burst of pods flooding ARP
    /// and IPv6 ND across a bridge loses probes to the host, not to the CNI (absent in records
    /// from before it was kept).
    #[serde(default)]
    pub backlog_drops: u64,
    /// Throttling of this process's cgroup; `None` without a `cpu.stat`.
    pub cgroup: Option<Throttling>,
}

/// CFS throttling between two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttling {
    /// The `cpu.stat` read.
    pub file: String,
    /// Enforcement periods that passed.
    pub nr_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time its tasks were held back.
    pub throttled_s: f64,
}

impl Sample {
    /// The counters now.
    pub fn now() -> Self {
        Self::read(cpu_stat_file())
    }

    /// The counters now, throttling from `cpu_stat` (found once: which file is this process's
    /// does not change while it runs).
    fn read(cpu_stat: Option<PathBuf>) -> Self {
        let (cpu_ticks, steal_ticks) =
            proc_stat(&std::fs::read_to_string("/proc/stat").unwrap_or_default());
        Sample {
            at: SystemTime::now(),
            cpu_ticks,
            steal_ticks,
            backlog_drops: softnet_drops(
                &std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default(),
            ),
            cgroup: cpu_stat.and_then(|f| {
                let s = parse_cpu_stat(&std::fs::read_to_string(&f).ok()?)?;
                Some((f, s))
            }),
        }
    }

    /// The load from this sample to now.
    pub fn until_now(&self) -> HostLoad {
        let now = Sample::read(self.cgroup.as_ref().map(|(f, _)| f.clone()));
        let cpu_s = now.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / USER_HZ;
        let steal_s = now.steal_ticks.saturating_sub(self.steal_ticks) as f64 / USER_HZ;
        HostLoad {
            since: humantime::format_rfc3339_nanos(self.at).to_string(),
            seconds: now
                .at
                .duration_since(self.at)
                .unwrap_or_default()
                .as_secs_f64(),
            cpu_s,
            steal_s,
            steal_share: if cpu_s > 0.0 { steal_s / cpu_s } else { 0.0 },
            backlog_drops: now.backlog_drops.saturating_sub(self.backlog_drops),
            cgroup: match (&self.cgroup, now.cgroup) {
                (Some((_, a)), Some((file, b))) => Some(Throttling {
                    file: file.display().to_string(),
                    nr_periods: b.nr_periods.saturating_sub(a.nr_periods),
                    nr_throttled: b.nr_throttled.saturating_sub(a.nr_throttled),
                    throttled_s: b.throttled_ns.saturating_sub(a.throttled_ns) as f64 / 1e9,
                }),
                _ => None,
            },
        }
    }
}

/// All CPUs' ticks and the stolen ones, from the `cpu` line of `/proc/stat`.
fn proc_stat(text: &str) -> (u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already inside user and nice, so it is not added again.
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    (f.iter().sum(), f.get(7).copied().unwrap_or(0))
}

/// Packets dropped at full input backlogs, over every CPU: the second (hex) column of
/// `/proc/net/softnet_stat`.
fn softnet_drops(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// `cpu.stat` of v2 (`throttled_usec`) or v1 (`throttled_time`, ns).
fn parse_cpu_stat(text: &str) -> Option<CpuStat> {
    let mut s = CpuStat::default();
    let mut seen = false;
    for line in text.lines() {
        let mut kv = line.split_whitespace();
        let (Some(k), Some(v)) = (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "nr_periods" => s.nr_periods = v,
            "nr_throttled" => {
                s.nr_throttled = v;
                seen = true;
            }
            "throttled_usec" => s.throttled_ns = v * 1000,
            "throttled_time" => s.throttled_ns = v,
            _ => {}
        }
    }
    seen.then_some(s)
}

/// This process's cgroup's `cpu.stat`: v2's unified hierarchy, else v1's cpu controller;
/// inside a container's cgroup namespace the cgroup is the mount's root.
fn cpu_stat_file() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(rel).join("cpu.stat"));
            candidates.push(root.join("unified").join(rel).join("cpu.stat"));
        } else if controllers.split(',').any(|c| c == "cpu") {
            for dir in ["cpu,cpuacct", "cpu"] {
                candidates.push(root.join(dir).join(rel).join("cpu.stat"));
            }
        }
    }
    // cpu.stat of v2 has throttling only where the cpu controller is on: prefer a file
    // that counts periods.
    candidates.into_iter().find(|f| {
        std::fs::read_to_string(f)
            .ok()
            .is_some_and(|t| t.contains("nr_throttled"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_and_guest_is_not_counted_twice() {
        let (all, steal) =
            proc_stat("cpu  100 5 50 800 10 1 2 30 7 0\ncpu0 50 2 25 400 5 0 1 15 3 0\n");
        assert_eq!((all, steal), (998, 30));
    }

    #[test]
    fn backlog_drops_sum_every_cpu() {
        let t = "0159b86f 000ae60c 00000005 00000000\n01237f91 00022cfa 00000002 00000000\n";
        assert_eq!(softnet_drops(t), 0xae60c + 0x22cfa);
        assert_eq!(softnet_drops(""), 0);
    }

    #[test]
    fn both_cgroup_versions_read() {
        let v2 =
            parse_cpu_stat("usage_usec 9\nnr_periods 40\nnr_throttled 3\nthrottled_usec 1500\n")
                .unwrap();
        assert_eq!(
            (v2.nr_periods, v2.nr_throttled, v2.throttled_ns),
            (40, 3, 1_500_000)
        );
        let v1 = parse_cpu_stat("nr_periods 7\nnr_throttled 2\nthrottled_time 99\n").unwrap();
        assert_eq!(
            (v1.nr_periods, v1.nr_throttled, v1.throttled_ns),
            (7, 2, 99)
        );
        assert!(
            parse_cpu_stat("usage_usec 9\n").is_none(),
            "no cpu controller: no throttling"
        );
    }

    #[test]
    fn the_load_of_this_machine_reads_and_adds_up() {
        let start = Sample::now();
        // Spin so some CPU time passes.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let load = start.until_now();
        assert!(load.cpu_s > 0.0, "{load:?}");
        assert!(load.steal_s <= load.cpu_s && (0.0..=1.0).contains(&load.steal_share));
        assert!(load.seconds >= 0.05);
    }
}
