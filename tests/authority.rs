//! Every `:authority` a real client sends is served: absent, empty, a socket path (kubelets up
//! to 1.30, grpc-java), a percent-encoded path (grpc C-core), long, or not even UTF-8. A raw
//! HTTP/2 client writes exactly the bytes under test — header blocks split over CONTINUATION
//! frames, padded, with priority, dynamic-table size updates and a table under constant
//! eviction — and the recording runtime shows what arrived.

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
                        let status = decoded.iter().find(|(n, _)| n == b"grpc-status");
                        if let (true, Some((_, code))) = (stream == id, status) {
                            return Ended::Status(String::from_utf8_lossy(code).into_owned());
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
        ("not UTF-8", Some(b"\xff\xfe/run/x")),
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
    assert_eq!(runtime.requests().len(), 27);
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

/// A rewritten connection whose caller then sends HPACK its own table cannot decode is
/// closed; criguard serves the next connection as before. On a connection not rewritten the
/// same bytes reach h2, which answers them itself.
#[tokio::test]
async fn broken_hpack_closes_only_its_connection() {
    let sockets = Sockets::new();
    let _runtime = recording(&sockets).await;
    let _criguard = Criguard::start(&sockets).await;
    // An indexed field beyond any table: a COMPRESSION_ERROR.
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
        assert!(matches!(ended, Ended::ConnectionClosed(_)), "{ended:?}");
    }
    // A dynamic table larger than the 4096 bytes criguard allows: a COMPRESSION_ERROR too,
    // on a rewritten connection (criguard's decoder) as on one that is not (h2's).
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
        assert!(matches!(ended, Ended::ConnectionClosed(_)), "{ended:?}");
    }
    let mut client = RawH2::connect(&sockets.criguard()).await;
    let ended = client
        .call(Some(b"/run/x.sock"), &[], Shape::default())
        .await;
    assert_eq!(ended, Ended::Status("0".into()), "criguard serves on");
    // A first block that is broken is h2's to answer: a GOAWAY with PROTOCOL_ERROR (1).
    let mut client = RawH2::connect(&sockets.criguard()).await;
    let mut out = BytesMut::new();
    frame(&mut out, 0x1, 0x5, 1, &bad_block);
    client.send_raw(&out).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), client.read_end(1))
        .await
        .unwrap();
    assert_eq!(ended, Ended::ConnectionClosed(Some(1)));
}
