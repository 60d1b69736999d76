//! Reachability checks from inside a pod's network namespace: ICMP echo and HTTP GET, timed.
//!
//! Sockets are created on a short-lived thread that has entered the pod's netns (a socket
//! belongs to the namespace it was created in, wherever it is used later) and then driven by
//! tokio like any other socket. No tokio worker ever enters a namespace.

pub mod error;
pub mod http;
pub mod icmp;
pub mod plan;

pub use error::{Error, Result};
