//! The etcd v3 backend (`etcd-client`): the production config store.
//!
//! Every unary call is bounded by a timeout so a dead etcd never blocks a caller; the
//! connection is lazy and re-established by the client, so an `EtcdStore` made while
//! etcd is down starts working when it comes back. Watches are not given a deadline
//! (etcd would cancel a stream that carries one); HTTP/2 keep-alive detects a dead peer.
//!
//! With [`StoreOptions`](crate::StoreOptions) the client speaks TLS (the etcd's CA,
//! optionally a client certificate) and authenticates as an etcd user, refreshing its
//! token when etcd expires it. A wrong user or password fails at once; an etcd that is
//! down at start is authenticated with as soon as it answers, so a gateway can still
//! start from its local snapshot.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, TxnOp, WatchOptions,
};
use futures::StreamExt;

use crate::{
    Compare, ConfigStore, KeyValue, LeaseId, Listing, Op, RawWatch, StoreError, StoreOptions,
    StoreRevision, Txn, TxnOutcome, WatchBatch, WatchEvent,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys per page of a listing: well under gRPC's 4 MiB answer limit even for large
/// objects (certificates are a few KiB).
const LIST_PAGE: i64 = 500;

/// The first key after every key that starts with `prefix` (etcd's range end for a
/// prefix); `\0` (to the end of the keyspace) when no such key exists.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone)]
pub struct EtcdStore {
    /// Cheap to clone: clones share one balanced gRPC channel.
    client: Client,
}

impl EtcdStore {
    /// Prepares a client for `endpoints` (`host:port`); does not wait for etcd, except
    /// to authenticate when a user is given and etcd answers.
    pub async fn connect(hosts: Vec<String>, store: &StoreOptions) -> Result<Self, StoreError> {
        let scheme = if store.tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = hosts.iter().map(|h| format!("{scheme}://{h}")).collect();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from its leader cancels our watches instead of letting them
            // go silent, so the watcher moves to another member.
            .with_require_leader(true);
        if let Some(tls) = &store.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let joined = endpoints.join(",");
        if let Some(user) = &store.user {
            let authenticated = options
                .clone()
                .with_user(&user.name, &user.password)
                .with_auto_token_refresh(true);
            match tokio::time::timeout(
                CALL_TIMEOUT,
                Client::connect(endpoints.clone(), Some(authenticated)),
            )
            .await
            {
                Ok(Ok(client)) => return Ok(Self { client }),
                Ok(Err(etcd_client::Error::GRpcStatus(status)))
                    if !TRANSIENT_CODES.contains(&(status.code() as i32)) =>
                {
                    return Err(StoreError::Rejected(format!(
                        "etcd refused user {:?}: {}",
                        user.name,
                        status.message()
                    )));
                }
                Ok(Err(
                    e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)),
                )) => {
                    return Err(StoreError::InvalidUrl {
                        url: joined,
                        reason: e.to_string(),
                    })
                }
                // etcd does not answer now: connect lazily below and authenticate once
                // it does.
                Ok(Err(_)) | Err(_) => {}
            }
        }
        // The channel connects lazily, so this only fails on a malformed endpoint; the
        // timeout is a guard in case a client version starts talking to etcd here.
        let client =
            match tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(
                    e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)),
                )) => {
                    return Err(StoreError::InvalidUrl {
                        url: joined,
                        reason: e.to_string(),
                    })
                }
                Ok(Err(e)) => return Err(map_error(e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(
                        "etcd did not answer in time".into(),
                    ))
                }
            };
        if let Some(user) = store.user.clone() {
            tokio::spawn(authenticate_when_up(client.clone(), user));
        }
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

/// Authenticates a client made while etcd was down, retrying every second until etcd
/// answers (requests fail as refused until then). Clones of a client share its
/// credentials and token, so every user of the store is authenticated at once.
async fn authenticate_when_up(mut client: Client, user: crate::StoreUser) {
    loop {
        match client
            .update_user(Some((user.name.clone(), user.password.clone())))
            .await
        {
            Ok(()) => {
                tracing::info!(user = %user.name, "authenticated with etcd");
                return;
            }
            Err(e) => {
                tracing::debug!(user = %user.name, error = %map_error(e), "etcd authentication pending");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn map_error(e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("lease not found") {
                StoreError::LeaseNotFound
            } else if message.contains("compacted") {
                // A read below the compact revision; etcd does not say which one it is.
                StoreError::Compacted {
                    compact_revision: 0,
                }
            } else if TRANSIENT_CODES.contains(&(status.code() as i32)) {
                StoreError::Unavailable(message.to_owned())
            } else {
                StoreError::Rejected(message.to_owned())
            }
        }
        // The client's own verdict on a keep-alive answered with a TTL of 0.
        etcd_client::Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            StoreError::LeaseNotFound
        }
        // Transport, I/O and client-side stream failures: the connection, not the request.
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// gRPC status codes that mean "try again later" (grpc/doc/statuscodes.md): cancelled,
/// unknown, deadline exceeded, resource exhausted, aborted, internal (how tonic reports
/// a broken HTTP/2 connection) and unavailable (etcd's "leader changed", "no leader").
const TRANSIENT_CODES: [i32; 7] = [1, 2, 4, 8, 10, 13, 14];

/// Why etcd ended a watch, if this response ends it.
fn cancellation(resp: &etcd_client::WatchResponse) -> Option<StoreError> {
    if resp.compact_revision() > 0 {
        return Some(StoreError::Compacted {
            compact_revision: resp.compact_revision(),
        });
    }
    resp.canceled().then(|| {
        StoreError::Unavailable(format!("etcd canceled the watch: {}", resp.cancel_reason()))
    })
}

/// The next batch of a watch; after an error (or the end of etcd's stream) it yields one
/// error and ends, so a consumer never reads past a gap.
async fn next_batch(
    stream: Option<etcd_client::WatchStream>,
) -> Option<(
    Result<WatchBatch, StoreError>,
    Option<etcd_client::WatchStream>,
)> {
    let mut stream = stream?;
    loop {
        let error = match stream.next().await {
            Some(Ok(resp)) => match cancellation(&resp) {
                Some(e) => e,
                None => match convert_response(&resp) {
                    Some(batch) => return Some((Ok(batch), Some(stream))),
                    // Progress notifications and empty responses carry nothing to apply.
                    None => continue,
                },
            },
            Some(Err(e)) => match map_error(e) {
                compacted @ StoreError::Compacted { .. } => compacted,
                other => StoreError::Unavailable(format!("etcd watch broke: {other}")),
            },
            None => StoreError::Unavailable("etcd ended the watch stream".into()),
        };
        return Some((Err(error), None));
    }
}

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

    /// Reads the prefix in pages of [`LIST_PAGE`] keys, every page at the first page's
    /// revision, so the listing is one consistent snapshot however large it is (one
    /// answer for 100k routes would pass gRPC's 4 MiB message limit).
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let mut client = self.client.clone();
        let range_end = prefix_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut kvs: Vec<KeyValue> = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(LIST_PAGE)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = bounded(client.get(start.clone(), Some(options))).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            kvs.extend(resp.kvs().iter().map(convert_kv));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing { revision, kvs })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        // etcd would refuse it too, with a less telling message.
        txn.check_size()?;
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
        // The stream owns the watch's request sender: dropping it cancels the watch.
        let mut stream = bounded(client.watch(prefix, Some(options))).await?;
        // etcd answers the create request first, with the current revision.
        let created = match tokio::time::timeout(CALL_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(resp))) => resp,
            Ok(Some(Err(e))) => return Err(map_error(e)),
            Ok(None) => return Err(StoreError::Unavailable("watch closed at once".into())),
            Err(_) => return Err(StoreError::Unavailable("watch not created in time".into())),
        };
        if let Some(e) = cancellation(&created) {
            return Err(e);
        }
        // etcd reports a compacted start revision only later, on the stream; reading at
        // that revision tells now, so the caller can relist at once.
        let current = created.header().map(|h| h.revision()).unwrap_or_default();
        if start_revision > 0 && start_revision <= current {
            let probe = GetOptions::new()
                .with_revision(start_revision)
                .with_count_only();
            if let Err(StoreError::Compacted { .. }) =
                bounded(client.get(prefix, Some(probe))).await
            {
                // The watch's own cancellation carries the compact revision.
                let compact_revision = match tokio::time::timeout(CALL_TIMEOUT, stream.next()).await
                {
                    Ok(Some(Ok(resp))) => resp.compact_revision(),
                    _ => 0,
                };
                return Err(StoreError::Compacted { compact_revision });
            }
        }
        Ok(futures::stream::unfold(Some(stream), next_batch).boxed())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        let mut client = self.client.clone();
        let resp = bounded(client.lease_grant(ttl_secs, None)).await?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        // Opening the keep-alive stream sends one refresh and reads its answer (an error
        // when etcd no longer knows the lease); that is exactly one keep-alive.
        bounded(client.lease_keep_alive(lease.0)).await?;
        Ok(())
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
