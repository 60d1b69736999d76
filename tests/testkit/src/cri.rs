//! Typed CRI clients over a unix socket, with kubelet's 16 MiB message limits.

use std::path::Path;

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// kubelet's limit for CRI messages, both ways.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A channel to a CRI socket (connected once, now).
pub async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let path = socket.to_owned();
    Ok(Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?)
}

/// Runtime and image clients on one connection.
pub async fn connect(
    socket: &Path,
) -> anyhow::Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>)> {
    let ch = channel(socket).await?;
    Ok((
        RuntimeServiceClient::new(ch.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        ImageServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    ))
}
