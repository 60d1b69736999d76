//! A netperf pod's container command (issue 17, part 1): it runs in the pod's netns once the pod
//! is network-ready, confined, with its output in the CRI log and its exit in ContainerStatus;
//! StopContainer, StopPodSandbox and the timeout annotation end it; a command off the allowlist
//! never runs. Real plugins, real namespaces, Debian's ping.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use netready_cri::NetperfConfig;
use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::{self, PodSpec, Rt};
use netready_testkit::record;
use netready_testkit::topology::TwoNodes;

fn config(t: &TwoNodes) -> NetperfConfig {
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required = vec!["same_node_pod".into()];
    cfg.checks.optional.clear();
    cfg.checks.deadline = Duration::from_secs(10);
    cfg.targets.node_name = Some("node-a".into());
    cfg.targets.file = Some(t.targets_file(&t.a.path(""), &[]).unwrap());
    cfg.commands.allow = vec!["nonexistent-tool".into()];
    cfg
}

/// A netperf pod on node a with `annotations`; its sandbox id and spec.
async fn sandbox(
    rt: &mut Rt,
    t: &TwoNodes,
    name: &str,
    annotations: &[(&str, &str)],
) -> (String, PodSpec) {
    let mut pod = PodSpec::new(name, &t.a.path("pods"), "");
    pod.labels.insert("netperf".into(), "true".into());
    for (k, v) in annotations {
        pod.annotations.insert(k.to_string(), v.to_string());
    }
    (pod::run_sandbox(rt, &pod).await.unwrap(), pod)
}

async fn start(
    rt: &mut Rt,
    pod: &PodSpec,
    sid: &str,
    argv: &[String],
    user: Option<i64>,
) -> String {
    let argv = argv.to_vec();
    pod::start_container_with(rt, pod, sid, move |c| {
        c.command = argv[..1].to_vec();
        c.args = argv[1..].to_vec();
        c.envs = vec![cri::KeyValue {
            key: "LANG".into(),
            value: "C".into(),
        }];
        if let Some(u) = user {
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: u }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    })
    .await
    .unwrap()
}

async fn status(rt: &mut Rt, cid: &str) -> cri::ContainerStatus {
    pod::container_status(rt, cid).await.unwrap()
}

async fn exited(rt: &mut Rt, cid: &str, within: Duration) -> cri::ContainerStatus {
    pod::wait_exited(rt, cid, within).await.unwrap()
}

fn log_of(pod: &PodSpec) -> Vec<String> {
    pod::read_log(&pod.log_directory.join("main/0.log")).unwrap_or_default()
}

/// Waits until exactly one process has `words`; its pid.
async fn one_process(words: &[&str]) -> u32 {
    for _ in 0..200 {
        if let [pid] = pod::processes_with_args(words)[..] {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "no single process {words:?}: {:?}",
        pod::processes_with_args(words)
    );
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().ino()
}

fn sandbox_netns(nr: &InProcess, sid: &str) -> PathBuf {
    nr.runtime().sandbox(sid).unwrap().netns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_in_the_pod_netns_confined_and_its_exit_is_the_containers() {
    let t = TwoNodes::start(None).await.unwrap();
    let nr = InProcess::start(&t.a, config(&t), &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let target = t.control_a.ip.to_string();

    // Runs to its end: two pings to the node's control pod, from the pod's address.
    let (sid, pod) = sandbox(&mut rt, &t, "pinger", &[]).await;
    let argv: Vec<String> = ["ping", "-c", "2", "-i", "0.2", &target]
        .map(String::from)
        .into();
    let cid = start(&mut rt, &pod, &sid, &argv, None).await;
    let s = exited(&mut rt, &cid, Duration::from_secs(15)).await;
    let log = log_of(&pod);
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (0, "Completed"),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("stdout F ") && l.contains("2 received")),
        "{log:#?}"
    );
    // Only after the network verdict: the verdict's line comes before ping's first.
    let verdict = log
        .iter()
        .position(|l| l.contains("network ready"))
        .unwrap_or(usize::MAX);
    let first_ping = log.iter().position(|l| l.contains("PING ")).unwrap();
    assert!(verdict < first_ping, "{log:#?}");
    pod::stop_remove(&mut rt, &sid).await.unwrap();

    // Runs as nobody (the pod asked for root), no capabilities, no_new_privs, in the pod's
    // netns; StopContainer ends it with SIGTERM and reaps it.
    let (sid, pod) = sandbox(&mut rt, &t, "long", &[]).await;
    let argv: Vec<String> = ["ping", "-i", "0.5", &target].map(String::from).into();
    let cid = start(&mut rt, &pod, &sid, &argv, Some(0)).await;
    let pid = one_process(&["ping", "0.5", &target]).await;
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Its limits ([netperf.commands] defaults), soft and hard alike.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert_eq!(limit("Max open files"), "1024 1024", "{limits}");
    assert_eq!(limit("Max processes"), "4096 4096", "{limits}");
    assert_eq!(limit("Max core file size"), "0 0", "{limits}");
    assert_eq!(limit("Max file size"), "67108864 67108864", "{limits}");
    assert_eq!(
        limit("Max address space"),
        "2147483648 2147483648",
        "{limits}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        PathBuf::from(format!("net:[{}]", netns_inode(&sandbox_netns(&nr, &sid))))
    );
    // kubelet rotates the log: renames it, then ReopenContainerLog; the lines go on in a new
    // file at the path.
    let path = pod.log_directory.join("main/0.log");
    let rotated = pod.log_directory.join("main/0.log.20261202-000000");
    let mut replies = 0;
    for _ in 0..100 {
        replies = log_of(&pod)
            .iter()
            .filter(|l| l.contains("bytes from"))
            .count();
        if replies > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replies > 0, "{:#?}", log_of(&pod));
    std::fs::rename(&path, &rotated).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: cid.clone(),
    })
    .await
    .unwrap();
    let mut fresh = Vec::new();
    for _ in 0..100 {
        fresh = pod::read_log(&path).unwrap_or_default();
        if fresh.iter().any(|l| l.contains("bytes from")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fresh
            .iter()
            .all(|l| l.starts_with("stdout F ") || l.starts_with("stderr F ")),
        "{fresh:#?}"
    );
    assert!(fresh.iter().any(|l| l.contains("bytes from")), "{fresh:#?}");
    rt.stop_container(cri::StopContainerRequest {
        container_id: cid.clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    let s = status(&mut rt, &cid).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (143, "Error"), "{s:?}");
    assert!(pod::processes_with_args(&["ping", "0.5", &target]).is_empty());
    pod::stop_remove(&mut rt, &sid).await.unwrap();

    // A user the pod names is the user it runs as.
    let (sid, pod) = sandbox(&mut rt, &t, "user", &[]).await;
    let argv: Vec<String> = ["ping", "-i", "0.6", &target].map(String::from).into();
    start(&mut rt, &pod, &sid, &argv, Some(4321)).await;
    let pid = one_process(&["ping", "0.6", &target]).await;
    assert_eq!(status_field(pid, "Uid"), "4321\t4321\t4321\t4321");
    // StopPodSandbox kills it with the pod: nothing outlives the pod.
    pod::stop_remove(&mut rt, &sid).await.unwrap();
    assert!(pod::processes_with_args(&["ping", "0.6", &target]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_kills_and_commands_off_the_allowlist_never_run() {
    let t = TwoNodes::start(None).await.unwrap();
    let cfg = config(&t);
    let results = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let target = t.control_a.ip.to_string();

    let (sid, pod) = sandbox(
        &mut rt,
        &t,
        "slow",
        &[("netready.io/command-timeout", "1s")],
    )
    .await;
    let argv: Vec<String> = ["ping", "-i", "0.7", &target].map(String::from).into();
    let t0 = Instant::now();
    let cid = start(&mut rt, &pod, &sid, &argv, None).await;
    let s = exited(&mut rt, &cid, Duration::from_secs(10)).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "DeadlineExceeded"),
        "{s:?}"
    );
    assert!(s.message.contains("netready.io/command-timeout"), "{s:?}");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(pod::processes_with_args(&["ping", "0.7", &target]).is_empty());
    let recs = record::commands_of(&results, &cid);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    record::assert_valid_command(&recs[0]);
    assert_eq!(recs[0]["reason"], "DeadlineExceeded");
    assert_eq!(recs[0]["iperf3"], serde_json::Value::Null);
    pod::stop_remove(&mut rt, &sid).await.unwrap();

    // Off the allowlist: a shell, a binary by path, a symlink dressed as ping. Each would make
    // its marker file; none may.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let disguised = dir.path().join("ping");
    std::os::unix::fs::symlink("/usr/bin/touch", &disguised).unwrap();
    let m = marker.display().to_string();
    for (i, argv) in [
        vec!["sh".to_string(), "-c".into(), format!("touch {m}")],
        vec!["/usr/bin/touch".into(), m.clone()],
        vec![disguised.display().to_string(), m.clone()],
    ]
    .into_iter()
    .enumerate()
    {
        let (sid, pod) = sandbox(&mut rt, &t, &format!("denied-{i}"), &[]).await;
        let cid = start(&mut rt, &pod, &sid, &argv, None).await;
        let s = exited(&mut rt, &cid, Duration::from_secs(10)).await;
        assert_eq!(
            (s.exit_code, s.reason.as_str()),
            (126, "ContainerCannotRun"),
            "{argv:?}: {s:?}"
        );
        assert!(s.message.contains("allowlist"), "{s:?}");
        let recs = record::commands_of(&results, &cid);
        assert_eq!(recs.len(), 1, "{recs:#?}");
        record::assert_valid_command(&recs[0]);
        assert_eq!(
            (recs[0]["exit_code"].as_i64(), &recs[0]["started"]),
            (Some(126), &serde_json::Value::Null),
            "never started"
        );
        assert!(
            log_of(&pod)
                .iter()
                .any(|l| l.contains("exited with code 126")),
            "{:#?}",
            log_of(&pod)
        );
        // The sandbox is fine: a failed command is the container's, not the pod's.
        let st = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sid.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            st.status.unwrap().state,
            cri::PodSandboxState::SandboxReady as i32
        );
        pod::stop_remove(&mut rt, &sid).await.unwrap();
    }
    assert!(!marker.exists(), "a command off the allowlist ran");

    // Allowed by the config but not on this node: 127.
    let (sid, pod) = sandbox(&mut rt, &t, "missing", &[]).await;
    let cid = start(&mut rt, &pod, &sid, &["nonexistent-tool".to_string()], None).await;
    let s = exited(&mut rt, &cid, Duration::from_secs(10)).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (127, "ContainerCannotRun"),
        "{s:?}"
    );
    pod::stop_remove(&mut rt, &sid).await.unwrap();
}

/// `iperf3 --server --one-off --json` on `port` in the control pod's netns; its report.
fn server_once(t: &TwoNodes, port: u16) -> tokio::process::Child {
    let ns = t.control_a.netns_path().unwrap();
    tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["--", "iperf3", "-s", "-1", "-J", "-p", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn server_listens(t: &TwoNodes, port: u16) {
    let ns = netready_netns::Netns::open(t.control_a.netns_path().unwrap()).unwrap();
    let addr = std::net::SocketAddr::new(t.control_a.ip, port);
    for _ in 0..200 {
        let up = ns
            .run(move || std::net::TcpListener::bind(addr).is_err())
            .unwrap();
        if up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("iperf3 -s never bound {addr}");
}

async fn iperf_of(rt: &mut Rt, cid: &str) -> serde_json::Value {
    let info = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: cid.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    serde_json::from_str(
        info.get("netready.iperf3")
            .unwrap_or_else(|| panic!("{info:?}")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iperf3_commands_are_read_agree_with_the_receiver_and_spread_over_the_pool() {
    let mut t = TwoNodes::start(None).await.unwrap();
    t.control_a.start_iperf3("iperf3").await.unwrap();
    let cfg = config(&t);
    let results = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let ip = t.control_a.ip.to_string();

    // TCP and UDP, without -J: netready adds it and reads the report; the receiver's own
    // report (the server's JSON) agrees within 5 %.
    for (port, udp) in [(5301u16, false), (5302, true)] {
        let server = server_once(&t, port);
        server_listens(&t, port).await;
        let mut argv: Vec<String> = ["iperf3", "-c", &ip, "-t", "1", "-p", &port.to_string()]
            .map(String::from)
            .into();
        if udp {
            argv.extend(["-u", "-b", "200M"].map(String::from));
        }
        let (sid, pod) = sandbox(&mut rt, &t, &format!("iperf-{port}"), &[]).await;
        let cid = start(&mut rt, &pod, &sid, &argv, None).await;
        let s = exited(&mut rt, &cid, Duration::from_secs(20)).await;
        assert_eq!(s.exit_code, 0, "{s:?}\n{:#?}", log_of(&pod));
        let got = iperf_of(&mut rt, &cid).await;
        let report = server.wait_with_output().await.unwrap();
        let theirs: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
        let receiver = theirs["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("{theirs}"));
        assert!(receiver > 1e6, "{theirs}");
        let parsed = got["bits_per_second"].as_f64().unwrap();
        assert!(
            (parsed - receiver).abs() <= 0.05 * receiver,
            "parsed {parsed} bit/s, the receiver counted {receiver}: {got}"
        );
        assert_eq!(got["target"], format!("{ip}:{port}"));
        if udp {
            assert_eq!(got["protocol"], "udp");
            assert!(got["jitter_ms"].as_f64().is_some(), "{got}");
            assert!(got["packets"].as_u64().unwrap() > 0, "{got}");
            assert!(got["lost_packets"].as_u64().is_some(), "{got}");
        } else {
            assert_eq!(got["protocol"], "tcp");
            assert!(got["retransmits"].as_u64().is_some(), "{got}");
        }
        let log = log_of(&pod);
        assert!(
            log.iter().any(|l| l.contains("netready: iperf3 ")),
            "{log:#?}"
        );
        // The command's own record, beside the pod's: on disk once the container shows
        // exited, with what the status said.
        let recs = record::commands_of(&results, &cid);
        assert_eq!(recs.len(), 1, "{recs:#?}");
        let rec = &recs[0];
        record::assert_valid_command(rec);
        assert_eq!(rec["iperf3"], got);
        assert_eq!(rec["sandbox_id"], sid.as_str());
        assert_eq!(rec["pod"]["name"], format!("iperf-{port}"));
        assert_eq!(
            rec["argv"],
            serde_json::json!(argv),
            "the pod's command, as given"
        );
        assert_eq!(
            (rec["exit_code"].as_i64(), rec["reason"].as_str()),
            (Some(0), Some("Completed"))
        );
        let ran = rec["duration_s"].as_f64().unwrap();
        assert!((1.0..10.0).contains(&ran), "a 1 s run took {ran} s");
        pod::stop_remove(&mut rt, &sid).await.unwrap();
    }

    // One UDP run: one jitter in the histogram, its datagrams counted.
    let (_, text) = netready_testkit::scrape::get(&nr.metrics_url(), None);
    let value = |p: &str| netready_testkit::scrape::value(&text, p);
    assert_eq!(
        value("netready_traffic_udp_jitter_seconds_count"),
        1.0,
        "{text}"
    );
    assert!(value("netready_traffic_udp_packets_total") > 0.0, "{text}");
    assert_eq!(
        value("netready_traffic_throughput_bytes_per_second_count"),
        2.0
    );

    // Four pods at once, no port named: each gets its own server of the pool (one server
    // would turn three away as busy).
    let mut pods = Vec::new();
    for i in 0..4 {
        pods.push(sandbox(&mut rt, &t, &format!("many-{i}"), &[]).await);
    }
    // 3 s each, so that the four overlap even on a loaded machine.
    let argv: Vec<String> = ["iperf3", "-c", &ip, "-t", "3"].map(String::from).into();
    let mut cids = Vec::new();
    for (sid, pod) in &pods {
        cids.push(start(&mut rt, pod, sid, &argv, None).await);
    }
    let mut ports = Vec::new();
    for (cid, (_, pod)) in cids.iter().zip(&pods) {
        let s = exited(&mut rt, cid, Duration::from_secs(30)).await;
        assert_eq!(s.exit_code, 0, "{s:?}\n{:#?}", log_of(pod));
        let got = iperf_of(&mut rt, cid).await;
        let port: u16 = got["target"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        ports.push(port);
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4, "{ports:?}");
    assert!(ports.iter().all(|p| (5201..=5208).contains(p)), "{ports:?}");
    for (sid, _) in &pods {
        pod::stop_remove(&mut rt, sid).await.unwrap();
    }
}
