//! A real containerd 1.6 + runc, private to one test.
//!
//! containerd runs inside its own "node" network namespace (so the CNI bridge and every pod
//! veth stay out of the machine's root namespace), its own mount namespace (so pod netns bind
//! mounts, rootfs overlays, `/run/containerd` and host-local's `/var/lib/cni` land in the test's
//! temp dir) and its own PID namespace, of which it is PID 1: killing it kills every shim and
//! container with it. So nothing outlives the harness, also when a test fails or panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use netready_netns::Netns;

use crate::{cri, images, unique_name};

/// The bridge network pods get (inside the node netns only).
pub const POD_SUBNET: &str = "10.88.0.0/24";

/// A running containerd; stops and removes everything it made when dropped.
pub struct Containerd {
    dir: tempfile::TempDir,
    node: Option<Netns>,
    child: Option<Child>,
    cgroup_parent: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn config(t: &Path) -> String {
    let t = t.display();
    format!(
        r#"version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{t}/containerd.sock"
[ttrpc]
  address = "{t}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{t}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{t}/net.d"
"#,
        pause = images::PAUSE,
    )
}

fn conflist() -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "nrtest", "plugins": [
  {{"type": "bridge", "bridge": "nr0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_SUBNET}"}}]],
              "routes": [{{"dst": "0.0.0.0/0"}}]}}}}
]}}"#
    )
}

// === impl Containerd ===

impl Containerd {
    /// Starts containerd, waits until its CRI answers, and imports the test images.
    pub async fn start() -> anyhow::Result<Self> {
        crate::require_root();
        crate::ensure_packages()?;
        let dir = tempfile::Builder::new()
            .prefix("nrtest-containerd-")
            .tempdir()?;
        let t = dir.path().to_owned();
        for d in [
            "netns",
            "cni-lib",
            "run-containerd",
            "net.d",
            "root",
            "state",
            "runc",
            "opt",
            "images",
        ] {
            std::fs::create_dir_all(t.join(d))?;
        }
        std::fs::write(t.join("config.toml"), config(&t))?;
        std::fs::write(t.join("net.d/10-nrtest.conflist"), conflist())?;
        let name = unique_name("node");
        // `lo` up, as on a real node: containerd's streaming server listens on 127.0.0.1,
        // which a restarted containerd cannot bind otherwise.
        let node = Netns::create_with("/run/netns", &name, true)?;
        let mut me = Containerd {
            cgroup_parent: format!("/{name}"),
            dir,
            node: Some(node),
            child: None,
        };
        me.spawn()?;
        me.wait_ready().await?;
        me.import_images()?;
        Ok(me)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let t = self.dir.path();
        // Mount points the private mount namespace covers with the test's own directories.
        for p in ["/run/netns", "/run/containerd", "/var/lib/cni"] {
            std::fs::create_dir_all(p)?;
        }
        let script = format!(
            "set -e; mount --bind {t}/netns /run/netns; mount --bind {t}/run-containerd /run/containerd; \
             mount --bind {t}/cni-lib /var/lib/cni; exec containerd --config {t}/config.toml",
            t = t.display()
        );
        let log = std::fs::File::create(t.join("containerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node().path().display()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
            ])
            .args(["--mount-proc", "--", "/bin/sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd under nsenter/unshare (util-linux)")?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("containerd exited ({status}):\n{}", self.log_tail());
                }
            }
            if self.socket().exists() {
                if let Ok((mut rt, _)) = cri::connect(&self.socket()).await {
                    if rt.version(cri::v1::VersionRequest::default()).await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("containerd not ready after 30 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn import_images(&self) -> anyhow::Result<()> {
        let (pause, busybox) = images::build(&self.dir.path().join("images"))?;
        for archive in [pause, busybox] {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive)
                .output()
                .context("running ctr images import")?;
            if !out.status.success() {
                bail!(
                    "ctr images import {}: {}",
                    archive.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// containerd's CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The node network namespace containerd and its pods' bridge live in.
    pub fn node(&self) -> &Netns {
        self.node.as_ref().expect("node netns lives until drop")
    }

    /// The cgroup parent test pods must use, so the harness can remove their cgroups.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// A scratch directory inside the harness's temp dir (removed with it).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).expect("creating scratch dir");
        p
    }

    /// Every process in containerd's PID namespace: containerd, shims, pause and containers.
    pub fn processes(&self) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt as _;
        let Some(child) = &self.child else {
            return Vec::new();
        };
        let Some(init) = children_of(child.id()).first().copied() else {
            return Vec::new();
        };
        let Ok(ns) = std::fs::metadata(format!("/proc/{init}/ns/pid")) else {
            return Vec::new();
        };
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/pid"))
                    .map(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
                    .unwrap_or(false)
            })
            .collect()
    }

    /// The last lines of containerd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Starts a killed containerd ([`Containerd::kill`]) again on the same socket and state,
    /// as systemd restarts it after a crash; waits until its CRI answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "containerd is still running");
        let _ = std::fs::remove_file(self.socket());
        self.spawn()?;
        self.wait_ready().await
    }

    /// Kills containerd and with it every shim and container (they share its PID namespace).
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // containerd is PID 1 of the namespace unshare forked: SIGKILL to it from here makes the
        // kernel kill every process in the namespace. (util-linux's --kill-child is not relied
        // on: Debian 12's unshare fails to arm it.)
        let init = children_of(child.id());
        for pid in &init {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        // Wait until it is gone, so its mounts and netns references are released before the
        // directories are removed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while init
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove_cgroups(&self) {
        // runc creates <hierarchy>/<cgroup_parent>/<id> in every cgroup v1 hierarchy (and the
        // unified one); they are empty once the PID namespace is gone.
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for h in hierarchies.flatten() {
            let root = h.path().join(self.cgroup_parent.trim_start_matches('/'));
            let deadline = Instant::now() + Duration::from_secs(5);
            while root.exists() && Instant::now() < deadline {
                if remove_cgroup_tree(&root).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_cgroup_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        self.remove_cgroups();
        if let Some(node) = self.node.take() {
            if let Err(e) = node.remove() {
                eprintln!("testkit: removing node netns: {e}");
            }
        }
    }
}
