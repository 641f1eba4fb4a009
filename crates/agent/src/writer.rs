//! Writes an admin change into the store, guarded by the instance's `meta` revision.
//!
//! Every write is one store transaction: "meta holds the revision before this change"
//! (or, for snapshots, "meta is what we just read") plus the resource operations plus
//! `meta := new revision`. Gateways therefore see the content and its revision move
//! together, and a change whose predecessor never arrived is refused, not applied on
//! top of a gap. A snapshot too large for one transaction (more than
//! [`store::TXN_MAX_OPS`] operations, etcd's default limit) is written in several, each
//! guarded by the same meta and ordered so that no route ever names a missing
//! upstream; meta moves in the last one.

use std::collections::BTreeMap;

use model::cluster::{InstanceBinding, InstanceMeta, NodeHeartbeat};
use model::resource::{Resource, ResourceKind};
use model::snapshot::{Revision, Snapshot};
use store::keys::InstanceKey;
use store::{Compare, KeyValue, Op, Txn, TXN_MAX_BYTES, TXN_MAX_OPS};

use crate::error::AgentError;
use crate::AgentState;

/// What a change does to one resource.
pub(crate) enum Change {
    Create(Resource),
    Upsert(Resource),
    Delete { kind: ResourceKind, id: String },
}

impl AgentState {
    pub(crate) fn check_instance(&self, instance: &str) -> Result<(), AgentError> {
        if self.instances.contains_key(instance) {
            Ok(())
        } else {
            Err(AgentError::NotFound(format!(
                "instance {instance:?} is not managed by this agent"
            )))
        }
    }

    /// Each instance with the namespace its environment names, if any.
    pub(crate) fn instance_names(&self) -> impl Iterator<Item = (&String, &Option<String>)> {
        self.instances.iter()
    }

    /// The admin revision the store holds for `instance` (0 when never written).
    pub(crate) async fn meta_revision(&self, instance: &str) -> Result<Revision, AgentError> {
        let kv = self
            .store_of(instance)
            .store
            .get(&self.store_of(instance).keyspace.meta(instance))
            .await?;
        Ok(kv.map(|kv| parse_meta(&kv)).unwrap_or_default())
    }

    /// The binding the store holds for `instance`, if any (an unreadable one is
    /// reported as none, so the admin writes it again).
    pub(crate) async fn binding(
        &self,
        instance: &str,
    ) -> Result<Option<InstanceBinding>, AgentError> {
        let kv = self
            .store_of(instance)
            .store
            .get(&self.store_of(instance).keyspace.binding(instance))
            .await?;
        Ok(kv.and_then(|kv| match serde_json::from_slice(&kv.value) {
            Ok(binding) => Some(binding),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "unreadable binding");
                None
            }
        }))
    }

    /// Writes the instance's binding (its namespace, whether that exists, the
    /// namespace's plugin template overrides). Not a config revision: gateways
    /// rebuild when it changes, whatever the revision.
    pub(crate) async fn set_binding(
        &self,
        instance: &str,
        binding: &InstanceBinding,
    ) -> Result<(), AgentError> {
        let value = serde_json::to_vec(binding).expect("model types always serialise");
        self.store_of(instance)
            .store
            .txn(Txn {
                compares: Vec::new(),
                ops: vec![Op::Put {
                    key: self.store_of(instance).keyspace.binding(instance),
                    value,
                    lease: None,
                }],
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn nodes(&self, instance: &str) -> Result<Vec<NodeHeartbeat>, AgentError> {
        let listing = self
            .store_of(instance)
            .store
            .list(&self.store_of(instance).keyspace.nodes_prefix(instance))
            .await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| match serde_json::from_slice(&kv.value) {
                Ok(hb) => Some(hb),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "skipping unreadable node heartbeat");
                    None
                }
            })
            .collect())
    }

    pub(crate) async fn get_resource(
        &self,
        instance: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Option<Resource>, AgentError> {
        let key = self
            .store_of(instance)
            .keyspace
            .resource(instance, kind, id);
        Ok(self
            .store_of(instance)
            .store
            .get(&key)
            .await?
            .and_then(|kv| decode(kind, &kv)))
    }

    pub(crate) async fn list_resources(
        &self,
        instance: &str,
        kind: ResourceKind,
    ) -> Result<Vec<Resource>, AgentError> {
        let listing = self
            .store_of(instance)
            .store
            .list(&self.store_of(instance).keyspace.kind_prefix(instance, kind))
            .await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| decode(kind, kv))
            .collect())
    }

    /// Applies one change that produces admin revision `revision`.
    pub(crate) async fn apply(
        &self,
        instance: &str,
        revision: Revision,
        change: Change,
    ) -> Result<(), AgentError> {
        if revision.0 == 0 {
            return Err(AgentError::BadRequest {
                message: "the revision header must be at least 1".into(),
                details: Vec::new(),
            });
        }
        let previous = Revision(revision.0 - 1);
        let meta_key = self.store_of(instance).keyspace.meta(instance);
        let mut txn = Txn {
            compares: vec![meta_compare(&meta_key, previous)],
            ops: Vec::new(),
        };
        let (kind, id) = match &change {
            Change::Create(r) | Change::Upsert(r) => (r.kind(), r.id().to_owned()),
            Change::Delete { kind, id } => (*kind, id.clone()),
        };
        let key = self
            .store_of(instance)
            .keyspace
            .resource(instance, kind, &id);
        match change {
            Change::Create(resource) => {
                txn.compares.push(Compare::Absent { key: key.clone() });
                txn.ops.push(put(&key, &resource));
            }
            Change::Upsert(resource) => txn.ops.push(put(&key, &resource)),
            Change::Delete { .. } => {
                let Some(current) = self.store_of(instance).store.get(&key).await? else {
                    return Err(not_found(kind, &id));
                };
                txn.compares.push(Compare::ValueEquals {
                    key: key.clone(),
                    value: current.value,
                });
                txn.ops.push(Op::Delete { key: key.clone() });
            }
        }
        txn.ops.push(put_meta(&meta_key, revision));
        if self.store_of(instance).store.txn(txn).await?.succeeded {
            tracing::info!(instance, %revision, %kind, id, "applied change");
            return Ok(());
        }
        // Find out which compare failed, to answer precisely.
        let held = self.meta_revision(instance).await?;
        if held != previous {
            return Err(AgentError::RevisionConflict {
                held: held.0,
                needed: previous.0,
            });
        }
        let exists = self.store_of(instance).store.get(&key).await?.is_some();
        Err(if exists {
            AgentError::AlreadyExists(format!("{} {id:?} already exists", kind.singular()))
        } else {
            not_found(kind, &id)
        })
    }

    /// Replaces the instance's whole content with `snapshot`: atomically when it fits in
    /// one transaction, else in several (see the module's doc).
    pub(crate) async fn apply_snapshot(
        &self,
        instance: &str,
        snapshot: &Snapshot,
    ) -> Result<(), AgentError> {
        let prefix = self.store_of(instance).keyspace.instance_prefix(instance);
        let listing = self.store_of(instance).store.list(&prefix).await?;
        let meta_key = self.store_of(instance).keyspace.meta(instance);
        let meta_kv = listing.kvs.iter().find(|kv| kv.key == meta_key);
        let held = meta_kv.map(parse_meta).unwrap_or_default();
        if held > snapshot.revision {
            return Err(AgentError::RevisionConflict {
                held: held.0,
                needed: snapshot.revision.0,
            });
        }
        if held == snapshot.revision && meta_kv.is_some() {
            return Ok(());
        }
        let mut wanted: BTreeMap<String, (ResourceKind, Vec<u8>)> = snapshot
            .resources()
            .map(|r| {
                let key = self
                    .store_of(instance)
                    .keyspace
                    .resource(instance, r.kind(), r.id());
                let value = serde_json::to_vec(&r).expect("model types always serialise");
                (key, (r.kind(), value))
            })
            .collect();
        let mut deletes = Vec::new();
        for kv in &listing.kvs {
            let Some(InstanceKey::Resource { kind, .. }) =
                self.store_of(instance).keyspace.parse(instance, &kv.key)
            else {
                continue;
            };
            match wanted.get(&kv.key) {
                // Unchanged resources are not rewritten: gateways see only real changes.
                Some((_, value)) if *value == kv.value => {
                    wanted.remove(&kv.key);
                }
                Some(_) => {}
                None => deletes.push((kind, kv.key.clone())),
            }
        }
        // Should the snapshot need several transactions: what routes use is written
        // before the routes, and routes go before what they used.
        let mut puts: Vec<(String, (ResourceKind, Vec<u8>))> = wanted.into_iter().collect();
        puts.sort_by_key(|(_, (kind, _))| *kind == ResourceKind::Routes);
        deletes.sort_by_key(|(kind, _)| *kind != ResourceKind::Routes);
        let mut ops: Vec<Op> = puts
            .into_iter()
            .map(|(key, (_, value))| Op::Put {
                key,
                value,
                lease: None,
            })
            .chain(deletes.into_iter().map(|(_, key)| Op::Delete { key }))
            .collect();
        ops.push(put_meta(&meta_key, snapshot.revision));
        let compare = match meta_kv {
            Some(kv) => Compare::ValueEquals {
                key: meta_key.clone(),
                value: kv.value.clone(),
            },
            None => Compare::Absent {
                key: meta_key.clone(),
            },
        };
        let batches = split_ops(ops, &compare);
        let count = batches.len();
        for (i, ops) in batches.into_iter().enumerate() {
            let outcome = self
                .store_of(instance)
                .store
                .txn(Txn {
                    compares: vec![compare.clone()],
                    ops,
                })
                .await?;
            if !outcome.succeeded {
                // Another write landed between our read and this transaction. Meta
                // still names the revision before the snapshot, so the admin sends it
                // again and the store converges.
                if i > 0 {
                    tracing::warn!(instance, revision = %snapshot.revision, written = i, of = count,
                        "snapshot interrupted by another write after some of its transactions");
                }
                let held = self.meta_revision(instance).await?;
                return Err(AgentError::RevisionConflict {
                    held: held.0,
                    needed: snapshot.revision.0,
                });
            }
        }
        tracing::info!(instance, revision = %snapshot.revision, transactions = count, "applied snapshot");
        Ok(())
    }
}

/// Splits `ops` into transactions the store takes (each also carries `compare`),
/// keeping their order.
fn split_ops(ops: Vec<Op>, compare: &Compare) -> Vec<Vec<Op>> {
    let fixed = compare.bytes();
    let mut batches = Vec::new();
    let mut batch: Vec<Op> = Vec::new();
    let mut bytes = fixed;
    for op in ops {
        let size = op.bytes();
        if !batch.is_empty() && (batch.len() == TXN_MAX_OPS || bytes + size > TXN_MAX_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = fixed;
        }
        bytes += size;
        batch.push(op);
    }
    batches.push(batch);
    batches
}

fn not_found(kind: ResourceKind, id: &str) -> AgentError {
    AgentError::NotFound(format!("{} {id:?} does not exist", kind.singular()))
}

fn decode(kind: ResourceKind, kv: &KeyValue) -> Option<Resource> {
    match kind.parse(&kv.value) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "skipping unreadable resource in the store");
            None
        }
    }
}

fn parse_meta(kv: &KeyValue) -> Revision {
    match serde_json::from_slice::<InstanceMeta>(&kv.value) {
        Ok(meta) => meta.revision,
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "unreadable meta; treating as revision 0");
            Revision(0)
        }
    }
}

fn meta_bytes(revision: Revision) -> Vec<u8> {
    serde_json::to_vec(&InstanceMeta { revision }).expect("meta always serialises")
}

/// Revision 0 means "never written": the meta key must be absent.
fn meta_compare(meta_key: &str, revision: Revision) -> Compare {
    if revision.0 == 0 {
        Compare::Absent {
            key: meta_key.to_owned(),
        }
    } else {
        Compare::ValueEquals {
            key: meta_key.to_owned(),
            value: meta_bytes(revision),
        }
    }
}

fn put_meta(meta_key: &str, revision: Revision) -> Op {
    Op::Put {
        key: meta_key.to_owned(),
        value: meta_bytes(revision),
        lease: None,
    }
}

fn put(key: &str, resource: &Resource) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: serde_json::to_vec(resource).expect("model types always serialise"),
        lease: None,
    }
}
