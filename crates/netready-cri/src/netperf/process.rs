//! A container's command from start to reaping: waits for the pod's network verdict, runs the
//! command confined in the pod's netns, copies its output into the CRI log, and records its
//! exit in the container. StopContainer, StopPodSandbox, RemoveContainer and the pod's
//! timeout end it; nothing it forks outlives it (its process group is killed).

use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::time::Duration;

use netready_cni::Stamp;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::oneshot;

use super::command::{self, CommandSpec, Resolved};
use super::container;
use super::iperf;
use super::log;
use super::NetperfRuntime;

/// A running command's task: tell it to stop (with a grace period), wait for its end.
#[derive(Debug)]
pub(crate) struct Handle {
    stop: oneshot::Sender<Duration>,
    task: tokio::task::JoinHandle<()>,
}

/// CRI log lines longer than this are split into partial (`P`) lines, as containerd does.
const MAX_LINE: usize = 16 * 1024;

/// How the command ended, as ContainerStatus tells it.
struct Exit {
    code: i32,
    reason: &'static str,
    message: String,
}

impl Exit {
    fn cannot_run(code: i32, message: String) -> Self {
        Exit {
            code,
            reason: "ContainerCannotRun",
            message,
        }
    }
}

/// A command that ran, or was refused: how it ended, when its process started, and for an
/// iperf3 client its report or why that could not be read.
struct Ran {
    exit: Exit,
    started: Option<Stamp>,
    iperf3: Option<Result<netready_record::Iperf3, String>>,
}

impl From<Exit> for Ran {
    fn from(exit: Exit) -> Self {
        Ran {
            exit,
            started: None,
            iperf3: None,
        }
    }
}

impl NetperfRuntime {
    /// Starts the task that runs container `cid`'s command once sandbox `sid` is
    /// network-ready.
    pub(super) fn start_command(&self, sid: &str, cid: &str, spec: CommandSpec, log_path: String) {
        let (stop, stop_rx) = oneshot::channel();
        let rt = self.clone();
        let (sid, cid2) = (sid.to_owned(), cid.to_owned());
        let mut handles = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn(async move {
            if let Some(ran) = rt.run_command(&sid, &spec, &log_path, stop_rx).await {
                let exit = &ran.exit;
                log::append(
                    &log_path,
                    &[format!(
                        "netready: {} exited with code {}{}",
                        spec.argv[0],
                        exit.code,
                        if exit.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", exit.message)
                        }
                    )],
                );
                rt.record_exit(&sid, &cid2, &spec, ran).await;
            }
            rt.inner
                .commands
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&cid2);
        });
        handles.insert(cid.to_owned(), Handle { stop, task });
    }

    /// Stops container `cid`'s command, SIGTERM then SIGKILL after `grace`, and waits until it
    /// is reaped and its exit recorded. No command running: nothing to do.
    pub(super) async fn stop_command(&self, cid: &str, grace: Duration) {
        let handle = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cid);
        if let Some(Handle { stop, task }) = handle {
            let _ = stop.send(grace);
            if let Err(e) = task.await {
                tracing::error!(container = %cid, error = %e, "command task");
            }
        }
    }

    /// Records how the command ended: its record in the results file first (whoever sees the
    /// container exited finds it there), then the container's exit.
    async fn record_exit(&self, sid: &str, cid: &str, spec: &CommandSpec, ran: Ran) {
        let finished = Stamp::now();
        let found = {
            let store = self.store();
            store.sandboxes.get(sid).and_then(|s| {
                let c = s.containers.iter().find(|c| c.id == cid)?;
                Some((s.clone(), c.clone()))
            })
        };
        let Some((s, c)) = found else {
            return;
        };
        let fingerprint = self.fingerprint().await;
        let end = super::results::CommandEnd {
            argv: &spec.argv,
            started: ran.started,
            finished,
            exit: (ran.exit.code, ran.exit.reason, &ran.exit.message),
            iperf3: ran.iperf3.as_ref(),
        };
        let record =
            super::results::command_record(&self.inner.identity, &fingerprint, &s, &c, &end);
        self.inner.results.write(&record).await;
        let rec = {
            let mut store = self.store();
            let Some(s) = store.sandboxes.get_mut(sid) else {
                return;
            };
            let Some(c) = s.containers.iter_mut().find(|c| c.id == cid) else {
                return;
            };
            c.iperf = ran.iperf3.and_then(Result::ok);
            let exit = ran.exit;
            container::kill(c, finished, exit.code, exit.reason, &exit.message);
            s.clone()
        };
        self.persist_sandbox(&rec);
    }

    /// Waits for the verdict, runs the command; `None` when it never ran (network not
    /// ready, sandbox gone, stopped first): the container then stays a checks-only one.
    async fn run_command(
        &self,
        sid: &str,
        spec: &CommandSpec,
        log_path: &str,
        mut stop: oneshot::Receiver<Duration>,
    ) -> Option<Ran> {
        let (netns, annotations) =
            loop {
                let state = {
                    let store = self.store();
                    store.sandboxes.get(sid).map(|s| {
                        let verdict = s
                            .readiness
                            .as_ref()
                            .map(|r| (r.finished.is_some(), r.ready()));
                        (verdict, s.netns.clone(), s.annotations.clone())
                    })
                };
                match state {
                    None => return None,
                    // No checks planned, or they passed: run.
                    Some((None, netns, ann)) | Some((Some((_, true)), netns, ann)) => {
                        break (netns, ann)
                    }
                    Some((Some((true, false)), _, _)) => {
                        log::append(
                        log_path,
                        &["netready: the pod's network is not ready: its command does not run"
                            .to_string()],
                    );
                        return None;
                    }
                    Some((Some((false, false)), _, _)) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = &mut stop => return None,
                }
            };
        let timeout = match command::timeout(&annotations) {
            Ok(t) => t,
            Err(e) => return Some(Exit::cannot_run(126, e).into()),
        };
        let argv0 = &spec.argv[0];
        let program = match command::resolve(argv0, &self.cfg().commands.allow) {
            Resolved::Run(p) => p,
            Resolved::NotAllowed(a) => {
                return Some(
                    Exit::cannot_run(
                        126,
                        format!(
                            "{a} is not on netready's allowlist ([netperf.commands] allow): not run"
                        ),
                    )
                    .into(),
                )
            }
            Resolved::Missing(a) => {
                return Some(Exit::cannot_run(127, format!("{a}: not found on this node")).into())
            }
        };
        let (uid, gid) = spec.ids();
        // ping's ICMP datagram sockets, without CAP_NET_RAW: allowed for this group, in this
        // pod's netns only.
        let ns_path = netns.clone();
        let range = tokio::task::spawn_blocking(move || {
            netready_netns::Netns::open(&ns_path)?.run(move || {
                std::fs::write(
                    "/proc/sys/net/ipv4/ping_group_range",
                    format!("{gid} {gid}"),
                )
            })
        })
        .await;
        if let Ok(Ok(Err(e))) = range {
            tracing::warn!(sandbox = %sid, error = %e, "setting ping_group_range in the pod netns");
        }
        if let Some(port) = iperf::server_port(&spec.argv) {
            self.release_port(sid, port).await;
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let run = Run {
            program,
            spec,
            uid,
            gid,
            netns,
            log_path,
            deadline,
            timeout,
        };
        if !iperf::is_client(&spec.argv) {
            let (exit, started, _, _) = self.execute(&run, &spec.argv, &mut stop, false).await;
            return Some(Ran {
                exit,
                started,
                iperf3: None,
            });
        }
        // iperf3: JSON, a server of the pool, another one while the chosen one is busy.
        let host = iperf::target(&spec.argv).unwrap_or_default();
        let ports = self.cfg().traffic.ports();
        let mut attempt = 0;
        let mut first_start = None;
        loop {
            let lease = self.inner.iperf_pool.take(&host, &ports);
            let argv = iperf::prepare(&spec.argv, lease.as_ref().map(|l| l.port()));
            let (exit, started, stdout, stopped) = self.execute(&run, &argv, &mut stop, true).await;
            first_start = first_start.or(started);
            drop(lease);
            let parsed = iperf::parse(&stdout);
            let busy = matches!(&parsed, Err(e) if e.contains("busy"));
            attempt += 1;
            if busy && !stopped && attempt < 6 {
                log::append(
                    log_path,
                    &[format!(
                        "netready: {}; trying another server of the pool in 0.5 s",
                        parsed.as_ref().unwrap_err()
                    )],
                );
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = &mut stop => {}
                }
            }
            match &parsed {
                Ok(summary) => {
                    log::append(log_path, &[summary.line()]);
                    self.observe_iperf(summary);
                }
                Err(e) => log::append(log_path, &[format!("netready: {e}")]),
            }
            return Some(Ran {
                exit,
                started: first_start,
                iperf3: Some(parsed),
            });
        }
    }

    fn observe_iperf(&self, s: &netready_record::Iperf3) {
        let Some(m) = self.metrics() else {
            return;
        };
        m.traffic_throughput.observe(s.bits_per_second / 8.0);
        if let Some(r) = s.retransmits {
            m.traffic_retransmits.inc_by(r);
        }
        if let Some(p) = s.packets {
            m.traffic_udp_packets.inc_by(p);
        }
        if let Some(l) = s.lost_packets {
            m.traffic_udp_lost.inc_by(l);
        }
        if let Some(j) = s.jitter_ms {
            m.traffic_udp_jitter.observe(j / 1e3);
        }
    }

    /// Runs `argv` once, confined, to its end or until stopped or past the deadline; its
    /// exit, its start (none when it could not be started), its stdout when `keep` (else
    /// empty), and whether it was stopped.
    async fn execute(
        &self,
        run: &Run<'_>,
        argv: &[String],
        stop: &mut oneshot::Receiver<Duration>,
        keep: bool,
    ) -> (Exit, Option<Stamp>, Vec<u8>, bool) {
        let Run {
            program,
            spec,
            uid,
            gid,
            netns,
            log_path,
            deadline,
            timeout,
        } = run;
        let (uid, gid) = (*uid, *gid);
        let argv0 = &argv[0];
        let mut cmd = std::process::Command::new(program);
        // argv[0] as the pod spelled it, as a container runtime passes it.
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let confinement = netready_netns::confine::Confinement {
            uid,
            gid,
            limits: self.cfg().commands.limits(),
            cwd: if spec.working_dir.is_empty() {
                "/".into()
            } else {
                spec.working_dir.clone()
            },
        };
        if let Err(e) = netready_netns::confine::confine(&mut cmd, netns, &confinement) {
            return (
                Exit::cannot_run(126, format!("{argv0}: {e}")),
                None,
                Vec::new(),
                false,
            );
        }
        // Spawned on a tokio worker thread: the parent-death signal follows the thread that
        // forked, and workers live as long as netready (it never calls block_in_place, which
        // would retire one).
        let started = Stamp::now();
        let mut child = match tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                let exit = Exit::cannot_run(
                    code,
                    format!(
                        "starting {} as uid {uid} in {}: {e}",
                        program.display(),
                        confinement.cwd
                    ),
                );
                return (exit, None, Vec::new(), false);
            }
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let out = tokio::spawn(pump(
            child.stdout.take(),
            log_path.to_string(),
            "stdout",
            keep,
        ));
        let err = tokio::spawn(pump(
            child.stderr.take(),
            log_path.to_string(),
            "stderr",
            false,
        ));
        let group = |sig| {
            if let Some(pg) = pgid {
                let _ = killpg(pg, sig);
            }
        };
        let deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(*d).await,
                None => std::future::pending().await,
            }
        };
        let mut message = String::new();
        let mut reason = None;
        let mut stopped = false;
        let status = tokio::select! {
            s = child.wait() => s,
            grace = &mut *stop => {
                stopped = true;
                group(Signal::SIGTERM);
                let grace = grace.unwrap_or(Duration::ZERO);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        group(Signal::SIGKILL);
                        child.wait().await
                    }
                }
            }
            () = deadline => {
                group(Signal::SIGKILL);
                reason = Some("DeadlineExceeded");
                message = format!(
                    "killed after {} ({})",
                    humantime::format_duration(timeout.unwrap_or_default()),
                    command::TIMEOUT_ANNOTATION
                );
                child.wait().await
            }
        };
        // Whatever it forked goes with it.
        group(Signal::SIGKILL);
        let mut stdout = Vec::new();
        if let Ok(Ok(kept)) = tokio::time::timeout(Duration::from_secs(2), out).await {
            stdout = kept;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), err).await;
        let code = match status {
            Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
            Err(e) => {
                message = format!("waiting for the command: {e}");
                137
            }
        };
        let exit = Exit {
            code,
            reason: reason.unwrap_or(if code == 0 { "Completed" } else { "Error" }),
            message,
        };
        (exit, Some(started), stdout, stopped)
    }
}

/// One command's fixed parts across its attempts.
struct Run<'a> {
    program: std::path::PathBuf,
    spec: &'a CommandSpec,
    uid: u32,
    gid: u32,
    netns: std::path::PathBuf,
    log_path: &'a str,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
}

/// Copies a stream of the command into the CRI log, one entry per line; a line longer than
/// [`MAX_LINE`] goes in partial pieces.
/// With `keep`, also returns what it read (up to [`MAX_KEPT`]: an iperf3 JSON report).
async fn pump(
    r: Option<impl AsyncRead + Unpin>,
    path: String,
    stream: &'static str,
    keep: bool,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else { return kept };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if keep && kept.len() + n <= MAX_KEPT {
            kept.extend_from_slice(&chunk[..n]);
        }
        let mut entries: Vec<(bool, Vec<u8>)> = Vec::new();
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).take(i).collect();
            entries.push((false, line));
        }
        while buf.len() >= MAX_LINE {
            entries.push((true, buf.drain(..MAX_LINE).collect()));
        }
        log::append_stream(&path, stream, &entries);
    }
    if !buf.is_empty() {
        log::append_stream(&path, stream, &[(false, buf)]);
    }
    kept
}

/// The most of a command's stdout kept for reading its report.
const MAX_KEPT: usize = 8 << 20;
