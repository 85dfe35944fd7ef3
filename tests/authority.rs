//! The caller's HTTP/2 edge. Every `:authority` a real client sends is served: absent, empty, a
//! socket path (kubelets up to 1.30, grpc-java), a percent-encoded path (grpc C-core), long. A
//! raw HTTP/2 client writes exactly the bytes under test — header blocks split over
//! CONTINUATION frames, padded, with priority, dynamic-table size updates and a table under
//! constant eviction — and the recording runtime shows what arrived. Hostile and malformed
//! header blocks end exactly as they end at h2 alone (a bare h2 server with criguard's
//! settings), on connections criguard passes and on those it rewrites, and cost the other
//! callers nothing.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use criguard::proxy::authority::accepted_by_h2;
use loona_hpack::{Decoder, Encoder};
use support::{Answer, Criguard, RecordingRuntime, Sockets, grpc_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const VERSION: &str = "/runtime.v1.RuntimeService/Version";

/// How a request's header block is laid out in frames.
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    /// Pad the HEADERS frame with this many bytes.
    padding: Option<u8>,
    priority: bool,
    /// Split the block into HEADERS + CONTINUATION frames of this many bytes.
    split: Option<usize>,
    /// Start the block with a dynamic table size update to this size.
    table_size: Option<usize>,
}

/// How a call ended, as the raw client saw it.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The call's gRPC status.
    Status(String),
    Reset(u32),
    /// An HTTP answer with no gRPC status (h2's 431 to a request over its header list size).
    Http(String),
    /// GOAWAY with its error code, or the connection closed.
    ConnectionClosed(Option<u32>),
}

/// An HTTP/2 client that writes frames by hand, one call at a time.
struct RawH2 {
    stream: UnixStream,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    next_stream: u32,
    input: BytesMut,
}

impl RawH2 {
    async fn connect(path: &Path) -> RawH2 {
        let mut stream = UnixStream::connect(path).await.unwrap();
        let mut hello = BytesMut::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]);
        frame(&mut hello, 0x4, 0, 0, &[]);
        stream.write_all(&hello).await.unwrap();
        RawH2 {
            stream,
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            next_stream: 1,
            input: BytesMut::new(),
        }
    }

    /// Sends one unary call with `headers` after the pseudo-headers and reads its end.
    async fn call(
        &mut self,
        authority: Option<&[u8]>,
        headers: &[(Vec<u8>, Vec<u8>)],
        shape: Shape,
    ) -> Ended {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", VERSION.as_bytes()),
        ];
        if let Some(authority) = authority {
            fields.push((b":authority", authority));
        }
        fields.push((b"content-type", b"application/grpc"));
        fields.push((b"te", b"trailers"));
        fields.extend(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut block = Vec::new();
        if let Some(size) = shape.table_size {
            let mut update = loona_hpack::encoder::encode_integer(size, 5);
            update[0] |= 0x20;
            block.extend(update);
            self.encoder.set_max_table_size(size);
        }
        block.extend(self.encoder.encode(fields));
        let id = self.next_stream;
        self.next_stream += 2;
        let mut out = BytesMut::new();
        headers_frames(&mut out, id, &block, shape);
        frame(&mut out, 0x0, 0x1, id, &grpc_frame(b""));
        self.send_raw(&out).await;
        self.read_end(id).await
    }

    async fn read_end(&mut self, id: u32) -> Ended {
        let mut block = Vec::new();
        loop {
            while self.input.len() < 9 || self.input.len() < 9 + frame_len(&self.input) {
                match self.stream.read_buf(&mut self.input).await {
                    Ok(0) | Err(_) => return Ended::ConnectionClosed(None),
                    Ok(_) => {}
                }
            }
            let len = frame_len(&self.input);
            let head = self.input.split_to(9);
            let payload = self.input.split_to(len).freeze();
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match kind {
                // DATA: give the window back so that many calls fit on one connection.
                0x0 if len > 0 => {
                    let mut out = BytesMut::new();
                    frame(&mut out, 0x8, 0, 0, &(len as u32).to_be_bytes());
                    self.send_raw(&out).await;
                }
                0x1 | 0x9 => {
                    block.extend_from_slice(&payload);
                    if flags & 0x4 != 0 {
                        let decoded = self.decoder.decode(&block).unwrap();
                        block.clear();
                        let field = |name: &[u8]| {
                            decoded
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        };
                        if stream == id {
                            if let Some(code) = field(b"grpc-status") {
                                return Ended::Status(code);
                            }
                            if flags & 0x1 != 0 {
                                return Ended::Http(field(b":status").unwrap_or_default());
                            }
                        }
                    }
                }
                0x3 if stream == id => return Ended::Reset(payload.clone().get_u32()),
                // SETTINGS (not an ACK): acknowledge it.
                0x4 if flags & 0x1 == 0 => {
                    let mut out = BytesMut::new();
                    frame(&mut out, 0x4, 0x1, 0, &[]);
                    self.send_raw(&out).await;
                }
                0x6 if flags & 0x1 == 0 => {
                    let mut out = BytesMut::new();
                    frame(&mut out, 0x6, 0x1, 0, &payload);
                    self.send_raw(&out).await;
                }
                0x7 => return Ended::ConnectionClosed(Some((&payload[4..8]).get_u32())),
                _ => {}
            }
        }
    }

    /// Writes bytes as they are; a closed connection shows when its end is read.
    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }
}

fn frame_len(input: &[u8]) -> usize {
    usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2])
}

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.put_uint(payload.len() as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

fn headers_frames(out: &mut BytesMut, id: u32, block: &[u8], shape: Shape) {
    // h2 takes at most 5 CONTINUATION frames for a block of criguard's header list size;
    // real clients split blocks only at the frame size criguard allows (1 MiB).
    let split = shape
        .split
        .unwrap_or(block.len())
        .max(block.len().div_ceil(5))
        .max(1);
    let mut chunks = block.chunks(split).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut payload = Vec::new();
    let mut flags = 0;
    if let Some(pad) = shape.padding {
        flags |= 0x8;
        payload.push(pad);
    }
    if shape.priority {
        flags |= 0x20;
        payload.extend([0, 0, 0, 0, 15]);
    }
    payload.extend_from_slice(first);
    payload.extend(std::iter::repeat_n(
        0,
        usize::from(shape.padding.unwrap_or(0)),
    ));
    if chunks.peek().is_none() {
        flags |= 0x4;
    }
    frame(out, 0x1, flags, id, &payload);
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        frame(out, 0x9, if last { 0x4 } else { 0 }, id, chunk);
    }
}

async fn recording(sockets: &Sockets) -> RecordingRuntime {
    RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await
}

#[tokio::test]
async fn every_authority_a_client_sends_is_served() {
    let sockets = Sockets::new();
    let runtime = recording(&sockets).await;
    let _criguard = Criguard::start(&sockets).await;
    let long = vec![b'a'; 8 << 10];
    let cases: Vec<(&str, Option<&[u8]>)> = vec![
        ("absent", None),
        ("empty", Some(b"")),
        ("localhost (kubelet 1.31+)", Some(b"localhost")),
        (
            "socket path (kubelet <= 1.30, grpc-java)",
            Some(b"/run/criguard/criguard.sock"),
        ),
        (
            "percent-encoded path (grpc C-core)",
            Some(b"run%2Fcriguard%2Fcriguard.sock"),
        ),
        ("host and port", Some(b"localhost:1234")),
        ("8 KiB", Some(&long)),
        ("a space", Some(b"local host")),
    ];
    for (name, authority) in cases {
        // Each on a connection of its own: the first header block decides how it is read.
        let mut client = RawH2::connect(&sockets.criguard()).await;
        for call in 0..3 {
            let ended = client.call(authority, &[], Shape::default()).await;
            assert_eq!(ended, Ended::Status("0".into()), "{name}, call {call}");
        }
        let seen = runtime.requests().pop().unwrap().authority;
        let expected = match authority {
            // HTTP/2 requests from a client (criguard's to the runtime) need an authority.
            None => Some("localhost".to_string()),
            Some(a) if accepted_by_h2(a) => Some(String::from_utf8(a.to_vec()).unwrap()),
            Some(_) => Some("localhost".to_string()),
        };
        assert_eq!(seen, expected, "{name}: the authority the runtime saw");
    }
    assert_eq!(runtime.requests().len(), 24);
    // Not UTF-8 is not an authority any client sends: h2 refuses the connection (GOAWAY
    // PROTOCOL_ERROR), through criguard as without it.
    let mut client = RawH2::connect(&sockets.criguard()).await;
    let ended = client
        .call(Some(b"\xff\xfe/run/x"), &[], Shape::default())
        .await;
    assert_eq!(ended, Ended::ConnectionClosed(Some(1)));
}

/// Calls whose header blocks keep the caller's HPACK table full and evicting, on a connection
/// that is rewritten and on one that is not: every call arrives with exactly its metadata.
#[tokio::test]
async fn header_blocks_of_every_shape_arrive_whole() {
    let sockets = Sockets::new();
    let runtime = recording(&sockets).await;
    let _criguard = Criguard::start(&sockets).await;
    let mut rng = fastrand::Rng::with_seed(17);
    for authority in [&b"/run/criguard/criguard.sock"[..], b"localhost"] {
        let mut client = RawH2::connect(&sockets.criguard()).await;
        for call in 0..200 {
            let count = rng.usize(0..5);
            let headers: Vec<(Vec<u8>, Vec<u8>)> = (0..count)
                .map(|i| {
                    // Few names, values that often repeat: indexed, literal and evicted alike.
                    let name = format!("x-meta-{}", rng.usize(0..8)).into_bytes();
                    // At most 5 × 2.5 KiB: under the 16 KiB of headers criguard takes.
                    let len = [1, 10, 300, 1500, 2500][rng.usize(0..5)];
                    let value = format!("{i}-{}", rng.u32(0..4))
                        .repeat(len / 3 + 1)
                        .into_bytes();
                    (name, value)
                })
                .collect();
            let shape = Shape {
                padding: rng.bool().then(|| rng.u8(..)),
                priority: rng.bool(),
                split: rng.bool().then(|| rng.usize(1..600)),
                table_size: match rng.usize(0..10) {
                    0 => Some(0),
                    1 => Some(1024),
                    2 => Some(4096),
                    _ => None,
                },
            };
            let ended = client.call(Some(authority), &headers, shape).await;
            assert_eq!(
                ended,
                Ended::Status("0".into()),
                "{}, call {call}: {shape:?}",
                String::from_utf8_lossy(authority)
            );
            let seen = runtime.requests().pop().unwrap();
            for (name, value) in &headers {
                let name = std::str::from_utf8(name).unwrap();
                let values: Vec<&[u8]> = seen
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                assert!(
                    values.contains(&value.as_slice()),
                    "call {call} ({shape:?}): {name} lost"
                );
            }
            let sent = headers.len();
            let arrived = seen
                .headers
                .keys()
                .filter(|n| n.as_str().starts_with("x-meta-"))
                .map(|n| seen.headers.get_all(n).iter().count())
                .sum::<usize>();
            assert_eq!(arrived, sent, "call {call}: every header once");
        }
    }
}

/// A caller that sends HPACK its own table cannot decode gets h2's GOAWAY with PROTOCOL_ERROR
/// (h2's code for every HPACK error), on a rewritten connection as on one that is not;
/// criguard serves the next connection as before.
#[tokio::test]
async fn broken_hpack_closes_only_its_connection() {
    let sockets = Sockets::new();
    let _runtime = recording(&sockets).await;
    let _criguard = Criguard::start(&sockets).await;
    // An indexed field beyond any table.
    let bad_block = [0xff, 0xff, 0x7f];
    for authority in [&b"/run/x.sock"[..], b"localhost"] {
        let mut client = RawH2::connect(&sockets.criguard()).await;
        let ended = client.call(Some(authority), &[], Shape::default()).await;
        assert_eq!(ended, Ended::Status("0".into()));
        let mut out = BytesMut::new();
        frame(&mut out, 0x1, 0x5, 3, &bad_block);
        client.send_raw(&out).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), client.read_end(3))
            .await
            .expect("the connection ends");
        assert_eq!(ended, Ended::ConnectionClosed(Some(1)));
    }
    // A dynamic table larger than the 4096 bytes criguard allows: refused the same way.
    for authority in [&b"/run/x.sock"[..], b"localhost"] {
        let mut client = RawH2::connect(&sockets.criguard()).await;
        let ended = client.call(Some(authority), &[], Shape::default()).await;
        assert_eq!(ended, Ended::Status("0".into()));
        let huge = Shape {
            table_size: Some(1 << 16),
            ..Shape::default()
        };
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            client.call(Some(authority), &[], huge),
        )
        .await
        .expect("the connection ends");
        assert_eq!(ended, Ended::ConnectionClosed(Some(1)));
    }
    let mut client = RawH2::connect(&sockets.criguard()).await;
    let ended = client
        .call(Some(b"/run/x.sock"), &[], Shape::default())
        .await;
    assert_eq!(ended, Ended::Status("0".into()), "criguard serves on");
    // A broken first block too.
    let mut client = RawH2::connect(&sockets.criguard()).await;
    let mut out = BytesMut::new();
    frame(&mut out, 0x1, 0x5, 1, &bad_block);
    client.send_raw(&out).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), client.read_end(1))
        .await
        .unwrap();
    assert_eq!(ended, Ended::ConnectionClosed(Some(1)));
}

// ---- Hostile header blocks: refused as h2 refuses them, within bounds ----

/// criguard's server settings (src/proxy/server.rs), which the bare h2 server below shares.
const MAX_FRAME_SIZE: u32 = 1 << 20;
const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;

/// An HPACK integer under a prefix of `mask` bits with `flags` above it (RFC 7541, 5.1).
fn hpack_int(out: &mut Vec<u8>, mask: u8, flags: u8, mut value: usize) {
    if value < usize::from(mask) {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask);
    value -= usize::from(mask);
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A literal field with a new name: `flags` 0x40 adds it to the table, 0x00 does not.
fn literal(out: &mut Vec<u8>, flags: u8, name: &[u8], value: &[u8]) {
    out.push(flags);
    hpack_int(out, 0x7f, 0, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0x7f, 0, value.len());
    out.extend_from_slice(value);
}

/// A Version request's fields, without an `:authority` and without the table.
fn request_fields() -> Vec<u8> {
    let mut out = vec![0x83, 0x86]; // :method POST, :scheme http
    out.push(0x04); // :path, a literal value not indexed
    hpack_int(&mut out, 0x7f, 0, VERSION.len());
    out.extend_from_slice(VERSION.as_bytes());
    literal(&mut out, 0, b"content-type", b"application/grpc");
    literal(&mut out, 0, b"te", b"trailers");
    out
}

/// The hostile (and the merely wrong) header blocks, by name, as bytes on stream `id`.
fn hostile(name: &str, id: u32) -> BytesMut {
    let mut out = BytesMut::new();
    match name {
        "HPACK bomb, 256 KiB" => {
            // One 4 KiB entry, then one-byte references to it (index 62, the newest).
            let mut block = Vec::new();
            literal(&mut block, 0x40, b"x-bomb", &[b'b'; 4000]);
            block.resize(256 << 10, 0xbe);
            frame(&mut out, 0x1, 0x5, id, &block);
        }
        "1 MiB of Huffman literals" => {
            // Fields of a new one-letter name and value, each Huffman-coded ('a': 00011 + EOS).
            let block: Vec<u8> = [0x00, 0x81, 0x1f, 0x81, 0x1f]
                .into_iter()
                .cycle()
                .take(MAX_FRAME_SIZE as usize / 5 * 5)
                .collect();
            frame(&mut out, 0x1, 0x5, id, &block);
        }
        "2 million CONTINUATION frames" => {
            frame(&mut out, 0x1, 0x0, id, &[]);
            let empty = {
                let mut one = BytesMut::new();
                frame(&mut one, 0x9, 0x0, id, &[]);
                one
            };
            for _ in 0..2_000_000 {
                out.put_slice(&empty);
            }
        }
        "a valid block in 12 frames" => {
            let block = request_fields();
            let mut chunks = block.chunks(block.len().div_ceil(12)).peekable();
            frame(&mut out, 0x1, 0x1, id, chunks.next().unwrap());
            while let Some(chunk) = chunks.next() {
                let flags = if chunks.peek().is_none() { 0x4 } else { 0 };
                frame(&mut out, 0x9, flags, id, chunk);
            }
        }
        "a table size update after a field" => {
            let mut block = request_fields();
            block.push(0x20);
            frame(&mut out, 0x1, 0x5, id, &block);
        }
        "an index beyond any table" => frame(&mut out, 0x1, 0x5, id, &[0xff, 0xff, 0x7f]),
        "an integer past 2^32" => frame(
            &mut out,
            0x1,
            0x5,
            id,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        "a string longer than its block" => {
            frame(&mut out, 0x1, 0x5, id, &[0x00, 0x7f, 0xff, 0x7f, b'a'])
        }
        "Huffman with a bad padding" => {
            // 'a' then 3 padding bits that are not all ones.
            frame(&mut out, 0x1, 0x5, id, &[0x00, 0x81, 0x18, 0x81, 0x1f])
        }
        "a frame over the maximum frame size" => {
            out.put_uint(u64::from(MAX_FRAME_SIZE) + 1, 3);
            out.put_slice(&[0x1, 0x5]);
            out.put_u32(id);
            out.put_bytes(0, 64);
        }
        "CONTINUATION with no block" => frame(&mut out, 0x9, 0x4, id, &request_fields()),
        "DATA inside a block" => {
            frame(&mut out, 0x1, 0x0, id, &request_fields());
            frame(&mut out, 0x0, 0x1, id, &grpc_frame(b""));
        }
        "a CONTINUATION of another stream" => {
            frame(&mut out, 0x1, 0x0, id, &request_fields());
            frame(&mut out, 0x9, 0x4, id + 2, &[]);
        }
        "a connection-specific header" => {
            let mut block = request_fields();
            literal(&mut block, 0, b"connection", b"close");
            frame(&mut out, 0x1, 0x5, id, &block);
        }
        "a stream depending on itself" => {
            let mut payload = id.to_be_bytes().to_vec();
            payload.push(0);
            payload.extend(request_fields());
            frame(&mut out, 0x1, 0x25, id, &payload);
        }
        "20 KiB of metadata" => {
            let mut block = request_fields();
            literal(&mut block, 0, b"x-big", &[b'v'; 20 << 10]);
            frame(&mut out, 0x1, 0x5, id, &block);
        }
        "an over-size block whose rest keeps growing" => {
            let mut block = request_fields();
            literal(&mut block, 0, b"x-big", &[b'v'; 20 << 10]);
            block.extend([0x00, 0x01, b'y', 0x7f, 0xff, 0x7f]);
            frame(&mut out, 0x1, 0x0, id, &block);
            frame(&mut out, 0x9, 0x0, id, &[0; 20 << 10]);
        }
        other => panic!("no hostile block {other}"),
    }
    out
}

const HOSTILE: [&str; 17] = [
    "HPACK bomb, 256 KiB",
    "1 MiB of Huffman literals",
    "2 million CONTINUATION frames",
    "a valid block in 12 frames",
    "a table size update after a field",
    "an index beyond any table",
    "an integer past 2^32",
    "a string longer than its block",
    "Huffman with a bad padding",
    "a frame over the maximum frame size",
    "CONTINUATION with no block",
    "DATA inside a block",
    "a CONTINUATION of another stream",
    "a connection-specific header",
    "a stream depending on itself",
    "20 KiB of metadata",
    "an over-size block whose rest keeps growing",
];

/// The h2 server criguard serves callers with, alone: criguard's settings, every request
/// answered OK. What h2 does with a caller's bytes when nothing stands in between.
fn bare_h2(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::Builder::new()
                    .max_concurrent_streams(1000)
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .max_frame_size(MAX_FRAME_SIZE)
                    .max_send_buffer_size(128 << 10)
                    .max_header_list_size(MAX_HEADER_LIST_SIZE)
                    .handshake::<_, bytes::Bytes>(stream)
                    .await
                else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    }
                }
            });
        }
    })
}

impl RawH2 {
    /// Sends `bytes` (as much as the server reads) and reads how stream `id` ends.
    async fn hostile(&mut self, bytes: &[u8], id: u32) -> Ended {
        for chunk in bytes.chunks(64 << 10) {
            let sent = tokio::time::timeout(Duration::from_secs(2), self.stream.write_all(chunk));
            if !matches!(sent.await, Ok(Ok(()))) {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(10), self.read_end(id))
            .await
            .expect("the stream or the connection ends")
    }
}

/// How each hostile block ends on a connection to `socket`: as the connection's first block
/// (`localhost` connections are decided there), and after a first call with a socket path
/// (a connection criguard rewrites; h2 alone resets that first call).
async fn endings(socket: &Path, name: &str) -> [Ended; 2] {
    let mut first = RawH2::connect(socket).await;
    let alone = first.hostile(&hostile(name, 1), 1).await;
    let mut after = RawH2::connect(socket).await;
    after
        .call(Some(b"/run/criguard/criguard.sock"), &[], Shape::default())
        .await;
    let rewritten = after.hostile(&hostile(name, 3), 3).await;
    [alone, rewritten]
}

/// Every hostile block ends through criguard exactly as it ends at h2 alone — the same
/// GOAWAY code, the same reset, the same answer — on a connection criguard passes and on one
/// it rewrites.
#[tokio::test]
async fn hostile_header_blocks_are_refused_as_h2_refuses_them() {
    let sockets = Sockets::new();
    let _runtime = recording(&sockets).await;
    let _criguard = Criguard::start(&sockets).await;
    let bare = sockets.dir.path().join("bare-h2.sock");
    let _bare = bare_h2(&bare);
    for name in HOSTILE {
        let alone = endings(&bare, name).await;
        let through = endings(&sockets.criguard(), name).await;
        assert_eq!(
            through, alone,
            "{name}: criguard [first block, rewritten] vs h2 alone"
        );
        assert!(
            !matches!(alone[1], Ended::Status(_)),
            "{name} is refused: {alone:?}"
        );
    }
    // criguard serves on.
    let mut client = RawH2::connect(&sockets.criguard()).await;
    let ended = client
        .call(Some(b"/run/x.sock"), &[], Shape::default())
        .await;
    assert_eq!(ended, Ended::Status("0".into()));
}

/// One caller's HPACK bomb, Huffman block or CONTINUATION flood, on either kind of
/// connection: criguard's memory stays within 16 MiB of where it was, and another caller's
/// calls go on meanwhile, each under 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_caller_costs_others_nothing() {
    let sockets = Sockets::new();
    let _runtime = recording(&sockets).await;
    let admin = sockets.dir.path().join("admin.sock");
    let mut command = support::serve_command(&sockets);
    command
        .arg("--admin-address")
        .arg(&admin)
        .stderr(std::process::Stdio::null());
    let criguard = support::Running(support::spawn_serving(command, &sockets, &admin).await);
    let pid = criguard.0.id();
    let kib = |field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // The bystander: Version calls one after another on a connection of its own.
    let stop = tokio_util::sync::CancellationToken::new();
    let bystander = {
        let (socket, stop) = (sockets.criguard(), stop.clone());
        tokio::spawn(async move {
            let mut client = support::RawClient::connect(&socket).await.unwrap();
            let (mut calls, mut slowest) = (0u32, Duration::ZERO);
            while !stop.is_cancelled() {
                let started = std::time::Instant::now();
                let answer = client
                    .call(VERSION, grpc_frame(b""), &http::HeaderMap::new())
                    .await
                    .unwrap();
                assert_eq!(answer.grpc_status(), Some(0));
                slowest = slowest.max(started.elapsed());
                calls += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (calls, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attacks = [
        "HPACK bomb, 256 KiB",
        "1 MiB of Huffman literals",
        "2 million CONTINUATION frames",
    ];
    for name in attacks {
        let before = kib("VmRSS:");
        // Peak RSS from here (Linux: writing 5 to clear_refs resets VmHWM).
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let [alone, rewritten] = endings(&sockets.criguard(), name).await;
        assert_eq!(
            alone,
            Ended::ConnectionClosed(Some(0xb)),
            "{name}: ENHANCE_YOUR_CALM"
        );
        assert_eq!(rewritten, alone, "{name}: rewritten");
        let grew = kib("VmHWM:").saturating_sub(before);
        assert!(
            grew <= 16 << 10,
            "{name}: criguard's peak memory grew by {grew} KiB"
        );
        eprintln!("{name}: peak memory +{grew} KiB");
    }
    stop.cancel();
    let (calls, slowest) = bystander.await.unwrap();
    eprintln!("bystander: {calls} calls, slowest {slowest:?}");
    assert!(calls > 10, "the other caller was served: {calls} calls");
    assert!(
        slowest < Duration::from_millis(50),
        "another caller's call took {slowest:?} meanwhile"
    );
}
