//! Image references read as containerd reads them: the grammar and normalisation of
//! distribution/reference's `ParseNormalizedNamed`, which containerd's CRI plugin applies to
//! every image name it pulls or runs.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path            (at most 255 characters)
//! domain     := host [ ":" port ]              host: DNS name, IPv4, or [IPv6]
//! path       := component [ "/" component ]*   component: [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex{32,}         algorithm: [A-Za-z][A-Za-z0-9]* ( [+._-] [A-Za-z][A-Za-z0-9]* )*
//! ```
//!
//! Normalisation: the first component is a domain only if it has a `.` or a `:`, is
//! `localhost`, or has a capital letter; otherwise the domain is `docker.io`. `index.docker.io`
//! is `docker.io`, and a Docker Hub path of one component gets `library/`. A path with capitals
//! and a 64-digit hex string (an image id) are not repository names: containerd refuses them,
//! and so does [`ImageRef::parse`].
//!
//! For matching, criguard also lowers the domain's case (hosts are resolved case-blind, so
//! `DOCKER.IO` reaches Docker Hub) before applying the `index.docker.io` and `library/` rules.

use std::fmt;

/// Docker Hub as references name it.
const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's old name, which references still accept.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const NAME_MAX: usize = 255;

/// An image reference, normalised as the runtime resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The domain, lower case: `docker.io`, `registry.k8s.io`, `localhost:5000`, `[::1]:5000`.
    pub registry: String,
    /// The repository path: `library/busybox`, `e2e-test-images/busybox`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Why a string is not an image reference containerd would take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceError(&'static str);

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ReferenceError {}

impl ImageRef {
    /// Parses and normalises `reference`: `busybox` is `docker.io/library/busybox`.
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        if reference.len() == 64
            && reference
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError(
                "a 64-digit hexadecimal string is an image id, not a repository name",
            ));
        }
        let (domain, remainder) = split_domain(reference);
        let (name, digest) = match remainder.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (remainder, None),
        };
        let (path, tag) = match name.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (name, None),
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError("repository name must be lowercase"));
        }
        if !valid_domain(domain) {
            return Err(ReferenceError("invalid domain"));
        }
        if !path.split('/').all(valid_component) {
            return Err(ReferenceError("invalid repository path"));
        }
        if tag.is_some_and(|t| !valid_tag(t)) {
            return Err(ReferenceError("invalid tag"));
        }
        if digest.is_some_and(|d| !valid_digest(d)) {
            return Err(ReferenceError("invalid digest"));
        }
        let mut registry = domain.to_ascii_lowercase();
        let mut path = path.to_string();
        if registry == LEGACY_DOCKER_HUB {
            registry = DOCKER_HUB.into();
        }
        if registry == DOCKER_HUB && !path.contains('/') {
            path = format!("library/{path}");
        }
        if registry.len() + 1 + path.len() > NAME_MAX {
            return Err(ReferenceError(
                "repository name must not be more than 255 characters",
            ));
        }
        Ok(ImageRef {
            registry,
            path,
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// `registry/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// Whether the repository matches `pattern`: a registry (`registry.k8s.io`), a repository
    /// prefix (`docker.io/library`), or a glob (`ghcr.io/acme/*`).
    pub fn matches(&self, pattern: &str) -> bool {
        repository_matches(&self.repository(), pattern)
    }
}

/// Whether `repository` (`registry/path`, see [`ImageRef::repository`]) matches `pattern`, as
/// [`ImageRef::matches`] says: for checking one image against many patterns.
pub fn repository_matches(repository: &str, pattern: &str) -> bool {
    let pattern = pattern.trim_end_matches('/');
    if pattern.contains('*') {
        return crate::glob::glob_match(pattern, repository);
    }
    let pattern = pattern.strip_suffix(':').unwrap_or(pattern);
    repository
        .strip_prefix(pattern)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// distribution/reference's `splitDockerDomain`, before normalisation.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// `host [":" port]`, host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        (None, port)
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    let host_ok = host.is_none_or(|host| host.split('.').all(valid_domain_component));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn valid_domain_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn valid_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let separator = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > separator);
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(&bytes[0])
        && bytes[1..]
            .iter()
            .all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// `algorithm ":" hex{32,}`, algorithm `[A-Za-z][A-Za-z0-9]*` joined by `+`, `.`, `_` or `-`.
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(|part| {
        let bytes = part.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphabetic)
            && bytes.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalised(reference: &str) -> String {
        let r = ImageRef::parse(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
        let mut out = r.repository();
        if let Some(tag) = &r.tag {
            out = format!("{out}:{tag}");
        }
        if let Some(digest) = &r.digest {
            out = format!("{out}@{digest}");
        }
        out
    }

    const DIGEST: &str = "sha256:4c5f4c6fa4f4f0e0cd7f5f5c3e9a1e5a8b2e9c1d4f3a2b1c0d9e8f7a6b5c4d3e";

    #[test]
    fn names_are_normalised_as_containerd_does() {
        for (given, expected) in [
            // implicit docker.io and library/
            ("busybox", "docker.io/library/busybox"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("evil/app", "docker.io/evil/app"),
            ("docker.io/busybox", "docker.io/library/busybox"),
            // the legacy name of Docker Hub, in any case
            ("index.docker.io/evil/app", "docker.io/evil/app"),
            ("index.docker.io/alpine", "docker.io/library/alpine"),
            ("INDEX.DOCKER.IO/evil/app", "docker.io/evil/app"),
            ("Docker.IO/evil/app", "docker.io/evil/app"),
            // a domain: a dot, a port, localhost, or a capital
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("localhost/app", "localhost/app"),
            ("localhost:5000/app", "localhost:5000/app"),
            ("host:5000/a/b:1", "host:5000/a/b:1"),
            ("Registry/app", "registry/app"),
            (
                "127.0.0.1:5055/criguard-e2e/private:1.0",
                "127.0.0.1:5055/criguard-e2e/private:1.0",
            ),
            ("[::1]:5000/app", "[::1]:5000/app"),
            ("[2001:db8::1]/app:v1", "[2001:db8::1]/app:v1"),
            // not a domain: no dot, colon or capital, not localhost
            ("myregistry/app", "docker.io/myregistry/app"),
            // separators in path components
            ("a/b_c__d.e---f", "docker.io/a/b_c__d.e---f"),
            // digests, with and without a tag
            (
                &format!("busybox@{DIGEST}"),
                &format!("docker.io/library/busybox@{DIGEST}"),
            ),
            (
                &format!("busybox:1.36@{DIGEST}"),
                &format!("docker.io/library/busybox:1.36@{DIGEST}"),
            ),
        ] {
            assert_eq!(normalised(given), expected, "{given}");
        }
    }

    #[test]
    fn what_containerd_refuses_is_refused() {
        let long = format!("registry.example/{}", "a".repeat(250));
        for refused in [
            "Busybox",                                       // capitals in the path
            "docker.io/Library/busybox",                     // capitals in the path
            "evil/App:1",                                    // capitals in the path
            &"a".repeat(64).replace('a', "f"),               // a 64-digit hex id
            "",                                              // empty
            "busybox:",                                      // empty tag
            "busybox:-x",                                    // tag starting with '-'
            &format!("busybox:{}", "t".repeat(129)),         // tag over 128
            "busybox@sha256:abc",                            // digest too short
            "busybox@sha256",                                // digest without hex
            "busybox@1sha:0123456789abcdef0123456789abcdef", // algorithm starting with a digit
            "a//b",                                          // empty component
            "a/-b",                                          // component starting with a separator
            "a/b-",                                          // component ending with a separator
            "a/b___c",                                       // three underscores
            "a/b..c",                                        // two dots
            "reg-.example/app",                              // domain component ending with '-'
            "reg.example:/app",                              // empty port
            "reg.example:50x/app",                           // port not numeric
            "[::1/app",                                      // unclosed IPv6
            "[::g]/app",                                     // not hex
            &long,                                           // name over 255
            "busybox latest",                                // a space
        ] {
            assert!(
                ImageRef::parse(refused).is_err(),
                "{refused:?} should be refused"
            );
        }
    }

    #[test]
    fn patterns_match_registries_repositories_and_globs() {
        let r = ImageRef::parse("index.docker.io/library/alpine:3").unwrap();
        assert!(r.matches("docker.io"));
        assert!(r.matches("docker.io/library"));
        assert!(r.matches("docker.io/library/alpine"));
        assert!(!r.matches("docker.io/lib"));
        assert!(r.matches("docker.io/*"));
        let evil = ImageRef::parse("index.docker.io/evil/app").unwrap();
        assert!(evil.matches("docker.io/evil"));
        assert!(!evil.matches("docker.io/library"));
    }
}
