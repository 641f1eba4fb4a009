//! Where things stand: the admin process (who reconciles), the instances (online or
//! missing, the revision the admin holds and the one the store serves) and an
//! instance's gateway nodes (whether each serves its config or is unbound, the revision
//! it serves, where its config came from, its load, the objects it skips, the
//! upstream nodes it sees down; the nodes gone, with when); and the API's OpenAPI
//! document.

use serde_json::Value;

use super::client::seg;
use super::declarative::FileFormat;
use super::error::Result;
use super::output::{self, text, time_ms, time_secs, yes_no, Column, OutputArgs};
use super::{Session, Target};

pub async fn status(session: &Session, output: OutputArgs) -> Result<()> {
    let answer = session.client.get("/status", &[]).await?;
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    let body = &answer.body;
    print!(
        "{}",
        output::fields(&[
            ("admin", session.client.admin().to_owned()),
            ("process", text(&body["holder"])),
            ("reconciler", yes_no(&body["reconciler"])),
            ("lease holder", text(&body["lease"]["holder"])),
            ("lease expires", time_ms(&body["lease"]["expires_at_ms"])),
        ])
    );
    Ok(())
}

/// The instances of a cluster, of a namespace (both: those of the cluster in the
/// namespace), or of every cluster.
pub async fn instances(
    session: &Session,
    cluster: Option<&str>,
    namespace: Option<&str>,
    output: OutputArgs,
) -> Result<()> {
    let (mut body, filtered) = match (cluster, namespace) {
        (Some(cluster), _) => (
            session
                .client
                .get(&format!("/clusters/{}/instances", seg(cluster)), &[])
                .await?
                .body,
            namespace,
        ),
        (None, Some(ns)) => (
            session
                .client
                .get(&format!("/namespaces/{}/instances", seg(ns)), &[])
                .await?
                .body,
            None,
        ),
        (None, None) => {
            let clusters = session.client.get("/clusters", &[]).await?.body;
            let mut items = Vec::new();
            for c in clusters["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let Some(name) = c["name"].as_str() else {
                    continue;
                };
                let answer = session
                    .client
                    .get(&format!("/clusters/{}/instances", seg(name)), &[])
                    .await?;
                items.extend(answer.body["items"].as_array().cloned().unwrap_or_default());
            }
            (serde_json::json!({ "items": items }), None)
        }
    };
    if let (Some(ns), Some(items)) = (filtered, body["items"].as_array_mut()) {
        items.retain(|i| i["namespace"] == ns);
    }
    if output::print_raw(output.format, &body)? {
        return Ok(());
    }
    let columns = [
        Column {
            header: "CLUSTER",
            cell: |v| text(&v["cluster"]),
        },
        Column {
            header: "INSTANCE",
            cell: |v| text(&v["name"]),
        },
        Column {
            header: "NAMESPACE",
            cell: |v| text(&v["namespace"]),
        },
        Column {
            header: "STATUS",
            cell: |v| text(&v["status"]),
        },
        Column {
            header: "REVISION",
            cell: |v| text(&v["revision"]),
        },
        Column {
            header: "APPLIED",
            cell: |v| text(&v["applied_revision"]),
        },
        Column {
            header: "LAST_SEEN",
            cell: |v| time_secs(&v["last_seen"]),
        },
    ];
    print!("{}", output::table(&columns, output::items(&body)));
    Ok(())
}

pub async fn nodes(session: &Session, target: &Target, output: OutputArgs) -> Result<()> {
    let answer = session
        .client
        .get(&format!("{}/nodes", target.path()), &target.query())
        .await?;
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    let columns = [
        Column {
            header: "NODE",
            cell: |v| text(&v["node_id"]),
        },
        Column {
            header: "ADDRESS",
            cell: |v| text(&v["address"]),
        },
        Column {
            header: "SERVING",
            cell: serving,
        },
        Column {
            header: "REVISION",
            cell: |v| text(&v["applied_revision"]),
        },
        Column {
            header: "CONFIG_FROM",
            cell: |v| text(&v["config_source"]),
        },
        Column {
            header: "REQ/S",
            cell: |v| per_second(&v["requests_per_second"]),
        },
        Column {
            header: "5XX",
            cell: |v| share(&v["error_rate"]),
        },
        Column {
            header: "CONNS",
            cell: |v| text(&v["load"]["connections"]),
        },
        Column {
            header: "IN_FLIGHT",
            cell: |v| text(&v["load"]["in_flight"]),
        },
        Column {
            header: "SKIPPED",
            cell: |v| count(&v["skipped"]),
        },
        Column {
            header: "UNHEALTHY_UPSTREAM_NODES",
            cell: unhealthy,
        },
        Column {
            header: "UPDATED",
            cell: |v| time_ms(&v["updated_at_ms"]),
        },
    ];
    print!("{}", output::table(&columns, output::items(&answer.body)));
    let gone = answer.body["gone"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !gone.is_empty() {
        let columns = [
            Column {
                header: "GONE_NODE",
                cell: |v| text(&v["node_id"]),
            },
            Column {
                header: "ADDRESS",
                cell: |v| text(&v["address"]),
            },
            Column {
                header: "LAST_SEEN",
                cell: |v| time_ms(&v["last_seen_ms"]),
            },
            Column {
                header: "GONE_AT",
                cell: |v| time_ms(&v["gone_at_ms"]),
            },
        ];
        print!("\n{}", output::table(&columns, gone));
    }
    let convergence = session
        .client
        .get(&format!("{}/convergence", target.path()), &target.query())
        .await?;
    print!("{}", summary(&convergence.body));
    // The spread of the last revisions' times; an admin too old to answer it
    // (404) leaves the line out rather than failing the command.
    if let Ok(history) = session
        .client
        .get(
            &format!("{}/convergence/history", target.path()),
            &target.query(),
        )
        .await
    {
        println!("{}", convergence_times(&history.body));
    }
    Ok(())
}

/// One line on how long the last revisions took to reach every node: nearest-rank
/// p50, p99 and the longest, over those that converged.
fn convergence_times(history: &Value) -> String {
    let listed = history["items"].as_array().map_or(0, Vec::len);
    let count = history["summary"]["count"].as_u64().unwrap_or_default();
    if count == 0 {
        return format!("last {listed} revisions: none reached every node with a known time");
    }
    let ms = |v: &Value| {
        v.as_i64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))
    };
    let summary = &history["summary"];
    format!(
        "last {listed} revisions: {count} reached every node, p50 {}, p99 {}, max {}",
        ms(&summary["p50_ms"]),
        ms(&summary["p99_ms"]),
        ms(&summary["max_ms"]),
    )
}

/// After the tables: the latest revision's reach, the instance's load, and each
/// object a node skips, with why.
fn summary(convergence: &Value) -> String {
    let mut out = String::new();
    let agent = &convergence["agent"];
    // Everything below is the agent's last report: say when it is not current.
    if agent["state"].is_string() && agent["state"] != "ok" {
        out.push_str(&format!(
            "agent {} since {} ({}): nodes as last reported at {}\n",
            text(&agent["state"]),
            time_ms(&agent["since_ms"]),
            text(&agent["error"]),
            time_ms(&agent["last_contact_ms"]),
        ));
    }
    out.push_str(&format!(
        "{}\n{}\n",
        reached(convergence),
        instance_load(convergence)
    ));
    for node in convergence["skipped"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        for object in node["objects"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            out.push_str(&format!(
                "{} skips {}: {}\n",
                text(&node["node_id"]),
                text(&object["key"]),
                text(&object["reason"])
            ));
        }
    }
    out
}

/// One line on the instance's load: its online nodes' requests per second and 5xx
/// share over the last minute, and their connections now.
fn instance_load(convergence: &Value) -> String {
    let load = &convergence["load"];
    format!(
        "load: {} req/s, {} 5xx, {} connections ({} of {} nodes reporting)",
        per_second(&load["requests_per_second"]),
        share(&load["error_rate"]),
        text(&load["connections"]),
        text(&load["nodes_reporting"]),
        text(&convergence["nodes"]),
    )
}

/// Requests per second with two decimals; `-` when unknown.
fn per_second(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
}

/// A share (0 to 1) as a percentage with one decimal; `-` when unknown (no request).
fn share(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// The length of a list; `-` for none.
fn count(value: &Value) -> String {
    match value.as_array().map(Vec::len) {
        Some(n) if n > 0 => n.to_string(),
        _ => "-".to_owned(),
    }
}

/// One line on the instance's latest revision: on how many of its nodes, and how long
/// it took to reach them all.
fn reached(convergence: &Value) -> String {
    let (revision, reached, nodes) = (
        text(&convergence["revision"]),
        text(&convergence["reached"]),
        text(&convergence["nodes"]),
    );
    match convergence["took_ms"].as_i64() {
        Some(ms) => format!("revision {revision} reached {reached} of {nodes} nodes in {ms} ms"),
        None => format!("revision {revision} reached {reached} of {nodes} nodes"),
    }
}

/// `yes`, or `no: <why>` for a node that serves nothing because its instance is
/// unbound (its namespace does not exist, or is not the node's own).
fn serving(node: &Value) -> String {
    match node["unbound"].as_str() {
        Some(why) => format!("no: {why}"),
        None => "yes".to_owned(),
    }
}

/// `GET /openapi.json`: the document as the admin serves it, pretty-printed as JSON
/// or converted to YAML, keys in the admin's order.
pub async fn openapi(session: &Session, format: FileFormat) -> Result<()> {
    let answer = session.client.get("/openapi.json", &[]).await?;
    // A YAML value keeps the order of keys (`openapi`, `info`, `paths` …), which
    // serde_json's map would sort.
    let doc: serde_yaml_ng::Value = serde_json::from_str(&answer.text)
        .map_err(|e| anyhow::anyhow!("the admin's OpenAPI document is not JSON: {e}"))?;
    match format {
        FileFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?
        ),
        FileFormat::Yaml => print!(
            "{}",
            serde_yaml_ng::to_string(&doc).map_err(anyhow::Error::from)?
        ),
    }
    Ok(())
}

/// `upstream/address` of each upstream node a gateway sees as unhealthy.
fn unhealthy(node: &Value) -> String {
    let mut out = Vec::new();
    for upstream in node["upstreams"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        for n in upstream["nodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if n["healthy"] == false {
                out.push(format!(
                    "{}/{}",
                    text(&upstream["upstream_id"]),
                    text(&n["address"])
                ));
            }
        }
    }
    if out.is_empty() {
        "-".to_owned()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_load_columns_and_the_instance_summary() {
        let node = json!({"node_id": "n1", "requests_per_second": 0.6666666666666666,
            "error_rate": 0.25, "load": {"requests": 40, "errors": 10, "connections": 3,
            "in_flight": 0}, "skipped": [{"key": "k", "reason": "r"}]});
        assert_eq!(per_second(&node["requests_per_second"]), "0.67");
        assert_eq!(share(&node["error_rate"]), "25.0%");
        assert_eq!(count(&node["skipped"]), "1");
        // A node that reports no load, or served nothing: dashes, not zeros.
        let old = json!({"node_id": "n2"});
        assert_eq!(per_second(&old["requests_per_second"]), "-");
        assert_eq!(share(&old["error_rate"]), "-");
        assert_eq!(count(&old["skipped"]), "-");
        let convergence = json!({"revision": 7, "reached": 2, "nodes": 2,
            "load": {"nodes_reporting": 1, "requests_per_second": 0.6666666666666666,
                     "error_rate": 0.25, "requests": 40, "errors": 10,
                     "connections": 3, "in_flight": 0},
            "skipped": [{"node_id": "n1", "objects": [
                {"key": "/portico/instances/i/routes/r9", "reason": "unknown upstream"}]}]});
        assert_eq!(
            summary(&convergence),
            "revision 7 reached 2 of 2 nodes\n\
             load: 0.67 req/s, 25.0% 5xx, 3 connections (1 of 2 nodes reporting)\n\
             n1 skips /portico/instances/i/routes/r9: unknown upstream\n"
        );
    }

    #[test]
    fn a_stale_report_is_said_to_be_one() {
        let convergence = json!({"revision": 7, "reached": 2, "nodes": 2,
            "agent": {"state": "unreachable", "since_ms": 1_000, "last_contact_ms": 900,
                      "error": "agent unreachable: connection refused"}});
        let out = summary(&convergence);
        assert!(
            out.starts_with("agent unreachable since ")
                && out.contains(
                    "(agent unreachable: connection refused): nodes as last reported at "
                ),
            "{out}"
        );
        let fresh = json!({"revision": 7, "reached": 2, "nodes": 2, "agent": {"state": "ok"}});
        assert!(
            summary(&fresh).starts_with("revision 7"),
            "{}",
            summary(&fresh)
        );
    }

    #[test]
    fn the_convergence_times_line() {
        let history = json!({"revision": 9, "items": [{}, {}, {}],
            "summary": {"count": 2, "p50_ms": 12, "p99_ms": 40, "max_ms": 40}});
        assert_eq!(
            convergence_times(&history),
            "last 3 revisions: 2 reached every node, p50 12 ms, p99 40 ms, max 40 ms"
        );
        let none = json!({"revision": 1, "items": [{}], "summary": {"count": 0}});
        assert_eq!(
            convergence_times(&none),
            "last 1 revisions: none reached every node with a known time"
        );
    }

    #[test]
    fn an_unbound_node_says_why_it_serves_nothing() {
        assert_eq!(serving(&json!({"node_id": "n1"})), "yes");
        assert_eq!(
            serving(&json!({"node_id": "n1", "unbound": "namespace \"x\" does not exist"})),
            "no: namespace \"x\" does not exist"
        );
    }
}
