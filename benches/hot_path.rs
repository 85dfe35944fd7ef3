//! Criterion benchmarks of the work criguard does on every call: parsing the method, reading
//! the request head, following the gRPC framing of an answer, observing its final status,
//! evaluating policies on a CreateContainer, writing its audit event's request as JSON, and
//! reading a caller's connection at the HTTP/2 edge (passed as it came, or rewritten).
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
    let message = criguard::fake::samples::create_container_request().encode_to_vec();
    c.bench_function("Subject::of_request 5 KB CreateContainer", |b| {
        b.iter(|| {
            criguard::proxy::inspect::Subject::of_request(
                criguard::proxy::rpc::Method::CreateContainer,
                black_box(&message),
            )
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
    use criguard::audit::event::reflected_json;
    use criguard::proxy::rpc::Method;
    use criguard::proxy::rpc::message_type;
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
                let message =
                    prost_reflect::DynamicMessage::decode(descriptor.clone(), &bytes[..]).unwrap();
                serde_json::to_writer(&mut out, &reflected_json(message, true).unwrap()).unwrap();
                black_box(out.len())
            })
        },
    );
}

/// A kubelet's connection as grpc-go writes it: preface, SETTINGS, then `calls` unary calls
/// (HEADERS with a kubelet's metadata, DATA with END_STREAM), its HPACK table in use.
fn kubelet_connection(authority: &[u8], calls: u32) -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut encoder = loona_hpack::Encoder::new();
    let methods = [
        "ContainerStatus",
        "PodSandboxStatus",
        "ListContainers",
        "Status",
    ];
    for call in 0..calls {
        let path = format!("/runtime.v1.RuntimeService/{}", methods[call as usize % 4]);
        let timeout = format!("{}u", 119_999_000 + call % 997);
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.65.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", timeout.as_bytes()),
        ]);
        let stream = 2 * call + 1;
        frame(&mut out, 0x1, 0x4, stream, &block);
        frame(
            &mut out,
            0x0,
            0x1,
            stream,
            &grpc_frame(b"\n\x40abcdef0123456789"),
        );
    }
    out
}

/// The caller's edge (`proxy::authority::CallerStream`) reading a kubelet's connection of 200
/// calls: as kubelets 1.31+ dial (`localhost`: the first block is decoded, the rest passes), and
/// as kubelets up to 1.30 dial (the socket path: every header block decoded and encoded again).
fn caller_edge(c: &mut Criterion) {
    use criguard::proxy::authority::{CallerStream, EdgeLimits};
    use tokio::io::AsyncReadExt;
    const LIMITS: EdgeLimits = EdgeLimits {
        max_frame_size: 1 << 20,
        max_header_list_size: 16 << 10,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (name, authority) in [
        ("localhost, passed as it came", &b"localhost"[..]),
        ("socket path, rewritten", b"/run/criguard/criguard.sock"),
    ] {
        let input = kubelet_connection(authority, 200);
        c.bench_function(&format!("caller edge: 200 calls, {name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut stream = CallerStream::new(&input[..], LIMITS);
                    let mut out = Vec::with_capacity(input.len() + 4096);
                    stream.read_to_end(&mut out).await.unwrap();
                    black_box(out.len())
                })
            })
        });
    }
}

/// The tracing layer around a call that does nothing: with tracing off (what every call pays
/// when `tracing:` is not set), and with a sampled `traceparent` (the span made, its attributes
/// set, handed to the export queue), next to the same call without the layer.
fn tracing_layer(c: &mut Criterion) {
    use criguard::layers::trace::CallSpans;
    use criguard::telemetry::trace::{TraceSettings, Tracing};
    use tower::{Layer, Service, ServiceExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bare = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(body_of(vec![Frame::trailers(
            ok_trailers(),
        )])))
    });
    let request = |traceparent: Option<&str>| {
        let mut request = http::Request::new(());
        *request.uri_mut() = "/runtime.v1.RuntimeService/Version".parse().unwrap();
        request
            .extensions_mut()
            .insert(Rpc::from_path("/runtime.v1.RuntimeService/Version"));
        if let Some(value) = traceparent {
            request
                .headers_mut()
                .insert("traceparent", value.parse().unwrap());
        }
        request
    };
    let settings = TraceSettings::resolve(criguard::telemetry::trace::FileTracing {
        // Nothing listens there: spans are dropped, after the part every call pays.
        endpoint: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    })
    .unwrap();
    let on = rt.block_on(async { Tracing::start(Some(&settings)) });
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases = [
        ("no tracing layer", None, Some(sampled)),
        (
            "tracing layer, off",
            Some(Tracing::default()),
            Some(sampled),
        ),
        ("tracing layer, on, no traceparent", Some(on.clone()), None),
        (
            "tracing layer, on, sampled traceparent",
            Some(on),
            Some(sampled),
        ),
    ];
    for (name, tracing, traceparent) in cases {
        c.bench_function(&format!("a call: {name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let response = match &tracing {
                        None => bare
                            .oneshot(request(traceparent))
                            .await
                            .unwrap()
                            .map(|b| b.boxed_unsync()),
                        Some(tracing) => {
                            let mut service = CallSpans::layer(tracing.clone(), None).layer(bare);
                            service
                                .call(request(traceparent))
                                .await
                                .unwrap()
                                .map(|b| b.boxed_unsync())
                        }
                    };
                    black_box(response.into_body().collect().await.unwrap());
                })
            })
        });
    }
}

criterion_group!(
    benches,
    tracing_layer,
    caller_edge,
    method_parsing,
    framing,
    bodies,
    policies,
    audit_payload
);
criterion_main!(benches);
