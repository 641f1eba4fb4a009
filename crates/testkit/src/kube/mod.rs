//! A Kubernetes API server for tests, on a free loopback port: it speaks the wire
//! protocol kube-rs and kubectl use for the kinds the cross-cluster controller touches
//! (Services, EndpointSlices, Leases), so the controller is tested through its real
//! client, and several of these act as several clusters.
//!
//! What it speaks: bearer-token authentication (rotated with [`KubeServer::rotate_token`]);
//! lists with `resourceVersion`, `labelSelector`, `fieldSelector`, `limit` and
//! `continue`; `?watch=true` streams of ADDED / MODIFIED / DELETED events (an object
//! leaving a watch's selector is DELETED for it), BOOKMARKs, `sendInitialEvents`, and an
//! ERROR event with 410 Expired when the history asked for is compacted
//! ([`KubeServer::compact`]), which makes clients list again; create (incl.
//! `generateName`), update with optimistic concurrency (409 on a stale
//! resourceVersion), JSON merge patch, server-side apply (`application/apply-patch+yaml`,
//! field managers, conflicts, `force`; a no-op apply changes no resourceVersion), delete;
//! errors as `Status` objects.
//!
//! Faults ([`Fault`]): the server refusing connections (a partition or a dead API
//! server: the port is closed and open connections are cut), a black hole (connections
//! accepted and never answered, open watches silent), every request answered with an
//! error status, or slow answers. [`KubeServer::writes`] counts the writes each field
//! manager made, so a test can prove a steady state writes nothing.

mod selector;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};

pub use selector::{FieldSelector, LabelSelector};
use store::{Change, ChangeType, Filter, Key, Refusal, Resource, Store, Writer};

/// What the server does wrong, set with [`KubeServer::set_fault`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Nothing: it answers as an API server does.
    #[default]
    None,
    /// The port is closed (connections refused) and open connections are cut: the API
    /// server is down or the network between is broken loudly.
    Refuse,
    /// Connections are accepted and never answered; open watches fall silent without
    /// closing: a network that drops packets, where only timeouts tell.
    BlackHole,
    /// Every request is answered with this HTTP status and a `Status` body (watches
    /// already open go on).
    Status(u16),
    /// Every request is answered after this delay.
    Slow(Duration),
}

/// How many changes a watch can resume from (older resourceVersions get 410).
const HISTORY: usize = 10_000;

/// A running test API server; stopped when dropped.
pub struct KubeServer {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    store: Mutex<Store>,
    token: Mutex<String>,
    fault: watch::Sender<Fault>,
    /// Bumped to end every open watch (as an API server restart or a watch timeout does).
    watch_epoch: watch::Sender<u64>,
    /// Bumped to make every open watch fall silent without closing (a connection a
    /// NAT or a firewall forgot), while new requests are served.
    silence_epoch: watch::Sender<u64>,
    bookmark_every: Mutex<Duration>,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    requests: u64,
    lists: u64,
    watches_started: u64,
    open_watches: u64,
    writes: BTreeMap<String, u64>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("store lock")
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().expect("stats lock")
    }
}

impl KubeServer {
    /// Starts a server named `name` (the name of its cluster, user and context in its
    /// kubeconfig) on a free loopback port.
    pub async fn start(name: &str) -> Self {
        let port = crate::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the test API server");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(HISTORY)),
            token: Mutex::new(new_token(name)),
            fault: watch::Sender::new(Fault::None),
            watch_epoch: watch::Sender::new(0),
            silence_epoch: watch::Sender::new(0),
            bookmark_every: Mutex::new(Duration::from_secs(1)),
            stats: Mutex::new(Stats::default()),
        });
        let task = tokio::spawn(serve(listener, addr, shared.clone()));
        Self {
            name: name.to_owned(),
            addr,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token it accepts now.
    pub fn token(&self) -> String {
        self.shared.token.lock().expect("token lock").clone()
    }

    /// Replaces the accepted token (the old one gets 401 from now on) and returns the
    /// new one.
    pub fn rotate_token(&self) -> String {
        let token = new_token(&self.name);
        *self.shared.token.lock().expect("token lock") = token.clone();
        token
    }

    /// A kubeconfig for this server with its current token; the cluster, user and
    /// context are all named after the server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {url}\n\
             users:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n\
             current-context: {name}\n",
            name = self.name,
            url = self.url(),
            token = self.token(),
        )
    }

    /// Writes [`Self::kubeconfig`] to `path` (atomically: a reader never sees half).
    pub fn write_kubeconfig(&self, path: &Path) {
        let partial = path.with_extension("partial");
        std::fs::write(&partial, self.kubeconfig()).expect("write kubeconfig");
        std::fs::rename(&partial, path).expect("move kubeconfig into place");
    }

    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// How often open watches that asked for bookmarks get one (1 s unless set).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.shared.bookmark_every.lock().expect("bookmark lock") = every;
    }

    /// Forgets the change history: watches resuming from before now get 410 Gone.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch cleanly (clients watch again from their last version).
    pub fn close_watches(&self) {
        self.shared.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Makes every open watch fall silent for good without closing (no events, no
    /// bookmarks: a connection a NAT or a firewall dropped), while everything else,
    /// new watches included, is served: only a client's own timeout finds it out.
    pub fn silence_watches(&self) {
        self.shared.silence_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Writes by field manager (the `fieldManager` parameter, else the client's
    /// `User-Agent` up to its first `/`) through the API, counted per request that
    /// reached the store, whether or not it changed anything.
    pub fn writes(&self) -> BTreeMap<String, u64> {
        self.shared.stats().writes.clone()
    }

    /// Requests answered or refused so far, lists among them, watches started and open.
    pub fn requests(&self) -> (u64, u64, u64, u64) {
        let stats = self.shared.stats();
        (
            stats.requests,
            stats.lists,
            stats.watches_started,
            stats.open_watches,
        )
    }

    /// Creates or server-side applies `object` (its `kind` says where) as field manager
    /// `manager`, as a cluster's own controllers would; not counted in [`Self::writes`].
    pub fn apply(&self, manager: &str, object: Value) -> Value {
        let (resource, key) = locate(&object);
        let writer = Writer {
            manager: manager.to_owned(),
            force: true,
        };
        let mut applied = object;
        applied["apiVersion"] = json!(resource.api_version());
        let stored = self
            .shared
            .store()
            .apply(resource, key, applied, &writer)
            .unwrap_or_else(|refusal| panic!("apply refused: {refusal:?}"));
        (*stored).clone()
    }

    /// Deletes the object of `kind` at `namespace/name`; false when there was none.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let (resource, key) = key_of(kind, namespace, name);
        self.shared.store().delete(resource, &key).is_ok()
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (_, key) = key_of(kind, namespace, name);
        self.shared.store().get(&key).map(|o| (*o).clone())
    }

    /// Every object of `kind` whose labels match `labels` (a label selector).
    pub fn list(&self, kind: &str, labels: &str) -> Vec<Value> {
        let (resource, _) = key_of(kind, "", "");
        let filter = Filter {
            labels: LabelSelector::parse(labels).expect("label selector"),
            ..Filter::default()
        };
        let (items, _) = self.shared.store().list(resource.plural, &filter, None, 0);
        items.iter().map(|o| (**o).clone()).collect()
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The served kind named `kind` and the key of `namespace/name` in it.
fn key_of(kind: &str, namespace: &str, name: &str) -> (&'static Resource, Key) {
    let resource = store::resource_of_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
    let key = Key {
        plural: resource.plural,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    (resource, key)
}

/// Where `object` goes, from its kind, namespace (`default` when absent) and name.
fn locate(object: &Value) -> (&'static Resource, Key) {
    key_of(
        object["kind"].as_str().expect("the object names its kind"),
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default"),
        object["metadata"]["name"]
            .as_str()
            .expect("the object has a name"),
    )
}

fn new_token(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{name}-{}-{nanos:08x}",
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Accepts connections as the fault in force says, and serves them with hyper.
async fn serve(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(shared.clone());
    let mut faults = shared.fault.subscribe();
    let mut listener = Some(listener);
    let mut connections = tokio::task::JoinSet::new();
    let mut parked: Vec<TcpStream> = Vec::new();
    loop {
        let fault = faults.borrow_and_update().clone();
        if fault == Fault::Refuse {
            listener = None;
            connections.abort_all();
            parked.clear();
            if faults.changed().await.is_err() {
                return;
            }
            continue;
        }
        if fault != Fault::BlackHole {
            parked.clear();
        }
        let Some(open) = listener.as_ref() else {
            listener = Some(rebind(addr).await);
            continue;
        };
        tokio::select! {
            changed = faults.changed() => if changed.is_err() { return },
            accepted = open.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                // As Go's net/http (the API server's) does: no Nagle delay on small
                // writes such as one watch event.
                let _ = socket.set_nodelay(true);
                if fault == Fault::BlackHole {
                    parked.push(socket);
                    continue;
                }
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Binds `addr` again after a refusal (retrying while the old socket lingers).
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..200 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the test API server could not bind {addr} again");
}

/// Every request: faults, authentication, then the API.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.stats().requests += 1;
    let fault = shared.fault.borrow().clone();
    match fault {
        Fault::None => {}
        Fault::Status(code) => {
            return status_response(&Refusal::new(
                code,
                "InternalError",
                format!("fault injected by the test: {code}"),
            ));
        }
        Fault::Slow(delay) => tokio::time::sleep(delay).await,
        Fault::BlackHole => std::future::pending::<()>().await,
        Fault::Refuse => {
            return status_response(&Refusal::new(503, "ServiceUnavailable", "refusing"));
        }
    }
    let path = uri.path();
    if matches!(path, "/healthz" | "/livez" | "/readyz") {
        return "ok".into_response();
    }
    let expected = format!("Bearer {}", shared.token.lock().expect("token lock"));
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        return status_response(&Refusal::new(401, "Unauthorized", "Unauthorized"));
    }
    if path == "/version" {
        return axum::Json(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-portico-testkit",
            "platform": "linux/amd64",
        }))
        .into_response();
    }
    let target = match Target::parse(path) {
        Ok(target) => target,
        Err(refusal) => return status_response(&refusal),
    };
    let manager = params
        .get("fieldManager")
        .cloned()
        .or_else(|| {
            let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
            Some(agent.split('/').next().unwrap_or(agent).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let result = match (&method, &target.name) {
        (&Method::GET, None) if is_true(params.get("watch")) => {
            return watch_response(&shared, &target, &params);
        }
        (&Method::GET, None) => {
            shared.stats().lists += 1;
            list(&shared, &target, &params)
        }
        (&Method::GET, Some(name)) => shared
            .store()
            .get(&target.key(name))
            .map(|o| (StatusCode::OK, (*o).clone()))
            .ok_or_else(|| {
                Refusal::new(
                    404,
                    "NotFound",
                    format!("{} {name:?} not found", target.resource.plural),
                )
            }),
        (&Method::POST, None)
        | (&Method::PUT, Some(_))
        | (&Method::PATCH, Some(_))
        | (&Method::DELETE, Some(_)) => {
            *shared.stats().writes.entry(manager.clone()).or_default() += 1;
            write(&shared, &method, &target, &params, &headers, &body, manager)
        }
        _ => Err(Refusal::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    };
    match result {
        Ok((code, object)) => (code, axum::Json(object)).into_response(),
        Err(refusal) => status_response(&refusal),
    }
}

/// What a request's path names.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Result<Self, Refusal> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return Err(not_found_path(path)),
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            ["namespaces", namespace, plural] => (Some(*namespace), *plural, None),
            ["namespaces", namespace, plural, name] => (Some(*namespace), *plural, Some(*name)),
            _ => return Err(not_found_path(path)),
        };
        let resource = store::resource(group, version, plural).ok_or_else(|| {
            Refusal::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({group}/{version} {plural})"
                ),
            )
        })?;
        Ok(Self {
            resource,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }

    fn key(&self, name: &str) -> Key {
        Key {
            plural: self.resource.plural,
            namespace: self.namespace.clone().unwrap_or_default(),
            name: name.to_owned(),
        }
    }

    fn filter(&self, params: &HashMap<String, String>) -> Result<Filter, Refusal> {
        let bad = |e: String| Refusal::new(400, "BadRequest", e);
        Ok(Filter {
            namespace: self.namespace.clone(),
            labels: LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
                .map_err(bad)?,
            fields: FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
                .map_err(bad)?,
        })
    }
}

fn not_found_path(path: &str) -> Refusal {
    Refusal::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource: {path}"),
    )
}

fn is_true(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("true" | "1"))
}

fn status_response(refusal: &Refusal) -> Response {
    let code = StatusCode::from_u16(refusal.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(status_object(refusal))).into_response()
}

fn status_object(refusal: &Refusal) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": refusal.message,
        "reason": refusal.reason,
        "code": refusal.code,
    })
}

/// A list answer: one page of the objects (as the API server lists them, without
/// their kind), the resourceVersion it was read at, and a continue token.
fn list(
    shared: &Shared,
    target: &Target,
    params: &HashMap<String, String>,
) -> Result<(StatusCode, Value), Refusal> {
    let filter = target.filter(params)?;
    let limit = match params.get("limit") {
        Some(limit) => limit.parse::<usize>().map_err(|_| {
            Refusal::new(400, "BadRequest", format!("limit: invalid value {limit:?}"))
        })?,
        None => 0,
    };
    let store = shared.store();
    let (read_at, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = parse_continue(token, target.resource)?;
            if rv < store.oldest() {
                return Err(Refusal::new(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some(key))
        }
        None => {
            let asked = params.get("resourceVersion").filter(|rv| !rv.is_empty());
            if let Some(asked) = asked {
                let asked: u64 = asked.parse().map_err(|_| {
                    Refusal::new(
                        400,
                        "BadRequest",
                        format!("resourceVersion: invalid value {asked:?}"),
                    )
                })?;
                let exact = params.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                if exact && asked != store.rv() {
                    return Err(Refusal::expired(asked, store.rv()));
                }
                if asked > store.rv() {
                    return Err(Refusal::new(
                        504,
                        "Timeout",
                        format!(
                            "Too large resource version: {asked}, current: {}",
                            store.rv()
                        ),
                    ));
                }
            }
            (store.rv(), None)
        }
    };
    let (items, next) = store.list(target.resource.plural, &filter, after.as_ref(), limit);
    let items: Vec<Value> = items
        .iter()
        .map(|object| {
            let mut item = (**object).clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let mut metadata = json!({"resourceVersion": read_at.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(format!("{read_at}/{}/{}", next.namespace, next.name));
    }
    Ok((
        StatusCode::OK,
        json!({
            "kind": format!("{}List", target.resource.kind),
            "apiVersion": target.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

fn parse_continue(token: &str, resource: &'static Resource) -> Result<(u64, Key), Refusal> {
    let invalid = || {
        Refusal::new(
            400,
            "BadRequest",
            format!("continue: invalid token {token:?}"),
        )
    };
    let mut parts = token.splitn(3, '/');
    let rv = parts
        .next()
        .and_then(|rv| rv.parse().ok())
        .ok_or_else(invalid)?;
    let namespace = parts.next().ok_or_else(invalid)?.to_owned();
    let name = parts.next().ok_or_else(invalid)?.to_owned();
    Ok((
        rv,
        Key {
            plural: resource.plural,
            namespace,
            name,
        },
    ))
}

fn write(
    shared: &Shared,
    method: &Method,
    target: &Target,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    manager: String,
) -> Result<(StatusCode, Value), Refusal> {
    if params.contains_key("dryRun") {
        return Err(Refusal::new(
            400,
            "BadRequest",
            "dryRun is not supported by the test API server",
        ));
    }
    let Some(namespace) = target.namespace.clone() else {
        return Err(Refusal::new(
            405,
            "MethodNotAllowed",
            "writes name a namespace: /namespaces/{namespace}/...",
        ));
    };
    let writer = Writer {
        manager,
        force: is_true(params.get("force")),
    };
    let resource = target.resource;
    let mut store = shared.store();
    if *method == Method::DELETE {
        let key = target.key(target.name.as_deref().unwrap_or_default());
        return store
            .delete(resource, &key)
            .map(|object| (StatusCode::OK, (*object).clone()));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let content_type = content_type.split(';').next().unwrap_or_default().trim();
    let parsed: Value = match content_type {
        "application/apply-patch+yaml" => serde_json::from_slice(body)
            .or_else(|_| serde_yaml_ng::from_slice(body))
            .map_err(|e| {
                Refusal::new(
                    400,
                    "BadRequest",
                    format!("the body is not YAML or JSON: {e}"),
                )
            })?,
        _ => serde_json::from_slice(body)
            .map_err(|e| Refusal::new(400, "BadRequest", format!("the body is not JSON: {e}")))?,
    };
    if let Some(ns) = parsed["metadata"]["namespace"].as_str() {
        if ns != namespace {
            return Err(Refusal::new(
                400,
                "BadRequest",
                format!("the namespace of the object ({ns}) does not match the namespace on the URL ({namespace})"),
            ));
        }
    }
    match (method, target.name.as_deref()) {
        (&Method::POST, None) => store
            .create(resource, &namespace, parsed, &writer)
            .map(|object| (StatusCode::CREATED, (*object).clone())),
        (&Method::PUT, Some(name)) => store
            .update(resource, target.key(name), parsed, &writer)
            .map(|object| (StatusCode::OK, (*object).clone())),
        (&Method::PATCH, Some(name)) => match content_type {
            "application/apply-patch+yaml" => {
                if !params.contains_key("fieldManager") {
                    return Err(Refusal::new(
                        400,
                        "BadRequest",
                        "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
                    ));
                }
                let existed = store.get(&target.key(name)).is_some();
                store
                    .apply(resource, target.key(name), parsed, &writer)
                    .map(|object| {
                        let code = if existed {
                            StatusCode::OK
                        } else {
                            StatusCode::CREATED
                        };
                        (code, (*object).clone())
                    })
            }
            "application/merge-patch+json" => store
                .merge_patch(resource, target.key(name), &parsed, &writer)
                .map(|object| (StatusCode::OK, (*object).clone())),
            other => Err(Refusal::new(
                415,
                "UnsupportedMediaType",
                format!("the test API server takes apply and JSON merge patches, not {other:?}"),
            )),
        },
        _ => unreachable!("handle routes only writes here"),
    }
}

/// A watch: the events after the asked resourceVersion (or the current objects as
/// ADDED when none is asked), then every change as it happens, bookmarks, and the end
/// at `timeoutSeconds`, at [`KubeServer::close_watches`] or at a fault.
fn watch_response(
    shared: &Arc<Shared>,
    target: &Target,
    params: &HashMap<String, String>,
) -> Response {
    let filter = match target.filter(params) {
        Ok(filter) => filter,
        Err(refusal) => return status_response(&refusal),
    };
    let resource = target.resource;
    let bookmarks = is_true(params.get("allowWatchBookmarks"));
    let initial_events = is_true(params.get("sendInitialEvents"));
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let asked = params
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .map(|rv| rv.parse::<u64>());
    let (first, expired, changes, start_rv) = {
        let store = shared.store();
        let changes = store.subscribe();
        let replay = match asked {
            Some(Err(_)) => {
                return status_response(&Refusal::new(
                    400,
                    "BadRequest",
                    "resourceVersion: not a number",
                ));
            }
            Some(Ok(rv)) if !initial_events => {
                store.changes_since(rv, resource.plural).map(|changes| {
                    changes
                        .iter()
                        .filter_map(|c| event_line(resource, &filter, c))
                        .collect()
                })
            }
            _ => Ok(store
                .list(resource.plural, &filter, None, 0)
                .0
                .iter()
                .map(|object| line("ADDED", object))
                .collect::<Vec<_>>()),
        };
        let (first, expired) = match replay {
            Ok(mut lines) => {
                if initial_events && bookmarks {
                    lines.push(line(
                        "BOOKMARK",
                        &json!({
                            "kind": resource.kind,
                            "apiVersion": resource.api_version(),
                            "metadata": {
                                "resourceVersion": store.rv().to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        }),
                    ));
                }
                (lines, false)
            }
            Err(refusal) => (vec![line("ERROR", &status_object(&refusal))], true),
        };
        (first, expired, changes, store.rv())
    };
    {
        let mut stats = shared.stats();
        stats.watches_started += 1;
        stats.open_watches += 1;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let shared = task_shared;
        follow(
            &shared,
            Follow {
                resource,
                filter,
                bookmarks,
                timeout,
                first,
                expired,
                start_rv,
            },
            changes,
            tx,
        )
        .await;
        shared.stats().open_watches -= 1;
    });
    let body = Body::from_stream(futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, Infallible>,
    ));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("a watch response")
}

/// What one watch follows.
struct Follow {
    resource: &'static Resource,
    filter: Filter,
    bookmarks: bool,
    timeout: Option<Duration>,
    first: Vec<Bytes>,
    expired: bool,
    start_rv: u64,
}

async fn follow(
    shared: &Shared,
    watch: Follow,
    mut changes: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Bytes>,
) {
    for line in watch.first {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if watch.expired {
        return;
    }
    let mut faults = shared.fault.subscribe();
    let mut epoch = shared.watch_epoch.subscribe();
    epoch.mark_unchanged();
    let mut silence = shared.silence_epoch.subscribe();
    silence.mark_unchanged();
    let deadline = watch.timeout.map(|t| tokio::time::Instant::now() + t);
    let every = *shared.bookmark_every.lock().expect("bookmark lock");
    let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last_rv = watch.start_rv;
    loop {
        let fault = faults.borrow_and_update().clone();
        match fault {
            Fault::Refuse => return,
            Fault::BlackHole => {
                // Silent until the fault changes; then the connection is gone.
                let _ = faults.changed().await;
                return;
            }
            _ => {}
        }
        tokio::select! {
            // Ends and faults first: a change made after either must not slip out.
            biased;
            _ = epoch.changed() => return,
            _ = silence.changed() => {
                // Held open and silent until the client goes away.
                tx.closed().await;
                return;
            }
            changed = faults.changed() => if changed.is_err() { return },
            _ = sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = bookmark.tick(), if watch.bookmarks => {
                // The last change this watch passed: a later one may still be queued
                // for it, and a client resuming after the bookmark must not miss it.
                let object = json!({
                    "kind": watch.resource.kind,
                    "apiVersion": watch.resource.api_version(),
                    "metadata": {"resourceVersion": last_rv.to_string()},
                });
                if tx.send(line("BOOKMARK", &object)).await.is_err() {
                    return;
                }
            }
            change = changes.recv() => match change {
                Ok(change) => {
                    if change.rv <= last_rv {
                        continue;
                    }
                    last_rv = change.rv;
                    if let Some(event) = event_line(watch.resource, &watch.filter, &change) {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let refusal = Refusal::expired(last_rv, shared.store().oldest());
                    let _ = tx.send(line("ERROR", &status_object(&refusal))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The event a watch with `filter` sees for `change`, if any: an object entering the
/// selector is ADDED for it and one leaving it DELETED.
fn event_line(resource: &Resource, filter: &Filter, change: &Change) -> Option<Bytes> {
    if change.key.plural != resource.plural {
        return None;
    }
    let now = filter.matches(resource.plural, &change.key, &change.object);
    let before = change
        .before
        .as_ref()
        .is_some_and(|b| filter.matches(resource.plural, &change.key, b));
    let kind = match change.change {
        ChangeType::Added if now => "ADDED",
        ChangeType::Deleted if now || before => "DELETED",
        ChangeType::Modified if now && before => "MODIFIED",
        ChangeType::Modified if now => "ADDED",
        ChangeType::Modified if before => "DELETED",
        _ => return None,
    };
    Some(line(kind, &change.object))
}

/// One line of a watch stream, `type` first as the API server writes it.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut text, object).expect("json");
    text.extend_from_slice(b"}\n");
    Bytes::from(text)
}
