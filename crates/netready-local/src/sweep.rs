//! Removing what a `netready local` killed by SIGKILL (or a crash) could not remove itself.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::paths::{pid_of_netns, run_dir, NETNS_DIR, RUN_ROOT};

/// Kills every process whose network namespace is one of `namespaces` (a node's netready, a
/// control pod's iperf3, a plugin a dead netready left running) and waits for them to go.
pub fn kill_in(namespaces: &[PathBuf]) {
    let inodes: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id();
    let inside = || -> Vec<i32> {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid as u32 != me)
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .map(|m| inodes.contains(&(m.dev(), m.ino())))
                    .unwrap_or(false)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = inside();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            tracing::debug!(pid, "killing a process left in a cluster namespace");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the clusters of `netready local` runs whose process is gone: their processes,
/// namespaces (nodes, fabric, external, pods) and run directories. Returns how many.
pub fn sweep_stale() -> usize {
    let mut stale: Vec<u32> = Vec::new();
    if let Ok(d) = std::fs::read_dir(RUN_ROOT) {
        stale.extend(
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
    }
    if let Ok(d) = std::fs::read_dir(NETNS_DIR) {
        stale.extend(
            d.flatten()
                .filter_map(|e| pid_of_netns(e.file_name().to_str()?)),
        );
    }
    stale.sort_unstable();
    stale.dedup();
    stale.retain(|&pid| !alive(pid));
    for &pid in &stale {
        let root = run_dir(pid);
        let mut namespaces: Vec<PathBuf> = Vec::new();
        if let Ok(nodes) = std::fs::read_dir(&root) {
            for node in nodes.flatten() {
                if let Ok(pods) = std::fs::read_dir(node.path().join("netns")) {
                    namespaces.extend(pods.flatten().map(|e| e.path()));
                }
            }
        }
        if let Ok(d) = std::fs::read_dir(NETNS_DIR) {
            namespaces.extend(
                d.flatten()
                    .filter(|e| e.file_name().to_str().and_then(pid_of_netns) == Some(pid))
                    .map(|e| e.path()),
            );
        }
        kill_in(&namespaces);
        for ns in &namespaces {
            let _ = netready_netns::remove_path(ns);
        }
        let _ = std::fs::remove_dir_all(&root);
        tracing::info!(
            pid,
            namespaces = namespaces.len(),
            "removed a dead run's cluster"
        );
    }
    stale.len()
}
