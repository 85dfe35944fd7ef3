//! Image registries: the image a call runs or pulls, read as containerd normalises names.

use super::{ImageParams, Target};
use crate::policy::image_ref::{ImageRef, repository_matches};
use crate::policy::view::text;

/// An image outside the allowlist, on the denylist, or named so that its registry cannot be
/// judged.
pub(super) fn images(target: &Target, params: &ImageParams) -> Option<String> {
    let named = text(target.image?);
    if (!params.allow.is_empty() || !params.deny.is_empty()) && is_image_id(&named) {
        return Some(format!(
            "names its image only by {named}, which the runtime may take for an image id, so its registry cannot be checked (image.user_specified_image is empty)"
        ));
    }
    // The runtime runs `image.image`: when it is a name, not the id the kubelet puts
    // there, it is judged too, or an allowed `user_specified_image` could cover it.
    let runtime = target
        .runtime_image
        .map(text)
        .filter(|image| !image.is_empty() && *image != named);
    match runtime {
        Some(id) if is_image_id(&id) => {
            let lists = !params.allow.is_empty() || !params.deny.is_empty();
            params.violation(&named).or_else(|| {
                lists
                    .then(|| image_is_named(&id, target.runtime_image_names, &named))
                    .flatten()
            })
        }
        runtime => std::iter::once(named)
            .chain(runtime)
            .find_map(|image| params.violation(&image)),
    }
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
