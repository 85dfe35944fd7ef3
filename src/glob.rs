//! Glob patterns as configuration and policies write them (namespaces, repositories): `*`
//! stands for any run of characters. A leaf: it imports nothing of criguard's.

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("kube-*", "kube-system"));
        assert!(glob_match("*", ""));
        assert!(glob_match("team-*-prod", "team-a-prod"));
        assert!(!glob_match("team-*-prod", "team-a-dev"));
        assert!(glob_match("default", "default"));
        assert!(!glob_match("default", "default2"));
        assert!(!glob_match("a*a", "a"));
    }
}
