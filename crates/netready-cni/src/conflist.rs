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

/// Loads the lexically first configuration file of `dir` that parses.
pub fn load_dir(dir: &Path) -> Result<Conflist> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
