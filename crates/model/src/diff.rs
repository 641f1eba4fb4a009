//! Structured differences between two versions of an instance's config: per object
//! (created, updated, deleted) and, for an updated one, per field (its path, the value
//! before and after). History, rollback previews, dry runs and declarative applies all
//! answer with it. Values are compared as the API shows them: secrets are never in
//! them (a secret that changed is reported by its field alone).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resource::{Resource, ResourceKind};

/// What happens to one object between two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectOp {
    Create,
    Update,
    Delete,
}

/// One field that differs: its path (`paths[0]`, `plugins.limit-count.count`) and its
/// value before and after (`None`: absent). `secret`: the field holds a secret whose
/// value is never shown, only that it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldChange {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// One object that differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectDiff {
    pub kind: ResourceKind,
    pub id: String,
    pub op: ObjectOp,
    /// For updates: the fields that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    /// For creates: the object as it will be (secrets removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// For deletes: the object as it was (secrets removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
}

/// An instance's objects keyed by kind and id.
pub type Objects = BTreeMap<(ResourceKind, String), Resource>;

/// Keys resources by kind and id.
pub fn objects(resources: impl IntoIterator<Item = Resource>) -> Objects {
    resources
        .into_iter()
        .map(|r| ((r.kind(), r.id().to_owned()), r))
        .collect()
}

/// Every object that differs from `before` to `after`, in kind then id order.
/// Objects are compared in full (secrets included) and shown redacted.
pub fn diff(before: &Objects, after: &Objects) -> Vec<ObjectDiff> {
    let mut out = Vec::new();
    for (key, old) in before {
        match after.get(key) {
            None => out.push(ObjectDiff {
                kind: key.0,
                id: key.1.clone(),
                op: ObjectOp::Delete,
                fields: Vec::new(),
                after: None,
                before: Some(old.redacted().to_json()),
            }),
            Some(new) if new != old => {
                let mut fields = Vec::new();
                fields_of(
                    "",
                    &old.redacted().to_json(),
                    &new.redacted().to_json(),
                    &mut fields,
                );
                if fields.is_empty() {
                    // Only what the redaction hides differs: name the secret fields.
                    fields = secret_fields(old, new);
                }
                out.push(ObjectDiff {
                    kind: key.0,
                    id: key.1.clone(),
                    op: ObjectOp::Update,
                    fields,
                    after: None,
                    before: None,
                });
            }
            Some(_) => {}
        }
    }
    for (key, new) in after {
        if !before.contains_key(key) {
            out.push(ObjectDiff {
                kind: key.0,
                id: key.1.clone(),
                op: ObjectOp::Create,
                fields: Vec::new(),
                after: Some(new.redacted().to_json()),
                before: None,
            });
        }
    }
    out.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    out
}

/// The fields that differ between two JSON values, depth first; arrays element by
/// element.
pub fn fields_of(path: &str, before: &Value, after: &Value, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (name, value) in a {
                let field = join(path, name);
                match b.get(name) {
                    Some(other) => fields_of(&field, value, other, out),
                    None => out.push(change(field, Some(value), None)),
                }
            }
            for (name, value) in b {
                if !a.contains_key(name) {
                    out.push(change(join(path, name), None, Some(value)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let field = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => fields_of(&field, x, y, out),
                    (x, y) => out.push(change(field, x, y)),
                }
            }
        }
        (a, b) if a != b => out.push(change(path.to_owned(), Some(a), Some(b))),
        _ => {}
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn change(path: String, before: Option<&Value>, after: Option<&Value>) -> FieldChange {
    FieldChange {
        path,
        before: before.cloned(),
        after: after.cloned(),
        secret: false,
    }
}

/// The fields whose values the redaction hides and that differ.
fn secret_fields(old: &Resource, new: &Resource) -> Vec<FieldChange> {
    let mut raw = Vec::new();
    fields_of("", &old.to_json(), &new.to_json(), &mut raw);
    raw.into_iter()
        .map(|f| FieldChange {
            path: f.path,
            before: None,
            after: None,
            secret: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects(items: &[(ResourceKind, Value)]) -> Objects {
        items
            .iter()
            .map(|(kind, value)| {
                let resource = kind.parse(value.to_string().as_bytes()).unwrap();
                ((*kind, resource.id().to_owned()), resource)
            })
            .collect()
    }

    #[test]
    fn objects_and_fields_that_differ_are_listed() {
        let up = json!({"id": "up", "nodes": [{"host": "127.0.0.1", "port": 80}]});
        let before = objects(&[
            (ResourceKind::Upstreams, up.clone()),
            (
                ResourceKind::Routes,
                json!({"id": "r1", "paths": ["/a"], "upstream_id": "up"}),
            ),
            (
                ResourceKind::Routes,
                json!({"id": "r2", "paths": ["/b"], "upstream_id": "up"}),
            ),
        ]);
        let after = objects(&[
            (ResourceKind::Upstreams, up),
            (
                ResourceKind::Routes,
                json!({"id": "r1", "paths": ["/a", "/c"], "upstream_id": "up", "priority": 3}),
            ),
            (
                ResourceKind::Routes,
                json!({"id": "r3", "paths": ["/d"], "upstream_id": "up"}),
            ),
        ]);
        let d = diff(&before, &after);
        let summary: Vec<(&str, ObjectOp)> = d.iter().map(|o| (o.id.as_str(), o.op)).collect();
        assert_eq!(
            summary,
            [
                ("r1", ObjectOp::Update),
                ("r2", ObjectOp::Delete),
                ("r3", ObjectOp::Create)
            ]
        );
        let paths: Vec<&str> = d[0].fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["paths[1]", "priority"]);
        assert_eq!(d[0].fields[0].before, None);
        assert_eq!(d[0].fields[0].after, Some(json!("/c")));
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn secrets_are_named_never_shown() {
        let cert = |key: &str| {
            let mut c: crate::certificate::Certificate = serde_json::from_value(json!({
                "id": "c1", "snis": ["a.test"], "cert": "CERT", "key": "KEY"
            }))
            .unwrap();
            c.key = key.to_owned();
            Resource::Certificate(c)
        };
        let before: Objects = [((ResourceKind::Certificates, "c1".into()), cert("old-key"))]
            .into_iter()
            .collect();
        let after: Objects = [((ResourceKind::Certificates, "c1".into()), cert("new-key"))]
            .into_iter()
            .collect();
        let d = diff(&before, &after);
        assert_eq!(d.len(), 1);
        assert!(d[0].fields.iter().all(|f| f.secret && f.before.is_none()));
        let text = serde_json::to_string(&d).unwrap();
        assert!(
            !text.contains("old-key") && !text.contains("new-key"),
            "{text}"
        );
    }
}
