//! Accepting the `:authority` that real CRI clients send.
//!
//! A gRPC client that dials a unix socket has no host name to put in `:authority`, and real
//! clients fill it with whatever their resolver had: kubelet v1.28 (grpc-go's passthrough
//! resolver, `grpc.Dial("/run/netready/netready.sock")`) and grpc-java send the socket path,
//! grpc C-core ≥ 1.57 (Python `grpcio`, Ruby, C++) sends it %-encoded. The `h2` crate under
//! hyper parses `:authority` as a URI authority and answers anything it cannot parse with
//! RST_STREAM PROTOCOL_ERROR before netready sees the call (hyperium/h2 issue 442; the change
//! that would relax it, PR 487, is not merged), so kubelet exits at start-up with "stream
//! terminated by RST_STREAM". This adapter exists for those clients and stays as long as they do.
//!
//! It sits between the socket and hyper's HTTP/2 server, on the bytes the client sends:
//!
//! - Frames that carry no header block pass byte for byte; the server's direction is not
//!   touched at all.
//! - Every header block (HEADERS and its CONTINUATIONs; requests and trailers alike, streams
//!   h2 will later reset included) is decoded in order with the client's HPACK dynamic table
//!   (`loona-hpack`): HPACK is stateful, so a skipped block would desynchronise the table and
//!   make a later call resolve to the wrong method instead of failing.
//! - Each block is re-encoded as literals *without indexing*, so h2's decoder table stays empty
//!   and no later block can depend on what was rewritten. An `:authority` that h2 would reject
//!   (it fails [`http::uri::Authority`]'s parse: a path, a %-encoded path, an empty value)
//!   becomes `localhost`, which is what crictl sends; a valid one, or none, stays as it was.
//!   Names, values, order, the never-indexed flag, END_STREAM and priority are kept; padding
//!   and the client's frame split are not (they carry no meaning).
//! - What h2 would check on the client's HPACK, this does instead, since h2 no longer sees it:
//!   dynamic table size updates only at the start of a block, at most two, none above the
//!   table size h2 advertises ([`HEADER_TABLE_SIZE`]); a decoding error is a connection error,
//!   answered with GOAWAY COMPRESSION_ERROR. Buffering is bounded by [`MAX_FRAME_SIZE`] per
//!   frame, [`MAX_HEADER_BLOCK`] and [`MAX_BLOCK_FRAMES`] per block. One difference from h2
//!   alone: a header list over [`MAX_HEADER_LIST_SIZE`] (1 MiB; CRI sends a few hundred bytes)
//!   ends the connection with ENHANCE_YOUR_CALM where h2 would refuse only that stream, since
//!   re-encoding an unbounded list to let h2 refuse it is the memory blow-up the bound exists
//!   to prevent.
//!
//! The cost is one copy of the client's bytes and a decode plus encode per header block:
//! `passthrough` in `crates/netready/benches` measures it against the added-latency gate.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest frame payload the server accepts (SETTINGS_MAX_FRAME_SIZE). The server must
/// advertise exactly this: the adapter rejects larger header frames and splits the blocks it
/// writes at this size.
pub const MAX_FRAME_SIZE: u32 = 16_384;
/// The HPACK dynamic table size the server advertises (SETTINGS_HEADER_TABLE_SIZE): the
/// largest table the client's encoder may use, hence the adapter's decoder.
pub const HEADER_TABLE_SIZE: u32 = 4_096;
/// The largest header list the server accepts (SETTINGS_MAX_HEADER_LIST_SIZE: names, values
/// and 32 bytes per field).
pub const MAX_HEADER_LIST_SIZE: u32 = 1024 * 1024;
/// The largest encoded header block (all its fragments) the adapter buffers.
pub const MAX_HEADER_BLOCK: usize = MAX_HEADER_LIST_SIZE as usize;

/// Frames one header block may span: a full block in maximal frames, and a quarter more, as
/// h2 allows (its guard against CONTINUATION floods, CVE-2024-27316).
pub const MAX_BLOCK_FRAMES: usize = MAX_HEADER_BLOCK / MAX_FRAME_SIZE as usize * 5 / 4;

const PREFACE_LEN: usize = 24;
const FRAME_HEAD_LEN: usize = 9;
const READ_CHUNK: usize = 16 * 1024;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// An HTTP/2 error code (RFC 9113 §7) the adapter ends a connection with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    /// A frame that breaks the framing rules.
    Protocol = 0x1,
    /// A header frame larger than [`MAX_FRAME_SIZE`].
    FrameSize = 0x6,
    /// A header block that does not decode.
    Compression = 0x9,
    /// A header block or list over the bounds.
    EnhanceYourCalm = 0xb,
}

/// Why the adapter ends a connection.
#[derive(Debug)]
struct ConnError {
    reason: Reason,
    detail: String,
}

fn conn_err(reason: Reason, detail: impl Into<String>) -> ConnError {
    ConnError {
        reason,
        detail: detail.into(),
    }
}

/// Where the adapter is in the client's byte stream.
#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Inside the connection preface (bytes left).
    Preface(usize),
    /// At the start of a frame.
    FrameHead,
    /// Inside the payload of a frame passed through unchanged (bytes left).
    Payload(usize),
}

/// A header block whose END_HEADERS has not arrived yet.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
}

/// A GOAWAY the adapter owes the client.
struct Goaway {
    frame: Bytes,
    sent: usize,
}

/// Follows frame boundaries in what the server writes, so that a GOAWAY of the adapter's
/// never lands inside one of hyper's frames.
#[derive(Default)]
struct FrameCursor {
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
    payload_left: usize,
}

impl FrameCursor {
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let k = self.payload_left.min(bytes.len());
                self.payload_left -= k;
                bytes = &bytes[k..];
            } else {
                let k = (FRAME_HEAD_LEN - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + k].copy_from_slice(&bytes[..k]);
                self.head_len += k;
                bytes = &bytes[k..];
                if self.head_len == FRAME_HEAD_LEN {
                    self.payload_left = frame_len(&self.head);
                    self.head_len = 0;
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// How many bytes may be written before the next point where the frame header or the
    /// frame ends (0 at a boundary).
    fn to_boundary(&self) -> usize {
        if self.payload_left > 0 {
            self.payload_left
        } else if self.head_len > 0 {
            FRAME_HEAD_LEN - self.head_len
        } else {
            0
        }
    }
}

fn frame_len(head: &[u8]) -> usize {
    (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2])
}

fn stream_id(head: &[u8]) -> u32 {
    u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff
}

/// The server side of a client connection, with every header block re-encoded so that h2
/// accepts the `:authority` real clients send. See the module documentation.
pub struct AuthorityFix<T> {
    io: T,
    /// Bytes from the client not parsed yet.
    rx: BytesMut,
    /// Bytes for hyper, already parsed and rewritten.
    ready: BytesMut,
    state: Rx,
    hpack: loona_hpack::Decoder<'static>,
    block: Option<OpenBlock>,
    /// The highest stream whose headers hyper was handed: the GOAWAY's last stream.
    last_stream: u32,
    eof: bool,
    writes: FrameCursor,
    failure: Option<Goaway>,
    /// hyper's read, parked until the GOAWAY can go out between two of hyper's frames.
    parked_read: Option<std::task::Waker>,
    /// Frames in the open header block (h2 caps CONTINUATION floods; it no longer sees them).
    block_frames: usize,
}

// === impl AuthorityFix ===

impl<T> AuthorityFix<T> {
    /// Wraps the server side of a freshly accepted connection.
    pub fn new(io: T) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(HEADER_TABLE_SIZE as usize);
        AuthorityFix {
            io,
            rx: BytesMut::with_capacity(READ_CHUNK),
            ready: BytesMut::new(),
            state: Rx::Preface(PREFACE_LEN),
            hpack,
            block: None,
            last_stream: 0,
            eof: false,
            writes: FrameCursor::default(),
            failure: None,
            parked_read: None,
            block_frames: 0,
        }
    }

    /// Parses what it can of `rx` into `ready`; `false` when it needs more bytes.
    fn process(&mut self) -> Result<bool, ConnError> {
        match self.state {
            Rx::Preface(left) | Rx::Payload(left) => {
                let k = left.min(self.rx.len());
                if k == 0 && left > 0 {
                    return Ok(false);
                }
                self.ready.extend_from_slice(&self.rx.split_to(k));
                self.state = match (self.state, left - k) {
                    (_, 0) => Rx::FrameHead,
                    (Rx::Preface(_), n) => Rx::Preface(n),
                    (_, n) => Rx::Payload(n),
                };
                Ok(true)
            }
            Rx::FrameHead => {
                if self.rx.len() < FRAME_HEAD_LEN {
                    return Ok(false);
                }
                let len = frame_len(&self.rx);
                let (kind, flags, stream) = (self.rx[3], self.rx[4], stream_id(&self.rx));
                if let Some(open) = &self.block {
                    if kind != CONTINUATION || stream != open.stream {
                        return Err(conn_err(
                            Reason::Protocol,
                            format!(
                                "expected CONTINUATION of stream {}, got frame type {kind} on stream {stream}",
                                open.stream
                            ),
                        ));
                    }
                }
                match kind {
                    HEADERS | CONTINUATION => {
                        if len > MAX_FRAME_SIZE as usize {
                            return Err(conn_err(
                                Reason::FrameSize,
                                format!("header frame of {len} bytes exceeds {MAX_FRAME_SIZE}"),
                            ));
                        }
                        if self.rx.len() < FRAME_HEAD_LEN + len {
                            self.rx.reserve(FRAME_HEAD_LEN + len - self.rx.len());
                            return Ok(false);
                        }
                        self.rx.advance(FRAME_HEAD_LEN);
                        let payload = self.rx.split_to(len);
                        self.header_frame(kind, flags, stream, payload)?;
                    }
                    PUSH_PROMISE => {
                        return Err(conn_err(Reason::Protocol, "client sent PUSH_PROMISE"));
                    }
                    _ => {
                        self.ready
                            .extend_from_slice(&self.rx.split_to(FRAME_HEAD_LEN));
                        self.state = if len == 0 {
                            Rx::FrameHead
                        } else {
                            Rx::Payload(len)
                        };
                    }
                }
                Ok(true)
            }
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: BytesMut,
    ) -> Result<(), ConnError> {
        if kind == HEADERS {
            if stream == 0 {
                return Err(conn_err(Reason::Protocol, "HEADERS on stream 0"));
            }
            let mut pad = 0;
            if flags & PADDED != 0 {
                if payload.is_empty() {
                    return Err(conn_err(
                        Reason::Protocol,
                        "PADDED HEADERS without pad length",
                    ));
                }
                pad = usize::from(payload.get_u8());
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(conn_err(Reason::Protocol, "HEADERS too short for priority"));
                }
                let mut p = [0; 5];
                payload.copy_to_slice(&mut p);
                priority = Some(p);
            }
            if pad > payload.len() {
                return Err(conn_err(
                    Reason::Protocol,
                    "HEADERS padding exceeds payload",
                ));
            }
            payload.truncate(payload.len() - pad);
            self.block_frames = 1;
            self.block = Some(OpenBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: payload,
            });
        } else {
            let Some(open) = self.block.as_mut() else {
                return Err(conn_err(
                    Reason::Protocol,
                    format!("CONTINUATION on stream {stream} without HEADERS"),
                ));
            };
            self.block_frames += 1;
            if self.block_frames > MAX_BLOCK_FRAMES {
                return Err(conn_err(
                    Reason::EnhanceYourCalm,
                    format!("header block over {MAX_BLOCK_FRAMES} frames"),
                ));
            }
            if open.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(conn_err(
                    Reason::EnhanceYourCalm,
                    format!("header block over {MAX_HEADER_BLOCK} bytes"),
                ));
            }
            open.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS != 0 {
            if let Some(open) = self.block.take() {
                self.emit(open)?;
            }
        }
        Ok(())
    }

    /// Decodes one complete header block and hands hyper its re-encoded frames.
    ///
    /// Fields the client sent as literals *without* indexing (h2 sends every `:path` so)
    /// change no table: their value goes out as the client encoded it, Huffman and all, so it
    /// is never decoded here (h2 decodes it, with its fast decoder). Everything else goes
    /// through the client's table.
    fn emit(&mut self, open: OpenBlock) -> Result<(), ConnError> {
        let block_bytes = &open.fragment[..];
        let (updates, fields) = scan(block_bytes)?;
        for size in updates {
            self.hpack.set_max_table_size(size);
        }
        let hpack_err = |e: loona_hpack::decoder::DecoderError| {
            conn_err(Reason::Compression, format!("hpack: {e}"))
        };
        let mut block = BytesMut::with_capacity(block_bytes.len() * 2);
        let mut list_size = 0usize;
        let mut index_buf = BytesMut::with_capacity(8);
        for f in &fields {
            if f.passes_value() {
                // The name: the table entry's (an indexed lookup changes nothing).
                index_buf.clear();
                encode_int(&mut index_buf, f.name_index, 7, 0x80);
                let mut authority = false;
                let mut name_len = 0;
                self.hpack
                    .decode_with_cb(&index_buf, |name, _| {
                        authority = *name == *b":authority";
                        name_len = name.len();
                        if !authority {
                            block.put_u8(if f.never_indexed { 0x10 } else { 0x00 });
                            encode_int(&mut block, name.len(), 7, 0);
                            block.put_slice(&name);
                        }
                    })
                    .map_err(hpack_err)?;
                if !authority {
                    let raw = &block_bytes[f.value.clone()];
                    block.put_slice(raw);
                    // Huffman codes are at least 5 bits: a bound on the decoded length.
                    list_size += name_len + raw.len() * 8 / 5 + 32;
                    continue;
                }
            }
            self.hpack
                .decode_with_cb(&block_bytes[f.span.clone()], |name, value| {
                    list_size += name.len() + value.len() + 32;
                    if list_size <= MAX_HEADER_LIST_SIZE as usize {
                        let value: &[u8] = if *name == *b":authority" && !is_valid_authority(&value)
                        {
                            b"localhost"
                        } else {
                            &value
                        };
                        encode_literal(&mut block, f.never_indexed, &name, value);
                    }
                })
                .map_err(hpack_err)?;
            if list_size > MAX_HEADER_LIST_SIZE as usize {
                break;
            }
        }
        if list_size > MAX_HEADER_LIST_SIZE as usize {
            return Err(conn_err(
                Reason::EnhanceYourCalm,
                format!("header list over {MAX_HEADER_LIST_SIZE} bytes"),
            ));
        }
        write_header_frames(&mut self.ready, &open, block.freeze());
        self.last_stream = self.last_stream.max(open.stream);
        Ok(())
    }

    /// Notes a connection error; its GOAWAY goes out before hyper is told the stream ended.
    fn fail(&mut self, e: ConnError) {
        tracing::warn!(reason = ?e.reason, detail = %e.detail, "closing CRI connection: bad HTTP/2 from the client");
        let mut frame = BytesMut::with_capacity(FRAME_HEAD_LEN + 8 + e.detail.len());
        let len = 8 + e.detail.len();
        frame.put_uint(len as u64, 3);
        frame.put_u8(GOAWAY);
        frame.put_u8(0);
        frame.put_u32(0);
        frame.put_u32(self.last_stream);
        frame.put_u32(e.reason as u32);
        frame.put_slice(e.detail.as_bytes());
        self.failure = Some(Goaway {
            frame: frame.freeze(),
            sent: 0,
        });
        self.block = None;
        self.rx.clear();
    }
}

impl<T: AsyncWrite + Unpin> AuthorityFix<T> {
    /// Whether a GOAWAY is owed and not fully written.
    fn goaway_owed(&self) -> bool {
        self.failure
            .as_ref()
            .is_some_and(|g| g.sent < g.frame.len())
    }

    /// Writes the owed GOAWAY. Only called between two of hyper's frames (or once it has
    /// started): the server's byte stream stays a sequence of whole frames.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(g) = self.failure.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while g.sent < g.frame.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &g.frame[g.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            g.sent += n;
        }
        if let Some(w) = self.parked_read.take() {
            w.wake();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// After hyper wrote: if a GOAWAY waits and hyper's frame is complete, send it now.
    fn after_write(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.goaway_owed() && self.writes.at_boundary() {
            // Pending is fine: the rest goes out on the next write, flush or read.
            if let Poll::Ready(r) = self.poll_goaway(cx) {
                r?;
            }
        }
        Ok(())
    }

    /// What hyper may write now: with a GOAWAY waiting, nothing until it is out if it has
    /// started, and no further than the end of hyper's current frame if it has not.
    fn write_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        if !self.goaway_owed() {
            return Poll::Ready(Ok(len));
        }
        if self.writes.at_boundary() {
            ready!(self.poll_goaway(cx))?;
            return Poll::Ready(Ok(len));
        }
        Poll::Ready(Ok(len.min(self.writes.to_boundary())))
    }
}

/// One header field representation of a block (RFC 7541 §6).
struct Field {
    /// Its bytes in the block.
    span: std::ops::Range<usize>,
    /// A literal that adds nothing to the table (§6.2.2, §6.2.3).
    unindexed_literal: bool,
    /// §6.2.3: intermediaries must keep it out of tables too.
    never_indexed: bool,
    /// The table index of a literal's name (0: the name is a literal).
    name_index: usize,
    /// A literal's value string, as encoded (length prefix and octets).
    value: std::ops::Range<usize>,
}

impl Field {
    /// Whether the value can go out as the client encoded it: a literal that changes no table
    /// and whose name is an index (so only the name needs a lookup).
    fn passes_value(&self) -> bool {
        self.unindexed_literal && self.name_index != 0
    }
}

/// Walks a block's representations for what the decoder does not check: table size updates
/// only at the start and at most two, each within [`HEADER_TABLE_SIZE`]. Returns the size
/// updates and the fields, in order.
fn scan(block: &[u8]) -> Result<(Vec<usize>, Vec<Field>), ConnError> {
    let bad = |what: &str| conn_err(Reason::Compression, format!("hpack: {what}"));
    let mut fields = Vec::with_capacity(16);
    let mut updates = Vec::new();
    let mut b = block;
    let at = |rest: &[u8]| block.len() - rest.len();
    while let Some(&first) = b.first() {
        let start = at(b);
        if first & 0x80 != 0 {
            b = skip_int(b, 7).ok_or_else(|| bad("truncated index"))?.1;
            fields.push(Field {
                span: start..at(b),
                unindexed_literal: false,
                never_indexed: false,
                name_index: 0,
                value: 0..0,
            });
        } else if first & 0xe0 == 0x20 {
            if !fields.is_empty() {
                return Err(bad("dynamic table size update after a header field"));
            }
            if updates.len() == 2 {
                return Err(bad("more than two dynamic table size updates"));
            }
            let (size, rest) = skip_int(b, 5).ok_or_else(|| bad("truncated size update"))?;
            if size > u64::from(HEADER_TABLE_SIZE) {
                return Err(bad(
                    "dynamic table size update above SETTINGS_HEADER_TABLE_SIZE",
                ));
            }
            updates.push(size as usize);
            b = rest;
        } else {
            let indexing = first & 0x40 != 0;
            let prefix = if indexing { 6 } else { 4 };
            let (index, rest) = skip_int(b, prefix).ok_or_else(|| bad("truncated literal"))?;
            b = rest;
            if index == 0 {
                b = skip_string(b).ok_or_else(|| bad("truncated name"))?;
            }
            let value_start = at(b);
            b = skip_string(b).ok_or_else(|| bad("truncated value"))?;
            fields.push(Field {
                span: start..at(b),
                unindexed_literal: !indexing,
                never_indexed: first & 0xf0 == 0x10,
                name_index: usize::try_from(index).map_err(|_| bad("index out of range"))?,
                value: value_start..at(b),
            });
        }
    }
    if fields.is_empty() && !updates.is_empty() {
        return Err(bad(
            "dynamic table size update at the end of a header block",
        ));
    }
    Ok((updates, fields))
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1): its value and the rest.
fn skip_int(b: &[u8], n: u32) -> Option<(u64, &[u8])> {
    let mask = (1u8 << n) - 1;
    let mut value = u64::from(*b.first()? & mask);
    if value < u64::from(mask) {
        return Some((value, &b[1..]));
    }
    let mut shift = 0;
    for (i, &byte) in b.iter().enumerate().skip(1) {
        // Five continuation bytes reach 2^35: far beyond any length a block can hold.
        if shift > 28 {
            return None;
        }
        value += u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((value, &b[i + 1..]));
        }
    }
    None
}

fn skip_string(b: &[u8]) -> Option<&[u8]> {
    let (len, rest) = skip_int(b, 7)?;
    let len = usize::try_from(len).ok()?;
    rest.get(len..)
}

/// Whether h2 accepts this `:authority` (it parses it exactly so).
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn encode_int(out: &mut BytesMut, value: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.put_u8((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// A literal field with a literal name, never added to the decoder's table (RFC 7541 §6.2.2,
/// §6.2.3); plain octets, no Huffman.
fn encode_literal(out: &mut BytesMut, never_indexed: bool, name: &[u8], value: &[u8]) {
    out.put_u8(if never_indexed { 0x10 } else { 0x00 });
    encode_int(out, name.len(), 7, 0);
    out.put_slice(name);
    encode_int(out, value.len(), 7, 0);
    out.put_slice(value);
}

/// A HEADERS frame and as many CONTINUATIONs as the block needs, none over [`MAX_FRAME_SIZE`].
fn write_header_frames(out: &mut BytesMut, open: &OpenBlock, mut block: Bytes) {
    let max = MAX_FRAME_SIZE as usize;
    let first_room = if open.priority.is_some() {
        max - 5
    } else {
        max
    };
    let mut kind = HEADERS;
    let mut room = first_room;
    loop {
        let chunk = block.split_to(room.min(block.len()));
        let mut flags = 0;
        let mut len = chunk.len();
        if kind == HEADERS {
            if open.end_stream {
                flags |= END_STREAM;
            }
            if open.priority.is_some() {
                flags |= PRIORITY;
                len += 5;
            }
        }
        if block.is_empty() {
            flags |= END_HEADERS;
        }
        out.put_uint(len as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(open.stream);
        if let (HEADERS, Some(p)) = (kind, open.priority) {
            out.put_slice(&p);
        }
        out.put_slice(&chunk);
        if block.is_empty() {
            return;
        }
        kind = CONTINUATION;
        room = max;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Parse everything complete that has arrived, so hyper gets it in one read (a
            // request is HEADERS and DATA in one write); the output held is bounded.
            while this.failure.is_none() && this.ready.len() < READ_CHUNK {
                match this.process() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => this.fail(e),
                }
            }
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.failure.is_some() {
                if this.goaway_owed() && !this.writes.at_boundary() {
                    // hyper is inside a frame; its next write ends it and sends the GOAWAY.
                    this.parked_read = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                ready!(this.poll_goaway(cx))?;
                // End of stream for hyper: the client was told why.
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.rx.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.rx
            ))?;
            if n == 0 {
                this.eof = true;
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let room = ready!(this.write_room(cx, buf.len()))?;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..room]))?;
        this.writes.advance(&buf[..n]);
        this.after_write(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.goaway_owed() {
            // Rare (a connection being closed): one slice at a time keeps the frame accounting
            // simple.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            let k = left.min(b.len());
            this.writes.advance(&b[..k]);
            left -= k;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway_owed() && this.writes.at_boundary() {
            ready!(this.poll_goaway(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway_owed() && this.writes.at_boundary() {
            ready!(this.poll_goaway(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
