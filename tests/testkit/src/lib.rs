//! Test harness: real containerd + runc in a private netns, locally built OCI images, CRI
//! clients, and a kubelet-like pod lifecycle.
//!
//! Every test that uses it runs as root and fails (never skips) without root: CI runs as root.

pub mod containerd;
pub mod cri;
pub mod images;
pub mod netready;
pub mod node;
pub mod pod;
pub mod raw;
pub mod stats;
pub mod topology;

use std::sync::atomic::{AtomicU32, Ordering};

pub use containerd::Containerd;

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

/// Debian packages the harness runs.
pub const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "iproute2",
    "util-linux",
];

/// Installs the packages the harness needs with apt when one of their programs is missing.
pub fn ensure_packages() -> anyhow::Result<()> {
    let present = [
        "/usr/bin/containerd",
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/bin/busybox",
        "/usr/bin/nsenter",
    ]
    .iter()
    .all(|p| std::path::Path::new(p).exists());
    if present {
        return Ok(());
    }
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
            PACKAGES.join(" ")
        ))
        .status()?;
    anyhow::ensure!(
        status.success(),
        "apt-get install {} failed",
        PACKAGES.join(" ")
    );
    Ok(())
}
