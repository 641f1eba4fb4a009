//! Declarative config: `export` writes an instance's (or a namespace's) config as a
//! file, without secrets; `apply` makes an instance's config exactly a file's (or each
//! instance a namespace file lists its own), always previewed first (the admin's dry
//! run: per object the op and the changed fields), then confirmed on a terminal or by
//! `--yes`, and written as one revision per instance — only if each instance is still
//! at the revision the preview saw (`expected_revision`), so what was confirmed is
//! what is written.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use super::changes;
use super::client::{seg, Body, WriteOptions};
use super::error::{CtlError, Result};
use super::history;
use super::input;
use super::output::{self, OutputArgs};
use super::{Session, Target, WriteArgs};

/// The format `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Yaml,
    Json,
}

/// What `export` exports, or `apply` applies to.
pub enum Subject {
    Instance(Target),
    /// A namespace (its id): every instance in it with its config.
    Namespace(String),
}

pub async fn export(
    session: &Session,
    what: &Subject,
    format: FileFormat,
    sealed_secrets: bool,
    file: Option<&Path>,
) -> Result<()> {
    let (path, mut query, name) = match what {
        Subject::Instance(target) => (
            format!("{}/config", target.path()),
            target.query(),
            target.name(),
        ),
        Subject::Namespace(id) => (
            format!("/namespaces/{}/config", seg(id)),
            Vec::new(),
            format!("namespace {id}"),
        ),
    };
    query.push((
        "format",
        match format {
            FileFormat::Yaml => "yaml",
            FileFormat::Json => "json",
        }
        .to_owned(),
    ));
    if sealed_secrets {
        query.push(("secrets", "sealed".to_owned()));
    }
    let answer = session.client.get(&path, &query).await?;
    // YAML as the admin wrote it; JSON pretty-printed.
    let mut text = match format {
        FileFormat::Yaml => answer.text.clone(),
        FileFormat::Json => {
            serde_json::to_string_pretty(&answer.body).map_err(anyhow::Error::from)?
        }
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    match file {
        None => {
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
        }
        Some(file) => {
            std::fs::write(file, &text)
                .with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!("exported {name} to {}", file.display());
        }
    }
    Ok(())
}

pub async fn apply(
    session: &Session,
    subject: &Subject,
    file: &Path,
    yes: bool,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    let doc = input::read(file)?;
    let object = input::object(&doc, "config")?;
    let namespace_file = object.contains_key("instances");
    match subject {
        Subject::Instance(_) if namespace_file => Err(CtlError::Input(format!(
            "{}: a namespace-wide file: apply it with `portico ctl apply --namespace-wide -f {}` (--namespace NS)",
            doc.name, doc.name
        ))),
        Subject::Instance(target) => apply_instance(session, target, &doc, yes, write, output).await,
        Subject::Namespace(_) if !namespace_file => Err(CtlError::Input(format!(
            "{}: not a namespace-wide file (one with `instances`, as `export --namespace-wide` writes)",
            doc.name
        ))),
        Subject::Namespace(id) => apply_namespace(session, id, &doc, yes, write, output).await,
    }
}

async fn apply_instance(
    session: &Session,
    target: &Target,
    doc: &input::Document,
    yes: bool,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    let path = format!("{}/config", target.path());
    let query = target.query();
    let send = |dry_run: bool, expected_revision: Option<u64>| {
        session.client.send(
            Method::PUT,
            &path,
            &query,
            Body::Json(doc.value.clone()),
            WriteOptions {
                message: write.message.as_deref(),
                dry_run,
                expected_revision,
            },
        )
    };
    let preview = send(true, None).await.map_err(|e| e.in_file(&doc.name))?;
    let changed = preview.body["changed"].as_bool() != Some(false);
    let shown = format!(
        "apply {} to {} (would be revision {}): {}\n{}{}",
        doc.name,
        target.name(),
        preview.body["revision"],
        changes::summary(&preview.body["changes"]),
        changes::render(&preview.body["changes"]),
        changes::rerouted(&preview.body["rerouted"])
    );
    if !history::go_ahead(&preview.body, &shown, changed, yes, write, output, || {
        format!("apply these changes to {}", target.name())
    })? {
        return Ok(());
    }
    let done = send(false, preview.body["from_revision"].as_u64())
        .await
        .map_err(|e| {
            e.since_preview(&format!("the instance {}", target.name()))
                .in_file(&doc.name)
        })?;
    if output::print_raw(output.format, &done.body)? {
        return Ok(());
    }
    history::report_written(&done, "applied");
    Ok(())
}

/// `apply --namespace-wide`: every instance the file lists, previewed together, each
/// written only if still at the revision its preview saw.
async fn apply_namespace(
    session: &Session,
    namespace: &str,
    doc: &input::Document,
    yes: bool,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    let path = format!("/namespaces/{}/config", seg(namespace));
    let send = |body: Value, dry_run: bool| {
        session.client.send(
            Method::PUT,
            &path,
            &[],
            Body::Json(body),
            WriteOptions {
                message: write.message.as_deref(),
                dry_run,
                expected_revision: None,
            },
        )
    };
    let preview = send(doc.value.clone(), true)
        .await
        .map_err(|e| e.in_file(&doc.name))?;
    let listed = preview.body["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let changed = listed.iter().any(|i| i["changed"].as_bool() != Some(false));
    let mut shown = format!("apply {} to namespace {namespace}:\n", doc.name);
    for one in listed {
        let name = instance_name(one);
        if one["changed"].as_bool() == Some(false) {
            shown.push_str(&format!(
                "{name}: no changes (revision {})\n",
                one["revision"]
            ));
            continue;
        }
        shown.push_str(&format!(
            "{name} (would be revision {}): {}\n{}{}",
            one["revision"],
            changes::summary(&one["changes"]),
            changes::render(&one["changes"]),
            changes::rerouted(&one["rerouted"])
        ));
    }
    if !history::go_ahead(&preview.body, &shown, changed, yes, write, output, || {
        format!("apply these changes to namespace {namespace}")
    })? {
        return Ok(());
    }
    // Each listed instance pinned to the revision its preview saw (the answer lists
    // them in the file's order).
    let mut body = doc.value.clone();
    if let Some(instances) = body["instances"].as_array_mut() {
        for (entry, seen) in instances.iter_mut().zip(listed) {
            if let Some(entry) = entry.as_object_mut() {
                entry.insert("expected_revision".into(), seen["from_revision"].clone());
            }
        }
    }
    let done = send(body, false).await.map_err(|e| {
        let what = conflicting(&e, listed)
            .map_or_else(|| "an instance".to_owned(), |n| format!("the instance {n}"));
        e.since_preview(&what).in_file(&doc.name)
    })?;
    if output::print_raw(output.format, &done.body)? {
        return Ok(());
    }
    for one in done.body["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = instance_name(one);
        match one["sync"].as_str() {
            Some(sync) => println!("applied {name}: revision {} ({sync})", one["revision"]),
            None => println!("unchanged {name}: revision {}", one["revision"]),
        }
        if one["sync"] == "pending" {
            eprintln!(
                "note: {name}: the cluster's agent has not got it yet; the admin keeps trying"
            );
        }
    }
    Ok(())
}

/// `cluster/instance` of an entry of a namespace-wide answer.
fn instance_name(one: &Value) -> String {
    format!(
        "{}/{}",
        one["cluster"].as_str().unwrap_or("?"),
        one["instance"].as_str().unwrap_or("?")
    )
}

/// The instance a revision conflict names (its detail's field is
/// `instances[N].expected_revision`), as `cluster/instance`.
fn conflicting(e: &CtlError, listed: &[Value]) -> Option<String> {
    let CtlError::RevisionConflict { details, .. } = e else {
        return None;
    };
    details.iter().find_map(|(field, _)| {
        let at: usize = field
            .strip_prefix("instances[")?
            .strip_suffix("].expected_revision")?
            .parse()
            .ok()?;
        listed.get(at).map(instance_name)
    })
}
