//! Arbitrary bytes as the body of the calls the policies read (RunPodSandbox, CreateContainer,
//! PullImage and the calls that name only ids), through decoding and every shipped policy, and
//! differentially: what criguard reads of them must be what prost reads, or criguard refuses
//! them (`criguard::policy::agreement`). Half the inputs are the agreement's seeds (recorded
//! kubelet requests, and the newer CRI fields they lack: image volumes, user namespaces) mutated
//! the ways a crafted request differs (unknown fields and groups, repeated and split fields,
//! wire types), seeded by the input; the other half are the input itself.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use criguard::policy::PolicySet;
use criguard::policy::agreement::{check, mutate, seeds};
use criguard::policy::cases::{Known, evaluate};
use criguard::proxy::rpc::{Method, Rpc};
use libfuzzer_sys::fuzz_target;

static POLICIES: LazyLock<PolicySet> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    criguard::policy::file::load_dir(&dir, &Default::default()).expect("the shipped policies load")
});

/// The recorded kubelet requests, and the fields of CRI 1.31-1.36 they do not carry.
static SEEDS: LazyLock<Vec<(Method, Vec<u8>)>> = LazyLock::new(seeds);

const METHODS: [Method; 6] = [
    Method::RunPodSandbox,
    Method::CreateContainer,
    Method::PullImage,
    Method::ExecSync,
    Method::StopContainer,
    Method::PortForward,
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the method (or a seed to mutate), the rest is the body or the seed.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, body) = if pick & 0x80 != 0 && rest.len() >= 8 {
        let (method, seed) = &SEEDS[usize::from(pick & 0x7f) % SEEDS.len()];
        let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(rest[..8].try_into().unwrap()));
        (*method, mutate(&mut rng, seed))
    } else {
        (METHODS[usize::from(pick) % METHODS.len()], rest.to_vec())
    };
    let rpc = Rpc::of(method);
    if let Err(difference) = check(method, &body) {
        panic!("{method:?}: {difference}");
    }
    let body = bytes::Bytes::from(body);
    let _ = evaluate(&POLICIES, &rpc, &body, None, Known::default());
});
