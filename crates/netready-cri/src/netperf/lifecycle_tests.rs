//! The sandbox lifecycle's undo logic, without root: plugins and namespaces are stand-ins
//! that log what they were asked, so each test can assert what was undone and in which order.
//! The same paths run with real plugins and namespaces in the testkit's root tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netready_cni::exec::{Command, ExecFuture, Invocation};
use netready_cni::Exec;
use tonic::Code;

use super::namespaces::Namespaces;
use super::state::{SandboxPhase, SandboxRecord, StateDir};
use super::{NetperfConfig, NetperfRuntime, Seams};
use crate::cri;

/// What the stand-ins were asked, in order: `ADD fake-a <netns>`, `netns create <name>`, ...
type Log = Arc<Mutex<Vec<String>>>;

fn short(netns: &str) -> &str {
    if netns.is_empty() {
        "<none>"
    } else {
        "<ns>"
    }
}

/// Plugins: ADD answers a result with one address, after `add_takes`, unless told to fail.
struct Plugins {
    log: Log,
    failing: Mutex<HashSet<(String, &'static str)>>,
    add_takes: Mutex<Duration>,
}

impl Plugins {
    fn fail(&self, plugin: &str, command: Command) {
        self.failing
            .lock()
            .unwrap()
            .insert((plugin.into(), command.env()));
    }

    fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }
}

impl Exec for Plugins {
    fn exec<'a>(&'a self, inv: Invocation<'a>) -> ExecFuture<'a> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!(
                "{} {} {}",
                inv.command.env(),
                inv.plugin,
                short(inv.netns)
            ));
            if inv.command == Command::Add {
                let takes = *self.add_takes.lock().unwrap();
                tokio::time::sleep(takes).await;
            }
            if self
                .failing
                .lock()
                .unwrap()
                .contains(&(inv.plugin.to_owned(), inv.command.env()))
            {
                return Err(netready_cni::Error::Plugin {
                    plugin: inv.plugin.into(),
                    command: inv.command.label(),
                    code: 11,
                    msg: "no luck today".into(),
                    details: String::new(),
                });
            }
            Ok(match inv.command {
                Command::Add => serde_json::to_vec(&serde_json::json!({
                    "cniVersion": "1.0.0",
                    "interfaces": [{"name": inv.ifname, "sandbox": inv.netns}],
                    "ips": [{"address": "10.1.0.7/24", "interface": 0}],
                }))
                .unwrap(),
                _ => Vec::new(),
            })
        })
    }
}

/// Namespaces as plain files, so their existence can be checked.
struct Files {
    log: Log,
    fail_create: Mutex<bool>,
    fail_remove: Mutex<bool>,
}

impl Namespaces for Files {
    fn create(&self, path: &Path, lo_up: bool) -> Result<(), String> {
        let what = if lo_up {
            "netns create, lo up"
        } else {
            "netns create"
        };
        self.log.lock().unwrap().push(what.into());
        if *self.fail_create.lock().unwrap() {
            return Err("out of namespaces".into());
        }
        std::fs::write(path, b"").map_err(|e| e.to_string())
    }

    fn remove(&self, path: &Path) -> Result<(), String> {
        self.log.lock().unwrap().push("netns remove".into());
        if *self.fail_remove.lock().unwrap() {
            return Err("device or resource busy".into());
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}

struct Harness {
    dir: tempfile::TempDir,
    log: Log,
    plugins: Arc<Plugins>,
    files: Arc<Files>,
    rt: NetperfRuntime,
}

fn config(dir: &Path) -> NetperfConfig {
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-test.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "test",
            "plugins": [{"type": "fake-a"}, {"type": "fake-b"}]}"#,
    )
    .unwrap();
    let mut cfg = NetperfConfig {
        state_dir: dir.join("state"),
        netns_dir: dir.join("netns"),
        results_file: Some(dir.join("results.jsonl")),
        ..Default::default()
    };
    std::fs::create_dir_all(&cfg.netns_dir).unwrap();
    cfg.cni.conf_dir = conf;
    cfg.cni.bin_dirs = vec![dir.join("no-bin")];
    // The plugin, so the stand-in plugins' log shows where loopback runs in the order.
    cfg.cni.loopback = super::Loopback::Plugin;
    cfg.retry.attempts = 1;
    cfg.retry.initial_backoff = Duration::from_millis(1);
    // No checks: the verdict comes at once, from no probes.
    cfg.checks.required.clear();
    cfg.checks.optional.clear();
    cfg
}

impl Harness {
    async fn new() -> Self {
        Self::with(tempfile::tempdir().unwrap(), |_| {}).await
    }

    async fn with(dir: tempfile::TempDir, tune: impl FnOnce(&mut NetperfConfig)) -> Self {
        let log: Log = Default::default();
        let plugins = Arc::new(Plugins {
            log: log.clone(),
            failing: Default::default(),
            add_takes: Default::default(),
        });
        let files = Arc::new(Files {
            log: log.clone(),
            fail_create: Default::default(),
            fail_remove: Default::default(),
        });
        let mut cfg = config(dir.path());
        tune(&mut cfg);
        let seams = Seams {
            exec: plugins.clone(),
            namespaces: files.clone(),
        };
        let rt = NetperfRuntime::start_with(cfg, None, seams, Vec::new())
            .await
            .unwrap();
        Harness {
            dir,
            log,
            plugins,
            files,
            rt,
        }
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    async fn run(&self, name: &str) -> Result<String, tonic::Status> {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: name.into(),
                        uid: format!("uid-{name}"),
                        namespace: "ns".into(),
                        attempt: 0,
                    }),
                    labels: [("netperf".to_string(), "true".to_string())].into(),
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.pod_sandbox_id)
    }

    async fn stop(&self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    async fn remove(&self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    fn netns_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("netns"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// The sandboxes a restart would find in the state directory.
    fn state_sandboxes(&self) -> Vec<String> {
        self.rt
            .inner
            .state
            .load()
            .0
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    /// Nothing of a failed sandbox is left: no netns, no record, no reserved name.
    fn assert_nothing_left(&self) {
        assert!(self.netns_files().is_empty(), "{:?}", self.netns_files());
        assert!(
            self.state_sandboxes().is_empty(),
            "{:?}",
            self.state_sandboxes()
        );
        let store = self.rt.store();
        assert!(store.sandboxes.is_empty());
        assert!(store.names.is_empty(), "{:?}", store.names);
    }
}

/// CreateContainer of a container `main` in `sandbox`, its log at `log_path`.
fn create_request(sandbox: &str, log_path: &str) -> cri::CreateContainerRequest {
    cri::CreateContainerRequest {
        pod_sandbox_id: sandbox.into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "main".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "registry.k8s.io/pause:3.9".into(),
                ..Default::default()
            }),
            log_path: log_path.into(),
            ..Default::default()
        }),
        sandbox_config: None,
    }
}

const ADD_CHAIN: [&str; 3] = ["ADD loopback <ns>", "ADD fake-a <ns>", "ADD fake-b <ns>"];

#[tokio::test]
async fn a_sandbox_that_makes_it_keeps_everything_and_stop_undoes_it() {
    let h = Harness::new().await;
    let id = h.run("ok").await.unwrap();
    assert_eq!(h.log(), [&["netns create"][..], &ADD_CHAIN].concat());
    assert_eq!(h.netns_files().len(), 1);
    assert_eq!(h.state_sandboxes().len(), 1);
    let rec = h.rt.sandbox(&id).unwrap();
    assert_eq!(rec.phase, SandboxPhase::Ready);
    assert_eq!(rec.ips, ["10.1.0.7"]);
    h.stop(&id).await.unwrap();
    assert_eq!(
        h.log(),
        ["DEL fake-b <ns>", "DEL fake-a <ns>", "netns remove"]
    );
    h.remove(&id).await.unwrap();
    h.assert_nothing_left();
}

#[tokio::test]
async fn a_failed_netns_leaves_no_record_and_frees_the_name() {
    let h = Harness::new().await;
    *h.files.fail_create.lock().unwrap() = true;
    let e = h.run("p").await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message().contains("failed to create network namespace")
            && e.message().contains("out of namespaces"),
        "{}",
        e.message()
    );
    // No plugin ran: there was nowhere to run it.
    assert_eq!(h.log(), ["netns create"]);
    h.assert_nothing_left();
    *h.files.fail_create.lock().unwrap() = false;
    h.run("p").await.expect("kubelet's retry gets the name");
}

/// Waits until `n` spares are made: netns files the state journal notes as spares.
async fn spares(h: &Harness, n: usize) -> Vec<PathBuf> {
    for _ in 0..500 {
        let files = h.netns_files();
        let made: Vec<PathBuf> =
            h.rt.inner
                .state
                .spares()
                .into_iter()
                .filter(|p| files.contains(p))
                .collect();
        if made.len() == n {
            return made;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} spares never ready: {:?}", h.netns_files());
}

#[tokio::test]
async fn with_a_pool_a_pod_gets_a_spare_netns_and_spares_never_outlive_netready() {
    let h = Harness::with(tempfile::tempdir().unwrap(), |c| c.netns_pool = 2).await;
    let before = spares(&h, 2).await;
    assert!(before
        .iter()
        .all(|p| p.file_name().unwrap().to_string_lossy().starts_with("cni-")));
    h.log();
    // Plugins slow enough that a refill started by the take would show before they end.
    *h.plugins.add_takes.lock().unwrap() = Duration::from_millis(50);
    let id = h.run("pooled").await.unwrap();
    *h.plugins.add_takes.lock().unwrap() = Duration::ZERO;
    // The pod's netns is a spare as it was; the refill makes one more in the background,
    // once the pod's call is done: not on the node's cores while its plugins run.
    let netns = h.rt.sandbox(&id).unwrap().netns;
    assert!(before.contains(&netns), "{netns:?} not one of {before:?}");
    assert!(netns.exists());
    let log = h.log();
    let last_add = log.iter().rposition(|l| l.starts_with("ADD")).unwrap();
    assert!(
        log.iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("netns"))
            .all(|(i, l)| l == "netns create" && i > last_add),
        "no namespace removed on the pod's path, only the refill making one after it: {log:?}"
    );
    let after = spares(&h, 2).await;
    assert!(!after.contains(&netns), "the pod's netns is no spare now");
    // A failed ADD removes the spare it took, as it would a netns it made.
    h.plugins.fail("fake-b", Command::Add);
    h.run("failing").await.unwrap_err();
    h.plugins.heal();
    let taken: Vec<_> = after.iter().filter(|p| !p.exists()).collect();
    assert_eq!(taken.len(), 1, "{after:?}");
    let refilled = spares(&h, 2).await;
    assert!(!refilled.contains(taken[0]));
    // A netready killed between saving a pod's record and forgetting the spare it took (the
    // journal notes the pod's netns as a spare too), with spares ready: its restart removes
    // those spares, not the pod's netns, and not a namespace it never noted (another
    // runtime's in the same directory).
    h.rt.inner.state.save_spare(&netns).unwrap();
    let Harness { dir, rt, .. } = h;
    let other = dir.path().join("netns").join("cni-not-ours");
    std::fs::write(&other, b"").unwrap();
    std::mem::forget(rt);
    let h = Harness::with(dir, |c| c.netns_pool = 1).await;
    let kept = spares(&h, 1).await;
    assert!(netns.exists(), "the pod's netns outlives the restart");
    assert!(
        other.exists(),
        "another runtime's netns is not netready's to remove"
    );
    assert!(refilled.iter().all(|p| !p.exists()), "{refilled:?}");
    assert_eq!(
        h.rt.inner.state.spares(),
        kept,
        "the pod's netns is no spare"
    );
    h.stop(&id).await.unwrap();
    h.remove(&id).await.unwrap();
    assert!(!netns.exists());
    // Stopped, netready removes its spares and forgets them.
    let Harness { dir, rt, .. } = h;
    drop(rt);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("netns"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, [other]);
    assert!(StateDir::open(&dir.path().join("state"))
        .unwrap()
        .spares()
        .is_empty());
}

#[tokio::test]
async fn by_default_lo_comes_up_with_the_netns_and_no_plugin_runs_for_it() {
    let h = Harness::with(tempfile::tempdir().unwrap(), |c| {
        c.cni.loopback = NetperfConfig::default().cni.loopback;
    })
    .await;
    let id = h.run("lo").await.unwrap();
    assert_eq!(
        h.log(),
        ["netns create, lo up", "ADD fake-a <ns>", "ADD fake-b <ns>"]
    );
    h.stop(&id).await.unwrap();
}

#[tokio::test]
async fn a_failed_loopback_removes_the_netns_and_runs_no_del() {
    let h = Harness::new().await;
    h.plugins.fail("loopback", Command::Add);
    let e = h.run("p").await.unwrap_err();
    assert_eq!(e.code(), Code::Unknown);
    assert!(
        e.message().contains("failed to set up loopback")
            && e.message()
                .contains("plugin type=\"loopback\" failed (add): code 11: no luck today"),
        "{}",
        e.message()
    );
    // The provider's chain never ran: nothing of it to DEL.
    assert_eq!(
        h.log(),
        ["netns create", "ADD loopback <ns>", "netns remove"]
    );
    h.assert_nothing_left();
}

#[tokio::test]
async fn an_add_failing_mid_chain_is_deleted_before_the_netns_goes() {
    let h = Harness::new().await;
    h.plugins.fail("fake-b", Command::Add);
    let e = h.run("p").await.unwrap_err();
    assert_eq!(e.code(), Code::Unknown);
    assert!(
        e.message()
            .contains("plugin type=\"fake-b\" failed (add): code 11: no luck today"),
        "{}",
        e.message()
    );
    assert_eq!(
        h.log(),
        [
            &["netns create"][..],
            &ADD_CHAIN,
            &["DEL fake-b <ns>", "DEL fake-a <ns>", "netns remove"],
        ]
        .concat()
    );
    h.assert_nothing_left();
    // The pod's attempt is kept for kubelet's retry: it counts from the first one.
    let t = h.rt.pod_timing("uid-p").unwrap();
    assert_eq!(t.attempt_count, 1);
    assert!(t.first_success.is_none());
}

#[tokio::test]
async fn the_answer_is_stamped_after_the_add_by_the_call_that_succeeds() {
    let h = Harness::new().await;
    h.plugins.fail("fake-b", Command::Add);
    h.run("p").await.unwrap_err();
    assert!(h.rt.pod_timing("uid-p").unwrap().answered.is_none());
    h.plugins.heal();
    h.run("p").await.unwrap();
    let t = h.rt.pod_timing("uid-p").unwrap();
    let (added, answered) = (t.first_success.unwrap(), t.answered.unwrap());
    assert!(answered.mono_ns >= added.mono_ns, "{t:?}");
}

#[tokio::test]
async fn retries_del_between_attempts_and_the_undo_once_after_the_last() {
    let h = Harness::with(tempfile::tempdir().unwrap(), |c| c.retry.attempts = 2).await;
    h.plugins.fail("fake-b", Command::Add);
    h.run("p").await.unwrap_err();
    let chain_del = ["DEL fake-b <ns>", "DEL fake-a <ns>"];
    assert_eq!(
        h.log(),
        [
            &["netns create"][..],
            &ADD_CHAIN,
            &chain_del,
            &ADD_CHAIN[1..],
            &chain_del,
            &["netns remove"],
        ]
        .concat()
    );
    h.assert_nothing_left();
    assert_eq!(h.rt.pod_timing("uid-p").unwrap().attempt_count, 2);
}

#[tokio::test]
async fn a_del_failing_in_the_undo_keeps_the_record_for_the_next_start() {
    let h = Harness::new().await;
    h.plugins.fail("fake-b", Command::Add);
    h.plugins.fail("fake-a", Command::Del);
    h.run("p").await.unwrap_err();
    // fake-b still got its DEL past fake-a's failure, in the chain's reverse order, and the
    // netns went.
    let log = h.log();
    assert_eq!(
        &log[log.len() - 3..],
        ["DEL fake-b <ns>", "DEL fake-a <ns>", "netns remove"]
    );
    assert!(h.netns_files().is_empty());
    // The record stays on disk: the only place fake-a's address is still written down.
    assert_eq!(h.state_sandboxes().len(), 1);
    assert!(h.rt.store().sandboxes.is_empty(), "not listed, not counted");
    assert!(
        h.rt.store().names.is_empty(),
        "kubelet's retry is not refused"
    );
    // The next start tries the teardown again, and this time it works.
    let dir = h.dir;
    let h = Harness::with(dir, |_| {}).await;
    assert_eq!(
        h.log(),
        ["DEL fake-b <none>", "DEL fake-a <none>", "netns remove"]
    );
    h.assert_nothing_left();
}

#[tokio::test]
async fn a_del_failing_at_stop_keeps_the_sandbox_for_kubelet_to_stop_again() {
    let h = Harness::new().await;
    let id = h.run("p").await.unwrap();
    h.log();
    h.plugins.fail("fake-a", Command::Del);
    let e = h.stop(&id).await.unwrap_err();
    assert_eq!(e.code(), Code::Unknown);
    assert!(
        e.message().contains("failed to destroy network")
            && e.message()
                .contains("plugin type=\"fake-a\" failed (delete)"),
        "{}",
        e.message()
    );
    // The netns stays: the plugins may still hold state in it.
    assert_eq!(h.log(), ["DEL fake-b <ns>", "DEL fake-a <ns>"]);
    assert_eq!(h.netns_files().len(), 1);
    let rec = h.rt.sandbox(&id).unwrap();
    assert_eq!(rec.phase, SandboxPhase::Ready);
    assert!(rec.del.unwrap().error.is_some());
    h.plugins.heal();
    h.stop(&id).await.unwrap();
    assert_eq!(
        h.log(),
        ["DEL fake-b <ns>", "DEL fake-a <ns>", "netns remove"]
    );
    h.remove(&id).await.unwrap();
    h.assert_nothing_left();
}

/// A record of a sandbox whose ADD a crash cut short, as RunPodSandbox leaves it on disk.
async fn interrupted(netns_made: bool) -> (tempfile::TempDir, SandboxRecord) {
    let h = Harness::new().await;
    let id = h.run("p").await.unwrap();
    let mut rec = h.rt.sandbox(&id).unwrap();
    rec.phase = SandboxPhase::Adding;
    rec.readiness = None;
    rec.cni_result = None;
    if !netns_made {
        std::fs::remove_file(&rec.netns).unwrap();
    }
    StateDir::open(&h.dir.path().join("state"))
        .unwrap()
        .save_sandbox(&rec)
        .unwrap();
    (h.dir, rec)
}

#[tokio::test]
async fn start_up_undoes_an_interrupted_add_with_the_same_steps() {
    let (dir, rec) = interrupted(true).await;
    let h = Harness::with(dir, |_| {}).await;
    assert_eq!(
        h.log(),
        ["DEL fake-b <ns>", "DEL fake-a <ns>", "netns remove"]
    );
    assert!(!rec.netns.exists());
    h.assert_nothing_left();
    // Its name is free for kubelet's next attempt.
    h.run("p").await.unwrap();
}

#[tokio::test]
async fn an_interrupted_add_whose_netns_never_came_is_deleted_with_an_empty_netns() {
    let (dir, _) = interrupted(false).await;
    let h = Harness::with(dir, |_| {}).await;
    assert_eq!(
        h.log(),
        ["DEL fake-b <none>", "DEL fake-a <none>", "netns remove"]
    );
    h.assert_nothing_left();
}

#[tokio::test]
async fn the_record_is_written_before_the_verdict_shows() {
    let h = Harness::new().await;
    let id = h.run("p").await.unwrap();
    let results = h.dir.path().join("results.jsonl");
    for _ in 0..200 {
        let finished =
            h.rt.sandbox(&id)
                .and_then(|s| s.readiness)
                .is_some_and(|r| r.finished.is_some());
        if finished {
            // Read at once: whoever sees the verdict finds the record.
            let text = std::fs::read_to_string(&results).unwrap();
            let recs: Vec<netready_record::PodRecord> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0].sandbox_id, id);
            assert!(recs[0].verdict.network_ready, "no required checks: ready");
            // Stopping a pod whose verdict is final adds no second record.
            h.stop(&id).await.unwrap();
            assert_eq!(std::fs::read_to_string(&results).unwrap(), text);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no verdict");
}

#[tokio::test]
async fn a_netns_that_will_not_go_fails_the_stop_and_keeps_the_sandbox() {
    let h = Harness::new().await;
    let id = h.run("p").await.unwrap();
    h.log();
    *h.files.fail_remove.lock().unwrap() = true;
    let e = h.stop(&id).await.unwrap_err();
    assert_eq!(e.code(), Code::Unknown);
    assert!(
        e.message().contains("failed to remove network namespace")
            && e.message().contains("device or resource busy"),
        "{}",
        e.message()
    );
    assert_eq!(h.rt.sandbox(&id).unwrap().phase, SandboxPhase::Ready);
    // kubelet stops again: DEL again (harmless), and the netns goes this time.
    *h.files.fail_remove.lock().unwrap() = false;
    h.stop(&id).await.unwrap();
    h.remove(&id).await.unwrap();
    h.assert_nothing_left();
    assert!(
        h.rt.inner.guards.lock().unwrap().is_empty(),
        "no lock outlives its sandbox"
    );
}

/// A pod made and recorded, its saved state then changed by `crash` to what a kill -9 at some
/// instant leaves, and netready started again on it. Returns the new runtime, the sandbox and
/// the results file.
async fn restarted_after(
    crash: impl FnOnce(&mut SandboxRecord),
    drop_results: bool,
) -> (Harness, String, PathBuf) {
    let h = Harness::new().await;
    let id = h.run("p").await.unwrap();
    let results = h.dir.path().join("results.jsonl");
    for _ in 0..200 {
        if results.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut rec = h.rt.sandbox(&id).unwrap();
    crash(&mut rec);
    StateDir::open(&h.dir.path().join("state"))
        .unwrap()
        .save_sandbox(&rec)
        .unwrap();
    if drop_results {
        std::fs::remove_file(&results).unwrap();
    }
    (Harness::with(h.dir, |_| {}).await, id, results)
}

#[tokio::test]
async fn a_pod_whose_traffic_a_crash_cut_short_still_gets_its_one_record() {
    // Checks done and ready, traffic pending, no record yet.
    let (h, id, results) = restarted_after(
        |rec| {
            let r = rec.readiness.as_mut().unwrap();
            assert!(r.ready());
            (r.traffic_wanted, r.traffic) = (true, None);
        },
        true,
    )
    .await;
    // Up to 5 s on a busy machine; the writer creates the file before it writes the line, so
    // only a whole line counts.
    for _ in 0..1000 {
        let text = std::fs::read_to_string(&results).unwrap_or_default();
        if text.ends_with('\n') {
            let recs: Vec<netready_record::PodRecord> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(recs.len(), 1);
            let t = recs[0].traffic.as_ref().expect("the traffic outcome");
            assert!(
                t.error.as_deref().unwrap().contains("no control pod"),
                "{t:?}"
            );
            assert!(recs[0].verdict.network_ready);
            h.stop(&id).await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no record after the restart");
}

#[tokio::test]
async fn a_crash_between_the_record_and_the_saved_verdict_records_the_pod_once() {
    // The record written, the verdict not saved.
    let (h, id, results) = restarted_after(
        |rec| {
            let r = rec.readiness.as_mut().unwrap();
            (r.finished, r.ready_at) = (None, None);
        },
        false,
    )
    .await;
    let r = h.rt.sandbox(&id).unwrap().readiness.unwrap();
    assert!(r.complete() && r.ready(), "{r:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = std::fs::read_to_string(&results).unwrap().lines().count();
    assert_eq!(lines, 1, "checked and recorded again");
    h.stop(&id).await.unwrap();
}

/// Nothing of a pod outlives its removal in memory: after many pods ran (a container started
/// in each, its verdict applied), were stopped and removed, and a late StopPodSandbox of each
/// reached netready after its remove (kubelet's pod worker racing its garbage collector), every
/// per-sandbox and per-pod map is empty.
#[tokio::test]
async fn removed_pods_leave_nothing_in_memory() {
    let h = Harness::new().await;
    for i in 0..50 {
        let id = h.run(&format!("p{i}")).await.unwrap();
        let container =
            h.rt.create_container(create_request(&id, ""))
                .await
                .unwrap()
                .container_id;
        h.rt.start_container(cri::StartContainerRequest {
            container_id: container,
        })
        .await
        .unwrap();
        h.stop(&id).await.unwrap();
        h.remove(&id).await.unwrap();
        let late = h.stop(&id).await.unwrap_err();
        assert_eq!(late.code(), Code::NotFound);
    }
    h.assert_nothing_left();
    let store = h.rt.store();
    assert!(store.containers.is_empty(), "{:?}", store.containers);
    assert!(store.pods.is_empty(), "{:?}", store.pods.keys());
    drop(store);
    let tasks = h.rt.inner.tasks.lock().unwrap().len();
    assert_eq!(tasks, 0, "readiness tasks");
    let guards: Vec<String> = h.rt.inner.guards.lock().unwrap().keys().cloned().collect();
    assert!(
        guards.is_empty(),
        "guards of removed sandboxes: {}",
        guards.len()
    );
}

/// A RunPodSandbox kubelet would never send whole: `INVALID_ARGUMENT` naming the field, as
/// containerd answers, and nothing made (no plugin, no namespace, no record, no name).
#[tokio::test]
async fn bad_sandbox_requests_name_the_field_and_make_nothing() {
    let h = Harness::new().await;
    let good = || cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "bad".into(),
            uid: "uid-bad".into(),
            namespace: "ns".into(),
            attempt: 0,
        }),
        labels: [("netperf".to_string(), "true".to_string())].into(),
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut cri::PodSandboxConfig)| {
        let mut c = good();
        f(&mut c);
        Some(c)
    };
    let annotated = |k: &'static str, v: &'static str| {
        with(&move |c: &mut cri::PodSandboxConfig| {
            c.annotations.insert(k.into(), v.into());
        })
    };
    let cases: Vec<(Option<cri::PodSandboxConfig>, &str)> = vec![
        (None, "config: missing"),
        (with(&|c| c.metadata = None), "config.metadata: missing"),
        (
            with(&|c| c.metadata.as_mut().unwrap().uid.clear()),
            "config.metadata.uid",
        ),
        (
            with(&|c| c.metadata.as_mut().unwrap().name.clear()),
            "config.metadata.name",
        ),
        (
            with(&|c| c.metadata.as_mut().unwrap().namespace.clear()),
            "config.metadata.namespace",
        ),
        (
            annotated("netready.io/traffic", "maybe"),
            "netready.io/traffic",
        ),
        (
            annotated("netready.io/http-count", "many"),
            "netready.io/http-count",
        ),
        (
            annotated("netready.io/command-timeout", "soon"),
            "netready.io/command-timeout",
        ),
        (
            annotated("netready.io/command-timeout", "0s"),
            "netready.io/command-timeout",
        ),
        (
            annotated("netready.io/http-load", "rate=fast"),
            "netready.io/http-load",
        ),
        (
            annotated("netready.io/checks-required", "telepathy"),
            "netready.io/checks-required",
        ),
        (
            annotated("kubernetes.io/ingress-bandwidth", "fast"),
            "kubernetes.io/ingress-bandwidth",
        ),
    ];
    for (config, field) in cases {
        let err =
            h.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config,
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
        assert_eq!(h.log(), Vec::<String>::new(), "{field}");
        h.assert_nothing_left();
    }
}

/// RunPodSandbox again for a pod attempt that has its sandbox: `ALREADY_EXISTS` naming the
/// sandbox, as containerd's name registrar answers; the first sandbox is untouched, and once
/// it is removed the name is free.
#[tokio::test]
async fn a_second_run_of_one_attempt_is_already_exists_and_keeps_the_first() {
    let h = Harness::new().await;
    let id = h.run("twice").await.unwrap();
    h.log();
    let err = h.run("twice").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    assert!(err.message().contains(&id), "{}", err.message());
    assert_eq!(h.log(), Vec::<String>::new(), "nothing made for the second");
    assert_eq!(h.rt.sandbox_count(), 1);
    // Out of order: a stop or remove of what never was.
    let err = h.stop("no-such-sandbox").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    h.remove("no-such-sandbox").await.unwrap();
    h.stop(&id).await.unwrap();
    h.remove(&id).await.unwrap();
    h.assert_nothing_left();
    let again = h.run("twice").await.unwrap();
    h.stop(&again).await.unwrap();
    h.remove(&again).await.unwrap();
    h.assert_nothing_left();
}

/// A container log path that would leave the sandbox's log directory (netready writes it as
/// root) is refused naming `config.log_path`, and nothing is written anywhere.
#[tokio::test]
async fn a_log_path_outside_the_log_directory_is_refused() {
    let h = Harness::new().await;
    let logs = h.dir.path().join("pods/ns_escape_uid");
    let id =
        h.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "escape".into(),
                    uid: "uid-escape".into(),
                    namespace: "ns".into(),
                    attempt: 0,
                }),
                labels: [("netperf".to_string(), "true".to_string())].into(),
                log_directory: logs.display().to_string(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .pod_sandbox_id;
    let outside = h.dir.path().join("outside.log");
    for path in [
        "../../outside.log".to_string(),
        outside.display().to_string(),
        "main/../../../outside.log".to_string(),
    ] {
        let err =
            h.rt.create_container(create_request(&id, &path))
                .await
                .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{path}: {err}");
        assert!(err.message().contains("config.log_path"), "{path}: {err}");
        assert!(!outside.exists(), "{path}");
    }
    h.stop(&id).await.unwrap();
    h.remove(&id).await.unwrap();
    h.assert_nothing_left();
}

/// Container calls out of order, answered as containerd answers them: NOT_FOUND for what
/// does not exist, FAILED_PRECONDITION for a state that does not allow the call, OK for a
/// remove of what is gone already.
#[tokio::test]
async fn container_calls_out_of_order_answer_as_containerd() {
    let h = Harness::new().await;
    let create = |sandbox: &str| create_request(sandbox, "");
    fn code<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Code> {
        r.map(|_| ()).map_err(|e| e.code())
    }
    use tonic::Code::{FailedPrecondition, NotFound};
    assert_eq!(
        code(h.rt.create_container(create("nope")).await),
        Err(NotFound)
    );
    let sid = h.run("order").await.unwrap();
    let cid =
        h.rt.create_container(create(&sid))
            .await
            .unwrap()
            .container_id;
    let start = || cri::StartContainerRequest {
        container_id: cid.clone(),
    };
    assert_eq!(code(h.rt.start_container(start()).await), Ok(()));
    assert_eq!(
        code(h.rt.start_container(start()).await),
        Err(FailedPrecondition),
        "started twice"
    );
    let stop = cri::StopContainerRequest {
        container_id: cid.clone(),
        timeout: 0,
    };
    assert_eq!(code(h.rt.stop_container(stop.clone()).await), Ok(()));
    assert_eq!(
        code(h.rt.stop_container(stop).await),
        Ok(()),
        "stopped twice"
    );
    assert_eq!(
        code(h.rt.start_container(start()).await),
        Err(FailedPrecondition),
        "started after its stop"
    );
    let remove = cri::RemoveContainerRequest {
        container_id: cid.clone(),
    };
    assert_eq!(code(h.rt.remove_container(remove.clone()).await), Ok(()));
    assert_eq!(
        code(h.rt.remove_container(remove).await),
        Ok(()),
        "removed twice"
    );
    assert_eq!(
        code(
            h.rt.container_status(cri::ContainerStatusRequest {
                container_id: cid.clone(),
                verbose: false,
            })
            .await
        ),
        Err(NotFound)
    );
    assert_eq!(code(h.rt.start_container(start()).await), Err(NotFound));
    h.stop(&sid).await.unwrap();
    assert_eq!(
        code(h.rt.create_container(create(&sid)).await),
        Err(FailedPrecondition),
        "a container in a stopped sandbox"
    );
    h.remove(&sid).await.unwrap();
    h.assert_nothing_left();
}
