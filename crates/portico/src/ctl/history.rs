//! An instance's history: its revisions, one revision with what it changed, the
//! difference between two, and a rollback that is always previewed first (a dry run),
//! then confirmed on a terminal or by `--yes`, and written only if the instance is
//! still at the revision the preview saw (`expected_revision`).

use reqwest::Method;
use serde_json::Value;

use super::changes;
use super::client::{Body, WriteOptions};
use super::error::Result;
use super::output::{self, text, time_secs, Column, OutputArgs};
use super::prompt;
use super::{Session, Target, WriteArgs};

pub async fn list(
    session: &Session,
    target: &Target,
    limit: u32,
    before: Option<u64>,
    output: OutputArgs,
) -> Result<()> {
    let mut query = target.query();
    query.push(("limit", limit.to_string()));
    if let Some(before) = before {
        query.push(("before", before.to_string()));
    }
    let answer = session
        .client
        .get(&format!("{}/revisions", target.path()), &query)
        .await?;
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    let columns = [
        Column {
            header: "REVISION",
            cell: |v| text(&v["revision"]),
        },
        Column {
            header: "OP",
            cell: |v| text(&v["op"]),
        },
        Column {
            header: "AUTHOR",
            cell: |v| text(&v["author"]),
        },
        Column {
            header: "TIME",
            cell: |v| time_secs(&v["at"]),
        },
        Column {
            header: "OBJECTS",
            cell: |v| objects(&v["objects"]),
        },
        Column {
            header: "MESSAGE",
            cell: |v| text(&v["message"]),
        },
    ];
    let items = output::items(&answer.body);
    print!("{}", output::table(&columns, items));
    Ok(())
}

/// `kind/id` of the objects a revision wrote, the first few.
fn objects(list: &Value) -> String {
    const SHOWN: usize = 3;
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "-".to_owned();
    }
    let mut names: Vec<String> = list
        .iter()
        .take(SHOWN)
        .map(|o| format!("{}/{}", text(&o["kind"]), text(&o["id"])))
        .collect();
    if list.len() > SHOWN {
        names.push(format!("+{} more", list.len() - SHOWN));
    }
    names.join(",")
}

pub async fn show(
    session: &Session,
    target: &Target,
    revision: u64,
    output: OutputArgs,
) -> Result<()> {
    let answer = session
        .client
        .get(
            &format!("{}/revisions/{revision}", target.path()),
            &target.query(),
        )
        .await?;
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    let body = &answer.body;
    print!(
        "{}",
        output::fields(&[
            ("revision", text(&body["revision"])),
            ("op", text(&body["op"])),
            ("author", text(&body["author"])),
            ("time", time_secs(&body["at"])),
            ("message", text(&body["message"])),
        ])
    );
    print!("{}", changes::render(&body["changes"]));
    Ok(())
}

pub async fn diff(
    session: &Session,
    target: &Target,
    from: u64,
    to: Option<u64>,
    output: OutputArgs,
) -> Result<()> {
    let mut query = target.query();
    query.push(("from", from.to_string()));
    if let Some(to) = to {
        query.push(("to", to.to_string()));
    }
    let answer = session
        .client
        .get(&format!("{}/diff", target.path()), &query)
        .await?;
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    println!(
        "from revision {} to {}: {}",
        answer.body["from"],
        answer.body["to"],
        changes::summary(&answer.body["changes"])
    );
    print!("{}", changes::render(&answer.body["changes"]));
    Ok(())
}

/// Previews the rollback (dry run), then, unless `--dry-run` or nothing would change,
/// asks (or takes `--yes`) and rolls back.
pub async fn rollback(
    session: &Session,
    target: &Target,
    revision: u64,
    yes: bool,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    let path = format!("{}/revisions/{revision}/rollback", target.path());
    let preview = session
        .client
        .send(
            Method::POST,
            &path,
            &target.query(),
            Body::None,
            WriteOptions {
                message: write.message.as_deref(),
                dry_run: true,
                expected_revision: None,
            },
        )
        .await?;
    let changed = preview.body["changed"].as_bool() != Some(false);
    let shown = format!(
        "rollback of {} to revision {revision} (would be revision {}): {}\n{}{}",
        target.name(),
        preview.body["revision"],
        changes::summary(&preview.body["changes"]),
        changes::render(&preview.body["changes"]),
        changes::rerouted(&preview.body["rerouted"])
    );
    if !go_ahead(&preview.body, &shown, changed, yes, write, output, || {
        format!("roll {} back to revision {revision}", target.name())
    })? {
        return Ok(());
    }
    let done = session
        .client
        .send(
            Method::POST,
            &path,
            &target.query(),
            Body::None,
            WriteOptions {
                message: write.message.as_deref(),
                dry_run: false,
                // What was confirmed is what is written: refused if the instance
                // moved on since the preview.
                expected_revision: preview.body["from_revision"].as_u64(),
            },
        )
        .await
        .map_err(|e| e.since_preview(&format!("the instance {}", target.name())))?;
    if output::print_raw(output.format, &done.body)? {
        return Ok(());
    }
    report_written(&done, "rolled back");
    Ok(())
}

/// After a preview: prints it (`shown` for people; with `-o json|yaml` stdout gets one
/// document, the preview when nothing more happens, else the final answer, and a
/// question shows the preview on stderr) and says whether to write: not for a dry run
/// or when nothing would change; else with `--yes` or when the person says yes (a
/// no is an error: exit 1, so that `&&` stops).
pub fn go_ahead(
    preview: &Value,
    shown: &str,
    changed: bool,
    yes: bool,
    write: &WriteArgs,
    output: OutputArgs,
    question: impl FnOnce() -> String,
) -> Result<bool> {
    let raw = output.format != output::Format::Table;
    if raw {
        if write.dry_run || !changed {
            output::print_raw(output.format, preview)?;
        }
    } else {
        print!("{shown}");
    }
    if write.dry_run {
        return Ok(false);
    }
    if !changed {
        eprintln!("nothing to change");
        return Ok(false);
    }
    if yes {
        return Ok(true);
    }
    if raw && prompt::interactive() {
        eprint!("{shown}");
    }
    if prompt::confirm(&question())? {
        Ok(true)
    } else {
        Err(anyhow::anyhow!("cancelled: nothing written").into())
    }
}

/// Says which revision a rollback or apply made and whether it reached the store (the
/// write named the revision the preview saw, so it is the one the preview announced).
pub fn report_written(done: &super::client::Answer, what: &str) {
    let revision = &done.body["revision"];
    let sync = done.header("x-portico-sync").unwrap_or("unknown");
    println!("{what}: revision {revision} ({sync})");
    if sync == "pending" {
        eprintln!("note: the cluster's agent has not got it yet; the admin keeps trying");
    }
}
