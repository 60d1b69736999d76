//! gRPC at the byte level: a client that sends exact message bytes, and a recording upstream
//! that answers with exact bytes. Used to prove that netready forwards what a typed proxy
//! would lose (unknown fields, unknown methods) unchanged.
//!
//! containerd cannot show the bytes it received, so the byte-for-byte check needs an upstream
//! that records them; everything else in the tests runs against the real containerd.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Frames a message: flag 0, 4-byte big-endian length, bytes.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Splits a body of concatenated frames into messages.
pub fn unframe_all(mut data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        out.push(Bytes::copy_from_slice(&data[5..5 + len]));
        data = &data[5 + len..];
    }
    out
}

/// The result of a raw call.
#[derive(Debug)]
pub struct RawReply {
    /// `grpc-status` (from trailers, or headers of a trailers-only reply).
    pub code: i32,
    /// `grpc-message`, percent-decoded.
    pub message: String,
    /// The reply messages, unframed.
    pub messages: Vec<Bytes>,
}

/// Calls `path` on the CRI socket with `msg` as the exact request message.
pub async fn call(socket: &Path, path: &str, msg: &[u8]) -> anyhow::Result<RawReply> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(msg)))?;
    let resp = send.send_request(req).await?;
    let (head, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let pick = |name: &str| {
        trailers
            .get(name)
            .or_else(|| head.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let code = pick("grpc-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    let message = pick("grpc-message")
        .map(|m| percent_decode(&m))
        .unwrap_or_default();
    Ok(RawReply {
        code,
        message,
        messages: unframe_all(&data),
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the recording upstream answers on a path: these messages, then status OK.
pub type Script = HashMap<String, Vec<Bytes>>;

/// A gRPC server on a unix socket that records every request and replies from a script.
#[derive(Debug)]
pub struct RecordingUpstream {
    socket: PathBuf,
    received: Arc<Mutex<Vec<(String, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    /// Listens on `socket`; a path missing from `script` gets UNIMPLEMENTED.
    pub async fn start(socket: &Path, script: Script) -> anyhow::Result<Self> {
        let listener = tokio::net::UnixListener::bind(socket)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let rec = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rec = rec.clone();
                let script = script.clone();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let rec = rec.clone();
                        let script = script.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            rec.lock().unwrap().push((path.clone(), body));
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                                match script.get(&path) {
                                    Some(msgs) => {
                                        let mut trailers = http::HeaderMap::new();
                                        trailers.insert("grpc-status", "0".parse().unwrap());
                                        msgs.iter()
                                            .map(|m| Ok(Frame::data(frame(m))))
                                            .chain(std::iter::once(Ok(Frame::trailers(trailers))))
                                            .collect()
                                    }
                                    None => {
                                        let mut trailers = http::HeaderMap::new();
                                        trailers.insert("grpc-status", "12".parse().unwrap());
                                        trailers.insert(
                                            "grpc-message",
                                            "recording upstream: unknown method".parse().unwrap(),
                                        );
                                        vec![Ok(Frame::trailers(trailers))]
                                    }
                                };
                            let body = StreamBody::new(futures_lite_iter(frames));
                            let resp = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(RecordingUpstream {
            socket: socket.to_owned(),
            received,
            task,
        })
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every request so far: path and the exact body bytes (frames included).
    pub fn received(&self) -> Vec<(String, Bytes)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn futures_lite_iter<T>(items: Vec<T>) -> tokio_stream::Iter<std::vec::IntoIter<T>> {
    tokio_stream::iter(items)
}
