//! Chain semantics with a recording exec: what each plugin gets on stdin, and in which order.

use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::conflist;
use crate::exec::ExecFuture;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, &'static str, Value)>>,
    fail: Option<&'static str>,
}

impl Exec for Recorder {
    fn exec<'a>(&'a self, inv: Invocation<'a>) -> ExecFuture<'a> {
        let conf: Value = serde_json::from_slice(&inv.stdin).unwrap();
        self.calls
            .lock()
            .unwrap()
            .push((inv.plugin.to_owned(), inv.command.env(), conf));
        let fail = self.fail == Some(inv.plugin) && inv.command == Command::Add;
        let plugin = inv.plugin.to_owned();
        Box::pin(async move {
            if fail {
                return Err(Error::Plugin {
                    plugin,
                    command: "add",
                    code: 11,
                    msg: "boom".into(),
                    details: String::new(),
                });
            }
            Ok(serde_json::to_vec(&json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
                "ips": [{"address": "10.1.0.5/24", "interface": 0, "gateway": "10.1.0.1"}],
                "by": plugin,
            }))
            .unwrap())
        })
    }
}

fn network(rec: Arc<Recorder>) -> Network {
    let c = conflist::parse(
        br#"{"cniVersion":"1.0.0","name":"net","plugins":[
            {"type":"bridge","ipam":{"type":"host-local"}},
            {"type":"portmap","capabilities":{"portMappings":true}},
            {"type":"tuning"}]}"#,
        std::path::Path::new("t.conflist"),
    )
    .unwrap();
    Network::new(c, rec)
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "sb1".into(),
        netns: "/ns".into(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1".into(),
        capability_args: [
            (
                "portMappings".to_string(),
                json!([{"hostPort": 80, "containerPort": 8080}]),
            ),
            ("bandwidth".to_string(), json!({"ingressRate": 1})),
        ]
        .into(),
    }
}

#[tokio::test]
async fn add_injects_and_chains_prev_result() {
    let rec = Arc::new(Recorder::default());
    let added = network(rec.clone()).add(&attachment()).await.unwrap();
    assert_eq!(added.raw["by"], "tuning");
    assert_eq!(added.result.ips[0].address.to_string(), "10.1.0.5/24");
    let calls = rec.calls.lock().unwrap();
    let order: Vec<_> = calls.iter().map(|(p, c, _)| (p.as_str(), *c)).collect();
    assert_eq!(
        order,
        [("bridge", "ADD"), ("portmap", "ADD"), ("tuning", "ADD")]
    );
    let (_, _, bridge) = &calls[0];
    assert_eq!(bridge["name"], "net");
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert!(bridge.get("prevResult").is_none());
    assert!(
        bridge.get("runtimeConfig").is_none(),
        "bridge declares no capability"
    );
    assert_eq!(
        bridge["ipam"]["type"], "host-local",
        "plugin keys pass through"
    );
    let (_, _, portmap) = &calls[1];
    assert_eq!(portmap["prevResult"]["by"], "bridge");
    assert_eq!(
        portmap["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 80, "containerPort": 8080}]})
    );
    assert_eq!(calls[2].2["prevResult"]["by"], "portmap");
}

#[tokio::test]
async fn del_runs_in_reverse_with_cached_result_and_past_failures() {
    let rec = Arc::new(Recorder::default());
    let cached = json!({"cniVersion": "1.0.0", "by": "cache"});
    network(rec.clone())
        .del(&attachment(), Some(&cached))
        .await
        .unwrap();
    let calls = rec.calls.lock().unwrap();
    let order: Vec<_> = calls.iter().map(|(p, c, _)| (p.as_str(), *c)).collect();
    assert_eq!(
        order,
        [("tuning", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    );
    assert!(calls
        .iter()
        .all(|(_, _, c)| c["prevResult"]["by"] == "cache"));
}

#[tokio::test]
async fn add_stops_at_the_failing_plugin_with_its_code() {
    let rec = Arc::new(Recorder {
        fail: Some("portmap"),
        ..Default::default()
    });
    let err = network(rec.clone()).add(&attachment()).await.unwrap_err();
    assert_eq!(err.code(), 11);
    assert_eq!(rec.calls.lock().unwrap().len(), 2, "tuning never ran");
}

#[test]
fn results_of_every_supported_version_parse() {
    let v04 = json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
        "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}]});
    assert_eq!(parse_result(&v04).unwrap().ips.len(), 1);
    let v11 = json!({"cniVersion": "1.1.0", "ips": [{"address": "fd00::2/64"}]});
    assert_eq!(
        parse_result(&v11).unwrap().ips[0].address.to_string(),
        "fd00::2/64"
    );
    assert!(parse_result(&json!({"cniVersion": "0.2.0", "ip4": {}})).is_err());
    assert!(parse_result(&json!({"ips": []})).is_err());
}
