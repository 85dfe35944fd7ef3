//! One audit event: what is known of a call when it ends, and its JSON line. The request and
//! answer are shown (proto JSON form) only here, on the writer's thread, with secrets
//! replaced by a marker before anything is written: written straight from their bytes
//! (`json.rs`), or, for the rare message that writer leaves alone, decoded by reflection.

use std::sync::Arc;
use std::time::SystemTime;

use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use serde::Serialize;

use super::json::{self, CREDENTIALS, REDACTED};
use super::rules::Level;
use crate::proxy::decision::Decision;
use crate::proxy::identity::Caller;
use crate::proxy::inspect::{PodRef, Subject};
use crate::proxy::rpc::{Rpc, message_type};

/// A decoded message of a call, with how to show it.
#[derive(Debug)]
pub struct Payload {
    /// A copy of the message's bytes (a slice would keep the HTTP/2 read buffer it came in
    /// alive while the event waits to be written).
    pub message: Vec<u8>,
    /// The whole message's size, when only its head was kept.
    pub cut_from: Option<usize>,
}

/// Everything an event says. Built on the proxy's thread, written as JSON on the writer's.
#[derive(Debug)]
pub struct Event {
    pub id: uuid::Uuid,
    pub time: SystemTime,
    pub level: Level,
    pub rpc: Rpc,
    pub caller: Option<Arc<Caller>>,
    pub subject: Subject,
    pub code: tonic::Code,
    pub message: Option<String>,
    pub latency_ms: f64,
    pub decision: Decision,
    pub request: Option<Payload>,
    pub response: Option<Payload>,
    pub redact_env_values: bool,
    /// Decoded messages longer than this (in JSON bytes) are cut, with a marker.
    pub max_payload_bytes: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    audit_id: Displayed<uuid::fmt::Hyphenated>,
    time: Displayed<humantime::Rfc3339Timestamp>,
    level: Level,
    service: &'a str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<CallerLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a PodRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_id: Option<&'a str>,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    latency_ms: f64,
    decision: &'a Decision,
    // `request` and `response` follow, written by `write_payload`.
}

/// Serialized through its `Display`, straight into the output.
struct Displayed<T>(T);

impl<T: std::fmt::Display> Serialize for Displayed<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[derive(Serialize)]
struct CallerLine<'a> {
    uid: u32,
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exe: Option<&'a str>,
}

#[derive(Serialize)]
struct ContainerLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Event {
    /// The buffers of its messages, once written.
    pub fn into_messages(self) -> impl Iterator<Item = Vec<u8>> {
        [self.request, self.response]
            .into_iter()
            .flatten()
            .map(|payload| payload.message)
    }

    /// The bytes of the messages it holds, counted against the queue's budget.
    pub fn payload_bytes(&self) -> usize {
        [&self.request, &self.response]
            .into_iter()
            .flatten()
            .map(|p| p.message.len())
            .sum()
    }

    /// The event as one line of JSON, newline included.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_json_line(&mut out);
        out
    }

    /// Appends the event as one line of JSON, newline included, to `out`.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        let subject = &self.subject;
        let service = self
            .rpc
            .path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(service, _)| service);
        let container = (subject.container_name.is_some() || subject.container_id.is_some())
            .then_some(ContainerLine {
                name: subject.container_name.as_deref(),
                id: subject.container_id.as_deref(),
            });
        let line = Line {
            audit_id: Displayed(self.id.hyphenated()),
            time: Displayed(humantime::format_rfc3339_micros(self.time)),
            level: self.level,
            service,
            method: self.rpc.method_name(),
            caller: self.caller.as_deref().map(|c| CallerLine {
                uid: c.uid,
                gid: c.gid,
                pid: c.pid,
                exe: c.exe.as_deref(),
            }),
            pod: subject.pod.as_ref(),
            container,
            image: subject.image.as_deref(),
            sandbox_id: subject.sandbox_id.as_deref(),
            code: crate::proxy::status::code_name(self.code),
            message: self.message.as_deref(),
            latency_ms: (self.latency_ms * 1000.0).round() / 1000.0,
            decision: &self.decision,
        };
        let start = out.len();
        if let Err(err) = serde_json::to_writer(&mut *out, &line) {
            out.truncate(start);
            let error =
                serde_json::json!({ "auditId": self.id.to_string(), "error": err.to_string() });
            out.extend_from_slice(error.to_string().as_bytes());
            out.push(b'\n');
            return;
        }
        // The messages go last, into the object just written: reopened at its closing brace.
        out.pop();
        for (name, payload, input) in [
            ("request", &self.request, true),
            ("response", &self.response, false),
        ] {
            if let Some(payload) = payload {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                self.write_payload(out, payload, input);
            }
        }
        out.extend_from_slice(b"}\n");
    }

    /// A message in proto JSON form with secrets replaced, cut to `max_payload_bytes`, as a
    /// JSON value appended to `out`.
    fn write_payload(&self, out: &mut Vec<u8>, payload: &Payload, input: bool) {
        let limit = self.max_payload_bytes;
        if let Some(size) = payload.cut_from {
            return write_value(out, &cut_marker(size, limit, None));
        }
        let start = out.len();
        let method = self.rpc.method;
        match json::write(out, method, input, &payload.message, self.redact_env_values) {
            Some(Ok(())) => {}
            None => {
                out.truncate(start);
                return write_value(
                    out,
                    &serde_json::json!({ "undecoded": format!("{} bytes of a method criguard's proto does not know", payload.message.len()) }),
                );
            }
            Some(Err(json::Irregular)) => {
                out.truncate(start);
                if let Err(value) = self.write_reflected(out, payload, input) {
                    out.truncate(start);
                    return write_value(out, &value);
                }
            }
        }
        let written = out.len() - start;
        if written > limit {
            let text = String::from_utf8_lossy(&out[start..]).into_owned();
            out.truncate(start);
            write_value(out, &cut_marker(written, limit, Some(&text)));
        }
    }

    /// The reference: the message decoded by reflection, redacted, and serialized. `Err`
    /// holds what to write instead when it cannot be decoded.
    fn write_reflected(
        &self,
        out: &mut Vec<u8>,
        payload: &Payload,
        input: bool,
    ) -> Result<(), serde_json::Value> {
        let undecoded = |reason: String| serde_json::json!({ "undecoded": format!("{} bytes that are not a valid message: {reason}", payload.message.len()) });
        let descriptor =
            message_type(&self.rpc, input).ok_or_else(|| undecoded("no message type".into()))?;
        let message = DynamicMessage::decode(descriptor, &payload.message[..])
            .map_err(|err| undecoded(err.to_string()))?;
        let json = reflected_json(message, self.redact_env_values)
            .map_err(|err| undecoded(err.to_string()))?;
        serde_json::to_writer(&mut *out, &json).map_err(|err| undecoded(err.to_string()))
    }
}

fn write_value(out: &mut Vec<u8>, value: &serde_json::Value) {
    serde_json::to_writer(out, value).expect("a JSON value serializes");
}

/// Stands in for a message larger than the limit: says so, and keeps the head of its JSON.
fn cut_marker(size: usize, limit: usize, text: Option<&str>) -> serde_json::Value {
    let head = text.map(|t| {
        let mut end = limit.min(t.len());
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        &t[..end]
    });
    serde_json::json!({
        "truncated": true,
        "size": size,
        "limit": limit,
        "head": head,
    })
}

/// The reference form of a decoded message: proto JSON with pull credentials and (if
/// `env_values`) environment variable values replaced by the marker, at any depth. An env
/// value is `bytes` since CRI 1.36: the marker stands as a JSON string in its place, as the
/// one-pass writer writes it, never as base64.
pub fn reflected_json(
    mut message: DynamicMessage,
    env_values: bool,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut hidden = Vec::new();
    redact(&mut message, env_values, &mut Vec::new(), &mut hidden);
    let mut json = serde_json::to_value(&message)?;
    for entry in hidden {
        if let Some(entry) = json.pointer_mut(&entry).and_then(|e| e.as_object_mut()) {
            entry.insert("value".into(), serde_json::Value::String(REDACTED.into()));
        }
    }
    Ok(json)
}

/// Replaces pull credentials in place, and collects the JSON pointers of the env values to
/// entries whose value to hide (`at` is the pointer of `message`, as segments).
fn redact(
    message: &mut DynamicMessage,
    env_values: bool,
    at: &mut Vec<String>,
    hidden: &mut Vec<String>,
) {
    let descriptor = message.descriptor();
    let type_name = descriptor.full_name();
    for (field, value) in message.fields_mut() {
        if type_name == "runtime.v1.AuthConfig" && CREDENTIALS.contains(&field.name()) {
            if let Value::String(text) = value
                && !text.is_empty()
            {
                *text = REDACTED.into();
            }
            continue;
        }
        let env = env_values && type_name == "runtime.v1.ContainerConfig" && field.name() == "envs";
        at.push(field.json_name().to_string());
        match value {
            Value::Message(inner) => redact(inner, env_values, at, hidden),
            Value::List(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    if let Value::Message(inner) = item {
                        at.push(index.to_string());
                        if env {
                            hidden.push(pointer(at));
                        }
                        redact(inner, env_values, at, hidden);
                        at.pop();
                    }
                }
            }
            Value::Map(entries) => {
                for (key, entry) in entries.iter_mut() {
                    if let Value::Message(inner) = entry {
                        at.push(map_key(key));
                        redact(inner, env_values, at, hidden);
                        at.pop();
                    }
                }
            }
            _ => {}
        }
        at.pop();
    }
}

/// A JSON pointer (RFC 6901) from its segments.
fn pointer(at: &[String]) -> String {
    let mut out = String::new();
    for segment in at {
        out.push('/');
        out.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// A map key as proto JSON writes it (an object's key).
fn map_key(key: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::*;
    use prost::Message;

    fn event(rpc: &str, request: Vec<u8>, redact_env_values: bool) -> serde_json::Value {
        let event = Event {
            id: uuid::Uuid::nil(),
            time: SystemTime::now(),
            level: Level::Request,
            rpc: Rpc::from_path(rpc),
            caller: None,
            subject: Subject::default(),
            code: tonic::Code::Ok,
            message: None,
            latency_ms: 1.5,
            decision: Decision::allowed(),
            request: Some(Payload {
                message: request,
                cut_from: None,
            }),
            response: None,
            redact_env_values,
            max_payload_bytes: 64 << 10,
        };
        serde_json::from_slice(&event.to_json_line()).unwrap()
    }

    #[test]
    fn credentials_never_appear_and_are_marked() {
        let pull = PullImageRequest {
            image: Some(ImageSpec {
                image: "registry.example/app:1".into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: "robot".into(),
                password: "hunter2-password".into(),
                auth: "cm9ib3Q6aHVudGVyMg==".into(),
                server_address: "registry.example".into(),
                identity_token: "id-token-secret".into(),
                registry_token: "registry-token-secret".into(),
            }),
            sandbox_config: None,
        };
        let line = event(
            "/runtime.v1.ImageService/PullImage",
            pull.encode_to_vec(),
            true,
        );
        let text = line.to_string();
        for secret in [
            "hunter2-password",
            "cm9ib3Q6aHVudGVyMg==",
            "id-token-secret",
            "registry-token-secret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let auth = &line["request"]["auth"];
        assert_eq!(auth["username"], "robot");
        assert_eq!(auth["password"], REDACTED);
        assert_eq!(auth["registryToken"], REDACTED);
        assert_eq!(line["request"]["image"]["image"], "registry.example/app:1");
    }

    #[test]
    fn env_values_are_redacted_by_default_and_shown_when_a_rule_says_so() {
        let mut create = crate::fake::samples::create_container_request();
        create.config.as_mut().unwrap().envs = vec![KeyValue {
            key: "DB_PASSWORD".into(),
            value: "s3cret-value".into(),
        }];
        let bytes = create.encode_to_vec();
        let path = "/runtime.v1.RuntimeService/CreateContainer";
        let line = event(path, bytes.clone(), true);
        assert!(!line.to_string().contains("s3cret-value"));
        assert_eq!(line["request"]["config"]["envs"][0]["key"], "DB_PASSWORD");
        assert_eq!(line["request"]["config"]["envs"][0]["value"], REDACTED);
        // An env value is `bytes` since CRI 1.36: shown as proto JSON shows bytes, base64.
        let line = event(path, bytes, false);
        assert_eq!(
            line["request"]["config"]["envs"][0]["value"],
            "czNjcmV0LXZhbHVl"
        );
    }

    #[test]
    fn a_v1alpha2_call_is_recorded_under_its_own_service_with_its_request_decoded() {
        let mut create = crate::fake::samples::create_container_request();
        create.config.as_mut().unwrap().envs = vec![KeyValue {
            key: "DB_PASSWORD".into(),
            value: "s3cret-value".into(),
        }];
        let path = "/runtime.v1alpha2.RuntimeService/CreateContainer";
        let line = event(path, create.encode_to_vec(), true);
        assert_eq!(line["service"], "runtime.v1alpha2.RuntimeService");
        assert_eq!(line["method"], "CreateContainer");
        assert_eq!(line["request"]["config"]["envs"][0]["value"], REDACTED);
    }

    #[test]
    fn the_redacted_fields_are_the_credentials_of_the_vendored_proto() {
        let pool = prost_reflect::DescriptorPool::decode(crate::cri::DESCRIPTORS).unwrap();
        let auth = pool.get_message_by_name("runtime.v1.AuthConfig").unwrap();
        let names: Vec<_> = auth.fields().map(|f| f.name().to_string()).collect();
        for name in CREDENTIALS {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        let config = pool
            .get_message_by_name("runtime.v1.ContainerConfig")
            .unwrap();
        assert!(config.get_field_by_name("envs").is_some());
    }

    #[test]
    fn large_and_undecodable_messages_are_marked_not_written() {
        let mut create = crate::fake::samples::create_container_request();
        create.config.as_mut().unwrap().command = vec!["x".repeat(100_000)];
        let line = event(
            "/runtime.v1.RuntimeService/CreateContainer",
            create.encode_to_vec(),
            true,
        );
        assert_eq!(line["request"]["truncated"], true);
        assert_eq!(line["request"]["limit"], 64 << 10);
        assert!(line["request"]["size"].as_u64().unwrap() > 100_000);
        let line = event(
            "/runtime.v1.RuntimeService/ExecSync",
            b"\xff\xff\xff".to_vec(),
            true,
        );
        assert!(
            line["request"]["undecoded"]
                .as_str()
                .unwrap()
                .contains("not a valid message")
        );
        let line = event(
            "/runtime.v1.RuntimeService/Made",
            b"\x08\x01".to_vec(),
            true,
        );
        assert!(
            line["request"]["undecoded"]
                .as_str()
                .unwrap()
                .contains("does not know")
        );
    }
}
