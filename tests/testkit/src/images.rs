//! OCI image archives built locally, for `ctr images import` (no registry is reachable here).
//!
//! Two images: a pause image (a static C `pause` compiled here, as Kubernetes' own is) and a
//! busybox image from Debian's `busybox-static`, with the applets tests use linked in `/bin`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};

/// Name of the pause image containerd uses as `sandbox_image`.
pub const PAUSE: &str = "netready.test/pause:1";
/// Name of the busybox image test containers run.
pub const BUSYBOX: &str = "netready.test/busybox:1";

const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "true", "false", "ls", "env", "printf", "test", "hostname", "id",
    "ip", "ping", "wget", "nc", "httpd", "kill", "ps",
];

/// What goes into a single-layer image.
struct Layer {
    files: Vec<(String, PathBuf)>,
    symlinks: Vec<(String, String)>,
    dirs: Vec<&'static str>,
}

fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn layer_tar(layer: &Layer) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for d in &layer.dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    for (dst, src) in &layer.files {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, dst, &data[..])?;
    }
    for (link, target) in &layer.symlinks {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, link, target)?;
    }
    Ok(b.into_inner()?)
}

/// Writes an OCI image-layout archive with one layer to `out`.
fn write_archive(name: &str, layer: &Layer, entrypoint: &[&str], out: &Path) -> anyhow::Result<()> {
    let layer = layer_tar(layer)?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(':').next()},
        }],
    });
    let mut b = tar::Builder::new(std::fs::File::create(out)?);
    let mut add = |path: String, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &serde_json::to_vec(&index)?)?;
    for (digest, data) in [
        (&config_digest, &config),
        (&manifest_digest, &manifest),
        (&layer_digest, &layer),
    ] {
        add(format!("blobs/sha256/{}", &digest["sha256:".len()..]), data)?;
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// Compiles the pause process statically (the image has no libc).
fn compile_pause(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = dir.join("pause.c");
    std::fs::write(&src, include_str!("pause.c"))?;
    let bin = dir.join("pause");
    let out = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running cc to build the pause image (install gcc and libc6-dev)")?;
    if !out.status.success() {
        bail!("cc pause.c: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

/// Builds both archives in `dir`; returns `(pause, busybox)` archive paths.
pub fn build(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let pause = compile_pause(dir)?;
    let pause_tar = dir.join("pause.oci.tar");
    write_archive(
        PAUSE,
        &Layer {
            files: vec![("pause".into(), pause)],
            symlinks: vec![],
            dirs: vec![],
        },
        &["/pause"],
        &pause_tar,
    )?;
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing: install Debian's busybox-static");
    }
    let busybox_tar = dir.join("busybox.oci.tar");
    write_archive(
        BUSYBOX,
        &Layer {
            files: vec![("bin/busybox".into(), busybox)],
            symlinks: APPLETS
                .iter()
                .map(|a| (format!("bin/{a}"), "busybox".to_string()))
                .collect(),
            dirs: vec!["bin", "etc", "tmp", "proc", "sys", "dev", "root", "var"],
        },
        &["/bin/sh"],
        &busybox_tar,
    )?;
    Ok((pause_tar, busybox_tar))
}
