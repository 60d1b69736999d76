//! The gRPC wire format as netready touches it: length-prefixed message frames, statuses in
//! headers and trailers, and bodies collected with a size limit.
//!
//! netready forwards most calls as raw HTTP/2 and decodes a message only to route it or to add
//! netready's own entries to a reply, so these helpers work on bytes, not on typed codecs.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tonic::Status;

/// Largest message kubelet sends or accepts (kubelet's own limit is 16 MiB both ways).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

const FRAME_HEADER: usize = 5;

/// A body read to its end: the data and the trailers that followed it.
#[derive(Debug, Default)]
pub struct Collected {
    /// All data frames, concatenated.
    pub data: Bytes,
    /// HTTP/2 trailers, where gRPC puts the status of a call with a body.
    pub trailers: Option<HeaderMap>,
}

/// Reads a body to its end, refusing more than `limit` bytes of data.
pub async fn collect<B>(body: B, limit: usize) -> Result<Collected, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = Limited::new(body, limit).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            Status::resource_exhausted(format!("message larger than {limit} bytes"))
        } else {
            Status::unavailable(format!("reading message body: {e}"))
        }
    })?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        data: collected.to_bytes(),
        trailers,
    })
}

/// Splits one uncompressed gRPC frame into its message bytes.
///
/// A unary call carries exactly one frame; anything else is a protocol error named as such.
pub fn unframe(data: &Bytes) -> Result<Bytes, Status> {
    if data.len() < FRAME_HEADER {
        return Err(Status::internal(format!(
            "grpc frame: {} bytes, shorter than the 5-byte header",
            data.len()
        )));
    }
    if data[0] != 0 {
        return Err(Status::unimplemented(
            "grpc frame: compressed messages are not supported on routed methods",
        ));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() != FRAME_HEADER + len {
        return Err(Status::internal(format!(
            "grpc frame: header says {len} bytes, body has {}",
            data.len() - FRAME_HEADER
        )));
    }
    Ok(data.slice(FRAME_HEADER..))
}

/// Wraps message bytes (possibly several encoded pieces, concatenated) into one gRPC frame.
pub fn frame(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(FRAME_HEADER + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    for p in parts {
        buf.put_slice(p);
    }
    buf.freeze()
}

/// The status of a finished call: from the trailers, or from the headers of a
/// trailers-only response. A call that ended with neither is an upstream protocol error.
pub fn status_of(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Status {
    trailers
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(headers))
        .unwrap_or_else(|| Status::internal("upstream reply carried no grpc-status"))
}

/// A complete successful unary reply: headers as gRPC wants them, one frame, `grpc-status: 0`.
pub fn ok_reply(mut headers: HeaderMap, message_parts: &[&[u8]]) -> Response<Body> {
    headers.remove(http::header::CONTENT_LENGTH);
    if !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(frame(message_parts)).with_trailers(async move { Some(Ok(trailers)) });
    let mut resp = Response::new(Body::new(body));
    *resp.headers_mut() = headers;
    resp
}

/// Rebuilds a reply from collected parts, unchanged.
pub fn replay(headers: HeaderMap, collected: Collected) -> Response<Body> {
    let trailers = collected.trailers;
    let body = Full::new(collected.data).with_trailers(async move { trailers.map(Ok) });
    let mut resp = Response::new(Body::new(body));
    *resp.headers_mut() = headers;
    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    resp
}

/// A trailers-only error reply.
pub fn error_reply(status: Status) -> Response<Body> {
    status.into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let framed = frame(&[b"ab", b"cd"]);
        assert_eq!(&framed[..], &[0, 0, 0, 0, 4, b'a', b'b', b'c', b'd']);
        assert_eq!(&unframe(&framed).unwrap()[..], b"abcd");
    }

    #[test]
    fn unframe_rejects_bad_frames() {
        let short = Bytes::from_static(&[0, 0, 0]);
        assert!(unframe(&short).unwrap_err().message().contains("shorter"));
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 0]);
        assert_eq!(
            unframe(&compressed).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        let wrong_len = Bytes::from_static(&[0, 0, 0, 0, 9, 1]);
        assert!(unframe(&wrong_len)
            .unwrap_err()
            .message()
            .contains("9 bytes"));
    }

    #[test]
    fn status_prefers_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "14".parse().unwrap());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(
            status_of(&headers, Some(&trailers)).code(),
            tonic::Code::NotFound
        );
        assert_eq!(status_of(&headers, None).code(), tonic::Code::Unavailable);
        assert_eq!(
            status_of(&HeaderMap::new(), None).code(),
            tonic::Code::Internal
        );
    }
}
