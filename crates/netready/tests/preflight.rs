//! `netready preflight` on a test node: a good node passes, a missing plugin, forwarding off,
//! an IPAM range too small and an absent containerd each fail with their fix.

use std::process::Command;

use netready_local::netlink::sysctl_ipv4;
use netready_testkit::node::TestNode;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_netready");

fn preflight(node: &TestNode, upstream: &std::path::Path, pods: u64) -> (i32, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.netns().path().display()))
        .args(["--", BIN, "preflight", "--cni-conf-dir"])
        .arg(node.path("net.d"))
        .args(["--cni-bin-dir", "/usr/lib/cni", "--upstream"])
        .arg(upstream)
        .args(["--pods", &pods.to_string()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn preflight_passes_a_good_node_and_names_each_fault_with_its_fix() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.220.0.0/24", vec![]))
        .unwrap();
    let sock = node.path("containerd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();

    // A fresh netns has forwarding off: that alone fails.
    let (code, out) = preflight(&node, &sock, 100);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL net.ipv4.ip_forward")
            && out.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "{out}"
    );

    sysctl_ipv4(node.netns(), "ip_forward", "1").unwrap();
    let (code, out) = preflight(&node, &sock, 100);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok   plugin bridge") && out.contains("ok   plugin host-local"),
        "{out}"
    );
    assert!(
        out.contains("253 free of 253"),
        "a /24 for host-local: {out}"
    );
    assert!(out.contains("preflight: 0 failed"), "{out}");

    // More pods than the range holds.
    let (code, out) = preflight(&node, &sock, 300);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL host-local free addresses") && out.contains("needs 300"),
        "{out}"
    );

    // A plugin that is not installed, and containerd gone.
    node.write_conflist(
        &json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "no-such-cni-plugin"}]}),
    )
    .unwrap();
    let (code, out) = preflight(&node, &node.path("gone.sock"), 10);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL plugin no-such-cni-plugin"), "{out}");
    assert!(
        out.contains("FAIL containerd") && out.contains("gone.sock"),
        "{out}"
    );
}

/// Root whose bounding set lost CAP_SYS_ADMIN and CAP_NET_RAW (as a container runtime or
/// `setpriv` leaves it): preflight fails naming each missing capability and what it is for.
#[test]
fn preflight_names_the_capabilities_it_lacks() {
    let node = TestNode::new().unwrap();
    node.write_conflist(&node.bridge_conflist("10.221.0.0/24", vec![]))
        .unwrap();
    let run = |drop: Option<&str>| {
        let mut cmd = Command::new("setpriv");
        if let Some(d) = drop {
            cmd.args(["--bounding-set", d]);
        }
        let out = cmd
            .args(["--", BIN, "preflight", "--cni-conf-dir"])
            .arg(node.path("net.d"))
            .args(["--cni-bin-dir", "/usr/lib/cni", "--pods", "1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = run(None);
    assert!(
        all.contains("capabilities") && !all.contains("missing CAP_"),
        "{all}"
    );
    let out = run(Some("-sys_admin,-net_raw"));
    let line = out
        .lines()
        .find(|l| l.contains("capabilities"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("FAIL"), "{line}");
    assert!(
        line.contains("missing CAP_SYS_ADMIN (network namespaces"),
        "{line}"
    );
    assert!(line.contains("CAP_NET_RAW (ICMP probes"), "{line}");
    assert!(!line.contains("missing CAP_NET_ADMIN"), "{line}");
}
