//! Arbitrary bytes as the body of the calls the policies read (RunPodSandbox, CreateContainer,
//! PullImage and the calls that name only ids), through decoding and every shipped policy, and
//! differentially: what criguard reads of them must be what prost reads, or criguard refuses
//! them (`criguard::policy::agreement`). Half the inputs are recorded kubelet requests mutated
//! the ways a crafted request differs (unknown fields and groups, repeated and split fields,
//! wire types), seeded by the input; the other half are the input itself.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use criguard::policy::PolicySet;
use criguard::policy::agreement::{check, mutate};
use criguard::policy::cases::{Known, evaluate, rpc_of};
use libfuzzer_sys::fuzz_target;

static POLICIES: LazyLock<PolicySet> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    criguard::policy::file::load_dir(&dir, &Default::default()).expect("the shipped policies load")
});

/// The recorded kubelet requests, by method.
static SEEDS: LazyLock<Vec<(String, Vec<u8>)>> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubelet-requests");
    let mut seeds = Vec::new();
    for pod in std::fs::read_dir(root).expect("fixtures") {
        let pod = pod.unwrap().path();
        for file in std::fs::read_dir(&pod).into_iter().flatten() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "bin") {
                let name = file.file_stem().unwrap().to_string_lossy().into_owned();
                let method = name.split('-').nth(1).unwrap().to_string();
                seeds.push((method, std::fs::read(&file).unwrap()));
            }
        }
    }
    seeds.sort();
    seeds
});

const METHODS: [&str; 6] = [
    "RunPodSandbox",
    "CreateContainer",
    "PullImage",
    "ExecSync",
    "StopContainer",
    "PortForward",
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the method (or a seed to mutate), the rest is the body or the seed.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, body) = if pick & 0x80 != 0 && rest.len() >= 8 {
        let (method, seed) = &SEEDS[usize::from(pick & 0x7f) % SEEDS.len()];
        let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(rest[..8].try_into().unwrap()));
        (method.as_str(), mutate(&mut rng, seed))
    } else {
        (METHODS[usize::from(pick) % METHODS.len()], rest.to_vec())
    };
    let rpc = rpc_of(method);
    if let Err(difference) = check(rpc.method, &body) {
        panic!("{method}: {difference}");
    }
    let body = bytes::Bytes::from(body);
    let _ = evaluate(&POLICIES, &rpc, &body, None, Known::default());
});
