//! Every manifest under `kubemark-templates/` validates strictly (no unknown field) against
//! the Kubernetes 1.28 and 1.33 API schemas, with `kubernetes-validate` from PyPI.

use std::path::Path;
use std::process::Command;

#[test]
fn kubemark_templates_validate_against_1_28_and_1_33() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kubemark-templates");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let tool = netready_testkit::interop::python()
        .parent()
        .map(|bin| bin.join("kubernetes-validate"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "kubernetes-validate".into());
    for version in ["1.28.0", "1.33.0"] {
        let out = Command::new(&tool)
            .args(["--strict", "--no-warn", "-k", version])
            .args(&files)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} (scripts/install-deps.sh installs it): {e}",
                    tool.display()
                )
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{version}:\n{text}");
        assert!(!text.contains("ERROR"), "{version}:\n{text}");
    }
}
