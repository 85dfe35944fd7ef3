//! The audit trail's one-pass JSON writer (`criguard::audit::json`) against reflection
//! (prost-reflect), the reference it replaced: for any bytes as any method's request or
//! answer, the same JSON, or the writer leaves the message to the reference (`json::check`).
//! The first byte picks the method and direction, or (high bit set) a recorded kubelet request
//! mutated the ways crafted requests differ, seeded by the next 8 bytes.

#![no_main]

use std::sync::LazyLock;

use criguard::audit::json::check;
use criguard::policy::agreement::{mutate, seeds};
use criguard::proxy::rpc::Method;
use libfuzzer_sys::fuzz_target;

static SEEDS: LazyLock<Vec<(Method, Vec<u8>)>> = LazyLock::new(seeds);

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, input, bytes) = if pick & 0x80 != 0 && rest.len() >= 8 {
        let (method, seed) = &SEEDS[usize::from(pick & 0x7f) % SEEDS.len()];
        let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(rest[..8].try_into().unwrap()));
        (*method, true, mutate(&mut rng, seed))
    } else {
        let method = Method::ALL[usize::from(pick >> 1) % Method::ALL.len()];
        (method, pick & 1 == 0, rest.to_vec())
    };
    if let Err(difference) = check(method, input, &bytes) {
        panic!("{difference}");
    }
});
