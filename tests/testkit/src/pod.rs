//! A pod lifecycle as kubelet v1.28 drives it (see shared/traces/kubelet-1.28/normal.jsonl):
//! RunPodSandbox → PodSandboxStatus → ImageStatus (with pod annotations) → ImageStatus →
//! CreateContainer (image *id*, `main/0.log`) → StartContainer → ContainerStatus → ExecSync →
//! StopContainer → StopPodSandbox → RemoveContainer → RemovePodSandbox.
//!
//! The outcome keeps what a user would compare between two runtimes (states, IP presence, exit
//! code, reason, log lines, exec output) and leaves out what differs by nature (ids, times).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::images;

/// A pod to run.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Pod name (also the hostname).
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Pod labels (kubelet adds `io.kubernetes.pod.*`).
    pub labels: HashMap<String, String>,
    /// Directory kubelet would use: `/var/log/pods/<ns>_<name>_<uid>`.
    pub log_directory: PathBuf,
    /// cgroup parent (the harness's, so it can clean up).
    pub cgroup_parent: String,
    /// The container's image, as the user wrote it.
    pub image: String,
    /// Pod annotations (kubelet adds `kubernetes.io/config.source`).
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    /// A pod named `name` whose logs go under `log_root`.
    pub fn new(name: &str, log_root: &Path, cgroup_parent: &str) -> Self {
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            rand_u64() & 0xffff_ffff_ffff
        );
        let namespace = "default".to_string();
        PodSpec {
            log_directory: log_root.join(format!("{namespace}_{name}_{uid}")),
            name: name.into(),
            uid,
            namespace,
            labels: HashMap::new(),
            cgroup_parent: cgroup_parent.into(),
            image: images::BUSYBOX.into(),
            annotations: HashMap::new(),
        }
    }

    /// A netperf pod (label `netperf: "true"`) that needs no reachability target: its
    /// `netready.io/checks-required` and `-optional` annotations are empty, so it is network
    /// ready once its network is set up.
    pub fn netperf(name: &str, log_root: &Path, cgroup_parent: &str) -> Self {
        let mut spec = PodSpec::new(name, log_root, cgroup_parent);
        spec.labels.insert("netperf".into(), "true".into());
        for a in ["netready.io/checks-required", "netready.io/checks-optional"] {
            spec.annotations.insert(a.into(), String::new());
        }
        spec
    }

    /// The sandbox config kubelet sends for this pod.
    pub fn sandbox_config(&self, attempt: u32) -> cri::PodSandboxConfig {
        netready_drive::sandbox_config(
            &cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt,
            },
            &self.labels,
            &self.annotations,
            &self.log_directory,
            &self.cgroup_parent,
        )
    }
}

/// A random 64-bit number (std's hasher seed: no rand dependency in the harness).
pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// What a user compares between runtimes after one lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Sandbox state right after RunPodSandbox.
    pub sandbox_state: i32,
    /// Whether PodSandboxStatus had a pod IP.
    pub has_ip: bool,
    /// The image id CreateContainer got from ImageStatus had the `sha256:` form.
    pub image_id_is_digest: bool,
    /// Container state once started.
    pub running_state: i32,
    /// ExecSync `echo exec-ok`: exit code and stdout.
    pub exec: (i32, String),
    /// Container state, exit code and reason after StopContainer.
    pub exited: (i32, i32, String),
    /// Log lines without their timestamps (`stdout F hello`).
    pub log: Vec<String>,
    /// Sandbox state after StopPodSandbox.
    pub stopped_state: i32,
    /// Whether the sandbox was gone from ListPodSandbox after RemovePodSandbox.
    pub removed: bool,
}

/// How long each step took.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Step name and duration, in call order.
    pub steps: Vec<(&'static str, Duration)>,
}

impl Timings {
    /// Sum of all steps.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|(_, d)| *d).sum()
    }
}

macro_rules! timed {
    ($t:expr, $name:literal, $call:expr) => {{
        let start = Instant::now();
        let r = $call.await.with_context(|| $name)?.into_inner();
        $t.steps.push(($name, start.elapsed()));
        r
    }};
}

/// Runs one pod through its whole life on the given runtime.
pub async fn lifecycle(
    rt: &mut RuntimeServiceClient<Channel>,
    img: &mut ImageServiceClient<Channel>,
    pod: &PodSpec,
) -> anyhow::Result<(Outcome, Timings)> {
    let mut t = Timings::default();
    let config = pod.sandbox_config(0);
    let sandbox = timed!(
        t,
        "RunPodSandbox",
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
    )
    .pod_sandbox_id;
    let status = timed!(
        t,
        "PodSandboxStatus",
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
    )
    .status
    .context("PodSandboxStatus without status")?;
    let has_ip = status.network.as_ref().is_some_and(|n| !n.ip.is_empty());
    let spec = cri::ImageSpec {
        image: pod.image.clone(),
        annotations: config.annotations.clone(),
        ..Default::default()
    };
    let _ = timed!(
        t,
        "ImageStatus",
        img.image_status(cri::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
    );
    let image = timed!(
        t,
        "ImageStatus",
        img.image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: pod.image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
    )
    .image;
    let image_id = match image {
        Some(i) => i.id,
        None => {
            timed!(
                t,
                "PullImage",
                img.pull_image(cri::PullImageRequest {
                    image: Some(spec),
                    auth: None,
                    sandbox_config: Some(config.clone()),
                })
            )
            .image_ref
        }
    };
    let container = timed!(
        t,
        "CreateContainer",
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(cri::ContainerConfig {
                linux: Some(cri::LinuxContainerConfig::default()),
                // A netperf pod's marker command: netready runs only its checks (a shell is
                // not on its allowlist).
                command: if pod.labels.get("netperf").is_some_and(|v| v == "true") {
                    vec!["sleep".into(), "infinity".into()]
                } else {
                    vec!["/bin/sh".into(), "-c".into()]
                },
                ..netready_drive::container_config(
                    image_id.clone(),
                    &pod.image,
                    "trap 'echo bye; exit 0' TERM; echo hello; while :; do sleep 0.1; done",
                )
            }),
            sandbox_config: Some(config.clone()),
        })
    )
    .container_id;
    let _ = timed!(
        t,
        "StartContainer",
        rt.start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
    );
    let running = timed!(
        t,
        "ContainerStatus",
        rt.container_status(cri::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
    )
    .status
    .context("ContainerStatus without status")?;
    // A netperf pod answers from its network state, which its checks settle on their own task
    // beside the calls that follow RunPodSandbox (at once with no check to run, but on a
    // loaded machine after a few of them): probed again while it fails, as kubelet does.
    let probing = Instant::now();
    let exec = probe_until(
        rt,
        &container,
        &["echo", "exec-ok"],
        0,
        Duration::from_secs(5),
    )
    .await
    .context("ExecSync")?;
    t.steps.push(("ExecSync", probing.elapsed()));
    let _ = timed!(
        t,
        "StopContainer",
        rt.stop_container(cri::StopContainerRequest {
            container_id: container.clone(),
            timeout: 5,
        })
    );
    let exited = timed!(
        t,
        "ContainerStatus",
        rt.container_status(cri::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
    )
    .status
    .context("ContainerStatus without status")?;
    let log = read_log(&pod.log_directory.join("main/0.log"))?;
    let _ = timed!(
        t,
        "StopPodSandbox",
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
    );
    let stopped = timed!(
        t,
        "PodSandboxStatus",
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
    )
    .status
    .context("PodSandboxStatus without status")?;
    let _ = timed!(
        t,
        "RemoveContainer",
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: container.clone(),
        })
    );
    let _ = timed!(
        t,
        "RemovePodSandbox",
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
    );
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                id: sandbox.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    Ok((
        Outcome {
            sandbox_state: status.state,
            has_ip,
            image_id_is_digest: image_id.starts_with("sha256:"),
            running_state: running.state,
            exec: (
                exec.exit_code,
                String::from_utf8_lossy(&exec.stdout).into_owned(),
            ),
            exited: (exited.state, exited.exit_code, exited.reason),
            log,
            stopped_state: stopped.state,
            removed: left.is_empty(),
        },
        t,
    ))
}

/// Reads a CRI log file (`<RFC3339Nano> <stream> <P|F> <text>`) without the timestamps.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| match l.split_once(' ') {
            Some((_, rest)) => Ok(rest.to_string()),
            None => bail!("malformed CRI log line {l:?}"),
        })
        .collect()
}

/// A runtime client, as the tests hold it.
pub type Rt = RuntimeServiceClient<Channel>;

/// kubelet's exec readiness probe: ExecSync `cmd` (1 s timeout) every 50 ms until it exits
/// with `want` or `within` has passed; the last answer.
pub async fn probe_until(
    rt: &mut Rt,
    container: &str,
    cmd: &[&str],
    want: i32,
    within: Duration,
) -> anyhow::Result<cri::ExecSyncResponse> {
    let start = Instant::now();
    loop {
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|c| c.to_string()).collect(),
                timeout: 1,
            })
            .await?
            .into_inner();
        if r.exit_code == want || start.elapsed() > within {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RunPodSandbox for `pod` (attempt 0); the sandbox id.
pub async fn run_sandbox(rt: &mut Rt, pod: &PodSpec) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(pod.sandbox_config(0)),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// StopPodSandbox then RemovePodSandbox, as kubelet ends a pod; a sandbox already gone is an
/// error, since the test made it.
pub async fn stop_remove(rt: &mut Rt, id: &str) -> anyhow::Result<()> {
    Ok(netready_drive::stop_remove_sandbox(rt, id, netready_drive::IfGone::Error).await?)
}

/// CreateContainer (`main`, log `main/0.log`, an image id as kubelet passes it) and
/// StartContainer in `sandbox`; the container id.
pub async fn start_container(rt: &mut Rt, pod: &PodSpec, sandbox: &str) -> anyhow::Result<String> {
    start_container_with(rt, pod, sandbox, |_| {}).await
}

/// [`start_container`] with the container's config changed by `f` first (a command, args,
/// a security context).
pub async fn start_container_with(
    rt: &mut Rt,
    pod: &PodSpec,
    sandbox: &str,
    f: impl FnOnce(&mut cri::ContainerConfig),
) -> anyhow::Result<String> {
    let mut config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: format!("sha256:{}", "0".repeat(64)),
            user_specified_image: pod.image.clone(),
            ..Default::default()
        }),
        log_path: "main/0.log".into(),
        ..Default::default()
    };
    f(&mut config);
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod.sandbox_config(0)),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

/// Processes whose command line has each of `words` as a whole argument.
pub fn processes_with_args(words: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if words.iter().all(|w| args.iter().any(|a| a == w)) {
            out.push(pid);
        }
    }
    out
}

/// The pod IP PodSandboxStatus reports for sandbox `id` (empty when it has none).
pub async fn sandbox_ip(rt: &mut Rt, id: &str) -> anyhow::Result<String> {
    let s = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner();
    Ok(s.status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default())
}

/// ContainerStatus of container `id`.
pub async fn container_status(rt: &mut Rt, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await?
    .into_inner()
    .status
    .context("ContainerStatus without a status")
}

/// Polls container `id` until it has exited; its status. Fails after `within`.
pub async fn wait_exited(
    rt: &mut Rt,
    id: &str,
    within: Duration,
) -> anyhow::Result<cri::ContainerStatus> {
    let t0 = Instant::now();
    loop {
        let s = container_status(rt, id).await?;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(s);
        }
        anyhow::ensure!(
            t0.elapsed() < within,
            "still running after {within:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
