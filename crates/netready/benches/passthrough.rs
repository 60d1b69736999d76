//! Benchmark: what netready adds to CRI calls that go through to containerd.
//!
//! One run, side by side against one real containerd: a cheap RPC (`Version`,
//! `ListPodSandbox`) and a full kubelet-like pod lifecycle, each sent directly to containerd and
//! through `netready serve`, interleaved call by call so machine noise hits both arms alike.
//! Prints p50/p99 of both and the added microseconds, and writes
//! `bench/results/passthrough-<unix time>.json`.
//!
//! `cargo bench -p netready --bench passthrough` (as root). Sizes: NETREADY_BENCH_CALLS
//! (default 20000 per RPC and arm: a p99 of 5,000 calls rests on 50 samples and moved by
//! ±100 µs between runs on one machine), NETREADY_BENCH_PODS (default 20 per arm).

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use netready_testkit::netready::Netready;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::stats::percentile as pct;
use netready_testkit::{cri as client, Containerd};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

#[derive(Debug)]
struct Arm {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn summarize(mut v: Vec<Duration>) -> Arm {
    v.sort();
    Arm {
        p50: pct(&v, 50.0),
        p99: pct(&v, 99.0),
        max: *v.last().unwrap(),
        n: v.len(),
    }
}

struct Row {
    name: &'static str,
    direct: Arm,
    via: Arm,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; a filter argument is accepted and ignored.
    let calls = netready_testkit::bench::env_or("NETREADY_BENCH_CALLS", 20000);
    let pods = netready_testkit::bench::env_or("NETREADY_BENCH_PODS", 20);
    let ctd = Containerd::start().await?;
    let nr = Netready::start(
        Path::new(BIN),
        &ctd.scratch("nr"),
        &ctd.socket(),
        &["--log-level", "warn"],
    )
    .await?;
    let (mut d_rt, mut d_img) = client::connect(&ctd.socket()).await?;
    let (mut v_rt, mut v_img) = client::connect(nr.socket()).await?;
    let mut rows = Vec::new();

    macro_rules! cheap {
        ($name:literal, $call:ident, $req:expr) => {{
            let (mut d, mut v) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
            for i in 0..(calls + calls / 10) {
                let t = Instant::now();
                d_rt.$call($req).await?;
                let dd = t.elapsed();
                let t = Instant::now();
                v_rt.$call($req).await?;
                let vv = t.elapsed();
                // The first tenth warms connections and caches up.
                if i >= calls / 10 {
                    d.push(dd);
                    v.push(vv);
                }
            }
            rows.push(Row {
                name: $name,
                direct: summarize(d),
                via: summarize(v),
            });
        }};
    }
    cheap!(
        "Version",
        version,
        cri::VersionRequest {
            version: "0.1.0".into()
        }
    );
    cheap!(
        "ListPodSandbox",
        list_pod_sandbox,
        cri::ListPodSandboxRequest::default()
    );

    let logs = ctd.scratch("pods");
    let (mut d, mut v) = (Vec::new(), Vec::new());
    let mut steps: std::collections::BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> =
        Default::default();
    for i in 0..pods {
        let spec = PodSpec::new(&format!("direct-{i}"), &logs, ctd.cgroup_parent());
        let t = Instant::now();
        let (_, dt) = pod::lifecycle(&mut d_rt, &mut d_img, &spec).await?;
        d.push(t.elapsed());
        let spec = PodSpec::new(&format!("via-{i}"), &logs, ctd.cgroup_parent());
        let t = Instant::now();
        let (_, vt) = pod::lifecycle(&mut v_rt, &mut v_img, &spec).await?;
        v.push(t.elapsed());
        for ((name, dd), (_, vv)) in dt.steps.iter().zip(vt.steps.iter()) {
            let e = steps.entry(name).or_default();
            e.0.push(*dd);
            e.1.push(*vv);
        }
    }
    rows.push(Row {
        name: "pod lifecycle",
        direct: summarize(d),
        via: summarize(v),
    });
    for name in ["RunPodSandbox", "StopPodSandbox"] {
        if let Some((dd, vv)) = steps.remove(name) {
            rows.push(Row {
                name: if name == "RunPodSandbox" {
                    "  RunPodSandbox"
                } else {
                    "  StopPodSandbox"
                },
                direct: summarize(dd),
                via: summarize(vv),
            });
        }
    }

    println!("netready passthrough overhead (direct = containerd, via = through netready)");
    println!(
        "{:<16} {:>7} {:>12} {:>12} {:>12} {:>12} {:>11} {:>11}",
        "call", "n", "direct p50", "via p50", "direct p99", "via p99", "added p50", "added p99"
    );
    let mut json_rows = Vec::new();
    for r in &rows {
        println!(
            "{:<16} {:>7} {:>10.0}us {:>10.0}us {:>10.0}us {:>10.0}us {:>9.0}us {:>9.0}us",
            r.name,
            r.direct.n,
            us(r.direct.p50),
            us(r.via.p50),
            us(r.direct.p99),
            us(r.via.p99),
            us(r.via.p50) - us(r.direct.p50),
            us(r.via.p99) - us(r.direct.p99),
        );
        json_rows.push(serde_json::json!({
            "call": r.name.trim(), "n": r.direct.n,
            "direct_us": {"p50": us(r.direct.p50), "p99": us(r.direct.p99), "max": us(r.direct.max)},
            "netready_us": {"p50": us(r.via.p50), "p99": us(r.via.p99), "max": us(r.via.max)},
            "added_us": {"p50": us(r.via.p50) - us(r.direct.p50), "p99": us(r.via.p99) - us(r.direct.p99)},
        }));
    }
    let goal_ok = rows
        .iter()
        .filter(|r| matches!(r.name, "Version" | "ListPodSandbox"))
        .all(|r| us(r.via.p99) - us(r.direct.p99) <= 300.0);
    println!(
        "goal: added p99 <= 300us on cheap RPCs: {}",
        if goal_ok { "met" } else { "NOT met" }
    );
    drop(nr);
    drop(ctd);

    let out = serde_json::json!({
        "params": {"calls_per_arm": calls, "pods_per_arm": pods, "order": "interleaved direct/netready"},
        "rows": json_rows,
        "goal_added_p99_us": 300, "goal_met": goal_ok,
    });
    let file = netready_testkit::bench::write("passthrough", out)?;
    println!("results: {}", file.display());
    Ok(())
}
