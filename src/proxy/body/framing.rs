//! gRPC's length-prefixed message framing: where each message of a body starts and ends,
//! followed across chunks, and the messages read from a buffer that holds them whole.

/// Every gRPC message starts with a 5-byte prefix: a compression flag and a big-endian length.
pub const PREFIX_LEN: usize = 5;

/// Follows the gRPC length-prefixed framing across body chunks and flags a message over the
/// limit as soon as its prefix has been seen, before any of its payload is forwarded.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    limit: usize,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    remaining: usize,
}

/// A message whose prefix declares more bytes than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oversized {
    /// The declared length of the message.
    pub size: usize,
    /// Where the message's prefix starts in the chunk being scanned (0 when it started in an
    /// earlier chunk).
    pub offset: usize,
}

impl FrameScanner {
    /// The largest message it lets pass.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn new(limit: usize) -> Self {
        FrameScanner {
            limit,
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Advances over one chunk of the body.
    pub fn scan(&mut self, chunk: &[u8]) -> Result<(), Oversized> {
        let mut at = 0;
        while at < chunk.len() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() - at);
                self.remaining -= skip;
                at += skip;
                continue;
            }
            self.prefix[self.prefix_len] = chunk[at];
            self.prefix_len += 1;
            at += 1;
            if self.prefix_len == PREFIX_LEN {
                self.prefix_len = 0;
                let size = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if size > self.limit {
                    return Err(Oversized {
                        size,
                        offset: at.saturating_sub(PREFIX_LEN),
                    });
                }
                self.remaining = size;
            }
        }
        Ok(())
    }
}

/// The length the first message of `buf` declares in its prefix.
pub fn declared_length(buf: &[u8]) -> Option<usize> {
    let prefix = buf.get(..PREFIX_LEN)?;
    Some(u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize)
}

/// The byte range of the first complete message in `buf`, if it is all there.
pub fn first_message_range(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let end = PREFIX_LEN.checked_add(declared_length(buf)?)?;
    (buf.len() >= end).then_some(PREFIX_LEN..end)
}

/// The first complete message in `buf` (without its prefix), if it is all there.
pub fn first_message(buf: &[u8]) -> Option<&[u8]> {
    buf.get(first_message_range(buf)?)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `payload` as one uncompressed gRPC message.
    pub fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn scanner_follows_messages_split_anywhere() {
        let mut stream = framed(b"hello");
        stream.extend(framed(&[7; 300]));
        stream.extend(framed(b""));
        for split in 0..stream.len() {
            let mut scanner = FrameScanner::new(300);
            scanner.scan(&stream[..split]).unwrap();
            scanner.scan(&stream[split..]).unwrap();
            assert_eq!(
                (scanner.prefix_len, scanner.remaining),
                (0, 0),
                "split at {split}"
            );
        }
    }

    #[test]
    fn the_first_message_of_a_buffer_only_when_all_of_it_is_there() {
        let stream = [framed(b"first"), framed(b"second")].concat();
        assert_eq!(declared_length(&stream), Some(5));
        assert_eq!(first_message(&stream), Some(&b"first"[..]));
        assert_eq!(first_message(&stream[..7]), None);
        assert_eq!(first_message(&stream[..3]), None);
    }
}
