//! Every shell script in the repository passes shellcheck (found by its shebang, so a new
//! script cannot slip past).

use std::path::{Path, PathBuf};
use std::process::Command;

use netready_testkit::repo;

fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let name = e.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            shell_scripts(&path, out);
        } else if std::fs::read(&path).is_ok_and(|b| {
            let first = b.split(|c| *c == b'\n').next().unwrap_or_default();
            first.starts_with(b"#!") && (first.ends_with(b"bash") || first.ends_with(b"/sh"))
        }) {
            out.push(path);
        }
    }
}

#[test]
fn every_shell_script_passes_shellcheck() {
    netready_testkit::ensure_packages().unwrap();
    let mut scripts = Vec::new();
    shell_scripts(&repo(), &mut scripts);
    let names: Vec<_> = scripts
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for expected in [
        ".ci/run",
        "scripts/build-node-image.sh",
        "images/not-so-hollow-node/rootfs/usr/local/bin/not-so-hollow-node",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not found among {names:?}"
        );
    }
    let out = Command::new("shellcheck")
        .current_dir(repo())
        .args(["--severity=style", "--external-sources"])
        .args(&scripts)
        .output()
        .expect("running shellcheck (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
