//! The proof that the caller's edge ([`super::authority`]) changes nothing h2 decides: for any
//! bytes a caller sends, h2's server behind the edge accepts the same requests, with the same
//! fields, and ends the connection with the same GOAWAY code as h2's server reading the bytes
//! itself — exactly so when the edge keeps the authorities it would replace
//! ([`CallerStream::verbatim`]). The one intended difference: a request whose `:authority` h2
//! refuses (and resets) is served behind the edge, with `localhost` — and so, on such a
//! connection, what the caller then sends on that stream is judged by h2 against another
//! stream state.
//!
//! [`check`] is run by `cargo test` on generated connections ([`connection`]: kubelet-like
//! calls, HPACK of every representation, blocks split, padded, prioritised, then mutated) and
//! by the `caller_edge` fuzz target on arbitrary bytes and on generated ones.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::authority::{CallerStream, put_int};
use super::server::{EDGE_LIMITS, caller_h2};

/// What h2's server made of a connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The requests it accepted, in order: method, URI and fields.
    pub requests: Vec<String>,
    /// Accepted requests with `localhost` as authority (kept apart: the edge adds such).
    pub localhost: usize,
    /// The GOAWAY code it ended the connection with, when it refused the caller.
    pub refused: Option<u32>,
}

/// h2 alone and h2 behind the edge, on the same bytes: `Err` says how they differ.
pub fn check(input: &[u8]) -> Result<(), String> {
    let alone = serve(Caller::new(input));
    // The edge's reading and encoding, every refused authority kept: exactly h2 alone.
    let verbatim = serve(CallerStream::verbatim(Caller::new(input), EDGE_LIMITS));
    if verbatim != alone {
        return Err(format!(
            "behind the edge (authorities kept):\n  h2 alone: {alone:?}\n  behind:   {verbatim:?}"
        ));
    }
    // The edge as it runs: the same requests, and those h2 alone resets for their authority
    // served with `localhost`. What the caller then sends on such a stream h2 judges by its
    // state, which differs; so the GOAWAY codes are compared on connections not rewritten.
    let behind = serve(CallerStream::new(Caller::new(input), EDGE_LIMITS));
    if alone.requests != behind.requests {
        return Err(format!(
            "requests differ:\n  h2 alone:  {:?}\n  behind the edge: {:?}",
            alone.requests, behind.requests
        ));
    }
    let rewrites = {
        let mut edge = CallerStream::new(Caller::new(input), EDGE_LIMITS);
        drain(&mut edge);
        edge.rewrites()
    };
    if !rewrites && alone != behind {
        return Err(format!(
            "a connection not rewritten:\n  h2 alone: {alone:?}\n  behind:   {behind:?}"
        ));
    }
    Ok(())
}

/// Reads the edge's output until it waits for the caller.
fn drain(edge: &mut CallerStream<Caller>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = vec![0; 64 << 10];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *edge).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {}
            _ => return,
        }
    }
}

/// Runs h2's server, with criguard's settings, over one connection until it has read all of
/// it (the caller stays connected: h2 drops the calls it has not handed out yet when the
/// caller goes away) or ended it.
pub fn serve<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) -> Served {
    // The caller's bytes are all there: what is pending without having woken itself waits
    // for bytes that never come.
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut served = Served::default();
    let mut handshake = std::pin::pin!(caller_h2().handshake::<_, Bytes>(io));
    let mut connection = loop {
        match handshake.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(connection)) => break connection,
            Poll::Ready(Err(err)) => {
                served.refused = refused(&err);
                return served;
            }
            Poll::Pending if woken.0.swap(false, Ordering::Relaxed) => {}
            Poll::Pending => return served,
        }
    };
    loop {
        match connection.poll_accept(&mut cx) {
            Poll::Ready(Some(Ok((request, _)))) => {
                if request.uri().authority().map(|a| a.as_str()) == Some("localhost") {
                    served.localhost += 1;
                    continue;
                }
                let fields: Vec<(String, Vec<u8>)> = request
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect();
                served.requests.push(format!(
                    "{} {} {:?}",
                    request.method(),
                    request.uri(),
                    fields
                ));
            }
            Poll::Ready(Some(Err(err))) => {
                served.refused = refused(&err);
                return served;
            }
            // h2 yields now and then, waking itself: it has more to do.
            Poll::Pending if woken.0.swap(false, Ordering::Relaxed) => {}
            Poll::Ready(None) | Poll::Pending => return served,
        }
    }
}

/// Records that a task woke itself.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The GOAWAY code of a connection h2 refused; None when it ended otherwise (the caller went
/// away, or its bytes ended mid-frame).
fn refused(err: &h2::Error) -> Option<u32> {
    (err.is_go_away() && err.is_library())
        .then(|| err.reason())
        .flatten()
        .map(u32::from)
}

/// A caller's bytes, handed out in reads of varying size, then nothing (the caller waits);
/// what the server writes is dropped.
struct Caller {
    input: Bytes,
    reads: usize,
}

impl Caller {
    fn new(input: &[u8]) -> Caller {
        Caller {
            input: Bytes::copy_from_slice(input),
            reads: 0,
        }
    }
}

impl AsyncRead for Caller {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.input.is_empty() {
            return Poll::Pending;
        }
        this.reads += 1;
        // Reads of 1 byte to 64 KiB: frames arrive whole and in pieces.
        let most = [1, 7, 100, 4096, 64 << 10][this.reads % 5];
        let n = this.input.len().min(buf.remaining()).min(most);
        buf.put_slice(&this.input.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Caller {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A caller's connection from `rng`: a preface and SETTINGS, then calls with a kubelet's
/// fields and metadata, their header blocks in every HPACK representation (static and dynamic
/// references, literals indexed, not indexed and never indexed, size updates, Huffman-flagged
/// strings), split over CONTINUATION frames, padded and prioritised, each with a DATA frame;
/// then, often, mutated: bytes changed, cut short, or frames repeated.
pub fn connection(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = BytesMut::from(PREFACE);
    frame(&mut out, 0x4, 0, 0, &[]);
    let authority: Option<&[u8]> = match rng.u8(0..6) {
        0 => None,
        1 => Some(b"localhost"),
        2 => Some(b"/run/containerd/containerd.sock"),
        3 => Some(b"run%2Fcontainerd%2Fcontainerd.sock"),
        4 => Some(b""),
        _ => Some(b"a b"),
    };
    // Entries the caller's table holds, newest first, by their sizes.
    let mut table: Vec<usize> = Vec::new();
    for call in 0..rng.u32(1..6) {
        let id = 2 * call + 1;
        let mut block = BytesMut::new();
        if rng.u8(0..8) == 0 {
            let size = [0, 100, 4096, 5000][rng.usize(0..4)];
            put_int(&mut block, 0x1f, 0x20, size as u64);
            table.clear();
        }
        block.put_u8(0x83); // :method POST
        block.put_u8(0x86); // :scheme http
        let paths = [
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.RuntimeService/ContainerStatus",
            "/runtime.v1.ImageService/PullImage",
        ];
        let path = paths[rng.usize(0..3)];
        field(rng, &mut block, &mut table, b":path", path.as_bytes());
        if let Some(authority) = authority {
            field(rng, &mut block, &mut table, b":authority", authority);
        }
        field(
            rng,
            &mut block,
            &mut table,
            b"content-type",
            b"application/grpc",
        );
        field(rng, &mut block, &mut table, b"te", b"trailers");
        for _ in 0..rng.usize(0..5) {
            let name = format!("x-meta-{}", rng.u8(0..4));
            let value = vec![b'a' + rng.u8(0..26); [0, 1, 30, 700, 3000][rng.usize(0..5)]];
            if !table.is_empty() && rng.bool() {
                // A reference to an entry the caller's table holds.
                put_int(
                    &mut block,
                    0x7f,
                    0x80,
                    (62 + rng.usize(0..table.len())) as u64,
                );
            } else {
                field(rng, &mut block, &mut table, name.as_bytes(), &value);
            }
        }
        headers(rng, &mut out, id, &block);
        frame(&mut out, 0x0, 0x1, id, &[0, 0, 0, 0, 0]);
    }
    let mut bytes = out.to_vec();
    let mutations = if rng.bool() { rng.usize(1..4) } else { 0 };
    for _ in 0..mutations {
        match rng.u8(0..4) {
            0 if bytes.len() > PREFACE.len() => {
                let at = rng.usize(PREFACE.len()..bytes.len());
                bytes[at] = rng.u8(..);
            }
            1 if bytes.len() > PREFACE.len() => {
                bytes.truncate(rng.usize(PREFACE.len()..bytes.len()));
            }
            2 if bytes.len() > PREFACE.len() + 1 => {
                let from = rng.usize(PREFACE.len()..bytes.len());
                let to = rng.usize(from..bytes.len().min(from + 64));
                let piece = bytes[from..to].to_vec();
                let at = rng.usize(PREFACE.len()..bytes.len());
                bytes.splice(at..at, piece);
            }
            _ => {}
        }
    }
    bytes
}

/// A field in a representation chosen by `rng`, the table model kept.
fn field(
    rng: &mut fastrand::Rng,
    out: &mut BytesMut,
    table: &mut Vec<usize>,
    name: &[u8],
    value: &[u8],
) {
    let flags = [0x40, 0x00, 0x10][rng.usize(0..3)];
    if flags == 0x40 {
        out.put_u8(0x40);
        table.insert(0, name.len() + value.len() + 32);
        let mut size = 0;
        table.retain(|entry| {
            size += entry;
            size <= 4096
        });
    } else {
        out.put_u8(flags);
    }
    put_int(out, 0x7f, 0, name.len() as u64);
    out.put_slice(name);
    // Now and then a string flagged Huffman, which it is not: h2 decides what it makes of it.
    let huffman = if rng.u8(0..64) == 0 { 0x80 } else { 0 };
    put_int(out, 0x7f, huffman, value.len() as u64);
    out.put_slice(value);
}

/// A header block in a HEADERS frame (padded, prioritised or neither) and CONTINUATIONs.
fn headers(rng: &mut fastrand::Rng, out: &mut BytesMut, id: u32, block: &[u8]) {
    let pieces = [1, 1, 2, 5, 7][rng.usize(0..5)];
    let size = block.len().div_ceil(pieces).max(1);
    let mut chunks = block.chunks(size).peekable();
    let first = chunks.next().unwrap_or_default();
    let mut payload = BytesMut::new();
    let mut flags = 0;
    let pad = rng.bool().then(|| rng.u8(0..20));
    if let Some(pad) = pad {
        flags |= 0x8;
        payload.put_u8(pad);
    }
    if rng.bool() {
        flags |= 0x20;
        payload.put_u32(0);
        payload.put_u8(rng.u8(..));
    }
    payload.put_slice(first);
    payload.put_bytes(0, usize::from(pad.unwrap_or(0)));
    if chunks.peek().is_none() {
        flags |= 0x4;
    }
    frame(out, 0x1, flags, id, &payload);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() { 0x4 } else { 0 };
        frame(out, 0x9, flags, id, chunk);
    }
}

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.put_uint(payload.len() as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_connections_are_served_behind_the_edge_as_by_h2_alone() {
        let mut rng = fastrand::Rng::with_seed(26);
        let (mut served, mut refused) = (0, 0);
        for case in 0..3000 {
            let input = connection(&mut rng);
            if let Err(why) = check(&input) {
                panic!("case {case}: {why}\ninput: {input:?}");
            }
            let behind = serve(CallerStream::new(Caller::new(&input), EDGE_LIMITS));
            served += behind.requests.len() + behind.localhost;
            refused += usize::from(behind.refused.is_some());
        }
        // The generator reaches both sides of h2's decisions.
        assert!(
            served > 1000 && refused > 300,
            "served {served}, refused {refused}"
        );
    }

    #[test]
    fn a_rewritten_connection_is_checked_for_what_h2_alone_resets() {
        // h2 alone resets a socket path's request; behind the edge it is served.
        let mut out = BytesMut::from(PREFACE);
        frame(&mut out, 0x4, 0, 0, &[]);
        // :method POST, :scheme http, :path /x, :authority /run/x.sock (literals, indexed names)
        let mut block = BytesMut::from(&[0x83, 0x86, 0x04, 0x02, b'/', b'x', 0x01, 0x0b][..]);
        block.put_slice(b"/run/x.sock");
        frame(&mut out, 0x1, 0x5, 1, &block);
        let alone = serve(Caller::new(&out));
        let behind = serve(CallerStream::new(Caller::new(&out), EDGE_LIMITS));
        assert_eq!((alone.localhost, behind.localhost), (0, 1));
        assert!(check(&out).is_ok());
    }
}
