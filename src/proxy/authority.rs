//! The caller's HTTP/2 edge: makes every `:authority` a real client sends acceptable to the
//! HTTP/2 server, and holds under hostile header blocks exactly as h2 holds.
//!
//! grpc-go, dialled as kubelets up to 1.30 dial the runtime (a bare socket path and a context
//! dialer), sends the socket path as `:authority` (`/run/criguard/criguard.sock`); grpc-java
//! sends the path too, other clients an empty one. The h2 crate's server resets every such
//! stream with PROTOCOL_ERROR; h2 has no setting for this.
//!
//! [`CallerStream`] sits between a caller's socket and h2's server. It reads the connection's
//! header blocks with h2's own frame codec and HPACK decoder (`h2::Codec`, given the server's
//! limits: frame size, header list size), so that what it takes, what it refuses and what each
//! costs are h2's: decoded sizes counted while decoding (a block decoding past 4× the header
//! list size is refused at once), at most a handful of CONTINUATION frames per block, size
//! updates only at a block's start, bounded integers and strings, Huffman by table.
//!
//! - The first header block is decoded with its frames held. When h2 takes its `:authority`
//!   (absent, or a valid URI authority), as with kubelets 1.31+, crictl 1.31+ and grpc C-core,
//!   or when h2 will refuse the block anyway, the held frames and every later byte pass as they
//!   came: h2 answers the caller's own bytes.
//! - When h2 would refuse the `:authority`, the connection is rewritten for its whole life:
//!   every header block is decoded with the caller's HPACK state and handed to h2 encoded
//!   afresh with criguard's own HPACK state towards h2, an `:authority` h2 refuses replaced by
//!   `localhost` — what kubelets 1.31+ send, and so what the runtime sees
//!   for such a caller. Every other frame passes as it came. A block the caller's state refuses is refused by h2 itself: criguard hands h2 the
//!   few bytes that make it refuse in the same way (the same GOAWAY code and debug data, the
//!   same stream reset, the same 431), then ends the connection's reading and frees its state.
//!
//! Memory per connection is bounded before it is allocated: a frame over the maximum frame
//! size is h2's to refuse (FRAME_SIZE_ERROR) before its payload is read, frames are copied
//! out of the read buffer, and a block is at most the few frames h2 allows.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use h2::Reason;
use h2::frame::{Frame, Pseudo};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections whose header blocks are rewritten (telemetry/metrics.rs describes it).
pub const CALLER_AUTHORITY_REWRITES_TOTAL: &str = "criguard_caller_authority_rewrites_total";

/// What starts every HTTP/2 connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEAD_LEN: usize = 9;
/// The length at the start of a frame head.
const FRAME_LEN_LEN: usize = 3;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PRIORITY: u8 = 0x20;
/// What a refused `:authority` becomes.
const REPLACEMENT: &[u8] = b"localhost";
/// Largest frame written towards h2: the size every HTTP/2 peer accepts.
const FRAME_OUT_MAX: usize = 16 << 10;
const READ_CHUNK: usize = 16 << 10;
/// The codec's input buffer kept between header blocks, at most; a larger one (after a large
/// block) is freed.
const KEPT_BUFFER: usize = 64 << 10;

/// Whether h2's server takes this `:authority`: it must parse as a URI authority (or the
/// stream is reset). The same parser h2 uses.
pub fn accepted_by_h2(authority: &[u8]) -> bool {
    std::str::from_utf8(authority).is_ok() && http::uri::Authority::try_from(authority).is_ok()
}

/// The limits h2's server reads a caller's frames with; the edge reads with the same.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    /// SETTINGS_MAX_FRAME_SIZE the server advertises.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE the server advertises.
    pub max_header_list_size: u32,
}

/// A caller's connection as h2's server reads it; writes pass straight through.
pub struct CallerStream<IO> {
    io: IO,
    mode: Mode,
    limits: EdgeLimits,
    /// Bytes read from the caller, not yet looked at or handed on.
    input: BytesMut,
    /// Bytes ready for h2, in order.
    output: VecDeque<Bytes>,
    preface_seen: bool,
    /// Payload bytes still to come of a frame that passes as it is.
    passing: usize,
    /// A header block has started and not ended: every frame goes to the codec until it ends.
    in_block: bool,
    /// The stream of the block being read.
    block_stream: u32,
    /// h2's codec on the caller's frames, while the first block is read and on a rewritten
    /// connection.
    edge: Option<Box<Edge>>,
    /// The first block's frames as they came, until the connection's reading is decided.
    held: Vec<Bytes>,
    /// The caller closed its side, or its connection was refused: what was read has been
    /// handed on.
    ended: bool,
    /// Whether a refused `:authority` is replaced (always, but in the differential check).
    replace: bool,
    /// Whether the connection's header blocks are (or were, until refused) rewritten.
    rewritten: bool,
    /// Our HPACK state towards h2 on a rewritten connection.
    indexer: Indexer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Before the end of the first header block: bytes are read and handed on as frames.
    FirstBlock,
    /// Every byte as it came.
    Pass,
    /// Header blocks decoded and encoded afresh.
    Rewrite,
}

/// h2's frame codec over an in-memory buffer: it reads the caller's header frames as h2's
/// server reads them. (It never writes: blocks towards h2 are encoded by [`Indexer`].)
struct Edge {
    codec: h2::Codec<Pipe, Bytes>,
}

/// The caller's header frames, as the codec's input.
#[derive(Default)]
struct Pipe {
    inbox: BytesMut,
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inbox.is_empty() {
            // More when the caller sends it; the codec is polled again then.
            return Poll::Pending;
        }
        let n = this.inbox.len().min(buf.remaining());
        buf.put_slice(&this.inbox[..n]);
        this.inbox.advance(n);
        if this.inbox.is_empty() && this.inbox.capacity() > KEPT_BUFFER {
            this.inbox = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Nothing is written through the codec.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the codec made of one frame of the caller's. Only ever a local value: a boxed frame
/// would cost an allocation per block.
#[allow(clippy::large_enum_variant)]
enum Read {
    /// A header block that is not over yet.
    More,
    Frame(Frame),
    Refused(h2::proto::Error),
}

impl Edge {
    fn new(limits: EdgeLimits) -> Edge {
        let mut codec = h2::Codec::new(Pipe::default());
        // As h2's server sets up its own codec (server::Builder::handshake).
        codec.set_max_recv_frame_size(limits.max_frame_size as usize);
        codec.set_max_recv_header_list_size(limits.max_header_list_size as usize);
        Edge { codec }
    }

    /// Hands one whole frame of the caller's to the codec.
    fn read(&mut self, frame: &[u8]) -> Read {
        self.codec.get_mut().inbox.extend_from_slice(frame);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.codec).poll_next(&mut cx) {
            Poll::Pending => Read::More,
            Poll::Ready(Some(Ok(frame))) => Read::Frame(frame),
            Poll::Ready(Some(Err(err))) => Read::Refused(err),
            // The pipe never ends.
            Poll::Ready(None) => Read::More,
        }
    }
}

/// Our HPACK state towards h2 on a rewritten connection: the entries h2's table holds because
/// criguard sent them to be indexed, newest first (RFC 7541, 2.3, 4.4). Fields repeat from call
/// to call, so a block is mostly one-byte references, which h2 decodes by cloning its entry.
#[derive(Default)]
struct Indexer {
    /// Each entry's fingerprint, name and value.
    entries: VecDeque<(u64, Bytes, Bytes)>,
    size: usize,
}

/// h2's table size (SETTINGS_HEADER_TABLE_SIZE, which criguard leaves as it is).
const TABLE_SIZE: usize = 4096;
/// Fields larger than this are sent without indexing: they would evict the table.
const INDEXED_MAX: usize = 512;

impl Indexer {
    /// A header block towards h2 (a request's, or a caller's PUSH_PROMISE, which h2 judges),
    /// the pseudo-headers first, an `:authority` h2 refuses replaced by `localhost` (when
    /// `replace`); in one HEADERS or PUSH_PROMISE frame and as many CONTINUATION frames as it
    /// needs.
    fn encode(
        &mut self,
        head: BlockHead,
        pseudo: Pseudo,
        fields: HeaderMap,
        replace: bool,
    ) -> Bytes {
        let mut block = BytesMut::with_capacity(256);
        if let Some(method) = &pseudo.method {
            match method.as_str() {
                // The static table's whole entries (RFC 7541, appendix A).
                "GET" => block.put_u8(0x82),
                "POST" => block.put_u8(0x83),
                other => self.field(&mut block, b":method", other.as_bytes(), false),
            }
        }
        if let Some(scheme) = &pseudo.scheme {
            match scheme.as_bytes() {
                b"http" => block.put_u8(0x86),
                b"https" => block.put_u8(0x87),
                other => self.field(&mut block, b":scheme", other, false),
            }
        }
        if let Some(authority) = &pseudo.authority {
            let authority = match authority.as_bytes() {
                a if accepted_by_h2(a) || !replace => a,
                _ => REPLACEMENT,
            };
            self.field(&mut block, b":authority", authority, false);
        }
        if let Some(path) = &pseudo.path {
            self.field(&mut block, b":path", path.as_bytes(), false);
        }
        if let Some(protocol) = &pseudo.protocol {
            self.field(
                &mut block,
                b":protocol",
                protocol.as_str().as_bytes(),
                false,
            );
        }
        if let Some(status) = &pseudo.status {
            self.field(&mut block, b":status", status.as_str().as_bytes(), false);
        }
        for (name, value) in &fields {
            self.field(
                &mut block,
                name.as_str().as_bytes(),
                value.as_bytes(),
                value.is_sensitive(),
            );
        }
        block_frames(head, &block)
    }

    /// One field: a reference to h2's entry, or a literal h2 adds to its table, or (large, or
    /// marked never-indexed by the caller) a literal it does not.
    fn field(&mut self, out: &mut BytesMut, name: &[u8], value: &[u8], never_indexed: bool) {
        let size = name.len() + value.len() + 32;
        if never_indexed || size > INDEXED_MAX {
            out.put_u8(if never_indexed { 0x10 } else { 0x00 });
            put_string(out, name);
            put_string(out, value);
            return;
        }
        let print = fingerprint(name, value);
        if let Some(at) = self
            .entries
            .iter()
            .position(|(p, n, v)| *p == print && n.as_ref() == name && v.as_ref() == value)
        {
            put_int(out, 0x7f, 0x80, 62 + at as u64);
            return;
        }
        out.put_u8(0x40);
        put_string(out, name);
        put_string(out, value);
        self.entries.push_front((
            print,
            Bytes::copy_from_slice(name),
            Bytes::copy_from_slice(value),
        ));
        self.size += size;
        while self.size > TABLE_SIZE {
            let (_, n, v) = self.entries.pop_back().expect("entries while size > 0");
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// A quick fingerprint of a field (FxHash's mixing, 8 bytes at a time): entries are compared
/// byte for byte only when theirs is the same.
fn fingerprint(name: &[u8], value: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut hash = (name.len() as u64) << 32 | value.len() as u64;
    for part in [name, value] {
        let mut words = part.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            hash = (hash.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &byte in words.remainder() {
            hash = (hash.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }
    hash
}

/// An HPACK string, not Huffman-coded.
fn put_string(out: &mut BytesMut, text: &[u8]) {
    put_int(out, 0x7f, 0, text.len() as u64);
    out.put_slice(text);
}

/// The frame a header block starts with, as h2 must see it.
#[derive(Clone, Copy, Debug)]
struct BlockHead {
    /// HEADERS or PUSH_PROMISE.
    kind: u8,
    stream: u32,
    /// PUSH_PROMISE's promised stream.
    promised: Option<u32>,
    end_stream: bool,
}

/// The block's first frame and as many CONTINUATION frames as it needs.
fn block_frames(head: BlockHead, block: &[u8]) -> Bytes {
    let frames = block.len() / FRAME_OUT_MAX + 1;
    let mut out = BytesMut::with_capacity(block.len() + frames * FRAME_HEAD_LEN + 4);
    let mut chunks = block.chunks(FRAME_OUT_MAX).peekable();
    let first = chunks.next().unwrap_or_default();
    let mut flags = if head.end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= END_HEADERS;
    }
    let promised = head.promised.map_or(0, |_| 4);
    put_head(
        &mut out,
        promised + first.len(),
        head.kind,
        flags,
        head.stream,
    );
    if let Some(id) = head.promised {
        out.put_u32(id);
    }
    out.put_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        put_head(&mut out, chunk.len(), CONTINUATION, flags, head.stream);
        out.put_slice(chunk);
    }
    out.freeze()
}

#[derive(Clone, Copy, Debug)]
struct FrameHead {
    len: usize,
    kind: u8,
    stream: u32,
}

/// A frame's payload length, from the first 3 bytes of its head.
fn frame_len(head: &[u8]) -> u32 {
    u32::from(head[0]) << 16 | u32::from(head[1]) << 8 | u32::from(head[2])
}

impl FrameHead {
    fn parse(head: &[u8]) -> FrameHead {
        FrameHead {
            len: frame_len(head) as usize,
            kind: head[3],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        }
    }
}

/// Writes a frame head.
fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

impl<IO> CallerStream<IO> {
    pub fn new(io: IO, limits: EdgeLimits) -> Self {
        CallerStream::with_replacement(io, limits, true)
    }

    /// The edge as [`CallerStream::new`], but an `:authority` h2 refuses is kept on the
    /// connections it rewrites: every block decoded and encoded as it would be, h2 then resetting
    /// what it resets without the edge. The differential check (`proxy::edge_agreement`) holds
    /// this to exactly what h2 alone does.
    pub fn verbatim(io: IO, limits: EdgeLimits) -> Self {
        CallerStream::with_replacement(io, limits, false)
    }

    fn with_replacement(io: IO, limits: EdgeLimits, replace: bool) -> Self {
        CallerStream {
            io,
            mode: Mode::FirstBlock,
            limits,
            input: BytesMut::new(),
            output: VecDeque::new(),
            preface_seen: false,
            passing: 0,
            in_block: false,
            block_stream: 0,
            edge: Some(Box::new(Edge::new(limits))),
            held: Vec::new(),
            ended: false,
            replace,
            rewritten: false,
            indexer: Indexer::default(),
        }
    }

    /// Whether this connection's header blocks are (or were, until it was refused) rewritten.
    pub fn rewrites(&self) -> bool {
        self.rewritten
    }

    /// Looks at what has been read; true when it took bytes from it.
    fn advance(&mut self) -> bool {
        if !self.preface_seen {
            let n = self.input.len().min(PREFACE_LEN);
            if self.input[..n] != PREFACE[..n] {
                // Not HTTP/2: h2 refuses it as soon as it differs.
                self.pass();
                return true;
            }
            if n < PREFACE_LEN {
                return false;
            }
            self.output
                .push_back(self.input.split_to(PREFACE_LEN).freeze());
            self.preface_seen = true;
            return true;
        }
        if self.passing > 0 {
            if self.input.is_empty() {
                return false;
            }
            let n = self.passing.min(self.input.len());
            self.output.push_back(self.input.split_to(n).freeze());
            self.passing -= n;
            return true;
        }
        if self.input.len() >= FRAME_LEN_LEN && frame_len(&self.input) > self.limits.max_frame_size
        {
            // h2 refuses it from its length (FRAME_SIZE_ERROR); h2 stands between frames and
            // outside any block here, so the caller's own bytes make it do so.
            self.pass();
            return true;
        }
        if self.input.len() < FRAME_HEAD_LEN {
            return false;
        }
        let head = FrameHead::parse(&self.input[..FRAME_HEAD_LEN]);
        let block_frame =
            self.in_block || matches!(head.kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        if !block_frame {
            self.output
                .push_back(self.input.split_to(FRAME_HEAD_LEN).freeze());
            self.passing = head.len;
            return true;
        }
        let len = FRAME_HEAD_LEN + head.len;
        if self.input.len() < len {
            self.input.reserve(len - self.input.len());
            return false;
        }
        if matches!(head.kind, HEADERS | PUSH_PROMISE) {
            self.block_stream = head.stream;
        }
        let edge = self
            .edge
            .as_mut()
            .expect("h2's codec while blocks are read");
        let read = edge.read(&self.input[..len]);
        if self.mode == Mode::FirstBlock {
            // A copy: a slice would keep the whole read buffer.
            self.held.push(Bytes::copy_from_slice(&self.input[..len]));
        }
        self.input.advance(len);
        self.in_block = matches!(read, Read::More);
        match read {
            Read::More => {}
            Read::Frame(frame) => self.block(frame),
            Read::Refused(err) => self.block_refused(&err),
        }
        true
    }

    /// A whole header block, decoded.
    fn block(&mut self, frame: Frame) {
        let (head, over_size, (pseudo, fields)) = match frame {
            Frame::Headers(mut headers) => {
                let over_size = headers.is_over_size();
                if self.mode == Mode::FirstBlock {
                    let refused_authority = headers
                        .pseudo_mut()
                        .authority
                        .as_deref()
                        .filter(|a| !over_size && !accepted_by_h2(a.as_bytes()))
                        .map(str::to_owned);
                    let Some(authority) = refused_authority else {
                        // h2 takes this connection as it is, or answers this block itself.
                        self.pass();
                        return;
                    };
                    tracing::debug!(
                        authority,
                        "caller sends an :authority h2 refuses; rewriting this connection's header blocks"
                    );
                    metrics::counter!(CALLER_AUTHORITY_REWRITES_TOTAL).increment(1);
                    self.mode = Mode::Rewrite;
                    self.rewritten = true;
                    self.held = Vec::new();
                }
                let head = BlockHead {
                    kind: HEADERS,
                    stream: headers.stream_id().into(),
                    promised: None,
                    end_stream: headers.is_end_stream(),
                };
                (head, over_size, headers.into_parts())
            }
            // A caller's PUSH_PROMISE: h2 judges it (by the state of the streams it names).
            Frame::PushPromise(promise) if self.mode == Mode::Rewrite => {
                let head = BlockHead {
                    kind: PUSH_PROMISE,
                    stream: promise.stream_id().into(),
                    promised: Some(promise.promised_id().into()),
                    end_stream: false,
                };
                (head, promise.is_over_size(), promise.into_parts())
            }
            // A first block that is a PUSH_PROMISE is h2's to answer as it came (the codec
            // makes nothing else of header frames).
            _ if self.mode == Mode::FirstBlock => {
                self.pass();
                return;
            }
            _ => {
                self.refuse(Refusal::Protocol);
                return;
            }
        };
        let out = if over_size {
            // h2 kept only part of it: what h2 needs to see is a block over its size.
            over_size_block(head, self.limits)
        } else {
            self.indexer.encode(head, pseudo, fields, self.replace)
        };
        self.output.push_back(out);
    }

    /// A header block h2's codec refuses.
    fn block_refused(&mut self, err: &h2::proto::Error) {
        use h2::proto::Error;
        if self.mode == Mode::FirstBlock {
            // The caller's own bytes, held, make h2 refuse them as it just did here.
            self.pass();
            return;
        }
        tracing::debug!(error = ?err, "a caller's header block refused on a rewritten connection");
        let refusal = match err {
            Error::Reset(..) => Refusal::Stream,
            Error::GoAway(data, Reason::ENHANCE_YOUR_CALM, _)
                if &data[..] == b"too_many_continuations" =>
            {
                Refusal::TooManyContinuations
            }
            Error::GoAway(_, Reason::ENHANCE_YOUR_CALM, _) => Refusal::HeaderListWayTooLarge,
            Error::GoAway(_, Reason::COMPRESSION_ERROR, _) => Refusal::Compression,
            Error::GoAway(_, Reason::FRAME_SIZE_ERROR, _) => Refusal::FrameSize,
            Error::GoAway(..) | Error::Io(..) => Refusal::Protocol,
        };
        self.refuse(refusal);
    }

    /// Hands h2 the bytes that make it refuse as `refusal` says; after a connection error
    /// nothing more is read from the caller and the connection's reading state is freed.
    fn refuse(&mut self, refusal: Refusal) {
        self.output
            .push_back(refusal.frames(self.block_stream, self.limits));
        if refusal != Refusal::Stream {
            self.edge = None;
            self.input = BytesMut::new();
            self.held = Vec::new();
            self.ended = true;
        }
    }

    /// From here on every byte passes as it came, the held first block first.
    fn pass(&mut self) {
        self.mode = Mode::Pass;
        self.edge = None;
        self.output.extend(self.held.drain(..));
        let rest = self.input.split().freeze();
        if !rest.is_empty() {
            self.output.push_back(rest);
        }
    }
}

/// How h2 refuses a caller's header block, and so how it must refuse the block criguard hands
/// it on a rewritten connection. Each is a few bytes that h2 refuses in that way from any state
/// between header blocks, whatever its HPACK table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// RST_STREAM PROTOCOL_ERROR (a malformed request): the connection goes on.
    Stream,
    /// GOAWAY PROTOCOL_ERROR.
    Protocol,
    /// GOAWAY ENHANCE_YOUR_CALM, "too_many_continuations".
    TooManyContinuations,
    /// GOAWAY ENHANCE_YOUR_CALM, "header_list_way_too_large".
    HeaderListWayTooLarge,
    /// GOAWAY COMPRESSION_ERROR: a block over size whose undecoded rest grows past the limit.
    Compression,
    /// GOAWAY FRAME_SIZE_ERROR.
    FrameSize,
}

impl Refusal {
    fn frames(self, stream: u32, limits: EdgeLimits) -> Bytes {
        let stream = stream.max(1);
        let list = limits.max_header_list_size as usize;
        let mut out = BytesMut::new();
        match self {
            Refusal::Stream => {
                // A HEADERS frame depending on its own stream: reset before anything is decoded.
                put_head(
                    &mut out,
                    5,
                    HEADERS,
                    END_HEADERS | END_STREAM | PRIORITY,
                    stream,
                );
                out.put_u32(stream);
                out.put_u8(0);
            }
            Refusal::Protocol => put_head(&mut out, 0, CONTINUATION, END_HEADERS, stream),
            Refusal::TooManyContinuations => {
                put_head(&mut out, 0, HEADERS, 0, stream);
                for _ in 0..=max_continuations(limits) {
                    put_head(&mut out, 0, CONTINUATION, 0, stream);
                }
            }
            Refusal::HeaderListWayTooLarge => {
                // Fields not indexed, decoding to more than 4× the list size; one value of
                // the list size at most, so the frame stays within the frame size.
                let value = list.min(limits.max_frame_size as usize / 8);
                let fields = 4 * list / (value + 33) + 1;
                let mut block = BytesMut::new();
                for _ in 0..fields {
                    put_literal(&mut block, b"x", value);
                }
                put_head(&mut out, block.len(), HEADERS, END_HEADERS, stream);
                out.put_slice(&block);
            }
            Refusal::Compression => {
                // Over size, with the start of a field left undecoded; then a CONTINUATION
                // that would grow that rest past the list size.
                let mut block = BytesMut::new();
                put_literal(&mut block, b"x", list);
                block.put_slice(&[0x00, 0x01, b'y']);
                put_int(&mut block, 0x7f, 0, list as u64);
                put_head(&mut out, block.len(), HEADERS, 0, stream);
                out.put_slice(&block);
                put_head(&mut out, list, CONTINUATION, 0, stream);
                out.put_bytes(0, list);
            }
            Refusal::FrameSize => {
                put_head(&mut out, limits.max_frame_size as usize + 1, 0, 0, stream);
            }
        }
        out.freeze()
    }
}

/// A block over h2's header list size, with no effect on h2's HPACK table: h2 answers its
/// stream as it answers the caller's (a request: 431, then a reset).
fn over_size_block(head: BlockHead, limits: EdgeLimits) -> Bytes {
    let mut block = BytesMut::new();
    put_literal(&mut block, b"x", limits.max_header_list_size as usize);
    block_frames(head, &block)
}

/// The CONTINUATION frames h2 takes in one block before it refuses the next
/// (`codec::framed_read::calc_max_continuation_frames`).
fn max_continuations(limits: EdgeLimits) -> usize {
    let frames = (limits.max_header_list_size as usize / limits.max_frame_size as usize).max(1);
    (frames + (frames >> 2)).max(5)
}

/// An HPACK literal field not indexed, with a new name and a value of `len` bytes 'a'.
fn put_literal(out: &mut BytesMut, name: &[u8], len: usize) {
    out.put_u8(0x00);
    put_int(out, 0x7f, 0, name.len() as u64);
    out.put_slice(name);
    put_int(out, 0x7f, 0, len as u64);
    out.put_bytes(b'a', len);
}

/// An HPACK integer with a prefix of `mask` bits under `flags` (RFC 7541, 5.1).
pub(crate) fn put_int(out: &mut BytesMut, mask: u8, flags: u8, mut value: u64) {
    if value < u64::from(mask) {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | mask);
    value -= u64::from(mask);
    while value >= 0x80 {
        out.put_u8(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

impl<IO: AsyncRead + Unpin> AsyncRead for CallerStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                while buf.remaining() > 0
                    && let Some(front) = this.output.front_mut()
                {
                    let n = front.len().min(buf.remaining());
                    buf.put_slice(&front[..n]);
                    front.advance(n);
                    if front.is_empty() {
                        this.output.pop_front();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Pass {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.advance() {
                continue;
            }
            this.input.reserve(READ_CHUNK);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.input
            ))?;
            if read == 0 {
                // The caller is gone: what is left goes on as it came (h2 sees the connection
                // end within a frame), then the end.
                if this.mode == Mode::FirstBlock {
                    this.output.extend(this.held.drain(..));
                }
                let rest = this.input.split().freeze();
                if !rest.is_empty() {
                    this.output.push_back(rest);
                }
                this.ended = true;
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CallerStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use loona_hpack::{Decoder, Encoder};
    use tokio::io::AsyncReadExt;

    use super::*;

    /// criguard's server settings.
    const LIMITS: EdgeLimits = EdgeLimits {
        max_frame_size: 1 << 20,
        max_header_list_size: 16 << 10,
    };

    /// Hands its bytes out one at a time, as a slow socket may.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(&byte) = self.0.get(self.1) {
                buf.put_slice(&[byte]);
                self.1 += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_head(&mut out, payload.len(), kind, flags, stream);
        out.put_slice(payload);
        out.to_vec()
    }

    /// A connection: preface, SETTINGS, one request's HEADERS (in two frames) and DATA, then a
    /// second request whose block refers to the first one's table entries.
    fn connection(authority: &[u8]) -> Vec<u8> {
        let mut encoder = Encoder::new();
        let fields = |path: &'static [u8]| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", path),
                (b":authority", authority),
                (b"x-trace", b"abc"),
            ]
        };
        let first = encoder.encode(fields(b"/runtime.v1.RuntimeService/Version"));
        let second = encoder.encode(fields(b"/runtime.v1.RuntimeService/Status"));
        let (a, b) = first.split_at(first.len() / 2);
        [
            PREFACE.to_vec(),
            frame(0x4, 0, 0, &[]),
            frame(HEADERS, 0, 1, a),
            frame(CONTINUATION, END_HEADERS, 1, b),
            frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]),
            frame(HEADERS, END_HEADERS | END_STREAM, 3, &second),
        ]
        .concat()
    }

    async fn read_through(input: Vec<u8>) -> (Vec<u8>, bool) {
        let mut stream = CallerStream::new(Trickle(input, 0), LIMITS);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        (out, stream.rewrites())
    }

    /// The header blocks in `bytes` (a connection as h2 reads it), decoded in order.
    fn header_blocks(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let (mut blocks, mut block) = (Vec::new(), Vec::new());
        while !rest.is_empty() {
            let head = FrameHead::parse(&rest[..FRAME_HEAD_LEN]);
            let flags = rest[4];
            let payload = &rest[FRAME_HEAD_LEN..FRAME_HEAD_LEN + head.len];
            if head.kind == HEADERS || head.kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEAD_LEN + head.len..];
        }
        blocks
    }

    #[tokio::test]
    async fn a_connection_h2_takes_passes_byte_for_byte() {
        let input = connection(b"localhost");
        let (out, rewrites) = read_through(input.clone()).await;
        assert!(!rewrites);
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_in_every_block() {
        let (out, rewrites) = read_through(connection(b"/run/criguard/criguard.sock")).await;
        assert!(rewrites);
        // The same fields; h2's encoder writes the pseudo-headers in an order of its own.
        let sorted = |bytes: &[u8]| {
            let mut blocks = header_blocks(bytes);
            blocks.iter_mut().for_each(|b| b.sort());
            blocks
        };
        assert_eq!(sorted(&out), sorted(&connection(b"localhost")));
        // The DATA frame and END_STREAM flags are kept.
        let data = frame(0x0, END_STREAM, 1, &[0; 5]);
        assert!(out.windows(data.len()).any(|w| w == data), "{out:?}");
    }

    #[test]
    fn h2_takes_what_the_uri_grammar_allows() {
        for ok in [
            &b"localhost"[..],
            b"localhost:80",
            b"[::1]:8080",
            b"a.b-c_d~e",
        ] {
            assert!(accepted_by_h2(ok), "{}", String::from_utf8_lossy(ok));
        }
        for refused in [&b""[..], b"/run/x.sock", b"run%2Fx.sock", b"a b", b"\xff"] {
            assert!(
                !accepted_by_h2(refused),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }
}
