//! The test API server's state: objects of the resource kinds it serves, one
//! resourceVersion counter for all of them (as etcd's revision is for a real API
//! server), the history of changes that watches replay until it is compacted, and the
//! field ownership of server-side apply.
//!
//! Server-side apply follows the API server's rules at the granularity the controller
//! needs: objects are walked down to scalars, and lists are atomic (as an
//! EndpointSlice's `endpoints` and `ports` are); a manager owns the fields it applied
//! or changed; applying again without a field it owned removes it; setting a field
//! another manager owns to another value is a conflict unless forced; an apply or an
//! update that changes nothing changes no resourceVersion and sends no event.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::selector::{labels_of, FieldSelector, LabelSelector};

/// A resource kind the server serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Resource {
    /// `v1` or `group/version`, as objects and lists carry it.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The kinds served: what the cross-cluster controller reads, writes and elects its
/// leader with. All are namespaced.
pub const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
    },
];

/// Finds a served kind by its group, version and plural name.
pub fn resource(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a served kind by its kind name (`EndpointSlice`).
pub fn resource_of_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// Where an object lives: kind, namespace, name (ordered as a list is).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub plural: &'static str,
    pub namespace: String,
    pub name: String,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One change, as watches replay it: the object after it (the last state for a
/// deletion, with the deletion's resourceVersion) and the object before it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: Key,
    pub change: ChangeType,
    pub object: Arc<Value>,
    pub before: Option<Arc<Value>>,
}

/// Which objects a list or watch asks for.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether `object` of kind `plural` at `key` is asked for.
    pub fn matches(&self, plural: &str, key: &Key, object: &Value) -> bool {
        key.plural == plural
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
            && self.labels.matches(&labels_of(object))
            && self.fields.matches(object)
    }
}

/// Why a request was refused: the HTTP status, the Status reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(resource: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{}.{} {name:?} not found", resource.plural, resource.group),
        )
    }

    /// A resourceVersion older than the history kept (the API server's "too old
    /// resource version", which makes clients list again).
    pub fn expired(asked: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }
}

/// How a write names its manager and whether it forces ownership.
#[derive(Debug, Clone)]
pub struct Writer {
    pub manager: String,
    pub force: bool,
}

/// One stored object with what server-side apply remembers of it.
#[derive(Debug, Clone)]
struct Stored {
    object: Arc<Value>,
    /// Field path (scalars and whole lists) → the manager owning it.
    owners: BTreeMap<Vec<String>, String>,
    /// Manager → whether its last write was an apply (else an update).
    operations: BTreeMap<String, bool>,
}

/// Metadata fields the server sets and nobody owns.
const SERVER_FIELDS: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "namespace",
    "name",
    "generateName",
    "selfLink",
];

/// The objects, the counter and the history.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Arc<Change>>,
    /// Changes up to this resourceVersion are no longer in the history.
    compacted: u64,
    history_limit: usize,
    next_uid: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1,
            history_limit,
            next_uid: 1,
            changes: broadcast::channel(4096).0,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest(&self) -> u64 {
        self.compacted
    }

    /// Forgets the whole history: every watch or continue token from before now gets
    /// 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Subscribes to the changes from now on (taken under the same lock as the
    /// history replayed before them, so nothing falls in between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// The changes after `rv` matching `filter`, or 410 when they are not all kept.
    pub fn changes_since(&self, rv: u64, plural: &str) -> Result<Vec<Arc<Change>>, Refusal> {
        if rv < self.compacted {
            return Err(Refusal::expired(rv, self.compacted));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.rv > rv && c.key.plural == plural)
            .cloned()
            .collect())
    }

    /// The objects of kind `plural` matching `filter`, ordered by namespace and name,
    /// starting after `after`, at most `limit` (0: all); and the key to continue after
    /// when more remain.
    pub fn list(
        &self,
        plural: &'static str,
        filter: &Filter,
        after: Option<&Key>,
        limit: usize,
    ) -> (Vec<Arc<Value>>, Option<Key>) {
        let mut items = Vec::new();
        let mut last: Option<&Key> = None;
        let start = Key {
            plural,
            namespace: String::new(),
            name: String::new(),
        };
        for (key, stored) in self.objects.range(start..) {
            if key.plural != plural {
                break;
            }
            if after.is_some_and(|after| key <= after) {
                continue;
            }
            if !filter.matches(plural, key, &stored.object) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                return (items, last.cloned());
            }
            items.push(stored.object.clone());
            last = Some(key);
        }
        (items, None)
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).map(|s| s.object.clone())
    }

    /// Creates `object` (its `metadata.name`, or a name made from `generateName`).
    pub fn create(
        &mut self,
        resource: &'static Resource,
        namespace: &str,
        mut object: Value,
        writer: &Writer,
    ) -> Result<Arc<Value>, Refusal> {
        check_kind(resource, &object)?;
        let name = match object["metadata"]["name"].as_str() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match object["metadata"]["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => {
                    format!("{prefix}{}", self.generated_suffix())
                }
                _ => {
                    return Err(Refusal::new(
                        422,
                        "Invalid",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        check_name(&name)?;
        let key = Key {
            plural: resource.plural,
            namespace: namespace.to_owned(),
            name: name.clone(),
        };
        if self.objects.contains_key(&key) {
            return Err(Refusal::new(
                409,
                "AlreadyExists",
                format!(
                    "{}.{} {name:?} already exists",
                    resource.plural, resource.group
                ),
            ));
        }
        object["metadata"]["name"] = json!(name);
        let mut owners = BTreeMap::new();
        for (path, _) in leaves(&object) {
            owners.insert(path, writer.manager.clone());
        }
        let operations = BTreeMap::from([(writer.manager.clone(), false)]);
        Ok(self.commit(resource, key, None, object, owners, operations))
    }

    /// Replaces the object at `key` with `object`; a `metadata.resourceVersion` in it
    /// must be the current one (optimistic concurrency).
    pub fn update(
        &mut self,
        resource: &'static Resource,
        key: Key,
        object: Value,
        writer: &Writer,
    ) -> Result<Arc<Value>, Refusal> {
        check_kind(resource, &object)?;
        match object["metadata"]["name"].as_str() {
            Some(name) if name != key.name => {
                return Err(Refusal::new(
                    400,
                    "BadRequest",
                    format!(
                        "the name of the object ({name}) does not match the name on the URL ({})",
                        key.name
                    ),
                ));
            }
            _ => {}
        }
        let Some(stored) = self.objects.get(&key) else {
            return Err(Refusal::not_found(resource, &key.name));
        };
        let current = stored.object["metadata"]["resourceVersion"].as_str();
        let asked = object["metadata"]["resourceVersion"].as_str();
        if asked.is_some_and(|rv| Some(rv) != current) {
            return Err(Refusal::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}.{} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    resource.plural, resource.group, key.name
                ),
            ));
        }
        let mut object = object;
        object["metadata"]["name"] = json!(key.name);
        Ok(self.write_update(resource, key, object, writer))
    }

    /// Applies a JSON merge patch (RFC 7386) to the object at `key`.
    pub fn merge_patch(
        &mut self,
        resource: &'static Resource,
        key: Key,
        patch: &Value,
        writer: &Writer,
    ) -> Result<Arc<Value>, Refusal> {
        let Some(stored) = self.objects.get(&key) else {
            return Err(Refusal::not_found(resource, &key.name));
        };
        let mut object = (*stored.object).clone();
        merge(&mut object, patch);
        object["metadata"]["name"] = json!(key.name);
        Ok(self.write_update(resource, key, object, writer))
    }

    /// Server-side apply of `applied` by `writer` (creates the object when absent).
    pub fn apply(
        &mut self,
        resource: &'static Resource,
        key: Key,
        applied: Value,
        writer: &Writer,
    ) -> Result<Arc<Value>, Refusal> {
        check_kind(resource, &applied)?;
        if applied["apiVersion"].as_str() != Some(&resource.api_version()) {
            return Err(Refusal::new(
                400,
                "BadRequest",
                format!(
                    "apiVersion must be {:?} in an apply patch",
                    resource.api_version()
                ),
            ));
        }
        if applied["metadata"]["name"].as_str() != Some(key.name.as_str()) {
            return Err(Refusal::new(
                400,
                "BadRequest",
                "metadata.name must be the name on the URL in an apply patch",
            ));
        }
        let applied_leaves = leaves(&applied);
        let Some(stored) = self.objects.get(&key) else {
            check_name(&key.name)?;
            let owners = applied_leaves
                .into_iter()
                .map(|(path, _)| (path, writer.manager.clone()))
                .collect();
            let operations = BTreeMap::from([(writer.manager.clone(), true)]);
            return Ok(self.commit(resource, key, None, applied, owners, operations));
        };
        let mut conflicts = Vec::new();
        for (path, value) in &applied_leaves {
            match stored.owners.get(path) {
                Some(owner)
                    if *owner != writer.manager && pointer(&stored.object, path) != Some(value) =>
                {
                    conflicts.push(format!("conflict with {owner:?}: .{}", path.join(".")));
                }
                _ => {}
            }
        }
        if !conflicts.is_empty() && !writer.force {
            return Err(Refusal::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflicts: {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            ));
        }
        let mut object = (*stored.object).clone();
        let mut owners = stored.owners.clone();
        let applied_paths: std::collections::BTreeSet<&Vec<String>> =
            applied_leaves.iter().map(|(p, _)| p).collect();
        let dropped: Vec<Vec<String>> = owners
            .iter()
            .filter(|(path, owner)| **owner == writer.manager && !applied_paths.contains(path))
            .map(|(path, _)| path.clone())
            .collect();
        for path in dropped {
            remove(&mut object, &path);
            owners.remove(&path);
        }
        for (path, value) in applied_leaves {
            set(&mut object, &path, value.clone());
            owners.insert(path, writer.manager.clone());
        }
        let mut operations = stored.operations.clone();
        operations.insert(writer.manager.clone(), true);
        let before = stored.object.clone();
        Ok(self.commit(resource, key, Some(before), object, owners, operations))
    }

    /// Deletes the object at `key` and answers it as it was.
    pub fn delete(
        &mut self,
        resource: &'static Resource,
        key: &Key,
    ) -> Result<Arc<Value>, Refusal> {
        let Some(stored) = self.objects.remove(key) else {
            return Err(Refusal::not_found(resource, &key.name));
        };
        self.rv += 1;
        let mut last = (*stored.object).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(last);
        self.record(Change {
            rv: self.rv,
            key: key.clone(),
            change: ChangeType::Deleted,
            object: last.clone(),
            before: Some(stored.object),
        });
        Ok(last)
    }

    fn write_update(
        &mut self,
        resource: &'static Resource,
        key: Key,
        object: Value,
        writer: &Writer,
    ) -> Arc<Value> {
        let stored = &self.objects[&key];
        let before_leaves: BTreeMap<Vec<String>, &Value> =
            leaves(&stored.object).into_iter().collect();
        let mut owners = BTreeMap::new();
        for (path, value) in leaves(&object) {
            let owner = match (before_leaves.get(&path), stored.owners.get(&path)) {
                (Some(old), Some(owner)) if *old == value => owner.clone(),
                _ => writer.manager.clone(),
            };
            owners.insert(path, owner);
        }
        let mut operations = stored.operations.clone();
        operations.entry(writer.manager.clone()).or_insert(false);
        let before = stored.object.clone();
        self.commit(resource, key, Some(before), object, owners, operations)
    }

    /// Stores `object` unless it equals what is stored (then nothing changes, as the
    /// API server skips no-op writes); sets the server's metadata; records the change.
    fn commit(
        &mut self,
        resource: &'static Resource,
        key: Key,
        before: Option<Arc<Value>>,
        mut object: Value,
        owners: BTreeMap<Vec<String>, String>,
        mut operations: BTreeMap<String, bool>,
    ) -> Arc<Value> {
        operations.retain(|manager, _| owners.values().any(|m| m == manager));
        if let Some(before) = &before {
            if content(before) == content(&object) && self.objects[&key].owners == owners {
                return before.clone();
            }
        }
        self.rv += 1;
        let generation = match &before {
            Some(before) => {
                let generation = before["metadata"]["generation"].as_u64().unwrap_or(1);
                let spec_changed = spec(before) != spec(&object);
                generation + u64::from(spec_changed)
            }
            None => 1,
        };
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let metadata = object["metadata"]
            .as_object_mut()
            .expect("metadata was checked");
        metadata.insert("namespace".into(), json!(key.namespace));
        metadata.insert("resourceVersion".into(), json!(self.rv.to_string()));
        metadata.insert("generation".into(), json!(generation));
        match &before {
            Some(before) => {
                for field in ["uid", "creationTimestamp"] {
                    metadata.insert(field.into(), before["metadata"][field].clone());
                }
            }
            None => {
                metadata.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.next_uid)),
                );
                self.next_uid += 1;
                metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
            }
        }
        metadata.insert(
            "managedFields".into(),
            managed_fields(resource, &owners, &operations),
        );
        let object = Arc::new(object);
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                owners,
                operations,
            },
        );
        let change = if before.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        self.record(Change {
            rv: self.rv,
            key,
            change,
            object: object.clone(),
            before,
        });
        object
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        let _ = self.changes.send(change);
    }

    fn generated_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = self
            .next_uid
            .wrapping_mul(2_654_435_761)
            .wrapping_add(self.rv);
        self.next_uid += 1;
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

fn check_kind(resource: &Resource, object: &Value) -> Result<(), Refusal> {
    if !object.is_object() || !object["metadata"].is_object() {
        return Err(Refusal::new(
            400,
            "BadRequest",
            "the body must be an object with metadata",
        ));
    }
    match object["kind"].as_str() {
        None | Some("") => Ok(()),
        Some(kind) if kind == resource.kind => Ok(()),
        Some(kind) => Err(Refusal::new(
            400,
            "BadRequest",
            format!(
                "kind {kind:?} does not match the resource's kind {:?}",
                resource.kind
            ),
        )),
    }
}

/// A DNS-1123 subdomain, as names of these kinds must be.
fn check_name(name: &str) -> Result<(), Refusal> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(Refusal::new(
            422,
            "Invalid",
            format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ))
    }
}

/// The fields that count for "did it change": everything but the server's metadata.
fn content(object: &Value) -> BTreeMap<Vec<String>, &Value> {
    let mut all: BTreeMap<_, _> = leaves(object).into_iter().collect();
    all.retain(|path, _| {
        path.first()
            .is_none_or(|f| f != "apiVersion" && f != "kind")
    });
    all
}

/// The fields outside `metadata`: a change to them bumps `metadata.generation`.
fn spec(object: &Value) -> BTreeMap<Vec<String>, &Value> {
    let mut fields = content(object);
    fields.retain(|path, _| path.first().is_none_or(|f| f != "metadata"));
    fields
}

/// Every scalar and list of `object` with its path, the server's metadata left out
/// (an empty object has no fields: applying `labels: {}` owns nothing).
fn leaves(object: &Value) -> Vec<(Vec<String>, &Value)> {
    fn walk<'a>(value: &'a Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a Value)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if path.len() == 1
                        && path[0] == "metadata"
                        && SERVER_FIELDS.contains(&k.as_str())
                    {
                        continue;
                    }
                    path.push(k.clone());
                    walk(v, path, out);
                    path.pop();
                }
            }
            _ if path.is_empty() => {}
            _ => out.push((path.clone(), value)),
        }
    }
    let mut out = Vec::new();
    walk(object, &mut Vec::new(), &mut out);
    out
}

fn pointer<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |v, k| v.as_object()?.get(k))
}

fn set(object: &mut Value, path: &[String], value: Value) {
    let mut at = object;
    for k in &path[..path.len() - 1] {
        if !at[k.as_str()].is_object() {
            at[k.as_str()] = Value::Object(Map::new());
        }
        at = &mut at[k.as_str()];
    }
    at[path[path.len() - 1].as_str()] = value;
}

/// Removes the field at `path` and the objects it leaves empty.
fn remove(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(map) = parents
        .iter()
        .try_fold(&mut *object, |v, k| v.as_object_mut()?.get_mut(k))
        .and_then(Value::as_object_mut)
    {
        map.remove(last);
        if map.is_empty() && !parents.is_empty() {
            remove(object, parents);
        }
    }
}

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `metadata.managedFields` in the API server's shape (FieldsV1: `f:` per field,
/// lists as one field).
fn managed_fields(
    resource: &Resource,
    owners: &BTreeMap<Vec<String>, String>,
    operations: &BTreeMap<String, bool>,
) -> Value {
    let time = now_rfc3339();
    let entries: Vec<Value> = operations
        .iter()
        .map(|(manager, applied)| {
            let mut fields = Value::Object(Map::new());
            for (path, owner) in owners {
                if owner == manager {
                    let path: Vec<String> = path.iter().map(|k| format!("f:{k}")).collect();
                    set(&mut fields, &path, json!({}));
                }
            }
            json!({
                "manager": manager,
                "operation": if *applied { "Apply" } else { "Update" },
                "apiVersion": resource.api_version(),
                "time": time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields,
            })
        })
        .collect();
    Value::Array(entries)
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, addresses: &[&str]) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": addresses.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
        })
    }

    fn key(name: &str) -> Key {
        Key {
            plural: "endpointslices",
            namespace: "prod".into(),
            name: name.into(),
        }
    }

    fn writer(manager: &str) -> Writer {
        Writer {
            manager: manager.into(),
            force: false,
        }
    }

    fn endpointslices() -> &'static Resource {
        resource("discovery.k8s.io", "v1", "endpointslices").unwrap()
    }

    #[test]
    fn an_apply_that_changes_nothing_keeps_the_resource_version() {
        let mut store = Store::new(100);
        let first = store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.1"]),
                &writer("xc"),
            )
            .unwrap();
        let rv = store.rv();
        let again = store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.1"]),
                &writer("xc"),
            )
            .unwrap();
        assert_eq!(store.rv(), rv);
        assert_eq!(first, again);
        let changed = store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.2"]),
                &writer("xc"),
            )
            .unwrap();
        assert_eq!(store.rv(), rv + 1);
        assert_eq!(changed["endpoints"][0]["addresses"][0], "10.0.0.2");
        assert_eq!(changed["metadata"]["uid"], first["metadata"]["uid"]);
        assert_eq!(changed["metadata"]["generation"], 2);
    }

    #[test]
    fn apply_removes_what_the_manager_stopped_applying_and_keeps_what_others_own() {
        let mut store = Store::new(100);
        store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.1"]),
                &writer("xc"),
            )
            .unwrap();
        store
            .merge_patch(
                endpointslices(),
                key("a"),
                &json!({"metadata": {"labels": {"team": "web"}}}),
                &writer("kubectl"),
            )
            .unwrap();
        let mut without_label = slice("a", &["10.0.0.1"]);
        without_label["metadata"]["labels"] = json!({});
        let after = store
            .apply(endpointslices(), key("a"), without_label, &writer("xc"))
            .unwrap();
        assert_eq!(after["metadata"]["labels"], json!({"team": "web"}));
        let managers: Vec<&str> = after["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["kubectl", "xc"]);
    }

    #[test]
    fn apply_over_another_managers_field_conflicts_unless_forced() {
        let mut store = Store::new(100);
        store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.1"]),
                &writer("endpointslice-controller"),
            )
            .unwrap();
        let refused = store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.9"]),
                &writer("xc"),
            )
            .unwrap_err();
        assert_eq!((refused.code, refused.reason), (409, "Conflict"));
        assert!(
            refused.message.contains(".endpoints"),
            "{}",
            refused.message
        );
        let forced = Writer {
            manager: "xc".into(),
            force: true,
        };
        let after = store
            .apply(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.9"]),
                &forced,
            )
            .unwrap();
        assert_eq!(after["endpoints"][0]["addresses"][0], "10.0.0.9");
    }

    #[test]
    fn updates_check_the_resource_version_and_watches_replay_history_until_compacted() {
        let mut store = Store::new(2);
        let created = store
            .create(
                endpointslices(),
                "prod",
                slice("a", &["10.0.0.1"]),
                &writer("t"),
            )
            .unwrap();
        let mut stale = (*created).clone();
        store
            .update(
                endpointslices(),
                key("a"),
                slice("a", &["10.0.0.2"]),
                &writer("t"),
            )
            .unwrap();
        stale["endpoints"] = json!([]);
        let conflict = store
            .update(endpointslices(), key("a"), stale, &writer("t"))
            .unwrap_err();
        assert_eq!(conflict.code, 409);
        let since = store.changes_since(1, "endpointslices").unwrap();
        assert_eq!(since.len(), 2);
        store.delete(endpointslices(), &key("a")).unwrap();
        assert_eq!(
            store.changes_since(1, "endpointslices").unwrap_err().code,
            410
        );
        let rv = store.rv();
        store.compact();
        assert!(store
            .changes_since(rv, "endpointslices")
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .changes_since(rv - 1, "endpointslices")
                .unwrap_err()
                .code,
            410
        );
    }

    #[test]
    fn lists_page_in_name_order() {
        let mut store = Store::new(100);
        for name in ["c", "a", "b", "d"] {
            store
                .create(endpointslices(), "prod", slice(name, &[]), &writer("t"))
                .unwrap();
        }
        let filter = Filter::default();
        let (page, next) = store.list("endpointslices", &filter, None, 3);
        let names: Vec<&str> = page
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let (rest, next) = store.list("endpointslices", &filter, next.as_ref(), 3);
        assert_eq!(rest.len(), 1);
        assert_eq!(next, None);
        assert!(store.list("services", &filter, None, 0).0.is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
