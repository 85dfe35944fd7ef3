//! CEL rules: the context an expression sees, built once per call and only when a matching
//! policy has a CEL rule. Variables: `request` (the decoded request, proto field names),
//! `pod` (namespace, name, uid, labels, annotations), `container` (name, image, command, args,
//! security_context), `method`, `client` (uid, gid, pid, exe). An expression must be true for
//! the call to pass.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Value;
use cel::objects::Key;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value as Json;

use super::Call;
use super::checks::Target;
use super::file::CelExpr;
use super::view::{ContainerSecurityView, text as view_text};
use crate::proxy::inspect::Subject;
use crate::proxy::rpc::Rpc;
use crate::proxy::rpc::message_type;

/// The request in proto JSON form with proto field names and every field present; `null` when
/// the proto does not know the method or the bytes do not decode.
pub fn request_json(rpc: &Rpc, bytes: &[u8]) -> Json {
    let Some(descriptor) = message_type(rpc, true) else {
        return Json::Null;
    };
    let Ok(message) = DynamicMessage::decode(descriptor, bytes) else {
        return Json::Null;
    };
    serialize(&message)
}

/// The parts of the variables that the set's expressions use: the others are not built (copying
/// the pod's labels or a container's security context into CEL values is most of a rule's cost).
/// Read from the expressions' text: a field named anywhere in an expression is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub request: bool,
    pub labels: bool,
    pub annotations: bool,
    pub command: bool,
    pub args: bool,
    pub security_context: bool,
}

impl Needs {
    pub fn of<'e>(expressions: impl IntoIterator<Item = &'e CelExpr>) -> Needs {
        let mut needs = Needs::default();
        for expr in expressions {
            let source = expr.source.as_str();
            needs.request |= expr.program.references().has_variable("request");
            needs.labels |= source.contains("labels");
            needs.annotations |= source.contains("annotations");
            needs.command |= source.contains("command");
            needs.args |= source.contains("args");
            needs.security_context |= source.contains("security_context");
        }
        needs
    }
}

/// The variables of a call. `pod` and `container` come from the decoded request (or, for a
/// call naming only ids, from what criguard knows of them); of these, only the parts `needs`
/// names are built, `request` above all (the whole request as a CEL value).
pub fn context<'r>(
    root: &'r cel::Context<'r>,
    call: Call<'_>,
    target: &Target<'_>,
    subject: &Subject,
    needs: Needs,
) -> cel::Context<'r> {
    let mut context = root.new_inner_scope();
    let text = |s: &[u8]| Value::String(Arc::new(view_text(s).into_owned()));
    let map = |m: &HashMap<String, String>| Value::from(m.clone());
    let record = |fields: Vec<(&str, Value)>| {
        Value::Map(cel::objects::Map {
            map: Arc::new(fields.into_iter().map(|(k, v)| (Key::from(k), v)).collect()),
        })
    };
    // Each (name, needed, value): the value is made only when needed.
    let some = |fields: Vec<(&'static str, bool, &dyn Fn() -> Value)>| {
        record(
            fields
                .into_iter()
                .filter(|(_, needed, _)| *needed)
                .map(|(name, _, value)| (name, value()))
                .collect(),
        )
    };
    let empty = HashMap::new();
    let labels = target.labels.map_or(&empty, |l| &l.labels);
    let annotations = target.labels.map_or(&empty, |l| &l.annotations);
    let (namespace, name, uid): (&[u8], &[u8], &[u8]) = match target.pod_metadata {
        Some(m) => (m.namespace, m.name, m.uid),
        None => subject.pod.as_ref().map_or((b"", b"", b""), |p| {
            (p.namespace.as_bytes(), p.name.as_bytes(), p.uid.as_bytes())
        }),
    };
    let pod = some(vec![
        ("namespace", true, &|| text(namespace)),
        ("name", true, &|| text(name)),
        ("uid", true, &|| text(uid)),
        ("labels", needs.labels, &|| map(labels)),
        ("annotations", needs.annotations, &|| map(annotations)),
    ]);
    let container = match target.container {
        Some(config) => some(vec![
            ("name", true, &|| {
                text(config.metadata.as_ref().map_or(b"", |m| m.name))
            }),
            ("image", true, &|| text(target.image.unwrap_or(b""))),
            ("command", needs.command, &|| strings(&config.command)),
            ("args", needs.args, &|| strings(&config.args)),
            ("security_context", needs.security_context, &|| {
                security_context(
                    config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref()),
                )
            }),
        ]),
        None => some(vec![
            ("name", true, &|| {
                text(subject.container_name.as_deref().unwrap_or("").as_bytes())
            }),
            ("image", true, &|| {
                text(
                    subject
                        .image
                        .as_deref()
                        .map(str::as_bytes)
                        .or(target.image)
                        .unwrap_or(b""),
                )
            }),
            ("command", needs.command, &|| strings(&[])),
            ("args", needs.args, &|| strings(&[])),
            ("security_context", needs.security_context, &|| {
                record(vec![])
            }),
        ]),
    };
    let client = match call.caller {
        Some(c) => record(vec![
            ("uid", Value::Int(c.uid.into())),
            ("gid", Value::Int(c.gid.into())),
            ("pid", Value::Int(c.pid.unwrap_or(0).into())),
            ("exe", text(c.exe.as_deref().unwrap_or("").as_bytes())),
        ]),
        None => record(vec![
            ("uid", Value::Int(-1)),
            ("gid", Value::Int(-1)),
            ("pid", Value::Int(0)),
            ("exe", text(b"")),
        ]),
    };
    context.add_variable_from_value("pod", pod);
    context.add_variable_from_value("container", container);
    context.add_variable_from_value("client", client);
    context.add_variable_from_value("method", call.rpc.method_name().to_string());
    if needs.request {
        let request = request_json(call.rpc, call.message.unwrap_or_default());
        context.add_variable_from_value("request", cel::to_value(request).unwrap_or(Value::Null));
    }
    context
}

/// A list of strings as a CEL value.
fn strings(fields: &[&[u8]]) -> Value {
    Value::List(Arc::new(
        fields
            .iter()
            .map(|f| Value::String(Arc::new(view_text(f).into_owned())))
            .collect(),
    ))
}

/// A container's security context with proto field names: the fields policies look at.
fn security_context(security: Option<&ContainerSecurityView>) -> Value {
    let default = ContainerSecurityView::default();
    let s = security.unwrap_or(&default);
    let text = |v: &[u8]| Value::String(Arc::new(view_text(v).into_owned()));
    let record = |fields: Vec<(&str, Value)>| {
        Value::Map(cel::objects::Map {
            map: Arc::new(fields.into_iter().map(|(k, v)| (Key::from(k), v)).collect()),
        })
    };
    let profile = |p: Option<&crate::cri::SecurityProfile>| match p {
        None => Value::Null,
        Some(p) => record(vec![
            (
                "profile_type",
                text(
                    crate::cri::security_profile::ProfileType::try_from(p.profile_type)
                        .map_or("", |t| t.as_str_name())
                        .as_bytes(),
                ),
            ),
            ("localhost_ref", text(p.localhost_ref.as_bytes())),
        ]),
    };
    let capabilities = s.capabilities.clone().unwrap_or_default();
    record(vec![
        ("privileged", Value::Bool(s.privileged)),
        (
            "run_as_user",
            s.run_as_user
                .as_ref()
                .map_or(Value::Null, |u| Value::Int(u.value)),
        ),
        ("run_as_username", text(s.run_as_username)),
        ("no_new_privs", Value::Bool(s.no_new_privs)),
        ("readonly_rootfs", Value::Bool(s.readonly_rootfs)),
        (
            "capabilities",
            record(vec![
                ("add_capabilities", strings(&capabilities.add_capabilities)),
                (
                    "drop_capabilities",
                    strings(&capabilities.drop_capabilities),
                ),
            ]),
        ),
        ("masked_paths", strings(&s.masked_paths)),
        ("readonly_paths", strings(&s.readonly_paths)),
        ("seccomp", profile(s.seccomp.as_ref())),
        ("apparmor", profile(s.apparmor.as_ref())),
    ])
}

fn serialize(message: &DynamicMessage) -> Json {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Json::Null)
}

/// Whether the expression holds; an error when it cannot be evaluated or is not a bool.
pub fn holds(expr: &CelExpr, context: &cel::Context<'_>) -> Result<bool, String> {
    match expr.program.execute(context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("`{}` gave {other:?}, not a bool", expr.source)),
        Err(err) => Err(format!("`{}`: {err}", expr.source)),
    }
}
