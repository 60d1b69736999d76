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
    get_on(None, ns, addr, host, path, timeout, sending).await
}

/// A TCP socket of `addr`'s family in the calling thread's netns.
pub fn socket_here(addr: &SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
}

/// [`get`] on `socket` when one is given (made in `ns` beforehand, of `addr`'s family), else
/// on a new one made in `ns`.
pub async fn get_on(
    socket: Option<tokio::net::TcpSocket>,
    ns: &Path,
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    sending: impl FnOnce(),
) -> Result<HttpTiming> {
    let socket = match socket {
        Some(s) => s,
        None => crate::in_netns(ns, move || socket_here(&addr))
            .await?
            .map_err(|e| Error::Socket(e.to_string()))?,
    };
    // Closed with a reset once the answer is in: one packet instead of the FIN exchange on
    // both sides, and no TIME_WAIT socket or conntrack entry left behind per probe (the cost
    // kubelet's probes were changed to avoid, kubernetes#115143). A zero linger never blocks
    // the close; tokio's own setter is deprecated for the blocking kind, hence socket2.
    socket2::SockRef::from(&socket)
        .set_linger(Some(Duration::ZERO))
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
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, host.as_str())
            .header(http::header::USER_AGENT, "netready-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Http(e.to_string()))?;
        let sent = Instant::now();
        let answer = async {
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
            Ok::<_, Error>((first_byte, status))
        };
        // The connection is driven here, not in a task of its own, and dropped unpolled once
        // the answer is in: a connection polled after that could shut its side down (a FIN)
        // before the reset. When it ends first (the server closed it), the answer may still
        // be complete in its buffer.
        tokio::pin!(answer, conn);
        let (first_byte, status) = tokio::select! {
            biased;
            a = &mut answer => a?,
            _ = &mut conn => answer.await?,
        };
        let total = start.elapsed();
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
