//! Arbitrary bytes as the body of the calls the policies decode (RunPodSandbox, CreateContainer,
//! PullImage) and of one they judge by id (ExecSync), through decoding and every shipped policy.
//! Every input must get a decision: no panic, no hang.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use criguard::policy::PolicySet;
use criguard::policy::cases::{evaluate, rpc_of};
use libfuzzer_sys::fuzz_target;

static POLICIES: LazyLock<PolicySet> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    criguard::policy::file::load_dir(&dir, &Default::default()).expect("the shipped policies load")
});

const METHODS: [&str; 4] = ["RunPodSandbox", "CreateContainer", "PullImage", "ExecSync"];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the method, the rest is the request body.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let rpc = rpc_of(METHODS[usize::from(pick) % METHODS.len()]);
    let body = bytes::Bytes::copy_from_slice(body);
    let _ = evaluate(&POLICIES, &rpc, &body, None, None);
});
