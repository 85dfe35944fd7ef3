//! The W3C trace-context `traceparent` header (https://www.w3.org/TR/trace-context/): read from
//! the caller, written for the runtime. A value this does not accept is left as it is: the
//! call is forwarded with it untouched and gets no span.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` read for the span's own record (W3C asks vendors to keep at least
/// 512 characters); a longer one is still forwarded untouched, only not parsed.
const MAX_TRACESTATE: usize = 512;

/// The length of a version-00 value: `00-<32 hex>-<16 hex>-<2 hex>`.
const LEN: usize = 55;

/// A `traceparent` as the caller sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Reads a header value. Later versions than 00 are read by their version-00 part, as the
    /// specification asks; version ff, upper-case hex, all-zero ids and any other deviation
    /// give `None`. Looks at no more than the first 56 bytes.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() < LEN {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        let fits = match version {
            0 => value.len() == LEN,
            0xff => false,
            _ => value.len() == LEN || value[LEN] == b'-',
        };
        if !fits || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        let parsed = TraceParent {
            trace_id: TraceId::from_bytes(trace_id),
            parent_id: SpanId::from_bytes(parent_id),
            flags: TraceFlags::new(flags),
        };
        (parsed.trace_id != TraceId::INVALID && parsed.parent_id != SpanId::INVALID)
            .then_some(parsed)
    }

    /// The caller's span as a remote parent, with its `tracestate` when one was sent that
    /// parses and is not over 512 bytes.
    pub fn remote_context(self, state: Option<&[u8]>) -> SpanContext {
        let state = state
            .filter(|s| s.len() <= MAX_TRACESTATE)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        SpanContext::new(self.trace_id, self.parent_id, self.flags, true, state)
    }

    /// The version-00 header value.
    pub fn to_header(self) -> http::HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            self.flags.to_u8()
        );
        http::HeaderValue::try_from(text).expect("hex and dashes make a header value")
    }
}

/// Two lower-case hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_is_read_and_written_back_unchanged() {
        let parsed = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(
            parsed.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            parsed.parent_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(parsed.flags.is_sampled());
        assert_eq!(parsed.to_header(), GOOD);
    }

    #[test]
    fn flags_other_than_sampled_are_read_as_sent() {
        let random = GOOD.replace("-01", "-03");
        let parsed = TraceParent::parse(random.as_bytes()).unwrap();
        assert_eq!(parsed.flags.to_u8(), 3);
        assert_eq!(parsed.to_header(), random.as_str());
        let unsampled = GOOD.replace("-01", "-00");
        assert!(
            !TraceParent::parse(unsampled.as_bytes())
                .unwrap()
                .flags
                .is_sampled()
        );
    }

    #[test]
    fn later_versions_are_read_by_their_first_part_and_written_as_version_00() {
        let later = format!("cc{}-what-comes-next", &GOOD[2..]);
        let parsed = TraceParent::parse(later.as_bytes()).unwrap();
        assert_eq!(parsed.to_header(), GOOD);
        assert!(TraceParent::parse(format!("cc{}", &GOOD[2..]).as_bytes()).is_some());
        // Version 00 has exactly 55 bytes; a later one continues only after a dash.
        assert!(TraceParent::parse(format!("{GOOD}-x").as_bytes()).is_none());
        assert!(TraceParent::parse(format!("cc{}x", &GOOD[2..]).as_bytes()).is_none());
    }

    #[test]
    fn the_remote_parent_keeps_a_tracestate_up_to_512_bytes() {
        let parsed = TraceParent::parse(GOOD.as_bytes()).unwrap();
        let parent = parsed.remote_context(Some(b"vendor=opaque,other=1"));
        assert!(parent.is_remote());
        assert_eq!(parent.trace_state().get("vendor"), Some("opaque"));
        let long = format!("vendor={}", "x".repeat(600));
        let parent = parsed.remote_context(Some(long.as_bytes()));
        assert_eq!(parent.trace_state().header(), "");
        assert_eq!(parent.span_id(), parsed.parent_id);
    }

    #[test]
    fn every_deviation_is_refused() {
        let bad = [
            String::new(),
            GOOD[..54].to_string(),
            format!("ff{}", &GOOD[2..]),
            GOOD.to_uppercase(),
            GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)),
            GOOD.replacen('-', "_", 1),
            GOOD.replace("-00f0", "+00f0"),
            GOOD.replace("-01", "-0g"),
            GOOD.replace("4bf9", "4bf "),
            format!(" {}", &GOOD[1..]),
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value.as_bytes()), None, "{value:?}");
        }
    }
}
