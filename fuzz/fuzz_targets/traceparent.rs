//! The `traceparent` reader (`criguard::telemetry::traceparent`), on any bytes a caller can
//! send as the header's value: it never panics, and what it accepts it writes back as the same
//! trace context, in the version-00 form that a version-00 input already had. What follows the
//! first newline is the call's `tracestate`, read into the remote parent the span hangs from. A first byte
//! with its high bit set starts from a valid value (W3C's example, or a later version's) and
//! changes the bytes the next pairs name (position, byte), so that near-valid values are tried
//! as often as noise.

#![no_main]

use criguard::telemetry::traceparent::TraceParent;
use libfuzzer_sys::fuzz_target;

const EXAMPLES: [&[u8]; 2] = [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next",
];

fuzz_target!(|data: &[u8]| {
    let input = match data.split_first() {
        Some((&pick, edits)) if pick & 0x80 != 0 => {
            let mut input = EXAMPLES[usize::from(pick & 1)].to_vec();
            for edit in edits.chunks_exact(2) {
                let at = usize::from(edit[0]);
                match at.checked_sub(input.len()) {
                    None => input[at] = edit[1],
                    Some(_) => input.push(edit[1]),
                }
            }
            input
        }
        _ => data.to_vec(),
    };
    let (input, state) = match input.iter().position(|&b| b == b'\n') {
        Some(at) => (&input[..at], Some(&input[at + 1..])),
        None => (&input[..], None),
    };
    let Some(parsed) = TraceParent::parse(input) else {
        return;
    };
    let parent = parsed.remote_context(state);
    assert_eq!(parent.trace_id(), parsed.trace_id);
    assert_eq!(parent.span_id(), parsed.parent_id);
    let written = parsed.to_header();
    assert_eq!(written.len(), 55);
    assert_eq!(TraceParent::parse(written.as_bytes()), Some(parsed));
    if input.starts_with(b"00") {
        assert_eq!(written.as_bytes(), input, "version 00 is written back as it came");
    } else {
        assert_eq!(&written.as_bytes()[2..], &input[2..55]);
    }
});
