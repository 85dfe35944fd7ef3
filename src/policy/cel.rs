//! CEL rules: the context an expression sees, built once per call and only when a matching
//! policy has a CEL rule. Variables: `request` (the decoded request, proto field names),
//! `pod` (namespace, name, uid, labels, annotations), `container` (name, image, command, args,
//! security_context), `method`, `client` (uid, gid, pid, exe). An expression must be true for
//! the call to pass.

use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Value as Json, json};

use super::Call;
use super::file::CelExpr;
use crate::audit::event::message_type;
use crate::proxy::inspect::Subject;
use crate::proxy::rpc::Rpc;

/// The request in proto JSON form with proto field names and every field present; `null` when
/// the proto does not know the method or the bytes do not decode.
pub fn request_json(rpc: &Rpc, bytes: &[u8]) -> Json {
    let Some(descriptor) = message_type(rpc, true) else {
        return Json::Null;
    };
    let Ok(message) = DynamicMessage::decode(descriptor, bytes) else {
        return Json::Null;
    };
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Json::Null)
}

/// The variables of a call.
pub fn context(call: Call<'_>, request: &Json, subject: &Subject) -> cel::Context<'static> {
    let pod_config = ["config", "sandbox_config"]
        .iter()
        .map(|k| &request[*k])
        .find(|v| v.get("metadata").is_some() && v.get("port_mappings").is_some());
    let pod = match pod_config {
        Some(config) => json!({
            "namespace": config["metadata"]["namespace"],
            "name": config["metadata"]["name"],
            "uid": config["metadata"]["uid"],
            "labels": config.get("labels").cloned().unwrap_or(json!({})),
            "annotations": config.get("annotations").cloned().unwrap_or(json!({})),
        }),
        None => {
            let p = subject.pod.clone().unwrap_or_default();
            json!({"namespace": p.namespace, "name": p.name, "uid": p.uid, "labels": {}, "annotations": {}})
        }
    };
    let container = match request.get("config").filter(|c| c.get("command").is_some()) {
        Some(config) => json!({
            "name": config["metadata"]["name"],
            "image": config["image"]["image"],
            "command": config["command"],
            "args": config["args"],
            "security_context": config["linux"]["security_context"].as_object().cloned().unwrap_or_default(),
        }),
        None => json!({
            "name": subject.container_name.clone().unwrap_or_default(),
            "image": subject.image.clone().unwrap_or_default(),
            "command": [],
            "args": [],
            "security_context": {},
        }),
    };
    let client = match call.caller {
        Some(c) => {
            json!({"uid": c.uid, "gid": c.gid, "pid": c.pid.unwrap_or(0), "exe": c.exe.as_deref().unwrap_or("")})
        }
        None => json!({"uid": -1, "gid": -1, "pid": 0, "exe": ""}),
    };
    let mut context = cel::Context::default();
    for (name, value) in [
        ("request", request.clone()),
        ("pod", pod),
        ("container", container),
        ("client", client),
    ] {
        if let Ok(value) = cel::to_value(value) {
            context.add_variable_from_value(name, value);
        }
    }
    context.add_variable_from_value("method", call.rpc.method_name().to_string());
    context
}

/// Whether the expression holds; an error when it cannot be evaluated or is not a bool.
pub fn holds(expr: &CelExpr, context: &cel::Context<'_>) -> Result<bool, String> {
    match expr.program.execute(context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("`{}` gave {other:?}, not a bool", expr.source)),
        Err(err) => Err(format!("`{}`: {err}", expr.source)),
    }
}
