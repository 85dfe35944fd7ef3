//! A request or answer in proto JSON form, written straight from the caller's bytes: no decoded
//! message, no reflection at run time, no allocation per field. The
//! schema (JSON names, kinds, enum names, what to redact) is read once from the vendored
//! proto's descriptors.
//!
//! It writes what `prost-reflect` writes for the same bytes (the reference, kept in `event.rs`)
//! for every message it accepts; anything it does not read in one pass — a singular field sent
//! twice (last-wins, or merged), a repeated map key, a field of the wrong wire type, invalid
//! UTF-8, floating point, groups inside a known field — is `Irregular`, and the event falls
//! back to the reference. The kubelet's and crictl's requests never do any of that. Agreement
//! is tested on the recorded kubelet requests and thousands of mutations of them.

use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind as ReflectKind, MessageDescriptor};

use crate::proxy::rpc::Method;
use crate::proxy::wire::{Fields, Value};

/// What replaces a secret in the audit trail.
pub const REDACTED: &str = "<redacted>";

/// The fields of `runtime.v1.AuthConfig` that hold credentials (`debug_redact` in newer CRI).
pub const CREDENTIALS: [&str; 4] = ["password", "auth", "identity_token", "registry_token"];

/// The message is not one the one-pass writer reads exactly as the reference decoder would.
#[derive(Debug, PartialEq, Eq)]
pub struct Irregular;

/// Nested messages deeper than this are left to the reference (prost's recursion limit).
const MAX_DEPTH: usize = 100;

/// Writes `message`, the request (`input`) or answer of `method`, as proto JSON to `out`;
/// `None` when the proto does not know the method. On `Err`, `out` may hold a partial value:
/// the caller truncates it.
pub fn write(
    out: &mut Vec<u8>,
    method: Method,
    input: bool,
    message: &[u8],
    redact_env_values: bool,
) -> Option<Result<(), Irregular>> {
    let schema = Schema::get()?;
    let (request, answer) = (*schema.methods.get(method as usize)?)?;
    let root = if input { request } else { answer };
    let mut writer = Writer {
        schema,
        out,
        redact_env_values,
        pending: Vec::new(),
        keys: Vec::new(),
    };
    Some(writer.message(root, message, None, 0))
}

struct Schema {
    messages: Vec<MessageInfo>,
    enums: Vec<EnumInfo>,
    /// Request and answer message of each `Method`, by its index.
    methods: Vec<Option<(usize, usize)>>,
    /// [`REDACTED`] as a JSON string.
    redacted: Box<str>,
}

struct MessageInfo {
    /// Sorted by number.
    fields: Vec<FieldInfo>,
    /// Index in `fields` + 1 by field number, 0 for none: CRI's numbers are small.
    by_number: Vec<u16>,
}

impl MessageInfo {
    fn new(mut fields: Vec<FieldInfo>) -> MessageInfo {
        fields.sort_by_key(|f| f.number);
        let highest = fields.last().map_or(0, |f| f.number as usize);
        let mut by_number = Vec::new();
        if highest < 1024 {
            by_number.resize(highest + 1, 0);
            for (at, field) in fields.iter().enumerate() {
                by_number[field.number as usize] = at as u16 + 1;
            }
        }
        MessageInfo { fields, by_number }
    }

    /// Where field `number` is in `fields`.
    #[inline]
    fn position(&self, number: u32) -> Option<usize> {
        match self.by_number.get(number as usize) {
            Some(&at) => (at as usize).checked_sub(1),
            None if self.by_number.is_empty() && !self.fields.is_empty() => {
                self.fields.binary_search_by_key(&number, |f| f.number).ok()
            }
            None => None,
        }
    }
}

struct FieldInfo {
    number: u32,
    /// `"jsonName":`, ready to write.
    key: Box<str>,
    kind: Kind,
    shape: Shape,
    redact: Redact,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int32,
    Sint32,
    Uint32,
    Int64,
    Sint64,
    Uint64,
    Fixed32,
    Sfixed32,
    Fixed64,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum(usize),
    Message(usize),
    /// float and double: CRI has none; left to the reference.
    Float,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Single,
    List,
    /// A map field: its entries are messages of this index (key 1, value 2).
    Map(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redact {
    No,
    /// A credential: shown as the marker when set.
    Credential,
    /// A list of key/value messages whose value (this field number of the element, under
    /// this message's key) is replaced by the marker when env values are redacted.
    ValuesOf(u32),
}

struct EnumInfo {
    /// Number and `"NAME"`, ready to write.
    values: Vec<(i32, Box<str>)>,
}

impl Schema {
    fn get() -> Option<&'static Schema> {
        static SCHEMA: OnceLock<Option<Schema>> = OnceLock::new();
        SCHEMA
            .get_or_init(|| {
                let pool = DescriptorPool::decode(crate::cri::DESCRIPTORS).ok()?;
                Some(Schema::build(&pool))
            })
            .as_ref()
    }

    fn build(pool: &DescriptorPool) -> Schema {
        let messages: Vec<MessageDescriptor> = pool.all_messages().collect();
        let enums: Vec<_> = pool.all_enums().collect();
        let message_index = |d: &MessageDescriptor| {
            messages
                .iter()
                .position(|m| m.full_name() == d.full_name())
                .expect("every message of the pool is listed")
        };
        let kind = |field: &FieldDescriptor| match field.kind() {
            ReflectKind::Int32 => Kind::Int32,
            ReflectKind::Sint32 => Kind::Sint32,
            ReflectKind::Uint32 => Kind::Uint32,
            ReflectKind::Int64 => Kind::Int64,
            ReflectKind::Sint64 => Kind::Sint64,
            ReflectKind::Uint64 => Kind::Uint64,
            ReflectKind::Fixed32 => Kind::Fixed32,
            ReflectKind::Sfixed32 => Kind::Sfixed32,
            ReflectKind::Fixed64 => Kind::Fixed64,
            ReflectKind::Sfixed64 => Kind::Sfixed64,
            ReflectKind::Bool => Kind::Bool,
            ReflectKind::String => Kind::String,
            ReflectKind::Bytes => Kind::Bytes,
            ReflectKind::Float | ReflectKind::Double => Kind::Float,
            ReflectKind::Enum(e) => Kind::Enum(
                enums
                    .iter()
                    .position(|x| x.full_name() == e.full_name())
                    .expect("every enum of the pool is listed"),
            ),
            ReflectKind::Message(m) => Kind::Message(message_index(&m)),
        };
        let infos = messages
            .iter()
            .map(|message| {
                let fields: Vec<FieldInfo> = message
                    .fields()
                    .map(|field| {
                        let shape = match field.kind() {
                            ReflectKind::Message(entry) if field.is_map() => {
                                Shape::Map(message_index(&entry))
                            }
                            _ if field.is_list() => Shape::List,
                            _ => Shape::Single,
                        };
                        FieldInfo {
                            number: field.number(),
                            key: format!("{}:", json_string(field.json_name())).into(),
                            kind: kind(&field),
                            shape,
                            redact: redaction(message, &field),
                        }
                    })
                    .collect();
                MessageInfo::new(fields)
            })
            .collect();
        let enums = enums
            .iter()
            .map(|e| EnumInfo {
                values: e
                    .values()
                    .map(|v| (v.number(), json_string(v.name()).into()))
                    .collect(),
            })
            .collect();
        let methods = Method::ALL
            .iter()
            .map(|&method| {
                let service = pool.get_service_by_name(method.service().proto_name()?)?;
                let found = service.methods().find(|m| m.name() == method.as_str())?;
                Some((
                    message_index(&found.input()),
                    message_index(&found.output()),
                ))
            })
            .collect();
        Schema {
            messages: infos,
            enums,
            methods,
            redacted: json_string(REDACTED).into(),
        }
    }
}

/// What the trail hides of `field` of `message`: the credentials of `AuthConfig`, the values
/// of `ContainerConfig.envs`.
fn redaction(message: &MessageDescriptor, field: &FieldDescriptor) -> Redact {
    match message.full_name() {
        "runtime.v1.AuthConfig" if CREDENTIALS.contains(&field.name()) => Redact::Credential,
        "runtime.v1.ContainerConfig" if field.name() == "envs" => match field.kind() {
            ReflectKind::Message(element) => element
                .get_field_by_name("value")
                .map_or(Redact::No, |value| Redact::ValuesOf(value.number())),
            _ => Redact::No,
        },
        _ => Redact::No,
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

struct Writer<'s, 'o, 'm> {
    schema: &'s Schema,
    out: &'o mut Vec<u8>,
    redact_env_values: bool,
    /// The fields of the messages being written, innermost last: (index in the message's
    /// fields, value). Shared by every level, so that a whole event allocates it once.
    pending: Vec<(usize, Value<'m>)>,
    /// The keys of the maps being written, innermost last (a key sent twice is irregular).
    keys: Vec<&'m [u8]>,
}

/// A field being written in one pass: where it started and what it holds so far.
struct Open {
    /// Its index in the message's fields.
    at: usize,
    /// The output's length before it (its comma and key).
    mark: usize,
    /// Elements written (a list), or whether the value was shown (a singular field: 0 or 1).
    count: usize,
    /// Where its keys start in `Writer::keys` (a map).
    keys: usize,
}

/// A value written as the redaction marker is not written, but read as the reference reads
/// it: an env value that is not UTF-8 leaves the message to the reference.
fn hidden_value(field: &FieldInfo, value: &Value<'_>) -> Result<(), Irregular> {
    match (field.kind, value) {
        (Kind::String, Value::Bytes(text)) => {
            std::str::from_utf8(text).map_err(|_| Irregular)?;
            Ok(())
        }
        // An env value since CRI 1.36: any bytes.
        (Kind::Bytes, Value::Bytes(_)) => Ok(()),
        _ => Err(Irregular),
    }
}

impl<'m> Writer<'_, '_, 'm> {
    /// Writes message `index` from `bytes` as a JSON object; `hidden` is a field written as
    /// the redaction marker whatever its value (an env value).
    fn message(
        &mut self,
        index: usize,
        bytes: &'m [u8],
        hidden: Option<u32>,
        depth: usize,
    ) -> Result<(), Irregular> {
        if depth > MAX_DEPTH {
            return Err(Irregular);
        }
        let (start, keys) = (self.out.len(), self.keys.len());
        if self.fields_in_order(index, bytes, hidden, depth)? {
            return Ok(());
        }
        // Nothing of the abandoned pass stays: its output, nor the keys of a map it had open
        // (an enclosing map would take them for keys of its own).
        self.out.truncate(start);
        self.keys.truncate(keys);
        self.fields_sorted(index, bytes, hidden, depth)
    }

    /// The message's fields written as they come, in one pass: encoders send fields in number
    /// order (the reference's order), each field's values together. `false` when a field comes
    /// after a higher-numbered one: what was written is then not valid, and the caller sorts.
    fn fields_in_order(
        &mut self,
        index: usize,
        bytes: &'m [u8],
        hidden: Option<u32>,
        depth: usize,
    ) -> Result<bool, Irregular> {
        let schema = self.schema;
        let info = &schema.messages[index];
        self.out.push(b'{');
        let mut first = true;
        let mut open: Option<Open> = None;
        for field in Fields::new(bytes) {
            let (number, value) = field.map_err(|_| Irregular)?;
            let Some(at) = info.position(number) else {
                continue;
            };
            if hidden == Some(number) {
                hidden_value(&info.fields[at], &value)?;
                continue;
            }
            let field = &info.fields[at];
            let current = match open.take() {
                Some(current) if current.at == at => current,
                Some(current) if current.at > at => return Ok(false),
                before => {
                    if let Some(before) = before {
                        first &= !self.close(&info.fields[before.at], before);
                    }
                    self.open(field, at, first)
                }
            };
            let current = open.insert(current);
            match field.shape {
                Shape::Single if current.count > 0 => return Err(Irregular),
                Shape::Single => current.count = usize::from(self.single(field, value, depth)?),
                Shape::List => self.element(field, value, &mut current.count, depth)?,
                Shape::Map(entry) => self.entry(entry, value, current.keys, depth)?,
            }
        }
        if let Some(last) = open {
            first &= !self.close(&info.fields[last.at], last);
        }
        self.hidden_marker(info, hidden, first);
        Ok(true)
    }

    /// Starts writing `field` (at `at` in its message): comma, key, bracket.
    fn open(&mut self, field: &FieldInfo, at: usize, first: bool) -> Open {
        let mark = self.out.len();
        if !first {
            self.out.push(b',');
        }
        self.out.extend_from_slice(field.key.as_bytes());
        match field.shape {
            Shape::Single => {}
            Shape::List => self.out.push(b'['),
            Shape::Map(_) => self.out.push(b'{'),
        }
        Open {
            at,
            mark,
            count: 0,
            keys: self.keys.len(),
        }
    }

    /// Ends writing a field; `false` (and nothing of it kept) when it showed nothing.
    fn close(&mut self, field: &FieldInfo, open: Open) -> bool {
        let shown = match field.shape {
            Shape::Single => open.count > 0,
            Shape::List => {
                self.out.push(b']');
                open.count > 0
            }
            Shape::Map(_) => {
                self.out.push(b'}');
                let shown = self.keys.len() > open.keys;
                self.keys.truncate(open.keys);
                shown
            }
        };
        if !shown {
            self.out.truncate(open.mark);
        }
        shown
    }

    /// The redaction marker in place of field `hidden`, then the message's closing brace.
    fn hidden_marker(&mut self, info: &MessageInfo, hidden: Option<u32>, first: bool) {
        if let Some(field) = hidden
            .and_then(|n| info.position(n))
            .map(|at| &info.fields[at])
        {
            if !first {
                self.out.push(b',');
            }
            self.out.extend_from_slice(field.key.as_bytes());
            self.out.extend_from_slice(self.schema.redacted.as_bytes());
        }
        self.out.push(b'}');
    }

    /// The message's fields gathered and sorted by number first (each field's values kept in
    /// wire order), for a message whose fields do not come in order.
    fn fields_sorted(
        &mut self,
        index: usize,
        bytes: &'m [u8],
        hidden: Option<u32>,
        depth: usize,
    ) -> Result<(), Irregular> {
        let schema = self.schema;
        let info = &schema.messages[index];
        let base = self.pending.len();
        for field in Fields::new(bytes) {
            let (number, value) = field.map_err(|_| Irregular)?;
            if let Some(at) = info.position(number) {
                if hidden == Some(number) {
                    hidden_value(&info.fields[at], &value)?;
                } else {
                    self.pending.push((at, value));
                }
            }
        }
        // Fields in number order (the reference's), each field's values in wire order.
        self.pending[base..].sort_by_key(|p| p.0);
        self.out.push(b'{');
        let mut first = true;
        let mut at = base;
        while at < self.pending.len() {
            let field = &info.fields[self.pending[at].0];
            let end = at
                + self.pending[at..]
                    .iter()
                    .take_while(|p| p.0 == self.pending[at].0)
                    .count();
            let mut open = self.open(field, self.pending[at].0, first);
            match field.shape {
                Shape::Single if end - at > 1 => return Err(Irregular),
                Shape::Single => {
                    open.count = usize::from(self.single(field, self.pending[at].1, depth)?)
                }
                Shape::List => {
                    for value in at..end {
                        let value = self.pending[value].1;
                        self.element(field, value, &mut open.count, depth)?;
                    }
                }
                Shape::Map(entry) => {
                    for value in at..end {
                        let value = self.pending[value].1;
                        self.entry(entry, value, open.keys, depth)?;
                    }
                }
            }
            first &= !self.close(field, open);
            at = end;
        }
        self.pending.truncate(base);
        self.hidden_marker(info, hidden, first);
        Ok(())
    }

    /// A singular field; `false` when it holds its default and is not shown.
    #[inline(always)]
    fn single(
        &mut self,
        field: &FieldInfo,
        value: Value<'m>,
        depth: usize,
    ) -> Result<bool, Irregular> {
        if field.redact == Redact::Credential {
            let Value::Bytes(text) = value else {
                return Err(Irregular);
            };
            std::str::from_utf8(text).map_err(|_| Irregular)?;
            if text.is_empty() {
                return Ok(false);
            }
            self.out.extend_from_slice(self.schema.redacted.as_bytes());
            return Ok(true);
        }
        self.value(field.kind, value, true, depth)
    }

    /// One value of a repeated field (a packed value holds several); `count` counts what the
    /// list holds so far.
    #[inline(always)]
    fn element(
        &mut self,
        field: &FieldInfo,
        value: Value<'m>,
        count: &mut usize,
        depth: usize,
    ) -> Result<(), Irregular> {
        match (field.kind, value) {
            (Kind::Message(index), Value::Bytes(bytes)) => {
                let hidden = match field.redact {
                    Redact::ValuesOf(number) if self.redact_env_values => Some(number),
                    _ => None,
                };
                if *count > 0 {
                    self.out.push(b',');
                }
                self.message(index, bytes, hidden, depth + 1)?;
                *count += 1;
            }
            (kind, Value::Bytes(packed)) if packable(kind) => {
                for element in Packed::new(kind, packed) {
                    if *count > 0 {
                        self.out.push(b',');
                    }
                    self.value(kind, element?, false, depth)?;
                    *count += 1;
                }
            }
            (kind, value) => {
                if *count > 0 {
                    self.out.push(b',');
                }
                self.value(kind, value, false, depth)?;
                *count += 1;
            }
        }
        Ok(())
    }

    /// One entry of a map field (message `entry`: key 1, value 2), as `"key":value`; the map's
    /// keys so far are `self.keys[keys..]`. A key sent twice is `Irregular` (the last wins).
    fn entry(
        &mut self,
        entry: usize,
        value: Value<'m>,
        keys: usize,
        depth: usize,
    ) -> Result<(), Irregular> {
        let schema = self.schema;
        let info = &schema.messages[entry];
        let (Some(key_field), Some(value_field)) = (
            info.position(1).map(|at| &info.fields[at]),
            info.position(2).map(|at| &info.fields[at]),
        ) else {
            return Err(Irregular);
        };
        if key_field.kind != Kind::String {
            return Err(Irregular);
        }
        let Value::Bytes(bytes) = value else {
            return Err(Irregular);
        };
        let (mut key, mut value) = (None, None);
        for field in Fields::new(bytes) {
            let (number, field_value) = field.map_err(|_| Irregular)?;
            let slot = match number {
                1 => &mut key,
                2 => &mut value,
                _ => continue,
            };
            if slot.replace(field_value).is_some() {
                return Err(Irregular);
            }
        }
        let key = match key {
            Some(Value::Bytes(key)) => key,
            None => &[],
            Some(_) => return Err(Irregular),
        };
        if self.keys[keys..].contains(&key) {
            return Err(Irregular);
        }
        if self.keys.len() > keys {
            self.out.push(b',');
        }
        self.keys.push(key);
        self.string(key)?;
        self.out.push(b':');
        match value {
            Some(value) => self.value(value_field.kind, value, false, depth).map(drop),
            None => self.default(value_field.kind),
        }
    }

    /// One value of `kind`. With `skip_default`, a default scalar is not written (`false`).
    #[inline(always)]
    fn value(
        &mut self,
        kind: Kind,
        value: Value<'m>,
        skip_default: bool,
        depth: usize,
    ) -> Result<bool, Irregular> {
        match (kind, value) {
            (Kind::Message(index), Value::Bytes(bytes)) => {
                self.message(index, bytes, None, depth + 1)?;
            }
            (Kind::String, Value::Bytes(text)) => {
                if skip_default && text.is_empty() {
                    std::str::from_utf8(text).map_err(|_| Irregular)?;
                    return Ok(false);
                }
                self.string(text)?;
            }
            (Kind::Bytes, Value::Bytes(bytes)) => {
                if skip_default && bytes.is_empty() {
                    return Ok(false);
                }
                let out = &mut *self.out;
                out.push(b'"');
                let start = out.len();
                out.resize(
                    start + base64::encoded_len(bytes.len(), true).ok_or(Irregular)?,
                    0,
                );
                base64::engine::general_purpose::STANDARD
                    .encode_slice(bytes, &mut out[start..])
                    .map_err(|_| Irregular)?;
                out.push(b'"');
            }
            (kind, value) => {
                let Some(number) = Number::of(kind, value) else {
                    return Err(Irregular);
                };
                if skip_default && number.is_default() {
                    return Ok(false);
                }
                let out = &mut *self.out;
                match number {
                    Number::Int(n) => write_json(out, &n),
                    Number::Uint(n) => write_json(out, &n),
                    Number::Quoted(n) => {
                        out.push(b'"');
                        write_json(out, &n);
                        out.push(b'"');
                    }
                    Number::QuotedUnsigned(n) => {
                        out.push(b'"');
                        write_json(out, &n);
                        out.push(b'"');
                    }
                    Number::Bool(b) => write_json(out, &b),
                    Number::Enum(index, n) => {
                        match self.schema.enums[index].values.iter().find(|v| v.0 == n) {
                            Some((_, name)) => out.extend_from_slice(name.as_bytes()),
                            None => write_json(out, &n),
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    /// The default of a map value that was not sent.
    fn default(&mut self, kind: Kind) -> Result<(), Irregular> {
        match kind {
            Kind::Message(index) => self.message(index, &[], None, 0),
            Kind::String | Kind::Bytes => {
                self.out.extend_from_slice(b"\"\"");
                Ok(())
            }
            kind => self.value(kind, Value::Varint(0), false, 0).map(drop),
        }
    }

    #[inline(always)]
    fn string(&mut self, text: &[u8]) -> Result<(), Irregular> {
        // Most strings are ASCII with nothing to escape: one pass that vectorizes finds that
        // they are (ASCII is UTF-8, so no separate check) and they are copied as they are.
        let plain = text.iter().fold(true, |plain, &b| {
            plain & (0x20..0x80).contains(&b) & (b != b'"') & (b != b'\\')
        });
        if plain {
            self.out.reserve(text.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(text);
            self.out.push(b'"');
        } else {
            let text = std::str::from_utf8(text).map_err(|_| Irregular)?;
            write_json(self.out, text);
        }
        Ok(())
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("writing JSON to memory does not fail");
}

/// A number, bool or enum as the reference shows it.
#[derive(Clone, Copy)]
enum Number {
    Int(i32),
    Uint(u32),
    /// 64-bit integers are JSON strings.
    Quoted(i64),
    QuotedUnsigned(u64),
    Bool(bool),
    Enum(usize, i32),
}

impl Number {
    /// Reads a value of `kind` as protobuf decoders do (varints truncated to 32 bits for the
    /// 32-bit kinds); `None` for a wire type the kind cannot have.
    fn of(kind: Kind, value: Value<'_>) -> Option<Number> {
        Some(match (kind, value) {
            (Kind::Int32, Value::Varint(v)) => Number::Int(v as i32),
            (Kind::Sint32, Value::Varint(v)) => {
                let v = v as u32;
                Number::Int((v >> 1) as i32 ^ -((v & 1) as i32))
            }
            (Kind::Uint32, Value::Varint(v)) => Number::Uint(v as u32),
            (Kind::Int64, Value::Varint(v)) => Number::Quoted(v as i64),
            (Kind::Sint64, Value::Varint(v)) => Number::Quoted((v >> 1) as i64 ^ -((v & 1) as i64)),
            (Kind::Uint64, Value::Varint(v)) => Number::QuotedUnsigned(v),
            (Kind::Fixed32, Value::Fixed32(v)) => Number::Uint(v),
            (Kind::Sfixed32, Value::Fixed32(v)) => Number::Int(v as i32),
            (Kind::Fixed64, Value::Fixed64(v)) => Number::QuotedUnsigned(v),
            (Kind::Sfixed64, Value::Fixed64(v)) => Number::Quoted(v as i64),
            (Kind::Bool, Value::Varint(v)) => Number::Bool(v != 0),
            (Kind::Enum(index), Value::Varint(v)) => Number::Enum(index, v as i32),
            _ => return None,
        })
    }

    fn is_default(self) -> bool {
        match self {
            Number::Int(n) | Number::Enum(_, n) => n == 0,
            Number::Uint(n) => n == 0,
            Number::Quoted(n) => n == 0,
            Number::QuotedUnsigned(n) => n == 0,
            Number::Bool(b) => !b,
        }
    }
}

fn packable(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::String | Kind::Bytes | Kind::Message(_) | Kind::Float
    )
}

/// The elements of a packed list.
struct Packed<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl<'a> Packed<'a> {
    fn new(kind: Kind, rest: &'a [u8]) -> Packed<'a> {
        Packed { kind, rest }
    }
}

impl<'a> Iterator for Packed<'a> {
    type Item = Result<Value<'a>, Irregular>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let value = match self.kind {
            Kind::Fixed32 | Kind::Sfixed32 => {
                self.rest.split_first_chunk::<4>().map(|(v, rest)| {
                    self.rest = rest;
                    Value::Fixed32(u32::from_le_bytes(*v))
                })
            }
            Kind::Fixed64 | Kind::Sfixed64 => {
                self.rest.split_first_chunk::<8>().map(|(v, rest)| {
                    self.rest = rest;
                    Value::Fixed64(u64::from_le_bytes(*v))
                })
            }
            _ => crate::proxy::wire::varint(&mut self.rest).map(Value::Varint),
        };
        if value.is_none() {
            self.rest = &[];
        }
        Some(value.ok_or(Irregular))
    }
}

/// The differential check of the writer (run by the tests and the `audit_json` fuzz target):
/// what it writes of `bytes`, parsed, equals what reflection writes (the reference), with env
/// values redacted and not; `Ok(false)` when it leaves the message to the reference, `Err`
/// when the two differ or the writer writes what is not JSON.
pub fn check(method: Method, input: bool, bytes: &[u8]) -> Result<bool, String> {
    let mut regular = true;
    for env in [true, false] {
        match (
            written(method, input, bytes, env)?,
            reference(method, input, bytes, env),
        ) {
            (Ok(fast), Some(slow)) if fast == slow => {}
            (Ok(fast), Some(slow)) => {
                return Err(format!(
                    "{method:?} (env redacted: {env}) differs: wrote {fast}, reflection {slow}\nbytes: {bytes:02x?}"
                ));
            }
            (Ok(fast), None) => {
                return Err(format!(
                    "{method:?}: wrote {fast} for bytes reflection refuses: {bytes:02x?}"
                ));
            }
            (Err(Irregular), _) => regular = false,
        }
    }
    Ok(regular)
}

/// What the one-pass writer writes, parsed; `Ok(Err)` when it leaves the message alone.
fn written(
    method: Method,
    input: bool,
    bytes: &[u8],
    env: bool,
) -> Result<Result<serde_json::Value, Irregular>, String> {
    let mut out = Vec::new();
    match write(&mut out, method, input, bytes, env) {
        None => return Ok(Err(Irregular)),
        Some(Err(irregular)) => return Ok(Err(irregular)),
        Some(Ok(())) => {}
    }
    let value: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))?;
    // Written again it has the same length: no key twice (a parser keeps only the last).
    if serde_json::to_vec(&value).map_or(0, |v| v.len()) != out.len() {
        return Err(format!(
            "a key written twice: {}",
            String::from_utf8_lossy(&out)
        ));
    }
    Ok(Ok(value))
}

/// The reference: reflection, as the audit trail wrote every message before.
fn reference(method: Method, input: bool, bytes: &[u8], env: bool) -> Option<serde_json::Value> {
    let rpc = crate::proxy::rpc::Rpc::from_path(&format!(
        "/{}/{}",
        method.service().proto_name()?,
        method.as_str()
    ));
    let descriptor = crate::proxy::rpc::message_type(&rpc, input)?;
    let message = prost_reflect::DynamicMessage::decode(descriptor, bytes).ok()?;
    crate::audit::event::reflected_json(message, env).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri;
    use crate::policy::agreement::{mutate, seeds, shuffle};
    use prost::Message;

    /// Compares the two on `bytes`; true when the one-pass writer wrote it.
    fn agrees(method: Method, input: bool, bytes: &[u8]) -> bool {
        check(method, input, bytes).unwrap_or_else(|difference| panic!("{difference}"))
    }

    /// Encoders write fields in number order, which the writer follows in one pass; in any
    /// other order it sorts them first, and writes what the reference writes all the same.
    #[test]
    fn fields_out_of_order_are_written_in_number_order_as_reflection_writes_them() {
        let mut rng = fastrand::Rng::with_seed(19);
        let (mut total, mut regular) = (0, 0);
        for (method, bytes) in seeds() {
            for _ in 0..20 {
                let shuffled = shuffle(&mut rng, &bytes, 4);
                total += 1;
                regular += usize::from(agrees(method, true, &shuffled));
            }
        }
        assert!(regular * 10 >= total * 9, "{regular} of {total} written");
    }

    #[test]
    fn the_recorded_requests_are_written_as_reflection_writes_them() {
        for (method, bytes) in seeds() {
            assert!(
                agrees(method, true, &bytes),
                "{method:?} left to reflection"
            );
        }
    }

    #[test]
    fn mutated_requests_are_written_as_reflection_writes_them_or_left_to_it() {
        let seeds = seeds();
        let mut rng = fastrand::Rng::with_seed(0x150b);
        let (mut regular, mut irregular) = (0, 0);
        for round in 0..6000 {
            let (method, bytes) = &seeds[round % seeds.len()];
            if agrees(*method, true, &mutate(&mut rng, bytes)) {
                regular += 1;
            } else {
                irregular += 1;
            }
        }
        assert!(
            regular > 1000 && irregular > 500,
            "{regular} written, {irregular} left"
        );
    }

    #[test]
    fn answers_with_maps_bytes_enums_and_64_bit_numbers_are_written_as_reflection_writes_them() {
        let status = cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: "sandbox".into(),
                state: cri::PodSandboxState::SandboxNotready as i32,
                created_at: -1_700_000_000_000_000_000,
                labels: crate::fake::samples::container_labels("web", "team-a", "app"),
                annotations: [
                    ("a".to_string(), String::new()),
                    (String::new(), "b".into()),
                ]
                .into(),
                ..Default::default()
            }),
            info: [
                ("info".to_string(), "{\"pid\": 1}\n\u{7}\u{7f}é".to_string()),
                ("clé".to_string(), "\u{7f}".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let exec = cri::ExecSyncResponse {
            stdout: b"\x00\xffhello\n".to_vec(),
            stderr: Vec::new(),
            exit_code: -2,
        };
        let list = cri::ListContainersResponse {
            containers: vec![
                cri::Container {
                    id: "c1".into(),
                    state: 7,
                    created_at: i64::MAX,
                    ..Default::default()
                },
                cri::Container::default(),
            ],
        };
        let pull = cri::PullImageRequest {
            auth: Some(cri::AuthConfig {
                username: "robot".into(),
                password: "hunter2".into(),
                registry_token: "t".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (method, input, bytes) in [
            (Method::PodSandboxStatus, false, status.encode_to_vec()),
            (Method::ExecSync, false, exec.encode_to_vec()),
            (Method::ListContainers, false, list.encode_to_vec()),
            (Method::PullImage, true, pull.encode_to_vec()),
        ] {
            assert!(
                agrees(method, input, &bytes),
                "{method:?} left to reflection"
            );
        }
        let line = written(Method::PullImage, true, &pull.encode_to_vec(), true)
            .unwrap()
            .unwrap();
        assert_eq!(line["auth"]["password"], REDACTED);
        assert!(!line.to_string().contains("hunter2"));
    }

    /// Found by the `audit_json` fuzz target when an env value was a `string`: it is shown as
    /// the marker but read as reflection reads it. Since CRI 1.36 it is `bytes`, which every
    /// reader takes whatever they hold: written in one pass, hidden or shown (base64).
    #[test]
    fn an_env_value_not_utf8_is_written_hidden_or_shown() {
        let request = cri::CreateContainerRequest {
            config: Some(cri::ContainerConfig {
                envs: vec![cri::KeyValue {
                    key: "A".into(),
                    value: vec![0x01, 0xff],
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        assert_eq!(check(Method::CreateContainer, true, &bytes), Ok(true));
        let shown = written(Method::CreateContainer, true, &bytes, false)
            .unwrap()
            .unwrap();
        assert_eq!(shown["config"]["envs"][0]["value"], "Af8=");
        let hidden = written(Method::CreateContainer, true, &bytes, true)
            .unwrap()
            .unwrap();
        assert_eq!(hidden["config"]["envs"][0]["value"], REDACTED);
    }

    #[test]
    fn what_the_writer_leaves_to_reflection() {
        let within = |field: u8, inner: Vec<u8>| [vec![field, inner.len() as u8], inner].concat();
        let entry = |k: &str, v: &str| {
            within(
                0x12,
                [within(0x0a, k.into()), within(0x12, v.into())].concat(),
            )
        };
        // ImageStatus: its image (an ImageSpec) sent twice (merged), a map key sent twice
        // (last wins), a message field as a varint, a string that is not UTF-8.
        for bytes in [
            [
                within(0x0a, within(0x0a, b"a".to_vec())),
                within(0x0a, within(0x0a, b"b".to_vec())),
            ]
            .concat(),
            within(0x0a, [entry("k", "1"), entry("k", "2")].concat()),
            vec![0x08, 0x01],
            within(0x0a, within(0x0a, vec![0xff])),
        ] {
            let method = Method::ImageStatus;
            assert_eq!(
                written(method, true, &bytes, true),
                Ok(Err(Irregular)),
                "{bytes:02x?}"
            );
        }
        // Defaults sent explicitly are not shown, as reflection does not show them.
        let explicit = [within(0x0a, within(0x0a, vec![])), vec![0x10, 0x00]].concat();
        assert!(agrees(Method::ImageStatus, true, &explicit));
        assert_eq!(
            written(Method::ImageStatus, true, &explicit, true),
            Ok(Ok(serde_json::json!({ "image": {} })))
        );
        // The same map with distinct keys is written.
        let distinct = within(0x0a, [entry("k", "1"), entry("j", "2")].concat());
        assert!(agrees(Method::ImageStatus, true, &distinct));
    }
}
