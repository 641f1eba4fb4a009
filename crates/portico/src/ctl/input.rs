//! Files given with `-f`: JSON or YAML (`-` for stdin), read into JSON before anything
//! is sent, so a file that does not parse is refused here with its name, line and
//! column, and the admin always gets JSON.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::error::{CtlError, Result};

/// A file read and parsed.
pub struct Document {
    /// How to name it in messages: the path, or `stdin`.
    pub name: String,
    pub value: Value,
}

/// Reads `-f PATH` (`-`: stdin). JSON when the name ends in `.json` or the text starts
/// with `{` or `[`; YAML otherwise.
pub fn read(path: &Path) -> Result<Document> {
    let (name, bytes) = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CtlError::Input(format!("cannot read stdin: {e}")))?;
        ("stdin".to_owned(), bytes)
    } else {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| CtlError::Input(format!("cannot read {name}: {e}")))?;
        (name, bytes)
    };
    let value = parse(&name, &bytes)?;
    Ok(Document { name, value })
}

/// Parses `bytes` named `name` as JSON or YAML (see [`read`]).
pub fn parse(name: &str, bytes: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| CtlError::Input(format!("{name}: not UTF-8 text ({e})")))?;
    if text.trim().is_empty() {
        return Err(CtlError::Input(format!("{name}: the file is empty")));
    }
    let json = name.ends_with(".json") || text.trim_start().starts_with(['{', '[']);
    let value: Value = if json {
        serde_json::from_str(text).map_err(|e| {
            CtlError::Input(format!(
                "{name}:{}:{}: not valid JSON: {e}",
                e.line(),
                e.column()
            ))
        })?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            CtlError::Input(format!("{name}{at}: not valid YAML: {e}"))
        })?
    };
    Ok(value)
}

/// The one object a create or update file holds.
pub fn object<'a>(doc: &'a Document, what: &str) -> Result<&'a serde_json::Map<String, Value>> {
    doc.value.as_object().ok_or_else(|| {
        CtlError::Input(format!(
            "{}: must hold one {what} as an object (found {})",
            doc.name,
            kind_of(&doc.value)
        ))
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_yaml_read_alike() {
        let yaml = parse("r.yaml", b"id: r1\npaths: [/a]\n").unwrap();
        let json = parse("r.json", br#"{"id": "r1", "paths": ["/a"]}"#).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(yaml, json!({"id": "r1", "paths": ["/a"]}));
        // From stdin, the first character decides.
        assert_eq!(
            parse("stdin", b" {\"id\": \"x\"}").unwrap(),
            json!({"id": "x"})
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let error = parse("bad.yaml", b"id: r1\npaths: [/a\nx: 1\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("bad.yaml:"), "{error}");
        assert!(error.contains("not valid YAML"), "{error}");
        let error = parse("bad.json", b"{\n  \"id\": r1\n}")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("bad.json:2:"), "{error}");
        let error = parse("empty.yaml", b"\n").unwrap_err().to_string();
        assert_eq!(error, "empty.yaml: the file is empty");
    }
}
