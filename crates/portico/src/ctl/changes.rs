//! Changes shown to people: the admin's structured differences (history, diffs,
//! rollback and apply previews) and a single write's dry run, as `+`/`~`/`-` lines per
//! object with the fields that change, and the requests that would change route.
//! Secrets are never in the answers; a secret that changes is named, never shown.

use std::fmt::Write as _;

use serde_json::Value;

/// `changes`: `[{"kind", "id", "op", "fields": [{"path", "before", "after",
/// "secret"}], "after", "before"}]` as the admin answers them.
pub fn render(changes: &Value) -> String {
    let Some(list) = changes.as_array().filter(|l| !l.is_empty()) else {
        return "no changes\n".to_owned();
    };
    let mut out = String::new();
    for change in list {
        let kind = change["kind"].as_str().unwrap_or("?");
        let id = change["id"].as_str().unwrap_or("?");
        let op = change["op"].as_str().unwrap_or("?");
        let _ = writeln!(out, "{} {kind}/{id}", symbol(op));
        match op {
            "update" => out.push_str(&fields(&change["fields"])),
            "create" => out.push_str(&created(&change["after"])),
            _ => {}
        }
    }
    out
}

/// A one-line count: `2 to create, 1 to update, 0 to delete`.
pub fn summary(changes: &Value) -> String {
    let list = changes.as_array().map(Vec::as_slice).unwrap_or_default();
    let count = |op: &str| list.iter().filter(|c| c["op"] == op).count();
    format!(
        "{} to create, {} to update, {} to delete",
        count("create"),
        count("update"),
        count("delete")
    )
}

/// The field lines of an update, indented.
pub fn fields(fields: &Value) -> String {
    let mut out = String::new();
    for field in fields.as_array().map(Vec::as_slice).unwrap_or_default() {
        let path = field["path"].as_str().unwrap_or("?");
        if field["secret"].as_bool() == Some(true) {
            let _ = writeln!(out, "    {path}: (secret changed)");
            continue;
        }
        let _ = writeln!(
            out,
            "    {path}: {} → {}",
            shown(&field["before"]),
            shown(&field["after"])
        );
    }
    out
}

/// The top-level fields of an object to be created (its id is in the heading).
fn created(after: &Value) -> String {
    let mut out = String::new();
    if let Some(map) = after.as_object() {
        for (key, value) in map {
            if key != "id" {
                let _ = writeln!(out, "    {key}: {}", shown(value));
            }
        }
    }
    out
}

/// `rerouted`: the sample requests whose route the change would change.
pub fn rerouted(rerouted: &Value) -> String {
    let Some(list) = rerouted.as_array().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut out = String::from("requests that would change route:\n");
    for r in list {
        let host = r["host"].as_str().unwrap_or("*");
        let route = |v: &Value| v.as_str().unwrap_or("(none)").to_owned();
        let query = r["query"]
            .as_str()
            .map_or_else(String::new, |q| format!("?{q}"));
        // What else the request carries to pass the route's predicates.
        let mut with: Vec<String> = r["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, value)| format!("{name}: {}", value.as_str().unwrap_or_default()))
            .collect();
        if let Some(ip) = r["client_ip"].as_str() {
            with.push(format!("from {ip}"));
        }
        let with = if with.is_empty() {
            String::new()
        } else {
            format!(" [{}]", with.join("; "))
        };
        let _ = writeln!(
            out,
            "    {} {host}{}{query}{with}: {} → {}",
            r["method"].as_str().unwrap_or("GET"),
            r["path"].as_str().unwrap_or(""),
            route(&r["before"]),
            route(&r["after"])
        );
    }
    out
}

/// A single write's dry run: `{"op", "revision", "fields", "after", "rerouted"}`.
pub fn dry_run(what: &str, answer: &Value) -> String {
    let op = answer["op"].as_str().unwrap_or("change");
    let mut out = format!(
        "dry run: would {op} {what} as revision {}\n",
        answer["revision"]
    );
    match op {
        "update" if answer["fields"].as_array().is_some_and(|f| f.is_empty()) => {
            out.push_str("    (no field changes)\n");
        }
        "update" => out.push_str(&fields(&answer["fields"])),
        "create" => out.push_str(&created(&answer["after"])),
        _ => {}
    }
    out.push_str(&rerouted(&answer["rerouted"]));
    out
}

fn symbol(op: &str) -> &'static str {
    match op {
        "create" => "+",
        "update" => "~",
        "delete" => "-",
        _ => "?",
    }
}

/// A value in one line: compact JSON, `(absent)` when missing.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "(absent)".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_read_per_object_and_field() {
        let changes = json!([
            {"kind": "routes", "id": "r1", "op": "update", "fields": [
                {"path": "paths[0]", "before": "/a", "after": "/b"},
                {"path": "name", "after": "one"}
            ]},
            {"kind": "certificates", "id": "c1", "op": "update", "fields": [
                {"path": "key", "secret": true}
            ]},
            {"kind": "upstreams", "id": "u2", "op": "create",
             "after": {"id": "u2", "nodes": [{"host": "h", "port": 80, "weight": 1}]}},
            {"kind": "routes", "id": "r3", "op": "delete", "before": {"id": "r3"}}
        ]);
        assert_eq!(
            render(&changes),
            "~ routes/r1\n\
             \x20   paths[0]: \"/a\" → \"/b\"\n\
             \x20   name: (absent) → \"one\"\n\
             ~ certificates/c1\n\
             \x20   key: (secret changed)\n\
             + upstreams/u2\n\
             \x20   nodes: [{\"host\":\"h\",\"port\":80,\"weight\":1}]\n\
             - routes/r3\n"
        );
        assert_eq!(summary(&changes), "1 to create, 2 to update, 1 to delete");
        assert_eq!(render(&json!([])), "no changes\n");
    }

    #[test]
    fn dry_runs_show_the_revision_and_reroutes() {
        let answer = json!({"dry_run": true, "revision": 7, "op": "update",
            "fields": [{"path": "upstream_id", "before": "u1", "after": "u2"}],
            "rerouted": [{"method": "GET", "path": "/x", "before": "r1", "after": null},
                {"method": "POST", "host": "a.com", "path": "/v1/y", "query": "q=1",
                 "headers": {"x-version": "2"}, "client_ip": "10.0.0.0",
                 "before": null, "after": "r1"}]});
        assert_eq!(
            dry_run("route r1", &answer),
            "dry run: would update route r1 as revision 7\n\
             \x20   upstream_id: \"u1\" → \"u2\"\n\
             requests that would change route:\n\
             \x20   GET */x: r1 → (none)\n\
             \x20   POST a.com/v1/y?q=1 [x-version: 2; from 10.0.0.0]: (none) → r1\n"
        );
    }
}
