//! criguard is transparent: every call, known or not, reaches the runtime as the caller's
//! bytes with its metadata and deadline, and the runtime's answer comes back as it was sent.
//! Each test goes through real unix sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use criguard::config::Overrides;
use criguard::cri::*;
use criguard::fake::FakeRuntime;
use criguard::proxy::rpc::{Method, Service};
use http::HeaderMap;
use prost::Message;
use support::*;

fn method_path(method: Method) -> String {
    let service = match method.service() {
        Service::Runtime => "runtime.v1.RuntimeService",
        Service::Image => "runtime.v1.ImageService",
        Service::Other => unreachable!(),
    };
    format!("/{service}/{method}")
}

#[tokio::test]
async fn every_method_known_or_not_reaches_the_runtime_with_the_callers_bytes() {
    let sockets = Sockets::new();
    let runtime =
        RecordingRuntime::start(&sockets.runtime(), |r| Answer::ok(r.path.as_bytes())).await;
    let criguard = Criguard::start(&sockets).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    let mut paths: Vec<String> = Method::ALL.iter().map(|&m| method_path(m)).collect();
    paths.push("/runtime.v1.RuntimeService/NotYetInTheCri".into());
    paths.push("/runtime.v1.RuntimeService/MadeUpMethod".into());
    paths.push("/some.other.Service/Anything".into());
    for (i, path) in paths.iter().enumerate() {
        let body = grpc_frame(format!("payload {i}").as_bytes());
        let answer = client
            .call(path, body.clone(), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(answer.grpc_status(), Some(0), "{path}");
        assert_eq!(answer.body, grpc_frame(path.as_bytes()), "{path}");
        let seen = runtime.requests().pop().unwrap();
        assert_eq!(seen.path, *path);
        assert_eq!(seen.body, body, "{path}");
    }
    assert_eq!(runtime.requests().len(), Method::ALL.len() + 3);
}

#[tokio::test]
async fn fields_unknown_to_our_proto_reach_the_runtime_byte_for_byte() {
    let sockets = Sockets::new();
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| {
        Answer::ok(
            &CreateContainerResponse {
                container_id: "c1".into(),
            }
            .encode_to_vec(),
        )
    })
    .await;
    let criguard = Criguard::start(&sockets).await;

    let request = CreateContainerRequest {
        pod_sandbox_id: "pod-1".into(),
        config: Some(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            labels: [("a", "1"), ("b", "2"), ("c", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        sandbox_config: None,
    };
    let mut bytes = request.encode_to_vec();
    // Field 4242, a string a newer kubelet might send: unknown to prost, which would drop it.
    prost::encoding::string::encode(4242, &"from-the-future".to_string(), &mut bytes);
    let body = grpc_frame(&bytes);
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let answer = client
        .call(
            "/runtime.v1.RuntimeService/CreateContainer",
            body.clone(),
            &HeaderMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0));
    assert_eq!(runtime.requests()[0].body, body);
    // Re-encoding would have lost the field: prove the test can tell.
    let reencoded = CreateContainerRequest::decode(&bytes[..])
        .unwrap()
        .encode_to_vec();
    assert_ne!(grpc_frame(&reencoded), body);
}

#[tokio::test]
async fn metadata_and_deadline_go_in_and_status_details_and_trailers_come_back() {
    let sockets = Sockets::new();
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| {
        let mut trailers = status_trailers(5, Some("container%20%22abc%22%20not%20found"));
        trailers.insert(
            "grpc-status-details-bin",
            "CAUSBm5vdCBmb3VuZA".parse().unwrap(),
        );
        trailers.insert("x-runtime-trailer", "kept".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("x-runtime-header", "also-kept".parse().unwrap());
        Answer {
            headers,
            trailers: Some(trailers),
            ..Default::default()
        }
    })
    .await;
    let criguard = Criguard::start(&sockets).await;

    let mut metadata = HeaderMap::new();
    metadata.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    metadata.insert("baggage", "node=worker-1,zone=a".parse().unwrap());
    metadata.insert("x-custom-key", "custom value".parse().unwrap());
    metadata.insert("grpc-timeout", "119999m".parse().unwrap());
    metadata.insert("user-agent", "grpc-go/1.65.0".parse().unwrap());
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let body = grpc_frame(
        &ContainerStatusRequest {
            container_id: "abc".into(),
            verbose: false,
        }
        .encode_to_vec(),
    );
    let answer = client
        .call(
            "/runtime.v1.RuntimeService/ContainerStatus",
            body,
            &metadata,
        )
        .await
        .unwrap();

    let seen = &runtime.requests()[0].headers;
    for key in [
        "traceparent",
        "baggage",
        "x-custom-key",
        "grpc-timeout",
        "user-agent",
    ] {
        assert_eq!(seen.get(key), metadata.get(key), "{key}");
    }
    assert_eq!(seen["te"], "trailers");
    assert_eq!(seen["content-type"], "application/grpc");
    let trailers = answer.trailers.clone().unwrap();
    assert_eq!(answer.grpc_status(), Some(5));
    assert_eq!(
        answer.grpc_message().as_deref(),
        Some("container \"abc\" not found")
    );
    assert_eq!(trailers["grpc-status-details-bin"], "CAUSBm5vdCBmb3VuZA");
    assert_eq!(trailers["x-runtime-trailer"], "kept");
    assert_eq!(answer.headers["x-runtime-header"], "also-kept");
    assert!(
        answer.headers.get("date").is_none(),
        "criguard adds no header of its own"
    );
}

#[tokio::test]
async fn unimplemented_from_the_runtime_comes_back_as_is() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let criguard = Criguard::start(&sockets).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    for path in [
        "/runtime.v1.RuntimeService/NotYetInTheCri",
        "/runtime.v1.RuntimeService/CheckpointContainer", // known to us, not to the fake runtime
    ] {
        let answer = client
            .call(path, grpc_frame(b""), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(
            answer.grpc_status(),
            Some(tonic::Code::Unimplemented as i32),
            "{path}"
        );
        assert!(
            !answer
                .grpc_message()
                .unwrap_or_default()
                .contains("criguard"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_typed_client_sees_the_same_answers_directly_and_through_criguard() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::with_containers(3)).await;
    let criguard = Criguard::start(&sockets).await;
    let direct =
        criguard::client::runtime(criguard::client::channel(sockets.runtime()).await.unwrap());
    let proxied =
        criguard::client::runtime(criguard::client::channel(&criguard.socket).await.unwrap());
    for mut client in [direct.clone(), proxied.clone()] {
        let version = client
            .version(VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(version.runtime_name, criguard::fake::RUNTIME_NAME);
    }
    let a = direct
        .clone()
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let b = proxied
        .clone()
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    let err = proxied
        .clone()
        .container_status(ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "container \"nope\" not found");
}

#[tokio::test]
async fn container_events_stream_as_they_happen_with_no_proxy_timeout() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let criguard = Criguard::start(&sockets).await;
    let mut client =
        criguard::client::runtime(criguard::client::channel(&criguard.socket).await.unwrap());
    let mut events = client
        .get_container_events(GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let event = tokio::time::timeout(Duration::from_secs(2), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.container_id, id);
    assert_eq!(
        event.container_event_type(),
        ContainerEventType::ContainerCreatedEvent
    );

    // Quiet for a while: the stream stays open, the next event still arrives at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_millis(500), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        event.container_event_type(),
        ContainerEventType::ContainerStartedEvent
    );
}

#[tokio::test]
async fn cancelling_a_stream_on_either_side_ends_the_other() {
    let sockets = Sockets::new();
    let feeds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let feeds_in = feeds.clone();
    let runtime = RecordingRuntime::start(&sockets.runtime(), move |_| {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        feeds_in.lock().unwrap().push(tx);
        Answer::stream(rx)
    })
    .await;
    let criguard = Criguard::start(&sockets).await;
    let path = "/runtime.v1.RuntimeService/GetContainerEvents";
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    // The caller goes away: the runtime's side of the stream is cancelled.
    let response = client
        .send(RawClient::request(path, grpc_frame(b""), &HeaderMap::new()))
        .await
        .unwrap();
    let sender = feeds.lock().unwrap()[0].clone();
    sender.send(grpc_frame(b"event-1")).await.unwrap();
    let mut body = response.into_body();
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), grpc_frame(b"event-1"));
    drop(body);
    assert!(
        eventually(Duration::from_secs(2), || runtime
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );

    // The runtime ends the stream: the caller sees its end and status.
    let response = client
        .send(RawClient::request(path, grpc_frame(b""), &HeaderMap::new()))
        .await
        .unwrap();
    let sender = feeds.lock().unwrap()[1].clone();
    sender.send(grpc_frame(b"event-2")).await.unwrap();
    drop(sender);
    feeds.lock().unwrap().clear();
    let collected = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), grpc_frame(b"event-2"));
}

fn big_message(size: usize) -> Bytes {
    grpc_frame(&vec![b'x'; size])
}

#[tokio::test]
async fn answers_over_the_limit_are_resource_exhausted_and_a_raised_limit_lets_them_pass() {
    const TWENTY_MIB: usize = 20 << 20;
    let sockets = Sockets::new();
    let _runtime = RecordingRuntime::start(&sockets.runtime(), |r| {
        if r.path.ends_with("/ListContainers") {
            Answer {
                chunks: vec![big_message(TWENTY_MIB)],
                trailers: Some(status_trailers(0, None)),
                ..Default::default()
            }
        } else {
            Answer::ok(b"small")
        }
    })
    .await;

    let criguard = Criguard::start(&sockets).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let list = "/runtime.v1.RuntimeService/ListContainers";
    let answer = client
        .call(list, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::ResourceExhausted as i32)
    );
    let message = answer.grpc_message().unwrap();
    assert!(
        message.contains("20971520") && message.contains("limit of 16777216"),
        "{message}"
    );
    assert!(
        answer.body.is_empty(),
        "no part of the oversized message is forwarded"
    );
    // The same connection goes on serving.
    assert_serving(&mut client).await;
    criguard.stop().await;

    let raised = Overrides {
        max_message_size: Some("32MiB".into()),
        ..Default::default()
    };
    let criguard = Criguard::start_with(&sockets, raised).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let answer = client
        .call(list, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0));
    assert_eq!(answer.body.len(), TWENTY_MIB + 5);
}

#[tokio::test]
async fn requests_over_the_limit_never_reach_the_runtime() {
    let sockets = Sockets::new();
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    let criguard = Criguard::start_with(
        &sockets,
        Overrides {
            max_message_size: Some("1MiB".into()),
            ..Default::default()
        },
    )
    .await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    for path in [
        "/runtime.v1.RuntimeService/CreateContainer",
        "/runtime.v1.RuntimeService/SomethingNew",
    ] {
        let answer = client
            .call(path, big_message(2 << 20), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(
            answer.grpc_status(),
            Some(tonic::Code::ResourceExhausted as i32),
            "{path}"
        );
        assert!(
            answer
                .grpc_message()
                .unwrap()
                .contains("limit of 1048576 bytes"),
            "{path}"
        );
    }
    assert!(
        runtime.requests().iter().all(|r| r.body.is_empty()),
        "no oversized body was delivered"
    );
    assert_serving(&mut client).await;
}

#[tokio::test]
async fn hundreds_of_concurrent_calls_on_one_connection_and_on_many() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let criguard = Criguard::start(&sockets).await;
    let version = "/runtime.v1.RuntimeService/Version";

    let shared = RawClient::connect(&criguard.socket).await.unwrap();
    let calls = (0..500).map(|_| {
        let mut client = shared.clone();
        tokio::spawn(async move {
            client
                .call(version, grpc_frame(b""), &HeaderMap::new())
                .await
                .unwrap()
                .grpc_status()
        })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap(), Some(0));
    }

    let socket = criguard.socket.clone();
    let calls = (0..200).map(|_| {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut client = RawClient::connect(&socket).await.unwrap();
            let mut codes = Vec::new();
            for _ in 0..3 {
                codes.push(
                    client
                        .call(version, grpc_frame(b""), &HeaderMap::new())
                        .await
                        .unwrap()
                        .grpc_status(),
                );
            }
            codes
        })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap(), vec![Some(0); 3]);
    }
}

#[tokio::test]
async fn image_calls_go_to_the_image_endpoint_when_one_is_set() {
    let sockets = Sockets::new();
    let image_socket = sockets.dir.path().join("image.sock");
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"runtime")).await;
    let images = RecordingRuntime::start(&image_socket, |_| Answer::ok(b"images")).await;
    let criguard = Criguard::start_with(
        &sockets,
        Overrides {
            image_endpoint: Some(format!("unix://{}", image_socket.display())),
            ..Default::default()
        },
    )
    .await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let none = HeaderMap::new();
    let answer = client
        .call("/runtime.v1.ImageService/PullImage", grpc_frame(b""), &none)
        .await
        .unwrap();
    assert_eq!(answer.body, grpc_frame(b"images"));
    let answer = client
        .call("/runtime.v1.RuntimeService/Version", grpc_frame(b""), &none)
        .await
        .unwrap();
    assert_eq!(answer.body, grpc_frame(b"runtime"));
    assert_eq!(images.requests().len(), 1);
    assert_eq!(runtime.requests().len(), 1);
}
