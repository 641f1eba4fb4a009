//! Validation that collects every problem with the path of the field it concerns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem found in a value: which field (`upstream.nodes[1].port`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one value; empty means valid.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("; "))
    }
}

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// The JSON body of every error answer of the admin and agent APIs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Lowercase message for people; never quotes a secret.
    pub error: String,
    /// Stable machine code (`not_found`, `revision_conflict`, …).
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub details: Vec<FieldError>,
}

/// Collects problems while walking a value; `at` nests field paths.
#[derive(Debug, Default)]
pub struct Validator {
    prefix: String,
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with the field `field` under the current path.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let field = if self.prefix.is_empty() {
            field.to_owned()
        } else if field.is_empty() {
            self.prefix.clone()
        } else if field.starts_with('[') {
            format!("{}{}", self.prefix, field)
        } else {
            format!("{}.{}", self.prefix, field)
        };
        self.errors.push(FieldError {
            field,
            message: message.into(),
        });
    }

    /// Runs `f` with `segment` appended to the field path (`nodes[1]`, `upstream`).
    pub fn at(&mut self, segment: &str, f: impl FnOnce(&mut Validator)) {
        let saved = self.prefix.clone();
        self.prefix = if saved.is_empty() {
            segment.to_owned()
        } else if segment.starts_with('[') {
            format!("{saved}{segment}")
        } else {
            format!("{saved}.{segment}")
        };
        f(self);
        self.prefix = saved;
    }

    pub fn finish(self) -> Result<(), ValidationErrors> {
        ValidationErrors(self.errors).into_result()
    }
}

/// Ids name keys in the store and rows in the DB: short, URL- and key-safe.
pub fn check_id(v: &mut Validator, field: &str, id: &str) {
    if id.is_empty() {
        v.error(field, "must not be empty");
    } else if id.len() > 64 {
        v.error(field, "must be at most 64 characters");
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        v.error(field, "may contain only letters, digits, '-', '_' and '.'");
    }
}

/// A host name as used in `Host` headers and upstream nodes (no port, no scheme).
pub fn is_valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_are_joined() {
        let mut v = Validator::new();
        v.at("upstream", |v| {
            v.at("nodes[1]", |v| v.error("port", "must be 1-65535"));
            v.error("", "bad");
        });
        v.error("id", "must not be empty");
        let errs = v.finish().unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["upstream.nodes[1].port", "upstream", "id"]);
        assert_eq!(
            errs.to_string(),
            "upstream.nodes[1].port: must be 1-65535; upstream: bad; id: must not be empty"
        );
    }

    #[test]
    fn ids_and_hosts() {
        for (id, ok) in [("r1", true), ("", false), ("a/b", false), ("a.b-c_d", true)] {
            let mut v = Validator::new();
            check_id(&mut v, "id", id);
            assert_eq!(v.finish().is_ok(), ok, "{id}");
        }
        for (h, ok) in [
            ("example.com", true),
            ("127.0.0.1", true),
            ("::1", true),
            ("-bad.com", false),
            ("a..b", false),
            ("", false),
            ("a b", false),
        ] {
            assert_eq!(is_valid_host(h), ok, "{h}");
        }
    }
}
