//! Benchmark: one `netready collect` under the forwarders of thousands of nodes.
//!
//! The collector is this build's binary (`cargo bench`: release), on loopback, a fresh one on
//! a fresh directory per step. The records are a real one (`common/record.json`, from
//! `netready local`, 3.5 KB) with run, node, sandbox and pod uid made unique.
//!
//! 1. **Steady load, open loop.** NETREADY_BENCH_NODES (5,000) simulated nodes, each with its
//!    own kept-alive connection, as a forwarder sends: once a second (a random phase per
//!    node), a POST of the records that node made in that second, Poisson with mean
//!    NETREADY_BENCH_RATES pods/s (1, 2, 4, 8: one step each, up to 2.8 GB on disk at
//!    8, removed after the step; none made, no POST). Latency is
//!    measured from the intended send time, so a collector that falls behind cannot hide it.
//!    NETREADY_BENCH_SECONDS (20) measured per step after 3 s of warm-up. A step holds when
//!    ≥ 95% of the offered records are acknowledged in the window, p99 ≤ 1 s (a forwarder's
//!    batch period) and no POST failed.
//! 2. **Catch-up, closed loop.** After an outage every node has a backlog and sends full
//!    batches (256 records) back to back: 32 connections do so for 15 s or
//!    NETREADY_BENCH_CATCHUP_RECORDS (300,000, about 1 GB on disk) records.
//!    The collector's ceiling.
//! 3. **Restart.** That collector is killed (SIGKILL) and started again on its directory:
//!    how long the index takes to rebuild and what it costs in memory per record.
//!
//! Collector CPU is read from `/proc/<pid>/stat` over the measured window, RSS from
//! `/proc/<pid>/status`. The load generator runs on the same 2 cores (its CPU is printed
//! too): the collector's CPU per record is the number to scale from, not the ceiling of this
//! machine. Prints what it means for 5,000 nodes at 1 pod/s and writes
//! `bench/results/collect-<unix time>.json`.
//!
//! A step is skipped (and the catch-up made smaller) when it would take more than half of
//! the free disk space under the temp directory (`TMPDIR`).
//!
//! `cargo bench -p netready --bench collect` (as root, for the open-file limit).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use netready_testkit::bench::env_or;
use netready_testkit::stats::percentile as pct;
use serde_json::json;
use tokio::time::Instant as TInstant;

const BIN: &str = env!("CARGO_BIN_EXE_netready");
const TEMPLATE: &str = include_str!("common/record.json");
const WARMUP: Duration = Duration::from_secs(3);
const TARGET_NODES: f64 = 5000.0;

/// The real record, split around what each record changes.
struct Records {
    /// Text, marker, text, marker, ..., text.
    pieces: Vec<String>,
}

impl Records {
    fn new() -> Self {
        let mut v: serde_json::Value = serde_json::from_str(TEMPLATE.trim()).unwrap();
        v["run_id"] = "@@R@@".into();
        v["node"] = "@@N@@".into();
        v["sandbox_id"] = "@@S@@".into();
        v["pod"]["uid"] = "@@U@@".into();
        v["pod"]["name"] = "@@P@@".into();
        Records {
            pieces: v.to_string().split("@@").map(str::to_owned).collect(),
        }
    }

    /// Appends the record `seq` of `node` in run `run`, with its newline.
    fn push(&self, out: &mut Vec<u8>, run: &str, node: usize, seq: u64) {
        for (i, p) in self.pieces.iter().enumerate() {
            if i % 2 == 0 {
                out.extend_from_slice(p.as_bytes());
                continue;
            }
            let v = match p.as_str() {
                "R" => run.to_owned(),
                "N" => format!("hollow-node-{node}"),
                "S" => format!("{node:016x}{seq:048x}"),
                "U" => format!("{node:08x}-0000-4000-8000-{seq:012x}"),
                "P" => format!("netperf-{node}-{seq}"),
                other => panic!("marker {other}"),
            };
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'\n');
    }

    fn len(&self) -> usize {
        let mut b = Vec::new();
        self.push(&mut b, "collect-bench-0", 0, 0);
        b.len()
    }
}

/// xorshift64*: a cheap generator per node (no shared state between tasks).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Poisson with mean `lambda` (Knuth; small means only).
    fn poisson(&mut self, lambda: f64) -> u32 {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.next_f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

/// A `netready collect` process.
struct Collector {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Collector {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(BIN)
            .args(["collect", "--log-level", "warn", "--listen"])
            .arg(addr.to_string())
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "collector did not listen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Collector {
            child,
            addr,
            dir: dir.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        // Drop waits for it.
    }

    fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        self.dir.clone()
    }
}

impl Drop for Collector {
    /// Never left running (it holds its files open, deleted or not), whatever path the
    /// benchmark leaves by.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Bytes free for unprivileged writers on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

/// Whether writing `need` bytes under `dir` leaves at least half of what is free (the
/// machine is shared: a full disk breaks everyone's builds and tests).
fn room_for(dir: &Path, need: u64, what: &str) -> bool {
    let free = free_bytes(dir);
    let ok = need.saturating_mul(2) <= free;
    if !ok {
        eprintln!(
            "skipping {what}: it writes about {:.1} GB and {} has {:.1} GB free (at most half of it is used)",
            need as f64 / 1e9,
            dir.display(),
            free as f64 / 1e9
        );
    }
    ok
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // CLK_TCK
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn post(s: &mut Sender, addr: SocketAddr, body: Vec<u8>) -> anyhow::Result<u16> {
    s.ready().await?;
    let req = http::Request::post("/v1/records")
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from(body)))?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = connect(addr).await?;
    s.ready().await?;
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let body = s.send_request(req).await?.into_body().collect().await?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One POST: when it was meant to go, when its answer came, what it carried.
struct Sent {
    intended: TInstant,
    done: TInstant,
    records: u32,
    bytes: u32,
    ok: bool,
}

struct Window {
    cpu_collector: f64,
    cpu_generator: f64,
    /// Every CPU of the machine: busy (kernel included) and stolen by the hypervisor, in
    /// cores.
    machine_busy: f64,
    machine_steal: f64,
    alloc_stalls: f64,
}

/// Times the kernel stalled an allocation to reclaim memory or compact it
/// (`/proc/vmstat`): a write into a full page cache can wait there.
fn alloc_stalls() -> f64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("allocstall_") || l.starts_with("compact_stall "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}

/// `/proc/stat`'s first line: (busy, steal, total) in ticks.
fn machine_ticks() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0);
    let total: f64 = (0..8).map(get).sum();
    let busy = total - get(3) - get(4) - get(7);
    (busy, get(7), total)
}

/// Reads both CPU counters at `from` and at `to`; the seconds used in between.
async fn cpu_window(pid: u32, from: TInstant, to: TInstant) -> Window {
    let (c, g) = (pid.to_string(), "self".to_owned());
    tokio::time::sleep_until(from).await;
    let (c0, g0, m0, a0) = (
        cpu_seconds(&c),
        cpu_seconds(&g),
        machine_ticks(),
        alloc_stalls(),
    );
    tokio::time::sleep_until(to).await;
    let m1 = machine_ticks();
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let total = (m1.2 - m0.2).max(1.0);
    Window {
        cpu_collector: cpu_seconds(&c) - c0,
        cpu_generator: cpu_seconds(&g) - g0,
        machine_busy: (m1.0 - m0.0) / total * cpus,
        machine_steal: (m1.1 - m0.1) / total * cpus,
        alloc_stalls: alloc_stalls() - a0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Step 1 at `rate` pods/s per node.
async fn steady(
    records: Arc<Records>,
    nodes: usize,
    rate: f64,
    secs: u64,
    scratch: &Path,
) -> anyhow::Result<serde_json::Value> {
    let dir = scratch.join(format!("steady-{rate}"));
    let c = Collector::start(&dir).await?;
    let (addr, pid) = (c.addr, c.pid());
    let run = format!("collect-bench-steady-{rate}");
    // Connections first (a node keeps one open), at most 256 being made at once; the
    // schedule starts once all are up.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<TInstant>);
    let connected = Arc::new(tokio::sync::Barrier::new(nodes + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for node in 0..nodes {
        let (records, gate, run) = (records.clone(), gate.clone(), run.clone());
        let (connected, mut start_rx) = (connected.clone(), start_rx.clone());
        tasks.spawn(async move {
            let mut sent = Vec::new();
            let s = {
                let _permit = gate.acquire().await;
                connect(addr).await
            };
            connected.wait().await;
            let Ok(mut s) = s else {
                return (sent, 1u64);
            };
            let t0 = *start_rx
                .wait_for(Option::is_some)
                .await
                .expect("the schedule starts")
                .as_ref()
                .expect("checked");
            let to = t0 + WARMUP + Duration::from_secs(secs);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((node as u64 + 1) * 0x1000_0000_01B3));
            let mut next = t0 + Duration::from_secs_f64(rng.next_f64());
            let (mut seq, mut failed) = (0u64, 0u64);
            while next < to {
                tokio::time::sleep_until(next).await;
                let k = rng.poisson(rate);
                if k > 0 {
                    let mut body = Vec::with_capacity(k as usize * 3600);
                    for _ in 0..k {
                        records.push(&mut body, &run, node, seq);
                        seq += 1;
                    }
                    let bytes = body.len() as u32;
                    let answer = post(&mut s, addr, body).await;
                    let ok = matches!(answer, Ok(204));
                    if !ok {
                        failed += 1;
                        let why = match &answer {
                            Ok(status) => format!("status {status}"),
                            Err(e) => format!("{e:#}"),
                        };
                        // The first few only: a full disk fails every POST.
                        static SHOWN: std::sync::atomic::AtomicU32 =
                            std::sync::atomic::AtomicU32::new(0);
                        if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                            eprintln!(
                                "node {node}: POST failed {:.3} s after the start: {why}",
                                (next - t0).as_secs_f64()
                            );
                        }
                        if let Ok(fresh) = connect(addr).await {
                            s = fresh;
                        }
                    }
                    sent.push(Sent {
                        intended: next,
                        done: TInstant::now(),
                        records: k,
                        bytes,
                        ok,
                    });
                }
                next += Duration::from_secs(1);
            }
            (sent, failed)
        });
    }
    connected.wait().await;
    let t0 = TInstant::now() + Duration::from_millis(200);
    let from = t0 + WARMUP;
    let to = from + Duration::from_secs(secs);
    start_tx.send(Some(t0))?;
    let cpu = tokio::spawn(cpu_window(pid, from, to));
    let mut all = Vec::new();
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        let (s, f) = r?;
        all.extend(s);
        failed += f;
    }
    let cpu = cpu.await?;
    let rss = rss_bytes(pid);
    let m = get(addr, "/metrics").await?;
    c.stop();
    std::fs::remove_dir_all(&dir)?;

    let window = secs as f64;
    let in_window: Vec<&Sent> = all
        .iter()
        .filter(|s| s.intended >= from && s.intended < to)
        .collect();
    let offered: u64 = in_window.iter().map(|s| u64::from(s.records)).sum();
    let done_in = |s: &&Sent| s.ok && s.done >= from && s.done < to;
    let acked: u64 = all
        .iter()
        .filter(done_in)
        .map(|s| u64::from(s.records))
        .sum();
    let bytes: u64 = all.iter().filter(done_in).map(|s| u64::from(s.bytes)).sum();
    let posts = all.iter().filter(done_in).count();
    let mut lat: Vec<Duration> = in_window.iter().map(|s| s.done - s.intended).collect();
    lat.sort();
    let (p50, p99, max) = (pct(&lat, 50.0), pct(&lat, 99.0), *lat.last().unwrap());
    // Slow POSTs clustered in time are a stall of the collector; spread out, of the load.
    let mut slow: Vec<(f64, f64)> = in_window
        .iter()
        .filter(|s| s.done - s.intended > Duration::from_millis(100))
        .map(|s| ((s.intended - from).as_secs_f64(), ms(s.done - s.intended)))
        .collect();
    slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !slow.is_empty() {
        eprintln!(
            "step {rate}: {} POSTs over 100 ms, at (s into the window, ms): {:?}",
            slow.len(),
            &slow[..slow.len().min(10)]
        );
    }
    let achieved = acked as f64 / window;
    let held =
        acked as f64 >= 0.95 * offered as f64 && p99 <= Duration::from_secs(1) && failed == 0;
    Ok(json!({
        "nodes": nodes, "pods_per_second_per_node": rate, "seconds": secs,
        "offered_records_per_second": offered as f64 / window,
        "achieved_records_per_second": achieved,
        "megabytes_per_second": bytes as f64 / window / 1e6,
        "posts_per_second": posts as f64 / window,
        "records_per_post": acked as f64 / posts.max(1) as f64,
        "post_latency_ms": {"p50": ms(p50), "p99": ms(p99), "max": ms(max), "n": lat.len()},
        "failed_posts": failed,
        "collector_cpu_cores": cpu.cpu_collector / window,
        "collector_cpu_us_per_record": cpu.cpu_collector / acked.max(1) as f64 * 1e6,
        "generator_cpu_cores": cpu.cpu_generator / window,
        "machine_busy_cores": cpu.machine_busy,
        "machine_steal_cores": cpu.machine_steal,
        "kernel_allocation_stalls": cpu.alloc_stalls,
        "collector_rss_bytes": rss,
        "collector_records_total": metric(&m, "netready_collector_records_total"),
        "collector_duplicates_total": metric(&m, "netready_collector_duplicate_records_total"),
        "held": held,
    }))
}

/// Step 2: full batches back to back; the collector is left running for step 3.
async fn catch_up(
    records: Arc<Records>,
    conns: usize,
    max_records: u64,
    scratch: &Path,
) -> anyhow::Result<(serde_json::Value, Collector, u64)> {
    let dir = scratch.join("catch-up");
    let c = Collector::start(&dir).await?;
    let (addr, pid) = (c.addr, c.pid());
    let rss_empty = rss_bytes(pid);
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = TInstant::now();
    let end = start + Duration::from_secs(15);
    let cpu = tokio::spawn(cpu_window(pid, start, end));
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..conns {
        let (records, budget) = (records.clone(), budget.clone());
        tasks.spawn(async move {
            let mut s = connect(addr).await?;
            let mut lat = Vec::new();
            let (mut acked, mut bytes, mut seq) = (0u64, 0u64, 0u64);
            // One connection stands for many nodes: 256 of them, one record each a batch.
            while TInstant::now() < end
                && budget.fetch_add(256, std::sync::atomic::Ordering::Relaxed) < max_records
            {
                let mut body = Vec::with_capacity(256 * 3600);
                for n in 0..256 {
                    records.push(&mut body, "collect-bench-catch-up", conn * 256 + n, seq);
                }
                seq += 1;
                let len = body.len() as u64;
                let t = TInstant::now();
                anyhow::ensure!(post(&mut s, addr, body).await? == 204, "POST refused");
                lat.push(t.elapsed());
                acked += 256;
                bytes += len;
            }
            anyhow::Ok((lat, acked, bytes, TInstant::now()))
        });
    }
    let (mut lat, mut acked, mut bytes, mut last) = (Vec::new(), 0u64, 0u64, start);
    while let Some(r) = tasks.join_next().await {
        let (l, a, b, t) = r??;
        lat.extend(l);
        acked += a;
        bytes += b;
        last = last.max(t);
    }
    let took = (last - start).as_secs_f64();
    // The CPU window ends at `end`: wait for it, and count only the time load was on.
    let cpu = cpu.await?;
    lat.sort();
    let busy = took.min(15.0);
    Ok((
        json!({
            "connections": conns, "records_per_post": 256,
            "records": acked, "seconds": took,
            "records_per_second": acked as f64 / took,
            "megabytes_per_second": bytes as f64 / took / 1e6,
            "post_latency_ms": {"p50": ms(pct(&lat, 50.0)), "p99": ms(pct(&lat, 99.0)), "max": ms(*lat.last().unwrap())},
            "collector_cpu_cores": cpu.cpu_collector / busy,
            "collector_cpu_us_per_record": cpu.cpu_collector / acked as f64 * 1e6,
            "generator_cpu_cores": cpu.cpu_generator / busy,
            "collector_rss_bytes": rss_bytes(pid),
            "collector_rss_empty_bytes": rss_empty,
        }),
        c,
        rss_empty,
    ))
}

/// Step 3.
async fn restart(c: Collector, records: u64, rss_empty: u64) -> anyhow::Result<serde_json::Value> {
    let dir = c.kill();
    let bytes: u64 = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let t = Instant::now();
    let c = Collector::start(&dir).await?;
    let took = t.elapsed();
    let m = get(c.addr, "/v1/runs").await?;
    let rss = rss_bytes(c.pid());
    c.stop();
    std::fs::remove_dir_all(&dir)?;
    Ok(json!({
        "records": records, "file_bytes": bytes, "runs": serde_json::from_str::<serde_json::Value>(&m)?,
        "seconds_to_listen": took.as_secs_f64(),
        "records_indexed_per_second": records as f64 / took.as_secs_f64(),
        "rss_bytes": rss,
        "index_bytes_per_record": (rss.saturating_sub(rss_empty)) as f64 / records as f64,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let nodes: usize = env_or("NETREADY_BENCH_NODES", 5000);
    let secs: u64 = env_or("NETREADY_BENCH_SECONDS", 20);
    let rates: Vec<f64> = std::env::var("NETREADY_BENCH_RATES")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let records = Arc::new(Records::new());
    let scratch = tempfile::Builder::new()
        .prefix("nrbench-collect-")
        .tempdir()?;

    let mut steps = Vec::new();
    let record_len = records.len() as u64;
    for &rate in &rates {
        let need = (nodes as f64 * rate) as u64 * (secs + WARMUP.as_secs() + 2) * record_len;
        if !room_for(
            scratch.path(),
            need,
            &format!("the step at {rate} pods/s per node"),
        ) {
            break;
        }
        let s = steady(records.clone(), nodes, rate, secs, scratch.path()).await?;
        let held = s["held"].as_bool().unwrap_or(false);
        steps.push(s);
        if !held {
            break;
        }
    }
    let mut catch_up_records: u64 = env_or("NETREADY_BENCH_CATCHUP_RECORDS", 300_000);
    if !room_for(
        scratch.path(),
        catch_up_records * record_len,
        "a catch-up of that size",
    ) {
        catch_up_records = (free_bytes(scratch.path()) / 4 / record_len).min(catch_up_records);
        eprintln!("catch-up limited to {catch_up_records} records");
    }
    let (burst, c, rss_empty) =
        catch_up(records.clone(), 32, catch_up_records, scratch.path()).await?;
    let restarted = restart(c, burst["records"].as_u64().unwrap_or(0), rss_empty).await?;

    println!(
        "netready collect: {nodes} simulated nodes, open loop, record {} B (a real one), {secs} s per step",
        records.len()
    );
    println!(
        "{:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>5}",
        "pods/s/nd",
        "offered/s",
        "acked/s",
        "MB/s",
        "POSTs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu cores",
        "µs/record",
        "RSS MB",
        "held"
    );
    for s in &steps {
        println!(
            "{:>9} {:>9.0} {:>9.0} {:>7.1} {:>8.0} {:>8.2} {:>8.2} {:>9.1} {:>8.3} {:>9.1} {:>9.1} {:>5}",
            s["pods_per_second_per_node"],
            s["offered_records_per_second"].as_f64().unwrap(),
            s["achieved_records_per_second"].as_f64().unwrap(),
            s["megabytes_per_second"].as_f64().unwrap(),
            s["posts_per_second"].as_f64().unwrap(),
            s["post_latency_ms"]["p50"].as_f64().unwrap(),
            s["post_latency_ms"]["p99"].as_f64().unwrap(),
            s["post_latency_ms"]["max"].as_f64().unwrap(),
            s["collector_cpu_cores"].as_f64().unwrap(),
            s["collector_cpu_us_per_record"].as_f64().unwrap(),
            s["collector_rss_bytes"].as_f64().unwrap() / 1e6,
            if s["held"].as_bool().unwrap() { "yes" } else { "NO" },
        );
    }
    let per_step = |key: &str| {
        steps
            .iter()
            .map(|s| format!("{:.2}", s[key].as_f64().unwrap()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  per step, in cores: load generator {}; whole machine busy {} (steal {}) of {}; kernel allocation stalls {}",
        per_step("generator_cpu_cores"),
        per_step("machine_busy_cores"),
        per_step("machine_steal_cores"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        per_step("kernel_allocation_stalls"),
    );
    println!(
        "catch-up (32 connections, 256-record batches back to back): {:.0} records/s, {:.1} MB/s, POST p50 {:.1} ms p99 {:.1} ms, collector {:.2} cores ({:.1} µs/record), RSS {:.1} MB",
        burst["records_per_second"].as_f64().unwrap(),
        burst["megabytes_per_second"].as_f64().unwrap(),
        burst["post_latency_ms"]["p50"].as_f64().unwrap(),
        burst["post_latency_ms"]["p99"].as_f64().unwrap(),
        burst["collector_cpu_cores"].as_f64().unwrap(),
        burst["collector_cpu_us_per_record"].as_f64().unwrap(),
        burst["collector_rss_bytes"].as_f64().unwrap() / 1e6,
    );
    println!(
        "restart on {} records ({:.0} MB): listening after {:.2} s ({:.0} records/s indexed), RSS {:.1} MB, index ≈ {:.0} B/record",
        restarted["records"],
        restarted["file_bytes"].as_f64().unwrap() / 1e6,
        restarted["seconds_to_listen"].as_f64().unwrap(),
        restarted["records_indexed_per_second"].as_f64().unwrap(),
        restarted["rss_bytes"].as_f64().unwrap() / 1e6,
        restarted["index_bytes_per_record"].as_f64().unwrap(),
    );

    // What it means for the scale target.
    let at_one = steps
        .iter()
        .find(|s| s["pods_per_second_per_node"].as_f64() == Some(1.0));
    let best_held = steps
        .iter()
        .filter(|s| s["held"].as_bool() == Some(true))
        .map(|s| s["achieved_records_per_second"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let us_per_record = at_one
        .map(|s| s["collector_cpu_us_per_record"].as_f64().unwrap())
        .unwrap_or(f64::NAN);
    let cores_at_target = us_per_record * TARGET_NODES / 1e6;
    let ceiling = burst["records_per_second"].as_f64().unwrap();
    let record = records.len() as f64;
    let index = restarted["index_bytes_per_record"].as_f64().unwrap();
    let verdict = json!({
        "target_records_per_second": TARGET_NODES,
        "collector_cpu_us_per_record_at_target_shape": us_per_record,
        "cores_needed": cores_at_target,
        "headroom_per_core": 1.0 / cores_at_target,
        "highest_steady_rate_held": best_held,
        "headroom_steady": best_held / TARGET_NODES,
        "catch_up_ceiling": ceiling,
        "headroom_catch_up": ceiling / TARGET_NODES,
        "ingest_megabytes_per_second": TARGET_NODES * record / 1e6,
        "disk_gigabytes_per_hour": TARGET_NODES * record * 3600.0 / 1e9,
        "index_megabytes_per_hour": TARGET_NODES * 3600.0 * index / 1e6,
    });
    println!(
        "5,000 nodes at 1 pod/s = 5,000 records/s, {:.1} MB/s in:",
        TARGET_NODES * record / 1e6
    );
    println!(
        "  collector CPU at that shape: {:.1} µs/record → {:.2} cores needed ({:.1}× headroom on one core)",
        us_per_record,
        cores_at_target,
        1.0 / cores_at_target
    );
    println!(
        "  here, sharing 2 cores with the load generator: held {:.0} records/s steady ({:.1}×); catch-up ceiling {:.0} records/s ({:.1}×)",
        best_held,
        best_held / TARGET_NODES,
        ceiling,
        ceiling / TARGET_NODES
    );
    println!(
        "  disk {:.0} GB/hour; dedup index {:.0} MB/hour of run in RAM",
        TARGET_NODES * record * 3600.0 / 1e9,
        TARGET_NODES * 3600.0 * index / 1e6
    );
    let file = netready_testkit::bench::write(
        "collect",
        json!({
            "record_bytes": records.len(),
            "steady": steps,
            "catch_up": burst,
            "restart": restarted,
            "for_5000_nodes_at_1_pod_per_second": verdict,
        }),
    )?;
    println!("wrote {}", file.display());
    Ok(())
}
