//! netperf pods serve the ports they declare (issue 17, part 4): a Service VIP whose endpoints
//! are netperf pods answers from those pods, HTTP naming each, UDP echoing; nothing of them is
//! left once they are removed.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_cri::v1 as cri;
use netready_netns::Netns;
use netready_testkit::cri as client;
use netready_testkit::node::InProcess;
use netready_testkit::pod::{self, PodSpec, Rt};
use netready_testkit::topology::TwoNodes;

async fn serving_pod(rt: &mut Rt, t: &TwoNodes, name: &str) -> (String, IpAddr, PodSpec) {
    let mut pod = PodSpec::new(name, &t.a.path("pods"), "");
    pod.labels.insert("netperf".into(), "true".into());
    let mut config = pod.sandbox_config(0);
    // As kubelet passes containerPorts: host_port 0, one entry per port and protocol.
    config.port_mappings = vec![
        cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: 0,
            host_ip: String::new(),
        },
        cri::PortMapping {
            protocol: cri::Protocol::Udp as i32,
            container_port: 9000,
            host_port: 0,
            host_ip: String::new(),
        },
    ];
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let ip = pod::sandbox_ip(rt, &id).await.unwrap().parse().unwrap();
    (id, ip, pod)
}

/// One HTTP/1.1 GET on a new connection from inside `ns`; the response body.
fn get(ns: &Netns, to: SocketAddr) -> Result<String, String> {
    ns.run(move || -> Result<String, String> {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_endpoints_are_netperf_pods_answers_from_those_pods() {
    let t = TwoNodes::start(None).await.unwrap();
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required.clear();
    cfg.checks.optional.clear();
    let results_path = cfg.results_path();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let (id1, ip1, _) = serving_pod(&mut rt, &t, "server-1").await;
    let (id2, ip2, _) = serving_pod(&mut rt, &t, "server-2").await;

    // The client is node B's control pod; the VIP is programmed on node B, as kube-proxy does
    // on every node, with the two netperf pods as its endpoints.
    let vip = Ipv4Addr::new(10, 96, 0, 30);
    netready_local::service::install(
        t.b.netns(),
        &netready_local::service::rules(vip, 80, &[ip1, ip2], netready_testkit::topology::SUBNET_B),
    )
    .unwrap();
    let client = Netns::open(t.control_b.netns_path().unwrap()).unwrap();

    // Directly: each names itself, in the body and the header.
    for (ip, name) in [(ip1, "server-1"), (ip2, "server-2")] {
        let r = get(&client, SocketAddr::new(ip, 8080)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.contains(&format!("x-netready-pod: default/{name}")),
            "{r}"
        );
        assert!(
            r.contains(&format!("netready netperf pod default/{name} {ip}")),
            "{r}"
        );
    }
    // Through the VIP: both endpoints answer (40 new connections at random: the chance that
    // one endpoint never answers is 2^-39).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = get(&client, SocketAddr::new(vip.into(), 80)).unwrap();
        for name in ["server-1", "server-2"] {
            if r.contains(&format!("default/{name}")) {
                seen.insert(name);
            }
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // UDP echoes.
    let echo = client
        .run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(b"hello netperf", SocketAddr::new(ip1, 9000))
                .unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        })
        .unwrap();
    assert_eq!(
        echo,
        (b"hello netperf".to_vec(), SocketAddr::new(ip1, 9000))
    );

    // The VIP picks a backend per connection (conntrack), so 32 connections reach both with
    // certainty but 2^-31.
    // A client netperf pod on node A sends its HTTP load through a second VIP, programmed on
    // node A (its own chain beside the control Service's): its record names both endpoints,
    // when each first answered, and how long after its creation (one clock here: skew ~0).
    let vip2 = Ipv4Addr::new(10, 96, 0, 31);
    netready_local::service::install(
        t.a.netns(),
        &netready_local::service::rules(
            vip2,
            80,
            &[ip1, ip2],
            netready_testkit::topology::SUBNET_A,
        )
        .replace("NETREADY-SVC", "NETREADY-SVC2"),
    )
    .unwrap();
    let mut client_pod = PodSpec::new("client", &t.a.path("pods"), "");
    client_pod.labels.insert("netperf".into(), "true".into());
    client_pod.annotations.insert(
        "netready.io/http-load".into(),
        format!("rate=64,duration=1s,connections=32,target={vip2}:80"),
    );
    let client_id = pod::run_sandbox(&mut rt, &client_pod).await.unwrap();
    let mut rec = None;
    for _ in 0..300 {
        rec = std::fs::read_to_string(&results_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["pod"]["name"] == "client");
        if rec.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = rec.expect("the client's record");
    netready_testkit::record::assert_valid(&rec);
    let load = &rec["http_load"];
    assert_eq!(load["ok"], 64, "{load}");
    let backends = load["backends"].as_array().unwrap();
    let names: std::collections::BTreeSet<&str> = backends
        .iter()
        .map(|b| b["pod"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["default/server-1", "default/server-2"].into(),
        "{load}"
    );
    let replies: u64 = backends
        .iter()
        .map(|b| b["replies"].as_u64().unwrap())
        .sum();
    assert_eq!(replies, 64, "{load}");
    for b in backends {
        let after = b["reachable_after_s"].as_f64().unwrap();
        assert!(after > 0.0 && after < 60.0, "{b}");
        assert!(b["clock_skew_s"].as_f64().unwrap().abs() < 0.05, "{b}");
    }
    pod::stop_remove(&mut rt, &client_id).await.unwrap();

    // Gone with the pods: no answer, and nothing of them left (the servers' sockets would
    // keep the netns alive).
    for id in [id1, id2] {
        pod::stop_remove(&mut rt, &id).await.unwrap();
    }
    assert!(get(&client, SocketAddr::new(ip1, 8080)).is_err());
    // Only the node's own control pod's netns is left; the pods' are gone.
    let left = t.a.leftovers().netns;
    assert!(left.iter().all(|n| n.ends_with("-ctl")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iperf3_server_command_takes_its_declared_port_over() {
    let t = TwoNodes::start(None).await.unwrap();
    let mut cfg = t.a.netperf_config(None);
    cfg.checks.required.clear();
    cfg.checks.optional.clear();
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let (id, ip, pod) = serving_pod(&mut rt, &t, "iperf-server").await;
    // The pod declares 8080, which netready serves; its command is an iperf3 server there.
    let cid = pod::start_container_with(&mut rt, &pod, &id, |c| {
        c.command = ["iperf3", "-s", "-1", "-p", "8080"]
            .map(String::from)
            .into();
    })
    .await
    .unwrap();
    let client = t.control_b.netns_path().unwrap().to_owned();
    let mut sent = None;
    for _ in 0..100 {
        let o = tokio::process::Command::new("nsenter")
            .arg(format!("--net={}", client.display()))
            .args([
                "--",
                "iperf3",
                "-c",
                &ip.to_string(),
                "-p",
                "8080",
                "-t",
                "1",
                "-J",
            ])
            .output()
            .await
            .unwrap();
        // Until the command has the port, netready's HTTP server answers there, and iperf3
        // reports "received an unknown control message" (exiting 0 all the same).
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if o.status.success() && report["error"].is_null() {
            sent = Some(o.stdout);
            break;
        }
        // Not listening yet (its pod's checks, then the exec).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report: serde_json::Value =
        serde_json::from_slice(&sent.expect("iperf3 -c never ran")).unwrap();
    assert!(
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("{report}"))
            > 1e6,
        "{report}"
    );
    // The one-off server ends after its test: the container exits 0.
    let s = pod::wait_exited(&mut rt, &cid, Duration::from_secs(5))
        .await
        .unwrap();
    let state = Some((s.exit_code, s.reason));
    assert_eq!(state, Some((0, "Completed".to_string())));
    pod::stop_remove(&mut rt, &id).await.unwrap();
}
