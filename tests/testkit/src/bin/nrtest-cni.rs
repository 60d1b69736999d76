//! `nrtest-cni`: a CNI plugin for tests, written with the `cni-plugin` crate.
//!
//! Chained after real plugins it passes `prevResult` through; alone it is a no-op plugin that
//! returns an address derived from the container id (to measure netready's own ceiling).
//! Faults come from its config keys:
//!
//! - `failFirst` (n): the first n ADDs of each pod (by `K8S_POD_UID`) fail with `failCode`
//!   (default 11) and `failMsg`; needs `stateDir` to count across calls
//! - `sleepMs` (ms): every ADD takes this long
//! - `hang` (bool): ADD never returns
//! - `hangInChild` (bool): ADD waits for a child (a shell, with the plugin's environment and
//!   pipes) that runs as long as the directory of `CNI_NETNS` exists, as a plugin waits for its
//!   hung IPAM plugin; a test's node going away ends it, so a failed test leaves no process
//! - `leaveChild` (bool): ADD starts the same child without waiting for it, and succeeds: the
//!   child keeps the plugin's stdout and stderr open after it exited
//! - `garbage` (bool): ADD exits 0 printing something that is not a result
//! - `noIp` (bool): ADD succeeds with a result that gives the pod no address
//! - `failDel` (bool): DEL fails
//! - `log` (path): one line per call: `<unix ns> <COMMAND> <container id> <pod uid>`

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cni_plugin::reply::{reply, ErrorReply};
use cni_plugin::Cni;
use serde_json::{json, Value};

fn pod_uid() -> String {
    std::env::var("CNI_ARGS")
        .unwrap_or_default()
        .split(';')
        .find_map(|kv| kv.strip_prefix("K8S_POD_UID=").map(str::to_owned))
        .unwrap_or_default()
}

fn log_call(specific: &std::collections::HashMap<String, Value>, cmd: &str, container: &str) {
    if let Some(path) = specific.get("log").and_then(Value::as_str) {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{ns} {cmd} {container} {}", pod_uid());
        }
    }
}

/// Counts ADDs of this pod so far (this one included), in `stateDir/<uid>`.
fn count_add(state_dir: &str) -> u64 {
    let path = PathBuf::from(state_dir).join(format!("{}.adds", pod_uid()));
    let n = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let _ = std::fs::write(&path, n.to_string());
    n
}

fn fail(version: cni_plugin::config::NetworkConfig, code: i32, msg: &str, details: String) -> ! {
    reply(ErrorReply {
        cni_version: version.cni_version,
        code,
        msg,
        details,
    })
}

fn main() {
    match Cni::load() {
        Cni::Add {
            container_id,
            netns,
            config,
            ..
        } => {
            let s = config.specific.clone();
            log_call(&s, "ADD", &container_id);
            let num = |k: &str| s.get(k).and_then(Value::as_u64);
            let flag = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
            if let Some(ms) = num("sleepMs") {
                std::thread::sleep(Duration::from_millis(ms));
            }
            let child = || {
                let mut c = std::process::Command::new("sh");
                c.args([
                    "-c",
                    r#"while [ -d "${CNI_NETNS%/*}" ]; do sleep 0.1; done"#,
                ]);
                c
            };
            if flag("hangInChild") {
                let _ = child().status();
            }
            if flag("leaveChild") {
                let _ = child().spawn();
            }
            if flag("hang") {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if let (Some(n), Some(dir)) =
                (num("failFirst"), s.get("stateDir").and_then(Value::as_str))
            {
                let this = count_add(dir);
                if this <= n {
                    let code = num("failCode").unwrap_or(11) as i32;
                    let msg = s
                        .get("failMsg")
                        .and_then(Value::as_str)
                        .unwrap_or("injected failure")
                        .to_owned();
                    fail(config, code, &msg, format!("ADD {this} of {n} failing"));
                }
            }
            if flag("garbage") {
                print!("this is not JSON {{");
                std::process::exit(0);
            }
            if flag("noIp") {
                println!(
                    "{}",
                    json!({"cniVersion": config.cni_version.to_string(), "interfaces": [], "ips": []})
                );
                std::process::exit(0);
            }
            let result = match &config.prev_result {
                Some(prev) => prev.clone(),
                None => {
                    // Standalone: a stable address from the container id, no interface work.
                    let h = container_id
                        .bytes()
                        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                    json!({
                        "cniVersion": config.cni_version.to_string(),
                        "interfaces": [{"name": "eth0", "sandbox": netns.display().to_string()}],
                        "ips": [{"address": format!("10.{}.{}.{}/8", 100 + (h >> 16) % 100, (h >> 8) & 0xff, 1 + h % 254), "interface": 0}],
                    })
                }
            };
            println!("{result}");
        }
        Cni::Del {
            container_id,
            config,
            ..
        } => {
            log_call(&config.specific, "DEL", &container_id);
            if config
                .specific
                .get("failDel")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                fail(config, 7, "injected DEL failure", String::new());
            }
        }
        Cni::Check {
            container_id,
            config,
            ..
        } => {
            log_call(&config.specific, "CHECK", &container_id);
        }
        Cni::Version(_) => unreachable!("Cni::load answers VERSION itself"),
    }
}
