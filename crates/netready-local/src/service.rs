//! The control service: a VIP load-balanced to every node's control pods, as kube-proxy's
//! iptables mode programs it on each node.
//!
//! NAT rules have no rtnetlink interface (they are netfilter's), so this feeds one ruleset to
//! `iptables-restore` inside the node's namespace, as kube-proxy itself does.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use netready_netns::Netns;

use crate::control::HTTP_PORT;

/// The iptables-restore input for one node: TCP `vip:port` DNATed at random (equal weights,
/// kube-proxy's `statistic` chain) to the backends' [`HTTP_PORT`], ICMP to the VIP likewise
/// (kube-proxy drops it; here it keeps the optional `service_ping` check meaningful), and
/// hairpin traffic (a pod reaching a backend on its own node through the VIP) masqueraded so
/// the reply comes back through the node.
pub fn rules(vip: Ipv4Addr, port: u16, backends: &[IpAddr], pod_subnet: &str) -> String {
    rules_in("NETREADY-SVC", vip, port, backends, pod_subnet)
}

/// [`rules`] in a chain of its own name, for a second Service beside the control one.
pub fn rules_in(
    chain: &str,
    vip: Ipv4Addr,
    port: u16,
    backends: &[IpAddr],
    pod_subnet: &str,
) -> String {
    let mut r = format!("*nat\n:{chain} - [0:0]\n");
    r += &format!("-A PREROUTING -d {vip}/32 -j {chain}\n");
    for proto in ["tcp", "icmp"] {
        let n = backends.len();
        for (i, b) in backends.iter().enumerate() {
            let matcher = if proto == "tcp" {
                format!("-p tcp --dport {port}")
            } else {
                "-p icmp".to_owned()
            };
            let to = if proto == "tcp" {
                format!("{b}:{HTTP_PORT}")
            } else {
                b.to_string()
            };
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.5}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            r += &format!("-A {chain} {matcher}{pick} -j DNAT --to-destination {to}\n");
        }
    }
    r += &format!(
        "-A POSTROUTING -s {pod_subnet} -d {pod_subnet} -m conntrack --ctstate DNAT -j MASQUERADE\n"
    );
    r += "COMMIT\n";
    r
}

/// Installs `rules` in `node` (added to what is there: plugins such as portmap keep theirs).
pub fn install(node: &Netns, rules: &str) -> anyhow::Result<()> {
    let input = rules.to_owned();
    let out = node
        .run(move || -> std::io::Result<std::process::Output> {
            let mut child = Command::new("iptables-restore")
                .args(["--wait", "--noflush"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())?;
            child.wait_with_output()
        })?
        .context("running iptables-restore (Debian: apt install iptables)")?;
    anyhow::ensure!(
        out.status.success(),
        "{}: iptables-restore: {}",
        node.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_get_equal_shares() {
        let r = rules(
            Ipv4Addr::new(10, 96, 0, 10),
            80,
            &[
                "10.244.0.2".parse().unwrap(),
                "10.244.1.2".parse().unwrap(),
                "10.244.2.2".parse().unwrap(),
            ],
            "10.244.0.0/24",
        );
        // First of three taken with 1/3, second with 1/2 of the rest, third takes what is left.
        assert!(r.contains("--probability 0.33333 -j DNAT --to-destination 10.244.0.2:8080"));
        assert!(r.contains("--probability 0.50000 -j DNAT --to-destination 10.244.1.2:8080"));
        assert!(r.contains("--dport 80 -j DNAT --to-destination 10.244.2.2:8080"));
        assert!(r.contains("-p icmp -j DNAT --to-destination 10.244.2.2\n"));
    }
}
