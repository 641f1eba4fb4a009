//! Request path normalisation, done once per request before anything looks at the path.
//!
//! Routing, plugins and the request sent upstream all see the same normalised path, so
//! `/admin/../public`, `/public/%2e%2e/admin` or `//admin` can never reach a route
//! other than the one their normal form names. The steps, in order:
//!
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) are
//!    decoded; other escapes stay encoded with uppercase hex (`%2f` → `%2F`), so an
//!    encoded `/` never becomes a segment separator;
//! 2. runs of `/` become one;
//! 3. `.` and `..` segments are resolved (RFC 3986 §5.2.4); `..` at the root stays at
//!    the root.
//!
//! A malformed escape (`%zz`, `%4`) is refused: the request gets a 400.
//!
//! Escaped slashes and backslashes (`%2F`, `%5C`, a literal `\`) follow the node's
//! [`EscapedSlashes`] policy (Envoy's `path_with_escaped_slashes_action`): by default
//! they are decoded to `/` before steps 2 and 3, so `/public/..%2fadmin` is `/admin`
//! for routing and upstream alike; `reject` refuses such a path (400); `keep` leaves
//! them encoded, for backends that give `%2F` a meaning of its own. With
//! [`Semicolons::Strip`] (for Java servlet backends, which ignore `;params` in a
//! segment), `/public/..;/admin` is `/admin` too.

use std::borrow::Cow;

/// What happens to `%2F`, `%5C` and `\` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Decode them to `/`, then normalise.
    #[default]
    Decode,
    /// Refuse the request (400).
    Reject,
    /// Leave them as sent (encoded; a literal `\` stays).
    Keep,
}

/// What happens to `;params` in path segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Semicolons {
    /// A `;` is an ordinary character.
    #[default]
    Keep,
    /// Drop each segment's `;…` before normalising (servlet containers do).
    Strip,
}

impl std::str::FromStr for EscapedSlashes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "decode" => Ok(Self::Decode),
            "reject" => Ok(Self::Reject),
            "keep" => Ok(Self::Keep),
            _ => Err(format!("{s:?}: expected decode, reject or keep")),
        }
    }
}

impl std::str::FromStr for Semicolons {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(Self::Keep),
            "strip" => Ok(Self::Strip),
            _ => Err(format!("{s:?}: expected keep or strip")),
        }
    }
}

/// The node's path policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathPolicy {
    pub escaped_slashes: EscapedSlashes,
    pub semicolons: Semicolons,
}

/// Why a path could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("an escaped slash or a backslash in the path")]
    EscapedSlash,
    #[error("the path must start with '/'")]
    NotAbsolute,
}

/// The normal form of `path` (no query); borrowed when it is normal already, which is
/// the common case and costs one scan.
pub fn normalize(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form targets have no path to route on.
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes(), policy) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, policy.escaped_slashes)?;
    let stripped;
    let decoded = match policy.semicolons {
        Semicolons::Keep => &decoded,
        Semicolons::Strip => {
            stripped = strip_semicolons(&decoded);
            &stripped
        }
    };
    Ok(Cow::Owned(remove_dot_segments(decoded)))
}

/// True when no step would change the path: no `%`, no `\\`, no `//`, no `.` or `..`
/// segment, no `;` when semicolons are stripped.
fn is_normal(path: &[u8], policy: PathPolicy) -> bool {
    let mut previous_slash = false;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b';' if policy.semicolons == Semicolons::Strip => return false,
            b'/' if previous_slash => return false,
            b'.' if previous_slash => {
                // `/.` followed by end, `/` or `.` starts a dot segment (or `/..x`,
                // rare enough to take the slow path).
                if matches!(path.get(i + 1), None | Some(b'/' | b'.')) {
                    return false;
                }
            }
            _ => {}
        }
        previous_slash = b == b'/';
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 1: decodes escaped unreserved characters, uppercases the hex of the rest;
/// escaped slashes and backslashes as the policy says.
fn decode_unreserved(text: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let path = text.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'\\' {
            match slashes {
                EscapedSlashes::Decode => out.push('/'),
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => out.push('\\'),
            }
            i += 1;
            continue;
        }
        if path[i] != b'%' {
            // Runs between escapes are copied as they are; `%` and `\\` are ASCII,
            // so the run ends on a character boundary.
            let start = i;
            while i < path.len() && path[i] != b'%' && path[i] != b'\\' {
                i += 1;
            }
            out.push_str(&text[start..i]);
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let value = hi << 4 | lo;
        if value == b'/' || value == b'\\' {
            match slashes {
                EscapedSlashes::Decode => {
                    out.push('/');
                    i += 3;
                    continue;
                }
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => {}
            }
        }
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push(char::from(path[i + 1].to_ascii_uppercase()));
            out.push(char::from(path[i + 2].to_ascii_uppercase()));
        }
        i += 3;
    }
    Ok(out)
}

/// Drops `;…` from every segment (`/a;x/b;y=1` → `/a/b`).
fn strip_semicolons(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split_once(';').map_or(segment, |(kept, _)| kept));
    }
    out
}

/// Steps 2 and 3 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    // Whether the result ends in `/`: a trailing empty segment, `.` or `..`.
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "" => {
                trailing_slash = last;
                continue;
            }
            "." => {}
            ".." => {
                segments.pop();
            }
            other => {
                segments.push(other);
                trailing_slash = false;
                continue;
            }
        }
        trailing_slash = last;
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escaped slashes kept: the cases below predate the policy.
    const KEEP: PathPolicy = PathPolicy {
        escaped_slashes: EscapedSlashes::Keep,
        semicolons: Semicolons::Keep,
    };

    #[test]
    fn escaped_slashes_follow_the_policy() {
        let decode = PathPolicy::default();
        let reject = PathPolicy {
            escaped_slashes: EscapedSlashes::Reject,
            ..decode
        };
        for (input, decoded) in [
            ("/public/..%2fadmin", "/admin"),
            ("/public/..%2Fadmin", "/admin"),
            ("/public/..%5cadmin", "/admin"),
            ("/public\\..\\admin", "/admin"),
            ("/a%2fb", "/a/b"),
            ("/a%2F%2Fb", "/a/b"),
        ] {
            assert_eq!(normalize(input, decode).unwrap(), decoded, "{input}");
            assert_eq!(
                normalize(input, reject),
                Err(PathError::EscapedSlash),
                "{input}"
            );
        }
        assert_eq!(normalize("/a%2fb", KEEP).unwrap(), "/a%2Fb");
        assert_eq!(normalize("/a\\b", KEEP).unwrap(), "/a\\b");
        assert!(matches!(normalize("/a/b", reject), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn semicolons_are_stripped_for_servlet_backends() {
        let strip = PathPolicy {
            semicolons: Semicolons::Strip,
            ..PathPolicy::default()
        };
        for (input, want) in [
            ("/public/..;/admin", "/admin"),
            ("/a;jsessionid=1/b;x", "/a/b"),
            ("/a/b", "/a/b"),
        ] {
            assert_eq!(normalize(input, strip).unwrap(), want, "{input}");
        }
        assert_eq!(
            normalize("/public/..;/admin", PathPolicy::default()).unwrap(),
            "/public/..;/admin"
        );
    }

    #[test]
    fn normal_forms() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/../b", "/b"),
            ("/admin/../public", "/public"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/..b/.c", "/a/..b/.c"),
            ("/a/...", "/a/..."),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/café/./x", "/café/x"),
            ("/a/%2e/b", "/a/b"),
            ("/a//../b", "/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input, KEEP).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/a/b", "/a/b/", "/a.b/c.d", "/a/.b", "/.well-known/x"] {
            assert!(
                matches!(normalize(path, PathPolicy::default()), Ok(Cow::Borrowed(_))),
                "{path} should need no work"
            );
        }
    }

    #[test]
    fn the_result_is_a_fixed_point() {
        for path in [
            "//a/%2e%2E/./b//",
            "/%2e",
            "/x/%2e%2e/%2e%2e/y/",
            "/a%2fb/../c",
        ] {
            let once = normalize(path, PathPolicy::default()).unwrap().into_owned();
            assert_eq!(
                normalize(&once, PathPolicy::default()).unwrap(),
                once,
                "{path}"
            );
        }
    }

    #[test]
    fn bad_escapes_are_refused() {
        for path in ["/a%", "/a%4", "/a%zz", "/%g0/x"] {
            assert_eq!(
                normalize(path, PathPolicy::default()),
                Err(PathError::BadEscape),
                "{path}"
            );
        }
        assert_eq!(
            normalize("*", PathPolicy::default()),
            Err(PathError::NotAbsolute)
        );
        assert_eq!(
            normalize("", PathPolicy::default()),
            Err(PathError::NotAbsolute)
        );
    }
}
