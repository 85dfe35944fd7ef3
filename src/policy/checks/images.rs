//! Image registries: the image a call runs or pulls, and every image a container mounts as a
//! volume, read as containerd normalises names.

use super::{ImageParams, Target};
use crate::policy::image_ref::{ImageRef, repository_matches};
use crate::policy::view::{ImageView, text};

/// An image outside the allowlist, on the denylist, or named so that its registry cannot be
/// judged: the container's, or one it mounts (an image volume gives the container the image's
/// whole filesystem, so it is judged exactly as the container's own image is).
pub(super) fn images(target: &Target, params: &ImageParams) -> Option<String> {
    let own = target.image.and_then(|named| {
        container_image(
            named,
            target.runtime_image,
            target.runtime_image_names,
            params,
        )
    });
    own.or_else(|| {
        let mounts = target.container?.mounts.iter();
        mounts
            .filter_map(|m| Some((m, m.mounted_image()?)))
            .enumerate()
            .find_map(|(index, (mount, image))| {
                let names = target
                    .mount_image_names
                    .get(index)
                    .and_then(Option::as_deref);
                mounted_image(image, names, params).map(|why| {
                    let sub_path = match text(mount.image_sub_path) {
                        sub if sub.is_empty() => String::new(),
                        sub => format!(" (its path {sub})"),
                    };
                    format!(
                        "mounts an image volume at {}{sub_path} (mounts.image): {why}",
                        text(mount.container_path)
                    )
                })
            })
    })
}

/// What is wrong with the image a container runs: `named` as the user named it, `runtime` the
/// `image` field beside it, `names` the names the runtime gives that field when it is an id.
fn container_image(
    named: &[u8],
    runtime: Option<&[u8]>,
    names: Option<&[String]>,
    params: &ImageParams,
) -> Option<String> {
    let named = text(named);
    if params.has_lists() && is_image_id(&named) {
        return Some(format!(
            "names its image only by {named}, which the runtime may take for an image id, so its registry cannot be checked (image.user_specified_image is empty)"
        ));
    }
    // The runtime runs `image.image`: when it is a name, not the id the kubelet puts
    // there, it is judged too, or an allowed `user_specified_image` could cover it.
    let runtime = runtime
        .map(text)
        .filter(|image| !image.is_empty() && *image != named);
    match runtime {
        Some(id) if is_image_id(&id) => params.violation(&named).or_else(|| {
            params
                .has_lists()
                .then(|| image_is_named(&id, names, &named))
                .flatten()
        }),
        runtime => std::iter::once(named)
            .chain(runtime)
            .find_map(|image| params.violation(&image)),
    }
}

/// What is wrong with an image a container mounts. Named, it is judged as a container's image
/// is; by id alone (no `user_specified_image`), by the names the runtime gives that id: one of
/// them must pass, and an id whose names criguard has not seen is refused while lists are set.
fn mounted_image(
    image: &ImageView,
    names: Option<&[String]>,
    params: &ImageParams,
) -> Option<String> {
    let id = text(image.image);
    if !image.user_specified_image.is_empty() || !is_image_id(&id) {
        return container_image(image.named(), Some(image.image), names, params);
    }
    // An id pins the content as a digest does: only the lists need to know its registry.
    if !params.has_lists() {
        return None;
    }
    let Some(names) = names else {
        return Some(format!(
            "uses image {id}, whose names criguard has not seen (an ImageStatus or PullImage answer gives them), so its registry cannot be checked"
        ));
    };
    if names.iter().any(|name| params.violation(name).is_none()) {
        return None;
    }
    Some(match names.first() {
        None => format!("uses image {id}, which the runtime names nothing"),
        Some(first) => format!(
            "uses image {id}, which the runtime names {}: {}",
            names.join(", "),
            params.violation(first).unwrap_or_default()
        ),
    })
}

/// What is wrong with running image `id` as `named` (its `user_specified_image`): the id must
/// be an image the runtime knows by `named`'s repository, or the id of any image the node has
/// could run under an allowed name.
fn image_is_named(id: &str, names: Option<&[String]>, named: &str) -> Option<String> {
    let Some(names) = names else {
        return Some(format!(
            "runs image {id}, whose names criguard has not seen (an ImageStatus or PullImage answer gives them), so it cannot tell it is {named}"
        ));
    };
    let wanted = match ImageRef::parse(named) {
        Ok(wanted) => wanted,
        Err(err) => {
            return Some(format!(
                "names image {named:?}, which the runtime refuses: {err}"
            ));
        }
    };
    let same = |name: &String| {
        ImageRef::parse(name)
            .is_ok_and(|name| name.registry == wanted.registry && name.path == wanted.path)
    };
    (!names.iter().any(same)).then(|| {
        format!(
            "runs image {id}, which is not {named}: the runtime names it {}",
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

impl ImageParams {
    /// Whether an allow or deny list is set: then a registry must be known to be judged.
    fn has_lists(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// What is wrong with `image` (a reference, not an id) under these lists, if anything.
    fn violation(&self, image: &str) -> Option<String> {
        let reference = match ImageRef::parse(image) {
            Ok(reference) => reference,
            Err(err) => {
                return Some(format!(
                    "uses image {image:?}, which is not a reference the runtime takes: {err}"
                ));
            }
        };
        let repository = reference.repository();
        let matches = |pattern: &String| repository_matches(&repository, pattern);
        if self.deny.iter().any(matches) {
            return Some(format!(
                "uses image {image} from a denied registry ({repository})"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(matches) {
            return Some(format!(
                "uses image {image} from a registry outside the allowlist ({repository})"
            ));
        }
        (self.require_digest && reference.digest.is_none())
            .then(|| format!("uses image {image} without a digest"))
    }
}

/// Whether the runtime may take `image` for an image id: `sha256:<64 hex>` or the bare hex, as
/// the kubelet writes it in CreateContainer's `image` field, or any shorter run of hex digits,
/// which containerd resolves as a unique prefix of an id when no image has that name. Such a
/// name (`3f9a1c`) cannot be judged by its registry: read as `docker.io/library/3f9a1c` it
/// would pass an allowlist of Docker Hub's official images while running any image the node has.
fn is_image_id(image: &str) -> bool {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}
