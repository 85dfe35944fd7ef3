//! What an operator scrapes: exact counts per method and code after known call sequences,
//! streams and calls in flight, and `/readyz` following the runtime as it goes and comes back.
//! criguard runs as its own process here, so the counts are its own.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::HeaderMap;
use support::*;

async fn start(sockets: &Sockets, admin: &Path) -> Running {
    let mut command = serve_command(sockets);
    command
        .arg("--admin-address")
        .arg(admin)
        .arg("--probe-interval")
        .arg("200ms")
        .stderr(Stdio::null());
    Running(spawn_serving(command, sockets, admin).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_show_exact_counts_by_method_and_code() {
    let sockets = Sockets::new();
    let admin: PathBuf = sockets.dir.path().join("admin.sock");
    let feeds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = feeds.clone();
    let _runtime = RecordingRuntime::start(&sockets.runtime(), move |r| {
        if r.path.ends_with("/Version") {
            Answer::ok(b"v1")
        } else if r.path.ends_with("/ContainerStatus") {
            Answer {
                trailers: Some(status_trailers(5, Some("not found"))),
                ..Default::default()
            }
        } else if r.path.ends_with("/GetContainerEvents") {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            keep.lock().unwrap().push(tx);
            Answer::stream(rx)
        } else {
            Answer {
                trailers: Some(status_trailers(12, None)),
                ..Default::default()
            }
        }
    })
    .await;
    let _criguard = start(&sockets, &admin).await;
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let none = HeaderMap::new();
    let rt = |m: &str| format!("/runtime.v1.RuntimeService/{m}");

    for _ in 0..3 {
        client
            .call(&rt("Version"), grpc_frame(b"v1"), &none)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        client
            .call(&rt("ContainerStatus"), grpc_frame(b"\n\x03abc"), &none)
            .await
            .unwrap();
    }
    client
        .call(&rt("NotYetInTheCri"), grpc_frame(b""), &none)
        .await
        .unwrap();
    client
        .call(&rt("YetAnotherNewMethod"), grpc_frame(b""), &none)
        .await
        .unwrap();
    let stream = client
        .send(RawClient::request(
            &rt("GetContainerEvents"),
            grpc_frame(b""),
            &none,
        ))
        .await
        .unwrap();

    let (status, text) = admin_get(&admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let s = samples(&text);
    assert_eq!(total(&s, "Version", "OK"), 3.0);
    assert_eq!(total(&s, "ContainerStatus", "NotFound"), 2.0);
    assert_eq!(
        total(&s, "unknown", "Unimplemented"),
        2.0,
        "methods our proto does not know count as unknown, never by their own name"
    );
    assert!(!text.contains("NotYetInTheCri") && !text.contains("YetAnotherNewMethod"));
    assert_eq!(
        value(
            &s,
            "criguard_request_duration_seconds_count{service=\"RuntimeService\",method=\"Version\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "criguard_request_duration_seconds_bucket{service=\"RuntimeService\",method=\"Version\",le=\"+Inf\"}"
        ),
        3.0
    );
    // Buckets run from 0.5 ms to 10 min, as documented.
    let bucket = |le: &str| {
        let series = format!(
            "criguard_request_duration_seconds_bucket{{service=\"RuntimeService\",method=\"Version\",le=\"{le}\"}}"
        );
        value(&s, &series)
    };
    assert!(bucket("0.0005") <= bucket("0.00125"));
    assert_eq!(bucket("600"), 3.0);
    assert_eq!(
        value(
            &s,
            "criguard_message_bytes_total{method=\"Version\",direction=\"request\"}"
        ),
        3.0 * 7.0
    );
    assert_eq!(
        value(
            &s,
            "criguard_message_bytes_total{method=\"Version\",direction=\"response\"}"
        ),
        3.0 * 7.0
    );
    assert_eq!(
        value(&s, "criguard_streams_active{method=\"GetContainerEvents\"}"),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "criguard_requests_in_flight{service=\"RuntimeService\",method=\"GetContainerEvents\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "criguard_requests_in_flight{service=\"RuntimeService\",method=\"Version\"}"
        ),
        0.0
    );
    let endpoint = format!("unix://{}", sockets.runtime().display());
    assert_eq!(
        value(
            &s,
            &format!("criguard_runtime_connects_total{{endpoint=\"{endpoint}\",result=\"ok\"}}")
        ),
        1.0
    );
    assert!(
        s.keys()
            .any(|k| k.starts_with("criguard_build_info{version="))
    );
    assert!(value(&s, "process_resident_memory_bytes") > 0.0);
    assert!(text.contains("# HELP criguard_requests_total"));
    assert!(text.contains("# TYPE criguard_request_duration_seconds histogram"));

    // The caller closes the stream: it ends as Canceled and is no longer active.
    drop(stream);
    let closed = eventually_scrape(
        &admin,
        "criguard_streams_active{method=\"GetContainerEvents\"}",
        0.0,
    )
    .await;
    assert!(closed);
    let (_, text) = admin_get(&admin, "GET", "/metrics").await;
    let s = samples(&text);
    assert_eq!(total(&s, "GetContainerEvents", "Canceled"), 1.0);
    feeds.lock().unwrap().clear();
}

fn total(s: &HashMap<String, f64>, method: &str, code: &str) -> f64 {
    let series = format!(
        "criguard_requests_total{{service=\"RuntimeService\",method=\"{method}\",code=\"{code}\"}}"
    );
    value(s, &series)
}

async fn eventually_scrape(admin: &Path, series: &str, want: f64) -> bool {
    for _ in 0..100 {
        let (_, text) = admin_get(admin, "GET", "/metrics").await;
        if samples(&text).get(series) == Some(&want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_runtime_as_it_goes_and_comes_back() {
    let sockets = Sockets::new();
    let admin = sockets.dir.path().join("admin.sock");
    let runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let _criguard = start(&sockets, &admin).await;

    let ready = |want: u16| {
        let admin = admin.clone();
        async move {
            for _ in 0..100 {
                let (status, body) = admin_get(&admin, "GET", "/readyz").await;
                if status == want {
                    return Some(body);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }
    };
    let body = ready(200).await.expect("ready while the runtime answers");
    assert!(body.starts_with("ready:"), "{body}");
    assert_eq!(
        admin_get(&admin, "GET", "/healthz").await,
        (200, "ok\n".to_string())
    );

    runtime.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_file(sockets.runtime());
    let body = ready(503)
        .await
        .expect("not ready once the runtime is gone");
    assert!(
        body.contains("not ready") && body.contains(&sockets.runtime().display().to_string()),
        "{body}"
    );
    let (_, text) = admin_get(&admin, "GET", "/metrics").await;
    let endpoint = format!("unix://{}", sockets.runtime().display());
    assert_eq!(
        value(
            &samples(&text),
            &format!("criguard_runtime_up{{endpoint=\"{endpoint}\"}}")
        ),
        0.0
    );

    let _runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    ready(200)
        .await
        .expect("ready again by itself once the runtime is back");
    let (_, text) = admin_get(&admin, "GET", "/metrics").await;
    assert_eq!(
        value(
            &samples(&text),
            &format!("criguard_runtime_up{{endpoint=\"{endpoint}\"}}")
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let sockets = Sockets::new();
    let admin = sockets.dir.path().join("admin.sock");
    let _criguard = start(&sockets, &admin).await;
    assert_eq!(admin_get(&admin, "GET", "/nope").await.0, 404);
    assert_eq!(admin_get(&admin, "POST", "/metrics").await.0, 405);
    assert_eq!(admin_get(&admin, "DELETE", "/readyz").await.0, 405);
    assert_eq!(admin_get(&admin, "HEAD", "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decisions_are_counted_per_policy_rule_and_decision() {
    use criguard::fake::samples;
    use prost::Message;
    let sockets = Sockets::new();
    let admin = sockets.dir.path().join("admin.sock");
    let policies = baseline_dir(&sockets);
    let _runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    let mut command = serve_command(&sockets);
    command
        .arg("--admin-address")
        .arg(&admin)
        .arg("--policies")
        .arg(&policies)
        .stderr(Stdio::null());
    let _criguard = Running(spawn_serving(command, &sockets, &admin).await);
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let create = "/runtime.v1.RuntimeService/CreateContainer";
    let compliant = samples::create_container_request();
    let mut privileged = compliant.clone();
    let security = privileged.config.as_mut().unwrap().linux.as_mut().unwrap();
    security.security_context.as_mut().unwrap().privileged = true;
    let none = HeaderMap::new();
    let mut codes = Vec::new();
    for request in [&compliant, &privileged, &compliant] {
        let answer = client
            .call(create, grpc_frame(&request.encode_to_vec()), &none)
            .await
            .unwrap();
        codes.push(answer.grpc_status());
    }
    assert_eq!(codes, [Some(0), Some(7), Some(0)]);

    let (_, text) = admin_get(&admin, "GET", "/metrics").await;
    let s = samples(&text);
    let decisions = |rule: &str, decision: &str, mode: &str| {
        value(
            &s,
            &format!(
                "criguard_policy_decisions_total{{policy=\"pss-baseline\",rule=\"{rule}\",decision=\"{decision}\",mode=\"{mode}\"}}"
            ),
        )
    };
    assert_eq!(decisions("", "allow", ""), 2.0, "{text}");
    assert_eq!(decisions("privileged", "deny", "enforce"), 1.0, "{text}");
    assert_eq!(
        value(&s, "criguard_policy_evaluation_duration_seconds_count"),
        3.0,
        "{text}"
    );
}
