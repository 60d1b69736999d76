//! `netready collect` and the forwarder of `netready serve`, as real processes: a node's
//! netready (real bridge + host-local plugins in a test node's namespace) forwards its
//! records to a collector on the node's loopback; either side is killed with SIGKILL mid-run
//! and nothing is lost or kept twice. Bad batches are refused whole, by a client nobody here
//! wrote (Python's `http.client`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netready_testkit::collector::{self, Collector};
use netready_testkit::cri as client;
use netready_testkit::netready::Netready;
use netready_testkit::node::{Leftovers, TestNode};
use netready_testkit::pod::{self, PodSpec, Rt};
use netready_testkit::scrape::value;

const BIN: &str = env!("CARGO_BIN_EXE_netready");
const RUN: &str = "collect-test";

/// The node's netready: no upstream, the node's bridge on `subnet`, records forwarded to
/// `collector`, `/metrics` on the node's loopback.
async fn netready(node: &TestNode, subnet: &str, collector: &str) -> Netready {
    let dir = node.path("nr");
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    std::fs::write(
        dir.join("net.d/10-nrtest.conflist"),
        node.bridge_conflist(subnet, vec![]).to_string(),
    )
    .unwrap();
    let config = dir.join("netready.toml");
    std::fs::write(
        &config,
        format!(
            "[netperf]\nrun_id = \"{RUN}\"\nresults_collector = \"{collector}\"\n\
             [netperf.checks]\nrequired = []\noptional = []\n"
        ),
    )
    .unwrap();
    Netready::start_in(
        Some(node.netns().path()),
        Path::new(BIN),
        &dir,
        Path::new(""),
        &[
            "--no-upstream",
            "--config",
            config.to_str().unwrap(),
            "--metrics-address",
            "127.0.0.1:9153",
        ],
    )
    .await
    .unwrap()
}

fn results(node: &TestNode) -> PathBuf {
    node.path("nr/state/results.jsonl")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Creates `n` netperf pods and waits until the local results file holds `total` records.
async fn pods(
    rt: &mut Rt,
    node: &TestNode,
    prefix: &str,
    n: usize,
    total: usize,
    ids: &mut Vec<String>,
) {
    for i in 0..n {
        let spec = PodSpec::netperf(&format!("{prefix}-{i}"), &node.path("pods"), "");
        ids.push(pod::run_sandbox(rt, &spec).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&results(node)).len() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} records",
            lines(&results(node)).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the collector holds `n` records of the run, then reads them as a client
/// would (`GET /v1/records`).
async fn collected(c: &Collector, n: usize, within: Duration) -> Vec<String> {
    let file = c.records_dir().join(format!("{RUN}.jsonl"));
    let deadline = Instant::now() + within;
    while lines(&file).len() < n {
        assert!(
            Instant::now() < deadline,
            "the collector holds {} of {n} records after {within:?}:\n{}",
            lines(&file).len(),
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = c
        .request("GET", &format!("/v1/records?run_id={RUN}"), b"")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines().map(str::to_owned).collect()
}

/// Every local record is in the collector exactly once, and nothing else is.
fn assert_exactly_once(local: &[String], collected: &[String]) {
    let mut counts: BTreeMap<&str, i32> = BTreeMap::new();
    for l in local {
        *counts.entry(l).or_default() += 1;
    }
    assert_eq!(counts.len(), local.len(), "the local file repeats a record");
    for l in collected {
        *counts.entry(l).or_default() -= 1;
    }
    let off: Vec<_> = counts.iter().filter(|(_, n)| **n != 0).collect();
    assert!(
        off.is_empty(),
        "records missing (1) or extra (-1) in the collector: {off:#?}"
    );
}

/// netready's own `/metrics`, scraped inside the node.
fn netready_metrics(node: &TestNode) -> String {
    let (status, text) = collector::http(
        node.netns().path(),
        "GET",
        "http://127.0.0.1:9153/metrics",
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    text
}

fn collector_metrics(c: &Collector) -> String {
    let (status, text) = c.request("GET", "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    text
}

async fn stop_all(rt: &mut Rt, ids: &[String]) {
    for id in ids {
        pod::stop_remove(rt, id).await.unwrap();
    }
}

/// Every pod stopped and removed leaves nothing on the node; once netready, the collector and
/// the node are dropped, their processes are gone and so is the node's directory.
async fn leave_nothing(mut rt: Rt, ids: &[String], node: TestNode, nr: Netready, c: Collector) {
    stop_all(&mut rt, ids).await;
    drop(rt);
    assert_eq!(node.settled_leftovers(), Leftovers::default());
    let pids = [nr.pid().unwrap(), c.pid().unwrap()];
    let dir = node.path("");
    drop((nr, c, node));
    assert_gone(&pids, &dir);
}

/// A test node with a collector in it and a netready forwarding to it, and a CRI client.
async fn start(subnet: &str) -> (TestNode, Collector, Netready, Rt) {
    let node = TestNode::new().unwrap();
    let c = Collector::start(Path::new(BIN), node.netns().path(), &node.path("collector"))
        .await
        .unwrap();
    let nr = netready(&node, subnet, &c.url()).await;
    let (rt, _) = client::connect(nr.socket()).await.unwrap();
    (node, c, nr, rt)
}

/// Processes gone and the node's directory removed once everything is dropped.
fn assert_gone(pids: &[u32], dir: &Path) {
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still there"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_holds_exactly_the_local_records() {
    let (node, mut c, mut nr, mut rt) = start("10.94.0.0/24").await;
    let mut ids = Vec::new();
    pods(&mut rt, &node, "a", 20, 20, &mut ids).await;
    let got = collected(&c, 20, Duration::from_secs(20)).await;
    let local = lines(&results(&node));
    // The same lines, byte for byte, in the same order: one forwarder, one file.
    assert_eq!(got, local);

    let m = netready_metrics(&node);
    assert_eq!(value(&m, "netready_results_forward_records_total"), 20.0);
    assert_eq!(value(&m, "netready_results_forward_backlog_bytes"), 0.0);
    for reason in ["unreachable", "server_error", "wrong_endpoint", "rejected"] {
        assert_eq!(
            value(
                &m,
                &format!("netready_results_forward_errors_total{{reason=\"{reason}\"}}")
            ),
            0.0,
            "{m}"
        );
    }
    let cm = collector_metrics(&c);
    assert_eq!(value(&cm, "netready_collector_records_total"), 20.0);
    assert_eq!(
        value(&cm, "netready_collector_duplicate_records_total"),
        0.0
    );
    let (status, runs) = c.request("GET", "/v1/runs", b"").unwrap();
    assert_eq!(status, 200);
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs["runs"][0]["run_id"], RUN);
    assert_eq!(runs["runs"][0]["records"], 20);

    // The last records of a node that stops (a node pod being deleted takes its emptyDir):
    // sent at SIGTERM, without waiting for the batch to fill.
    stop_all(&mut rt, &ids).await;
    ids.clear();
    pods(&mut rt, &node, "b", 5, 25, &mut ids).await;
    stop_all(&mut rt, &ids).await;
    drop(rt);
    let nr_pid = nr.pid().unwrap();
    assert!(nr.terminate(Duration::from_secs(15)).unwrap().success());
    let got = collected(&c, 25, Duration::from_millis(1)).await;
    assert_eq!(got, lines(&results(&node)));
    assert_eq!(node.settled_leftovers(), Leftovers::default());

    let c_pid = c.pid().unwrap();
    assert!(c.terminate(Duration::from_secs(5)).unwrap().success());
    let dir = node.path("");
    drop((nr, c, node));
    assert_gone(&[nr_pid, c_pid], &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_run_loses_nothing() {
    let (node, mut c, nr, mut rt) = start("10.94.1.0/24").await;
    let mut ids = Vec::new();
    pods(&mut rt, &node, "a", 10, 10, &mut ids).await;
    // Some batches go through, more records arrive, and the collector dies mid-run.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pods(&mut rt, &node, "b", 5, 15, &mut ids).await;
    c.kill().unwrap();
    // Pods keep coming while it is down; the forwarder backs off and keeps them.
    pods(&mut rt, &node, "c", 10, 25, &mut ids).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = netready_metrics(&node);
    assert!(
        value(
            &m,
            "netready_results_forward_errors_total{reason=\"unreachable\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        value(&m, "netready_results_forward_backlog_bytes") > 0.0,
        "{m}"
    );
    c.restart().await.unwrap();
    pods(&mut rt, &node, "d", 5, 30, &mut ids).await;
    // Backoff after ~3 s of outage is at most 4 s; then one batch.
    let got = collected(&c, 30, Duration::from_secs(30)).await;
    assert_exactly_once(&lines(&results(&node)), &got);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        value(
            &netready_metrics(&node),
            "netready_results_forward_backlog_bytes"
        ),
        0.0
    );

    leave_nothing(rt, &ids, node, nr, c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netready_killed_mid_forwarding_loses_nothing() {
    let (node, c, mut nr, mut rt) = start("10.94.2.0/24").await;
    let mut ids = Vec::new();
    pods(&mut rt, &node, "a", 10, 10, &mut ids).await;
    collected(&c, 10, Duration::from_secs(20)).await;
    // Ten more, and netready is killed while they wait for their batch (it lingers 1 s).
    pods(&mut rt, &node, "b", 10, 20, &mut ids).await;
    nr.kill().unwrap();
    drop(rt);
    // And its position is lost too, as in a crash between the collector's 2xx and the
    // position reaching the disk: the restarted netready sends everything again.
    std::fs::remove_file(node.path("nr/state/results.forwarded")).unwrap();
    let nr = netready(&node, "10.94.2.0/24", &c.url()).await;
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    pods(&mut rt, &node, "c", 10, 30, &mut ids).await;
    let got = collected(&c, 30, Duration::from_secs(20)).await;
    assert_exactly_once(&lines(&results(&node)), &got);
    let cm = collector_metrics(&c);
    assert!(
        value(&cm, "netready_collector_duplicate_records_total") >= 10.0,
        "{cm}"
    );
    assert_eq!(value(&cm, "netready_collector_records_total"), 30.0);

    // The restarted netready took the killed one's pods over: all of them go.
    leave_nothing(rt, &ids, node, nr, c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_skipped_and_the_rest_go_through() {
    let (node, c, nr, mut rt) = start("10.94.3.0/24").await;
    let mut ids = Vec::new();
    pods(&mut rt, &node, "a", 5, 5, &mut ids).await;
    // A line the collector refuses (what a write torn by a crash leaves), amid good ones.
    std::fs::OpenOptions::new()
        .append(true)
        .open(results(&node))
        .unwrap()
        .write_all(b"{\"torn\": \n")
        .unwrap();
    pods(&mut rt, &node, "b", 10, 16, &mut ids).await;
    let good: Vec<String> = lines(&results(&node))
        .into_iter()
        .filter(|l| !l.starts_with("{\"torn\""))
        .collect();
    let got = collected(&c, 15, Duration::from_secs(20)).await;
    assert_exactly_once(&good, &got);
    // The refused line alone was skipped, loudly, and forwarding went on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = netready_metrics(&node);
        if value(&m, "netready_results_forward_backlog_bytes") == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&m, "netready_results_forward_backlog_bytes"),
        0.0,
        "{m}"
    );
    assert_eq!(
        value(&m, "netready_results_forward_rejected_records_total"),
        1.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "netready_results_forward_errors_total{reason=\"rejected\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        nr.log().contains("THE COLLECTOR REFUSED A RECORD"),
        "{}",
        nr.log()
    );

    leave_nothing(rt, &ids, node, nr, c).await;
}

fn rec(run: &str, node: &str, sandbox: &str) -> String {
    format!(
        r#"{{"schema_version":1,"run_id":"{run}","node":"{node}","sandbox_id":"{sandbox}","verdict":{{"network_ready":true,"reason":null}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_whole() {
    let node = TestNode::new().unwrap();
    let dir = node.path("");
    let mut c = Collector::start(Path::new(BIN), node.netns().path(), &node.path("collector"))
        .await
        .unwrap();
    let good = format!("{}\n{}\n", rec("good", "n1", "s1"), rec("good", "n1", "s2"));
    let bad: [(String, &str); 5] = [
        (
            format!("{good}{}\n", r#"{"run_id":"good","sandbox_id":"s3"}"#),
            "line 3: field `node`: missing",
        ),
        (
            format!("{good}not json\n"),
            "line 3: not JSON: expected ident at line 1 column 2",
        ),
        (
            format!("{}\n{good}", rec("../escape", "n1", "s9")),
            "line 1: field `run_id`: \"../escape\" contains `/`",
        ),
        (
            format!("{good}{}\n", rec("a..b", "n1", "s9")),
            "line 3: field `run_id`: \"a..b\" contains `..`",
        ),
        (format!("{good}[1,2]\n"), "line 3: not a JSON object"),
    ];
    for (body, answer) in &bad {
        let (status, text) = post(&c, body.as_bytes());
        assert_eq!((status, text.trim()), (400, *answer), "{body}");
    }
    // 9 MiB of good records: over the 8 MiB limit, refused whole (the body is read to its
    // end, so the client gets the answer).
    let mut big = String::new();
    let mut i = 0;
    while big.len() <= 9 << 20 {
        big.push_str(&rec("good", "n2", &format!("big-{i}")));
        big.push('\n');
        i += 1;
    }
    let (status, text) = post(&c, big.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("over the limit of 8388608 bytes"), "{text}");
    // A declared length far over the limit is answered before any of the body is sent.
    let answer = raw(
        node.netns().path(),
        "POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // Nothing of any of them was kept.
    assert_eq!(
        std::fs::read_dir(c.records_dir()).unwrap().count(),
        0,
        "files in the collector's directory"
    );
    assert_eq!(
        c.request("GET", "/v1/runs", b"").unwrap(),
        (200, "{\"runs\":[]}".into())
    );
    assert_eq!(
        c.request("GET", "/v1/records?run_id=good", b"").unwrap().0,
        404
    );
    assert_eq!(
        c.request("GET", "/v1/records?run_id=..%2Fx", b"")
            .unwrap()
            .0,
        400
    );
    let cm = collector_metrics(&c);
    assert_eq!(
        value(
            &cm,
            "netready_collector_rejected_batches_total{reason=\"invalid\"}"
        ),
        5.0
    );
    assert_eq!(
        value(
            &cm,
            "netready_collector_rejected_batches_total{reason=\"too_large\"}"
        ),
        2.0
    );
    promtool(&cm);

    // The good batch, twice: kept once, the second answered as a success.
    assert_eq!(post(&c, good.as_bytes()).0, 204);
    assert_eq!(post(&c, good.as_bytes()).0, 204);
    // A restarted collector still knows what it has.
    c.kill().unwrap();
    c.restart().await.unwrap();
    let more = format!("{good}{}\n", rec("good", "n2", "s1"));
    assert_eq!(post(&c, more.as_bytes()).0, 204);
    let (status, kept) = c.request("GET", "/v1/records?run_id=good", b"").unwrap();
    assert_eq!((status, kept), (200, more));
    let cm = collector_metrics(&c);
    assert_eq!(
        value(&cm, "netready_collector_duplicate_records_total"),
        2.0
    );
    assert_eq!(value(&cm, "netready_collector_records_total"), 1.0);
    assert_eq!(c.request("DELETE", "/v1/records", b"").unwrap().0, 405);
    assert_eq!(c.request("GET", "/nothing", b"").unwrap().0, 404);

    let pid = c.pid().unwrap();
    drop((c, node));
    assert_gone(&[pid], &dir);
}

fn post(c: &Collector, body: &[u8]) -> (u16, String) {
    c.request("POST", "/v1/records", body).unwrap()
}

/// Sends `request` as is from inside `netns` and returns all it gets back.
fn raw(netns: &Path, request: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "--",
            "python3",
            "-c",
            "import socket, sys\n\
             s = socket.create_connection(('127.0.0.1', 8080), timeout=10)\n\
             s.sendall(sys.argv[1].encode())\n\
             out = b''\n\
             while True:\n    b = s.recv(65536)\n    if not b: break\n    out += b\n\
             sys.stdout.buffer.write(out)",
            request,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `promtool check metrics` (Debian's prometheus package) accepts `text`.
fn promtool(text: &str) {
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
