//! Typed CRI clients over a unix socket, dialled the way `netready drive` dials (kubelet's
//! 16 MiB message limits), so tests exercise the product's client rather than a copy of it.

pub use k8s_cri::v1;
pub use netready_drive::{connect, MAX_MESSAGE};
