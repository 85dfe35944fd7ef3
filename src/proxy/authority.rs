//! Makes every `:authority` a real client sends acceptable to the HTTP/2 server.
//!
//! grpc-go, dialled as kubelets up to 1.30 dial the runtime (a bare socket path and a context
//! dialer), sends the socket path as `:authority` (`/run/criguard/criguard.sock`); grpc-java
//! sends the path too, other clients an empty one. The h2 crate's server resets every such
//! stream with PROTOCOL_ERROR, and a value that is not UTF-8 fails the whole connection; h2 has
//! no setting for this.
//!
//! [`CallerStream`] sits between a caller's socket and h2's server. It decodes the connection's
//! first header block with the caller's HPACK state. When h2 accepts its `:authority` (absent,
//! or a valid URI authority), as with kubelets 1.31+, crictl 1.31+ and grpc C-core, the reader
//! gets out of the way: that block and every later byte pass as they came, at the cost of one
//! HPACK decode per connection. When h2 would refuse it, the connection is rewritten for its
//! whole life: every header block is decoded with the caller's HPACK state and handed to h2
//! encoded afresh (one HEADERS frame and CONTINUATIONs of at most 16 KiB, padding dropped,
//! priority and END_STREAM kept), an `:authority` h2 refuses replaced by `localhost` — what
//! kubelets 1.31+ send, and so what the runtime sees for such a caller. Every other frame
//! passes as it came. A header block the caller's HPACK state cannot decode ends a rewritten
//! connection; on a connection not yet rewritten it passes on, for h2 to answer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::telemetry::metrics as names;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which starts every HTTP/2 connection.
const PREFACE_LEN: usize = 24;
const FRAME_HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Stream dependency and weight, after the pad length in a HEADERS frame with PRIORITY.
const PRIORITY_LEN: usize = 5;
/// The HPACK table a caller may use: h2's default `SETTINGS_HEADER_TABLE_SIZE`, which criguard
/// leaves as it is; h2's decoder is kept to the same size.
const HEADER_TABLE_SIZE: usize = 4096;
/// Largest frame written towards h2: the size every HTTP/2 peer accepts.
const FRAME_OUT_MAX: usize = 16 << 10;
/// Largest header block held while its CONTINUATION frames arrive. h2 refuses header lists
/// over 16 KiB anyway; a longer block on a rewritten connection ends it.
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// What a refused `:authority` becomes.
const REPLACEMENT: &[u8] = b"localhost";
const READ_CHUNK: usize = 16 << 10;

/// Whether h2's server takes this `:authority`: it must be UTF-8 (or the connection fails) and
/// parse as a URI authority (or the stream is reset). The same parser h2 uses.
pub fn accepted_by_h2(authority: &[u8]) -> bool {
    std::str::from_utf8(authority).is_ok() && http::uri::Authority::try_from(authority).is_ok()
}

/// A caller's connection as h2's server reads it; writes pass straight through.
pub struct CallerStream<IO> {
    io: IO,
    mode: Mode,
    /// Bytes read from the caller, not yet looked at or handed on.
    input: BytesMut,
    /// Bytes ready for h2, in order.
    output: VecDeque<Bytes>,
    preface_seen: bool,
    /// Payload bytes still to come of a frame that passes as it is.
    passing: usize,
    /// A header block waiting for its END_HEADERS.
    block: Option<HeaderBlock>,
    /// HPACK both ways while the first block is read and on a rewritten connection.
    hpack: Option<Box<Hpack>>,
    max_frame_size: usize,
    /// The caller closed its side; what was read has been handed on.
    ended: bool,
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

struct Hpack {
    /// The caller's HPACK state.
    decoder: Decoder<'static>,
    /// Ours towards h2 on a rewritten connection.
    encoder: Encoder<'static>,
}

struct HeaderBlock {
    stream: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: BytesMut,
    /// The frames as they came, for a block that passes unchanged.
    frames: Vec<Bytes>,
}

#[derive(Clone, Copy, Debug)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(head: &[u8]) -> FrameHead {
        FrameHead {
            len: usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]),
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut BytesMut) {
        out.put_uint(self.len as u64, 3);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

impl<IO> CallerStream<IO> {
    /// `max_frame_size` is the SETTINGS_MAX_FRAME_SIZE h2's server advertises.
    pub fn new(io: IO, max_frame_size: u32) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        CallerStream {
            io,
            mode: Mode::FirstBlock,
            input: BytesMut::new(),
            output: VecDeque::new(),
            preface_seen: false,
            passing: 0,
            block: None,
            hpack: Some(Box::new(Hpack {
                decoder,
                encoder: Encoder::new(),
            })),
            max_frame_size: max_frame_size as usize,
            ended: false,
        }
    }

    /// Whether this connection's header blocks are rewritten.
    pub fn rewrites(&self) -> bool {
        self.mode == Mode::Rewrite
    }

    /// Looks at what has been read; true when it moved bytes towards h2.
    fn advance(&mut self) -> io::Result<bool> {
        if !self.preface_seen {
            if self.input.len() < PREFACE_LEN {
                return Ok(false);
            }
            self.output
                .push_back(self.input.split_to(PREFACE_LEN).freeze());
            self.preface_seen = true;
            return Ok(true);
        }
        if self.passing > 0 {
            if self.input.is_empty() {
                return Ok(false);
            }
            let n = self.passing.min(self.input.len());
            self.output.push_back(self.input.split_to(n).freeze());
            self.passing -= n;
            return Ok(true);
        }
        if self.input.len() < FRAME_HEAD_LEN {
            return Ok(false);
        }
        let head = FrameHead::parse(&self.input[..FRAME_HEAD_LEN]);
        let header_frame = head.kind == HEADERS || head.kind == CONTINUATION;
        if !header_frame && self.block.is_none() {
            self.output
                .push_back(self.input.split_to(FRAME_HEAD_LEN).freeze());
            self.passing = head.len;
            return Ok(true);
        }
        if !header_frame {
            return self.give_up("a frame inside a header block");
        }
        if head.len > self.max_frame_size {
            return self.give_up("a header frame over the maximum frame size");
        }
        if self.input.len() < FRAME_HEAD_LEN + head.len {
            self.input
                .reserve(FRAME_HEAD_LEN + head.len - self.input.len());
            return Ok(false);
        }
        let frame = self.input.split_to(FRAME_HEAD_LEN + head.len).freeze();
        self.header_frame(head, frame)
    }

    /// Takes one HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, head: FrameHead, frame: Bytes) -> io::Result<bool> {
        let payload = &frame[FRAME_HEAD_LEN..];
        if head.kind == HEADERS {
            if self.block.is_some() {
                return self.give_up_with("HEADERS inside a header block", frame);
            }
            let Some((priority, fragment)) = headers_payload(head.flags, payload) else {
                return self.give_up_with("a HEADERS frame with bad padding", frame);
            };
            self.block = Some(HeaderBlock {
                stream: head.stream,
                end_stream: head.flags & END_STREAM != 0,
                priority,
                fragment: BytesMut::from(fragment),
                frames: Vec::new(),
            });
        } else {
            match &mut self.block {
                Some(block) if block.stream == head.stream => {
                    if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                        return self.give_up_with("a header block over 256 KiB", frame);
                    }
                    block.fragment.extend_from_slice(payload);
                }
                _ => return self.give_up_with("CONTINUATION outside its header block", frame),
            }
        }
        if let Some(block) = &mut self.block {
            block.frames.push(frame);
        }
        if head.flags & END_HEADERS != 0 {
            self.end_block()?;
        }
        Ok(true)
    }

    /// A whole header block: decoded with the caller's state, then passed or rewritten.
    fn end_block(&mut self) -> io::Result<()> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let Some(hpack) = self.hpack.as_mut() else {
            self.output.extend(block.frames);
            return Ok(());
        };
        let mut fields = Vec::new();
        let mut refused = None;
        let decoded = hpack
            .decoder
            .decode_with_cb(&block.fragment, |name, value| {
                if &*name == b":authority" && !accepted_by_h2(&value) {
                    refused.get_or_insert_with(|| String::from_utf8_lossy(&value).into_owned());
                    fields.push((name.into_owned(), REPLACEMENT.to_vec()));
                } else {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            });
        match (self.mode, decoded, &refused) {
            (Mode::Rewrite, Err(err), _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a header block the caller's HPACK state cannot decode: {err:?}"),
                ));
            }
            (Mode::FirstBlock, Err(_), _) | (Mode::FirstBlock, Ok(()), None) => {
                // h2 takes this connection as it is (or answers its bad HPACK itself).
                self.output.extend(block.frames);
                self.pass();
                return Ok(());
            }
            (Mode::FirstBlock, Ok(()), Some(authority)) => {
                tracing::debug!(
                    authority,
                    "caller sends an :authority h2 refuses; rewriting this connection's header blocks"
                );
                metrics::counter!(names::CALLER_AUTHORITY_REWRITES_TOTAL).increment(1);
                self.mode = Mode::Rewrite;
            }
            _ => {}
        }
        let encoded = hpack
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.output.push_back(encode_block(&block, &encoded));
        Ok(())
    }

    /// From here on every byte passes as it came.
    fn pass(&mut self) {
        self.mode = Mode::Pass;
        self.hpack = None;
        let rest = self.input.split().freeze();
        if !rest.is_empty() {
            self.output.push_back(rest);
        }
    }

    fn give_up(&mut self, why: &str) -> io::Result<bool> {
        self.give_up_with(why, Bytes::new())
    }

    /// Ends the reading of frames: on a connection not yet rewritten, what was held, `frame`
    /// and everything after pass as they came, for h2 to answer as it would without criguard
    /// in between; a rewritten connection ends.
    fn give_up_with(&mut self, why: &str, frame: Bytes) -> io::Result<bool> {
        if self.mode == Mode::Rewrite {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{why} on a rewritten connection"),
            ));
        }
        if let Some(block) = self.block.take() {
            self.output.extend(block.frames);
        }
        if !frame.is_empty() {
            self.output.push_back(frame);
        }
        self.pass();
        Ok(true)
    }
}

/// The PRIORITY fields and the header block fragment of a HEADERS payload, or None when its
/// padding is longer than the frame.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; PRIORITY_LEN]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&len, tail) = rest.split_first()?;
        pad = usize::from(len);
        rest = tail;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; PRIORITY_LEN] = rest.get(..PRIORITY_LEN)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[PRIORITY_LEN..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// One HEADERS frame and as many CONTINUATION frames as the block needs.
fn encode_block(block: &HeaderBlock, encoded: &[u8]) -> Bytes {
    let frames = encoded.len() / FRAME_OUT_MAX + 1;
    let mut out = BytesMut::with_capacity(encoded.len() + frames * FRAME_HEAD_LEN + PRIORITY_LEN);
    let priority_len = block.priority.map_or(0, |_| PRIORITY_LEN);
    let first = encoded.len().min(FRAME_OUT_MAX - priority_len);
    let (head, mut rest) = encoded.split_at(first);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    FrameHead {
        len: priority_len + head.len(),
        kind: HEADERS,
        flags,
        stream: block.stream,
    }
    .write(&mut out);
    if let Some(priority) = block.priority {
        out.put_slice(&priority);
    }
    out.put_slice(head);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(FRAME_OUT_MAX));
        rest = tail;
        FrameHead {
            len: chunk.len(),
            kind: CONTINUATION,
            flags: if rest.is_empty() { END_HEADERS } else { 0 },
            stream: block.stream,
        }
        .write(&mut out);
        out.put_slice(chunk);
    }
    out.freeze()
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
            if this.advance()? {
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
                if let Some(block) = this.block.take()
                    && this.mode == Mode::FirstBlock
                {
                    this.output.extend(block.frames);
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
    use tokio::io::AsyncReadExt;

    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
        FrameHead {
            len: payload.len(),
            kind,
            flags,
            stream,
        }
        .write(&mut out);
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
        let mut stream = CallerStream::new(Trickle(input, 0), 1 << 20);
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
            let payload = &rest[FRAME_HEAD_LEN..FRAME_HEAD_LEN + head.len];
            if head.kind == HEADERS || head.kind == CONTINUATION {
                block.extend_from_slice(payload);
                if head.flags & END_HEADERS != 0 {
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
        let blocks = header_blocks(&out);
        let expected = connection(b"localhost");
        assert_eq!(blocks, header_blocks(&expected));
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
