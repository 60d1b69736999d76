//! Benchmark: netperf pod lifecycles via netready vs the same CNI work done directly.
//!
//! One run, one test node, arms interleaved round by round at the same concurrency:
//!
//! - **netready**: RunPodSandbox → StopPodSandbox → RemovePodSandbox over CRI to an in-process
//!   netready (netns, loopback, ADD of the conflist, DEL, netns removal, records on disk);
//! - **direct**: the same work without netready: netns create, loopback ADD, chain ADD, chain
//!   DEL, netns delete, on the same library calls a runtime would make;
//!
//! first with the real Debian plugins (bridge + host-local + portmap), then with the no-op
//! `nrtest-cni` plugin alone (loopback off) to show netready's own ceiling, with a pool of
//! namespaces made ahead, one lifecycle at a time (the overhead without other pods competing
//! for the cores), one at a time paced 20 ms apart (without the kernel's cleanup of the
//! last pod's namespace competing either), and one at a time through grpc-go, the gRPC library
//! kubelet calls its runtime with (`tests/interop/cri-go`). Prints pods/s,
//! p50/p99 of RunPodSandbox (netready) and of netns+ADD (direct), their ratio, netready's own
//! per-pod overhead (RunPodSandbox time minus the plugin chain's ADD time), its parts (the
//! request's way, netready before the ADD, netready after it, the response's way) and memory
//! per tracked pod; per row, the overhead's floor at that row's load (an empty RPC's round trip
//! while the direct arm runs the same plugins); below it all, an idle empty RPC and a bare
//! one-byte round trip between two threads, and an idle empty RPC through grpc-go; writes
//! `bench/results/netperf-<unix time>.json`.
//!
//! `cargo bench -p netready-testkit --bench netperf` as root. Sizes: NETREADY_BENCH_REAL
//! (pods per arm with real plugins, default 400), NETREADY_BENCH_NOOP (default 3000),
//! NETREADY_BENCH_CONCURRENCY (default 4), NETREADY_BENCH_HELD (pods held for the memory
//! measurement, default 2000), NETREADY_BENCH_STATE_DIR (parent of netready's state dir, default
//! the test node's directory).

// netready in-process (and the direct arm beside it) allocates as netready's binary does.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use netready_cni::{Attachment, Network, PluginExec};
use netready_cri::netperf::Loopback;
use netready_netns::Netns;
use netready_testkit::cri as client;
use netready_testkit::interop::LineClient;
use netready_testkit::node::{InProcess, TestNode};
use netready_testkit::pod::PodSpec;
use netready_testkit::stats::{ms, percentile as pct};
use prost::Message as _;
use serde_json::json;
use tonic::transport::Channel;

const FAULT_PLUGIN: &str = env!("CARGO_BIN_EXE_nrtest-cni");

/// netready's upstream here: none (`serve --no-upstream`). Netperf pods never reach it, and
/// the floor's empty RPC (Version) is then answered by netready alone; with a socket path that
/// does not exist, as before, each Version also paid a failed connect to it.
const NO_UPSTREAM: &str = "";

#[derive(Default)]
struct Arm {
    setup: Vec<Duration>,
    overhead: Vec<Duration>,
    /// The overhead's parts, from the pod's own stamps: the request reaching netready, netready
    /// before the first ADD attempt (reserve, record, netns), and from the ADD's end to the
    /// response reaching the client (records, readiness start, the response's way back); that
    /// last one split into netready's work and the response's way back; and netready's own
    /// path per pod (before the ADD and after it, without the RPC's two ways).
    parts: [Vec<Duration>; 6],
    wall: Duration,
    pods: usize,
    /// CPU of this process and the plugins it ran, over the arm's rounds.
    cpu_s: f64,
    /// This process's part of it by kind of thread (netready's runtime, the CRI client's,
    /// the netns pool...), seconds.
    by_thread: std::collections::BTreeMap<String, f64>,
}

/// p50 and p99 of sorted samples, in ms.
fn p50_p99(sorted: &[Duration]) -> serde_json::Value {
    if sorted.is_empty() {
        return json!(null);
    }
    json!({"p50": ms(pct(sorted, 50.0)), "p99": ms(pct(sorted, 99.0))})
}

/// "p50/p99" of a part, or "-" where the arm has none (grpc-go's request and response ways).
fn part_ms(p: &serde_json::Value) -> String {
    match (p["p50"].as_f64(), p["p99"].as_f64()) {
        (Some(a), Some(b)) => format!("{a:.3}/{b:.3}"),
        _ => "-".into(),
    }
}

/// One empty RPC (Version): its round trip.
async fn empty_rpc(rt: &mut RuntimeServiceClient<Channel>) -> Duration {
    let t = Instant::now();
    rt.version(cri::VersionRequest {
        version: "0.1.0".into(),
    })
    .await
    .expect("Version");
    t.elapsed()
}

impl Arm {
    fn rate(&self) -> f64 {
        self.pods as f64 / self.wall.as_secs_f64()
    }
    fn cpu_per_pod_ms(&self) -> f64 {
        self.cpu_s * 1e3 / self.pods.max(1) as f64
    }
    fn summary(&mut self) -> serde_json::Value {
        self.setup.sort();
        self.overhead.sort();
        for p in &mut self.parts {
            p.sort();
        }
        let part = |p: &Vec<Duration>| p50_p99(p);
        json!({
            "overhead_parts_ms": {"request": part(&self.parts[0]), "before_add": part(&self.parts[1]), "after_add": part(&self.parts[2]),
                "after_add_netready": part(&self.parts[3]), "response": part(&self.parts[4]), "netready_own": part(&self.parts[5])},
            "pods": self.pods, "pods_per_s": self.rate(), "cpu_per_lifecycle_ms": self.cpu_per_pod_ms(),
            "cpu_per_lifecycle_ms_by_thread": self.by_thread.iter()
                .map(|(k, v)| (k.clone(), json!(v * 1e3 / self.pods.max(1) as f64)))
                .collect::<serde_json::Map<_, _>>(),
            "setup_ms": {"p50": ms(pct(&self.setup, 50.0)), "p99": ms(pct(&self.setup, 99.0)), "max": ms(pct(&self.setup, 100.0))},
            "overhead_ms": p50_p99(&self.overhead),
        })
    }
}

/// Time from `a` to `b` (zero without `b`).
fn between(a: netready_cni::Stamp, b: Option<netready_cni::Stamp>) -> Duration {
    b.map(|b| Duration::from_nanos(b.mono_ns.saturating_sub(a.mono_ns)))
        .unwrap_or_default()
}

/// netready's own path in a pod's RunPodSandbox, from its stamps: before the first ADD attempt,
/// and from the ADD's end to its handler being done.
fn own_path(timing: &netready_cri::netperf::state::PodTiming) -> (Duration, Duration) {
    let after = timing
        .first_success
        .map(|s| between(s, timing.answered))
        .unwrap_or_default();
    (between(timing.first_request, timing.first_attempt), after)
}

/// CPU since `cpu` and `threads` were read, added to the arm.
fn add_cpu(arm: &mut Arm, cpu: f64, threads: &BTreeMap<String, (f64, f64)>) {
    arm.cpu_s += netready_testkit::bench::cpu_seconds_with_children() - cpu;
    for (name, (u, s)) in netready_testkit::bench::cpu_by_thread() {
        let (u0, s0) = threads.get(&name).copied().unwrap_or_default();
        *arm.by_thread.entry(name).or_default() += (u - u0) + (s - s0);
    }
}

/// netready arm: `n` sandbox lifecycles over CRI with `conc` workers.
async fn via_netready(
    nr: &InProcess,
    rt: &RuntimeServiceClient<Channel>,
    node: &TestNode,
    n: usize,
    conc: usize,
    gap: Duration,
    arm: &mut Arm,
) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let cpu = netready_testkit::bench::cpu_seconds_with_children();
    let threads = netready_testkit::bench::cpu_by_thread();
    let results = futures::future::join_all((0..conc).map(|_| {
        let mut rt = rt.clone();
        let next = next.clone();
        let runtime = nr.runtime().clone();
        let pods_dir = node.path("pods");
        async move {
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let mut pod = PodSpec::new("bench", &pods_dir, "");
                pod.labels.insert("netperf".into(), "true".into());
                let t = Instant::now();
                let sent = netready_cni::Stamp::now();
                let id = rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(pod.sandbox_config(0)),
                        runtime_handler: String::new(),
                    })
                    .await
                    .expect("RunPodSandbox")
                    .into_inner()
                    .pod_sandbox_id;
                let setup = t.elapsed();
                let answered = netready_cni::Stamp::now();
                let timing = runtime.pod_timing(&pod.uid).expect("the pod's timing");
                let add = timing.success_add.unwrap_or_default();
                let (before, after) = own_path(&timing);
                let parts = [
                    between(sent, Some(timing.first_request)),
                    before,
                    timing
                        .first_success
                        .map(|s| between(s, Some(answered)))
                        .unwrap_or_default(),
                    after,
                    timing
                        .answered
                        .map(|a| between(a, Some(answered)))
                        .unwrap_or_default(),
                    before + after,
                ];
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .expect("Stop");
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
                    .expect("Remove");
                out.push((setup, setup.saturating_sub(add), parts));
                tokio::time::sleep(gap).await;
            }
            out
        }
    }))
    .await;
    arm.wall += started.elapsed();
    add_cpu(arm, cpu, &threads);
    for (s, o, parts) in results.into_iter().flatten() {
        arm.setup.push(s);
        arm.overhead.push(o);
        for (all, p) in arm.parts.iter_mut().zip(parts) {
            all.push(p);
        }
        arm.pods += 1;
    }
}

/// netready arm through grpc-go, one lifecycle at a time on this thread (grpc-go's own process
/// makes the calls). The overhead is the call's time as grpc-go measured it minus the ADD's;
/// the request's and response's ways are not split (grpc-go's clock is not netready's), only
/// netready's own path is, from its stamps.
fn via_grpc_go(
    nr: &InProcess,
    go: &mut LineClient,
    node: &TestNode,
    n: usize,
    gap: Duration,
    arm: &mut Arm,
) {
    let mut call = |method: &str, req: Vec<u8>| {
        let r = go
            .call(&format!("/runtime.v1.RuntimeService/{method}"), &req)
            .expect(method);
        assert_eq!(r.code, tonic::Code::Ok, "{method}: {}", r.message);
        r
    };
    let started = Instant::now();
    let cpu = netready_testkit::bench::cpu_seconds_with_children();
    let threads = netready_testkit::bench::cpu_by_thread();
    for _ in 0..n {
        let mut pod = PodSpec::new("bench", &node.path("pods"), "");
        pod.labels.insert("netperf".into(), "true".into());
        let r = call(
            "RunPodSandbox",
            cri::RunPodSandboxRequest {
                config: Some(pod.sandbox_config(0)),
                runtime_handler: String::new(),
            }
            .encode_to_vec(),
        );
        let setup = r.elapsed.expect("grpc-go reports the call's time");
        let id = cri::RunPodSandboxResponse::decode(r.resp.as_slice())
            .expect("RunPodSandboxResponse")
            .pod_sandbox_id;
        let timing = nr.runtime().pod_timing(&pod.uid).expect("the pod's timing");
        let (before, after) = own_path(&timing);
        call(
            "StopPodSandbox",
            cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }
            .encode_to_vec(),
        );
        call(
            "RemovePodSandbox",
            cri::RemovePodSandboxRequest { pod_sandbox_id: id }.encode_to_vec(),
        );
        arm.setup.push(setup);
        arm.overhead
            .push(setup.saturating_sub(timing.success_add.unwrap_or_default()));
        arm.parts[1].push(before);
        arm.parts[3].push(after);
        arm.parts[5].push(before + after);
        arm.pods += 1;
        std::thread::sleep(gap);
    }
    arm.wall += started.elapsed();
    // grpc-go's own CPU is not in it: the client process is reaped only when the row ends.
    add_cpu(arm, cpu, &threads);
}

/// direct arm: the same CNI work without netready, on a runtime inside the node netns.
fn direct(
    node: &TestNode,
    net: Network,
    lo: Loopback,
    exec: Arc<PluginExec>,
    n: usize,
    conc: usize,
    gap: Duration,
) -> (Vec<Duration>, Duration) {
    let lo_plugin = (lo == Loopback::Plugin).then(|| Network::loopback(exec));
    let netns_dir = node.path("netns");
    node.netns()
        .spawn("bench-direct", move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let started = Instant::now();
                let res = futures::future::join_all((0..conc).map(|w| {
                    let (net, lo_plugin, next, dir) = (
                        net.clone(),
                        lo_plugin.clone(),
                        next.clone(),
                        netns_dir.clone(),
                    );
                    async move {
                        let mut out = Vec::new();
                        let mut i = 0;
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                            i += 1;
                            let id = format!("direct-{w}-{i}-{}", std::process::id());
                            let t = Instant::now();
                            let ns = Netns::create_with(
                                &dir,
                                &format!("cni-{id}"),
                                lo == Loopback::Netlink,
                            )
                            .unwrap();
                            let att = Attachment {
                                container_id: id.clone(),
                                netns: ns.path().display().to_string(),
                                ifname: "eth0".into(),
                                args: netready_cni::exec::k8s_args("default", "bench", &id, &id),
                                capability_args: BTreeMap::new(),
                            };
                            if let Some(lo) = &lo_plugin {
                                lo.add(&Attachment {
                                    ifname: "lo".into(),
                                    ..att.clone()
                                })
                                .await
                                .unwrap();
                            }
                            let added = net.add(&att).await.unwrap();
                            out.push(t.elapsed());
                            net.del(&att, Some(&added.raw)).await.unwrap();
                            ns.remove().unwrap();
                            tokio::time::sleep(gap).await;
                        }
                        out
                    }
                }))
                .await;
                (
                    res.into_iter().flatten().collect::<Vec<_>>(),
                    started.elapsed(),
                )
            })
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// `n` round trips of one byte to an echoing thread over a Unix socket pair, blocking calls.
fn bare_round_trips(n: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let (mut here, mut there) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while there.read_exact(&mut b).is_ok() && there.write_all(&b).is_ok() {}
    });
    let mut b = [0u8; 1];
    let rtts = (0..n)
        .map(|_| {
            let start = Instant::now();
            here.write_all(&b).expect("write");
            here.read_exact(&mut b).expect("read");
            start.elapsed()
        })
        .collect();
    drop(here);
    echo.join().expect("echo thread");
    rtts
}

/// The floor under the overhead at a row's load: empty RPCs (Version), one at a time on a
/// connection of their own to the idle netready, while one more round of the direct arm runs
/// the same plugins at the same concurrency. RunPodSandbox's overhead holds one RPC round trip
/// (its request and its response), so this is what any runtime's overhead pays on this machine
/// at this load. The round is not counted in the direct arm's rate: the RPCs, 2 ms apart, add
/// load of their own.
async fn floor_under_load(
    nr: &InProcess,
    node: &TestNode,
    net: Network,
    exec: Arc<PluginExec>,
    row: &Row,
) -> serde_json::Value {
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut rtts = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rtts.push(empty_rpc(&mut rt).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rtts
        }
    });
    // `direct` blocks this thread (not one of the runtime's workers) until its round is done.
    let _ = direct(node, net, row.loopback, exec, row.n / 4, row.conc, row.gap);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rtts = prober.await.unwrap();
    rtts.sort();
    let mut floor = p50_p99(&rtts);
    floor["rpcs"] = rtts.len().into();
    floor
}

/// One row of the table: a plugin chain, how netready and the direct arm bring `lo` up,
/// netready's pool of namespaces made ahead, lifecycles per arm, at what concurrency, and the
/// pause each worker makes after each lifecycle.
struct Row {
    label: &'static str,
    loopback: Loopback,
    pool: usize,
    n: usize,
    conc: usize,
    gap: Duration,
    client: Client,
}

/// The CRI client of netready's arm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// tonic, in this process: the request's and the response's ways are split.
    Tonic,
    /// Debian's grpc-go, dialing as kubelet v1.28 does (`tests/interop/cri-go`), one call at a
    /// time: the call's time as kubelet's gRPC library sees it.
    GrpcGo,
}

async fn run_config(node: &TestNode, conflist: serde_json::Value, row: Row) -> serde_json::Value {
    let Row {
        label,
        loopback,
        pool,
        n,
        conc,
        gap,
        client: which,
    } = row;
    assert!(
        which == Client::Tonic || conc == 1,
        "grpc-go's arm makes one call at a time"
    );
    node.write_conflist(&conflist).unwrap();
    let mut cfg = node.netperf_config(Some(Path::new(FAULT_PLUGIN).parent().unwrap()));
    cfg.cni.loopback = loopback;
    cfg.netns_pool = pool;
    // NETREADY_BENCH_STATE_DIR: netready's state under another directory (/dev/shm: what the
    // state writes cost on the test node's own file system shows as the difference).
    let state_parent = std::env::var_os("NETREADY_BENCH_STATE_DIR").map(std::path::PathBuf::from);
    let _state = match &state_parent {
        Some(parent) => {
            let dir = tempfile::Builder::new()
                .prefix("nrbench-state-")
                .tempdir_in(parent)
                .unwrap();
            cfg.state_dir = dir.path().to_owned();
            Some(dir)
        }
        None => None,
    };
    let nr = InProcess::start(node, cfg.clone(), Path::new(NO_UPSTREAM)).unwrap();
    let (rt, _) = client::connect(nr.socket()).await.unwrap();
    let exec = Arc::new(PluginExec {
        paths: cfg.cni.bin_dirs.clone(),
        timeout: Duration::from_secs(60),
    });
    let net = Network::new(
        netready_cni::conflist::load_dir(&cfg.cni.conf_dir).unwrap(),
        exec.clone() as Arc<dyn netready_cni::Exec>,
    );
    let mut go = match which {
        Client::Tonic => None,
        Client::GrpcGo => Some(LineClient::go(nr.socket()).expect("the grpc-go client")),
    };
    let mut arm = async |n: usize, arm: &mut Arm| match go.as_mut() {
        None => via_netready(&nr, &rt, node, n, conc, gap, arm).await,
        Some(go) => via_grpc_go(&nr, go, node, n, gap, arm),
    };
    // Warm up both arms, then interleave four rounds so drift hits both alike.
    arm(conc * 2, &mut Arm::default()).await;
    let _ = direct(
        node,
        net.clone(),
        loopback,
        exec.clone(),
        conc * 2,
        conc,
        gap,
    );
    let (mut a, mut d) = (Arm::default(), Arm::default());
    for _ in 0..4 {
        arm(n / 4, &mut a).await;
        let cpu = netready_testkit::bench::cpu_seconds_with_children();
        let (setup, wall) = direct(node, net.clone(), loopback, exec.clone(), n / 4, conc, gap);
        d.cpu_s += netready_testkit::bench::cpu_seconds_with_children() - cpu;
        d.pods += setup.len();
        d.setup.extend(setup);
        d.wall += wall;
    }
    let floor = floor_under_load(&nr, node, net, exec, &row).await;
    let ratio = a.rate() / d.rate();
    let (sa, sd) = (a.summary(), d.summary());
    println!(
        "{label:<24} netready {:>7.1} pods/s  direct {:>7.1} pods/s  ratio {:.3}  RunPodSandbox p50 {:>6.2} ms p99 {:>6.2} ms | direct netns+ADD p50 {:>6.2} ms p99 {:>6.2} ms | netready overhead p50 {:.3} ms p99 {:.3} ms | CPU per lifecycle netready {:.2} ms direct {:.2} ms",
        a.rate(), d.rate(), ratio,
        sa["setup_ms"]["p50"].as_f64().unwrap(), sa["setup_ms"]["p99"].as_f64().unwrap(),
        sd["setup_ms"]["p50"].as_f64().unwrap(), sd["setup_ms"]["p99"].as_f64().unwrap(),
        sa["overhead_ms"]["p50"].as_f64().unwrap(), sa["overhead_ms"]["p99"].as_f64().unwrap(),
        a.cpu_per_pod_ms(), d.cpu_per_pod_ms(),
    );
    let split: Vec<String> = a
        .by_thread
        .iter()
        .filter(|(_, s)| **s > 0.0)
        .map(|(name, s)| format!("{name} {:.2}", s * 1e3 / a.pods.max(1) as f64))
        .collect();
    println!(
        "{:<24} netready arm's CPU ms per lifecycle by thread (the rest: plugin processes): {}",
        "",
        split.join(", ")
    );
    let parts = &sa["overhead_parts_ms"];
    println!(
        "{:<24} overhead parts p50/p99 ms: request {}  before ADD (record, netns) {}  after ADD (records, response) {}",
        "",
        part_ms(&parts["request"]),
        part_ms(&parts["before_add"]),
        part_ms(&parts["after_add"]),
    );
    println!(
        "{:<24} after ADD: netready {}, the response's way back {}; netready's own path (before ADD + after ADD, no RPC) {}",
        "",
        part_ms(&parts["after_add_netready"]),
        part_ms(&parts["response"]),
        part_ms(&parts["netready_own"]),
    );
    println!(
        "{:<24} empty RPC round trip while the direct arm's plugins run (the overhead's floor at this load): p50 {:.3} ms p99 {:.3} ms ({} RPCs)",
        "",
        floor["p50"].as_f64().unwrap_or_default(),
        floor["p99"].as_f64().unwrap_or_default(),
        floor["rpcs"],
    );
    // Stopped, netready removes its spare namespaces too.
    drop(nr);
    let left = node.settled_leftovers();
    assert!(
        left.netns.is_empty() && left.reservations.is_empty() && left.veths.is_empty(),
        "{left:?}"
    );
    json!({"plugins": label, "netns_pool": pool, "concurrency": conc, "gap_ms": ms(gap), "netready": sa, "direct": sd, "ratio": ratio,
           "empty_rpc_under_direct_load_ms": floor,
           "state_dir_parent": state_parent.map(|p| p.display().to_string())})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let real_n = netready_testkit::bench::env_or("NETREADY_BENCH_REAL", 400);
    let noop_n = netready_testkit::bench::env_or("NETREADY_BENCH_NOOP", 3000);
    let conc = netready_testkit::bench::env_or("NETREADY_BENCH_CONCURRENCY", 4);
    let held = netready_testkit::bench::env_or("NETREADY_BENCH_HELD", 2000);
    let node = TestNode::new()?;
    let real = node.bridge_conflist("10.80.0.0/12", vec![]);
    let noop = json!({"cniVersion": "1.0.0", "name": "noop", "plugins": [{"type": "nrtest-cni"}]});
    println!("netperf pod lifecycles, netready vs direct CNI, concurrency {conc}");
    // Both arms bring `lo` up the same way: netready's default (netlink) with real plugins,
    // not at all with the no-op plugin (the bare syscall loop).
    let real_row = run_config(
        &node,
        real,
        Row {
            label: "real plugins",
            loopback: Loopback::Netlink,
            pool: 0,
            n: real_n,
            conc,
            gap: Duration::ZERO,
            client: Client::Tonic,
        },
    )
    .await;
    let noop_row = run_config(
        &node,
        noop.clone(),
        Row {
            label: "no-op plugin",
            loopback: Loopback::Off,
            pool: 0,
            n: noop_n,
            conc,
            gap: Duration::ZERO,
            client: Client::Tonic,
        },
    )
    .await;
    // The same with namespaces made ahead (`netperf.netns_pool`): their creation leaves the
    // timed path, not the CPU (CPU per lifecycle shows where it went).
    let pool_row = run_config(
        &node,
        noop.clone(),
        Row {
            label: "no-op plugin, netns pool 8",
            loopback: Loopback::Off,
            pool: 8,
            n: noop_n,
            conc,
            gap: Duration::ZERO,
            client: Client::Tonic,
        },
    )
    .await;

    // One lifecycle at a time: the overhead is netready's own path, with no other pod's plugin
    // exec waiting for the same two cores (at concurrency 4 the overhead's tail includes
    // waiting for a core, which a faster netready cannot remove).
    let alone_row = run_config(
        &node,
        noop.clone(),
        Row {
            label: "no-op plugin, one at a time",
            loopback: Loopback::Off,
            pool: 0,
            n: noop_n / 2,
            conc: 1,
            gap: Duration::ZERO,
            client: Client::Tonic,
        },
    )
    .await;
    // And with namespaces made ahead: what is left is netready's own path, the kernel's
    // namespace setup done by the pool's thread between lifecycles (the "before ADD" part of
    // the row above, less what this row keeps of it, is that setup's share).
    let alone_pool_row = run_config(
        &node,
        noop.clone(),
        Row {
            label: "no-op plugin, one at a time, netns pool 8",
            loopback: Loopback::Off,
            pool: 8,
            n: noop_n / 2,
            conc: 1,
            gap: Duration::ZERO,
            client: Client::Tonic,
        },
    )
    .await;
    // And paced, 20 ms after each lifecycle before the next (about 40 pods/s, a node's knee in
    // `local_capacity`): back to back, each lifecycle meets the kernel's asynchronous cleanup
    // of the namespace before it, and the row's floor shows what that costs any RPC. Its pods/s
    // are the pacing's.
    let paced_row = run_config(
        &node,
        noop.clone(),
        Row {
            label: "no-op plugin, one at a time, netns pool 8, paced 20 ms",
            loopback: Loopback::Off,
            pool: 8,
            n: noop_n / 6,
            conc: 1,
            gap: Duration::from_millis(20),
            client: Client::Tonic,
        },
    )
    .await;
    // One at a time with the pool again, through the client kubelet uses: the RPC's two ways
    // are the client's as much as the server's, and tonic's are not grpc-go's.
    let go_row = run_config(
        &node,
        noop.clone(),
        Row {
            label: "no-op plugin, one at a time, netns pool 8, grpc-go client",
            loopback: Loopback::Off,
            pool: 8,
            n: noop_n / 2,
            conc: 1,
            gap: Duration::ZERO,
            client: Client::GrpcGo,
        },
    )
    .await;

    // Memory per tracked pod: hold `held` no-op pods and compare RSS.
    node.write_conflist(&noop)?;
    let mut cfg = node.netperf_config(Some(Path::new(FAULT_PLUGIN).parent().unwrap()));
    cfg.cni.loopback = Loopback::Off;
    let nr = InProcess::start(&node, cfg, Path::new(NO_UPSTREAM))?;
    let (mut rt, _) = client::connect(nr.socket()).await?;
    // The floor under the overhead's request and response parts: an RPC with no work behind
    // it (Version), one at a time, through the same client, server and runtimes.
    let mut floor = Vec::new();
    for _ in 0..noop_n / 2 {
        floor.push(empty_rpc(&mut rt).await);
    }
    floor.sort();
    let floor_ms = p50_p99(&floor);
    println!(
        "empty RPC (Version) round trip, one at a time: p50 {:.3} ms p99 {:.3} ms (in both the request and the response part of the overhead)",
        floor_ms["p50"].as_f64().unwrap_or_default(),
        floor_ms["p99"].as_f64().unwrap_or_default()
    );
    // The same through grpc-go, as kubelet would make it (its own clock: no pipe in it).
    let mut go = LineClient::go(nr.socket())?;
    let version = cri::VersionRequest {
        version: "0.1.0".into(),
    }
    .encode_to_vec();
    let mut go_floor = Vec::new();
    for _ in 0..noop_n / 2 {
        let r = go.call("/runtime.v1.RuntimeService/Version", &version)?;
        anyhow::ensure!(r.code == tonic::Code::Ok, "Version: {}", r.message);
        go_floor.push(r.elapsed.context("grpc-go reports the call's time")?);
    }
    drop(go);
    go_floor.sort();
    let go_floor_ms = p50_p99(&go_floor);
    println!(
        "empty RPC (Version) through grpc-go, one at a time: p50 {:.3} ms p99 {:.3} ms",
        go_floor_ms["p50"].as_f64().unwrap_or_default(),
        go_floor_ms["p99"].as_f64().unwrap_or_default()
    );
    // Below that: one byte there and back between two threads over a Unix socket pair, no
    // gRPC, no tokio. What this machine's scheduler alone adds to any round trip's tail.
    let mut bare = bare_round_trips(noop_n / 2);
    bare.sort();
    let bare_ms = p50_p99(&bare);
    println!(
        "bare round trip (1 byte over a Unix socket pair between two threads), one at a time: p50 {:.3} ms p99 {:.3} ms",
        bare_ms["p50"].as_f64().unwrap_or_default(),
        bare_ms["p99"].as_f64().unwrap_or_default()
    );
    let before = rss_bytes();
    let mut ids = Vec::new();
    for _ in 0..held {
        let mut pod = PodSpec::new("held", &node.path("pods"), "");
        pod.labels.insert("netperf".into(), "true".into());
        ids.push(
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.sandbox_config(0)),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id,
        );
    }
    let per_pod = rss_bytes().saturating_sub(before) as f64 / held as f64;
    for id in ids {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    drop(nr);
    println!("memory per tracked pod: {:.1} KiB (RSS delta over {held} pods, client included; goal <= 16 KiB)", per_pod / 1024.0);
    let goals = json!({
        "ratio_real_ge_0_95": real_row["ratio"].as_f64().unwrap_or(0.0) >= 0.95,
        "ratio_noop_ge_0_8": noop_row["ratio"].as_f64().unwrap_or(0.0) >= 0.8,
        "overhead_p99_le_1ms": noop_row["netready"]["overhead_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= 1.0,
        "overhead_p99_le_1ms_with_pool": pool_row["netready"]["overhead_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= 1.0,
        "overhead_p99_le_1ms_one_at_a_time": alone_row["netready"]["overhead_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= 1.0,
        "overhead_p99_le_1ms_one_at_a_time_with_pool": alone_pool_row["netready"]["overhead_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= 1.0,
        "overhead_p99_le_1ms_paced": paced_row["netready"]["overhead_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= 1.0,
        "overhead_p99_le_1ms_grpc_go": go_row["netready"]["overhead_ms"]["p99"].as_f64().unwrap_or(f64::MAX) <= 1.0,
        "memory_le_16kib": per_pod <= 16.0 * 1024.0,
    });
    println!("goals: {goals}");
    let out = json!({
        "params": {"real": real_n, "noop": noop_n, "concurrency": conc, "held": held, "order": "4 interleaved rounds after warm-up"},
        "rows": [real_row, noop_row, pool_row, alone_row, alone_pool_row, paced_row, go_row], "memory_per_pod_bytes": per_pod, "empty_rpc_ms": floor_ms, "empty_rpc_grpc_go_ms": go_floor_ms, "bare_round_trip_ms": bare_ms, "goals": goals,
    });
    let file = netready_testkit::bench::write("netperf", out)?;
    println!("results: {}", file.display());
    Ok(())
}
