//! The adapter in front of hyper's real HTTP/2 server, fed raw frames. Clients nobody here
//! wrote (grpc-go, grpcio, python-hyper's h2/hpack) are in `crates/netready/tests/interop.rs`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;

/// Serves `authority|path` of each request over hyper's HTTP/2 server, with or without the
/// adapter; `pipe` is the duplex buffer size (1 makes every read a single byte).
fn server(pipe: usize, fix: bool) -> DuplexStream {
    let (client, server) = tokio::io::duplex(pipe);
    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let body = format!("{authority}|{}", req.uri().path());
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .max_frame_size(MAX_FRAME_SIZE)
        .header_table_size(HEADER_TABLE_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE);
    tokio::spawn(async move {
        let _ = if fix {
            builder
                .serve_connection(TokioIo::new(AuthorityFix::new(server)), svc)
                .await
        } else {
            builder.serve_connection(TokioIo::new(server), svc).await
        };
    });
    client
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = BytesMut::new();
    f.put_uint(payload.len() as u64, 3);
    f.put_u8(kind);
    f.put_u8(flags);
    f.put_u32(stream);
    f.put_slice(payload);
    f.to_vec()
}

fn request(path: &str, authority: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if let Some(a) = authority {
        h.push((b":authority".to_vec(), a.as_bytes().to_vec()));
    }
    h.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    h
}

/// What came back on a connection: each stream's status and body, or the GOAWAY code.
#[derive(Debug, Default)]
struct Answers {
    bodies: HashMap<u32, String>,
    resets: HashMap<u32, u32>,
    goaway: Option<u32>,
}

/// Sends `bytes`, then reads until every stream in `streams` finished or the connection ended.
async fn exchange(io: DuplexStream, bytes: Vec<u8>, streams: &[u32]) -> Answers {
    exchange_after(io, bytes, streams, Duration::ZERO).await
}

/// As [`exchange`], reading only after `read_delay` (the server blocks on a full pipe).
async fn exchange_after(
    mut io: DuplexStream,
    bytes: Vec<u8>,
    streams: &[u32],
    read_delay: Duration,
) -> Answers {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(bytes);
    let (mut rd, mut wr) = tokio::io::split(&mut io);
    let write = async {
        // Small writes, so the adapter sees every split of the stream.
        for chunk in out.chunks(7) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
        }
    };
    let read = async {
        tokio::time::sleep(read_delay).await;
        let mut answers = Answers::default();
        let mut dec = loona_hpack::Decoder::new();
        let mut pending: Vec<u32> = streams.to_vec();
        while !pending.is_empty() {
            let mut head = [0u8; 9];
            if rd.read_exact(&mut head).await.is_err() {
                break;
            }
            let mut payload = vec![0; frame_len(&head)];
            if rd.read_exact(&mut payload).await.is_err() {
                break;
            }
            let (kind, flags, stream) = (head[3], head[4], stream_id(&head));
            match kind {
                HEADERS => {
                    dec.decode(&payload).expect("server's HPACK");
                    if flags & END_STREAM != 0 {
                        pending.retain(|s| *s != stream);
                    }
                }
                DATA => {
                    answers
                        .bodies
                        .entry(stream)
                        .or_default()
                        .push_str(&String::from_utf8_lossy(&payload));
                    if flags & END_STREAM != 0 {
                        pending.retain(|s| *s != stream);
                    }
                }
                RST_STREAM => {
                    answers
                        .resets
                        .insert(stream, u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    pending.retain(|s| *s != stream);
                }
                GOAWAY => {
                    answers.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                    break;
                }
                _ => {}
            }
        }
        answers
    };
    let ((), answers) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(write, read)
    })
    .await
    .expect("the server answered within 10 s");
    answers
}

fn headers_frame(
    enc: &mut loona_hpack::Encoder<'_>,
    stream: u32,
    h: &[(Vec<u8>, Vec<u8>)],
) -> Vec<u8> {
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

#[tokio::test]
async fn h2_alone_resets_a_socket_path_authority() {
    // The bug this adapter exists for; if h2 ever accepts it, the adapter can go.
    let mut enc = loona_hpack::Encoder::new();
    let req = headers_frame(
        &mut enc,
        1,
        &request("/a", Some("/run/netready/netready.sock")),
    );
    let answers = exchange(server(64 * 1024, false), req, &[1]).await;
    assert_eq!(
        answers.resets.get(&1),
        Some(&(Reason::Protocol as u32)),
        "{answers:?}"
    );
}

#[tokio::test]
async fn every_authority_form_real_clients_send_is_served() {
    for pipe in [1, 64 * 1024] {
        let mut enc = loona_hpack::Encoder::new();
        let forms = [
            (Some("/run/netready/netready.sock"), "localhost"),
            (Some("%2Frun%2Fnetready%2Fnetready.sock"), "localhost"),
            (Some("localhost"), "localhost"),
            (Some("127.0.0.1:10010"), "127.0.0.1:10010"),
            (Some(""), "localhost"),
            (None, ""),
        ];
        let mut bytes = Vec::new();
        let mut streams = Vec::new();
        for (i, (authority, _)) in forms.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            streams.push(stream);
            bytes.extend(headers_frame(
                &mut enc,
                stream,
                &request(&format!("/m{i}"), *authority),
            ));
        }
        let answers = exchange(server(pipe, true), bytes, &streams).await;
        assert!(
            answers.goaway.is_none() && answers.resets.is_empty(),
            "{answers:?}"
        );
        for (i, (_, seen)) in forms.iter().enumerate() {
            assert_eq!(
                answers.bodies[&(1 + 2 * i as u32)],
                format!("{seen}|/m{i}"),
                "form {i}"
            );
        }
    }
}

#[tokio::test]
async fn dynamic_table_references_resolve_to_the_right_call() {
    // The client's encoder indexes the authority and paths, then refers to them by index:
    // calls 3 and 4 are one byte per field, and only a decoder in step gets their paths right.
    let mut enc = loona_hpack::Encoder::new();
    let auth = Some("/run/netready/netready.sock");
    let mut bytes = Vec::new();
    for (stream, path) in [
        (1, "/Version"),
        (3, "/Status"),
        (5, "/Version"),
        (7, "/Status"),
    ] {
        bytes.extend(headers_frame(&mut enc, stream, &request(path, auth)));
    }
    let answers = exchange(server(1, true), bytes, &[1, 3, 5, 7]).await;
    assert_eq!(answers.bodies[&1], "localhost|/Version");
    assert_eq!(answers.bodies[&3], "localhost|/Status");
    assert_eq!(answers.bodies[&5], "localhost|/Version");
    assert_eq!(answers.bodies[&7], "localhost|/Status");
}

#[tokio::test]
async fn continuation_padding_and_priority_are_reassembled() {
    let mut enc = loona_hpack::Encoder::new();
    let h = request("/split", Some("/run/netready/netready.sock"));
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    // Cut inside the authority's string, across three frames.
    let cut1 = block.len() / 3;
    let cut2 = 2 * block.len() / 3;
    let mut first = vec![4u8]; // pad length
    first.extend([0, 0, 0, 0, 16]); // priority: no dependency, weight 17
    first.extend(&block[..cut1]);
    first.extend([0; 4]);
    let mut bytes = frame(HEADERS, END_STREAM | PADDED | PRIORITY, 1, &first);
    bytes.extend(frame(CONTINUATION, 0, 1, &block[cut1..cut2]));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[cut2..]));
    let answers = exchange(server(1, true), bytes, &[1]).await;
    assert_eq!(
        answers.bodies.get(&1).map(String::as_str),
        Some("localhost|/split"),
        "{answers:?}"
    );
}

#[tokio::test]
async fn a_block_larger_than_a_frame_is_rewritten_into_continuations() {
    // A header the client Huffman- or index-compressed can grow past one frame once written as
    // plain literals: h2 must still get frames within its limit.
    let mut enc = loona_hpack::Encoder::new();
    let mut h = request("/big", Some("/run/netready/netready.sock"));
    h.push((
        b"x-big".to_vec(),
        vec![b'a'; 3 * MAX_FRAME_SIZE as usize / 2],
    ));
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    let max = MAX_FRAME_SIZE as usize;
    let mut bytes = frame(HEADERS, END_STREAM, 1, &block[..max]);
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[max..]));
    let answers = exchange(server(64 * 1024, true), bytes, &[1]).await;
    assert_eq!(
        answers.bodies.get(&1).map(String::as_str),
        Some("localhost|/big"),
        "{answers:?}"
    );
}

async fn goaway_for(block: Vec<u8>) -> Option<u32> {
    let mut enc = loona_hpack::Encoder::new();
    let mut bytes = headers_frame(&mut enc, 1, &request("/ok", Some("/x.sock")));
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &block));
    // After a connection error the server may close at once (RFC 9113 §5.4.1), so stream 1's
    // answer may or may not arrive; the GOAWAY must.
    exchange(server(64 * 1024, true), bytes, &[1, 3])
        .await
        .goaway
}

#[tokio::test]
async fn hpack_violations_end_the_connection_with_compression_error() {
    let compression = Some(Reason::Compression as u32);
    // Three table size updates before the first field.
    assert_eq!(goaway_for(vec![0x20, 0x20, 0x20, 0x82]).await, compression);
    // A size update after a field.
    assert_eq!(goaway_for(vec![0x82, 0x20]).await, compression);
    // A size update above SETTINGS_HEADER_TABLE_SIZE (4096 + 1, 5-bit prefix).
    assert_eq!(goaway_for(vec![0x3f, 0xe2, 0x1f, 0x82]).await, compression);
    // An index past both tables.
    assert_eq!(goaway_for(vec![0xff, 0x7f]).await, compression);
    // A literal cut short.
    assert_eq!(goaway_for(vec![0x00, 0x05, b'a']).await, compression);
}

#[tokio::test]
async fn two_size_updates_at_the_start_are_fine() {
    let mut enc = loona_hpack::Encoder::new();
    let mut bytes = headers_frame(&mut enc, 1, &request("/ok", Some("/x.sock")));
    // Size 0, size 4096, then GET / over http.
    let block = [0x20, 0x3f, 0xe1, 0x1f, 0x82, 0x86, 0x84];
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &block));
    let answers = exchange(server(64 * 1024, true), bytes, &[1, 3]).await;
    assert_eq!(answers.goaway, None);
    assert_eq!(
        answers.bodies.get(&3).map(String::as_str),
        Some("|/"),
        "{answers:?}"
    );
}

#[tokio::test]
async fn frame_and_block_bounds_end_the_connection() {
    let mut enc = loona_hpack::Encoder::new();
    let ok = headers_frame(&mut enc, 1, &request("/ok", None));
    // A header frame over SETTINGS_MAX_FRAME_SIZE.
    let mut bytes = ok.clone();
    bytes.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &vec![0x82; MAX_FRAME_SIZE as usize + 1],
    ));
    let a = exchange(server(64 * 1024, true), bytes, &[1, 3]).await;
    assert_eq!(a.goaway, Some(Reason::FrameSize as u32));
    // A client may not push.
    let mut bytes = ok.clone();
    bytes.extend(frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]));
    let a = exchange(server(64 * 1024, true), bytes, &[1, 3]).await;
    assert_eq!(a.goaway, Some(Reason::Protocol as u32));
    // A CONTINUATION flood: empty frames that never end the block.
    let mut bytes = ok.clone();
    bytes.extend(frame(HEADERS, END_STREAM, 3, &[0x82]));
    for _ in 0..=MAX_BLOCK_FRAMES {
        bytes.extend(frame(CONTINUATION, 0, 3, &[]));
    }
    let a = exchange(server(64 * 1024, true), bytes, &[1, 3]).await;
    assert_eq!(a.goaway, Some(Reason::EnhanceYourCalm as u32));
    // An HPACK bomb: one 4 KB entry, referenced 300 times in one block (1.2 MB decoded).
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 300));
    let mut bytes = ok;
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &block));
    let a = exchange(server(64 * 1024, true), bytes, &[1, 3]).await;
    assert_eq!(a.goaway, Some(Reason::EnhanceYourCalm as u32));
}

#[tokio::test]
async fn a_goaway_waits_for_the_end_of_hypers_frame() {
    // hyper is halfway through a DATA frame into a full pipe when the bad block arrives: the
    // GOAWAY must follow that frame, not cut into it (the reader parses every frame).
    let mut enc = loona_hpack::Encoder::new();
    let mut bytes = headers_frame(&mut enc, 1, &request("/big", Some("/x.sock")));
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 3, &[0xff, 0x7f]));
    let answers =
        exchange_after(server(64, true), bytes, &[1, 3], Duration::from_millis(300)).await;
    assert_eq!(
        answers.goaway,
        Some(Reason::Compression as u32),
        "{answers:?}"
    );
}

#[tokio::test]
async fn a_frame_inside_an_open_header_block_is_a_protocol_error() {
    let mut enc = loona_hpack::Encoder::new();
    let h = request("/a", None);
    let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
    let mut bytes = frame(HEADERS, END_STREAM, 1, &block[..3]);
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    let answers = exchange(server(64 * 1024, true), bytes, &[1]).await;
    assert_eq!(answers.goaway, Some(Reason::Protocol as u32));
}

#[test]
fn integers_round_trip_at_every_prefix() {
    for n in [4, 5, 6, 7] {
        for value in [
            0usize,
            1,
            (1 << n) - 2,
            (1 << n) - 1,
            1 << n,
            127,
            128,
            4096,
            1 << 20,
        ] {
            let mut out = BytesMut::new();
            encode_int(&mut out, value, n, 0);
            let (back, rest) = skip_int(&out, n).unwrap();
            assert_eq!(
                (back as usize, rest.len()),
                (value, 0),
                "prefix {n} value {value}"
            );
        }
    }
    assert!(skip_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 7).is_none());
}

#[test]
fn frame_cursor_follows_split_writes() {
    let mut c = FrameCursor::default();
    let f = frame(DATA, 0, 1, b"hello");
    c.advance(&f[..4]);
    assert!(!c.at_boundary());
    c.advance(&f[4..10]);
    assert!(!c.at_boundary());
    c.advance(&f[10..]);
    assert!(c.at_boundary());
    c.advance(&frame(SETTINGS, 1, 0, &[]));
    assert!(c.at_boundary());
}

#[tokio::test]
async fn unindexed_huffman_literals_pass_as_encoded_and_an_authority_among_them_is_fixed() {
    // As h2 and grpc-go clients send them: `:path` a Huffman literal without indexing (its value
    // goes to h2 as the client encoded it), `:authority` a Huffman literal never indexed (it is
    // decoded, found to be a socket path and replaced).
    let path: [u8; 25] = [
        0x62, 0xcb, 0x6a, 0x49, 0xa9, 0x2a, 0xfd, 0xc2, 0xbe, 0xdb, 0x6a, 0x49, 0xa9, 0x2e, 0xe2,
        0xd9, 0xdc, 0xc4, 0x2b, 0x1c, 0x4b, 0x62, 0x0c, 0x7a, 0xbf,
    ];
    let authority: [u8; 20] = [
        0x62, 0xcb, 0x6a, 0x62, 0xa2, 0xa6, 0xc2, 0x8e, 0x4f, 0x4c, 0x54, 0x54, 0xd8, 0x51, 0xc9,
        0xe9, 0x74, 0x1c, 0x9d, 0x7f,
    ];
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // literal without indexing, name :path (static 4)
    block.push(0x80 | path.len() as u8);
    block.extend(path);
    block.push(0x11); // literal never indexed, name :authority (static 1)
    block.push(0x80 | authority.len() as u8);
    block.extend(authority);
    let bytes = frame(HEADERS, END_STREAM | END_HEADERS, 1, &block);
    let answers = exchange(server(1, true), bytes, &[1]).await;
    assert_eq!(
        answers.bodies.get(&1).map(String::as_str),
        Some("localhost|/runtime.v1.RuntimeService/Version"),
        "{answers:?}"
    );
}

/// Bounded fuzzing (proptest) of the adapter in front of hyper's real server: random calls,
/// random authorities, random splits of each header block, random bytes.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// `:authority` as clients send it, and as they should not.
    fn authority() -> impl Strategy<Value = String> {
        prop_oneof![
            "/run/[a-z]{1,10}/[a-z]{1,8}\\.sock",
            "%2Frun%2F[a-z]{1,8}%2F[a-z]{1,8}\\.sock",
            "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
            ".{0,24}",
            Just(String::new()),
        ]
    }

    /// A header block cut into HEADERS (optionally padded) and CONTINUATIONs at `cuts`.
    fn split(stream: u32, block: &[u8], cuts: &[usize], pad: Option<u8>) -> Vec<u8> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (block.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in at {
            pieces.push(&block[from..c]);
            from = c;
        }
        pieces.push(&block[from..]);
        let last = pieces.len() - 1;
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let end = if i == last { END_HEADERS } else { 0 };
            if i == 0 {
                match pad {
                    Some(n) => {
                        let mut payload = vec![n];
                        payload.extend_from_slice(p);
                        payload.extend(std::iter::repeat_n(0, usize::from(n)));
                        out.extend(frame(HEADERS, END_STREAM | PADDED | end, stream, &payload));
                    }
                    None => out.extend(frame(HEADERS, END_STREAM | end, stream, p)),
                }
            } else {
                out.extend(frame(CONTINUATION, end, stream, p));
            }
        }
        out
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// Every call is answered, on its own path, whatever its authority and however its
        /// header block is cut: a socket path or one hyper cannot parse becomes `localhost`,
        /// anything else stays; the HPACK table (the encoder indexes) stays in step.
        #[test]
        fn every_call_is_served_whatever_its_authority_and_framing(
            calls in prop::collection::vec(
                (authority(), "[A-Za-z]{1,20}", prop::collection::vec(any::<usize>(), 0..4),
                 prop::option::of(0u8..16)),
                1..6,
            ),
        ) {
            let mut enc = loona_hpack::Encoder::new();
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for (i, (auth, method, cuts, pad)) in calls.iter().enumerate() {
                let stream = 1 + 2 * i as u32;
                let path = format!("/runtime.v1.RuntimeService/{method}");
                let h = request(&path, Some(auth));
                let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
                bytes.extend(split(stream, &block, cuts, *pad));
                want.push((stream, auth.clone(), path));
            }
            let streams: Vec<u32> = want.iter().map(|w| w.0).collect();
            let answers = runtime().block_on(async { exchange(server(64, true), bytes, &streams).await });
            prop_assert_eq!(answers.goaway, None, "{:?}", answers);
            prop_assert!(answers.resets.is_empty(), "{:?}", answers);
            for (stream, auth, path) in want {
                let body = answers.bodies.get(&stream).cloned().unwrap_or_default();
                let (got_auth, got_path) = body.split_once('|').unwrap_or(("?", "?"));
                prop_assert_eq!(got_path, path.as_str(), "{}", body);
                prop_assert!(got_auth == auth || got_auth == "localhost", "{auth:?} became {got_auth:?}");
                if auth.contains('/') || auth.contains('%') || auth.is_empty() {
                    prop_assert_eq!(got_auth, "localhost", "{:?}", auth);
                }
            }
        }

        /// Any bytes after a valid preface: the connection ends (an answer, GOAWAY or close)
        /// once the client stops, and the adapter never panics.
        #[test]
        fn any_bytes_end_the_connection_without_a_panic(
            garbage in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            runtime().block_on(async {
                let (client, srv) = tokio::io::duplex(4096);
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                });
                let task = tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(AuthorityFix::new(srv)), svc)
                        .await;
                });
                let (mut rd, mut wr) = tokio::io::split(client);
                let mut out = PREFACE.to_vec();
                out.extend(frame(SETTINGS, 0, 0, &[]));
                out.extend(&garbage);
                let write = async {
                    let _ = wr.write_all(&out).await;
                    let _ = wr.shutdown().await;
                };
                let read = async {
                    let mut sink = Vec::new();
                    let _ = rd.read_to_end(&mut sink).await;
                };
                tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
                    .await
                    .expect("the connection ended within 10 s");
                let joined = tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .expect("the server task ended");
                assert!(joined.is_ok(), "the server task panicked: {joined:?}");
            });
        }
    }
}
