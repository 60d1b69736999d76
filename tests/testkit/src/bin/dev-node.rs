//! `dev-node`: a one-machine node for trying netready by hand.
//!
//! Starts a private containerd (its own netns, mount and PID namespaces, as the tests use it),
//! `netready serve` in front of it, runs one kubelet-like pod lifecycle through netready and
//! prints what it saw, then keeps serving until Ctrl-C (or exits at once with `--once`).
//! Everything it made is removed when it exits.

use std::path::PathBuf;

use anyhow::Context as _;
use netready_testkit::netready::Netready;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::{cri as client, Containerd};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut bin = PathBuf::from("target/release/netready");
    let mut once = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--netready" => bin = args.next().context("--netready needs a path")?.into(),
            "--once" => once = true,
            other => anyhow::bail!("unknown argument {other:?} (use --netready PATH, --once)"),
        }
    }
    let ctd = Containerd::start().await?;
    let nr = Netready::start(&bin, &ctd.scratch("netready"), &ctd.socket(), &[]).await?;
    let (mut rt, mut img) = client::connect(nr.socket()).await?;
    let v = rt
        .version(client::v1::VersionRequest::default())
        .await?
        .into_inner();
    println!("netready serving on unix://{}", nr.socket().display());
    println!("  upstream containerd: unix://{}", ctd.socket().display());
    println!(
        "  Version: runtime_name={} runtime_version={}",
        v.runtime_name, v.runtime_version
    );
    let status = rt
        .status(client::v1::StatusRequest { verbose: false })
        .await?
        .into_inner();
    for c in status.status.map(|s| s.conditions).unwrap_or_default() {
        println!("  Status: {}={} {}", c.r#type, c.status, c.message);
    }
    let spec = PodSpec::new("dev-node-demo", &ctd.scratch("pods"), ctd.cgroup_parent());
    let (outcome, timings) = pod::lifecycle(&mut rt, &mut img, &spec).await?;
    println!(
        "one pod lifecycle through netready ({:.0} ms):",
        timings.total().as_secs_f64() * 1e3
    );
    for (step, d) in &timings.steps {
        println!("  {step:<18} {:>8.1} ms", d.as_secs_f64() * 1e3);
    }
    println!("  outcome: {outcome:?}");
    if !once {
        println!(
            "serving until Ctrl-C; point a CRI client at unix://{}",
            nr.socket().display()
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(nr);
    drop(ctd);
    println!("removed the node, containerd and everything they made");
    Ok(())
}
