//! The not-so-hollow node image (images/not-so-hollow-node), built with the project's own
//! `scripts/build-node-image.sh` and run the way kubelet runs a kubemark node pod: over CRI on a
//! real containerd, as a privileged container in a pod sandbox of its own (own network
//! namespace, no cgroup namespace: what containerd's CRI gives a privileged container).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::{unique_name, Containerd};

/// The image's name in the tests (registry-qualified, so containerd keeps it as is).
pub const IMAGE: &str = "localhost/netready/not-so-hollow-node:test";

/// The CNI network every node pod gives its netperf pods (inside the node pod's netns).
pub const NODE_POD_SUBNET: &str = "10.89.0.0/24";
/// The bridge's own address there: a same-node target every pod can ping.
pub const NODE_BRIDGE_IP: &str = "10.89.0.1";

/// Builds the image with `scripts/build-node-image.sh` (no kubelet: stand-in mode only) around
/// the given netready binary; returns the OCI archive, written under `dir`.
pub fn build(dir: &Path, netready_bin: &Path) -> anyhow::Result<PathBuf> {
    crate::require_root();
    crate::ensure_packages()?;
    let out = dir.join("not-so-hollow-node.oci.tar");
    let log = dir.join("build.log");
    let status = Command::new("bash")
        .arg(crate::repo().join("scripts/build-node-image.sh"))
        .args(["--kubelet", "none", "--image", IMAGE, "--netready-bin"])
        .arg(netready_bin)
        .arg("--output")
        .arg(&out)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?.try_clone()?)
        .status()
        .context("running scripts/build-node-image.sh")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<_> = text.lines().rev().take(40).collect();
        bail!(
            "build-node-image.sh failed ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(out)
}

/// Imports an OCI archive into containerd's `k8s.io` namespace, where its CRI finds images.
pub fn import(containerd: &Containerd, archive: &Path) -> anyhow::Result<()> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(containerd.socket())
        .args(["-n", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .context("running ctr images import")?;
    if !out.status.success() {
        bail!(
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Snapshots containerd holds that are not an image's committed layers: a container's
/// writable layer, or a view (what a container left behind would show up as).
pub fn active_snapshots(containerd: &Containerd) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(containerd.socket())
        .args(["-n", "k8s.io", "snapshots", "ls"])
        .output()
        .context("running ctr snapshots ls")?;
    anyhow::ensure!(out.status.success(), "ctr snapshots ls failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim_end().ends_with("Committed"))
        .map(str::to_owned)
        .collect())
}

/// What a node pod runs with.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    /// Node (and pod) name.
    pub name: String,
    /// Environment of the entrypoint (`KUBELET_MODE`, `STANDIN_ARGS`, ...).
    pub env: Vec<(String, String)>,
    /// netready's configuration file, mounted at /etc/netready/netready.toml.
    pub netready_toml: Option<String>,
    /// More host paths to mount read-only: (host path, container path).
    pub mounts: Vec<(PathBuf, String)>,
}

/// netready's configuration for a node pod in the tests: its pods are network-ready once they
/// can ping the node's bridge.
pub fn bridge_target_config() -> String {
    format!(
        "[netperf.checks]\nrequired = [\"same_node_pod\"]\noptional = []\nretry_interval = \"100ms\"\n\
         [netperf.targets]\nsame_node = [\"{NODE_BRIDGE_IP}\"]\n"
    )
}

fn node_conflist() -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "nodepod", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{NODE_POD_SUBNET}"}}]],
              "routes": [{{"dst": "0.0.0.0/0"}}]}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}"#
    )
}

/// One node pod: a privileged container of the image in its own pod sandbox.
pub struct NodePod {
    rt: RuntimeServiceClient<Channel>,
    /// Pod sandbox id.
    pub sandbox: String,
    /// Container id.
    pub container: String,
    /// The node pod's emptyDir (`NODE_STATE_DIR`): netready/, cni/, containerd/, pods/, ...
    pub state: PathBuf,
    log: PathBuf,
    cgroup: String,
}

impl NodePod {
    /// Runs a node pod as kubelet would: RunPodSandbox (privileged), CreateContainer
    /// (privileged, the emptyDir and config mounts, `NODE_NAME` and the spec's env),
    /// StartContainer.
    pub async fn run(containerd: &Containerd, spec: &NodeSpec) -> anyhow::Result<Self> {
        let (mut rt, _) = crate::cri::connect(&containerd.socket()).await?;
        let dir = containerd.scratch(&unique_name(&spec.name));
        let state = dir.join("emptydir");
        let cni = dir.join("net.d");
        let logs = dir.join("logs");
        for d in [&state, &cni, &logs] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(cni.join("10-nodepod.conflist"), node_conflist())?;
        let uid = format!(
            "{:016x}{:016x}",
            crate::pod::rand_u64(),
            crate::pod::rand_u64()
        );
        let parent = format!("{}/{}", containerd.cgroup_parent(), spec.name);
        let meta = cri::PodSandboxMetadata {
            name: spec.name.clone(),
            uid,
            namespace: "kubemark".into(),
            attempt: 0,
        };
        let mut config = netready_drive::sandbox_config(
            &meta,
            &HashMap::from([("name".to_string(), "hollow-node".to_string())]),
            &HashMap::new(),
            &logs,
            &parent,
        );
        if let Some(linux) = config.linux.as_mut() {
            if let Some(sc) = linux.security_context.as_mut() {
                sc.privileged = true;
            }
        }
        let sandbox = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox of the node pod")?
            .into_inner()
            .pod_sandbox_id;
        let mut mounts = vec![
            mount(&state, "/var/lib/not-so-hollow-node", false),
            mount(&cni, "/etc/cni/net.d", true),
        ];
        if let Some(toml) = &spec.netready_toml {
            let f = dir.join("netready.toml");
            std::fs::write(&f, toml)?;
            mounts.push(mount(&f, "/etc/netready/netready.toml", true));
        }
        mounts.extend(spec.mounts.iter().map(|(h, c)| mount(h, c, true)));
        let mut envs = vec![kv("NODE_NAME", &spec.name)];
        envs.extend(spec.env.iter().map(|(k, v)| kv(k, v)));
        let created = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "node".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    envs,
                    mounts,
                    log_path: "node/0.log".into(),
                    linux: Some(cri::LinuxContainerConfig {
                        security_context: Some(cri::LinuxContainerSecurityContext {
                            privileged: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(config),
            })
            .await;
        let container = match created {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                remove_sandbox(&mut rt, &sandbox).await;
                bail!("CreateContainer of the node: {e}");
            }
        };
        if let Err(e) = rt
            .start_container(cri::StartContainerRequest {
                container_id: container.clone(),
            })
            .await
        {
            let _ = rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: container.clone(),
                })
                .await;
            remove_sandbox(&mut rt, &sandbox).await;
            bail!("StartContainer of the node: {e}");
        }
        Ok(NodePod {
            rt,
            cgroup: format!("{parent}/{container}"),
            sandbox,
            container,
            state,
            log: logs.join("node/0.log"),
        })
    }

    /// The entrypoint's output so far (CRI log lines, without their prefixes).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The node container's cgroup, relative to a hierarchy's root: everything the node runs
    /// (containerd, netready, plugins, the stand-in) is charged below it.
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// The per-pod records netready wrote so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("netready/results.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until netready has written `n` records, or the container exited, or `timeout`.
    pub async fn wait_records(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if records.len() >= n {
                return Ok(records);
            }
            if let Some(code) = self.exit_code().await? {
                bail!(
                    "the node exited ({code}) after {} records:\n{}",
                    records.len(),
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} records after {timeout:?}:\n{}",
                    records.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The container's exit code once it has exited.
    pub async fn exit_code(&mut self) -> anyhow::Result<Option<i32>> {
        let status = self
            .rt
            .container_status(cri::ContainerStatusRequest {
                container_id: self.container.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("ContainerStatus without status")?;
        Ok(
            (status.state == cri::ContainerState::ContainerExited as i32)
                .then_some(status.exit_code),
        )
    }

    /// Waits for the container to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code().await? {
                return Ok(code);
            }
            if Instant::now() > deadline {
                bail!("the node still runs after {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// StopContainer as kubelet sends it when the node pod is deleted (SIGTERM, then SIGKILL
    /// after `grace`); returns the exit code.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<i32> {
        self.rt
            .stop_container(cri::StopContainerRequest {
                container_id: self.container.clone(),
                timeout: grace.as_secs() as i64,
            })
            .await
            .context("StopContainer of the node")?;
        self.exit_code()
            .await?
            .context("the node has not exited after StopContainer")
    }

    /// Removes the container and its sandbox.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: self.container.clone(),
            })
            .await
            .context("RemoveContainer of the node")?;
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: self.sandbox.clone(),
            })
            .await
            .context("StopPodSandbox of the node")?;
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: self.sandbox.clone(),
            })
            .await
            .context("RemovePodSandbox of the node")?;
        Ok(())
    }
}

async fn remove_sandbox(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let _ = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await;
}

fn mount(host: &Path, container: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn kv(k: &str, v: &str) -> cri::KeyValue {
    cri::KeyValue {
        key: k.into(),
        value: v.into(),
    }
}
