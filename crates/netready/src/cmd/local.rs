//! `netready local`: the whole network-ready benchmark on one machine.
//!
//! K simulated nodes (netns + the real Debian CNI plugins + a `netready serve` each, routed
//! to each other), control pods, a service VIP and an external target; pod flux driven at every
//! node the way kubelet drives it; the report printed; everything removed again, also on
//! Ctrl-C, SIGTERM or failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use netready_bench::{plot, report, Run};
use netready_drive::Client;
use netready_local::control::HTTP_PORT;
use netready_local::{Cluster, MainPlugin, Options};

use crate::cmd::drive::{load_params, Collector, LoadArgs, LoadDefaults, ModeArg};
use crate::cmd::preflight::{self, Level, Scope};
use netready_cri::config;

/// The provider's main plugin.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PluginArg {
    /// bridge + host-local: a bridge per node.
    Bridge,
    /// ptp + host-local: a routed veth per pod.
    Ptp,
}

/// Flags of `netready local`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated nodes, each with its own netready, bridge, subnet and control pod.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Main CNI plugin.
    #[arg(long, value_enum, default_value = "bridge")]
    pub plugin: PluginArg,
    /// Plugins chained after it, comma-separated (portmap, firewall, bandwidth, tuning).
    #[arg(long, value_delimiter = ',', default_value = "portmap")]
    pub chain: Vec<String>,
    /// CNI plugin directory, repeatable.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Pod flux at every node (`--pods` and `--rate` are per node).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Measure throughput with iperf3 to the same-node control pod after network ready.
    #[arg(long)]
    pub traffic: bool,
    /// Results, report and plots go to DIR/<run id>/.
    #[arg(long, value_name = "DIR", default_value = "netready-local-results")]
    pub out: PathBuf,
    /// Also write plots (report.html with CDFs, histogram and throughput; network-ready.svg).
    #[arg(long)]
    pub plot: bool,
    /// Run id stamped on every record (default: local-<unix time>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Log level of the nodes' netready (their logs are shown when one fails to start).
    #[arg(long, default_value = "warn")]
    pub node_log_level: String,
    /// Keep the cluster after the flux until Ctrl-C (inspect it: `ip netns`, `crictl`).
    #[arg(long)]
    pub hold: bool,
    /// The application model: `--model-servers` netperf server pods (declaring port 8080)
    /// spread over the nodes behind the VIP 10.96.0.40:80, programmed on every node as
    /// kube-proxy would, and every driven pod a client sending this HTTP load through it
    /// (`rate=20,duration=2s,connections=2`; see netready.io/http-load).
    #[arg(long, value_name = "LOAD")]
    pub model: Option<String>,
    /// Server pods of the application model.
    #[arg(long, default_value_t = 4)]
    pub model_servers: usize,
}

/// The application model's Service VIP in `local`.
pub const MODEL_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 40);

const LOCAL_DEFAULTS: LoadDefaults = LoadDefaults {
    mode: ModeArg::Rate,
    pods: 40,
    rate: 4.0,
    lifetime: Duration::from_secs(5),
};

/// Runs the benchmark; the exit code is 1 when a pod did not become network-ready.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "netready local needs root: it creates network namespaces, links and routes"
    );
    // Every pod under check holds sockets, and the nodes' netready inherit this.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let swept = tokio::task::spawn_blocking(netready_local::sweep_stale).await?;
    if swept > 0 {
        eprintln!("removed {swept} cluster(s) left by killed earlier runs");
    }
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("local-{}", t.as_secs())
    });
    let out = args.out.join(&run_id);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = Options {
        nodes: args.nodes,
        main_plugin: match args.plugin {
            PluginArg::Bridge => MainPlugin::Bridge,
            PluginArg::Ptp => MainPlugin::Ptp,
        },
        chain: args
            .chain
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
        cni_bin_dirs: args.cni_bin_dir.clone(),
        pod_net: [10, 244],
        netready: std::env::current_exe().context("locating the netready binary")?,
        iperf3: Some("iperf3".into()),
        traffic: args.traffic,
        run_id: run_id.clone(),
        run_info: serde_json::json!({
            "mode": "netready local",
            "nodes": args.nodes,
            "plugin": format!("{:?}", args.plugin).to_lowercase(),
            "chain": args.chain,
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        log_level: args.node_log_level.clone(),
    };
    let mut cluster = Cluster::prepare(opts)?;

    // Preflight on node 0's configuration (they differ only by subnet): plugins, IPAM room,
    // limits. containerd and host forwarding do not apply here.
    let cfg = config::load(&cluster.nodes[0].config())?;
    let pods = args.load.pods.unwrap_or(LOCAL_DEFAULTS.pods) as u64;
    let found = preflight::findings(
        &cfg,
        pods.min(250),
        Scope {
            containerd: false,
            ip_forward: false,
        },
    )
    .await;
    preflight::print(&found, true);
    anyhow::ensure!(
        !found.iter().any(|f| f.level == Level::Fail),
        "preflight failed: fix the above, then run again"
    );

    let started = Instant::now();
    let signal = super::shutdown_signal()?;
    let interrupted = async move {
        let name = signal.await;
        eprintln!("{name}: stopping");
    };
    tokio::pin!(interrupted);
    let mut records = Vec::new();
    let outcome = tokio::select! {
        r = body(&args, &mut cluster, &run_id, &out, &mut records) => r,
        () = &mut interrupted => Err(anyhow::anyhow!("interrupted")),
    };
    if outcome.is_ok() && args.hold {
        eprintln!(
            "holding the cluster (node netns: ip netns | grep nrl{}; CRI sockets under {}); Ctrl-C ends",
            std::process::id(),
            cluster.root.display()
        );
        interrupted.await;
    }
    if outcome.is_err() || args.hold {
        remove_pods(&cluster).await;
    }
    eprintln!("removing the cluster");
    let netready_records = tokio::task::spawn_blocking(move || {
        // netready writes a pod's record when its checks end; SIGTERM lets it finish them.
        cluster.stop_netready();
        let mut all = String::new();
        for n in &cluster.nodes {
            all += &std::fs::read_to_string(n.results()).unwrap_or_default();
        }
        cluster.teardown();
        all
    })
    .await?;
    let records_path = out.join("records.jsonl");
    std::fs::write(&records_path, &netready_records)?;
    outcome?;

    let drive_run = Run::from_values(records).map_err(anyhow::Error::msg)?;
    let run = Run::load(std::slice::from_ref(&records_path))?;
    anyhow::ensure!(
        !run.records.is_empty(),
        "netready wrote no records (node logs were in the run directory)"
    );
    let r = report::build(&run);
    println!("\n== network-ready, per pod from its first CNI ADD attempt (netready) ==");
    print!("{}", report::table(&r));
    println!("\n== pod start as the kubelet-like driver saw it (from intended start) ==");
    print!("{}", report::table(&report::build(&drive_run)));
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&report::json(&r))?,
    )?;
    if args.plot {
        for name in ["report.html", "network-ready.svg"] {
            plot::write(&run, &r, &out.join(name)).with_context(|| format!("plot {name}"))?;
        }
    }
    println!(
        "\n{} nodes, {:.0} s; results in {}/ (records.jsonl, drive.jsonl, report.json{}); \
         compare runs with `netready compare`",
        args.nodes,
        started.elapsed().as_secs_f64(),
        out.display(),
        if args.plot {
            ", report.html, network-ready.svg"
        } else {
            ""
        }
    );
    Ok(u8::from(r.ready < r.pods))
}

async fn body(
    args: &Args,
    cluster: &mut Cluster,
    run_id: &str,
    out: &Path,
    records: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    cluster.up().await?;
    cluster.start_netready().await?;
    eprintln!(
        "{} nodes up in {:.1} s (control pods: {}; service {}:{}; external {})",
        cluster.nodes.len(),
        t.elapsed().as_secs_f64(),
        cluster
            .control_ips()
            .iter()
            .map(|(n, ip)| format!("{n} {ip}"))
            .collect::<Vec<_>>()
            .join(", "),
        netready_local::cluster::SERVICE_VIP,
        netready_local::cluster::SERVICE_PORT,
        netready_local::cluster::EXTERNAL,
    );
    // Checked before any pod is made: a bad load is the user's flag, named.
    let model = args
        .model
        .as_deref()
        .map(|load| {
            let annotation = format!("{load},target={MODEL_VIP}:80");
            netready_probe::load::LoadPlan::parse(&annotation, HTTP_PORT)
                .map(|p| Model {
                    // A client lives through its load (and its checks before it).
                    lifetime: p.duration + p.timeout + Duration::from_secs(1),
                    annotation,
                })
                .map_err(|e| anyhow::anyhow!("--model: {e}"))
        })
        .transpose()?;
    let servers = match &model {
        Some(_) => model_servers(cluster, args.model_servers, run_id).await?,
        None => Vec::new(),
    };
    let outcome = drive(args, model.as_ref(), cluster, run_id, out, records).await;
    for (socket, id) in &servers {
        if let Ok(mut c) = netready_drive::connect(socket).await.map(|(rt, _)| rt) {
            let _ =
                netready_drive::stop_remove_sandbox(&mut c, id, netready_drive::IfGone::Removed)
                    .await;
        }
    }
    outcome
}

/// Starts `n` server pods of the application model over the nodes, round robin, each
/// declaring port 8080 (so its netready serves HTTP there), and programs the model's VIP on
/// every node with them as endpoints. Returns (node socket, sandbox id) of each.
async fn model_servers(
    cluster: &Cluster,
    n: usize,
    run_id: &str,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut made = Vec::new();
    let mut ips = Vec::new();
    for i in 0..n {
        let node = &cluster.nodes[i % cluster.nodes.len()];
        let (mut rt, _) = netready_drive::connect(&node.socket())
            .await
            .with_context(|| format!("{}: connecting", node.name))?;
        let meta = netready_cri::cri::PodSandboxMetadata {
            name: format!("model-server-{i}"),
            uid: format!("{:08x}-0000-4000-8000-{:012x}", i, std::process::id()),
            namespace: "netready-model".into(),
            attempt: 0,
        };
        let labels = [("netperf".to_string(), "true".to_string())].into();
        let mut config = netready_drive::sandbox_config(
            &meta,
            &labels,
            &Default::default(),
            &node
                .dir
                .join("pod-logs")
                .join(format!("model-{run_id}-{i}")),
            "",
        );
        config.port_mappings = vec![netready_cri::cri::PortMapping {
            protocol: netready_cri::cri::Protocol::Tcp as i32,
            container_port: i32::from(HTTP_PORT),
            host_port: 0,
            host_ip: String::new(),
        }];
        let id = rt
            .run_pod_sandbox(netready_cri::cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: model server {i}", node.name))?
            .into_inner()
            .pod_sandbox_id;
        let status = rt
            .pod_sandbox_status(netready_cri::cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        let ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        made.push((node.socket(), id));
        ips.push(
            ip.parse()
                .with_context(|| format!("model server {i} has no IP ({ip:?})"))?,
        );
    }
    for node in &cluster.nodes {
        let rules =
            netready_local::service::rules_in("NETREADY-MODEL", MODEL_VIP, 80, &ips, &node.subnet);
        netready_local::service::install(
            node.netns.as_ref().context("node has no netns")?,
            &rules,
        )?;
    }
    eprintln!(
        "application model: {n} servers behind {MODEL_VIP}:80 ({})",
        ips.iter()
            .map(|i: &std::net::IpAddr| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(made)
}

/// What every driven pod of the application model carries.
struct Model {
    /// Its `netready.io/http-load` value.
    annotation: String,
    /// The lifetime its load needs.
    lifetime: Duration,
}

async fn drive(
    args: &Args,
    model: Option<&Model>,
    cluster: &mut Cluster,
    run_id: &str,
    out: &Path,
    records: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let mut drivers = tokio::task::JoinSet::new();
    let mut expected = Some(0);
    let mut params = serde_json::Value::Null;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let socket = node.socket();
        let mut plan = args.load.plan(
            LOCAL_DEFAULTS,
            socket.clone(),
            node.dir.join("pod-logs"),
            run_id.to_owned(),
        )?;
        // Nodes draw different schedules from the one seed the fingerprint names.
        plan.seed = plan.seed.wrapping_add(i as u64);
        if let Some(m) = model {
            plan.annotations
                .insert("netready.io/http-load".into(), m.annotation.clone());
            plan.lifetime = plan.lifetime.max(m.lifetime);
        }
        expected = match plan.mode {
            netready_drive::Mode::Churn { .. } => None,
            _ => expected.map(|e| e + plan.pods),
        };
        if i == 0 {
            params = load_params(&plan, "netready local, per node");
        }
        let client = Client::connect(&socket)
            .await
            .with_context(|| format!("{}: connecting to {}", node.name, socket.display()))?;
        let (node_tx, mut node_rx) = tokio::sync::mpsc::unbounded_channel();
        let (tx, name) = (tx.clone(), node.name.clone());
        drivers.spawn(async move {
            let driver = netready_drive::run(Arc::new(plan), client, node_tx);
            let forward = async {
                while let Some(mut rec) = node_rx.recv().await {
                    rec["node"] = serde_json::json!(name);
                    let _ = tx.send(rec);
                }
            };
            tokio::join!(driver, forward);
        });
    }
    drop(tx);
    eprintln!("driving pods: {params}");
    let fingerprint = serde_json::json!({"run_id": run_id, "load": params,
                                         "netready_version": env!("CARGO_PKG_VERSION")});
    let mut collector = Collector::new(Some(&out.join("drive.jsonl")), expected, fingerprint)?;
    while let Some(rec) = rx.recv().await {
        collector.add(rec)?;
    }
    while drivers.join_next().await.is_some() {}
    *records = collector.finish();
    Ok(())
}

/// After a failure or interrupt, delete what pods the nodes still run, as kubelet would when
/// they are deleted: StopPodSandbox, RemovePodSandbox (so their CNI DEL runs).
async fn remove_pods(cluster: &Cluster) {
    for node in &cluster.nodes {
        let socket = node.socket();
        let cleanup = async {
            let client = Client::connect(&socket).await.ok()?;
            client.remove_all_sandboxes().await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(20), cleanup).await {
            Ok(Some(n)) if n > 0 => eprintln!("{}: removed {n} pods left running", node.name),
            _ => {}
        }
    }
}
