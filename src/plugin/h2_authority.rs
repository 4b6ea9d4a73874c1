//! Makes HTTP/2 requests with a Unix-socket path as `:authority` acceptable to tonic.
//!
//! The kubelet dials plugin registration sockets with the bare socket path as the gRPC target
//! (no `unix:` scheme, no authority override), so grpc-go sends the socket path, percent-escaped,
//! as the `:authority` pseudo-header. h2, under tonic, refuses any authority that is not a valid
//! URI authority and resets every such stream with `PROTOCOL_ERROR`: the plugin would never be
//! registered on a real node. Other clients send the raw path, or no authority at all.
//!
//! [`AuthorityNormalizer`] wraps an accepted connection and rewrites the client's header blocks
//! before h2 reads them: an `:authority` that does not parse as a URI authority becomes
//! `localhost` (what the kubelet itself sends where it sets an authority for Unix sockets);
//! everything else passes through byte for byte. Only the client-to-server direction is
//! touched; responses are written straight to the socket.
//!
//! HPACK is stateful, so once a connection's header blocks are rewritten every later block must
//! be too: the client's blocks are decoded with the client's dynamic table, and re-encoded as
//! literals that never enter the server's dynamic table, so the server's decoder state cannot
//! drift from ours. Anything the rewriter cannot parse (a bad preface, a broken HPACK block, an
//! oversized header block) is passed on unchanged from then on, so h2 reports the error as it
//! would have without this layer.

use std::{
    borrow::Cow,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tracing::debug;

/// The client connection preface of RFC 9113, section 3.4.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE default).
const MAX_EMIT_FRAME: usize = 16_384;
/// A header block larger than this is not buffered for rewriting; the connection is passed on
/// unchanged and h2 refuses it on its own terms (its header list limit is far smaller).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest dynamic table a client may ask our decoder for. h2 advertises the 4 KiB default; a
/// client that goes beyond that is still decoded, within this bound.
const MAX_DECODER_TABLE: usize = 64 * 1024;
/// What an unusable `:authority` is replaced with.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Where the parser stands in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Matching the 24-byte connection preface; `seen` bytes matched so far.
    Preface { seen: usize },
    /// Collecting the 9-byte header of the next frame.
    FrameHead,
    /// Copying `remaining` payload bytes of a frame that needs no rewriting.
    Payload { remaining: usize },
    /// Collecting `remaining` payload bytes of a HEADERS or CONTINUATION frame.
    HeaderPayload { remaining: usize },
    /// Given up on rewriting: everything passes through unchanged.
    Raw,
}

/// A header block whose frames have not all arrived yet.
#[derive(Debug, Default)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    /// The HPACK fragment so far, padding and priority fields removed.
    fragment: Vec<u8>,
    /// The frames exactly as received, for the pass-through fallback.
    raw: Vec<u8>,
}

/// The pure part: turns the client's bytes into the bytes h2 will read.
pub struct Rewriter {
    phase: Phase,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The payload of the HEADERS or CONTINUATION frame being collected.
    frame: Vec<u8>,
    /// Flags and stream of the frame in `frame`.
    frame_flags: u8,
    frame_type: u8,
    frame_stream: u32,
    block: Option<PendingBlock>,
    decoder: Decoder<'static>,
    /// How many `:authority` values this connection had replaced (for the log).
    replaced: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_DECODER_TABLE);
        Self {
            phase: Phase::Preface { seen: 0 },
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            frame: Vec::new(),
            frame_flags: 0,
            frame_type: 0,
            frame_stream: 0,
            block: None,
            decoder,
            replaced: 0,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Whether the rewriter gave up on this connection and passes bytes through unchanged.
    pub fn is_raw(&self) -> bool {
        self.phase == Phase::Raw
    }

    /// Consumes `input` (any split of the stream) and appends what h2 should read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) {
        while !input.is_empty() {
            match self.phase {
                Phase::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                Phase::Preface { seen } => {
                    let n = input.len().min(PREFACE.len() - seen);
                    let (chunk, rest) = input.split_at(n);
                    input = rest;
                    out.extend_from_slice(chunk);
                    if chunk != &PREFACE[seen..seen + n] {
                        debug!(
                            "HTTP/2 client preface not recognised; passing the connection on unchanged"
                        );
                        self.phase = Phase::Raw;
                    } else if seen + n == PREFACE.len() {
                        self.phase = Phase::FrameHead;
                    } else {
                        self.phase = Phase::Preface { seen: seen + n };
                    }
                }
                Phase::FrameHead => {
                    let n = input.len().min(FRAME_HEADER_LEN - self.head_len);
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEADER_LEN {
                        self.head_len = 0;
                        self.start_frame(out);
                    }
                }
                Phase::Payload { remaining } => {
                    let n = input.len().min(remaining);
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.phase = if n == remaining {
                        Phase::FrameHead
                    } else {
                        Phase::Payload {
                            remaining: remaining - n,
                        }
                    };
                }
                Phase::HeaderPayload { remaining } => {
                    let n = input.len().min(remaining);
                    self.frame.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == remaining {
                        self.phase = Phase::FrameHead;
                        self.end_header_frame(out);
                    } else {
                        self.phase = Phase::HeaderPayload {
                            remaining: remaining - n,
                        };
                    }
                }
            }
        }
    }

    /// The client closed its side: whatever is still held back goes on unchanged, so that h2
    /// sees the same truncated stream it would have seen without this layer.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.phase != Phase::Raw {
            self.give_up(out);
        }
    }

    /// A frame header is complete: decide whether its payload is copied or collected.
    fn start_frame(&mut self, out: &mut BytesMut) {
        let head = self.head;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let frame_type = head[3];
        let flags = head[4];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;

        let is_header_frame = frame_type == TYPE_HEADERS || frame_type == TYPE_CONTINUATION;
        if !is_header_frame {
            if self.block.is_some() {
                // RFC 9113 6.10: nothing may come between a header block's frames. h2 must see
                // the violation as it is.
                self.give_up(out);
                out.extend_from_slice(&head);
                return;
            }
            out.extend_from_slice(&head);
            self.phase = if len == 0 {
                Phase::FrameHead
            } else {
                Phase::Payload { remaining: len }
            };
            return;
        }
        let pending = self.block.as_ref().map_or(0, |b| b.raw.len());
        let continues_block = self.block.as_ref().is_some_and(|b| b.stream_id == stream);
        let well_ordered = if frame_type == TYPE_HEADERS {
            self.block.is_none()
        } else {
            continues_block
        };
        if !well_ordered || pending + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
            self.give_up(out);
            out.extend_from_slice(&head);
            return;
        }
        self.frame.clear();
        self.frame_type = frame_type;
        self.frame_flags = flags;
        self.frame_stream = stream;
        self.phase = Phase::HeaderPayload { remaining: len };
        if len == 0 {
            self.phase = Phase::FrameHead;
            self.end_header_frame(out);
        }
    }

    /// A HEADERS or CONTINUATION payload is complete: add its fragment to the block, and
    /// rewrite the block once its last frame is in.
    fn end_header_frame(&mut self, out: &mut BytesMut) {
        let payload = std::mem::take(&mut self.frame);
        let fragment = if self.frame_type == TYPE_HEADERS {
            header_fragment(&payload, self.frame_flags)
        } else {
            Some(&payload[..])
        };
        let (stream_id, end_stream) = (self.frame_stream, self.frame_flags & FLAG_END_STREAM != 0);
        let block = self.block.get_or_insert_with(|| PendingBlock {
            stream_id,
            end_stream,
            ..PendingBlock::default()
        });
        block.raw.extend_from_slice(&self.head);
        block.raw.extend_from_slice(&payload);
        let Some(fragment) = fragment else {
            self.give_up(out);
            return;
        };
        block.fragment.extend_from_slice(fragment);
        if self.frame_flags & FLAG_END_HEADERS != 0 {
            self.emit_block(out);
        }
    }

    /// Decodes the finished block, fixes its `:authority`, and writes it as new frames.
    fn emit_block(&mut self, out: &mut BytesMut) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoded =
            self.decoder
                .decode_with_cb(&block.fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                    headers.push((name.into_owned(), value.into_owned()))
                });
        if let Err(error) = decoded {
            debug!(
                ?error,
                stream = block.stream_id,
                "undecodable HPACK block; passing the connection on unchanged"
            );
            out.extend_from_slice(&block.raw);
            self.phase = Phase::Raw;
            return;
        }
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                debug!(
                    stream = block.stream_id,
                    authority = %String::from_utf8_lossy(value),
                    "replacing an :authority that is not a URI authority (a socket path) with localhost"
                );
                *value = REPLACEMENT_AUTHORITY.to_vec();
                self.replaced += 1;
            }
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        for (name, value) in &headers {
            encode_literal(name, value, &mut encoded);
        }
        write_header_frames(block.stream_id, block.end_stream, &encoded, out);
    }

    /// Flushes anything held back unchanged and stops rewriting this connection.
    fn give_up(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        match self.phase {
            Phase::HeaderPayload { .. } => {
                out.extend_from_slice(&self.head);
                out.extend_from_slice(&self.frame);
            }
            Phase::FrameHead => out.extend_from_slice(&self.head[..self.head_len]),
            _ => {}
        }
        self.frame.clear();
        self.head_len = 0;
        self.phase = Phase::Raw;
    }
}

/// The HPACK fragment of a HEADERS payload, without padding and priority fields; `None` when
/// the padding length does not fit the frame.
fn header_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let mut body = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&len, rest) = body.split_first()?;
        pad = usize::from(len);
        body = rest;
    }
    if flags & FLAG_PRIORITY != 0 {
        body = body.get(5..)?;
    }
    body.get(..body.len().checked_sub(pad)?)
}

/// What h2 accepts as `:authority`.
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// RFC 7541 6.2.2, literal header field without indexing, new name, plain (not Huffman)
/// strings: needs no state on either side.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// RFC 7541 5.1 integer with an N-bit prefix; `first` holds the bits above the prefix.
fn encode_integer(mut value: usize, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        // Fits in the prefix: value < 2^prefix_bits <= 128, so the cast is exact.
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Writes a header block as one HEADERS frame and as many CONTINUATION frames as the
/// smallest legal frame size needs.
fn write_header_frames(stream: u32, end_stream: bool, block: &[u8], out: &mut BytesMut) {
    let mut chunks = block.chunks(MAX_EMIT_FRAME).peekable();
    let mut frame_type = TYPE_HEADERS;
    let mut flags = if end_stream { FLAG_END_STREAM } else { 0 };
    // An empty block still needs its one HEADERS frame.
    let empty: &[u8] = &[];
    let first = chunks.next().unwrap_or(empty);
    let mut chunk = first;
    loop {
        let last = chunks.peek().is_none();
        if last {
            flags |= FLAG_END_HEADERS;
        }
        let len = chunk.len();
        out.extend_from_slice(&[
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            frame_type,
            flags,
        ]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
        match chunks.next() {
            Some(next) => {
                chunk = next;
                frame_type = TYPE_CONTINUATION;
                flags = 0;
            }
            None => break,
        }
    }
}

/// A server-side connection whose incoming HTTP/2 header blocks pass through a [`Rewriter`].
pub struct AuthorityNormalizer<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to h2.
    ready: BytesMut,
    eof: bool,
}

impl<S> AuthorityNormalizer<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }
}

/// Bytes read from the socket per call.
const READ_CHUNK: usize = 8 * 1024;

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityNormalizer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            let filled = chunk_buf.filled();
            if filled.is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.ready);
                if this.rewriter.replaced() > 0 {
                    debug!(
                        replaced = this.rewriter.replaced(),
                        "connection closed; :authority values replaced on it"
                    );
                }
            } else {
                this.rewriter.feed(filled, &mut this.ready);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityNormalizer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityNormalizer<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    /// The header set grpc-go sends for a unary call dialled with a bare socket path.
    fn kubelet_headers(authority: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut headers = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/pluginregistration.Registration/GetInfo".to_vec(),
            ),
        ];
        if let Some(authority) = authority {
            headers.push((b":authority".to_vec(), authority.as_bytes().to_vec()));
        }
        headers.extend([
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"user-agent".to_vec(), b"grpc-go/1.75.0".to_vec()),
            (b"te".to_vec(), b"trailers".to_vec()),
        ]);
        headers
    }

    const ESCAPED: &str =
        "%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fmock-accel.example.com-reg.sock";

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            frame_type,
            flags,
        ];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn encode(encoder: &mut Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// A parsed frame of the rewritten stream.
    #[derive(Debug)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
        assert!(bytes.starts_with(PREFACE), "output starts with the preface");
        bytes = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            frames.push(Frame {
                kind: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes(bytes[5..9].try_into().unwrap()),
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        frames
    }

    /// A decoded header block: stream, END_STREAM, headers in order.
    type Block = (u32, bool, Vec<(String, String)>);

    /// Decodes every header block of the output with one server-side decoder, as h2 would.
    fn header_blocks(frames: &[Frame]) -> Vec<Block> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut current: Option<(u32, bool, Vec<u8>)> = None;
        for f in frames {
            match f.kind {
                TYPE_HEADERS => {
                    assert!(current.is_none());
                    current = Some((f.stream, f.flags & FLAG_END_STREAM != 0, f.payload.clone()));
                }
                TYPE_CONTINUATION => current.as_mut().unwrap().2.extend_from_slice(&f.payload),
                _ => continue,
            }
            if f.flags & FLAG_END_HEADERS != 0 {
                let (stream, end, block) = current.take().unwrap();
                let headers = decoder
                    .decode(&block)
                    .unwrap()
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect();
                blocks.push((stream, end, headers));
            }
        }
        blocks
    }

    fn authority_of(headers: &[(String, String)]) -> Option<&str> {
        headers
            .iter()
            .find(|(n, _)| n == ":authority")
            .map(|(_, v)| v.as_str())
    }

    fn client_stream() -> Vec<u8> {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = encode(&mut encoder, &kubelet_headers(Some(ESCAPED)));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x05hello"));
        // The second request's block refers to the first through the dynamic table.
        let second = encode(&mut encoder, &kubelet_headers(Some(ESCAPED)));
        assert!(
            second.len() < first.len(),
            "second block uses the dynamic table"
        );
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &second,
        ));
        input
    }

    fn rewrite_in_pieces(input: &[u8], piece: usize) -> (Vec<u8>, Rewriter) {
        let mut rewriter = Rewriter::new();
        let mut out = BytesMut::new();
        for chunk in input.chunks(piece) {
            rewriter.feed(chunk, &mut out);
        }
        rewriter.finish(&mut out);
        (out.to_vec(), rewriter)
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let input = client_stream();
        for piece in [1, 2, 7, 9, 10, 64, input.len()] {
            let (out, rewriter) = rewrite_in_pieces(&input, piece);
            assert_eq!(rewriter.replaced(), 2, "piece size {piece}");
            let frames = parse_frames(&out);
            let blocks = header_blocks(&frames);
            assert_eq!(blocks.len(), 2);
            for (i, (stream, end_stream, headers)) in blocks.iter().enumerate() {
                assert_eq!(*stream, [1, 3][i]);
                assert_eq!(*end_stream, i == 1, "END_STREAM kept on block {i}");
                assert_eq!(authority_of(headers), Some("localhost"));
                let others: Vec<_> = headers.iter().filter(|(n, _)| n != ":authority").collect();
                let expected: Vec<_> = kubelet_headers(None)
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect();
                assert_eq!(
                    others,
                    expected.iter().collect::<Vec<_>>(),
                    "order and values kept"
                );
            }
            let data: Vec<_> = frames.iter().filter(|f| f.kind == 0x0).collect();
            assert_eq!(data.len(), 1);
            assert_eq!(data[0].payload, b"\0\0\0\0\x05hello");
            assert_eq!(data[0].flags, FLAG_END_STREAM);
        }
    }

    #[test]
    fn valid_and_missing_authorities_are_left_alone() {
        for authority in [Some("localhost"), Some("unix.sock:0"), None] {
            let mut encoder = Encoder::new();
            let mut input = PREFACE.to_vec();
            let block = encode(&mut encoder, &kubelet_headers(authority));
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                1,
                &block,
            ));
            let (out, rewriter) = rewrite_in_pieces(&input, 5);
            assert_eq!(rewriter.replaced(), 0);
            let blocks = header_blocks(&parse_frames(&out));
            assert_eq!(authority_of(&blocks[0].2), authority);
        }
    }

    #[test]
    fn raw_path_authority_is_replaced_too() {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        let headers = kubelet_headers(Some("/var/lib/kubelet/plugins_registry/x-reg.sock"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut encoder, &headers),
        ));
        let (out, _) = rewrite_in_pieces(&input, 3);
        assert_eq!(
            authority_of(&header_blocks(&parse_frames(&out))[0].2),
            Some("localhost")
        );
    }

    #[test]
    fn padding_priority_and_continuation_are_folded_into_one_block() {
        let mut encoder = Encoder::new();
        let block = encode(&mut encoder, &kubelet_headers(Some(ESCAPED)));
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight 16
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let (out, rewriter) = rewrite_in_pieces(&input, 4);
        assert_eq!(rewriter.replaced(), 1);
        let frames = parse_frames(&out);
        assert_eq!(frames.len(), 1, "one HEADERS frame out: {frames:?}");
        assert_eq!(frames[0].flags, FLAG_END_STREAM | FLAG_END_HEADERS);
        let blocks = header_blocks(&frames);
        assert_eq!(blocks[0].0, 5);
        assert_eq!(authority_of(&blocks[0].2), Some("localhost"));
    }

    #[test]
    fn large_blocks_are_split_into_legal_frames() {
        let mut headers = kubelet_headers(Some(ESCAPED));
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut encoder, &headers),
        ));
        let (out, _) = rewrite_in_pieces(&input, 1000);
        let frames = parse_frames(&out);
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.payload.len() <= MAX_EMIT_FRAME));
        assert_eq!(frames[0].kind, TYPE_HEADERS);
        assert!(frames[1..].iter().all(|f| f.kind == TYPE_CONTINUATION));
        let blocks = header_blocks(&frames);
        assert_eq!(blocks[0].2.last().unwrap().1.len(), 40_000);
    }

    #[test]
    fn what_cannot_be_parsed_passes_through_unchanged() {
        // Broken HPACK: an index far past both tables.
        let mut broken = PREFACE.to_vec();
        broken.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0x7f],
        ));
        broken.extend(frame(0x0, 0, 1, b"after"));
        // Not HTTP/2 at all.
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        // A frame between a block's HEADERS and its CONTINUATION.
        let mut interleaved = PREFACE.to_vec();
        interleaved.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        interleaved.extend(frame(0x8, 0, 0, &[0, 0, 0, 1]));
        interleaved.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x86]));
        // A padding length longer than the frame.
        let mut padded = PREFACE.to_vec();
        padded.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        // Truncated in the middle of a header frame.
        let mut truncated = PREFACE.to_vec();
        truncated.extend(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x82, 0x86, 0x84])[..10]);
        for (name, input) in [
            ("broken hpack", broken),
            ("http/1", http1),
            ("interleaved", interleaved),
            ("padding", padded),
            ("truncated", truncated),
        ] {
            for piece in [1, 4, input.len()] {
                let (out, rewriter) = rewrite_in_pieces(&input, piece);
                assert_eq!(out, input, "{name}, pieces of {piece}");
                assert!(rewriter.is_raw(), "{name}");
            }
        }
    }

    #[test]
    fn integers_follow_rfc_7541_examples() {
        // C.1.1 to C.1.3.
        let mut out = Vec::new();
        encode_integer(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_integer(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        encode_integer(42, 8, 0, &mut out);
        assert_eq!(out, [0x2a]);
    }
}
