//! One cluster's controller (requirements X1, X2): its own kube-rs client, made from
//! its kubeconfig and made again whenever the credentials are refused or the file
//! changes; list-watches of the labelled Services and of the EndpointSlices; a work
//! queue of Services processed by a bounded worker pool; a probe of the API server;
//! and the writer that applies the aggregator's slices to it.
//!
//! What it reports to the aggregator ([`Report`], through one channel for all
//! clusters, X3):
//! - nothing about its Services until the first complete list of both kinds, then all
//!   of them at once ([`Report::Complete`]): a half-loaded cache is never taken for
//!   "no endpoints";
//! - then each Service's view when a watch event touched it (or at the periodic
//!   resync), and each of Portico's own slices as the cluster holds it;
//! - its link: synced while its watches and its probe succeed; lost since the last
//!   successful contact when they fail. A relist (after 410 Gone or a new session)
//!   keeps the caches until the new list is complete, then replaces them at once.
//!
//! A watch that went silent without closing (a black-holed connection) is detected
//! twice over: kube-rs restarts a watch that delivered nothing for the watch timeout
//! plus 5 s (the timeout is 60 s here, not kube-rs's 290 s), and when the probe
//! succeeds again after failing, the controller starts new watches at once rather than
//! trusting connections that were black-holed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{mpsc, watch};

use crate::config::{ClusterSpec, Timings};
use crate::queue::{spawn_workers, WorkQueue};
use crate::slices::{self, LABEL_REMOTE, LABEL_SERVICE_NAME};
use crate::union::{Link, ServiceKey, ServiceView, Slice, Write, MANAGED_BY};

/// A slice's namespace and name.
pub type SliceKey = (String, String);

/// What a cluster controller tells the aggregator.
#[derive(Debug, Clone)]
pub enum Report {
    /// The cluster's link changed.
    Link { cluster: String, link: Link },
    /// The first complete list of both kinds: every labelled Service's view and every
    /// slice Portico manages there; replaces whatever the aggregator held.
    Complete {
        cluster: String,
        services: BTreeMap<ServiceKey, ServiceView>,
        managed: BTreeMap<SliceKey, Slice>,
    },
    /// A Service's view (`None`: gone, or no longer labelled).
    Service {
        cluster: String,
        key: ServiceKey,
        view: Option<ServiceView>,
    },
    /// One of Portico's slices as the cluster now holds it (`None`: deleted).
    Managed {
        cluster: String,
        key: SliceKey,
        slice: Option<Slice>,
    },
    /// A batch of writes is done: for every slice it touched, what the cluster holds
    /// now (as its write answered), and how many writes failed.
    Written {
        cluster: String,
        held: Vec<(SliceKey, Option<Slice>)>,
        failed: usize,
    },
}

/// A running cluster controller; stopped when dropped.
pub struct ClusterHandle {
    pub spec: ClusterSpec,
    /// Batches of writes for this cluster (production clusters).
    pub writes: mpsc::Sender<Vec<Write>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the controller of `spec`.
pub fn spawn(
    spec: ClusterSpec,
    timings: Timings,
    reports: mpsc::UnboundedSender<Report>,
) -> ClusterHandle {
    let (writes, write_rx) = mpsc::channel(16);
    let controller = Controller {
        spec: spec.clone(),
        timings,
        reports,
        caches: Arc::new(Mutex::new(Caches::default())),
    };
    let task = tokio::spawn(controller.run(write_rx));
    ClusterHandle { spec, writes, task }
}

/// The watches' caches, shared with the workers and the writer.
#[derive(Default)]
struct Caches {
    services: HashMap<SliceKey, Service>,
    slices: HashMap<SliceKey, EndpointSlice>,
    /// A Service's slices (by the `kubernetes.io/service-name` label).
    by_service: HashMap<ServiceKey, BTreeSet<SliceKey>>,
    /// Both kinds listed completely at least once: reports flow.
    complete: bool,
    /// Services whose view was reported (so a vanished one is reported gone once).
    reported: HashSet<ServiceKey>,
}

impl Caches {
    fn insert_slice(&mut self, key: SliceKey, slice: EndpointSlice) {
        if let Some(service) = slices::service_of(&slice) {
            self.by_service
                .entry(ServiceKey::new(&key.0, service))
                .or_default()
                .insert(key.clone());
        }
        if let Some(old) = self.slices.insert(key.clone(), slice) {
            self.forget_index(&key, &old);
        }
    }

    fn remove_slice(&mut self, key: &SliceKey) -> Option<EndpointSlice> {
        let old = self.slices.remove(key)?;
        self.forget_index(key, &old);
        Some(old)
    }

    /// Drops `key` from the index entry of `old`'s Service, unless the slice now
    /// stored under `key` still belongs to it.
    fn forget_index(&mut self, key: &SliceKey, old: &EndpointSlice) {
        let Some(service) = slices::service_of(old) else {
            return;
        };
        let still = self
            .slices
            .get(key)
            .and_then(slices::service_of)
            .is_some_and(|now| now == service);
        if still {
            return;
        }
        let index = ServiceKey::new(&key.0, service);
        if let Some(keys) = self.by_service.get_mut(&index) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_service.remove(&index);
            }
        }
    }

    /// The view of the Service at `key`: `Ok(None)` when it is not cached or not
    /// labelled; an error for a label with a wrong value.
    fn view(&self, key: &ServiceKey) -> Result<Option<ServiceView>, String> {
        let Some(service) = self
            .services
            .get(&(key.namespace.clone(), key.name.clone()))
        else {
            return Ok(None);
        };
        let slices = self
            .by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k));
        slices::service_view(service, slices)
    }

    fn service_keys(&self) -> BTreeSet<ServiceKey> {
        self.services
            .keys()
            .map(|(ns, name)| ServiceKey::new(ns, name))
            .chain(self.reported.iter().cloned())
            .collect()
    }

    fn managed(&self) -> BTreeMap<SliceKey, Slice> {
        self.slices
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), slices::managed_slice(s)?)))
            .collect()
    }
}

struct Controller {
    spec: ClusterSpec,
    timings: Timings,
    reports: mpsc::UnboundedSender<Report>,
    caches: Arc<Mutex<Caches>>,
}

/// Why a session (one client and its watches) ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The credentials were refused or the kubeconfig changed: read it again.
    Credentials,
    /// The API server is reachable again after failing: start new watches.
    Reconnected,
}

/// The client of one session, for the writer.
type SharedClient = watch::Sender<Option<kube::Client>>;

impl Controller {
    fn caches(&self) -> MutexGuard<'_, Caches> {
        lock(&self.caches)
    }

    fn report(&self, report: Report) {
        let _ = self.reports.send(report);
    }

    async fn run(self, write_rx: mpsc::Receiver<Vec<Write>>) {
        let name = self.spec.name.clone();
        let queue: WorkQueue<ServiceKey> = WorkQueue::new();
        // Both end with this task: the workers' set aborts them when dropped.
        let _workers = {
            let caches = self.caches.clone();
            let reports = self.reports.clone();
            let cluster = name.clone();
            spawn_workers(&queue, self.timings.workers, move |key: ServiceKey| {
                let caches = caches.clone();
                let reports = reports.clone();
                let cluster = cluster.clone();
                async move { process(&caches, &reports, &cluster, key) }
            })
        };
        let client: SharedClient = watch::Sender::new(None);
        let _writer = AbortOnDrop(tokio::spawn(write_loop(
            name.clone(),
            self.caches.clone(),
            client.subscribe(),
            write_rx,
            self.reports.clone(),
            self.timings.request_timeout,
        )));
        let mut link = LinkTracker::default();
        loop {
            let built = build_client(&self.spec, &self.timings).await;
            let (session_client, loaded_at) = match built {
                Ok(built) => built,
                Err(error) => {
                    tracing::warn!(cluster = %name, %error, "cannot make a client");
                    self.set_link(&mut link, false);
                    tokio::time::sleep(self.timings.probe_every).await;
                    continue;
                }
            };
            client.send_replace(Some(session_client.clone()));
            let end = self
                .session(&session_client, loaded_at, &queue, &mut link)
                .await;
            tracing::info!(cluster = %name, reason = ?end, "starting a new session");
        }
    }

    /// Reports the link when it changed (see [`LinkTracker::observe`]).
    fn set_link(&self, link: &mut LinkTracker, healthy: bool) {
        let complete = self.caches().complete;
        if let Some(now) = link.observe(complete, healthy) {
            tracing::info!(cluster = %self.spec.name, link = ?now, "link");
            self.report(Report::Link {
                cluster: self.spec.name.clone(),
                link: now,
            });
        }
    }

    async fn session(
        &self,
        client: &kube::Client,
        loaded_at: Option<SystemTime>,
        queue: &WorkQueue<ServiceKey>,
        link: &mut LinkTracker,
    ) -> End {
        let watch_timeout = u32::try_from(self.timings.watch_timeout.as_secs()).unwrap_or(290);
        let services = watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default()
                .labels(LABEL_REMOTE)
                .timeout(watch_timeout),
        )
        .default_backoff();
        let slices = watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default()
                .labels(LABEL_SERVICE_NAME)
                .timeout(watch_timeout),
        )
        .default_backoff();
        let mut services = std::pin::pin!(services);
        let mut slices = std::pin::pin!(slices);
        let (probe_tx, mut probes) = mpsc::channel(4);
        let probe = tokio::spawn(probe_loop(
            Api::<Service>::all(client.clone()),
            ListParams::default().labels(LABEL_REMOTE).limit(1),
            self.timings.clone(),
            probe_tx,
        ));
        let _probe = AbortOnDrop(probe);
        let mut resync = tokio::time::interval(self.timings.resync);
        resync.tick().await;
        let mut service_buffer: Option<HashMap<SliceKey, Service>> = None;
        let mut slice_buffer: Option<HashMap<SliceKey, EndpointSlice>> = None;
        let mut listed = (false, false);
        let mut failing = false;
        loop {
            let healthy = tokio::select! {
                event = services.next() => match event {
                    Some(Ok(event)) => {
                        self.on_service(event, &mut service_buffer, &mut listed, queue);
                        true
                    }
                    Some(Err(error)) => match watch_failed(&self.spec.name, "service", &error) {
                        Ok(healthy) => healthy,
                        Err(end) => return end,
                    },
                    None => false,
                },
                event = slices.next() => match event {
                    Some(Ok(event)) => {
                        self.on_slice(event, &mut slice_buffer, &mut listed, queue);
                        true
                    }
                    Some(Err(error)) => match watch_failed(&self.spec.name, "slice", &error) {
                        Ok(healthy) => healthy,
                        Err(end) => return end,
                    },
                    None => false,
                },
                probe = probes.recv() => {
                    match probe_outcome(probe, failing, &self.spec, loaded_at, link) {
                        Ok(healthy) => healthy,
                        Err(end) => return end,
                    }
                }
                _ = resync.tick() => {
                    for key in self.caches().service_keys() {
                        queue.add(key);
                    }
                    !failing
                }
            };
            if healthy {
                link.contact();
            }
            failing = !healthy;
            self.set_link(link, healthy);
        }
    }

    fn on_service(
        &self,
        event: watcher::Event<Service>,
        buffer: &mut Option<HashMap<SliceKey, Service>>,
        listed: &mut (bool, bool),
        queue: &WorkQueue<ServiceKey>,
    ) {
        match event {
            watcher::Event::Init => *buffer = Some(HashMap::new()),
            watcher::Event::InitApply(service) => {
                if let (Some(buffer), Some(key)) = (buffer.as_mut(), object_key(&service.metadata))
                {
                    buffer.insert(key, service);
                }
            }
            watcher::Event::InitDone => {
                let fresh = buffer.take().unwrap_or_default();
                let mut caches = self.caches();
                let old = std::mem::replace(&mut caches.services, fresh);
                let keys: BTreeSet<ServiceKey> = old
                    .keys()
                    .chain(caches.services.keys())
                    .map(|(ns, name)| ServiceKey::new(ns, name))
                    .collect();
                listed.0 = true;
                self.maybe_complete(&mut caches, *listed, keys, queue);
            }
            watcher::Event::Apply(service) => {
                if let Some(key) = object_key(&service.metadata) {
                    self.caches().services.insert(key.clone(), service);
                    queue.add(ServiceKey::new(&key.0, &key.1));
                }
            }
            watcher::Event::Delete(service) => {
                if let Some(key) = object_key(&service.metadata) {
                    self.caches().services.remove(&key);
                    queue.add(ServiceKey::new(&key.0, &key.1));
                }
            }
        }
    }

    fn on_slice(
        &self,
        event: watcher::Event<EndpointSlice>,
        buffer: &mut Option<HashMap<SliceKey, EndpointSlice>>,
        listed: &mut (bool, bool),
        queue: &WorkQueue<ServiceKey>,
    ) {
        match event {
            watcher::Event::Init => *buffer = Some(HashMap::new()),
            watcher::Event::InitApply(slice) => {
                if let (Some(buffer), Some(key)) = (buffer.as_mut(), object_key(&slice.metadata)) {
                    buffer.insert(key, slice);
                }
            }
            watcher::Event::InitDone => {
                let fresh = buffer.take().unwrap_or_default();
                let mut caches = self.caches();
                let old_managed = caches.managed();
                let old: Vec<SliceKey> = caches.slices.keys().cloned().collect();
                let mut keys: BTreeSet<ServiceKey> = BTreeSet::new();
                for key in old {
                    if let Some(slice) = caches.remove_slice(&key) {
                        keys.extend(slice_service(&key, &slice));
                    }
                }
                for (key, slice) in fresh {
                    keys.extend(slice_service(&key, &slice));
                    caches.insert_slice(key, slice);
                }
                listed.1 = true;
                if caches.complete {
                    let new_managed = caches.managed();
                    for key in old_managed.keys().chain(new_managed.keys()) {
                        if old_managed.get(key) != new_managed.get(key) {
                            self.report(Report::Managed {
                                cluster: self.spec.name.clone(),
                                key: key.clone(),
                                slice: new_managed.get(key).cloned(),
                            });
                        }
                    }
                }
                self.maybe_complete(&mut caches, *listed, keys, queue);
            }
            watcher::Event::Apply(slice) => {
                let Some(key) = object_key(&slice.metadata) else {
                    return;
                };
                let mut caches = self.caches();
                let mut services: BTreeSet<ServiceKey> =
                    slice_service(&key, &slice).into_iter().collect();
                let managed = slices::managed_slice(&slice);
                let was_managed = caches.slices.get(&key).is_some_and(slices::is_managed);
                if let Some(old) = caches.slices.get(&key) {
                    services.extend(slice_service(&key, old));
                }
                caches.insert_slice(key.clone(), slice);
                if caches.complete && (managed.is_some() || was_managed) {
                    self.report(Report::Managed {
                        cluster: self.spec.name.clone(),
                        key,
                        slice: managed,
                    });
                }
                drop(caches);
                for service in services {
                    queue.add(service);
                }
            }
            watcher::Event::Delete(slice) => {
                let Some(key) = object_key(&slice.metadata) else {
                    return;
                };
                let mut caches = self.caches();
                let old = caches.remove_slice(&key);
                let was_managed =
                    old.as_ref().is_some_and(slices::is_managed) || slices::is_managed(&slice);
                if caches.complete && was_managed {
                    self.report(Report::Managed {
                        cluster: self.spec.name.clone(),
                        key: key.clone(),
                        slice: None,
                    });
                }
                drop(caches);
                for service in old
                    .iter()
                    .chain([&slice])
                    .flat_map(|s| slice_service(&key, s))
                {
                    queue.add(service);
                }
            }
        }
    }

    /// After a list: the first time both kinds are listed, reports everything at once;
    /// later, queues the Services the new list may have changed.
    fn maybe_complete(
        &self,
        caches: &mut Caches,
        listed: (bool, bool),
        keys: BTreeSet<ServiceKey>,
        queue: &WorkQueue<ServiceKey>,
    ) {
        if caches.complete {
            for key in keys {
                queue.add(key);
            }
            return;
        }
        if !(listed.0 && listed.1) {
            return;
        }
        caches.complete = true;
        let mut services = BTreeMap::new();
        for key in caches.service_keys() {
            match caches.view(&key) {
                Ok(Some(view)) => {
                    services.insert(key.clone(), view);
                    caches.reported.insert(key);
                }
                Ok(None) => {}
                Err(problem) => {
                    tracing::warn!(cluster = %self.spec.name, service = %key, %problem, "service ignored");
                }
            }
        }
        let managed = caches.managed();
        tracing::info!(
            cluster = %self.spec.name,
            services = services.len(),
            managed = managed.len(),
            "caches complete"
        );
        self.report(Report::Complete {
            cluster: self.spec.name.clone(),
            services,
            managed,
        });
    }
}

/// A worker's job: the Service's view as the caches hold it now, reported under the
/// caches' lock so reports follow the order of the cache's changes.
fn process(
    caches: &Mutex<Caches>,
    reports: &mpsc::UnboundedSender<Report>,
    cluster: &str,
    key: ServiceKey,
) {
    let mut caches = lock(caches);
    if !caches.complete {
        return;
    }
    let view = match caches.view(&key) {
        Ok(view) => view,
        Err(problem) => {
            tracing::warn!(%cluster, service = %key, %problem, "service ignored");
            None
        }
    };
    if view.is_none() && !caches.reported.remove(&key) {
        return;
    }
    if view.is_some() {
        caches.reported.insert(key.clone());
    }
    let _ = reports.send(Report::Service {
        cluster: cluster.to_owned(),
        key,
        view,
    });
}

fn lock(caches: &Mutex<Caches>) -> MutexGuard<'_, Caches> {
    caches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn object_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<SliceKey> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The Service a slice belongs to (its namespace and `kubernetes.io/service-name`).
fn slice_service(key: &SliceKey, slice: &EndpointSlice) -> Option<ServiceKey> {
    slices::service_of(slice).map(|service| ServiceKey::new(&key.0, service))
}

/// A cluster's link as its watches and probe show it: the one rule for the controller
/// and for gateways' discovery ([`crate::discovery`]).
#[derive(Debug, Default)]
pub(crate) struct LinkTracker {
    link: Link,
    last_contact: Option<Instant>,
}

impl LinkTracker {
    /// The cluster answered just now.
    pub(crate) fn contact(&mut self) {
        self.last_contact = Some(Instant::now());
    }

    /// The link after an observation, when it changed: unknown before the first
    /// complete list; synced when the caches are complete and the cluster answers;
    /// lost since the last contact when it does not.
    pub(crate) fn observe(&mut self, complete: bool, healthy: bool) -> Option<Link> {
        let now = match (complete, healthy) {
            (false, _) => Link::Unknown,
            (true, true) => Link::Synced,
            (true, false) => match self.link {
                Link::Lost { since } => Link::Lost { since },
                _ => Link::Lost {
                    since: self.last_contact.unwrap_or_else(Instant::now),
                },
            },
        };
        (now != self.link).then(|| {
            self.link = now;
            now
        })
    }
}

/// What a watcher's error means: whether the cluster still counts as answering, or
/// the end of the session when the credentials were refused.
pub(crate) fn watch_failed(
    cluster: &str,
    watch: &str,
    error: &watcher::Error,
) -> Result<bool, End> {
    match watch_error(error) {
        WatchTrouble::Credentials => Err(End::Credentials),
        WatchTrouble::Expired => Ok(true),
        WatchTrouble::Unreachable => {
            tracing::debug!(%cluster, %error, watch, "watch failed");
            Ok(false)
        }
    }
}

/// What a probe's result means: whether the cluster answers, or the end of the
/// session: new watches when it answers again after failing (black-holed watches are
/// not trusted), a new client when the credentials were refused or the kubeconfig
/// changed.
pub(crate) fn probe_outcome(
    probe: Option<Probe>,
    failing: bool,
    spec: &ClusterSpec,
    loaded_at: Option<SystemTime>,
    link: &mut LinkTracker,
) -> Result<bool, End> {
    match probe {
        Some(Probe::Ok) => {
            if failing {
                link.contact();
                return Err(End::Reconnected);
            }
            if kubeconfig_changed(spec, loaded_at) {
                return Err(End::Credentials);
            }
            Ok(true)
        }
        Some(Probe::Refused) => Err(End::Credentials),
        Some(Probe::Failed) | None => Ok(false),
    }
}

/// Reads the cluster's kubeconfig and makes a client; also answers when the file was
/// last changed, so a new file is noticed.
pub(crate) async fn build_client(
    spec: &ClusterSpec,
    timings: &Timings,
) -> Result<(kube::Client, Option<SystemTime>), String> {
    let modified = std::fs::metadata(&spec.kubeconfig)
        .and_then(|m| m.modified())
        .ok();
    let kubeconfig = kube::config::Kubeconfig::read_from(&spec.kubeconfig)
        .map_err(|e| format!("{}: {e}", spec.kubeconfig.display()))?;
    let options = kube::config::KubeConfigOptions {
        context: spec.context.clone(),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| format!("{}: {e}", spec.kubeconfig.display()))?;
    config.connect_timeout = Some(timings.request_timeout);
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    Ok((client, modified))
}

fn kubeconfig_changed(spec: &ClusterSpec, loaded_at: Option<SystemTime>) -> bool {
    let now = std::fs::metadata(&spec.kubeconfig)
        .and_then(|m| m.modified())
        .ok();
    now.is_some() && now != loaded_at
}

/// What a watcher's error says about the cluster.
enum WatchTrouble {
    /// 401/403: read the kubeconfig again.
    Credentials,
    /// 410 Gone: the watcher lists again by itself; the cluster answered.
    Expired,
    /// Anything else: the cluster did not answer as it should.
    Unreachable,
}

fn watch_error(error: &watcher::Error) -> WatchTrouble {
    let client_error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => {
            return match status.code {
                401 | 403 => WatchTrouble::Credentials,
                410 => WatchTrouble::Expired,
                _ => WatchTrouble::Unreachable,
            };
        }
        watcher::Error::NoResourceVersion => return WatchTrouble::Unreachable,
    };
    if is_unauthorized(client_error) {
        WatchTrouble::Credentials
    } else {
        WatchTrouble::Unreachable
    }
}

fn is_unauthorized(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if matches!(status.code, 401 | 403))
}

#[derive(Debug)]
pub(crate) enum Probe {
    Ok,
    Failed,
    /// 401/403: the credentials are no longer valid.
    Refused,
}

/// Lists one object of what the watches follow (`params`) every `probe_every`, with
/// the request timeout: a black hole shows as a failed probe within that timeout,
/// whatever the watches do.
pub(crate) async fn probe_loop<K>(
    api: Api<K>,
    params: ListParams,
    timings: Timings,
    results: mpsc::Sender<Probe>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut every = tokio::time::interval(timings.probe_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let answer =
            tokio::time::timeout(timings.request_timeout, api.list_metadata(&params)).await;
        let probe = match answer {
            Ok(Ok(_)) => Probe::Ok,
            Ok(Err(error)) if is_unauthorized(&error) => Probe::Refused,
            Ok(Err(_)) | Err(_) => Probe::Failed,
        };
        if results.send(probe).await.is_err() {
            return;
        }
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies the aggregator's batches with the session's client, one batch at a time,
/// and reports what the cluster holds after each.
async fn write_loop(
    cluster: String,
    caches: Arc<Mutex<Caches>>,
    mut client: watch::Receiver<Option<kube::Client>>,
    mut batches: mpsc::Receiver<Vec<Write>>,
    reports: mpsc::UnboundedSender<Report>,
    timeout: std::time::Duration,
) {
    while let Some(batch) = batches.recv().await {
        let Some(current) = client.borrow_and_update().clone() else {
            let _ = reports.send(Report::Written {
                cluster: cluster.clone(),
                held: Vec::new(),
                failed: batch.len(),
            });
            continue;
        };
        let mut held = Vec::new();
        let mut failed = 0;
        for write in batch {
            match write_one(&current, &caches, &write, timeout).await {
                Ok(result) => held.push(result),
                Err(error) => {
                    failed += 1;
                    tracing::warn!(%cluster, ?write, %error, "write failed");
                }
            }
        }
        let _ = reports.send(Report::Written {
            cluster: cluster.clone(),
            held,
            failed,
        });
    }
}

async fn write_one(
    client: &kube::Client,
    caches: &Mutex<Caches>,
    write: &Write,
    timeout: std::time::Duration,
) -> Result<(SliceKey, Option<Slice>), String> {
    match write {
        Write::Apply(slice) => {
            let owner = lock(caches)
                .services
                .get(&(slice.namespace.clone(), slice.service.clone()))
                .and_then(slices::owner_of);
            let object = slices::endpoint_slice(slice, owner);
            let api = Api::<EndpointSlice>::namespaced(client.clone(), &slice.namespace);
            let params = PatchParams::apply(MANAGED_BY);
            let applied = tokio::time::timeout(
                timeout,
                api.patch(&slice.name, &params, &Patch::Apply(&object)),
            )
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
            // What the cluster answered, read back as the watch will read it; what was
            // asked for if that cannot be read (so a slice is never taken as missing).
            let held = slices::managed_slice(&applied).unwrap_or_else(|| slice.clone());
            Ok(((slice.namespace.clone(), slice.name.clone()), Some(held)))
        }
        Write::Delete { namespace, name } => {
            let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
            let answer = tokio::time::timeout(timeout, api.delete(name, &DeleteParams::default()))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?;
            match answer {
                Ok(_) => Ok(((namespace.clone(), name.clone()), None)),
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    Ok(((namespace.clone(), name.clone()), None))
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }
}
