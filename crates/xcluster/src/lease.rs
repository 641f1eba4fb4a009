//! Leader election with a Kubernetes Lease (`coordination.k8s.io/v1`), so that of two
//! or more controller replicas only one writes slices; the others watch and plan, ready
//! to take over.
//!
//! The rules are client-go's leader election: the holder renews the Lease every
//! `duration / 3`; another replica takes it over only after it saw the same record
//! (the same resourceVersion) unchanged for a whole `duration` by its own clock, so
//! clocks that disagree across machines cannot make two leaders; every write is
//! conditional on the resourceVersion read (409 means someone else wrote first); a
//! holder that could not renew for `2/3 · duration` stops writing before anyone may
//! take over. On a clean stop the holder gives the Lease up so a standby takes over at
//! once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Where the Lease lives and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSpecification {
    pub namespace: String,
    pub name: String,
    pub duration: Duration,
    /// This replica's name in `holderIdentity`.
    pub identity: String,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// This replica holds the Lease (created, renewed or taken over).
    Held,
    /// Another replica holds it.
    Other,
}

/// Why [`run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    /// The cluster refused the credentials: make a client from the kubeconfig again.
    Credentials,
}

/// Elects with `client`'s cluster until `stop` turns true, publishing whether this
/// replica leads on `leader`; gives the Lease up when stopping as its holder.
pub async fn run(
    client: kube::Client,
    spec: &LeaseSpecification,
    leader: &watch::Sender<bool>,
    stop: &mut watch::Receiver<bool>,
    request_timeout: Duration,
) -> Ended {
    let api: Api<Lease> = Api::namespaced(client, &spec.namespace);
    let retry = spec.duration / 3;
    let renew_deadline = spec.duration * 2 / 3;
    let mut observed: Option<(String, Instant)> = None;
    let mut last_held: Option<Instant> = None;
    loop {
        let attempt =
            tokio::time::timeout(request_timeout, try_acquire(&api, spec, &mut observed)).await;
        let now = Instant::now();
        match attempt {
            Ok(Ok(Outcome::Held)) => {
                last_held = Some(now);
                if !*leader.borrow() {
                    tracing::info!(identity = %spec.identity, lease = %spec.name, "this replica leads: it writes slices");
                }
                leader.send_replace(true);
            }
            Ok(Ok(Outcome::Other)) => {
                if *leader.borrow() {
                    tracing::warn!(identity = %spec.identity, "another replica holds the lease: this one stops writing");
                }
                last_held = None;
                leader.send_replace(false);
            }
            Ok(Err(kube::Error::Api(status))) if matches!(status.code, 401 | 403) => {
                leader.send_replace(false);
                return Ended::Credentials;
            }
            Ok(Err(error)) => tracing::debug!(%error, "lease"),
            Err(_) => tracing::debug!("lease: no answer within {request_timeout:?}"),
        }
        if *leader.borrow() && last_held.is_none_or(|at| now.duration_since(at) > renew_deadline) {
            tracing::warn!(identity = %spec.identity, "could not renew the lease in time: this replica stops writing");
            leader.send_replace(false);
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            if *leader.borrow() {
                leader.send_replace(false);
                let _ = tokio::time::timeout(request_timeout, release(&api, spec)).await;
            }
            return Ended::Stopped;
        }
    }
}

async fn try_acquire(
    api: &Api<Lease>,
    spec: &LeaseSpecification,
    observed: &mut Option<(String, Instant)>,
) -> Result<Outcome, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let duration_seconds = i32::try_from(spec.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&spec.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(spec.name.clone()),
                namespace: Some(spec.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(spec.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Held),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Other),
            Err(error) => Err(error),
        };
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let record = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = record.holder_identity.clone().unwrap_or_default();
    let mine = holder == spec.identity;
    if !mine && !holder.is_empty() {
        // Another holder: its record must stay unchanged for a whole duration, as
        // this replica's clock measures it, before it counts as gone.
        let held_for = record.lease_duration_seconds.map_or(spec.duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
        let first_seen = match observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                *observed = Some((version.clone(), Instant::now()));
                return Ok(Outcome::Other);
            }
        };
        if first_seen.elapsed() < held_for {
            return Ok(Outcome::Other);
        }
    }
    if !mine {
        record.acquire_time = Some(now.clone());
        record.lease_transitions = Some(record.lease_transitions.unwrap_or(0) + 1);
        record.holder_identity = Some(spec.identity.clone());
    }
    record.renew_time = Some(now);
    record.lease_duration_seconds = Some(duration_seconds);
    // The write names the version read: a concurrent writer makes it fail with 409.
    match api
        .replace(&spec.name, &PostParams::default(), &lease)
        .await
    {
        Ok(written) => {
            *observed = written
                .metadata
                .resource_version
                .map(|v| (v, Instant::now()));
            Ok(Outcome::Held)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Other),
        Err(error) => Err(error),
    }
}

/// Gives the Lease up (no holder, renewed now) so a standby takes it at once.
async fn release(api: &Api<Lease>, spec: &LeaseSpecification) -> Result<(), kube::Error> {
    let mut lease = api.get(&spec.name).await?;
    let Some(record) = lease.spec.as_mut() else {
        return Ok(());
    };
    if record.holder_identity.as_deref() != Some(spec.identity.as_str()) {
        return Ok(());
    }
    record.holder_identity = None;
    record.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    api.replace(&spec.name, &PostParams::default(), &lease)
        .await?;
    tracing::info!(identity = %spec.identity, "lease given up");
    Ok(())
}
