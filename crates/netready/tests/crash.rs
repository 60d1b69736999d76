//! `netready serve` killed (SIGKILL, by itself at a crash point: `NETREADY_TEST_CRASH_AT`) at
//! each step of RunPodSandbox, StopPodSandbox, RemovePodSandbox and of the undo of a failed
//! RunPodSandbox (its ADD failing on a full host-local range) in turn, restarted, and the
//! node then treated as kubelet treats it: a pod whose sandbox is listed is stopped and
//! removed, one whose RunPodSandbox failed is run again. Nothing may be left: no netns, veth,
//! host-local reservation or sandbox state, and the pod's name is free again.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use netready_cri::netperf::crash::STEPS;
use netready_testkit::cri as client;
use netready_testkit::netready::Netready;
use netready_testkit::node::{Leftovers, TestNode};
use netready_testkit::pod::{self, PodSpec, Rt};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

/// The node's `netready serve` (netns and state in the node's own directories, which
/// `leftovers` looks at), with `plugin_type` as the pod network and `env` added.
async fn netready_with(
    node: &TestNode,
    plugin_type: &str,
    subnet: &str,
    env: &[(&str, &str)],
) -> Netready {
    netready_pooled(node, plugin_type, subnet, env, 0).await
}

/// [`netready_with`], with `pool` namespaces made ahead (`netperf.netns_pool`).
async fn netready_pooled(
    node: &TestNode,
    plugin_type: &str,
    subnet: &str,
    env: &[(&str, &str)],
    pool: usize,
) -> Netready {
    let dir = node.path("nr");
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    let mut conflist = node.bridge_conflist(subnet, vec![]);
    conflist["plugins"][0]["type"] = plugin_type.into();
    std::fs::write(dir.join("net.d/10-nrtest.conflist"), conflist.to_string()).unwrap();
    let config = dir.join("netready.toml");
    std::fs::write(
        &config,
        format!(
            "[netperf]\nnetns_pool = {pool}\n[netperf.checks]\nrequired = []\noptional = []\n[netperf.retry]\nattempts = 1\n[netperf.cni]\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            node.path("bin").display().to_string()
        ),
    )
    .unwrap();
    let (netns, state) = (node.path("netns"), node.path("state"));
    Netready::start_with_env(
        Some(node.netns().path()),
        Path::new(BIN),
        &dir,
        Path::new(""),
        &[
            "--no-upstream",
            "--config",
            config.to_str().unwrap(),
            "--netns-dir",
            netns.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        env,
    )
    .await
    .unwrap()
}

async fn netready(node: &TestNode, crash_at: Option<&str>, pool: usize) -> Netready {
    let env: Vec<(&str, &str)> = crash_at
        .map(|s| ("NETREADY_TEST_CRASH_AT", s))
        .into_iter()
        .collect();
    // A /30: room for one pod beside the gateway, so a second one's ADD fails on IPAM.
    netready_pooled(node, "bridge", "10.95.0.0/30", &env, pool).await
}

async fn run(rt: &mut Rt, pod: &PodSpec) -> Result<String, tonic::Status> {
    pod::run_sandbox(rt, pod).await
}

async fn stop_and_remove(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    netready_drive::stop_remove_sandbox(rt, id, netready_drive::IfGone::Error).await
}

async fn listed(rt: &mut Rt) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_step_of_a_lifecycle_netready_leaves_nothing_after_restart() {
    killed_at(STEPS, 0).await;
}

/// The same with a pool of namespaces made ahead, at the steps where a pod holds a spare
/// (taken, its record naming it) and where one is made or removed: the spares a killed
/// netready left are removed by its restart, the pod's netns is torn down with the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_a_netns_pool_netready_leaves_no_spare_after_restart() {
    killed_at(
        &[
            "run:recorded",
            "run:netns",
            "run:ready",
            "undo:netns-removed",
        ],
        2,
    )
    .await;
}

/// Waits until the node holds `n` namespaces: with no pod running, the pool's spares.
async fn spares_made(node: &TestNode, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.leftovers().netns.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            node.leftovers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn killed_at(steps: &[&str], pool: usize) {
    let node = TestNode::new().unwrap();
    for step in steps {
        let mut pod = PodSpec::new(
            &format!("crash-{}", step.replace(':', "-")),
            &node.path("pods"),
            "",
        );
        pod.labels.insert("netperf".into(), "true".into());
        let mut nr = netready(&node, Some(step), pool).await;
        let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
        spares_made(&node, pool).await;
        // The undo runs only for an ADD that fails: a pod first takes the /30's one address.
        if step.starts_with("undo:") {
            let mut filler = PodSpec::new("filler", &node.path("pods"), "");
            filler.labels.insert("netperf".into(), "true".into());
            run(&mut rt, &filler).await.unwrap();
        }
        // Drive the pod until netready dies at `step`.
        let outcome = match run(&mut rt, &pod).await {
            Err(e) => Err(e),
            Ok(id) => stop_and_remove(&mut rt, &id).await,
        };
        let e = outcome.expect_err(step);
        assert!(e.message().contains("transport"), "{step}: {e}");
        assert!(
            nr.log().contains(&format!("step=\"{step}\"")),
            "{step}: died elsewhere\n{}",
            nr.log()
        );
        let status = nr.exited(Duration::from_secs(10)).unwrap();
        assert_eq!(status.signal(), Some(9), "{step}: {status}\n{}", nr.log());
        drop(rt);

        // Restarted, as kubelet sees it: a listed sandbox of the pod is stopped and removed
        // (the pod was deleted, or its sandbox is replaced); a pod without one runs again
        // under the same name, which must be free.
        let nr = netready(&node, None, pool).await;
        let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
        for s in listed(&mut rt).await {
            stop_and_remove(&mut rt, &s.id)
                .await
                .unwrap_or_else(|e| panic!("{step}: {e}\n{}", nr.log()));
        }
        let id = run(&mut rt, &pod)
            .await
            .unwrap_or_else(|e| panic!("{step}: the pod again: {e}\n{}", nr.log()));
        stop_and_remove(&mut rt, &id).await.unwrap();
        assert!(listed(&mut rt).await.is_empty(), "{step}");
        drop(rt);
        drop(nr);
        assert_eq!(
            node.settled_leftovers(),
            Leftovers::default(),
            "{step}: left on the node"
        );
    }
}

/// Plugins running an ADD for a pod of this node (other tests' plugins run beside them).
fn adding_here(node: &TestNode) -> Vec<u32> {
    let netns = format!("CNI_NETNS={}/", node.path("netns").display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            vars.contains(&&b"CNI_COMMAND=ADD"[..])
                && vars.iter().any(|v| v.starts_with(netns.as_bytes()))
        })
        .collect()
}

/// Killed while its plugin is mid-ADD, netready leaves the plugin running. The restarted one
/// must not DEL under it, or the ADD finishing late keeps its veth and address; nor may it
/// wait for it, or a hung plugin keeps the node's runtime from answering kubelet for an
/// `exec_timeout`. It kills the orphan, DELs, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_add_the_restart_kills_the_orphaned_plugin_before_its_del() {
    let node = TestNode::new().unwrap();
    // `bridge`, whose first ADD hangs until the test opens a gate: a plugin stuck on a busy
    // node or a daemon. Its later ADDs (the pod run again) go straight on. It also ends when
    // the node's directory goes, so a failed test leaves no process.
    let (first, gate) = (node.path("first"), node.path("gate"));
    node.script_plugin(
        "gatedbridge",
        &format!(
            "if [ \"$CNI_COMMAND\" = ADD ] && mkdir {first} 2>/dev/null; then\n  while [ ! -e {gate} ] && [ -d {first} ]; do sleep 0.05; done\n  [ -e {gate} ] || exit 1\nfi\nexec /usr/lib/cni/bridge",
            first = first.display(),
            gate = gate.display()
        ),
    )
    .unwrap();
    let mut nr = netready_with(&node, "gatedbridge", "10.95.0.0/24", &[]).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let mut pod = PodSpec::new("orphan", &node.path("pods"), "");
    pod.labels.insert("netperf".into(), "true".into());
    let call = tokio::spawn({
        let pod = pod.clone();
        async move { run(&mut rt, &pod).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while adding_here(&node).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no ADD started\n{}",
            nr.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nr.kill().unwrap();
    assert!(call.await.unwrap().is_err());
    assert!(
        !adding_here(&node).is_empty(),
        "the plugin outlived netready"
    );

    // The default exec_timeout is a minute: a restart that waited for the orphan would not
    // answer within 15 s.
    let started = std::time::Instant::now();
    let nr = netready_with(&node, "gatedbridge", "10.95.0.0/24", &[]).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    rt.version(cri::VersionRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered {:?} after the restart\n{}",
        started.elapsed(),
        nr.log()
    );
    assert!(adding_here(&node).is_empty(), "the orphan is gone");
    assert!(
        listed(&mut rt).await.is_empty(),
        "an interrupted ADD is never listed"
    );
    assert!(
        nr.log()
            .contains("killed the plugins the interrupted ADDs left running"),
        "{}",
        nr.log()
    );
    // The gate opened: an orphan still alive would go on to `bridge`'s ADD now.
    std::fs::write(&gate, "").unwrap();
    let id = run(&mut rt, &pod)
        .await
        .unwrap_or_else(|e| panic!("the pod again: {e}\n{}", nr.log()));
    stop_and_remove(&mut rt, &id).await.unwrap();
    drop(rt);
    drop(nr);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
}

/// The storm a user tried: thirty pods churning, netready killed ten times at random instants
/// and restarted each time. Afterwards, as kubelet would, every listed sandbox is stopped and
/// removed: then nothing may be left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kills_at_random_during_churn_leave_nothing() {
    let node = TestNode::new().unwrap();
    let socket = node.path("nr/netready.sock");
    let stop = tokio_util::sync::CancellationToken::new();
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let churn: Vec<_> = (0..30)
        .map(|w| {
            let (socket, stop, pods) = (socket.clone(), stop.clone(), node.path("pods"));
            let made = made.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_cancelled() {
                    n += 1;
                    let Ok((mut rt, _)) = client::connect(&socket).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let mut pod = PodSpec::new(&format!("storm-{w}-{n}"), &pods, "");
                    pod.labels.insert("netperf".into(), "true".into());
                    // Errors are expected: netready dies under these calls.
                    if let Ok(id) = run(&mut rt, &pod).await {
                        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = stop_and_remove(&mut rt, &id).await;
                    }
                }
            })
        })
        .collect();
    for kill in 0..10 {
        let mut nr = netready_with(&node, "bridge", "10.95.0.0/24", &[]).await;
        // Each life of netready makes a pod before its kill comes, however slow the machine:
        // the kill then lands among lifecycles, at a random instant after that.
        let before = made.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..500 {
            if made.load(std::sync::atomic::Ordering::Relaxed) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        tokio::time::sleep(Duration::from_millis(u64::from(nanos % 400))).await;
        nr.kill()
            .unwrap_or_else(|e| panic!("kill {kill}: {e}\n{}", nr.log()));
    }
    stop.cancel();
    for c in churn {
        c.await.unwrap();
    }
    let made = made.load(std::sync::atomic::Ordering::Relaxed);
    assert!(made >= 10, "only {made} pods made between the kills");
    eprintln!("storm: {made} pods made between ten kills");
    let nr = netready_with(&node, "bridge", "10.95.0.0/24", &[]).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let left = listed(&mut rt).await;
    eprintln!("storm: {} sandboxes listed after it", left.len());
    for s in &left {
        stop_and_remove(&mut rt, &s.id)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", nr.log()));
    }
    assert!(listed(&mut rt).await.is_empty());
    drop(rt);
    let log = nr.log();
    drop(nr);
    let found = node.settled_leftovers();
    let states = netready_cri::netperf::state::StateDir::peek(&node.path("state")).0;
    assert_eq!(
        found,
        Leftovers::default(),
        "{made} pods made, {} listed after the storm\n{states:#?}\n{log}",
        left.len()
    );
}

/// A pod's netns taken away underneath it (unmounted, leaving a plain file, as a netready
/// killed mid-removal leaves it; or gone altogether): StopPodSandbox still succeeds and the
/// DEL, with an empty CNI_NETNS, still releases the pod's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_netns_unmounted_or_removed_underneath_still_stops_and_releases_everything() {
    let node = TestNode::new().unwrap();
    let nr = netready(&node, None, 0).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    for (name, unlink) in [("unmounted", false), ("removed", true)] {
        let mut pod = PodSpec::new(name, &node.path("pods"), "");
        pod.labels.insert("netperf".into(), "true".into());
        let id = run(&mut rt, &pod).await.unwrap();
        let left = node.leftovers();
        assert_eq!(left.reservations.len(), 1, "{name}: {left:?}");
        let netns = std::path::PathBuf::from(&left.netns[0]);
        nix::mount::umount2(&netns, nix::mount::MntFlags::MNT_DETACH).unwrap();
        if unlink {
            std::fs::remove_file(&netns).unwrap();
        }
        stop_and_remove(&mut rt, &id)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", nr.log()));
        assert_eq!(
            node.settled_leftovers(),
            Leftovers::default(),
            "{name}\n{}",
            nr.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_dies_with_its_netready_and_the_restart_reports_it_exited() {
    let node = TestNode::new().unwrap();
    let mut nr = netready(&node, None, 0).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let mut pod = PodSpec::new("cmd", &node.path("pods"), "");
    pod.labels.insert("netperf".into(), "true".into());
    let id = run(&mut rt, &pod).await.unwrap();
    // The pod's own loopback: up in every pod netns, reachable from nowhere else.
    let words = ["ping", "-i", "0.3", "127.0.0.1"];
    let cid = pod::start_container_with(&mut rt, &pod, &id, |c| {
        c.command = words.iter().map(|w| w.to_string()).collect();
    })
    .await
    .unwrap();
    let mut seen = false;
    for _ in 0..200 {
        seen = pod::processes_with_args(&words).len() == 1;
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "the command never started\n{}", nr.log());
    nr.kill().unwrap();
    let mut gone = false;
    for _ in 0..100 {
        gone = pod::processes_with_args(&words).is_empty();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the command outlived its netready");
    let nr = netready(&node, None, 0).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let s = pod::container_status(&mut rt, &cid).await.unwrap();
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert!(s.message.contains("netready restarted"), "{s:?}");
    stop_and_remove(&mut rt, &id).await.unwrap();
    assert_eq!(
        node.settled_leftovers(),
        Leftovers::default(),
        "{}",
        nr.log()
    );
}
