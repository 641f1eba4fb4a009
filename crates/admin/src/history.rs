//! Rollback and declarative apply: make an instance's config what it was at an earlier
//! revision, or what a file says, by writing one new revision equal to it (history is
//! never deleted or rewritten), with a preview of what would change first (D4).
//!
//! ```text
//! lock instance → objects now (refused when not at the caller's expected revision),
//!   the wanted objects (at the target revision, secrets
//!   opened; or the applied file's)
//! → a secret the old version does not carry (history from before revisions kept
//!   them) is the one the object has now → every old object checked against today's
//!   rules → the difference as changes: creates and updates in dependency order,
//!   deletes in reverse → one revision (commit_many; a dry run rolls it back) → push
//! ```

use model::diff::{self, ObjectDiff, ObjectOp, Objects};
use model::resource::{Resource, ResourceKind};
use model::snapshot::Revision;
use model::validate::{FieldError, ValidationErrors};

use crate::db::{self, Batch, Change, RevisionNote};
use crate::error::ApiError;
use crate::state::AppState;
use crate::sync::{self, Written};

/// What a rollback or an apply did, or would do.
pub(crate) struct Converged {
    /// What changes from the current config to the target's.
    pub diff: Vec<ObjectDiff>,
    /// `None` for a dry run, or when nothing differs (no revision is made then).
    pub written: Option<Written>,
    /// The revision it made, or would make.
    pub revision: Revision,
    /// The instance's revision it started from: what a caller passes as
    /// `expected_revision` to write exactly what a dry run showed.
    pub from: Revision,
    /// For a dry run: the requests whose route it would change.
    pub rerouted: Vec<crate::impact::Rerouted>,
}

/// Rolls the instance back to `target` (0: the empty config), or for a dry run only
/// answers what that would change.
pub(crate) async fn rollback(
    state: &AppState,
    namespace: &str,
    cluster: &str,
    instance: &str,
    target: Revision,
    note: RevisionNote,
) -> Result<Converged, ApiError> {
    let note = RevisionNote {
        message: Some(
            note.message
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("rollback to revision {target}")),
        ),
        ..note
    };
    converge(
        state,
        (namespace, cluster, instance),
        Wanted::Revision(target),
        Batch::Rollback,
        &note,
    )
    .await
}

/// Makes the instance's config exactly `objects` (a declarative apply): creates,
/// updates and deletes in one revision, or for a dry run only answers what would change.
pub(crate) async fn apply(
    state: &AppState,
    namespace: &str,
    cluster: &str,
    instance: &str,
    objects: Objects,
    note: &RevisionNote,
) -> Result<Converged, ApiError> {
    converge(
        state,
        (namespace, cluster, instance),
        Wanted::Objects(objects),
        Batch::Apply,
        note,
    )
    .await
}

/// What the instance's config should become.
enum Wanted {
    /// As it was at this revision.
    Revision(Revision),
    /// These objects.
    Objects(Objects),
}

/// Under the lock of the instance (namespace, cluster, name): the difference from
/// now to `wanted`, written as one revision (unless nothing differs, or it is a dry run) and pushed.
async fn converge(
    state: &AppState,
    (namespace, cluster, instance): (&str, &str, &str),
    wanted: Wanted,
    batch: Batch,
    note: &RevisionNote,
) -> Result<Converged, ApiError> {
    let lock = state.instance_lock(cluster, instance);
    let _in_revision_order = lock.lock().await;
    let (now, current) = state
        .db
        .objects_now(cluster, instance)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("instance {instance:?} does not exist")))?;
    // Here for the answer that writes nothing (nothing differs); the commit checks it
    // again in its transaction.
    if let Some(expected) = note.expected.filter(|e| *e != current) {
        return Err(ApiError::RevisionConflict {
            instance: instance.to_owned(),
            current,
            expected,
            field: "expected_revision".to_owned(),
        });
    }
    let mut wanted = match wanted {
        Wanted::Objects(objects) => objects,
        Wanted::Revision(target) if target > current => {
            return Err(ApiError::invalid_field(
                "rollback",
                "revision",
                format!(
                    "instance {instance:?} is at revision {current}; {target} is in its future"
                ),
            ));
        }
        Wanted::Revision(target) => state.db.objects_at(cluster, instance, target).await?,
    };
    keep_current_secrets(&mut wanted, &now);
    check_all(&wanted, batch)?;
    let diff = diff::diff(&now, &wanted);
    if diff.is_empty() {
        return Ok(Converged {
            diff,
            written: None,
            revision: current,
            from: current,
            rerouted: Vec::new(),
        });
    }
    let changes = changes_for(&diff, &wanted);
    let committed = state
        .db
        .commit_many(
            namespace,
            cluster,
            instance,
            &changes,
            batch,
            note,
            note.dry_run,
            db::now(),
        )
        .await?;
    let revision = committed.revision;
    let mut rerouted = Vec::new();
    let written = if note.dry_run {
        rerouted = crate::impact::rerouted(&now, &wanted, &diff).await;
        None
    } else {
        tracing::info!(cluster, instance, ?batch, revision = %revision,
            objects = changes.len(), "config converged");
        Some(sync::push_committed(state, cluster, instance, committed).await?)
    };
    Ok(Converged {
        diff,
        written,
        revision,
        from: current,
        rerouted,
    })
}

/// Old versions written before revisions kept secrets have none: a certificate
/// without its key takes the key it has now (a consumer's credentials keep theirs in
/// the commit, as any consumer sent back without secrets does).
fn keep_current_secrets(wanted: &mut Objects, now: &Objects) {
    for (key, resource) in wanted.iter_mut() {
        if let (Resource::Certificate(old), Some(Resource::Certificate(current))) =
            (resource, now.get(key))
        {
            if old.key.is_empty() {
                old.key = current.key.clone();
            }
        }
    }
}

/// Every object of the target must pass today's rules; each failure is named by the
/// object (`routes[r1].paths[0]`).
fn check_all(objects: &Objects, batch: Batch) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for ((kind, id), resource) in objects {
        if let Err(e) = resource.validate() {
            errors.extend(e.0.into_iter().map(|f| FieldError {
                field: format!("{}[{id}].{}", kind.as_str(), f.field),
                message: f.message,
            }));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            what: if batch == Batch::Rollback {
                "rollback target"
            } else {
                "config"
            }
            .into(),
            errors: ValidationErrors(errors),
        })
    }
}

/// The changes that turn the current objects into `wanted`: creates and updates in
/// dependency order (what is named exists first), then deletes in reverse (what names
/// goes first).
pub(crate) fn changes_for(diff: &[ObjectDiff], wanted: &Objects) -> Vec<Change> {
    let rank = |kind: ResourceKind| {
        ResourceKind::DEPENDENCY_ORDER
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(usize::MAX)
    };
    let mut writes: Vec<&ObjectDiff> = diff.iter().filter(|d| d.op != ObjectOp::Delete).collect();
    writes.sort_by_key(|d| rank(d.kind));
    let mut deletes: Vec<&ObjectDiff> = diff.iter().filter(|d| d.op == ObjectOp::Delete).collect();
    deletes.sort_by_key(|d| std::cmp::Reverse(rank(d.kind)));
    let mut changes = Vec::with_capacity(diff.len());
    for d in writes {
        if let Some(resource) = wanted.get(&(d.kind, d.id.clone())) {
            changes.push(Change::Upsert(resource.clone()));
        }
    }
    for d in deletes {
        changes.push(Change::Delete {
            kind: d.kind,
            id: d.id.clone(),
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects(items: &[(ResourceKind, serde_json::Value)]) -> Objects {
        diff::objects(
            items
                .iter()
                .map(|(kind, v)| kind.parse(v.to_string().as_bytes()).unwrap()),
        )
    }

    #[test]
    fn named_objects_are_written_first_and_deleted_last() {
        let now = objects(&[
            (
                ResourceKind::Upstreams,
                json!({"id": "old", "nodes": [{"host": "127.0.0.1", "port": 1}]}),
            ),
            (
                ResourceKind::Routes,
                json!({"id": "r", "paths": ["/"], "upstream_id": "old"}),
            ),
        ]);
        let wanted = objects(&[
            (
                ResourceKind::Upstreams,
                json!({"id": "new", "nodes": [{"host": "127.0.0.1", "port": 2}]}),
            ),
            (
                ResourceKind::Routes,
                json!({"id": "r", "paths": ["/"], "upstream_id": "new"}),
            ),
        ]);
        let changes = changes_for(&diff::diff(&now, &wanted), &wanted);
        let order: Vec<(ResourceKind, &str, bool)> = changes
            .iter()
            .map(|c| (c.kind(), c.id(), matches!(c, Change::Delete { .. })))
            .collect();
        assert_eq!(
            order,
            [
                (ResourceKind::Upstreams, "new", false),
                (ResourceKind::Routes, "r", false),
                (ResourceKind::Upstreams, "old", true),
            ]
        );
    }
}
