//! The Prometheus side of netready as files: the recording rules, their `PrometheusRule`, the
//! Grafana dashboard, and which series a PromQL expression reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

/// `kubemark-templates/prometheus/`: the rule file, its unit tests and its `PrometheusRule`.
pub fn rules_dir() -> PathBuf {
    crate::repo().join("kubemark-templates/prometheus")
}

/// The plain Prometheus rule file.
pub fn rules_file() -> PathBuf {
    rules_dir().join("netready-rules.yaml")
}

/// The Grafana dashboard.
pub fn dashboard_file() -> PathBuf {
    crate::repo().join("dashboards/netready-grafana.json")
}

/// A YAML file as JSON, read by PyYAML (`safe_load`) in the test venv.
pub fn yaml(path: &Path) -> anyhow::Result<Value> {
    let out = Command::new(crate::interop::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .context("python3 with PyYAML (scripts/install-deps.sh)")?;
    if !out.status.success() {
        bail!(
            "reading {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One recording rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its `record:` name.
    pub record: String,
    /// Its expression.
    pub expr: String,
}

/// Every recording rule of a rule file's `groups` (a plain file's root, a PrometheusRule's
/// `spec`), in order.
pub fn recording_rules(groups_holder: &Value) -> Vec<Rule> {
    groups_holder["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| {
            Some(Rule {
                record: r["record"].as_str()?.to_owned(),
                expr: r["expr"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// The queries of a Grafana dashboard: (panel title, expression) of every panel target and
/// every query variable.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(p) = panels.pop() {
        // Rows keep their panels inside when collapsed.
        panels.extend(p["panels"].as_array().into_iter().flatten());
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.to_owned(), e.to_owned()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] == "query" {
            let q = v["query"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .unwrap_or_default();
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

/// The series names a PromQL expression reads: identifiers outside string literals that
/// name a recorded series (they contain `:`) or a netready metric (`netready_...`). Function
/// names, keywords, label names and Grafana variables (`$node`) are not series names.
pub fn series_names(expr: &str) -> BTreeSet<String> {
    let mut code = String::with_capacity(expr.len());
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                code.push(' ');
            }
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                code.push(' ');
            }
            None => code.push(c),
        }
    }
    code.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '$')))
        .filter(|w| !w.starts_with('$') && !w.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|w| w.contains(':') || w.starts_with("netready_"))
        .map(str::to_owned)
        .collect()
}

/// The metric family a sample name belongs to, given the exported families: the name itself,
/// or a histogram's name without `_bucket`, `_sum` or `_count`.
pub fn family_of<'a>(name: &str, families: &'a BTreeSet<String>) -> Option<&'a String> {
    families.get(name).or_else(|| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| families.get(name.strip_suffix(s)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_skip_functions_labels_strings_and_variables() {
        let e = r#"topk(10, histogram_quantile(0.99, sum by (instance, le) (rate(netready_x_bucket{state="a:b",instance=~"$node"}[5m])))) or cluster:netready_y:p99_5m offset 1m"#;
        assert_eq!(
            series_names(e).into_iter().collect::<Vec<_>>(),
            ["cluster:netready_y:p99_5m", "netready_x_bucket"]
        );
    }

    #[test]
    fn histogram_lines_belong_to_their_family() {
        let f: BTreeSet<String> = ["netready_a_seconds".to_owned()].into();
        assert!(family_of("netready_a_seconds_bucket", &f).is_some());
        assert!(family_of("netready_a_seconds", &f).is_some());
        assert!(family_of("netready_b_seconds_count", &f).is_none());
    }
}
