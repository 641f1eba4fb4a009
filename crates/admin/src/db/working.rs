//! The rows one revision touches, read once at the start of its transaction and kept
//! current in memory while its changes are checked one after the other, then written
//! back in a few multi-row statements.
//!
//! A revision of one change reads the object, what it names and (for a delete) what
//! names it; an apply of 10 000 objects does the same in chunks of [`CHUNK`], so its
//! cost is tens of queries instead of six round trips per object. The revision bump
//! that opens the transaction holds the instance's row, so no other write of the
//! instance can change these rows while they are kept in memory.
//!
//! The checks are those of a single change, in order, each against the state the
//! changes before it left: duplicate ids, references that must exist, objects still
//! named by others, consumers' kept secrets and identities unique in the instance.

use std::collections::{BTreeSet, HashMap, HashSet};

use model::resource::{Resource, ResourceKind};
use model::validate::{FieldError, ValidationErrors};
use sqlx::{Any, Transaction};

use super::{text, Db};
use crate::error::ApiError;

/// Most rows one statement reads or writes (7 columns each: 3 500 parameters, under
/// every database's limit).
const CHUNK: usize = 500;

type Key = (ResourceKind, String);

/// What a field of an object names: `(field, kind, id)`, as `Resource::references`.
type Reference = (String, ResourceKind, String);

/// One change as checked: what the revision stores and logs of it.
pub(super) struct Written {
    pub op: &'static str,
    pub created: bool,
    pub stored: super::Change,
    /// The object as the change log shows it (no secret, no hash); `None` for deletes.
    pub logged: Option<String>,
    /// The object as stored (secrets sealed); `None` for deletes.
    pub body: Option<String>,
    /// The object before, as the API shows it; `None` when it did not exist.
    pub previous: Option<serde_json::Value>,
}

/// The revision's view of the instance's rows.
#[derive(Default)]
pub(super) struct Working {
    /// Every object a change touches or names, as it stands after the changes checked
    /// so far; `None`: absent.
    objects: HashMap<Key, Option<Resource>>,
    /// The objects that had a row when the transaction began.
    stored: HashSet<Key>,
    /// Stored references to the objects the revision deletes: target → `(kind, id,
    /// field)` of each object naming it.
    stored_users: HashMap<Key, Vec<(ResourceKind, String, String)>>,
    /// What each object the revision wrote names now (empty once deleted); it replaces
    /// the object's stored references.
    written_refs: HashMap<Key, Vec<Reference>>,
    /// The same, by target: `(kind, id, field)` of each written object naming it.
    written_users: HashMap<Key, BTreeSet<(ResourceKind, String, String)>>,
    /// Consumers' identities (key hashes, Basic usernames) → consumer id; read only
    /// when the revision writes consumers.
    identities: HashMap<String, String>,
}

impl Db {
    /// Reads what `changes` touch: each object, every object their new versions name,
    /// what names the objects they delete, and every consumer when they write one.
    pub(super) async fn working_set(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        changes: &[super::Change],
    ) -> Result<Working, ApiError> {
        let mut wanted: BTreeSet<Key> = BTreeSet::new();
        let mut deleted: BTreeSet<Key> = BTreeSet::new();
        let mut consumers = false;
        for change in changes {
            let key = (change.kind(), change.id().to_owned());
            match change {
                super::Change::Create(r) | super::Change::Upsert(r) => {
                    consumers |= r.kind() == ResourceKind::Consumers;
                    wanted.extend(r.references().into_iter().map(|(_, k, id)| (k, id)));
                }
                super::Change::Delete { .. } => {
                    deleted.insert(key.clone());
                }
            }
            wanted.insert(key);
        }
        let mut working = Working::default();
        if consumers {
            for consumer in self
                .resources_in(tx, cluster, instance, ResourceKind::Consumers)
                .await?
            {
                working.remember_identities(&consumer);
                let key = (ResourceKind::Consumers, consumer.id().to_owned());
                working.stored.insert(key.clone());
                working.objects.insert(key, Some(consumer));
            }
        }
        for (kind, ids) in by_kind(&wanted) {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "SELECT id, body FROM resources WHERE cluster = ? AND instance = ? AND kind = ? AND id IN ({})",
                    placeholders(chunk.len())
                );
                let sql = self.sql(sql);
                let mut query = sqlx::query(&sql)
                    .bind(cluster)
                    .bind(instance)
                    .bind(kind.as_str());
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    let key = (kind, text(&row, "id")?);
                    let resource = self.resource_from_row(cluster, instance, kind, &row)?;
                    working.stored.insert(key.clone());
                    working.objects.insert(key, Some(resource));
                }
            }
        }
        for key in wanted {
            working.objects.entry(key).or_insert(None);
        }
        for (kind, ids) in by_kind(&deleted) {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "SELECT kind, id, field, ref_id FROM resource_refs \
                     WHERE cluster = ? AND instance = ? AND ref_kind = ? AND ref_id IN ({})",
                    placeholders(chunk.len())
                );
                let sql = self.sql(sql);
                let mut query = sqlx::query(&sql)
                    .bind(cluster)
                    .bind(instance)
                    .bind(kind.as_str());
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    let user_kind = text(&row, "kind")?
                        .parse()
                        .map_err(|e: model::resource::UnknownKind| ApiError::Internal(e.into()))?;
                    working
                        .stored_users
                        .entry((kind, text(&row, "ref_id")?))
                        .or_default()
                        .push((user_kind, text(&row, "id")?, text(&row, "field")?));
                }
            }
        }
        Ok(working)
    }

    /// Checks one change against `working` and applies it there; nothing is written
    /// yet ([`Db::write_working`] does, once every change passed).
    pub(super) fn check_change(
        &self,
        working: &mut Working,
        cluster: &str,
        instance: &str,
        change: &super::Change,
    ) -> Result<Written, ApiError> {
        use super::Change;
        let kind = change.kind();
        let id = change.id();
        let key = (kind, id.to_owned());
        let before = working.objects.get(&key).cloned().flatten();
        let previous = before.as_ref().map(|r| r.redacted().to_json());
        let exists = before.is_some();
        let (op, created) = match change {
            Change::Create(_) if exists => {
                return Err(ApiError::AlreadyExists(format!(
                    "{} {id:?} already exists in instance {instance:?}",
                    kind.singular()
                )));
            }
            Change::Create(_) => ("create", true),
            Change::Upsert(_) => ("update", !exists),
            Change::Delete { .. } if !exists => {
                return Err(ApiError::NotFound(format!(
                    "{} {id:?} does not exist in instance {instance:?}",
                    kind.singular()
                )));
            }
            Change::Delete { .. } => ("delete", false),
        };
        let resource = match change {
            Change::Delete { .. } => {
                working.check_unused(&key)?;
                working.forget_identities(before.as_ref());
                working.set(key, None, Vec::new());
                return Ok(Written {
                    op,
                    created,
                    stored: change.clone(),
                    logged: None,
                    body: None,
                    previous,
                });
            }
            Change::Create(resource) | Change::Upsert(resource) => resource,
        };
        working.check_references(instance, resource)?;
        let (resource, stored) = match resource {
            Resource::Consumer(consumer) => {
                let kept = working.consumer_secrets(consumer, before.as_ref())?;
                let stored = match change {
                    Change::Create(_) => Change::Create(kept.clone()),
                    _ => Change::Upsert(kept.clone()),
                };
                (kept, stored)
            }
            other => (other.clone(), change.clone()),
        };
        let body = self.stored_body(cluster, instance, &resource)?;
        if body.len() > super::resources::MAX_STORED_JSON {
            return Err(ApiError::PayloadTooLarge(format!(
                "a {} may take at most {} bytes of JSON as stored",
                kind.singular(),
                super::resources::MAX_STORED_JSON
            )));
        }
        // The change log keeps what an operator may see: never a private key, a
        // credential's secret or its hash.
        let logged = Some(resource.redacted().to_json().to_string());
        working.forget_identities(before.as_ref());
        working.remember_identities(&resource);
        let references = resource.references();
        working.set(key, Some(resource), references);
        Ok(Written {
            op,
            created,
            stored,
            logged,
            body: Some(body),
            previous,
        })
    }

    /// Writes what the checked changes left: the rows of every object they touched
    /// (deleted, then inserted again when the object still exists), its references
    /// and the revision's objects.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_working(
        &self,
        tx: &mut Transaction<'static, Any>,
        cluster: &str,
        instance: &str,
        working: &Working,
        written: &[Written],
        revision: i64,
        now: i64,
    ) -> Result<(), ApiError> {
        let keys: Vec<Key> = written
            .iter()
            .map(|w| (w.stored.kind(), w.stored.id().to_owned()))
            .collect();
        let stored: BTreeSet<Key> = keys
            .iter()
            .filter(|k| working.stored.contains(*k))
            .cloned()
            .collect();
        for table in ["resources", "resource_refs"] {
            for (kind, ids) in by_kind(&stored) {
                for chunk in ids.chunks(CHUNK) {
                    let sql = format!(
                        "DELETE FROM {table} WHERE cluster = ? AND instance = ? AND kind = ? AND id IN ({})",
                        placeholders(chunk.len())
                    );
                    let sql = self.sql(sql);
                    let mut query = sqlx::query(&sql)
                        .bind(cluster)
                        .bind(instance)
                        .bind(kind.as_str());
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.execute(&mut **tx).await?;
                }
            }
        }
        let rows: Vec<(&Key, &str)> = keys
            .iter()
            .zip(written)
            .filter_map(|(key, w)| Some((key, w.body.as_deref()?)))
            .collect();
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO resources (cluster, instance, kind, id, body, revision, updated_at) VALUES {}",
                value_rows(chunk.len(), 7)
            );
            let sql = self.sql(sql);
            let mut query = sqlx::query(&sql);
            for ((kind, id), body) in chunk {
                query = query
                    .bind(cluster)
                    .bind(instance)
                    .bind(kind.as_str())
                    .bind(id.as_str())
                    .bind(*body)
                    .bind(revision)
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        let refs: Vec<(&Key, &Reference)> = keys
            .iter()
            .flat_map(|key| {
                working
                    .written_refs
                    .get(key)
                    .into_iter()
                    .flatten()
                    .map(move |r| (key, r))
            })
            .collect();
        for chunk in refs.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO resource_refs (cluster, instance, kind, id, field, ref_kind, ref_id) VALUES {}",
                value_rows(chunk.len(), 7)
            );
            let sql = self.sql(sql);
            let mut query = sqlx::query(&sql);
            for ((kind, id), (field, ref_kind, ref_id)) in chunk {
                query = query
                    .bind(cluster)
                    .bind(instance)
                    .bind(kind.as_str())
                    .bind(id.as_str())
                    .bind(field.as_str())
                    .bind(ref_kind.as_str())
                    .bind(ref_id.as_str());
            }
            query.execute(&mut **tx).await?;
        }
        let objects: Vec<(&Key, &Written)> = keys.iter().zip(written).collect();
        for chunk in objects.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO revision_objects (cluster, instance, revision, kind, id, op, body) VALUES {}",
                value_rows(chunk.len(), 7)
            );
            let sql = self.sql(sql);
            let mut query = sqlx::query(&sql);
            for ((kind, id), w) in chunk {
                query = query
                    .bind(cluster)
                    .bind(instance)
                    .bind(revision)
                    .bind(kind.as_str())
                    .bind(id.as_str())
                    .bind(w.op)
                    .bind(w.body.as_deref());
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

impl Working {
    /// Records `key` as it now stands and what it names.
    fn set(&mut self, key: Key, resource: Option<Resource>, references: Vec<Reference>) {
        for (field, kind, id) in self.written_refs.remove(&key).unwrap_or_default() {
            if let Some(users) = self.written_users.get_mut(&(kind, id)) {
                users.remove(&(key.0, key.1.clone(), field));
            }
        }
        for (field, kind, id) in &references {
            self.written_users
                .entry((*kind, id.clone()))
                .or_default()
                .insert((key.0, key.1.clone(), field.clone()));
        }
        self.written_refs.insert(key.clone(), references);
        self.objects.insert(key, resource);
    }

    /// Everything `resource` names (a route's upstream and service …) must exist in
    /// the instance; every missing one is listed.
    fn check_references(&self, instance: &str, resource: &Resource) -> Result<(), ApiError> {
        let errors: Vec<FieldError> = resource
            .references()
            .into_iter()
            .filter(|(_, kind, id)| {
                !matches!(self.objects.get(&(*kind, id.clone())), Some(Some(_)))
            })
            .map(|(field, kind, id)| FieldError {
                field,
                message: format!(
                    "{} {id:?} does not exist in instance {instance:?}",
                    kind.singular()
                ),
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid {
            what: resource.kind().singular().to_owned(),
            errors: ValidationErrors(errors),
        })
    }

    /// An object others name cannot be deleted; the answer names them.
    fn check_unused(&self, key: &Key) -> Result<(), ApiError> {
        let mut users: BTreeSet<(ResourceKind, String, String)> = self
            .stored_users
            .get(key)
            .into_iter()
            .flatten()
            // A user the revision rewrote names what `written_refs` says now.
            .filter(|(kind, id, _)| !self.written_refs.contains_key(&(*kind, id.clone())))
            .cloned()
            .collect();
        users.extend(self.written_users.get(key).into_iter().flatten().cloned());
        // Named by kind as the URL spells it, then id and field.
        let mut users: Vec<_> = users.into_iter().collect();
        users.sort_by(|a, b| (a.0.as_str(), &a.1, &a.2).cmp(&(b.0.as_str(), &b.1, &b.2)));
        if users.is_empty() {
            return Ok(());
        }
        let (kind, id) = key;
        let mut named: Vec<(ResourceKind, Vec<&str>)> = Vec::new();
        let mut details = Vec::new();
        for (by_kind, by_id, field) in &users {
            details.push(FieldError {
                field: format!("{by_kind}[{by_id}].{field}"),
                message: format!("names {} {id:?}", kind.singular()),
            });
            match named.last_mut() {
                Some((k, ids)) if k == by_kind => ids.push(by_id),
                _ => named.push((*by_kind, vec![by_id])),
            }
        }
        let named: Vec<String> = named
            .iter()
            .map(|(k, ids)| format!("{k} {}", ids.join(", ")))
            .collect();
        Err(ApiError::InUse {
            message: format!(
                "{} {id:?} is used by {}; change or delete them first",
                kind.singular(),
                named.join("; ")
            ),
            details,
        })
    }

    /// A consumer as it will be stored: credentials sent back without their secret
    /// keep the stored one (same id and type), every credential has its secret, and
    /// none identifies another consumer of the instance (a key, a Basic username).
    fn consumer_secrets(
        &self,
        consumer: &model::consumer::Consumer,
        stored: Option<&Resource>,
    ) -> Result<Resource, ApiError> {
        let mut consumer = consumer.clone();
        if let Some(Resource::Consumer(stored)) = stored {
            consumer.keep_secrets_from(stored);
        }
        let mut errors = consumer.missing_secrets();
        for (field, identity) in consumer.identities() {
            if let Some(other) = self
                .identities
                .get(&identity)
                .filter(|other| **other != consumer.id)
            {
                errors.push(FieldError {
                    field,
                    message: format!("is already a credential of consumer {other:?}"),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Invalid {
                what: "consumer".to_owned(),
                errors: ValidationErrors(errors),
            });
        }
        Ok(Resource::Consumer(consumer))
    }

    fn remember_identities(&mut self, resource: &Resource) {
        if let Resource::Consumer(consumer) = resource {
            for (_, identity) in consumer.identities() {
                self.identities.insert(identity, consumer.id.clone());
            }
        }
    }

    fn forget_identities(&mut self, resource: Option<&Resource>) {
        if let Some(Resource::Consumer(consumer)) = resource {
            for (_, identity) in consumer.identities() {
                if self.identities.get(&identity) == Some(&consumer.id) {
                    self.identities.remove(&identity);
                }
            }
        }
    }
}

/// The ids of `keys` per kind, in order.
fn by_kind(keys: &BTreeSet<Key>) -> Vec<(ResourceKind, Vec<&str>)> {
    let mut out: Vec<(ResourceKind, Vec<&str>)> = Vec::new();
    for (kind, id) in keys {
        match out.last_mut() {
            Some((k, ids)) if k == kind => ids.push(id),
            _ => out.push((*kind, vec![id.as_str()])),
        }
    }
    out
}

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `(?, ?), (?, ?)` for `rows` rows of `columns` values.
fn value_rows(rows: usize, columns: usize) -> String {
    vec![format!("({})", placeholders(columns)); rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_for_rows() {
        assert_eq!(placeholders(3), "?, ?, ?");
        assert_eq!(value_rows(2, 2), "(?, ?), (?, ?)");
    }

    fn key(kind: ResourceKind, id: &str) -> Key {
        (kind, id.to_owned())
    }

    fn uses(working: &Working, target: &Key) -> Vec<String> {
        match working.check_unused(target) {
            Ok(()) => Vec::new(),
            Err(ApiError::InUse { details, .. }) => details.into_iter().map(|d| d.field).collect(),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn users_follow_the_changes_checked_before() {
        use ResourceKind::{GlobalRules, Routes, Upstreams};
        let (u1, u2) = (key(Upstreams, "u1"), key(Upstreams, "u2"));
        let mut working = Working::default();
        working.stored_users.insert(
            u1.clone(),
            vec![
                (Routes, "r2".into(), "upstream_id".into()),
                (Routes, "r1".into(), "upstream_id".into()),
                (GlobalRules, "g".into(), "plugins.traffic-split".into()),
            ],
        );
        // Named by kind as the URL spells it: global_rules before routes.
        assert_eq!(
            uses(&working, &u1),
            [
                "global_rules[g].plugins.traffic-split",
                "routes[r1].upstream_id",
                "routes[r2].upstream_id"
            ]
        );
        // r1 rewritten onto u2, g and r2 deleted: u1 is free, u2 is not.
        let to_u2 = vec![("upstream_id".to_owned(), Upstreams, "u2".to_owned())];
        working.set(key(Routes, "r1"), None, to_u2.clone());
        working.set(key(GlobalRules, "g"), None, Vec::new());
        working.set(key(Routes, "r2"), None, Vec::new());
        assert!(uses(&working, &u1).is_empty());
        assert_eq!(uses(&working, &u2), ["routes[r1].upstream_id"]);
        // Rewritten again: the earlier reference is gone.
        working.set(key(Routes, "r1"), None, Vec::new());
        assert!(uses(&working, &u2).is_empty());
        // A reference checked against what the revision created or deleted.
        working.objects.insert(u2.clone(), None);
        let route: Resource = Resource::Route(
            serde_json::from_value(
                serde_json::json!({"id": "r3", "paths": ["/"], "upstream_id": "u2"}),
            )
            .unwrap(),
        );
        assert!(working.check_references("i", &route).is_err());
        let upstream = Resource::Upstream(
            serde_json::from_value(
                serde_json::json!({"id": "u2", "nodes": [{"host": "127.0.0.1", "port": 80}]}),
            )
            .unwrap(),
        );
        working.objects.insert(u2, Some(upstream));
        assert!(working.check_references("i", &route).is_ok());
    }

    #[test]
    fn keys_by_kind_keep_their_order() {
        let keys: BTreeSet<Key> = [
            (ResourceKind::Routes, "b".to_owned()),
            (ResourceKind::Upstreams, "u".to_owned()),
            (ResourceKind::Routes, "a".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            by_kind(&keys),
            vec![
                (ResourceKind::Routes, vec!["a", "b"]),
                (ResourceKind::Upstreams, vec!["u"]),
            ]
        );
    }
}
