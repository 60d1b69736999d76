//! `netready serve` as a real process in front of a test containerd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running `netready serve`; stopped with SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Netready {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    netns_dir: PathBuf,
}

impl Netready {
    /// Starts `bin serve --socket <dir>/netready.sock --upstream <upstream>` plus `extra` args
    /// (no `--upstream` when they hold `--no-upstream`), with its netns, state and CNI config
    /// directories under `dir`, and waits until the socket accepts connections.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        upstream: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_in(None, bin, dir, upstream, extra).await
    }

    /// As [`Netready::start`], inside the network namespace at `netns` (a node's), so the CNI
    /// plugins it runs build the pod network there.
    pub async fn start_in(
        netns: Option<&Path>,
        bin: &Path,
        dir: &Path,
        upstream: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(netns, bin, dir, upstream, extra, &[]).await
    }

    /// As [`Netready::start_in`], with `env` added to its environment.
    pub async fn start_with_env(
        netns: Option<&Path>,
        bin: &Path,
        dir: &Path,
        upstream: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let socket = dir.join("netready.sock");
        let log = dir.join("netready.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("serve");
        if !extra.contains(&"--metrics-address") {
            cmd.args(["--metrics-address", ""]);
        }
        for (flag, sub) in [
            ("--state-dir", "state"),
            ("--netns-dir", "netns"),
            ("--cni-conf-dir", "net.d"),
        ] {
            if !extra.contains(&flag) {
                std::fs::create_dir_all(dir.join(sub))?;
                cmd.arg(flag).arg(dir.join(sub));
            }
        }
        if !extra.contains(&"--no-upstream") {
            cmd.arg("--upstream").arg(upstream);
        }
        let child = cmd
            .envs(env.iter().copied())
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Netready {
            child: Some(child),
            socket,
            log,
            netns_dir: dir.join("netns"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("netready exited ({status}):\n{}", me.log());
            }
            if tokio::net::UnixStream::connect(&me.socket).await.is_ok() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("netready socket not ready after 20 s:\n{}", me.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// netready in `ctd`'s node netns in front of it, with its own bridge (`nrbr1`) and pod
    /// subnet (10.89.0.0/16) beside containerd's: a node as kubelet sees it.
    pub async fn beside(ctd: &crate::Containerd, bin: &Path) -> anyhow::Result<Self> {
        Self::beside_with(ctd, bin, &ctd.socket(), &[]).await
    }

    /// As [`Netready::beside`], with `upstream` as containerd's socket path (a path where it
    /// is not yet, say) and `extra` arguments.
    pub async fn beside_with(
        ctd: &crate::Containerd,
        bin: &Path,
        upstream: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = ctd.scratch("netready");
        std::fs::create_dir_all(dir.join("net.d"))?;
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "netperf", "plugins": [
            {"type": "bridge", "bridge": "nrbr1", "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/16"}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": dir.join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]});
        std::fs::write(dir.join("net.d/10-netperf.conflist"), conflist.to_string())?;
        Self::start_in(Some(ctd.node().path()), bin, &dir, upstream, extra).await
    }

    /// The directory its pod network namespaces are mounted in.
    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }

    /// The socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`, and reaps it: what a crash or an OOM kill leaves (its pods' namespaces stay
    /// mounted for a restarted netready to take over).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits up to `within` for it to exit on its own, and reaps it; its exit status.
    pub fn exited(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("netready still running after {within:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit; returns its exit status.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        match crate::terminate(&mut child, within)? {
            Some(status) => Ok(status),
            None => bail!(
                "netready did not exit within {within:?} of SIGTERM:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Netready {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate(Duration::from_secs(5));
        }
        // Pods a failed test never tore down keep their netns mounted: unmount them, or the
        // temp dir holding them cannot be removed.
        if let Ok(entries) = std::fs::read_dir(&self.netns_dir) {
            for e in entries.flatten() {
                let _ = netready_netns::remove_path(&e.path());
            }
        }
    }
}
