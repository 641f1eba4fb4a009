//! Parsing JSON bodies into model types with errors that say what is wrong: where the
//! JSON breaks (line and column), or which field is unknown, missing or of the wrong type,
//! by its full path (`upstream.nodes[0].port`). The admin and the agent both use it, so
//! a bad body gets the same answer from either.

use serde::de::DeserializeOwned;

use crate::validate::FieldError;

/// Why a body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at all (or trailing garbage); the message says where.
    Malformed(String),
    /// JSON whose shape does not fit; `details` names the field when serde knows it.
    Data {
        message: String,
        details: Vec<FieldError>,
    },
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::Malformed(e) => write!(f, "malformed JSON: {e}"),
            JsonError::Data { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for JsonError {}

impl JsonError {
    /// A one-line message; `what` names the thing being parsed ("route", "snapshot").
    pub fn message(&self, what: &str) -> String {
        match self {
            JsonError::Malformed(e) => format!("malformed JSON: {e}"),
            JsonError::Data { message, .. } => format!("invalid {what}: {message}"),
        }
    }

    pub fn details(&self) -> &[FieldError] {
        match self {
            JsonError::Malformed(_) => &[],
            JsonError::Data { details, .. } => details,
        }
    }
}

/// Parses a JSON body into `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        classify(&path, &e.into_inner())
    })?;
    // Trailing characters after the value are malformed JSON too.
    de.end().map_err(|e| classify(".", &e))?;
    Ok(value)
}

/// A data error (unknown or missing field, wrong type or value) names the field by its
/// full path; anything else is malformed JSON.
pub(crate) fn classify(path: &str, e: &serde_json::Error) -> JsonError {
    use serde_json::error::Category;
    if !matches!(e.classify(), Category::Data) {
        return JsonError::Malformed(e.to_string());
    }
    let full = e.to_string();
    // serde_json appends " at line L column C"; the detail keeps just the reason.
    let reason = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(reason, _)| reason);
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| reason.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let base = if path == "." { "" } else { path };
    let field = match named {
        // The path may already end at the named field; do not name it twice.
        Some(name) if base == name || base.ends_with(&format!(".{name}")) => base.to_owned(),
        Some(name) if base.is_empty() => name.to_owned(),
        Some(name) => format!("{base}.{name}"),
        None => base.to_owned(),
    };
    let details = if field.is_empty() {
        Vec::new()
    } else {
        vec![FieldError {
            field,
            message: reason.to_owned(),
        }]
    };
    JsonError::Data {
        message: full,
        details,
    }
}

#[cfg(test)]
mod tests {
    use crate::route::Route;
    use crate::upstream::Upstream;

    use super::*;

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> (String, Vec<String>) {
        let e = parse::<T>(json.as_bytes()).unwrap_err();
        let fields = e.details().iter().map(|d| d.field.clone()).collect();
        (e.message("thing"), fields)
    }

    #[test]
    fn malformed_json_says_where() {
        let (message, fields) = refusal::<Route>("{\"id\": \"r9\", ");
        assert!(message.starts_with("malformed JSON"), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
        assert!(fields.is_empty());
        let (message, _) = refusal::<Route>(r#"{"id":"r","paths":["/"],"upstream_id":"u"} x"#);
        assert!(message.contains("trailing characters"), "{message}");
        let (message, _) = refusal::<Route>("");
        assert!(message.contains("EOF"), "{message}");
    }

    #[test]
    fn data_errors_name_the_field_by_path() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"id":"r","paths":["/"],"upstream_id":"u","colour":"red"}"#,
                "colour",
            ),
            (r#"{"id":"r","upstream_id":"u"}"#, "paths"),
            (r#"{"id":"r","paths":"/","upstream_id":"u"}"#, "paths"),
            (
                r#"{"id":"r","paths":["/", 3],"upstream_id":"u"}"#,
                "paths[1]",
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream":{"nodes":[{"host":"a","port":"80"}]}}"#,
                "upstream.nodes[0].port",
            ),
            (
                r#"{"id":"r","paths":["/"],"upstream":{"nodes":[{"host":"a","port":80,"x":1}]}}"#,
                "upstream.nodes[0].x",
            ),
        ];
        for (json, field) in cases {
            let (message, fields) = refusal::<Route>(json);
            assert_eq!(fields, [*field], "{json}: {message}");
            assert!(message.starts_with("invalid thing: "), "{message}");
        }
        let (_, fields) = refusal::<Upstream>(r#"{"id":"u","nodes":[],"type":"magic"}"#);
        assert_eq!(fields, ["type"]);
    }
}
