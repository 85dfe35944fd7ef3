//! OpenTelemetry spans (`tracing:`), driven by the real client stacks (grpc-go as the kubelet
//! dials, grpcio) with the `traceparent` they send, through criguard to a recording runtime, and
//! read back from an OTLP/gRPC receiver: the span's parent is the caller's, the runtime is
//! told criguard's span is its parent, everything else reaches it byte for byte, and a
//! collector that is down or silent costs calls nothing.

mod support;

use std::time::{Duration, Instant};

use criguard::config::Overrides;
use criguard::cri::*;
use http::HeaderMap;
use prost::Message;
use serde_json::json;
use support::clients::{Client, Stack};
use support::otlp::Collector;
use support::*;

const VERSION: &str = "/runtime.v1.RuntimeService/Version";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE}-{CALLER_SPAN}-{flags}")
}

fn version_answer() -> Vec<u8> {
    VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "recording".into(),
        runtime_version: "1".into(),
        runtime_api_version: "v1".into(),
    }
    .encode_to_vec()
}

async fn start(sockets: &Sockets, tracing: &str) -> (RecordingRuntime, Criguard) {
    let answer = version_answer();
    let runtime = RecordingRuntime::start(&sockets.runtime(), move |_| Answer::ok(&answer)).await;
    let config = format!("tracing:\n{tracing}");
    let criguard = Criguard::start_with_config(sockets, Some(&config), Overrides::default()).await;
    (runtime, criguard)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
#[ignore = "needs the real client stacks (tests/clients/install.sh)"]
async fn a_sampled_call_gets_criguards_span_beneath_the_callers_and_above_the_runtimes() {
    for stack in [Stack::GoKubelet, Stack::GrpcioPypi] {
        let sockets = Sockets::new();
        let collector = Collector::start().await;
        let endpoint = format!("  endpoint: {}\n", collector.endpoint());
        let (runtime, criguard) = start(&sockets, &endpoint).await;
        let mut client = Client::spawn(stack, &criguard.socket);
        let metadata = json!({
            "traceparent": traceparent("01"),
            "tracestate": "vendor=opaque,other=1",
            "baggage": "k8s.pod=web-0",
        });
        let reply = client
            .call_with(
                VERSION,
                &VersionRequest::default(),
                Duration::from_secs(10),
                metadata,
            )
            .await;
        assert_eq!(reply.code, 0, "{stack:?}: {}", reply.message);

        let spans = collector
            .trace(TRACE, Duration::from_secs(10), |s| !s.is_empty())
            .await;
        assert_eq!(spans.len(), 1, "{stack:?}: {spans:?}");
        let span = &spans[0];
        assert_eq!(span.service, "criguard");
        assert_eq!(span.name, "runtime.v1.RuntimeService/Version");
        assert_eq!(span.parent_span_id, CALLER_SPAN, "{stack:?}");
        assert_eq!(span.attribute("rpc.system"), Some("grpc"));
        assert_eq!(span.attribute("rpc.method"), Some("Version"));
        assert_eq!(span.attribute("rpc.grpc.status_code"), Some("0"));
        assert_eq!(span.attribute("criguard.listener.role"), Some("full"));
        assert_eq!(span.attribute("criguard.decision"), Some("allowed"));
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        assert_eq!(
            span.attribute("criguard.caller.uid"),
            Some(&*uid.to_string())
        );
        assert!(span.attribute("criguard.caller.exe").is_some());
        assert_eq!(
            span.attribute("criguard.response.bytes"),
            Some(&*(version_answer().len() + 5).to_string())
        );

        // The runtime's parent is criguard's span; the rest of the trace context as sent.
        let reached = runtime.requests();
        assert_eq!(reached.len(), 1);
        let headers = &reached[0].headers;
        assert_eq!(
            header(headers, "traceparent"),
            [format!("00-{TRACE}-{}-01", span.span_id)]
        );
        assert_eq!(header(headers, "tracestate"), ["vendor=opaque,other=1"]);
        assert_eq!(header(headers, "baggage"), ["k8s.pod=web-0"]);
        criguard.stop().await;
    }
}

#[tokio::test]
async fn malformed_repeated_or_unsampled_trace_contexts_pass_untouched_and_start_no_span() {
    let sockets = Sockets::new();
    let collector = Collector::start().await;
    let (runtime, criguard) =
        start(&sockets, &format!("  endpoint: {}\n", collector.endpoint())).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let untouched: Vec<Vec<&str>> = vec![
        vec![],
        vec!["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"],
        vec!["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"],
        vec!["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"],
        vec!["ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        vec!["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"],
        vec!["not a trace context at all"],
        vec![
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ],
    ];
    for values in &untouched {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("traceparent", value.parse().unwrap());
        }
        let answer = client
            .call(VERSION, grpc_frame(&[]), &headers)
            .await
            .unwrap();
        assert_eq!(answer.grpc_status(), Some(0));
    }
    // A sampled call last: once its span is in, any span of the calls before would be too.
    // Its flags: sampled, random trace id (W3C level 2) and one W3C leaves undefined.
    let mut headers = HeaderMap::new();
    let last = format!("00-{other_trace}-b7ad6b7169203331-0b");
    headers.insert("traceparent", last.parse().unwrap());
    client
        .call(VERSION, grpc_frame(&[]), &headers)
        .await
        .unwrap();
    let spans = collector
        .trace(other_trace, Duration::from_secs(10), |s| !s.is_empty())
        .await;
    assert_eq!(spans.len(), 1);
    assert_eq!(collector.spans().len(), 1, "{:?}", collector.spans());

    let reached = runtime.requests();
    assert_eq!(reached.len(), untouched.len() + 1);
    for (values, request) in untouched.iter().zip(&reached) {
        assert_eq!(&header(&request.headers, "traceparent"), values);
    }
    // Sampled and random kept, the undefined flag zero, as W3C asks of whoever sends it on.
    assert_eq!(
        header(&reached[untouched.len()].headers, "traceparent"),
        [format!("00-{other_trace}-{}-03", spans[0].span_id)]
    );
    criguard.stop().await;
}

#[tokio::test]
#[ignore = "needs the real client stacks (tests/clients/install.sh)"]
async fn calls_without_a_trace_context_start_a_trace_at_the_configured_rate_and_shutdown_sends_the_last()
 {
    let sockets = Sockets::new();
    let collector = Collector::start().await;
    let tracing = format!(
        "  endpoint: {}\n  samplingRatePerMillion: 1000000\n  serviceName: criguard-node-1\n  resourceAttributes: {{k8s.node.name: node-1}}\n",
        collector.endpoint()
    );
    let (runtime, criguard) = start(&sockets, &tracing).await;
    let mut client = Client::spawn(Stack::GoKubeletLegacy, &criguard.socket);
    let reply = client.call(VERSION, &VersionRequest::default()).await;
    assert_eq!(reply.code, 0, "{}", reply.message);
    let sent = header(&runtime.requests()[0].headers, "traceparent")
        .first()
        .map(|v| v.to_string())
        .expect("criguard starts the trace it sends on");
    let parts: Vec<&str> = sent.split('-').collect();
    // Stopped at once: criguard sends the last spans on its way out.
    criguard.stop().await;
    let spans = collector
        .trace(parts[1], Duration::from_secs(1), |s| !s.is_empty())
        .await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_id, parts[2]);
    assert_eq!(spans[0].parent_span_id, "", "a root span");
    assert_eq!(spans[0].service, "criguard-node-1");
}

/// The time a rate limit (`action: wait`) held a call shows in its span, and a call it
/// rejects shows the limit.
#[tokio::test]
async fn rate_limit_waits_and_rejections_show_in_the_span() {
    let sockets = Sockets::new();
    let collector = Collector::start().await;
    let tracing = format!(
        "  endpoint: {}\nlimits:\n  - {{name: versions, methods: [Version], rate: 2, burst: 1, action: wait, maxWait: 1s}}\n  - {{name: lists, methods: [ListContainers], rate: 0.1, burst: 1}}\n",
        collector.endpoint()
    );
    let (_runtime, criguard) = start(&sockets, &tracing).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let traced = |n: u8| {
        let mut headers = HeaderMap::new();
        let value = format!("00-{n:032x}-00f067aa0ba902b7-01");
        headers.insert("traceparent", value.parse().unwrap());
        headers
    };
    for (n, path) in [
        (1, VERSION),
        (2, VERSION),
        (3, "/runtime.v1.RuntimeService/ListContainers"),
        (4, "/runtime.v1.RuntimeService/ListContainers"),
    ] {
        client
            .call(path, grpc_frame(&[]), &traced(n))
            .await
            .unwrap();
    }
    let span = |n: u8| {
        let trace = format!("{n:032x}");
        let collector = &collector;
        async move {
            collector
                .trace(&trace, Duration::from_secs(10), |s| !s.is_empty())
                .await
                .remove(0)
        }
    };
    assert_eq!(span(1).await.attribute("criguard.ratelimit.wait_ms"), None);
    let waited: f64 = span(2)
        .await
        .attribute("criguard.ratelimit.wait_ms")
        .expect("the second Version waited")
        .parse()
        .unwrap();
    assert!((300.0..=1000.0).contains(&waited), "{waited} ms");
    let rejected = span(4).await;
    assert_eq!(rejected.attribute("criguard.decision"), Some("throttled"));
    assert_eq!(
        rejected.attribute("criguard.decision.by"),
        Some("limit lists")
    );
    assert_eq!(rejected.attribute("rpc.grpc.status_code"), Some("8"));
    criguard.stop().await;
}

/// What criguard decided shows in the span: a policy's denial (with policy and rule), the
/// audit level, the pod.
#[tokio::test]
#[ignore = "needs the real client stacks (tests/clients/install.sh)"]
async fn a_denied_call_shows_the_policy_rule_audit_level_and_pod_in_its_span() {
    let sockets = Sockets::new();
    let collector = Collector::start().await;
    let policies = baseline_dir(&sockets);
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    let config = format!(
        "policies: {}\naudit:\n  path: {}\ntracing:\n  endpoint: {}\n",
        policies.display(),
        sockets.dir.path().join("audit.log").display(),
        collector.endpoint()
    );
    let criguard = Criguard::start_with_config(&sockets, Some(&config), Overrides::default()).await;
    let mut client = Client::spawn(Stack::GoKubelet, &criguard.socket);
    let mut request = criguard::fake::samples::create_container_request();
    request
        .config
        .as_mut()
        .unwrap()
        .linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .privileged = true;
    let reply = client
        .call_with(
            "/runtime.v1.RuntimeService/CreateContainer",
            &request,
            Duration::from_secs(10),
            json!({"traceparent": traceparent("01")}),
        )
        .await;
    assert_eq!(reply.code, tonic::Code::PermissionDenied as i64);
    let spans = collector
        .trace(TRACE, Duration::from_secs(10), |s| !s.is_empty())
        .await;
    let span = &spans[0];
    assert_eq!(span.attribute("criguard.decision"), Some("denied"));
    assert_eq!(
        span.attribute("criguard.decision.by"),
        Some("policy pss-baseline (enforce)")
    );
    assert!(
        span.attribute("criguard.decision.reason")
            .unwrap()
            .contains("rule \"privileged\""),
        "{span:?}"
    );
    assert_eq!(span.attribute("criguard.audit.level"), Some("Request"));
    let pod = criguard::fake::samples::pod_config().metadata.unwrap();
    assert_eq!(span.attribute("k8s.namespace.name"), Some(&*pod.namespace));
    assert_eq!(span.attribute("k8s.pod.name"), Some(&*pod.name));
    assert_eq!(span.attribute("k8s.container.name"), Some("app"));
    assert_eq!(span.attribute("rpc.grpc.status_code"), Some("7"));
    assert!(
        !runtime
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/CreateContainer")),
        "denied calls never reach the runtime"
    );
    criguard.stop().await;
}

/// The collector is down (nothing listens) or silent (accepts, never answers): every call
/// passes as fast as without tracing, and the lost spans are counted and logged.
#[tokio::test]
#[ignore = "needs the real client stacks (tests/clients/install.sh)"]
async fn a_collector_down_or_silent_costs_calls_nothing_and_drops_are_counted() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", refused.local_addr().unwrap());
    drop(refused);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    for endpoint in [down, silent_endpoint] {
        let sockets = Sockets::new();
        let answer = version_answer();
        let _runtime =
            RecordingRuntime::start(&sockets.runtime(), move |_| Answer::ok(&answer)).await;
        let admin = sockets.dir.path().join("admin.sock");
        let config = sockets.dir.path().join("criguard.yaml");
        std::fs::write(
            &config,
            format!(
                "tracing:\n  endpoint: {endpoint}\n  queueSize: 16\n  exportTimeout: 1s\n  samplingRatePerMillion: 1000000\n"
            ),
        )
        .unwrap();
        let log = sockets.dir.path().join("criguard.log");
        let mut command = serve_command(&sockets);
        command
            .arg("--config")
            .arg(&config)
            .arg("--admin-address")
            .arg(&admin)
            .stderr(std::fs::File::create(&log).unwrap());
        let _criguard = Running(spawn_serving(command, &sockets, &admin).await);

        let mut client = Client::spawn(Stack::GoKubelet, &sockets.criguard());
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        for _ in 0..300 {
            let call = Instant::now();
            let reply = client.call(VERSION, &VersionRequest::default()).await;
            assert_eq!(reply.code, 0, "{}", reply.message);
            slowest = slowest.max(call.elapsed());
        }
        assert!(
            slowest < Duration::from_millis(500),
            "{endpoint}: a call took {slowest:?}"
        );
        let dropped = |text: &str| {
            let samples = samples(text);
            value(
                &samples,
                r#"criguard_trace_spans_dropped_total{reason="queue_full"}"#,
            ) + value(
                &samples,
                r#"criguard_trace_spans_dropped_total{reason="export_failed"}"#,
            )
        };
        let mut counted = 0.0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (_, text) = admin_get(&admin, "GET", "/metrics").await;
            counted = dropped(&text);
            if counted >= 300.0 - 16.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            counted >= 300.0 - 16.0,
            "{endpoint}: {counted} of 300 spans counted as dropped after {:?}",
            start.elapsed()
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("spans dropped; calls are not affected"),
            "{endpoint}: {logged}"
        );
    }
}
