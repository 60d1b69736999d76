//! iperf3, understood: a client command gets `-J` (and a port of the control pods' server
//! pool when it names none), and its JSON report is read into throughput, retransmits and, for
//! UDP, jitter and loss.
//!
//! An `iperf3 --server` runs one test at a time and turns others away ("the server is busy"),
//! so the control pods run a pool of servers (ports 5201–5208 by default) and a node's clients
//! are spread over it: each takes the port of the pool with the fewest of this node's clients
//! on it for that target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use netready_record::Iperf3;

/// Whether `argv` runs iperf3 as a client.
pub fn is_client(argv: &[String]) -> bool {
    let name = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str());
    name == Some("iperf3")
        && argv[1..]
            .iter()
            .any(|a| a == "-c" || a == "--client" || (a.starts_with("-c") && a.len() > 2))
}

/// The port an `iperf3 --server` in `argv` listens on (`-p`, else 5201); `None` when `argv`
/// is not an iperf3 server.
pub fn server_port(argv: &[String]) -> Option<u16> {
    let name = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str());
    let server = argv.iter().skip(1).any(|a| a == "-s" || a == "--server");
    if name != Some("iperf3") || !server {
        return None;
    }
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        if a == "-p" || a == "--port" {
            return it.next().and_then(|p| p.parse().ok());
        }
        if let Some(p) = a.strip_prefix("--port=") {
            return p.parse().ok();
        }
        if let Some(p) = a
            .strip_prefix("-p")
            .filter(|p| !p.is_empty() && !a.starts_with("--"))
        {
            return p.parse().ok();
        }
    }
    Some(5201)
}

/// The host after `-c`/`--client`.
pub fn target(argv: &[String]) -> Option<String> {
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        if a == "-c" || a == "--client" {
            return it.next().cloned();
        }
        if let Some(h) = a.strip_prefix("--client=") {
            return Some(h.into());
        }
        if let Some(h) = a
            .strip_prefix("-c")
            .filter(|h| !h.is_empty() && !a.starts_with("--"))
        {
            return Some(h.into());
        }
    }
    None
}

fn has_port(argv: &[String]) -> bool {
    argv[1..].iter().any(|a| {
        a == "-p"
            || a == "--port"
            || a.starts_with("--port=")
            || (a.starts_with("-p") && a.len() > 2 && !a.starts_with("--"))
    })
}

/// `argv` with `-J` added when absent, and `-p <port>` when it names no port.
pub fn prepare(argv: &[String], port: Option<u16>) -> Vec<String> {
    let mut out = argv.to_vec();
    if !argv[1..].iter().any(|a| a == "-J" || a == "--json") {
        out.push("-J".into());
    }
    if let (Some(p), false) = (port, has_port(argv)) {
        out.push("-p".into());
        out.push(p.to_string());
    }
    out
}

/// Reads iperf3's `-J` report; `Err` with iperf3's own error when the run failed.
pub fn parse(json: &[u8]) -> Result<Iperf3, String> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| format!("iperf3 did not print a JSON report: {e}"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    let start = &v["start"];
    let end = &v["end"];
    let udp = start["test_start"]["protocol"].as_str() == Some("UDP");
    let host = start["connecting_to"]["host"].as_str().unwrap_or_default();
    let port = start["connecting_to"]["port"].as_u64().unwrap_or_default();
    let num = |x: &serde_json::Value| x.as_f64();
    let summary = if udp {
        let sum = &end["sum"];
        Iperf3 {
            protocol: "udp".into(),
            target: format!("{host}:{port}"),
            seconds: num(&sum["seconds"]).unwrap_or_default(),
            // The receiver's numbers when iperf3 reports them (3.x with -J: `sum_received`),
            // else the sender's.
            bits_per_second: num(&end["sum_received"]["bits_per_second"])
                .or_else(|| num(&sum["bits_per_second"]))
                .ok_or("iperf3 report has no end.sum.bits_per_second")?,
            retransmits: None,
            jitter_ms: num(&sum["jitter_ms"]),
            lost_packets: sum["lost_packets"].as_u64(),
            packets: sum["packets"].as_u64(),
        }
    } else {
        Iperf3 {
            protocol: "tcp".into(),
            target: format!("{host}:{port}"),
            seconds: num(&end["sum_received"]["seconds"]).unwrap_or_default(),
            bits_per_second: num(&end["sum_received"]["bits_per_second"])
                .ok_or("iperf3 report has no end.sum_received.bits_per_second")?,
            retransmits: end["sum_sent"]["retransmits"].as_u64(),
            jitter_ms: None,
            lost_packets: None,
            packets: None,
        }
    };
    Ok(summary)
}

/// This node's clients per (target, port) of the servers' pool.
#[derive(Debug, Default, Clone)]
pub struct PortPool {
    busy: Arc<Mutex<HashMap<(String, u16), usize>>>,
}

/// A port taken from the pool until dropped.
#[derive(Debug)]
pub struct Lease {
    pool: PortPool,
    key: (String, u16),
}

impl Lease {
    /// The port.
    pub fn port(&self) -> u16 {
        self.key.1
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut busy = self.pool.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
    }
}

impl PortPool {
    /// Takes the port of `ports` with the fewest clients to `target` (the first on a tie).
    pub fn take(&self, target: &str, ports: &[u16]) -> Option<Lease> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let port = *ports
            .iter()
            .min_by_key(|p| busy.get(&(target.to_owned(), **p)).copied().unwrap_or(0))?;
        let key = (target.to_owned(), port);
        *busy.entry(key.clone()).or_default() += 1;
        Some(Lease {
            pool: self.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn clients_get_json_and_a_pool_port_unless_they_name_one() {
        assert!(is_client(&v(&["iperf3", "-c", "10.0.0.2"])));
        assert!(is_client(&v(&["/usr/bin/iperf3", "--client", "h"])));
        assert!(!is_client(&v(&["iperf3", "-s"])));
        assert!(!is_client(&v(&["ping", "-c", "1", "h"])));
        assert_eq!(server_port(&v(&["iperf3", "-s"])), Some(5201));
        assert_eq!(server_port(&v(&["iperf3", "-s", "-p", "6000"])), Some(6000));
        assert_eq!(
            server_port(&v(&["iperf3", "--server", "--port=6001"])),
            Some(6001)
        );
        assert_eq!(server_port(&v(&["iperf3", "-c", "h"])), None);
        assert_eq!(
            target(&v(&["iperf3", "-t", "1", "-c", "10.0.0.2"])).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(target(&v(&["iperf3", "--client=h"])).as_deref(), Some("h"));
        assert_eq!(
            prepare(&v(&["iperf3", "-c", "h"]), Some(5203)),
            v(&["iperf3", "-c", "h", "-J", "-p", "5203"])
        );
        assert_eq!(
            prepare(
                &v(&["iperf3", "-c", "h", "--json", "-p", "9000"]),
                Some(5203)
            ),
            v(&["iperf3", "-c", "h", "--json", "-p", "9000"])
        );
    }

    #[test]
    fn the_pool_spreads_and_a_lease_frees_its_port() {
        let pool = PortPool::default();
        let ports = [5201, 5202, 5203];
        let a = pool.take("t", &ports).unwrap();
        let b = pool.take("t", &ports).unwrap();
        let c = pool.take("t", &ports).unwrap();
        let other = pool.take("u", &ports).unwrap();
        assert_eq!([a.port(), b.port(), c.port()], [5201, 5202, 5203]);
        assert_eq!(other.port(), 5201);
        drop(b);
        assert_eq!(pool.take("t", &ports).unwrap().port(), 5202);
        assert!(pool.take("t", &[]).is_none());
    }

    #[test]
    fn reports_are_read_and_failures_named() {
        let tcp = br#"{"start":{"connecting_to":{"host":"10.0.0.2","port":5202},"test_start":{"protocol":"TCP"}},
            "end":{"sum_sent":{"seconds":1.0,"bits_per_second":9.5e9,"retransmits":3},
                   "sum_received":{"seconds":1.0,"bits_per_second":9.4e9}}}"#;
        let s = parse(tcp).unwrap();
        assert_eq!(
            (s.protocol.as_str(), s.target.as_str()),
            ("tcp", "10.0.0.2:5202")
        );
        assert_eq!((s.bits_per_second, s.retransmits), (9.4e9, Some(3)));
        let udp = br#"{"start":{"connecting_to":{"host":"h","port":5201},"test_start":{"protocol":"UDP"}},
            "end":{"sum":{"seconds":1.0,"bits_per_second":1.0e6,"jitter_ms":0.02,"lost_packets":2,"packets":100}}}"#;
        let s = parse(udp).unwrap();
        assert_eq!(
            (s.jitter_ms, s.lost_packets, s.packets),
            (Some(0.02), Some(2), Some(100))
        );
        assert!(s.line().contains("lost 2/100"));
        assert_eq!(
            parse(br#"{"start":{},"end":{},"error":"the server is busy running a test. try again later"}"#)
                .unwrap_err(),
            "iperf3: the server is busy running a test. try again later"
        );
        assert!(parse(b"iperf3: error").unwrap_err().contains("JSON"));
    }
}
