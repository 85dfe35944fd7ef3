//! A caller's bytes through the HTTP/2 edge (`criguard::proxy::authority`) into h2's server,
//! against h2's server reading the same bytes itself (`criguard::proxy::edge_agreement`): the
//! same requests, the same fields, the same GOAWAY code, or the target panics. The first byte
//! picks the input: arbitrary bytes as a connection's start; arbitrary frames after a valid
//! preface and SETTINGS; or a generated kubelet-like connection (seeded by the next 8 bytes,
//! every HPACK representation, blocks split and padded, mutated) with the rest appended.

#![no_main]

use criguard::proxy::edge_agreement::{check, connection};
use libfuzzer_sys::fuzz_target;

const START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let input = match pick % 3 {
        0 => rest.to_vec(),
        1 => [START, rest].concat(),
        _ if rest.len() >= 8 => {
            let seed = u64::from_le_bytes(rest[..8].try_into().unwrap());
            let mut rng = fastrand::Rng::with_seed(seed);
            [connection(&mut rng).as_slice(), &rest[8..]].concat()
        }
        _ => return,
    };
    if let Err(difference) = check(&input) {
        panic!("{difference}");
    }
});
