//! Reads the object a call is about (container, sandbox or image) straight from the request's
//! protobuf bytes, without decoding the whole message: cheap enough for every failed call.

use super::rpc::Method;

/// The id of the object `method` acts on, read from its request message: a container id, a
/// sandbox id, an image reference, `namespace/name` for RunPodSandbox, or `""` when the call has
/// none (Version, List*, ...) or the bytes cannot be read.
pub fn object_id(method: Method, message: &[u8]) -> &str {
    use Method::*;
    let path: &[u32] = match method {
        // container_id = 1
        StartContainer
        | StopContainer
        | RemoveContainer
        | ContainerStatus
        | UpdateContainerResources
        | ReopenContainerLog
        | ExecSync
        | Exec
        | Attach
        | ContainerStats
        | CheckpointContainer => &[1],
        // pod_sandbox_id = 1
        StopPodSandbox | RemovePodSandbox | PodSandboxStatus | PortForward | PodSandboxStats
        | CreateContainer => &[1],
        // image = 1 (ImageSpec), image = 1
        ImageStatus | PullImage | RemoveImage => &[1, 1],
        // config = 1 (PodSandboxConfig), metadata = 1, name = 1
        RunPodSandbox => &[1, 1, 1],
        _ => return "",
    };
    string_at(message, path).unwrap_or("")
}

/// The string at a path of field numbers through nested messages (first occurrence).
fn string_at<'a>(mut message: &'a [u8], path: &[u32]) -> Option<&'a str> {
    for (depth, &wanted) in path.iter().enumerate() {
        let bytes = length_delimited_field(message, wanted)?;
        if depth + 1 == path.len() {
            return std::str::from_utf8(bytes).ok();
        }
        message = bytes;
    }
    None
}

/// The bytes of the first length-delimited field `wanted` in `message`.
fn length_delimited_field(mut message: &[u8], wanted: u32) -> Option<&[u8]> {
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let (field, wire_type) = ((key >> 3) as u32, key & 7);
        match wire_type {
            0 => {
                varint(&mut message)?;
            }
            1 => message = message.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                let value = message.get(..len)?;
                message = &message[len..];
                if field == wanted {
                    return Some(value);
                }
            }
            5 => message = message.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::*;
    use prost::Message;

    #[test]
    fn reads_the_object_of_each_kind_of_call() {
        let status = ContainerStatusRequest {
            container_id: "c-123".into(),
            verbose: true,
        }
        .encode_to_vec();
        assert_eq!(object_id(Method::ContainerStatus, &status), "c-123");
        let create = crate::fake::samples::create_container_request();
        let bytes = create.encode_to_vec();
        assert_eq!(
            object_id(Method::CreateContainer, &bytes),
            create.pod_sandbox_id
        );
        let pull = PullImageRequest {
            image: Some(ImageSpec {
                image: "registry.k8s.io/pause:3.9".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            object_id(Method::PullImage, &pull),
            "registry.k8s.io/pause:3.9"
        );
        let run = RunPodSandboxRequest {
            config: Some(crate::fake::samples::pod_config()),
            runtime_handler: String::new(),
        }
        .encode_to_vec();
        assert_eq!(object_id(Method::RunPodSandbox, &run), "web-1");
        assert_eq!(object_id(Method::Version, &status), "");
    }

    #[test]
    fn garbage_gives_no_object_and_never_panics() {
        for bytes in [
            &b""[..],
            b"\xff\xff\xff",
            b"\x0a\x10short",
            b"\x0b",
            b"\x0a\x02\xff\xfe",
        ] {
            assert_eq!(object_id(Method::ContainerStatus, bytes), "");
        }
    }
}
