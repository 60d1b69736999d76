//! Test harness: real containerd + runc in a private netns, locally built OCI images, CRI
//! clients, and a kubelet-like pod lifecycle.
//!
//! Every test that uses it runs as root and fails (never skips) without root: CI runs as root.

pub mod bench;
pub mod collector;
pub mod containerd;
pub mod cri;
pub mod fake_api;
pub mod images;
pub mod interop;
pub mod manifests;
pub mod netready;
pub mod node;
pub mod node_image;
pub mod pod;
pub mod prometheus;
pub mod raw;
pub mod record;
pub mod scrape;
pub mod stats;
pub mod topology;

use std::sync::atomic::{AtomicU32, Ordering};

pub use containerd::Containerd;

/// The repository's root (scripts, templates, fixtures).
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A name unique on this machine for this process: `nrtest-<pid>-<n>-<what>`.
pub fn unique_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nrtest-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test unless it runs as root: namespaces, mounts and containerd need it.
pub fn require_root() {
    assert!(
        nix_is_root(),
        "this test needs root (network namespaces, mounts, containerd); CI runs it as root"
    );
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Installs what the harness runs (containerd, runc, CNI plugins, busybox, ...) with the
/// project's own `scripts/install-deps.sh` when one of its programs is missing.
pub fn ensure_packages() -> anyhow::Result<()> {
    let present = [
        "/usr/bin/containerd",
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/bin/busybox",
        "/usr/bin/nsenter",
        "/usr/bin/shellcheck",
        "/usr/bin/buildah",
        "/usr/bin/mmdebstrap",
    ]
    .iter()
    .all(|p| std::path::Path::new(p).exists());
    if present {
        return Ok(());
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-deps.sh");
    let status = std::process::Command::new("bash").arg(&script).status()?;
    anyhow::ensure!(status.success(), "{} failed", script.display());
    Ok(())
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; past that, kills it and
/// returns `None` (the caller says what did not stop).
pub fn terminate(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
