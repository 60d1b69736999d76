//! Node density: what one not-so-hollow node pod costs, and how that changes with the
//! number of node pods sharing a host.
//!
//! Builds the node image (images/not-so-hollow-node, stand-in mode: `netready drive` in
//! kubelet's place) around this netready, imports it into one private containerd and runs 1, 2
//! and 4 node pods at once (NODES=1,2,4) as kubelet runs them (CRI, privileged, own netns and
//! emptyDir). For each N, two phases, each with fresh node pods:
//!
//! * held: every node holds PODS_PER_NODE (30) netperf pods (`--mode burst --lifetime 1h`);
//!   once all are network-ready and SETTLE_S (5) passed, one window of WINDOW_S (30) seconds.
//! * churn: every node runs CHURN_RATE (1) pod/s in, each pod living PODS_PER_NODE / CHURN_RATE
//!   seconds (≈ PODS_PER_NODE alive, as many out as in: `--mode rate --arrivals uniform`);
//!   after WARMUP_S (40, and until the first pods were deleted), one window.
//!
//! Per node pod, from its container's cgroup (everything the node runs is charged there:
//! containerd, shims, runc, CNI plugin children, netready; netperf pods are network namespaces
//! netready makes, with no processes of their own): CPU over the window (v1
//! `cpuacct.usage`, v2 `cpu.stat` usage_usec) and memory at the window's end: usage (v1
//! `memory.usage_in_bytes`, v2 `memory.current`), working set (usage − inactive_file, what
//! kubelet/cAdvisor report) and PSS summed over every process in the cgroup tree. Host-wide CPU
//! over the same window comes from /proc/stat; what no node cgroup was charged for is split into
//! kernel threads (kworkers: netns cleanup runs there), irq/softirq, steal, this harness, the
//! outer containerd and its shims, and other processes. Records achieved per node (network-ready
//! stamps and deletes in the window) and every record's verdict are checked. Before each
//! window the host must be quiet: other processes (a build, tests) under QUIET_CORES (0.2) for
//! 5 s, waiting up to QUIET_WAIT_S (900); a window measured on a busy host is marked noisy.
//!
//! Compared with kubemark's hollow-node budget (kubernetes/community kubemark-guide.md: 0.09
//! CPU cores and 220 MB per hollow node; MB here are 10^6 bytes). Defaults are a QUICK run
//! (30 s windows, REPEATS=1); METHODOLOGY asks for minutes and ≥ 3 repetitions:
//! `WINDOW_S=300 REPEATS=3` (runs are interleaved: every N once per repetition).
//! `cargo bench -p netready --bench node_density` (root); writes
//! `bench/results/node_density-<unix time>.json`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use netready_testkit::bench::{env_or, pss_bytes, write};
use netready_testkit::node_image::{self, NodePod, NodeSpec};
use netready_testkit::Containerd;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// kubemark's hollow-node budget (kubemark-guide.md).
const BUDGET_CORES: f64 = 0.09;
const BUDGET_MB: f64 = 220.0;
const MB: f64 = 1e6;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// /proc/stat and /proc/<pid>/stat count in USER_HZ, 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;
/// PF_KTHREAD in /proc/<pid>/stat's flags.
const PF_KTHREAD: u64 = 0x0020_0000;

struct Knobs {
    nodes: Vec<usize>,
    pods: usize,
    window_s: f64,
    settle_s: f64,
    warmup_s: f64,
    rate: f64,
    cooldown_s: f64,
    repeats: usize,
    quiet_cores: f64,
    quiet_wait_s: f64,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Self> {
        let nodes_s: String = env_or("NODES", "1,2,4".to_string());
        let nodes = nodes_s
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("NODES={nodes_s}: expected e.g. 1,2,4"))?;
        anyhow::ensure!(
            !nodes.is_empty() && nodes.iter().all(|&n| n > 0),
            "NODES={nodes_s}"
        );
        Ok(Knobs {
            nodes,
            pods: env_or("PODS_PER_NODE", 30),
            window_s: env_or("WINDOW_S", 30.0),
            settle_s: env_or("SETTLE_S", 5.0),
            warmup_s: env_or("WARMUP_S", 40.0),
            rate: env_or("CHURN_RATE", 1.0),
            cooldown_s: env_or("COOLDOWN_S", 10.0),
            repeats: env_or("REPEATS", 1usize).max(1),
            quiet_cores: env_or("QUIET_CORES", 0.2),
            quiet_wait_s: env_or("QUIET_WAIT_S", 900.0),
        })
    }

    /// How long a churn pod lives once ready: PODS_PER_NODE alive at CHURN_RATE.
    fn churn_lifetime_s(&self) -> f64 {
        self.pods as f64 / self.rate
    }

    fn json(&self) -> Value {
        json!({
            "nodes": self.nodes, "pods_per_node": self.pods, "window_s": self.window_s,
            "settle_s": self.settle_s, "warmup_s": self.warmup_s, "churn_rate_per_node": self.rate,
            "churn_lifetime_s": self.churn_lifetime_s(), "cooldown_s": self.cooldown_s,
            "repeats": self.repeats, "quiet_cores": self.quiet_cores,
            "quiet_wait_s": self.quiet_wait_s, "budget": {"cores": BUDGET_CORES, "mb": BUDGET_MB},
            "checks": "same_node_pod (ping the node pod's bridge), retry 100ms",
            "cgroup": if cgroup_v2() { "v2" } else { "v1" },
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Held,
    Churn,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Held => "held",
            Phase::Churn => "churn",
        }
    }
}

// --- cgroups ---------------------------------------------------------------------------------

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A node pod's cgroup (relative to each hierarchy's root).
struct Cgroup {
    rel: String,
    v2: bool,
}

impl Cgroup {
    fn new(rel: &str) -> Self {
        Cgroup {
            rel: rel.trim_start_matches('/').to_owned(),
            v2: cgroup_v2(),
        }
    }

    /// The cgroup's directory in the v1 hierarchy `controller` (or the v2 one).
    fn dir(&self, controller: &str) -> PathBuf {
        if self.v2 {
            Path::new("/sys/fs/cgroup").join(&self.rel)
        } else {
            Path::new("/sys/fs/cgroup").join(controller).join(&self.rel)
        }
    }

    fn read(&self, controller: &str, file: &str) -> anyhow::Result<String> {
        let p = self.dir(controller).join(file);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// CPU time charged to the cgroup and its descendants, ns.
    fn cpu_ns(&self) -> anyhow::Result<u64> {
        if self.v2 {
            let usec = stat_field(&self.read("", "cpu.stat")?, "usage_usec")
                .context("no usage_usec in cpu.stat")?;
            Ok(usec * 1000)
        } else {
            Ok(self.read("cpuacct", "cpuacct.usage")?.trim().parse()?)
        }
    }

    /// (usage, inactive_file) in bytes, descendants included.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let (usage, key) = if self.v2 {
            (self.read("", "memory.current")?, "inactive_file")
        } else {
            (
                self.read("memory", "memory.usage_in_bytes")?,
                "total_inactive_file",
            )
        };
        let stat = self.read("memory", "memory.stat")?;
        Ok((
            usage.trim().parse()?,
            stat_field(&stat, key).with_context(|| format!("no {key} in memory.stat"))?,
        ))
    }

    /// Every process in the cgroup and its descendants.
    fn pids(&self) -> Vec<u32> {
        fn walk(dir: &Path, out: &mut Vec<u32>) {
            out.extend(
                std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir("memory"), &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Child cgroups at any depth.
    fn descendants(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| 1 + count(&e.path()))
                .sum()
        }
        count(&self.dir("memory"))
    }
}

fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

// --- host ------------------------------------------------------------------------------------

/// /proc/stat's first line: user nice system idle iowait irq softirq steal (USER_HZ ticks;
/// guest time is already in user/nice).
fn proc_stat() -> [u64; 8] {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut v = [0u64; 8];
    if let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) {
        for (slot, x) in v.iter_mut().zip(line.split_whitespace().skip(1)) {
            *slot = x.parse().unwrap_or(0);
        }
    }
    v
}

/// A process's CPU ticks (utime + stime), whether it is a kernel thread, and its name.
#[derive(Clone)]
struct ProcCpu {
    ticks: u64,
    kthread: bool,
    comm: String,
}

fn processes() -> HashMap<u32, ProcCpu> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            continue;
        };
        let comm = text[open + 1..close].to_owned();
        let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
        // Fields from 3 (state): flags is field 9, utime 14, stime 15.
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        out.insert(
            pid,
            ProcCpu {
                ticks: num(11) + num(12),
                kthread: num(6) & PF_KTHREAD != 0,
                comm,
            },
        );
    }
    out
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn host_memory() -> Value {
    let total = meminfo("MemTotal");
    let available = meminfo("MemAvailable");
    json!({"used_bytes": total.saturating_sub(available), "available_bytes": available,
           "slab_bytes": meminfo("Slab"), "slab_unreclaimable_bytes": meminfo("SUnreclaim")})
}

// --- records ---------------------------------------------------------------------------------

fn stamp_secs(v: &Value) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(v.as_str()?).ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The stand-in driver's records (one per pod, written when the pod was deleted).
fn drive_records(node: &NodePod) -> Vec<Value> {
    std::fs::read_to_string(node.state.join("netready/standin-drive.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn not_ready(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["verdict"]["network_ready"] != true)
        .collect()
}

// --- one phase -------------------------------------------------------------------------------

/// Everything read at one edge of a window.
struct Edge {
    at: Instant,
    wall: f64,
    stat: [u64; 8],
    all_tasks_ns: u64,
    nodes_cpu_ns: Vec<u64>,
    procs: HashMap<u32, ProcCpu>,
    drive_records: Vec<usize>,
}

fn edge(nodes: &[NodePod], cgroups: &[Cgroup]) -> anyhow::Result<Edge> {
    Ok(Edge {
        at: Instant::now(),
        wall: unix_now(),
        stat: proc_stat(),
        all_tasks_ns: Cgroup::new("/").cpu_ns().unwrap_or(0),
        nodes_cpu_ns: cgroups
            .iter()
            .map(Cgroup::cpu_ns)
            .collect::<anyhow::Result<_>>()?,
        procs: processes(),
        drive_records: nodes.iter().map(|n| drive_records(n).len()).collect(),
    })
}

fn spec(knobs: &Knobs, phase: Phase, name: &str, total_s: f64) -> NodeSpec {
    let args = match phase {
        Phase::Held => format!(
            "--mode burst --pods {p} --concurrency {p} --lifetime 1h",
            p = knobs.pods
        ),
        Phase::Churn => format!(
            "--mode rate --rate {} --arrivals uniform --pods {} --lifetime {}s",
            knobs.rate,
            // Arrivals never run out before the window ends (and the node stops).
            (knobs.rate * total_s).ceil() as usize,
            knobs.churn_lifetime_s()
        ),
    };
    NodeSpec {
        name: name.into(),
        env: vec![
            ("KUBELET_MODE".into(), "standin".into()),
            ("STANDIN_ARGS".into(), args),
        ],
        netready_toml: Some(node_image::bridge_target_config()),
        ..Default::default()
    }
}

/// Runs one phase with `n` fresh node pods; returns its raw numbers and the problems seen.
async fn phase(
    ctd: &Containerd,
    knobs: &Knobs,
    rep: usize,
    n: usize,
    phase: Phase,
) -> anyhow::Result<(Value, Vec<String>)> {
    let mut problems = Vec::new();
    let names: Vec<String> = (0..n)
        .map(|i| format!("node-{}-{}-r{rep}-{i}", n, phase.name()))
        .collect();
    // Arrivals for warm-up + window + a margin for slow starts.
    let total_s = knobs.warmup_s + knobs.window_s + 180.0;
    let mut nodes = Vec::new();
    let started = Instant::now();
    for name in &names {
        nodes.push(NodePod::run(ctd, &spec(knobs, phase, name, total_s)).await?);
    }
    let cgroups: Vec<Cgroup> = nodes.iter().map(|p| Cgroup::new(p.cgroup())).collect();
    let result = measure(
        ctd,
        knobs,
        phase,
        &names,
        &mut nodes,
        &cgroups,
        started,
        &mut problems,
    )
    .await;

    // kubelet deleting the node pods: all at once, SIGTERM, 60 s of grace.
    let stop_at = Instant::now();
    let stops = futures::future::join_all(nodes.iter_mut().map(|node| async move {
        let code = node.stop(Duration::from_secs(60)).await;
        (code, stop_at.elapsed().as_secs_f64())
    }))
    .await;
    let mut stopped = Vec::new();
    for ((node, name), (code, secs)) in nodes.iter().zip(&names).zip(stops) {
        match &code {
            Ok(0) => {}
            Ok(c) => problems.push(format!(
                "{name}: exit code {c} after SIGTERM; log tail:\n{}",
                tail(&node.log(), 30)
            )),
            Err(e) => problems.push(format!("{name}: stop failed: {e:#}")),
        }
        let log = node.log();
        stopped.push(json!({
            "exit_code": code.as_ref().ok(),
            "stop_s": secs,
            "teardown_logged": log.contains("stopped and removed"),
        }));
    }
    for node in nodes {
        node.remove().await?;
    }
    // Let the kernel finish tearing the namespaces down before the next phase measures.
    tokio::time::sleep(Duration::from_secs_f64(knobs.cooldown_s)).await;

    let mut result = result?;
    for (r, s) in result["nodes"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .zip(stopped)
    {
        r["stop"] = s;
    }
    result["rep"] = rep.into();
    Ok((result, problems))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<_> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    ctd: &Containerd,
    knobs: &Knobs,
    phase: Phase,
    names: &[String],
    nodes: &mut [NodePod],
    cgroups: &[Cgroup],
    started: Instant,
    problems: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let up_s = match phase {
        Phase::Held => {
            for node in nodes.iter_mut() {
                node.wait_records(knobs.pods, Duration::from_secs(600))
                    .await?;
            }
            let up_s = started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(knobs.settle_s)).await;
            up_s
        }
        Phase::Churn => {
            tokio::time::sleep(Duration::from_secs_f64(knobs.warmup_s)).await;
            // Steady state: pods leave as they arrive once the first ones were deleted.
            let deadline = Instant::now() + Duration::from_secs(120);
            while nodes.iter().any(|n| drive_records(n).is_empty()) {
                for node in nodes.iter_mut() {
                    if let Some(code) = node.exit_code().await? {
                        anyhow::bail!(
                            "node exited ({code}) during warm-up:\n{}",
                            tail(&node.log(), 40)
                        );
                    }
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no pod deleted {} s after the warm-up",
                    120
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            started.elapsed().as_secs_f64()
        }
    };
    window(ctd, knobs, phase, names, nodes, cgroups, up_s, problems).await
}

#[allow(clippy::too_many_arguments)]
async fn window(
    ctd: &Containerd,
    knobs: &Knobs,
    phase: Phase,
    names: &[String],
    nodes: &mut [NodePod],
    cgroups: &[Cgroup],
    up_s: f64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let quiet = wait_quiet(knobs, ctd, nodes, cgroups).await?;
    let start = edge(nodes, cgroups)?;
    // Working set every 5 s through the window (the end value is the one reported).
    let mut ws_samples: Vec<Vec<u64>> = vec![Vec::new(); nodes.len()];
    let end_at = start.at + Duration::from_secs_f64(knobs.window_s);
    loop {
        let left = end_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
        for (s, cg) in ws_samples.iter_mut().zip(cgroups) {
            if let Ok((usage, inactive)) = cg.memory() {
                s.push(usage.saturating_sub(inactive));
            }
        }
    }
    let end = edge(nodes, cgroups)?;
    let secs = (end.at - start.at).as_secs_f64();

    // Per node: CPU, memory, PSS, records.
    let mut node_pids: HashSet<u32> = HashSet::new();
    let mut rows = Vec::new();
    for (i, ((node, cg), name)) in nodes.iter_mut().zip(cgroups).zip(names).enumerate() {
        let cpu_ns = end.nodes_cpu_ns[i].saturating_sub(start.nodes_cpu_ns[i]);
        let (usage, inactive) = cg.memory()?;
        let pids = cg.pids();
        let pss: u64 = pids.iter().map(|&p| pss_bytes(p)).sum();
        node_pids.extend(&pids);
        let records = node.records();
        let drive = drive_records(node);
        let in_window = |r: &&Value, key: &str| {
            stamp_secs(&r["stamps"][key]).is_some_and(|t| t >= start.wall && t < end.wall)
        };
        let ready_in_window = records
            .iter()
            .filter(|r| in_window(r, "network_ready"))
            .count();
        let requested_in_window = records
            .iter()
            .filter(|r| in_window(r, "first_request"))
            .count();
        let deletes = end.drive_records[i].saturating_sub(start.drive_records[i]);
        let bad = not_ready(&records);
        let bad_drive = not_ready(&drive);
        if !bad.is_empty() {
            problems.push(format!(
                "{name}: {} of {} netready records not network-ready, first: {}",
                bad.len(),
                records.len(),
                bad[0]
            ));
        }
        if !bad_drive.is_empty() {
            problems.push(format!(
                "{name}: {} of {} stand-in driver records not ready, first: {}",
                bad_drive.len(),
                drive.len(),
                bad_drive[0]
            ));
        }
        if let Some(code) = node.exit_code().await? {
            problems.push(format!(
                "{name}: exited ({code}) during the window:\n{}",
                tail(&node.log(), 30)
            ));
        }
        let samples = &ws_samples[i];
        rows.push(json!({
            "name": name,
            "cgroup": node.cgroup(),
            "cpu_ns": cpu_ns,
            "cores": cpu_ns as f64 / 1e9 / secs,
            "memory_usage_bytes": usage,
            "inactive_file_bytes": inactive,
            "working_set_bytes": usage.saturating_sub(inactive),
            "working_set_samples_bytes": samples,
            "working_set_max_bytes": samples.iter().copied().max(),
            "pss_bytes": pss,
            "processes": pids.len(),
            "cgroups_below": cg.descendants(),
            "records_total": records.len(),
            "ready_in_window": ready_in_window,
            "requested_in_window": requested_in_window,
            "deleted_in_window": deletes,
            "ready_per_s": ready_in_window as f64 / secs,
            "deleted_per_s": deletes as f64 / secs,
            "alive_at_end": records.len().saturating_sub(drive.len()),
            "not_ready_records": bad.len(),
            "driver_records_total": drive.len(),
            "driver_not_ready": bad_drive.len(),
        }));
    }

    // Host-wide CPU over the same window and where the part no node cgroup got went.
    let mut host = host_cpu(&start, &end, &node_pids, ctd);
    host["memory_at_end"] = host_memory();
    let other_in_window = host["breakdown_cores"]["other_processes"]
        .as_f64()
        .unwrap_or(0.0);
    host["waited_for_quiet_s"] = quiet.0.into();
    host["quiet_before_window"] = quiet.1.into();
    Ok(json!({
        "n": nodes.len(),
        "phase": phase.name(),
        "window_s": secs,
        "window_start_unix": start.wall,
        "up_before_window_s": up_s,
        "noisy": !quiet.1 || other_in_window >= knobs.quiet_cores,
        "nodes": rows,
        "host": host,
    }))
}

/// Host-wide CPU between two edges (cores), and where the part no node cgroup was charged
/// for went: kernel threads, irq/softirq, steal, this harness, the outer containerd's PID
/// namespace (containerd, the node pods' shims and pause processes), and the residual: other
/// processes on the host (`other_processes`; processes that exited in the window are only
/// there, which is why it is a residual — `other_processes_seen` is the part read from
/// processes alive at both edges; `tasks_exited_or_unseen_cores`, from the root cgroup's CPU,
/// is task time of processes that were not alive at both edges).
fn host_cpu(start: &Edge, end: &Edge, node_pids: &HashSet<u32>, ctd: &Containerd) -> Value {
    let secs = (end.at - start.at).as_secs_f64();
    let d = |k: usize| end.stat[k].saturating_sub(start.stat[k]) as f64 / USER_HZ / secs;
    let total: f64 = (0..8).map(d).sum();
    let busy = total - d(3) - d(4);
    let nodes_cores: f64 = end
        .nodes_cpu_ns
        .iter()
        .zip(&start.nodes_cpu_ns)
        .map(|(e, s)| e.saturating_sub(*s) as f64 / 1e9 / secs)
        .sum();
    let me = std::process::id();
    // The outer containerd's PID namespace: itself, the node pods' shims and pause processes
    // (the node containers' own processes are in node_pids).
    let ctd_pids: HashSet<u32> = ctd.processes().into_iter().collect();
    let (mut kthreads, mut harness, mut outer, mut seen) = (0.0, 0.0, 0.0, 0.0);
    let mut kthread_comms: HashMap<String, f64> = HashMap::new();
    let mut other_comms: HashMap<String, f64> = HashMap::new();
    for (pid, p) in &end.procs {
        if node_pids.contains(pid) {
            continue;
        }
        let before = start
            .procs
            .get(pid)
            // A reused pid is a new process: all its ticks are in the window.
            .filter(|b| b.kthread == p.kthread && b.ticks <= p.ticks)
            .map_or(0, |b| b.ticks);
        let cores = p.ticks.saturating_sub(before) as f64 / USER_HZ / secs;
        if cores == 0.0 {
            continue;
        }
        if p.kthread {
            kthreads += cores;
            *kthread_comms.entry(p.comm.clone()).or_default() += cores;
        } else if *pid == me {
            harness += cores;
        } else if ctd_pids.contains(pid) {
            outer += cores;
        } else {
            seen += cores;
            *other_comms.entry(p.comm.clone()).or_default() += cores;
        }
    }
    let top = |m: HashMap<String, f64>| {
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(8);
        v.into_iter()
            .map(|(k, c)| json!({"comm": k, "cores": c}))
            .collect::<Vec<_>>()
    };
    let unaccounted = busy - nodes_cores;
    let irq = d(5) + d(6);
    let steal = d(7);
    // The root cgroup's CPU: every task's, exited ones included (not irq time).
    let all_tasks = end.all_tasks_ns.saturating_sub(start.all_tasks_ns) as f64 / 1e9 / secs;
    json!({
        "busy_cores": busy,
        "nodes_cgroups_cores": nodes_cores,
        "not_in_node_cgroups_cores": unaccounted,
        "breakdown_cores": {
            "kernel_threads": kthreads, "irq_softirq": irq, "steal": steal,
            "harness": harness, "outer_containerd_and_shims": outer,
            "other_processes": unaccounted - kthreads - irq - steal - harness - outer,
            "other_processes_seen": seen,
        },
        // Task time (root cgroup) no node cgroup, live kernel thread, the harness, the outer
        // containerd or a live other process explains: processes that exited in the window.
        "all_tasks_cores": all_tasks,
        "tasks_exited_or_unseen_cores": all_tasks - nodes_cores - kthreads - harness - outer - seen,
        "busy_minus_all_tasks_cores": busy - all_tasks,
        "top_kernel_threads": top(kthread_comms),
        "top_other_processes": top(other_comms),
        "proc_stat_cores": {"user": d(0), "nice": d(1), "system": d(2), "idle": d(3),
                            "iowait": d(4), "irq": d(5), "softirq": d(6), "steal": d(7)},
    })
}

/// Waits (up to QUIET_WAIT_S) until processes outside the benchmark use less than QUIET_CORES
/// over 5 s, so a build or test run elsewhere on the host does not share the window. Returns
/// how long it waited and whether the host was quiet in the end.
async fn wait_quiet(
    knobs: &Knobs,
    ctd: &Containerd,
    nodes: &[NodePod],
    cgroups: &[Cgroup],
) -> anyhow::Result<(f64, bool)> {
    let t = Instant::now();
    let mut said = false;
    loop {
        let a = edge(nodes, cgroups)?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let b = edge(nodes, cgroups)?;
        let pids: HashSet<u32> = cgroups.iter().flat_map(Cgroup::pids).collect();
        let h = host_cpu(&a, &b, &pids, ctd);
        let other = h["breakdown_cores"]["other_processes"]
            .as_f64()
            .unwrap_or(0.0);
        let waited = t.elapsed().as_secs_f64();
        if other < knobs.quiet_cores {
            if said {
                println!("  host quiet after {waited:.0} s");
            }
            return Ok((waited, true));
        }
        if waited >= knobs.quiet_wait_s {
            println!(
                "  host still busy after {waited:.0} s ({other:.2} cores in other processes): \
                 measuring anyway, the window is marked noisy"
            );
            return Ok((waited, false));
        }
        if !said {
            println!(
                "  waiting for the host to quiet down: other processes use {other:.2} cores ({})",
                h["top_other_processes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(3)
                    .map(|p| format!(
                        "{} {:.2}",
                        p["comm"].as_str().unwrap_or("?"),
                        p["cores"].as_f64().unwrap_or(0.0)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            said = true;
        }
    }
}

// --- summary ---------------------------------------------------------------------------------

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// Per (N, phase) across every node of every repetition.
struct Agg {
    n: usize,
    phase: &'static str,
    runs: usize,
    cores: Vec<f64>,
    ws_mb: Vec<f64>,
    pss_mb: Vec<f64>,
    usage_mb: Vec<f64>,
    ready_per_s: Vec<f64>,
    deleted_per_s: Vec<f64>,
    unaccounted: Vec<f64>,
    kthreads: Vec<f64>,
    busy: Vec<f64>,
    other: Vec<f64>,
    irq: Vec<f64>,
    outer: Vec<f64>,
    harness: Vec<f64>,
    steal: Vec<f64>,
    stop_s: Vec<f64>,
    not_ready: u64,
    noisy: usize,
}

fn aggregate(runs: &[Value], n: usize, phase: Phase) -> Agg {
    let mut a = Agg {
        n,
        phase: phase.name(),
        runs: 0,
        cores: vec![],
        ws_mb: vec![],
        pss_mb: vec![],
        usage_mb: vec![],
        ready_per_s: vec![],
        deleted_per_s: vec![],
        unaccounted: vec![],
        kthreads: vec![],
        busy: vec![],
        other: vec![],
        irq: vec![],
        outer: vec![],
        harness: vec![],
        steal: vec![],
        stop_s: vec![],
        not_ready: 0,
        noisy: 0,
    };
    for r in runs
        .iter()
        .filter(|r| r["n"] == n && r["phase"] == phase.name())
    {
        a.runs += 1;
        a.noisy += usize::from(r["noisy"] == true);
        for node in r["nodes"].as_array().into_iter().flatten() {
            let f = |k: &str| node[k].as_f64().unwrap_or(f64::NAN);
            a.cores.push(f("cores"));
            a.ws_mb.push(f("working_set_bytes") / MB);
            a.pss_mb.push(f("pss_bytes") / MB);
            a.usage_mb.push(f("memory_usage_bytes") / MB);
            a.ready_per_s.push(f("ready_per_s"));
            a.deleted_per_s.push(f("deleted_per_s"));
            a.stop_s
                .push(node["stop"]["stop_s"].as_f64().unwrap_or(f64::NAN));
            a.not_ready += node["not_ready_records"].as_u64().unwrap_or(0)
                + node["driver_not_ready"].as_u64().unwrap_or(0);
        }
        let h = &r["host"];
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        a.unaccounted.push(f(&h["not_in_node_cgroups_cores"]));
        a.kthreads.push(f(&h["breakdown_cores"]["kernel_threads"]));
        a.busy.push(f(&h["busy_cores"]));
        let b = &h["breakdown_cores"];
        a.other.push(f(&b["other_processes"]));
        a.irq.push(f(&b["irq_softirq"]));
        a.outer.push(f(&b["outer_containerd_and_shims"]));
        a.harness.push(f(&b["harness"]));
        a.steal.push(f(&b["steal"]));
    }
    a
}

fn print_tables(knobs: &Knobs, aggs: &[Agg]) {
    println!();
    println!(
        "per node pod, from its cgroup (containerd, shims, runc, CNI plugins, netready; netperf \
         pods have no processes of their own); {} netperf pods per node; window {} s; {} \
         repetition(s){}",
        knobs.pods,
        knobs.window_s,
        knobs.repeats,
        if knobs.window_s < 300.0 || knobs.repeats < 3 {
            " — QUICK MODE (METHODOLOGY: WINDOW_S=300 REPEATS=3)"
        } else {
            ""
        }
    );
    println!(
        "         | cores / node  | MB / node at window end           | pods/s / node | vs hollow node (0.09 c, 220 MB) | not   | node"
    );
    println!(
        " N phase |  mean    max  | WS mean WS max PSS mean usage     | ready  deleted|  cores    WS      PSS           | ready | stop s"
    );
    for a in aggs {
        println!(
            "{:>2} {:<5} | {:>5.3}  {:>5.3} | {:>7.1} {:>6.1} {:>8.1} {:>5.1}     | {:>5.2} {:>7.2} | {:>5.2}x  {:>5.2}x  {:>5.2}x          | {:>5} | {:>6.1}",
            a.n,
            a.phase,
            mean(&a.cores),
            max(&a.cores),
            mean(&a.ws_mb),
            max(&a.ws_mb),
            mean(&a.pss_mb),
            mean(&a.usage_mb),
            mean(&a.ready_per_s),
            mean(&a.deleted_per_s),
            mean(&a.cores) / BUDGET_CORES,
            mean(&a.ws_mb) / BUDGET_MB,
            mean(&a.pss_mb) / BUDGET_MB,
            a.not_ready,
            mean(&a.stop_s),
        );
    }
    println!();
    println!(
        "host CPU over the same windows, cores of {} (busy = all − idle − iowait; uncharged = busy − Σ node cgroups):",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        " N phase |  busy  Σnodes | uncharged  /node | kernel thr  irq+si  steal  outer ctd  harness  other procs | /node w/o other | noisy"
    );
    for a in aggs {
        let un = mean(&a.unaccounted);
        let other = mean(&a.other);
        println!(
            "{:>2} {:<5} | {:>5.3}  {:>5.3} | {:>9.3} {:>6.3} | {:>10.3}  {:>6.3}  {:>5.3}  {:>9.3}  {:>7.3}  {:>11.3} | {:>15.3} | {:>3}/{}",
            a.n,
            a.phase,
            mean(&a.busy),
            mean(&a.busy) - un,
            un,
            un / a.n as f64,
            mean(&a.kthreads),
            mean(&a.irq),
            mean(&a.steal),
            mean(&a.outer),
            mean(&a.harness),
            other,
            (un - other) / a.n as f64,
            a.noisy,
            a.runs,
        );
    }
    println!(
        "(uncharged CPU is kernel work no cgroup pays for — kworkers cleaning up network \
         namespaces, irq/softirq — plus the outer containerd and shims, this harness and \
         anything else on the host; 'other procs' is the residual (processes outside the \
         benchmark, and any that exited in the window); '/node w/o other' leaves it out; \
         details per window in host.breakdown_cores of the results file)"
    );
}

fn print_sizing(knobs: &Knobs, aggs: &[Agg]) -> Value {
    let (Some(&lo), Some(&hi)) = (knobs.nodes.iter().min(), knobs.nodes.iter().max()) else {
        return Value::Null;
    };
    let find = |n: usize, p: &str| aggs.iter().find(|a| a.n == n && a.phase == p);
    let mut out = json!({});
    println!();
    if let Some(c) = find(hi, "churn") {
        let cores = mean(&c.cores);
        // The host's uncharged CPU (other processes left out) shared out among the nodes.
        let with_host = cores + (mean(&c.unaccounted) - mean(&c.other)) / hi as f64;
        let ws = mean(&c.ws_mb) * MB;
        let pss = mean(&c.pss_mb) * MB;
        println!(
            "sizing (churn, N={hi}): {:.1} node pods per core by cgroup CPU ({:.1} with the \
             host's uncharged CPU shared out); {:.1} per GiB by working set, {:.1} by PSS \
             (hollow-node budget: {:.1} per core, {:.1} per GiB)",
            1.0 / cores,
            1.0 / with_host,
            GIB / ws,
            GIB / pss,
            1.0 / BUDGET_CORES,
            GIB / (BUDGET_MB * MB),
        );
        out["sizing"] = json!({
            "n": hi, "phase": "churn",
            "node_pods_per_core": 1.0 / cores,
            "node_pods_per_core_with_uncharged_host_cpu": 1.0 / with_host,
            "node_pods_per_gib_working_set": GIB / ws,
            "node_pods_per_gib_pss": GIB / pss,
        });
    }
    if lo != hi {
        let mut scaling = Vec::new();
        for p in ["held", "churn"] {
            if let (Some(a), Some(b)) = (find(lo, p), find(hi, p)) {
                let r = |x: &[f64], y: &[f64]| mean(y) / mean(x);
                let ua = (mean(&a.unaccounted) - mean(&a.other)) / lo as f64;
                let ub = (mean(&b.unaccounted) - mean(&b.other)) / hi as f64;
                println!(
                    "per node, N={lo} → N={hi} ({p}): cores ×{:.2} ({:.3} → {:.3}), working set \
                     ×{:.2}, PSS ×{:.2}, uncharged host CPU per node (other processes left out) \
                     ×{:.2} ({:.3} → {:.3}), node pod stop ×{:.2} ({:.1} → {:.1} s)",
                    r(&a.cores, &b.cores),
                    mean(&a.cores),
                    mean(&b.cores),
                    r(&a.ws_mb, &b.ws_mb),
                    r(&a.pss_mb, &b.pss_mb),
                    ub / ua,
                    ua,
                    ub,
                    r(&a.stop_s, &b.stop_s),
                    mean(&a.stop_s),
                    mean(&b.stop_s),
                );
                scaling.push(json!({
                    "phase": p, "from_n": lo, "to_n": hi,
                    "cores_ratio": r(&a.cores, &b.cores),
                    "working_set_ratio": r(&a.ws_mb, &b.ws_mb),
                    "pss_ratio": r(&a.pss_mb, &b.pss_mb),
                    "uncharged_host_cores_per_node_ratio": ub / ua,
                    "stop_s_ratio": r(&a.stop_s, &b.stop_s),
                }));
            }
        }
        out["scaling"] = scaling.into();
    }
    out
}

fn summary_json(aggs: &[Agg]) -> Value {
    aggs.iter()
        .map(|a| {
            json!({
                "n": a.n, "phase": a.phase, "runs": a.runs,
                "cores_per_node_mean": mean(&a.cores), "cores_per_node_max": max(&a.cores),
                "working_set_mb_mean": mean(&a.ws_mb), "working_set_mb_max": max(&a.ws_mb),
                "pss_mb_mean": mean(&a.pss_mb), "usage_mb_mean": mean(&a.usage_mb),
                "ready_per_s_per_node": mean(&a.ready_per_s),
                "deleted_per_s_per_node": mean(&a.deleted_per_s),
                "host_busy_cores": mean(&a.busy),
                "host_not_in_node_cgroups_cores": mean(&a.unaccounted),
                "host_kernel_threads_cores": mean(&a.kthreads),
                "host_other_processes_cores": mean(&a.other),
                "cores_vs_budget": mean(&a.cores) / BUDGET_CORES,
                "working_set_vs_budget": mean(&a.ws_mb) / BUDGET_MB,
                "pss_vs_budget": mean(&a.pss_mb) / BUDGET_MB,
                "not_ready_records": a.not_ready, "noisy_runs": a.noisy,
                "node_stop_s_mean": mean(&a.stop_s),
            })
        })
        .collect::<Vec<_>>()
        .into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let work = tempfile::Builder::new()
        .prefix("nrtest-node-density-")
        .tempdir()?;
    let t = Instant::now();
    let archive = node_image::build(work.path(), Path::new(BIN))?;
    println!(
        "image built in {:.0} s ({} MB)",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&archive)?.len() / 1_000_000
    );
    let ctd = Containerd::start().await?;
    node_image::import(&ctd, &archive)?;
    let baseline_memory = host_memory();

    let mut runs = Vec::new();
    let mut problems = Vec::new();
    let mut error = None;
    'outer: for rep in 0..knobs.repeats {
        for &n in &knobs.nodes {
            for p in [Phase::Held, Phase::Churn] {
                let t = Instant::now();
                match phase(&ctd, &knobs, rep, n, p).await {
                    Ok((run, mut probs)) => {
                        let a = aggregate(std::slice::from_ref(&run), n, p);
                        println!(
                            "rep {rep} N={n} {:>5}: {:.3} cores/node, WS {:.1} MB/node, PSS {:.1} MB/node, \
                             {:.2} ready/s/node, host busy {:.3} (uncharged {:.3}) [{:.0} s]",
                            p.name(),
                            mean(&a.cores),
                            mean(&a.ws_mb),
                            mean(&a.pss_mb),
                            mean(&a.ready_per_s),
                            mean(&a.busy),
                            mean(&a.unaccounted),
                            t.elapsed().as_secs_f64()
                        );
                        for pr in &probs {
                            eprintln!("PROBLEM: {pr}");
                        }
                        problems.append(&mut probs);
                        runs.push(run);
                    }
                    Err(e) => {
                        eprintln!("rep {rep} N={n} {}: FAILED: {e:#}", p.name());
                        error = Some(format!("rep {rep} N={n} {}: {e:#}", p.name()));
                        break 'outer;
                    }
                }
            }
        }
    }

    let mut aggs = Vec::new();
    for &n in &knobs.nodes {
        for p in [Phase::Held, Phase::Churn] {
            let a = aggregate(&runs, n, p);
            if a.runs > 0 {
                aggs.push(a);
            }
        }
    }
    print_tables(&knobs, &aggs);
    let derived = print_sizing(&knobs, &aggs);
    drop(ctd);

    let file = write(
        "node_density",
        json!({
            "params": knobs.json(),
            "host_memory_baseline": baseline_memory,
            "runs": runs,
            "summary": summary_json(&aggs),
            "derived": derived,
            "problems": problems,
            "error": error,
        }),
    )?;
    println!("results: {}", file.display());
    if let Some(e) = error {
        anyhow::bail!("{e}");
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} problem(s) (see above and the results file)",
        problems.len()
    );
    Ok(())
}
