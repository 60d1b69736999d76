//! Benchmark: time from the end of a pod's successful CNI ADD to network ready, when every
//! target answers at once, for many pods checking concurrently.
//!
//! Two routed test nodes (real bridge + host-local), control pods on both, a VIP, an external
//! host; all six checks required (3 HTTP GETs to the service). NETREADY_BENCH_PODS pods
//! (default 200) are created at once through CRI on node A; for each, `network_ready − ADD end`,
//! netready's own lag (ADD end to the last required check's first probe) and every check's
//! time are read from netready's records. Then the same checks alone, every pod's at once after
//! the ADDs (NETREADY_BENCH_CHECK_ROUNDS rounds, default 1), with the CPU time per probe sent:
//! this process's, by thread, and netready's alone (without the responders' threads). Prints p50/p90/p99/max and writes
//! `bench/results/readiness-<unix time>.json`. `cargo bench -p netready-testkit --bench
//! readiness` as root.

// netready in-process allocates as its binary does (jemalloc): glibc's malloc alone was a
// tenth of the probing threads' CPU.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Duration;

use k8s_cri::v1 as cri;
use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::PodSpec;
use netready_testkit::stats::{ms, percentile};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    ms(percentile(sorted, p))
}
use netready_testkit::topology::TwoNodes;
use serde_json::json;

fn summary(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    json!({"n": v.len(), "p50_ms": pct(&v, 50.0), "p90_ms": pct(&v, 90.0), "p99_ms": pct(&v, 99.0), "max_ms": pct(&v, 100.0)})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = netready_testkit::bench::env_or("NETREADY_BENCH_PODS", 200);
    // The control pods' and the external host's servers answer on threads of their own
    // (`responder`), so that the CPU split below tells netready's work from theirs.
    let responders = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("responder")
        .enable_all()
        .build()?;
    let t = responders
        .spawn(TwoNodes::start(Some(Duration::ZERO)))
        .await??;
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required = [
        "same_node_pod",
        "other_node_pods",
        "service_ping",
        "service_http",
        "external_ping",
        "external_http",
    ]
    .map(String::from)
    .to_vec();
    cfg.checks.optional.clear();
    cfg.checks.retry_interval = Duration::from_millis(20);
    cfg.checks.deadline = Duration::from_secs(60);
    cfg.targets.node_name = Some("node-a".into());
    cfg.targets.file = Some(t.targets_file(&t.a.path(""), &[])?);
    let nr_cfg = cfg.clone();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock"))?;
    let (rt, _) = client::connect(nr.socket()).await?;
    let pods: Vec<PodSpec> = (0..n)
        .map(|i| {
            let mut p = PodSpec::new(&format!("r{i}"), &t.a.path("pods"), "");
            p.labels.insert("netperf".into(), "true".into());
            p
        })
        .collect();
    let host = netready_record::host_load::Sample::now();
    let ids: Vec<String> = futures::future::join_all(pods.iter().map(|p| {
        let mut rt = rt.clone();
        async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p.sandbox_config(0)),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }
    }))
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let mut ready = Vec::new();
    let mut lag = Vec::new();
    let mut per_check: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    let mut not_ready = 0;
    for id in &ids {
        let rec = loop {
            let rec = nr.runtime().sandbox(id).expect("sandbox");
            if rec.readiness.as_ref().is_some_and(|r| r.finished.is_some()) {
                break rec;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let r = rec.readiness.unwrap();
        match r.ready_at {
            Some(at) => ready.push(at.since(&r.origin)),
            None => not_ready += 1,
        }
        lag.extend(
            r.checks
                .iter()
                .filter(|c| c.required)
                .filter_map(|c| c.first_probe_after)
                .max(),
        );
        for c in &r.checks {
            if let Some(d) = c.passed_after {
                per_check
                    .entry(c.check.as_str().to_owned())
                    .or_default()
                    .push(d);
            }
        }
    }
    let (mut rt2, _) = client::connect(nr.socket()).await?;
    for id in &ids {
        rt2.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt2.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
    }
    let storm_drops = host.until_now().backlog_drops;
    let overall = summary(ready);
    println!(
        "{n} pods checking concurrently on {} cores, all six checks required",
        std::thread::available_parallelism()?.get()
    );
    println!(
        "ADD storm, ADD end -> network ready: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (not ready: {not_ready}; goal p99 <= 100 ms)",
        overall["p50_ms"].as_f64().unwrap_or(f64::NAN), overall["p90_ms"].as_f64().unwrap_or(f64::NAN),
        overall["p99_ms"].as_f64().unwrap_or(f64::NAN), overall["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let backlog = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!(
        "  host: {storm_drops} packets dropped at full input backlogs during the storm (net.core.netdev_max_backlog {backlog})"
    );
    let lag = summary(lag);
    println!(
        "  netready's lag, ADD end -> last required check's first probe: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lag["p50_ms"].as_f64().unwrap_or(f64::NAN),
        lag["p99_ms"].as_f64().unwrap_or(f64::NAN),
        lag["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let mut checks = serde_json::Map::new();
    for (k, v) in per_check {
        let s = summary(v);
        println!(
            "  {k:<16} p50 {:>7.2} ms  p99 {:>7.2} ms",
            s["p50_ms"].as_f64().unwrap(),
            s["p99_ms"].as_f64().unwrap()
        );
        checks.insert(k, s);
    }

    // Checks only: the same number of pods, ADDed first with checks off, then every pod's
    // plan run at once from one origin, on the same code path netready uses.
    let (mut rt3, _) = client::connect(nr.socket()).await?;
    let mut quiet = Vec::new();
    for i in 0..n {
        let mut p = PodSpec::new(&format!("q{i}"), &t.a.path("pods"), "");
        p.labels.insert("netperf".into(), "true".into());
        p.annotations
            .insert("netready.io/checks-required".into(), String::new());
        p.annotations
            .insert("netready.io/checks-optional".into(), String::new());
        quiet.push(
            rt3.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p.sandbox_config(0)),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id,
        );
    }
    let plan = netready_cri::netperf::checks::plan_for(&nr_cfg.checks, &Default::default())
        .map_err(anyhow::Error::msg)?;
    let file =
        netready_cri::netperf::checks::read_targets_file(nr_cfg.targets.file.as_ref().unwrap())
            .map_err(anyhow::Error::msg)?;
    let targets = netready_cri::netperf::checks::resolve(
        &nr_cfg.targets,
        "node-a",
        netready_cri::netperf::checks::Sources {
            file: &file,
            learned: &Default::default(),
            discovered: None,
            service: "",
        },
    );
    let netns: Vec<_> = quiet
        .iter()
        .map(|id| nr.runtime().sandbox(id).unwrap().netns)
        .collect();
    let host = netready_record::host_load::Sample::now();
    // Rounds of every pod checking at once, each pod's plan a task of its own as netready
    // runs it: more rounds, more probes to divide the CPU time by.
    let rounds: usize = netready_testkit::bench::env_or("NETREADY_BENCH_CHECK_ROUNDS", 1);
    eprintln!("checks only: {rounds} rounds of {n} pods");
    let plan = std::sync::Arc::new(plan);
    let targets = std::sync::Arc::new(targets);
    let cpu_before = netready_testkit::bench::cpu_seconds();
    let threads_before = netready_testkit::bench::cpu_by_thread();
    let mut outcomes = Vec::new();
    for _ in 0..rounds.max(1) {
        let origin = std::time::Instant::now();
        let tasks: Vec<_> = netns
            .iter()
            .map(|ns| {
                let (ns, plan, targets) = (ns.clone(), plan.clone(), targets.clone());
                tokio::spawn(async move {
                    netready_probe::plan::run(&ns, &plan, &targets, origin).await
                })
            })
            .collect();
        for t in tasks {
            outcomes.push(t.await?);
        }
    }
    let cpu = netready_testkit::bench::cpu_seconds() - cpu_before;
    let threads_after = netready_testkit::bench::cpu_by_thread();
    let checks_drops = host.until_now().backlog_drops;
    let probes: u32 = outcomes.iter().flatten().map(|c| c.probes).sum();
    // The same exchanges, bare: what the datapath and the answers cost per probe without
    // netready, on the same pods (round after round, as above).
    let pings: Vec<std::net::Ipv4Addr> = targets
        .same_node
        .iter()
        .take(1)
        .chain(
            targets
                .other_nodes
                .iter()
                .flat_map(|(_, ips)| ips.iter().take(1)),
        )
        .chain(targets.service.iter().map(|s| &s.ip))
        .chain(targets.external.iter().map(|s| &s.ip))
        .filter_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(*v4),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let gets: Vec<(std::net::SocketAddr, String, String)> = targets
        .service
        .iter()
        .flat_map(|s| std::iter::repeat_n(s, plan.http_count as usize))
        .chain(targets.external.iter())
        .map(|s| {
            let host = s.host.clone().unwrap_or_else(|| s.ip.to_string());
            (
                std::net::SocketAddr::new(s.ip, s.port),
                host,
                s.path.clone(),
            )
        })
        .collect();
    let (mut bare_answered, mut bare_cpu) = (0u32, 0.0);
    for _ in 0..rounds.max(1) {
        let (a, c) = bare_exchanges(&netns, &pings, &gets);
        bare_answered += a;
        bare_cpu += c;
    }
    let bare_per_probe_us = bare_cpu * 1e6 / f64::from(bare_answered.max(1));
    let cpu_per_probe_us = cpu * 1e6 / f64::from(probes.max(1));
    // Where it went, per probe: user and system time of each kind of thread.
    let per_probe = |s: f64| s * 1e6 / f64::from(probes.max(1));
    let by_thread: serde_json::Map<String, serde_json::Value> = threads_after
        .iter()
        .map(|(name, (u, s))| {
            let (u0, s0) = threads_before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                json!({"user_us": per_probe(u - u0), "system_us": per_probe(s - s0)}),
            )
        })
        .filter(|(_, v)| {
            v["user_us"].as_f64().unwrap_or(0.0) + v["system_us"].as_f64().unwrap_or(0.0) > 0.0
        })
        .collect();
    let checks_only: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.iter().all(|c| c.passed()))
        .map(|o| {
            o.iter()
                .filter_map(|c| c.passed_after)
                .max()
                .unwrap_or_default()
        })
        .collect();
    for id in &quiet {
        rt3.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt3.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
    }
    let only = summary(checks_only);
    println!(
        "checks only ({n} pods at once, ADDs done before): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        only["p50_ms"].as_f64().unwrap_or(f64::NAN), only["p90_ms"].as_f64().unwrap_or(f64::NAN),
        only["p99_ms"].as_f64().unwrap_or(f64::NAN), only["max_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!("  host: {checks_drops} packets dropped at full input backlogs during the checks");
    for (name, v) in &by_thread {
        println!(
            "    {name:<24} user {:>6.1} us  system {:>6.1} us per probe",
            v["user_us"].as_f64().unwrap_or(0.0),
            v["system_us"].as_f64().unwrap_or(0.0)
        );
    }
    let responders_us: f64 = by_thread
        .iter()
        .filter(|(name, _)| name.starts_with("responder"))
        .map(|(_, v)| v["user_us"].as_f64().unwrap_or(0.0) + v["system_us"].as_f64().unwrap_or(0.0))
        .sum();
    // The answers' side is the targets' cost, not the instrument's: what is left is netready's
    // threads, with the kernel's work for the probes it sends (and for the answers that the
    // kernel delivers on its time).
    let netready_per_probe_us = cpu_per_probe_us - responders_us;
    println!(
        "  CPU per probe: {cpu_per_probe_us:.1} us in all ({probes} probes, {cpu:.3} CPU-s of this process), \
         {responders_us:.1} us of it the responders' threads: netready's {netready_per_probe_us:.1} us \
         (goal <= 50 us)"
    );
    println!(
        "  the same exchanges with bare blocking syscalls on one thread: {bare_per_probe_us:.1} us per probe \
         ({bare_answered} answered); netready beyond them: {:.1} us per probe",
        netready_per_probe_us - bare_per_probe_us
    );

    let out = json!({
        "params": {"pods": n, "checks": "all six required, http_count 3", "retry_interval_ms": 20},
        "add_end_to_network_ready": overall, "checks": checks, "not_ready": not_ready,
        "lag_add_end_to_checks_started": lag,
        "checks_only_after_adds": only, "check_rounds": rounds,
        "cpu_per_probe_us": cpu_per_probe_us, "responders_cpu_per_probe_us": responders_us,
        "netready_cpu_per_probe_us": netready_per_probe_us,
        "bare_exchanges": {"answered": bare_answered, "cpu_per_probe_us": bare_per_probe_us},
        "netready_beyond_bare_per_probe_us": netready_per_probe_us - bare_per_probe_us, "probes": probes, "cpu_per_probe_by_thread": by_thread,
        "backlog_drops": {"storm": storm_drops, "checks_only": checks_drops, "netdev_max_backlog": backlog},
        "goals": {"add_end_to_ready_p99_le_100ms": overall["p99_ms"].as_f64().unwrap_or(f64::MAX) <= 100.0,
                  "netready_cpu_per_probe_le_50us": netready_per_probe_us <= 50.0},
    });
    let file = netready_testkit::bench::write("readiness", out)?;
    println!("results: {}", file.display());
    drop(nr);
    drop(t);
    responders.shutdown_background();
    Ok(())
}

/// The same exchanges as the checks, with nothing but blocking syscalls on one thread: for each
/// pod's netns in turn (entered with one setns), one ICMP echo to each ping target over a raw
/// socket, one `GET` to each HTTP target over a new TCP connection (closed with a reset, as
/// netready closes). Returns the exchanges that got their answer and the thread's CPU seconds:
/// what the kernel's datapath and the answers cost without any instrument around them.
fn bare_exchanges(
    netns: &[std::path::PathBuf],
    pings: &[std::net::Ipv4Addr],
    gets: &[(std::net::SocketAddr, String, String)],
) -> (u32, f64) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::{Read, Write};
    let thread_cpu = || {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
            .expect("getrusage");
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    };
    let (netns, pings, gets) = (netns.to_vec(), pings.to_vec(), gets.to_vec());
    std::thread::spawn(move || {
        let before = thread_cpu();
        let mut answered = 0u32;
        for (i, ns) in netns.iter().enumerate() {
            let f = std::fs::File::open(ns).expect("pod netns");
            #[allow(clippy::disallowed_methods)]
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let icmp = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
            icmp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            for (seq, ip) in pings.iter().enumerate() {
                // Echo request: type 8, code 0, checksum, id, seq, 32 bytes of payload.
                let mut pkt = [0u8; 40];
                pkt[0] = 8;
                pkt[4..6].copy_from_slice(&(i as u16).to_be_bytes());
                pkt[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
                let mut sum: u32 = pkt
                    .chunks(2)
                    .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                    .sum();
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                let to = SockAddr::from(std::net::SocketAddr::new((*ip).into(), 0));
                icmp.send_to(&pkt, &to).unwrap();
                let mut b = [0u8; 128];
                // The reply (IP header, then type 0 with our id and seq).
                while let Ok(n) = (&icmp).read(&mut b) {
                    let b = &b[..n];
                    let ihl = usize::from(b[0] & 0x0f) * 4;
                    if b.len() >= ihl + 8
                        && b[ihl] == 0
                        && b[ihl + 4..ihl + 6] == (i as u16).to_be_bytes()
                        && b[ihl + 6..ihl + 8] == (seq as u16).to_be_bytes()
                    {
                        answered += 1;
                        break;
                    }
                }
            }
            for (addr, host, path) in &gets {
                let Ok(mut c) = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(1))
                else {
                    continue;
                };
                socket2::SockRef::from(&c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                let mut resp = Vec::new();
                if c.write_all(req.as_bytes()).is_ok()
                    && c.read_to_end(&mut resp).is_ok()
                    && resp.starts_with(b"HTTP/1.1 200")
                {
                    answered += 1;
                }
            }
        }
        (answered, thread_cpu() - before)
    })
    .join()
    .expect("the bare thread")
}
