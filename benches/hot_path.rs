//! Criterion benchmarks of the work criguard does on every call: parsing the method, reading
//! the request head, following the gRPC framing of an answer, observing its final status,
//! evaluating policies on a CreateContainer, and writing its audit event's request as JSON.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;

use bytes::Bytes;
use criguard::client::grpc_frame;
use criguard::proxy::body::{FrameScanner, Outcome, ResponseBody, StatusBody, read_request_head};
use criguard::proxy::rpc::Rpc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;

type Chunks = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
>;

fn body_of(frames: Vec<Frame<Bytes>>) -> Chunks {
    StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ))
}

fn ok_trailers() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", 0.into());
    t
}

fn method_parsing(c: &mut Criterion) {
    c.bench_function("Rpc::from_path known", |b| {
        b.iter(|| Rpc::from_path(black_box("/runtime.v1.RuntimeService/CreateContainer")))
    });
    c.bench_function("Rpc::from_path unknown", |b| {
        b.iter(|| {
            Rpc::from_path(black_box(
                "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
            ))
        })
    });
}

fn framing(c: &mut Criterion) {
    // A 6.5 MB ListContainers answer arriving in 1 MiB HTTP/2 frames.
    let answer = grpc_frame(&vec![7u8; 6_500_000]);
    let chunks: Vec<Bytes> = answer.chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(answer.len() as u64));
    group.bench_function("FrameScanner over a 6.5 MB answer", |b| {
        b.iter(|| {
            let mut scanner = FrameScanner::new(16 << 20);
            for chunk in &chunks {
                scanner.scan(black_box(chunk)).unwrap();
            }
        })
    });
    group.finish();
}

fn bodies(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let create = grpc_frame(&criguard::fake::samples::create_container_request().encode_to_vec());
    c.bench_function("read_request_head 5 KB CreateContainer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let body = body_of(vec![Frame::data(create.clone())]);
                let (message, rest) = read_request_head(body, 16 << 20).await.unwrap();
                black_box((message, rest));
            })
        })
    });
    let version = grpc_frame(b"\n\x02v1");
    c.bench_function("response body + status observer, unary answer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let inner = body_of(vec![
                    Frame::data(version.clone()),
                    Frame::trailers(ok_trailers()),
                ]);
                let body = ResponseBody::runtime(
                    inner,
                    16 << 20,
                    "unix:///run/containerd/containerd.sock".into(),
                );
                let response = StatusBody::wrap(http::Response::new(body), |o: Outcome| {
                    black_box(o);
                });
                black_box(response.into_body().collect().await.unwrap());
            })
        })
    });
}

/// pss-restricted and two CEL rules on a realistic 5 KB CreateContainer: the policy layer's
/// work per call (decoding included).
fn policies(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/pss-restricted.yaml",
        dir.path().join("pss-restricted.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cel.yaml"),
        "apiVersion: criguard.dev/v1alpha1\nkind: Policy\nmetadata: {name: cel}\nspec:\n  mode: enforce\n  match: {methods: [CreateContainer]}\n  rules:\n    - name: no-latest\n      cel: \"!container.image.endsWith(':latest')\"\n      message: no latest\n    - name: team-label\n      cel: \"'app' in pod.labels\"\n      message: pods need an app label\n",
    )
    .unwrap();
    let set = criguard::policy::file::load_dir(dir.path(), &Default::default()).unwrap();
    let rpc = Rpc::from_path("/runtime.v1.RuntimeService/CreateContainer");
    let bytes = criguard::fake::samples::create_container_request().encode_to_vec();
    let evaluate = || {
        set.evaluate(
            criguard::policy::Call {
                rpc: &rpc,
                caller: None,
                message: Some(&bytes),
                subject: None,
                compressed: false,
            },
            None,
        )
    };
    let evaluation = evaluate();
    let names: Vec<&str> = evaluation.evaluated.iter().map(|n| &**n).collect();
    assert_eq!(names, ["cel", "pss-restricted"]);
    assert!(evaluation.refusal().is_none(), "{:?}", evaluation.findings);
    c.bench_function(
        "policies: pss-restricted + 2 CEL rules, 5 KB CreateContainer",
        |b| b.iter(|| black_box(evaluate())),
    );
    // pss-restricted alone: what the load generator's `policies` scenario enforces.
    std::fs::remove_file(dir.path().join("cel.yaml")).unwrap();
    let set = criguard::policy::file::load_dir(dir.path(), &Default::default()).unwrap();
    let call = criguard::policy::Call {
        rpc: &rpc,
        caller: None,
        message: Some(&bytes),
        subject: None,
        compressed: false,
    };
    assert!(set.evaluate(call, None).refusal().is_none());
    c.bench_function("policies: pss-restricted, 5 KB CreateContainer", |b| {
        b.iter(|| black_box(set.evaluate(call, None)))
    });
}

/// The request of a 5 KB CreateContainer in proto JSON form, as a Request-level audit event
/// shows it: written from its bytes, and by reflection (decode, redact, serialize) as before.
fn audit_payload(c: &mut Criterion) {
    use criguard::audit::event::{message_type, redact};
    use criguard::proxy::rpc::Method;
    let rpc = Rpc::from_path("/runtime.v1.RuntimeService/CreateContainer");
    let bytes = criguard::fake::samples::create_container_request().encode_to_vec();
    let mut out = Vec::with_capacity(16 << 10);
    c.bench_function(
        "audit: 5 KB CreateContainer request as JSON, from its bytes",
        |b| {
            b.iter(|| {
                out.clear();
                criguard::audit::json::write(&mut out, Method::CreateContainer, true, &bytes, true)
                    .unwrap()
                    .unwrap();
                black_box(out.len())
            })
        },
    );
    let descriptor = message_type(&rpc, true).unwrap();
    c.bench_function(
        "audit: 5 KB CreateContainer request as JSON, by reflection",
        |b| {
            b.iter(|| {
                out.clear();
                let mut message =
                    prost_reflect::DynamicMessage::decode(descriptor.clone(), &bytes[..]).unwrap();
                redact(&mut message, true);
                serde_json::to_writer(&mut out, &message).unwrap();
                black_box(out.len())
            })
        },
    );
}

criterion_group!(
    benches,
    method_parsing,
    framing,
    bodies,
    policies,
    audit_payload
);
criterion_main!(benches);
