//! `netready local`'s cluster: K simulated nodes on one machine.
//!
//! Each node is a network namespace with its own CNI bridge and host-local subnet, wired to a
//! "fabric" namespace that routes between nodes and to an external target, as the underlay of
//! a real cluster would. Every node runs its own `netready serve` (a child process entering the
//! node's namespace, so the real CNI plugins it runs put their bridge and veths there), holds a
//! control pod answering ICMP, HTTP and iperf3, and load-balances a service VIP to all control
//! pods the way kube-proxy's iptables mode does. Nothing of it touches the host's own network:
//! every address lives in namespaces made here, and [`Cluster::teardown`] removes them all,
//! including what a killed earlier run left ([`sweep_stale`]).

pub mod cluster;
pub mod control;
pub mod netlink;
mod paths;
pub mod service;
mod sweep;

pub use cluster::{Cluster, MainPlugin, Options};
pub use control::{ControlPod, HttpServer};
pub use sweep::sweep_stale;
