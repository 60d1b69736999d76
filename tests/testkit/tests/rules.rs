//! The recording rules under `kubemark-templates/prometheus/`: Prometheus' own `promtool`
//! accepts them and passes their unit tests, every rule is unit-tested, names follow
//! `level:metric:operations`, and the `PrometheusRule` holds exactly the same rules (it is what
//! `scripts/prometheusrule.sh` prints).

use std::collections::BTreeSet;
use std::process::Command;

use netready_testkit::prometheus::{recording_rules, rules_dir, rules_file, series_names, yaml};
use netready_testkit::repo;

fn promtool(args: &[&str]) -> String {
    netready_testkit::ensure_packages().unwrap();
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool (Debian's prometheus package, scripts/install-deps.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let rules = recording_rules(&yaml(&rules_file()).unwrap());
    let checked = promtool(&["check", "rules", "netready-rules.yaml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "netready-rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_rule_is_unit_tested_and_named_level_metric_operations() {
    let rules = recording_rules(&yaml(&rules_file()).unwrap());
    assert!(rules.len() >= 30, "{rules:?}");
    let tests = yaml(&rules_dir().join("netready-rules.test.yaml")).unwrap();
    let tested: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["promql_expr_test"].as_array().into_iter().flatten())
        .flat_map(|e| series_names(e["expr"].as_str().unwrap()))
        .collect();
    let untested: Vec<_> = rules
        .iter()
        .filter(|r| !tested.contains(&r.record))
        .map(|r| &r.record)
        .collect();
    assert!(
        untested.is_empty(),
        "rules without a unit test: {untested:?}"
    );

    let mut seen = BTreeSet::new();
    for r in &rules {
        assert!(seen.insert(&r.record), "{} recorded twice", r.record);
        let parts: Vec<&str> = r.record.split(':').collect();
        let [level, metric, ops] = parts[..] else {
            panic!("{} is not level:metric:operations", r.record);
        };
        let word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        assert!(
            word(level) && word(ops) && metric.starts_with("netready_") && word(metric),
            "{} is not level:metric:operations",
            r.record
        );
        // The metric part names what the rule reads (a netready metric or an earlier rule's
        // metric part), give or take a suffix: `_total`, `_bucket`, a selected label value.
        let reads = series_names(&r.expr);
        let related = |m: &str| m.starts_with(metric) || metric.starts_with(m);
        assert!(
            reads
                .iter()
                .any(|s| related(s.split(':').nth(1).unwrap_or(s))),
            "{} reads {reads:?}",
            r.record
        );
        // Only the top-10 rules keep a per-node label, to name the nodes.
        if level != "instance" {
            for per_node in ["instance", "pod", "node"] {
                assert!(
                    !r.expr.contains(&format!("by ({per_node}"))
                        && !r.expr.contains(&format!(", {per_node})"))
                        && !r.expr.contains(&format!(", {per_node},")),
                    "{} keeps {per_node}",
                    r.record
                );
            }
        } else {
            assert!(r.expr.contains("topk(10,"), "{}", r.record);
        }
    }
}

#[test]
fn the_prometheusrule_holds_the_same_rules() {
    let object = rules_dir().join("netready-prometheusrule.yaml");
    let generated = Command::new(repo().join("scripts/prometheusrule.sh"))
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    assert!(
        std::fs::read(&object).unwrap() == generated.stdout,
        "{} is not what scripts/prometheusrule.sh prints: run \
         scripts/prometheusrule.sh > kubemark-templates/prometheus/netready-prometheusrule.yaml",
        object.display()
    );

    let plain = yaml(&rules_file()).unwrap();
    let operator = yaml(&object).unwrap();
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["metadata"]["name"], "netready");
    assert_eq!(
        operator["spec"]["groups"], plain["groups"],
        "the PrometheusRule's groups differ from the rule file's"
    );
    assert_eq!(
        recording_rules(&operator["spec"]),
        recording_rules(&plain),
        "same rules, same order"
    );
}
