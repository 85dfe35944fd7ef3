//! The protobuf wire format, read in place: the fields of a message as borrowed slices of the
//! caller's bytes, without copying or allocating. What criguard inspects (the call's object, the
//! views the policies judge) is read with it; what reaches the runtime is never re-encoded.

use std::fmt;

/// A field's value as the wire carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited: a string, bytes, an embedded message or a packed list.
    Bytes(&'a [u8]),
    Fixed32(u32),
    /// A group (proto2's wire types 3 and 4, unused by CRI): what lies between its start and
    /// its end. Decoders skip an unknown one and read on; so does every reader here.
    Group(&'a [u8]),
}

/// How deep groups may nest: prost's recursion limit. Deeper nesting is refused (Go's decoder
/// would read on; criguard cannot be sure it reads as the runtime does, so it refuses).
const MAX_GROUP_DEPTH: usize = 100;

/// Why bytes are not a protobuf message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    reason: std::borrow::Cow<'static, str>,
    field: u32,
}

impl DecodeError {
    fn new(reason: &'static str, field: u32) -> DecodeError {
        DecodeError {
            reason: reason.into(),
            field,
        }
    }

    /// String field `field` holds bytes that are not UTF-8, which protobuf decoders refuse.
    pub fn not_utf8(field: u32) -> DecodeError {
        DecodeError::new("a string that is not UTF-8", field)
    }

    /// Field `field` holds bytes that are not the message it should be.
    pub fn invalid_message(field: u32) -> DecodeError {
        DecodeError::new("not a valid message", field)
    }
}

/// What a protobuf decoder (prost) found wrong with the whole message.
impl From<prost::DecodeError> for DecodeError {
    fn from(err: prost::DecodeError) -> DecodeError {
        DecodeError {
            reason: err.to_string().into(),
            field: 0,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            0 => f.write_str(&self.reason),
            field => write!(f, "field {field}: {}", self.reason),
        }
    }
}

impl std::error::Error for DecodeError {}

impl<'a> Value<'a> {
    /// The value of a string, bytes or message field.
    pub fn bytes(self, field: u32) -> Result<&'a [u8], DecodeError> {
        match self {
            Value::Bytes(bytes) => Ok(bytes),
            _ => Err(DecodeError::new("not length-delimited", field)),
        }
    }

    /// The value of an integer, enum or bool field.
    pub fn varint(self, field: u32) -> Result<u64, DecodeError> {
        match self {
            Value::Varint(value) => Ok(value),
            _ => Err(DecodeError::new("not a varint", field)),
        }
    }
}

/// The fields of a message in the order the bytes carry them; an error ends the walk.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(message: &'a [u8]) -> Fields<'a> {
        Fields { rest: message }
    }

    /// How many bytes are still to be read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    #[inline]
    fn next_field(&mut self) -> Result<(u32, Value<'a>), DecodeError> {
        let key = varint(&mut self.rest).ok_or(DecodeError::new("truncated field key", 0))?;
        let field = u32::try_from(key >> 3)
            .ok()
            .filter(|&f| f != 0 && f < 1 << 29)
            .ok_or(DecodeError::new("invalid field number", 0))?;
        let truncated = DecodeError::new("truncated value", field);
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.rest).ok_or(truncated)?),
            1 => {
                let (value, rest) = self.rest.split_first_chunk::<8>().ok_or(truncated)?;
                self.rest = rest;
                Value::Fixed64(u64::from_le_bytes(*value))
            }
            2 => {
                let len = varint(&mut self.rest)
                    .and_then(|len| usize::try_from(len).ok())
                    .filter(|&len| len <= self.rest.len())
                    .ok_or(truncated)?;
                let (value, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(value)
            }
            5 => {
                let (value, rest) = self.rest.split_first_chunk::<4>().ok_or(truncated)?;
                self.rest = rest;
                Value::Fixed32(u32::from_le_bytes(*value))
            }
            3 => {
                let start = self.rest;
                let end = skip_group(&mut self.rest, field, 1)?;
                Value::Group(&start[..end])
            }
            4 => {
                return Err(DecodeError::new(
                    "end of a group that was not started",
                    field,
                ));
            }
            // 6 and 7 do not exist.
            _ => return Err(DecodeError::new("unsupported wire type", field)),
        };
        Ok((field, value))
    }
}

/// Skips the rest of group `field` (its start already read), nested groups included, as
/// protobuf decoders skip an unknown group; returns the length of its content.
fn skip_group(rest: &mut &[u8], field: u32, depth: usize) -> Result<usize, DecodeError> {
    if depth > MAX_GROUP_DEPTH {
        return Err(DecodeError::new("groups nested too deep", field));
    }
    let start = *rest;
    loop {
        let before = rest.len();
        let key = varint(rest).ok_or(DecodeError::new("truncated group", field))?;
        let inner = u32::try_from(key >> 3)
            .ok()
            .filter(|&f| f != 0 && f < 1 << 29)
            .ok_or(DecodeError::new("invalid field number", field))?;
        let truncated = DecodeError::new("truncated value", inner);
        match key & 7 {
            0 => {
                varint(rest).ok_or(truncated)?;
            }
            1 => *rest = rest.get(8..).ok_or(truncated)?,
            2 => {
                let len = varint(rest)
                    .and_then(|len| usize::try_from(len).ok())
                    .filter(|&len| len <= rest.len())
                    .ok_or(truncated)?;
                *rest = &rest[len..];
            }
            3 => {
                skip_group(rest, inner, depth + 1)?;
            }
            4 if inner == field => return Ok(start.len() - before),
            4 => {
                return Err(DecodeError::new(
                    "group ends with another field's end",
                    field,
                ));
            }
            5 => *rest = rest.get(4..).ok_or(truncated)?,
            _ => return Err(DecodeError::new("unsupported wire type", inner)),
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.next_field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

/// Reads a base-128 varint from the front of `buf`; `None` when truncated, over 10 bytes, or
/// over 64 bits (a 10th byte above 1), which Go's decoders and prost refuse alike.
#[inline]
pub fn varint(buf: &mut &[u8]) -> Option<u64> {
    // Field keys and the lengths of short strings: one byte.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Some(u64::from(byte));
    }
    long_varint(buf)
}

fn long_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in buf.iter().enumerate().take(10) {
        if index == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *buf = &buf[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_wire_type_in_order() {
        let message = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 0x02, b'h', b'i', // 3: "hi"
            0x25, 2, 0, 0, 0, // 4: fixed32 2
        ];
        let fields: Vec<_> = Fields::new(&message).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            fields,
            [
                (1, Value::Varint(150)),
                (2, Value::Fixed64(1)),
                (3, Value::Bytes(b"hi")),
                (4, Value::Fixed32(2)),
            ]
        );
        assert_eq!(fields[2].1.bytes(3), Ok(&b"hi"[..]));
        assert!(fields[2].1.varint(3).is_err());
    }

    #[test]
    fn broken_messages_are_errors_never_panics() {
        for broken in [
            &b"\x0a\x05hi"[..],                                  // longer than the message
            b"\x08",                                             // value missing
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", // varint over 10 bytes
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",     // varint over 64 bits
            b"\x0b\x14",                                         // a group ended by another
            b"\x0b\x08\x01",                                     // a group never ended
            b"\x0c",                                             // an end without a start
            b"\x0f",                                             // wire type 7
            b"\x00\x01",                                         // field 0
            b"\x09\x01\x02",                                     // fixed64 cut short
        ] {
            let results: Vec<_> = Fields::new(broken).collect();
            assert!(
                results.last().is_some_and(Result::is_err),
                "{broken:?}: {results:?}"
            );
        }
        assert_eq!(Fields::new(b"").count(), 0);
    }

    #[test]
    fn unknown_groups_are_skipped_nested_and_all() {
        let message = [
            0x0a, 0x01, b'a', // 1: "a"
            0x9b, 0x01, // 19: start group
            0x08, 0x01, // 1: varint inside the group
            0xa3, 0x01, 0x0a, 0x00, 0xa4, 0x01, // 20: a nested group with a string
            0x9c, 0x01, // 19: end group
            0x0a, 0x01, b'b', // 1: "b"
        ];
        let fields: Vec<_> = Fields::new(&message).collect::<Result<_, _>>().unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0], (1, Value::Bytes(b"a")));
        assert!(matches!(fields[1], (19, Value::Group(_))));
        assert_eq!(fields[2], (1, Value::Bytes(b"b")));
        let deep: Vec<u8> = [vec![0x0b; 101], vec![0x0c; 101]].concat();
        assert!(Fields::new(&deep).any(|f| f.is_err()), "over 100 deep");
        let fine: Vec<u8> = [vec![0x0b; 100], vec![0x0c; 100]].concat();
        assert!(Fields::new(&fine).all(|f| f.is_ok()));
    }
}
