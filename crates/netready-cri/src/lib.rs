//! CRI (runtime.v1) server of netready: routing, lossless passthrough to containerd, merged
//! answers.
//!
//! kubelet talks to [`server::serve`]; the [`Router`] sends each call to netready's own
//! runtime (a [`LocalRuntime`], for netperf pods) or to the upstream runtime as raw HTTP/2, so
//! fields and methods this proto does not know reach containerd unchanged.

pub mod answers;
pub mod authority;
pub mod config;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod local;
pub mod netperf;
pub mod observe;
pub mod route;
pub mod router;
pub mod server;
pub mod upstream;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use error::{Error, Result};
pub use k8s_cri::v1 as cri;
pub use local::LocalRuntime;
pub use netperf::{NetperfConfig, NetperfRuntime};
pub use router::Router;
pub use upstream::Upstream;
