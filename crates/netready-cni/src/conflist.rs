//! Loading the network configuration as libcni does: the lexically first `*.conf`,
//! `*.conflist` or `*.json` in the conf dir that parses; a single-plugin `.conf` becomes a
//! list of one. Plugin configs stay raw JSON, so any provider's keys reach its plugin.

use std::path::{Path, PathBuf};

use rscni_types::version::SpecVersion;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A network configuration list, ready to run.
#[derive(Debug, Clone)]
pub struct Conflist {
    /// The network name (`name`), injected into every plugin's config.
    pub name: String,
    /// The spec version (`cniVersion`), injected into every plugin's config.
    pub cni_version: String,
    /// Parsed version, for feature gates (CHECK from 0.4.0, STATUS/GC from 1.1.0).
    pub version: SpecVersion,
    /// `disableCheck`.
    pub disable_check: bool,
    /// Plugin configs in chain order, as written.
    pub plugins: Vec<Value>,
    /// The file it came from.
    pub source: PathBuf,
    /// sha256 of the file's bytes, for run fingerprints.
    pub sha256: String,
}

impl Conflist {
    /// Each plugin's `type`.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .map(|p| p.get("type").and_then(Value::as_str).unwrap_or("?"))
            .collect()
    }
}

/// Parses one file's bytes (`.conflist`, or a single-plugin `.conf`/`.json`).
pub fn parse(bytes: &[u8], source: &Path) -> Result<Conflist> {
    let bad = |reason: String| Error::Config {
        path: source.to_owned(),
        reason,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("key `name`: missing or not a string".into()))?
        .to_owned();
    let cni_version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("key `cniVersion`: missing or not a string".into()))?
        .to_owned();
    let version: SpecVersion = cni_version
        .parse()
        .map_err(|e| bad(format!("key `cniVersion`: {e}")))?;
    if !version.is_supported() {
        return Err(bad(format!(
            "key `cniVersion`: {cni_version} is older than 0.3.0, which netready does not run"
        )));
    }
    let plugins = match obj.get("plugins") {
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err(bad("key `plugins`: not an array".into())),
        // A .conf holds one plugin at top level.
        None => vec![v.clone()],
    };
    if plugins.is_empty() {
        return Err(bad("key `plugins`: empty".into()));
    }
    for (i, p) in plugins.iter().enumerate() {
        if p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(bad(format!(
                "key `plugins[{i}].type`: missing or not a string"
            )));
        }
    }
    let disable_check = obj
        .get("disableCheck")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Conflist {
        name,
        cni_version,
        version,
        disable_check,
        plugins,
        source: source.to_owned(),
        sha256: Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// The files of `dir` libcni would consider, in the order it tries them.
fn candidates(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Config {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads the lexically first configuration file of `dir` that parses.
pub fn load_dir(dir: &Path) -> Result<Conflist> {
    let files = candidates(dir)?;
    let mut last_err = None;
    for f in files {
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) => {
                last_err = Some(Error::Config {
                    path: f,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        match parse(&bytes, &f) {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, "skipping CNI config file");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| Error::Config {
        path: dir.to_owned(),
        reason: "no network config found (*.conf, *.conflist, *.json)".into(),
    }))
}

/// What [`load_dir`] would see in a conf dir, without reading any file: for every candidate
/// file (in order) its name, the identity of the entry itself and of what it resolves to.
/// Two stamps differ whenever a file was written in place, renamed over, added or removed,
/// or re-pointed through symlinks (a ConfigMap volume swaps its `..data` symlink).
///
/// Why a stamp and not inotify: [`load_dir`] is needed at pod rate (every RunPodSandbox), and
/// one `readdir` plus two `stat`s per candidate costs microseconds (measured: 7 µs for a
/// ConfigMap-style dir, 11 µs for three files, debug build on a busy 2-core machine; the
/// directory mtime it replaces took 0.6 µs), with no watcher thread, no lost-event or
/// queue-overflow handling, and it works on filesystems whose changes inotify does not see
/// (NFS, FUSE).
///
/// Each file is identified by (device, inode, size, mtime in ns, ctime in ns): a rename or a
/// symlink swap changes the inode, an in-place write the mtime and ctime, even within the
/// same second. The residual blind spot: an in-place rewrite of the same file to the same
/// size within one tick of the kernel's coarse timestamp clock (1–10 ms) of the stamp taken
/// before it. The next change of any kind is seen, and a loaded file is always read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirStamp(Vec<EntryStamp>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryStamp {
    path: PathBuf,
    /// `lstat`: a symlink's own inode (re-pointing it replaces it).
    own: Option<FileStamp>,
    /// `stat`: what the entry resolves to (absent for a dangling symlink).
    target: Option<FileStamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Stamps the configuration files of `dir` (see [`DirStamp`]).
pub fn stamp_dir(dir: &Path) -> Result<DirStamp> {
    Ok(DirStamp(
        candidates(dir)?
            .into_iter()
            .map(|path| EntryStamp {
                own: std::fs::symlink_metadata(&path)
                    .ok()
                    .map(|m| FileStamp::of(&m)),
                target: std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m)),
                path,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::configmap_update;

    #[test]
    fn first_parsable_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(
            dir.path().join("10-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"list","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), "x").unwrap();
        let c = load_dir(dir.path()).unwrap();
        assert_eq!(c.name, "single");
        assert_eq!(c.plugin_types(), ["bridge"]);
        assert_eq!(c.sha256.len(), 64);
    }

    #[test]
    fn errors_name_the_key() {
        let p = Path::new("x.conflist");
        let e = parse(br#"{"cniVersion":"1.0.0","plugins":[]}"#, p).unwrap_err();
        assert!(e.to_string().contains("`name`"), "{e}");
        let e = parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"x":1}]}"#,
            p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("plugins[0].type"), "{e}");
        let e = parse(br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#, p).unwrap_err();
        assert!(e.to_string().contains("0.2.0"), "{e}");
        let e = load_dir(Path::new("/nonexistent-netready")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-netready"), "{e}");
    }

    /// A ConfigMap volume as kubelet writes it: the file is a symlink into `..data`, itself a
    /// symlink to a timestamped directory that an update replaces atomically.
    fn list(name: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge"}}]}}"#)
    }

    #[test]
    fn stamp_is_stable_without_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), list("a")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let before = stamp_dir(dir.path()).unwrap();
        // Files libcni ignores do not count.
        std::fs::write(dir.path().join("notes.txt"), "yy").unwrap();
        std::fs::write(dir.path().join("kubeconfig"), "z").unwrap();
        assert_eq!(stamp_dir(dir.path()).unwrap(), before);
    }

    #[test]
    fn stamp_sees_an_in_place_write_of_the_same_size_in_the_same_second() {
        use std::time::{Duration, UNIX_EPOCH};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("10-a.conflist");
        let set_mtime = |ns: u64| {
            let t = UNIX_EPOCH + Duration::from_secs(1_900_000_000) + Duration::from_nanos(ns);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_times(std::fs::FileTimes::new().set_modified(t))
                .unwrap();
        };
        std::fs::write(&f, list("a")).unwrap();
        set_mtime(1);
        let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
        let before = stamp_dir(dir.path()).unwrap();
        std::fs::write(&f, list("b")).unwrap();
        set_mtime(2);
        let m = f.metadata().unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&m),
            ino,
            "written in place"
        );
        assert_eq!(m.len(), list("a").len() as u64, "same size");
        assert_ne!(stamp_dir(dir.path()).unwrap(), before);
        assert_eq!(load_dir(dir.path()).unwrap().name, "b");
    }

    #[test]
    fn stamp_sees_rename_over_and_an_earlier_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), list("a")).unwrap();
        let s0 = stamp_dir(dir.path()).unwrap();
        let tmp = dir.path().join(".tmp");
        std::fs::write(&tmp, list("b")).unwrap();
        std::fs::rename(&tmp, dir.path().join("10-a.conflist")).unwrap();
        let s1 = stamp_dir(dir.path()).unwrap();
        assert_ne!(s1, s0);
        std::fs::write(dir.path().join("05-c.conflist"), list("c")).unwrap();
        let s2 = stamp_dir(dir.path()).unwrap();
        assert_ne!(s2, s1);
        assert_eq!(load_dir(dir.path()).unwrap().name, "c");
        std::fs::remove_file(dir.path().join("05-c.conflist")).unwrap();
        assert_eq!(stamp_dir(dir.path()).unwrap(), s1);
    }

    #[test]
    fn stamp_sees_a_configmap_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        configmap_update(dir.path(), "..2026_01_01", &list("a")).unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().name, "a");
        let before = stamp_dir(dir.path()).unwrap();
        // Same length, so only the identity of the resolved file can tell.
        configmap_update(dir.path(), "..2026_01_02", &list("b")).unwrap();
        assert_ne!(stamp_dir(dir.path()).unwrap(), before);
        assert_eq!(load_dir(dir.path()).unwrap().name, "b");
    }

    #[test]
    fn stamp_of_a_missing_dir_names_it() {
        let e = stamp_dir(Path::new("/nonexistent-netready")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-netready"), "{e}");
    }
}
