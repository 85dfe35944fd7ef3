//! Bad input is answered, never fatal: a runtime that is absent, restarts, or hangs, and
//! garbage on the listening socket. criguard keeps serving through each.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criguard::fake::FakeRuntime;
use http::HeaderMap;
use support::*;

const VERSION: &str = "/runtime.v1.RuntimeService/Version";

#[tokio::test]
async fn an_absent_runtime_is_unavailable_at_once_and_recovers_by_itself() {
    let sockets = Sockets::new();
    let criguard = Criguard::start(&sockets).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    let started = Instant::now();
    let answer = client
        .call(VERSION, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        answer.status,
        http::StatusCode::OK,
        "a gRPC status, not an HTTP error"
    );
    assert_eq!(answer.grpc_status(), Some(tonic::Code::Unavailable as i32));
    let message = answer.grpc_message().unwrap();
    let socket = format!("unix://{}", sockets.runtime().display());
    assert!(message.contains(&socket), "{message}");

    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !recovered {
        let answer = client
            .call(VERSION, grpc_frame(b""), &HeaderMap::new())
            .await
            .unwrap();
        recovered = answer.grpc_status() == Some(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        recovered,
        "criguard reconnected to the runtime when it appeared"
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_restarted_under_load_fails_only_the_calls_in_flight() {
    let sockets = Sockets::new();
    let slow = |_: &Recorded| Answer {
        delay: Duration::from_millis(300),
        ..Answer::ok(b"ok")
    };
    let runtime = RecordingRuntime::start(&sockets.runtime(), slow).await;
    let criguard = Criguard::start(&sockets).await;
    let client = RawClient::connect(&criguard.socket).await.unwrap();
    // Warm up so that the connections exist before counting descriptors.
    client
        .clone()
        .call(VERSION, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    let fds_before = open_fds();

    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .call(VERSION, grpc_frame(b""), &HeaderMap::new())
                    .await
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(2), || runtime
            .in_flight
            .load(Ordering::SeqCst)
            == 50)
        .await
    );
    drop(runtime); // the runtime dies with 50 calls in flight
    let _ = std::fs::remove_file(sockets.runtime());
    for call in calls {
        let answer = tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .expect("no call hangs")
            .unwrap()
            .unwrap();
        assert_eq!(answer.grpc_status(), Some(tonic::Code::Unavailable as i32));
        assert!(
            answer.grpc_message().unwrap().contains("lost"),
            "{:?}",
            answer.grpc_message()
        );
    }

    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"ok")).await;
    let mut client = client.clone();
    assert!(
        eventually_async(Duration::from_secs(3), || {
            let mut client = client.clone();
            async move {
                client
                    .call(VERSION, grpc_frame(b""), &HeaderMap::new())
                    .await
                    .unwrap()
                    .grpc_status()
                    == Some(0)
            }
        })
        .await
    );
    for _ in 0..20 {
        let answer = client
            .call(VERSION, grpc_frame(b""), &HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(answer.grpc_status(), Some(0));
    }
    drop(runtime);
    // Nothing leaks: descriptors come back to where they were (the old runtime connection
    // was replaced by the new one).
    assert!(
        eventually(Duration::from_secs(2), || open_fds() <= fds_before + 1).await,
        "fds before {fds_before}, after {}",
        open_fds()
    );
}

async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_hanging_runtime_leaves_the_deadline_to_the_caller_and_cancels_cleanly() {
    let sockets = Sockets::new();
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer {
        hang: true,
        ..Default::default()
    })
    .await;
    let criguard = Criguard::start(&sockets).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    let mut metadata = HeaderMap::new();
    metadata.insert("grpc-timeout", "300m".parse().unwrap());
    for _ in 0..10 {
        let call = client.call(VERSION, grpc_frame(b""), &metadata);
        // The caller gives up at its deadline; criguard has added no deadline of its own.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), call)
                .await
                .is_err()
        );
    }
    assert_eq!(runtime.requests()[0].headers["grpc-timeout"], "300m");
    // Each abandoned call is cancelled at the runtime too: nothing is left waiting.
    assert!(
        eventually(Duration::from_secs(2), || runtime
            .in_flight
            .load(Ordering::SeqCst)
            == 0)
        .await
    );
    assert_eq!(runtime.cancelled.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn garbage_on_the_socket_closes_only_that_connection() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let criguard = Criguard::start(&sockets).await;
    let mut good = RawClient::connect(&criguard.socket).await.unwrap();

    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\x03 definitely not http/2 \xff\xfe",
        // A correct preface, then a frame whose length says more than follows and a bogus type.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x04\x00\x00\x00\x00\x00garbage",
    ];
    for bytes in garbage {
        let socket = criguard.socket.clone();
        let closed = tokio::task::spawn_blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            stream.write_all(bytes).unwrap();
            let mut sink = Vec::new();
            // criguard closes the connection: end of file or a reset, not a read timeout.
            match stream.read_to_end(&mut sink) {
                Ok(_) => true,
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
            }
        })
        .await
        .unwrap();
        assert!(closed);
        assert_serving(&mut good).await;
    }
}
