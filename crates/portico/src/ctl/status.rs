//! Where things stand: the admin process (who reconciles), the instances (online or
//! missing, the revision the admin holds and the one the store serves) and an
//! instance's gateway nodes (whether each serves its config or is unbound, the revision
//! it serves, where its config came from); and the API's OpenAPI document.

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
            header: "UNHEALTHY_UPSTREAM_NODES",
            cell: unhealthy,
        },
        Column {
            header: "UPDATED",
            cell: |v| time_ms(&v["updated_at_ms"]),
        },
    ];
    print!("{}", output::table(&columns, output::items(&answer.body)));
    let convergence = session
        .client
        .get(&format!("{}/convergence", target.path()), &target.query())
        .await?;
    println!("{}", reached(&convergence.body));
    Ok(())
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
    fn an_unbound_node_says_why_it_serves_nothing() {
        assert_eq!(serving(&json!({"node_id": "n1"})), "yes");
        assert_eq!(
            serving(&json!({"node_id": "n1", "unbound": "namespace \"x\" does not exist"})),
            "no: namespace \"x\" does not exist"
        );
    }
}
