//! Reachability checks from inside a pod's network namespace: ICMP echo and HTTP GET, timed.
//!
//! Sockets are created on a short-lived thread that has entered the pod's netns (a socket
//! belongs to the namespace it was created in, wherever it is used later) and then driven by
//! tokio like any other socket. No tokio worker ever enters a namespace.

pub mod error;
pub mod http;
pub mod icmp;
pub mod load;
pub mod plan;

pub use error::{Error, Result};

use std::path::Path;

/// Runs `f` inside the netns at `netns` on one of a few pool threads kept for this (see
/// [`netready_netns::EnterPool`]): no tokio worker waits, and no thread is made per socket.
pub async fn in_netns<T, F>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    static POOL: std::sync::OnceLock<netready_netns::EnterPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| netready_netns::EnterPool::new(8));
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The pool reports an entry failure on a channel this drops: the closure is then never
    // run, and the dropped sender says so.
    drop(pool.run(netns, move || {
        let _ = tx.send(f());
    }));
    rx.await
        .map_err(|_| Error::Socket(format!("cannot enter netns {}", netns.display())))
}
