//! Property-based tests of what netready-cni reads from outside: plugin results, conflist
//! files, and the bandwidth annotations of a pod. Whatever the bytes, an answer and never a
//! panic; errors say which file or annotation; what is valid reads back as written.
//! Bounded: a few hundred cases each, well under a second in CI.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use netready_cni::runtime_config::{self, PodSpec};
use netready_cni::{chain, conflist};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("1.0.0"),
            Just("0.4.0"),
            Just("0.3.1"),
            Just("0.2.0"),
            Just("9")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_owned()),
                    Just("name".to_owned()),
                    Just("plugins".to_owned()),
                    Just("type".to_owned()),
                    Just("ips".to_owned()),
                    Just("interfaces".to_owned()),
                    Just("address".to_owned()),
                    Just("interface".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn supported_version() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("0.3.0"),
        Just("0.3.1"),
        Just("0.4.0"),
        Just("1.0.0"),
        Just("1.1.0")
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_as_a_result_is_an_answer_not_a_panic(v in any_json()) {
        let _ = chain::parse_result(&v);
    }

    /// A result of any supported version with addresses on the pod's eth0 (and one on the
    /// host's veth) gives exactly the pod's addresses, IPv4 first.
    #[test]
    fn the_pod_ips_of_a_valid_result_are_its_eth0_addresses(
        version in supported_version(),
        v4 in prop::collection::vec(any::<std::net::Ipv4Addr>(), 0..3),
        v6 in prop::collection::vec(any::<std::net::Ipv6Addr>(), 0..3),
        host in any::<std::net::Ipv4Addr>(),
    ) {
        let netns = "/run/netns/cni-x";
        let mut ips: Vec<Value> = vec![json!({"address": format!("{host}/24"), "interface": 0})];
        for a in &v6 {
            ips.push(json!({"address": format!("{a}/64"), "interface": 1}));
        }
        for a in &v4 {
            ips.push(json!({"address": format!("{a}/24"), "interface": 1}));
        }
        // 0.3/0.4 results carry a `version` per address.
        if version.starts_with("0.") {
            for ip in &mut ips {
                let fam = if ip["address"].as_str().unwrap().contains(':') { "6" } else { "4" };
                ip["version"] = fam.into();
            }
        }
        let raw = json!({"cniVersion": version, "interfaces": [
            {"name": "veth1"}, {"name": "eth0", "sandbox": netns}], "ips": ips});
        let r = chain::parse_result(&raw).map_err(|e| TestCaseError::fail(format!("{e}: {raw}")))?;
        let got = runtime_config::pod_ips(&r, netns, "eth0");
        let mut want: Vec<IpAddr> = v4.iter().map(|a| IpAddr::V4(*a)).collect();
        want.dedup();
        let mut w6: Vec<IpAddr> = v6.iter().map(|a| IpAddr::V6(*a)).collect();
        w6.dedup();
        let mut want_all: Vec<String> = Vec::new();
        for ip in want.into_iter().chain(w6) {
            let s = ip.to_string();
            if !want_all.contains(&s) {
                want_all.push(s);
            }
        }
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want_all.sort();
        prop_assert_eq!(got_sorted, want_all);
        // IPv4 first.
        let first_v6 = got.iter().position(|a| a.contains(':')).unwrap_or(got.len());
        prop_assert!(got[first_v6..].iter().all(|a| a.contains(':')));
    }

    #[test]
    fn any_bytes_as_a_conflist_is_an_answer_naming_the_file(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = conflist::parse(&bytes, Path::new("/etc/cni/net.d/10-x.conflist")) {
            prop_assert!(e.to_string().contains("10-x.conflist"), "{e}");
        }
    }

    #[test]
    fn any_json_as_a_conflist_is_an_answer_naming_the_file(v in any_json()) {
        if let Err(e) = conflist::parse(v.to_string().as_bytes(), Path::new("/etc/cni/net.d/10-x.conflist")) {
            prop_assert!(e.to_string().contains("10-x.conflist"), "{e}");
        }
    }

    /// A well-formed conflist reads back with its name, version and plugins in order.
    #[test]
    fn a_valid_conflist_reads_back_as_written(
        name in "[a-z][a-z0-9-]{0,20}",
        version in supported_version(),
        types in prop::collection::vec("[a-z][a-z0-9-]{0,12}", 1..5),
    ) {
        let plugins: Vec<Value> = types.iter().map(|t| json!({"type": t})).collect();
        let raw = json!({"cniVersion": version, "name": name, "plugins": plugins});
        let c = conflist::parse(raw.to_string().as_bytes(), Path::new("x.conflist"))
            .map_err(|e| TestCaseError::fail(format!("{e}: {raw}")))?;
        prop_assert_eq!(c.name.as_str(), name.as_str());
        prop_assert_eq!(c.plugin_types(), types.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Whatever a pod's bandwidth annotations hold: refused naming the annotation in a message
    /// of bounded length (a value thousands of characters long is not echoed whole into
    /// kubelet's events), or accepted as a whole number of bits per second.
    #[test]
    fn bandwidth_annotations_are_refused_by_name_or_read(
        ingress in prop_oneof![".{0,100}", ".{2000,4000}", "[0-9]{1,6}(\\.[0-9]{1,3})?(k|M|G|Ki|Mi|Gi|m)?"],
        egress in prop::option::of(".{0,100}"),
    ) {
        let mut annotations = HashMap::from([("kubernetes.io/ingress-bandwidth".to_owned(), ingress.clone())]);
        if let Some(e) = &egress {
            annotations.insert("kubernetes.io/egress-bandwidth".to_owned(), e.clone());
        }
        let spec = PodSpec { port_mappings: Vec::new(), annotations: &annotations, dns: None };
        match runtime_config::capability_args(&spec) {
            Ok(caps) => {
                let rate = &caps["bandwidth"]["ingressRate"];
                prop_assert!(rate.is_u64(), "{caps:?}");
            }
            Err(e) => {
                prop_assert!(e.annotation.starts_with("kubernetes.io/"), "{e}");
                // 64 characters shown, each at worst a 10-character escape, twice, plus words.
                prop_assert!(e.to_string().chars().count() <= 2 * 64 * 10 + 300, "{e}");
            }
        }
    }
}
