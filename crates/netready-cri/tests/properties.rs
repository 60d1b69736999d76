//! Property-based tests of what a netperf pod's runtime reads from outside it: the targets
//! file (a ConfigMap anyone can edit) and a pod's `netready.io/...` annotations. Whatever they
//! hold, an answer and never a panic; errors name the file and key or the annotation; a valid
//! file reads back as written. Bounded: a few hundred cases each.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netready_cri::netperf::checks::{
    plan_for, read_targets_file, ChecksConfig, TargetsFile, MAX_ERROR_LEN,
};
use netready_probe::plan::HttpTarget;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn http_target() -> impl Strategy<Value = HttpTarget> {
    (
        any::<IpAddr>(),
        any::<u16>(),
        "/[a-z0-9/]{0,12}",
        prop::option::of("[a-z.]{1,16}"),
    )
        .prop_map(|(ip, port, path, host)| HttpTarget {
            ip,
            port,
            path,
            host,
        })
}

fn targets() -> impl Strategy<Value = TargetsFile> {
    (
        prop::collection::btree_map(
            "[a-z0-9-]{1,12}",
            prop::collection::vec(any::<IpAddr>(), 0..4),
            0..5,
        ),
        prop::option::of(http_target()),
        prop::option::of(http_target()),
    )
        .prop_map(|(nodes, service, external)| TargetsFile {
            version: 1,
            nodes,
            service,
            external,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_targets_file_reads_back_as_written(t in targets()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets.json");
        std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
        prop_assert_eq!(read_targets_file(&path).map_err(TestCaseError::fail)?, t);
    }

    /// Any bytes, or a valid file with one key broken: an error naming the file, never a panic.
    #[test]
    fn a_broken_targets_file_is_an_error_naming_it(
        bytes in prop::collection::vec(any::<u8>(), 0..120),
        t in targets(),
        breakage in 0..4usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets.json");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = read_targets_file(&path) {
            prop_assert!(e.contains("targets.json"), "{e}");
        }
        let mut v = serde_json::to_value(&t).unwrap();
        let key = match breakage {
            0 => { v["version"] = 2.into(); "version" }
            1 => { v["nodes"] = "node-a".into(); "nodes" }
            2 => { v["service"] = serde_json::json!({"ip": "not an ip"}); "service" }
            _ => { v["extra"] = true.into(); "extra" }
        };
        std::fs::write(&path, v.to_string()).unwrap();
        let e = read_targets_file(&path).expect_err("a broken file");
        prop_assert!(e.contains("targets.json"), "{e}");
        if key == "version" || key == "extra" {
            prop_assert!(e.contains(key), "{key}: {e}");
        }
    }

    /// Any values in a pod's netready.io annotations, thousands of characters long too: a
    /// plan, or an error naming the annotation in bounded length; the required and optional
    /// checks never overlap.
    #[test]
    fn any_annotations_give_a_plan_or_name_the_bad_one(
        values in prop::collection::btree_map(
            prop_oneof![
                Just("checks-required"), Just("checks-optional"), Just("other-nodes"),
                Just("http-count"), Just("probe-timeout"), Just("check-deadline"),
                Just("probe-interval"),
            ],
            prop_oneof![
                ".{0,24}",
                ".{2000,3000}",
                "[0-9]{1,4}(ms|s|m)?",
                "(same_node_pod|other_node_pod|service|external|dns|nope)(,(same_node_pod|external|service))*",
            ],
            0..5,
        ),
    ) {
        let annotations: BTreeMap<String, String> =
            values.iter().map(|(k, v)| (format!("netready.io/{k}"), v.clone())).collect();
        match plan_for(&ChecksConfig::default(), &annotations) {
            Ok(plan) => prop_assert!(plan.required.is_disjoint(&plan.optional)),
            Err(e) => {
                prop_assert!(
                    values.keys().any(|k| e.contains(&format!("netready.io/{k}"))),
                    "{e} names none of {values:?}"
                );
                prop_assert!(e.chars().count() <= MAX_ERROR_LEN + 20, "{} characters", e.len());
            }
        }
    }
}
