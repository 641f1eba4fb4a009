//! Synthetic route tables for benchmarks: what real tables hold (exact paths,
//! prefixes, templates, a few regexes; a handful of exact and wildcard hosts; some
//! method lists), deterministic per index, with a request that only route `i` takes.

use serde_json::{json, Value};

/// Route number `i`, pointing at `upstream_id`.
pub fn route(i: usize, upstream_id: &str) -> Value {
    let path = match i % 4 {
        0 => format!("/svc{i}/items"),
        1 => format!("/svc{i}/*"),
        2 => format!("/svc{i}/users/{{id}}"),
        // One regex in 40: they are the expensive kind.
        _ if i % 40 == 3 => format!("~/svc{i}/v[0-9]+/.*"),
        _ => format!("/svc{i}/orders/{{id}}/lines/*"),
    };
    let hosts = match i % 5 {
        0 => json!([]),
        1 => json!(["api.example.com"]),
        2 => json!(["*.example.com"]),
        _ => json!([format!("h{}.example.org", i % 50)]),
    };
    let methods = if i % 3 == 0 {
        json!(["GET", "POST"])
    } else {
        json!([])
    };
    json!({
        "id": format!("r{i}"), "paths": [path], "hosts": hosts, "methods": methods,
        "upstream_id": upstream_id,
    })
}

/// `(host, path)` of a GET only route `i` matches.
pub fn request(i: usize) -> (String, String) {
    let path = match i % 4 {
        0 => format!("/svc{i}/items"),
        1 => format!("/svc{i}/anything/below"),
        2 => format!("/svc{i}/users/42"),
        _ if i % 40 == 3 => format!("/svc{i}/v2/x"),
        _ => format!("/svc{i}/orders/7/lines/3"),
    };
    let host = match i % 5 {
        0 => "any.example.net".to_owned(),
        1 => "api.example.com".to_owned(),
        2 => "shop.example.com".to_owned(),
        _ => format!("h{}.example.org", i % 50),
    };
    (host, path)
}
