//! Checking Kubernetes and Prometheus files with the tools their users trust: Kubernetes'
//! own OpenAPI schemas (`kubernetes-validate`, strict), the Prometheus Operator's PodMonitor
//! schema (`@kubernetes-models/prometheus-operator`, plus unknown-field rejection), and
//! `promtool`. All are installed by `scripts/install-deps.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// One YAML document of a rendered stream, with the cluster a `# cluster: X` comment named.
#[derive(Clone, Debug)]
pub struct Doc {
    /// `admin` or `master` (empty when no marker preceded it).
    pub cluster: String,
    /// The document's text.
    pub text: String,
}

impl Doc {
    /// The value of the document's top-level `kind:`.
    pub fn kind(&self) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .map(str::trim)
    }

    /// The value of the document's `metadata.name` (the first `  name:` line).
    pub fn name(&self) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("  name: "))
            .map(str::trim)
    }
}

/// Splits a YAML stream on `---` lines into documents that hold an object, each tagged with
/// the `# cluster: X` marker the scripts print before it.
pub fn split(stream: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut cluster = String::new();
    for part in stream.split("\n---\n").flat_map(|p| p.split("---\n")) {
        if let Some(c) = part.lines().find_map(|l| l.strip_prefix("# cluster: ")) {
            cluster = c.trim().to_owned();
        }
        if part.lines().any(|l| l.starts_with("kind: ")) {
            docs.push(Doc {
                cluster: cluster.clone(),
                text: part.to_owned(),
            });
        }
    }
    docs
}

/// Validates built-in Kubernetes objects strictly (no unknown field) against the 1.28 and
/// 1.33 OpenAPI schemas.
pub fn kubernetes_validate(docs: &[Doc], dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("builtin.yaml");
    let text: Vec<_> = docs.iter().map(|d| d.text.as_str()).collect();
    std::fs::write(&file, text.join("\n---\n"))?;
    let tool = crate::interop::python()
        .parent()
        .map(|bin| bin.join("kubernetes-validate"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "kubernetes-validate".into());
    for version in ["1.28.0", "1.33.0"] {
        let out = Command::new(&tool)
            .args(["--strict", "-k", version])
            .arg(&file)
            .output()
            .with_context(|| format!("{} (scripts/install-deps.sh installs it)", tool.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        if !out.status.success() || text.contains("ERROR") || passed != docs.len() {
            bail!(
                "kubernetes-validate {version}: {passed} of {} objects passed:\n{text}",
                docs.len()
            );
        }
    }
    Ok(())
}

/// Validates PodMonitor and PrometheusRule objects against the Prometheus Operator's schema,
/// rejecting fields its types do not declare.
pub fn validate_monitoring(docs: &[Doc], dir: &Path) -> anyhow::Result<String> {
    let file = dir.join("monitoring.yaml");
    let text: Vec<_> = docs.iter().map(|d| d.text.as_str()).collect();
    std::fs::write(&file, text.join("\n---\n"))?;
    let modules = std::env::var_os("NETREADY_TEST_NPM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/netready-test/npm".into())
        .join("node_modules");
    let out = Command::new("node")
        .arg(crate::repo().join("tests/kubemark/validate-monitoring.mjs"))
        .arg(&file)
        .env("NODE_PATH", &modules)
        .output()
        .context("running node (scripts/install-deps.sh installs the schema package)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("Prometheus Operator objects:\n{text}");
    }
    Ok(text)
}

/// `promtool check config` on a Prometheus configuration file.
pub fn promtool_check_config(file: &Path) -> anyhow::Result<String> {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(file)
        .output()
        .context("running promtool (Debian's prometheus package)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("promtool check config {}:\n{text}", file.display());
    }
    Ok(text)
}
