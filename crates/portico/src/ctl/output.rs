//! How answers are printed: `-o table` (aligned columns for people, the default),
//! `-o json` and `-o yaml` (the admin's JSON as it came, for scripts). Data goes to
//! stdout; messages and errors to stderr.

use std::fmt::Write as _;

use serde_json::Value;

use super::error::Result;

/// The `-o` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns chosen per kind of object.
    Table,
    /// The admin's answer, pretty-printed JSON.
    Json,
    /// The admin's answer as YAML.
    Yaml,
}

/// The `-o` flag of the commands that print data.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
}

/// Prints `value` as JSON or YAML; `false` for `table`, which the caller renders.
pub fn print_raw(format: Format, value: &Value) -> Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?
            );
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", to_yaml(value)?);
            Ok(true)
        }
    }
}

pub fn to_yaml(value: &Value) -> Result<String> {
    Ok(serde_yaml_ng::to_string(value).map_err(anyhow::Error::from)?)
}

/// A column: its header and how a cell is made from one item.
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&Value) -> String,
}

/// The `items` of a listing (none when the answer has no list).
pub fn items(body: &Value) -> &[Value] {
    body["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Items as aligned columns, a header line first; the last column is not padded.
pub fn table(columns: &[Column], items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| one_line((c.cell)(item))).collect())
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    grid(&headers, &rows)
}

/// Rows under headers, aligned.
pub fn grid(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Control characters of a value (a newline in a description) would break the table.
fn one_line(text: String) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        text
    }
}

/// A field shown in a cell: text as it is, lists joined with commas, objects by their
/// keys, absent as `-`.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "-".to_owned(),
        Value::Object(map) => map.keys().cloned().collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A Unix time in seconds as UTC (`2025-01-02T03:04:05Z`), `-` when absent.
pub fn time_secs(value: &Value) -> String {
    match value.as_i64() {
        Some(secs) if secs >= 0 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.unsigned_abs());
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "-".to_owned(),
    }
}

/// A Unix time in milliseconds as UTC.
pub fn time_ms(value: &Value) -> String {
    match value.as_i64() {
        Some(ms) if ms >= 0 => time_secs(&Value::from(ms / 1000)),
        _ => "-".to_owned(),
    }
}

/// `yes`/`no` for a boolean, `-` when absent.
pub fn yes_no(value: &Value) -> String {
    match value.as_bool() {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

/// Lines `key: value` with the keys aligned, for one object shown to people.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_absent_as_dash() {
        let columns = [
            Column {
                header: "ID",
                cell: |v| text(&v["id"]),
            },
            Column {
                header: "PATHS",
                cell: |v| text(&v["paths"]),
            },
            Column {
                header: "HOSTS",
                cell: |v| text(&v["hosts"]),
            },
        ];
        let items = [
            json!({"id": "r1", "paths": ["/a", "/b"], "hosts": ["x.example"]}),
            json!({"id": "route-two", "paths": ["/c"]}),
        ];
        assert_eq!(
            table(&columns, &items),
            "ID         PATHS  HOSTS\n\
             r1         /a,/b  x.example\n\
             route-two  /c     -\n"
        );
    }

    #[test]
    fn times_and_cells() {
        assert_eq!(time_secs(&json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(time_ms(&json!(86_400_000)), "1970-01-02T00:00:00Z");
        assert_eq!(time_secs(&Value::Null), "-");
        assert_eq!(text(&json!({"a": 1, "b": 2})), "a,b");
        assert_eq!(text(&json!(3)), "3");
        assert_eq!(one_line("a\nb".into()), "a b");
    }
}
