//! The etcd v3 backend (`etcd-client`): the production config store.
//!
//! Every unary call is bounded by a timeout so a dead etcd never blocks a caller; the
//! connection is lazy and re-established by the client, so an `EtcdStore` made while
//! etcd is down starts working when it comes back. Watches are not given a deadline
//! (etcd would cancel a stream that carries one); HTTP/2 keep-alive detects a dead peer.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    TxnOp, WatchOptions,
};
use futures::StreamExt;

use crate::{
    Compare, ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreRevision, Txn,
    TxnOutcome, WatchBatch, WatchEvent,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct EtcdStore {
    /// Cheap to clone: clones share one balanced gRPC channel.
    client: Client,
}

impl EtcdStore {
    /// Prepares a client for `endpoints` (`http://host:port`); does not wait for etcd.
    pub async fn connect(endpoints: Vec<String>) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { client })
    }
}

/// Runs one etcd call with the call timeout, mapping failures to store errors.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(map_error),
        Err(_) => Err(StoreError::Unavailable(
            "etcd did not answer in time".into(),
        )),
    }
}

fn map_error(e: etcd_client::Error) -> StoreError {
    if e.to_string().contains("lease not found") {
        return StoreError::LeaseNotFound;
    }
    match &e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("compacted") {
                StoreError::Compacted {
                    compact_revision: 0,
                }
            } else if matches!(
                status.code() as i32,
                GRPC_UNKNOWN | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE
            ) {
                StoreError::Unavailable(message.to_owned())
            } else {
                StoreError::Rejected(message.to_owned())
            }
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

// gRPC status codes that mean "try again later" (grpc/doc/statuscodes.md).
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

#[async_trait]
impl ConfigStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut client = self.client.clone();
        let resp = bounded(client.get(key, None)).await?;
        Ok(resp.kvs().first().map(convert_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let mut client = self.client.clone();
        let resp = bounded(client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut kvs: Vec<KeyValue> = resp.kvs().iter().map(convert_kv).collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { revision, kvs })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .into_iter()
            .map(|c| match c {
                Compare::Absent { key } => EtcdCompare::create_revision(key, CompareOp::Equal, 0),
                Compare::ValueEquals { key, value } => {
                    EtcdCompare::value(key, CompareOp::Equal, value)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = lease.map(|l| PutOptions::new().with_lease(l.0));
                    TxnOp::put(key, value, options)
                }
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops);
        let mut client = self.client.clone();
        let resp = bounded(client.txn(request)).await?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: StoreRevision,
    ) -> Result<RawWatch, StoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision);
        let mut stream = bounded(client.watch(prefix, Some(options))).await?;
        // etcd answers a create first; a compacted start revision shows up there.
        let first = match tokio::time::timeout(CALL_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(resp))) => resp,
            Ok(Some(Err(e))) => return Err(map_error(e)),
            Ok(None) => return Err(StoreError::Unavailable("watch closed at once".into())),
            Err(_) => return Err(StoreError::Unavailable("watch not created in time".into())),
        };
        if first.compact_revision() > 0 || first.canceled() {
            return Err(StoreError::Compacted {
                compact_revision: first.compact_revision(),
            });
        }
        let first_batch = convert_response(&first);
        // The stream owns the watch's request sender: dropping it cancels the watch.
        let rest = stream.map(|item| match item {
            Ok(resp) if resp.compact_revision() > 0 => Err(StoreError::Compacted {
                compact_revision: resp.compact_revision(),
            }),
            Ok(resp) if resp.canceled() => Err(StoreError::Unavailable(format!(
                "watch canceled: {}",
                resp.cancel_reason()
            ))),
            Ok(resp) => Ok(convert_response(&resp)),
            Err(e) => Err(map_error(e)),
        });
        let batches = futures::stream::iter(first_batch.map(Ok))
            .chain(rest.filter_map(|item| async move {
                match item {
                    Ok(Some(batch)) => Some(Ok(batch)),
                    // Progress notifications and empty responses carry nothing to apply.
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            }))
            .chain(futures::stream::once(async {
                Err(StoreError::Unavailable("etcd watch stream ended".into()))
            }));
        Ok(batches.boxed())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        let mut client = self.client.clone();
        let resp = bounded(client.lease_grant(ttl_secs, None)).await?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let call = async move {
            let (mut keeper, mut responses) = client.lease_keep_alive(lease.0).await?;
            keeper.keep_alive().await?;
            responses.message().await
        };
        match bounded(call).await? {
            // etcd answers an unknown or expired lease with a TTL of 0 or less.
            Some(resp) if resp.ttl() > 0 => Ok(()),
            Some(_) => Err(StoreError::LeaseNotFound),
            None => Err(StoreError::Unavailable(
                "lease keep-alive stream closed".into(),
            )),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        bounded(client.lease_revoke(lease.0)).await?;
        Ok(())
    }
}

/// One watch response as one batch; `None` when it carries no event.
fn convert_response(resp: &etcd_client::WatchResponse) -> Option<WatchBatch> {
    let events: Vec<WatchEvent> = resp
        .events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            Some(match event.event_type() {
                EventType::Put => WatchEvent::Put(convert_kv(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    mod_revision: kv.mod_revision(),
                },
            })
        })
        .collect();
    if events.is_empty() {
        return None;
    }
    let revision = resp.header().map(|h| h.revision()).unwrap_or_else(|| {
        events
            .iter()
            .map(WatchEvent::mod_revision)
            .max()
            .unwrap_or(0)
    });
    Some(WatchBatch { revision, events })
}
