//! `test-route`: asks the admin which route of the instance takes a request (the
//! gateway's own router on the instance's config) and shows the match, its plugins in
//! running order and every near miss with its reason; first of all, when the
//! instance is unbound (its gateways serve nothing), why.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use reqwest::Method;
use serde_json::{json, Value};

use super::client::{Body, WriteOptions};
use super::error::{CtlError, Result};
use super::output::{self, text, OutputArgs};
use super::{InstanceArgs, Session};

#[derive(clap::Args)]
pub struct TestRouteArgs {
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The Host header (with an optional :port).
    #[arg(long)]
    host: Option<String>,
    /// The request path (a query may follow `?`, or come with --query).
    #[arg(long)]
    path: String,
    /// A header, `name: value`; repeat for more.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A query parameter, `name=value`; repeat for more.
    #[arg(long = "query")]
    query: Vec<String>,
    /// The client's address as the gateway would see it.
    #[arg(long)]
    client_ip: Option<String>,
    /// The request came over TLS.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    at: InstanceArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub async fn run(session: &Session, args: &TestRouteArgs) -> Result<()> {
    let target = args.at.target()?;
    let answer = session
        .client
        .send(
            Method::POST,
            &format!("{}/route-test", target.path()),
            &target.query(),
            Body::Json(request(args)?),
            WriteOptions::default(),
        )
        .await?;
    if !output::print_raw(args.output.format, &answer.body)? {
        print!("{}", render(&answer.body));
    }
    Ok(())
}

/// The route tester's question (`model::tester::RouteTest`) from the flags.
fn request(args: &TestRouteArgs) -> Result<Value> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in &args.headers {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            CtlError::Usage(format!("-H {line:?}: give a header as `name: value`"))
        })?;
        headers
            .entry(name.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    let headers: serde_json::Map<String, Value> = headers
        .into_iter()
        .map(|(name, mut values)| {
            let value = if values.len() == 1 {
                json!(values.remove(0))
            } else {
                json!(values)
            };
            (name, value)
        })
        .collect();
    let mut body = json!({ "method": args.method, "path": args.path, "tls": args.tls });
    if let Some(host) = &args.host {
        body["host"] = json!(host);
    }
    if !headers.is_empty() {
        body["headers"] = Value::Object(headers);
    }
    if !args.query.is_empty() {
        body["query"] = json!(args.query.join("&"));
    }
    if let Some(ip) = &args.client_ip {
        body["client_ip"] = json!(ip);
    }
    Ok(body)
}

/// The answer for people: why the instance is unbound if it is, the outcome, the
/// request as the router saw it, the matched route with its plugins in running order,
/// the near misses closest first.
fn render(result: &Value) -> String {
    let mut out = String::new();
    if let Some(why) = result["unbound"].as_str() {
        let _ = writeln!(out, "UNBOUND: {why}");
        let _ = writeln!(
            out,
            "  the instance's gateways serve nothing: every request gets not_found"
        );
    }
    let outcome = &result["outcome"];
    let kind = outcome["kind"].as_str().unwrap_or("?");
    let mut line = format!("outcome: {kind}");
    if let Some(status) = result["status"].as_u64() {
        let _ = write!(line, " ({status})");
    }
    match kind {
        "method_not_allowed" => {
            let _ = write!(line, ", allow: {}", text(&outcome["allow"]));
        }
        "bad_request" => {
            let _ = write!(line, ": {}", text(&outcome["reason"]));
        }
        "refused" => {
            let _ = write!(
                line,
                ": {} ({})",
                text(&outcome["reason"]),
                text(&outcome["code"])
            );
        }
        _ => {}
    }
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out, "revision: {}", result["revision"]);
    let request = &result["request"];
    if request.is_object() {
        let mut seen = format!("{} {}", text(&request["method"]), text(&request["path"]));
        if let Some(query) = request["query"].as_str() {
            let _ = write!(seen, "?{query}");
        }
        if let Some(host) = request["host"].as_str().filter(|h| !h.is_empty()) {
            let _ = write!(seen, ", host {host}");
        }
        if let Some(ip) = request["client_ip"].as_str() {
            let _ = write!(seen, ", from {ip}");
        }
        let _ = writeln!(out, "request: {seen}");
    }
    let matched = &result["matched"];
    if matched.is_object() {
        let upstream = match matched["upstream_from"].as_str() {
            Some("service") => format!(
                "service {} (upstream {})",
                text(&matched["service_id"]),
                text(&matched["upstream_id"])
            ),
            _ => format!("upstream {}", text(&matched["upstream_id"])),
        };
        let _ = writeln!(
            out,
            "matched: route {} (path {}, host {}) → {upstream}",
            text(&matched["route_id"]),
            text(&matched["path"]),
            text(&matched["host"])
        );
        let plugins = matched["plugins"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if plugins.is_empty() {
            let _ = writeln!(out, "plugins: none");
        } else {
            let _ = writeln!(out, "plugins, in running order:");
            for (i, plugin) in plugins.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {}. {} (priority {}, from {} {})",
                    i + 1,
                    text(&plugin["name"]),
                    plugin["priority"],
                    text(&plugin["source"]["kind"]).replace('_', " "),
                    text(&plugin["source"]["id"])
                );
            }
        }
    }
    let misses = result["near_misses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !misses.is_empty() {
        let _ = writeln!(out, "near misses:");
        let headers = ["ROUTE", "REASON", "EXPECTED", "GOT", "DETAIL"].map(String::from);
        let rows: Vec<Vec<String>> = misses
            .iter()
            .map(|m| {
                let mut detail = text(&m["detail"]);
                if let Some(by) = m["shadowed_by"].as_str() {
                    detail = format!("shadowed by {by}: {detail}");
                }
                vec![
                    text(&m["route_id"]),
                    text(&m["reason"]),
                    text(&m["expected"]),
                    text(&m["got"]),
                    detail,
                ]
            })
            .collect();
        for line in output::grid(&headers, &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
        if let Some(more) = result["truncated"].as_u64().filter(|n| *n > 0) {
            let _ = writeln!(out, "  … and {more} more");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_reads_with_plugins_in_order_and_misses() {
        let result = json!({
            "revision": 4, "outcome": {"kind": "matched"}, "status": null,
            "request": {"method": "GET", "host": "api.example", "path": "/api/x", "client_ip": "1.2.3.4"},
            "matched": {"route_id": "r1", "path": "/api/*", "upstream_from": "route", "upstream_id": "u1",
                "plugins": [{"name": "key-auth", "priority": 2500, "source": {"kind": "route", "id": "r1"}, "config": {}},
                            {"name": "limit-count", "priority": 1002, "source": {"kind": "global_rule", "id": "g"}, "config": {}}]},
            "near_misses": [{"route_id": "r2", "reason": "header_mismatch", "detail": "header x-v", "expected": "2", "got": "1"}],
            "truncated": 0
        });
        assert!(!render(&result).contains("UNBOUND"));
        assert_eq!(
            render(&result),
            "outcome: matched\n\
             revision: 4\n\
             request: GET /api/x, host api.example, from 1.2.3.4\n\
             matched: route r1 (path /api/*, host -) → upstream u1\n\
             plugins, in running order:\n\
             \x20 1. key-auth (priority 2500, from route r1)\n\
             \x20 2. limit-count (priority 1002, from global rule g)\n\
             near misses:\n\
             \x20 ROUTE  REASON           EXPECTED  GOT  DETAIL\n\
             \x20 r2     header_mismatch  2         1    header x-v\n"
        );
    }

    #[test]
    fn an_unbound_instance_says_so_first() {
        let result = json!({
            "revision": 2, "outcome": {"kind": "not_found"}, "status": 404,
            "request": {"method": "GET", "path": "/x"},
            "near_misses": [], "truncated": 0,
            "unbound": "namespace \"ghost\" does not exist"
        });
        assert_eq!(
            render(&result),
            "UNBOUND: namespace \"ghost\" does not exist\n\
             \x20 the instance's gateways serve nothing: every request gets not_found\n\
             outcome: not_found (404)\n\
             revision: 2\n\
             request: GET /x\n"
        );
    }
}
