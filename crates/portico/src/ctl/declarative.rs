//! Declarative config: `export` writes an instance's (or a namespace's) config as a
//! file, without secrets; `apply` makes an instance's config exactly a file's, always
//! previewed first (the admin's dry run: per object the op and the changed fields),
//! then confirmed on a terminal or by `--yes`, and written as one revision.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use reqwest::Method;

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

/// What `export` exports.
pub enum Exported {
    Instance(Target),
    /// A namespace (its id): every instance in it with its config.
    Namespace(String),
}

pub async fn export(
    session: &Session,
    what: &Exported,
    format: FileFormat,
    file: Option<&Path>,
) -> Result<()> {
    let (path, mut query, name) = match what {
        Exported::Instance(target) => (
            format!("{}/config", target.path()),
            target.query(),
            target.name(),
        ),
        Exported::Namespace(id) => (
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
    target: &Target,
    file: &Path,
    yes: bool,
    write: &WriteArgs,
    output: OutputArgs,
) -> Result<()> {
    let doc = input::read(file)?;
    let object = input::object(&doc, "config")?;
    if object.contains_key("instances") && object.contains_key("namespace") {
        return Err(CtlError::Input(format!(
            "{}: a namespace-wide export: apply each instance's `config` to its instance (one file per instance)",
            doc.name
        )));
    }
    let path = format!("{}/config", target.path());
    let query = target.query();
    let send = |dry_run: bool| {
        session.client.send(
            Method::PUT,
            &path,
            &query,
            Body::Json(doc.value.clone()),
            WriteOptions {
                message: write.message.as_deref(),
                dry_run,
            },
        )
    };
    let preview = send(true).await.map_err(|e| e.in_file(&doc.name))?;
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
    let done = send(false).await.map_err(|e| e.in_file(&doc.name))?;
    if output::print_raw(output.format, &done.body)? {
        return Ok(());
    }
    history::report_written(&preview.body, &done, "applied");
    Ok(())
}
