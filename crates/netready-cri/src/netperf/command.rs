//! A netperf pod's container command: which commands may run, and how one is run.
//!
//! Once the pod is network-ready, its command runs inside the pod's netns, exec'd directly
//! (never through a shell), as the pod's `runAsUser` or nobody, confined
//! ([`netready_netns::confine`]); its output goes to the CRI log, its exit to
//! `ContainerStatus`. Only binaries on an allowlist run: netready is root on the node, and
//! labelling a pod must not give a shell on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::resource::Resource;
use serde::{Deserialize, Serialize};

/// Binaries that may run without configuration.
pub const DEFAULT_ALLOW: [&str; 3] = ["iperf3", "curl", "ping"];

/// Where a bare command name is looked up: a fixed list, never the pod's `PATH`.
pub const SEARCH_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The pod annotation bounding how long its command may run (a duration: `30s`, `5m`).
pub const TIMEOUT_ANNOTATION: &str = "netready.io/command-timeout";

/// The user a command runs as when the pod names none, or names root: nobody.
pub const NOBODY: u32 = 65534;

/// `[netperf.commands]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Binaries allowed besides iperf3, curl and ping: names (looked up in the fixed search
    /// path) or absolute paths.
    pub allow: Vec<String>,
    /// RLIMIT_NOFILE of a command.
    pub max_open_files: u64,
    /// RLIMIT_NPROC of a command (counted per user: all pods' commands as nobody share it).
    pub max_processes: u64,
    /// RLIMIT_AS of a command, bytes.
    pub max_address_space: u64,
    /// RLIMIT_FSIZE of a command, bytes.
    pub max_file_size: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            allow: Vec::new(),
            max_open_files: 1024,
            max_processes: 4096,
            max_address_space: 2 << 30,
            max_file_size: 64 << 20,
        }
    }
}

impl CommandsConfig {
    /// The limits a command gets; no core dumps.
    pub fn limits(&self) -> Vec<(Resource, u64)> {
        vec![
            (Resource::RLIMIT_NOFILE, self.max_open_files),
            (Resource::RLIMIT_NPROC, self.max_processes),
            (Resource::RLIMIT_AS, self.max_address_space),
            (Resource::RLIMIT_FSIZE, self.max_file_size),
            (Resource::RLIMIT_CORE, 0),
        ]
    }
}

/// A container's command as CreateContainer gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// `command` then `args`.
    pub argv: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Working directory; empty: `/`.
    pub working_dir: String,
    /// `runAsUser`, when the pod set one.
    pub run_as_user: Option<i64>,
    /// `runAsGroup`, when the pod set one.
    pub run_as_group: Option<i64>,
}

impl CommandSpec {
    /// A container that runs only the checks, as before commands ran: no command, or the
    /// pause/sleep a netperf pod's image uses as a marker.
    pub fn checks_only(&self) -> bool {
        match self.argv.first() {
            None => true,
            Some(a) => {
                let name = Path::new(a).file_name().and_then(|n| n.to_str());
                matches!(name, Some("pause" | "sleep")) || a.is_empty()
            }
        }
    }

    /// User and group ids it runs as: the pod's, or nobody for none or root.
    pub fn ids(&self) -> (u32, u32) {
        let pick = |v: Option<i64>| match v {
            Some(n) if n > 0 && n < u32::MAX as i64 => n as u32,
            _ => NOBODY,
        };
        let uid = pick(self.run_as_user);
        let gid = match self.run_as_group {
            Some(_) => pick(self.run_as_group),
            None if uid == NOBODY => NOBODY,
            None => uid,
        };
        (uid, gid)
    }
}

/// What [`resolve`] decided about `argv[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Allowed; the binary to exec.
    Run(PathBuf),
    /// Not on the allowlist: exit 126.
    NotAllowed(String),
    /// Allowed, but not on this node: exit 127.
    Missing(String),
}

fn search(name: &str) -> Option<PathBuf> {
    SEARCH_PATH
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Decides whether `argv0` may run under the allowlist `allow` (names or absolute paths),
/// comparing canonical paths so a symlink or `..` cannot dress one binary up as another.
pub fn resolve(argv0: &str, allow: &[String]) -> Resolved {
    let entries: Vec<&str> = DEFAULT_ALLOW
        .iter()
        .copied()
        .chain(allow.iter().map(String::as_str))
        .collect();
    let allowed_paths: Vec<PathBuf> = entries
        .iter()
        .filter_map(|e| {
            if e.starts_with('/') {
                std::fs::canonicalize(e).ok()
            } else {
                search(e).and_then(|p| std::fs::canonicalize(p).ok())
            }
        })
        .collect();
    if !argv0.contains('/') {
        if !entries.contains(&argv0) {
            return Resolved::NotAllowed(argv0.into());
        }
        return match search(argv0) {
            Some(p) => Resolved::Run(p),
            None => Resolved::Missing(argv0.into()),
        };
    }
    if !argv0.starts_with('/') {
        return Resolved::NotAllowed(argv0.into());
    }
    match std::fs::canonicalize(argv0) {
        Ok(real) if allowed_paths.contains(&real) => Resolved::Run(real),
        Ok(_) => Resolved::NotAllowed(argv0.into()),
        // Gone: allowed only if it names an allowed binary that is missing here.
        Err(_) if entries.contains(&argv0) => Resolved::Missing(argv0.into()),
        Err(_) => {
            let name = Path::new(argv0).file_name().and_then(|n| n.to_str());
            if name.is_some_and(|n| DEFAULT_ALLOW.contains(&n) || entries.contains(&n)) {
                Resolved::Missing(argv0.into())
            } else {
                Resolved::NotAllowed(argv0.into())
            }
        }
    }
}

/// The pod's command timeout from its annotations; `Err` names the annotation.
pub fn timeout(annotations: &BTreeMap<String, String>) -> Result<Option<Duration>, String> {
    match annotations.get(TIMEOUT_ANNOTATION) {
        None => Ok(None),
        Some(v) => {
            let shown: String = v.chars().take(64).collect();
            match humantime::parse_duration(v) {
                Ok(d) if d.is_zero() => Err(format!(
                    "annotation {TIMEOUT_ANNOTATION}: {shown:?}: not more than 0"
                )),
                Ok(d) => Ok(Some(d)),
                Err(e) => Err(format!("annotation {TIMEOUT_ANNOTATION}: {shown:?}: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_pause_and_sleep_only_check() {
        assert!(spec(&[]).checks_only());
        assert!(spec(&["/pause"]).checks_only());
        assert!(spec(&["sleep", "infinity"]).checks_only());
        assert!(!spec(&["ping", "-c", "1", "10.0.0.1"]).checks_only());
    }

    #[test]
    fn root_and_no_user_run_as_nobody_a_user_keeps_its_ids() {
        let mut s = spec(&["ping"]);
        assert_eq!(s.ids(), (NOBODY, NOBODY));
        s.run_as_user = Some(0);
        assert_eq!(s.ids(), (NOBODY, NOBODY));
        s.run_as_user = Some(1000);
        assert_eq!(s.ids(), (1000, 1000));
        s.run_as_group = Some(0);
        assert_eq!(s.ids(), (1000, NOBODY));
        s.run_as_group = Some(2000);
        assert_eq!(s.ids(), (1000, 2000));
    }

    #[test]
    fn only_allowed_binaries_resolve_whatever_the_spelling() {
        let none: Vec<String> = Vec::new();
        // The machines here have ping and a shell; the shell is never allowed.
        assert!(matches!(resolve("ping", &none), Resolved::Run(_)));
        assert_eq!(resolve("sh", &none), Resolved::NotAllowed("sh".into()));
        assert_eq!(
            resolve("/bin/sh", &none),
            Resolved::NotAllowed("/bin/sh".into())
        );
        assert_eq!(
            resolve("/usr/bin/../bin/sh", &none),
            Resolved::NotAllowed("/usr/bin/../bin/sh".into())
        );
        assert_eq!(
            resolve("./ping", &none),
            Resolved::NotAllowed("./ping".into())
        );
        let ping = search("ping").unwrap();
        assert!(matches!(
            resolve(ping.to_str().unwrap(), &none),
            Resolved::Run(_)
        ));
        // A symlink to a shell named like an allowed tool is still a shell.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("ping");
        std::os::unix::fs::symlink("/bin/sh", &fake).unwrap();
        assert!(matches!(
            resolve(fake.to_str().unwrap(), &none),
            Resolved::NotAllowed(_)
        ));
        assert_eq!(
            resolve("nonexistent-tool", &["nonexistent-tool".into()]),
            Resolved::Missing("nonexistent-tool".into())
        );
        assert!(matches!(
            resolve("/bin/sh", &["sh".into()]),
            Resolved::Run(_)
        ));
    }

    #[test]
    fn a_bad_timeout_names_the_annotation() {
        let a: BTreeMap<String, String> = [(TIMEOUT_ANNOTATION.into(), "soon".into())].into();
        assert!(timeout(&a).unwrap_err().contains(TIMEOUT_ANNOTATION));
        let a: BTreeMap<String, String> = [(TIMEOUT_ANNOTATION.into(), "0ms".into())].into();
        assert!(timeout(&a).unwrap_err().contains("not more than 0"));
        let long: BTreeMap<String, String> =
            [(TIMEOUT_ANNOTATION.into(), "9".repeat(1 << 20))].into();
        assert!(timeout(&long).unwrap_err().len() < 300);
        let a: BTreeMap<String, String> = [(TIMEOUT_ANNOTATION.into(), "2s".into())].into();
        assert_eq!(timeout(&a).unwrap(), Some(Duration::from_secs(2)));
    }
}
