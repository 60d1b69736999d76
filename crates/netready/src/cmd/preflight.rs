//! `netready preflight`: checks a node before a run and says what to fix.
//!
//! A run on a misconfigured node measures the misconfiguration: missing plugins, forwarding
//! off, inotify or file limits that stall kubelet and the CNI agents, an IPAM range too small
//! for the planned pods, containerd not answering.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netready_cri::config::{self, Config};

/// Flags of `netready preflight`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file (the one `serve` will use).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CNI configuration directory (overrides netperf.cni.conf_dir).
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory, repeatable (overrides netperf.cni.bin_dirs).
    #[arg(long, value_name = "DIR")]
    pub cni_bin_dir: Vec<PathBuf>,
    /// containerd's CRI socket (overrides serve.upstream).
    #[arg(long, value_name = "PATH")]
    pub upstream: Option<PathBuf>,
    /// Pods the run will hold at once on this node (IPAM must have room for them).
    #[arg(long, default_value_t = 110)]
    pub pods: u64,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Will work, may skew results.
    Warn,
    /// Will not work.
    Fail,
}

/// One finding: what was checked, how it went, and what to do.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Outcome.
    pub level: Level,
    /// What was checked.
    pub what: String,
    /// What was found.
    pub found: String,
    /// How to fix it (empty when ok).
    pub fix: String,
}

fn finding(
    level: Level,
    what: impl Into<String>,
    found: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        level,
        what: what.into(),
        found: found.into(),
        fix: fix.into(),
    }
}

fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn sysctl_at_least(name: &str, min: u64, why: &str) -> Finding {
    match read_sysctl(name).and_then(|v| v.split(' ').next().and_then(|x| x.parse::<u64>().ok())) {
        Some(v) if v >= min => finding(Level::Ok, name, v.to_string(), ""),
        Some(v) => finding(
            Level::Warn,
            name,
            format!("{v} ({why})"),
            format!("sysctl -w {name}={min}"),
        ),
        None => finding(
            Level::Warn,
            name,
            "unreadable",
            "check /proc/sys is mounted",
        ),
    }
}

/// Addresses host-local can hand out in a subnet (network, gateway and broadcast excluded).
fn usable(subnet: &str) -> Option<u64> {
    let (addr, len) = subnet.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    let bits = match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let host_bits = bits - len.min(bits);
    Some(if host_bits >= 63 {
        u64::MAX
    } else {
        (1u64 << host_bits).saturating_sub(3)
    })
}

fn ipam(conf: &netready_cni::Conflist, pods: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &conf.plugins {
        let Some(ipam) = p.get("ipam") else { continue };
        if ipam.get("type").and_then(|t| t.as_str()) != Some("host-local") {
            out.push(finding(
                Level::Ok,
                "ipam",
                format!("{} (free addresses not checked)", ipam["type"]),
                "",
            ));
            continue;
        }
        let mut subnets: Vec<String> = ipam["ranges"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|set| set.as_array().into_iter().flatten())
            .filter_map(|r| r["subnet"].as_str().map(str::to_owned))
            .collect();
        if let Some(s) = ipam["subnet"].as_str() {
            subnets.push(s.to_owned());
        }
        let size: u64 = subnets
            .iter()
            .filter_map(|s| usable(s))
            .fold(0u64, u64::saturating_add);
        let data_dir = ipam["dataDir"].as_str().unwrap_or("/var/lib/cni/networks");
        let dir = Path::new(data_dir).join(&conf.name);
        let reserved = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                    .count() as u64
            })
            .unwrap_or(0);
        let free = size.saturating_sub(reserved);
        let found = format!(
            "{} free of {size} in {} ({reserved} reserved in {})",
            free,
            subnets.join(","),
            dir.display()
        );
        out.push(if free >= pods {
            finding(Level::Ok, "host-local free addresses", found, "")
        } else {
            finding(
                Level::Fail,
                "host-local free addresses",
                found,
                format!("widen the range or lower --pods (needs {pods}); remove stale reservations of deleted pods"),
            )
        });
    }
    out
}

/// Which host-level checks apply.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// containerd must answer (non-netperf pods go there).
    pub containerd: bool,
    /// The host forwards (pods reach other nodes through it). `netready local` routes inside
    /// namespaces it makes and sets forwarding there itself.
    pub ip_forward: bool,
}

/// Runs every check in `scope`.
pub async fn findings(cfg: &Config, pods: u64, scope: Scope) -> Vec<Finding> {
    let mut out = Vec::new();
    // Root as well as the capabilities: the plugins a non-root process starts do not inherit
    // its capabilities, and /run/netns, /var/lib/cni and the pod log directories are root's.
    out.push(if nix::unistd::geteuid().is_root() {
        finding(Level::Ok, "running as root", "yes", "")
    } else {
        finding(
            Level::Fail,
            "running as root",
            "no",
            "run netready as root: the plugins it starts need root, and so do /run/netns and /var/lib/cni",
        )
    });
    out.push(capabilities(effective_capabilities()));
    let cni = &cfg.netperf.cni;
    match netready_cni::conflist::load_dir(&cni.conf_dir) {
        Ok(conf) => {
            out.push(finding(
                Level::Ok,
                "CNI config",
                format!(
                    "{} (network {:?}, cniVersion {}, plugins {:?})",
                    conf.source.display(),
                    conf.name,
                    conf.cni_version,
                    conf.plugin_types()
                ),
                "",
            ));
            let mut plugins: Vec<String> =
                conf.plugin_types().iter().map(|s| s.to_string()).collect();
            for p in &conf.plugins {
                if let Some(t) = p
                    .get("ipam")
                    .and_then(|i| i.get("type"))
                    .and_then(|t| t.as_str())
                {
                    plugins.push(t.to_owned());
                }
            }
            if cni.loopback == netready_cri::netperf::Loopback::Plugin {
                plugins.push("loopback".into());
            }
            plugins.dedup();
            for t in plugins {
                match cni.bin_dirs.iter().map(|d| d.join(&t)).find(|p| p.is_file()) {
                    Some(p) => out.push(finding(Level::Ok, format!("plugin {t}"), p.display().to_string(), "")),
                    None => out.push(finding(
                        Level::Fail,
                        format!("plugin {t}"),
                        format!("not in {:?}", cni.bin_dirs),
                        format!("install the {t} plugin (Debian: containernetworking-plugins) or add its directory with --cni-bin-dir"),
                    )),
                }
            }
            out.extend(ipam(&conf, pods));
        }
        Err(e) => out.push(finding(
            Level::Fail,
            "CNI config",
            e.to_string(),
            "install the CNI provider's config in netperf.cni.conf_dir (or --cni-conf-dir)",
        )),
    }
    if scope.ip_forward {
        out.push(match read_sysctl("net.ipv4.ip_forward").as_deref() {
            Some("1") => finding(Level::Ok, "net.ipv4.ip_forward", "1", ""),
            Some(v) => finding(
                Level::Fail,
                "net.ipv4.ip_forward",
                v,
                "sysctl -w net.ipv4.ip_forward=1 (pods on other nodes are unreachable without it)",
            ),
            None => finding(Level::Warn, "net.ipv4.ip_forward", "unreadable", ""),
        });
    }
    out.push(sysctl_at_least("fs.inotify.max_user_instances", 1024, "kubelet, containerd and CNI agents each hold watches; many node pods share the host's limit"));
    out.push(sysctl_at_least(
        "fs.inotify.max_user_watches",
        524_288,
        "the same, per watch",
    ));
    out.push(sysctl_at_least(
        "net.core.netdev_max_backlog",
        30_000,
        "every veth and bridge queues on a CPU's input backlog, and a burst of new pods floods ARP and ND to every bridge port: at the default 1000, a 200-pod burst on 2 cores dropped 7,000-23,000 packets during the storm, probes among them (readiness bench)",
    ));
    out.push(sysctl_at_least(
        "net.core.somaxconn",
        1024,
        "control pods' listen backlog under pod bursts",
    ));
    out.push(match read_sysctl("net.ipv4.ping_group_range") {
        Some(v) => finding(
            Level::Ok,
            "net.ipv4.ping_group_range",
            format!("{v} (netready uses raw ICMP as root; fresh pod netns have `1 0`)"),
            "",
        ),
        None => finding(Level::Warn, "net.ipv4.ping_group_range", "unreadable", ""),
    });
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft >= 65_536 => out.push(finding(
            Level::Ok,
            "open files (RLIMIT_NOFILE)",
            soft.to_string(),
            "",
        )),
        Ok((soft, hard)) => out.push(finding(
            Level::Warn,
            "open files (RLIMIT_NOFILE)",
            format!("{soft} (hard {hard}); every pod under check holds sockets"),
            "ulimit -n 65536 (or LimitNOFILE= in the unit)",
        )),
        Err(e) => out.push(finding(
            Level::Warn,
            "open files (RLIMIT_NOFILE)",
            e.to_string(),
            "",
        )),
    }
    if !scope.containerd {
        return out;
    }
    let sock = &cfg.serve.upstream;
    out.push(match tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::UnixStream::connect(sock)).await {
        Ok(Ok(_)) => finding(Level::Ok, "containerd", format!("unix://{} accepts connections", sock.display()), ""),
        Ok(Err(e)) => finding(
            Level::Fail,
            "containerd",
            format!("unix://{}: {e}", sock.display()),
            "start containerd or point serve.upstream (--upstream) at its CRI socket: non-netperf pods go there",
        ),
        Err(_) => finding(Level::Fail, "containerd", format!("unix://{}: no answer in 2 s", sock.display()), "check containerd"),
    });
    out
}

/// What netready does with each capability it needs (bit numbers of linux/capability.h).
const NEEDED: [(u32, &str, &str); 3] = [
    (
        21,
        "CAP_SYS_ADMIN",
        "network namespaces and their bind mounts",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "lo over netlink, and the plugins' links, addresses and iptables",
    ),
    (
        13,
        "CAP_NET_RAW",
        "ICMP probes from the pod netns, and portmap's iptables",
    ),
];

/// This process's effective capability set (`CapEff` of /proc/self/status).
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The finding on the capabilities netready needs (as root, the plugins it runs get them
/// too): root is not enough where a container runtime or `setpriv` took some away.
fn capabilities(effective: u64) -> Finding {
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(bit, ..)| effective & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    let names = || NEEDED.iter().map(|n| n.1).collect::<Vec<_>>().join(", ");
    if missing.is_empty() {
        finding(Level::Ok, "capabilities", names(), "")
    } else {
        finding(
            Level::Fail,
            "capabilities",
            format!("missing {}", missing.join(", ")),
            format!(
                "run netready as root with {} (a node pod: privileged)",
                names()
            ),
        )
    }
}

/// Prints the findings; fails when any check failed.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let mut cfg = match &args.config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = args.cni_conf_dir {
        cfg.netperf.cni.conf_dir = d;
    }
    if !args.cni_bin_dir.is_empty() {
        cfg.netperf.cni.bin_dirs = args.cni_bin_dir;
    }
    if let Some(u) = args.upstream {
        cfg.serve.upstream = u;
    }
    let all = findings(
        &cfg,
        args.pods,
        Scope {
            containerd: !cfg.serve.upstream.as_os_str().is_empty(),
            ip_forward: true,
        },
    )
    .await;
    print(&all, false);
    let failed = all.iter().filter(|f| f.level == Level::Fail).count();
    Ok(u8::from(failed > 0))
}

/// Prints findings (`problems_only`: warnings and failures) and a summary line.
pub fn print(all: &[Finding], problems_only: bool) {
    for f in all
        .iter()
        .filter(|f| !problems_only || f.level != Level::Ok)
    {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag} {:<32} {}", f.what, f.found);
        if !f.fix.is_empty() && f.level != Level::Ok {
            println!("     fix: {}", f.fix);
        }
    }
    let failed = all.iter().filter(|f| f.level == Level::Fail).count();
    let warned = all.iter().filter(|f| f.level == Level::Warn).count();
    println!("preflight: {failed} failed, {warned} warnings");
}
