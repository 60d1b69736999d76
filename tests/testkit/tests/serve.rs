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

async fn serving_pod(rt: &mut Rt, t: &TwoNodes, name: &str) -> (String, IpAddr) {
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
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let ip = status.status.unwrap().network.unwrap().ip.parse().unwrap();
    (id, ip)
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
    let nr = InProcess::start(&t.a, cfg, &t.a.path("no-upstream.sock")).unwrap();
    let (mut rt, _) = client::connect(nr.socket()).await.unwrap();
    let (id1, ip1) = serving_pod(&mut rt, &t, "server-1").await;
    let (id2, ip2) = serving_pod(&mut rt, &t, "server-2").await;

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
