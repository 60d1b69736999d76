//! HTTP GET from inside a pod's netns: the TCP socket is made there, then connect and the
//! request are timed separately (connect, first byte of the response, whole body).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{Error, Result};

/// Timings of one successful GET.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HttpTiming {
    /// TCP handshake.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub first_byte: Duration,
    /// From the start of connect to the end of the body.
    pub total: Duration,
    /// The status code.
    pub status: u16,
}

/// GET `http://<host><path>` at `addr` from inside `ns`; a non-2xx status is an error.
/// `sending` is called once the socket exists, as the connect starts: what came before it
/// (a thread entering the netns) is netready's queueing, not the network's time.
pub async fn get(
    ns: &Path,
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    sending: impl FnOnce(),
) -> Result<HttpTiming> {
    let socket = crate::in_netns(ns, move || {
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    })
    .await?
    .map_err(|e| Error::Socket(e.to_string()))?;
    sending();
    let host = host.to_owned();
    let path = path.to_owned();
    let exchange = async move {
        let start = Instant::now();
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| Error::Network(e.to_string()))?;
        let connect = start.elapsed();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, host.as_str())
            .header(http::header::USER_AGENT, "netready-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Http(e.to_string()))?;
        let sent = Instant::now();
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let first_byte = sent.elapsed();
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let total = start.elapsed();
        driver.abort();
        if !(200..300).contains(&status) {
            return Err(Error::Status(status));
        }
        Ok(HttpTiming {
            connect,
            first_byte,
            total,
            status,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}
